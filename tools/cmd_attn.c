/*
 * cmd_attn.c — `cpattn attn`: attention forward and backward through the
 * public API, single-process (the local kernel) or context-parallel over MPI
 * (a cpa_plan: ring, double ring, Ulysses, hybrid), on deterministic random
 * inputs or on .npy files.
 *
 * It is the user-facing way to run attention once: it can save the results
 * as .npy (--save), compare them with the reference implementation (--check:
 * max abs / max rel error per tensor, PASS/FAIL, exit 1 on FAIL), and time
 * repeated calls (--iters: median, spread, GFLOP/s; per rank with P > 1).
 * It is not a benchmark sweep (that is `cpattn bench`).
 *
 * MPI: the command always initialises MPI (a plain `cpattn attn` is a
 * singleton of world size 1) and finalises it on every path.  With
 * --context-parallel-size P > 1 (= the world size) each rank holds S/P rows
 * of every tensor, split as the plan says (zigzag or contiguous); rank 0
 * reads --load files and sends each rank its shard, and gathers the results
 * back for the digest, --save and --check, which therefore always see the
 * whole sequence in natural order, exactly like a single-process run.
 * Only rank 0 prints.  Every step that can fail on some ranks only ends with
 * tool_agree(): all ranks take the worst exit code, and rank 0 prints the first
 * failing rank's message, so no rank is left waiting in a collective.
 *
 * Random inputs depend only on (--seed, tensor, logical [B, S, N, D] index),
 * never on --layout or on how the sequence is split: each rank generates
 * exactly its slice of the same global tensors.
 *
 * Exit codes (the same on every rank): 0 ok, 1 runtime failure (library
 * error, I/O, --check FAIL), 2 bad usage (one line naming the flag, the value
 * and the rule).
 */
#include "args.h"
#include "util.h"
#include "cmd.h"

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
    int mask;                  /* index in "causal|general" */
    double scale;              /* --softmax-scale; unset: 1/sqrt(D) */
    double comm_timeout;       /* --comm-timeout, seconds */
    int layout;                /* index in "bshd|sbhd|bnsd" */
    int bnsd;                  /* --megatron-cp-in-bnsd */
    int64_t cp, window, ulysses, tp; /* --context-parallel-size, --cp-window-size, ... */
    int algo;                  /* index in the --context-parallel-algo choices */
    int overlap;               /* --use-cp-send-recv-overlap */
    int64_t seed;
    const char *load, *save;
    int save_inputs, forward_only, check, reference, allow_non_finite;
    double tol_fwd, tol_grad;
    int64_t iters, warmup, threads;
} attn_cfg;

/* Indices in the choice lists of --attention-mask-type, --layout and
 * --context-parallel-algo. */
enum { MASK_CAUSAL = 0, MASK_GENERAL = 1 };
enum { LAYOUT_BSHD = 0, LAYOUT_SBHD = 1, LAYOUT_BNSD = 2 };
enum { ALGO_ULYSSES = 0, ALGO_RING = 1, ALGO_HYBRID = 2 };
static const cpa_layout layout_of_choice[] = {CPA_LAYOUT_BSHD, CPA_LAYOUT_SBHD, CPA_LAYOUT_BNSD};
static const cpa_algo algo_of_choice[] = {CPA_ALGO_ULYSSES, CPA_ALGO_RING, CPA_ALGO_HYBRID};

#define AT(f) offsetof(attn_cfg, f)
#define SIZE_FLAG(name, mv, dflt, text, fld) \
    {.flag = name, .type = CLI_INT, .def = dflt, .metavar = mv, .min = 1, .max = INT64_MAX, \
     .help = text, .offset = AT(fld)}
