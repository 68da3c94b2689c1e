/*
 * planner.c — choosing the context-parallel configuration from
 * measurements (`cpattn plan`, `cpattn train --context-parallel-algo auto`).
 *
 * The planner calibrates the job's own ranks, then predicts every legal
 * configuration of one attention problem with a small cost model, and ranks
 * them.  Calibration, all of it collective and timed with every rank busy
 * at once (so a shared core or a shared link shows as it will in the run):
 *
 *   kernels   each candidate family's own schedule (the ring's blocks for
 *             every window, the hybrid's inner ring per Ulysses degree, the
 *             Ulysses gathered sequence, the all-gather's rows) run through
 *             a real plan on Hc >= H/2 of the H heads (Gc = Hc*G/H KV heads, the
 *             same GQA grouping, zigzag split and tile skipping); the
 *             plan's compute_s counters, scaled by H/Hc, give each family's
 *             forward and backward kernel time, and its flops the rate.
 *   links     every exchange pattern a ring schedule uses (ring +1, the
 *             double ring's window +1 and window-to-window +W, the
 *             backward's diagonal shift, strided by U inside a hybrid) at
 *             the block size and twice it, through the engines' own
 *             transfer set (cpa_xfer); a pattern is inter-host when some
 *             rank's peer has another MPI processor name.
 *   groups    MPI_Alltoall over the Ulysses groups at the sizes they send,
 *             MPI_Allgather and MPI_Reduce_scatter_block at the all-gather's
 *             slab, and a memcpy rate (the packing around them).
 *   progress  how much of a transfer hides behind a kernel that drives MPI
 *             progress from its callback, as a ring step does: e =
 *             (c + t - together) / min(c, t), clamped to [0, 1].
 *
 * The model.  A ring step that computes c while a transfer of t runs takes
 * combine(c, t) = max(c, t) + (1 - e) * min(c, t).  Ring and double ring
 * (n = R steps of equal work under zigzag, J = R/W rounds of W steps):
 * forward, each round's inner steps carry the window +1 transfer and the
 * round's outer transfer must finish within the round; backward, one
 * exposed fetch of the first block, then steps whose K/V and dK/dV travel
 * together (twice a block).  Ulysses: its all-to-alls (5 forward, 4
 * backward with saved state) at the fitted latency + bytes / rate plus
 * packing, around the kernel.  Hybrid: the Ulysses part over U plus the
 * inner ring's.  All-gather: gather, kernel, gather again, kernel,
 * reduce-scatter.  Bytes come from the plans' own schedule walks
 * (cpa_plan_volume) and memory from cpa_plan_memory_bytes +
 * cpa_plan_saved_bytes, so those columns are exact; times are predictions
 * that --validate checks against real runs.
 */
#include "cp_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROBE_REPS 5 /* repeats of a link or collective probe (median) */

/* ---- small helpers ------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double combine(double c, double t, double e)
{
    const double hi = c > t ? c : t, lo = c > t ? t : c;
    return hi + (1.0 - e) * lo;
}

static cpa_status max_over_ranks(MPI_Comm comm, double *v, int n)
{
    return cpa_comm_allreduce(v, n, MPI_DOUBLE, MPI_MAX, comm, "the planner's timings");
}

void cpa_plan_flags(const cpa_cp_config *c, char *buf, size_t cap)
{
    cpa_algo_info info;
    if (cpa_algo_describe(c->algo, &info) != CPA_OK) {
        snprintf(buf, cap, "--context-parallel-algo unknown");
        return;
    }
    int n = snprintf(buf, cap, "--context-parallel-algo %s", info.name);
    if (info.uses_ulysses_degree && n >= 0 && (size_t)n < cap)
        n += snprintf(buf + n, cap - (size_t)n, " --ulysses-degree-in-cp %d", c->ulysses_degree);
    if (info.uses_window && c->window > 1 && n >= 0 && (size_t)n < cap)
        n += snprintf(buf + n, cap - (size_t)n, " --cp-window-size %d", c->window);
    if (info.uses_overlap && c->send_recv_overlap && n >= 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, " --use-cp-send-recv-overlap");
}

/* ---- running a configuration for real -------------------------------------- */

/* Medians over the timed calls of the slowest rank's figures. */
typedef struct run_figures {
    double fwd_s, bwd_s, fwd_compute_s, bwd_compute_s, fwd_wait_s, bwd_wait_s;
    double fwd_flops, bwd_flops;
} run_figures;

enum { NFIG = 8 };

/* One plan of `c` on `comm`: `warmup` untimed then `iters` timed forward +
 * backward (with saved state) on deterministic random inputs. */
