/*
 * allgather.c — all-gather K/V context parallelism (allgather_cp_algo):
 * TransformerEngine's cp_comm_type="all_gather", the scheme Llama 3 trained
 * with.  Each rank all-gathers K and V of the whole sequence and attends its
 * own query rows against them; the backward all-gathers K and V again,
 * computes dQ for its rows and dK/dV for every key, and a reduce-scatter
 * returns to each rank the summed dK/dV of its own rows.
 *
 * Split: zigzag for a causal mask (every rank then sees the same number of
 * visible pairs), contiguous for the general mask — the ring's split, so a
 * model can switch between the two without reordering its data.
 *
 * Memory: O(S) per rank for K/V (the price of the scheme, small with GQA:
 * G heads, not H): the gathered slabs [P, slab] in rank order, the K/V in
 * natural order [B, S, G, D] (bshd, the kernel reads them through pieces-free
 * views), and in the backward their dK/dV accumulators.  Communication:
 * forward (P-1)·slab floats sent, backward twice that; nothing to save
 * between forward and backward (the backward gathers again rather than hold
 * O(S) per layer).
 *
 * Any S: ranks hold row counts that differ by a few rows; every slab is
 * sized for the largest (the rest of a shorter rank's slab travels as
 * zeros: at most a few rows per rank), so the collectives stay the plain
 * fixed-count ones.
 *
 * Large slabs.  The gathered buffer is laid out chunk-major: chunk c of the
 * slab (at most cpa_comm_max_count() floats) of every rank sits together as
 * [P, n_c], so every all-gather and reduce-scatter is a plain call on
 * predefined types whatever the size.
 */
#include "cp_internal.h"
#include "kernel_internal.h"
#include "trace.h"

#include <string.h>

typedef struct ag_state {
    MPI_Comm comm; /* the plan's (borrowed) */
    int P, r;
    cpa_split split;
    int64_t B, S, Sl, Smax, H, G, Dqk, Dv; /* Sl: my rows; Smax: the most any rank holds */
    cpa_layout layout;
    cpa_mask mask;
    cpa_impl impl;
    float scale;
    cpa_attn_ctx *ctx;
    int64_t slab, chunk;  /* floats of one rank's K then V rows (Smax of them); chunk length */
    float *mine;          /* [slab]: my K [B, Sl, G, Dqk] then V [B, Sl, G, Dv] rows */
    float *all;           /* [P, slab], chunk-major (see the top) */
    float *k, *v;         /* natural order, bshd [B, S, G, Dqk] and [B, S, G, Dv] */
    float *dk, *dv;       /* their gradients, same shapes */
    double wait_s, bytes_sent, compute_s, flops;
} ag_state;

static cpa_split ag_split(const cpa_cp_config *c)
{
    return cpa_balanced_split(c);
}

static cpa_status ag_validate(const cpa_cp_config *c)
{
    (void)c; /* the split's divisibility is all it needs */
    return CPA_OK;
}

static int64_t kv_row_floats(const cpa_cp_config *c)
{
    return c->num_kv_heads * (c->head_dim + c->v_head_dim);
}

/* The most rows a rank holds (a document-balanced split: the bound). */
static int64_t most_rows(const cpa_cp_config *c)
{
    return cpa_split_max_rows(cpa_balanced_split(c), c->seq_length);
}

static int64_t ag_state_bytes(const cpa_cp_config *c)
{
    /* mine (Smax rows), all (P slabs), k+v and dk+dv (S rows each). */
    const int64_t P = c->cp_size, rows = c->batch * c->seq_length;
    const int64_t slab = c->batch * most_rows(c) * kv_row_floats(c);
    return (int64_t)sizeof(ag_state) +
           (int64_t)sizeof(float) * (slab + P * slab + 2 * rows * kv_row_floats(c));
}

static int64_t ag_saved_floats(const cpa_cp_config *c)
{
    (void)c;
    return 0;
}

static void ag_kernel_shape(const cpa_cp_config *c, int64_t *H, int64_t *G, int64_t *Sq,
                            int64_t *Sk)
{
    *H = c->num_heads, *G = c->num_kv_heads;
    *Sq = most_rows(c), *Sk = c->seq_length;
}

