/*
 * cmd_attn.c — `cpattn attn`: attention forward and backward through a
 * context-parallel plan (public API), on one rank or many, on deterministic
 * random inputs or on .npy files.
 *
 * It is the user-facing way to run attention once: it can save the results
 * as .npy (--save), compare them with the reference implementation (--check:
 * max abs / max rel error per tensor, PASS/FAIL, exit 1 on FAIL), and time
 * repeated calls (--iters: median, spread, GFLOP/s; per rank with P > 1).
 * It is not a benchmark sweep (that is `cpattn bench`).
 *
 * One door.  Every run, P = 1 included, goes through cpa_plan_create with
 * the algorithm of --context-parallel-algo; --reference selects the
 * reference kernel inside the plan (every exchange still happens).  The
 * plan checks every attention rule collectively; this file checks only what
 * is about flags and files.  The pieces live beside it: cp_flags.c (the CP
 * flags, shared with `train`), attn_tensors.c (each rank's rows, their
 * random values, MPI-IO and digests), attn_check.c (--check and --iters).
 *
 * MPI: the command always initialises MPI (a plain `cpattn attn` is a
 * singleton of world size 1) and finalises it on every path.  Each rank
 * holds S/P rows of every tensor, split as the plan says, and never the
 * whole sequence.  Only rank 0 prints.  Every step that can fail on some
 * ranks only ends with tool_agree(): all ranks take the worst exit code, and
 * rank 0 prints the first failing rank's message, so no rank is left
 * waiting in a collective.
 *
 * Exit codes (the same on every rank): 0 ok, 1 runtime failure (library
 * error, I/O, --check FAIL), 2 bad usage (one line naming the flag, the value
 * and the rule).
 */
#include "args.h"
#include "attn_check.h"
#include "attn_tensors.h"
#include "cmd.h"
#include "cp_flags.h"
#include "trace_opts.h"
#include "util.h"

#include "cpattn.h"

#include <errno.h>
#include <limits.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ------------------------------------------------------------------------ */
/* Flags                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct attn_cfg {
    int64_t B, S, H, G, D, Dv; /* problem shape (G, Dv: 0 until resolved) */
    int gqa;                   /* --group-query-attention */
    double scale;              /* --softmax-scale; unset: 1/sqrt(D) */
    int layout;                /* index in "bshd|sbhd|bnsd" */
    cp_flags cpf;              /* the context-parallel flags (cp_flags.h) */
    int64_t tp;                /* --tensor-model-parallel-size (head rules only) */
    int64_t seed;
    const char *load, *save;
    const char *cu_list;       /* --cu-seqlens */
    int64_t *cu, ndocs;        /* the documents (from --cu-seqlens or DIR/cu_seqlens.npy) */
    int save_inputs, forward_only, check, reference, allow_non_finite;
    double tol_fwd, tol_grad;
    int64_t iters, warmup, threads;
    const char *trace;         /* --trace FILE (docs/trace.md) */
    int64_t trace_max;         /* --trace-max-events */
} attn_cfg;

enum { LAYOUT_BSHD = 0, LAYOUT_SBHD = 1, LAYOUT_BNSD = 2 };
static const cpa_layout layout_of_choice[] = {CPA_LAYOUT_BSHD, CPA_LAYOUT_SBHD, CPA_LAYOUT_BNSD};

#define AT(f) offsetof(attn_cfg, f)
#define SIZE_FLAG(name, mv, dflt, text, fld) \
    {.flag = name, .type = CLI_INT, .def = dflt, .metavar = mv, .min = 1, .max = INT64_MAX, \
     .help = text, .offset = AT(fld)}

