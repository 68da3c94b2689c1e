/*
 * cmd_attn.c — `cpattn attn`: single-process attention forward and backward
 * through the public API, on deterministic random inputs or on .npy files.
 *
 * It is the user-facing way to run the local kernel once: it can save the
 * results as .npy (--save), compare them with the reference implementation
 * (--check: max abs / max rel error per tensor, PASS/FAIL, exit 1 on FAIL),
 * and time repeated calls (--iters: median, spread, GFLOP/s).  It is not a
 * benchmark sweep (that is `cpattn bench kernel`) and does no MPI.
 *
 * Random inputs depend only on (--seed, tensor, logical [B, S, N, D] index),
 * never on --layout or on how the sequence is split, so a later multi-rank
 * run generates exactly its slice of the same global tensors.
 *
 * Exit codes: 0 ok, 1 runtime failure (library error, I/O, --check FAIL),
 * 2 bad usage (one line naming the flag, the value and the rule).
 */
#include "args.h"
#include "util.h"
#include "cmd.h"

#include "cpattn.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------ */
/* Flags                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct attn_cfg {
    int64_t B, S, H, G, D, Dv; /* problem shape (G, Dv: 0 until resolved) */
    int gqa;                   /* --group-query-attention */
    int mask;                  /* index in "causal|general" */
    double scale;              /* 0: 1/sqrt(D) */
    int layout;                /* index in "bshd|sbhd|bnsd" */
    int bnsd;                  /* --megatron-cp-in-bnsd */
    int64_t seed;
    const char *load, *save;
    int save_inputs, forward_only, check, reference;
    double tol_fwd, tol_grad;
    int64_t iters, warmup, threads;
} attn_cfg;

/* Indices in the choice lists of --attention-mask-type and --layout. */
enum { MASK_CAUSAL = 0, MASK_GENERAL = 1 };
enum { LAYOUT_BSHD = 0, LAYOUT_SBHD = 1, LAYOUT_BNSD = 2 };
static const cpa_layout layout_of_choice[] = {CPA_LAYOUT_BSHD, CPA_LAYOUT_SBHD, CPA_LAYOUT_BNSD};

