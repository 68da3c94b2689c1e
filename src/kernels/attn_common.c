/*
 * attn_common.c — what the fast and reference attention paths share:
 * argument validation (one place, so both paths refuse the same inputs with
 * the same message), the kernel context, tiling of piece lists, the mask's
 * tile classification, and the flop count used by every benchmark.
 */
#include "kernel_internal.h"

#include <omp.h>
#include <string.h>

/* ---- tiling ------------------------------------------------------------ */

void cpa_tiling_init(cpa_tiling *t, cpa_rows rows, int64_t nrows, int64_t tile)
{
    t->tile = tile;
    if (rows.count == 0) {
        t->count = 1;
        t->pieces[0].row = 0;
        t->pieces[0].len = nrows;
        t->pieces[0].pos = 0;
    } else {
        t->count = rows.count;
        memcpy(t->pieces, rows.pieces, (size_t)rows.count * sizeof *rows.pieces);
    }
    t->first_tile[0] = 0;
    for (int i = 0; i < t->count; ++i)
        t->first_tile[i + 1] = t->first_tile[i] + (t->pieces[i].len + tile - 1) / tile;
}

cpa_tile cpa_tiling_get(const cpa_tiling *t, int64_t index)
{
    int p = 0;
    while (index >= t->first_tile[p + 1])
        ++p;
    int64_t off = (index - t->first_tile[p]) * t->tile;
    cpa_tile tile;
    tile.row = t->pieces[p].row + off;
    tile.pos = t->pieces[p].pos + off;
    tile.len = t->pieces[p].len - off < t->tile ? t->pieces[p].len - off : t->tile;
    return tile;
}

/* ---- masks ------------------------------------------------------------- */

cpa_status cpa_mask_check(cpa_mask m, int64_t S)
{
    if (m.kind != CPA_MASK_NONE && m.kind != CPA_MASK_CAUSAL)
        return cpa_error(CPA_ERR_ARG, "--attention-mask-type: unknown mask kind %d (causal %d, "
                         "general %d)", (int)m.kind, CPA_MASK_CAUSAL, CPA_MASK_NONE);
    if (m.window < 0)
        return cpa_error(CPA_ERR_ARG, "--sliding-window %lld: must be >= 1 (0: no window)",
                         (long long)m.window);
    if (!m.cu_seqlens)
        return m.num_docs == 0 ? CPA_OK
                               : cpa_error(CPA_ERR_ARG, "cu_seqlens: NULL with %lld documents",
                                           (long long)m.num_docs);
    if (m.num_docs < 1)
        return cpa_error(CPA_ERR_ARG, "cu_seqlens: %lld documents; it needs N+1 >= 2 entries "
                         "0 = c0 < c1 < ... < cN = S", (long long)m.num_docs);
    if (m.cu_seqlens[0] != 0)
        return cpa_error(CPA_ERR_ARG, "cu_seqlens: starts at %lld; it must start at 0",
                         (long long)m.cu_seqlens[0]);
    for (int64_t i = 1; i <= m.num_docs; ++i)
        if (m.cu_seqlens[i] <= m.cu_seqlens[i - 1])
            return cpa_error(CPA_ERR_ARG, "cu_seqlens: entry %lld (%lld) is not greater than "
                             "entry %lld (%lld); it must be strictly increasing (no empty "
                             "document)", (long long)i, (long long)m.cu_seqlens[i],
                             (long long)(i - 1), (long long)m.cu_seqlens[i - 1]);
    if (S > 0 && m.cu_seqlens[m.num_docs] != S)
        return cpa_error(CPA_ERR_ARG, "cu_seqlens: ends at %lld; it must end at the sequence "
                         "length S = %lld", (long long)m.cu_seqlens[m.num_docs], (long long)S);
    return CPA_OK;
}