#define RANKS_FLAG(name, mv, dflt, text, fld) \
    {.flag = name, .type = CLI_INT, .def = dflt, .metavar = mv, .min = 1, .max = INT_MAX, \
     .help = text, .offset = AT(fld)}

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
    {.flag = "--attention-mask-type", .type = CLI_CHOICE, .def = "causal", .choices = "causal|general",
     .help = "causal: query i sees keys <= i; general: every query sees every key.",
     .offset = AT(mask)},
    /* No default value: "unset" is its own state (1/sqrt(D)), and a given
     * value must be a normal float32, so nothing rounds silently to 0 (the
     * library's "default") or to infinity. */
    {.flag = "--softmax-scale", .type = CLI_FLOAT, .fmin = FLT_MIN, .fmax = FLT_MAX,
     .help = "Scale of Q.K before the softmax, a normal float32 > 0. Default: 1/sqrt(D).",
     .offset = AT(scale)},
    {.flag = "--layout", .type = CLI_CHOICE, .def = "bshd", .choices = "bshd|sbhd|bnsd",
     .help = "Memory order of q, k, v, dout, out and the gradients (the values do not depend "
             "on it).", .offset = AT(layout)},
    {.flag = "--megatron-cp-in-bnsd", .type = CLI_FLAG, .help = "Same as --layout bnsd.",
     .offset = AT(bnsd)},
    RANKS_FLAG("--context-parallel-size", "P", "1",
               "Ranks sharing the sequence (context parallelism); must equal the MPI world size "
               "(mpiexec -n P). 1: the single-process kernel, whatever the algorithm.", cp),
    {.flag = "--context-parallel-algo", .type = CLI_CHOICE, .def = "ulysses_cp_algo",
     .choices = "ulysses_cp_algo|megatron_cp_algo|hybrid_cp_algo",
     .help = "With P > 1: Ulysses all-to-all, ring attention (double ring with "
             "--cp-window-size > 1), or hybrid Ulysses x ring.", .offset = AT(algo)},
    RANKS_FLAG("--cp-window-size", "W", "1",
               "Ring and hybrid: ranks per inner ring window; W > 1 is the double ring "
               "(1 <= W < R, R % W == 0; R = P, or P/U for hybrid).", window),
    RANKS_FLAG("--ulysses-degree-in-cp", "U", NULL,
               "Hybrid: Ulysses group size U (U > 1, P % U == 0, P/U > 1, H % (U*TP) == 0). "
               "Default: unset.", ulysses),
    {.flag = "--use-cp-send-recv-overlap", .type = CLI_FLAG,
     .help = "Ring: the send and the receive of each step on separate communicators (full "
             "duplex).", .offset = AT(overlap)},
    RANKS_FLAG("--tensor-model-parallel-size", "TP", "1",
               "Tensor-parallel size the head rules assume (H % (TP*P) == 0 for Ulysses); "
               "attn itself runs no TP.", tp),
    {.flag = "--seed", .env = "CPATTN_SEED", .type = CLI_INT, .def = "1234",
     .help = "Seed of the random inputs; each value depends only on the seed, the tensor and "
             "its logical [B,S,N,D] index.", .offset = AT(seed)},
    {.flag = "--load", .type = CLI_STRING, .metavar = "DIR",
     .help = "Read q.npy [B,S,H,D], k.npy [B,S,G,D], v.npy [B,S,G,Dv] and dout.npy [B,S,H,Dv] "
             "(not needed with --forward-only) from DIR instead of random inputs; their shapes "
             "set B, S, H, G, D and Dv. With P > 1 rank 0 reads them and sends each rank its "
             "shard.", .offset = AT(load)},
    {.flag = "--save", .type = CLI_STRING, .metavar = "DIR",
     .help = "Write out.npy [B,S,H,Dv], lse.npy [B,H,S] and, unless --forward-only, dq.npy, "
             "dk.npy, dv.npy into DIR (created if missing), always in [B,S,N,D] order and "
             "natural sequence order (gathered on rank 0 with P > 1).", .offset = AT(save)},
    {.flag = "--save-inputs", .type = CLI_FLAG,
     .help = "With --save: also write the inputs q.npy, k.npy, v.npy, dout.npy, so that "
             "--load can replay the run.", .offset = AT(save_inputs)},
    {.flag = "--forward-only", .type = CLI_FLAG, .help = "Skip the backward pass.",
     .offset = AT(forward_only)},
    {.flag = "--allow-non-finite", .type = CLI_FLAG, .help = "Run --load inputs that hold NaN "
     "or Inf (refused by default, naming the first one); they propagate as in a plain softmax "
     "attention.", .offset = AT(allow_non_finite)},
    {.flag = "--check", .type = CLI_FLAG,
     .help = "Compare with the single-process reference implementation (double accumulation) "
             "on the whole sequence: per tensor max abs error, max|ref|, rel = max abs / "
             "max|ref|, PASS/FAIL; exit 1 on FAIL.", .offset = AT(check)},
    {.flag = "--check-tol", .type = CLI_FLOAT, .def = "2e-4", .fmin = 0, .fmax = 1,
     .help = "--check tolerance on rel for out and lse.", .offset = AT(tol_fwd)},
    {.flag = "--check-tol-grad", .type = CLI_FLOAT, .def = "1e-3", .fmin = 0, .fmax = 1,
     .help = "--check tolerance on rel for dq, dk and dv.", .offset = AT(tol_grad)},
    {.flag = "--reference", .type = CLI_FLAG,
     .help = "Run the reference implementation as the main path (P = 1 only).",
     .offset = AT(reference)},
    {.flag = "--iters", .type = CLI_INT, .def = "0", .min = 0, .max = 1000000,
     .help = "Timed iterations of the forward and of the backward (median, min, max, "
             "GFLOP/s; with P > 1 also a per-rank table).", .offset = AT(iters)},
    {.flag = "--warmup", .type = CLI_INT, .def = "1", .min = 0, .max = 1000000,
     .help = "Untimed iterations before the --iters ones.", .offset = AT(warmup)},
    {.flag = "--comm-timeout", .type = CLI_FLOAT, .def = "600", .metavar = "SECONDS", .fmin = 0,
     .fmax = 1e9, .help = "Bound on every wait for another rank; on expiry the rank names what "
     "it waited for and aborts the job (0: wait forever).", .offset = AT(comm_timeout)},
    {.flag = "--threads", .env = "CPATTN_THREADS", .type = CLI_INT, .def = "0", .min = 0,
     .max = 4096, .help = "OpenMP threads of the kernel (per rank); 0 means "
     "omp_get_max_threads().", .offset = AT(threads)},
};

static const cli_spec attn_spec = {
    .command = "cpattn attn",
    .synopsis = "[flags]",
    .description =
        "Attention forward and backward on deterministic random inputs (or .npy files), "
        "single-process or context-parallel over MPI (mpiexec -n P cpattn attn "
        "--context-parallel-size P ...), with optional comparison against the reference "
        "implementation, timing, and .npy output.",
    .options = attn_options,
    .count = (int)(sizeof attn_options / sizeof attn_options[0]),
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
        "With --context-parallel-size P > 1 the configuration adds\n"
        "  # context parallel: P ranks (MPI world size P), <algo>, ..., split zigzag|contiguous\n"
        "the first-run times are the slowest rank's, the digest, --save and --check use\n"
        "the whole sequence gathered on rank 0, and --iters prints one row per rank\n"
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

const cli_spec *cmd_attn_spec(void) { return &attn_spec; }

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

/* Rank 0 reads the headers of the --load files; every rank gets the
 * verdict and the shape. */
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
        tool_mul_ok(n, 4 * 16, &n)) /* 4 bytes; at most 14 buffers of that size */
        return EXIT_OK;
    return cli_usage(&attn_spec,
                     "--micro-batch-size %lld --seq-length %lld --num-attention-heads %lld "
                     "--kv-channels %lld --v-channels %lld: tensor sizes overflow 64 bits "
                     "(B*S*H*max(D,Dv)*4 bytes must fit)",
                     (long long)c->B, (long long)c->S, (long long)c->H, (long long)c->D,
                     (long long)c->Dv);
}

