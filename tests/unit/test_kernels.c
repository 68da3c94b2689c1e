/*
 * test_kernels.c — the fast attention kernels against the double-precision
 * reference over a grid of shapes, pieces, masks and layouts; merge;
 * finite-difference gradients; fully masked rows; determinism across
 * thread counts; argument errors.
 *
 * Tolerances, and why.  Errors are measured relative to the largest
 * magnitude in the reference tensor (max|got-want| / max|want|).  The fast
 * path sums in fp32 over up to Sk keys in tiles of 128 with an online
 * softmax; the reference sums in double.  Rounding then grows like
 * eps·sqrt(terms) ≈ 6e-8·sqrt(1000·128) ≈ 2e-5 at the largest shapes here,
 * so we allow:
 *   out, lse (forward): 1e-5 relative (lse: 1e-5 absolute per unit of |lse|)
 *   dq, dk, dv:         5e-5 relative (two more GEMM chains and the Dr
 *                       subtraction, which cancels)
 * Measured worst cases over the grid (printed at the end, for every path):
 * about 1e-6 (out, lse) and 4e-6 (dq, dk, dv) — 10x below the bounds, so a
 * real bug (a wrong mask edge, a lost tile) fails while rounding never does.
 *
 * Instruction sets.  Every fast path compiled in (avx512, avx2, scalar) is
 * forced in turn — through the context's `isa` and through $CPATTN_ISA —
 * and pitted against the same reference; a path this CPU cannot run is
 * skipped with a printed line.
 */
#include "kernel_internal.h" /* tile sizes */
#include "kernel_test_util.h"
#include "test.h"

#include <omp.h>
#include <stdio.h>

#define TOL_FWD 1e-5
#define TOL_BWD 5e-5

static int verbose;

/* The fast paths this run tests: every one the CPU supports. */
static cpa_isa isas[3];
static int nisas;
/* The path the single-path tests below run (through $CPATTN_ISA). */
static cpa_isa cur_isa;

typedef struct kcase {
    int64_t B, Sq, Sk, H, G, Dqk, Dv;
    cpa_mask_kind mask;
    cpa_layout layout;
    int nq, nk; /* piece counts; 0 = all rows at positions 0.. */
    cpa_piece qp[4], kp[4];
    float scale;
    int64_t window;    /* sliding window (0: none) */
    int64_t ndocs;     /* documents in cu (0: one sequence) */
    int64_t cu[24];
} kcase;

typedef struct kresult {
    tu_err out, lse, dq, dk, dv;
    int skipped;
} kresult;

/* Fresh gradient buffers filled with the same starting values (the
 * backward accumulates into them). */
static void grads_init(const kcase *c, tu_tensor *dq, tu_tensor *dk, tu_tensor *dv)
{
    *dq = tu_attn(c->layout, c->B, c->Sq, c->H, c->Dqk);
    *dk = tu_attn(c->layout, c->B, c->Sk, c->G, c->Dqk);
    *dv = tu_attn(c->layout, c->B, c->Sk, c->G, c->Dv);
    tu_fill(dq->t, 5, 0.1f);
    tu_fill(dk->t, 6, 0.1f);
    tu_fill(dv->t, 7, 0.1f);
}

static void describe(const kcase *c, char *buf, size_t n)
{
    snprintf(buf, n, "B=%lld Sq=%lld Sk=%lld H=%lld G=%lld Dqk=%lld Dv=%lld %s %s pieces=%d/%d "
             "window=%lld docs=%lld",
             (long long)c->B, (long long)c->Sq, (long long)c->Sk, (long long)c->H,
             (long long)c->G, (long long)c->Dqk, (long long)c->Dv,
             c->mask == CPA_MASK_CAUSAL ? "causal" : "none", cpa_layout_name(c->layout), c->nq,
             c->nk, (long long)c->window, (long long)c->ndocs);
}

/* Under AddressSanitizer every scalar lane access is instrumented and the
 * scalar path takes minutes on the largest cases; there it runs the cases
 * up to 5e5 score entries (most of the grid), the vector paths run all.
 * The scalar path shares every line of its driver with the vector ones. */
static int skip_slow_path(const kcase *c, cpa_isa isa)
{
#if defined(__SANITIZE_ADDRESS__)
    return isa == CPA_ISA_SCALAR && (double)c->B * c->H * c->Sq * c->Sk > 5e5;
#else
    (void)c, (void)isa;
    return 0;
#endif
}

/* Fast fwd+bwd of every tested path vs one reference fwd+bwd on the same
 * inputs.  The gradient outputs start from the same random values so
 * accumulation is tested.  r[i] is the result of isas[i]. */
static void run_case(const kcase *c, int threads, kresult *r)
{
    tu_tensor q = tu_attn(c->layout, c->B, c->Sq, c->H, c->Dqk);
    tu_tensor k = tu_attn(c->layout, c->B, c->Sk, c->G, c->Dqk);
    tu_tensor v = tu_attn(c->layout, c->B, c->Sk, c->G, c->Dv);
    tu_tensor dout = tu_attn(c->layout, c->B, c->Sq, c->H, c->Dv);
    tu_fill(q.t, 1, 1.0f);
    tu_fill(k.t, 2, 1.0f);
    tu_fill(v.t, 3, 1.0f);
    tu_fill(dout.t, 4, 1.0f);
    cpa_attn_desc d;
    memset(&d, 0, sizeof d);
    d.q = q.t;
    d.k = k.t;
    d.v = v.t;
    d.q_rows.pieces = c->qp;
    d.q_rows.count = c->nq;
    d.kv_rows.pieces = c->kp;
    d.kv_rows.count = c->nk;
    d.mask.kind = c->mask;
    d.mask.window = c->window;
    if (c->ndocs)
        d.mask.cu_seqlens = c->cu, d.mask.num_docs = c->ndocs;
    d.softmax_scale = c->scale;

    /* The reference, once. */
    tu_tensor out0 = tu_attn(c->layout, c->B, c->Sq, c->H, c->Dv), lse0 = tu_lse(c->B, c->H, c->Sq);
    tu_tensor dq0, dk0, dv0;
    grads_init(c, &dq0, &dk0, &dv0);
    d.impl = CPA_IMPL_REFERENCE;
    CHECK_OK(cpa_attn_forward(NULL, &d, out0.t, lse0.t));
    CHECK_OK(cpa_attn_backward(NULL, &d, out0.t, lse0.t, dout.t, dq0.t, dk0.t, dv0.t));

    d.impl = CPA_IMPL_FAST;
    for (int i = 0; i < nisas; ++i) {
        r[i].skipped = skip_slow_path(c, isas[i]);
        if (r[i].skipped)
            continue;
        tu_tensor out = tu_attn(c->layout, c->B, c->Sq, c->H, c->Dv), lse = tu_lse(c->B, c->H, c->Sq);
        tu_tensor dq, dk, dv;
        grads_init(c, &dq, &dk, &dv);
        cpa_attn_ctx *ctx = NULL;
        cpa_attn_ctx_config cfg = {c->Dqk > c->Dv ? c->Dqk : c->Dv, threads, isas[i]};
        CHECK_OK(cpa_attn_ctx_create(&cfg, &ctx));
        CHECK(cpa_attn_ctx_isa(ctx) == isas[i]);
        CHECK_OK(cpa_attn_forward(ctx, &d, out.t, lse.t));
        CHECK_OK(cpa_attn_backward(ctx, &d, out.t, lse.t, dout.t, dq.t, dk.t, dv.t));
        cpa_attn_ctx_destroy(ctx);
        r[i].out = tu_compare(out.t, out0.t);
        r[i].lse = tu_compare(lse.t, lse0.t);
        r[i].dq = tu_compare(dq.t, dq0.t);
        r[i].dk = tu_compare(dk.t, dk0.t);
        r[i].dv = tu_compare(dv.t, dv0.t);
        free(out.buf), free(lse.buf), free(dq.buf), free(dk.buf), free(dv.buf);
    }
    free(q.buf), free(k.buf), free(v.buf), free(dout.buf);
    free(out0.buf), free(lse0.buf), free(dq0.buf), free(dk0.buf), free(dv0.buf);
}

