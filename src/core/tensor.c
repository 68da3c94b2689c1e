/*
 * tensor.c — strided fp32 views: construction for each attention layout,
 * element counts, and layout names.  Views never own memory.
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <string.h>

cpa_tensor cpa_tensor_make(float *data, int ndim, const int64_t *shape)
{
    cpa_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.ndim = ndim;
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; --i) {
        t.shape[i] = shape[i];
        t.stride[i] = stride;
        stride *= shape[i];
    }
    return t;
}

cpa_tensor cpa_tensor_attn(float *data, cpa_layout layout, int64_t B, int64_t S, int64_t N,
                           int64_t D)
{
    cpa_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.ndim = 4;
    t.shape[0] = B;
    t.shape[1] = S;
    t.shape[2] = N;
    t.shape[3] = D;
    t.stride[3] = 1;
    switch (layout) {
    case CPA_LAYOUT_SBHD: /* memory order S, B, N, D */
        t.stride[2] = D;
        t.stride[0] = N * D;
        t.stride[1] = B * N * D;
        break;
    case CPA_LAYOUT_BNSD: /* memory order B, N, S, D */
        t.stride[1] = D;
        t.stride[2] = S * D;
        t.stride[0] = N * S * D;
        break;
    case CPA_LAYOUT_BSHD:
    default: /* memory order B, S, N, D */
        t.stride[2] = D;
        t.stride[1] = N * D;
        t.stride[0] = S * N * D;
        break;
    }
    return t;
}

int64_t cpa_tensor_numel(const cpa_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; ++i)
        n *= t->shape[i];
    return n;
}

static const char *const layout_names[] = {"bshd", "sbhd", "bnsd"};

const char *cpa_layout_name(cpa_layout layout)
{
    if ((int)layout < 0 || (int)layout > 2)
        return "unknown";
    return layout_names[layout];
}

cpa_status cpa_layout_parse(const char *name, cpa_layout *out)
{
    for (int i = 0; i < 3; ++i) {
        if (name && strcmp(name, layout_names[i]) == 0) {
            *out = (cpa_layout)i;
            return CPA_OK;
        }
    }
    return cpa_error(CPA_ERR_ARG, "unknown layout '%s' (expected bshd, sbhd or bnsd)",
                     name ? name : "(null)");
}

cpa_status cpa_tensor_check_finite(cpa_tensor t, const char *name, int64_t index[CPA_MAX_DIMS])
{
    if (t.ndim < 1 || t.ndim > CPA_MAX_DIMS || !t.data)
        return cpa_error(CPA_ERR_ARG, "%s: not a 1- to %d-d view with data", name ? name : "tensor",
                         CPA_MAX_DIMS);
    int64_t sh[CPA_MAX_DIMS] = {1, 1, 1, 1}, st[CPA_MAX_DIMS] = {0, 0, 0, 0};
    const int off = CPA_MAX_DIMS - t.ndim;
    for (int i = 0; i < t.ndim; ++i)
        sh[off + i] = t.shape[i], st[off + i] = t.stride[i];
    for (int64_t a = 0; a < sh[0]; ++a)
        for (int64_t b = 0; b < sh[1]; ++b)
            for (int64_t c = 0; c < sh[2]; ++c)
                for (int64_t d = 0; d < sh[3]; ++d) {
                    const float x = t.data[a * st[0] + b * st[1] + c * st[2] + d * st[3]];
                    if (isfinite(x))
                        continue;
                    int64_t at[CPA_MAX_DIMS] = {a, b, c, d}, idx[CPA_MAX_DIMS] = {0, 0, 0, 0};
                    char where[160] = "";
                    size_t used = 0;
                    for (int i = 0; i < t.ndim; ++i) {
                        idx[i] = at[off + i];
                        used += (size_t)snprintf(where + used, sizeof where - used, "%s%lld",
                                                 i ? ", " : "", (long long)idx[i]);
                    }
                    if (index)
                        memcpy(index, idx, sizeof idx);
                    return cpa_error(CPA_ERR_NUMERIC, "%s: element [%s] is %s (the first "
                                     "non-finite value)", name ? name : "tensor", where,
                                     isnan(x) ? "NaN" : x > 0 ? "+inf" : "-inf");
                }
    return CPA_OK;
}

