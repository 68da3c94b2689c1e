/*
 * trace_opts.h — the --trace flags that `cpattn attn` and `cpattn train`
 * share (docs/trace.md): their two rows of a command's flag table, the
 * check of the output path before any work, and starting and writing the
 * trace over MPI_COMM_WORLD through the library's recorder (cpa_trace_* in
 * cpattn.h).  Not part of the library; `cpattn trace-svg` (cmd_trace_svg.c)
 * draws the files written here.
 */
#ifndef CPATTN_TOOLS_TRACE_OPTS_H
#define CPATTN_TOOLS_TRACE_OPTS_H

#include "args.h"

#include <stddef.h>
#include <stdint.h>

#define TRACE_DEFAULT_EVENTS "65536" /* 6.5 MiB per rank */

/* The two rows, for a config struct with `const char *PATH` and `int64_t
 * MAX` fields (offsets from AT(), the command's offsetof macro). */
#define TRACE_FLAG_ROWS(path_offset, max_offset)                                                 \
    {.flag = "--trace", .type = CLI_STRING, .metavar = "FILE",                                   \
     .help = "Write a Chrome / Perfetto trace-event JSON of the run to FILE (one track per "     \
             "rank: ring steps, sends and receives, waits, all-to-alls, plan calls; "            \
             "docs/trace.md). `cpattn trace-svg FILE OUT.svg` draws it.",                        \
     .offset = (path_offset)},                                                                   \
    {.flag = "--trace-max-events", .type = CLI_INT, .def = TRACE_DEFAULT_EVENTS, .min = 1,      \
     .max = (int64_t)1 << 26, .metavar = "N",                                                    \
     .help = "Events each rank's trace buffer holds (about 100 bytes each, allocated when "      \
             "tracing starts); later ones are dropped and counted.", .offset = (max_offset)}

/* Rank 0, before any work: FILE is not a folder and its folder exists and
 * is writable.  0 or tool_fail(EXIT_USAGE) naming --trace; the caller
 * agrees (tool_agree). */
int trace_check_path(const char *path);

/* Every rank starts recording into a buffer of max_events.  An agreed exit
 * code. */
int trace_begin(int64_t max_events);

/* Every rank: write the trace to `path` (rank 0 writes, atomically), say
 * so on rank 0 ("trace: wrote FILE: N events from P ranks"), stop
 * recording.  An agreed exit code (1 on a write error, with the message). */
int trace_finish(const char *path);

#endif
