/*
 * ring.c — Ring Attention and Double-Ring Attention (megatron_cp_algo,
 * --cp-window-size W), forward and backward, over the ranks of one
 * communicator.  The schedule is ALGORITHMS.md §2-3; the plain ring is the
 * double ring with W = 1 (one rank per window, the outer ring is the ring),
 * so there is one engine and one schedule to test.
 *
 * Data.  K and V of a block travel together in one buffer with G heads (GQA
 * never inflates traffic).  Four KV buffers rotate so that no receive ever
 * lands in a buffer a send is still reading: the block held at the start
 * of a round is the outer send's buffer for the whole round, and the inner
 * receives alternate between two others (the fourth receives the outer
 * block).  No KV copy is made after the first.
 *
 * Causal masks use the zigzag split; which part of a block is computed
 * depends only on the block's owner k versus my index r (§2): k == r the
 * causal diagonal, k < r all queries against the early key chunk, k > r the
 * late query chunk against all keys.  Every off-diagonal step is 2c x c.
 *
 * Backward.  Blocks are visited in exactly the reverse order.  The engine
 * begins by fetching block (w+1, p+1) — the block the forward ended with —
 * in one exposed transfer (the forward's buffers may have been reused by
 * other layers in between), then runs with every transfer reversed.  A dK/dV
 * accumulator (fp32) follows its block: after each step it is sent to the
 * rank that processes the block next, and received back just before it is
 * needed, so the transfer hides behind the next step's compute.
 *
 * Sliding windows.  With a causal window of N positions over a contiguous
 * split of the plain ring (the ring row picks contiguous when a window is
 * set: every query then sees at most N keys, so the split is balanced
 * anyway), rank r needs only blocks r, r-1, ..., r-T+1, T = (Sl+N-2)/Sl + 1:
 * the ring runs T rounds instead of R, the backward's first fetch comes from
 * rank r-T+1 directly, and a rank sends T-1 blocks forward and 2T-1
 * backward instead of R-1 and 2R-1 — communication proportional to the
 * window, not to S.
 *
 * Halo.  When the window is no longer than the shortest shard (N - 1 <= S/R
 * rows) on a contiguous split, a query needs at most the last N-1 keys of
 * the previous rank (and, with a general window |p - k| < N, the first N-1
 * of the next): only those rows travel, not whole blocks.  Forward: post
 * the halo exchange, compute the own block while it travels (the kernels'
 * progress calls drive it), then the halo blocks; backward: the same
 * exchange, the own block's gradients, the halo blocks' into small
 * accumulators that go back to their owners, who add them into their
 * rows.  A rank sends N-1 rows of K/V to a neighbour forward and N-1 rows
 * of K/V plus N-1 of dK/dV backward (per side): communication proportional
 * to the window, not to S; the first rank (and for a general window the
 * last) has no neighbour on that side.
 *
 * Any sequence length.  Ranks may hold different row counts (cpa_split:
 * chunks differ by at most one row), so a block is packed with its owner's
 * row count (K [B,n,G,Dqk] then V right after it), every buffer is sized
 * for the largest block, and each transfer sends its block's count and
 * receives the incoming block's: both ends know the owners from the
 * schedule.  cpa_ring_volume walks the same schedule for the exact bytes.
 *
 * --use-cp-send-recv-overlap.  A message travels on the communicator picked
 * by the parity of the SENDER's position in its ring; the receiver, knowing
 * its source, picks the same one.  So a rank's send and its receive of a
 * step use different communicators wherever the ring alternates parity, and
 * the pairing is right for every ring length — MindSpeed pairs by the
 * receiver's own parity, which mismatches at the wrap-around of an
 * odd-length ring.  Channels are also told apart by tag.
 */
#include "cp_internal.h"
#include "kernel_internal.h"
#include "trace.h"

#include <stdio.h>
#include <string.h>

enum { TAG_KV_INNER = 11, TAG_KV_OUTER = 12, TAG_DKV_INTRA = 13, TAG_DKV_INTER = 14,
       TAG_SHIFT = 15, TAG_HALO_L = 16, TAG_HALO_R = 17, TAG_DHALO_L = 18, TAG_DHALO_R = 19 };

/* ---- set-up ---------------------------------------------------------------- */

/* KV buffers in use: the held block and the outer receive; a second inner
 * buffer from W = 2; a third from W = 3 (the round's first block stays
 * reserved for the outer send while the inner receives alternate). */
static int kv_buffers(int W) { return W == 1 ? 2 : W == 2 ? 3 : 4; }

/* Rounds of a ring of R ranks (see the top of the file). */
static int ring_rounds(const cpa_ring_shape *sh, int R)
{
    const int I = R / sh->W;
    if (sh->W != 1 || sh->split.P == 0 || sh->split.kind != CPA_SPLIT_CONTIGUOUS ||
        sh->mask.kind != CPA_MASK_CAUSAL || sh->mask.window <= 0)
        return I;
    /* The shortest block (contiguous chunks hold S/R rounded down or up)
     * bounds how many blocks back the window reaches. */
    const int64_t Smin = sh->S / R, T = (Smin + sh->mask.window - 2) / Smin + 1;
    return T < I ? (int)T : I;
}

static cpa_split ring_split_of(const cpa_ring_shape *sh, int R);

/* Halo rows (N - 1) when a window fits in the shortest shard of a
 * contiguous split of a plain ring, else 0 (see the top of the file). */
static int64_t halo_rows(const cpa_ring_shape *sh, int R)
{
    const cpa_split sp = ring_split_of(sh, R);
    if (R == 1 || sh->W != 1 || sp.kind != CPA_SPLIT_CONTIGUOUS || sp.U != 1 ||
        sh->mask.window <= 1 || sh->mask.window - 1 > sh->S / R)
        return 0;
    return sh->mask.window - 1;
}

/* The ring's split: the row's choice, or (inner ring of the hybrid) zigzag
 * for causal masks and contiguous for general ones over the R ring ranks. */
static cpa_split ring_split_of(const cpa_ring_shape *sh, int R)
{
    if (sh->split.P > 0)
        return sh->split;
    cpa_split sp;
    memset(&sp, 0, sizeof sp);
    sp.kind = sh->mask.kind == CPA_MASK_CAUSAL ? CPA_SPLIT_ZIGZAG : CPA_SPLIT_CONTIGUOUS;
    sp.P = R;
    sp.U = 1;
    return sp;
}

