/*
 * cp_internal.h — the pieces the context-parallel algorithms share inside
 * the library: the ring engine (plain ring is the double ring with W = 1)
 * and small tensor helpers.  Algorithms compose: a plan owns communicators
 * and buffers and calls these engines.
 */
#ifndef CPATTN_CP_INTERNAL_H
#define CPATTN_CP_INTERNAL_H

#include "comm.h"
#include "internal.h"

/* Ring / double-ring attention over the ranks of one communicator, in rank
 * order.  Windows of W consecutive ranks (W = 1: one plain ring).  The
 * sequence split is the ring-level one: zigzag over the R ranks for a
 * causal mask, contiguous for the general mask. */
typedef struct cpa_ring {
    MPI_Comm comm[2];        /* comm[1] == comm[0] unless send/recv overlap: see ring.c */
    int R, W, I, idx, w, p;  /* ring size, window, windows, my index = w*W + p */
    cpa_split split;
    int64_t S, B, Sl, H, G, Dqk, Dv; /* Sl = S / R local rows */
    cpa_layout layout;
    cpa_mask_kind mask;
    float scale;
    cpa_attn_ctx *ctx;       /* borrowed */
    int64_t k_floats, kv_floats;
    int nkv;                 /* KV buffers in use: 2 (W=1), 3 (W=2) or 4 */
    float *kv[4];            /* KV block buffers: K [B,Sl,G,Dqk] then V [B,Sl,G,Dv], in `layout` */
    float *dkv[3];           /* dK/dV accumulators, same packing */
    float *out_blk;          /* [B, Sl, H, Dv] a block's partial output, in `layout` */
    float *lse_blk;          /* [B, H, Sl] */
    cpa_xfer xfer;
    double compute_s, flops;
} cpa_ring;

typedef struct cpa_ring_shape {
    int W, overlap;
    cpa_mask_kind mask;
    cpa_layout layout;
    int64_t S, B, H, G, Dqk, Dv;
    float scale;
} cpa_ring_shape;

/* Bytes cpa_ring_init allocates for a ring of R ranks. */
int64_t cpa_ring_bytes(const cpa_ring_shape *shape, int R);

/* `comm` is used as is (the caller owns it); with overlap a second
 * duplicate is made and owned by the ring. */
cpa_status cpa_ring_init(cpa_ring *g, MPI_Comm comm, const cpa_ring_shape *shape,
                         cpa_attn_ctx *ctx);
void cpa_ring_free(cpa_ring *g);
cpa_status cpa_ring_forward(cpa_ring *g, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                            cpa_tensor out, cpa_tensor lse);
cpa_status cpa_ring_backward(cpa_ring *g, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                             cpa_tensor out, cpa_tensor lse, cpa_tensor dout, cpa_tensor dq,
                             cpa_tensor dk, cpa_tensor dv);

/* The block a rank processes at (round j, inner step i), as a ring index:
 * forward visits window w-j at positions p, p-1, ...; backward the exact
 * reverse, window w+1+j at positions p+1, p+2, ... (ALGORITHMS.md §3).
 * Shared by the engine and the schedule simulation test. */
static inline int cpa_dring_block(int W, int I, int w, int p, int j, int i, int backward)
{
    if (!backward)
        return ((w - j % I + I) % I) * W + ((p - i % W + W) % W);
    return ((w + 1 + j) % I) * W + ((p + 1 + i) % W);
}

/* The peers of rank (w, p) in a double ring of I windows of W, as ring
 * indices, for one direction of travel (ALGORITHMS.md §3).  Forward: KV
 * goes to the next position / next window.  Backward: everything reversed;
 * the dK/dV accumulator goes intra-window to (w, p-1) and inter-window to
 * (w-1, p-1), and the backward starts by fetching block (w+1, p+1).
 * Shared by the engine and the schedule simulation test. */
typedef struct cpa_dring_peers {
    int inner_to, inner_from;   /* KV inside the window */
    int outer_to, outer_from;   /* KV between windows (same position) */
    int intra_to, intra_from;   /* backward dK/dV inside the window */
    int inter_to, inter_from;   /* backward dK/dV between windows */
    int shift_to, shift_from;   /* backward start: fetch block (w+1, p+1) */
} cpa_dring_peers;

static inline int cpa_dring_index(int W, int I, int w, int p)
{
    return ((w % I + I) % I) * W + ((p % W + W) % W);
}