cpa_tile_class cpa_tile_classify(cpa_mask m, cpa_tile q, cpa_tile k)
{
    int64_t lo_first, hi_first, lo_last, hi_last;
    cpa_mask_range(m, q.pos, &lo_first, &hi_first);
    cpa_mask_range(m, q.pos + q.len - 1, &lo_last, &hi_last);
    int64_t kfirst = k.pos, klast = k.pos + k.len - 1;
    /* Bounds are monotone in the query position: the first query row has
     * the smallest window, the last the largest. */
    if (kfirst > hi_last || klast < lo_first)
        return CPA_TILE_SKIP;
    if (kfirst >= lo_last && klast <= hi_first)
        return CPA_TILE_FULL;
    return CPA_TILE_PARTIAL;
}

int64_t cpa_tile_visible_len(cpa_mask m, cpa_tile q, cpa_tile k)
{
    int64_t lo, hi;
    cpa_mask_range(m, q.pos + q.len - 1, &lo, &hi);
    if (hi == INT64_MAX || hi - k.pos + 1 >= k.len)
        return k.len;
    return hi - k.pos + 1 > 0 ? hi - k.pos + 1 : 0;
}

/* [lo, hi] of the mask at query position qpos, as key indices of tile k
 * clamped to [0, n-1] (empty: lo > hi). */
static void key_index_range(cpa_mask m, int64_t qpos, cpa_tile k, int64_t n, int32_t *lo,
                            int32_t *hi)
{
    int64_t a, b;
    cpa_mask_range(m, qpos, &a, &b);
    a = a == INT64_MIN || a < k.pos ? 0 : a - k.pos;
    b = b == INT64_MAX || b - k.pos > n - 1 ? n - 1 : b - k.pos;
    if (b < a)
        a = 1, b = 0;
    *lo = (int32_t)a;
    *hi = (int32_t)b;
}

void cpa_tile_lane_ranges(cpa_mask m, cpa_tile q, cpa_tile k, int64_t klen, int lanes,
                          int32_t *lo, int32_t *hi)
{
    for (int i = 0; i < lanes; ++i) {
        if (i < q.len) {
            key_index_range(m, q.pos + i, k, klen, &lo[i], &hi[i]);
        } else {
            lo[i] = 0;
            hi[i] = (int32_t)klen - 1;
        }
    }
}

void cpa_tile_row_ranges(cpa_mask m, cpa_tile q, cpa_tile k, int32_t *lo, int32_t *hi)
{
    for (int64_t i = 0; i < q.len; ++i)
        key_index_range(m, q.pos + i, k, k.len, &lo[i], &hi[i]);
}

double cpa_visible_pairs(cpa_mask m, cpa_piece q, cpa_piece k)
{
    double pairs = 0.0;
    for (int64_t i = 0; i < q.len; ++i) {
        int64_t lo, hi;
        cpa_mask_range(m, q.pos + i, &lo, &hi);
        int64_t a = lo == INT64_MIN ? k.pos : (lo > k.pos ? lo : k.pos);
        int64_t b = hi == INT64_MAX ? k.pos + k.len - 1
                                    : (hi < k.pos + k.len - 1 ? hi : k.pos + k.len - 1);
        if (b >= a)
            pairs += (double)(b - a + 1);
    }
    return pairs;
}

double cpa_attn_forward_flops(const cpa_attn_desc *d)
{
    if (!d || d->q.ndim != 4 || d->k.ndim != 4 || d->v.ndim != 4)
        return 0.0;
    cpa_tiling qt, kt;
    if (d->q_rows.count < 0 || d->q_rows.count > CPA_MAX_PIECES || d->kv_rows.count < 0 ||
        d->kv_rows.count > CPA_MAX_PIECES)
        return 0.0;
    cpa_tiling_init(&qt, d->q_rows, d->q.shape[1], 1);
    cpa_tiling_init(&kt, d->kv_rows, d->k.shape[1], 1);
    double pairs = 0.0;
    for (int i = 0; i < qt.count; ++i)
        for (int j = 0; j < kt.count; ++j)
            pairs += cpa_visible_pairs(d->mask, qt.pieces[i], kt.pieces[j]);
    return 2.0 * pairs * (double)(d->q.shape[3] + d->v.shape[3]) * (double)d->q.shape[0] *
           (double)d->q.shape[2];
}