static int64_t block_floats(const cpa_ring_shape *sh, int64_t rows)
{
    return sh->B * rows * sh->G * (sh->Dqk + sh->Dv);
}

int64_t cpa_ring_bytes(const cpa_ring_shape *sh, int R)
{
    if (R == 1) /* one rank: the kernel on the caller's tensors, no buffers */
        return 0;
    const int64_t Sl = cpa_split_max_rows(ring_split_of(sh, R), sh->S);
    const int64_t h = halo_rows(sh, R);
    if (h > 0) /* eight halo buffers, a block output and its LSE */
        return (int64_t)sizeof(float) * (8 * block_floats(sh, h) + sh->B * Sl * sh->H * sh->Dv +
                                         sh->B * sh->H * Sl) +
               (int64_t)sizeof(int64_t) * R;
    return (int64_t)sizeof(float) * ((kv_buffers(sh->W) + 3) * block_floats(sh, Sl) +
                                     sh->B * Sl * sh->H * sh->Dv + sh->B * sh->H * Sl) +
           (int64_t)sizeof(int64_t) * R;
}

cpa_status cpa_ring_init(cpa_ring *g, MPI_Comm comm, const cpa_ring_shape *sh, cpa_attn_ctx *ctx)
{
    memset(g, 0, sizeof *g);
    cpa_xfer_init(&g->xfer);
    g->comm[0] = g->comm[1] = comm;
    MPI_Comm_size(comm, &g->R);
    MPI_Comm_rank(comm, &g->idx);
    g->W = sh->W;
    g->I = g->R / g->W;
    g->w = g->idx / g->W;
    g->p = g->idx % g->W;
    g->split = ring_split_of(sh, g->R);
    g->S = sh->S, g->B = sh->B, g->H = sh->H, g->G = sh->G, g->Dqk = sh->Dqk, g->Dv = sh->Dv;
    if (!(g->rows = cpa_malloc(sizeof(int64_t) * (size_t)g->R, "ring block sizes")))
        return CPA_ERR_NOMEM;
    for (int r = 0; r < g->R; ++r)
        if ((g->rows[r] = cpa_split_rows(g->split, g->S, r)) < 0) {
            cpa_ring_free(g);
            return CPA_ERR_ARG;
        }
    g->Sl = cpa_split_max_rows(g->split, g->S);
    g->Sq = g->rows[g->idx];
    g->rounds = ring_rounds(sh, g->R);
    g->layout = sh->layout;
    g->mask = sh->mask;
    g->impl = sh->impl;
    g->scale = sh->scale;
    g->ctx = ctx;
    if (sh->overlap && g->R > 1)
        CPA_TRY(cpa_comm_dup(comm, &g->comm[1]));

    /* Buffers are zeroed here, so that their pages are mapped at plan time
     * and the first forward does not pay the page faults. */
    g->kv_floats = block_floats(sh, g->Sl);
    const size_t kv_bytes = sizeof(float) * (size_t)g->kv_floats;
    /* What this allocates is cpa_ring_bytes(). */
    if (g->R == 1)
        return CPA_OK;
    g->halo = halo_rows(sh, g->R);
    if (g->halo > 0) { /* halo buffers instead of blocks */
        const int64_t hf = block_floats(sh, g->halo);
        if (!(g->halo_buf = cpa_calloc(sizeof(float) * (size_t)(8 * hf), "ring halo buffers")))
            goto fail;
    } else {
        g->nkv = kv_buffers(g->W);
    }
    for (int i = 0; i < g->nkv; ++i)
        if (!(g->kv[i] = cpa_calloc(kv_bytes, "ring KV buffer")))
            goto fail;
    for (int i = 0; i < 3 && g->halo == 0; ++i)
        if (!(g->dkv[i] = cpa_calloc(kv_bytes, "ring dK/dV accumulator")))
            goto fail;
    g->out_blk = cpa_calloc(sizeof(float) * (size_t)(g->B * g->Sq * g->H * g->Dv), "ring block output");
    g->lse_blk = cpa_calloc(sizeof(float) * (size_t)(g->B * g->H * g->Sq), "ring block lse");
    if (!g->out_blk || !g->lse_blk)
        goto fail;
    return CPA_OK;
fail:
    cpa_ring_free(g);
    return CPA_ERR_NOMEM;
}

void cpa_ring_free(cpa_ring *g)
{
    for (int i = 0; i < 4; ++i)
        cpa_free(g->kv[i]);
    for (int i = 0; i < 3; ++i)
        cpa_free(g->dkv[i]);
    cpa_free(g->out_blk);
    cpa_free(g->lse_blk);
    cpa_free(g->rows);
    cpa_free(g->halo_buf);
    if (g->comm[1] != g->comm[0] && g->comm[1] != MPI_COMM_NULL)
        MPI_Comm_free(&g->comm[1]);
    memset(g, 0, sizeof *g);
}

/* ---- views and block selection ------------------------------------------- */

/* The K and V views of a buffer holding ring rank `owner`'s block, and
 * the floats that block occupies (what travels). */
static cpa_tensor k_view(const cpa_ring *g, float *buf, int owner)
{
    return cpa_tensor_attn(buf, g->layout, g->B, g->rows[owner], g->G, g->Dqk);
}

static cpa_tensor v_view(const cpa_ring *g, float *buf, int owner)
{
    return cpa_tensor_attn(buf + g->B * g->rows[owner] * g->G * g->Dqk, g->layout, g->B,
                           g->rows[owner], g->G, g->Dv);
}

static int64_t kv_of(const cpa_ring *g, int owner)
{
    return g->B * g->rows[owner] * g->G * (g->Dqk + g->Dv);
}

/* The attention block "my queries x the keys of owner k" per the table of
 * ALGORITHMS.md §2.  qp/kp receive the pieces the descriptor points to. */
