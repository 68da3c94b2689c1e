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
    int rounds;              /* rounds run: I, or fewer when a causal sliding window
                                needs only the nearest blocks (see ring.c) */
    int64_t halo;            /* > 0: a window shorter than a shard: only `halo` rows of
                                the neighbours' K/V travel (see ring.c) */
    float *halo_buf;         /* halo mode: 8 halo-sized buffers (K/V in and out, dK/dV
                                out and in, for the left and right neighbours) */
    cpa_split split;
    int64_t S, B, Sl, Sq, H, G, Dqk, Dv; /* Sl: the most rows a rank holds (buffers);
                                            Sq: my own rows */
    int64_t *rows;           /* [R] rows of each ring rank's block (any S: they differ) */
    cpa_layout layout;
    cpa_mask mask;           /* by global position; the split follows mask.kind */
    cpa_impl impl;           /* the kernel every step calls */
    float scale;
    cpa_attn_ctx *ctx;       /* borrowed */
    int64_t kv_floats;       /* floats of the largest block */
    int nkv;                 /* KV buffers in use: 2 (W=1), 3 (W=2) or 4 */
    float *kv[4];            /* KV block buffers: a block of n rows is K [B,n,G,Dqk] then
                                V [B,n,G,Dv], in `layout`, packed back to back */
    float *dkv[3];           /* dK/dV accumulators, same packing */
    float *out_blk;          /* [B, Sq, H, Dv] a block's partial output, in `layout` */
    float *lse_blk;          /* [B, H, Sq] */
    cpa_xfer xfer;
    double compute_s, flops;
} cpa_ring;

typedef struct cpa_ring_shape {
    cpa_split split;   /* CHUNKS: this assignment; any other kind: the ring's own
                          (zigzag for causal masks, contiguous for general) */
    int W, overlap;
    cpa_mask mask;
    cpa_impl impl;
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
/* Bytes ring rank `idx` sends in a forward and in a backward (its blocks'
 * sizes walked through the schedule); the last call's counters. */
void cpa_ring_volume(const cpa_ring_shape *shape, int R, int idx, double *fwd, double *bwd);
void cpa_ring_stats(const cpa_ring *g, cpa_plan_stats *st);

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
    int64_t B, Sl, Sf;       /* rows before (Sl: mine) and after (Sf: the group's) the
                                all-to-all */
    int64_t *rows, *row0;    /* [U], [U+1]: group rank j holds gathered rows
                                row0[j] .. row0[j+1]-1 (any S: counts differ) */
    int64_t Smax;            /* the most rows a group rank holds */
    int *counts;             /* [4U] all-to-all send/receive counts and displacements */
    int64_t H, G, Hl, Gl, Dqk, Dv;
    cpa_layout layout;
    int *q_heads;            /* [U, Hl] query heads group rank j works on */
    int *kv_heads;           /* [U, Gl] the key/value heads it needs (replicated when G < U) */
    int *ident;              /* 0, 1, ... */
    float *send, *recv;      /* all-to-all slabs [U, slab] */
    int64_t slab;            /* floats per destination, the largest tensor's */
    /* head-sharded tensors, in `layout`: [B, Sf, Hl or Gl, D], lse [B, Hl, Sf].
     * q, k, v, out, lse are the forward's state: a caller's saved buffer
     * (cpa_ulysses_saved_floats) or, without one, `scratch`. */
    float *scratch, *dout, *dq, *dk, *dv;
    /* inner attention */
    cpa_ring *ring;          /* NULL: the local kernel */
    cpa_attn_ctx *ctx;
    cpa_mask mask;
    cpa_impl impl;
    float scale;
    double wait_s, bytes_sent, compute_s, flops;
} cpa_ulysses;

typedef struct cpa_ulysses_shape {
    int64_t B, S, H, G, Dqk, Dv; /* S: the rows the group holds in all (U*Sl) */
    cpa_layout layout;
    cpa_mask mask;
    cpa_impl impl;
    float scale;
} cpa_ulysses_shape;

