/*
 * test_layers.c — the GPT's local layers (src/model/layers.c).
 *
 * Gradients.  Every backward is checked against central finite differences
 * of a scalar loss L = Σ r ∘ f(x) (r a fixed random tensor, so the analytic
 * gradient is the backward with dout = r), for every element of every input
 * and parameter, at tiny sizes.  The forward runs in fp32 and L is summed in
 * double, with h = 1e-2 (the step actually taken, (x+h) - (x-h) in float,
 * is the denominator).  The error of the difference quotient is then at
 * most about
 *   truncation  h²/6 · |f'''|              ~ 2e-5 for O(1) inputs, and
 *   rounding    #terms · 6e-8 / (2h)       ~ 1e-4 at worst (errors of the
 *               fp32 outputs summed over <= 30 terms; typically ~1e-6),
 * and the measured maxima are 1e-7 .. 1.3e-5 (TEST_VERBOSE=1 prints them).
 * We require max |analytic - numeric| <= 1e-3 · max(1, max |analytic|):
 * ~100x above the measured error, and far below what a wrong term gives
 * (dropping half of a term shows up as an O(0.1) error).
 *
 * Also: RoPE's algebra (inverse, norms, relative positions, strided views),
 * cross-entropy against a direct double computation and at extreme logits,
 * accumulation (+=) of every backward, and bitwise determinism across
 * OpenMP thread counts (matmul excluded: OpenBLAS's rounding may depend on
 * its thread count).
 */
#include "cpattn.h"
#include "kernel_test_util.h"
#include "layers.h"
#include "test.h"

#include <omp.h>
#include <stdint.h>
#include <string.h>

#define FD_H 1e-2f
#define FD_RTOL 1e-3

static int verbose(void) { return getenv("TEST_VERBOSE") != NULL; }

static void fill(float *x, int64_t n, uint64_t seed, float amp, float offset)
{
    for (int64_t i = 0; i < n; ++i)
        x[i] = offset + amp * tu_uniform(seed, (uint64_t)i);
}

static double dot_d(const float *a, const float *b, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i)
        s += (double)a[i] * b[i];
    return s;
}

/* Central differences of loss(ctx) with respect to each x[i], against
 * grad[i].  Returns nothing; records one check. */
typedef double (*loss_fn)(void *ctx);

static void fd_check(const char *what, loss_fn loss, void *ctx, float *x, const float *grad,
                     int64_t n)
{
    double err = 0.0, scale = 0.0;
    int64_t worst = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float x0 = x[i];
        const float xp = x0 + FD_H, xm = x0 - FD_H;
        x[i] = xp;
        const double lp = loss(ctx);
        x[i] = xm;
        const double lm = loss(ctx);
        x[i] = x0;
        const double num = (lp - lm) / ((double)xp - (double)xm);
        const double e = fabs(num - grad[i]);
        if (e > err || isnan(e)) {
            err = isnan(e) ? INFINITY : e;
            worst = i;
        }
        if (fabs(grad[i]) > scale)
            scale = fabs(grad[i]);
    }
    const double tol = FD_RTOL * (scale > 1.0 ? scale : 1.0);
    if (verbose())
        fprintf(stderr, "  fd %-22s max abs err %.3e (tol %.3e, scale %.3e)\n", what, err, tol,
                scale);
    CHECK_MSG(err <= tol, "%s: max |analytic - numeric| = %.3e at %lld > tol %.3e (scale %.3e)",
              what, err, (long long)worst, tol, scale);
}

/* Accumulation: a backward run into `pre`-filled buffers must give pre + g,
 * where g is the same backward run into zeros. */
static void check_accumulated(const char *what, const float *got, const float *pre,
                              const float *g, int64_t n)
{
    double err = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        const float want = pre[i] + g[i];
        const double e = fabs((double)got[i] - want);
        if (e > err || isnan(e))
            err = isnan(e) ? INFINITY : e;
    }
    CHECK_MSG(err <= 1e-6, "%s: accumulate max err %.3e", what, err);
}

/* ------------------------------------------------------------------------ */
/* Embedding                                                                 */
/* ------------------------------------------------------------------------ */

enum { EV = 7, EC = 5, EN = 5 };

typedef struct emb_ctx {
    int32_t tokens[EN];
    float wte[EV * EC], out[EN * EC], r[EN * EC];
} emb_ctx;

static double emb_loss(void *p)
{
    emb_ctx *c = p;
    cpa_embedding_forward(c->out, c->tokens, c->wte, EN, EC);
    return dot_d(c->r, c->out, EN * EC);
}

