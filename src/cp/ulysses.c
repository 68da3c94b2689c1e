/*
 * ulysses.c — Ulysses sequence parallelism (ulysses_cp_algo) and the
 * Ulysses half of the hybrid (hybrid_cp_algo), ALGORITHMS.md §4-5.
 *
 * Forward: for each of q, k, v one MPI_Alltoall that scatters heads and
 * gathers rows — [B, Sl, N, D] on each of U ranks becomes [B, U·Sl, N/U, D],
 * group rank j receiving head group j from every rank, concatenated in rank
 * order along the sequence — then the inner attention on the gathered rows,
 * then the output (and its LSE) all-to-all back.  Backward: dout goes the
 * way q went, dq/dk/dv the way out came back (the adjoint all-to-alls).
 * Each all-to-all packs contiguous per-destination slabs, exchanges them,
 * and unpacks into strided views, so every layout works.
 *
 * Any sequence length.  Group rank j holds rows [j·Sf/U, (j+1)·Sf/U) of
 * the Sf gathered rows (rounded down: the split's rule), so counts differ
 * by rank and the exchange is an MPI_Ialltoallv counted in rows of one
 * head group; slabs are spaced for the largest count.
 *
 * GQA.  When U divides G each rank gets G/U key/value heads.  Otherwise the
 * KV heads are replicated so that each rank gets the heads its query heads
 * need (one if they all share a group, else one per query head), and the
 * backward sums the replicas' gradients while unpacking (in rank order, so
 * the sum is deterministic).
 *
 * What the backward reuses.  Like an autograd function, the forward
 * leaves the head-sharded q, k, v, out and lse in a saved state the caller
 * owns (one per layer: cpa_plan_saved); a backward given it needs 4
 * all-to-alls, so a layer costs 9.  Without one the forward works in the
 * engine's scratch and the backward rebuilds the state from its arguments
 * (5 all-to-alls more): always correct, never a guess from pointers.
 *
 * This file also holds the table row of ulysses_cp_algo (the local kernel
 * inside); hybrid.c puts a ring inside the same engine.
 */
#include "cp_internal.h"
#include "kernel_internal.h"
#include "trace.h"

#include <limits.h>
#include <string.h>

int64_t cpa_ulysses_kv_heads(int64_t H, int64_t G, int U)
{
    const int64_t Hl = H / U, per_group = H / G;
    if (G % U == 0)
        return G / U;
    if (per_group % Hl == 0)
        return 1;
    return Hl;
}

int64_t cpa_ulysses_saved_floats(const cpa_ulysses_shape *sh, int U)
{
    const int64_t Hl = sh->H / U, Gl = cpa_ulysses_kv_heads(sh->H, sh->G, U);
    const int64_t qn = sh->B * sh->S * Hl, kn = sh->B * sh->S * Gl;
    return qn * (sh->Dqk + sh->Dv + 1) + kn * (sh->Dqk + sh->Dv);
}

/* First gathered row of group rank j (of U over S rows): the split's rule. */
static int64_t first_row(int64_t S, int U, int j)
{
    return (int64_t)((__int128)j * S / U);
}

int64_t cpa_ulysses_bytes(const cpa_ulysses_shape *sh, int U)
{
    /* The buffers of cpa_ulysses_init (keep the two in step): the slabs,
     * the scratch state and dout, dq, dk, dv. */
    const int64_t Hl = sh->H / U, Gl = cpa_ulysses_kv_heads(sh->H, sh->G, U);
    const int64_t nmax = Hl > Gl ? Hl : Gl, D = sh->Dqk > sh->Dv ? sh->Dqk : sh->Dv;
    const int64_t slab = sh->B * ((sh->S + U - 1) / U) * nmax * D;
    const int64_t qn = sh->B * sh->S * Hl, kn = sh->B * sh->S * Gl;
    return (int64_t)sizeof(float) * (2 * U * slab + cpa_ulysses_saved_floats(sh, U) +
                                     qn * (sh->Dqk + sh->Dv) + kn * (sh->Dqk + sh->Dv)) +
           (int64_t)sizeof(int) * (U * (Hl + Gl) + nmax + 4 * U) + /* head maps, counts */
           (int64_t)sizeof(int64_t) * (2 * U + 1);                 /* the row map */
}