static void ag_volume(const cpa_cp_config *c, int rank, double *fwd, double *bwd)
{
    (void)rank; /* every rank sends P-1 slabs of the same (largest) size */
    const int P = c->cp_size;
    cpa_split sp = cpa_balanced_split(c);
    int32_t *table = NULL; /* the exact largest rank of a document-balanced split */
    if (cpa_split_fill_table(&sp, c->seq_length, c->mask, &table) != CPA_OK) {
        *fwd = *bwd = -1.0;
        return;
    }
    const double slab =
        4.0 * (double)(c->batch * cpa_split_max_rows(sp, c->seq_length) * kv_row_floats(c));
    cpa_free(table);
    *fwd = (P - 1) * slab;       /* the all-gather */
    *bwd = 2.0 * (P - 1) * slab; /* the all-gather again and the reduce-scatter */
}

static void ag_destroy(void *state)
{
    ag_state *g = state;
    if (!g)
        return;
    float *bufs[] = {g->mine, g->all, g->k, g->v, g->dk, g->dv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; ++i)
        cpa_free(bufs[i]);
    cpa_free(g);
}

static cpa_status ag_init(MPI_Comm comm, const cpa_cp_config *c, cpa_split split,
                          cpa_attn_ctx *ctx, void **state)
{
    ag_state *g = cpa_calloc(sizeof *g, "all-gather state");
    if (!g)
        return CPA_ERR_NOMEM;
    *state = g;
    g->comm = comm;
    MPI_Comm_size(comm, &g->P);
    MPI_Comm_rank(comm, &g->r);
    g->split = split;
    g->B = c->batch, g->S = c->seq_length;
    g->Sl = cpa_split_rows(split, g->S, g->r);
    g->Smax = cpa_split_max_rows(split, g->S);
    g->H = c->num_heads, g->G = c->num_kv_heads, g->Dqk = c->head_dim, g->Dv = c->v_head_dim;
    g->layout = c->layout;
    g->mask = c->mask;
    g->impl = c->impl;
    g->scale = c->softmax_scale;
    g->ctx = ctx;
    g->slab = g->B * g->Smax * kv_row_floats(c);
    g->chunk = cpa_comm_max_count();
    const int64_t kn = g->B * g->S * g->G;
    struct {
        float **p;
        int64_t n;
        const char *what;
    } bufs[] = {{&g->mine, g->slab, "all-gather send slab"},
                {&g->all, g->P * g->slab, "all-gather slabs of every rank"},
                {&g->k, kn * g->Dqk, "all-gathered K"}, {&g->v, kn * g->Dv, "all-gathered V"},
                {&g->dk, kn * g->Dqk, "all-gather dK"}, {&g->dv, kn * g->Dv, "all-gather dV"}};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; ++i)
        if (!(*bufs[i].p = cpa_calloc(sizeof(float) * (size_t)bufs[i].n, bufs[i].what)))
            return CPA_ERR_NOMEM;
    return CPA_OK;
}

/* ---- the chunk-major slabs ------------------------------------------------- */

/* Where element e of rank j's slab lives in `all`, and how many elements
 * from there on stay in the same chunk. */
static float *slot(const ag_state *g, int j, int64_t e, int64_t *run)
{
    const int64_t c0 = e / g->chunk * g->chunk;
    const int64_t n = g->slab - c0 < g->chunk ? g->slab - c0 : g->chunk;
    *run = c0 + n - e;
    return g->all + (int64_t)g->P * c0 + (int64_t)j * n + (e - c0);
}

/* Copy n floats between rank j's slab (from element e) and `buf`. */
static void slab_copy(const ag_state *g, int j, int64_t e, float *buf, int64_t n, int into_slab)
{
    while (n > 0) {
        int64_t run;
        float *s = slot(g, j, e, &run);
        if (run > n)
            run = n;
        if (into_slab)
            memcpy(s, buf, sizeof(float) * (size_t)run);
        else
            memcpy(buf, s, sizeof(float) * (size_t)run);
        e += run, buf += run, n -= run;
    }
}

/* Rank j's rows between its slab and the natural-order x [B, S, G, dim]
 * (x: k or dk with slab_off 0, v or dv with slab_off 1: after rank j's K
 * part of the slab). */
