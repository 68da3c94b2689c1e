/*
 * attn_bwd.c — blockwise attention backward, FlashAttention-2 style, given
 * the FINAL output and LSE of the query rows (so that the contributions of
 * separate key blocks simply add up, which is what ring attention needs):
 *
 *   P  = exp(scale·Q Kᵀ - LSE)        (masked entries 0)
 *   Dr = rowsum(dO ∘ O)
 *   dS = P ∘ (dO Vᵀ - Dr)
 *   dV += Pᵀ dO ;  dQ += scale·dS K ;  dK += scale·dSᵀ Q
 *
 * Determinism.  dK and dV of a key/value head receive contributions from
 * every query tile of every query head in its group.  Splitting that sum
 * across threads would make the rounding depend on the thread count, so a
 * task is one (batch, key/value head) pair and runs serially: it walks its
 * query heads, their query tiles, and the key tiles each one sees, adding
 * straight into the caller's dq/dk/dv (accumulation, +=).  Tasks write
 * disjoint memory, so the result is bitwise identical for any thread count.
 * The price is that parallelism is limited to B·G tasks; with fewer tasks
 * than threads some threads idle (see docs/kernels.md).
 */
#include "kernel_internal.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

typedef struct bwd_job {
    const cpa_attn_desc *d;
    cpa_tensor out, lse, dout, dq, dk, dv;
    cpa_tiling qt, kt;
    float scale;
    int64_t heads_per_group;
} bwd_job;

/* One query tile of head h against every visible key tile. */
static void bwd_qtile(const bwd_job *job, int64_t b, int64_t h, cpa_tile qt, float *scratch,
                      int call_progress)
{
    const cpa_attn_desc *d = job->d;
    const int64_t Dqk = d->q.shape[3], Dv = d->v.shape[3];
    const int64_t g = h / job->heads_per_group;
    const int64_t TK = CPA_TILE_K;
    float *p = scratch;                    /* [TQ, TK] P, then dS */
    float *dp = p + CPA_TILE_Q * TK;       /* [TQ, TK] dO Vᵀ */
    float *dr = dp + CPA_TILE_Q * TK;      /* [TQ] rowsum(dO ∘ O) */
    float *lse = dr + CPA_TILE_Q;          /* [TQ] final LSE */
    const float *qp = cpa_at4(&d->q, b, qt.row, h);
    const float *dop = cpa_at4(&job->dout, b, qt.row, h);
    float *dqp = cpa_at4(&job->dq, b, qt.row, h);
    const int ldq = (int)d->q.stride[1], lddo = (int)job->dout.stride[1];
    const int lddq = (int)job->dq.stride[1];

    for (int64_t i = 0; i < qt.len; ++i) {
        dr[i] = cpa_row_dot(cpa_at4(&job->dout, b, qt.row + i, h),
                            cpa_at4(&job->out, b, qt.row + i, h), Dv);
        lse[i] = *cpa_at3(&job->lse, b, h, qt.row + i);
    }

    const int64_t nk = cpa_tiling_count(&job->kt);
    for (int64_t j = 0; j < nk; ++j) {
        cpa_tile kt = cpa_tiling_get(&job->kt, j);
        cpa_tile_class cls = cpa_tile_classify(d->mask, qt, kt);
        if (cls == CPA_TILE_SKIP)
            continue;
        const float *kp = cpa_at4(&d->k, b, kt.row, g);
        const float *vp = cpa_at4(&d->v, b, kt.row, g);
        float *dkp = cpa_at4(&job->dk, b, kt.row, g);
        float *dvp = cpa_at4(&job->dv, b, kt.row, g);
        const int ldk = (int)d->k.stride[1], ldv = (int)d->v.stride[1];
        const int m = (int)qt.len, n = (int)kt.len;

        /* P = exp(scale·Q Kᵀ - LSE); masked entries and rows that see no key
         * (LSE = -inf) are exactly 0. */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, (int)Dqk, job->scale, qp, ldq,
                    kp, ldk, 0.0f, p, (int)TK);
        for (int64_t i = 0; i < qt.len; ++i) {
            float *row = p + i * TK;
            int64_t j0 = 0, j1 = kt.len;
            if (cls == CPA_TILE_PARTIAL)
                cpa_tile_row_visible(d->mask, qt, kt, i, &j0, &j1);
            if (lse[i] == -INFINITY)
                j0 = j1 = 0;
            memset(row, 0, sizeof(float) * (size_t)j0);
            cpa_row_exp(row + j0, j1 - j0, lse[i]);
            memset(row + j1, 0, sizeof(float) * (size_t)(kt.len - j1));
        }
        /* dP = dO Vᵀ */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, (int)Dv, 1.0f, dop, lddo, vp,
                    ldv, 0.0f, dp, (int)TK);
        /* dV += Pᵀ dO (before P is overwritten by dS) */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, (int)Dv, m, 1.0f, p, (int)TK, dop,
                    lddo, 1.0f, dvp, (int)job->dv.stride[1]);
        /* dS = P ∘ (dP - Dr), in place of P */
        for (int64_t i = 0; i < qt.len; ++i) {
            float *row = p + i * TK;
            const float *dprow = dp + i * TK;
            const float dri = dr[i];
            for (int64_t c = 0; c < kt.len; ++c)
                row[c] = row[c] * (dprow[c] - dri);
        }
        /* dQ += scale·dS K ;  dK += scale·dSᵀ Q */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, (int)Dqk, n, job->scale, p,
                    (int)TK, kp, ldk, 1.0f, dqp, lddq);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, (int)Dqk, m, job->scale, p, (int)TK,
                    qp, ldq, 1.0f, dkp, (int)job->dk.stride[1]);
        if (call_progress)
            d->progress(d->progress_arg);
    }
}