static double worst[5];

/* One path's result against the tolerances; tracks the worst errors. */
static void check_result(const kcase *c, cpa_isa isa, const kresult *r)
{
    char desc[300];
    describe(c, desc, sizeof desc);
    snprintf(desc + strlen(desc), sizeof desc - strlen(desc), " [%s]", cpa_isa_name(isa));
    /* lse is compared in absolute terms scaled by its magnitude (>= 1). */
    double lse_tol = TOL_FWD * (r->lse.scale > 1.0 ? r->lse.scale : 1.0);
    CHECK_MSG(r->out.rel <= TOL_FWD, "%s: out rel err %.3g > %.1g", desc, r->out.rel, TOL_FWD);
    CHECK_MSG(r->lse.abs <= lse_tol, "%s: lse abs err %.3g > %.3g", desc, r->lse.abs, lse_tol);
    CHECK_MSG(r->dq.rel <= TOL_BWD, "%s: dq rel err %.3g > %.1g", desc, r->dq.rel, TOL_BWD);
    CHECK_MSG(r->dk.rel <= TOL_BWD, "%s: dk rel err %.3g > %.1g", desc, r->dk.rel, TOL_BWD);
    CHECK_MSG(r->dv.rel <= TOL_BWD, "%s: dv rel err %.3g > %.1g", desc, r->dv.rel, TOL_BWD);
    double e[5] = {r->out.rel, r->lse.abs, r->dq.rel, r->dk.rel, r->dv.rel};
    for (int i = 0; i < 5; ++i)
        if (e[i] > worst[i])
            worst[i] = e[i];
    if (verbose)
        fprintf(stderr, "  %s: out %.2g lse %.2g dq %.2g dk %.2g dv %.2g\n", desc, r->out.rel,
                r->lse.abs, r->dq.rel, r->dk.rel, r->dv.rel);
}

static void check_case(const kcase *c)
{
    kresult r[3];
    run_case(c, 0, r);
    for (int i = 0; i < nisas; ++i)
        if (!r[i].skipped)
            check_result(c, isas[i], &r[i]);
}

/* The grid of the issue: every S, D, (H, G), B, layout and mask appears,
 * without the full Cartesian product (the reference is O(S²·D) in double). */
static void test_grid(void)
{
    static const int64_t S_list[] = {1, 7, 64, 200, 1000};
    static const int64_t D_list[] = {8, 64, 80, 128};
    static const int64_t HG[][2] = {{1, 1}, {8, 8}, {8, 2}, {5, 5}, {32, 4}};
    int n = 0;
    for (int si = 0; si < 5; ++si)
        for (int hi = 0; hi < 5; ++hi)
            for (int mask = 0; mask < 2; ++mask) {
                kcase c;
                memset(&c, 0, sizeof c);
                c.Sq = c.Sk = S_list[si];
                c.H = HG[hi][0];
                c.G = HG[hi][1];
                if (c.Sq >= 1000 && c.H > 8)
                    continue; /* the reference would dominate the test time */
                c.Dqk = D_list[(si + hi + mask) % 4];
                c.Dv = (n % 3 == 0) ? D_list[(si + hi + mask + 1) % 4] : c.Dqk;
                c.B = 1 + (n % 2);
                c.layout = (cpa_layout)(n % 3);
                c.mask = mask ? CPA_MASK_CAUSAL : CPA_MASK_NONE;
                check_case(&c);
                ++n;
            }
    /* MLA head dims (Dqk 192, Dv 128), head dims that are no multiple of
     * any vector width (20, 33), and Sq != Sk with ragged edges for every
     * panel and tile size (forward 32/16/4 query rows and 128 keys,
     * backward 64 query rows and 128/64 keys). */
    static const int64_t extra[][8] = {
        /* B, Sq, Sk, H, G, Dqk, Dv, mask */
        {1, 333, 333, 4, 2, 192, 128, 1}, {2, 129, 257, 2, 1, 192, 128, 0},
        {1, 95, 161, 3, 3, 20, 33, 1},    {1, 65, 31, 2, 2, 33, 20, 0},
        {2, 97, 300, 6, 2, 48, 48, 1},
    };
    for (int i = 0; i < 5; ++i) {
        kcase c;
        memset(&c, 0, sizeof c);
        c.B = extra[i][0], c.Sq = extra[i][1], c.Sk = extra[i][2], c.H = extra[i][3];
        c.G = extra[i][4], c.Dqk = extra[i][5], c.Dv = extra[i][6];
        c.mask = extra[i][7] ? CPA_MASK_CAUSAL : CPA_MASK_NONE;
        c.layout = (cpa_layout)(i % 3);
        check_case(&c);
    }
}

/* Pieces cut at ragged points with global positions, as context-parallel
 * ranks use them: zigzag-like two-piece queries against one- and two-piece
 * key blocks, including blocks entirely in the queries' past or future. */
static void test_pieces(void)
{
    const int64_t S = 300;
    /* Query rows: 0..96 at positions 0..96 and 97..299 at positions 700..902. */
    const cpa_piece q2[2] = {{0, 97, 0}, {97, 203, 700}};
    /* Keys: a ragged split; positions interleave with the queries'. */
    const cpa_piece k_early[1] = {{0, 300, 50}};
    const cpa_piece k_two[2] = {{0, 131, 10}, {131, 169, 600}};
    const cpa_piece k_future[1] = {{0, 300, 5000}};
    const cpa_piece k_sub[2] = {{17, 40, 0}, {200, 33, 650}}; /* only some rows of K */
    const cpa_piece *kl[] = {k_early, k_two, k_future, k_sub};
    const int kn[] = {1, 2, 1, 2};
    for (int t = 0; t < 4; ++t)
        for (int mask = 0; mask < 2; ++mask) {
            kcase c;
            memset(&c, 0, sizeof c);
            c.B = 2;
            c.Sq = c.Sk = S;
            c.H = 8;
            c.G = 2;
            c.Dqk = 64;
            c.Dv = t == 1 ? 48 : 64;
            c.mask = mask ? CPA_MASK_CAUSAL : CPA_MASK_NONE;
            c.layout = (cpa_layout)(t % 3);
            c.nq = 2;
            memcpy(c.qp, q2, sizeof q2);
            c.nk = kn[t];
            memcpy(c.kp, kl[t], sizeof(cpa_piece) * (size_t)kn[t]);
            c.scale = t == 3 ? 0.3f : 0.0f;
            check_case(&c);
        }
    /* A subset of query rows: rows outside q_rows must be left alone. */
    kcase c;
    memset(&c, 0, sizeof c);
    c.B = 1;
    c.Sq = 150;
    c.Sk = 150;
    c.H = c.G = 2;
    c.Dqk = c.Dv = 32;
    c.mask = CPA_MASK_CAUSAL;
    c.nq = 1;
    c.qp[0] = (cpa_piece){75, 75, 75}; /* the late half only */
    check_case(&c);
}

