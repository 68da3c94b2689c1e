/*
 * attn_simd.c — the attention micro-kernels and the forward/backward task
 * drivers, written once against simd.h and compiled once per instruction
 * set (attn_avx512.c, attn_avx2.c, attn_scalar.c define CPA_SIMD_* and
 * CPA_ISA_SUFFIX, then include this file).  attn_fwd.c / attn_bwd.c set up
 * the job and hand tasks to the functions defined here; isa.c picks the
 * instruction set.  Not a translation unit of its own.
 *
 * Lanes.  Every product is computed with one operand packed into "lane
 * panels" — a tile of rows transposed so that VL consecutive rows share a
 * vector — and the other read straight from the caller's rows, one scalar
 * broadcast at a time.  Nothing else is packed: K, V, Q and dO rows are read
 * in whatever layout the caller has (unit stride in the head dim only).
 *
 *   forward, lanes = query rows (a panel of F_MR rows of one head):
 *     Sᵀ[j][i]  = Σ_d Qᵀ[d][i]·K[j][d]        dot:  A = Qᵀ packed, B = K rows
 *     Oᵀ[c][i] += Σ_j Pᵀ[j][i]·V[j][c]        axpy: A = P (as stored), B = V rows
 *   The scores of one key tile live in a small buffer (L1/L2) between the
 *   two products; scale, mask, row maximum (a lane-wise max: no horizontal
 *   reduction) are applied to the register-resident scores as they leave
 *   the dot kernel, and exp2 once per score.  Oᵀ is rescaled lane-wise.
 *
 *   backward, lanes = keys (a task owns B_KW keys of one KV head, in lane
 *   panels of B_MK):
 *     S[i][j]   = Σ_d Kᵀ[d][j]·Q[i][d]        dot, epilogue P = 2^(S - lse)
 *     dP[i][j]  = Σ_c Vᵀ[c][j]·dO[i][c]       dot, epilogue dS = P∘(dP - Dr)
 *     dVᵀ[c][j] += Σ_i P[i][j]·dO[i][c]       axpy
 *     dKᵀ[d][j] += Σ_i dS[i][j]·Q[i][d]       axpy
 *     dQ[i][d]  += Σ_j dS[i][j]·K[j][d]       rows: B = K rows packed once per task
 *   dK and dV of the task's keys are exclusive to it (summed over every
 *   query head of the group while K/V sit in cache: GQA costs no extra K/V
 *   traffic).  dQ rows receive one contribution per key task; those are
 *   added in key order — a task waits until its predecessor in the same
 *   (batch, KV head) chain has added its part of a query unit — so the sums
 *   have the same order for any thread count: bitwise deterministic, and
 *   parallel over keys, so MQA at B=1 keeps every thread busy.
 *
 * The softmax works in base 2: scale·log2(e) is folded into the packed Q
 * (forward) or Kᵀ (backward), and lse·log2(e) is what the backward
 * subtracts; the forward returns natural-log LSE like the reference.
 */
#include "kernel_internal.h"
#include "simd.h"

#include <sched.h>

#define CPA_CAT2(a, b) a##b
#define CPA_CAT(a, b) CPA_CAT2(a, b)
#define FN(name) CPA_CAT(name, CPA_ISA_SUFFIX)

/* Register blocking per instruction set (accumulators <= registers - 4). */
#if VL == 16
#define F_MV 2  /* forward panel: 2 vectors = 32 query rows */
#define F_NR 12 /* keys per Sᵀ micro-tile: 24 accumulators */
#define F_NC 12 /* output columns per Oᵀ micro-tile */
#define B_MV 4  /* backward lane panel: 4 vectors = 64 keys */
#define B_KP 2  /* lane panels per backward task: 128 keys */
#define B_NR 6  /* query rows per S / dP micro-tile: 24 accumulators */
#define B_NC 6  /* dKᵀ / dVᵀ columns per micro-tile */
#define Q_NR 6  /* dQ rows per micro-tile */
#define Q_NV 4  /* dQ vectors per micro-tile: 24 accumulators */
#define CASES_NR(M) CASES_12(M)
#elif VL == 8
#define F_MV 2
#define F_NR 6
#define F_NC 6
#define B_MV 2
#define B_KP 4
#define B_NR 6
#define B_NC 6
#define Q_NR 3
#define Q_NV 4
#define CASES_NR(M) CASES_6(M)
#else
#define F_MV 4
#define F_NR 4
#define F_NC 4
#define B_MV 4
#define B_KP 16
#define B_NR 4
#define B_NC 4
#define Q_NR 4
#define Q_NV 4
#define CASES_NR(M) CASES_4(M)
#endif
#define F_MR (F_MV * VL) /* query rows per forward panel */
#define B_MK (B_MV * VL) /* keys per backward lane panel */
#define B_KW (B_MK * B_KP) /* keys per backward task */
#define MV_MAX (F_MV > B_MV ? F_MV : B_MV)
#define N_MAX 12

#define CASES_3(M) M(1) M(2) M(3)
#define CASES_4(M) CASES_3(M) M(4)
#define CASES_6(M) CASES_4(M) M(5) M(6)
#define CASES_8(M) CASES_6(M) M(7) M(8)
#define CASES_12(M) CASES_8(M) M(9) M(10) M(11) M(12)
/* A second family for a switch nested inside an expansion of the first
 * (the preprocessor does not re-expand a macro inside itself). */
#define INNER_CASES_8(M) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8)

#define LOG2E 1.44269504088896341f
#define LN2 0.693147180559945309f

/* ---- micro-kernels ----------------------------------------------------- */