static inline cpa_dring_peers cpa_dring_peers_of(int W, int I, int w, int p, int backward)
{
    cpa_dring_peers x;
    const int d = backward ? -1 : 1;
    x.inner_to = cpa_dring_index(W, I, w, p + d);
    x.inner_from = cpa_dring_index(W, I, w, p - d);
    x.outer_to = cpa_dring_index(W, I, w + d, p);
    x.outer_from = cpa_dring_index(W, I, w - d, p);
    x.intra_to = cpa_dring_index(W, I, w, p - 1);
    x.intra_from = cpa_dring_index(W, I, w, p + 1);
    x.inter_to = cpa_dring_index(W, I, w - 1, p - 1);
    x.inter_from = cpa_dring_index(W, I, w + 1, p + 1);
    x.shift_to = x.inter_to;
    x.shift_from = x.inter_from;
    return x;
}

/* Ulysses: an all-to-all that turns "S/U rows x all heads" into "all rows
 * of the group x H/U heads" around an inner attention, and back.  The inner
 * attention is the local kernel over the gathered rows (ulysses_cp_algo) or
 * a ring over the ring group (hybrid_cp_algo): Ulysses composes with it
 * instead of copying it. */
typedef struct cpa_ulysses {
    MPI_Comm comm;           /* the Ulysses group, in rank order (borrowed) */
    int U, u;
    int64_t B, Sl, Sf;       /* rows before (Sl) and after (Sf = U*Sl) the all-to-all */
    int64_t H, G, Hl, Gl, Dqk, Dv;
    cpa_layout layout;
    int *q_heads;            /* [U, Hl] query heads group rank j works on */
    int *kv_heads;           /* [U, Gl] the key/value heads it needs (replicated when G < U) */
    int *ident;              /* 0, 1, ... */
    float *send, *recv;      /* all-to-all slabs [U, slab] */
    int64_t slab;            /* floats per destination, the largest tensor's */
    /* head-sharded tensors, in `layout`: [B, Sf, Hl or Gl, D], lse [B, Hl, Sf] */
    float *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv;
    const float *saved[5];   /* the last forward's q, k, v, out, lse (see ulysses.c) */
    /* inner attention */
    cpa_ring *ring;          /* NULL: the local kernel */
    cpa_attn_ctx *ctx;
    cpa_mask_kind mask;
    float scale;
    double wait_s, bytes_sent, compute_s, flops;
} cpa_ulysses;

typedef struct cpa_ulysses_shape {
    int64_t B, S, H, G, Dqk, Dv; /* S: the rows the group holds in all (U*Sl) */
    cpa_layout layout;
    cpa_mask_kind mask;
    float scale;
} cpa_ulysses_shape;

/* Local KV heads each group rank receives: G/U when U divides G, 1 when a
 * rank's query heads all share one KV head, else one per query head. */
int64_t cpa_ulysses_kv_heads(int64_t H, int64_t G, int U);

/* Bytes cpa_ulysses_init allocates for a group of U ranks. */
int64_t cpa_ulysses_bytes(const cpa_ulysses_shape *shape, int U);

cpa_status cpa_ulysses_init(cpa_ulysses *x, MPI_Comm comm, const cpa_ulysses_shape *shape,
                            cpa_ring *inner_ring, cpa_attn_ctx *ctx);
void cpa_ulysses_free(cpa_ulysses *x);
cpa_status cpa_ulysses_forward(cpa_ulysses *x, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                               cpa_tensor out, cpa_tensor lse);
cpa_status cpa_ulysses_backward(cpa_ulysses *x, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                                cpa_tensor out, cpa_tensor lse, cpa_tensor dout, cpa_tensor dq,
                                cpa_tensor dk, cpa_tensor dv);

/* The two all-to-alls (exposed for the exact communication tests).
 * seq_to_heads: sequence-sharded `local` [B, Sl, N, D] -> head-sharded
 * `mine` [B, Sf, nl, D], group rank j receiving heads heads[j*nl ..+nl).
 * heads_to_seq: the reverse; with `accumulate` replicas of a head add up
 * into `local` (which the caller zeroes). */
cpa_status cpa_ulysses_seq_to_heads(cpa_ulysses *x, cpa_tensor local, const int *heads,
                                    int64_t nl, cpa_tensor mine);
cpa_status cpa_ulysses_heads_to_seq(cpa_ulysses *x, cpa_tensor mine, const int *heads,
                                    int64_t nl, cpa_tensor local, int accumulate);

/* Copy between 4-d views of the same shape (any strides). */
void cpa_copy4(cpa_tensor dst, cpa_tensor src);
/* Set a 4-d view to zero. */
void cpa_zero4(cpa_tensor t);

#endif