/* Local KV heads each group rank receives: G/U when U divides G, 1 when a
 * rank's query heads all share one KV head, else one per query head. */
int64_t cpa_ulysses_kv_heads(int64_t H, int64_t G, int U);

/* Bytes cpa_ulysses_init allocates for a group of U ranks. */
int64_t cpa_ulysses_bytes(const cpa_ulysses_shape *shape, int U);

/* Floats of the forward's saved state: the head-sharded q, k, v, out, lse. */
int64_t cpa_ulysses_saved_floats(const cpa_ulysses_shape *shape, int U);

/* Bytes group rank u sends in a forward and in a backward given its saved
 * state (the all-to-alls only; an inner ring adds its own). */
void cpa_ulysses_volume(const cpa_ulysses_shape *shape, int U, int u, double *fwd, double *bwd);

cpa_status cpa_ulysses_init(cpa_ulysses *x, MPI_Comm comm, const cpa_ulysses_shape *shape,
                            cpa_ring *inner_ring, cpa_attn_ctx *ctx);
void cpa_ulysses_free(cpa_ulysses *x);
/* `saved` (cpa_ulysses_saved_floats, may be NULL) receives the forward's
 * state; the backward starts from it (5 all-to-alls fewer) or, given NULL,
 * rebuilds it from q, k, v, out, lse. */
cpa_status cpa_ulysses_forward(cpa_ulysses *x, float *saved, cpa_tensor q, cpa_tensor k,
                               cpa_tensor v, cpa_tensor out, cpa_tensor lse);
cpa_status cpa_ulysses_backward(cpa_ulysses *x, const float *saved, cpa_tensor q, cpa_tensor k,
                                cpa_tensor v, cpa_tensor out, cpa_tensor lse, cpa_tensor dout,
                                cpa_tensor dq, cpa_tensor dk, cpa_tensor dv);

/* The last call's counters; the engine's shape for a plan of `c` over S
 * gathered rows (hybrid.c reuses it). */
void cpa_ulysses_stats(const cpa_ulysses *x, cpa_plan_stats *st);
cpa_ulysses_shape cpa_ulysses_shape_of(const cpa_cp_config *c, int64_t S);

/* The two all-to-alls (exposed for the exact communication tests).
 * seq_to_heads: sequence-sharded `local` [B, Sl, N, D] -> head-sharded
 * `mine` [B, Sf, nl, D], group rank j receiving heads heads[j*nl ..+nl).
 * heads_to_seq: the reverse; with `accumulate` replicas of a head add up
 * into `local` (which the caller zeroes). */
cpa_status cpa_ulysses_seq_to_heads(cpa_ulysses *x, cpa_tensor local, const int *heads,
                                    int64_t nl, cpa_tensor mine);
cpa_status cpa_ulysses_heads_to_seq(cpa_ulysses *x, cpa_tensor mine, const int *heads,
                                    int64_t nl, cpa_tensor local, int accumulate);

/* ---- the algorithm table's rows ------------------------------------------- */

/* One context-parallel algorithm, as the plan sees it.  Each algorithm's
 * file defines its row over its own state type (ring.c: cpa_ring, ulysses.c:
 * cpa_ulysses, hybrid.c, allgather.c); plan.c holds the table, the common
 * rules and the collective validation, and calls nothing else.  `c` always
 * has v_head_dim resolved and has passed the common rules. */