/* Cross-flag rules and derived values; an exit code, the same on every
 * rank.  The context-parallel rules (window, degrees, divisibility) are the
 * plan's: cpa_plan_create checks them collectively. */
static int resolve(cli_args *args, attn_cfg *c)
{
    int rc;
    if (c->save_inputs && !c->save)
        return cli_usage(&attn_spec, "--save-inputs: needs --save DIR");
    if (c->bnsd) {
        if (cli_given(args, "--layout") && c->layout != LAYOUT_BNSD) {
            char name[16];
            return cli_usage(&attn_spec, "--megatron-cp-in-bnsd: conflicts with --layout %s",
                             cli_choice_name(&attn_spec, "--layout", c->layout, name, sizeof name));
        }
        c->layout = LAYOUT_BNSD;
        cli_mark_derived(args, "--layout", "--megatron-cp-in-bnsd");
    }
    const int world = tool_world_size();
    if (c->cp != world)
        return cli_usage(&attn_spec,
                         "--context-parallel-size %lld: must equal the MPI world size %d (start "
                         "it as mpiexec -n %lld, or pass --context-parallel-size %d)",
                         (long long)c->cp, world, (long long)c->cp, world);
    if (c->cp > 1 && c->reference)
        return cli_usage(&attn_spec,
                         "--reference: only with --context-parallel-size 1 (got %lld; the "
                         "context-parallel plan runs the fast kernel, --check compares it with "
                         "the reference)", (long long)c->cp);
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
    if (c->H % c->G != 0)
        return cli_usage(&attn_spec,
                         "--num-query-groups %lld: must divide --num-attention-heads %lld "
                         "(H %% G == 0)", (long long)c->G, (long long)c->H);
    return check_sizes(c);
}

/* ------------------------------------------------------------------------ */
/* Tensors                                                                   */
/* ------------------------------------------------------------------------ */

/* Every tensor of a run: four inputs, then the results. */
enum { T_Q, T_K, T_V, T_DOUT, T_OUT, T_LSE, T_DQ, T_DK, T_DV, T_COUNT };
static const char *const t_names[T_COUNT] = {"q", "k", "v", "dout", "out", "lse", "dq", "dk", "dv"};
#define BIT(i) (1u << (i))
#define INPUTS (BIT(T_Q) | BIT(T_K) | BIT(T_V) | BIT(T_DOUT))

/* Buffers for some of the tensors over S rows of the sequence, each
 * [B, S, N, D] in --layout order (lse: [B, H, S]). */
typedef struct bundle {
    int64_t S;
    float *t[T_COUNT]; /* NULL: not held */
    int owned;         /* 0: the buffers belong to another bundle */
} bundle;

typedef struct attn_run {
    attn_cfg c;
    float scale_arg;      /* --softmax-scale as given (0: the library's default) */
    cpa_layout layout;
    int P;                /* context-parallel ranks = world size */
    cpa_plan *plan;       /* P > 1 */
    cpa_split split;      /* P > 1: the plan's split */
    int shard;            /* P > 1: this rank's index in the split */
    int *shards;          /* rank 0, P > 1: every rank's index in the split */
    bundle loc;           /* this rank's rows (P == 1: every row) */
    bundle glob;          /* rank 0: the whole sequence (P == 1: the buffers of loc) */
    bundle ref;           /* rank 0, --check: the reference's results */
    float *tmp;           /* rank 0, P > 1: one rank's shard in transit */
    cpa_attn_desc desc;   /* the whole problem: the kernel's call (P == 1), flops, --check */
    cpa_attn_ctx *ctx;    /* P == 1 */
} attn_run;

static unsigned results(const attn_cfg *c)
{
    unsigned fwd = BIT(T_OUT) | BIT(T_LSE);
    return c->forward_only ? fwd : fwd | BIT(T_DQ) | BIT(T_DK) | BIT(T_DV);
}

static void dims(const attn_cfg *c, int i, int64_t *N, int64_t *D)
{
    switch (i) {
    case T_Q: case T_DQ: *N = c->H, *D = c->D; break;
    case T_K: case T_DK: *N = c->G, *D = c->D; break;
    case T_V: case T_DV: *N = c->G, *D = c->Dv; break;
    case T_LSE: *N = c->H, *D = 1; break;
    default: *N = c->H, *D = c->Dv; break; /* dout, out */
    }
}

/* Elements of tensor i over S rows (products checked by check_sizes()). */
static int64_t numel(const attn_cfg *c, int i, int64_t S)
{
    int64_t N, D;
    dims(c, i, &N, &D);
    return c->B * S * N * D;
}

/* Tensor i over `data` holding S rows: a logical [B, S, N, D] view in
 * --layout order; lse as its [B, H, S] array. */
static cpa_tensor tview(const attn_run *r, int i, float *data, int64_t S)
{
    int64_t N, D;
    dims(&r->c, i, &N, &D);
    if (i == T_LSE) {
        int64_t shape[3] = {r->c.B, r->c.H, S};
        return cpa_tensor_make(data, 3, shape);
    }
    return cpa_tensor_attn(data, r->layout, r->c.B, S, N, D);
}

/* The same as a 4-d [B, S, N, D] view, which cpa_shard/cpa_unshard move row
 * by row: lse [B, H, S] is read as [B, S, H, 1]. */
