/*
 * attn_fwd.c — the attention forward: validation, then the job that the
 * instruction set's task function (attn_simd.c) runs, FlashAttention-2
 * style with an online softmax:
 *
 *   S   = scale · Q_t K_jᵀ                 per query panel and key tile
 *   m'  = max(m, rowmax S);  P = exp(S - m');  l = l·e^(m-m') + rowsum P
 *   Oacc = Oacc·e^(m-m') + P V_j
 *
 * finishing with O = Oacc / l, LSE = m + log l.  A row that sees no key
 * keeps m = -inf and l = 0 and gets O = 0, LSE = -inf.  Memory is the
 * per-thread scratch of the context: nothing of size S×S exists.
 *
 * Tasks are (query block, batch, KV head, chunk of its query heads): the
 * query heads that share a KV head meet each K/V tile while it is in
 * cache, so K/V traffic does not grow with H/G.  Every row's arithmetic is
 * the same whichever task or thread computes it, so the output is bitwise
 * identical for any number of threads.
 */
#include "kernel_internal.h"

#include <omp.h>

cpa_status cpa_attn_forward(cpa_attn_ctx *ctx, const cpa_attn_desc *d, cpa_tensor out,
                            cpa_tensor lse)
{
    CPA_TRY(cpa_attn_check(d, &out, &lse, NULL, NULL, NULL, NULL));
    if (d->impl == CPA_IMPL_REFERENCE)
        return cpa_attn_forward_ref(d, out, lse);

    cpa_attn_ctx *use, *tmp;
    CPA_TRY(cpa_attn_ctx_resolve(ctx, d, &use, &tmp));
    const cpa_isa_kernels *kern = use->kern;
    const int64_t B = d->q.shape[0], H = d->q.shape[2], G = d->k.shape[2];
    cpa_fwd_job job;
    job.d = d;
    job.out = out;
    job.lse = lse;
    job.qscale = cpa_attn_scale(d) * 1.44269504088896341f;
    job.hpg = H / G;
    cpa_tiling_init(&job.qt, d->q_rows, d->q.shape[1], kern->fwd_rows);
    cpa_tiling_init(&job.kt, d->kv_rows, d->k.shape[1], CPA_FWD_KEYS);
    /* Panels per task: the heads of a group first (they share the K/V
     * tiles and the mask), then neighbouring query tiles of those heads. */
    const int64_t panels = use->fwd_panels;
    job.heads_per_task = job.hpg < panels ? job.hpg : panels;
    while (job.hpg % job.heads_per_task != 0)
        --job.heads_per_task;
    job.nhchunks = job.hpg / job.heads_per_task;
    job.tiles_per_task = panels / job.heads_per_task;
    const int64_t nqt = cpa_tiling_count(&job.qt);
    job.nqblocks = (nqt + job.tiles_per_task - 1) / job.tiles_per_task;

    const int64_t ntasks = job.nqblocks * B * G * job.nhchunks;
#pragma omp parallel num_threads(use->num_threads)
    {
        int progress;
        float *scratch = cpa_thread_begin(use, d, &progress);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntasks; ++t)
            kern->fwd_task(&job, t, scratch, progress);
    }
    cpa_attn_ctx_destroy(tmp);
    return CPA_OK;
}
