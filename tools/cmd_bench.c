/*
 * cmd_bench.c — `cpattn bench kernel`: GFLOP/s of the local attention
 * kernel (forward, backward, and both) over a grid of sequence lengths, head
 * dims (MLA's Dqk != Dv included), KV head counts, masks and thread counts,
 * each as a fraction of two ceilings measured in the same run at the same
 * thread count (ceiling.c): the FMA peak of the instruction set the kernels
 * run, and a square sgemm with the BLAS as configured — fractions of this
 * machine, not of a datasheet.
 *
 * Flops come from cpa_attn_forward_flops() (visible pairs only, so a causal
 * run counts about half); the backward is counted as 2.5x the forward.
 * Every figure is the median of --reps timed calls after --warmup untimed
 * ones, with the spread (min, max) in the CSV.  Long cases are cut short so
 * the default sweep stays within minutes: a measurement stops repeating once
 * its timed calls add up to --max-seconds (n says how many ran), and the
 * warmup is skipped when the previous case predicts a call of over a second
 * (page faults and thread start-up are then noise).  It is a benchmark, not a
 * test: it checks nothing numerically (`cpattn attn --check` does).
 */
#include "args.h"
#include "util.h"
#include "cmd.h"

#include "cpattn.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Flags                                                                     */
/* ------------------------------------------------------------------------ */

#define MAX_DIMS CLI_LIST_MAX

typedef struct bench_cfg {
    cli_int_list seqs, threads, groups;
    const char *dims_arg;
    int ndims;
    int64_t dqk[MAX_DIMS], dv[MAX_DIMS]; /* parsed --head-dims */
    int64_t B, H;
    int mask; /* index in "both|causal|general" */
    int64_t reps, warmup, sgemm_n;
    double max_seconds;
    int forward_only, quick;
    const char *csv;
} bench_cfg;

enum { MASKS_BOTH = 0, MASKS_CAUSAL = 1, MASKS_GENERAL = 2 };

#define BT(f) offsetof(bench_cfg, f)

static const cli_option bench_options[] = {
    {.flag = "--seq-lengths", .type = CLI_INT_LIST, .def = "1024,4096,16384", .min = 1,
     .max = INT64_MAX, .help = "Sequence lengths S.", .offset = BT(seqs)},
    {.flag = "--head-dims", .type = CLI_STRING, .def = "64,128,192/128", .metavar = "D,Dqk/Dv,...",
     .help = "Head dims: D (Dv = D) or Dqk/Dv (MLA: 192/128).", .offset = BT(dims_arg)},
    {.flag = "--threads", .type = CLI_INT_LIST, .def = "1,2", .min = 1, .max = 4096,
     .help = "Thread counts, for the kernel (its context) and for sgemm (OpenMP).",
     .offset = BT(threads)},
    {.flag = "--micro-batch-size", .type = CLI_INT, .def = "1", .metavar = "B", .min = 1,
     .max = INT64_MAX, .help = "Batch size B.", .offset = BT(B)},
    {.flag = "--num-attention-heads", .type = CLI_INT, .def = "8", .metavar = "H", .min = 1,
     .max = INT64_MAX, .help = "Query heads H.", .offset = BT(H)},
    {.flag = "--num-query-groups", .type = CLI_INT_LIST, .metavar = "G,G,...", .min = 1,
     .max = INT64_MAX, .help = "Key/value head counts G, each dividing H. Default: H and 2 (MHA "
     "and GQA).", .offset = BT(groups)},
    {.flag = "--masks", .type = CLI_CHOICE, .def = "both", .choices = "both|causal|general",
     .help = "Which --attention-mask-type values to run.", .offset = BT(mask)},
    {.flag = "--reps", .type = CLI_INT, .def = "3", .min = 1, .max = 100000,
     .help = "Timed repetitions per measurement (the median is reported).", .offset = BT(reps)},
    {.flag = "--warmup", .type = CLI_INT, .def = "1", .min = 0, .max = 100000,
     .help = "Untimed calls before the timed ones (skipped when a call is predicted to take "
             "over 1 s).", .offset = BT(warmup)},
    {.flag = "--max-seconds", .type = CLI_FLOAT, .def = "10", .fmin = 0, .fmax = 1e6,
     .help = "Stop repeating a measurement once its timed calls add up to this many seconds "
             "(at least one call always runs).", .offset = BT(max_seconds)},
    {.flag = "--sgemm-size", .type = CLI_INT, .def = "4096", .metavar = "N", .min = 64,
     .max = 32768, .help = "Size of the square sgemm ceiling (N x N x N).",
     .offset = BT(sgemm_n)},
    {.flag = "--forward-only", .type = CLI_FLAG, .help = "Time the forward only.",
     .offset = BT(forward_only)},
    {.flag = "--quick", .type = CLI_FLAG,
     .help = "A fast subset: --seq-lengths 1024,4096 --head-dims 64 --threads 1 "
             "--num-query-groups H --sgemm-size 2048 (flags given explicitly still win).",
     .offset = BT(quick)},
    {.flag = "--csv", .type = CLI_STRING, .metavar = "FILE",
     .help = "Write the CSV block to FILE instead of stdout.", .offset = BT(csv)},
};