static cpa_status run_config(MPI_Comm comm, const cpa_cp_config *c, int warmup, int iters,
                             run_figures *out)
{
    cpa_plan *plan = NULL;
    cpa_plan_saved *saved = NULL;
    CPA_TRY(cpa_plan_create(comm, c, &plan));
    const cpa_cp_config *pc = cpa_plan_config(plan);
    const int64_t B = pc->batch, Sl = cpa_plan_local_seq(plan), H = pc->num_heads,
                  G = pc->num_kv_heads, Dk = pc->head_dim, Dv = pc->v_head_dim;
    const int64_t nq = B * Sl * H * Dk, nk = B * Sl * G * Dk, nv = B * Sl * G * Dv,
                  no = B * Sl * H * Dv, nl = B * H * Sl;
    /* q k v out dout dq dk dv lse, back to back */
    const int64_t total = 2 * nq + 2 * nk + 2 * nv + 2 * no + nl;
    float *mem = cpa_alloc_floats(total);
    double *fig = cpa_malloc(sizeof(double) * NFIG * (size_t)(iters > 0 ? iters : 1), "timings");
    cpa_status st = cpa_cp_agree(comm, mem && fig ? cpa_plan_saved_create(plan, &saved)
                                                   : cpa_error(CPA_ERR_NOMEM, "the planner's "
                                                               "tensors: %lld floats",
                                                               (long long)total));
    if (st == CPA_OK) {
        float *p = mem;
        const cpa_layout L = pc->layout;
        cpa_tensor q = cpa_tensor_attn(p, L, B, Sl, H, Dk);
        cpa_tensor dq = cpa_tensor_attn(p += nq, L, B, Sl, H, Dk);
        cpa_tensor k = cpa_tensor_attn(p += nq, L, B, Sl, G, Dk);
        cpa_tensor dk = cpa_tensor_attn(p += nk, L, B, Sl, G, Dk);
        cpa_tensor v = cpa_tensor_attn(p += nk, L, B, Sl, G, Dv);
        cpa_tensor dv = cpa_tensor_attn(p += nv, L, B, Sl, G, Dv);
        cpa_tensor o = cpa_tensor_attn(p += nv, L, B, Sl, H, Dv);
        cpa_tensor dout = cpa_tensor_attn(p += no, L, B, Sl, H, Dv);
        const int64_t lsh[3] = {B, H, Sl};
        cpa_tensor lse = cpa_tensor_make(p += no, 3, lsh);
        const int64_t Sg = pc->seq_length;
        cpa_tensor_fill_uniform(q, 11, 1, Sg, 0);
        cpa_tensor_fill_uniform(k, 11, 2, Sg, 0);
        cpa_tensor_fill_uniform(v, 11, 3, Sg, 0);
        cpa_tensor_fill_uniform(dout, 11, 4, Sg, 0);
        for (int it = 0; it < warmup + iters && st == CPA_OK; ++it) {
            cpa_plan_stats sf, sb;
            MPI_Barrier(comm);
            st = cpa_plan_forward(plan, saved, q, k, v, o, lse);
            if (st != CPA_OK)
                break;
            cpa_plan_last_stats(plan, &sf);
            st = cpa_plan_backward(plan, saved, q, k, v, o, lse, dout, dq, dk, dv);
            if (st != CPA_OK)
                break;
            cpa_plan_last_stats(plan, &sb);
            if (it < warmup)
                continue;
            double *f = fig + (size_t)NFIG * (size_t)(it - warmup);
            const double row[NFIG] = {sf.total_s,  sb.total_s, sf.compute_s, sb.compute_s,
                                      sf.wait_s,   sb.wait_s,  sf.flops,     sb.flops};
            memcpy(f, row, sizeof row);
            st = max_over_ranks(comm, f, NFIG);
        }
    }
    if (st == CPA_OK && iters > 0) {
        double col[NFIG][64], *dst[NFIG] = {&out->fwd_s,        &out->bwd_s,
                                            &out->fwd_compute_s, &out->bwd_compute_s,
                                            &out->fwd_wait_s,    &out->bwd_wait_s,
                                            &out->fwd_flops,     &out->bwd_flops};
        const int n = iters < 64 ? iters : 64;
        for (int j = 0; j < NFIG; ++j) {
            for (int i = 0; i < n; ++i)
                col[j][i] = fig[(size_t)NFIG * (size_t)i + (size_t)j];
            *dst[j] = median(col[j], n);
        }
    }
    cpa_free(fig);
    cpa_free(mem);
    cpa_plan_saved_destroy(saved);
    cpa_plan_destroy(plan);
    return st;
}

/* ---- link and collective probes --------------------------------------------- */

typedef struct probe_ctx {
    MPI_Comm comm;
    int rank, P, reps;
    int *host;          /* [P] host index of each rank */
    float *sbuf, *rbuf; /* probe buffers of cap floats each */
    int64_t cap;
    cpa_xfer xfer;
} probe_ctx;

/* Every rank sends `floats` to to[rank] and receives from from[rank] at
 * once, through the engines' transfer set: the slowest rank's median. */
static cpa_status exchange_time(probe_ctx *pc, const int *to, const int *from, int64_t floats,
                                double *seconds)
{
    double t[PROBE_REPS];
    for (int r = 0; r < pc->reps; ++r) {
        int h;
        MPI_Barrier(pc->comm);
        const double t0 = cpa_wtime();
        CPA_TRY(cpa_xfer_post(&pc->xfer, pc->sbuf, floats, to[pc->rank], pc->comm, pc->rbuf,
                              floats, from[pc->rank], pc->comm, 71, "planner probe", &h));
        CPA_TRY(cpa_xfer_wait(&pc->xfer, h));
        t[r] = cpa_wtime() - t0;
        CPA_TRY(max_over_ranks(pc->comm, &t[r], 1));
    }
    *seconds = median(t, pc->reps);
    return CPA_OK;
}