/* ---- validation -------------------------------------------------------- */

/* A logical [B, S, N, D] view usable by the kernels: 4-D, positive sizes,
 * unit stride in D, rows at least D apart (a GEMM leading dimension). */
static cpa_status check_view4(const char *name, const cpa_tensor *t)
{
    if (!t)
        return cpa_error(CPA_ERR_ARG, "%s: tensor is NULL", name);
    if (t->ndim != 4)
        return cpa_error(CPA_ERR_ARG, "%s: expected a 4-d [B, S, N, D] view, got %d dims", name,
                         t->ndim);
    for (int i = 0; i < 4; ++i) {
        if (t->shape[i] <= 0)
            return cpa_error(CPA_ERR_ARG, "%s: dim %d is %lld; every dim must be positive", name,
                             i, (long long)t->shape[i]);
        if (t->stride[i] < 0)
            return cpa_error(CPA_ERR_ARG, "%s: stride %d is %lld; strides must be >= 0", name, i,
                             (long long)t->stride[i]);
    }
    if (!t->data)
        return cpa_error(CPA_ERR_ARG, "%s: data is NULL", name);
    if (t->stride[3] != 1)
        return cpa_error(CPA_ERR_ARG,
                         "%s: stride of the head dim is %lld; the kernels need it to be 1", name,
                         (long long)t->stride[3]);
    if (t->stride[1] < t->shape[3] && t->shape[1] > 1)
        return cpa_error(CPA_ERR_ARG,
                         "%s: sequence stride %lld is smaller than the head dim %lld (rows overlap)",
                         name, (long long)t->stride[1], (long long)t->shape[3]);
    return CPA_OK;
}

static cpa_status check_same_shape(const char *name, const cpa_tensor *t, const char *like,
                                   const int64_t *shape, int ndim)
{
    if (t->ndim != ndim)
        return cpa_error(CPA_ERR_ARG, "%s: expected %d dims like %s, got %d", name, ndim, like,
                         t->ndim);
    for (int i = 0; i < ndim; ++i)
        if (t->shape[i] != shape[i])
            return cpa_error(CPA_ERR_ARG, "%s: dim %d is %lld but must be %lld to match %s", name,
                             i, (long long)t->shape[i], (long long)shape[i], like);
    return CPA_OK;
}

static cpa_status check_rows(const char *name, cpa_rows rows, int64_t nrows, int disjoint)
{
    if (rows.count < 0 || rows.count > CPA_MAX_PIECES)
        return cpa_error(CPA_ERR_ARG, "%s: %d pieces; the limit is 0..%d", name, rows.count,
                         CPA_MAX_PIECES);
    if (rows.count > 0 && !rows.pieces)
        return cpa_error(CPA_ERR_ARG, "%s: count is %d but pieces is NULL", name, rows.count);
    for (int i = 0; i < rows.count; ++i) {
        cpa_piece p = rows.pieces[i];
        if (p.len < 0 || p.row < 0 || p.row > nrows - p.len || p.pos < 0 ||
            p.pos > INT64_MAX / 2 - p.len)
            return cpa_error(CPA_ERR_ARG,
                             "%s: piece %d {row %lld, len %lld, pos %lld} lies outside the %lld "
                             "rows of the tensor or has a negative length/position",
                             name, i, (long long)p.row, (long long)p.len, (long long)p.pos,
                             (long long)nrows);
        if (disjoint)
            for (int j = 0; j < i; ++j) {
                cpa_piece o = rows.pieces[j];
                if (p.row < o.row + o.len && o.row < p.row + p.len)
                    return cpa_error(CPA_ERR_ARG, "%s: pieces %d and %d overlap (rows %lld and %lld)",
                                     name, j, i, (long long)o.row, (long long)p.row);
            }
    }
    return CPA_OK;
}

