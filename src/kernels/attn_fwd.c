/*
 * attn_fwd.c — blockwise attention forward, FlashAttention-2 style.
 *
 * Work is split into tasks (batch b, query head h, query tile); OpenMP
 * hands tasks to threads and each task runs serially, so the result of a
 * task never depends on the thread count or schedule: the output is bitwise
 * identical for any number of threads.  A task walks every key tile of the
 * block, skipping the ones the mask hides, and keeps an online softmax:
 *
 *   S   = scale · Q_t K_jᵀ                  (sgemm, [TQ, TK])
 *   m'  = max(m, rowmax S);  P = exp(S - m');  l = l·e^(m-m') + rowsum P
 *   Oacc = Oacc·e^(m-m') + P V_j            (sgemm, [TQ, Dv])
 *
 * and finishes with O = Oacc / l, LSE = m + log l.  A row that sees no key
 * keeps m = -inf and l = 0 and gets O = 0, LSE = -inf.  Memory is the
 * per-thread scratch of the context: nothing of size S×S exists.
 *
 * GQA: query head h reads key/value head h / (H/G) straight from the
 * caller's tensors; K and V are never copied or replicated.
 */
#include "kernel_internal.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

typedef struct fwd_job {
    const cpa_attn_desc *d;
    cpa_tensor out, lse;
    cpa_tiling qt, kt;
    float scale;
    int64_t heads_per_group;
} fwd_job;

/* Masked entries of a partial tile become -inf. */
static void mask_tile(cpa_mask m, cpa_tile q, cpa_tile k, float *s, int64_t lds)
{
    for (int64_t i = 0; i < q.len; ++i) {
        int64_t j0, j1;
        cpa_tile_row_visible(m, q, k, i, &j0, &j1);
        float *row = s + i * lds;
        for (int64_t j = 0; j < j0; ++j)
            row[j] = -INFINITY;
        for (int64_t j = j1; j < k.len; ++j)
            row[j] = -INFINITY;
    }
}