/* A pattern's link record: its time at `floats` and with one float. */
static cpa_status probe_link(probe_ctx *pc, cpa_planner_calibration *cal, const char *what,
                             const int *to, const int *from, int64_t floats, double *seconds)
{
    for (int i = 0; i < cal->nlinks; ++i) { /* measured already */
        cpa_planner_link *l = &cal->links[i];
        if (!strcmp(l->what, what) && l->bytes == 4.0 * (double)floats) {
            *seconds = l->seconds;
            return CPA_OK;
        }
    }
    double lat;
    CPA_TRY(exchange_time(pc, to, from, floats, seconds));
    CPA_TRY(exchange_time(pc, to, from, 1, &lat));
    if (cal->nlinks < CPA_PLANNER_MAX_LINKS) {
        cpa_planner_link *l = &cal->links[cal->nlinks++];
        snprintf(l->what, sizeof l->what, "%s", what);
        l->bytes = 4.0 * (double)floats;
        l->seconds = *seconds;
        l->latency_s = lat;
        l->inter_host = 0;
        for (int r = 0; r < pc->P; ++r)
            l->inter_host |= pc->host[r] != pc->host[to[r]];
    }
    return CPA_OK;
}

/* A collective over groups of `group` consecutive ranks (all-to-all with
 * `floats` per destination; all-gather / reduce-scatter of `floats` per
 * rank), every group at once: the slowest rank's median. */
enum { COLL_ALLTOALL, COLL_ALLGATHER, COLL_REDUCE_SCATTER };

static cpa_status collective_time(probe_ctx *pc, MPI_Comm gcomm, int group, int kind,
                                  int64_t floats, double *seconds)
{
    double t[PROBE_REPS];
    if (floats * group > pc->cap || floats > INT32_MAX)
        return cpa_error(CPA_ERR_ARG, "planner: a probe of %lld floats is too large",
                         (long long)(floats * group));
    for (int r = 0; r < pc->reps; ++r) {
        MPI_Request req;
        int rc;
        MPI_Barrier(pc->comm);
        const double t0 = cpa_wtime();
        const int n = (int)floats;
        if (kind == COLL_ALLTOALL)
            rc = MPI_Ialltoall(pc->sbuf, n, MPI_FLOAT, pc->rbuf, n, MPI_FLOAT, gcomm, &req);
        else if (kind == COLL_ALLGATHER)
            rc = MPI_Iallgather(pc->sbuf, n, MPI_FLOAT, pc->rbuf, n, MPI_FLOAT, gcomm, &req);
        else
            rc = MPI_Ireduce_scatter_block(pc->sbuf, pc->rbuf, n, MPI_FLOAT, MPI_SUM, gcomm, &req);
        if (rc != MPI_SUCCESS)
            return cpa_mpi_error(rc, "the planner's collective probe");
        CPA_TRY(cpa_comm_wait(1, &req, "the planner's collective probe over %d ranks", group));
        t[r] = cpa_wtime() - t0;
        CPA_TRY(max_over_ranks(pc->comm, &t[r], 1));
    }
    *seconds = median(t, pc->reps);
    return CPA_OK;
}

/* A collective's latency + bytes/rate fitted from two sizes, recorded as a
 * link; *alpha, *per_byte describe one call's time per rank byte sent. */
static cpa_status probe_collective(probe_ctx *pc, cpa_planner_calibration *cal, int group,
                                   int kind, int64_t floats, double *alpha, double *per_byte)
{
    static const char *const names[] = {"all-to-all", "all-gather", "reduce-scatter"};
    char what[64];
    snprintf(what, sizeof what, "%s over %d", names[kind], group);
    const double sent = 4.0 * (double)floats * (group - 1); /* per rank per call */
    for (int i = 0; i < cal->nlinks; ++i) {
        const cpa_planner_link *l = &cal->links[i];
        if (!strcmp(l->what, what) && l->bytes == sent) {
            *alpha = l->latency_s;
            *per_byte = sent > 0 ? (l->seconds - l->latency_s) / sent : 0;
            if (*per_byte < 0)
                *per_byte = 0;
            return CPA_OK;
        }
    }
    MPI_Comm gcomm;
    int rc = MPI_Comm_split(pc->comm, pc->rank / group, pc->rank, &gcomm);
    if (rc != MPI_SUCCESS)
        return cpa_mpi_error(rc, "MPI_Comm_split (planner)");
    double big = 0, small = 0;
    cpa_status st = collective_time(pc, gcomm, group, kind, floats, &big);
    if (st == CPA_OK)
        st = collective_time(pc, gcomm, group, kind, 1, &small);
    MPI_Comm_free(&gcomm);
    CPA_TRY(st);
    *alpha = small;
    *per_byte = sent > 0 && big > small ? (big - small) / sent : 0;
    if (cal->nlinks < CPA_PLANNER_MAX_LINKS) {
        cpa_planner_link *l = &cal->links[cal->nlinks++];
        snprintf(l->what, sizeof l->what, "%s", what);
        l->bytes = sent;
        l->seconds = big;
        l->latency_s = small;
        l->inter_host = 0; /* some pair inside a group on two hosts */
        for (int r = 0; r < pc->P; ++r)
            for (int s = (r / group) * group; s < (r / group + 1) * group; ++s)
                l->inter_host |= pc->host[r] != pc->host[s];
    }
    return CPA_OK;
}

/* memcpy rate over a buffer of the probe's size, GB/s (the slowest rank). */
static cpa_status copy_rate(probe_ctx *pc, double *gbytes)
{
    double t[PROBE_REPS];
    const size_t bytes = sizeof(float) * (size_t)pc->cap;
    memset(pc->sbuf, 0, bytes);
    for (int r = 0; r < pc->reps; ++r) {
        MPI_Barrier(pc->comm);
        const double t0 = cpa_wtime();
        memcpy(pc->rbuf, pc->sbuf, bytes);
        t[r] = cpa_wtime() - t0;
        CPA_TRY(max_over_ranks(pc->comm, &t[r], 1));
    }
    const double s = median(t, pc->reps);
    *gbytes = s > 0 ? (double)bytes / s / 1e9 : 1e9;
    return CPA_OK;
}