#define AT(f) offsetof(attn_cfg, f)
#define SIZE_FLAG(name, mv, dflt, text, fld) \
    {.flag = name, .type = CLI_INT, .def = dflt, .metavar = mv, .min = 1, .max = INT64_MAX, \
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
    {.flag = "--softmax-scale", .type = CLI_FLOAT, .def = "0", .fmin = 0, .fmax = INFINITY,
     .help = "Scale of Q.K before the softmax; 0 means 1/sqrt(D).", .offset = AT(scale)},
    {.flag = "--layout", .type = CLI_CHOICE, .def = "bshd", .choices = "bshd|sbhd|bnsd",
     .help = "Memory order of q, k, v, dout, out and the gradients (the values do not depend "
             "on it).", .offset = AT(layout)},
    {.flag = "--megatron-cp-in-bnsd", .type = CLI_FLAG, .help = "Same as --layout bnsd.",
     .offset = AT(bnsd)},
    {.flag = "--seed", .env = "CPATTN_SEED", .type = CLI_INT, .def = "1234",
     .help = "Seed of the random inputs; each value depends only on the seed, the tensor and "
             "its logical [B,S,N,D] index.", .offset = AT(seed)},
    {.flag = "--load", .type = CLI_STRING, .metavar = "DIR",
     .help = "Read q.npy [B,S,H,D], k.npy [B,S,G,D], v.npy [B,S,G,Dv] and dout.npy [B,S,H,Dv] "
             "(not needed with --forward-only) from DIR instead of random inputs; their shapes "
             "set B, S, H, G, D and Dv.", .offset = AT(load)},
    {.flag = "--save", .type = CLI_STRING, .metavar = "DIR",
     .help = "Write out.npy [B,S,H,Dv], lse.npy [B,H,S] and, unless --forward-only, dq.npy, "
             "dk.npy, dv.npy into DIR (created if missing), always in [B,S,N,D] order.",
     .offset = AT(save)},
    {.flag = "--save-inputs", .type = CLI_FLAG,
     .help = "With --save: also write the inputs q.npy, k.npy, v.npy, dout.npy, so that "
             "--load can replay the run.", .offset = AT(save_inputs)},
    {.flag = "--forward-only", .type = CLI_FLAG, .help = "Skip the backward pass.",
     .offset = AT(forward_only)},
    {.flag = "--check", .type = CLI_FLAG,
     .help = "Compare with the reference implementation (double accumulation): per tensor max "
             "abs error, max|ref|, rel = max abs / max|ref|, PASS/FAIL; exit 1 on FAIL.",
     .offset = AT(check)},
    {.flag = "--check-tol", .type = CLI_FLOAT, .def = "2e-4", .fmin = 0, .fmax = 1,
     .help = "--check tolerance on rel for out and lse.", .offset = AT(tol_fwd)},
    {.flag = "--check-tol-grad", .type = CLI_FLOAT, .def = "1e-3", .fmin = 0, .fmax = 1,
     .help = "--check tolerance on rel for dq, dk and dv.", .offset = AT(tol_grad)},
    {.flag = "--reference", .type = CLI_FLAG,
     .help = "Run the reference implementation as the main path.", .offset = AT(reference)},
    {.flag = "--iters", .type = CLI_INT, .def = "0", .min = 0, .max = 1000000,
     .help = "Timed iterations of the forward and of the backward (median, min, max, "
             "GFLOP/s).", .offset = AT(iters)},
    {.flag = "--warmup", .type = CLI_INT, .def = "1", .min = 0, .max = 1000000,
     .help = "Untimed iterations before the --iters ones.", .offset = AT(warmup)},
    {.flag = "--threads", .env = "CPATTN_THREADS", .type = CLI_INT, .def = "0", .min = 0,
     .max = 4096, .help = "OpenMP threads of the kernel; 0 means omp_get_max_threads().",
     .offset = AT(threads)},
};

static const cli_spec attn_spec = {
    .command = "cpattn attn",
    .synopsis = "[flags]",
    .description =
        "Single-process attention forward and backward on deterministic random inputs (or "
        ".npy files), with optional comparison against the reference implementation, timing, "
        "and .npy output.",
    .options = attn_options,
    .count = (int)(sizeof attn_options / sizeof attn_options[0]),
    .epilog =
        "Output (stdout): the effective configuration as '# ' lines; then\n"
        "  first run: forward X ms, backward Y ms\n"
        "  digest out=... lse=... dq=... dk=... dv=...   (FNV-1a of the bits in logical\n"
        "        order: equal digests mean bitwise-equal results)\n"
        "  check <tensor> max_abs A  max|ref| R  rel A/R  tol T  PASS|FAIL  (--check)\n"
        "  check: PASS|FAIL\n"
        "  forward  median M ms (min m, max x, n=N)  G GFLOP/s               (--iters)\n"
        "  backward median ...                       (backward flops = 2.5x forward)\n"
        "  peak RSS N MiB\n\n"
        "Tolerances of --check: the kernel accumulates in fp32 over up to S keys, the\n"
        "reference in double, and rounding error grows about like sqrt(S)*eps32*|values|,\n"
        "so out and lse are held to max|a-ref|/max|ref| <= 2e-4.  Gradients pass through\n"
        "the softmax derivative P*(dP - rowsum(dO*O)), whose cancellation and the extra\n"
        "sums over queries and heads (dK, dV) lose more digits: 1e-3.  LSE entries of\n"
        "rows that see no key must be -inf on both sides.\n\n"
        "Exit codes: 0 ok, 1 runtime failure or --check FAIL, 2 bad usage.\n\n"
        "Examples:\n"
        "  cpattn attn --seq-length 4096 --num-query-groups 2 --check\n"
        "  cpattn attn --seq-length 8192 --kv-channels 128 --iters 5 --threads 2\n"
        "  cpattn attn --save run1 --save-inputs && cpattn attn --load run1 --check\n",
};