static void test_embedding(void)
{
    emb_ctx c = {.tokens = {3, 1, 3, 6, 3}};
    fill(c.wte, EV * EC, 1, 1.0f, 0.0f);
    fill(c.r, EN * EC, 2, 1.0f, 0.0f);

    cpa_embedding_forward(c.out, c.tokens, c.wte, EN, EC);
    int rows_ok = 1;
    for (int n = 0; n < EN; ++n)
        rows_ok &= memcmp(c.out + n * EC, c.wte + c.tokens[n] * EC, EC * sizeof(float)) == 0;
    CHECK(rows_ok);

    float dwte[EV * EC] = {0};
    cpa_embedding_backward(dwte, c.r, c.tokens, EN, EC);
    fd_check("embedding dwte", emb_loss, &c, c.wte, dwte, EV * EC);

    /* Repeated token 3 (rows 0, 2, 4) accumulates in row order, on top of
     * what dwte already held; untouched tokens keep their values. */
    float pre[EV * EC], acc[EV * EC];
    fill(pre, EV * EC, 3, 1.0f, 0.0f);
    memcpy(acc, pre, sizeof acc);
    cpa_embedding_backward(acc, c.r, c.tokens, EN, EC);
    int rep_ok = 1, other_ok = 1;
    for (int k = 0; k < EC; ++k) {
        float w3 = pre[3 * EC + k];
        w3 += c.r[0 * EC + k];
        w3 += c.r[2 * EC + k];
        w3 += c.r[4 * EC + k];
        rep_ok &= acc[3 * EC + k] == w3;
        rep_ok &= acc[1 * EC + k] == pre[1 * EC + k] + c.r[1 * EC + k];
        rep_ok &= acc[6 * EC + k] == pre[6 * EC + k] + c.r[3 * EC + k];
        for (int v = 0; v < EV; ++v)
            if (v != 1 && v != 3 && v != 6)
                other_ok &= acc[v * EC + k] == pre[v * EC + k];
    }
    CHECK_MSG(rep_ok, "repeated tokens must accumulate in row order");
    CHECK_MSG(other_ok, "unused token rows must be untouched");
    check_accumulated("embedding dwte", acc, pre, dwte, EV * EC);
}

/* ------------------------------------------------------------------------ */
/* RMSNorm                                                                   */
/* ------------------------------------------------------------------------ */

enum { RN = 4, RC = 6 };
#define R_EPS 1e-5f

typedef struct rms_ctx {
    float inp[RN * RC], w[RC], out[RN * RC], rstd[RN], r[RN * RC];
} rms_ctx;

static double rms_loss(void *p)
{
    rms_ctx *c = p;
    cpa_rmsnorm_forward(c->out, c->rstd, c->inp, c->w, RN, RC, R_EPS);
    return dot_d(c->r, c->out, RN * RC);
}

static void test_rmsnorm(void)
{
    rms_ctx c;
    fill(c.inp, RN * RC, 10, 1.5f, 0.2f);
    fill(c.w, RC, 11, 0.5f, 1.0f);
    fill(c.r, RN * RC, 12, 1.0f, 0.0f);

    /* Forward against a direct double computation. */
    cpa_rmsnorm_forward(c.out, c.rstd, c.inp, c.w, RN, RC, R_EPS);
    double ferr = 0.0;
    for (int n = 0; n < RN; ++n) {
        double ss = 0.0;
        for (int k = 0; k < RC; ++k)
            ss += (double)c.inp[n * RC + k] * c.inp[n * RC + k];
        const double rs = 1.0 / sqrt(ss / RC + R_EPS);
        ferr = fmax(ferr, fabs(c.rstd[n] - rs) / rs);
        for (int k = 0; k < RC; ++k)
            ferr = fmax(ferr, fabs(c.out[n * RC + k] - c.inp[n * RC + k] * rs * c.w[k]));
    }
    CHECK_MSG(ferr <= 1e-6, "rmsnorm forward err %.3e", ferr);

    float dinp[RN * RC] = {0}, dw[RC] = {0};
    cpa_rmsnorm_backward(dinp, dw, c.r, c.inp, c.w, c.rstd, RN, RC);
    fd_check("rmsnorm dinp", rms_loss, &c, c.inp, dinp, RN * RC);
    fd_check("rmsnorm dweight", rms_loss, &c, c.w, dw, RC);

    rms_loss(&c); /* restore rstd of the unperturbed input */
    float pre_i[RN * RC], pre_w[RC], acc_i[RN * RC], acc_w[RC];
    fill(pre_i, RN * RC, 13, 1.0f, 0.0f);
    fill(pre_w, RC, 14, 1.0f, 0.0f);
    memcpy(acc_i, pre_i, sizeof acc_i);
    memcpy(acc_w, pre_w, sizeof acc_w);
    cpa_rmsnorm_backward(acc_i, acc_w, c.r, c.inp, c.w, c.rstd, RN, RC);
    check_accumulated("rmsnorm dinp", acc_i, pre_i, dinp, RN * RC);
    check_accumulated("rmsnorm dweight", acc_w, pre_w, dw, RC);

    /* NULL skips either output. */
    memcpy(acc_w, pre_w, sizeof acc_w);
    cpa_rmsnorm_backward(NULL, acc_w, c.r, c.inp, c.w, c.rstd, RN, RC);
    check_accumulated("rmsnorm dweight only", acc_w, pre_w, dw, RC);
    memcpy(acc_i, pre_i, sizeof acc_i);
    cpa_rmsnorm_backward(acc_i, NULL, c.r, c.inp, c.w, c.rstd, RN, RC);
    check_accumulated("rmsnorm dinp only", acc_i, pre_i, dinp, RN * RC);
}