void cpa_ulysses_volume(const cpa_ulysses_shape *sh, int U, int u, double *fwd, double *bwd)
{
    /* seq_to_heads sends my rows of the other ranks' heads (q, k, v
     * forward, dout backward); heads_to_seq sends the other ranks' rows of
     * my heads (out and lse forward, dq, dk, dv backward). */
    const int64_t Hl = sh->H / U, Gl = cpa_ulysses_kv_heads(sh->H, sh->G, U);
    const int64_t mine = first_row(sh->S, U, u + 1) - first_row(sh->S, U, u);
    const double out_rows = 4.0 * (double)sh->B * (double)mine * (U - 1);
    const double in_rows = 4.0 * (double)sh->B * (double)(sh->S - mine);
    *fwd = out_rows * (Hl * sh->Dqk + Gl * (sh->Dqk + sh->Dv)) + in_rows * Hl * (sh->Dv + 1);
    *bwd = out_rows * Hl * sh->Dv + in_rows * (Hl * sh->Dqk + Gl * (sh->Dqk + sh->Dv));
}

cpa_status cpa_ulysses_init(cpa_ulysses *x, MPI_Comm comm, const cpa_ulysses_shape *sh,
                            cpa_ring *inner_ring, cpa_attn_ctx *ctx)
{
    memset(x, 0, sizeof *x);
    x->comm = comm;
    MPI_Comm_size(comm, &x->U);
    MPI_Comm_rank(comm, &x->u);
    const int U = x->U;
    x->B = sh->B, x->Sf = sh->S;
    x->H = sh->H, x->G = sh->G, x->Hl = sh->H / U, x->Dqk = sh->Dqk, x->Dv = sh->Dv;
    x->Gl = cpa_ulysses_kv_heads(sh->H, sh->G, U);
    x->layout = sh->layout;
    x->mask = sh->mask;
    x->impl = sh->impl;
    x->scale = sh->scale;
    x->ring = inner_ring;
    x->ctx = ctx;

    const int64_t hpg = x->H / x->G, nmax = x->Hl > x->Gl ? x->Hl : x->Gl;
    x->q_heads = cpa_malloc(sizeof(int) * (size_t)(U * (x->Hl + x->Gl) + nmax + 4 * U),
                            "Ulysses head maps");
    x->rows = cpa_malloc(sizeof(int64_t) * (size_t)(2 * U + 1), "Ulysses row map"); /* + row0 */
    if (!x->q_heads || !x->rows) {
        cpa_ulysses_free(x);
        return CPA_ERR_NOMEM;
    }
    x->kv_heads = x->q_heads + U * x->Hl;
    x->ident = x->kv_heads + U * x->Gl;
    x->counts = x->ident + nmax;
    x->row0 = x->rows + U;
    x->Smax = 0;
    for (int j = 0; j <= U; ++j)
        x->row0[j] = first_row(x->Sf, U, j);
    for (int j = 0; j < U; ++j) {
        x->rows[j] = x->row0[j + 1] - x->row0[j];
        x->Smax = x->rows[j] > x->Smax ? x->rows[j] : x->Smax;
    }
    x->Sl = x->rows[x->u];
    for (int j = 0; j < U; ++j) {
        for (int64_t i = 0; i < x->Hl; ++i)
            x->q_heads[j * x->Hl + i] = (int)(j * x->Hl + i);
        for (int64_t g = 0; g < x->Gl; ++g)
            x->kv_heads[j * x->Gl + g] =
                x->G % U == 0 ? (int)(j * x->Gl + g)
                : x->Gl == 1  ? (int)(j * x->Hl / hpg)
                              : (int)((j * x->Hl + g) / hpg);
    }
    for (int64_t i = 0; i < nmax; ++i)
        x->ident[i] = (int)i;

    const int64_t D = x->Dqk > x->Dv ? x->Dqk : x->Dv;
    x->slab = x->B * x->Smax * nmax * D;
    const int64_t qn = x->B * x->Sf * x->Hl, kn = x->B * x->Sf * x->Gl;
    struct {
        float **p;
        int64_t n;
        const char *what;
    } bufs[] = {{&x->send, U * x->slab, "Ulysses send slabs"},
                {&x->recv, U * x->slab, "Ulysses receive slabs"},
                {&x->scratch, cpa_ulysses_saved_floats(sh, U), "Ulysses forward state"},
                {&x->dout, qn * x->Dv, "Ulysses dout"},
                {&x->dq, qn * x->Dqk, "Ulysses dq"},     {&x->dk, kn * x->Dqk, "Ulysses dk"},
                {&x->dv, kn * x->Dv, "Ulysses dv"}};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; ++i)
        if (!(*bufs[i].p = cpa_calloc(sizeof(float) * (size_t)bufs[i].n, bufs[i].what))) {
            cpa_ulysses_free(x);
            return CPA_ERR_NOMEM;
        }
    return CPA_OK;
}

