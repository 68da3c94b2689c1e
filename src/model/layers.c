/*
 * layers.c — the GPT's local layers (embedding, RMSNorm, bias-free linear,
 * rotary embedding, SwiGLU, cross-entropy, residual add), forward and
 * backward, on plain row-major fp32 arrays in the style of llm.c.  This file
 * is NOT the attention (that is src/kernels and src/cp) and knows nothing of
 * MPI; it holds the per-token arithmetic around it.
 *
 * Conventions (see layers.h): backward functions ACCUMULATE (+=) into their
 * gradients, except cross-entropy, whose backward WRITES dlogits.  These are
 * internal functions: arguments are not validated, shapes are the caller's
 * promise, and nothing here allocates.
 *
 * Determinism.  Every OpenMP loop below gives each output element to exactly
 * one iteration, and each iteration computes its element(s) in a fixed order
 * that does not depend on the thread count: rows for per-row outputs, and
 * for parameter gradients that sum over rows (RMSNorm's dweight, the
 * embedding's dwte) the loop runs over COLUMNS, each column adding the rows
 * in order 0..N-1.  There is no reduction clause anywhere, so results are
 * bitwise identical for any number of threads.  The one exception is the
 * matmul, which is OpenBLAS's sgemm: OpenBLAS may block or split the work
 * differently for different thread counts, so its rounding may (in
 * principle) depend on the thread count; we accept that for the linear
 * layers.  sgemm is called outside any parallel region so that the OpenMP
 * build of OpenBLAS uses its own team of threads.
 *
 * Precision.  Sums that decide a whole row (RMSNorm's mean square and its
 * backward dot product, cross-entropy's log-sum-exp) and the RoPE angles are
 * computed in double; element-wise products are fp32 or double cast once.
 */
#include "layers.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* Loops smaller than this many elements of work run on one thread: the
 * fork/join costs more than the work.  The result does not depend on it. */
#define LAYERS_PAR_MIN 32768

/* Column block for the loops that parallelise over columns and walk rows in
 * order: wide enough for contiguous reads of each row's segment. */
#define LAYERS_COL_BLOCK 64

/* ------------------------------------------------------------------------ */
/* Token embedding                                                           */
/* ------------------------------------------------------------------------ */

void cpa_embedding_forward(float *out, const int32_t *tokens, const float *wte, int64_t N,
                           int64_t C)
{
    /* out [N, C], tokens [N], wte [V, C] */
#pragma omp parallel for if (N * C >= LAYERS_PAR_MIN)
    for (int64_t n = 0; n < N; ++n)
        memcpy(out + n * C, wte + (int64_t)tokens[n] * C, (size_t)C * sizeof(float));
}

void cpa_embedding_backward(float *dwte, const float *dout, const int32_t *tokens, int64_t N,
                            int64_t C)
{
    /* dwte [V, C], dout [N, C], tokens [N].  Several rows may hit the same
     * token, so the parallel loop runs over column blocks; within a block
     * the rows are added in order n = 0..N-1. */
    const int64_t nblocks = (C + LAYERS_COL_BLOCK - 1) / LAYERS_COL_BLOCK;
#pragma omp parallel for if (N * C >= LAYERS_PAR_MIN)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
        const int64_t c0 = blk * LAYERS_COL_BLOCK;
        const int64_t c1 = c0 + LAYERS_COL_BLOCK < C ? c0 + LAYERS_COL_BLOCK : C;
        for (int64_t n = 0; n < N; ++n) {
            float *dw = dwte + (int64_t)tokens[n] * C;
            const float *d = dout + n * C;
            for (int64_t c = c0; c < c1; ++c)
                dw[c] += d[c];
        }
    }
}

/* ------------------------------------------------------------------------ */
/* RMSNorm                                                                   */
/* ------------------------------------------------------------------------ */

void cpa_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                         int64_t N, int64_t C, float eps)
{
    /* out, inp [N, C], weight [C], rstd [N] */
#pragma omp parallel for if (N * C >= LAYERS_PAR_MIN)
    for (int64_t n = 0; n < N; ++n) {
        const float *x = inp + n * C;
        float *y = out + n * C;
        double ss = 0.0;
        for (int64_t c = 0; c < C; ++c)
            ss += (double)x[c] * x[c];
        const float r = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
        for (int64_t c = 0; c < C; ++c)
            y[c] = (x[c] * r) * weight[c];
        rstd[n] = r;
    }
}