/* Documents and sliding windows.  First the rule itself, against its
 * definition written out pair by pair; then the kernels against the
 * reference (which applies the same rule) over documents spanning tiles,
 * ending on tile edges, of length 1 and many short ones in one tile, windows
 * shorter than a tile, than a piece and longer than S, both combined, causal
 * and general, with and without pieces; and the flop count (visible pairs)
 * against a brute-force count, so skipped tiles are really not counted. */
static int visible_by_definition(int causal, int64_t window, const int64_t *cu, int64_t ndocs,
                                 int64_t p, int64_t k)
{
    if (causal && k > p)
        return 0;
    if (window > 0 && (p - k >= window || (!causal && k - p >= window)))
        return 0;
    if (ndocs) {
        int64_t dp = -1, dk = -1;
        for (int64_t i = 0; i < ndocs; ++i) {
            if (p >= cu[i] && p < cu[i + 1])
                dp = i;
            if (k >= cu[i] && k < cu[i + 1])
                dk = i;
        }
        if (dp != dk || dp < 0)
            return 0;
    }
    return 1;
}

static void test_documents_and_windows(void)
{
    static const int64_t docs_a[] = {0, 1, 37, 128, 129, 200, 300};        /* 1-long, edges */
    static const int64_t docs_b[] = {0, 3, 5, 6, 10, 17, 20, 31, 33, 34, 60, 64, 300};
    static const int64_t docs_c[] = {0, 300};
    static const int64_t windows[] = {0, 5, 17, 130, 5000};
    const struct { const int64_t *cu; int64_t n; } docs[] = {{NULL, 0}, {docs_a, 6}, {docs_b, 12},
                                                              {docs_c, 1}};
    /* The rule: cpa_mask_range against the definition. */
    int64_t bad = 0;
    for (int di = 0; di < 4; ++di)
        for (int wi = 0; wi < 5; ++wi)
            for (int causal = 0; causal < 2; ++causal) {
                cpa_mask m = {causal ? CPA_MASK_CAUSAL : CPA_MASK_NONE, windows[wi], docs[di].cu,
                              docs[di].n};
                CHECK_OK(cpa_mask_check(m, 300));
                for (int64_t p = 0; p < 300; p += 7)
                    for (int64_t k = 0; k < 300; ++k) {
                        int64_t lo, hi;
                        cpa_mask_range(m, p, &lo, &hi);
                        const int got = k >= lo && k <= hi;
                        bad += got != visible_by_definition(causal, windows[wi], docs[di].cu,
                                                            docs[di].n, p, k);
                    }
                /* Visible pairs counted by the flop formula = brute force. */
                cpa_attn_desc d;
                memset(&d, 0, sizeof d);
                d.q = cpa_tensor_attn(NULL, CPA_LAYOUT_BSHD, 1, 300, 1, 1);
                d.k = d.v = d.q;
                d.mask = m;
                double pairs = 0;
                for (int64_t p = 0; p < 300; ++p)
                    for (int64_t k = 0; k < 300; ++k)
                        pairs += visible_by_definition(causal, windows[wi], docs[di].cu,
                                                       docs[di].n, p, k);
                CHECK_MSG(cpa_attn_forward_flops(&d) == 4.0 * pairs, "docs %d window %lld "
                          "causal %d: flops count %.0f pairs, brute force %.0f", di,
                          (long long)windows[wi], causal, cpa_attn_forward_flops(&d) / 4.0, pairs);
            }
    CHECK_MSG(bad == 0, "cpa_mask_range disagrees with the definition on %lld pairs",
              (long long)bad);

    /* The kernels against the reference. */
    int n = 0;
    for (int di = 0; di < 4; ++di)
        for (int wi = 0; wi < 5; ++wi)
            for (int causal = 0; causal < 2; ++causal, ++n) {
                if (di == 0 && wi == 0)
                    continue; /* the plain masks: test_grid */
                kcase c;
                memset(&c, 0, sizeof c);
                c.B = 1 + n % 2;
                c.Sq = c.Sk = 300;
                c.H = 4, c.G = n % 3 ? 2 : 4;
                c.Dqk = n % 2 ? 64 : 40;
                c.Dv = n % 4 == 3 ? 24 : c.Dqk;
                c.mask = causal ? CPA_MASK_CAUSAL : CPA_MASK_NONE;
                c.layout = (cpa_layout)(n % 3);
                c.window = windows[wi];
                c.ndocs = docs[di].n;
                if (docs[di].cu)
                    memcpy(c.cu, docs[di].cu, sizeof(int64_t) * (size_t)(docs[di].n + 1));
                if (n % 4 == 1) { /* zigzag-like pieces: late queries against early keys */
                    c.nq = 2, c.qp[0] = (cpa_piece){0, 150, 0}, c.qp[1] = (cpa_piece){150, 150, 150};
                    c.nk = 1, c.kp[0] = (cpa_piece){0, 300, 0};
                }
                if (n % 4 == 3) { /* a sub-block of rows at other positions */
                    c.nq = 1, c.qp[0] = (cpa_piece){20, 150, 150};
                    c.nk = 2, c.kp[0] = (cpa_piece){0, 100, 0}, c.kp[1] = (cpa_piece){100, 100, 200};
                }
                check_case(&c);
            }
    /* Bad masks are refused, naming cu_seqlens or the window. */
    static const int64_t not0[] = {1, 5, 300}, flat[] = {0, 5, 5, 300}, down[] = {0, 9, 5, 300};
    const struct { cpa_mask m; const char *word; } badm[] = {
        {{CPA_MASK_CAUSAL, 0, not0, 2}, "start at 0"},
        {{CPA_MASK_CAUSAL, 0, flat, 3}, "strictly increasing"},
        {{CPA_MASK_NONE, 0, down, 3}, "strictly increasing"},
        {{CPA_MASK_CAUSAL, 0, docs_a, 5}, "end at the sequence length"},
        {{CPA_MASK_CAUSAL, -1, NULL, 0}, "--sliding-window"},
        {{CPA_MASK_CAUSAL, 0, docs_a, 0}, "documents"},
    };
    for (size_t i = 0; i < sizeof badm / sizeof badm[0]; ++i) {
        CHECK(cpa_mask_check(badm[i].m, 300) == CPA_ERR_ARG);
        CHECK_MSG(strstr(cpa_last_error(), badm[i].word) != NULL, "bad mask %zu: '%s' lacks '%s'",
                  i, cpa_last_error(), badm[i].word);
    }
    /* Positions past the last document are refused by the kernels. */
    kcase c;
    memset(&c, 0, sizeof c);
    tu_tensor t = tu_attn(CPA_LAYOUT_BSHD, 1, 8, 1, 4), l = tu_lse(1, 1, 8);
    cpa_attn_desc d;
    memset(&d, 0, sizeof d);
    d.q = d.k = d.v = t.t;
    static const int64_t short_docs[] = {0, 4};
    d.mask = (cpa_mask){CPA_MASK_CAUSAL, 0, short_docs, 1};
    CHECK(cpa_attn_forward(NULL, &d, t.t, l.t) == CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "cu_seqlens ends at 4") != NULL);
    free(t.buf), free(l.buf);
    (void)c;
}

/* ---- split, merge, additivity ----------------------------------------- */

typedef struct problem {
    int64_t B, S, H, G, Dqk, Dv;
    tu_tensor q, k, v, dout;
    cpa_attn_desc d;
} problem;