void cpa_ulysses_free(cpa_ulysses *x)
{
    float *bufs[] = {x->send, x->recv, x->scratch, x->dout, x->dq, x->dk, x->dv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; ++i)
        cpa_free(bufs[i]);
    cpa_free(x->q_heads);
    cpa_free(x->rows);
    memset(x, 0, sizeof *x);
}

/* ---- views ----------------------------------------------------------------- */

static cpa_tensor hview(const cpa_ulysses *x, float *buf, int64_t heads, int64_t dim)
{
    return cpa_tensor_attn(buf, x->layout, x->B, x->Sf, heads, dim);
}

/* lse [B, N, S] seen as a [B, S, N, 1] view, so it travels like a tensor. */
static cpa_tensor lse_as_rows(cpa_tensor lse)
{
    cpa_tensor t = lse;
    t.ndim = 4;
    t.shape[1] = lse.shape[2], t.shape[2] = lse.shape[1], t.shape[3] = 1;
    t.stride[1] = lse.stride[2], t.stride[2] = lse.stride[1], t.stride[3] = 1;
    return t;
}

/* The forward's state carved out of a saved buffer (or the scratch). */
typedef struct uly_state {
    cpa_tensor q, k, v, out, lse;
} uly_state;

static uly_state state_views(const cpa_ulysses *x, const float *buf)
{
    float *p = (float *)buf; /* the backward only reads it */
    const int64_t qn = x->B * x->Sf * x->Hl, kn = x->B * x->Sf * x->Gl;
    const int64_t lse_shape[3] = {x->B, x->Hl, x->Sf};
    uly_state st;
    st.q = hview(x, p, x->Hl, x->Dqk), p += qn * x->Dqk;
    st.k = hview(x, p, x->Gl, x->Dqk), p += kn * x->Dqk;
    st.v = hview(x, p, x->Gl, x->Dv), p += kn * x->Dv;
    st.out = hview(x, p, x->Hl, x->Dv), p += qn * x->Dv;
    st.lse = cpa_tensor_make(p, 3, lse_shape);
    return st;
}

/* ---- the all-to-alls ---------------------------------------------------------- */

/* dst[b, r, i, :] = src[b, row0 + r, heads[i], :], dst contiguous. */
static void pack(cpa_tensor src, int64_t row0, int64_t rows, const int *heads, int64_t nh,
                 float *dst)
{
    const int64_t D = src.shape[3];
    for (int64_t b = 0; b < src.shape[0]; ++b)
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t i = 0; i < nh; ++i) {
                const float *s = src.data + b * src.stride[0] + (row0 + r) * src.stride[1] +
                                 heads[i] * src.stride[2];
                memcpy(dst, s, sizeof(float) * (size_t)D);
                dst += D;
            }
}