static cpa_tensor tview4(const attn_run *r, int i, float *data, int64_t S)
{
    if (i != T_LSE)
        return tview(r, i, data, S);
    const int64_t H = r->c.H;
    cpa_tensor t = {.data = data, .ndim = 4, .shape = {r->c.B, S, H, 1},
                    .stride = {H * S, 1, S, 1}};
    return t;
}

static cpa_tensor bt(const attn_run *r, const bundle *b, int i)
{
    return tview(r, i, b->t[i], b->S);
}

static double bundle_bytes(const attn_cfg *c, unsigned mask, int64_t S)
{
    double bytes = 0;
    for (int i = 0; i < T_COUNT; ++i)
        if (mask & BIT(i))
            bytes += 4.0 * (double)numel(c, i, S);
    return bytes;
}

/* What rank 0 holds besides its shard (P > 1): the whole inputs when it
 * reads or checks or saves them, always the whole results (digest). */
static unsigned glob_mask(const attn_cfg *c)
{
    return (c->load || c->check || c->save_inputs ? INPUTS : 0u) | results(c);
}

/* The largest shard of one tensor (rank 0's transit buffer). */
static int64_t max_shard(const attn_cfg *c, int64_t Sl)
{
    int64_t n = 0;
    for (int i = 0; i < T_COUNT; ++i)
        if (numel(c, i, Sl) > n)
            n = numel(c, i, Sl);
    return n;
}

/* Bytes every buffer of this run will need on this machine (all P ranks,
 * as if they shared it), refused early if above RAM.  The same verdict on
 * every rank. */
static cpa_cp_config plan_config(const attn_run *r);

static int check_memory(const attn_run *r, int64_t Sl)
{
    /* This rank's estimate; rank 0 also holds the global tensors (and the
     * reference's results for --check). */
    const attn_cfg *c = &r->c;
    double bytes = bundle_bytes(c, INPUTS | results(c), Sl);
    if (r->P > 1 && tool_rank() == 0)
        bytes += bundle_bytes(c, glob_mask(c), c->S) + 4.0 * (double)max_shard(c, Sl);
    if (c->check && tool_rank() == 0)
        bytes += bundle_bytes(c, results(c), c->S);
    /* The plan's buffers and the kernel context come on top of the tensors. */
    if (r->P > 1) {
        cpa_cp_config pc = plan_config(r);
        int64_t plan = cpa_plan_memory_bytes(&pc);
        bytes += plan > 0 ? (double)plan : 0.0;
    } else {
        bytes += (double)cpa_attn_ctx_bytes(c->D > c->Dv ? c->D : c->Dv, (int)c->threads,
                                            CPA_ISA_AUTO, c->B, c->H, c->G, Sl, Sl);
    }
    return tool_check_memory("this run (its tensors, plan and kernel context)", bytes);
}

static int alloc_bundle(const attn_run *r, bundle *b, unsigned mask, int64_t S)
{
    b->S = S;
    b->owned = 1;
    for (int i = 0; i < T_COUNT; ++i) {
        if (!(mask & BIT(i)))
            continue;
        int64_t n = numel(&r->c, i, S);
        if (!(b->t[i] = cpa_alloc_floats(n)))
            return fail("out of memory: cannot allocate %lld floats for %s", (long long)n,
                        t_names[i]);
    }
    return EXIT_OK;
}

static void free_bundle(bundle *b)
{
    for (int i = 0; b->owned && i < T_COUNT; ++i)
        free(b->t[i]);
    memset(b, 0, sizeof *b);
}

/* Every buffer of this rank; agreed by all ranks. */
static int alloc_run(attn_run *r, int64_t Sl)
{
    const attn_cfg *c = &r->c;
    int rc = alloc_bundle(r, &r->loc, INPUTS | results(c), Sl);
    if (!rc && tool_rank() == 0 && r->P == 1) {
        r->glob = r->loc;
        r->glob.owned = 0;
    } else if (!rc && tool_rank() == 0) {
        rc = alloc_bundle(r, &r->glob, glob_mask(c), c->S);
        if (!rc && !(r->tmp = cpa_alloc_floats(max_shard(c, Sl))))
            rc = fail("out of memory: cannot allocate the transit buffer (%lld floats)",
                      (long long)max_shard(c, Sl));
        if (!rc && !(r->shards = malloc(sizeof(int) * (size_t)r->P)))
            rc = fail("out of memory: rank table");
    }
    if (!rc && tool_rank() == 0 && c->check)
        rc = alloc_bundle(r, &r->ref, results(c), c->S);
    return tool_agree(rc);
}

static void free_run(attn_run *r)
{
    cpa_attn_ctx_destroy(r->ctx);
    cpa_plan_destroy(r->plan);
    free_bundle(&r->glob);
    free_bundle(&r->loc);
    free_bundle(&r->ref);
    free(r->tmp);
    free(r->shards);
}

/* ------------------------------------------------------------------------ */
/* Moving shards: rank 0 <-> every rank                                      */
/* ------------------------------------------------------------------------ */

/* Rank 0 cuts its whole tensor i into shards and sends each rank its own. */
static int scatter(attn_run *r, int i)
{
    return tool_scatter_shards(r->split, r->shards, tview4(r, i, r->glob.t[i], r->c.S),
                               tview4(r, i, r->loc.t[i], r->loc.S), r->tmp, i);
}

/* Every rank sends its shard of tensor i to rank 0, which puts the rows in
 * their global places. */
static int gather(attn_run *r, int i)
{
    return tool_gather_shards(r->split, r->shards, tview4(r, i, r->loc.t[i], r->loc.S),
                              tview4(r, i, r->glob.t[i], r->c.S), r->tmp, i);
}

/* ------------------------------------------------------------------------ */
/* Inputs                                                                    */
/* ------------------------------------------------------------------------ */