/* acc[n][v] = Σ_{r<R} A[r·la + v·VL + lane] · B[n·ldb + r]   (n < nr, v < mv) */
CPA_ALWAYS_INLINE void mk_dot(const int mv, const int nr, vf acc[N_MAX][MV_MAX],
                              const float *restrict A, int64_t la, const float *restrict B,
                              int64_t ldb, int64_t R)
{
    for (int n = 0; n < nr; ++n)
        for (int v = 0; v < mv; ++v)
            acc[n][v] = vf_zero();
    for (int64_t r = 0; r < R; ++r) {
        vf a[MV_MAX];
        for (int v = 0; v < mv; ++v)
            a[v] = vf_load(A + r * la + v * VL);
        for (int n = 0; n < nr; ++n) {
            vf b = vf_set1(B[n * ldb + r]);
            for (int v = 0; v < mv; ++v)
                acc[n][v] = vf_fma(a[v], b, acc[n][v]);
        }
    }
}

/* C[c·lc + v·VL + lane] += Σ_{r<R} A[r·la + v·VL + lane] · B[r·ldb + c]   (c < nc) */
CPA_ALWAYS_INLINE void mk_axpy(const int mv, const int nc, const float *restrict A, int64_t la,
                               int64_t R, const float *restrict B, int64_t ldb, float *restrict C,
                               int64_t lc)
{
    vf acc[N_MAX][MV_MAX];
    for (int c = 0; c < nc; ++c)
        for (int v = 0; v < mv; ++v)
            acc[c][v] = vf_load(C + c * lc + v * VL);
    for (int64_t r = 0; r < R; ++r) {
        vf a[MV_MAX];
        for (int v = 0; v < mv; ++v)
            a[v] = vf_load(A + r * la + v * VL);
        const float *b = B + r * ldb;
        for (int c = 0; c < nc; ++c) {
            vf bc = vf_set1(b[c]);
            for (int v = 0; v < mv; ++v)
                acc[c][v] = vf_fma(a[v], bc, acc[c][v]);
        }
    }
    for (int c = 0; c < nc; ++c)
        for (int v = 0; v < mv; ++v)
            vf_store(C + c * lc + v * VL, acc[c][v]);
}

/* C[i·ldc + v·VL + lane] = Σ_{r<R} A[i·lda + r] · B[r·ldb + v·VL + lane]   (i < nr, v < nv) */
CPA_ALWAYS_INLINE void mk_rows(const int nr, const int nv, const float *restrict A, int64_t lda,
                               int64_t R, const float *restrict B, int64_t ldb, float *restrict C,
                               int64_t ldc)
{
    vf acc[Q_NR][Q_NV];
    for (int i = 0; i < nr; ++i)
        for (int v = 0; v < nv; ++v)
            acc[i][v] = vf_zero();
    for (int64_t r = 0; r < R; ++r) {
        vf b[Q_NV];
        for (int v = 0; v < nv; ++v)
            b[v] = vf_load(B + r * ldb + v * VL);
        for (int i = 0; i < nr; ++i) {
            vf a = vf_set1(A[i * lda + r]);
            for (int v = 0; v < nv; ++v)
                acc[i][v] = vf_fma(b[v], a, acc[i][v]);
        }
    }
    for (int i = 0; i < nr; ++i)
        for (int v = 0; v < nv; ++v)
            vf_store(C + i * ldc + v * VL, acc[i][v]);
}

/* Column sweeps of mk_axpy: ncols columns in blocks of `nc_max`, the tail
 * dispatched to a specialised (fully unrolled) variant. */
#define AXPY_SWEEP(NAME, MV, NC_MAX)                                                          \
    static void NAME(const float *A, int64_t la, int64_t R, const float *B, int64_t ldb,      \
                     float *C, int64_t lc, int64_t ncols)                                     \
    {                                                                                         \
        int64_t c0 = 0;                                                                       \
        for (; c0 + NC_MAX <= ncols; c0 += NC_MAX)                                            \
            mk_axpy(MV, NC_MAX, A, la, R, B + c0, ldb, C + c0 * lc, lc);                      \
        switch ((int)(ncols - c0)) {                                                          \
            CASES_NR(AXPY_CASE)                                                               \
        default:                                                                              \
            break;                                                                            \
        }                                                                                     \
    }
#define AXPY_CASE(k)                                                                          \
    case k:                                                                                   \
        if (k < AXPY_NC_MAX)                                                                  \
            mk_axpy(AXPY_MV, k < AXPY_NC_MAX ? k : 1, A, la, R, B + c0, ldb, C + c0 * lc, lc); \
        break;

#define AXPY_MV F_MV
#define AXPY_NC_MAX F_NC
AXPY_SWEEP(fwd_pv_sweep, F_MV, F_NC)
#undef AXPY_MV
#undef AXPY_NC_MAX
#define AXPY_MV B_MV
#define AXPY_NC_MAX B_NC
AXPY_SWEEP(bwd_axpy_sweep, B_MV, B_NC)
#undef AXPY_MV
#undef AXPY_NC_MAX

/* dQ block: rows [0, nrows) of C = A·B over R keys, Dp (a multiple of VL)
 * columns, in Q_NR x Q_NV micro-tiles. */
#define ROWS_CASE_V(k)                                                                        \
    case k:                                                                                   \
        if (k <= Q_NV)                                                                        \
            mk_rows(NR_, k <= Q_NV ? k : 1, A + i0 * lda, lda, R, B + v0 * VL, ldb,             \
                    C + i0 * ldc + v0 * VL, ldc);                                             \
        break;