/* The command's own flags; the CP flags go in before --tensor-model-parallel-size. */
static const cli_option attn_options[] = {
    SIZE_FLAG("--micro-batch-size", "B", "1", "Batch size B.", B),
    SIZE_FLAG("--seq-length", "S", "1024", "Sequence length S (queries and keys).", S),
    SIZE_FLAG("--num-attention-heads", "H", "8", "Query heads H.", H),
    SIZE_FLAG("--num-query-groups", "G", NULL,
              "Key/value heads G (GQA), H % G == 0. Default: H, or 1 with "
              "--group-query-attention (as in Megatron).", G),
    {.flag = "--group-query-attention", .type = CLI_FLAG,
     .help = "Megatron's GQA switch; without --num-query-groups it means G = 1.", .offset = AT(gqa)},
    SIZE_FLAG("--kv-channels", "D", "64", "Head dim D of Q and K.", D),
    SIZE_FLAG("--v-channels", "Dv", NULL,
              "Head dim Dv of V and the output (MLA-style Dv != D). Default: D.", Dv),
    /* No default value: "unset" is its own state (1/sqrt(D)), and a given
     * value must be a normal float32, so nothing rounds silently to 0 (the
     * library's "default") or to infinity. */
    {.flag = "--softmax-scale", .type = CLI_FLOAT, .fmin = FLT_MIN, .fmax = FLT_MAX,
     .help = "Scale of Q.K before the softmax, a normal float32 > 0. Default: 1/sqrt(D).",
     .offset = AT(scale)},
    {.flag = "--layout", .type = CLI_CHOICE, .def = "bshd", .choices = "bshd|sbhd|bnsd",
     .help = "Memory order of q, k, v, dout, out and the gradients (the values do not depend "
             "on it).", .offset = AT(layout)},
    {.flag = "--cu-seqlens", .type = CLI_STRING, .metavar = "0,c1,...,S",
     .help = "Packed documents: cumulative lengths 0 = c0 < c1 < ... < cN = S (Megatron's "
             "--reset-attention-mask, TE's cu_seqlens); a query sees only keys of its own "
             "document. With --load: DIR/cu_seqlens.npy (int32 or int64, [N+1]) if present. "
             "Default: one document.", .offset = AT(cu_list)},
#define ATTN_CP_AT 10 /* the CP rows go here */
    {.flag = "--tensor-model-parallel-size", .type = CLI_INT, .def = "1", .metavar = "TP",
     .min = 1, .max = INT_MAX, .help = "Tensor-parallel size the head rules assume "
     "(H % (TP*P) == 0 for Ulysses); attn itself runs no TP.", .offset = AT(tp)},
    {.flag = "--seed", .env = "CPATTN_SEED", .type = CLI_INT, .def = "1234",
     .help = "Seed of the random inputs; each value depends only on the seed, the tensor and "
             "its logical [B,S,N,D] index.", .offset = AT(seed)},
    {.flag = "--load", .type = CLI_STRING, .metavar = "DIR",
     .help = "Read q.npy [B,S,H,D], k.npy [B,S,G,D], v.npy [B,S,G,Dv] and dout.npy [B,S,H,Dv] "
             "(not needed with --forward-only) from DIR instead of random inputs; their shapes "
             "set B, S, H, G, D and Dv. Each rank reads only its own rows (MPI-IO).",
     .offset = AT(load)},
    {.flag = "--save", .type = CLI_STRING, .metavar = "DIR",
     .help = "Write out.npy [B,S,H,Dv], lse.npy [B,H,S] and, unless --forward-only, dq.npy, "
             "dk.npy, dv.npy into DIR (created if missing), always in [B,S,N,D] order and "
             "natural sequence order; each rank writes its own rows (MPI-IO), and a file "
             "appears only once every rank has written.", .offset = AT(save)},
    {.flag = "--save-inputs", .type = CLI_FLAG,
     .help = "With --save: also write the inputs q.npy, k.npy, v.npy, dout.npy, so that "
             "--load can replay the run.", .offset = AT(save_inputs)},
    {.flag = "--forward-only", .type = CLI_FLAG, .help = "Skip the backward pass.",
     .offset = AT(forward_only)},
    {.flag = "--allow-non-finite", .type = CLI_FLAG, .help = "Run --load inputs that hold NaN "
     "or Inf (refused by default, naming the first one); they propagate as in a plain softmax "
     "attention.", .offset = AT(allow_non_finite)},
    {.flag = "--check", .type = CLI_FLAG,
     .help = "Compare with the reference implementation (double accumulation) over the whole "
             "sequence, each rank its own rows with the others' blocks streaming past: per "
             "tensor max abs error, max|ref|, rel = max abs / max|ref|, PASS/FAIL; exit 1 on "
             "FAIL.", .offset = AT(check)},
    {.flag = "--check-tol", .type = CLI_FLOAT, .def = "2e-4", .fmin = 0, .fmax = 1,
     .help = "--check tolerance on rel for out and lse.", .offset = AT(tol_fwd)},
    {.flag = "--check-tol-grad", .type = CLI_FLOAT, .def = "1e-3", .fmin = 0, .fmax = 1,
     .help = "--check tolerance on rel for dq, dk and dv.", .offset = AT(tol_grad)},
    {.flag = "--reference", .type = CLI_FLAG,
     .help = "Run the reference kernel inside the plan (every exchange of the algorithm "
             "still happens): slow, for checking.", .offset = AT(reference)},
    {.flag = "--iters", .type = CLI_INT, .def = "0", .min = 0, .max = 1000000,
     .help = "Timed iterations of the forward and of the backward (median, min, max, "
             "GFLOP/s; with P > 1 also a per-rank table).", .offset = AT(iters)},
    {.flag = "--warmup", .type = CLI_INT, .def = "1", .min = 0, .max = 1000000,
     .help = "Untimed iterations before the --iters ones.", .offset = AT(warmup)},
    {.flag = "--threads", .env = "CPATTN_THREADS", .type = CLI_INT, .def = "0", .min = 0,
     .max = 4096, .help = "OpenMP threads of the kernel (per rank); 0 means "
     "omp_get_max_threads().", .offset = AT(threads)},
    /* --trace, --trace-max-events (trace_opts.h): last, so no row index above moves. */
    TRACE_FLAG_ROWS(AT(trace), AT(trace_max)),
};