static const cli_spec bench_spec = {
    .command = "cpattn bench kernel",
    .synopsis = "[flags]",
    .description =
        "Forward, backward and forward+backward GFLOP/s of the local attention kernel for every "
        "combination of --seq-lengths, --head-dims, --num-query-groups, masks and --threads, "
        "each divided by two ceilings measured in the same run at the same thread count: the "
        "FMA peak of the instruction set the kernels use (/peak) and a square N^3 sgemm with "
        "OpenBLAS as configured (/sgemm).",
    .options = bench_options,
    .count = (int)(sizeof bench_options / sizeof bench_options[0]),
    .epilog =
        "Flops: cpa_attn_forward_flops() (2*Sq*Sk*(D+Dv) per head over the visible pairs; causal\n"
        "counts about half), backward = 2.5x forward.  Times are medians of n calls (n = --reps\n"
        "unless --max-seconds cut it short); the table's spread is (max-min)/median, the CSV\n"
        "has min and max.\n\n"
        "Time: the default sweep spends most of its time at S=16384, where one backward call\n"
        "takes tens of seconds on one core (several minutes in all); --quick takes seconds.\n\n"
        "Output: a '# ceilings ...' line per thread count, one table row per case (printed as\n"
        "it is measured), then '# CSV' and a CSV header + rows (or --csv FILE), then 'peak RSS'.\n"
        "The FMA peak is a hard ceiling; a ratio above 1 would be a measuring error and is\n"
        "flagged with '!'.\n",
};

const cli_spec *cmd_bench_spec(void) { return &bench_spec; }

/* ------------------------------------------------------------------------ */
/* Timing                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct timing {
    double med, min, max; /* seconds */
    int n;                /* timed calls that ran */
} timing;

/* How many calls one measurement makes. */
typedef struct rep_plan {
    int64_t warmup;     /* untimed calls first */
    int64_t reps;       /* timed calls wanted */
    double max_seconds; /* stop once the timed calls add up to this (after one) */
} rep_plan;

/* The plan for a call predicted to take `guess` seconds (0: unknown). */
static rep_plan plan_for(const bench_cfg *c, double guess)
{
    rep_plan p = {guess > 1.0 ? 0 : c->warmup, c->reps, c->max_seconds};
    return p;
}

/* What one timed call runs, and what it needs done first (untimed). */
typedef cpa_status (*bench_fn)(void *state);

static cpa_status measure(bench_fn prep, bench_fn run, void *state, rep_plan p, timing *t)
{
    double *s = malloc(sizeof(double) * (size_t)p.reps), total = 0.0;
    int64_t n = 0;
    if (!s) {
        fprintf(stderr, "cpattn bench kernel: out of memory: timing buffer\n");
        return CPA_ERR_NOMEM;
    }
    cpa_status st = CPA_OK;
    for (int64_t i = -p.warmup; i < p.reps && st == CPA_OK; ++i) {
        if (i > 0 && total >= p.max_seconds)
            break;
        if (prep)
            prep(state);
        double t0 = tool_now();
        st = run(state);
        if (i >= 0) {
            s[n] = tool_now() - t0;
            total += s[n++];
        }
    }
    if (st == CPA_OK) {
        tool_stats(s, (int)n, &t->med, &t->min, &t->max);
        t->n = (int)n;
    }
    free(s);
    return st;
}