/* ------------------------------------------------------------------------ */
/* Matmul                                                                    */
/* ------------------------------------------------------------------------ */

enum { MN = 3, MC = 4, MOC = 5 };

typedef struct mm_ctx {
    float inp[MN * MC], w[MOC * MC], out[MN * MOC], r[MN * MOC];
} mm_ctx;

static double mm_loss(void *p)
{
    mm_ctx *c = p;
    cpa_matmul_forward(c->out, c->inp, c->w, MN, MC, MOC);
    return dot_d(c->r, c->out, MN * MOC);
}

static void test_matmul(void)
{
    mm_ctx c;
    fill(c.inp, MN * MC, 20, 1.0f, 0.0f);
    fill(c.w, MOC * MC, 21, 1.0f, 0.0f);
    fill(c.r, MN * MOC, 22, 1.0f, 0.0f);

    cpa_matmul_forward(c.out, c.inp, c.w, MN, MC, MOC);
    double ferr = 0.0;
    for (int n = 0; n < MN; ++n)
        for (int o = 0; o < MOC; ++o)
            ferr = fmax(ferr, fabs(c.out[n * MOC + o] - dot_d(c.inp + n * MC, c.w + o * MC, MC)));
    CHECK_MSG(ferr <= 1e-6, "matmul forward err %.3e", ferr);

    float dinp[MN * MC] = {0}, dw[MOC * MC] = {0};
    cpa_matmul_backward(dinp, dw, c.r, c.inp, c.w, MN, MC, MOC);
    fd_check("matmul dinp", mm_loss, &c, c.inp, dinp, MN * MC);
    fd_check("matmul dweight", mm_loss, &c, c.w, dw, MOC * MC);

    float pre_i[MN * MC], pre_w[MOC * MC], acc_i[MN * MC], acc_w[MOC * MC];
    fill(pre_i, MN * MC, 23, 1.0f, 0.0f);
    fill(pre_w, MOC * MC, 24, 1.0f, 0.0f);
    memcpy(acc_i, pre_i, sizeof acc_i);
    memcpy(acc_w, pre_w, sizeof acc_w);
    cpa_matmul_backward(acc_i, NULL, c.r, c.inp, c.w, MN, MC, MOC);
    cpa_matmul_backward(NULL, acc_w, c.r, c.inp, c.w, MN, MC, MOC);
    check_accumulated("matmul dinp", acc_i, pre_i, dinp, MN * MC);
    check_accumulated("matmul dweight", acc_w, pre_w, dw, MOC * MC);
}

/* ------------------------------------------------------------------------ */
/* RoPE                                                                      */
/* ------------------------------------------------------------------------ */

enum { PB = 2, PT = 3, PH = 2, PD = 4 };
static const int64_t rope_pos[PT] = {0, 5, 9};
#define ROPE_BASE 10000.0f

typedef struct rope_ctx {
    float x[PB * PT * PH * PD], work[PB * PT * PH * PD], r[PB * PT * PH * PD];
} rope_ctx;

static cpa_tensor view4(float *data, int64_t B, int64_t T, int64_t N, int64_t D)
{
    const int64_t shape[4] = {B, T, N, D};
    return cpa_tensor_make(data, 4, shape);
}

static double rope_loss(void *p)
{
    rope_ctx *c = p;
    memcpy(c->work, c->x, sizeof c->work);
    cpa_rope_apply(view4(c->work, PB, PT, PH, PD), rope_pos, ROPE_BASE, 0);
    return dot_d(c->r, c->work, PB * PT * PH * PD);
}

static void test_rope_grad(void)
{
    rope_ctx c;
    fill(c.x, PB * PT * PH * PD, 30, 1.0f, 0.0f);
    fill(c.r, PB * PT * PH * PD, 31, 1.0f, 0.0f);
    /* The backward of an orthogonal rotation is its inverse. */
    float g[PB * PT * PH * PD];
    memcpy(g, c.r, sizeof g);
    cpa_rope_apply(view4(g, PB, PT, PH, PD), rope_pos, ROPE_BASE, 1);
    fd_check("rope dx", rope_loss, &c, c.x, g, PB * PT * PH * PD);
}