#define ATTN_OWN ((int)(sizeof attn_options / sizeof attn_options[0]))
static cli_option attn_table[ATTN_OWN + CP_FLAG_COUNT];

static cli_spec attn_spec = {
    .command = "cpattn attn",
    .synopsis = "[flags]",
    .description =
        "Attention forward and backward on deterministic random inputs (or .npy files), "
        "single-process or context-parallel over MPI (mpiexec -n P cpattn attn "
        "--context-parallel-size P ...), with optional comparison against the reference "
        "implementation, timing, and .npy output.",
    .options = attn_table, /* attn_options with the CP flags: see cmd_attn_spec() */
    .epilog =
        "Output (stdout, rank 0 only): the effective configuration as '# ' lines; then\n"
        "  first run: forward X ms, backward Y ms\n"
        "  digest out=... lse=... dq=... dk=... dv=...   (FNV-1a of the bits in logical\n"
        "        order: equal digests mean bitwise-equal results)\n"
        "  check <tensor> max_abs A  max|ref| R  rel A/R  tol T  PASS|FAIL  (--check)\n"
        "  check: PASS|FAIL\n"
        "  forward  median M ms (min m, max x, n=N)  G GFLOP/s               (--iters)\n"
        "  backward median ...                       (backward flops = 2.5x forward)\n"
        "  peak RSS N MiB\n\n"
        "Every rank holds only its own S/P rows of every tensor: it generates them (random\n"
        "inputs depend only on the global index), reads and writes them in the global .npy\n"
        "files with collective MPI-IO (--load, --save), and checks them against the\n"
        "reference with the other ranks' blocks streaming past (--check).  The digests are\n"
        "sums of per-row hashes keyed by global position, the same for any P and split.\n"
        "With --context-parallel-size P > 1 the configuration adds\n"
        "  # context parallel: P ranks (MPI world size P), <algo>, ..., split zigzag|contiguous\n"
        "the first-run times are the slowest rank's, and --iters prints one row per rank\n"
        "  rank fwd_ms bwd_ms fwd_wait_ms bwd_wait_ms fwd_sent_MiB bwd_sent_MiB peak_RSS_MiB\n"
        "(medians over the iterations; wait = time blocked on MPI, exposed communication;\n"
        "sent = bytes sent by the rank per call), then the forward/backward lines from\n"
        "the slowest rank's statistics with GFLOP/s of the whole problem, and\n"
        "  imbalance (max/mean rank compute_s) fwd X bwd Y\n\n"
        "Tolerances of --check: the kernel accumulates in fp32 over up to S keys, the\n"
        "reference in double, and rounding error grows about like sqrt(S)*eps32*|values|,\n"
        "so out and lse are held to max|a-ref|/max|ref| <= 2e-4.  Gradients pass through\n"
        "the softmax derivative P*(dP - rowsum(dO*O)), whose cancellation and the extra\n"
        "sums over queries and heads (dK, dV) lose more digits: 1e-3.  LSE entries of\n"
        "rows that see no key must be -inf on both sides.\n\n"
        "Exit codes (the same on every rank): 0 ok, 1 runtime failure or --check FAIL,\n"
        "2 bad usage.\n\n"
        "Examples:\n"
        "  cpattn attn --seq-length 4096 --num-query-groups 2 --check\n"
        "  cpattn attn --seq-length 8192 --kv-channels 128 --iters 5 --threads 2\n"
        "  cpattn attn --save run1 --save-inputs && cpattn attn --load run1 --check\n"
        "  mpiexec -n 4 cpattn attn --context-parallel-size 4 --context-parallel-algo\n"
        "      megatron_cp_algo --cp-window-size 2 --seq-length 4096 --check\n",
};


const cli_spec *cmd_attn_spec(void)
{
    if (!attn_spec.count)
        attn_spec.count = cp_build_table(attn_table, attn_options, ATTN_OWN, ATTN_CP_AT,
                                         AT(cpf), "Ranks sharing the sequence (context "
                                         "parallelism); must equal the MPI world size (mpiexec "
                                         "-n P). 1: one rank runs the plan over the whole "
                                         "sequence.");
    return &attn_spec;
}

/* ------------------------------------------------------------------------ */
/* Messages                                                                  */
/* ------------------------------------------------------------------------ */

/* Errors are recorded (tool_fail) and printed once by rank 0 when the ranks
 * agree on the outcome of a step (tool_agree); see util.h. */
#define fail(...) tool_fail(EXIT_RUNTIME, __VA_ARGS__)

static int runtime_error(cpa_status status)
{
    return fail("%s: %s", cpa_status_string(status), cpa_last_error());
}

/* A failed .npy call: the library's message, with the path if it lacks it. */
static int npy_error(cpa_status status, const char *path)
{
    const char *msg = cpa_last_error();
    if (strstr(msg, path))
        return fail("%s: %s", cpa_status_string(status), msg);
    return fail("%s: %s: %s", cpa_status_string(status), path, msg);
}