/* Random inputs: each rank generates its own rows (and rank 0 the whole
 * tensors when it checks or saves them). */
static int fill_random(attn_run *r)
{
    const attn_cfg *c = &r->c;
    int rc = EXIT_OK;
    for (int i = 0; i < 4 && !rc; ++i) {
        if (r->P == 1) {
            cpa_tensor_fill_uniform(bt(r, &r->loc, i), (uint64_t)c->seed, (uint64_t)i, c->S, 0);
            continue;
        }
        if (tool_fill_shard(bt(r, &r->loc, i), r->split, c->S, r->shard, (uint64_t)c->seed,
                            (uint64_t)i) != CPA_OK)
            rc = fail("internal error: cannot fill rank %d's shard of %s", r->shard,
                      t_names[i]);
        if (r->glob.t[i])
            cpa_tensor_fill_uniform(bt(r, &r->glob, i), (uint64_t)c->seed, (uint64_t)i, c->S, 0);
    }
    return tool_agree(rc);
}

/* --load: rank 0 reads the files, then sends each rank its shard. */
static int load_inputs(attn_run *r)
{
    static const char *const names[4] = {"q.npy", "k.npy", "v.npy", "dout.npy"};
    const attn_cfg *c = &r->c;
    const int n = c->forward_only ? 3 : 4; /* dout.npy is not read with --forward-only */
    int rc = EXIT_OK;
    if (c->forward_only) {
        memset(r->loc.t[T_DOUT], 0, sizeof(float) * (size_t)numel(c, T_DOUT, r->loc.S));
        if (r->P > 1 && tool_rank() == 0)
            memset(r->glob.t[T_DOUT], 0, sizeof(float) * (size_t)numel(c, T_DOUT, c->S));
    }
    for (int i = 0; i < n && !rc && tool_rank() == 0; ++i) {
        char path[4096];
        tool_join_path(path, sizeof path, c->load, names[i]); /* length checked in resolve */
        cpa_status st = cpa_npy_load_into(path, bt(r, &r->glob, i));
        if (st != CPA_OK)
            rc = npy_error(st, path);
        /* NaN and Inf would propagate as in a plain softmax attention; a
         * user almost never means that, so it is refused unless asked. */
        else if (!c->allow_non_finite &&
                 cpa_tensor_check_finite(bt(r, &r->glob, i), path, NULL) != CPA_OK)
            rc = fail("%s; the inputs must be finite (--allow-non-finite runs anyway: NaN and "
                      "Inf then propagate as in a plain softmax attention)", cpa_last_error());
    }
    rc = tool_agree(rc);
    for (int i = 0; i < n && !rc && r->P > 1; ++i)
        rc = scatter(r, i);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Running                                                                   */
/* ------------------------------------------------------------------------ */

static void zero_grads(const attn_run *r, const bundle *b)
{
    for (int i = T_DQ; i <= T_DV; ++i)
        memset(b->t[i], 0, sizeof(float) * (size_t)numel(&r->c, i, b->S));
}

static cpa_status call_forward(attn_run *r)
{
    const bundle *l = &r->loc;
    if (r->P == 1)
        return cpa_attn_forward(r->ctx, &r->desc, bt(r, l, T_OUT), bt(r, l, T_LSE));
    return cpa_plan_forward(r->plan, bt(r, l, T_Q), bt(r, l, T_K), bt(r, l, T_V),
                            bt(r, l, T_OUT), bt(r, l, T_LSE));
}

/* The kernel ADDS to the gradients (zeroed by the caller), the plan writes
 * them. */
static cpa_status call_backward(attn_run *r)
{
    const bundle *l = &r->loc;
    if (r->P == 1)
        return cpa_attn_backward(r->ctx, &r->desc, bt(r, l, T_OUT), bt(r, l, T_LSE),
                                 bt(r, l, T_DOUT), bt(r, l, T_DQ), bt(r, l, T_DK),
                                 bt(r, l, T_DV));
    return cpa_plan_backward(r->plan, bt(r, l, T_Q), bt(r, l, T_K), bt(r, l, T_V),
                             bt(r, l, T_OUT), bt(r, l, T_LSE), bt(r, l, T_DOUT),
                             bt(r, l, T_DQ), bt(r, l, T_DK), bt(r, l, T_DV));
}

/* One timed forward (which = 0) or backward (1), all ranks starting
 * together; this rank's seconds in *sec.  An agreed exit code. */
static int timed_call(attn_run *r, int which, double *sec)
{
    if (which && r->P == 1)
        zero_grads(r, &r->loc);
    if (r->P > 1 && tool_barrier(which ? "before a timed backward" : "before a timed forward"))
        return EXIT_RUNTIME;
    double t0 = tool_now();
    cpa_status st = which ? call_backward(r) : call_forward(r);
    *sec = tool_now() - t0;
    return tool_agree(st == CPA_OK ? EXIT_OK : runtime_error(st));
}

static void print_digests(const attn_run *r)
{
    if (tool_rank() != 0)
        return;
    printf("digest");
    for (int i = T_OUT; i < T_COUNT; ++i)
        if (results(&r->c) & BIT(i))
            printf(" %s=%016llx", t_names[i],
                   (unsigned long long)cpa_tensor_digest(bt(r, &r->glob, i)));
    printf("\n");
}

/* The main forward (+ backward) whose results are gathered, saved and
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
    for (int i = T_OUT; i < T_COUNT && !rc && r->P > 1; ++i)
        if (results(&r->c) & BIT(i))
            rc = gather(r, i);
    if (!rc)
        print_digests(r);
    return rc;
}

static int save_one(const char *dir, const char *name, cpa_tensor t)
{
    char path[4096];
    if (!tool_join_path(path, sizeof path, dir, name))
        return fail("--save %s: path too long", dir);
    cpa_status st = cpa_npy_save(path, t);
    if (st != CPA_OK)
        return npy_error(st, path);
    return EXIT_OK;
}

/* Rank 0 writes the whole tensors. */
static int save_root(const attn_run *r)
{
    const char *dir = r->c.save;
    int rc = EXIT_OK;
    if (!tool_make_dirs(dir))
        return fail("I/O error: --save %s: cannot create directory: %s", dir, strerror(errno));
    for (int i = T_OUT; i < T_COUNT && !rc; ++i) {
        char name[16];
        snprintf(name, sizeof name, "%s.npy", t_names[i]);
        if (results(&r->c) & BIT(i))
            rc = save_one(dir, name, bt(r, &r->glob, i));
    }
    for (int i = 0; i < 4 && !rc && r->c.save_inputs; ++i) {
        char name[16];
        snprintf(name, sizeof name, "%s.npy", t_names[i]);
        rc = save_one(dir, name, bt(r, &r->glob, i));
    }
    if (!rc)
        printf("saved to %s\n", dir);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* --check                                                                   */
/* ------------------------------------------------------------------------ */

/* One 'check' line; returns 1 on PASS. */
static int report_check(const char *name, cpa_tensor a, cpa_tensor b, double tol)
{
    tool_diff s = tool_compare(a, b);
    double rel = s.max_ref > 0 ? s.max_abs / s.max_ref : s.max_abs;
    int pass = s.mismatch == 0 && rel <= tol;
    printf("check %-4s max_abs %.3e  max|ref| %.3e  rel %.3e  tol %.1e", name, s.max_abs,
           s.max_ref, rel, tol);
    if (s.mismatch)
        printf("  non-finite mismatches %lld", (long long)s.mismatch);
    if (s.nonfinite)
        printf("  non-finite in both alike %lld", (long long)s.nonfinite);
    printf("  %s\n", pass ? "PASS" : "FAIL");
    return pass;
}

/* Rank 0 runs the single-process reference on the whole inputs and compares
 * every (gathered) result. */
static int check_root(attn_run *r)
{
    const bundle *ref = &r->ref;
    cpa_attn_desc desc = r->desc;
    desc.impl = CPA_IMPL_REFERENCE;
    cpa_status st = cpa_attn_forward(r->ctx, &desc, bt(r, ref, T_OUT), bt(r, ref, T_LSE));
    if (st == CPA_OK && !r->c.forward_only) {
        zero_grads(r, ref);
        st = cpa_attn_backward(r->ctx, &desc, bt(r, ref, T_OUT), bt(r, ref, T_LSE),
                               bt(r, &r->glob, T_DOUT), bt(r, ref, T_DQ), bt(r, ref, T_DK),
                               bt(r, ref, T_DV));
    }
    if (st != CPA_OK)
        return runtime_error(st);
    int failed = 0;
    for (int i = T_OUT; i < T_COUNT; ++i)
        if (results(&r->c) & BIT(i))
            failed += !report_check(t_names[i], bt(r, &r->glob, i), bt(r, ref, i),
                                    i <= T_LSE ? r->c.tol_fwd : r->c.tol_grad);
    printf("check: %s\n", failed ? "FAIL" : "PASS");
    return failed ? EXIT_RUNTIME : EXIT_OK;
}

/* ------------------------------------------------------------------------ */
/* --iters                                                                   */
/* ------------------------------------------------------------------------ */

/* One rank's figures for the table (medians over the iterations). */
enum { F_FWD, F_FWD_MIN, F_FWD_MAX, F_FWD_WAIT, F_FWD_COMP, F_FWD_SENT,
       F_BWD, F_BWD_MIN, F_BWD_MAX, F_BWD_WAIT, F_BWD_COMP, F_BWD_SENT, F_RSS, F_COUNT };

static double median_of(double *x, int n)
{
    double med, lo, hi;
    tool_stats(x, n, &med, &lo, &hi);
    return med;
}

/* Time --iters calls of forward (which = 0) or backward (1) after --warmup
 * untimed ones: this rank's median, min, max, median wait, median compute
 * and bytes sent per call into fig[F_FWD..] or fig[F_BWD..].  `work` holds
 * 3 * --iters doubles. */
static int time_pass(attn_run *r, int which, double *work, double *fig)
{
    const int n = (int)r->c.iters;
    double *ms = work, *wait = work + n, *comp = work + 2 * n, sent = 0;
    for (int i = -(int)r->c.warmup; i < n; ++i) {
        double sec;
        int rc = timed_call(r, which, &sec);
        if (rc)
            return rc;
        if (i < 0)
            continue;
        ms[i] = 1e3 * sec;
        wait[i] = comp[i] = 0;
        if (r->P > 1) {
            cpa_plan_stats s;
            memset(&s, 0, sizeof s);
            cpa_plan_last_stats(r->plan, &s);
            wait[i] = 1e3 * s.wait_s;
            comp[i] = 1e3 * s.compute_s;
            sent = s.bytes_sent;
        }
    }
    double *f = fig + (which ? F_BWD : F_FWD);
    tool_stats(ms, n, &f[0], &f[1], &f[2]);
    f[3] = median_of(wait, n);
    f[4] = median_of(comp, n);
    f[5] = sent;
    return EXIT_OK;
}

/* max/mean of one column over the ranks ("-" if the mean is 0). */
static void print_imbalance(const double *all, int P, int col)
{
    double mx = 0, sum = 0;
    for (int q = 0; q < P; ++q) {
        mx = all[q * F_COUNT + col] > mx ? all[q * F_COUNT + col] : mx;
        sum += all[q * F_COUNT + col];
    }
    if (sum > 0)
        printf(" %.3f", mx / (sum / P));
    else
        printf(" -");
}

/* Rank 0: the per-rank table, then the forward/backward lines (each figure
 * the maximum over the ranks: the slowest rank's median, min and max; GFLOP/s
 * of the whole problem at that median) and the compute imbalance. */
static void print_rank_table(const attn_run *r, const double *all, double flops)
{
    const int P = r->P, fo = r->c.forward_only;
    double worst[F_COUNT] = {0};
    printf("%4s %10s %10s %12s %12s %13s %13s %13s\n", "rank", "fwd_ms", "bwd_ms",
           "fwd_wait_ms", "bwd_wait_ms", "fwd_sent_MiB", "bwd_sent_MiB", "peak_RSS_MiB");
    for (int q = 0; q < P; ++q) {
        const double *f = all + q * F_COUNT;
        for (int k = 0; k < F_COUNT; ++k)
            worst[k] = f[k] > worst[k] ? f[k] : worst[k];
        if (fo)
            printf("%4d %10.3f %10s %12.3f %12s %13.3f %13s %13.1f\n", q, f[F_FWD], "-",
                   f[F_FWD_WAIT], "-", f[F_FWD_SENT] / 1048576.0, "-", f[F_RSS]);
        else
            printf("%4d %10.3f %10.3f %12.3f %12.3f %13.3f %13.3f %13.1f\n", q, f[F_FWD],
                   f[F_BWD], f[F_FWD_WAIT], f[F_BWD_WAIT], f[F_FWD_SENT] / 1048576.0,
                   f[F_BWD_SENT] / 1048576.0, f[F_RSS]);
    }
    for (int which = 0; which <= !fo; ++which) {
        const double *w = worst + (which ? F_BWD : F_FWD);
        printf("%-8s median %.3f ms (min %.3f, max %.3f, n=%lld)  %.1f GFLOP/s"
               "  (slowest rank)\n", which ? "backward" : "forward", w[0], w[1], w[2],
               (long long)r->c.iters, (which ? 2.5 : 1.0) * flops / (w[0] * 1e-3) / 1e9);
    }
    printf("imbalance (max/mean rank compute_s) fwd");
    print_imbalance(all, P, F_FWD_COMP);
    printf(" bwd");
    if (fo)
        printf(" -");
    else
        print_imbalance(all, P, F_BWD_COMP);
    printf("\n");
}

static int run_timing(attn_run *r)
{
    const int n = (int)r->c.iters;
    double fig[F_COUNT] = {0}, flops = cpa_attn_forward_flops(&r->desc);
    double *work = malloc(sizeof(double) * 3 * (size_t)n);
    double *all = tool_rank() == 0 ? malloc(sizeof(double) * F_COUNT * (size_t)r->P) : NULL;
    int rc = !work || (tool_rank() == 0 && !all) ? fail("out of memory: timing buffers") : 0;
    rc = tool_agree(rc);
    if (!rc)
        rc = time_pass(r, 0, work, fig);
    if (!rc && !r->c.forward_only)
        rc = time_pass(r, 1, work, fig);
    if (!rc && r->P == 1) {
        for (int which = 0; which <= !r->c.forward_only; ++which) {
            const double *f = fig + (which ? F_BWD : F_FWD);
            tool_say("%-8s median %.3f ms (min %.3f, max %.3f, n=%d)  %.1f GFLOP/s\n",
                     which ? "backward" : "forward", f[0], f[1], f[2], n,
                     (which ? 2.5 : 1.0) * flops / (f[0] * 1e-3) / 1e9);
        }
    } else if (!rc) {
        fig[F_RSS] = tool_peak_rss_mib();
        rc = tool_gather(fig, F_COUNT, MPI_DOUBLE, all, "the per-rank timing table");
        if (!rc && tool_rank() == 0)
            print_rank_table(r, all, flops);
    }
    free(work);
    free(all);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* The subcommand                                                            */
/* ------------------------------------------------------------------------ */

/* P > 1: the plan, which checks every context-parallel rule collectively. */
static cpa_cp_config plan_config(const attn_run *r)
{
    const attn_cfg *c = &r->c;
    cpa_cp_config cc = {
        .algo = algo_of_choice[c->algo],
        .cp_size = (int)c->cp,
        .window = (int)c->window,
        .ulysses_degree = (int)c->ulysses,
        .tp_size = (int)c->tp,
        .send_recv_overlap = c->overlap,
        .mask = c->mask == MASK_CAUSAL ? CPA_MASK_CAUSAL : CPA_MASK_NONE,
        .layout = r->layout,
        .batch = c->B,
        .seq_length = c->S,
        .num_heads = c->H,
        .num_kv_heads = c->G,
        .head_dim = c->D,
        .v_head_dim = c->Dv,
        .softmax_scale = r->scale_arg,
        .num_threads = (int)c->threads,
    };
    return cc;
}

static int make_plan(attn_run *r)
{
    const attn_cfg *c = &r->c;
    cpa_cp_config cc = plan_config(r);
    cpa_status st = cpa_plan_create(MPI_COMM_WORLD, &cc, &r->plan);
    int rc = EXIT_OK;
    if (st == CPA_ERR_ARG)
        rc = tool_fail(EXIT_USAGE, "%s", cpa_last_error()); /* the same message on every rank */
    else if (st != CPA_OK)
        rc = runtime_error(st);
    if (!rc) {
        r->split = cpa_plan_split(r->plan);
        r->shard = cpa_plan_rank(r->plan);
        if (cpa_plan_local_seq(r->plan) * r->P != c->S)
            rc = fail("internal error: the plan holds %lld rows per rank, not S/P = %lld",
                      (long long)cpa_plan_local_seq(r->plan), (long long)(c->S / r->P));
    }
    return tool_agree(rc);
}

/* The lines after the configuration: how the run is parallel, the threads. */
static void print_setup(const attn_run *r)
{
    const attn_cfg *c = &r->c;
    if (r->P == 1) {
        tool_say("# context parallel: off (--context-parallel-size 1, MPI world size %d): "
                 "the single-process kernel\n", tool_world_size());
        tool_say("# kernel threads %d, implementation %s\n", cpa_attn_ctx_threads(r->ctx),
                 c->reference ? "reference" : "fast");
        tool_say_platform(cpa_attn_ctx_isa(r->ctx));
        return;
    }
    char algo[32], degree[48] = "", ring[80] = "";
    cli_choice_name(&attn_spec, "--context-parallel-algo", c->algo, algo, sizeof algo);
    if (c->algo == ALGO_HYBRID)
        snprintf(degree, sizeof degree, ", ulysses-degree-in-cp %lld", (long long)c->ulysses);
    if (c->algo != ALGO_ULYSSES)
        snprintf(ring, sizeof ring, ", cp-window-size %lld, send/recv overlap %s",
                 (long long)c->window, c->overlap ? "on" : "off");
    tool_say("# context parallel: %d ranks (MPI world size %d), %s%s%s, split %s, %lld of %lld "
             "rows per rank\n", r->P, tool_world_size(), algo, degree, ring,
             r->split.kind == CPA_SPLIT_ZIGZAG ? "zigzag" : "contiguous", (long long)r->loc.S,
             (long long)c->S);
#ifdef _OPENMP
    int threads = c->threads ? (int)c->threads : omp_get_max_threads();
#else
    int threads = 1;
#endif
    tool_say("# kernel threads %d per rank, implementation fast\n", threads);
    cpa_isa isa = CPA_ISA_AUTO;
    cpa_isa_resolve(CPA_ISA_AUTO, &isa); /* the plan has resolved it already */
    tool_say_platform(isa);
}

static int setup(attn_run *r)
{
    const attn_cfg *c = &r->c;
    int rc;
    r->layout = layout_of_choice[c->layout];
    r->P = (int)c->cp;
    /* Before the plan or any tensor is allocated: does it all fit? */
    if ((rc = tool_agree(check_memory(r, c->S / r->P))))
        return rc;
    if (r->P > 1 && (rc = make_plan(r)))
        return rc;
    if ((rc = alloc_run(r, c->S / r->P)))
        return rc;
    if (r->P > 1 && tool_gather(&r->shard, 1, MPI_INT, r->shards, "the ranks' shard indices"))
        return EXIT_RUNTIME;
    /* The whole problem; its data is rank 0's (NULL elsewhere: flops only). */
    r->desc.q = bt(r, &r->glob, T_Q);
    r->desc.k = bt(r, &r->glob, T_K);
    r->desc.v = bt(r, &r->glob, T_V);
    r->desc.mask.kind = c->mask == MASK_CAUSAL ? CPA_MASK_CAUSAL : CPA_MASK_NONE;
    r->desc.softmax_scale = r->scale_arg;
    r->desc.impl = c->reference ? CPA_IMPL_REFERENCE : CPA_IMPL_FAST;
    /* q_rows/kv_rows stay {NULL, 0}: every row, at positions 0..S-1. */
    if (r->P == 1) {
        cpa_attn_ctx_config cc = {.max_head_dim = c->D > c->Dv ? c->D : c->Dv,
                                  .num_threads = (int)c->threads};
        cpa_status st = cpa_attn_ctx_create(&cc, &r->ctx);
        if ((rc = tool_agree(st == CPA_OK ? EXIT_OK : runtime_error(st))))
            return rc;
    }
    print_setup(r);
    return c->load ? load_inputs(r) : fill_random(r);
}

static int execute(attn_run *r)
{
    int rc;
    if ((rc = setup(r)) || (rc = first_run(r)))
        return rc;
    if (r->c.save && (rc = tool_agree(tool_rank() == 0 ? save_root(r) : EXIT_OK)))
        return rc;
    if (r->c.check && (rc = tool_agree(tool_rank() == 0 ? check_root(r) : EXIT_OK)))
        return rc;
    if (r->c.iters > 0 && (rc = run_timing(r)))
        return rc;
    return EXIT_OK;
}

static int attn_main(int argc, char **argv)
{
    attn_run run;
    cli_args args;
    memset(&run, 0, sizeof run);
    cli_result pr = cli_parse(&args, &attn_spec, &run.c, argc, argv);
    if (pr != CLI_OK)
        return pr == CLI_HELP ? EXIT_OK : EXIT_USAGE;
    cpa_set_comm_timeout(run.c.comm_timeout);
    int rc = resolve(&args, &run.c);
    if (rc)
        return rc;
    /* Rank 0 writes --save: prove it can before computing anything. */
    if (run.c.save &&
        (rc = tool_agree(tool_rank() == 0 ? tool_check_output_dir("--save", run.c.save) : 0)))
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
    double rss = tool_peak_rss_mib();
    tool_max_to_root(&rss, 1);
    if (run.P > 1)
        tool_say("peak RSS %.1f MiB (max over %d ranks)\n", rss, run.P);
    else
        tool_say("peak RSS %.1f MiB\n", rss);
    free_run(&run);
    return rc;
}

int cmd_attn(int argc, char **argv)
{
    int rc = tool_mpi_init("cpattn attn"), initialized = 0;
    cli_set_quiet(tool_rank() != 0); /* every rank parses; rank 0 speaks */
    if (!rc)
        rc = attn_main(argc, argv);
    fflush(stdout);
    MPI_Initialized(&initialized);
    if (initialized)
        MPI_Finalize();
    return rc;
}