/* The progress behaviour: a ring +1 transfer of `floats` beside a kernel
 * of about the same duration that calls the transfer set's progress. */
static cpa_status hidden_fraction(probe_ctx *pc, const int *to, const int *from, int64_t floats,
                                  int threads, double *e)
{
    /* A dense block of n rows x 1 head, D = 128, sized from one timed call
     * so that its forward lasts about as long as the transfer. */
    double t_xfer;
    CPA_TRY(exchange_time(pc, to, from, floats, &t_xfer));
    const int64_t D = 128;
    int64_t n = 512;
    cpa_attn_ctx *ctx = NULL;
    cpa_attn_ctx_config cc = {.max_head_dim = D, .num_threads = threads};
    CPA_TRY(cpa_attn_ctx_create(&cc, &ctx));
    cpa_status st = CPA_OK;
    double c = 0, both = 0;
    float *buf = NULL;
    for (int pass = 0; pass < 2 && st == CPA_OK; ++pass) {
        const int64_t nf = 4 * n * D + n;
        cpa_free(buf);
        buf = cpa_alloc_floats(nf);
        st = cpa_cp_agree(pc->comm, buf ? CPA_OK : cpa_error(CPA_ERR_NOMEM, "planner probe"));
        if (st != CPA_OK)
            break;
        memset(buf, 0, sizeof(float) * (size_t)nf);
        cpa_tensor q = cpa_tensor_attn(buf, CPA_LAYOUT_BSHD, 1, n, 1, D);
        cpa_tensor k = cpa_tensor_attn(buf + n * D, CPA_LAYOUT_BSHD, 1, n, 1, D);
        cpa_tensor v = cpa_tensor_attn(buf + 2 * n * D, CPA_LAYOUT_BSHD, 1, n, 1, D);
        cpa_tensor o = cpa_tensor_attn(buf + 3 * n * D, CPA_LAYOUT_BSHD, 1, n, 1, D);
        const int64_t lsh[3] = {1, 1, n};
        cpa_tensor lse = cpa_tensor_make(buf + 4 * n * D, 3, lsh);
        cpa_attn_desc d = {.q = q, .k = k, .v = v, .mask = {.kind = CPA_MASK_NONE},
                           .progress = cpa_xfer_progress, .progress_arg = &pc->xfer};
        double tc[PROBE_REPS], tb[PROBE_REPS];
        for (int r = 0; r < pc->reps && st == CPA_OK; ++r) {
            MPI_Barrier(pc->comm);
            double t0 = cpa_wtime();
            st = cpa_attn_forward(ctx, &d, o, lse);
            tc[r] = cpa_wtime() - t0;
            if (st != CPA_OK || pass == 0)
                continue;
            int h;
            MPI_Barrier(pc->comm);
            t0 = cpa_wtime();
            st = cpa_xfer_post(&pc->xfer, pc->sbuf, floats, to[pc->rank], pc->comm, pc->rbuf,
                               floats, from[pc->rank], pc->comm, 72, "planner probe", &h);
            if (st == CPA_OK)
                st = cpa_attn_forward(ctx, &d, o, lse);
            if (st == CPA_OK)
                st = cpa_xfer_wait(&pc->xfer, h);
            tb[r] = cpa_wtime() - t0;
        }
        st = cpa_cp_agree(pc->comm, st);
        if (st != CPA_OK)
            break;
        c = median(tc, pc->reps);
        CPA_TRY(max_over_ranks(pc->comm, &c, 1));
        if (pass == 0) { /* resize: the forward costs ~ n^2 */
            double f = c > 0 ? sqrt(t_xfer / c) : 1.0;
            f = f < 0.25 ? 0.25 : f > 8 ? 8 : f;
            n = (int64_t)((double)n * f);
            n = n < 64 ? 64 : n;
        } else {
            both = median(tb, pc->reps);
            CPA_TRY(max_over_ranks(pc->comm, &both, 1));
        }
    }
    cpa_free(buf);
    cpa_attn_ctx_destroy(ctx);
    CPA_TRY(st);
    const double lo = c < t_xfer ? c : t_xfer;
    double x = lo > 0 ? (c + t_xfer - both) / lo : 1.0;
    *e = x < 0 ? 0 : x > 1 ? 1 : x;
    return CPA_OK;
}

/* ---- candidates --------------------------------------------------------------- */

static int legal(const cpa_cp_config *c)
{
    double f, b;
    const int ok = cpa_plan_memory_bytes(c) >= 0 && cpa_plan_volume(c, &f, &b) == CPA_OK;
    cpa_clear_error();
    return ok;
}

static int enumerate(const cpa_cp_config *base, cpa_plan_candidate *out, int cap)
{
    const int P = base->cp_size;
    int n = 0;
    cpa_cp_config c = *base;
    c.window = 1, c.ulysses_degree = 1, c.send_recv_overlap = 0;
#define ADD()                                             \
    do {                                                  \
        if (legal(&c)) { /* counted past cap: the caller refuses */ \
            if (n < cap) {                                \
                memset(&out[n], 0, sizeof out[n]);        \
                out[n].config = c;                        \
                cpa_plan_flags(&c, out[n].flags, sizeof out[n].flags); \
            }                                             \
            ++n;                                          \
        }                                                 \
    } while (0)
    c.algo = CPA_ALGO_ULYSSES;
    ADD();
    c.algo = CPA_ALGO_RING;
    for (int W = 1; W <= P; ++W)
        for (int ov = 0; ov < 2 && P % W == 0; ++ov) {
            c.window = W, c.send_recv_overlap = ov;
            ADD();
        }
    c.algo = CPA_ALGO_HYBRID;
    for (int U = 2; U < P; ++U)
        for (int W = 1; P % U == 0 && W <= P / U; ++W)
            for (int ov = 0; ov < 2 && (P / U) % W == 0; ++ov) {
                c.ulysses_degree = U, c.window = W, c.send_recv_overlap = ov;
                ADD();
            }
    c.algo = CPA_ALGO_ALLGATHER, c.window = 1, c.ulysses_degree = 1, c.send_recv_overlap = 0;
    ADD();
#undef ADD
    return n;
}

