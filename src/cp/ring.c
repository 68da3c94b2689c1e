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

#include <stdio.h>
#include <string.h>

enum { TAG_KV_INNER = 11, TAG_KV_OUTER = 12, TAG_DKV_INTRA = 13, TAG_DKV_INTER = 14,
       TAG_SHIFT = 15 };

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
    const int64_t Sl = sh->S / R, T = (Sl + sh->mask.window - 2) / Sl + 1;
    return T < I ? (int)T : I;
}

int64_t cpa_ring_bytes(const cpa_ring_shape *sh, int R)
{
    if (R == 1) /* one rank: the kernel on the caller's tensors, no buffers */
        return 0;
    const int64_t Sl = sh->S / R, kv = sh->B * Sl * sh->G * (sh->Dqk + sh->Dv);
    return (int64_t)sizeof(float) *
           ((kv_buffers(sh->W) + 3) * kv + sh->B * Sl * sh->H * sh->Dv + sh->B * sh->H * Sl);
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
    if (sh->split.P > 0) { /* the ring row's own choice */
        g->split = sh->split;
    } else {
        memset(&g->split, 0, sizeof g->split);
        g->split.kind = sh->mask.kind == CPA_MASK_CAUSAL ? CPA_SPLIT_ZIGZAG : CPA_SPLIT_CONTIGUOUS;
        g->split.P = g->R;
        g->split.U = 1;
    }
    g->S = sh->S, g->B = sh->B, g->H = sh->H, g->G = sh->G, g->Dqk = sh->Dqk, g->Dv = sh->Dv;
    g->Sl = sh->S / g->R;
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
    g->k_floats = g->B * g->Sl * g->G * g->Dqk;
    g->kv_floats = g->k_floats + g->B * g->Sl * g->G * g->Dv;
    const size_t kv_bytes = sizeof(float) * (size_t)g->kv_floats;
    /* What this allocates is cpa_ring_bytes(). */
    if (g->R == 1)
        return CPA_OK;
    g->nkv = kv_buffers(g->W);
    for (int i = 0; i < g->nkv; ++i)
        if (!(g->kv[i] = cpa_calloc(kv_bytes, "ring KV buffer")))
            goto fail;
    for (int i = 0; i < 3; ++i)
        if (!(g->dkv[i] = cpa_calloc(kv_bytes, "ring dK/dV accumulator")))
            goto fail;
    g->out_blk = cpa_calloc(sizeof(float) * (size_t)(g->B * g->Sl * g->H * g->Dv), "ring block output");
    g->lse_blk = cpa_calloc(sizeof(float) * (size_t)(g->B * g->H * g->Sl), "ring block lse");
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
    if (g->comm[1] != g->comm[0] && g->comm[1] != MPI_COMM_NULL)
        MPI_Comm_free(&g->comm[1]);
    memset(g, 0, sizeof *g);
}

/* ---- views and block selection ------------------------------------------- */

static cpa_tensor k_view(const cpa_ring *g, float *buf)
{
    return cpa_tensor_attn(buf, g->layout, g->B, g->Sl, g->G, g->Dqk);
}