/* ------------------------------------------------------------------------ */
/* Resolving the flags into one problem                                      */
/* ------------------------------------------------------------------------ */

static int runtime_error(cpa_status status)
{
    fprintf(stderr, "cpattn attn: %s: %s\n", cpa_status_string(status), cpa_last_error());
    return EXIT_RUNTIME;
}

/* A failed .npy call: the library's message, with the path if it lacks it. */
static int npy_error(cpa_status status, const char *path)
{
    const char *msg = cpa_last_error();
    if (strstr(msg, path))
        fprintf(stderr, "cpattn attn: %s: %s\n", cpa_status_string(status), msg);
    else
        fprintf(stderr, "cpattn attn: %s: %s: %s\n", cpa_status_string(status), path, msg);
    return EXIT_RUNTIME;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* DIR/name into buf; 0 if it does not fit. */
static int join_path(char *buf, size_t size, const char *dir, const char *name)
{
    int n = snprintf(buf, size, "%s/%s", dir, name);
    return n > 0 && (size_t)n < size;
}

/* Read the 4-D shape of DIR/name; an exit code (usage if missing or not
 * 4-D, runtime if malformed). */
static int npy_shape4(const char *dir, const char *name, const char *dims, int64_t shape[4])
{
    char path[4096];
    int ndim;
    int64_t sh[CPA_MAX_DIMS];
    if (!join_path(path, sizeof path, dir, name))
        return cli_usage(&attn_spec, "--load %s: path too long", dir);
    if (!file_exists(path))
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
    if (!is_dir(c->load))
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

/* Cross-flag rules and derived values; an exit code. */
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
    if (c->load && (rc = shapes_from_load(args, c)))
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

/* Results of one implementation (views over owned buffers). */
typedef struct attn_results {
    float *out; /* [B, S, H, Dv] in --layout order */
    float *lse; /* [B, H, S] */
    float *dq;  /* [B, S, H, D]  in --layout order */
    float *dk;  /* [B, S, G, D]  in --layout order */
    float *dv;  /* [B, S, G, Dv] in --layout order */
} attn_results;

typedef struct attn_run {
    attn_cfg c;
    cpa_layout layout;
    cpa_attn_desc desc; /* q, k, v views, all rows, mask, scale, impl */
    float *q;           /* [B, S, H, D]  in --layout order */
    float *k;           /* [B, S, G, D]  in --layout order */
    float *v;           /* [B, S, G, Dv] in --layout order */
    float *dout;        /* [B, S, H, Dv] in --layout order */
    attn_results res, ref;
    cpa_attn_ctx *ctx;
} attn_run;

static cpa_tensor view(const attn_run *r, float *data, int64_t N, int64_t D)
{
    return cpa_tensor_attn(data, r->layout, r->c.B, r->c.S, N, D);
}

static cpa_tensor lse_view(const attn_run *r, float *data)
{
    int64_t shape[3] = {r->c.B, r->c.H, r->c.S};
    return cpa_tensor_make(data, 3, shape);
}

/* The views of a result set, in the order out, lse, dq, dk, dv. */
static void result_views(const attn_run *r, const attn_results *s, cpa_tensor t[5])
{
    t[0] = view(r, s->out, r->c.H, r->c.Dv);
    t[1] = lse_view(r, s->lse);
    t[2] = view(r, s->dq, r->c.H, r->c.D);
    t[3] = view(r, s->dk, r->c.G, r->c.D);
    t[4] = view(r, s->dv, r->c.G, r->c.Dv);
}

static int alloc_one(float **p, int64_t count, const char *what)
{
    *p = tool_alloc_floats(count);
    if (*p)
        return EXIT_OK;
    fprintf(stderr, "cpattn attn: out of memory: cannot allocate %lld floats for %s\n",
            (long long)count, what);
    return EXIT_RUNTIME;
}

static int alloc_results(const attn_run *r, attn_results *s, int grads)
{
    const attn_cfg *c = &r->c;
    int64_t bs = c->B * c->S; /* products checked by check_sizes() */
    int rc;
    if ((rc = alloc_one(&s->out, bs * c->H * c->Dv, "out")) ||
        (rc = alloc_one(&s->lse, bs * c->H, "lse")) || !grads)
        return rc;
    if ((rc = alloc_one(&s->dq, bs * c->H * c->D, "dq")) ||
        (rc = alloc_one(&s->dk, bs * c->G * c->D, "dk")) ||
        (rc = alloc_one(&s->dv, bs * c->G * c->Dv, "dv")))
        return rc;
    return EXIT_OK;
}

static void free_results(attn_results *s)
{
    free(s->out);
    free(s->lse);
    free(s->dq);
    free(s->dk);
    free(s->dv);
}

/* Bytes every buffer of this run will need, refused early if above RAM. */
static int check_memory(const attn_cfg *c)
{
    double bs = (double)c->B * (double)c->S;
    double in = bs * ((double)c->H * c->D + (double)c->G * (c->D + c->Dv) + (double)c->H * c->Dv);
    double res = bs * ((double)c->H * c->Dv + c->H);
    if (!c->forward_only)
        res += bs * ((double)c->H * c->D + (double)c->G * (c->D + c->Dv));
    double bytes = 4.0 * (in + res * (c->check ? 2 : 1));
    double phys = tool_phys_mem_bytes();
    if (phys <= 0 || bytes <= phys)
        return EXIT_OK;
    fprintf(stderr,
            "cpattn attn: out of memory: the tensors need %.1f GiB but this machine has "
            "%.1f GiB (--seq-length %lld, --micro-batch-size %lld)\n",
            bytes / 1073741824.0, phys / 1073741824.0, (long long)c->S, (long long)c->B);
    return EXIT_RUNTIME;
}

static int alloc_run(attn_run *r)
{
    const attn_cfg *c = &r->c;
    int64_t bs = c->B * c->S;
    int rc;
    if ((rc = check_memory(c)) || (rc = alloc_one(&r->q, bs * c->H * c->D, "q")) ||
        (rc = alloc_one(&r->k, bs * c->G * c->D, "k")) ||
        (rc = alloc_one(&r->v, bs * c->G * c->Dv, "v")) ||
        (rc = alloc_one(&r->dout, bs * c->H * c->Dv, "dout")) ||
        (rc = alloc_results(r, &r->res, !c->forward_only)))
        return rc;
    if (c->check && (rc = alloc_results(r, &r->ref, !c->forward_only)))
        return rc;
    return EXIT_OK;
}

static void free_run(attn_run *r)
{
    cpa_attn_ctx_destroy(r->ctx);
    free(r->q);
    free(r->k);
    free(r->v);
    free(r->dout);
    free_results(&r->res);
    free_results(&r->ref);
}

/* Random inputs, or the .npy files of --load. */
static int fill_inputs(attn_run *r)
{
    const attn_cfg *c = &r->c;
    static const char *const names[4] = {"q.npy", "k.npy", "v.npy", "dout.npy"};
    cpa_tensor t[4] = {r->desc.q, r->desc.k, r->desc.v, view(r, r->dout, c->H, c->Dv)};
    for (int i = 0; i < 4; ++i) {
        char path[4096];
        if (!c->load) {
            tool_fill_uniform(t[i], (uint64_t)c->seed, (uint64_t)i, c->S, 0);
            continue;
        }
        if (i == 3 && c->forward_only) {
            memset(r->dout, 0, sizeof(float) * (size_t)cpa_tensor_numel(&t[3]));
            continue;
        }
        join_path(path, sizeof path, c->load, names[i]); /* length checked in resolve */
        cpa_status st = cpa_npy_load_into(path, t[i]);
        if (st != CPA_OK)
            return npy_error(st, path);
    }
    return EXIT_OK;
}

/* ------------------------------------------------------------------------ */
/* Running                                                                   */
/* ------------------------------------------------------------------------ */

static void zero_grads(const attn_run *r, const attn_results *s)
{
    const attn_cfg *c = &r->c;
    size_t bs = (size_t)(c->B * c->S);
    memset(s->dq, 0, sizeof(float) * bs * (size_t)(c->H * c->D));
    memset(s->dk, 0, sizeof(float) * bs * (size_t)(c->G * c->D));
    memset(s->dv, 0, sizeof(float) * bs * (size_t)(c->G * c->Dv));
}

static cpa_status forward(const attn_run *r, const cpa_attn_desc *desc, const attn_results *s)
{
    cpa_tensor t[5];
    result_views(r, s, t);
    return cpa_attn_forward(r->ctx, desc, t[0], t[1]);
}

/* Zeroes the gradients, then accumulates the backward into them. */
static cpa_status backward(const attn_run *r, const cpa_attn_desc *desc, const attn_results *s)
{
    cpa_tensor t[5];
    result_views(r, s, t);
    zero_grads(r, s);
    return cpa_attn_backward(r->ctx, desc, t[0], t[1], view(r, r->dout, r->c.H, r->c.Dv), t[2],
                             t[3], t[4]);
}

/* FNV-1a over the float bits in logical order (layout-independent). */
static uint64_t digest(cpa_tensor t)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    int64_t sh[4] = {1, 1, 1, 1}, st[4] = {0, 0, 0, 0};
    for (int i = 0; i < t.ndim; ++i) {
        sh[4 - t.ndim + i] = t.shape[i];
        st[4 - t.ndim + i] = t.stride[i];
    }
    for (int64_t a = 0; a < sh[0]; ++a)
        for (int64_t b = 0; b < sh[1]; ++b)
            for (int64_t c = 0; c < sh[2]; ++c)
                for (int64_t d = 0; d < sh[3]; ++d) {
                    uint32_t bits;
                    memcpy(&bits, t.data + a * st[0] + b * st[1] + c * st[2] + d * st[3], 4);
                    for (int byte = 0; byte < 4; ++byte) {
                        h ^= (bits >> (8 * byte)) & 0xffu;
                        h *= 0x100000001b3ULL;
                    }
                }
    return h;
}

static void print_digests(const attn_run *r)
{
    static const char *const names[5] = {"out", "lse", "dq", "dk", "dv"};
    cpa_tensor t[5];
    result_views(r, &r->res, t);
    printf("digest");
    for (int i = 0; i < (r->c.forward_only ? 2 : 5); ++i)
        printf(" %s=%016llx", names[i], (unsigned long long)digest(t[i]));
    printf("\n");
}

/* The main forward (+ backward) whose results are saved and checked. */
static int first_run(attn_run *r)
{
    double t0 = tool_now();
    cpa_status st = forward(r, &r->desc, &r->res);
    double t1 = tool_now();
    if (st != CPA_OK)
        return runtime_error(st);
    printf("first run: forward %.3f ms", 1e3 * (t1 - t0));
    if (!r->c.forward_only) {
        t0 = tool_now();
        st = backward(r, &r->desc, &r->res);
        t1 = tool_now();
        if (st != CPA_OK) {
            printf("\n");
            return runtime_error(st);
        }
        printf(", backward %.3f ms", 1e3 * (t1 - t0));
    }
    printf("\n");
    print_digests(r);
    return EXIT_OK;
}

/* mkdir -p */
static int make_dirs(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return 0;
    for (char *p = path + 1; *p; ++p) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return 0;
        *p = '/';
    }
    return (mkdir(path, 0777) == 0 || errno == EEXIST) && is_dir(path);
}