static void rows_copy(const ag_state *g, int j, float *x, int64_t dim, int64_t slab_off,
                      int into_slab)
{
    cpa_piece pc[CPA_SPLIT_MAX_PIECES];
    int np = 0;
    cpa_split_pieces(g->split, g->S, j, pc, &np);
    const int64_t row = g->G * dim;
    /* V follows rank j's K rows (slab_off 1: the V part) */
    int64_t e = slab_off ? g->B * cpa_split_rows(g->split, g->S, j) * g->G * g->Dqk : 0;
    for (int64_t b = 0; b < g->B; ++b)
        for (int i = 0; i < np; ++i) {
            float *nat = x + (b * g->S + pc[i].pos) * row;
            slab_copy(g, j, e, nat, pc[i].len * row, into_slab);
            e += pc[i].len * row;
        }
}

static cpa_tensor natural(const ag_state *g, float *x, int64_t dim)
{
    return cpa_tensor_attn(x, CPA_LAYOUT_BSHD, g->B, g->S, g->G, dim);
}

static cpa_tensor mine_view(const ag_state *g, int64_t off, int64_t dim)
{
    return cpa_tensor_attn(g->mine + off, CPA_LAYOUT_BSHD, g->B, g->Sl, g->G, dim);
}

static cpa_status wait_one(ag_state *g, MPI_Request *req, int rc, const char *what)
{
    if (rc != MPI_SUCCESS)
        return cpa_mpi_error(rc, what);
    return cpa_comm_wait(1, req, "%s over %d ranks (allgather_cp_algo)", what, g->P);
}

/* K and V of every rank, in natural order. */
static cpa_status gather_kv(ag_state *g, cpa_tensor k, cpa_tensor v)
{
    const int64_t koff = g->B * g->Sl * g->G * g->Dqk;
    cpa_tensor_copy(mine_view(g, 0, g->Dqk), k);
    cpa_tensor_copy(mine_view(g, koff, g->Dv), v);
    const int64_t tt = cpa_trace_t0();
    double t0 = cpa_wtime();
    for (int64_t c0 = 0; c0 < g->slab; c0 += g->chunk) {
        const int n = (int)(g->slab - c0 < g->chunk ? g->slab - c0 : g->chunk);
        MPI_Request req;
        int rc = MPI_Iallgather(g->mine + c0, n, MPI_FLOAT, g->all + (int64_t)g->P * c0, n,
                                MPI_FLOAT, g->comm, &req);
        cpa_status s = wait_one(g, &req, rc, "the K/V all-gather");
        if (s != CPA_OK) {
            g->wait_s += cpa_wtime() - t0;
            return s;
        }
    }
    g->wait_s += cpa_wtime() - t0;
    g->bytes_sent += 4.0 * (double)g->slab * (g->P - 1);
    CPA_TRACE_END(tt, "K/V all-gather", CPA_TRACE_ALLGATHER, CPA_TRACE_LANE_MAIN,
                  {"bytes", 4.0 * (double)g->slab * (g->P - 1)}, {"ranks", g->P});
    for (int j = 0; j < g->P; ++j) {
        rows_copy(g, j, g->k, g->Dqk, 0, 0);
        rows_copy(g, j, g->v, g->Dv, 1, 0);
    }
    return CPA_OK;
}

static void block_desc(const ag_state *g, cpa_tensor q, cpa_piece pc[CPA_SPLIT_MAX_PIECES],
                       cpa_attn_desc *d)
{
    int np = 0;
    cpa_split_pieces(g->split, g->S, g->r, pc, &np);
    memset(d, 0, sizeof *d);
    d->q = q;
    d->k = natural(g, g->k, g->Dqk);
    d->v = natural(g, g->v, g->Dv);
    d->q_rows = (cpa_rows){pc, np}; /* my rows at their global positions */
    d->mask = g->mask;              /* kv_rows: every row at positions 0..S-1 */
    d->softmax_scale = g->scale;
    d->impl = g->impl;
}

static void reset_counters(ag_state *g)
{
    g->wait_s = g->bytes_sent = g->compute_s = g->flops = 0.0;
}

static cpa_status ag_forward(void *state, float *saved, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                             cpa_tensor out, cpa_tensor lse)
{
    (void)saved;
    ag_state *g = state;
    reset_counters(g);
    CPA_TRY(gather_kv(g, k, v));
    cpa_attn_desc d;
    cpa_piece pc[CPA_SPLIT_MAX_PIECES];
    block_desc(g, q, pc, &d);
    const int64_t tt = cpa_trace_t0();
    double t0 = cpa_wtime();
    cpa_status s = cpa_attn_forward(g->ctx, &d, out, lse);
    g->compute_s += cpa_wtime() - t0;
    g->flops += cpa_attn_forward_flops(&d);
    CPA_TRACE_END(tt, "forward step", CPA_TRACE_COMPUTE, CPA_TRACE_LANE_MAIN, {"step", 1},
                  {"owner", g->r}, {"flops", g->flops});
    return s;
}

