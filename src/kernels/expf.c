/*
 * expf.c — the row primitives of the softmax: max, exp-and-sum, dot.
 *
 * Scalar expf costs as much as both GEMMs of a tile at D=64, so the
 * exponential is vectorised: Cephes-style range reduction x = n·ln2 + r,
 * a degree-6 polynomial for e^r on |r| <= ln2/2 (relative error about
 * 2e-7, close to float rounding), and 2^n built in the exponent bits.
 * Inputs below ln(FLT_MIN) (including -inf from masking) give exactly 0,
 * which is what a masked score must contribute.  No fast-math: the
 * compiler must keep IEEE semantics for -inf elsewhere.
 */
#include "kernel_internal.h"

#include <float.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define CPA_HAVE_AVX2 1
#endif

#define EXP_HI 88.3762626647949f
#define EXP_LO (-87.3365447504f) /* ln(FLT_MIN): below this the result is 0 */
#define LOG2E 1.44269504088896341f
#define LN2_HI 0.693359375f
#define LN2_LO (-2.12194440e-4f)
#define P0 1.9875691500E-4f
#define P1 1.3981999507E-3f
#define P2 8.3334519073E-3f
#define P3 4.1665795894E-2f
#define P4 1.6666665459E-1f
#define P5 5.0000001201E-1f

float cpa_expf(float x)
{
    if (!(x >= EXP_LO)) /* -inf and tiny give 0; NaN stays NaN */
        return isnan(x) ? x : 0.0f;
    if (x > EXP_HI)
        x = EXP_HI;
    float n = nearbyintf(x * LOG2E);
    float r = fmaf(-n, LN2_HI, x);
    r = fmaf(-n, LN2_LO, r);
    float y = P0;
    y = fmaf(y, r, P1);
    y = fmaf(y, r, P2);
    y = fmaf(y, r, P3);
    y = fmaf(y, r, P4);
    y = fmaf(y, r, P5);
    y = fmaf(y, r * r, r) + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

#ifdef CPA_HAVE_AVX2
static inline __m256 exp8(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(EXP_LO);
    __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ); /* false for -inf and NaN */
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);   /* NaN must stay NaN */
    __m256 xin = x;
    x = _mm256_min_ps(x, _mm256_set1_ps(EXP_HI));
    x = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    __m256 y = _mm256_set1_ps(P0);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(P1));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(P2));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(P3));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(P4));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(P5));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    return _mm256_or_ps(_mm256_and_ps(y, keep), _mm256_and_ps(xin, nan));
}

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax8(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

float cpa_row_max(const float *x, int64_t n)
{
    float m = -INFINITY;
    int64_t j = 0;
#ifdef CPA_HAVE_AVX2
    if (n >= 8) {
        __m256 vm = _mm256_set1_ps(-INFINITY);
        for (; j + 8 <= n; j += 8)
            vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + j));
        m = hmax8(vm);
    }
#endif
    for (; j < n; ++j)
        m = x[j] > m ? x[j] : m;
    return m;
}

float cpa_row_exp_sum(float *x, int64_t n, float shift)
{
    float sum = 0.0f;
    int64_t j = 0;
#ifdef CPA_HAVE_AVX2
    __m256 vs = _mm256_setzero_ps(), vshift = _mm256_set1_ps(shift);
    for (; j + 8 <= n; j += 8) {
        __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), vshift));
        _mm256_storeu_ps(x + j, p);
        vs = _mm256_add_ps(vs, p);
    }
    sum = hsum8(vs);
#endif
    for (; j < n; ++j) {
        x[j] = cpa_expf(x[j] - shift);
        sum += x[j];
    }
    return sum;
}

void cpa_row_exp(float *x, int64_t n, float shift)
{
    int64_t j = 0;
#ifdef CPA_HAVE_AVX2
    __m256 vshift = _mm256_set1_ps(shift);
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(x + j, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), vshift)));
#endif
    for (; j < n; ++j)
        x[j] = cpa_expf(x[j] - shift);
}

float cpa_row_dot(const float *a, const float *b, int64_t n)
{
    float sum = 0.0f;
    int64_t j = 0;
#ifdef CPA_HAVE_AVX2
    __m256 vs = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8)
        vs = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), vs);
    sum = hsum8(vs);
#endif
    for (; j < n; ++j)
        sum = fmaf(a[j], b[j], sum);
    return sum;
}