cpa_status cpa_attn_check(const cpa_attn_desc *d, const cpa_tensor *out, const cpa_tensor *lse,
                          const cpa_tensor *dout, const cpa_tensor *dq, const cpa_tensor *dk,
                          const cpa_tensor *dv)
{
    if (!d)
        return cpa_error(CPA_ERR_ARG, "attention descriptor is NULL");
    CPA_TRY(check_view4("q", &d->q));
    CPA_TRY(check_view4("k", &d->k));
    CPA_TRY(check_view4("v", &d->v));
    const int64_t B = d->q.shape[0], Sq = d->q.shape[1], H = d->q.shape[2];
    const int64_t Dqk = d->q.shape[3], Sk = d->k.shape[1], G = d->k.shape[2];
    const int64_t Dv = d->v.shape[3];
    if (d->k.shape[0] != B || d->v.shape[0] != B)
        return cpa_error(CPA_ERR_ARG, "batch sizes differ: q %lld, k %lld, v %lld", (long long)B,
                         (long long)d->k.shape[0], (long long)d->v.shape[0]);
    if (d->k.shape[3] != Dqk)
        return cpa_error(CPA_ERR_ARG, "k head dim %lld differs from q head dim %lld",
                         (long long)d->k.shape[3], (long long)Dqk);
    if (d->v.shape[1] != Sk || d->v.shape[2] != G)
        return cpa_error(CPA_ERR_ARG, "v is [%lld, %lld, %lld, %lld] but must have k's rows %lld "
                         "and heads %lld", (long long)d->v.shape[0], (long long)d->v.shape[1],
                         (long long)d->v.shape[2], (long long)Dv, (long long)Sk, (long long)G);
    if (H % G != 0)
        return cpa_error(CPA_ERR_ARG,
                         "query heads H=%lld are not a multiple of key/value heads G=%lld "
                         "(GQA needs H %% G == 0)", (long long)H, (long long)G);
    CPA_TRY(cpa_mask_check(d->mask, 0));
    if (d->impl != CPA_IMPL_FAST && d->impl != CPA_IMPL_REFERENCE)
        return cpa_error(CPA_ERR_ARG, "unknown implementation %d", (int)d->impl);
    if (!isfinite(d->softmax_scale))
        return cpa_error(CPA_ERR_ARG, "softmax scale %g is not finite", (double)d->softmax_scale);
    CPA_TRY(check_rows("q_rows", d->q_rows, Sq, 1));
    CPA_TRY(check_rows("kv_rows", d->kv_rows, Sk, 0));
    if (d->mask.cu_seqlens) { /* every position inside the documents */
        const int64_t end = d->mask.cu_seqlens[d->mask.num_docs];
        const struct { const char *name; cpa_rows rows; int64_t n; } r[2] = {
            {"q_rows", d->q_rows, Sq}, {"kv_rows", d->kv_rows, Sk}};
        for (int t = 0; t < 2; ++t) {
            int64_t last = r[t].rows.count ? 0 : r[t].n;
            for (int i = 0; i < r[t].rows.count; ++i)
                if (r[t].rows.pieces[i].len > 0 &&
                    r[t].rows.pieces[i].pos + r[t].rows.pieces[i].len > last)
                    last = r[t].rows.pieces[i].pos + r[t].rows.pieces[i].len;
            if (last > end)
                return cpa_error(CPA_ERR_ARG, "%s reach position %lld but cu_seqlens ends at "
                                 "%lld: every position must lie in a document", r[t].name,
                                 (long long)(last - 1), (long long)end);
        }
    }

    const int64_t out_shape[4] = {B, Sq, H, Dv}, lse_shape[3] = {B, H, Sq};
    if (out) {
        CPA_TRY(check_view4("out", out));
        CPA_TRY(check_same_shape("out", out, "[B, Sq, H, Dv]", out_shape, 4));
    }
    if (lse) {
        CPA_TRY(check_same_shape("lse", lse, "[B, H, Sq]", lse_shape, 3));
        if (!lse->data)
            return cpa_error(CPA_ERR_ARG, "lse: data is NULL");
    }
    if (dout) {
        CPA_TRY(check_view4("dout", dout));
        CPA_TRY(check_same_shape("dout", dout, "out [B, Sq, H, Dv]", out_shape, 4));
    }
    if (dq) {
        CPA_TRY(check_view4("dq", dq));
        CPA_TRY(check_same_shape("dq", dq, "q", d->q.shape, 4));
    }
    if (dk) {
        CPA_TRY(check_view4("dk", dk));
        CPA_TRY(check_same_shape("dk", dk, "k", d->k.shape, 4));
    }
    if (dv) {
        CPA_TRY(check_view4("dv", dv));
        CPA_TRY(check_same_shape("dv", dv, "v", d->v.shape, 4));
    }
    return CPA_OK;
}

