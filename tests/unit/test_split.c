/*
 * test_split.c — the sequence splits (cpa_split_check, cpa_split_pieces,
 * cpa_split_positions, cpa_shard, cpa_unshard), without MPI.
 *
 * For every P in 1..16 and every Ulysses degree U dividing P, over several
 * valid S (and ragged invalid ones), the split must be a partition: the
 * global positions of all ranks are 0..S-1 exactly once, each rank holds
 * S/P rows described by at most CPA_SPLIT_MAX_PIECES pieces that are sorted,
 * contiguous in rows and cover [0, S/P).  The positions are compared with an
 * independent model of ALGORITHMS.md §1/§5 (contiguous; zigzag over 2R
 * chunks; the ring rank's two chunks cut into U parts), with the document's
 * worked examples spelled out, and with the property the hybrid's Ulysses
 * all-to-all relies on: the positions of ranks ρU+0 .. ρU+U-1, concatenated,
 * are exactly ring rank ρ's zigzag piece.  The zigzag split must balance
 * causal work exactly (the contiguous one does not); shard/unshard must move
 * each row to the row cpa_split_positions names, bit for bit, for every pair
 * of layouts and for padded strides; and every misuse must fail with
 * CPA_ERR_ARG, a message naming the rule, and untouched outputs.
 */
#include "cpattn.h"
#include "kernel_test_util.h"
#include "test.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_P 16

static cpa_split mk(cpa_split_kind kind, int P, int U)
{
    cpa_split s = {.kind = kind, .P = P, .U = U};
    return s;
}

static int has(const char *needle) { return strstr(cpa_last_error(), needle) != NULL; }

/* The independent model: global position of local row i of rank r. */
static int64_t model_position(cpa_split sp, int64_t S, int r, int64_t i)
{
    const int64_t local = S / sp.P;
    if (sp.kind == CPA_SPLIT_CONTIGUOUS)
        return (int64_t)r * local + i;
    const int64_t R = sp.P / sp.U, rho = r / sp.U, u = r % sp.U, c = S / (2 * R);
    const int64_t off = u * local + i; /* offset inside ring rank rho's 2c tokens */
    return off < c ? rho * c + off : (2 * R - 1 - rho) * c + (off - c);
}

/* Everything a valid (split, S) must satisfy, checked for every rank.
 * Returns 1 if all held (each property is also a CHECK of its own). */
static int check_partition(cpa_split sp, int64_t S)
{
    const int64_t local = S / sp.P;
    int64_t *positions = malloc((size_t)(local + 1) * sizeof *positions);
    unsigned char *seen = calloc((size_t)S, 1);
    int ok_pieces = 1, ok_pos = 1, ok_model = 1, ok_union = 1;

    CHECK_OK(cpa_split_check(sp, S));
    for (int r = 0; r < sp.P; ++r) {
        cpa_piece p[CPA_SPLIT_MAX_PIECES + 1];
        const cpa_piece sentinel = {-7, -7, -7};
        p[CPA_SPLIT_MAX_PIECES] = sentinel;
        int n = -1;
        if (cpa_split_pieces(sp, S, r, p, &n) != CPA_OK) {
            CHECK_MSG(0, "pieces kind %d P %d U %d S %lld r %d: %s", sp.kind, sp.P, sp.U,
                      (long long)S, r, cpa_last_error());
            ok_pieces = 0;
            continue;
        }
        /* 1..MAX pieces, nothing written past the room promised. */
        int good = n >= 1 && n <= CPA_SPLIT_MAX_PIECES &&
                   p[CPA_SPLIT_MAX_PIECES].row == -7 && p[CPA_SPLIT_MAX_PIECES].pos == -7;
        if (sp.kind == CPA_SPLIT_CONTIGUOUS)
            good = good && n == 1;
        /* Sorted by row, each starting where the previous ended, covering [0, S/P). */
        int64_t next_row = 0;
        for (int i = 0; good && i < n; ++i) {
            good = p[i].row == next_row && p[i].len > 0 && p[i].pos >= 0 &&
                   p[i].pos + p[i].len <= S;
            next_row += p[i].len;
        }
        good = good && next_row == local;
        if (!good) {
            CHECK_MSG(0, "bad pieces kind %d P %d U %d S %lld r %d (n %d)", sp.kind, sp.P,
                      sp.U, (long long)S, r, n);
            ok_pieces = 0;
            continue;
        }

        positions[local] = -99;
        if (cpa_split_positions(sp, S, r, positions) != CPA_OK || positions[local] != -99) {
            CHECK_MSG(0, "positions kind %d P %d U %d S %lld r %d: %s", sp.kind, sp.P, sp.U,
                      (long long)S, r, cpa_last_error());
            ok_pos = 0;
            continue;
        }
        /* The positions agree with the pieces and with the model. */
        for (int i = 0; i < n; ++i)
            for (int64_t j = 0; j < p[i].len; ++j)
                if (positions[p[i].row + j] != p[i].pos + j)
                    ok_pos = 0;
        for (int64_t i = 0; i < local; ++i) {
            if (positions[i] != model_position(sp, S, r, i))
                ok_model = 0;
            if (positions[i] < 0 || positions[i] >= S || seen[positions[i]]++)
                ok_union = 0;
        }
    }
    for (int64_t s = 0; s < S; ++s)
        if (seen[s] != 1)
            ok_union = 0;
    CHECK_MSG(ok_pieces, "kind %d P %d U %d S %lld", sp.kind, sp.P, sp.U, (long long)S);
    CHECK_MSG(ok_pos, "kind %d P %d U %d S %lld", sp.kind, sp.P, sp.U, (long long)S);
    CHECK_MSG(ok_model, "kind %d P %d U %d S %lld", sp.kind, sp.P, sp.U, (long long)S);
    CHECK_MSG(ok_union, "kind %d P %d U %d S %lld: union is not 0..S-1 once each", sp.kind,
              sp.P, sp.U, (long long)S);
    free(positions);
    free(seen);
    return ok_pieces && ok_pos && ok_model && ok_union;
}

