/*
 * hybrid.c — hybrid_cp_algo (--ulysses-degree-in-cp U): Ulysses around a
 * ring, ALGORITHMS.md §5.  The P ranks form R = P/U ring groups of U
 * consecutive ranks for the all-to-alls (the Ulysses groups) and U rings of
 * R ranks strided by U.  A layer runs the Ulysses engine of ulysses.c with
 * the ring engine of ring.c as its inner attention, so the hybrid is a
 * composition of the two, not a third copy of either.
 *
 * Split.  Causal masks cut the sequence zigzag at the ring level (2R
 * chunks) and each ring rank's piece contiguously into U parts
 * (cpa_split with U > 1): the Ulysses all-to-all then rebuilds exactly the
 * ring-level zigzag piece the inner ring expects.
 *
 * Any S: the ring ranks' row counts differ by a few rows; each Ulysses
 * group gathers its own ring rank's count, the inner ring sends each
 * block's own count.
 *
 * Saved state: the Ulysses engine's head-sharded q, k, v, out, lse over the
 * rows of the ring rank (9 all-to-alls per layer with it), sized for the
 * largest ring rank.
 */
#include "cp_internal.h"

typedef struct hybrid_state {
    MPI_Comm ucomm, rcomm; /* the Ulysses group and the ring group (owned) */
    cpa_ring ring;         /* inner: over H/U heads, S/R rows per ring rank */
    cpa_ulysses uly;       /* outer: over the U ranks of the Ulysses group */
} hybrid_state;

static cpa_split hybrid_split(const cpa_cp_config *c)
{
    /* Ring-level chunks (zigzag for causal masks, else contiguous) cut into
     * U parts: with any S, the group's parts make exactly the ring rank's. */
    cpa_split s = {.kind = CPA_SPLIT_CONTIGUOUS, .P = c->cp_size, .U = c->ulysses_degree};
    if (c->mask.kind == CPA_MASK_CAUSAL)
        s.kind = CPA_SPLIT_ZIGZAG;
    return s;
}

static cpa_status hybrid_validate(const cpa_cp_config *c)
{
    const int U = c->ulysses_degree, P = c->cp_size;
    if (U <= 1 || P % U != 0)
        return cpa_error(CPA_ERR_ARG, "--ulysses-degree-in-cp %d with --context-parallel-size %d: "
                         "hybrid_cp_algo needs U > 1 and P %% U == 0", U, P);
    if (U == P)
        return cpa_error(CPA_ERR_ARG, "--ulysses-degree-in-cp %d equals --context-parallel-size: "
                         "that is pure Ulysses, use --context-parallel-algo ulysses_cp_algo", U);
    if (c->num_heads % ((long long)U * c->tp_size) != 0)
        return cpa_error(CPA_ERR_ARG, "--num-attention-heads %lld is not divisible by "
                         "--ulysses-degree-in-cp %d x --tensor-model-parallel-size %d "
                         "(H %% (U*TP) == 0)", (long long)c->num_heads, U, c->tp_size);
    return cpa_window_rule(c->window, P / U, "the ring size P/U =");
}

/* The inner ring: H/U query heads and the KV heads they need, over R ranks. */
static cpa_ring_shape inner_ring_shape(const cpa_cp_config *c)
{
    const int U = c->ulysses_degree;
    cpa_ring_shape sh = {.W = c->window, .overlap = c->send_recv_overlap, .mask = c->mask,
                         .impl = c->impl, .layout = c->layout, .S = c->seq_length,
                         .B = c->batch, .H = c->num_heads / U,
                         .G = cpa_ulysses_kv_heads(c->num_heads, c->num_kv_heads, U),
                         .Dqk = c->head_dim, .Dv = c->v_head_dim, .scale = c->softmax_scale};
    return sh;
}

/* The rows ring rank rho holds (the inner ring's split), or with rho < 0
 * the most any holds. */
static int64_t ring_rank_rows(const cpa_cp_config *c, int rho)
{
    const int R = c->cp_size / c->ulysses_degree;
    cpa_split sp = {.kind = c->mask.kind == CPA_MASK_CAUSAL ? CPA_SPLIT_ZIGZAG
                                                             : CPA_SPLIT_CONTIGUOUS,
                    .P = R, .U = 1};
    return rho < 0 ? cpa_split_max_rows(sp, c->seq_length) : cpa_split_rows(sp, c->seq_length, rho);
}

/* The Ulysses engine over the rows of ring rank rho (rho < 0: the largest). */
static cpa_ulysses_shape outer_shape(const cpa_cp_config *c, int rho)
{
    return cpa_ulysses_shape_of(c, ring_rank_rows(c, rho));
}

static int64_t hybrid_state_bytes(const cpa_cp_config *c)
{
    const int U = c->ulysses_degree, R = c->cp_size / U;
    cpa_ring_shape rs = inner_ring_shape(c);
    cpa_ulysses_shape us = outer_shape(c, -1);
    return (int64_t)sizeof(hybrid_state) + cpa_ring_bytes(&rs, R) + cpa_ulysses_bytes(&us, U);
}