static void test_rope_algebra(void)
{
    enum { B = 2, T = 4, N = 3, D = 16, n = B * T * N * D };
    const int64_t pos[T] = {0, 5, 9, 4097};
    float x[n], y[n];
    fill(x, n, 40, 1.0f, 0.0f);
    memcpy(y, x, sizeof y);
    cpa_rope_apply(view4(y, B, T, N, D), pos, ROPE_BASE, 0);

    /* Position 0 is the identity (cos 0 = 1, sin 0 = 0, exactly). */
    int id_ok = 1;
    for (int b = 0; b < B; ++b)
        id_ok &= memcmp(x + b * T * N * D, y + b * T * N * D, N * D * sizeof(float)) == 0;
    CHECK_MSG(id_ok, "rope at position 0 must be the identity");

    /* Each (i, i + D/2) pair keeps its norm. */
    double nerr = 0.0;
    for (int row = 0; row < B * T * N; ++row)
        for (int i = 0; i < D / 2; ++i) {
            const float *a = x + row * D, *c = y + row * D;
            const double n0 = (double)a[i] * a[i] + (double)a[i + D / 2] * a[i + D / 2];
            const double n1 = (double)c[i] * c[i] + (double)c[i + D / 2] * c[i + D / 2];
            nerr = fmax(nerr, fabs(n1 - n0));
        }
    CHECK_MSG(nerr <= 1e-6, "rope pair norm changed by %.3e", nerr);

    /* inverse(apply(x)) == x. */
    cpa_rope_apply(view4(y, B, T, N, D), pos, ROPE_BASE, 1);
    double ierr = 0.0;
    for (int i = 0; i < n; ++i)
        ierr = fmax(ierr, fabs((double)y[i] - x[i]));
    CHECK_MSG(ierr <= 1e-6, "rope inverse(apply(x)) err %.3e", ierr);
}

/* q·k after rotation depends only on m - n: what makes the true global
 * positions of zigzag shards give the same attention as one long sequence. */
static double rotated_dot(const float *q0, const float *k0, int64_t m, int64_t n, int D)
{
    float q[64], k[64];
    memcpy(q, q0, (size_t)D * sizeof(float));
    memcpy(k, k0, (size_t)D * sizeof(float));
    cpa_rope_apply(view4(q, 1, 1, 1, D), &m, ROPE_BASE, 0);
    cpa_rope_apply(view4(k, 1, 1, 1, D), &n, ROPE_BASE, 0);
    return dot_d(q, k, D);
}

static void test_rope_relative(void)
{
    enum { D = 16 };
    float q[D], k[D];
    fill(q, D, 50, 1.0f, 0.0f);
    fill(k, D, 51, 1.0f, 0.0f);
    const double d31 = rotated_dot(q, k, 3, 1, D);
    const double d1210 = rotated_dot(q, k, 12, 10, D);
    const double dfar = rotated_dot(q, k, 4099, 4097, D);
    CHECK_MSG(fabs(d31 - d1210) <= 1e-5, "q·k (3,1) %.9f vs (12,10) %.9f", d31, d1210);
    CHECK_MSG(fabs(d31 - dfar) <= 1e-5, "q·k (3,1) %.9f vs (4099,4097) %.9f", d31, dfar);
    /* ... and does depend on the offset, so the check above is not vacuous. */
    const double d33 = rotated_dot(q, k, 3, 3, D);
    CHECK_MSG(fabs(d31 - d33) > 1e-3, "q·k (3,1) %.9f vs (3,3) %.9f", d31, d33);
}

/* A q (and k) view inside a fused [B, T, H + 2G, D] qkv buffer, a
 * BNSD-ordered view, and a view with a non-unit D stride all rotate exactly
 * like contiguous copies, touching nothing else. */