float cpa_attn_scale(const cpa_attn_desc *d)
{
    return d->softmax_scale != 0.0f ? d->softmax_scale : (float)(1.0 / sqrt((double)d->q.shape[3]));
}

/* ---- context ----------------------------------------------------------- */

/* Query panels per forward task: as many as keep their state (Qᵀ, Oᵀ of
 * fwd_rows rows each) within about half a megabyte, so that a K/V tile is
 * read from cache by all of them; at most CPA_FWD_MAX_PANELS. */
static int fwd_panels_for(const cpa_isa_kernels *k, int64_t max_head_dim)
{
    const double budget = 512.0 * 1024.0;
    double per_panel = (double)(2 * max_head_dim + 2) * k->fwd_rows * sizeof(float);
    int n = (int)(budget / per_panel);
    return n < 1 ? 1 : (n > CPA_FWD_MAX_PANELS ? CPA_FWD_MAX_PANELS : n);
}

/* The scratch floats per thread of a context. */
static size_t ctx_scratch_floats(const cpa_isa_kernels *k, int64_t max_head_dim, int panels)
{
    size_t fwd = k->fwd_scratch_floats(max_head_dim, panels);
    size_t bwd = k->bwd_scratch_floats(max_head_dim);
    size_t n = fwd > bwd ? fwd : bwd;
    return (n + 15) / 16 * 16; /* keep every thread's block 64-byte aligned */
}

size_t cpa_attn_work_bytes(int bwd_keys, int64_t B, int64_t H, int64_t G, int64_t Sq,
                           int64_t Sk)
{
    /* One counter per key task: B·G chains of at most Sk/keys tiles (plus
     * one partial tile per piece), 64-byte rounded; then Dr [B, H, Sq]. */
    const int64_t tasks = B * G * ((Sk + bwd_keys - 1) / bwd_keys + CPA_MAX_PIECES);
    return ((size_t)tasks * sizeof(int64_t) + 63) / 64 * 64 + sizeof(float) * (size_t)(B * H * Sq);
}

int64_t cpa_attn_ctx_bytes(int64_t max_head_dim, int num_threads, cpa_isa isa, int64_t B,
                           int64_t H, int64_t G, int64_t Sq, int64_t Sk)
{
    cpa_isa use;
    if (cpa_isa_resolve(isa, &use) != CPA_OK || max_head_dim < 1)
        return 0;
    const cpa_isa_kernels *k = cpa_isa_kernels_of(use);
    const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
    return (int64_t)(sizeof(cpa_attn_ctx) +
                     ctx_scratch_floats(k, max_head_dim, fwd_panels_for(k, max_head_dim)) *
                         sizeof(float) * (size_t)threads +
                     cpa_attn_work_bytes(k->bwd_keys, B, H, G, Sq, Sk));
}

