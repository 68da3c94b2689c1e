/*
 * simd.h — the few vector operations the attention micro-kernels are
 * written in, for ONE instruction set chosen by the file that includes it:
 *
 *   CPA_SIMD_AVX512   16 float lanes (AVX-512 F/DQ/BW/VL), mask registers
 *   CPA_SIMD_AVX2     8 float lanes (AVX2 + FMA), masks as all-ones lanes
 *   neither           1 lane, plain C: the portable path, obviously right
 *
 * attn_simd.c is compiled once per instruction set (attn_avx512.c,
 * attn_avx2.c, attn_scalar.c include it after defining the macro), each
 * object with its own -m flags, so one binary carries every path and picks
 * one at run time (isa.c).  Nothing here is used outside those objects.
 *
 * vf_exp2 is the only non-trivial operation: 2^x for the softmax, with
 * x = n + f (n = round(x), |f| <= 1/2), a degree-6 polynomial for 2^f
 * (fitted for relative error; 1e-7 measured in float32 evaluation, close to
 * float rounding) and 2^n put into the exponent.  Inputs below -127
 * (masked scores are -inf) give exactly 0, NaN stays NaN, +inf stays +inf.
 * No fast-math anywhere: the kernels rely on IEEE -inf and NaN.
 */
#ifndef CPATTN_SIMD_H
#define CPATTN_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define CPA_EXP2_C0 1.000000000e+00f
#define CPA_EXP2_C1 6.931471825e-01f
#define CPA_EXP2_C2 2.402264625e-01f
#define CPA_EXP2_C3 5.550328642e-02f
#define CPA_EXP2_C4 9.618489072e-03f
#define CPA_EXP2_C5 1.339993090e-03f
#define CPA_EXP2_C6 1.534581097e-04f

#define CPA_ALWAYS_INLINE static inline __attribute__((always_inline))

#if defined(CPA_SIMD_AVX512)
/* ------------------------------------------------------------------ */
#include <immintrin.h>
#define VL 16
typedef __m512 vf;
typedef __m512i vi;
typedef __mmask16 vmask;