static void problem_init(problem *p, int64_t B, int64_t S, int64_t H, int64_t G, int64_t Dqk,
                         int64_t Dv, cpa_mask_kind mask)
{
    p->B = B, p->S = S, p->H = H, p->G = G, p->Dqk = Dqk, p->Dv = Dv;
    p->q = tu_attn(CPA_LAYOUT_BSHD, B, S, H, Dqk);
    p->k = tu_attn(CPA_LAYOUT_BSHD, B, S, G, Dqk);
    p->v = tu_attn(CPA_LAYOUT_BSHD, B, S, G, Dv);
    p->dout = tu_attn(CPA_LAYOUT_BSHD, B, S, H, Dv);
    tu_fill(p->q.t, 11, 1.0f);
    tu_fill(p->k.t, 12, 1.0f);
    tu_fill(p->v.t, 13, 1.0f);
    tu_fill(p->dout.t, 14, 1.0f);
    memset(&p->d, 0, sizeof p->d);
    p->d.q = p->q.t;
    p->d.k = p->k.t;
    p->d.v = p->v.t;
    p->d.mask.kind = mask;
}

static void problem_free(problem *p)
{
    free(p->q.buf);
    free(p->k.buf);
    free(p->v.buf);
    free(p->dout.buf);
}

/* Keys split at arbitrary positions into blocks; forward each block and
 * merge: equals the unsplit forward.  Backward of each block with the final
 * (out, lse), summed: equals the unsplit backward. */
static void test_split_merge(void)
{
    const int64_t cuts[][4] = {{0, 1, 130, 233}, {0, 100, 101, 233}, {0, 57, 200, 233}};
    for (int mask = 0; mask < 2; ++mask)
        for (int ci = 0; ci < 3; ++ci) {
            problem p;
            problem_init(&p, 2, 233, 4, 2, 40, 24, mask ? CPA_MASK_CAUSAL : CPA_MASK_NONE);
            tu_tensor out = tu_attn(CPA_LAYOUT_BSHD, 2, 233, 4, 24), lse = tu_lse(2, 4, 233);
            tu_tensor outb = tu_attn(CPA_LAYOUT_BSHD, 2, 233, 4, 24), lseb = tu_lse(2, 4, 233);
            tu_tensor acc = tu_attn(CPA_LAYOUT_BSHD, 2, 233, 4, 24), lacc = tu_lse(2, 4, 233);
            tu_tensor g1[3], g2[3];
            const int64_t gs[3][2] = {{4, 40}, {2, 40}, {2, 24}}; /* dq, dk, dv heads/dims */
            for (int i = 0; i < 3; ++i) {
                g1[i] = tu_attn(CPA_LAYOUT_BSHD, 2, 233, gs[i][0], gs[i][1]);
                g2[i] = tu_attn(CPA_LAYOUT_BSHD, 2, 233, gs[i][0], gs[i][1]);
            }
            CHECK_OK(cpa_attn_forward(NULL, &p.d, out.t, lse.t));
            CHECK_OK(cpa_attn_backward(NULL, &p.d, out.t, lse.t, p.dout.t, g1[0].t, g1[1].t, g1[2].t));
            for (int b = 0; b < 3; ++b) {
                cpa_piece kp = {cuts[ci][b], cuts[ci][b + 1] - cuts[ci][b], cuts[ci][b]};
                cpa_attn_desc d = p.d;
                d.kv_rows.pieces = &kp;
                d.kv_rows.count = 1;
                cpa_rows all = {NULL, 0};
                if (b == 0) {
                    CHECK_OK(cpa_attn_forward(NULL, &d, acc.t, lacc.t));
                } else {
                    CHECK_OK(cpa_attn_forward(NULL, &d, outb.t, lseb.t));
                    CHECK_OK(cpa_attn_merge(acc.t, lacc.t, outb.t, lseb.t, all));
                }
            }
            for (int b = 0; b < 3; ++b) {
                cpa_piece kp = {cuts[ci][b], cuts[ci][b + 1] - cuts[ci][b], cuts[ci][b]};
                cpa_attn_desc d = p.d;
                d.kv_rows.pieces = &kp;
                d.kv_rows.count = 1;
                CHECK_OK(cpa_attn_backward(NULL, &d, acc.t, lacc.t, p.dout.t, g2[0].t, g2[1].t,
                                           g2[2].t));
            }
            tu_err eo = tu_compare(acc.t, out.t), el = tu_compare(lacc.t, lse.t);
            CHECK_MSG(eo.rel <= TOL_FWD, "split %d mask %d: merged out err %.3g", ci, mask, eo.rel);
            CHECK_MSG(el.abs <= TOL_FWD * (el.scale > 1 ? el.scale : 1),
                      "split %d mask %d: merged lse err %.3g", ci, mask, el.abs);
            for (int i = 0; i < 3; ++i) {
                tu_err e = tu_compare(g2[i].t, g1[i].t);
                CHECK_MSG(e.rel <= TOL_BWD, "split %d mask %d: summed grad %d err %.3g", ci, mask,
                          i, e.rel);
            }
            free(out.buf), free(lse.buf), free(outb.buf), free(lseb.buf), free(acc.buf),
                free(lacc.buf);
            for (int i = 0; i < 3; ++i)
                free(g1[i].buf), free(g2[i].buf);
            problem_free(&p);
        }
}

/* Merge edge cases: a side that saw no key (lse = -inf), both sides empty,
 * and a large gap between the two lse values. */
static void test_merge_edges(void)
{
    float o1[4] = {1, 2, 3, 4}, o2[4] = {5, 6, 7, 8}, l1[4], l2[4];
    int64_t oshape[4] = {1, 4, 1, 1}, lshape[3] = {1, 1, 4};
    cpa_tensor O1 = cpa_tensor_make(o1, 4, oshape), O2 = cpa_tensor_make(o2, 4, oshape);
    cpa_tensor L1 = cpa_tensor_make(l1, 3, lshape), L2 = cpa_tensor_make(l2, 3, lshape);
    l1[0] = -INFINITY, l2[0] = 0.5f;      /* left empty: take the right */
    l1[1] = 0.25f, l2[1] = -INFINITY;     /* right empty: keep the left */
    l1[2] = -INFINITY, l2[2] = -INFINITY; /* both empty */
    l1[3] = 0.0f, l2[3] = 200.0f;         /* far apart: no overflow */
    o1[2] = 0.0f, o2[2] = 0.0f;
    cpa_rows all = {NULL, 0};
    CHECK_OK(cpa_attn_merge(O1, L1, O2, L2, all));
    CHECK(o1[0] == 5 && l1[0] == 0.5f);
    CHECK(o1[1] == 2 && l1[1] == 0.25f);
    CHECK(o1[2] == 0 && l1[2] == -INFINITY);
    CHECK(fabsf(o1[3] - 8) < 1e-6f && fabsf(l1[3] - 200) < 1e-4f);
    /* Equal lse: the average, lse + ln 2. */
    o1[0] = 1, o2[0] = 3, l1[0] = 2, l2[0] = 2;
    cpa_piece one = {0, 1, 0};
    cpa_rows r = {&one, 1};
    CHECK_OK(cpa_attn_merge(O1, L1, O2, L2, r));
    CHECK(fabsf(o1[0] - 2) < 1e-6f && fabsf(l1[0] - (2 + logf(2))) < 1e-6f);
    CHECK(o1[1] == 2); /* rows outside `rows` untouched */
}

/* ---- fully masked rows -------------------------------------------------- */