static void block_desc(const cpa_ring *g, int k, cpa_tensor q, float *kvbuf, cpa_attn_desc *d,
                       cpa_piece qp[CPA_SPLIT_MAX_PIECES], cpa_piece kp[CPA_SPLIT_MAX_PIECES])
{
    int nq, nk;
    cpa_split_pieces(g->split, g->S, g->idx, qp, &nq);
    cpa_split_pieces(g->split, g->S, k, kp, &nk);
    memset(d, 0, sizeof *d);
    d->q = q;
    d->k = k_view(g, kvbuf, k);
    d->v = v_view(g, kvbuf, k);
    d->softmax_scale = g->scale;
    d->impl = g->impl;
    d->q_rows = (cpa_rows){qp, nq};
    d->kv_rows = (cpa_rows){kp, nk};
    /* Documents and windows apply to every block as they are; the causal
     * rule is what the block choice below implies (keys wholly before the
     * queries need no causal test: "general" inside the document and the
     * window is the same there). */
    d->mask = g->mask;
    d->progress = cpa_xfer_progress;
    d->progress_arg = (void *)&g->xfer;
    if (g->split.kind != CPA_SPLIT_ZIGZAG)
        return; /* contiguous or any assignment: every piece, the whole mask (the kernel
                   skips what is masked) */
    d->mask.kind = CPA_MASK_NONE;
    if (g->mask.kind != CPA_MASK_CAUSAL)
        return;
    if (k == g->idx)
        d->mask.kind = CPA_MASK_CAUSAL;       /* diagonal: local order is global order */
    else if (k < g->idx)
        d->kv_rows.count = 1;                 /* early key chunk only */
    else
        d->q_rows = (cpa_rows){qp + 1, 1};    /* late query chunk only */
}

/* A KV buffer index other than the ones in use (-1 = unused slot). */
static int free_buffer(const cpa_ring *g, int a, int b, int c)
{
    for (int i = 0; i < g->nkv; ++i)
        if (i != a && i != b && i != c)
            return i;
    return -1;
}

static MPI_Comm comm_for(const cpa_ring *g, int sender_pos)
{
    return g->comm[sender_pos & 1];
}

/* Post a block transfer: send `sendbuf` (ring rank send_owner's block or
 * its accumulator) to rank index `dest`, receive into `recvbuf` the block
 * of recv_owner from `src`; `my_pos`/`src_pos` are the sender positions
 * that pick the communicator (see the top of the file). */
static cpa_status post(cpa_ring *g, const float *sendbuf, int send_owner, int dest, int my_pos,
                       float *recvbuf, int recv_owner, int src, int src_pos, int tag, int *handle)
{
    static const char *const names[] = {
        [TAG_KV_INNER] = "the K/V block of the inner ring",
        [TAG_KV_OUTER] = "the K/V block of the outer ring",
        [TAG_DKV_INTRA] = "the dK/dV block of the inner ring",
        [TAG_DKV_INTER] = "the dK/dV block of the outer ring",
        [TAG_SHIFT] = "the backward's first K/V block",
    };
    /* A plain ring (W = 1) is the double ring's outer ring: say it plainly. */
    const char *what = g->W == 1 && tag == TAG_KV_OUTER    ? "the K/V block"
                       : g->W == 1 && tag == TAG_DKV_INTER ? "the dK/dV block"
                                                           : names[tag];
    return cpa_xfer_post(&g->xfer, sendbuf, kv_of(g, send_owner), dest, comm_for(g, my_pos),
                         recvbuf, kv_of(g, recv_owner), src, comm_for(g, src_pos), tag, what,
                         handle);
}

/* Where the ring is, for a timeout message. */
static void say_step(cpa_ring *g, const char *pass, int step)
{
    snprintf(g->xfer.context, sizeof g->xfer.context, "ring %s, step %d of %d", pass, step, g->R);
}

static cpa_status timed_forward(cpa_ring *g, const cpa_attn_desc *d, cpa_tensor out, cpa_tensor lse)
{
    double t0 = cpa_wtime();
    cpa_status s = cpa_attn_forward(g->ctx, d, out, lse);
    g->compute_s += cpa_wtime() - t0;
    g->flops += cpa_attn_forward_flops(d);
    return s;
}

/* ---- the halo (a window shorter than a shard) -------------------------------- */

/* Rows [r0, r0+n) of a [B, S, N, D] view. */
static cpa_tensor row_range(cpa_tensor t, int64_t r0, int64_t n)
{
    t.data += r0 * t.stride[1];
    t.shape[1] = n;
    return t;
}

/* K or V of a packed halo of h rows (K [B,h,G,Dqk] then V). */
static cpa_tensor halo_k(const cpa_ring *g, float *buf)
{
    return cpa_tensor_attn(buf, g->layout, g->B, g->halo, g->G, g->Dqk);
}

static cpa_tensor halo_v(const cpa_ring *g, float *buf)
{
    return cpa_tensor_attn(buf + g->B * g->halo * g->G * g->Dqk, g->layout, g->B, g->halo, g->G,
                           g->Dv);
}

/* dst += src over 4-d views of the same shape (any strides). */
static void add_view(cpa_tensor dst, cpa_tensor src)
{
    for (int64_t b = 0; b < dst.shape[0]; ++b)
        for (int64_t s = 0; s < dst.shape[1]; ++s)
            for (int64_t n = 0; n < dst.shape[2]; ++n) {
                float *d = dst.data + b * dst.stride[0] + s * dst.stride[1] + n * dst.stride[2];
                const float *x = src.data + b * src.stride[0] + s * src.stride[1] +
                                 n * src.stride[2];
                for (int64_t e = 0; e < dst.shape[3]; ++e)
                    d[e * dst.stride[3]] += x[e * src.stride[3]];
            }
}

/* The halo buffers: [0] [1] the left / right halo's K/V in, [2] [3] my
 * last / first rows out (the neighbours' halos), [4] [5] dK/dV of the left
 * / right halo out, [6] [7] dK/dV of my last / first rows in. */
static float *hbuf(const cpa_ring *g, int i)
{
    return g->halo_buf + (int64_t)i * g->B * g->halo * g->G * (g->Dqk + g->Dv);
}

/* Does the window reach the next rank's rows (a general mask's does)? */
static int halo_right(const cpa_ring *g) { return g->mask.kind != CPA_MASK_CAUSAL; }

static int64_t halo_floats(const cpa_ring *g)
{
    return g->B * g->halo * g->G * (g->Dqk + g->Dv);
}