void cpa_tensor_fill_uniform(cpa_tensor t, uint64_t seed, uint64_t tensor_id, int64_t s_global,
                             int64_t s_offset)
{
    /* t [B, S, N, D], rows [s_offset, s_offset + S) of s_global */
    const int64_t B = t.shape[0], S = t.shape[1], N = t.shape[2], D = t.shape[3];
    const uint64_t key = cpa_mix64(seed ^ cpa_mix64(tensor_id + CPA_GOLDEN_GAMMA));
    for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < S; ++s)
            for (int64_t n = 0; n < N; ++n) {
                float *row = t.data + b * t.stride[0] + s * t.stride[1] + n * t.stride[2];
                const uint64_t base = (uint64_t)(((b * s_global + s_offset + s) * N + n) * D);
                for (int64_t d = 0; d < D; ++d) {
                    const uint64_t r = cpa_mix64(key + (base + (uint64_t)d) * CPA_GOLDEN_GAMMA);
                    /* top 24 bits -> [0, 1) exactly representable, then [-1, 1) */
                    row[d * t.stride[3]] = (float)(r >> 40) * 0x1p-23f - 1.0f;
                }
            }
}

uint64_t cpa_tensor_digest(cpa_tensor t)
{
    uint64_t h = CPA_FNV_OFFSET;
    int64_t sh[4] = {1, 1, 1, 1}, st[4] = {0, 0, 0, 0};
    for (int i = 0; i < t.ndim; ++i) {
        sh[4 - t.ndim + i] = t.shape[i];
        st[4 - t.ndim + i] = t.stride[i];
    }
    for (int64_t a = 0; a < sh[0]; ++a)
        for (int64_t b = 0; b < sh[1]; ++b)
            for (int64_t c = 0; c < sh[2]; ++c)
                for (int64_t d = 0; d < sh[3]; ++d) /* the bytes of a little-endian float */
                    h = cpa_fnv1a64(h, t.data + a * st[0] + b * st[1] + c * st[2] + d * st[3], 4);
    return h;
}

uint64_t cpa_tensor_digest_rows(cpa_tensor t, int64_t s_global, cpa_rows rows)
{
    /* t [B, S, N, D]: each (b, global position) row hashed on its own,
     * keyed by its global index, and the rows summed, so that the parts of
     * a sharded tensor add up (mod 2^64) to the digest of the whole. */
    const cpa_piece all = {0, t.shape[1], 0};
    const cpa_piece *pc = rows.count ? rows.pieces : &all;
    const int np = rows.count ? rows.count : 1;
    uint64_t sum = 0;
    for (int64_t b = 0; b < t.shape[0]; ++b)
        for (int i = 0; i < np; ++i)
            for (int64_t s = 0; s < pc[i].len; ++s) {
                uint64_t h = CPA_FNV_OFFSET;
                const float *row = t.data + b * t.stride[0] + (pc[i].row + s) * t.stride[1];
                for (int64_t n = 0; n < t.shape[2]; ++n)
                    for (int64_t d = 0; d < t.shape[3]; ++d)
                        h = cpa_fnv1a64(h, row + n * t.stride[2] + d * t.stride[3], 4);
                const uint64_t index = (uint64_t)(b * s_global + pc[i].pos + s);
                sum += cpa_mix64(h ^ cpa_mix64(index + CPA_GOLDEN_GAMMA));
            }
    return sum;
}

void cpa_tensor_copy(cpa_tensor dst, cpa_tensor src)
{
    for (int64_t b = 0; b < src.shape[0]; ++b)
        for (int64_t s = 0; s < src.shape[1]; ++s)
            for (int64_t n = 0; n < src.shape[2]; ++n) {
                float *d = dst.data + b * dst.stride[0] + s * dst.stride[1] + n * dst.stride[2];
                const float *x = src.data + b * src.stride[0] + s * src.stride[1] + n * src.stride[2];
                if (dst.stride[3] == 1 && src.stride[3] == 1)
                    memcpy(d, x, sizeof(float) * (size_t)src.shape[3]);
                else
                    for (int64_t c = 0; c < src.shape[3]; ++c)
                        d[c * dst.stride[3]] = x[c * src.stride[3]];
            }
}

void cpa_tensor_zero(cpa_tensor t)
{
    for (int64_t b = 0; b < t.shape[0]; ++b)
        for (int64_t s = 0; s < t.shape[1]; ++s)
            for (int64_t n = 0; n < t.shape[2]; ++n) {
                float *d = t.data + b * t.stride[0] + s * t.stride[1] + n * t.stride[2];
                for (int64_t c = 0; c < t.shape[3]; ++c)
                    d[c * t.stride[3]] = 0.0f;
            }
}