static void test_fully_masked(void)
{
    problem p;
    problem_init(&p, 1, 40, 2, 1, 16, 16, CPA_MASK_CAUSAL);
    /* Queries at positions 95..134 against keys at 100..139: the first five
     * query rows see nothing. */
    cpa_piece qp = {0, 40, 95}, kp = {0, 40, 100};
    p.d.q_rows = (cpa_rows){&qp, 1};
    p.d.kv_rows = (cpa_rows){&kp, 1};
    for (int impl = 0; impl < 2; ++impl) {
        p.d.impl = (cpa_impl)impl;
        tu_tensor out = tu_attn(CPA_LAYOUT_BSHD, 1, 40, 2, 16), lse = tu_lse(1, 2, 40);
        tu_tensor dq = tu_attn(CPA_LAYOUT_BSHD, 1, 40, 2, 16);
        tu_tensor dk = tu_attn(CPA_LAYOUT_BSHD, 1, 40, 1, 16);
        tu_tensor dv = tu_attn(CPA_LAYOUT_BSHD, 1, 40, 1, 16);
        tu_fill(out.t, 99, 5.0f); /* garbage that must be overwritten */
        CHECK_OK(cpa_attn_forward(NULL, &p.d, out.t, lse.t));
        CHECK_OK(cpa_attn_backward(NULL, &p.d, out.t, lse.t, p.dout.t, dq.t, dk.t, dv.t));
        int ok_masked = 1, ok_finite = 1;
        for (int64_t h = 0; h < 2; ++h)
            for (int64_t r = 0; r < 40; ++r) {
                float l = lse.buf[h * 40 + r];
                for (int64_t c = 0; c < 16; ++c) {
                    float o = out.buf[(r * 2 + h) * 16 + c], g = dq.buf[(r * 2 + h) * 16 + c];
                    if (r < 5 && (o != 0.0f || g != 0.0f))
                        ok_masked = 0;
                    if (!isfinite(o) || !isfinite(g))
                        ok_finite = 0;
                }
                if ((r < 5) != (l == -INFINITY))
                    ok_masked = 0;
            }
        for (int64_t i = 0; i < 40 * 16; ++i)
            if (!isfinite(dk.buf[i]) || !isfinite(dv.buf[i]))
                ok_finite = 0;
        CHECK_MSG(ok_masked, "impl %d: masked rows must give out 0, lse -inf, dq 0", impl);
        CHECK_MSG(ok_finite, "impl %d: NaN or Inf in outputs", impl);
        free(out.buf), free(lse.buf), free(dq.buf), free(dk.buf), free(dv.buf);
    }
    /* Every key in the future: the whole block is masked. */
    kp.pos = 1000;
    tu_tensor out = tu_attn(CPA_LAYOUT_BSHD, 1, 40, 2, 16), lse = tu_lse(1, 2, 40);
    CHECK_OK(cpa_attn_forward(NULL, &p.d, out.t, lse.t));
    int all = 1;
    for (int i = 0; i < 80; ++i)
        all &= lse.buf[i] == -INFINITY;
    for (int i = 0; i < 40 * 2 * 16; ++i)
        all &= out.buf[i] == 0.0f;
    CHECK_MSG(all, "a fully masked block gives out 0 and lse -inf everywhere");
    free(out.buf), free(lse.buf);
    problem_free(&p);
}

/* ---- finite differences ------------------------------------------------- */

static double loss_of(problem *p, tu_tensor *out, tu_tensor *lse)
{
    p->d.impl = CPA_IMPL_REFERENCE;
    if (cpa_attn_forward(NULL, &p->d, out->t, lse->t) != CPA_OK)
        return NAN;
    double L = 0.0;
    for (int64_t i = 0; i < cpa_tensor_numel(&out->t); ++i)
        L += (double)out->buf[i] * (double)p->dout.buf[i];
    return L;
}

/* d(sum dout∘out)/dx by central differences against the fast backward.
 * Step 1e-2: truncation ~h²·|f'''| ≈ 1e-4, rounding of the float outputs
 * ≈ 1e-7·|L|/h ≈ 1e-5; tolerance 2e-3 of the largest gradient. */
static void test_finite_differences(void)
{
    for (int mask = 0; mask < 2; ++mask) {
        problem p;
        problem_init(&p, 1, 6, 2, 1, 4, 3, mask ? CPA_MASK_CAUSAL : CPA_MASK_NONE);
        cpa_piece qp[2] = {{0, 3, 0}, {3, 3, 9}}, kp[2] = {{0, 3, 0}, {3, 3, 9}};
        p.d.q_rows = (cpa_rows){qp, 2};
        p.d.kv_rows = (cpa_rows){kp, 2};
        tu_tensor out = tu_attn(CPA_LAYOUT_BSHD, 1, 6, 2, 3), lse = tu_lse(1, 2, 6);
        tu_tensor dq = tu_attn(CPA_LAYOUT_BSHD, 1, 6, 2, 4);
        tu_tensor dk = tu_attn(CPA_LAYOUT_BSHD, 1, 6, 1, 4);
        tu_tensor dv = tu_attn(CPA_LAYOUT_BSHD, 1, 6, 1, 3);
        p.d.impl = CPA_IMPL_FAST;
        CHECK_OK(cpa_attn_forward(NULL, &p.d, out.t, lse.t));
        CHECK_OK(cpa_attn_backward(NULL, &p.d, out.t, lse.t, p.dout.t, dq.t, dk.t, dv.t));
        tu_tensor *xs[3] = {&p.q, &p.k, &p.v}, *gs[3] = {&dq, &dk, &dv};
        const char *names[3] = {"dq", "dk", "dv"};
        const double h = 1e-2;
        for (int w = 0; w < 3; ++w) {
            int64_t n = cpa_tensor_numel(&xs[w]->t);
            double gmax = 0.0, emax = 0.0;
            for (int64_t i = 0; i < n; ++i) {
                float x0 = xs[w]->buf[i];
                xs[w]->buf[i] = x0 + (float)h;
                double lp = loss_of(&p, &out, &lse);
                xs[w]->buf[i] = x0 - (float)h;
                double lm = loss_of(&p, &out, &lse);
                xs[w]->buf[i] = x0;
                double fd = (lp - lm) / (2 * h), g = gs[w]->buf[i];
                if (fabs(g) > gmax)
                    gmax = fabs(g);
                if (fabs(fd - g) > emax)
                    emax = fabs(fd - g);
            }
            CHECK_MSG(emax <= 2e-3 * gmax && gmax > 0, "mask %d %s: finite-difference err %.3g "
                      "vs max grad %.3g", mask, names[w], emax, gmax);
            if (verbose)
                fprintf(stderr, "  fd mask %d %s: err %.2g of %.2g\n", mask, names[w], emax, gmax);
        }
        free(out.buf), free(lse.buf), free(dq.buf), free(dk.buf), free(dv.buf);
        problem_free(&p);
    }
}

/* ---- determinism -------------------------------------------------------- */

/* Bitwise identical results for 1, 2, 3 and 4 threads (and 1 again), on
 * every instruction-set path this CPU runs (a path it lacks is skipped
 * with a printed line). */