/* ------------------------------------------------------------------------ */
/* Resolving the flags into one problem                                      */
/* ------------------------------------------------------------------------ */

/* Read the 4-D shape of DIR/name; an exit code (usage if missing or not
 * 4-D, runtime if malformed). */
static int npy_shape4(const char *dir, const char *name, const char *dims, int64_t shape[4])
{
    char path[4096];
    int ndim;
    int64_t sh[CPA_MAX_DIMS];
    if (!tool_join_path(path, sizeof path, dir, name))
        return cli_usage(&attn_spec, "--load %s: path too long", dir);
    if (!tool_file_exists(path))
        return cli_usage(&attn_spec, "--load %s: %s: no such file (expected %s)", dir, path,
                         dims);
    cpa_status st = cpa_npy_shape(path, &ndim, sh);
    if (st != CPA_OK)
        return npy_error(st, path);
    if (ndim != 4)
        return cli_usage(&attn_spec, "--load %s: %s has %d dims: expected 4 (%s)", dir, path,
                         ndim, dims);
    for (int i = 0; i < 4; ++i) {
        if (sh[i] < 1)
            return cli_usage(&attn_spec, "--load %s: %s has a zero dim: sizes must be >= 1",
                             dir, path);
        shape[i] = sh[i];
    }
    return EXIT_OK;
}

/* Set a size from a loaded file, refusing a disagreeing flag. */
static int take_size(cli_args *args, const char *flag, int64_t *field, int64_t value,
                     const char *file, const char *letter)
{
    if (cli_given(args, flag) && *field != value)
        return cli_usage(&attn_spec, "%s %lld: disagrees with --load (%s has %s = %lld)", flag,
                         (long long)*field, file, letter, (long long)value);
    *field = value;
    cli_mark_derived(args, flag, "from --load");
    return EXIT_OK;
}

/* A loaded tensor's dim must equal the one already set by q.npy. */
static int same_dim(const char *dir, const char *file, const char *letter, int64_t got,
                    int64_t want)
{
    if (got == want)
        return EXIT_OK;
    return cli_usage(&attn_spec, "--load %s: %s has %s = %lld but q.npy has %s = %lld", dir,
                     file, letter, (long long)got, letter, (long long)want);
}

static int shapes_from_load(cli_args *args, attn_cfg *c)
{
    int64_t q[4], k[4], v[4], g[4];
    int rc;
    if (!tool_is_dir(c->load))
        return cli_usage(&attn_spec, "--load %s: no such directory", c->load);
    if ((rc = npy_shape4(c->load, "q.npy", "[B,S,H,D]", q)) ||
        (rc = npy_shape4(c->load, "k.npy", "[B,S,G,D]", k)) ||
        (rc = npy_shape4(c->load, "v.npy", "[B,S,G,Dv]", v)))
        return rc;
    if ((rc = take_size(args, "--micro-batch-size", &c->B, q[0], "q.npy", "B")) ||
        (rc = take_size(args, "--seq-length", &c->S, q[1], "q.npy", "S")) ||
        (rc = take_size(args, "--num-attention-heads", &c->H, q[2], "q.npy", "H")) ||
        (rc = take_size(args, "--kv-channels", &c->D, q[3], "q.npy", "D")) ||
        (rc = take_size(args, "--num-query-groups", &c->G, k[2], "k.npy", "G")) ||
        (rc = take_size(args, "--v-channels", &c->Dv, v[3], "v.npy", "Dv")))
        return rc;
    if ((rc = same_dim(c->load, "k.npy", "B", k[0], c->B)) ||
        (rc = same_dim(c->load, "k.npy", "S", k[1], c->S)) ||
        (rc = same_dim(c->load, "k.npy", "D", k[3], c->D)) ||
        (rc = same_dim(c->load, "v.npy", "B", v[0], c->B)) ||
        (rc = same_dim(c->load, "v.npy", "S", v[1], c->S)))
        return rc;
    if (v[2] != k[2])
        return cli_usage(&attn_spec, "--load %s: v.npy has G = %lld but k.npy has G = %lld",
                         c->load, (long long)v[2], (long long)k[2]);
    if (c->forward_only)
        return EXIT_OK;
    if ((rc = npy_shape4(c->load, "dout.npy", "[B,S,H,Dv]; not needed with --forward-only", g)))
        return rc;
    for (int i = 0; i < 4; ++i) {
        int64_t want[4] = {c->B, c->S, c->H, c->Dv};
        static const char *const letters[4] = {"B", "S", "H", "Dv"};
        if ((rc = same_dim(c->load, "dout.npy", letters[i], g[i], want[i])))
            return rc;
    }
    return EXIT_OK;
}

/* Rank 0 reads the headers of the --load files for their shapes; every
 * rank gets the verdict and the shape (the ranks read their rows later, each
 * checking the headers again). */