static void test_rope_strided(void)
{
    enum { B = 2, T = 3, H = 2, G = 1, D = 8, W = (H + 2 * G) * D };
    const int64_t pos[T] = {0, 5, 9};
    float qkv[B * T * W], orig[B * T * W];
    fill(qkv, B * T * W, 60, 1.0f, 0.0f);
    memcpy(orig, qkv, sizeof orig);

    cpa_tensor q = view4(qkv, B, T, H, D), k = view4(qkv + H * D, B, T, G, D);
    q.stride[1] = k.stride[1] = W;
    q.stride[0] = k.stride[0] = T * W;
    cpa_rope_apply(q, pos, ROPE_BASE, 0);
    cpa_rope_apply(k, pos, ROPE_BASE, 0);

    float qc[B * T * H * D], kc[B * T * G * D];
    cpa_tensor qcv = view4(qc, B, T, H, D), kcv = view4(kc, B, T, G, D);
    cpa_tensor q0 = q, k0 = k;
    q0.data = orig;
    k0.data = orig + H * D;
    tu_copy(qcv, q0);
    tu_copy(kcv, k0);
    cpa_rope_apply(qcv, pos, ROPE_BASE, 0);
    cpa_rope_apply(kcv, pos, ROPE_BASE, 0);
    CHECK_MSG(tu_bitwise_equal(q, qcv), "rope on a strided q view differs from contiguous");
    CHECK_MSG(tu_bitwise_equal(k, kcv), "rope on a strided k view differs from contiguous");
    int v_ok = 1;
    for (int bt = 0; bt < B * T; ++bt)
        v_ok &= memcmp(qkv + bt * W + (H + G) * D, orig + bt * W + (H + G) * D,
                       G * D * sizeof(float)) == 0;
    CHECK_MSG(v_ok, "rope on q/k views must not touch v");

    /* BNSD storage order. */
    tu_tensor a = tu_attn(CPA_LAYOUT_BNSD, B, T, H, D);
    tu_copy(a.t, q0);
    cpa_rope_apply(a.t, pos, ROPE_BASE, 0);
    CHECK_MSG(tu_bitwise_equal(a.t, qcv), "rope on a BNSD view differs from contiguous");
    free(a.buf);

    /* D stride 2: elements interleaved with untouched ones. */
    float il[2 * B * T * H * D], ilo[2 * B * T * H * D];
    fill(il, 2 * B * T * H * D, 61, 1.0f, 0.0f);
    memcpy(ilo, il, sizeof ilo);
    cpa_tensor s = view4(il, B, T, H, D);
    for (int d = 0; d < 4; ++d)
        s.stride[d] *= 2;
    tu_copy(qcv, s);
    cpa_rope_apply(s, pos, ROPE_BASE, 0);
    cpa_rope_apply(qcv, pos, ROPE_BASE, 0);
    CHECK_MSG(tu_bitwise_equal(s, qcv), "rope on a D-stride-2 view differs from contiguous");
    int gap_ok = 1;
    for (int i = 1; i < 2 * B * T * H * D; i += 2)
        gap_ok &= il[i] == ilo[i];
    CHECK_MSG(gap_ok, "rope on a D-stride-2 view touched the gaps");
}

/* ------------------------------------------------------------------------ */
/* SwiGLU                                                                    */
/* ------------------------------------------------------------------------ */

enum { SN = 3, SF = 5 };

typedef struct swi_ctx {
    float gu[SN * 2 * SF], out[SN * SF], r[SN * SF];
} swi_ctx;

static double swi_loss(void *p)
{
    swi_ctx *c = p;
    cpa_swiglu_forward(c->out, c->gu, SN, SF);
    return dot_d(c->r, c->out, SN * SF);
}

static void test_swiglu(void)
{
    swi_ctx c;
    fill(c.gu, SN * 2 * SF, 70, 3.0f, 0.0f);
    fill(c.r, SN * SF, 71, 1.0f, 0.0f);

    cpa_swiglu_forward(c.out, c.gu, SN, SF);
    double ferr = 0.0;
    for (int n = 0; n < SN; ++n)
        for (int f = 0; f < SF; ++f) {
            const double g = c.gu[n * 2 * SF + f], u = c.gu[n * 2 * SF + SF + f];
            ferr = fmax(ferr, fabs(c.out[n * SF + f] - g / (1.0 + exp(-g)) * u));
        }
    CHECK_MSG(ferr <= 1e-5, "swiglu forward err %.3e", ferr);

    float dgu[SN * 2 * SF] = {0};
    cpa_swiglu_backward(dgu, c.r, c.gu, SN, SF);
    fd_check("swiglu dgate_up", swi_loss, &c, c.gu, dgu, SN * 2 * SF);

    float pre[SN * 2 * SF], acc[SN * 2 * SF];
    fill(pre, SN * 2 * SF, 72, 1.0f, 0.0f);
    memcpy(acc, pre, sizeof acc);
    cpa_swiglu_backward(acc, c.r, c.gu, SN, SF);
    check_accumulated("swiglu dgate_up", acc, pre, dgu, SN * 2 * SF);

    /* Large |gate|: silu(±200) = ±200 · {1, 0}, finite gradients. */
    const float big[4] = {200.0f, -200.0f, 2.0f, 3.0f}; /* gate | up, F = 2 */
    const float one[2] = {1.0f, 1.0f};
    float o[2], d[4] = {0};
    cpa_swiglu_forward(o, big, 1, 2);
    cpa_swiglu_backward(d, one, big, 1, 2);
    CHECK_MSG(o[0] == 400.0f && fabsf(o[1]) < 1e-30f, "silu at ±200: %g %g", o[0], o[1]);
    CHECK_MSG(d[0] == 2.0f && fabsf(d[1]) < 1e-30f && d[2] == 200.0f && fabsf(d[3]) < 1e-30f,
              "swiglu grads at ±200: %g %g %g %g", d[0], d[1], d[2], d[3]);
}