/* The smallest head count Hc >= H/2 dividing H that keeps the GQA grouping
 * (Hc*G/H whole) and is legal for `c`'s algorithm.  (Not fewer: in bshd the
 * heads share each row, and at P = 4, S = 8192, D = 128 a Ulysses forward on
 * 2 of 8 heads per rank took 14% less than half the time on all 8.) */
static cpa_cp_config reduced(const cpa_cp_config *c)
{
    const int64_t H = c->num_heads, G = c->num_kv_heads;
    cpa_cp_config r = *c;
    for (int64_t h = (H + 1) / 2; h <= H; ++h) {
        if (H % h || (h * G) % H)
            continue;
        r.num_heads = h, r.num_kv_heads = h * G / H;
        if (legal(&r))
            return r;
    }
    return *c;
}

/* The measured kernel time of one family (same split and inner shape). */
typedef struct family {
    cpa_algo algo;
    int U;                  /* hybrid's degree (1 otherwise) */
    int64_t heads;          /* Hc */
    double fwd_s, bwd_s;    /* full-H kernel seconds, slowest rank */
    double fwd_flops;       /* full-H forward flops, slowest rank */
} family;

static cpa_status family_of(MPI_Comm comm, const cpa_cp_config *c, family *fam, int *nfam,
                            int iters, const family **out)
{
    const int U = c->algo == CPA_ALGO_HYBRID ? c->ulysses_degree : 1;
    for (int i = 0; i < *nfam; ++i)
        if (fam[i].algo == c->algo && fam[i].U == U) {
            *out = &fam[i];
            return CPA_OK;
        }
    cpa_cp_config r = reduced(c);
    r.window = 1; /* the kernel work does not depend on the window */
    run_figures f;
    CPA_TRY(run_config(comm, &r, 1, iters, &f));
    family *x = &fam[(*nfam)++];
    const double scale = (double)c->num_heads / (double)r.num_heads;
    x->algo = c->algo, x->U = U, x->heads = r.num_heads;
    x->fwd_s = f.fwd_compute_s * scale, x->bwd_s = f.bwd_compute_s * scale;
    x->fwd_flops = f.fwd_flops * scale;
    *out = x;
    return CPA_OK;
}

/* Ring-schedule peers for ring of R ranks strided by U (hybrid; U = 1 for
 * the plain ring), windows of W: to[] / from[] of one pattern. */
enum { PAT_INNER, PAT_OUTER, PAT_SHIFT };

static void ring_pattern(int P, int U, int W, int pat, int *to, int *from)
{
    const int R = P / U, I = R / W;
    for (int r = 0; r < P; ++r) {
        const int u = r % U, idx = r / U, w = idx / W, p = idx % W;
        cpa_dring_peers x = cpa_dring_peers_of(W, I, w, p, pat == PAT_SHIFT);
        const int t = pat == PAT_INNER ? x.inner_to : pat == PAT_OUTER ? x.outer_to : x.shift_to;
        const int f = pat == PAT_INNER ? x.inner_from
                      : pat == PAT_OUTER ? x.outer_from : x.shift_from;
        to[r] = t * U + u, from[r] = f * U + u;
    }
}

/* Forward and backward time of a (double) ring of R ranks (stride U), W,
 * per-step kernel time cf / cb, block of `floats`. */
static cpa_status ring_time(probe_ctx *pc, cpa_planner_calibration *cal, int U, int W,
                            int64_t floats, double cf, double cb, double e, double *fwd,
                            double *bwd, double *step_t)
{
    const int P = pc->P, R = P / U, J = R / W;
    int *to = cpa_malloc(sizeof(int) * 2 * (size_t)P, "planner peers"), *from;
    if (!to)
        return CPA_ERR_NOMEM;
    from = to + P;
    double t_in = 0, t_in2 = 0, t_out = 0, t_sh = 0, t_sh2 = 0;
    char what[64];
    cpa_status st = CPA_OK;
    if (W > 1) {
        ring_pattern(P, U, W, PAT_INNER, to, from);
        snprintf(what, sizeof what, "window +1 (W %d) of ring %d%s", W, R, U > 1 ? " strided" : "");
        st = probe_link(pc, cal, what, to, from, floats, &t_in);
        if (st == CPA_OK)
            st = probe_link(pc, cal, what, to, from, 2 * floats, &t_in2);
    }
    if (st == CPA_OK && J > 1) {
        ring_pattern(P, U, W, PAT_OUTER, to, from);
        snprintf(what, sizeof what, "ring +%d over %d%s", W, R, U > 1 ? " strided" : "");
        st = probe_link(pc, cal, what, to, from, floats, &t_out);
    }
    if (st == CPA_OK && R > 1) {
        ring_pattern(P, U, W, PAT_SHIFT, to, from);
        snprintf(what, sizeof what, "backward shift -%d over %d%s", W + 1 > R ? 1 : W + 1, R,
                 U > 1 ? " strided" : "");
        if (W == 1)
            snprintf(what, sizeof what, "ring -1 over %d%s", R, U > 1 ? " strided" : "");
        st = probe_link(pc, cal, what, to, from, floats, &t_sh);
        if (st == CPA_OK)
            st = probe_link(pc, cal, what, to, from, 2 * floats, &t_sh2);
    }
    cpa_free(to);
    CPA_TRY(st);
    double f = 0, b = R > 1 ? t_sh : 0;
    for (int j = 0; j < J; ++j) {
        double round = 0, broundt = 0;
        for (int i = 0; i < W; ++i) {
            round += i < W - 1 ? combine(cf, t_in, e) : cf;
            /* backward: K/V and dK/dV travel together */
            const int last = j == J - 1 && i == W - 1;
            broundt += last ? cb : combine(cb, i < W - 1 ? t_in2 : t_sh2, e);
        }
        if (j < J - 1) {
            const double outer = combine(W * cf, t_out, e);
            round = round > outer ? round : outer;
        }
        f += round;
        b += broundt;
    }
    *fwd = f, *bwd = b;
    *step_t = W > 1 ? t_in : t_out;
    return CPA_OK;
}