/* Every API call must refuse an S the split cannot take. */
static void check_rejects_S(cpa_split sp, int64_t S)
{
    cpa_piece p[CPA_SPLIT_MAX_PIECES];
    int64_t positions[1];
    int n = -5;
    CHECK_STATUS(cpa_split_check(sp, S), CPA_ERR_ARG);
    CHECK(has(sp.kind == CPA_SPLIT_ZIGZAG ? "S % (2P)" : "S % P"));
    CHECK_STATUS(cpa_split_pieces(sp, S, 0, p, &n), CPA_ERR_ARG);
    CHECK(n == -5);
    CHECK_STATUS(cpa_split_positions(sp, S, 0, positions), CPA_ERR_ARG);
}

/* All P in 1..16, all U | P, valid and ragged S. */
static void test_partition_all_configs(void)
{
    static const int64_t ks[] = {1, 2, 3, 7};
    int configs = 0, all_ok = 1;
    for (int P = 1; P <= MAX_P; ++P) {
        for (int U = 1; U <= P; ++U) {
            if (P % U != 0)
                continue;
            for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ++ki) {
                const int64_t S = 2 * (int64_t)P * ks[ki];
                all_ok &= check_partition(mk(CPA_SPLIT_ZIGZAG, P, U), S);
                ++configs;
                if (U == 1) {
                    all_ok &= check_partition(mk(CPA_SPLIT_CONTIGUOUS, P, 1), S);
                    /* Odd multiples of P: fine for contiguous only. */
                    all_ok &= check_partition(mk(CPA_SPLIT_CONTIGUOUS, P, 1), P * (2 * ks[ki] + 1));
                    check_rejects_S(mk(CPA_SPLIT_ZIGZAG, P, 1), P * (2 * ks[ki] + 1));
                    configs += 2;
                }
                /* Ragged S. */
                check_rejects_S(mk(CPA_SPLIT_ZIGZAG, P, U), S + 1);
                if (P > 1) {
                    check_rejects_S(mk(CPA_SPLIT_ZIGZAG, P, U), S - 1);
                    check_rejects_S(mk(CPA_SPLIT_CONTIGUOUS, P, 1), S + 1);
                }
            }
        }
    }
    CHECK(configs > 300);
    CHECK(all_ok);
}

/* U is ignored by the contiguous row layout (it must still divide P). */
static void test_contiguous_ignores_U(void)
{
    int ok = 1;
    for (int P = 2; P <= MAX_P; ++P)
        for (int U = 2; U <= P; ++U) {
            if (P % U != 0)
                continue;
            const int64_t S = 3 * (int64_t)P;
            for (int r = 0; r < P; ++r) {
                cpa_piece a[CPA_SPLIT_MAX_PIECES], b[CPA_SPLIT_MAX_PIECES];
                int na = 0, nb = 0;
                CHECK_OK(cpa_split_pieces(mk(CPA_SPLIT_CONTIGUOUS, P, 1), S, r, a, &na));
                CHECK_OK(cpa_split_pieces(mk(CPA_SPLIT_CONTIGUOUS, P, U), S, r, b, &nb));
                ok &= na == 1 && nb == 1 && a[0].row == b[0].row && a[0].len == b[0].len &&
                      a[0].pos == b[0].pos && b[0].pos == r * (S / P) && b[0].row == 0;
            }
            ok &= check_partition(mk(CPA_SPLIT_CONTIGUOUS, P, U), S);
        }
    CHECK(ok);
}

static int positions_equal(cpa_split sp, int64_t S, int r, const int64_t *want, int64_t n)
{
    int64_t got[64];
    if (S / sp.P != n || n > 64 || cpa_split_positions(sp, S, r, got) != CPA_OK)
        return 0;
    return memcmp(got, want, (size_t)n * sizeof *got) == 0;
}