static void thread_determinism_on(cpa_isa isa)
{
    problem p;
    problem_init(&p, 2, 517, 8, 2, 64, 64, CPA_MASK_CAUSAL);
    cpa_piece qp[2] = {{0, 260, 0}, {260, 257, 1500}};
    p.d.q_rows = (cpa_rows){qp, 2};
    p.d.kv_rows = (cpa_rows){qp, 2};
    tu_tensor ref[5], got[5];
    const int threads[] = {1, 2, 3, 4, 1};
    for (int ti = 0; ti < 5; ++ti) {
        tu_tensor *r = ti == 0 ? ref : got;
        r[0] = tu_attn(CPA_LAYOUT_BSHD, 2, 517, 8, 64);
        r[1] = tu_lse(2, 8, 517);
        r[2] = tu_attn(CPA_LAYOUT_BSHD, 2, 517, 8, 64);
        r[3] = tu_attn(CPA_LAYOUT_BSHD, 2, 517, 2, 64);
        r[4] = tu_attn(CPA_LAYOUT_BSHD, 2, 517, 2, 64);
        cpa_attn_ctx *ctx = NULL;
        cpa_attn_ctx_config cfg = {64, threads[ti], isa};
        CHECK_OK(cpa_attn_ctx_create(&cfg, &ctx));
        CHECK(cpa_attn_ctx_threads(ctx) == threads[ti]);
        CHECK_OK(cpa_attn_forward(ctx, &p.d, r[0].t, r[1].t));
        CHECK_OK(cpa_attn_backward(ctx, &p.d, r[0].t, r[1].t, p.dout.t, r[2].t, r[3].t, r[4].t));
        cpa_attn_ctx_destroy(ctx);
        if (ti > 0) {
            for (int i = 0; i < 5; ++i) {
                CHECK_MSG(tu_bitwise_equal(got[i].t, ref[i].t),
                          "%s: output %d differs bitwise between 1 and %d threads",
                          cpa_isa_name(isa), i, threads[ti]);
                free(got[i].buf);
            }
        }
    }
    for (int i = 0; i < 5; ++i)
        free(ref[i].buf);
    problem_free(&p);
}

static void test_thread_determinism(void)
{
    for (int i = CPA_ISA_SCALAR; i <= CPA_ISA_AVX512; ++i) {
        if (!cpa_isa_supported((cpa_isa)i)) {
            printf("skip thread determinism on %s: this CPU lacks it\n", cpa_isa_name((cpa_isa)i));
            continue;
        }
        thread_determinism_on((cpa_isa)i);
    }
}

/* ---- progress callback -------------------------------------------------- */

typedef struct progress_log {
    int calls, off_thread; /* calls, and calls from a thread other than 0 */
} progress_log;

static void count_progress(void *arg)
{
    progress_log *log = arg;
#pragma omp atomic
    ++log->calls;
    if (omp_get_thread_num() != 0) {
#pragma omp atomic
        ++log->off_thread;
    }
}

/* The callback runs on thread 0 only, and at least once per key tile of
 * the forward and once per (key task, query unit) of the backward that
 * thread 0 ran — so a ring's MPI_Test is called every few hundred
 * microseconds of work whatever the shape. */
static void test_progress_callback(void)
{
    const int64_t S = 300, H = 4, G = 2;
    problem p;
    problem_init(&p, 1, S, H, G, 32, 32, CPA_MASK_NONE);
    progress_log log = {0, 0};
    p.d.progress = count_progress;
    p.d.progress_arg = &log;
    tu_tensor out = tu_attn(CPA_LAYOUT_BSHD, 1, S, H, 32), lse = tu_lse(1, H, S);
    tu_tensor dq = tu_attn(CPA_LAYOUT_BSHD, 1, S, H, 32);
    tu_tensor dk = tu_attn(CPA_LAYOUT_BSHD, 1, S, G, 32);
    tu_tensor dv = tu_attn(CPA_LAYOUT_BSHD, 1, S, G, 32);
    for (int threads = 1; threads <= 2; ++threads) {
        cpa_attn_ctx *ctx = NULL;
        cpa_attn_ctx_config cfg = {32, threads, CPA_ISA_AUTO};
        CHECK_OK(cpa_attn_ctx_create(&cfg, &ctx));
        const cpa_isa_kernels *kern = cpa_isa_kernels_of(cpa_attn_ctx_isa(ctx));
        log.calls = log.off_thread = 0;
        CHECK_OK(cpa_attn_forward(ctx, &p.d, out.t, lse.t));
        const int64_t key_tiles = (S + CPA_FWD_KEYS - 1) / CPA_FWD_KEYS;
        CHECK_MSG(log.off_thread == 0, "forward: %d progress calls off thread 0", log.off_thread);
        if (threads == 1)
            CHECK_MSG(log.calls >= G * key_tiles, "forward made %d progress calls, want >= %lld",
                      log.calls, (long long)(G * key_tiles));
        log.calls = log.off_thread = 0;
        CHECK_OK(cpa_attn_backward(ctx, &p.d, out.t, lse.t, p.dout.t, dq.t, dk.t, dv.t));
        const int64_t units = G * ((S + kern->bwd_keys - 1) / kern->bwd_keys) * (H / G) *
                              ((S + CPA_BWD_ROWS - 1) / CPA_BWD_ROWS);
        CHECK_MSG(log.off_thread == 0, "backward: %d progress calls off thread 0", log.off_thread);
        if (threads == 1)
            CHECK_MSG(log.calls >= units, "backward made %d progress calls, want >= %lld",
                      log.calls, (long long)units);
        cpa_attn_ctx_destroy(ctx);
    }
    free(out.buf), free(lse.buf), free(dq.buf), free(dk.buf), free(dv.buf);
    problem_free(&p);
}

/* ---- non-finite inputs ----------------------------------------------------- */

/* NaN (or ±inf) at the same places in both tensors, and the finite entries
 * within `tol` of each other relative to the largest finite |want|;
 * *nan_count gets the number of non-finite entries of `want`. */
static int same_nonfinite_pattern(cpa_tensor got, cpa_tensor want, double tol, int64_t *nan_count)
{
    double maxref = 0, maxerr = 0;
    int64_t nan = 0;
    int ok = 1;
    TU_FOR_EACH(want, idx, flat)
    {
        (void)flat;
        const float a = *tu_at(&got, idx), b = *tu_at(&want, idx);
        if (isnan(a) || isnan(b) || isinf(a) || isinf(b)) {
            ok &= (isnan(a) && isnan(b)) || a == b;
            ++nan;
            continue;
        }
        maxref = fabs((double)b) > maxref ? fabs((double)b) : maxref;
        maxerr = fabs((double)a - (double)b) > maxerr ? fabs((double)a - (double)b) : maxerr;
    }
    *nan_count = nan;
    return ok && maxerr <= tol * (maxref > 1 ? maxref : 1);
}

/* One NaN or infinity planted in q, k or v: every fast path puts NaN where
 * the plain reference does (NaN in, NaN out for the rows and keys it
 * touches; never a silent 0, never a leak into what cannot see it). */