static int save_one(const char *dir, const char *name, cpa_tensor t)
{
    char path[4096];
    if (!join_path(path, sizeof path, dir, name)) {
        fprintf(stderr, "cpattn attn: --save %s: path too long\n", dir);
        return EXIT_RUNTIME;
    }
    cpa_status st = cpa_npy_save(path, t);
    if (st != CPA_OK)
        return npy_error(st, path);
    return EXIT_OK;
}

static int save_all(const attn_run *r)
{
    static const char *const out_names[5] = {"out.npy", "lse.npy", "dq.npy", "dk.npy", "dv.npy"};
    static const char *const in_names[4] = {"q.npy", "k.npy", "v.npy", "dout.npy"};
    const char *dir = r->c.save;
    cpa_tensor t[5], in[4] = {r->desc.q, r->desc.k, r->desc.v,
                              view(r, r->dout, r->c.H, r->c.Dv)};
    int rc;
    if (!make_dirs(dir)) {
        fprintf(stderr, "cpattn attn: I/O error: --save %s: cannot create directory: %s\n", dir,
                strerror(errno));
        return EXIT_RUNTIME;
    }
    result_views(r, &r->res, t);
    for (int i = 0; i < (r->c.forward_only ? 2 : 5); ++i)
        if ((rc = save_one(dir, out_names[i], t[i])))
            return rc;
    for (int i = 0; r->c.save_inputs && i < 4; ++i)
        if ((rc = save_one(dir, in_names[i], in[i])))
            return rc;
    printf("saved to %s\n", dir);
    return EXIT_OK;
}