/* The worked examples of ALGORITHMS.md, spelled out. */
static void test_documented_examples(void)
{
    /* §1: P = 4, S = 16, c = 2: rank r holds chunks r and 7-r. */
    const cpa_split z4 = mk(CPA_SPLIT_ZIGZAG, 4, 1);
    static const int64_t z4_pos[4][4] = {
        {0, 1, 14, 15}, {2, 3, 12, 13}, {4, 5, 10, 11}, {6, 7, 8, 9}};
    for (int r = 0; r < 4; ++r) {
        CHECK(positions_equal(z4, 16, r, z4_pos[r], 4));
        cpa_piece p[CPA_SPLIT_MAX_PIECES];
        int n = 0;
        CHECK_OK(cpa_split_pieces(z4, 16, r, p, &n));
        CHECK(n == 2);
        CHECK(p[0].row == 0 && p[0].len == 2 && p[0].pos == 2 * r);       /* chunk r */
        CHECK(p[1].row == 2 && p[1].len == 2 && p[1].pos == 2 * (7 - r)); /* chunk 7-r */
    }
    /* Chunks of c = S/(2P) for a larger S: rank 1 holds chunks {1, 6}. */
    {
        cpa_piece p[CPA_SPLIT_MAX_PIECES];
        int n = 0;
        CHECK_OK(cpa_split_pieces(z4, 8 * 5, 1, p, &n));
        CHECK(n == 2 && p[0].pos == 5 && p[0].len == 5 && p[1].pos == 30 && p[1].len == 5);
    }
    /* Contiguous P = 4, S = 8: rank 2 holds [4, 6). */
    {
        static const int64_t want[2] = {4, 5};
        CHECK(positions_equal(mk(CPA_SPLIT_CONTIGUOUS, 4, 1), 8, 2, want, 2));
    }
    /* §5 hybrid P = 6, U = 3, R = 2, S = 12, c = 3.  Ring rank 0 holds chunks
     * 0 and 3 = {0,1,2, 9,10,11}; ring rank 1 chunks 1 and 2 = {3..8}.  Cut
     * into 3 parts of 2: part 1 of ring rank 0 straddles the two chunks. */
    const cpa_split h63 = mk(CPA_SPLIT_ZIGZAG, 6, 3);
    static const int64_t h63_pos[6][2] = {{0, 1}, {2, 9}, {10, 11}, {3, 4}, {5, 6}, {7, 8}};
    for (int r = 0; r < 6; ++r)
        CHECK(positions_equal(h63, 12, r, h63_pos[r], 2));
    {
        cpa_piece p[CPA_SPLIT_MAX_PIECES];
        int n = 0;
        CHECK_OK(cpa_split_pieces(h63, 12, 1, p, &n));
        CHECK(n == 2);
        CHECK(p[0].row == 0 && p[0].len == 1 && p[0].pos == 2);
        CHECK(p[1].row == 1 && p[1].len == 1 && p[1].pos == 9);
        CHECK_OK(cpa_split_pieces(h63, 12, 2, p, &n));
        CHECK(n == 1 && p[0].row == 0 && p[0].len == 2 && p[0].pos == 10);
    }
    /* §5 hybrid P = 8, U = 2, R = 4, S = 16, c = 2: ring rank ρ = r/2 holds
     * chunks ρ and 7-ρ; Ulysses rank u = r%2 takes one of them each. */
    const cpa_split h82 = mk(CPA_SPLIT_ZIGZAG, 8, 2);
    static const int64_t h82_pos[8][2] = {{0, 1},  {14, 15}, {2, 3}, {12, 13},
                                          {4, 5}, {10, 11}, {6, 7}, {8, 9}};
    for (int r = 0; r < 8; ++r)
        CHECK(positions_equal(h82, 16, r, h82_pos[r], 2));
    /* P = U: one ring rank holding chunks 0 and 1, i.e. contiguous. */
    for (int r = 0; r < 4; ++r) {
        const int64_t want[4] = {4 * r, 4 * r + 1, 4 * r + 2, 4 * r + 3};
        CHECK(positions_equal(mk(CPA_SPLIT_ZIGZAG, 4, 4), 16, r, want, 4));
    }
}

/* What the hybrid's Ulysses all-to-all relies on: the U parts of Ulysses
 * group ρ, concatenated in Ulysses-rank order, are ring rank ρ's zigzag
 * piece (the zigzag split over R = P/U ranks with U = 1). */
static void test_hybrid_concatenation(void)
{
    int cases = 0, ok = 1;
    for (int P = 2; P <= MAX_P; ++P)
        for (int U = 2; U <= P; ++U) {
            if (P % U != 0)
                continue;
            const int R = P / U;
            for (int64_t k = 1; k <= 3; ++k) {
                const int64_t S = 2 * (int64_t)P * k, local = S / P;
                int64_t ring[2 * MAX_P * 3], cat[2 * MAX_P * 3];
                for (int rho = 0; rho < R; ++rho) {
                    CHECK_OK(cpa_split_positions(mk(CPA_SPLIT_ZIGZAG, R, 1), S, rho, ring));
                    for (int u = 0; u < U; ++u)
                        CHECK_OK(cpa_split_positions(mk(CPA_SPLIT_ZIGZAG, P, U), S, rho * U + u,
                                                     cat + u * local));
                    ok &= memcmp(ring, cat, (size_t)(S / R) * sizeof *ring) == 0;
                    ++cases;
                }
            }
        }
    CHECK(cases > 50);
    CHECK(ok);
}