cpa_status cpa_attn_backward(cpa_attn_ctx *ctx, const cpa_attn_desc *d, cpa_tensor out,
                             cpa_tensor lse, cpa_tensor dout, cpa_tensor dq, cpa_tensor dk,
                             cpa_tensor dv)
{
    CPA_TRY(cpa_attn_check(d, &out, &lse, &dout, &dq, &dk, &dv));
    if (d->impl == CPA_IMPL_REFERENCE)
        return cpa_attn_backward_ref(d, out, lse, dout, dq, dk, dv);

    cpa_attn_ctx *use, *tmp;
    CPA_TRY(cpa_attn_ctx_resolve(ctx, d, &use, &tmp));
    bwd_job job;
    job.d = d;
    job.out = out;
    job.lse = lse;
    job.dout = dout;
    job.dq = dq;
    job.dk = dk;
    job.dv = dv;
    job.scale = cpa_attn_scale(d);
    job.heads_per_group = d->q.shape[2] / d->k.shape[2];
    cpa_tiling_init(&job.qt, d->q_rows, d->q.shape[1], CPA_TILE_Q);
    cpa_tiling_init(&job.kt, d->kv_rows, d->k.shape[1], CPA_TILE_K);

    const int64_t B = d->q.shape[0], G = d->k.shape[2];
    const int64_t nq = cpa_tiling_count(&job.qt);
#pragma omp parallel num_threads(use->num_threads)
    {
        int progress;
        float *scratch = cpa_thread_begin(use, d, &progress);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < B * G; ++t) {
            const int64_t b = t / G, g = t % G;
            for (int64_t h = g * job.heads_per_group; h < (g + 1) * job.heads_per_group; ++h)
                for (int64_t qi = 0; qi < nq; ++qi)
                    bwd_qtile(&job, b, h, cpa_tiling_get(&job.qt, qi), scratch, progress);
        }
    }
    cpa_attn_ctx_destroy(tmp);
    return CPA_OK;
}