/* With r = rstd and y_j = x_j · r · w_j, where r = (mean(x²) + eps)^(-1/2):
 *   dL/dx_j = r · w_j · g_j  -  (r³ / C) · x_j · Σ_c g_c · w_c · x_c
 *   dL/dw_c = Σ_n g_nc · x_nc · r_n                                        */
void cpa_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                          const float *weight, const float *rstd, int64_t N, int64_t C)
{
    /* dinp, dout, inp [N, C], dweight, weight [C], rstd [N] */
    if (dinp) {
#pragma omp parallel for if (N * C >= LAYERS_PAR_MIN)
        for (int64_t n = 0; n < N; ++n) {
            const float *x = inp + n * C;
            const float *g = dout + n * C;
            float *dx = dinp + n * C;
            const double r = rstd[n];
            double dot = 0.0; /* Σ_c g_c w_c x_c */
            for (int64_t c = 0; c < C; ++c)
                dot += (double)g[c] * weight[c] * x[c];
            const double k = r * r * r * dot / (double)C;
            for (int64_t c = 0; c < C; ++c) {
                const float term = (float)(r * weight[c] * g[c] - k * x[c]);
                dx[c] += term;
            }
        }
    }
    if (dweight) {
        /* Over column blocks, each column summing rows 0..N-1 in order. */
        const int64_t nblocks = (C + LAYERS_COL_BLOCK - 1) / LAYERS_COL_BLOCK;
#pragma omp parallel for if (N * C >= LAYERS_PAR_MIN)
        for (int64_t blk = 0; blk < nblocks; ++blk) {
            const int64_t c0 = blk * LAYERS_COL_BLOCK;
            const int64_t c1 = c0 + LAYERS_COL_BLOCK < C ? c0 + LAYERS_COL_BLOCK : C;
            double acc[LAYERS_COL_BLOCK] = {0};
            for (int64_t n = 0; n < N; ++n) {
                const float *x = inp + n * C;
                const float *g = dout + n * C;
                const double r = rstd[n];
                for (int64_t c = c0; c < c1; ++c)
                    acc[c - c0] += (double)g[c] * x[c] * r;
            }
            for (int64_t c = c0; c < c1; ++c) {
                const float term = (float)acc[c - c0];
                dweight[c] += term;
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Linear layer (no bias), through OpenBLAS                                  */
/* ------------------------------------------------------------------------ */

/* Sizes go to cblas as int: every dimension (and C·OC) must fit in an int,
 * which the model's sizes do by far.  A zero-sized product is skipped
 * rather than handed to cblas (whose argument checks reject ld = 0). */

void cpa_matmul_forward(float *out, const float *inp, const float *weight, int64_t N, int64_t C,
                        int64_t OC)
{
    /* out [N, OC] = inp [N, C] · weight [OC, C]ᵀ */
    if (N == 0 || OC == 0)
        return;
    if (C == 0) {
        memset(out, 0, (size_t)(N * OC) * sizeof(float));
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)C, 1.0f, inp,
                (int)C, weight, (int)C, 0.0f, out, (int)OC);
}

void cpa_matmul_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                         const float *weight, int64_t N, int64_t C, int64_t OC)
{
    /* dout [N, OC], inp/dinp [N, C], weight/dweight [OC, C] */
    if (N == 0 || C == 0 || OC == 0)
        return;
    if (dinp) /* dinp [N, C] += dout [N, OC] · weight [OC, C] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)C, (int)OC, 1.0f,
                    dout, (int)OC, weight, (int)C, 1.0f, dinp, (int)C);
    if (dweight) /* dweight [OC, C] += dout [N, OC]ᵀ · inp [N, C] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OC, (int)C, (int)N, 1.0f,
                    dout, (int)OC, inp, (int)C, 1.0f, dweight, (int)C);
}

/* ------------------------------------------------------------------------ */
/* Rotary position embedding                                                 */
/* ------------------------------------------------------------------------ */

/* Pairs (i, i + D/2) whose cos/sin are computed together and then applied
 * to every (batch, head) of one token: T·D/2 sin/cos evaluations per call
 * instead of B·T·N·D/2. */
#define ROPE_CHUNK 64

/* Precondition: x is a 4-d logical [B, T, N, D] view with D EVEN (an odd
 * D has no half to pair the last element with; it is not checked here, the
 * model validates its head dim once).  Angles θ = pos[t] · base^(-2i/D) are
 * formed in double, so a large global position (a late zigzag chunk) loses
 * no accuracy; the rotation itself is done in double and rounded once:
 *   x'_i       = x_i cos θ - x_{i+D/2} sin θ
 *   x'_{i+D/2} = x_i sin θ + x_{i+D/2} cos θ
 * The rotation is orthogonal, so its transpose (inverse = 1, angle -θ) is
 * both its inverse and its backward. */
void cpa_rope_apply(cpa_tensor x, const int64_t *pos, float base, int inverse)
{
    const int64_t B = x.shape[0], T = x.shape[1], N = x.shape[2], D = x.shape[3];
    const int64_t sb = x.stride[0], st = x.stride[1], sh = x.stride[2], sd = x.stride[3];
    const int64_t half = D / 2;
    const double sign = inverse ? -1.0 : 1.0;
    float *const data = x.data;
#pragma omp parallel for if (B * T * N * D >= LAYERS_PAR_MIN)
    for (int64_t t = 0; t < T; ++t) {
        double cos_t[ROPE_CHUNK], sin_t[ROPE_CHUNK];
        for (int64_t i0 = 0; i0 < half; i0 += ROPE_CHUNK) {
            const int64_t len = half - i0 < ROPE_CHUNK ? half - i0 : ROPE_CHUNK;
            for (int64_t i = 0; i < len; ++i) {
                const double inv_freq = pow((double)base, -2.0 * (double)(i0 + i) / (double)D);
                const double theta = (double)pos[t] * inv_freq;
                cos_t[i] = cos(theta);
                sin_t[i] = sign * sin(theta);
            }
            for (int64_t b = 0; b < B; ++b) {
                for (int64_t n = 0; n < N; ++n) {
                    float *p = data + b * sb + t * st + n * sh;
                    for (int64_t i = 0; i < len; ++i) {
                        float *a = p + (i0 + i) * sd, *c = p + (i0 + i + half) * sd;
                        const double x0 = *a, x1 = *c;
                        *a = (float)(x0 * cos_t[i] - x1 * sin_t[i]);
                        *c = (float)(x0 * sin_t[i] + x1 * cos_t[i]);
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* SwiGLU                                                                    */
/* ------------------------------------------------------------------------ */

/* e^-c for c >= 0, written so that the loops below vectorise (no calls,
 * no branches; floorf and fminf do not vectorise in strict ISO C): c is
 * clamped to 87 on its bits (e^-87 is still a normal float; a NaN becomes
 * 87, see sigmoid_stable), -c split as n·ln2 + r with |r| <= ln2/2 (n by
 * rounding through an int, ln2 in two parts so n·hi is exact), e^r by its
 * degree-6 Taylor polynomial (relative error < 2e-7), 2^n put into the
 * exponent bits. */
static inline float exp_neg(float c)
{
    int32_t bits;
    memcpy(&bits, &c, sizeof bits);
    bits = bits < 0x42ae0000 ? bits : 0x42ae0000; /* min(c, 87): c's bits as an int */
    memcpy(&c, &bits, sizeof c);
    const float a = -c;
    const float n = (float)(int32_t)(a * 1.44269504f - 0.5f); /* round(a·log2 e), a <= 0 */
    const float r = (a - n * 0.693145752f) - n * 1.42860677e-6f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t scale_bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return p * scale;
}

/* sigmoid without overflow: the exponential is only ever taken of -|g|, so
 * a large |g| gives 0 or 1 instead of inf/inf.  A NaN g gives a finite s
 * here, but every use multiplies by g, so NaN still propagates. */
static inline float sigmoid_stable(float g)
{
    const float e = exp_neg(fabsf(g));
    const float positive = (float)(g >= 0.0f); /* 1 or 0, not a branch */
    return (e + positive * (1.0f - e)) / (1.0f + e);
}

/* One row of SwiGLU and of its gradient, compiled for AVX-512, AVX2 and
 * the baseline and picked at run time (the loops vectorise; the library's
 * default build targets plain x86-64). */
#define CPA_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

CPA_VECTOR_CLONES
static void swiglu_row(float *restrict o, const float *restrict g, const float *restrict u,
                       int64_t F)
{
    for (int64_t f = 0; f < F; ++f)
        o[f] = g[f] * sigmoid_stable(g[f]) * u[f];
}

CPA_VECTOR_CLONES
static void swiglu_row_backward(float *restrict dg, float *restrict du, const float *restrict d,
                                const float *restrict g, const float *restrict u, int64_t F)
{
    for (int64_t f = 0; f < F; ++f) {
        const float s = sigmoid_stable(g[f]);
        dg[f] += d[f] * u[f] * (s * (1.0f + g[f] * (1.0f - s)));
        du[f] += d[f] * (g[f] * s);
    }
}

void cpa_swiglu_forward(float *out, const float *gate_up, int64_t N, int64_t F)
{
    /* out [N, F], gate_up [N, 2F] = [gate | up] */
#pragma omp parallel for if (N * F >= LAYERS_PAR_MIN)
    for (int64_t n = 0; n < N; ++n)
        swiglu_row(out + n * F, gate_up + n * 2 * F, gate_up + n * 2 * F + F, F);
}

/* With s = sigmoid(g): silu'(g) = s + g·s·(1 - s) = s·(1 + g·(1 - s)), so
 *   d gate = dout · up · s · (1 + g (1 - s)),   d up = dout · g · s.        */
void cpa_swiglu_backward(float *dgate_up, const float *dout, const float *gate_up, int64_t N,
                         int64_t F)
{
    /* dgate_up, gate_up [N, 2F], dout [N, F] */
#pragma omp parallel for if (N * F >= LAYERS_PAR_MIN)
    for (int64_t n = 0; n < N; ++n) {
        const float *g = gate_up + n * 2 * F;
        float *dg = dgate_up + n * 2 * F;
        swiglu_row_backward(dg, dg + F, dout + n * F, g, g + F, F);
    }
}

/* ------------------------------------------------------------------------ */
/* Cross-entropy                                                             */
/* ------------------------------------------------------------------------ */

/* log Σ_v exp(x_v) in double, shifted by the row maximum. */
static double row_logsumexp(const float *x, int64_t V)
{
    double m = -INFINITY;
    for (int64_t v = 0; v < V; ++v)
        if (x[v] > m)
            m = x[v];
    double s = 0.0;
    for (int64_t v = 0; v < V; ++v)
        s += exp((double)x[v] - m);
    return m + log(s);
}

/* Precondition: each target is < 0 ("no target") or in 0..V-1; losses must
 * not be NULL (the per-row losses are what makes the returned sum
 * independent of the thread count: it is added in row order afterwards). */
double cpa_crossentropy_forward(float *losses, const float *logits, const int32_t *targets,
                                int64_t N, int64_t V)
{
    /* losses [N], logits [N, V], targets [N] */
#pragma omp parallel for if (N * V >= LAYERS_PAR_MIN)
    for (int64_t n = 0; n < N; ++n) {
        const float *x = logits + n * V;
        losses[n] = targets[n] < 0 ? 0.0f : (float)(row_logsumexp(x, V) - x[targets[n]]);
    }
    double sum = 0.0;
    for (int64_t n = 0; n < N; ++n)
        sum += losses[n];
    return sum;
}

/* dlogits may be the same array as logits (in place: the vocabulary logits
 * are the largest activation, so the model may reuse them for their
 * gradient); each element is read before it is overwritten. */
void cpa_crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets,
                               float scale, int64_t N, int64_t V)
{
    /* dlogits, logits [N, V], targets [N] */
#pragma omp parallel for if (N * V >= LAYERS_PAR_MIN)
    for (int64_t n = 0; n < N; ++n) {
        const float *x = logits + n * V;
        float *dx = dlogits + n * V;
        const int32_t target = targets[n];
        if (target < 0) {
            for (int64_t v = 0; v < V; ++v)
                dx[v] = 0.0f;
            continue;
        }
        const double lse = row_logsumexp(x, V);
        for (int64_t v = 0; v < V; ++v) {
            const double p = exp((double)x[v] - lse);
            dx[v] = (float)((p - (v == target ? 1.0 : 0.0)) * (double)scale);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Residual                                                                  */
/* ------------------------------------------------------------------------ */

void cpa_residual_forward(float *out, const float *a, const float *b, int64_t n)
{
    /* out, a, b [n]; out may alias a or b */
#pragma omp parallel for if (n >= LAYERS_PAR_MIN)
    for (int64_t i = 0; i < n; ++i)
        out[i] = a[i] + b[i];
}