/* Visible causal (query, key) pairs of rank r: sum over its positions q of
 * q + 1 (keys 0..q). */
static int64_t causal_pairs(cpa_split sp, int64_t S, int r)
{
    int64_t pos[2 * MAX_P * 64], sum = 0;
    if (cpa_split_positions(sp, S, r, pos) != CPA_OK)
        return -1;
    for (int64_t i = 0; i < S / sp.P; ++i)
        sum += pos[i] + 1;
    return sum;
}

static void test_causal_balance(void)
{
    /* Zigzag (U = 1): every rank does exactly the same causal work, so
     * max/mean == 1 exactly (integers: max == min == total/P). */
    int ok = 1;
    for (int P = 1; P <= MAX_P; ++P)
        for (int64_t k = 1; k <= 8; ++k) {
            const int64_t S = 2 * (int64_t)P * k, total = S * (S + 1) / 2;
            int64_t lo = INT64_MAX, hi = -1;
            for (int r = 0; r < P; ++r) {
                int64_t w = causal_pairs(mk(CPA_SPLIT_ZIGZAG, P, 1), S, r);
                lo = w < lo ? w : lo;
                hi = w > hi ? w : hi;
            }
            ok &= lo == hi && hi * P == total;
        }
    CHECK(ok);

    /* Hybrid: each Ulysses group (one ring rank) is balanced; that is the
     * unit the ring schedules. */
    ok = 1;
    for (int P = 2; P <= MAX_P; ++P)
        for (int U = 2; U <= P; ++U) {
            if (P % U != 0)
                continue;
            const int64_t S = 4 * (int64_t)P, total = S * (S + 1) / 2;
            for (int rho = 0; rho < P / U; ++rho) {
                int64_t w = 0;
                for (int u = 0; u < U; ++u)
                    w += causal_pairs(mk(CPA_SPLIT_ZIGZAG, P, U), S, rho * U + u);
                ok &= w * (P / U) == total;
            }
        }
    CHECK(ok);

    /* Contiguous is not balanced.  P = 8, S = 1024 (128 rows per rank): rank
     * 7 sees 122944 pairs, the mean is 524800/8 = 65600, so max/mean =
     * 1.8742 (-> (2P-1)/P = 1.875 as S grows); rank 0 sees 8256 (0.126x).
     * Zigzag for the same P and S: every rank 65600, max/mean = 1. */
    const int P = 8;
    const int64_t S = 1024, total = S * (S + 1) / 2;
    int64_t cmax = 0, zmax = 0, cmin = INT64_MAX;
    for (int r = 0; r < P; ++r) {
        int64_t c = causal_pairs(mk(CPA_SPLIT_CONTIGUOUS, P, 1), S, r);
        int64_t z = causal_pairs(mk(CPA_SPLIT_ZIGZAG, P, 1), S, r);
        cmax = c > cmax ? c : cmax;
        cmin = c < cmin ? c : cmin;
        zmax = z > zmax ? z : zmax;
    }
    const double mean = (double)total / P;
    CHECK(total == 524800 && cmax == 122944 && cmin == 8256);
    CHECK(cmax / mean > 1.87 && cmax / mean < 1.875);
    CHECK(zmax / mean == 1.0);
}

/* A value that names its logical index, exact in fp32 (< 2^24). */
static float encode(int64_t b, int64_t s, int64_t n, int64_t d)
{
    return (float)(b * 1000000 + s * 1000 + n * 10 + d);
}

static void fill_encoded(cpa_tensor t)
{
    for (int64_t b = 0; b < t.shape[0]; ++b)
        for (int64_t s = 0; s < t.shape[1]; ++s)
            for (int64_t n = 0; n < t.shape[2]; ++n)
                for (int64_t d = 0; d < t.shape[3]; ++d) {
                    const int64_t idx[4] = {b, s, n, d};
                    *tu_at(&t, idx) = encode(b, s, n, d);
                }
}

/* Local element (b, row, n, d) must be global (b, positions[row], n, d). */
static int local_matches(cpa_tensor local, const int64_t *positions)
{
    for (int64_t b = 0; b < local.shape[0]; ++b)
        for (int64_t s = 0; s < local.shape[1]; ++s)
            for (int64_t n = 0; n < local.shape[2]; ++n)
                for (int64_t d = 0; d < local.shape[3]; ++d) {
                    const int64_t idx[4] = {b, s, n, d};
                    if (*tu_at(&local, idx) != encode(b, positions[s], n, d))
                        return 0;
                }
    return 1;
}

static void fill_const(float *buf, size_t n, float v)
{
    for (size_t i = 0; i < n; ++i)
        buf[i] = v;
}

/* Shard every rank, then unshard every rank into a fresh global: bit-exact,
 * for every (global layout, local layout) pair. */