static void test_nonfinite_inputs(void)
{
    const int64_t B = 1, S = 200, H = 4, G = 2, D = 40;
    struct {
        int tensor;        /* 0 q, 1 k, 2 v */
        int64_t row, head, col;
        float value;
        int whole_row;     /* the value fills the row (all its D entries) */
        cpa_mask_kind mask;
    } cases[] = {
        {0, 77, 1, 5, NAN, 0, CPA_MASK_CAUSAL},       {0, 150, 2, 0, NAN, 0, CPA_MASK_NONE},
        {0, 30, 0, 3, INFINITY, 0, CPA_MASK_CAUSAL},  {0, 100, 3, 7, -INFINITY, 1, CPA_MASK_CAUSAL},
        {1, 90, 0, 2, NAN, 0, CPA_MASK_CAUSAL},       {2, 120, 1, 9, NAN, 0, CPA_MASK_CAUSAL},
        {2, 10, 0, 0, INFINITY, 0, CPA_MASK_NONE},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ++ci) {
        problem p;
        problem_init(&p, B, S, H, G, D, D, cases[ci].mask);
        if (cases[ci].whole_row) /* -inf in every entry, keys > 0: all visible scores -inf */
            for (int64_t i = 0; i < cpa_tensor_numel(&p.k.t); ++i)
                p.k.buf[i] = 0.1f + fabsf(p.k.buf[i]);
        tu_tensor *x = cases[ci].tensor == 0 ? &p.q : cases[ci].tensor == 1 ? &p.k : &p.v;
        for (int64_t c = 0; c < D; ++c)
            if (cases[ci].whole_row || c == cases[ci].col)
                cpa_at4(&x->t, 0, cases[ci].row, cases[ci].head % x->t.shape[2])[c] =
                    cases[ci].value;
        tu_tensor r[5], f[5];
        for (int impl = 0; impl <= nisas; ++impl) {
            tu_tensor *t = impl == 0 ? r : f;
            t[0] = tu_attn(CPA_LAYOUT_BSHD, B, S, H, D), t[1] = tu_lse(B, H, S);
            t[2] = tu_attn(CPA_LAYOUT_BSHD, B, S, H, D), t[3] = tu_attn(CPA_LAYOUT_BSHD, B, S, G, D);
            t[4] = tu_attn(CPA_LAYOUT_BSHD, B, S, G, D);
            cpa_attn_ctx *ctx = NULL;
            cpa_attn_ctx_config cfg = {D, 2, impl == 0 ? CPA_ISA_AUTO : isas[impl - 1]};
            CHECK_OK(cpa_attn_ctx_create(&cfg, &ctx));
            p.d.impl = impl == 0 ? CPA_IMPL_REFERENCE : CPA_IMPL_FAST;
            CHECK_OK(cpa_attn_forward(ctx, &p.d, t[0].t, t[1].t));
            CHECK_OK(cpa_attn_backward(ctx, &p.d, t[0].t, t[1].t, p.dout.t, t[2].t, t[3].t, t[4].t));
            cpa_attn_ctx_destroy(ctx);
            if (impl == 0) {
                /* The reference itself: a NaN or ±inf query row is NaN in
                 * out, lse and dq, and no other query row is touched. */
                if (cases[ci].tensor == 0) {
                    const int64_t row = cases[ci].row, h = cases[ci].head;
                    int own = isnan(*cpa_at3(&r[1].t, 0, h, row)), others = 1;
                    for (int64_t i = 0; i < S; ++i)
                        for (int64_t hh = 0; hh < H; ++hh)
                            if ((i != row || hh != h) && !isfinite(*cpa_at3(&r[1].t, 0, hh, i)))
                                others = 0;
                    CHECK_MSG(own && others, "case %zu: reference lse NaN only in the row", ci);
                    /* Keys the row cannot see get no NaN in dk. */
                    if (cases[ci].mask == CPA_MASK_CAUSAL) {
                        int clean = 1;
                        for (int64_t j = row + 1; j < S; ++j)
                            for (int64_t c = 0; c < D; ++c)
                                clean &= isfinite(cpa_at4(&r[3].t, 0, j, h / (H / G))[c]);
                        CHECK_MSG(clean, "case %zu: dk of keys the row cannot see is finite", ci);
                    }
                }
                continue;
            }
            static const char *names[5] = {"out", "lse", "dq", "dk", "dv"};
            for (int i = 0; i < 5; ++i) {
                int64_t nan = 0;
                CHECK_MSG(same_nonfinite_pattern(f[i].t, r[i].t, i < 2 ? 1e-4 : 1e-3, &nan),
                          "case %zu [%s]: %s differs from the reference in its NaN/Inf pattern "
                          "or values", ci, cpa_isa_name(isas[impl - 1]), names[i]);
                if (i == 0)
                    CHECK_MSG(nan > 0, "case %zu: the planted value reached no output", ci);
                free(f[i].buf);
            }
        }
        for (int i = 0; i < 5; ++i)
            free(r[i].buf);
        problem_free(&p);
    }
}

/* ---- instruction-set selection ----------------------------------------- */

static void test_isa_selection(void)
{
    cpa_isa isa;
    CHECK_OK(cpa_isa_parse("avx2", &isa));
    CHECK(isa == CPA_ISA_AVX2);
    CHECK_STATUS(cpa_isa_parse("sse9", &isa), CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "avx512") != NULL); /* names the choices */
    CHECK(cpa_isa_supported(CPA_ISA_SCALAR));
    CHECK(cpa_isa_supported(cpa_isa_best()));

    const char *saved = getenv("CPATTN_ISA");
    char keep[32] = "";
    if (saved)
        snprintf(keep, sizeof keep, "%s", saved);
    cpa_attn_ctx *ctx = NULL;
    cpa_attn_ctx_config cfg = {16, 1, CPA_ISA_AUTO};
    setenv("CPATTN_ISA", "fastest", 1);
    CHECK_STATUS(cpa_attn_ctx_create(&cfg, &ctx), CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "CPATTN_ISA=fastest") != NULL);
    setenv("CPATTN_ISA", "scalar", 1);
    CHECK_OK(cpa_attn_ctx_create(&cfg, &ctx));
    CHECK(cpa_attn_ctx_isa(ctx) == CPA_ISA_SCALAR);
    cpa_attn_ctx_destroy(ctx);
    /* An explicit choice wins over the variable. */
    cfg.isa = cpa_isa_best();
    CHECK_OK(cpa_attn_ctx_create(&cfg, &ctx));
    CHECK(cpa_attn_ctx_isa(ctx) == cpa_isa_best());
    cpa_attn_ctx_destroy(ctx);
    /* A path the CPU lacks is refused, naming what it has. */
    for (int i = CPA_ISA_SCALAR; i <= CPA_ISA_AVX512; ++i)
        if (!cpa_isa_supported((cpa_isa)i)) {
            cfg.isa = (cpa_isa)i;
            CHECK_STATUS(cpa_attn_ctx_create(&cfg, &ctx), CPA_ERR_ARG);
            CHECK(strstr(cpa_last_error(), "does not support") != NULL);
        }
    if (saved)
        setenv("CPATTN_ISA", keep, 1);
    else
        unsetenv("CPATTN_ISA");
}

/* MQA at B=1 (every query head on one KV head): the backward's key tasks
 * wait on each other to add dQ in order; the result must not depend on the
 * thread count, and must match the reference. */
static void test_mqa_chain(void)
{
    kcase c;
    memset(&c, 0, sizeof c);
    c.B = 1, c.Sq = c.Sk = 700, c.H = 8, c.G = 1, c.Dqk = c.Dv = 64;
    c.mask = CPA_MASK_CAUSAL;
    check_case(&c);
    problem p;
    problem_init(&p, 1, 700, 8, 1, 64, 64, CPA_MASK_NONE);
    tu_tensor ref[3];
    for (int threads = 1; threads <= 4; ++threads) {
        tu_tensor out = tu_attn(CPA_LAYOUT_BSHD, 1, 700, 8, 64), lse = tu_lse(1, 8, 700);
        tu_tensor g[3] = {tu_attn(CPA_LAYOUT_BSHD, 1, 700, 8, 64), tu_attn(CPA_LAYOUT_BSHD, 1, 700, 1, 64),
                          tu_attn(CPA_LAYOUT_BSHD, 1, 700, 1, 64)};
        cpa_attn_ctx *ctx = NULL;
        cpa_attn_ctx_config cfg = {64, threads, CPA_ISA_AUTO};
        CHECK_OK(cpa_attn_ctx_create(&cfg, &ctx));
        CHECK_OK(cpa_attn_forward(ctx, &p.d, out.t, lse.t));
        CHECK_OK(cpa_attn_backward(ctx, &p.d, out.t, lse.t, p.dout.t, g[0].t, g[1].t, g[2].t));
        cpa_attn_ctx_destroy(ctx);
        for (int i = 0; i < 3; ++i) {
            if (threads == 1) {
                ref[i] = g[i];
                continue;
            }
            CHECK_MSG(tu_bitwise_equal(g[i].t, ref[i].t),
                      "MQA gradient %d differs bitwise between 1 and %d threads", i, threads);
            free(g[i].buf);
        }
        free(out.buf), free(lse.buf);
    }
    for (int i = 0; i < 3; ++i)
        free(ref[i].buf);
    problem_free(&p);
}