static int runtime_error(cpa_status status)
{
    fprintf(stderr, "cpattn bench kernel: %s: %s\n", cpa_status_string(status),
            cpa_last_error());
    return EXIT_RUNTIME;
}

/* ------------------------------------------------------------------------ */
/* Kernel cases                                                              */
/* ------------------------------------------------------------------------ */

/* One table row / CSV row. */
typedef struct bench_row {
    int threads, causal;
    int64_t S, G, Dqk, Dv;
    timing fwd, bwd;
    double fwd_gflops, bwd_gflops, fb_gflops;
    tool_ceilings ceil;
} bench_row;

typedef struct kernel_case {
    cpa_attn_ctx *ctx;
    cpa_attn_desc desc; /* q [B,S,H,Dqk], k [B,S,G,Dqk], v [B,S,G,Dv], all rows */
    float *buf[9];      /* q, k, v, dout, out, lse, dq, dk, dv */
    cpa_tensor out;     /* [B, S, H, Dv] */
    cpa_tensor lse;     /* [B, H, S] */
    cpa_tensor dout;    /* [B, S, H, Dv] */
    cpa_tensor dq, dk, dv;
} kernel_case;

static cpa_status kernel_forward(void *state)
{
    kernel_case *k = state;
    return cpa_attn_forward(k->ctx, &k->desc, k->out, k->lse);
}

static cpa_status kernel_zero_grads(void *state)
{
    kernel_case *k = state;
    memset(k->dq.data, 0, sizeof(float) * (size_t)cpa_tensor_numel(&k->dq));
    memset(k->dk.data, 0, sizeof(float) * (size_t)cpa_tensor_numel(&k->dk));
    memset(k->dv.data, 0, sizeof(float) * (size_t)cpa_tensor_numel(&k->dv));
    return CPA_OK;
}

static cpa_status kernel_backward(void *state)
{
    kernel_case *k = state;
    return cpa_attn_backward(k->ctx, &k->desc, k->out, k->lse, k->dout, k->dq, k->dk, k->dv);
}

static void kernel_free(kernel_case *k)
{
    for (int i = 0; i < 9; ++i)
        free(k->buf[i]);
}

/* Allocate and fill one case: q [B,S,H,Dqk], k [B,S,G,Dqk], v [B,S,G,Dv]. */
static int kernel_setup(kernel_case *k, const bench_cfg *c, const bench_row *r)
{
    const int64_t B = c->B, S = r->S, H = c->H, G = r->G, Dk = r->Dqk, Dv = r->Dv;
    const int64_t bs = B * S; /* products checked in validate() */
    int64_t counts[9] = {bs * H * Dk, bs * G * Dk, bs * G * Dv, bs * H * Dv, bs * H * Dv,
                         bs * H,      bs * H * Dk, bs * G * Dk, bs * G * Dv};
    for (int i = 0; i < 9; ++i) {
        if (!(k->buf[i] = cpa_alloc_floats(counts[i]))) {
            fprintf(stderr, "cpattn bench kernel: out of memory at S=%lld D=%lld/%lld\n",
                    (long long)S, (long long)Dk, (long long)Dv);
            return EXIT_RUNTIME;
        }
    }
    int64_t lse_shape[3] = {B, H, S};
    k->desc.q = cpa_tensor_attn(k->buf[0], CPA_LAYOUT_BSHD, B, S, H, Dk);
    k->desc.k = cpa_tensor_attn(k->buf[1], CPA_LAYOUT_BSHD, B, S, G, Dk);
    k->desc.v = cpa_tensor_attn(k->buf[2], CPA_LAYOUT_BSHD, B, S, G, Dv);
    k->desc.mask.kind = r->causal ? CPA_MASK_CAUSAL : CPA_MASK_NONE;
    k->desc.impl = CPA_IMPL_FAST;
    k->dout = cpa_tensor_attn(k->buf[3], CPA_LAYOUT_BSHD, B, S, H, Dv);
    k->out = cpa_tensor_attn(k->buf[4], CPA_LAYOUT_BSHD, B, S, H, Dv);
    k->lse = cpa_tensor_make(k->buf[5], 3, lse_shape);
    k->dq = cpa_tensor_attn(k->buf[6], CPA_LAYOUT_BSHD, B, S, H, Dk);
    k->dk = cpa_tensor_attn(k->buf[7], CPA_LAYOUT_BSHD, B, S, G, Dk);
    k->dv = cpa_tensor_attn(k->buf[8], CPA_LAYOUT_BSHD, B, S, G, Dv);
    cpa_tensor in[4] = {k->desc.q, k->desc.k, k->desc.v, k->dout};
    for (int i = 0; i < 4; ++i)
        cpa_tensor_fill_uniform(in[i], 1234, (uint64_t)i, S, 0);
    return EXIT_OK;
}