/* dst[b, row0 + r, heads[i], :] (+)= src[b, r, i, :]. */
static void unpack(const float *src, cpa_tensor dst, int64_t row0, int64_t rows, const int *heads,
                   int64_t nh, int accumulate)
{
    const int64_t D = dst.shape[3];
    for (int64_t b = 0; b < dst.shape[0]; ++b)
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t i = 0; i < nh; ++i) {
                float *d = dst.data + b * dst.stride[0] + (row0 + r) * dst.stride[1] +
                           heads[i] * dst.stride[2];
                if (accumulate)
                    for (int64_t c = 0; c < D; ++c)
                        d[c] += src[c];
                else
                    memcpy(d, src, sizeof(float) * (size_t)D);
                src += D;
            }
}

/* Exchange the slabs: group rank j's slab starts at j·B·Smax units of
 * `unit` floats (one row of the head group); I send send_rows[j]·B units to
 * j and receive recv_rows[j]·B from it (NULL: my own row count, Sl). */
static cpa_status alltoall(cpa_ulysses *x, int64_t unit, const int64_t *send_rows,
                           const int64_t *recv_rows, const char *what)
{
    const int U = x->U;
    int *sc = x->counts, *sd = sc + U, *rc = sd + U, *rd = rc + U;
    if ((int64_t)U * x->B * x->Smax > INT_MAX || unit > INT_MAX)
        return cpa_error(CPA_ERR_ARG, "%s: Ulysses all-to-all of %lld rows of %lld floats per "
                         "rank exceeds MPI's int counts", what, (long long)(x->B * x->Smax),
                         (long long)unit);
    double sent = 0.0;
    for (int j = 0; j < U; ++j) {
        sc[j] = (int)(x->B * (send_rows ? send_rows[j] : x->Sl));
        rc[j] = (int)(x->B * (recv_rows ? recv_rows[j] : x->Sl));
        sd[j] = rd[j] = (int)(j * x->B * x->Smax);
        sent += j == x->u ? 0.0 : (double)sc[j] * (double)unit * sizeof(float);
    }
    MPI_Datatype type;
    int rc0 = MPI_Type_contiguous((int)unit, MPI_FLOAT, &type);
    if (rc0 == MPI_SUCCESS)
        rc0 = MPI_Type_commit(&type);
    if (rc0 != MPI_SUCCESS)
        return cpa_mpi_error(rc0, "MPI_Type_contiguous (Ulysses rows)");
    double t0 = cpa_wtime();
    const int64_t tt = cpa_trace_t0();
    MPI_Request req;
    int rc1 = MPI_Ialltoallv(x->send, sc, sd, type, x->recv, rc, rd, type, x->comm, &req);
    MPI_Type_free(&type); /* freed types stay valid for pending operations */
    cpa_status st = rc1 == MPI_SUCCESS
                        ? cpa_comm_wait(1, &req, "%s: Ulysses all-to-all of %lld rows of %lld "
                                        "floats over %d ranks", what,
                                        (long long)(x->B * x->Smax), (long long)unit, x->U)
                        : cpa_mpi_error(rc1, "MPI_Ialltoallv");
    x->wait_s += cpa_wtime() - t0;
    x->bytes_sent += sent;
    CPA_TRACE_END(tt, what, CPA_TRACE_ALLTOALL, CPA_TRACE_LANE_MAIN, {"bytes", sent},
                  {"ranks", U});
    return st;
}

/* Sequence-sharded `local` [B, Sl, N, D] -> head-sharded `mine` [B, Sf, nl, D]:
 * group rank j gets heads heads[j*nl .. j*nl+nl). */
cpa_status cpa_ulysses_seq_to_heads(cpa_ulysses *x, cpa_tensor local, const int *heads,
                                    int64_t nl, cpa_tensor mine)
{
    const int64_t unit = nl * local.shape[3], stride = x->B * x->Smax * unit;
    for (int j = 0; j < x->U; ++j)
        pack(local, 0, x->Sl, heads + j * nl, nl, x->send + j * stride);
    CPA_TRY(alltoall(x, unit, NULL, x->rows, "sequence to heads"));
    for (int i = 0; i < x->U; ++i)
        unpack(x->recv + i * stride, mine, x->row0[i], x->rows[i], x->ident, nl, 0);
    return CPA_OK;
}

