/*
 * attn_check.c — the streaming --check and the --iters report of
 * `cpattn attn` (attn_check.h).
 */
#include "attn_check.h"
#include "cmd.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define fail(...) tool_fail(EXIT_RUNTIME, __VA_ARGS__)

/* ---- blocks that travel ---------------------------------------------------- */

/* A block of one rank's rows, contiguous bshd: its tensors one after the
 * other, each at the offset of the largest shard's (any S: shards differ by
 * a few rows, and every block travels at that one size), the shard they
 * belong to, and a second buffer to receive into. */
typedef struct block {
    int64_t floats;
    float *buf, *in;
    int shard;
} block;

static int block_alloc(block *b, int64_t floats, const char *what)
{
    b->floats = floats;
    b->buf = cpa_alloc_floats(floats);
    b->in = cpa_alloc_floats(floats);
    if (!b->buf || !b->in)
        return fail("out of memory: --check: two %s blocks of %lld floats", what,
                    (long long)floats);
    return 0;
}

static void block_free(block *b)
{
    free(b->buf);
    free(b->in);
}

#define TRY(x)                      \
    do {                            \
        cpa_status try_ = (x);      \
        if (try_ != CPA_OK)         \
            return try_;            \
    } while (0)

/* Pass the block to the next rank and take the previous rank's, in pieces
 * MPI's int counts can carry, each wait under the communication timeout. */
static cpa_status block_shift(block *b)
{
    const int P = tool_world_size(), r = tool_rank(), to = (r + 1) % P, from = (r + P - 1) % P;
    const int64_t piece = 1 << 30;
    int shard_in = 0;
    for (int64_t off = -1; off < b->floats; off = off < 0 ? 0 : off + piece) {
        /* off -1: the shard index travels first */
        const int n = off < 0 ? 1 : (int)(b->floats - off < piece ? b->floats - off : piece);
        void *in = off < 0 ? (void *)&shard_in : (void *)(b->in + off);
        void *out = off < 0 ? (void *)&b->shard : (void *)(b->buf + off);
        MPI_Datatype type = off < 0 ? MPI_INT : MPI_FLOAT;
        MPI_Request req[2];
        int err = MPI_Irecv(in, n, type, from, 71, MPI_COMM_WORLD, &req[0]);
        if (err == MPI_SUCCESS)
            err = MPI_Isend(out, n, type, to, 71, MPI_COMM_WORLD, &req[1]);
        if (err != MPI_SUCCESS) { /* the first message recorded is the one printed */
            tool_fail_mpi(EXIT_RUNTIME, err, "--check: posting a block transfer");
            return CPA_ERR_MPI;
        }
        TRY(cpa_comm_wait(2, req, "--check: the reference's block from rank %d", from));
    }
    float *t = b->buf;
    b->buf = b->in, b->in = t;
    b->shard = shard_in;
    return CPA_OK;
}

static cpa_tensor bshd(float *p, const attn_shape *sh, int64_t S, int64_t N, int64_t D)
{
    return cpa_tensor_attn(p, CPA_LAYOUT_BSHD, sh->B, S, N, D);
}

static cpa_tensor lse_of(float *p, const attn_shape *sh, int64_t S)
{
    const int64_t shape[3] = {sh->B, sh->H, S};
    return cpa_tensor_make(p, 3, shape);
}

/* ---- the reference, streamed ----------------------------------------------- */

typedef struct refs {
    float *buf;             /* out, lse, dq, dk, dv over my rows, bshd */
    cpa_tensor t[T_COUNT];  /* views of them at their tensor ids */
} refs;

double attn_check_bytes(const attn_shape *sh, int64_t Sl, int forward_only)
{
    const double kv = 4.0 * (double)(sh->B * Sl * sh->G * (sh->D + sh->Dv));
    const double qb = 4.0 * (double)(sh->B * Sl * sh->H * (2 * sh->D + 2 * sh->Dv + 1));
    return attn_bytes(sh, T_FORWARD | (forward_only ? 0u : T_GRADS), Sl) +
           4.0 * (double)(sh->B * Sl * sh->H * sh->Dv + sh->B * sh->H * Sl) + /* partials */
           2 * kv + (forward_only ? 0 : 2 * qb);
}