CPA_ALWAYS_INLINE vf vf_zero(void) { return _mm512_setzero_ps(); }
CPA_ALWAYS_INLINE vf vf_set1(float x) { return _mm512_set1_ps(x); }
CPA_ALWAYS_INLINE vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
CPA_ALWAYS_INLINE void vf_store(float *p, vf x) { _mm512_storeu_ps(p, x); }
CPA_ALWAYS_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
CPA_ALWAYS_INLINE vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
CPA_ALWAYS_INLINE vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
CPA_ALWAYS_INLINE vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
/* max(a, b); b is returned when either is NaN (put the data second). */
CPA_ALWAYS_INLINE vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
CPA_ALWAYS_INLINE vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); }
CPA_ALWAYS_INLINE vi vi_set1(int32_t x) { return _mm512_set1_epi32(x); }
CPA_ALWAYS_INLINE vi vi_load(const int32_t *p) { return _mm512_loadu_si512((const void *)p); }
CPA_ALWAYS_INLINE vi vi_iota(int32_t base)
{
    return _mm512_add_epi32(_mm512_set1_epi32(base),
                            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
}
/* Lanes with lo <= x <= hi. */
CPA_ALWAYS_INLINE vmask vm_in_range(vi lo, vi x, vi hi)
{
    return _mm512_cmple_epi32_mask(lo, x) & _mm512_cmple_epi32_mask(x, hi);
}
CPA_ALWAYS_INLINE vmask vm_eq(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
CPA_ALWAYS_INLINE vmask vm_neq(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_NEQ_UQ); }
CPA_ALWAYS_INLINE int vm_any(vmask m) { return m != 0; }
/* m ? a : b, lane by lane. */
CPA_ALWAYS_INLINE vf vf_select(vmask m, vf a, vf b) { return _mm512_mask_blend_ps(m, b, a); }

CPA_ALWAYS_INLINE vf vf_exp2(vf x)
{
    x = _mm512_max_ps(_mm512_set1_ps(-150.0f), x); /* -inf -> -150 -> 0; NaN kept */
    x = _mm512_min_ps(_mm512_set1_ps(128.0f), x);
    vf n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf f = _mm512_sub_ps(x, n);
    vf p = _mm512_set1_ps(CPA_EXP2_C6);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(CPA_EXP2_C5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(CPA_EXP2_C4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(CPA_EXP2_C3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(CPA_EXP2_C2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(CPA_EXP2_C1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(CPA_EXP2_C0));
    return _mm512_scalef_ps(p, n); /* p * 2^n; 2^-150 rounds to exactly 0 */
}

#elif defined(CPA_SIMD_AVX2)
/* ------------------------------------------------------------------ */
#include <immintrin.h>
#define VL 8
typedef __m256 vf;
typedef __m256i vi;
typedef __m256 vmask; /* all-ones lanes are true */

CPA_ALWAYS_INLINE vf vf_zero(void) { return _mm256_setzero_ps(); }
CPA_ALWAYS_INLINE vf vf_set1(float x) { return _mm256_set1_ps(x); }
CPA_ALWAYS_INLINE vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
CPA_ALWAYS_INLINE void vf_store(float *p, vf x) { _mm256_storeu_ps(p, x); }
CPA_ALWAYS_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
CPA_ALWAYS_INLINE vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
CPA_ALWAYS_INLINE vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
CPA_ALWAYS_INLINE vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
CPA_ALWAYS_INLINE vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
CPA_ALWAYS_INLINE vf vf_min(vf a, vf b) { return _mm256_min_ps(a, b); }
CPA_ALWAYS_INLINE vi vi_set1(int32_t x) { return _mm256_set1_epi32(x); }
CPA_ALWAYS_INLINE vi vi_load(const int32_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
CPA_ALWAYS_INLINE vi vi_iota(int32_t base)
{
    return _mm256_add_epi32(_mm256_set1_epi32(base), _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0));
}
CPA_ALWAYS_INLINE vmask vm_in_range(vi lo, vi x, vi hi)
{
    __m256i out = _mm256_or_si256(_mm256_cmpgt_epi32(lo, x), _mm256_cmpgt_epi32(x, hi));
    return _mm256_castsi256_ps(_mm256_xor_si256(out, _mm256_set1_epi32(-1)));
}
CPA_ALWAYS_INLINE vmask vm_eq(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
CPA_ALWAYS_INLINE vmask vm_neq(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_NEQ_UQ); }
CPA_ALWAYS_INLINE int vm_any(vmask m) { return _mm256_movemask_ps(m) != 0; }
CPA_ALWAYS_INLINE vf vf_select(vmask m, vf a, vf b) { return _mm256_blendv_ps(b, a, m); }

CPA_ALWAYS_INLINE vf vf_exp2(vf x)
{
    /* -127 makes the exponent field 0, so 2^n (and the result) is exactly 0. */
    x = _mm256_max_ps(_mm256_set1_ps(-127.0f), x);
    x = _mm256_min_ps(_mm256_set1_ps(128.0f), x);
    vf n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf f = _mm256_sub_ps(x, n);
    vf p = _mm256_set1_ps(CPA_EXP2_C6);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(CPA_EXP2_C5));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(CPA_EXP2_C4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(CPA_EXP2_C3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(CPA_EXP2_C2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(CPA_EXP2_C1));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(CPA_EXP2_C0));
    /* n = 128 gives the exponent field 255 (inf); NaN converts to INT_MIN,
     * whose field becomes 127 (1.0), and p is NaN already. */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

#else
/* ------------------------------------------------------------------ */
#define VL 1
typedef float vf;
typedef int32_t vi;
typedef int vmask;

CPA_ALWAYS_INLINE vf vf_zero(void) { return 0.0f; }
CPA_ALWAYS_INLINE vf vf_set1(float x) { return x; }
CPA_ALWAYS_INLINE vf vf_load(const float *p) { return *p; }
CPA_ALWAYS_INLINE void vf_store(float *p, vf x) { *p = x; }
CPA_ALWAYS_INLINE vf vf_fma(vf a, vf b, vf c) { return a * b + c; }
CPA_ALWAYS_INLINE vf vf_mul(vf a, vf b) { return a * b; }
CPA_ALWAYS_INLINE vf vf_add(vf a, vf b) { return a + b; }
CPA_ALWAYS_INLINE vf vf_sub(vf a, vf b) { return a - b; }
CPA_ALWAYS_INLINE vf vf_max(vf a, vf b) { return a > b ? a : b; }
CPA_ALWAYS_INLINE vf vf_min(vf a, vf b) { return a < b ? a : b; }
CPA_ALWAYS_INLINE vi vi_set1(int32_t x) { return x; }
CPA_ALWAYS_INLINE vi vi_load(const int32_t *p) { return *p; }
CPA_ALWAYS_INLINE vi vi_iota(int32_t base) { return base; }
CPA_ALWAYS_INLINE vmask vm_in_range(vi lo, vi x, vi hi) { return lo <= x && x <= hi; }
CPA_ALWAYS_INLINE vmask vm_eq(vf a, vf b) { return a == b; }
CPA_ALWAYS_INLINE vmask vm_neq(vf a, vf b) { return a != b; }
CPA_ALWAYS_INLINE int vm_any(vmask m) { return m != 0; }
CPA_ALWAYS_INLINE vf vf_select(vmask m, vf a, vf b) { return m ? a : b; }

CPA_ALWAYS_INLINE vf vf_exp2(vf x)
{
    if (isnan(x))
        return x;
    x = x < -150.0f ? -150.0f : (x > 128.0f ? 128.0f : x);
    float n = nearbyintf(x), f = x - n;
    float p = CPA_EXP2_C6;
    p = p * f + CPA_EXP2_C5;
    p = p * f + CPA_EXP2_C4;
    p = p * f + CPA_EXP2_C3;
    p = p * f + CPA_EXP2_C2;
    p = p * f + CPA_EXP2_C1;
    p = p * f + CPA_EXP2_C0;
    return ldexpf(p, (int)n);
}
#endif

#endif /* CPATTN_SIMD_H */
