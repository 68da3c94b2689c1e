/*
 * util.h — small helpers shared by the subcommands of the `cpattn` program:
 * timing and statistics, memory figures, overflow-checked sizes, aligned
 * buffers, the deterministic input generator (whole tensors or one rank's
 * shard), bit digests, paths, and moving tensors between MPI ranks.  Not
 * part of the library.
 */
#ifndef CPATTN_TOOLS_UTIL_H
#define CPATTN_TOOLS_UTIL_H

#include "cpattn.h"

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------ */
/* Helpers shared by the subcommands                                         */
/* ------------------------------------------------------------------------ */

/* Before any work: `dir` (the value of `flag`, e.g. "--save") exists or is
 * created, is a folder, and a file can be created in it.  0, or a
 * tool_fail(EXIT_USAGE) naming the flag; the caller agrees. */
int tool_check_output_dir(const char *flag, const char *dir);

/* The BLAS start-up check (blas_setup.c): call first thing in main(),
 * before MPI_Init; it may re-execute the program once (see there). */
void tool_blas_setup(int argc, char **argv);
/* What the check found or did, one line for the configuration block. */
const char *tool_blas_note(void);
/* Rank 0 prints "# kernels: ..." and "# blas: ..." for a run whose
 * attention kernels use `isa`. */
void tool_say_platform(cpa_isa isa);

/* The ceilings of speed figures (ceiling.c): the FMA peak of the kernels'
 * instruction set and an N x N x N sgemm (median of `reps`), both at
 * `threads` threads, measured now. */
typedef struct tool_ceilings {
    cpa_isa isa; /* resolved */
    int threads, sgemm_n;
    double fma_gflops;
    double sgemm_gflops, sgemm_min, sgemm_max;
} tool_ceilings;
int tool_measure_ceilings(cpa_isa isa, int threads, int sgemm_n, int reps, tool_ceilings *c);
/* Rank 0 prints one '# ceilings ...' line. */
void tool_say_ceilings(const tool_ceilings *c);

/* a * b into *out, or 0 on int64 overflow (operands must be >= 0). */
int tool_mul_ok(int64_t a, int64_t b, int64_t *out);

/* Monotonic wall-clock seconds. */
double tool_now(void);

/* Peak resident set size of this process so far, in MiB. */
double tool_peak_rss_mib(void);

/* Physical memory of the machine in bytes (0 if unknown). */
double tool_phys_mem_bytes(void);

/* What this process may use: the smallest of physical memory and the
 * cgroup v2 / v1 limits of its cgroup and the cgroups above it (a
 * container's or a job scheduler's limit); *source says which.  Testing
 * hook: CPATTN_TEST_MEMORY_LIMIT=BYTES lowers it. */
double tool_memory_limit(char *source, size_t cap);

/* The sum of `mine` over the ranks of this host (collective over
 * MPI_COMM_WORLD); *ranks gets their number. */
double tool_host_total(double mine, int *ranks);

/* 0 if this host's ranks' estimated peaks (this rank's: `bytes`) fit
 * tool_memory_limit(), else a tool_fail(EXIT_RUNTIME) giving the estimate,
 * the limit and its source; `what` names the job.  Collective. */
int tool_check_memory(const char *what, double bytes);

/* "812.4 MiB" or "3.25 GiB", into buf; returns buf. */
const char *tool_format_bytes(double bytes, char *buf, size_t cap);

/* Median, minimum and maximum of x[0..n-1] (n >= 1); sorts x in place. */
void tool_stats(double *x, int n, double *median, double *min, double *max);

/* Differences between a result and its reference (same shape, 1..4 dims,
 * any strides): the largest |a - ref| over entries finite in both, the
 * largest finite |ref|, and the entries where one side is non-finite and
 * they differ (-inf == -inf matches: empty rows; NaN never does). */
typedef struct tool_diff {
    double max_abs;
    double max_ref;
    int64_t mismatch;  /* entries non-finite in one tensor and not the same in the other */
    int64_t nonfinite; /* entries non-finite in both, identically (NaN and NaN agree) */
} tool_diff;

tool_diff tool_compare(cpa_tensor a, cpa_tensor ref);

/* Paths.  tool_join_path writes "dir/name" into buf and returns 0 if it does
 * not fit; tool_make_dirs is `mkdir -p` (0 on failure, errno set). */
int tool_is_dir(const char *path);
int tool_file_exists(const char *path);
int tool_join_path(char *buf, size_t size, const char *dir, const char *name);
int tool_make_dirs(const char *dir);

/* ------------------------------------------------------------------------ */
/* MPI subcommands: rank 0 prints, every rank agrees on the exit code        */
/* ------------------------------------------------------------------------ */

/* MPI_Init_thread(MPI_THREAD_FUNNELED) (a process started without mpiexec
 * is a singleton of world size 1); remembers the rank and world size and
 * `command` ("cpattn attn"), which prefixes every message.  Returns an
 * agreed exit code (1 after printing why).  Pair with MPI_Finalize() on
 * every path. */
int tool_mpi_init(const char *command);

/* A whole MPI subcommand: tool_mpi_init, then `body(argc, argv)` with every
 * rank but 0 silenced in the flag parser when `quiet_others`, then stdout
 * flushed and MPI finalised on every path.  Returns body's exit code (or
 * the init's). */
int tool_mpi_command(const char *command, int quiet_others, int (*body)(int, char **), int argc,
                     char **argv);
int tool_rank(void);
int tool_world_size(void);

/* printf on rank 0 only. */
void tool_say(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* Record this rank's error message (the first one since the last
 * tool_agree wins) and return `rc`.  Nothing is printed yet. */
int tool_fail(int rc, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The same for a failed MPI call (its error string). */
int tool_fail_mpi(int rc, int mpi_err, const char *what);

/* After a step that may fail on some ranks only (collective over
 * MPI_COMM_WORLD: every rank calls it at the same point): every rank
 * returns the exit code of the lowest failing rank (cpa_comm_agree), and
 * rank 0 prints, once, that rank's recorded message ("<command>: rank R:
 * ..." when R is not 0).  Clears the recorded message. */
int tool_agree(int rc);

/* Element-wise maximum over the ranks of x[0..n-1], into rank 0's x. */
void tool_max_to_root(double *x, int n);

/* A barrier over MPI_COMM_WORLD under the watchdog (0, or an exit code). */
int tool_barrier(const char *what);
/* MPI_Gather of `count` elements per rank to rank 0, under the watchdog. */
int tool_gather(const void *send, int count, MPI_Datatype type, void *recv, const char *what);

#endif /* CPATTN_TOOLS_UTIL_H */