static void fwd_task(const fwd_job *job, int64_t b, int64_t h, cpa_tile qt, float *scratch,
                     int call_progress)
{
    const cpa_attn_desc *d = job->d;
    const int64_t Dqk = d->q.shape[3], Dv = d->v.shape[3];
    const int64_t g = h / job->heads_per_group;
    const int64_t TK = CPA_FWD_TILE_K;
    float *s = scratch;                        /* [TQ, TK] scores, then P */
    float *oacc = s + CPA_FWD_TILE_Q * TK;         /* [TQ, Dv] unnormalised output */
    float *mrow = oacc + CPA_FWD_TILE_Q * Dv;      /* [TQ] running max */
    float *lrow = mrow + CPA_FWD_TILE_Q;           /* [TQ] running sum */
    const float *qp = cpa_at4(&d->q, b, qt.row, h);
    const int64_t ldq = d->q.stride[1];

    for (int64_t i = 0; i < qt.len; ++i) {
        mrow[i] = -INFINITY;
        lrow[i] = 0.0f;
    }
    memset(oacc, 0, sizeof(float) * (size_t)(qt.len * Dv));

    const int64_t nk = cpa_tiling_count(&job->kt);
    for (int64_t j = 0; j < nk; ++j) {
        cpa_tile kt = cpa_tiling_get(&job->kt, j);
        cpa_tile_class cls = cpa_tile_classify(d->mask, qt, kt);
        if (cls == CPA_TILE_SKIP)
            continue;
        if (cls == CPA_TILE_PARTIAL) {
            /* Keys past the last query row's window are masked for every row
             * of the tile: leave them out of the GEMMs (on the causal diagonal
             * a 256-key tile against 128 queries is then half as wide). */
            int64_t lo, hi;
            cpa_mask_range(d->mask, qt.pos + qt.len - 1, &lo, &hi);
            if (hi != INT64_MAX && hi - kt.pos + 1 < kt.len)
                kt.len = hi - kt.pos + 1;
        }
        const float *kp = cpa_at4(&d->k, b, kt.row, g);
        const float *vp = cpa_at4(&d->v, b, kt.row, g);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)qt.len, (int)kt.len, (int)Dqk,
                    job->scale, qp, (int)ldq, kp, (int)d->k.stride[1], 0.0f, s, (int)TK);
        if (cls == CPA_TILE_PARTIAL)
            mask_tile(d->mask, qt, kt, s, TK);
        for (int64_t i = 0; i < qt.len; ++i) {
            float *row = s + i * TK;
            float mnew = cpa_row_max(row, kt.len);
            if (mnew < mrow[i])
                mnew = mrow[i];
            if (mnew == -INFINITY) { /* nothing visible yet in this row */
                memset(row, 0, sizeof(float) * (size_t)kt.len);
                continue;
            }
            float rowsum = cpa_row_exp_sum(row, kt.len, mnew);
            if (mrow[i] != mnew) {
                float alpha = cpa_expf(mrow[i] - mnew); /* 0 when mrow was -inf */
                lrow[i] *= alpha;
                float *o = oacc + i * Dv;
                for (int64_t c = 0; c < Dv; ++c)
                    o[c] *= alpha;
                mrow[i] = mnew;
            }
            lrow[i] += rowsum;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)qt.len, (int)Dv, (int)kt.len,
                    1.0f, s, (int)TK, vp, (int)d->v.stride[1], 1.0f, oacc, (int)Dv);
        if (call_progress)
            d->progress(d->progress_arg);
    }

    for (int64_t i = 0; i < qt.len; ++i) {
        float *o = cpa_at4(&job->out, b, qt.row + i, h);
        const float *acc = oacc + i * Dv;
        float *l = cpa_at3(&job->lse, b, h, qt.row + i);
        if (lrow[i] > 0.0f) {
            float inv = 1.0f / lrow[i];
            for (int64_t c = 0; c < Dv; ++c)
                o[c] = acc[c] * inv;
            *l = mrow[i] + logf(lrow[i]);
        } else {
            memset(o, 0, sizeof(float) * (size_t)Dv);
            *l = -INFINITY;
        }
    }
}

cpa_status cpa_attn_forward(cpa_attn_ctx *ctx, const cpa_attn_desc *d, cpa_tensor out,
                            cpa_tensor lse)
{
    CPA_TRY(cpa_attn_check(d, &out, &lse, NULL, NULL, NULL, NULL));
    if (d->impl == CPA_IMPL_REFERENCE)
        return cpa_attn_forward_ref(d, out, lse);

    cpa_attn_ctx *use, *tmp;
    CPA_TRY(cpa_attn_ctx_resolve(ctx, d, &use, &tmp));
    fwd_job job;
    job.d = d;
    job.out = out;
    job.lse = lse;
    job.scale = cpa_attn_scale(d);
    job.heads_per_group = d->q.shape[2] / d->k.shape[2];
    cpa_tiling_init(&job.qt, d->q_rows, d->q.shape[1], CPA_FWD_TILE_Q);
    cpa_tiling_init(&job.kt, d->kv_rows, d->k.shape[1], CPA_FWD_TILE_K);

    const int64_t B = d->q.shape[0], H = d->q.shape[2];
    const int64_t nq = cpa_tiling_count(&job.qt);
    const int64_t ntasks = B * H * nq;
    /* Tasks run last query tile first: under a causal mask the late tiles
     * see the most keys, and starting them first balances the threads. */
#pragma omp parallel num_threads(use->num_threads)
    {
        int progress;
        float *scratch = cpa_thread_begin(use, d, &progress);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntasks; ++t) {
            int64_t qi = nq - 1 - t / (B * H);
            int64_t bh = t % (B * H);
            fwd_task(&job, bh / H, bh % H, cpa_tiling_get(&job.qt, qi), scratch, progress);
        }
    }
    cpa_attn_ctx_destroy(tmp);
    return CPA_OK;
}