static int64_t hybrid_saved_floats(const cpa_cp_config *c)
{
    cpa_ulysses_shape us = outer_shape(c, -1); /* the largest ring rank's: same on every rank */
    return cpa_ulysses_saved_floats(&us, c->ulysses_degree);
}

static void hybrid_kernel_shape(const cpa_cp_config *c, int64_t *H, int64_t *G, int64_t *Sq,
                                int64_t *Sk)
{
    const int U = c->ulysses_degree, R = c->cp_size / U;
    *H = c->num_heads / U, *G = cpa_ulysses_kv_heads(c->num_heads, c->num_kv_heads, U);
    (void)R;
    *Sq = *Sk = ring_rank_rows(c, -1); /* the inner ring: blocks of the gathered rows */
}

static void hybrid_volume(const cpa_cp_config *c, int rank, double *fwd, double *bwd)
{
    const int U = c->ulysses_degree, R = c->cp_size / U;
    cpa_ring_shape rs = inner_ring_shape(c);
    cpa_ulysses_shape us = outer_shape(c, rank / U);
    double rf, rb, uf, ub;
    cpa_ring_volume(&rs, R, rank / U, &rf, &rb);
    cpa_ulysses_volume(&us, U, rank % U, &uf, &ub);
    *fwd = rf + uf;
    *bwd = rb + ub;
}

static void hybrid_destroy(void *state)
{
    hybrid_state *h = state;
    if (!h)
        return;
    cpa_ulysses_free(&h->uly);
    cpa_ring_free(&h->ring);
    MPI_Comm *comms[] = {&h->ucomm, &h->rcomm};
    for (int i = 0; i < 2; ++i)
        if (*comms[i] != MPI_COMM_NULL)
            MPI_Comm_free(comms[i]);
    cpa_free(h);
}

static cpa_status hybrid_init(MPI_Comm comm, const cpa_cp_config *c, cpa_split split,
                              cpa_attn_ctx *ctx, void **state)
{
    (void)split; /* zigzag in U parts: the inner ring makes its own from the mask */
    hybrid_state *h = cpa_calloc(sizeof *h, "hybrid state");
    if (!h)
        return CPA_ERR_NOMEM;
    h->ucomm = h->rcomm = MPI_COMM_NULL;
    *state = h;
    const int U = c->ulysses_degree;
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    /* Ulysses groups: U consecutive ranks; ring groups: strided by U. */
    int rc = MPI_Comm_split(comm, rank / U, rank % U, &h->ucomm);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_split(comm, rank % U, rank / U, &h->rcomm);
    if (rc != MPI_SUCCESS)
        return cpa_mpi_error(rc, "MPI_Comm_split (hybrid groups)");
    cpa_ring_shape rs = inner_ring_shape(c);
    CPA_TRY(cpa_ring_init(&h->ring, h->rcomm, &rs, ctx));
    cpa_ulysses_shape us = outer_shape(c, rank / U);
    return cpa_ulysses_init(&h->uly, h->ucomm, &us, &h->ring, ctx);
}

static cpa_status hybrid_forward(void *state, float *saved, cpa_tensor q, cpa_tensor k,
                                 cpa_tensor v, cpa_tensor out, cpa_tensor lse)
{
    hybrid_state *h = state;
    return cpa_ulysses_forward(&h->uly, saved, q, k, v, out, lse);
}

static cpa_status hybrid_backward(void *state, const float *saved, cpa_tensor q, cpa_tensor k,
                                  cpa_tensor v, cpa_tensor out, cpa_tensor lse, cpa_tensor dout,
                                  cpa_tensor dq, cpa_tensor dk, cpa_tensor dv)
{
    hybrid_state *h = state;
    return cpa_ulysses_backward(&h->uly, saved, q, k, v, out, lse, dout, dq, dk, dv);
}

static void hybrid_stats(const void *state, cpa_plan_stats *st)
{
    const hybrid_state *h = state;
    cpa_ulysses_stats(&h->uly, st); /* it adds the inner ring's */
}

static void hybrid_set_mask(void *state, cpa_mask mask)
{
    hybrid_state *h = state;
    h->uly.mask = mask; /* its inner ring is h->ring */
    h->ring.mask = mask;
}

const cpa_algo_row cpa_hybrid_row = {
    .id = CPA_ALGO_HYBRID,
    .name = "hybrid_cp_algo",
    .summary = "Ulysses all-to-alls inside groups of U ranks around a (double) ring over P/U "
               "ranks (--ulysses-degree-in-cp U)",
    .uses_window = 1,
    .uses_ulysses_degree = 1,
    .uses_overlap = 1,
    .validate = hybrid_validate,
    .split = hybrid_split,
    .state_bytes = hybrid_state_bytes,
    .saved_floats = hybrid_saved_floats,
    .kernel_shape = hybrid_kernel_shape,
    .volume = hybrid_volume,
    .init = hybrid_init,
    .destroy = hybrid_destroy,
    .forward = hybrid_forward,
    .backward = hybrid_backward,
    .set_mask = hybrid_set_mask,
    .stats = hybrid_stats,
};