/* Bytes of one K/V block of the largest ring rank. */
static int64_t block_floats_of(const cpa_cp_config *c, int U)
{
    const int R = c->cp_size / U;
    cpa_split sp = {.kind = c->mask.kind == CPA_MASK_CAUSAL ? CPA_SPLIT_ZIGZAG
                                                             : CPA_SPLIT_CONTIGUOUS,
                    .P = R, .U = 1};
    if (U == 1)
        sp = cpa_balanced_split(c);
    const int64_t rows = cpa_split_max_rows(sp, c->seq_length);
    const int64_t G = U > 1 ? cpa_ulysses_kv_heads(c->num_heads, c->num_kv_heads, U)
                            : c->num_kv_heads;
    return c->batch * rows * G * (c->head_dim + c->v_head_dim);
}

void cpa_planner_schedule(const cpa_cp_config *config, cpa_planner_sched *s)
{
    cpa_cp_config c = *config;
    if (!c.v_head_dim)
        c.v_head_dim = c.head_dim;
    memset(s, 0, sizeof *s);
    const int P = c.cp_size;
    const double B = (double)c.batch, Sl = (double)c.seq_length / P, Dk = (double)c.head_dim,
                 Dv = (double)c.v_head_dim;
    s->U = c.algo == CPA_ALGO_ULYSSES ? P : c.algo == CPA_ALGO_HYBRID ? c.ulysses_degree : 1;
    if (c.algo == CPA_ALGO_RING || c.algo == CPA_ALGO_HYBRID) {
        const int U = s->U, n = P / U; /* n ring steps of equal work (zigzag) */
        s->ring_steps = n, s->window = c.window;
        s->block_bytes = 4.0 * (double)block_floats_of(&c, U);
        /* forward: every block but my own travels once; backward: the first
         * fetch, every block again, and each step's dK/dV but the last */
        s->ring_fwd_bytes = n > 1 ? (n - 1) * s->block_bytes : 0;
        s->ring_bwd_bytes = n > 1 ? (2 * n - 1) * s->block_bytes : 0;
    }
    if ((c.algo == CPA_ALGO_ULYSSES || c.algo == CPA_ALGO_HYBRID) && s->U > 1) {
        /* seq_to_heads sends my rows of the other U-1 ranks' heads; heads_to_seq
         * the other ranks' rows of my heads: (U-1) x B x Sl x heads-per-rank */
        const int U = s->U;
        const double Hl = (double)c.num_heads / U,
                     Gl = (double)cpa_ulysses_kv_heads(c.num_heads, c.num_kv_heads, U);
        const double rows = 4.0 * B * Sl * (U - 1);
        s->a2a_fwd_calls = 5; /* q, k, v; out, lse */
        s->a2a_bwd_calls = 4; /* dout; dq, dk, dv (with the forward's saved state) */
        s->a2a_fwd_bytes = rows * (Hl * Dk + Gl * (Dk + Dv) + Hl * (Dv + 1));
        s->a2a_bwd_bytes = rows * (Hl * Dv + Hl * Dk + Gl * (Dk + Dv));
        s->a2a_slab_floats = rows / 4.0 / (U - 1) * Hl * Dk; /* q: per destination */
    }
    if (c.algo == CPA_ALGO_ALLGATHER && P > 1) {
        const double slab = 4.0 * B * (double)cpa_split_max_rows(cpa_balanced_split(&c),
                                                                 c.seq_length) *
                            (double)c.num_kv_heads * (Dk + Dv);
        s->gather_bytes = (P - 1) * slab;  /* each of the two all-gathers */
        s->scatter_bytes = (P - 1) * slab; /* the dK/dV reduce-scatter */
    }
    s->fwd_bytes = s->ring_fwd_bytes + s->a2a_fwd_bytes + s->gather_bytes;
    s->bwd_bytes = s->ring_bwd_bytes + s->a2a_bwd_bytes + s->gather_bytes + s->scatter_bytes;
}