static int shapes_from_load_mpi(cli_args *args, attn_cfg *c)
{
    int rc = tool_agree(tool_rank() == 0 ? shapes_from_load(args, c) : EXIT_OK);
    if (rc || tool_world_size() == 1)
        return rc;
    int64_t sz[6] = {c->B, c->S, c->H, c->G, c->D, c->Dv};
    if (cpa_comm_bcast(sz, 6, MPI_INT64_T, 0, MPI_COMM_WORLD, "the --load shapes") != CPA_OK)
        return EXIT_RUNTIME;
    c->B = sz[0], c->S = sz[1], c->H = sz[2], c->G = sz[3], c->D = sz[4], c->Dv = sz[5];
    return EXIT_OK;
}

/* Check that every tensor's byte count fits in 64 bits. */
static int check_sizes(const attn_cfg *c)
{
    int64_t n, maxd = c->D > c->Dv ? c->D : c->Dv, groups = c->H > c->G ? c->H : c->G;
    if (tool_mul_ok(c->B, c->S, &n) && tool_mul_ok(n, groups, &n) && tool_mul_ok(n, maxd, &n) &&
        tool_mul_ok(n, 4 * 16, &n)) /* 4 bytes; at most 16 buffers of that size */
        return EXIT_OK;
    return cli_usage(&attn_spec,
                     "--micro-batch-size %lld --seq-length %lld --num-attention-heads %lld "
                     "--kv-channels %lld --v-channels %lld: tensor sizes overflow 64 bits "
                     "(B*S*H*max(D,Dv)*4 bytes must fit)",
                     (long long)c->B, (long long)c->S, (long long)c->H, (long long)c->D,
                     (long long)c->Dv);
}

/* --cu-seqlens "0,37,...,S" into c->cu; a usage error naming cu_seqlens. */
static int parse_cu_list(attn_cfg *c)
{
    int64_t n = 1;
    for (const char *p = c->cu_list; *p; ++p)
        n += *p == ',';
    if (!(c->cu = malloc(sizeof(int64_t) * (size_t)n)))
        return fail("out of memory: --cu-seqlens");
    const char *p = c->cu_list;
    for (int64_t i = 0; i < n; ++i) {
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || (*end != ',' && *end != '\0'))
            return cli_usage(&attn_spec, "--cu-seqlens %s: entry %lld is not an integer "
                             "(expected 0,c1,...,S: cumulative document lengths)", c->cu_list,
                             (long long)i);
        c->cu[i] = v;
        p = end + (*end == ',');
    }
    c->ndocs = n - 1;
    return EXIT_OK;
}

/* The documents: --cu-seqlens, or DIR/cu_seqlens.npy with --load (every
 * rank reads the small file itself), checked against S by the library's
 * rule: a bad one is a usage error, the same on every rank. */
static int documents(attn_cfg *c)
{
    char path[4096] = "";
    int from_file = c->load && tool_join_path(path, sizeof path, c->load, "cu_seqlens.npy") &&
                    tool_file_exists(path);
    if (from_file && c->cu_list)
        return cli_usage(&attn_spec, "--cu-seqlens: conflicts with %s (give one of them)", path);
    int rc = EXIT_OK;
    if (c->cu_list) {
        rc = parse_cu_list(c);
    } else if (from_file) {
        cpa_status st = cpa_npy_load_index(path, &c->cu, &c->ndocs);
        if (st != CPA_OK)
            rc = tool_fail(EXIT_USAGE, "cu_seqlens: %s", cpa_last_error());
        else
            c->ndocs -= 1;
    }
    if ((rc = tool_agree(rc)) || !c->cu)
        return rc;
    cpa_mask m = {CPA_MASK_NONE, 0, c->cu, c->ndocs};
    if (c->ndocs < 1)
        return cli_usage(&attn_spec, "%s%s: cu_seqlens needs at least 2 entries 0 = c0 < ... < "
                         "cN = S", from_file ? path : "--cu-seqlens ",
                         from_file ? "" : c->cu_list);
    if (cpa_mask_check(m, c->S) != CPA_OK)
        return cli_usage(&attn_spec, "%s%s: %s", from_file ? path : "--cu-seqlens ",
                         from_file ? "" : c->cu_list, cpa_last_error());
    return EXIT_OK;
}

/* Cross-flag rules and derived values; an exit code, the same on every
 * rank.  The context-parallel rules (window, degrees, divisibility) are the
 * plan's: cpa_plan_create checks them collectively. */