/* Head-sharded `mine` -> sequence-sharded `local`; with `accumulate` the
 * replicas of a head add up (local must be zeroed by the caller). */
cpa_status cpa_ulysses_heads_to_seq(cpa_ulysses *x, cpa_tensor mine, const int *heads,
                                    int64_t nl, cpa_tensor local, int accumulate)
{
    const int64_t unit = nl * mine.shape[3], stride = x->B * x->Smax * unit;
    for (int j = 0; j < x->U; ++j)
        pack(mine, x->row0[j], x->rows[j], x->ident, nl, x->send + j * stride);
    CPA_TRY(alltoall(x, unit, x->rows, NULL, "heads to sequence"));
    for (int i = 0; i < x->U; ++i)
        unpack(x->recv + i * stride, local, 0, x->Sl, heads + i * nl, nl, accumulate);
    return CPA_OK;
}

/* q, k, v (and for a backward without a saved forward, out and lse). */
static cpa_status gather_inputs(cpa_ulysses *x, const uly_state *st, cpa_tensor q, cpa_tensor k,
                                cpa_tensor v)
{
    CPA_TRY(cpa_ulysses_seq_to_heads(x, q, x->q_heads, x->Hl, st->q));
    CPA_TRY(cpa_ulysses_seq_to_heads(x, k, x->kv_heads, x->Gl, st->k));
    return cpa_ulysses_seq_to_heads(x, v, x->kv_heads, x->Gl, st->v);
}

/* ---- forward and backward ---------------------------------------------------- */

static void inner_desc(const cpa_ulysses *x, const uly_state *st, cpa_attn_desc *d)
{
    memset(d, 0, sizeof *d);
    d->q = st->q;
    d->k = st->k;
    d->v = st->v;
    d->mask = x->mask; /* the gathered rows are the whole sequence, in order */
    d->softmax_scale = x->scale;
    d->impl = x->impl;
}

static void reset_counters(cpa_ulysses *x)
{
    x->wait_s = x->bytes_sent = x->compute_s = x->flops = 0.0;
}

static void add_ring_counters(cpa_ulysses *x)
{
    cpa_plan_stats st;
    cpa_ring_stats(x->ring, &st);
    x->flops += st.flops;
    x->compute_s += st.compute_s;
    x->wait_s += st.wait_s;
    x->bytes_sent += st.bytes_sent;
}

cpa_status cpa_ulysses_forward(cpa_ulysses *x, float *saved, cpa_tensor q, cpa_tensor k,
                               cpa_tensor v, cpa_tensor out, cpa_tensor lse)
{
    reset_counters(x);
    const uly_state st = state_views(x, saved ? saved : x->scratch);
    CPA_TRY(gather_inputs(x, &st, q, k, v));
    if (x->ring) {
        CPA_TRY(cpa_ring_forward(x->ring, st.q, st.k, st.v, st.out, st.lse));
        add_ring_counters(x);
    } else {
        cpa_attn_desc d;
        inner_desc(x, &st, &d);
        const int64_t tt = cpa_trace_t0();
        double t0 = cpa_wtime();
        CPA_TRY(cpa_attn_forward(x->ctx, &d, st.out, st.lse));
        x->compute_s += cpa_wtime() - t0;
        x->flops += cpa_attn_forward_flops(&d);
        CPA_TRACE_END(tt, "forward step", CPA_TRACE_COMPUTE, CPA_TRACE_LANE_MAIN, {"step", 1},
                      {"owner", x->u}, {"flops", x->flops});
    }
    CPA_TRY(cpa_ulysses_heads_to_seq(x, st.out, x->q_heads, x->Hl, out, 0));
    return cpa_ulysses_heads_to_seq(x, lse_as_rows(st.lse), x->q_heads, x->Hl, lse_as_rows(lse),
                                    0);
}