/* The vectorised sigmoid against double precision over the whole range:
 * 8001 gates in [-100, 100] (through the clamp at |g| = 87 and the
 * denormal tail), relative error of silu and of both gradients; NaN gates
 * still give NaN. */
static void test_swiglu_accuracy(void)
{
    enum { F = 8001 };
    static float gu[2 * F], out[F], dgu[2 * F], ones[F];
    for (int f = 0; f < F; ++f) {
        gu[f] = (float)(-100.0 + 200.0 * f / (F - 1));
        gu[F + f] = 1.0f;
        ones[f] = 1.0f;
    }
    gu[F / 2] = 0.0f;
    gu[F / 2 + 1] = 1e-30f;
    cpa_swiglu_forward(out, gu, 1, F);
    memset(dgu, 0, sizeof dgu);
    cpa_swiglu_backward(dgu, ones, gu, 1, F);
    double worst = 0.0, worst_dg = 0.0, worst_du = 0.0, tail = 0.0;
    for (int f = 0; f < F; ++f) {
        const double g = gu[f], sg = 1.0 / (1.0 + exp(-g)), silu = g * sg;
        const double dsilu = sg * (1.0 + g * (1.0 - sg));
        if (g < -87.0) { /* the clamped tail: silu and its gradients are below 1e-35 */
            tail = fmax(tail, fmax(fabs(out[f]), fmax(fabs(dgu[f]), fabs(dgu[F + f]))));
            continue;
        }
        const double tiny = 1e-37;
        worst = fmax(worst, fabs(out[f] - silu) / (fabs(silu) + tiny));
        /* d silu = s + g·s·(1 - s) crosses 0 near g = -1.28: relative to
         * the size of its terms, not to the (cancelling) sum. */
        const double terms = sg + fabs(g) * sg * (1.0 - sg);
        worst_dg = fmax(worst_dg, fabs(dgu[f] - dsilu) / (terms + tiny));
        worst_du = fmax(worst_du, fabs(dgu[F + f] - silu) / (fabs(silu) + tiny));
    }
    CHECK_MSG(worst < 1e-6, "silu relative error %.3e", worst);
    CHECK_MSG(worst_dg < 2e-6, "d gate relative error %.3e", worst_dg);
    CHECK_MSG(worst_du < 1e-6, "d up relative error %.3e", worst_du);
    CHECK_MSG(tail < 1e-35, "below g = -87: |silu| and gradients up to %.3e", tail);
    const float nan_gu[2] = {NAN, 1.0f};
    float o = 0.0f, d[2] = {0.0f, 0.0f};
    cpa_swiglu_forward(&o, nan_gu, 1, 1);
    cpa_swiglu_backward(d, ones, nan_gu, 1, 1);
    CHECK_MSG(isnan(o) && isnan(d[0]) && isnan(d[1]), "NaN gate: %g %g %g", o, d[0], d[1]);
}

/* ------------------------------------------------------------------------ */
/* Cross-entropy                                                             */
/* ------------------------------------------------------------------------ */

enum { XN = 4, XV = 7 };

typedef struct ce_ctx {
    int32_t targets[XN];
    float logits[XN * XV], losses[XN];
    float scale;
} ce_ctx;

static double ce_loss(void *p)
{
    ce_ctx *c = p;
    return c->scale * cpa_crossentropy_forward(c->losses, c->logits, c->targets, XN, XV);
}

static void test_crossentropy_grad(void)
{
    ce_ctx c = {.targets = {2, -1, 6, 0}, .scale = 1.0f / 3.0f};
    fill(c.logits, XN * XV, 80, 2.0f, 0.0f);
    float d[XN * XV];
    cpa_crossentropy_backward(d, c.logits, c.targets, c.scale, XN, XV);
    fd_check("crossentropy dlogits", ce_loss, &c, c.logits, d, XN * XV);
}

/* Direct double computation of one row's loss. */
static double ce_row_ref(const float *x, int64_t V, int32_t target, double *lse_out)
{
    double m = -INFINITY, s = 0.0;
    for (int64_t v = 0; v < V; ++v)
        m = fmax(m, x[v]);
    for (int64_t v = 0; v < V; ++v)
        s += exp(x[v] - m);
    *lse_out = m + log(s);
    return target < 0 ? 0.0 : *lse_out - x[target];
}