static int resolve(cli_args *args, attn_cfg *c)
{
    int rc;
    if (c->save_inputs && !c->save)
        return cli_usage(&attn_spec, "--save-inputs: needs --save DIR");
    if (c->trace && (rc = tool_agree(tool_rank() == 0 ? trace_check_path(c->trace) : 0)))
        return rc; /* the trace's folder, before any work */
    if (c->cpf.bnsd) {
        if (cli_given(args, "--layout") && c->layout != LAYOUT_BNSD) {
            char name[16];
            return cli_usage(&attn_spec, "--megatron-cp-in-bnsd: conflicts with --layout %s",
                             cli_choice_name(&attn_spec, "--layout", c->layout, name, sizeof name));
        }
        c->layout = LAYOUT_BNSD;
        cli_mark_derived(args, "--layout", "--megatron-cp-in-bnsd");
    }
    const int world = tool_world_size();
    if (c->cpf.cp != world)
        return cli_usage(&attn_spec,
                         "--context-parallel-size %lld: must equal the MPI world size %d (start "
                         "it as mpiexec -n %lld, or pass --context-parallel-size %d)",
                         (long long)c->cpf.cp, world, (long long)c->cpf.cp, world);
    if (c->load && (rc = shapes_from_load_mpi(args, c)))
        return rc;
    if (!c->G) {
        c->G = c->gqa ? 1 : c->H;
        cli_mark_derived(args, "--num-query-groups",
                         c->gqa ? "--group-query-attention (Megatron default)"
                                : "= --num-attention-heads");
    }
    if (!c->Dv) {
        c->Dv = c->D;
        cli_mark_derived(args, "--v-channels", "= --kv-channels");
    }
    if ((rc = check_sizes(c)))
        return rc;
    return documents(c); /* the attention rules (H % G, the degrees) are the plan's */
}

/* ------------------------------------------------------------------------ */
/* The run                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct attn_run {
    attn_cfg c;
    float scale_arg;       /* --softmax-scale as given (0: the library's default) */
    attn_shape sh;
    int P;                 /* ranks = world size */
    cpa_plan *plan;
    cpa_plan_saved *saved; /* the forward's state for the backward */
    cpa_split split;
    attn_set set;          /* this rank's rows of every tensor */
} attn_run;

static unsigned results(const attn_cfg *c)
{
    return c->forward_only ? T_FORWARD : T_FORWARD | T_GRADS;
}

static cpa_cp_config plan_config(const attn_run *r)
{
    const attn_cfg *c = &r->c;
    cpa_cp_config cc = {
        .tp_size = (int)c->tp,
        .layout = r->sh.layout,
        .impl = c->reference ? CPA_IMPL_REFERENCE : CPA_IMPL_FAST,
        .batch = c->B,
        .seq_length = c->S,
        .num_heads = c->H,
        .num_kv_heads = c->G,
        .head_dim = c->D,
        .v_head_dim = c->Dv,
        .softmax_scale = r->scale_arg,
        .num_threads = (int)c->threads,
    };
    cp_flags_apply(&c->cpf, &cc);
    cc.mask.cu_seqlens = c->cu, cc.mask.num_docs = c->ndocs;
    return cc;
}

/* The plan, which checks every attention rule collectively (a broken rule
 * is a usage error, the same message on every rank). */
static int make_plan(attn_run *r)
{
    cpa_cp_config cc = plan_config(r);
    cpa_status st = cpa_plan_create(MPI_COMM_WORLD, &cc, &r->plan);
    int rc = EXIT_OK;
    if (st == CPA_ERR_ARG)
        rc = tool_fail(EXIT_USAGE, "%s", cpa_last_error());
    else if (st != CPA_OK)
        rc = runtime_error(st);
    if (!rc && (st = cpa_plan_saved_create(r->plan, &r->saved)) != CPA_OK)
        rc = runtime_error(st);
    if (!rc)
        r->split = cpa_plan_split(r->plan);
    return tool_agree(rc);
}

/* This rank's estimate of what the run needs (its rows, the plan, the saved
 * state, the check's buffers), refused early if above the machine's or the
 * container's limit.  A configuration the plan refuses is left to it. */
static int check_memory(const attn_run *r)
{
    const attn_cfg *c = &r->c;
    const int64_t Sl = (c->S + r->P - 1) / r->P + 2; /* any S: at most a few rows above S/P */
    cpa_cp_config pc = plan_config(r);
    const int64_t plan = cpa_plan_memory_bytes(&pc), saved = cpa_plan_saved_bytes(&pc);
    if (plan < 0 || saved < 0)
        return EXIT_OK;
    double bytes = attn_bytes(&r->sh, T_INPUTS | results(c), Sl) + (double)plan + (double)saved;
    if (c->check)
        bytes += attn_check_bytes(&r->sh, Sl, c->forward_only);
    return tool_check_memory("this run (its tensors, plan and kernel context)", bytes);
}

