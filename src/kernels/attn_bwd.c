/*
 * attn_bwd.c — the attention backward: validation, then the job that the
 * instruction set's task function (attn_simd.c) runs, FlashAttention-2
 * style, given the FINAL output and LSE of the query rows (so that the
 * contributions of separate key blocks simply add up, which is what ring
 * attention needs):
 *
 *   P  = exp(scale·Q Kᵀ - LSE)        (masked entries 0)
 *   Dr = rowsum(dO ∘ O)
 *   dS = P ∘ (dO Vᵀ - Dr)
 *   dV += Pᵀ dO ;  dQ += scale·dS K ;  dK += scale·dSᵀ Q
 *
 * Tasks own key tiles: a task is (batch, KV head, key tile) and walks every
 * query head of the group and every query tile that sees its keys, so its
 * dK/dV are exclusive and K/V are read once.  The dQ contributions of the
 * key tasks of one (batch, KV head) are added in key order: each task
 * waits for its predecessor before adding to a query unit (tasks are handed
 * out in increasing order and numbered key tile first, so a predecessor is
 * always handed out before its successor: the earliest unfinished task
 * never waits and nothing can deadlock; and neighbouring tasks belong to
 * different chains, so with B·G >= threads they rarely wait at all).  The sums therefore have one order for every
 * thread count — bitwise identical results — while B·G·(Sk / key tile)
 * tasks keep every thread busy, MQA at B=1 included.
 */
#include "kernel_internal.h"

#include <omp.h>
#include <string.h>

cpa_status cpa_attn_backward(cpa_attn_ctx *ctx, const cpa_attn_desc *d, cpa_tensor out,
                             cpa_tensor lse, cpa_tensor dout, cpa_tensor dq, cpa_tensor dk,
                             cpa_tensor dv)
{
    CPA_TRY(cpa_attn_check(d, &out, &lse, &dout, &dq, &dk, &dv));
    if (d->impl == CPA_IMPL_REFERENCE)
        return cpa_attn_backward_ref(d, out, lse, dout, dq, dk, dv);

    cpa_attn_ctx *use, *tmp;
    CPA_TRY(cpa_attn_ctx_resolve(ctx, d, &use, &tmp));
    const cpa_isa_kernels *kern = use->kern;
    cpa_bwd_job job;
    job.d = d;
    job.out = out;
    job.lse = lse;
    job.dout = dout;
    job.dq = dq;
    job.dk = dk;
    job.dv = dv;
    job.scale = cpa_attn_scale(d);
    job.kscale = job.scale * 1.44269504088896341f;
    job.hpg = d->q.shape[2] / d->k.shape[2];
    cpa_tiling_init(&job.qt, d->q_rows, d->q.shape[1], CPA_BWD_ROWS);
    cpa_tiling_init(&job.kt, d->kv_rows, d->k.shape[1], kern->bwd_keys);
    job.nq = cpa_tiling_count(&job.qt);
    job.nk = cpa_tiling_count(&job.kt);

    const int64_t B = d->q.shape[0], H = d->q.shape[2], Sq = d->q.shape[1], Dv = d->v.shape[3];
    const int64_t ntasks = B * d->k.shape[2] * job.nk;
    const size_t chain_bytes = (sizeof(int64_t) * (size_t)ntasks + 63) / 64 * 64;
    cpa_status s = cpa_attn_ctx_reserve_for(use, B, H, d->k.shape[2], Sq, d->k.shape[1]);
    if (s != CPA_OK) {
        cpa_attn_ctx_destroy(tmp);
        return s;
    }
    job.chain = use->work;
    memset(job.chain, 0, sizeof(int64_t) * (size_t)ntasks);
    float *dr = (float *)((char *)use->work + chain_bytes); /* [B, H, Sq] */
    job.dr = dr;
    cpa_tiling rows;
    cpa_tiling_init(&rows, d->q_rows, Sq, 1);
    /* Tasks are taken strictly in increasing order (a shared counter), which
     * is what makes the chain waits deadlock-free. */
    int64_t next = 0;
#pragma omp parallel num_threads(use->num_threads)
    {
        int progress;
        float *scratch = cpa_thread_begin(use, d, &progress);
        /* Dr = rowsum(dO ∘ O) of the selected rows, once. */
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; ++bh)
            for (int p = 0; p < rows.count; ++p)
                for (int64_t i = rows.pieces[p].row; i < rows.pieces[p].row + rows.pieces[p].len; ++i) {
                    const float *o = cpa_at4(&out, bh / H, i, bh % H);
                    const float *g = cpa_at4(&dout, bh / H, i, bh % H);
                    float sum = 0.0f;
                    for (int64_t c = 0; c < Dv; ++c)
                        sum += o[c] * g[c];
                    dr[bh * Sq + i] = sum;
                }
        for (;;) {
            int64_t t = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
            if (t >= ntasks)
                break;
            kern->bwd_task(&job, t, scratch, progress);
        }
    }
    cpa_attn_ctx_destroy(tmp);
    return CPA_OK;
}