#define ROWS_CASE_R(k)                                                                        \
    case k:                                                                                   \
        if (k <= Q_NR) {                                                                      \
            enum { NR_ = k <= Q_NR ? k : 1 };                                                 \
            int64_t v0 = 0;                                                                   \
            for (; v0 + Q_NV <= nvec; v0 += Q_NV)                                             \
                mk_rows(NR_, Q_NV, A + i0 * lda, lda, R, B + v0 * VL, ldb,                    \
                        C + i0 * ldc + v0 * VL, ldc);                                         \
            switch ((int)(nvec - v0)) {                                                       \
                INNER_CASES_8(ROWS_CASE_V)                                                          \
            default:                                                                          \
                break;                                                                        \
            }                                                                                 \
        }                                                                                     \
        break;

static void bwd_dq_block(const float *A, int64_t lda, int64_t nrows, int64_t R, const float *B,
                         int64_t ldb, float *C, int64_t ldc, int64_t Dp)
{
    const int64_t nvec = Dp / VL;
    for (int64_t i0 = 0; i0 < nrows; i0 += Q_NR) {
        switch ((int)(nrows - i0 < Q_NR ? nrows - i0 : Q_NR)) {
            CASES_6(ROWS_CASE_R)
        default:
            break;
        }
    }
}

/* ---- forward ----------------------------------------------------------- */

/* One Sᵀ micro-tile of nr keys for a panel: scores (already scaled into
 * base 2 through the packed Q), masked to -inf outside [lo, hi] when
 * `masked`, stored to S[n][F_MR], and folded into the lane maxima. */
CPA_ALWAYS_INLINE void fwd_qk(const int nr, const float *QT, int64_t D, const float *K,
                              int64_t ldk, int masked, const int32_t *lo, const int32_t *hi,
                              int32_t kidx, float *S, vf *mx)
{
    vf acc[N_MAX][MV_MAX];
    mk_dot(F_MV, nr, acc, QT, F_MR, K, ldk, D);
    for (int n = 0; n < nr; ++n)
        for (int v = 0; v < F_MV; ++v) {
            vf s = acc[n][v];
            if (masked)
                s = vf_select(vm_in_range(vi_load(lo + v * VL), vi_set1(kidx + n),
                                          vi_load(hi + v * VL)),
                              s, vf_set1(-INFINITY));
            vf_store(S + n * F_MR + v * VL, s);
            mx[v] = vf_max(mx[v], s);
        }
}

#define FWD_QK_CASE(k)                                                                        \
    case k:                                                                                   \
        fwd_qk(k, QT, D, K + c * ldk, ldk, masked, lo, hi, (int32_t)c, S + c * F_MR, mx);     \
        break;

/* Sᵀ for keys [0, klen) of a tile; returns the lane maxima in mx. */
static void fwd_scores(const float *QT, int64_t D, const float *K, int64_t ldk, int64_t klen,
                       int masked, const int32_t *lo, const int32_t *hi, float *S, vf *mx)
{
    for (int v = 0; v < F_MV; ++v)
        mx[v] = vf_set1(-INFINITY);
    int64_t c = 0;
    for (; c + F_NR <= klen; c += F_NR)
        fwd_qk(F_NR, QT, D, K + c * ldk, ldk, masked, lo, hi, (int32_t)c, S + c * F_MR, mx);
    switch ((int)(klen - c)) {
        CASES_NR(FWD_QK_CASE)
    default:
        break;
    }
}

/* The online-softmax step of a panel for one key tile: new maxima, rescale
 * of l and Oᵀ, S -> P = 2^(S - m) in place, l += Σ P. */
static void fwd_softmax(float *S, int64_t klen, const vf *mx, float *m, float *l, float *OT,
                        int64_t Dv)
{
    vf muse[F_MV], lsum[F_MV];
    int rescale = 0;
    vf alpha[F_MV];
    for (int v = 0; v < F_MV; ++v) {
        vf mold = vf_load(m + v * VL);
        vf mnew = vf_max(mold, mx[v]);
        muse[v] = vf_select(vm_eq(mnew, vf_set1(-INFINITY)), vf_zero(), mnew);
        alpha[v] = vf_exp2(vf_sub(mold, muse[v])); /* 0 while nothing was visible */
        rescale |= vm_any(vm_neq(alpha[v], vf_set1(1.0f)));
        vf_store(m + v * VL, mnew);
        lsum[v] = vf_zero();
    }
    if (rescale)
        for (int64_t c = 0; c < Dv; ++c)
            for (int v = 0; v < F_MV; ++v)
                vf_store(OT + c * F_MR + v * VL, vf_mul(vf_load(OT + c * F_MR + v * VL), alpha[v]));
    for (int64_t j = 0; j < klen; ++j)
        for (int v = 0; v < F_MV; ++v) {
            vf p = vf_exp2(vf_sub(vf_load(S + j * F_MR + v * VL), muse[v]));
            vf_store(S + j * F_MR + v * VL, p);
            lsum[v] = vf_add(lsum[v], p);
        }
    for (int v = 0; v < F_MV; ++v)
        vf_store(l + v * VL, vf_add(vf_mul(vf_load(l + v * VL), alpha[v]), lsum[v]));
}

/* Per-panel state in the scratch: Qᵀ [Dqk][F_MR], Oᵀ [Dv][F_MR], m, l,
 * seen [F_MR] (seen: the row has a visible key). */
static size_t fwd_panel_floats(int64_t Dqk, int64_t Dv)
{
    return (size_t)(Dqk + Dv + 3) * F_MR;
}

size_t FN(cpa_fwd_scratch_floats)(int64_t Dmax, int panels)
{
    /* S [tile keys][F_MR], the packed K and V tiles [tile keys][D], lo, hi
     * [F_MR] (int32), then the panels. */
    return (size_t)CPA_FWD_KEYS * (F_MR + 2 * Dmax) + 2 * F_MR +
           (size_t)panels * fwd_panel_floats(Dmax, Dmax);
}

/* Copy n rows of d floats (row stride ld) to a dense [n][d] block.  The
 * kernels read tiles from these copies: rows of a bshd tensor are H·D floats
 * apart, often a multiple of 4 KiB, and would all fall into the same few L1
 * sets. */