static void check_ce_rows(const char *what, const float *logits, const int32_t *targets,
                          int64_t N, int64_t V)
{
    float *losses = malloc((size_t)N * sizeof(float));
    float *d = malloc((size_t)(N * V) * sizeof(float));
    for (int64_t i = 0; i < N * V; ++i)
        d[i] = 7.0f; /* must be overwritten */
    const double sum = cpa_crossentropy_forward(losses, logits, targets, N, V);
    cpa_crossentropy_backward(d, logits, targets, 1.0f, N, V);

    double lerr = 0.0, sum_ref = 0.0, gerr = 0.0, rowsum = 0.0;
    int ignored_ok = 1, finite = isfinite(sum);
    for (int64_t n = 0; n < N; ++n) {
        double lse;
        const double ref = ce_row_ref(logits + n * V, V, targets[n], &lse);
        sum_ref += ref;
        finite &= isfinite(losses[n]);
        lerr = fmax(lerr, fabs(losses[n] - ref) / fmax(1.0, fabs(ref)));
        if (targets[n] < 0) {
            ignored_ok &= losses[n] == 0.0f;
            for (int64_t v = 0; v < V; ++v)
                ignored_ok &= d[n * V + v] == 0.0f;
            continue;
        }
        double rs = 0.0;
        for (int64_t v = 0; v < V; ++v) {
            const double want = exp(logits[n * V + v] - lse) - (v == targets[n]);
            finite &= isfinite(d[n * V + v]);
            gerr = fmax(gerr, fabs(d[n * V + v] - want));
            rs += d[n * V + v];
        }
        rowsum = fmax(rowsum, fabs(rs));
    }
    CHECK_MSG(finite, "%s: non-finite loss or gradient", what);
    CHECK_MSG(lerr <= 1e-6, "%s: loss rel err %.3e", what, lerr);
    CHECK_MSG(fabs(sum - sum_ref) <= 1e-6 * fmax(1.0, fabs(sum_ref)), "%s: sum %.9g vs %.9g",
              what, sum, sum_ref);
    CHECK_MSG(gerr <= 1e-6, "%s: gradient err %.3e", what, gerr);
    CHECK_MSG(rowsum <= 1e-6, "%s: gradient row sum %.3e", what, rowsum);
    CHECK_MSG(ignored_ok, "%s: rows with target < 0 must give loss 0 and zero gradient", what);

    /* In place (dlogits == logits) gives the same gradient. */
    float *inplace = malloc((size_t)(N * V) * sizeof(float));
    memcpy(inplace, logits, (size_t)(N * V) * sizeof(float));
    cpa_crossentropy_backward(inplace, inplace, targets, 1.0f, N, V);
    CHECK_MSG(memcmp(inplace, d, (size_t)(N * V) * sizeof(float)) == 0,
              "%s: in-place backward differs", what);
    free(inplace);
    free(losses);
    free(d);
}

static void test_crossentropy_values(void)
{
    enum { N = 5, V = 11 };
    float logits[N * V];
    const int32_t targets[N] = {3, -1, 0, 10, -5};
    fill(logits, N * V, 90, 4.0f, 0.0f);
    check_ce_rows("random logits", logits, targets, N, V);

    /* ±80: exp(80) overflows float's exp but not a shifted double sum. */
    float big[3 * V];
    for (int v = 0; v < V; ++v) {
        big[v] = (v % 2) ? 80.0f : -80.0f;
        big[V + v] = 80.0f - 0.5f * (float)v;
        big[2 * V + v] = -80.0f;
    }
    const int32_t bt[3] = {2, 0, 5}; /* row 0: target at -80, loss ~ 160 */
    check_ce_rows("logits +-80", big, bt, 3, V);
}

/* ------------------------------------------------------------------------ */
/* Residual                                                                  */
/* ------------------------------------------------------------------------ */

static void test_residual(void)
{
    enum { n = 37 };
    float a[n], b[n], out[n];
    fill(a, n, 100, 1.0f, 0.0f);
    fill(b, n, 101, 1.0f, 0.0f);
    cpa_residual_forward(out, a, b, n);
    int ok = 1;
    for (int i = 0; i < n; ++i)
        ok &= out[i] == a[i] + b[i];
    CHECK(ok);
    cpa_residual_forward(a, a, b, n); /* in place */
    CHECK(memcmp(a, out, sizeof out) == 0);
}

/* ------------------------------------------------------------------------ */
/* Determinism across thread counts                                          */
/* ------------------------------------------------------------------------ */

/* Sizes above the layers' single-thread threshold, so the loops really do
 * split across threads.  Every output of one run is kept for comparison. */