/* The block "my queries x the halo of `side`" (0 left, 1 right). */
static void halo_desc(const cpa_ring *g, int side, cpa_tensor q, cpa_attn_desc *d,
                      cpa_piece qp[CPA_SPLIT_MAX_PIECES], cpa_piece *kp)
{
    int nq = 0;
    cpa_split_pieces(g->split, g->S, g->idx, qp, &nq);
    const int64_t pos = side == 0 ? qp[0].pos - g->halo : qp[0].pos + g->Sq;
    *kp = (cpa_piece){0, g->halo, pos};
    memset(d, 0, sizeof *d);
    d->q = q;
    d->k = halo_k(g, hbuf(g, side));
    d->v = halo_v(g, hbuf(g, side));
    d->softmax_scale = g->scale;
    d->impl = g->impl;
    d->q_rows = (cpa_rows){qp, nq};
    d->kv_rows = (cpa_rows){kp, 1};
    d->mask = g->mask; /* documents and the window apply as they are */
    d->progress = cpa_xfer_progress;
    d->progress_arg = (void *)&g->xfer;
}

/* Which halos I receive: the left one unless I am the first rank, the
 * right one (general windows) unless I am the last. */
static int has_halo(const cpa_ring *g, int side)
{
    return side == 0 ? g->idx > 0 : halo_right(g) && g->idx + 1 < g->R;
}

/* Post the K/V halo exchange: my last rows to the next rank (its left
 * halo) and, for a general window, my first rows to the previous (its
 * right halo); the neighbours' into [0] and [1].  hs[side] = -1: none. */
static cpa_status halo_post_kv(cpa_ring *g, cpa_tensor k, cpa_tensor v, int hs[2])
{
    const int64_t h = g->halo, hf = halo_floats(g), n = g->Sq;
    const int prev = g->idx - 1, next = g->idx + 1;
    const int to_next = next < g->R, to_prev = halo_right(g) && prev >= 0;
    hs[0] = hs[1] = -1;
    if (to_next) {
        cpa_tensor_copy(halo_k(g, hbuf(g, 2)), row_range(k, n - h, h));
        cpa_tensor_copy(halo_v(g, hbuf(g, 2)), row_range(v, n - h, h));
    }
    if (to_next || has_halo(g, 0))
        CPA_TRY(cpa_xfer_post(&g->xfer, to_next ? hbuf(g, 2) : NULL, hf, next, g->comm[0],
                              has_halo(g, 0) ? hbuf(g, 0) : NULL, hf, prev, g->comm[0],
                              TAG_HALO_L, "the K/V halo of the previous rank", &hs[0]));
    if (to_prev) {
        cpa_tensor_copy(halo_k(g, hbuf(g, 3)), row_range(k, 0, h));
        cpa_tensor_copy(halo_v(g, hbuf(g, 3)), row_range(v, 0, h));
    }
    if (to_prev || has_halo(g, 1))
        CPA_TRY(cpa_xfer_post(&g->xfer, to_prev ? hbuf(g, 3) : NULL, hf, prev, g->comm[1],
                              has_halo(g, 1) ? hbuf(g, 1) : NULL, hf, next, g->comm[1],
                              TAG_HALO_R, "the K/V halo of the next rank", &hs[1]));
    return CPA_OK;
}

static cpa_status timed_forward(cpa_ring *g, const cpa_attn_desc *d, cpa_tensor out,
                                cpa_tensor lse);

/* The own block on the caller's K/V (one rank, or the halo's first step). */
static void own_desc(const cpa_ring *g, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                     cpa_attn_desc *d, cpa_piece qp[CPA_SPLIT_MAX_PIECES],
                     cpa_piece kp[CPA_SPLIT_MAX_PIECES])
{
    block_desc(g, g->idx, q, k.data, d, qp, kp); /* views replaced: */
    d->k = k, d->v = v;
}

/* Wait for the halo exchange of `side` (handle h, -1: none posted); 1 if
 * this rank then has that halo to compute with and all went well. */
static int halo_arrived(cpa_ring *g, int h, int side, cpa_status *s)
{
    if (h < 0)
        return 0;
    cpa_status sw = cpa_xfer_wait(&g->xfer, h);
    *s = *s != CPA_OK ? *s : sw;
    return *s == CPA_OK && has_halo(g, side);
}

static cpa_status halo_forward(cpa_ring *g, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                               cpa_tensor out, cpa_tensor lse)
{
    int hs[2];
    say_step(g, "forward (halo)", 1);
    CPA_TRY(halo_post_kv(g, k, v, hs));
    /* The own block, on the caller's K/V, while the halos travel. */
    cpa_attn_desc d;
    cpa_piece qp[CPA_SPLIT_MAX_PIECES], kp[CPA_SPLIT_MAX_PIECES];
    own_desc(g, q, k, v, &d, qp, kp);
    int64_t tt = cpa_trace_t0();
    cpa_status s = timed_forward(g, &d, out, lse);
    CPA_TRACE_END(tt, "forward step", CPA_TRACE_COMPUTE, CPA_TRACE_LANE_MAIN, {"step", 1},
                  {"owner", g->idx}, {"flops", g->flops});
    const int64_t lse_shape[3] = {g->B, g->H, g->Sq};
    cpa_tensor ob = cpa_tensor_attn(g->out_blk, g->layout, g->B, g->Sq, g->H, g->Dv);
    cpa_tensor lb = cpa_tensor_make(g->lse_blk, 3, lse_shape);
    for (int side = 0; side < 2; ++side) {
        if (!halo_arrived(g, hs[side], side, &s))
            continue;
        cpa_piece hp;
        halo_desc(g, side, q, &d, qp, &hp);
        if (cpa_attn_forward_flops(&d) == 0.0) /* nothing visible (documents) */
            continue;
        const double f0 = g->flops;
        tt = cpa_trace_t0();
        s = timed_forward(g, &d, ob, lb);
        if (s == CPA_OK)
            s = cpa_attn_merge(out, lse, ob, lb, d.q_rows);
        CPA_TRACE_END(tt, "forward step", CPA_TRACE_COMPUTE, CPA_TRACE_LANE_MAIN,
                      {"step", 2 + side}, {"owner", g->idx + (side ? 1 : -1)},
                      {"flops", g->flops - f0});
    }
    if (s != CPA_OK)
        cpa_xfer_drain(&g->xfer);
    return s;
}