cpa_status cpa_attn_ctx_reserve_for(cpa_attn_ctx *ctx, int64_t B, int64_t H, int64_t G,
                                    int64_t Sq, int64_t Sk)
{
    return cpa_attn_ctx_reserve(ctx, cpa_attn_work_bytes(ctx->kern->bwd_keys, B, H, G, Sq, Sk));
}

cpa_status cpa_attn_ctx_create(const cpa_attn_ctx_config *config, cpa_attn_ctx **out)
{
    if (!config || !out)
        return cpa_error(CPA_ERR_ARG, "cpa_attn_ctx_create: config and out must not be NULL");
    if (config->max_head_dim <= 0 || config->max_head_dim > 65536)
        return cpa_error(CPA_ERR_ARG, "max_head_dim %lld: must be in 1..65536",
                         (long long)config->max_head_dim);
    if (config->num_threads < 0 || config->num_threads > 4096)
        return cpa_error(CPA_ERR_ARG, "num_threads %d: must be 0 (all) or 1..4096",
                         config->num_threads);
    cpa_isa isa;
    CPA_TRY(cpa_isa_resolve(config->isa, &isa));
    cpa_attn_ctx *ctx = cpa_calloc(sizeof *ctx, "attention context");
    if (!ctx)
        return CPA_ERR_NOMEM;
    ctx->num_threads = config->num_threads ? config->num_threads : omp_get_max_threads();
    ctx->max_head_dim = config->max_head_dim;
    ctx->isa = isa;
    ctx->kern = cpa_isa_kernels_of(isa);
    ctx->fwd_panels = fwd_panels_for(ctx->kern, config->max_head_dim);
    ctx->scratch_floats = ctx_scratch_floats(ctx->kern, config->max_head_dim, ctx->fwd_panels);
    ctx->scratch = cpa_malloc(ctx->scratch_floats * sizeof(float) * (size_t)ctx->num_threads,
                              "attention scratch");
    if (!ctx->scratch) {
        cpa_free(ctx);
        return CPA_ERR_NOMEM;
    }
    *out = ctx;
    return CPA_OK;
}

void cpa_attn_ctx_destroy(cpa_attn_ctx *ctx)
{
    if (!ctx)
        return;
    cpa_free(ctx->work);
    cpa_free(ctx->scratch);
    cpa_free(ctx);
}

cpa_status cpa_attn_ctx_reserve(cpa_attn_ctx *ctx, size_t bytes)
{
    if (bytes <= ctx->work_cap)
        return CPA_OK;
    void *w = cpa_malloc(bytes, "attention workspace");
    if (!w)
        return CPA_ERR_NOMEM;
    cpa_free(ctx->work);
    ctx->work = w;
    ctx->work_cap = bytes;
    return CPA_OK;
}

cpa_isa cpa_attn_ctx_isa(const cpa_attn_ctx *ctx) { return ctx ? ctx->isa : CPA_ISA_AUTO; }

int cpa_attn_ctx_threads(const cpa_attn_ctx *ctx) { return ctx ? ctx->num_threads : 0; }

cpa_status cpa_attn_ctx_resolve(cpa_attn_ctx *ctx, const cpa_attn_desc *d, cpa_attn_ctx **use,
                                cpa_attn_ctx **tmp)
{
    int64_t dmax = d->q.shape[3] > d->v.shape[3] ? d->q.shape[3] : d->v.shape[3];
    *tmp = NULL;
    if (ctx) {
        if (dmax > ctx->max_head_dim)
            return cpa_error(CPA_ERR_ARG,
                             "head dim %lld exceeds the context's max_head_dim %lld; create the "
                             "context with a larger max_head_dim", (long long)dmax,
                             (long long)ctx->max_head_dim);
        *use = ctx;
        return CPA_OK;
    }
    cpa_attn_ctx_config cfg = {dmax, 0, CPA_ISA_AUTO};
    CPA_TRY(cpa_attn_ctx_create(&cfg, tmp));
    *use = *tmp;
    return CPA_OK;
}