static cpa_tensor v_view(const cpa_ring *g, float *buf)
{
    return cpa_tensor_attn(buf + g->k_floats, g->layout, g->B, g->Sl, g->G, g->Dv);
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
    d->k = k_view(g, kvbuf);
    d->v = v_view(g, kvbuf);
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

/* Post a KV-sized transfer: send `sendbuf` to rank index `dest`, receive
 * into `recvbuf` from `src`; `dpos`/`spos` are the sender positions that
 * pick the communicator (see the top of the file). */
static cpa_status post(cpa_ring *g, const float *sendbuf, int dest, int my_pos, float *recvbuf,
                       int src, int src_pos, int tag, int *handle)
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
    return cpa_xfer_post(&g->xfer, sendbuf, dest, comm_for(g, my_pos), recvbuf, src,
                         comm_for(g, src_pos), g->kv_floats, tag, what, handle);
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
    int64_t lse_shape[3] = {g->B, g->H, g->Sl};
    cpa_tensor ob = cpa_tensor_attn(g->out_blk, g->layout, g->B, g->Sl, g->H, g->Dv);
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
        block_desc(g, 0, q, k.data, &d, qp, kp); /* views replaced below */
        d.k = k, d.v = v;
        return timed_forward(g, &d, out, lse);
    }
    cpa_tensor_copy(k_view(g, g->kv[0]), k);
    cpa_tensor_copy(v_view(g, g->kv[0]), v);
    const int W = g->W, I = g->I, w = g->w, p = g->p, J = g->rounds;
    const cpa_dring_peers pr = cpa_dring_peers_of(W, I, w, p, 0);
    int cur = 0, first = 1;
    cpa_status s = CPA_OK;
    for (int j = 0; j < J && s == CPA_OK; ++j) {
        int round_send = cur, round_recv = -1, ho = -1;
        if (j < J - 1) { /* outer ring: same position, next window */
            round_recv = free_buffer(g, cur, -1, -1);
            s = post(g, g->kv[cur], pr.outer_to, w, g->kv[round_recv], pr.outer_from,
                     (w - 1 + I) % I, TAG_KV_OUTER, &ho);
        }
        for (int i = 0; i < W && s == CPA_OK; ++i) {
            int nxt = -1, hi = -1;
            if (i < W - 1) {
                nxt = free_buffer(g, cur, round_send, round_recv);
                s = post(g, g->kv[cur], pr.inner_to, p, g->kv[nxt], pr.inner_from,
                         (p - 1 + W) % W, TAG_KV_INNER, &hi);
                if (s != CPA_OK)
                    break;
            }
            say_step(g, "forward", j * W + i + 1);
            s = forward_block(g, cpa_dring_block(W, I, w, p, j, i, 0), g->kv[cur], first, q, out,
                              lse);
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
        block_desc(g, 0, q, k.data, &d, qp, kp); /* views replaced below */
        d.k = k, d.v = v;
        cpa_tensor_zero(dq), cpa_tensor_zero(dk), cpa_tensor_zero(dv);
        double t0 = cpa_wtime();
        s = cpa_attn_backward(g->ctx, &d, out, lse, dout, dq, dk, dv);
        g->compute_s += cpa_wtime() - t0;
        g->flops += 2.5 * cpa_attn_forward_flops(&d);
        return s;
    }

    /* Fetch block (w+1, p+1), the one the forward ended with. */
    cpa_tensor_copy(k_view(g, g->kv[1]), k);
    cpa_tensor_copy(v_view(g, g->kv[1]), v);
    if (steps > 1) {
        say_step(g, "backward", 0);
        /* the sender's window picks the communicator (W = 1 when truncated) */
        const int from_w = J < I ? pr.shift_from : (w + 1) % I;
        CPA_TRY(post(g, g->kv[1], pr.shift_to, w, g->kv[0], pr.shift_from, from_w, TAG_SHIFT,
                     &h));
        CPA_TRY(cpa_xfer_wait(&g->xfer, h));
    } else {
        memcpy(g->kv[0], g->kv[1], sizeof(float) * (size_t)g->kv_floats);
    }
    cpa_tensor_zero(dq);

    int cur = 0, acc = 1, step = 0, hd = -1; /* hd: the dKV transfer in flight */
    for (int j = 0; j < J && s == CPA_OK; ++j) {
        int round_send = cur, round_recv = -1, ho = -1;
        if (j < J - 1) { /* outer KV ring, reversed: to the previous window */
            round_recv = free_buffer(g, cur, -1, -1);
            s = post(g, g->kv[cur], pr.outer_to, w, g->kv[round_recv], pr.outer_from,
                     (w + 1) % I, TAG_KV_OUTER, &ho);
        }
        for (int i = 0; i < W && s == CPA_OK; ++i, ++step) {
            int nxt = -1, hi = -1;
            if (i < W - 1) {
                nxt = free_buffer(g, cur, round_send, round_recv);
                s = post(g, g->kv[cur], pr.inner_to, p, g->kv[nxt], pr.inner_from,
                         (p + 1) % W, TAG_KV_INNER, &hi);
                if (s != CPA_OK)
                    break;
            }
            /* Gradients of the held block: dQ straight into dq; dK/dV into a
             * zeroed block accumulator (the first step: the one that travels). */
            say_step(g, "backward", step + 1);
            float *blk = step == 0 ? g->dkv[acc] : g->dkv[0];
            memset(blk, 0, sizeof(float) * (size_t)g->kv_floats);
            cpa_attn_desc d;
            cpa_piece qp[CPA_SPLIT_MAX_PIECES], kp[CPA_SPLIT_MAX_PIECES];
            const int owner = J < I ? (w - J + 1 + j + I) % I /* truncated, W = 1 */
                                    : cpa_dring_block(W, I, w, p, j, i, 1);
            block_desc(g, owner, q, g->kv[cur], &d, qp, kp);
            const double flops = cpa_attn_forward_flops(&d);
            double t0 = cpa_wtime();
            if (flops > 0.0) /* else no visible pair: the block adds nothing */
                s = cpa_attn_backward(g->ctx, &d, out, lse, dout, dq, k_view(g, blk),
                                      v_view(g, blk));
            g->compute_s += cpa_wtime() - t0;
            g->flops += 2.5 * flops;
            if (s != CPA_OK)
                break;
            if (step > 0) { /* the accumulator of this block arrived in dkv[acc] */
                s = cpa_xfer_wait(&g->xfer, hd);
                if (s != CPA_OK)
                    break;
                add_into(g->dkv[acc], blk, g->kv_floats);
            }
            if (step < steps - 1) { /* pass it on to the block's next visitor */
                int inbox = acc == 1 ? 2 : 1;
                if (i < W - 1)
                    s = post(g, g->dkv[acc], pr.intra_to, p, g->dkv[inbox], pr.intra_from,
                             (p + 1) % W, TAG_DKV_INTRA, &hd);
                else
                    s = post(g, g->dkv[acc], pr.inter_to, w, g->dkv[inbox], pr.inter_from,
                             (w + 1) % I, TAG_DKV_INTER, &hd);
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
    if (s != CPA_OK) {
        cpa_xfer_drain(&g->xfer);
        return s;
    }
    /* The last block visited is my own, and its accumulator holds all R
     * contributions. */
    cpa_tensor_copy(dk, k_view(g, g->dkv[acc]));
    cpa_tensor_copy(dv, v_view(g, g->dkv[acc]));
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
    *H = c->num_heads, *G = c->num_kv_heads, *Sq = *Sk = c->seq_length / c->cp_size;
}

void cpa_ring_volume(const cpa_ring_shape *sh, int R, double *fwd, double *bwd)
{
    /* Forward: T-1 K/V blocks in; backward: the first block's fetch, T-1
     * K/V blocks and T-1 dK/dV accumulators (T = R steps, or fewer under a
     * causal window: ring.c's schedule). */
    const double kv = 4.0 * (double)(sh->B * (sh->S / R) * sh->G * (sh->Dqk + sh->Dv));
    const int T = ring_rounds(sh, R) * sh->W;
    *fwd = T > 1 ? (T - 1) * kv : 0.0;
    *bwd = T > 1 ? (2.0 * T - 1) * kv : 0.0;
}

static void ring_volume(const cpa_cp_config *c, double *fwd, double *bwd)
{
    cpa_ring_shape sh = ring_shape(c);
    sh.split = cpa_balanced_split(c);
    cpa_ring_volume(&sh, c->cp_size, fwd, bwd);
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
    .stats = ring_row_stats,
};