typedef struct cpa_algo_row {
    cpa_algo id;
    const char *name;
    const char *summary;          /* one line, for help texts */
    int uses_window, uses_ulysses_degree, uses_overlap;
    int uses_balance;             /* --cp-load-balance documents applies */
    cpa_status (*validate)(const cpa_cp_config *c); /* the algorithm's own rules */
    cpa_split (*split)(const cpa_cp_config *c);
    /* What init allocates on one rank, and the floats of one saved state. */
    int64_t (*state_bytes)(const cpa_cp_config *c);
    int64_t (*saved_floats)(const cpa_cp_config *c);
    /* The largest local kernel call: q [B, *Sq, *H, .] against k [B, *Sk, *G, .]. */
    void (*kernel_shape)(const cpa_cp_config *c, int64_t *H, int64_t *G, int64_t *Sq,
                         int64_t *Sk);
    /* Bytes rank `rank` sends per forward and per backward (with saved state). */
    void (*volume)(const cpa_cp_config *c, int rank, double *fwd, double *bwd);
    /* `comm` is the plan's (borrowed); the state may make sub-communicators.
     * `split` is the row's split with a CHUNKS table filled in by the plan. */
    cpa_status (*init)(MPI_Comm comm, const cpa_cp_config *c, cpa_split split, cpa_attn_ctx *ctx,
                       void **state);
    void (*destroy)(void *state);
    /* saved: saved_floats(c) floats or NULL (keep nothing / rebuild). */
    cpa_status (*forward)(void *state, float *saved, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                          cpa_tensor out, cpa_tensor lse);
    cpa_status (*backward)(void *state, const float *saved, cpa_tensor q, cpa_tensor k,
                           cpa_tensor v, cpa_tensor out, cpa_tensor lse, cpa_tensor dout,
                           cpa_tensor dq, cpa_tensor dk, cpa_tensor dv);
    /* Counters of the last call: wait, bytes sent, compute, flops. */
    void (*stats)(const void *state, cpa_plan_stats *st);
    /* The documents changed (cpa_plan_set_documents): the new mask, whose
     * cu_seqlens the plan owns; the split and the schedule stay. */
    void (*set_mask)(void *state, cpa_mask mask);
} cpa_algo_row;

extern const cpa_algo_row cpa_ulysses_row, cpa_ring_row, cpa_hybrid_row, cpa_allgather_row;

/* A row's counters into the plan's stats (total_s is the plan's). */
static inline void cpa_stats_set(cpa_plan_stats *st, double wait_s, double bytes_sent,
                                 double compute_s, double flops)
{
    st->wait_s = wait_s, st->bytes_sent = bytes_sent;
    st->compute_s = compute_s, st->flops = flops;
}

/* The split of the rows that take --cp-load-balance (ring, all-gather):
 * CHUNKS (its table to be filled by the plan) for DOCUMENTS, else zigzag
 * for causal masks and contiguous for general ones. */
cpa_split cpa_balanced_split(const cpa_cp_config *c);

/* A CHUNKS split gets its table (cpa_split_balance over `mask`) in
 * *table, which the caller frees; other kinds are left as they are
 * (*table = NULL). */
cpa_status cpa_split_fill_table(cpa_split *split, int64_t S, cpa_mask mask, int32_t **table);

/* Every rank learns whether any rank failed; if one did, all return the
 * status and message of the lowest failing rank (plans, the planner). */
cpa_status cpa_cp_agree(MPI_Comm comm, cpa_status mine);

/* The planner's cost model of one configuration's schedule (planner.c),
 * for a sequence that divides evenly: what travels, in how many steps and
 * calls.  Its byte totals must equal the engines' counters (bytes_sent);
 * the planner tests check them for every algorithm. */
typedef struct cpa_planner_sched {
    int U;                  /* Ulysses group (Ulysses: P; hybrid: U; else 1) */
    int ring_steps, window; /* ring steps per call (0: no ring), its window */
    double block_bytes;     /* one K/V block (= one dK/dV accumulator) */
    double ring_fwd_bytes, ring_bwd_bytes;
    int a2a_fwd_calls, a2a_bwd_calls;
    double a2a_fwd_bytes, a2a_bwd_bytes, a2a_slab_floats;
    double gather_bytes;    /* each all-gather of K/V (allgather_cp_algo) */
    double scatter_bytes;   /* its dK/dV reduce-scatter */
    double fwd_bytes, bwd_bytes; /* totals per rank */
} cpa_planner_sched;

void cpa_planner_schedule(const cpa_cp_config *config, cpa_planner_sched *s);

/* Rules shared by rows: the double ring's window (of `of` = R ranks). */
cpa_status cpa_window_rule(int W, int R, const char *of);


#endif