static void desc_of(cpa_attn_desc *d, const attn_check_cfg *c, cpa_tensor q, cpa_rows qr,
                    cpa_tensor k, cpa_tensor v, cpa_rows kr)
{
    memset(d, 0, sizeof *d);
    d->q = q, d->k = k, d->v = v;
    d->q_rows = qr, d->kv_rows = kr;
    d->mask = c->mask;
    d->softmax_scale = c->scale;
    d->impl = CPA_IMPL_REFERENCE;
}

static cpa_status pieces_of(const attn_check_cfg *c, int64_t S, int shard, cpa_piece *p,
                            cpa_rows *rows)
{
    TRY(cpa_split_pieces(c->split, S, shard, p, &rows->count));
    rows->pieces = p;
    return CPA_OK;
}

/* out and lse of my rows: the K/V blocks of every rank stream past. */
static cpa_status reference_forward(const attn_set *s, const attn_check_cfg *c, refs *ref,
                                    block *kv, float *part)
{
    const attn_shape *sh = &s->sh;
    const int64_t Sl = s->Sl, Smax = cpa_split_max_rows(c->split, sh->S);
    const int64_t kfl = sh->B * Smax * sh->G * sh->D;
    cpa_tensor out = ref->t[T_OUT], lse = ref->t[T_LSE];
    cpa_tensor pout = bshd(part, sh, Sl, sh->H, sh->Dv);
    cpa_tensor plse = lse_of(part + sh->B * Sl * sh->H * sh->Dv, sh, Sl);
    /* My own block first. */
    cpa_tensor k = bshd(kv->buf, sh, Sl, sh->G, sh->D);
    cpa_tensor v = bshd(kv->buf + kfl, sh, Sl, sh->G, sh->Dv);
    cpa_tensor_copy(k, attn_view(s, T_K));
    cpa_tensor_copy(v, attn_view(s, T_V));
    kv->shard = tool_rank();
    const int P = tool_world_size();
    cpa_rows qr = attn_rows(s);
    for (int step = 0; step < P; ++step) {
        cpa_piece kp[CPA_SPLIT_MAX_PIECES];
        cpa_rows kr;
        TRY(pieces_of(c, sh->S, kv->shard, kp, &kr));
        const int64_t n = cpa_split_rows(c->split, sh->S, kv->shard);
        k = bshd(kv->buf, sh, n, sh->G, sh->D), v = bshd(kv->buf + kfl, sh, n, sh->G, sh->Dv);
        cpa_attn_desc d;
        desc_of(&d, c, attn_view(s, T_Q), qr, k, v, kr);
        if (step == 0) {
            TRY(cpa_attn_forward(NULL, &d, out, lse));
        } else {
            TRY(cpa_attn_forward(NULL, &d, pout, plse));
            TRY(cpa_attn_merge(out, lse, pout, plse, qr));
        }
        if (step + 1 < P)
            TRY(block_shift(kv));
    }
    return CPA_OK;
}

/* dq, dk, dv of my rows: every rank's query block streams past. */
static cpa_status reference_backward(const attn_set *s, const attn_check_cfg *c, refs *ref,
                                     block *qb)
{
    const attn_shape *sh = &s->sh;
    const int64_t Sl = s->Sl, B = sh->B, H = sh->H, Smax = cpa_split_max_rows(c->split, sh->S);
    const int64_t nq = B * Smax * H * sh->D, no = B * Smax * H * sh->Dv, nl = B * H * Smax;
    /* The block: q, dout, out, lse, dq, in that order. */
    float *p = qb->buf;
    cpa_tensor_copy(bshd(p, sh, Sl, H, sh->D), attn_view(s, T_Q));
    cpa_tensor_copy(bshd(p + nq, sh, Sl, H, sh->Dv), attn_view(s, T_DOUT));
    cpa_tensor_copy(bshd(p + nq + no, sh, Sl, H, sh->Dv), ref->t[T_OUT]);
    memcpy(p + nq + 2 * no, ref->t[T_LSE].data, sizeof(float) * (size_t)nl);
    memset(p + nq + 2 * no + nl, 0, sizeof(float) * (size_t)nq);
    qb->shard = tool_rank();
    cpa_tensor_zero(ref->t[T_DK]), cpa_tensor_zero(ref->t[T_DV]);
    const int P = tool_world_size();
    cpa_rows kr = attn_rows(s);
    for (int step = 0; step < P; ++step) {
        cpa_piece qp[CPA_SPLIT_MAX_PIECES];
        cpa_rows qr;
        TRY(pieces_of(c, sh->S, qb->shard, qp, &qr));
        const int64_t n = cpa_split_rows(c->split, sh->S, qb->shard);
        p = qb->buf;
        cpa_attn_desc d;
        desc_of(&d, c, bshd(p, sh, n, H, sh->D), qr, attn_view(s, T_K), attn_view(s, T_V), kr);
        TRY(cpa_attn_backward(NULL, &d, bshd(p + nq + no, sh, n, H, sh->Dv),
                                  lse_of(p + nq + 2 * no, sh, n), bshd(p + nq, sh, n, H, sh->Dv),
                                  bshd(p + nq + 2 * no + nl, sh, n, H, sh->D), ref->t[T_DK],
                                  ref->t[T_DV]));
        if (P > 1)
            TRY(block_shift(qb)); /* after P shifts the block is home */
    }
    cpa_tensor_copy(ref->t[T_DQ], bshd(qb->buf + nq + 2 * no + nl, sh, Sl, H, sh->D));
    return CPA_OK;
}