cpa_status cpa_ulysses_backward(cpa_ulysses *x, const float *saved, cpa_tensor q, cpa_tensor k,
                                cpa_tensor v, cpa_tensor out, cpa_tensor lse, cpa_tensor dout,
                                cpa_tensor dq, cpa_tensor dk, cpa_tensor dv)
{
    reset_counters(x);
    const uly_state st = state_views(x, saved ? saved : x->scratch);
    if (!saved) { /* no saved forward: rebuild its state from the arguments */
        CPA_TRY(gather_inputs(x, &st, q, k, v));
        CPA_TRY(cpa_ulysses_seq_to_heads(x, out, x->q_heads, x->Hl, st.out));
        CPA_TRY(cpa_ulysses_seq_to_heads(x, lse_as_rows(lse), x->q_heads, x->Hl,
                                         lse_as_rows(st.lse)));
    }
    cpa_tensor dO = hview(x, x->dout, x->Hl, x->Dv);
    cpa_tensor dQ = hview(x, x->dq, x->Hl, x->Dqk), dK = hview(x, x->dk, x->Gl, x->Dqk);
    cpa_tensor dV = hview(x, x->dv, x->Gl, x->Dv);
    CPA_TRY(cpa_ulysses_seq_to_heads(x, dout, x->q_heads, x->Hl, dO));
    if (x->ring) {
        CPA_TRY(cpa_ring_backward(x->ring, st.q, st.k, st.v, st.out, st.lse, dO, dQ, dK, dV));
        add_ring_counters(x);
    } else {
        cpa_attn_desc d;
        inner_desc(x, &st, &d);
        cpa_tensor_zero(dQ), cpa_tensor_zero(dK), cpa_tensor_zero(dV);
        const int64_t tt = cpa_trace_t0();
        double t0 = cpa_wtime();
        CPA_TRY(cpa_attn_backward(x->ctx, &d, st.out, st.lse, dO, dQ, dK, dV));
        x->compute_s += cpa_wtime() - t0;
        x->flops += 2.5 * cpa_attn_forward_flops(&d);
        CPA_TRACE_END(tt, "backward step", CPA_TRACE_COMPUTE, CPA_TRACE_LANE_MAIN, {"step", 1},
                      {"owner", x->u}, {"flops", x->flops});
    }
    CPA_TRY(cpa_ulysses_heads_to_seq(x, dQ, x->q_heads, x->Hl, dq, 0));
    cpa_tensor_zero(dk), cpa_tensor_zero(dv); /* replicas of a KV head add up */
    CPA_TRY(cpa_ulysses_heads_to_seq(x, dK, x->kv_heads, x->Gl, dk, 1));
    return cpa_ulysses_heads_to_seq(x, dV, x->kv_heads, x->Gl, dv, 1);
}

void cpa_ulysses_stats(const cpa_ulysses *x, cpa_plan_stats *st)
{
    cpa_stats_set(st, x->wait_s, x->bytes_sent, x->compute_s, x->flops);
}

/* ---- the table row (ulysses_cp_algo) ---------------------------------------- */

static cpa_split ulysses_split(const cpa_cp_config *c)
{
    cpa_split s = {.kind = CPA_SPLIT_CONTIGUOUS, .P = c->cp_size, .U = 1};
    return s;
}

static cpa_status ulysses_validate(const cpa_cp_config *c)
{
    const int P = c->cp_size, tp = c->tp_size;
    if (c->num_heads % ((long long)tp * P) != 0)
        return cpa_error(CPA_ERR_ARG, "--num-attention-heads %lld is not divisible by "
                         "--tensor-model-parallel-size %d x --context-parallel-size %d "
                         "(ulysses_cp_algo scatters heads: H %% (TP*P) == 0)",
                         (long long)c->num_heads, tp, P);
    if (c->window != 1)
        return cpa_error(CPA_ERR_ARG, "--cp-window-size %d applies to megatron_cp_algo and "
                         "hybrid_cp_algo; ulysses_cp_algo needs 1", c->window);
    return CPA_OK;
}

cpa_ulysses_shape cpa_ulysses_shape_of(const cpa_cp_config *c, int64_t S)
{
    cpa_ulysses_shape sh = {.B = c->batch, .S = S, .H = c->num_heads, .G = c->num_kv_heads,
                            .Dqk = c->head_dim, .Dv = c->v_head_dim, .layout = c->layout,
                            .mask = c->mask, .impl = c->impl, .scale = c->softmax_scale};
    return sh;
}