static cpa_status predict(probe_ctx *pc, cpa_planner_calibration *cal, family *fam, int *nfam,
                          int iters, double e, cpa_plan_candidate *cand)
{
    const cpa_cp_config *c = &cand->config;
    const int P = c->cp_size;
    const family *f;
    cpa_planner_sched sc;
    CPA_TRY(family_of(pc->comm, c, fam, nfam, iters, &f));
    CPA_TRY(cpa_plan_volume(c, &cand->fwd_bytes, &cand->bwd_bytes));
    cpa_planner_schedule(c, &sc);
    cand->memory_bytes = cpa_plan_memory_bytes(c) + cpa_plan_saved_bytes(c);
    cand->compute_s = f->fwd_s + f->bwd_s;
    cand->step_compute_s = cand->step_transfer_s = -1;
    cand->kernel_gflops = f->fwd_s > 0 ? f->fwd_flops / f->fwd_s / 1e9 : 0;
    cand->link_gbytes = -1;
    double fwd = f->fwd_s, bwd = f->bwd_s;
    const double copy = cal->copy_gbytes * 1e9;
    if (sc.ring_steps > 0) {
        const int n = sc.ring_steps;
        double rf, rb, t;
        CPA_TRY(ring_time(pc, cal, c->algo == CPA_ALGO_HYBRID ? sc.U : 1, c->window,
                          (int64_t)(sc.block_bytes / 4), f->fwd_s / n, f->bwd_s / n, e, &rf,
                          &rb, &t));
        fwd = rf, bwd = rb;
        if (n > 1) {
            cand->step_compute_s = f->fwd_s / n;
            cand->step_transfer_s = t;
            cand->link_gbytes = t > 0 ? sc.block_bytes / t / 1e9 : 0;
        }
    }
    if (sc.a2a_fwd_calls > 0) { /* latency per call + bytes at the fitted rate + packing */
        double alpha, per_byte;
        const int64_t slab = (int64_t)sc.a2a_slab_floats;
        CPA_TRY(probe_collective(pc, cal, sc.U, COLL_ALLTOALL, slab > 0 ? slab : 1, &alpha,
                                 &per_byte));
        const double k = (double)sc.U / (sc.U - 1); /* bytes packed per byte sent */
        fwd += sc.a2a_fwd_calls * alpha + sc.a2a_fwd_bytes * (per_byte + 2 * k / copy);
        bwd += sc.a2a_bwd_calls * alpha + sc.a2a_bwd_bytes * (per_byte + 2 * k / copy);
    }
    if (sc.gather_bytes > 0) { /* gathered into natural order; dK/dV copied into slabs */
        const int64_t slab = (int64_t)(sc.gather_bytes / 4 / (P - 1));
        double a_ag, b_ag, a_rs, b_rs;
        CPA_TRY(probe_collective(pc, cal, P, COLL_ALLGATHER, slab, &a_ag, &b_ag));
        CPA_TRY(probe_collective(pc, cal, P, COLL_REDUCE_SCATTER, slab, &a_rs, &b_rs));
        const double all = sc.gather_bytes * P / (P - 1);
        const double ag = a_ag + sc.gather_bytes * b_ag + all / copy;
        fwd += ag;
        bwd += ag + a_rs + sc.scatter_bytes * b_rs + 2 * all / copy; /* + zeroing dK/dV */
    }
    cand->fwd_s = fwd, cand->bwd_s = bwd;
    cand->exposed_s = fwd + bwd - cand->compute_s;
    if (cand->exposed_s < 0)
        cand->exposed_s = 0;
    return CPA_OK;
}

static int cmp_candidates(const void *a, const void *b)
{
    const cpa_plan_candidate *x = a, *y = b;
    const double tx = x->fwd_s + x->bwd_s, ty = y->fwd_s + y->bwd_s;
    if (tx != ty)
        return tx < ty ? -1 : 1;
    const double bx = x->fwd_bytes + x->bwd_bytes, by = y->fwd_bytes + y->bwd_bytes;
    return bx < by ? -1 : bx > by; /* qsort is not stable: equal keys stay equal */
}

/* Host of every rank from its MPI processor name. */
static cpa_status hosts_of(probe_ctx *pc, cpa_planner_calibration *cal)
{
    char mine[MPI_MAX_PROCESSOR_NAME] = {0};
    int len = 0;
    MPI_Get_processor_name(mine, &len);
    char *all = cpa_calloc((size_t)pc->P * MPI_MAX_PROCESSOR_NAME, "processor names");
    CPA_TRY(cpa_cp_agree(pc->comm, all ? CPA_OK : CPA_ERR_NOMEM));
    int rc = MPI_Allgather(mine, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all, MPI_MAX_PROCESSOR_NAME,
                           MPI_CHAR, pc->comm);
    if (rc != MPI_SUCCESS) {
        cpa_free(all);
        return cpa_mpi_error(rc, "MPI_Allgather (processor names)");
    }
    cal->hosts = 0, cal->max_ranks_per_host = 0;
    for (int r = 0; r < pc->P; ++r) {
        pc->host[r] = -1;
        for (int s = 0; s < r && pc->host[r] < 0; ++s)
            if (!strcmp(all + (size_t)s * MPI_MAX_PROCESSOR_NAME,
                        all + (size_t)r * MPI_MAX_PROCESSOR_NAME))
                pc->host[r] = pc->host[s];
        if (pc->host[r] < 0)
            pc->host[r] = cal->hosts++;
    }
    for (int h = 0; h < cal->hosts; ++h) {
        int n = 0;
        for (int r = 0; r < pc->P; ++r)
            n += pc->host[r] == h;
        cal->max_ranks_per_host = n > cal->max_ranks_per_host ? n : cal->max_ranks_per_host;
    }
    cpa_free(all);
    return CPA_OK;
}