/* ---- comparing ------------------------------------------------------------- */

/* One 'check' line from the figures summed over the ranks; 1 on PASS. */
static int report(const char *name, tool_diff s, double tol)
{
    double rel = s.max_ref > 0 ? s.max_abs / s.max_ref : s.max_abs;
    int pass = s.mismatch == 0 && rel <= tol;
    if (tool_rank() != 0)
        return pass;
    printf("check %-4s max_abs %.3e  max|ref| %.3e  rel %.3e  tol %.1e", name, s.max_abs,
           s.max_ref, rel, tol);
    if (s.mismatch)
        printf("  non-finite mismatches %lld", (long long)s.mismatch);
    if (s.nonfinite)
        printf("  non-finite in both alike %lld", (long long)s.nonfinite);
    printf("  %s\n", pass ? "PASS" : "FAIL");
    return pass;
}

static tool_diff reduce_diff(tool_diff d, cpa_status *st)
{
    double mx[2] = {d.max_abs, d.max_ref};
    int64_t n[2] = {d.mismatch, d.nonfinite};
    *st = cpa_comm_allreduce(mx, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD, "--check: the errors");
    if (*st == CPA_OK)
        *st = cpa_comm_allreduce(n, 2, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD, "--check: counts");
    tool_diff r = {mx[0], mx[1], n[0], n[1]};
    return r;
}

int attn_check(const attn_set *s, const attn_check_cfg *c)
{
    const attn_shape *sh = &s->sh;
    const int64_t Sl = s->Sl, B = sh->B, H = sh->H, G = sh->G;
    const unsigned mask = T_FORWARD | (c->forward_only ? 0u : T_GRADS);
    refs ref;
    memset(&ref, 0, sizeof ref);
    block kv = {0}, qb = {0};
    float *part = NULL;
    int rc = 0;
    /* Reference results, bshd, and the blocks. */
    int64_t total = 0, off[T_COUNT] = {0};
    for (int i = T_OUT; i < T_COUNT; ++i)
        if (mask & T_BIT(i)) {
            int64_t N, D;
            attn_dims(sh, i, &N, &D);
            off[i] = total;
            total += B * Sl * N * D;
        }
    if (!(ref.buf = cpa_alloc_floats(total)) ||
        !(part = cpa_alloc_floats(B * Sl * H * sh->Dv + B * H * Sl)))
        rc = fail("out of memory: --check: the reference's results (%lld floats)",
                  (long long)total);
    const int64_t Smax = cpa_split_max_rows(c->split, sh->S); /* every block's size */
    if (!rc)
        rc = block_alloc(&kv, B * Smax * G * (sh->D + sh->Dv), "K/V");
    if (!rc && !c->forward_only)
        rc = block_alloc(&qb, B * Smax * H * (2 * sh->D + 2 * sh->Dv + 1), "query");
    if (!(rc = tool_agree(rc))) {
        for (int i = T_OUT; i < T_COUNT; ++i)
            if (mask & T_BIT(i)) {
                int64_t N, D;
                attn_dims(sh, i, &N, &D);
                ref.t[i] = i == T_LSE ? lse_of(ref.buf + off[i], sh, Sl)
                                      : bshd(ref.buf + off[i], sh, Sl, N, D);
            }
        cpa_status st = reference_forward(s, c, &ref, &kv, part);
        if (st == CPA_OK && !c->forward_only)
            st = reference_backward(s, c, &ref, &qb);
        rc = tool_agree(st == CPA_OK ? 0 : fail("%s: %s", cpa_status_string(st),
                                                cpa_last_error()));
    }
    int failed = 0;
    for (int i = T_OUT; i < T_COUNT && !rc; ++i) {
        if (!(mask & T_BIT(i)))
            continue;
        cpa_status st;
        tool_diff d = reduce_diff(tool_compare(attn_view(s, i), ref.t[i]), &st);
        if (st != CPA_OK) {
            rc = tool_agree(fail("%s", cpa_last_error()));
            break;
        }
        failed += !report(attn_tensor_names[i], d, i <= T_LSE ? c->tol_fwd : c->tol_grad);
    }
    if (!rc)
        tool_say("check: %s\n", failed ? "FAIL" : "PASS");
    free(ref.buf);
    free(part);
    block_free(&kv);
    block_free(&qb);
    return rc ? rc : failed ? EXIT_RUNTIME : EXIT_OK;
}