static void pack_rows(float *restrict dst, const float *restrict src, int64_t ld, int64_t n,
                      int64_t d)
{
    for (int64_t i = 0; i < n; ++i)
        memcpy(dst + i * d, src + i * ld, sizeof(float) * (size_t)d);
}

/* 1 if the n floats at p are all finite (x·0 is NaN exactly for ±inf and
 * NaN). */
static int all_finite(const float *p, int64_t n)
{
    vf acc = vf_zero();
    int64_t i = 0;
    for (; i + VL <= n; i += VL)
        acc = vf_fma(vf_load(p + i), vf_zero(), acc);
    float lanes[VL], sum = 0.0f;
    vf_store(lanes, acc);
    for (int k = 0; k < VL; ++k)
        sum += lanes[k];
    for (; i < n; ++i)
        sum += p[i] * 0.0f;
    return sum == 0.0f;
}

/* Oᵀ += Pᵀ·V of a masked tile one visible pair at a time.  The vector
 * product multiplies masked entries (P = 0) too, and 0·NaN is NaN: when V
 * holds a non-finite value, only this keeps it out of the rows that cannot
 * see its key — as a plain softmax attention would. */
static void fwd_pv_exact(const float *P, const float *V, int64_t Dv, const int32_t *lo,
                         const int32_t *hi, int64_t rows, float *OT)
{
    for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = lo[i]; j <= hi[i]; ++j) {
            const float p = P[j * F_MR + i];
            for (int64_t c = 0; c < Dv; ++c)
                OT[c * F_MR + i] += p * V[j * Dv + c];
        }
}

void FN(cpa_fwd_task)(const cpa_fwd_job *job, int64_t task, float *scratch, int progress)
{
    const cpa_attn_desc *d = job->d;
    const int64_t Dqk = d->q.shape[3], Dv = d->v.shape[3];
    const int64_t G = d->k.shape[2], B = d->q.shape[0];
    /* task = ((qblock · B + b) · G + g) · nhchunks + hchunk, late query
     * blocks first (under a causal mask they see the most keys). */
    int64_t hc = task % job->nhchunks, rest = task / job->nhchunks;
    const int64_t g = rest % G;
    rest /= G;
    const int64_t b = rest % B, qblock = job->nqblocks - 1 - rest / B;
    const int64_t h0 = g * job->hpg + hc * job->heads_per_task;
    const int64_t nh = job->heads_per_task;
    const int64_t t0 = qblock * job->tiles_per_task;
    const int64_t nqt = cpa_tiling_count(&job->qt);
    const int64_t nt = t0 + job->tiles_per_task <= nqt ? job->tiles_per_task : nqt - t0;
    const int64_t npanels = nh * nt;

    float *S = scratch;                              /* [CPA_FWD_KEYS][F_MR] */
    float *Kc = S + CPA_FWD_KEYS * F_MR;             /* [CPA_FWD_KEYS][Dqk] */
    float *Vc = Kc + CPA_FWD_KEYS * Dqk;             /* [CPA_FWD_KEYS][Dv] */
    int32_t *lo = (int32_t *)(Vc + CPA_FWD_KEYS * Dv); /* [F_MR] */
    int32_t *hi = lo + F_MR;                         /* [F_MR] */
    float *panel0 = (float *)(hi + F_MR);
    const size_t pstride = fwd_panel_floats(Dqk, Dv);
    cpa_tile tiles[CPA_FWD_MAX_PANELS];
    for (int64_t t = 0; t < nt; ++t)
        tiles[t] = cpa_tiling_get(&job->qt, t0 + t);

    /* Pack every panel's Qᵀ (scaled into base 2) and clear its state. */
    for (int64_t p = 0; p < npanels; ++p) {
        const cpa_tile qt = tiles[p % nt];
        const int64_t h = h0 + p / nt;
        float *QT = panel0 + (size_t)p * pstride, *OT = QT + Dqk * F_MR;
        float *m = OT + Dv * F_MR, *l = m + F_MR, *seen = l + F_MR;
        for (int64_t i = 0; i < F_MR; ++i) {
            const float *qrow = i < qt.len ? cpa_at4(&d->q, b, qt.row + i, h) : NULL;
            for (int64_t c = 0; c < Dqk; ++c)
                QT[c * F_MR + i] = qrow ? qrow[c] * job->qscale : 0.0f;
            m[i] = -INFINITY;
            l[i] = 0.0f;
            seen[i] = 0.0f;
        }
        memset(OT, 0, sizeof(float) * (size_t)(Dv * F_MR));
    }

    const int64_t nk = cpa_tiling_count(&job->kt);
    for (int64_t j = 0; j < nk; ++j) {
        const cpa_tile kt = cpa_tiling_get(&job->kt, j);
        int any = 0, v_finite = 1;
        for (int64_t p = 0; p < npanels; ++p) {
            const cpa_tile qt = tiles[p % nt];
            const cpa_tile_class cls = cpa_tile_classify(d->mask, qt, kt);
            if (cls == CPA_TILE_SKIP)
                continue;
            if (!any) {
                pack_rows(Kc, cpa_at4(&d->k, b, kt.row, g), d->k.stride[1], kt.len, Dqk);
                pack_rows(Vc, cpa_at4(&d->v, b, kt.row, g), d->v.stride[1], kt.len, Dv);
                v_finite = all_finite(Vc, kt.len * Dv);
                any = 1;
            }
            float *QT = panel0 + (size_t)p * pstride, *OT = QT + Dqk * F_MR;
            float *m = OT + Dv * F_MR, *l = m + F_MR, *seen = l + F_MR;
            int64_t klen = kt.len;
            const int masked = cls == CPA_TILE_PARTIAL;
            if (masked) {
                /* Keys past the last row's window are masked for every row:
                 * leave them out (on the causal diagonal most of a tile). */
                klen = cpa_tile_visible_len(d->mask, qt, kt);
                cpa_tile_lane_ranges(d->mask, qt, kt, klen, F_MR, lo, hi);
            }
            for (int64_t i = 0; i < qt.len; ++i)
                if (!masked || lo[i] <= hi[i])
                    seen[i] = 1.0f;
            vf mx[F_MV];
            fwd_scores(QT, Dqk, Kc, Dqk, klen, masked, lo, hi, S, mx);
            fwd_softmax(S, klen, mx, m, l, OT, Dv);
            if (masked && !v_finite)
                fwd_pv_exact(S, Vc, Dv, lo, hi, qt.len, OT);
            else
                fwd_pv_sweep(S, F_MR, klen, Vc, Dv, OT, F_MR, Dv);
        }
        if (any && progress)
            d->progress(d->progress_arg);
    }

    /* O = Oᵀ / l, LSE = ln 2 · (m + log2 l).  Rows that saw no key: 0 and
     * -inf.  A row that saw keys but whose every visible score was -inf
     * (only -inf inputs do that) has l = 0 too; a plain softmax gives 0/0
     * there: NaN, never a silent 0. */
    for (int64_t p = 0; p < npanels; ++p) {
        const cpa_tile qt = tiles[p % nt];
        const int64_t h = h0 + p / nt;
        const float *OT = panel0 + (size_t)p * pstride + Dqk * F_MR;
        const float *m = OT + Dv * F_MR, *l = m + F_MR, *seen = l + F_MR;
        for (int64_t i = 0; i < qt.len; ++i) {
            float *o = cpa_at4(&job->out, b, qt.row + i, h);
            float *lse = cpa_at3(&job->lse, b, h, qt.row + i);
            if (l[i] == 0.0f) {
                const float fill = seen[i] != 0.0f ? NAN : 0.0f;
                for (int64_t c = 0; c < Dv; ++c)
                    o[c] = fill;
                *lse = seen[i] != 0.0f ? NAN : -INFINITY;
                continue;
            }
            const float inv = 1.0f / l[i];
            for (int64_t c = 0; c < Dv; ++c)
                o[c] = OT[c * F_MR + i] * inv;
            *lse = m[i] * LN2 + logf(l[i]);
        }
    }
}