static void print_table_header(void)
{
    printf("%4s %-7s %6s %3s %7s | %10s %8s | %10s %8s | %8s %6s %6s | %s\n", "thr", "mask", "S",
           "G", "Dqk/Dv", "fwd ms", "GFLOP/s", "bwd ms", "GFLOP/s", "f+b GF/s", "/peak",
           "/sgemm", "spread f/b (n)");
}

static double spread_pct(const timing *t)
{
    return t->med > 0 ? 100.0 * (t->max - t->min) / t->med : 0.0;
}

/* A ratio to the FMA peak, flagged when it claims more than the peak. */
static const char *over(double ratio) { return ratio > 1.0 ? "!" : " "; }

static void print_table_row(const bench_row *r, int forward_only)
{
    char dims[24];
    snprintf(dims, sizeof dims, "%lld/%lld", (long long)r->Dqk, (long long)r->Dv);
    printf("%4d %-7s %6lld %3lld %7s | %10.3f %8.1f |", r->threads,
           r->causal ? "causal" : "general", (long long)r->S, (long long)r->G, dims,
           1e3 * r->fwd.med, r->fwd_gflops);
    if (forward_only) {
        printf(" %10s %8s | %8.1f %5.3f%s %6.3f | %.1f%% (%d)\n", "-", "-", r->fwd_gflops,
               r->fwd_gflops / r->ceil.fma_gflops, over(r->fwd_gflops / r->ceil.fma_gflops),
               r->fwd_gflops / r->ceil.sgemm_gflops, spread_pct(&r->fwd), r->fwd.n);
    } else {
        const double p = r->fb_gflops / r->ceil.fma_gflops;
        printf(" %10.3f %8.1f | %8.1f %5.3f%s %6.3f | %.1f%%/%.1f%% (%d/%d)\n", 1e3 * r->bwd.med,
               r->bwd_gflops, r->fb_gflops, p, over(p), r->fb_gflops / r->ceil.sgemm_gflops,
               spread_pct(&r->fwd), spread_pct(&r->bwd), r->fwd.n, r->bwd.n);
    }
    fflush(stdout);
}

/* Time one case into `row`.  `rate` is the forward FLOP/s of the previous
 * case (0: none yet), to predict how long calls take; it is updated. */