/* ---- --iters --------------------------------------------------------------- */

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
 * untimed ones into fig[F_FWD..] or fig[F_BWD..].  `work`: 3 * iters. */
static int time_pass(const attn_timing *t, int which, double *work, double *fig)
{
    const int n = (int)t->iters;
    double *ms = work, *wait = work + n, *comp = work + 2 * n, sent = 0;
    for (int i = -(int)t->warmup; i < n; ++i) {
        double sec;
        int rc = t->call(t->arg, which, &sec);
        if (rc)
            return rc;
        if (i < 0)
            continue;
        cpa_plan_stats s;
        memset(&s, 0, sizeof s);
        if (t->stats)
            t->stats(t->arg, &s);
        ms[i] = 1e3 * sec;
        wait[i] = 1e3 * s.wait_s;
        comp[i] = 1e3 * s.compute_s;
        sent = s.bytes_sent;
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
 * the slowest rank's; GFLOP/s of the whole problem) and the imbalance. */
static void print_rank_table(const attn_timing *t, const double *all)
{
    const int P = t->P, fo = t->forward_only;
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
               (long long)t->iters, (which ? 2.5 : 1.0) * t->flops / (w[0] * 1e-3) / 1e9);
    }
    printf("imbalance (max/mean rank compute_s) fwd");
    print_imbalance(all, P, F_FWD_COMP);
    printf(" bwd");
    if (fo)
        printf(" -");
    else
        print_imbalance(all, P, F_BWD_COMP);
    printf("\n");
    if (t->imbalance_zigzag > 0)
        printf("imbalance (max/mean rank visible pairs) zigzag %.3f documents %.3f\n",
               t->imbalance_zigzag, t->imbalance_documents);
}

int attn_report_timing(const attn_timing *t)
{
    const int n = (int)t->iters;
    double fig[F_COUNT] = {0};
    double *work = malloc(sizeof(double) * 3 * (size_t)n);
    double *all = tool_rank() == 0 ? malloc(sizeof(double) * F_COUNT * (size_t)t->P) : NULL;
    int rc = !work || (tool_rank() == 0 && !all) ? fail("out of memory: timing buffers") : 0;
    rc = tool_agree(rc);
    if (!rc)
        rc = time_pass(t, 0, work, fig);
    if (!rc && !t->forward_only)
        rc = time_pass(t, 1, work, fig);
    if (!rc && t->P == 1) {
        for (int which = 0; which <= !t->forward_only; ++which) {
            const double *f = fig + (which ? F_BWD : F_FWD);
            tool_say("%-8s median %.3f ms (min %.3f, max %.3f, n=%d)  %.1f GFLOP/s\n",
                     which ? "backward" : "forward", f[0], f[1], f[2], n,
                     (which ? 2.5 : 1.0) * t->flops / (f[0] * 1e-3) / 1e9);
        }
    } else if (!rc) {
        fig[F_RSS] = tool_peak_rss_mib();
        rc = tool_gather(fig, F_COUNT, MPI_DOUBLE, all, "the per-rank timing table");
        if (!rc && tool_rank() == 0)
            print_rank_table(t, all);
    }
    free(work);
    free(all);
    return rc;
}