/* ---- backward ---------------------------------------------------------- */

/* P = 2^(S - lse2) for nr query rows against one lane panel of the task's
 * keys (task key indices lane0 ..), zero outside [lo, hi] when `masked`.
 * KT and P have rows of B_KW lanes. */
CPA_ALWAYS_INLINE void bwd_p(const int nr, const float *KT, int64_t D, const float *Q, int64_t ldq,
                             const float *lse2, int masked, const int32_t *lo, const int32_t *hi,
                             int32_t lane0, float *P)
{
    vf acc[N_MAX][MV_MAX];
    mk_dot(B_MV, nr, acc, KT, B_KW, Q, ldq, D);
    for (int n = 0; n < nr; ++n) {
        const vf shift = vf_set1(lse2[n]);
        for (int v = 0; v < B_MV; ++v) {
            vf p = vf_exp2(vf_sub(acc[n][v], shift));
            if (masked)
                p = vf_select(vm_in_range(vi_set1(lo[n]), vi_iota(lane0 + v * VL), vi_set1(hi[n])),
                              p, vf_zero());
            vf_store(P + n * B_KW + v * VL, p);
        }
    }
}

/* dS = P ∘ (dO·Vᵀ - Dr) for nr query rows, stored over dP; exactly 0
 * outside [lo, hi] when `masked` (P is 0 there, but a NaN Dr would make
 * 0·NaN). */
CPA_ALWAYS_INLINE void bwd_ds(const int nr, const float *VT, int64_t Dv, const float *dO,
                              int64_t lddo, const float *dr, const float *P, int masked,
                              const int32_t *lo, const int32_t *hi, int32_t lane0, float *dS)
{
    vf acc[N_MAX][MV_MAX];
    mk_dot(B_MV, nr, acc, VT, B_KW, dO, lddo, Dv);
    for (int n = 0; n < nr; ++n) {
        const vf drn = vf_set1(dr[n]);
        for (int v = 0; v < B_MV; ++v) {
            vf ds = vf_mul(vf_load(P + n * B_KW + v * VL), vf_sub(acc[n][v], drn));
            if (masked)
                ds = vf_select(vm_in_range(vi_set1(lo[n]), vi_iota(lane0 + v * VL), vi_set1(hi[n])),
                               ds, vf_zero());
            vf_store(dS + n * B_KW + v * VL, ds);
        }
    }
}

#define BWD_P_CASE(k)                                                                         \
    case k:                                                                                   \
        bwd_p(k, KT + lane0, Dqk, qrows, Dqk, lse2 + i, masked, lo + i, hi + i, (int32_t)lane0, \
              P + i * B_KW + lane0);                                                          \
        bwd_ds(k, VT + lane0, Dv, dorows, Dv, dr + i, P + i * B_KW + lane0, masked, lo + i,     \
               hi + i, (int32_t)lane0, dS + i * B_KW + lane0);                                 \
        break;