static int run_case(cpa_attn_ctx *ctx, const bench_cfg *c, bench_row *row, double *rate)
{
    kernel_case k;
    memset(&k, 0, sizeof k);
    k.ctx = ctx;
    int rc = kernel_setup(&k, c, row);
    cpa_status st = CPA_OK;
    if (rc == EXIT_OK) {
        double flops = cpa_attn_forward_flops(&k.desc);
        st = measure(NULL, kernel_forward, &k, plan_for(c, *rate > 0 ? flops / *rate : 0),
                     &row->fwd);
        row->fwd_gflops = flops / row->fwd.med / 1e9;
        *rate = flops / row->fwd.med;
        if (st == CPA_OK && !c->forward_only) {
            rep_plan p = plan_for(c, *rate > 0 ? 2.5 * flops / *rate : 0);
            st = measure(kernel_zero_grads, kernel_backward, &k, p, &row->bwd);
            row->bwd_gflops = 2.5 * flops / row->bwd.med / 1e9;
            row->fb_gflops = 3.5 * flops / (row->fwd.med + row->bwd.med) / 1e9;
        }
        if (st != CPA_OK)
            rc = runtime_error(st);
    }
    kernel_free(&k);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* CSV                                                                       */
/* ------------------------------------------------------------------------ */

static void write_csv(FILE *f, const bench_cfg *c, const bench_row *rows, int n)
{
    fprintf(f, "threads,mask,B,S,H,G,Dqk,Dv,isa,fwd_n,fwd_ms_median,fwd_ms_min,fwd_ms_max,"
               "fwd_gflops,bwd_n,bwd_ms_median,bwd_ms_min,bwd_ms_max,bwd_gflops,fwdbwd_gflops,"
               "fma_peak_gflops,sgemm_n,sgemm_gflops,fwd_over_peak,bwd_over_peak,"
               "fwdbwd_over_peak,fwd_over_sgemm,bwd_over_sgemm,fwdbwd_over_sgemm\n");
    for (int i = 0; i < n; ++i) {
        const bench_row *r = &rows[i];
        const double pk = r->ceil.fma_gflops, sg = r->ceil.sgemm_gflops;
        fprintf(f, "%d,%s,%lld,%lld,%lld,%lld,%lld,%lld,%s,%d,%.4f,%.4f,%.4f,%.2f,", r->threads,
                r->causal ? "causal" : "general", (long long)c->B, (long long)r->S,
                (long long)c->H, (long long)r->G, (long long)r->Dqk, (long long)r->Dv,
                cpa_isa_name(r->ceil.isa), r->fwd.n, 1e3 * r->fwd.med, 1e3 * r->fwd.min,
                1e3 * r->fwd.max, r->fwd_gflops);
        if (c->forward_only)
            fprintf(f, ",,,,,,");
        else
            fprintf(f, "%d,%.4f,%.4f,%.4f,%.2f,%.2f,", r->bwd.n, 1e3 * r->bwd.med,
                    1e3 * r->bwd.min, 1e3 * r->bwd.max, r->bwd_gflops, r->fb_gflops);
        fprintf(f, "%.2f,%d,%.2f,%.4f,", pk, r->ceil.sgemm_n, sg, r->fwd_gflops / pk);
        if (c->forward_only)
            fprintf(f, ",,%.4f,,\n", r->fwd_gflops / sg);
        else
            fprintf(f, "%.4f,%.4f,%.4f,%.4f,%.4f\n", r->bwd_gflops / pk, r->fb_gflops / pk,
                    r->fwd_gflops / sg, r->bwd_gflops / sg, r->fb_gflops / sg);
    }
}

/* To FILE via a temporary file and rename, or to stdout after '# CSV'. */
static int emit_csv(const bench_cfg *c, const bench_row *rows, int n)
{
    if (!c->csv) {
        printf("# CSV\n");
        write_csv(stdout, c, rows, n);
        return EXIT_OK;
    }
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", c->csv) >= (int)sizeof tmp) {
        fprintf(stderr, "cpattn bench kernel: --csv %s: path too long\n", c->csv);
        return EXIT_RUNTIME;
    }
    FILE *f = fopen(tmp, "w");
    if (f)
        write_csv(f, c, rows, n);
    if (!f || fclose(f) != 0 || rename(tmp, c->csv) != 0) {
        fprintf(stderr, "cpattn bench kernel: I/O error: --csv %s: cannot write\n", c->csv);
        if (f)
            remove(tmp);
        return EXIT_RUNTIME;
    }
    printf("# CSV written to %s\n", c->csv);
    return EXIT_OK;
}

/* ------------------------------------------------------------------------ */
/* The sweep                                                                 */
/* ------------------------------------------------------------------------ */

static int64_t list_max(const cli_int_list *l)
{
    int64_t m = 0;
    for (int i = 0; i < l->n; ++i)
        m = l->v[i] > m ? l->v[i] : m;
    return m;
}

static int64_t dims_max(const bench_cfg *c)
{
    int64_t m = 0;
    for (int i = 0; i < c->ndims; ++i) {
        m = c->dqk[i] > m ? c->dqk[i] : m;
        m = c->dv[i] > m ? c->dv[i] : m;
    }
    return m;
}