static cpa_status halo_backward(cpa_ring *g, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                                cpa_tensor out, cpa_tensor lse, cpa_tensor dout, cpa_tensor dq,
                                cpa_tensor dk, cpa_tensor dv)
{
    int hs[2];
    say_step(g, "backward (halo)", 1);
    CPA_TRY(halo_post_kv(g, k, v, hs));
    cpa_tensor_zero(dq), cpa_tensor_zero(dk), cpa_tensor_zero(dv);
    cpa_attn_desc d;
    cpa_piece qp[CPA_SPLIT_MAX_PIECES], kp[CPA_SPLIT_MAX_PIECES];
    own_desc(g, q, k, v, &d, qp, kp);
    int64_t tt = cpa_trace_t0();
    double t0 = cpa_wtime();
    cpa_status s = cpa_attn_backward(g->ctx, &d, out, lse, dout, dq, dk, dv);
    g->compute_s += cpa_wtime() - t0;
    g->flops += 2.5 * cpa_attn_forward_flops(&d);
    CPA_TRACE_END(tt, "backward step", CPA_TRACE_COMPUTE, CPA_TRACE_LANE_MAIN, {"step", 1},
                  {"owner", g->idx}, {"flops", g->flops});
    const int64_t h = g->halo, hf = halo_floats(g);
    for (int side = 0; side < 2; ++side) { /* the halos' gradients into [4], [5] */
        if (!halo_arrived(g, hs[side], side, &s))
            continue;
        float *acc = hbuf(g, 4 + side);
        memset(acc, 0, sizeof(float) * (size_t)hf);
        cpa_piece hp;
        halo_desc(g, side, q, &d, qp, &hp);
        const double flops = cpa_attn_forward_flops(&d);
        tt = cpa_trace_t0();
        t0 = cpa_wtime();
        if (flops > 0.0)
            s = cpa_attn_backward(g->ctx, &d, out, lse, dout, dq, halo_k(g, acc), halo_v(g, acc));
        g->compute_s += cpa_wtime() - t0;
        g->flops += 2.5 * flops;
        CPA_TRACE_END(tt, "backward step", CPA_TRACE_COMPUTE, CPA_TRACE_LANE_MAIN,
                      {"step", 2 + side}, {"owner", g->idx + (side ? 1 : -1)},
                      {"flops", 2.5 * flops});
    }
    /* Each halo's dK/dV back to its owner; the neighbours' of my rows to me:
     * the next rank's left halo is my last rows, the previous rank's right
     * halo my first. */
    const int prev = g->idx - 1, next = g->idx + 1;
    const int from_next = next < g->R, from_prev = halo_right(g) && prev >= 0;
    int hd[2] = {-1, -1};
    say_step(g, "backward (halo)", 2);
    if (s == CPA_OK && (has_halo(g, 0) || from_next))
        s = cpa_xfer_post(&g->xfer, has_halo(g, 0) ? hbuf(g, 4) : NULL, hf, prev, g->comm[0],
                          from_next ? hbuf(g, 6) : NULL, hf, next, g->comm[0], TAG_DHALO_L,
                          "the dK/dV of the left halo", &hd[0]);
    if (s == CPA_OK && (has_halo(g, 1) || from_prev))
        s = cpa_xfer_post(&g->xfer, has_halo(g, 1) ? hbuf(g, 5) : NULL, hf, next, g->comm[1],
                          from_prev ? hbuf(g, 7) : NULL, hf, prev, g->comm[1], TAG_DHALO_R,
                          "the dK/dV of the right halo", &hd[1]);
    for (int side = 0; side < 2 && s == CPA_OK; ++side) {
        if (hd[side] < 0)
            continue;
        s = cpa_xfer_wait(&g->xfer, hd[side]);
        if (s != CPA_OK || !(side == 0 ? from_next : from_prev))
            continue;
        float *in = hbuf(g, 6 + side);
        const int64_t r0 = side == 0 ? g->Sq - h : 0;
        add_view(row_range(dk, r0, h), halo_k(g, in));
        add_view(row_range(dv, r0, h), halo_v(g, in));
    }
    if (s != CPA_OK)
        cpa_xfer_drain(&g->xfer);
    return s;
}

/* ---- forward --------------------------------------------------------------- */

static cpa_status forward_block(cpa_ring *g, int owner, float *kvbuf, int first, cpa_tensor q,
                                cpa_tensor out, cpa_tensor lse)
{
    cpa_attn_desc d;
    cpa_piece qp[CPA_SPLIT_MAX_PIECES], kp[CPA_SPLIT_MAX_PIECES];
    block_desc(g, owner, q, kvbuf, &d, qp, kp);
    if (first) /* the own block covers every local row */
        return timed_forward(g, &d, out, lse);
    if (cpa_attn_forward_flops(&d) == 0.0) /* no visible pair (documents, a window) */
        return CPA_OK;
    int64_t lse_shape[3] = {g->B, g->H, g->Sq};
    cpa_tensor ob = cpa_tensor_attn(g->out_blk, g->layout, g->B, g->Sq, g->H, g->Dv);
    cpa_tensor lb = cpa_tensor_make(g->lse_blk, 3, lse_shape);
    CPA_TRY(timed_forward(g, &d, ob, lb));
    return cpa_attn_merge(out, lse, ob, lb, d.q_rows);
}