/* Scratch of a backward task, carved from one block (offsets in floats). */
typedef struct bwd_scratch {
    float *KT;   /* [Dqk][B_KW] Kᵀ lane panels, scaled by scale·log2 e */
    float *VT;   /* [Dv][B_KW]  Vᵀ lane panels */
    float *Kr;   /* [B_KW][Dp]  K rows scaled by scale, zero-padded to Dp */
    float *dKT;  /* [Dqk][B_KW] dKᵀ accumulator */
    float *dVT;  /* [Dv][B_KW]  dVᵀ accumulator */
    float *P;    /* [TQ][B_KW]  P of a unit */
    float *dS;   /* [TQ][B_KW]  dS of a unit */
    float *dQc;  /* [TQ][Dp]    the unit's dQ contribution */
    float *Qc;   /* [TQ][Dqk]   the unit's Q rows, packed */
    float *dOc;  /* [TQ][Dv]    the unit's dO rows, packed */
    float *lse2; /* [TQ]        lse · log2 e */
    float *dr;   /* [TQ]        Dr = rowsum(dO ∘ O) */
    int32_t *lo, *hi; /* [TQ]   visible key lanes of each row */
} bwd_scratch;

static size_t bwd_carve(float *base, int64_t Dqk, int64_t Dv, int64_t Dp, bwd_scratch *s)
{
    const int64_t TQ = CPA_BWD_ROWS;
    size_t o = 0;
#define CARVE(field, n) (s->field = base ? base + o : NULL, o += (size_t)(n))
    CARVE(KT, Dqk * B_KW);
    CARVE(VT, Dv * B_KW);
    CARVE(Kr, B_KW * Dp);
    CARVE(dKT, Dqk * B_KW);
    CARVE(dVT, Dv * B_KW);
    CARVE(P, TQ * B_KW);
    CARVE(dS, TQ * B_KW);
    CARVE(dQc, TQ * Dp);
    CARVE(Qc, TQ * Dqk);
    CARVE(dOc, TQ * Dv);
    CARVE(lse2, TQ);
    CARVE(dr, TQ);
#undef CARVE
    s->lo = base ? (int32_t *)(base + o) : NULL;
    o += (size_t)TQ;
    s->hi = base ? (int32_t *)(base + o) : NULL;
    o += (size_t)TQ;
    return o;
}

size_t FN(cpa_bwd_scratch_floats)(int64_t Dmax)
{
    bwd_scratch s;
    return bwd_carve(NULL, Dmax, Dmax, (Dmax + VL - 1) / VL * VL, &s);
}

/* A masked unit's contributions one visible pair at a time, from the
 * packed copies (rows [ra, rb) of the unit; Qc, dOc start at row ra).  The
 * vector products multiply masked entries by 0 too, and 0·NaN is NaN: when
 * Q, dO, K or V hold a non-finite value, only this keeps it out of the keys
 * and rows a pair cannot see — as a plain softmax attention would. */
static void bwd_unit_exact(const float *KT, const float *VT, const float *Kr, int64_t Dqk,
                           int64_t Dv, int64_t Dp, const float *Qc, const float *dOc,
                           const float *lse2, const float *dr, const int32_t *lo,
                           const int32_t *hi, int64_t ra, int64_t rb, float *dKT, float *dVT,
                           float *dQc)
{
    for (int64_t i = ra; i < rb; ++i) {
        const float *q = Qc + (i - ra) * Dqk, *dO = dOc + (i - ra) * Dv;
        float *dq = dQc + (i - ra) * Dp;
        memset(dq, 0, sizeof(float) * (size_t)Dp);
        for (int64_t j = lo[i]; j <= hi[i]; ++j) {
            float s = 0.0f, dp = 0.0f;
            for (int64_t c = 0; c < Dqk; ++c)
                s += KT[c * B_KW + j] * q[c];
            for (int64_t c = 0; c < Dv; ++c)
                dp += VT[c * B_KW + j] * dO[c];
            const float p = exp2f(s - lse2[i]), ds = p * (dp - dr[i]);
            for (int64_t c = 0; c < Dv; ++c)
                dVT[c * B_KW + j] += p * dO[c];
            for (int64_t c = 0; c < Dqk; ++c) {
                dKT[c * B_KW + j] += ds * q[c];
                dq[c] += ds * Kr[j * Dp + c];
            }
        }
    }
}

/* Ask for n rows of d floats (row stride ld) to be brought into cache (L2)
 * ahead of use: rows of bshd tensors are far apart and the hardware
 * prefetchers do not follow them. */
static void prefetch_rows(const float *p, int64_t ld, int64_t n, int64_t d, int write)
{
    for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < d; c += 16) {
            if (write)
                __builtin_prefetch(p + i * ld + c, 1, 2);
            else
                __builtin_prefetch(p + i * ld + c, 0, 2);
        }
}

/* Wait until the previous task of the chain has added its dQ for units
 * below `unit` (or finished).  Thread 0 keeps MPI progressing meanwhile. */