/* ---- argument errors ---------------------------------------------------- */

static void test_invalid_args(void)
{
    problem p;
    problem_init(&p, 1, 16, 4, 2, 8, 8, CPA_MASK_CAUSAL);
    tu_tensor out = tu_attn(CPA_LAYOUT_BSHD, 1, 16, 4, 8), lse = tu_lse(1, 4, 16);
    cpa_attn_desc d;

    CHECK_STATUS(cpa_attn_forward(NULL, NULL, out.t, lse.t), CPA_ERR_ARG);

    d = p.d;
    d.q.data = NULL;
    CHECK_STATUS(cpa_attn_forward(NULL, &d, out.t, lse.t), CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "q") != NULL);

    d = p.d;
    d.k.stride[3] = 2; /* head dim not contiguous */
    CHECK_STATUS(cpa_attn_forward(NULL, &d, out.t, lse.t), CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "stride") != NULL);

    d = p.d;
    d.q.stride[1] = 4; /* rows overlap */
    CHECK_STATUS(cpa_attn_forward(NULL, &d, out.t, lse.t), CPA_ERR_ARG);

    d = p.d;
    d.k.shape[2] = 3, d.v.shape[2] = 3; /* H=4 not a multiple of G=3 */
    CHECK_STATUS(cpa_attn_forward(NULL, &d, out.t, lse.t), CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "H % G") != NULL);

    d = p.d;
    d.v.shape[1] = 15; /* v rows differ from k rows */
    CHECK_STATUS(cpa_attn_forward(NULL, &d, out.t, lse.t), CPA_ERR_ARG);

    d = p.d;
    d.k.shape[3] = 4; /* Q·K dims differ */
    CHECK_STATUS(cpa_attn_forward(NULL, &d, out.t, lse.t), CPA_ERR_ARG);

    cpa_piece bad = {10, 10, 0}; /* past the end */
    d = p.d;
    d.q_rows = (cpa_rows){&bad, 1};
    CHECK_STATUS(cpa_attn_forward(NULL, &d, out.t, lse.t), CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "q_rows") != NULL);

    cpa_piece overlap[2] = {{0, 8, 0}, {4, 8, 100}};
    d = p.d;
    d.q_rows = (cpa_rows){overlap, 2};
    CHECK_STATUS(cpa_attn_forward(NULL, &d, out.t, lse.t), CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "overlap") != NULL);

    d = p.d;
    d.kv_rows = (cpa_rows){overlap, CPA_MAX_PIECES + 1};
    CHECK_STATUS(cpa_attn_forward(NULL, &d, out.t, lse.t), CPA_ERR_ARG);

    d = p.d;
    d.softmax_scale = NAN;
    CHECK_STATUS(cpa_attn_forward(NULL, &d, out.t, lse.t), CPA_ERR_ARG);

    d = p.d;
    d.mask.kind = (cpa_mask_kind)7;
    CHECK_STATUS(cpa_attn_forward(NULL, &d, out.t, lse.t), CPA_ERR_ARG);

    cpa_tensor small = out.t;
    small.shape[3] = 4; /* out has the wrong Dv */
    CHECK_STATUS(cpa_attn_forward(NULL, &p.d, small, lse.t), CPA_ERR_ARG);
    cpa_tensor lse2 = lse.t;
    lse2.shape[2] = 3;
    CHECK_STATUS(cpa_attn_forward(NULL, &p.d, out.t, lse2), CPA_ERR_ARG);

    /* Backward: gradient shapes must match their inputs. */
    tu_tensor dq = tu_attn(CPA_LAYOUT_BSHD, 1, 16, 4, 8), dk = tu_attn(CPA_LAYOUT_BSHD, 1, 16, 2, 8);
    CHECK_STATUS(cpa_attn_backward(NULL, &p.d, out.t, lse.t, p.dout.t, dq.t, dq.t, dk.t),
                 CPA_ERR_ARG);

    /* Contexts. */
    cpa_attn_ctx *ctx = NULL;
    cpa_attn_ctx_config cfg = {0, 1, CPA_ISA_AUTO};
    CHECK_STATUS(cpa_attn_ctx_create(&cfg, &ctx), CPA_ERR_ARG);
    cfg.max_head_dim = 4; /* smaller than D = 8 */
    CHECK_OK(cpa_attn_ctx_create(&cfg, &ctx));
    CHECK_STATUS(cpa_attn_forward(ctx, &p.d, out.t, lse.t), CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "max_head_dim") != NULL);
    cpa_attn_ctx_destroy(ctx);
    cfg.num_threads = -1;
    CHECK_STATUS(cpa_attn_ctx_create(&cfg, &ctx), CPA_ERR_ARG);
    CHECK_STATUS(cpa_attn_ctx_create(NULL, &ctx), CPA_ERR_ARG);

    free(out.buf), free(lse.buf), free(dq.buf), free(dk.buf);
    problem_free(&p);
}

int main(void)
{
    verbose = getenv("TEST_VERBOSE") != NULL;
    for (int i = CPA_ISA_SCALAR; i <= CPA_ISA_AVX512; ++i) {
        if (cpa_isa_supported((cpa_isa)i))
            isas[nisas++] = (cpa_isa)i;
        else
            fprintf(stderr, "skip: this CPU cannot run the %s kernels; they are not tested here\n",
                    cpa_isa_name((cpa_isa)i));
    }
    RUN_TEST(test_isa_selection);
    RUN_TEST(test_grid);
    RUN_TEST(test_pieces);
    RUN_TEST(test_documents_and_windows);
    RUN_TEST(test_mqa_chain);
    RUN_TEST(test_nonfinite_inputs);
    /* The single-path tests, once per path through $CPATTN_ISA (what a
     * user would set); NULL contexts resolve it too. */
    for (int i = 0; i < nisas; ++i) {
        cur_isa = isas[i];
        setenv("CPATTN_ISA", cpa_isa_name(cur_isa), 1);
        fprintf(stderr, "== %s\n", cpa_isa_name(cur_isa));
        RUN_TEST(test_split_merge);
        RUN_TEST(test_fully_masked);
        RUN_TEST(test_finite_differences);
        RUN_TEST(test_thread_determinism);
        RUN_TEST(test_progress_callback);
    }
    unsetenv("CPATTN_ISA");
    RUN_TEST(test_merge_edges);
    RUN_TEST(test_invalid_args);
    fprintf(stderr, "worst errors: out %.3g lse %.3g dq %.3g dk %.3g dv %.3g\n", worst[0], worst[1],
            worst[2], worst[3], worst[4]);
    return TEST_SUMMARY();
}