cpa_status cpa_ring_forward(cpa_ring *g, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                            cpa_tensor out, cpa_tensor lse)
{
    cpa_xfer_reset_counters(&g->xfer);
    g->compute_s = g->flops = 0.0;
    if (g->R == 1) { /* one block, the caller's own K/V */
        cpa_attn_desc d;
        cpa_piece qp[CPA_SPLIT_MAX_PIECES], kp[CPA_SPLIT_MAX_PIECES];
        own_desc(g, q, k, v, &d, qp, kp);
        const int64_t tt = cpa_trace_t0();
        cpa_status s = timed_forward(g, &d, out, lse);
        CPA_TRACE_END(tt, "forward step", CPA_TRACE_COMPUTE, CPA_TRACE_LANE_MAIN, {"step", 1},
                      {"owner", 0}, {"flops", g->flops});
        return s;
    }
    if (g->halo > 0)
        return halo_forward(g, q, k, v, out, lse);
    cpa_tensor_copy(k_view(g, g->kv[0], g->idx), k);
    cpa_tensor_copy(v_view(g, g->kv[0], g->idx), v);
    const int W = g->W, I = g->I, w = g->w, p = g->p, J = g->rounds;
    const cpa_dring_peers pr = cpa_dring_peers_of(W, I, w, p, 0);
#define FWD_BLOCK(j, i) cpa_dring_block(W, I, w, p, (j), (i), 0)
    int cur = 0, first = 1;
    cpa_status s = CPA_OK;
    for (int j = 0; j < J && s == CPA_OK; ++j) {
        int round_send = cur, round_recv = -1, ho = -1;
        if (j < J - 1) { /* outer ring: same position, next window */
            round_recv = free_buffer(g, cur, -1, -1);
            s = post(g, g->kv[cur], FWD_BLOCK(j, 0), pr.outer_to, w, g->kv[round_recv],
                     FWD_BLOCK(j + 1, 0), pr.outer_from, (w - 1 + I) % I, TAG_KV_OUTER, &ho);
        }
        for (int i = 0; i < W && s == CPA_OK; ++i) {
            int nxt = -1, hi = -1;
            if (i < W - 1) {
                nxt = free_buffer(g, cur, round_send, round_recv);
                s = post(g, g->kv[cur], FWD_BLOCK(j, i), pr.inner_to, p, g->kv[nxt],
                         FWD_BLOCK(j, i + 1), pr.inner_from, (p - 1 + W) % W, TAG_KV_INNER, &hi);
                if (s != CPA_OK)
                    break;
            }
            say_step(g, "forward", j * W + i + 1);
            const int64_t tt = cpa_trace_t0();
            const double f0 = g->flops;
            s = forward_block(g, FWD_BLOCK(j, i), g->kv[cur], first, q, out, lse);
            CPA_TRACE_END(tt, "forward step", CPA_TRACE_COMPUTE, CPA_TRACE_LANE_MAIN,
                          {"step", j * W + i + 1}, {"owner", FWD_BLOCK(j, i)},
                          {"flops", g->flops - f0});
            first = 0;
            if (hi >= 0) {
                cpa_status sw = cpa_xfer_wait(&g->xfer, hi);
                s = s != CPA_OK ? s : sw;
                cur = nxt;
            }
        }
        if (ho >= 0) {
            cpa_status sw = cpa_xfer_wait(&g->xfer, ho);
            s = s != CPA_OK ? s : sw;
            cur = round_recv;
        }
    }
#undef FWD_BLOCK
    if (s != CPA_OK)
        cpa_xfer_drain(&g->xfer);
    return s;
}

/* ---- backward -------------------------------------------------------------- */

static void add_into(float *acc, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
        acc[i] += x[i];
}

/* The block the backward processes at (round j, inner step i), as a ring
 * index: the double ring's reverse order, or, truncated by a causal window
 * (W = 1, J < I rounds), blocks w-J+1, ..., w. */
static int backward_block(int W, int I, int J, int w, int p, int j, int i)
{
    return J < I ? (w - J + 1 + j + I) % I : cpa_dring_block(W, I, w, p, j, i, 1);
}

