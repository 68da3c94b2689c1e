/*
 * util.c — helpers shared by the subcommands (see util.h).
 */
#include "util.h"

#include "args.h"
#include "cmd.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Helpers shared by the subcommands                                         */
/* ------------------------------------------------------------------------ */

int tool_mul_ok(int64_t a, int64_t b, int64_t *out)
{
    if (a < 0 || b < 0 || (b != 0 && a > INT64_MAX / b))
        return 0;
    *out = a * b;
    return 1;
}

double tool_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double tool_peak_rss_mib(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0.0;
    return (double)ru.ru_maxrss / 1024.0; /* Linux reports KiB */
}

double tool_phys_mem_bytes(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (double)pages * (double)page : 0.0;
}

/* The smallest limit along a cgroup path: `file` in root+path and every
 * parent up to root ("max" and absurd values mean none). */
static void cgroup_walk(const char *root, const char *path, const char *file, double *limit,
                        char *source, size_t cap)
{
    char dir[1024];
    if (snprintf(dir, sizeof dir, "%s%s", root, path) >= (int)sizeof dir)
        return;
    for (;;) {
        char f[1100];
        snprintf(f, sizeof f, "%s/%s", dir, file);
        FILE *fp = fopen(f, "r");
        if (fp) {
            char text[64] = "";
            if (fgets(text, sizeof text, fp)) {
                char *end;
                double v = strtod(text, &end);
                if (end != text && v > 0 && v < 1e18 && v < *limit) {
                    *limit = v;
                    snprintf(source, cap, "the cgroup limit %s", f);
                }
            }
            fclose(fp);
        }
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < strlen(root))
            break;
        *slash = '\0';
    }
}

double tool_memory_limit(char *source, size_t cap)
{
    double limit = tool_phys_mem_bytes();
    snprintf(source, cap, "physical memory");
    if (limit <= 0)
        limit = 1e30;
    /* A container's or a job scheduler's limit is the cgroup's: v2
     * (memory.max, possibly under /sys/fs/cgroup/unified) or v1
     * (memory.limit_in_bytes of the memory controller). */
    FILE *fp = fopen("/proc/self/cgroup", "r");
    char line[1024];
    while (fp && fgets(line, sizeof line, fp)) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c2 = '\0';
        const char *controllers = c1 + 1, *path = c2 + 1;
        if (strcmp(path, "/") == 0)
            path = "";
        if (*controllers == '\0') {
            cgroup_walk("/sys/fs/cgroup", path, "memory.max", &limit, source, cap);
            cgroup_walk("/sys/fs/cgroup/unified", path, "memory.max", &limit, source, cap);
        } else if (strstr(controllers, "memory")) {
            cgroup_walk("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes", &limit, source, cap);
        }
    }
    if (fp)
        fclose(fp);
    /* Testing hook: a limit as if a container imposed it. */
    const char *test = getenv("CPATTN_TEST_MEMORY_LIMIT");
    if (test && *test && strtod(test, NULL) > 0 && strtod(test, NULL) < limit) {
        limit = strtod(test, NULL);
        snprintf(source, cap, "CPATTN_TEST_MEMORY_LIMIT");
    }
    return limit;
}

double tool_host_total(double mine, int *ranks)
{
    MPI_Comm host;
    double total = mine;
    *ranks = 1;
    if (tool_world_size() > 1 &&
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, tool_rank(), MPI_INFO_NULL,
                            &host) == MPI_SUCCESS) {
        MPI_Comm_size(host, ranks);
        cpa_comm_allreduce(&total, 1, MPI_DOUBLE, MPI_SUM, host, "the memory estimate");
        MPI_Comm_free(&host);
    }
    return total;
}

int tool_check_memory(const char *what, double bytes)
{
    /* The limit (a container, a node) covers every rank of this host. */
    char source[1200];
    int ranks = 1;
    const double total = tool_host_total(bytes, &ranks);
    const double limit = tool_memory_limit(source, sizeof source);
    if (total <= limit)
        return 0;
    char need[32], have[32];
    return tool_fail(EXIT_RUNTIME, "out of memory: %s needs an estimated %s on this host "
                     "(%d rank%s), over the limit of %s (%s); use more hosts, more ranks for "
                     "the same sequence, or a smaller shape", what,
                     tool_format_bytes(total, need, sizeof need), ranks, ranks == 1 ? "" : "s",
                     tool_format_bytes(limit, have, sizeof have), source);
}

const char *tool_format_bytes(double bytes, char *buf, size_t cap)
{
    if (bytes >= 1073741824.0)
        snprintf(buf, cap, "%.2f GiB", bytes / 1073741824.0);
    else
        snprintf(buf, cap, "%.1f MiB", bytes / 1048576.0);
    return buf;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void tool_stats(double *x, int n, double *median, double *min, double *max)
{
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    *min = x[0];
    *max = x[n - 1];
    *median = n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

/* ------------------------------------------------------------------------ */
/* Paths                                                                     */
/* ------------------------------------------------------------------------ */

int tool_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int tool_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int tool_join_path(char *buf, size_t size, const char *dir, const char *name)
{
    int n = snprintf(buf, size, "%s/%s", dir, name);
    return n > 0 && (size_t)n < size;
}

int tool_make_dirs(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return 0;
    }
    for (char *p = path + 1; *p; ++p) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return 0;
        *p = '/';
    }
    return (mkdir(path, 0777) == 0 || errno == EEXIST) && tool_is_dir(path);
}

