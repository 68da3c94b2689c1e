/*
 * kernel_test_util.h — helpers for the kernel tests: seeded random tensors
 * in any layout, and error measurement between a tested and a reference
 * tensor over the logical index space.
 */
#ifndef CPATTN_KERNEL_TEST_UTIL_H
#define CPATTN_KERNEL_TEST_UTIL_H

#include "cpattn.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* splitmix64: a value that depends only on (seed, index). */
static inline uint64_t tu_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static inline float tu_uniform(uint64_t seed, uint64_t i)
{
    return (float)((double)(tu_mix(seed * 0x100000001b3ULL + i) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

/* An owned tensor: the buffer plus a view of it. */
typedef struct tu_tensor {
    float *buf;
    cpa_tensor t;
} tu_tensor;

static inline tu_tensor tu_attn(cpa_layout layout, int64_t B, int64_t S, int64_t N, int64_t D)
{
    tu_tensor x;
    size_t n = (size_t)(B * S * N * D);
    x.buf = calloc(n ? n : 1, sizeof(float));
    x.t = cpa_tensor_attn(x.buf, layout, B, S, N, D);
    return x;
}

static inline tu_tensor tu_lse(int64_t B, int64_t H, int64_t S)
{
    tu_tensor x;
    int64_t shape[3] = {B, H, S};
    x.buf = calloc((size_t)(B * H * S) + 1, sizeof(float));
    x.t = cpa_tensor_make(x.buf, 3, shape);
    return x;
}

static inline float *tu_at(const cpa_tensor *t, const int64_t *idx)
{
    int64_t off = 0;
    for (int i = 0; i < t->ndim; ++i)
        off += idx[i] * t->stride[i];
    return t->data + off;
}

/* Visit every logical index of t in row-major order. */
#define TU_FOR_EACH(t, idx, flat)                                                          \
    for (int64_t flat = 0, idx[4] = {0, 0, 0, 0}; flat < cpa_tensor_numel(&(t));           \
         ++flat, tu_next_index(&(t), idx))

static inline void tu_next_index(const cpa_tensor *t, int64_t *idx)
{
    for (int i = t->ndim - 1; i >= 0; --i) {
        if (++idx[i] < t->shape[i])
            return;
        idx[i] = 0;
    }
}

/* Fill with uniform values in [-amp, amp) that depend on the logical index
 * only, so every layout holds the same logical tensor. */
static inline void tu_fill(cpa_tensor t, uint64_t seed, float amp)
{
    TU_FOR_EACH(t, idx, flat) { *tu_at(&t, idx) = amp * tu_uniform(seed, (uint64_t)flat); }
}

static inline void tu_copy(cpa_tensor dst, cpa_tensor src)
{
    TU_FOR_EACH(src, idx, flat) { *tu_at(&dst, idx) = *tu_at(&src, idx); }
}

/* Error of `got` against `want`: max |got - want| and that divided by
 * max |want| (the tensor's scale).  Infinite entries must match exactly;
 * any NaN counts as an infinite error. */
typedef struct tu_err {
    double abs, rel, scale;
} tu_err;

static inline tu_err tu_compare(cpa_tensor got, cpa_tensor want)
{
    tu_err e = {0, 0, 0};
    TU_FOR_EACH(want, idx, flat)
    {
        (void)flat;
        double a = *tu_at(&got, idx), b = *tu_at(&want, idx);
        if (isinf(b) || isinf(a)) {
            if (a != b)
                e.abs = INFINITY;
            continue;
        }
        if (isnan(a) || isnan(b)) {
            e.abs = INFINITY;
            continue;
        }
        double d = fabs(a - b);
        if (d > e.abs)
            e.abs = d;
        if (fabs(b) > e.scale)
            e.scale = fabs(b);
    }
    e.rel = e.abs / (e.scale > 1e-30 ? e.scale : 1e-30);
    if (e.abs == 0.0)
        e.rel = 0.0;
    return e;
}

static inline int tu_bitwise_equal(cpa_tensor a, cpa_tensor b)
{
    TU_FOR_EACH(a, idx, flat)
    {
        (void)flat;
        if (memcmp(tu_at(&a, idx), tu_at(&b, idx), sizeof(float)) != 0)
            return 0;
    }
    return 1;
}

#endif