/* The lines after the configuration: how the run is parallel, the threads. */
static void print_setup(const attn_run *r)
{
    const attn_cfg *c = &r->c;
    char algo[256];
    cp_flags_describe(&c->cpf, algo, sizeof algo);
    if (r->P == 1)
        tool_say("# context parallel: off (--context-parallel-size 1, MPI world size %d): one "
                 "rank, the %s plan over the whole sequence\n", tool_world_size(), algo);
    else {
        /* Any S: ranks may hold different counts (differing by a few rows). */
        int64_t lo = c->S, hi = 0;
        for (int i = 0; i < r->P; ++i) {
            const int64_t n = cpa_split_rows(r->split, c->S, i);
            lo = n < lo ? n : lo;
            hi = n > hi ? n : hi;
        }
        char rows[64];
        if (lo == hi)
            snprintf(rows, sizeof rows, "%lld", (long long)lo);
        else
            snprintf(rows, sizeof rows, "%lld to %lld", (long long)lo, (long long)hi);
        tool_say("# context parallel: %d ranks (MPI world size %d), %s, split %s, %s of %lld "
                 "rows per rank\n", r->P, tool_world_size(), algo,
                 r->split.kind == CPA_SPLIT_ZIGZAG   ? "zigzag"
                 : r->split.kind == CPA_SPLIT_CHUNKS ? "document-balanced chunks"
                                                     : "contiguous",
                 rows, (long long)c->S);
    }
    cpa_cp_config pc = plan_config(r);
    double fwd = 0, bwd = 0;
    char mem[32], vf[32], vb[32];
    if (cpa_plan_volume(&pc, &fwd, &bwd) == CPA_OK)
        tool_say("# plan: %s per rank; sends %s per forward, %s per backward (schedule)\n",
                 tool_format_bytes((double)cpa_plan_memory_bytes(&pc), mem, sizeof mem),
                 tool_format_bytes(fwd, vf, sizeof vf), tool_format_bytes(bwd, vb, sizeof vb));
#ifdef _OPENMP
    int threads = c->threads ? (int)c->threads : omp_get_max_threads();
#else
    int threads = 1;
#endif
    tool_say("# kernel threads %d per rank, implementation %s\n", threads,
             c->reference ? "reference" : "fast");
    cpa_isa isa = CPA_ISA_AUTO;
    cpa_isa_resolve(CPA_ISA_AUTO, &isa); /* the plan has resolved it already */
    tool_say_platform(isa);
}

/* One timed forward (which = 0) or backward (1), all ranks starting
 * together; this rank's seconds in *sec.  An agreed exit code. */
static int timed_call(void *arg, int which, double *sec)
{
    attn_run *r = arg;
    const attn_set *s = &r->set;
    if (r->P > 1 && tool_barrier(which ? "before a timed backward" : "before a timed forward"))
        return EXIT_RUNTIME;
    double t0 = tool_now();
    cpa_status st =
        which ? cpa_plan_backward(r->plan, r->saved, attn_view(s, T_Q), attn_view(s, T_K),
                                  attn_view(s, T_V), attn_view(s, T_OUT), attn_view(s, T_LSE),
                                  attn_view(s, T_DOUT), attn_view(s, T_DQ), attn_view(s, T_DK),
                                  attn_view(s, T_DV))
              : cpa_plan_forward(r->plan, r->saved, attn_view(s, T_Q), attn_view(s, T_K),
                                 attn_view(s, T_V), attn_view(s, T_OUT), attn_view(s, T_LSE));
    *sec = tool_now() - t0;
    return tool_agree(st == CPA_OK ? EXIT_OK : runtime_error(st));
}

static void plan_stats(void *arg, cpa_plan_stats *st)
{
    cpa_plan_last_stats(((attn_run *)arg)->plan, st);
}

/* For rows that take --cp-load-balance: the visible-pair imbalance of the
 * zigzag and of the document-aware assignment of this configuration (-1
 * where it does not apply). */
static void balance_figures(const attn_run *r, double *zigzag, double *documents)
{
    cpa_cp_config pc = plan_config(r);
    cpa_algo_info info;
    *zigzag = *documents = -1;
    const int cpr = cpa_split_document_chunks(r->c.S, r->P);
    if (r->P < 2 || cpa_algo_describe(pc.algo, &info) != CPA_OK || !info.uses_balance || !cpr)
        return;
    cpa_split zz = {.kind = pc.mask.kind == CPA_MASK_CAUSAL ? CPA_SPLIT_ZIGZAG
                                                             : CPA_SPLIT_CONTIGUOUS,
                    .P = r->P, .U = 1};
    *zigzag = cpa_split_imbalance(zz, r->c.S, pc.mask);
    if (r->split.kind == CPA_SPLIT_CHUNKS) {
        *documents = cpa_split_imbalance(r->split, r->c.S, pc.mask);
        return;
    }
    int32_t *table = malloc(sizeof(int32_t) * (size_t)(r->P * cpr));
    if (table && cpa_split_balance(r->c.S, r->P, cpr, pc.mask, table) == CPA_OK) {
        cpa_split ch = {.kind = CPA_SPLIT_CHUNKS, .P = r->P, .U = 1, .chunks_per_rank = cpr,
                        .chunk_of = table};
        *documents = cpa_split_imbalance(ch, r->c.S, pc.mask);
    }
    free(table);
}

/* The forward flops of the whole problem (all ranks). */
static double problem_flops(const attn_run *r)
{
    cpa_attn_desc d;
    memset(&d, 0, sizeof d);
    d.q = cpa_tensor_attn(NULL, r->sh.layout, r->c.B, r->c.S, r->c.H, r->c.D);
    d.k = cpa_tensor_attn(NULL, r->sh.layout, r->c.B, r->c.S, r->c.G, r->c.D);
    d.v = cpa_tensor_attn(NULL, r->sh.layout, r->c.B, r->c.S, r->c.G, r->c.Dv);
    d.mask = plan_config(r).mask;
    return cpa_attn_forward_flops(&d);
}