static cpa_status ag_backward(void *state, const float *saved, cpa_tensor q, cpa_tensor k,
                              cpa_tensor v, cpa_tensor out, cpa_tensor lse, cpa_tensor dout,
                              cpa_tensor dq, cpa_tensor dk, cpa_tensor dv)
{
    (void)saved;
    ag_state *g = state;
    reset_counters(g);
    CPA_TRY(gather_kv(g, k, v));
    cpa_tensor dK = natural(g, g->dk, g->Dqk), dV = natural(g, g->dv, g->Dv);
    cpa_tensor_zero(dq), cpa_tensor_zero(dK), cpa_tensor_zero(dV);
    cpa_attn_desc d;
    cpa_piece pc[CPA_SPLIT_MAX_PIECES];
    block_desc(g, q, pc, &d);
    int64_t tt = cpa_trace_t0();
    double t0 = cpa_wtime();
    CPA_TRY(cpa_attn_backward(g->ctx, &d, out, lse, dout, dq, dK, dV));
    g->compute_s += cpa_wtime() - t0;
    g->flops += 2.5 * cpa_attn_forward_flops(&d);
    CPA_TRACE_END(tt, "backward step", CPA_TRACE_COMPUTE, CPA_TRACE_LANE_MAIN, {"step", 1},
                  {"owner", g->r}, {"flops", g->flops});

    /* Every rank's dK/dV rows into its slab, then the sums of mine. */
    const int64_t koff = g->B * g->Sl * g->G * g->Dqk;
    for (int j = 0; j < g->P; ++j) {
        rows_copy(g, j, g->dk, g->Dqk, 0, 1);
        rows_copy(g, j, g->dv, g->Dv, 1, 1);
    }
    tt = cpa_trace_t0();
    t0 = cpa_wtime();
    for (int64_t c0 = 0; c0 < g->slab; c0 += g->chunk) {
        const int n = (int)(g->slab - c0 < g->chunk ? g->slab - c0 : g->chunk);
        MPI_Request req;
        int rc = MPI_Ireduce_scatter_block(g->all + (int64_t)g->P * c0, g->mine + c0, n,
                                           MPI_FLOAT, MPI_SUM, g->comm, &req);
        cpa_status s = wait_one(g, &req, rc, "the dK/dV reduce-scatter");
        if (s != CPA_OK) {
            g->wait_s += cpa_wtime() - t0;
            return s;
        }
    }
    g->wait_s += cpa_wtime() - t0;
    g->bytes_sent += 4.0 * (double)g->slab * (g->P - 1);
    CPA_TRACE_END(tt, "dK/dV reduce-scatter", CPA_TRACE_ALLGATHER, CPA_TRACE_LANE_MAIN,
                  {"bytes", 4.0 * (double)g->slab * (g->P - 1)}, {"ranks", g->P});
    cpa_tensor_copy(dk, mine_view(g, 0, g->Dqk));
    cpa_tensor_copy(dv, mine_view(g, koff, g->Dv));
    return CPA_OK;
}

static void ag_stats(const void *state, cpa_plan_stats *st)
{
    const ag_state *g = state;
    cpa_stats_set(st, g->wait_s, g->bytes_sent, g->compute_s, g->flops);
}

static void ag_set_mask(void *state, cpa_mask mask)
{
    ((ag_state *)state)->mask = mask;
}

const cpa_algo_row cpa_allgather_row = {
    .id = CPA_ALGO_ALLGATHER,
    .name = "allgather_cp_algo",
    .summary = "all-gather K/V (TransformerEngine cp_comm_type=all_gather, Llama 3): every "
               "rank gathers K and V of the whole sequence and attends its own query rows",
    .uses_balance = 1,
    .validate = ag_validate,
    .split = ag_split,
    .state_bytes = ag_state_bytes,
    .saved_floats = ag_saved_floats,
    .kernel_shape = ag_kernel_shape,
    .volume = ag_volume,
    .init = ag_init,
    .destroy = ag_destroy,
    .forward = ag_forward,
    .backward = ag_backward,
    .set_mask = ag_set_mask,
    .stats = ag_stats,
};