int tool_check_output_dir(const char *flag, const char *dir)
{
    char why[128], probe[4200];
    if (!dir || !*dir)
        return tool_fail(EXIT_USAGE, "%s '': needs a folder name", flag);
    if (!tool_make_dirs(dir)) {
        int err = errno;
        if (tool_file_exists(dir) && !tool_is_dir(dir))
            return tool_fail(EXIT_USAGE, "%s %s: exists and is not a folder", flag, dir);
        return tool_fail(EXIT_USAGE, "%s %s: cannot create the folder: %s", flag, dir,
                         strerror_r(err, why, sizeof why) == 0 ? why : "error");
    }
    /* Creating a folder is not writing into it (a read-only or immutable
     * folder, a full disk, a quota): prove a file can be created there. */
    if (snprintf(probe, sizeof probe, "%s/.cpattn-write-probe.%ld", dir, (long)getpid()) >=
        (int)sizeof probe)
        return tool_fail(EXIT_USAGE, "%s %s: the folder name is too long", flag, dir);
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int ok = fd >= 0 && write(fd, "x", 1) == 1;
    int err = errno;
    if (fd >= 0) {
        if (close(fd) != 0 && ok)
            ok = 0, err = errno;
        unlink(probe);
    }
    if (!ok)
        return tool_fail(EXIT_USAGE, "%s %s: cannot write into the folder: %s", flag, dir,
                         strerror_r(err, why, sizeof why) == 0 ? why : "error");
    return EXIT_OK;
}

/* ------------------------------------------------------------------------ */

#define TOOL_MPI_CHUNK ((int64_t)1 << 28)

int tool_send_floats(const float *buf, int64_t count, int dest, int tag, MPI_Comm comm)
{
    for (int64_t off = 0; off < count; off += TOOL_MPI_CHUNK) {
        int n = (int)(count - off < TOOL_MPI_CHUNK ? count - off : TOOL_MPI_CHUNK);
        MPI_Request req;
        int err = MPI_Isend(buf + off, n, MPI_FLOAT, dest, tag, comm, &req);
        if (err != MPI_SUCCESS)
            return err;
        if (cpa_comm_wait(1, &req, "sending %d floats to rank %d", n, dest) != CPA_OK)
            return MPI_ERR_OTHER;
    }
    return MPI_SUCCESS;
}

int tool_recv_floats(float *buf, int64_t count, int source, int tag, MPI_Comm comm)
{
    for (int64_t off = 0; off < count; off += TOOL_MPI_CHUNK) {
        int n = (int)(count - off < TOOL_MPI_CHUNK ? count - off : TOOL_MPI_CHUNK);
        MPI_Request req;
        int err = MPI_Irecv(buf + off, n, MPI_FLOAT, source, tag, comm, &req);
        if (err != MPI_SUCCESS)
            return err;
        if (cpa_comm_wait(1, &req, "receiving %d floats from rank %d", n, source) != CPA_OK)
            return MPI_ERR_OTHER;
    }
    return MPI_SUCCESS;
}

/* ------------------------------------------------------------------------ */
/* Comparing                                                                 */
/* ------------------------------------------------------------------------ */

static void compare_one(float a, float b, tool_diff *s)
{
    if (isfinite(a) && isfinite(b)) {
        double d = fabs((double)a - (double)b);
        if (d > s->max_abs)
            s->max_abs = d;
        if (fabs((double)b) > s->max_ref)
            s->max_ref = fabs((double)b);
    } else if (!(a == b) && !(isnan(a) && isnan(b))) {
        s->mismatch++;
    } else {
        s->nonfinite++; /* the same NaN or infinity in both: the same input propagated */
    }
}

tool_diff tool_compare(cpa_tensor a, cpa_tensor b)
{
    tool_diff s = {0, 0, 0, 0};
    int64_t sh[4] = {1, 1, 1, 1}, sa[4] = {0, 0, 0, 0}, sb[4] = {0, 0, 0, 0};
    for (int i = 0; i < a.ndim; ++i) {
        sh[4 - a.ndim + i] = a.shape[i];
        sa[4 - a.ndim + i] = a.stride[i];
        sb[4 - a.ndim + i] = b.stride[i];
    }
    for (int64_t i = 0; i < sh[0]; ++i)
        for (int64_t j = 0; j < sh[1]; ++j)
            for (int64_t k = 0; k < sh[2]; ++k)
                for (int64_t l = 0; l < sh[3]; ++l)
                    compare_one(a.data[i * sa[0] + j * sa[1] + k * sa[2] + l * sa[3]],
                                b.data[i * sb[0] + j * sb[1] + k * sb[2] + l * sb[3]], &s);
    return s;
}