/* The main forward (+ backward) whose results are digested, saved and
 * checked. */
static int first_run(attn_run *r)
{
    const int fo = r->c.forward_only;
    double t[2] = {0, 0};
    int rc = timed_call(r, 0, &t[0]);
    if (rc)
        return rc;
    if (!fo)
        rc = timed_call(r, 1, &t[1]);
    tool_max_to_root(t, 2);
    tool_say("first run: forward %.3f ms", 1e3 * t[0]);
    if (!fo && !rc)
        tool_say(", backward %.3f ms", 1e3 * t[1]);
    if (r->P > 1)
        tool_say("  (slowest of %d ranks)", r->P);
    tool_say("\n");
    return rc ? rc : attn_print_digests(&r->set, results(&r->c));
}

static int setup(attn_run *r)
{
    const attn_cfg *c = &r->c;
    int rc;
    r->P = (int)c->cpf.cp;
    attn_shape sh = {c->B, c->S, c->H, c->G, c->D, c->Dv, layout_of_choice[c->layout]};
    r->sh = sh;
    /* Before the plan or any tensor is allocated: does it all fit? */
    if ((rc = tool_agree(check_memory(r))) || (rc = make_plan(r)))
        return rc;
    /* Rank 0 makes the --save folder: prove it can before computing anything
     * (and only once the configuration is known to be valid). */
    if (c->save &&
        (rc = tool_agree(tool_rank() == 0 ? tool_check_output_dir("--save", c->save) : 0)))
        return rc;
    if ((rc = attn_set_alloc(&r->set, &r->sh, r->split, cpa_plan_rank(r->plan),
                             T_INPUTS | results(c))))
        return rc;
    print_setup(r);
    if (c->load)
        return attn_load(&r->set, c->load, c->forward_only, c->allow_non_finite);
    attn_fill_random(&r->set, (uint64_t)c->seed);
    return EXIT_OK;
}

static int execute(attn_run *r)
{
    const attn_cfg *c = &r->c;
    int rc;
    if ((rc = setup(r)) || (c->trace && (rc = trace_begin(c->trace_max))) ||
        (rc = first_run(r)))
        return rc;
    if (c->save && (rc = attn_save(&r->set, c->save,
                                   results(c) | (c->save_inputs ? T_INPUTS : 0u))))
        return rc;
    if (c->check) {
        attn_check_cfg cc = {r->split, plan_config(r).mask, r->scale_arg, c->forward_only,
                             c->tol_fwd, c->tol_grad};
        if ((rc = attn_check(&r->set, &cc)))
            return rc;
    }
    if (c->iters > 0) {
        attn_timing t = {c->iters, c->warmup, c->forward_only, r->P, problem_flops(r), -1, -1,
                         timed_call, plan_stats, r};
        balance_figures(r, &t.imbalance_zigzag, &t.imbalance_documents);
        rc = attn_report_timing(&t);
    }
    return rc;
}

static int attn_main(int argc, char **argv)
{
    attn_run run;
    cli_args args;
    memset(&run, 0, sizeof run);
    cli_result pr = cli_parse(&args, cmd_attn_spec(), &run.c, argc, argv);
    if (pr != CLI_OK)
        return pr == CLI_HELP ? EXIT_OK : EXIT_USAGE;
    cpa_set_comm_timeout(run.c.cpf.comm_timeout);
    int rc = resolve(&args, &run.c);
    if (rc)
        return rc;
    /* The library is given 0 for the default scale; show the value it means. */
    run.scale_arg = cli_given(&args, "--softmax-scale") ? (float)run.c.scale : 0.0f;
    if (!cli_given(&args, "--softmax-scale")) {
        run.c.scale = 1.0 / sqrt((double)run.c.D);
        cli_mark_derived(&args, "--softmax-scale", "= 1/sqrt(--kv-channels)");
    }
    if (tool_rank() == 0)
        cli_print_config(&args, stdout, "# ");
    rc = execute(&run);
    if (!rc && run.c.trace) /* every call of the run, written once it succeeded */
        rc = trace_finish(run.c.trace);
    cpa_trace_stop();
    double rss = tool_peak_rss_mib();
    tool_max_to_root(&rss, 1);
    if (run.P > 1)
        tool_say("peak RSS %.1f MiB (max over %d ranks)\n", rss, run.P);
    else
        tool_say("peak RSS %.1f MiB\n", rss);
    attn_set_free(&run.set);
    free(run.c.cu);
    cpa_plan_saved_destroy(run.saved);
    cpa_plan_destroy(run.plan);
    return rc;
}

int cmd_attn(int argc, char **argv)
{
    return tool_mpi_command("cpattn attn", 1, attn_main, argc, argv);
}