static void test_shard_roundtrip(void)
{
    static const struct { cpa_split_kind kind; int P, U; } splits[] = {
        {CPA_SPLIT_CONTIGUOUS, 1, 1}, {CPA_SPLIT_CONTIGUOUS, 4, 1}, {CPA_SPLIT_ZIGZAG, 1, 1},
        {CPA_SPLIT_ZIGZAG, 4, 1},     {CPA_SPLIT_ZIGZAG, 6, 3},     {CPA_SPLIT_ZIGZAG, 8, 2},
        {CPA_SPLIT_ZIGZAG, 5, 1}};
    const int64_t B = 2, N = 3, D = 4;
    int ok_local = 1, ok_round = 1, cases = 0;
    for (size_t si = 0; si < sizeof splits / sizeof splits[0]; ++si) {
        const cpa_split sp = mk(splits[si].kind, splits[si].P, splits[si].U);
        const int64_t S = 2 * (int64_t)sp.P * 3, local = S / sp.P;
        int64_t positions[64];
        for (int gl = 0; gl < 3; ++gl)
            for (int ll = 0; ll < 3; ++ll) {
                tu_tensor g = tu_attn((cpa_layout)gl, B, S, N, D);
                tu_tensor back = tu_attn((cpa_layout)gl, B, S, N, D);
                tu_tensor l = tu_attn((cpa_layout)ll, B, local, N, D);
                fill_encoded(g.t);
                fill_const(back.buf, (size_t)(B * S * N * D), -1.0f);
                for (int r = 0; r < sp.P; ++r) {
                    fill_const(l.buf, (size_t)(B * local * N * D), -1.0f);
                    CHECK_OK(cpa_split_positions(sp, S, r, positions));
                    CHECK_OK(cpa_shard(sp, r, g.t, l.t));
                    ok_local &= local_matches(l.t, positions);
                    CHECK_OK(cpa_unshard(sp, r, l.t, back.t));
                }
                ok_round &= tu_bitwise_equal(back.t, g.t);
                ++cases;
                free(g.buf);
                free(back.buf);
                free(l.buf);
            }
    }
    CHECK(cases == 63);
    CHECK(ok_local);
    CHECK(ok_round);
}

/* Arbitrary strides: a padded local view (gaps between heads, rows and
 * batches, D not unit stride) and a global view with S in reversed memory
 * order.  The padding must stay untouched. */
static void test_shard_strided(void)
{
    const cpa_split sp = mk(CPA_SPLIT_ZIGZAG, 6, 3);
    const int64_t B = 2, S = 24, N = 3, D = 4, local = S / sp.P;
    /* Local: element (b,s,n,d) at b*st0 + s*st1 + n*st2 + d*2 (D stride 2). */
    const int64_t st2 = 2 * D + 1, st1 = N * st2 + 3, st0 = local * st1 + 5;
    const size_t lsize = (size_t)(B * st0);
    float *lbuf = malloc(lsize * sizeof *lbuf);
    cpa_tensor l = {lbuf, 4, {B, local, N, D}, {st0, st1, st2, 2}};
    /* Global: BSHD but walking S backwards from the last row. */
    float *gbuf = malloc((size_t)(B * S * N * D) * sizeof *gbuf);
    float *back_buf = malloc((size_t)(B * S * N * D) * sizeof *back_buf);
    cpa_tensor g = {gbuf + (S - 1) * N * D, 4, {B, S, N, D}, {S * N * D, -N * D, D, 1}};
    cpa_tensor back = g;
    back.data = back_buf + (S - 1) * N * D;
    fill_encoded(g);
    fill_const(back_buf, (size_t)(B * S * N * D), -1.0f);

    int ok_local = 1, ok_pad = 1;
    int64_t positions[8];
    for (int r = 0; r < sp.P; ++r) {
        fill_const(lbuf, lsize, -3.0f);
        CHECK_OK(cpa_split_positions(sp, S, r, positions));
        CHECK_OK(cpa_shard(sp, r, g, l));
        ok_local &= local_matches(l, positions);
        /* Count elements that changed: exactly B*local*N*D. */
        size_t written = 0;
        for (size_t i = 0; i < lsize; ++i)
            written += lbuf[i] != -3.0f;
        ok_pad &= written == (size_t)(B * local * N * D);
        CHECK_OK(cpa_unshard(sp, r, l, back));
    }
    CHECK(ok_local);
    CHECK(ok_pad);
    CHECK(memcmp(gbuf, back_buf, (size_t)(B * S * N * D) * sizeof *gbuf) == 0);
    free(lbuf);
    free(gbuf);
    free(back_buf);
}