/* ------------------------------------------------------------------------ */
/* --check                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct check_stats {
    double max_abs;  /* max |a - ref| over entries finite in both */
    double max_ref;  /* max |ref| over finite entries */
    int64_t mismatch; /* entries where one side is non-finite and they differ */
} check_stats;

static void compare_one(float a, float b, check_stats *s)
{
    if (isfinite(a) && isfinite(b)) {
        double d = fabs((double)a - (double)b);
        if (d > s->max_abs)
            s->max_abs = d;
        if (fabs((double)b) > s->max_ref)
            s->max_ref = fabs((double)b);
    } else if (!(a == b)) { /* -inf == -inf is a match (empty rows); NaN never is */
        s->mismatch++;
    }
}

static check_stats compare(cpa_tensor a, cpa_tensor b)
{
    check_stats s = {0, 0, 0};
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

/* One 'check' line; returns 1 on PASS. */
static int report_check(const char *name, cpa_tensor a, cpa_tensor b, double tol)
{
    check_stats s = compare(a, b);
    double rel = s.max_ref > 0 ? s.max_abs / s.max_ref : s.max_abs;
    int pass = s.mismatch == 0 && rel <= tol;
    printf("check %-4s max_abs %.3e  max|ref| %.3e  rel %.3e  tol %.1e", name, s.max_abs,
           s.max_ref, rel, tol);
    if (s.mismatch)
        printf("  non-finite mismatches %lld", (long long)s.mismatch);
    printf("  %s\n", pass ? "PASS" : "FAIL");
    return pass;
}

/* Run the reference on the same inputs and compare every result. */
static int run_check(attn_run *r)
{
    static const char *const names[5] = {"out", "lse", "dq", "dk", "dv"};
    cpa_attn_desc desc = r->desc;
    desc.impl = CPA_IMPL_REFERENCE;
    cpa_status st = forward(r, &desc, &r->ref);
    if (st == CPA_OK && !r->c.forward_only)
        st = backward(r, &desc, &r->ref);
    if (st != CPA_OK)
        return runtime_error(st);
    cpa_tensor got[5], want[5];
    result_views(r, &r->res, got);
    result_views(r, &r->ref, want);
    int failed = 0;
    for (int i = 0; i < (r->c.forward_only ? 2 : 5); ++i)
        failed += !report_check(names[i], got[i], want[i], i < 2 ? r->c.tol_fwd : r->c.tol_grad);
    printf("check: %s\n", failed ? "FAIL" : "PASS");
    return failed ? EXIT_RUNTIME : EXIT_OK;
}

/* ------------------------------------------------------------------------ */
/* --iters                                                                   */
/* ------------------------------------------------------------------------ */

/* Time --iters calls of forward (which = 0) or backward (1) after
 * --warmup untimed ones; the backward's gradient zeroing is not timed. */
static int time_pass(attn_run *r, int which, double flops)
{
    int64_t n = r->c.iters;
    double *ms = malloc(sizeof(double) * (size_t)n);
    if (!ms) {
        fprintf(stderr, "cpattn attn: out of memory: timing buffer\n");
        return EXIT_RUNTIME;
    }
    cpa_tensor t[5];
    result_views(r, &r->res, t);
    cpa_tensor dout = view(r, r->dout, r->c.H, r->c.Dv);
    cpa_status st = CPA_OK;
    for (int64_t i = -r->c.warmup; i < n && st == CPA_OK; ++i) {
        if (which)
            zero_grads(r, &r->res);
        double t0 = tool_now();
        st = which ? cpa_attn_backward(r->ctx, &r->desc, t[0], t[1], dout, t[2], t[3], t[4])
                   : cpa_attn_forward(r->ctx, &r->desc, t[0], t[1]);
        if (i >= 0)
            ms[i] = 1e3 * (tool_now() - t0);
    }
    if (st != CPA_OK) {
        free(ms);
        return runtime_error(st);
    }
    double med, lo, hi;
    tool_stats(ms, (int)n, &med, &lo, &hi);
    printf("%-8s median %.3f ms (min %.3f, max %.3f, n=%lld)  %.1f GFLOP/s\n",
           which ? "backward" : "forward", med, lo, hi, (long long)n, flops / (med * 1e-3) / 1e9);
    free(ms);
    return EXIT_OK;
}

static int run_timing(attn_run *r)
{
    double flops = cpa_attn_forward_flops(&r->desc);
    int rc = time_pass(r, 0, flops);
    if (rc == EXIT_OK && !r->c.forward_only)
        rc = time_pass(r, 1, 2.5 * flops);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* The subcommand                                                            */
/* ------------------------------------------------------------------------ */

static int setup(attn_run *r)
{
    const attn_cfg *c = &r->c;
    r->layout = layout_of_choice[c->layout];
    int rc = alloc_run(r);
    if (rc)
        return rc;
    cpa_attn_ctx_config cc = {.max_head_dim = c->D > c->Dv ? c->D : c->Dv,
                              .num_threads = (int)c->threads};
    cpa_status st = cpa_attn_ctx_create(&cc, &r->ctx);
    if (st != CPA_OK)
        return runtime_error(st);
    r->desc.q = view(r, r->q, c->H, c->D);
    r->desc.k = view(r, r->k, c->G, c->D);
    r->desc.v = view(r, r->v, c->G, c->Dv);
    r->desc.mask.kind = c->mask == MASK_CAUSAL ? CPA_MASK_CAUSAL : CPA_MASK_NONE;
    r->desc.impl = c->reference ? CPA_IMPL_REFERENCE : CPA_IMPL_FAST;
    /* q_rows/kv_rows stay {NULL, 0}: every row, at positions 0..S-1. */
    return fill_inputs(r);
}

static int execute(attn_run *r)
{
    int rc = setup(r);
    if (rc)
        return rc;
    printf("# kernel threads %d, implementation %s\n", cpa_attn_ctx_threads(r->ctx),
           r->c.reference ? "reference" : "fast");
    if ((rc = first_run(r)))
        return rc;
    if (r->c.save && (rc = save_all(r)))
        return rc;
    if (r->c.check && (rc = run_check(r)))
        return rc;
    if (r->c.iters > 0 && (rc = run_timing(r)))
        return rc;
    return EXIT_OK;
}

int cmd_attn(int argc, char **argv)
{
    attn_run run;
    cli_args args;
    memset(&run, 0, sizeof run);
    cli_result pr = cli_parse(&args, &attn_spec, &run.c, argc, argv);
    if (pr != CLI_OK)
        return pr == CLI_HELP ? EXIT_OK : EXIT_USAGE;
    int rc = resolve(&args, &run.c);
    if (rc)
        return rc;
    /* The library is given 0 for the default scale; show the value it means. */
    run.desc.softmax_scale = (float)run.c.scale;
    if (run.c.scale == 0) {
        run.c.scale = 1.0 / sqrt((double)run.c.D);
        cli_mark_derived(&args, "--softmax-scale", "= 1/sqrt(--kv-channels)");
    }
    cli_print_config(&args, stdout, "# ");
    rc = execute(&run);
    printf("peak RSS %.1f MiB\n", tool_peak_rss_mib());
    free_run(&run);
    return rc;
}
