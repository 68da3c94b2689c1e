/*
 * trace_opts.c — the --trace flags of `cpattn attn` and `cpattn train`
 * (trace_opts.h): the path check before any work, and starting and writing
 * the trace through the library's recorder on every rank of
 * MPI_COMM_WORLD.  Errors take the tools' usual path: recorded with
 * tool_fail, agreed with tool_agree, printed once by rank 0.
 */
#include "trace_opts.h"

#include "cmd.h"
#include "util.h"

#include "cpattn.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int trace_check_path(const char *path)
{
    char dir[4096], why[128];
    if (!path || !*path)
        return tool_fail(EXIT_USAGE, "--trace '': needs a file name");
    if (tool_is_dir(path))
        return tool_fail(EXIT_USAGE, "--trace %s: is a folder (expected a file name, e.g. "
                         "%s/trace.json)", path, path);
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
        return tool_fail(EXIT_USAGE, "--trace %s: the path is too long", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    if (!tool_is_dir(dir))
        return tool_fail(EXIT_USAGE, "--trace %s: the folder %s does not exist", path, dir);
    if (access(dir, W_OK) != 0)
        return tool_fail(EXIT_USAGE, "--trace %s: cannot write into the folder %s: %s", path,
                         dir, strerror_r(errno, why, sizeof why) == 0 ? why : "error");
    return EXIT_OK;
}

int trace_begin(int64_t max_events)
{
    cpa_status st = cpa_trace_start(max_events);
    return tool_agree(st == CPA_OK ? EXIT_OK
                                   : tool_fail(EXIT_RUNTIME, "--trace: %s", cpa_last_error()));
}

int trace_finish(const char *path)
{
    double figures[2] = {(double)cpa_trace_count(), (double)cpa_trace_dropped()};
    cpa_status st = cpa_trace_write(MPI_COMM_WORLD, path);
    cpa_trace_stop();
    if (st != CPA_OK)
        return tool_agree(tool_fail(EXIT_RUNTIME, "--trace: %s: %s", cpa_status_string(st),
                                    cpa_last_error()));
    if (tool_world_size() > 1)
        cpa_comm_allreduce(figures, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, "the trace's counts");
    tool_say("trace: wrote %s: %.0f events from %d rank%s", path, figures[0], tool_world_size(),
             tool_world_size() > 1 ? "s" : "");
    if (figures[1] > 0)
        tool_say(", %.0f dropped (the buffer was full: raise --trace-max-events)", figures[1]);
    tool_say("\n");
    return tool_agree(EXIT_OK);
}