/* Unsharding a subset of ranks writes only their rows. */
static void test_unshard_touches_only_own_rows(void)
{
    const cpa_split sp = mk(CPA_SPLIT_ZIGZAG, 4, 2);
    const int64_t B = 1, S = 16, N = 2, D = 2, local = S / sp.P;
    tu_tensor g = tu_attn(CPA_LAYOUT_SBHD, B, S, N, D);
    tu_tensor back = tu_attn(CPA_LAYOUT_BNSD, B, S, N, D);
    tu_tensor l = tu_attn(CPA_LAYOUT_BSHD, B, local, N, D);
    fill_encoded(g.t);
    fill_const(back.buf, (size_t)(B * S * N * D), -1.0f);
    const int r = 2;
    int64_t positions[4];
    CHECK_OK(cpa_split_positions(sp, S, r, positions));
    CHECK_OK(cpa_shard(sp, r, g.t, l.t));
    CHECK_OK(cpa_unshard(sp, r, l.t, back.t));
    int ok = 1;
    for (int64_t s = 0; s < S; ++s) {
        int mine = 0;
        for (int64_t i = 0; i < local; ++i)
            mine |= positions[i] == s;
        for (int64_t n = 0; n < N; ++n)
            for (int64_t d = 0; d < D; ++d) {
                const int64_t idx[4] = {0, s, n, d};
                ok &= *tu_at(&back.t, idx) == (mine ? encode(0, s, n, d) : -1.0f);
            }
    }
    CHECK(ok);
    free(g.buf);
    free(back.buf);
    free(l.buf);
}

static void test_errors_check(void)
{
    /* S % P (contiguous), with the values in the message. */
    cpa_clear_error();
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, 4, 1), 10), CPA_ERR_ARG);
    CHECK(has("S % P") && has("10") && has("4"));
    /* S % (2P) (zigzag): divisible by P is not enough; a valid S is suggested. */
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 4, 1), 12), CPA_ERR_ARG);
    CHECK(has("S % (2P)") && has("12") && has("try 16"));
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 6, 3), 18), CPA_ERR_ARG);
    CHECK(has("S % (2P)") && has("try 24"));
    /* P < 1. */
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, 0, 1), 8), CPA_ERR_ARG);
    CHECK(has("at least 1"));
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, -2, 1), 8), CPA_ERR_ARG);
    CHECK(has("-2") && has("at least 1"));
    /* U < 1, U not dividing P (also for contiguous), U > P. */
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 4, 0), 16), CPA_ERR_ARG);
    CHECK(has("Ulysses degree 0"));
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 4, -1), 16), CPA_ERR_ARG);
    CHECK(has("Ulysses degree -1"));
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 4, 3), 24), CPA_ERR_ARG);
    CHECK(has("Ulysses degree 3") && has("divide"));
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 4, 8), 16), CPA_ERR_ARG);
    CHECK(has("divide"));
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, 6, 4), 12), CPA_ERR_ARG);
    CHECK(has("divide"));
    /* S < 1 and an unknown kind. */
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 2, 1), 0), CPA_ERR_ARG);
    CHECK(has("positive"));
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, 2, 1), -4), CPA_ERR_ARG);
    CHECK(has("positive"));
    CHECK_STATUS(cpa_split_check(mk((cpa_split_kind)7, 2, 1), 4), CPA_ERR_ARG);
    CHECK(has("unknown split kind 7"));
    /* Valid configurations pass. */
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, 4, 1), 12));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 6, 3), 12));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 1, 1), 2));
}

static void test_errors_pieces_positions(void)
{
    const cpa_split sp = mk(CPA_SPLIT_ZIGZAG, 4, 2);
    cpa_piece p[CPA_SPLIT_MAX_PIECES] = {{11, 12, 13}, {14, 15, 16}};
    int n = -5;
    int64_t pos[4] = {-9, -9, -9, -9};
    /* Rank out of range. */
    CHECK_STATUS(cpa_split_pieces(sp, 16, -1, p, &n), CPA_ERR_ARG);
    CHECK(has("rank -1") && has("outside"));
    CHECK_STATUS(cpa_split_pieces(sp, 16, 4, p, &n), CPA_ERR_ARG);
    CHECK(has("rank 4") && has("outside"));
    CHECK_STATUS(cpa_split_positions(sp, 16, 4, pos), CPA_ERR_ARG);
    CHECK(has("rank 4"));
    CHECK_STATUS(cpa_split_positions(mk(CPA_SPLIT_CONTIGUOUS, 4, 1), 16, -3, pos), CPA_ERR_ARG);
    CHECK(has("outside"));
    /* NULL outputs. */
    CHECK_STATUS(cpa_split_pieces(sp, 16, 0, NULL, &n), CPA_ERR_ARG);
    CHECK(has("NULL"));
    CHECK_STATUS(cpa_split_pieces(sp, 16, 0, p, NULL), CPA_ERR_ARG);
    CHECK(has("NULL"));
    CHECK_STATUS(cpa_split_positions(sp, 16, 0, NULL), CPA_ERR_ARG);
    CHECK(has("positions") && has("NULL"));
    /* A broken split propagates the check's message. */
    CHECK_STATUS(cpa_split_pieces(mk(CPA_SPLIT_ZIGZAG, 4, 1), 20, 0, p, &n), CPA_ERR_ARG);
    CHECK(has("S % (2P)"));
    CHECK_STATUS(cpa_split_positions(mk(CPA_SPLIT_ZIGZAG, 0, 1), 20, 0, pos), CPA_ERR_ARG);
    CHECK(has("at least 1"));
    /* Nothing was written by any failing call. */
    CHECK(n == -5);
    CHECK(p[0].row == 11 && p[0].len == 12 && p[0].pos == 13 && p[1].row == 14);
    CHECK(pos[0] == -9 && pos[1] == -9 && pos[2] == -9 && pos[3] == -9);
}