static int64_t ulysses_state_bytes(const cpa_cp_config *c)
{
    cpa_ulysses_shape sh = cpa_ulysses_shape_of(c, c->seq_length);
    return (int64_t)sizeof(cpa_ulysses) + cpa_ulysses_bytes(&sh, c->cp_size);
}

static int64_t ulysses_saved_floats(const cpa_cp_config *c)
{
    cpa_ulysses_shape sh = cpa_ulysses_shape_of(c, c->seq_length);
    return cpa_ulysses_saved_floats(&sh, c->cp_size);
}

static void ulysses_kernel_shape(const cpa_cp_config *c, int64_t *H, int64_t *G, int64_t *Sq,
                                 int64_t *Sk)
{
    *H = c->num_heads / c->cp_size;
    *G = cpa_ulysses_kv_heads(c->num_heads, c->num_kv_heads, c->cp_size);
    *Sq = *Sk = c->seq_length;
}

static void ulysses_volume(const cpa_cp_config *c, int rank, double *fwd, double *bwd)
{
    cpa_ulysses_shape sh = cpa_ulysses_shape_of(c, c->seq_length);
    cpa_ulysses_volume(&sh, c->cp_size, rank, fwd, bwd);
}

static cpa_status ulysses_row_init(MPI_Comm comm, const cpa_cp_config *c, cpa_split split,
                                   cpa_attn_ctx *ctx, void **state)
{
    (void)split; /* contiguous: the all-to-all's order */
    cpa_ulysses *x = cpa_calloc(sizeof *x, "Ulysses state");
    if (!x)
        return CPA_ERR_NOMEM;
    *state = x;
    cpa_ulysses_shape sh = cpa_ulysses_shape_of(c, c->seq_length);
    return cpa_ulysses_init(x, comm, &sh, NULL, ctx);
}

static void ulysses_row_destroy(void *state)
{
    if (state)
        cpa_ulysses_free(state);
    cpa_free(state);
}

static cpa_status ulysses_row_forward(void *state, float *saved, cpa_tensor q, cpa_tensor k,
                                      cpa_tensor v, cpa_tensor out, cpa_tensor lse)
{
    return cpa_ulysses_forward(state, saved, q, k, v, out, lse);
}

static cpa_status ulysses_row_backward(void *state, const float *saved, cpa_tensor q,
                                       cpa_tensor k, cpa_tensor v, cpa_tensor out,
                                       cpa_tensor lse, cpa_tensor dout, cpa_tensor dq,
                                       cpa_tensor dk, cpa_tensor dv)
{
    return cpa_ulysses_backward(state, saved, q, k, v, out, lse, dout, dq, dk, dv);
}

static void ulysses_row_stats(const void *state, cpa_plan_stats *st)
{
    cpa_ulysses_stats(state, st);
}

static void ulysses_row_set_mask(void *state, cpa_mask mask)
{
    cpa_ulysses *x = state;
    x->mask = mask;
    if (x->ring)
        x->ring->mask = mask;
}

const cpa_algo_row cpa_ulysses_row = {
    .id = CPA_ALGO_ULYSSES,
    .name = "ulysses_cp_algo",
    .summary = "DeepSpeed-Ulysses: all-to-alls trade sequence rows for heads, each rank "
               "attends H/P heads over the whole sequence (H % (TP*P) == 0)",
    .validate = ulysses_validate,
    .split = ulysses_split,
    .state_bytes = ulysses_state_bytes,
    .saved_floats = ulysses_saved_floats,
    .kernel_shape = ulysses_kernel_shape,
    .volume = ulysses_volume,
    .init = ulysses_row_init,
    .destroy = ulysses_row_destroy,
    .forward = ulysses_row_forward,
    .backward = ulysses_row_backward,
    .set_mask = ulysses_row_set_mask,
    .stats = ulysses_row_stats,
};