static void chain_wait(const cpa_bwd_job *job, int64_t task, int64_t unit, int progress)
{
    const int64_t chains = job->d->q.shape[0] * job->d->k.shape[2];
    if (task < chains)
        return; /* the first key task of a chain depends on nobody */
    const int64_t *prev = &job->chain[task - chains]; /* the same chain's previous key tile */
    unsigned spins = 0;
    while (__atomic_load_n(prev, __ATOMIC_ACQUIRE) <= unit) {
        if (++spins % 1024 == 0) {
            if (progress)
                job->d->progress(job->d->progress_arg);
            sched_yield();
        }
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

void FN(cpa_bwd_task)(const cpa_bwd_job *job, int64_t task, float *scratch, int progress)
{
    const cpa_attn_desc *d = job->d;
    const int64_t Dqk = d->q.shape[3], Dv = d->v.shape[3], G = d->k.shape[2];
    const int64_t Dp = (Dqk + VL - 1) / VL * VL;
    /* task = j·(B·G) + (b·G + g): key tile j of chain (b, g); consecutive
     * tasks belong to different chains, so threads rarely wait. */
    const int64_t chains = d->q.shape[0] * G, bg = task % chains, b = bg / G, g = bg % G;
    const cpa_tile kt = cpa_tiling_get(&job->kt, task / chains);
    bwd_scratch s;
    bwd_carve(scratch, Dqk, Dv, Dp, &s);
    float *KT = s.KT, *VT = s.VT, *Kr = s.Kr, *dKT = s.dKT, *dVT = s.dVT;
    float *P = s.P, *dS = s.dS, *dQc = s.dQc, *lse2 = s.lse2, *dr = s.dr;
    float *Qc = s.Qc, *dOc = s.dOc;
    int32_t *lo = s.lo, *hi = s.hi;

    /* Pack this task's keys once: Kᵀ and Vᵀ as lane panels, K as rows. */
    for (int64_t j = 0; j < B_KW; ++j) {
        const float *k = j < kt.len ? cpa_at4(&d->k, b, kt.row + j, g) : NULL;
        const float *v = j < kt.len ? cpa_at4(&d->v, b, kt.row + j, g) : NULL;
        for (int64_t c = 0; c < Dqk; ++c)
            KT[c * B_KW + j] = k ? k[c] * job->kscale : 0.0f;
        for (int64_t c = 0; c < Dv; ++c)
            VT[c * B_KW + j] = v ? v[c] : 0.0f;
        for (int64_t c = 0; c < Dp; ++c)
            Kr[j * Dp + c] = k && c < Dqk ? k[c] * job->scale : 0.0f;
    }
    memset(dKT, 0, sizeof(float) * (size_t)(Dqk * B_KW));
    memset(dVT, 0, sizeof(float) * (size_t)(Dv * B_KW));
    const int kv_finite = all_finite(KT, Dqk * B_KW) && all_finite(VT, Dv * B_KW);
    const int64_t npanels = (kt.len + B_MK - 1) / B_MK; /* lane panels holding keys */

    const int64_t ldq = d->q.stride[1], lddo = job->dout.stride[1], lddq = job->dq.stride[1];
    for (int64_t hh = 0; hh < job->hpg; ++hh) {
        const int64_t h = g * job->hpg + hh;
        for (int64_t qi = 0; qi < job->nq; ++qi) {
            const int64_t unit = hh * job->nq + qi;
            const cpa_tile qt = cpa_tiling_get(&job->qt, qi);
            const cpa_tile_class cls = cpa_tile_classify(d->mask, qt, kt);
            if (cls == CPA_TILE_SKIP)
                continue;
            /* This unit's dQ rows (written at its end) and the next unit's
             * Q and dO rows (read at its start) travel while we compute. */
            prefetch_rows(cpa_at4(&job->dq, b, qt.row, h), lddq, qt.len, Dqk, 1);
            if (qi + 1 < job->nq || hh + 1 < job->hpg) {
                const int64_t nh = qi + 1 < job->nq ? h : h + 1;
                const cpa_tile nt = cpa_tiling_get(&job->qt, qi + 1 < job->nq ? qi + 1 : 0);
                if (cpa_tile_classify(d->mask, nt, kt) != CPA_TILE_SKIP) {
                    prefetch_rows(cpa_at4(&d->q, b, nt.row, nh), ldq, nt.len, Dqk, 0);
                    prefetch_rows(cpa_at4(&job->dout, b, nt.row, nh), lddo, nt.len, Dv, 0);
                }
            }
            /* Per row: lse in base 2, Dr, and the visible key lanes; rows
             * that see nothing here (or nothing at all: lse = -inf) get an
             * empty range.  Active rows form the run [ra, rb). */
            int masked = cls == CPA_TILE_PARTIAL || kt.len < npanels * B_MK;
            int64_t ra = qt.len, rb = 0;
            cpa_tile_row_ranges(d->mask, qt, kt, lo, hi);
            for (int64_t i = 0; i < qt.len; ++i) {
                const float l = *cpa_at3(&job->lse, b, h, qt.row + i);
                if (l == -INFINITY) {
                    lo[i] = 1, hi[i] = 0;
                    masked = 1;
                }
                if (lo[i] > hi[i])
                    continue;
                lse2[i] = l * LOG2E;
                dr[i] = job->dr[(b * d->q.shape[2] + h) * d->q.shape[1] + qt.row + i];
                if (i < ra)
                    ra = i;
                rb = i + 1;
            }
            if (ra >= rb)
                continue;
            for (int64_t i = ra; i < rb; ++i)
                if (lo[i] > hi[i])
                    lse2[i] = 0.0f, dr[i] = 0.0f; /* masked everywhere: P = 0 */
            const int64_t nrows = rb - ra;
            pack_rows(Qc, cpa_at4(&d->q, b, qt.row + ra, h), ldq, nrows, Dqk);
            pack_rows(dOc, cpa_at4(&job->dout, b, qt.row + ra, h), lddo, nrows, Dv);
            if (masked && !(kv_finite && all_finite(Qc, nrows * Dqk) &&
                            all_finite(dOc, nrows * Dv))) {
                bwd_unit_exact(KT, VT, Kr, Dqk, Dv, Dp, Qc, dOc, lse2, dr, lo, hi, ra, rb, dKT,
                               dVT, dQc);
                goto add_dq;
            }
            /* The rows each lane panel is visible to, [pr0, pr1): near a
             * causal diagonal the last panel is hidden from the first rows. */
            int64_t pr0[B_KP], pr1[B_KP];
            for (int64_t p = 0; p < npanels; ++p) {
                const int32_t a = (int32_t)(p * B_MK), z = a + B_MK - 1;
                pr0[p] = rb, pr1[p] = ra;
                for (int64_t i = ra; i < rb; ++i)
                    if (lo[i] <= hi[i] && lo[i] <= z && hi[i] >= a) {
                        pr0[p] = i < pr0[p] ? i : pr0[p];
                        pr1[p] = i + 1;
                    }
            }
            for (int64_t i = ra; i < rb; i += B_NR) {
                const float *qrows = Qc + (i - ra) * Dqk, *dorows = dOc + (i - ra) * Dv;
                const int64_t nr = rb - i < B_NR ? rb - i : B_NR;
                for (int64_t p = 0, lane0 = 0; p < npanels; ++p, lane0 += B_MK) {
                    if (i + nr <= pr0[p] || i >= pr1[p]) { /* hidden: dS = 0 (dQ reads it) */
                        for (int64_t r = i; r < i + nr; ++r)
                            memset(dS + r * B_KW + lane0, 0, sizeof(float) * B_MK);
                        continue;
                    }
                    switch ((int)nr) {
                        CASES_NR(BWD_P_CASE)
                    default:
                        break;
                    }
                }
            }
            /* dVᵀ += Pᵀ-rows · dO ; dKᵀ += dSᵀ-rows · Q (scale applied at the end),
             * over the rows each panel is visible to. */
            for (int64_t p = 0, lane0 = 0; p < npanels; ++p, lane0 += B_MK) {
                if (pr0[p] >= pr1[p])
                    continue;
                const int64_t r0 = pr0[p], n = pr1[p] - pr0[p];
                bwd_axpy_sweep(P + r0 * B_KW + lane0, B_KW, n, dOc + (r0 - ra) * Dv, Dv,
                               dVT + lane0, B_KW, Dv);
                bwd_axpy_sweep(dS + r0 * B_KW + lane0, B_KW, n, Qc + (r0 - ra) * Dqk, Dqk,
                               dKT + lane0, B_KW, Dqk);
            }
            /* dQ contribution of these keys, then added in chain order. */
            bwd_dq_block(dS + ra * B_KW, B_KW, nrows, kt.len, Kr, Dp, dQc, Dp, Dp);
        add_dq:
            chain_wait(job, task, unit, progress);
            float *dq0 = cpa_at4(&job->dq, b, qt.row, h);
            for (int64_t i = 0; i < nrows; ++i) {
                float *dst = dq0 + (ra + i) * lddq;
                const float *src = dQc + i * Dp;
                for (int64_t c = 0; c < Dqk; ++c)
                    dst[c] += src[c];
            }
            __atomic_store_n(&job->chain[task], unit + 1, __ATOMIC_RELEASE);
            if (progress)
                d->progress(d->progress_arg);
        }
    }
    chain_wait(job, task, INT64_MAX - 1, progress);
    __atomic_store_n(&job->chain[task], INT64_MAX, __ATOMIC_RELEASE);

    /* The task's keys are its own: dK += scale · dKᵀᵀ, dV += dVᵀᵀ. */
    for (int64_t j = 0; j < kt.len; ++j) {
        float *dk = cpa_at4(&job->dk, b, kt.row + j, g), *dv = cpa_at4(&job->dv, b, kt.row + j, g);
        for (int64_t c = 0; c < Dqk; ++c)
            dk[c] += dKT[c * B_KW + j] * job->scale;
        for (int64_t c = 0; c < Dv; ++c)
            dv[c] += dVT[c * B_KW + j];
    }
}

/* ---- the FMA ceiling ------------------------------------------------------ */

/* `iters` rounds of 12 independent FMA chains (enough to cover the FMA
 * latency of every core we know, so the loop runs at the FMA throughput).
 * Returns a value that depends on every chain, so nothing is optimised
 * away; the caller counts 24 · VL · iters flops. */
float FN(cpa_fma_probe)(int64_t iters)
{
    vf a0 = vf_set1(0.0f), a1 = vf_set1(1.0f), a2 = vf_set1(2.0f), a3 = vf_set1(3.0f);
    vf a4 = vf_set1(4.0f), a5 = vf_set1(5.0f), a6 = vf_set1(6.0f), a7 = vf_set1(7.0f);
    vf a8 = vf_set1(8.0f), a9 = vf_set1(9.0f), a10 = vf_set1(10.0f), a11 = vf_set1(11.0f);
    const vf x = vf_set1(0.999999f), y = vf_set1(1e-7f);
    for (int64_t i = 0; i < iters; ++i) {
        a0 = vf_fma(a0, x, y), a1 = vf_fma(a1, x, y), a2 = vf_fma(a2, x, y);
        a3 = vf_fma(a3, x, y), a4 = vf_fma(a4, x, y), a5 = vf_fma(a5, x, y);
        a6 = vf_fma(a6, x, y), a7 = vf_fma(a7, x, y), a8 = vf_fma(a8, x, y);
        a9 = vf_fma(a9, x, y), a10 = vf_fma(a10, x, y), a11 = vf_fma(a11, x, y);
    }
    vf s = vf_add(vf_add(vf_add(a0, a1), vf_add(a2, a3)), vf_add(vf_add(a4, a5), vf_add(a6, a7)));
    s = vf_add(s, vf_add(vf_add(a8, a9), vf_add(a10, a11)));
    float lanes[VL], sum = 0.0f;
    vf_store(lanes, s);
    for (int i = 0; i < VL; ++i)
        sum += lanes[i];
    return sum;
}

/* The instruction set's table row (declared in kernel_internal.h). */
const cpa_isa_kernels FN(cpa_kernels) = {
    .lanes = VL,
    .fwd_rows = F_MR,
    .bwd_keys = B_KW,
    .fwd_scratch_floats = FN(cpa_fwd_scratch_floats),
    .bwd_scratch_floats = FN(cpa_bwd_scratch_floats),
    .fwd_task = FN(cpa_fwd_task),
    .bwd_task = FN(cpa_bwd_task),
    .fma_probe = FN(cpa_fma_probe),
};