/* Every case at one thread count, appended to rows[*n]. */
static int sweep_threads(const bench_cfg *c, int threads, bench_row *rows, int *n)
{
    tool_ceilings ceil;
    int rc = tool_measure_ceilings(CPA_ISA_AUTO, threads, (int)c->sgemm_n, 3, &ceil);
    if (rc)
        return rc == EXIT_USAGE ? runtime_error(CPA_ERR_ARG) : rc;
    tool_say_ceilings(&ceil);
    const int first = *n;
    cpa_attn_ctx *ctx = NULL;
    double rate = 0.0;
    cpa_attn_ctx_config cc = {.max_head_dim = dims_max(c), .num_threads = threads};
    cpa_status st = cpa_attn_ctx_create(&cc, &ctx);
    if (st != CPA_OK)
        return runtime_error(st);
    print_table_header();
    for (int d = 0; d < c->ndims && rc == EXIT_OK; ++d)
        for (int g = 0; g < c->groups.n && rc == EXIT_OK; ++g)
            for (int m = 0; m < 2 && rc == EXIT_OK; ++m) {
                int causal = m == 0;
                if ((causal && c->mask == MASKS_GENERAL) || (!causal && c->mask == MASKS_CAUSAL))
                    continue;
                for (int s = 0; s < c->seqs.n && rc == EXIT_OK; ++s) {
                    bench_row *r = &rows[(*n)++];
                    memset(r, 0, sizeof *r);
                    r->threads = threads;
                    r->causal = causal;
                    r->S = c->seqs.v[s];
                    r->G = c->groups.v[g];
                    r->Dqk = c->dqk[d];
                    r->Dv = c->dv[d];
                    r->ceil = ceil;
                    if ((rc = run_case(ctx, c, r, &rate)) == EXIT_OK)
                        print_table_row(r, c->forward_only);
                }
            }
    cpa_attn_ctx_destroy(ctx);
    /* The peak once more, after the cases: a busy moment on a shared host
     * during the first probe must not leave a ceiling that is too low. */
    if (rc == EXIT_OK) {
        double again = cpa_fma_peak_gflops(ceil.isa, threads);
        if (again > 1.03 * ceil.fma_gflops) {
            tool_say("# FMA peak re-measured after the cases: %.1f GFLOP/s (was %.1f); the "
                     "CSV uses it\n", again, ceil.fma_gflops);
            for (int i = first; i < *n; ++i)
                rows[i].ceil.fma_gflops = again;
        }
    }
    return rc;
}