static void test_errors_shard(void)
{
    const cpa_split sp = mk(CPA_SPLIT_ZIGZAG, 4, 1);
    const int64_t B = 2, S = 16, N = 3, D = 2, local = S / sp.P;
    tu_tensor g = tu_attn(CPA_LAYOUT_BSHD, B, S, N, D);
    tu_tensor l = tu_attn(CPA_LAYOUT_BSHD, B, local, N, D);
    fill_encoded(g.t);
    const size_t ln = (size_t)(B * local * N * D), gn = (size_t)(B * S * N * D);
    fill_const(l.buf, ln, -1.0f);
    /* Wrong local shape in each dim, for shard and unshard. */
    static const int64_t bad[4][4] = {{1, 4, 3, 2}, {2, 5, 3, 2}, {2, 4, 2, 2}, {2, 4, 3, 3}};
    for (int i = 0; i < 4; ++i) {
        cpa_tensor wrong = cpa_tensor_attn(l.buf, CPA_LAYOUT_BSHD, bad[i][0], bad[i][1],
                                           bad[i][2], bad[i][3]);
        CHECK_STATUS(cpa_shard(sp, 1, g.t, wrong), CPA_ERR_ARG);
        CHECK(has("[B, S/P, N, D]") && has("[2, 4, 3, 2]"));
        CHECK_STATUS(cpa_unshard(sp, 1, wrong, g.t), CPA_ERR_ARG);
        CHECK(has("[B, S/P, N, D]"));
    }
    /* The whole global as "local" (forgot to shard). */
    CHECK_STATUS(cpa_shard(sp, 0, g.t, g.t), CPA_ERR_ARG);
    CHECK(has("S/P"));
    /* NULL data and wrong rank counts. */
    cpa_tensor gnull = g.t, lnull = l.t;
    gnull.data = NULL;
    lnull.data = NULL;
    CHECK_STATUS(cpa_shard(sp, 0, gnull, l.t), CPA_ERR_ARG);
    CHECK(has("data"));
    CHECK_STATUS(cpa_shard(sp, 0, g.t, lnull), CPA_ERR_ARG);
    CHECK(has("data"));
    CHECK_STATUS(cpa_unshard(sp, 0, lnull, g.t), CPA_ERR_ARG);
    CHECK(has("data"));
    CHECK_STATUS(cpa_unshard(sp, 0, l.t, gnull), CPA_ERR_ARG);
    CHECK(has("data"));
    cpa_tensor l3 = l.t;
    l3.ndim = 3;
    CHECK_STATUS(cpa_shard(sp, 0, g.t, l3), CPA_ERR_ARG);
    CHECK(has("4-d"));
    /* Rank out of range; an S (global rows) the split cannot take. */
    CHECK_STATUS(cpa_shard(sp, 4, g.t, l.t), CPA_ERR_ARG);
    CHECK(has("outside"));
    CHECK_STATUS(cpa_unshard(sp, -1, l.t, g.t), CPA_ERR_ARG);
    CHECK(has("outside"));
    cpa_tensor g12 = cpa_tensor_attn(g.buf, CPA_LAYOUT_BSHD, B, 12, N, D);
    cpa_tensor l3rows = cpa_tensor_attn(l.buf, CPA_LAYOUT_BSHD, B, 3, N, D);
    CHECK_STATUS(cpa_shard(sp, 0, g12, l3rows), CPA_ERR_ARG);
    CHECK(has("S % (2P)"));
    CHECK_STATUS(cpa_shard(mk(CPA_SPLIT_ZIGZAG, 4, 3), 0, g.t, l.t), CPA_ERR_ARG);
    CHECK(has("divide"));
    /* No failing call wrote anything: local still -1, global still encoded. */
    int untouched = 1;
    for (size_t i = 0; i < ln; ++i)
        untouched &= l.buf[i] == -1.0f;
    tu_tensor ref = tu_attn(CPA_LAYOUT_BSHD, B, S, N, D);
    fill_encoded(ref.t);
    untouched &= memcmp(ref.buf, g.buf, gn * sizeof(float)) == 0;
    CHECK(untouched);
    free(ref.buf);
    free(g.buf);
    free(l.buf);
}

/* Sizes near the int range: no int overflow in the arithmetic (UBSan) and
 * the last ring rank still gets chunks P-1 and P. */