cpa_status cpa_planner_run(MPI_Comm comm, const cpa_cp_config *base,
                           const cpa_planner_options *options, cpa_plan_candidate **candidates,
                           int *count, cpa_planner_calibration *cal)
{
    if (!base || !candidates || !count || !cal || comm == MPI_COMM_NULL)
        return cpa_error(CPA_ERR_ARG, "cpa_planner_run: a NULL argument");
    *candidates = NULL, *count = 0;
    memset(cal, 0, sizeof *cal);
    const double t0 = cpa_wtime();
    int iters = options && options->iters > 0 ? options->iters : 3;
    iters = iters < 64 ? iters : 64; /* run_config's medians hold 64 */
    const int validate = options ? options->validate : 0;
    probe_ctx pc = {.comm = comm, .reps = PROBE_REPS};
    MPI_Comm_rank(comm, &pc.rank);
    MPI_Comm_size(comm, &pc.P);
    cpa_cp_config b = *base;
    if (!b.v_head_dim)
        b.v_head_dim = b.head_dim;
    if (b.cp_size != pc.P)
        return cpa_error(CPA_ERR_ARG, "--context-parallel-size %d but the planner's "
                         "communicator has %d ranks: they must be equal", b.cp_size, pc.P);
    enum { CAP = 256 };
    cpa_plan_candidate *cand = cpa_calloc(CAP * sizeof *cand, "planner candidates");
    family fam[CAP]; /* at most one per candidate */
    int nfam = 0;
    pc.host = cpa_calloc(sizeof(int) * (size_t)pc.P, "planner hosts");
    /* Probe buffers: the largest block twice over, and the collectives' sizes. */
    int64_t cap = 2 * block_floats_of(&b, 1) + 1;
    const int64_t slab_kv = b.batch * ((b.seq_length + pc.P - 1) / pc.P + 1) * b.num_kv_heads *
                            (b.head_dim + b.v_head_dim);
    const int64_t slab_q = b.batch * ((b.seq_length + pc.P - 1) / pc.P) * b.num_heads * b.head_dim;
    cap = cap > slab_kv * pc.P ? cap : slab_kv * pc.P;
    cap = cap > slab_q ? cap : slab_q;
    pc.cap = cap;
    pc.sbuf = cpa_alloc_floats(cap);
    pc.rbuf = cpa_alloc_floats(cap);
    cpa_xfer_init(&pc.xfer);
    snprintf(pc.xfer.context, sizeof pc.xfer.context, "the planner's calibration");
    cpa_status st = cpa_cp_agree(comm, cand && pc.host && pc.sbuf && pc.rbuf
                                           ? CPA_OK
                                           : cpa_error(CPA_ERR_NOMEM, "the planner's buffers: "
                                                       "%lld floats", (long long)(2 * cap)));
    int n = 0;
    if (st == CPA_OK) {
        memset(pc.sbuf, 0, sizeof(float) * (size_t)cap);
        n = enumerate(&b, cand, CAP);
        if (n > CAP)
            st = cpa_error(CPA_ERR_ARG, "--context-parallel-size %d: %d legal configurations, "
                           "more than the planner's %d", pc.P, n, (int)CAP);
        else if (n == 0)
            st = cpa_error(CPA_ERR_ARG, "no context-parallel algorithm can run this problem "
                           "(H %lld, G %lld, P %d, TP %d): Ulysses needs H %% (TP*P) == 0, "
                           "the ring and all-gather a sequence the split accepts (S %lld)",
                           (long long)b.num_heads, (long long)b.num_kv_heads, pc.P, b.tp_size,
                           (long long)b.seq_length);
    }
    if (st == CPA_OK)
        st = hosts_of(&pc, cal);
    if (st == CPA_OK)
        st = copy_rate(&pc, &cal->copy_gbytes);
    double e = 1.0;
    if (st == CPA_OK && pc.P > 1) {
        int *to = cpa_malloc(sizeof(int) * 2 * (size_t)pc.P, "planner peers");
        st = cpa_cp_agree(comm, to ? CPA_OK : CPA_ERR_NOMEM);
        if (st == CPA_OK) {
            ring_pattern(pc.P, 1, 1, PAT_OUTER, to, to + pc.P);
            st = hidden_fraction(&pc, to, to + pc.P, block_floats_of(&b, 1), b.num_threads, &e);
        }
        cpa_free(to);
    }
    cal->hidden_fraction = e;
    for (int i = 0; i < n && st == CPA_OK; ++i)
        st = predict(&pc, cal, fam, &nfam, iters, e, &cand[i]);
    if (st == CPA_OK) {
        qsort(cand, (size_t)n, sizeof *cand, cmp_candidates);
        cal->seconds = cpa_wtime() - t0; /* the calibration, without --validate */
        cal->calib_heads = nfam ? (int)fam[0].heads : (int)b.num_heads;
        for (int i = 0; i < n && i < validate && st == CPA_OK; ++i) {
            run_figures f;
            st = run_config(comm, &cand[i].config, 1, iters, &f);
            if (st == CPA_OK) {
                cand[i].validated = 1;
                cand[i].measured_fwd_s = f.fwd_s, cand[i].measured_bwd_s = f.bwd_s;
                cand[i].measured_wait_s = f.fwd_wait_s + f.bwd_wait_s;
            }
        }
    }
    cpa_xfer_drain(&pc.xfer);
    cpa_free(pc.sbuf);
    cpa_free(pc.rbuf);
    cpa_free(pc.host);
    if (st != CPA_OK) {
        cpa_free(cand);
        return st;
    }
    *candidates = cand, *count = n;
    return CPA_OK;
}

void cpa_planner_free(cpa_plan_candidate *candidates) { cpa_free(candidates); }