/* ------------------------------------------------------------------------ */
/* MPI subcommands                                                           */
/* ------------------------------------------------------------------------ */

static int g_rank = 0, g_size = 1;      /* in MPI_COMM_WORLD */
static const char *g_command = "cpattn"; /* message prefix */
static char g_msg[2048];                 /* this rank's first error, until tool_agree */

static void abort_on_timeout(const char *message, void *arg);

int tool_mpi_command(const char *command, int quiet_others, int (*body)(int, char **), int argc,
                     char **argv)
{
    int rc = tool_mpi_init(command), initialized = 0;
    if (quiet_others)
        cli_set_quiet(tool_rank() != 0); /* every rank parses; rank 0 speaks */
    if (!rc)
        rc = body(argc, argv);
    fflush(stdout);
    MPI_Initialized(&initialized);
    if (initialized)
        MPI_Finalize();
    return rc;
}

int tool_mpi_init(const char *command)
{
    int provided = 0;
    g_command = command;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "%s: MPI error: MPI_Init_thread failed\n", command);
        return EXIT_RUNTIME;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    cpa_set_comm_timeout_handler(abort_on_timeout, NULL);
    if (provided < MPI_THREAD_FUNNELED)
        return tool_agree(tool_fail(EXIT_RUNTIME, "MPI error: the MPI library gives thread level "
                                    "%d, below MPI_THREAD_FUNNELED", provided));
    /* The environment's kernel choice is checked once, up front: a bad
     * CPATTN_ISA is bad usage, on every rank, before any work. */
    cpa_isa isa;
    if (cpa_isa_resolve(CPA_ISA_AUTO, &isa) != CPA_OK)
        return tool_agree(tool_fail(EXIT_USAGE, "%s", cpa_last_error()));
    return tool_agree(EXIT_OK);
}

int tool_rank(void)
{
    return g_rank;
}

int tool_world_size(void)
{
    return g_size;
}

void tool_say(const char *fmt, ...)
{
    if (g_rank != 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
}

int tool_fail(int rc, const char *fmt, ...)
{
    if (!g_msg[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g_msg, sizeof g_msg, fmt, ap);
        va_end(ap);
    }
    return rc;
}

int tool_fail_mpi(int rc, int mpi_err, const char *what)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(mpi_err, text, &len) != MPI_SUCCESS)
        snprintf(text, sizeof text, "error %d", mpi_err);
    return tool_fail(rc, "MPI error: %s: %s", what, text);
}

int tool_agree(int rc)
{
    /* The lowest failing rank's code and message, on every rank. */
    int code = rc, who = -1;
    if (cpa_comm_agree(MPI_COMM_WORLD, &code, g_msg, sizeof g_msg, &who) != CPA_OK)
        code = EXIT_RUNTIME; /* a timeout has already aborted the job */
    if (code != 0 && g_rank == 0 && g_msg[0] && who > 0)
        fprintf(stderr, "%s: rank %d: %s\n", g_command, who, g_msg);
    else if (code != 0 && g_rank == 0 && g_msg[0])
        fprintf(stderr, "%s: %s\n", g_command, g_msg);
    g_msg[0] = '\0';
    return code;
}

void tool_max_to_root(double *x, int n)
{
    if (g_size == 1)
        return;
    /* An all-reduce (every rank gets it; only rank 0 needs it) keeps one
     * bounded collective helper. */
    cpa_comm_allreduce(x, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD, "the per-rank figures");
}

/* The watchdog's handler: a wait that timed out means a peer is dead or
 * stuck, and the error path would need that peer to agree on the error.
 * Say what was awaited, then end the whole job. */
static void abort_on_timeout(const char *message, void *arg)
{
    (void)arg;
    fprintf(stderr, "%s: %s; aborting the job\n", g_command, message);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, EXIT_RUNTIME);
}

int tool_gather(const void *send, int count, MPI_Datatype type, void *recv, const char *what)
{
    MPI_Request req;
    if (MPI_Igather(send, count, type, recv, count, type, 0, MPI_COMM_WORLD, &req) != MPI_SUCCESS)
        return tool_fail(EXIT_RUNTIME, "MPI error: MPI_Igather (%s)", what);
    return cpa_comm_wait(1, &req, "%s (gather to rank 0)", what) == CPA_OK ? 0 : EXIT_RUNTIME;
}

int tool_barrier(const char *what)
{
    if (g_size == 1)
        return 0;
    MPI_Request req;
    if (MPI_Ibarrier(MPI_COMM_WORLD, &req) != MPI_SUCCESS)
        return tool_fail(EXIT_RUNTIME, "MPI error: MPI_Ibarrier (%s)", what);
    return cpa_comm_wait(1, &req, "%s (barrier)", what) == CPA_OK ? 0 : EXIT_RUNTIME;
}