cpa_status cpa_ring_backward(cpa_ring *g, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                             cpa_tensor out, cpa_tensor lse, cpa_tensor dout, cpa_tensor dq,
                             cpa_tensor dk, cpa_tensor dv)
{
    cpa_xfer_reset_counters(&g->xfer);
    g->compute_s = g->flops = 0.0;
    const int W = g->W, I = g->I, w = g->w, p = g->p, J = g->rounds, steps = J * W;
    cpa_dring_peers pr = cpa_dring_peers_of(W, I, w, p, 1);
    if (J < I) { /* truncated (W = 1): the first block is rank w-J+1's, mine goes to w+J-1 */
        pr.shift_from = (w - J + 1 + I) % I;
        pr.shift_to = (w + J - 1) % I;
    }
    cpa_status s = CPA_OK;
    int h = -1;
    if (g->R == 1) { /* one block: gradients straight into the caller's */
        cpa_attn_desc d;
        cpa_piece qp[CPA_SPLIT_MAX_PIECES], kp[CPA_SPLIT_MAX_PIECES];
        own_desc(g, q, k, v, &d, qp, kp);
        cpa_tensor_zero(dq), cpa_tensor_zero(dk), cpa_tensor_zero(dv);
        const int64_t tt = cpa_trace_t0();
        double t0 = cpa_wtime();
        s = cpa_attn_backward(g->ctx, &d, out, lse, dout, dq, dk, dv);
        g->compute_s += cpa_wtime() - t0;
        g->flops += 2.5 * cpa_attn_forward_flops(&d);
        CPA_TRACE_END(tt, "backward step", CPA_TRACE_COMPUTE, CPA_TRACE_LANE_MAIN, {"step", 1},
                      {"owner", 0}, {"flops", g->flops});
        return s;
    }
    if (g->halo > 0)
        return halo_backward(g, q, k, v, out, lse, dout, dq, dk, dv);

#define BWD_BLOCK(j, i) backward_block(W, I, J, w, p, (j), (i))
    /* Fetch block (w+1, p+1), the one the forward ended with. */
    cpa_tensor_copy(k_view(g, g->kv[1], g->idx), k);
    cpa_tensor_copy(v_view(g, g->kv[1], g->idx), v);
    if (steps > 1) {
        say_step(g, "backward", 0);
        /* the sender's window picks the communicator (W = 1 when truncated) */
        const int from_w = J < I ? pr.shift_from : (w + 1) % I;
        CPA_TRY(post(g, g->kv[1], g->idx, pr.shift_to, w, g->kv[0], BWD_BLOCK(0, 0),
                     pr.shift_from, from_w, TAG_SHIFT, &h));
        CPA_TRY(cpa_xfer_wait(&g->xfer, h));
    } else {
        memcpy(g->kv[0], g->kv[1], sizeof(float) * (size_t)kv_of(g, g->idx));
    }
    cpa_tensor_zero(dq);

    int cur = 0, acc = 1, step = 0, hd = -1; /* hd: the dKV transfer in flight */
    for (int j = 0; j < J && s == CPA_OK; ++j) {
        int round_send = cur, round_recv = -1, ho = -1;
        if (j < J - 1) { /* outer KV ring, reversed: to the previous window */
            round_recv = free_buffer(g, cur, -1, -1);
            s = post(g, g->kv[cur], BWD_BLOCK(j, 0), pr.outer_to, w, g->kv[round_recv],
                     BWD_BLOCK(j + 1, 0), pr.outer_from, (w + 1) % I, TAG_KV_OUTER, &ho);
        }
        for (int i = 0; i < W && s == CPA_OK; ++i, ++step) {
            int nxt = -1, hi = -1;
            if (i < W - 1) {
                nxt = free_buffer(g, cur, round_send, round_recv);
                s = post(g, g->kv[cur], BWD_BLOCK(j, i), pr.inner_to, p, g->kv[nxt],
                         BWD_BLOCK(j, i + 1), pr.inner_from, (p + 1) % W, TAG_KV_INNER, &hi);
                if (s != CPA_OK)
                    break;
            }
            /* Gradients of the held block: dQ straight into dq; dK/dV into a
             * zeroed block accumulator (the first step: the one that travels). */
            say_step(g, "backward", step + 1);
            const int64_t tt = cpa_trace_t0();
            float *blk = step == 0 ? g->dkv[acc] : g->dkv[0];
            const int owner = BWD_BLOCK(j, i);
            memset(blk, 0, sizeof(float) * (size_t)kv_of(g, owner));
            cpa_attn_desc d;
            cpa_piece qp[CPA_SPLIT_MAX_PIECES], kp[CPA_SPLIT_MAX_PIECES];
            block_desc(g, owner, q, g->kv[cur], &d, qp, kp);
            const double flops = cpa_attn_forward_flops(&d);
            double t0 = cpa_wtime();
            if (flops > 0.0) /* else no visible pair: the block adds nothing */
                s = cpa_attn_backward(g->ctx, &d, out, lse, dout, dq, k_view(g, blk, owner),
                                      v_view(g, blk, owner));
            g->compute_s += cpa_wtime() - t0;
            g->flops += 2.5 * flops;
            CPA_TRACE_END(tt, "backward step", CPA_TRACE_COMPUTE, CPA_TRACE_LANE_MAIN,
                          {"step", step + 1}, {"owner", owner}, {"flops", 2.5 * flops});
            if (s != CPA_OK)
                break;
            if (step > 0) { /* the accumulator of this block arrived in dkv[acc] */
                s = cpa_xfer_wait(&g->xfer, hd);
                if (s != CPA_OK)
                    break;
                add_into(g->dkv[acc], blk, kv_of(g, owner));
            }
            if (step < steps - 1) { /* pass it on to the block's next visitor */
                int inbox = acc == 1 ? 2 : 1;
                /* and receive the accumulator of the block processed next */
                const int next = i < W - 1 ? BWD_BLOCK(j, i + 1) : BWD_BLOCK(j + 1, 0);
                if (i < W - 1)
                    s = post(g, g->dkv[acc], owner, pr.intra_to, p, g->dkv[inbox], next,
                             pr.intra_from, (p + 1) % W, TAG_DKV_INTRA, &hd);
                else
                    s = post(g, g->dkv[acc], owner, pr.inter_to, w, g->dkv[inbox], next,
                             pr.inter_from, (w + 1) % I, TAG_DKV_INTER, &hd);
                acc = inbox;
            }
            if (hi >= 0) {
                cpa_status sw = cpa_xfer_wait(&g->xfer, hi);
                s = s != CPA_OK ? s : sw;
                cur = nxt;
            }
        }
        if (ho >= 0) {
            cpa_status sw = cpa_xfer_wait(&g->xfer, ho);
            s = s != CPA_OK ? s : sw;
            cur = round_recv;
        }
    }
#undef BWD_BLOCK
    if (s != CPA_OK) {
        cpa_xfer_drain(&g->xfer);
        return s;
    }
    /* The last block visited is my own, and its accumulator holds all R
     * contributions. */
    cpa_tensor_copy(dk, k_view(g, g->dkv[acc], g->idx));
    cpa_tensor_copy(dv, v_view(g, g->dkv[acc], g->idx));
    return CPA_OK;
}

/* ---- the table row (megatron_cp_algo) --------------------------------------- */

cpa_status cpa_window_rule(int W, int R, const char *of)
{
    if (W != 1 && (W < 1 || W >= R || R % W != 0))
        return cpa_error(CPA_ERR_ARG, "--cp-window-size %d with %s %d: the window must be 1, or "
                         "satisfy 1 < W < %s and %s %% W == 0 (double ring: windows of W ranks)",
                         W, of, R, of, of);
    return CPA_OK;
}

cpa_split cpa_balanced_split(const cpa_cp_config *c)
{
    cpa_split s;
    memset(&s, 0, sizeof s);
    s.P = c->cp_size, s.U = 1;
    s.kind = c->mask.kind == CPA_MASK_CAUSAL ? CPA_SPLIT_ZIGZAG : CPA_SPLIT_CONTIGUOUS;
    /* A causal window makes every query see at most N keys: the contiguous
     * split is balanced, and lets the plain ring stop at the window. */
    if (c->mask.kind == CPA_MASK_CAUSAL && c->mask.window > 0 && c->window == 1 &&
        c->algo == CPA_ALGO_RING)
        s.kind = CPA_SPLIT_CONTIGUOUS;
    if (c->balance == CPA_BALANCE_DOCUMENTS) {
        s.kind = CPA_SPLIT_CHUNKS;
        s.chunks_per_rank = cpa_split_document_chunks(c->seq_length, c->cp_size);
    }
    return s;
}

static cpa_split ring_split(const cpa_cp_config *c)
{
    return cpa_balanced_split(c);
}

static cpa_status ring_validate(const cpa_cp_config *c)
{
    return cpa_window_rule(c->window, c->cp_size, "--context-parallel-size");
}

static cpa_ring_shape ring_shape(const cpa_cp_config *c)
{
    cpa_ring_shape sh = {.W = c->window, .overlap = c->send_recv_overlap, .mask = c->mask,
                         .impl = c->impl, .layout = c->layout, .S = c->seq_length,
                         .B = c->batch, .H = c->num_heads, .G = c->num_kv_heads,
                         .Dqk = c->head_dim, .Dv = c->v_head_dim, .scale = c->softmax_scale};
    return sh;
}