static void test_large_sizes(void)
{
    const int P = 1 << 30;
    const int64_t S = 2 * (int64_t)P; /* c = 1, two rows per rank */
    int64_t pos[4];
    CHECK_OK(cpa_split_positions(mk(CPA_SPLIT_ZIGZAG, P, 1), S, P - 1, pos));
    CHECK(pos[0] == P - 1 && pos[1] == P);
    CHECK_OK(cpa_split_positions(mk(CPA_SPLIT_ZIGZAG, P, 1), S, 0, pos));
    CHECK(pos[0] == 0 && pos[1] == S - 1);
    /* Hybrid U = 2, S = 2^32: R = 2^29, c = 4, four rows per rank; the last
     * rank is part 1 of ring rank R-1, i.e. chunk R = [4R, 4R+4). */
    const int64_t R = P / 2;
    CHECK_OK(cpa_split_positions(mk(CPA_SPLIT_ZIGZAG, P, 2), 2 * S, P - 1, pos));
    CHECK(pos[0] == 4 * R && pos[1] == 4 * R + 1 && pos[2] == 4 * R + 2 && pos[3] == 4 * R + 3);
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, INT_MAX, 1), 5), CPA_ERR_ARG);
    CHECK(has("S % (2P)"));
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, INT_MAX, 1), 5), CPA_ERR_ARG);
    CHECK(has("S % P"));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, INT_MAX, 1), 2 * (int64_t)INT_MAX * 3));
}

/* The document-aware assignment: a permutation of the chunks, every
 * position held once at its place, balance no worse than zigzag on packed
 * documents and exact on a dense causal sequence; bad tables refused. */
static void test_document_balance(void)
{
    /* A long-tailed mix: one long document and many short ones, at S = 1024. */
    static const int64_t cu[] = {0, 600, 610, 640, 700, 720, 800, 830, 900, 1000, 1024};
    const cpa_mask docs = {CPA_MASK_CAUSAL, 0, cu, 10}, dense = {CPA_MASK_CAUSAL, 0, NULL, 0};
    for (int P = 1; P <= 8; ++P)
        for (int cpr = 2; cpr <= 4; cpr += 2) {
            const int64_t S = 1024;
            if (S % ((int64_t)P * cpr))
                continue;
            int32_t table[64];
            CHECK_OK(cpa_split_balance(S, P, cpr, docs, table));
            cpa_split sp = {.kind = CPA_SPLIT_CHUNKS, .P = P, .U = 1, .chunks_per_rank = cpr,
                            .chunk_of = table};
            CHECK_OK(cpa_split_check(sp, S));
            /* every position exactly once, local rows in piece order */
            char seen[1024] = {0};
            int64_t held = 0;
            for (int r = 0; r < P; ++r) {
                cpa_piece pc[CPA_SPLIT_MAX_PIECES];
                int np = 0;
                CHECK_OK(cpa_split_pieces(sp, S, r, pc, &np));
                int64_t row = 0;
                for (int i = 0; i < np; ++i) {
                    CHECK(pc[i].row == row);
                    row += pc[i].len;
                    for (int64_t j = 0; j < pc[i].len; ++j)
                        held += !seen[pc[i].pos + j]++;
                }
                CHECK(row == S / P);
            }
            CHECK(held == S);
            cpa_split zz = {.kind = CPA_SPLIT_ZIGZAG, .P = P, .U = 1};
            const double ib = cpa_split_imbalance(sp, S, docs), iz = cpa_split_imbalance(zz, S, docs);
            CHECK_MSG(ib >= 1.0 && ib <= iz + 1e-12, "P=%d cpr=%d: documents %.3f, zigzag %.3f", P,
                      cpr, ib, iz);
            if (P == 4 && cpr == 4)
                printf("  imbalance at P=4 (visible pairs, max/mean): zigzag %.3f, documents "
                       "%.3f\n", iz, ib);
            CHECK(cpa_split_imbalance(zz, S, dense) < 1.0 + 1e-12);
        }
    /* Bad tables: a repeated chunk, a rank's chunks out of order, no table. */
    int32_t rep[4] = {0, 1, 1, 3}, order[4] = {1, 0, 2, 3};
    cpa_split b = {.kind = CPA_SPLIT_CHUNKS, .P = 2, .U = 1, .chunks_per_rank = 2, .chunk_of = rep};
    CHECK(cpa_split_check(b, 64) == CPA_ERR_ARG);
    b.chunk_of = order;
    CHECK(cpa_split_check(b, 64) == CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "ascending") != NULL);
    b.chunk_of = NULL;
    CHECK(cpa_split_check(b, 64) == CPA_ERR_ARG);
    int32_t t[4];
    CHECK(cpa_split_balance(66, 2, 2, (cpa_mask){CPA_MASK_CAUSAL, 0, NULL, 0}, t) == CPA_ERR_ARG);
}

int main(void)
{
    RUN_TEST(test_partition_all_configs);
    RUN_TEST(test_contiguous_ignores_U);
    RUN_TEST(test_documented_examples);
    RUN_TEST(test_hybrid_concatenation);
    RUN_TEST(test_causal_balance);
    RUN_TEST(test_shard_roundtrip);
    RUN_TEST(test_shard_strided);
    RUN_TEST(test_unshard_touches_only_own_rows);
    RUN_TEST(test_errors_check);
    RUN_TEST(test_errors_pieces_positions);
    RUN_TEST(test_errors_shard);
    RUN_TEST(test_large_sizes);
    RUN_TEST(test_document_balance);
    return TEST_SUMMARY();
}