enum { DN = 200, DC = 320, DV = 50, DF = 200, DT = 64, DH = 4, DD = 64, DB = 2 };

typedef struct det_out {
    float rms_out[DN * DC], rstd[DN], rms_dinp[DN * DC], rms_dw[DC];
    float emb_out[DN * DC], dwte[DV * DC];
    float rope[DB * DT * DH * DD];
    float swi_out[DN * DF], swi_d[DN * 2 * DF];
    float ce_loss[DN], ce_d[DN * DF];
    double ce_sum;
    float res[DN * DC];
} det_out;

typedef struct det_in {
    float x[DN * DC], w[DC], g[DN * DC], wte[DV * DC];
    float gu[DN * 2 * DF];
    int32_t tokens[DN], targets[DN];
    int64_t pos[DT];
} det_in;

static void det_run(const det_in *in, det_out *o)
{
    memset(o, 0, sizeof *o);
    cpa_rmsnorm_forward(o->rms_out, o->rstd, in->x, in->w, DN, DC, 1e-5f);
    fill(o->rms_dinp, DN * DC, 200, 1.0f, 0.0f); /* accumulate onto something */
    cpa_rmsnorm_backward(o->rms_dinp, o->rms_dw, in->g, in->x, in->w, o->rstd, DN, DC);
    cpa_embedding_forward(o->emb_out, in->tokens, in->wte, DN, DC);
    cpa_embedding_backward(o->dwte, in->g, in->tokens, DN, DC);
    memcpy(o->rope, in->x, sizeof o->rope);
    cpa_rope_apply(view4(o->rope, DB, DT, DH, DD), in->pos, ROPE_BASE, 0);
    cpa_swiglu_forward(o->swi_out, in->gu, DN, DF);
    cpa_swiglu_backward(o->swi_d, in->g, in->gu, DN, DF);
    o->ce_sum = cpa_crossentropy_forward(o->ce_loss, in->gu, in->targets, DN, DF);
    cpa_crossentropy_backward(o->ce_d, in->gu, in->targets, 0.01f, DN, DF);
    cpa_residual_forward(o->res, in->x, in->g, DN * DC);
}

static void test_determinism(void)
{
    det_in *in = malloc(sizeof *in);
    det_out *o1 = malloc(sizeof *o1), *o3 = malloc(sizeof *o3);
    fill(in->x, DN * DC, 300, 2.0f, 0.0f);
    fill(in->w, DC, 301, 0.5f, 1.0f);
    fill(in->g, DN * DC, 302, 1.0f, 0.0f);
    fill(in->wte, DV * DC, 303, 1.0f, 0.0f);
    fill(in->gu, DN * 2 * DF, 304, 4.0f, 0.0f);
    for (int n = 0; n < DN; ++n) {
        in->tokens[n] = (int32_t)(tu_mix(305 + (uint64_t)n) % 7); /* many repeats */
        in->targets[n] = n % 9 == 0 ? -1 : (int32_t)(tu_mix(306 + (uint64_t)n) % DF);
    }
    for (int t = 0; t < DT; ++t)
        in->pos[t] = t < DT / 2 ? t : 1000 + t; /* two zigzag-like chunks */

    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    det_run(in, o1);
    omp_set_num_threads(3);
    det_run(in, o3);
    omp_set_num_threads(saved);

#define SAME(field)                                                                        \
    CHECK_MSG(memcmp(o1->field, o3->field, sizeof o1->field) == 0,                          \
              #field " differs between 1 and 3 threads")
    SAME(rms_out);
    SAME(rstd);
    SAME(rms_dinp);
    SAME(rms_dw);
    SAME(emb_out);
    SAME(dwte);
    SAME(rope);
    SAME(swi_out);
    SAME(swi_d);
    SAME(ce_loss);
    SAME(ce_d);
    SAME(res);
#undef SAME
    CHECK_MSG(memcmp(&o1->ce_sum, &o3->ce_sum, sizeof o1->ce_sum) == 0,
              "crossentropy sum differs between 1 and 3 threads");
    free(in);
    free(o1);
    free(o3);
}

int main(void)
{
    RUN_TEST(test_embedding);
    RUN_TEST(test_rmsnorm);
    RUN_TEST(test_matmul);
    RUN_TEST(test_rope_grad);
    RUN_TEST(test_rope_algebra);
    RUN_TEST(test_rope_relative);
    RUN_TEST(test_rope_strided);
    RUN_TEST(test_swiglu);
    RUN_TEST(test_swiglu_accuracy);
    RUN_TEST(test_crossentropy_grad);
    RUN_TEST(test_crossentropy_values);
    RUN_TEST(test_residual);
    RUN_TEST(test_determinism);
    return TEST_SUMMARY();
}