static int64_t ring_state_bytes(const cpa_cp_config *c)
{
    cpa_ring_shape sh = ring_shape(c);
    sh.split = cpa_balanced_split(c); /* a CHUNKS one without its table: the bound */
    return (int64_t)sizeof(cpa_ring) + cpa_ring_bytes(&sh, c->cp_size);
}

static int64_t ring_saved_floats(const cpa_cp_config *c)
{
    (void)c; /* the backward needs only the caller's q, k, v, out, lse */
    return 0;
}

static void ring_kernel_shape(const cpa_cp_config *c, int64_t *H, int64_t *G, int64_t *Sq,
                              int64_t *Sk)
{
    *H = c->num_heads, *G = c->num_kv_heads;
    *Sq = *Sk = cpa_split_max_rows(cpa_balanced_split(c), c->seq_length);
}

void cpa_ring_volume(const cpa_ring_shape *sh, int R, int idx, double *fwd, double *bwd)
{
    /* The engine's schedule, walked for ring rank idx: forward, per round,
     * the inner sends of blocks (j, 0..W-2) and the outer send of block
     * (j, 0) but in the last round; backward, the first block's fetch (my
     * own block), the same pattern over the reversed blocks, and each
     * step's dK/dV accumulator but the last's.  Equal blocks give (T-1)
     * blocks forward and 2T-1 backward, T = rounds x W steps. */
    *fwd = *bwd = 0.0;
    if (R == 1)
        return;
    const cpa_split sp = ring_split_of(sh, R);
    const int64_t h = halo_rows(sh, R);
    if (h > 0) { /* halo: per side, h rows of K/V forward; K/V and dK/dV backward */
        const double hb = 4.0 * (double)block_floats(sh, h);
        const int general = sh->mask.kind != CPA_MASK_CAUSAL;
        const int to_next = idx < R - 1, to_prev = general && idx > 0; /* K/V sends */
        *fwd = (to_next + to_prev) * hb;
        *bwd = *fwd + ((idx > 0) + (general && idx < R - 1)) * hb; /* + dK/dV of my halos */
        return;
    }
    const int W = sh->W, I = R / W, w = idx / W, p = idx % W, J = ring_rounds(sh, R);
    const int steps = J * W;
#define BYTES(owner) (4.0 * (double)block_floats(sh, cpa_split_rows(sp, sh->S, (owner))))
    for (int j = 0; j < J; ++j)
        for (int i = 0; i < W; ++i) {
            const int fb = cpa_dring_block(W, I, w, p, j, i, 0);
            const int bb = backward_block(W, I, J, w, p, j, i);
            const int sends = (i < W - 1) + (i == 0 && j < J - 1); /* inner, outer */
            *fwd += sends * BYTES(fb);
            *bwd += sends * BYTES(bb);
            if (j * W + i < steps - 1)
                *bwd += BYTES(bb); /* the accumulator of the block just processed */
        }
    if (steps > 1)
        *bwd += BYTES(idx); /* the backward's first fetch sends my own block */
#undef BYTES
}

static void ring_volume(const cpa_cp_config *c, int rank, double *fwd, double *bwd)
{
    cpa_ring_shape sh = ring_shape(c);
    sh.split = cpa_balanced_split(c);
    int32_t *table = NULL; /* a document-balanced split's blocks follow its table */
    if (cpa_split_fill_table(&sh.split, c->seq_length, c->mask, &table) != CPA_OK) {
        *fwd = *bwd = -1.0;
        return;
    }
    cpa_ring_volume(&sh, c->cp_size, rank, fwd, bwd);
    cpa_free(table);
}

static cpa_status ring_row_init(MPI_Comm comm, const cpa_cp_config *c, cpa_split split,
                                cpa_attn_ctx *ctx, void **state)
{
    cpa_ring *g = cpa_calloc(sizeof *g, "ring state");
    if (!g)
        return CPA_ERR_NOMEM;
    *state = g;
    cpa_ring_shape sh = ring_shape(c);
    sh.split = split;
    return cpa_ring_init(g, comm, &sh, ctx);
}

static void ring_row_destroy(void *state)
{
    if (state)
        cpa_ring_free(state);
    cpa_free(state);
}

static cpa_status ring_row_forward(void *state, float *saved, cpa_tensor q, cpa_tensor k,
                                   cpa_tensor v, cpa_tensor out, cpa_tensor lse)
{
    (void)saved;
    return cpa_ring_forward(state, q, k, v, out, lse);
}

static cpa_status ring_row_backward(void *state, const float *saved, cpa_tensor q, cpa_tensor k,
                                    cpa_tensor v, cpa_tensor out, cpa_tensor lse,
                                    cpa_tensor dout, cpa_tensor dq, cpa_tensor dk, cpa_tensor dv)
{
    (void)saved;
    return cpa_ring_backward(state, q, k, v, out, lse, dout, dq, dk, dv);
}

void cpa_ring_stats(const cpa_ring *g, cpa_plan_stats *st)
{
    cpa_stats_set(st, g->xfer.wait_s, g->xfer.bytes_sent, g->compute_s, g->flops);
}

static void ring_row_stats(const void *state, cpa_plan_stats *st)
{
    cpa_ring_stats(state, st);
}

static void ring_row_set_mask(void *state, cpa_mask mask)
{
    ((cpa_ring *)state)->mask = mask;
}

const cpa_algo_row cpa_ring_row = {
    .id = CPA_ALGO_RING,
    .name = "megatron_cp_algo",
    .summary = "ring attention: K/V blocks travel around the ranks while each attends its "
               "zigzag rows; --cp-window-size W > 1 is the double ring",
    .uses_window = 1,
    .uses_overlap = 1,
    .uses_balance = 1,
    .validate = ring_validate,
    .split = ring_split,
    .state_bytes = ring_state_bytes,
    .saved_floats = ring_saved_floats,
    .kernel_shape = ring_kernel_shape,
    .volume = ring_volume,
    .init = ring_row_init,
    .destroy = ring_row_destroy,
    .forward = ring_row_forward,
    .backward = ring_row_backward,
    .set_mask = ring_row_set_mask,
    .stats = ring_row_stats,
};