static int run_bench(const bench_cfg *c)
{
    int masks = c->mask == MASKS_BOTH ? 2 : 1;
    int cap = c->seqs.n * c->ndims * c->groups.n * c->threads.n * masks, n = 0, rc = EXIT_OK;
    bench_row *rows = calloc((size_t)cap, sizeof *rows);
    if (!rows) {
        fprintf(stderr, "cpattn bench kernel: out of memory: result rows\n");
        return EXIT_RUNTIME;
    }
    for (int t = 0; t < c->threads.n && rc == EXIT_OK; ++t)
        rc = sweep_threads(c, (int)c->threads.v[t], rows, &n);
    if (rc == EXIT_OK)
        rc = emit_csv(c, rows, n);
    free(rows);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* The subcommand                                                            */
/* ------------------------------------------------------------------------ */

static void apply_quick(cli_args *args, bench_cfg *c)
{
    static const cli_int_list seqs = {2, {1024, 4096}}, threads = {1, {1}};
    if (!c->quick)
        return;
    if (!cli_given(args, "--seq-lengths")) {
        c->seqs = seqs;
        cli_mark_derived(args, "--seq-lengths", "--quick");
    }
    if (!cli_given(args, "--head-dims")) {
        c->dims_arg = "64";
        cli_mark_derived(args, "--head-dims", "--quick");
    }
    if (!cli_given(args, "--num-query-groups")) {
        c->groups.n = 1;
        c->groups.v[0] = c->H;
        cli_mark_derived(args, "--num-query-groups", "--quick: = --num-attention-heads");
    }
    if (!cli_given(args, "--threads")) {
        c->threads = threads;
        cli_mark_derived(args, "--threads", "--quick");
    }
    if (!cli_given(args, "--sgemm-size")) {
        c->sgemm_n = 2048;
        cli_mark_derived(args, "--sgemm-size", "--quick");
    }
}

/* "64,128,192/128" -> Dqk and Dv lists. */
static int parse_dims(bench_cfg *c)
{
    const char *p = c->dims_arg;
    c->ndims = 0;
    while (*p) {
        char *end;
        long long a = strtoll(p, &end, 10), b = a;
        if (end == p || a < 1 || a > 4096)
            goto bad;
        if (*end == '/') {
            p = end + 1;
            b = strtoll(p, &end, 10);
            if (end == p || b < 1 || b > 4096)
                goto bad;
        }
        if (c->ndims == MAX_DIMS || (*end && *end != ','))
            goto bad;
        c->dqk[c->ndims] = a;
        c->dv[c->ndims++] = b;
        p = *end ? end + 1 : end;
    }
    if (c->ndims > 0)
        return EXIT_OK;
bad:
    return cli_usage(&bench_spec, "--head-dims '%s': expected up to %d comma-separated entries, "
                     "each D or Dqk/Dv with values in 1..4096 (e.g. 64,128,192/128)",
                     c->dims_arg, MAX_DIMS);
}

static int validate(cli_args *args, bench_cfg *c)
{
    int rc = parse_dims(c);
    if (rc)
        return rc;
    if (c->groups.n == 0) {
        c->groups.v[c->groups.n++] = c->H;
        if (c->H % 2 == 0 && c->H > 2)
            c->groups.v[c->groups.n++] = 2;
        cli_mark_derived(args, "--num-query-groups", "= --num-attention-heads, and 2 (GQA)");
    }
    for (int g = 0; g < c->groups.n; ++g)
        if (c->H % c->groups.v[g] != 0)
            return cli_usage(&bench_spec,
                             "--num-query-groups %lld: must divide --num-attention-heads %lld "
                             "(H %% G == 0)", (long long)c->groups.v[g], (long long)c->H);
    int64_t n;
    if (!tool_mul_ok(c->B, list_max(&c->seqs), &n) || !tool_mul_ok(n, c->H, &n) ||
        !tool_mul_ok(n, dims_max(c), &n) || !tool_mul_ok(n, 4 * 16, &n))
        return cli_usage(&bench_spec,
                         "--seq-lengths %lld --micro-batch-size %lld --num-attention-heads %lld "
                         "--head-dims %lld: tensor sizes overflow 64 bits (B*S*H*D*4 bytes "
                         "must fit)", (long long)list_max(&c->seqs), (long long)c->B,
                         (long long)c->H, (long long)dims_max(c));
    double bytes = 4.0 * 9 * (double)n / 64, phys = tool_phys_mem_bytes();
    if (phys > 0 && bytes > phys) {
        fprintf(stderr, "cpattn bench kernel: out of memory: the largest case needs %.1f GiB "
                        "but this machine has %.1f GiB\n", bytes / 1073741824.0,
                phys / 1073741824.0);
        return EXIT_RUNTIME;
    }
    return EXIT_OK;
}

static void print_benchmarks(void)
{
    printf("usage: cpattn bench <benchmark> [flags]\n\nbenchmarks:\n"
           "  kernel   local attention kernel GFLOP/s vs the same run's FMA peak and sgemm\n\n"
           "`cpattn bench kernel --help` lists its flags and defaults.\n");
}

int cmd_bench(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "cpattn bench: missing benchmark name (expected: kernel); see "
                        "cpattn bench --help\n");
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        print_benchmarks();
        return EXIT_OK;
    }
    if (strcmp(argv[1], "kernel") != 0) {
        fprintf(stderr, "cpattn bench: unknown benchmark '%s' (expected: kernel)\n", argv[1]);
        return EXIT_USAGE;
    }
    bench_cfg cfg;
    cli_args args;
    memset(&cfg, 0, sizeof cfg);
    cli_result pr = cli_parse(&args, &bench_spec, &cfg, argc - 1, argv + 1);
    if (pr != CLI_OK)
        return pr == CLI_HELP ? EXIT_OK : EXIT_USAGE;
    apply_quick(&args, &cfg);
    int rc = validate(&args, &cfg);
    if (rc)
        return rc;
    cpa_isa isa;
    if (cpa_isa_resolve(CPA_ISA_AUTO, &isa) != CPA_OK) {
        fprintf(stderr, "cpattn bench kernel: %s\n", cpa_last_error());
        return EXIT_USAGE;
    }
    cli_print_config(&args, stdout, "# ");
    tool_say_platform(isa);
    rc = run_bench(&cfg);
    printf("peak RSS %.1f MiB\n", tool_peak_rss_mib());
    return rc;
}
