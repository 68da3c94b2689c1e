/*
 * test_split.c — the sequence splits (cpa_split_check, cpa_split_rows,
 * cpa_split_max_rows, cpa_split_pieces, cpa_split_positions, cpa_shard,
 * cpa_unshard, cpa_split_balance, cpa_split_document_chunks), without MPI.
 *
 * Any S >= the number of chunks is accepted.  The rule, computed here
 * independently with exact 128-bit arithmetic: n chunks of S positions are
 * chunk i = [floor(i·S/n), floor((i+1)·S/n)).
 *   CONTIGUOUS: ring rank ρ = r/U holds chunk ρ of R = P/U, cut the same way
 *               into U parts; rank r holds part r%U (U = 1: chunk r of P).
 *   ZIGZAG:     ring rank ρ holds chunk ρ then chunk 2R-1-ρ of 2R (L rows),
 *               cut into U parts the same way; rank r holds part r%U.
 *   CHUNKS:     P*cpr chunks; rank r holds chunk_of[r*cpr ..] in order.
 *
 * For every P in 1..16 and every Ulysses degree U dividing P, over every S
 * from the minimum (P contiguous, 2P zigzag) up to 8P+2 and ragged larger
 * ones (2Pk±1, primes), the split must be a partition: the global positions
 * of all ranks are 0..S-1 exactly once; rank r holds the model's row count,
 * which cpa_split_rows reports, described by 1..CPA_SPLIT_MAX_PIECES pieces
 * (one for contiguous, at most two for zigzag) that are sorted, contiguous in
 * rows and cover [0, rows); the row counts differ by at most 1 (contiguous)
 * or 2 (zigzag) between ranks, every rank holds a row, cpa_split_max_rows is
 * the maximum; every S below the minimum is refused ("shorter than",
 * "S >= N").  The positions equal the model's, row for row.  Worked
 * examples (the documented divisible ones and ragged ones spelled out by
 * hand) are checked literally.  The hybrid's Ulysses all-to-all property
 * holds for ragged S too: the positions of ranks ρU+0 .. ρU+U-1,
 * concatenated, are ring rank ρ's positions of the same kind over R ranks
 * with U = 1 (zigzag and contiguous).  The zigzag split balances causal work
 * exactly when 2P divides S and within max/mean < 1 + 2P/S otherwise (the
 * contiguous one does not balance); shard/unshard move each row to the row
 * cpa_split_positions names, bit for bit, for every pair of layouts, padded
 * strides and ragged S (local views of cpa_split_rows rows); the
 * document-balanced CHUNKS split is a partition for ragged S as well; sizes
 * near the int range do not overflow; and every misuse fails with
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

__extension__ typedef __int128 i128;

static cpa_split mk(cpa_split_kind kind, int P, int U)
{
    cpa_split s = {.kind = kind, .P = P, .U = U};
    return s;
}

static cpa_split mk_chunks(int P, int cpr, const int32_t *table)
{
    cpa_split s = {.kind = CPA_SPLIT_CHUNKS, .P = P, .U = 1, .chunks_per_rank = cpr,
                   .chunk_of = table};
    return s;
}

static int has(const char *needle) { return strstr(cpa_last_error(), needle) != NULL; }

/* ---- the independent model --------------------------------------------- */

/* floor(i·S/n), exactly (i·S may exceed int64). */
static int64_t cut(int64_t S, int64_t n, int64_t i) { return (int64_t)((i128)i * S / n); }

/* Number of chunks the split cuts S into (each must hold a position). */
static int64_t model_chunks(cpa_split sp)
{
    return sp.kind == CPA_SPLIT_CONTIGUOUS ? sp.P
           : sp.kind == CPA_SPLIT_ZIGZAG   ? 2 * (int64_t)sp.P
                                           : (int64_t)sp.P * sp.chunks_per_rank;
}

/* Rank r's view in the model: up to cpr segments [start, start+len) of the
 * global sequence, concatenated in order, and the window [lo, hi) of that
 * concatenation that is rank r's. */
typedef struct model_view {
    int nseg;
    int64_t start[CPA_SPLIT_MAX_PIECES], len[CPA_SPLIT_MAX_PIECES];
    int64_t lo, hi;
} model_view;

static model_view model_rank(cpa_split sp, int64_t S, int r)
{
    model_view v = {0};
    int64_t total = 0;
    if (sp.kind == CPA_SPLIT_CHUNKS) {
        const int64_t n = (int64_t)sp.P * sp.chunks_per_rank;
        for (int k = 0; k < sp.chunks_per_rank; ++k) {
            const int64_t c = sp.chunk_of[(int64_t)r * sp.chunks_per_rank + k];
            v.start[v.nseg] = cut(S, n, c);
            v.len[v.nseg] = cut(S, n, c + 1) - cut(S, n, c);
            total += v.len[v.nseg++];
        }
        v.lo = 0;
        v.hi = total;
        return v;
    }
    const int64_t U = sp.U, R = sp.P / U, rho = r / U, u = r % U;
    if (sp.kind == CPA_SPLIT_CONTIGUOUS) {
        v.start[0] = cut(S, R, rho);
        v.len[0] = cut(S, R, rho + 1) - v.start[0];
        v.nseg = 1;
    } else {
        const int64_t n = 2 * R, c[2] = {rho, n - 1 - rho};
        for (int h = 0; h < 2; ++h) {
            v.start[h] = cut(S, n, c[h]);
            v.len[h] = cut(S, n, c[h] + 1) - v.start[h];
        }
        v.nseg = 2;
    }
    for (int h = 0; h < v.nseg; ++h)
        total += v.len[h];
    v.lo = cut(total, U, u);
    v.hi = cut(total, U, u + 1);
    return v;
}

static int64_t model_rows(cpa_split sp, int64_t S, int r)
{
    const model_view v = model_rank(sp, S, r);
    return v.hi - v.lo;
}

/* Global position of local row i of rank r. */
static int64_t model_position(cpa_split sp, int64_t S, int r, int64_t i)
{
    const model_view v = model_rank(sp, S, r);
    int64_t off = v.lo + i;
    for (int h = 0; h < v.nseg; ++h) {
        if (off < v.len[h])
            return v.start[h] + off;
        off -= v.len[h];
    }
    return -1;
}

/* ---- the partition properties ------------------------------------------- */

/* Everything a valid (split, S) must satisfy, checked for every rank.
 * Returns 1 if all held (the properties are also CHECKs of their own). */
static int check_partition(cpa_split sp, int64_t S)
{
    int64_t most = 0;
    for (int r = 0; r < sp.P; ++r) {
        const int64_t m = model_rows(sp, S, r);
        most = m > most ? m : most;
    }
    int64_t *positions = malloc((size_t)(most + 1) * sizeof *positions);
    unsigned char *seen = calloc((size_t)S, 1);
    int ok_rows = 1, ok_pieces = 1, ok_pos = 1, ok_model = 1, ok_union = 1;
    int64_t lo_rows = INT64_MAX, hi_rows = -1;
    const int max_pieces = sp.kind == CPA_SPLIT_CONTIGUOUS ? 1
                           : sp.kind == CPA_SPLIT_ZIGZAG   ? 2
                                                           : sp.chunks_per_rank;

    CHECK_OK(cpa_split_check(sp, S));
    for (int r = 0; r < sp.P; ++r) {
        const int64_t rows = model_rows(sp, S, r);
        lo_rows = rows < lo_rows ? rows : lo_rows;
        hi_rows = rows > hi_rows ? rows : hi_rows;
        if (cpa_split_rows(sp, S, r) != rows) {
            CHECK_MSG(0, "rows kind %d P %d U %d S %lld r %d: %lld, model %lld", sp.kind, sp.P,
                      sp.U, (long long)S, r, (long long)cpa_split_rows(sp, S, r),
                      (long long)rows);
            ok_rows = 0;
        }
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
        /* 1..max pieces, nothing written past the room promised. */
        int good = n >= 1 && n <= max_pieces && p[CPA_SPLIT_MAX_PIECES].row == -7 &&
                   p[CPA_SPLIT_MAX_PIECES].pos == -7;
        /* Sorted by row, each starting where the previous ended, covering [0, rows). */
        int64_t next_row = 0;
        for (int i = 0; good && i < n; ++i) {
            good = p[i].row == next_row && p[i].len > 0 && p[i].pos >= 0 &&
                   p[i].pos + p[i].len <= S;
            next_row += p[i].len;
        }
        good = good && next_row == rows;
        if (!good) {
            CHECK_MSG(0, "bad pieces kind %d P %d U %d S %lld r %d (n %d, rows %lld)", sp.kind,
                      sp.P, sp.U, (long long)S, r, n, (long long)rows);
            ok_pieces = 0;
            continue;
        }

        positions[rows] = -99;
        if (cpa_split_positions(sp, S, r, positions) != CPA_OK || positions[rows] != -99) {
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
        for (int64_t i = 0; i < rows; ++i) {
            if (positions[i] != model_position(sp, S, r, i))
                ok_model = 0;
            if (positions[i] < 0 || positions[i] >= S || seen[positions[i]]++)
                ok_union = 0;
        }
    }
    for (int64_t s = 0; s < S; ++s)
        if (seen[s] != 1)
            ok_union = 0;
    /* Near-equal shares: chunks differ by at most one position, so
     * contiguous ranks (any U) by at most one row, zigzag ranks (two chunks,
     * or a U-th of two) by at most two; with U = 1, contiguous ranks hold
     * floor or ceil of S/P rows and zigzag ranks 2·floor .. 2·ceil of S/2P. */
    const int64_t spread = sp.kind == CPA_SPLIT_CONTIGUOUS ? 1 : 2;
    int ok_spread = lo_rows >= 1 && hi_rows - lo_rows <= spread;
    if (sp.U == 1 && sp.kind == CPA_SPLIT_CONTIGUOUS)
        ok_spread &= lo_rows >= S / sp.P && hi_rows <= (S + sp.P - 1) / sp.P;
    if (sp.U == 1 && sp.kind == CPA_SPLIT_ZIGZAG)
        ok_spread &= lo_rows >= 2 * (S / (2 * sp.P)) &&
                     hi_rows <= 2 * ((S + 2 * sp.P - 1) / (2 * sp.P));
    if (sp.kind == CPA_SPLIT_CHUNKS)
        ok_spread = lo_rows >= sp.chunks_per_rank; /* cpr chunks of >= 1 */
    const int ok_max = cpa_split_max_rows(sp, S) == hi_rows;
    CHECK_MSG(ok_rows, "kind %d P %d U %d S %lld", sp.kind, sp.P, sp.U, (long long)S);
    CHECK_MSG(ok_pieces, "kind %d P %d U %d S %lld", sp.kind, sp.P, sp.U, (long long)S);
    CHECK_MSG(ok_pos, "kind %d P %d U %d S %lld", sp.kind, sp.P, sp.U, (long long)S);
    CHECK_MSG(ok_model, "kind %d P %d U %d S %lld", sp.kind, sp.P, sp.U, (long long)S);
    CHECK_MSG(ok_union, "kind %d P %d U %d S %lld: union is not 0..S-1 once each", sp.kind,
              sp.P, sp.U, (long long)S);
    CHECK_MSG(ok_spread, "kind %d P %d U %d S %lld: rows %lld..%lld", sp.kind, sp.P, sp.U,
              (long long)S, (long long)lo_rows, (long long)hi_rows);
    CHECK_MSG(ok_max, "kind %d P %d U %d S %lld: max rows %lld, want %lld", sp.kind, sp.P, sp.U,
              (long long)S, (long long)cpa_split_max_rows(sp, S), (long long)hi_rows);
    free(positions);
    free(seen);
    return ok_rows && ok_pieces && ok_pos && ok_model && ok_union && ok_spread && ok_max;
}

/* Every API call must refuse an S the split cannot take (S < its chunk
 * count, or S < 1), with the rule in the message and nothing written. */
static int check_rejects_S(cpa_split sp, int64_t S)
{
    cpa_piece p[CPA_SPLIT_MAX_PIECES] = {{11, 12, 13}};
    int64_t positions[1] = {-9};
    int n = -5, ok = 1;
    char want[64];
    snprintf(want, sizeof want, "S >= %lld", (long long)model_chunks(sp));
    cpa_clear_error();
    ok &= cpa_split_check(sp, S) == CPA_ERR_ARG;
    ok &= S < 1 ? has("positive") : has("shorter than") && has(want);
    ok &= !has("S % P") && !has("S % (2P)") && !has("try");
    ok &= cpa_split_pieces(sp, S, 0, p, &n) == CPA_ERR_ARG && n == -5 && p[0].row == 11;
    ok &= cpa_split_positions(sp, S, 0, positions) == CPA_ERR_ARG && positions[0] == -9;
    ok &= cpa_split_rows(sp, S, 0) == -1 && cpa_split_max_rows(sp, S) == -1;
    CHECK_MSG(ok, "kind %d P %d U %d S %lld not refused as it should be: %s", sp.kind, sp.P,
              sp.U, (long long)S, cpa_last_error());
    return ok;
}

/* All P in 1..16, all U | P, both kinds: every S from 1 to 8P+2 (refused
 * below the minimum, a partition from it on) and ragged larger S. */
static void test_partition_all_configs(void)
{
    static const int64_t ks[] = {7, 16, 33};
    static const int64_t extra[] = {97, 997, 1001, 1024, 4099};
    int configs = 0, rejects = 0, ragged = 0, all_ok = 1;
    for (int P = 1; P <= MAX_P; ++P)
        for (int U = 1; U <= P; ++U) {
            if (P % U != 0)
                continue;
            for (int kind = CPA_SPLIT_CONTIGUOUS; kind <= CPA_SPLIT_ZIGZAG; ++kind) {
                const cpa_split sp = mk((cpa_split_kind)kind, P, U);
                const int64_t min = model_chunks(sp);
                for (int64_t S = 1; S <= 8 * (int64_t)P + 2; ++S) {
                    if (S < min) {
                        all_ok &= check_rejects_S(sp, S);
                        ++rejects;
                    } else {
                        all_ok &= check_partition(sp, S);
                        ++configs;
                        ragged += S % P != 0;
                    }
                }
                all_ok &= check_rejects_S(sp, 0) & check_rejects_S(sp, -3);
                for (size_t i = 0; i < sizeof ks / sizeof ks[0]; ++i)
                    for (int64_t d = -1; d <= 1; ++d) {
                        all_ok &= check_partition(sp, 2 * P * ks[i] + d);
                        ++configs;
                    }
                for (size_t i = 0; i < sizeof extra / sizeof extra[0]; ++i)
                    if (extra[i] >= min) {
                        all_ok &= check_partition(sp, extra[i]);
                        ++configs;
                    }
            }
        }
    /* Two ragged lengths by hand: 997 over 3 contiguous ranks (starts
     * floor(997i/3) = 0, 332, 664, 997: 332, 332, 333 rows) and 1001 over 4
     * zigzag ranks (8 chunks of 125 or 126, below). */
    CHECK(cpa_split_rows(mk(CPA_SPLIT_CONTIGUOUS, 3, 1), 997, 0) == 332 &&
          cpa_split_rows(mk(CPA_SPLIT_CONTIGUOUS, 3, 1), 997, 1) == 332 &&
          cpa_split_rows(mk(CPA_SPLIT_CONTIGUOUS, 3, 1), 997, 2) == 333);
    {
        /* 8 chunks of 1001: starts floor(1001 i / 8) = 0,125,250,375,500,625,
         * 750,875,1001 (the last one 126 long): rank 0 = chunks 0 and 7 holds
         * 125 + 126 rows, ranks 1..3 250. */
        const cpa_split z4 = mk(CPA_SPLIT_ZIGZAG, 4, 1);
        CHECK(cpa_split_rows(z4, 1001, 0) == 251 && cpa_split_rows(z4, 1001, 1) == 250 &&
              cpa_split_rows(z4, 1001, 3) == 250 && cpa_split_max_rows(z4, 1001) == 251);
        cpa_piece p[CPA_SPLIT_MAX_PIECES];
        int n = 0;
        CHECK_OK(cpa_split_pieces(z4, 1001, 0, p, &n));
        CHECK(n == 2 && p[0].row == 0 && p[0].len == 125 && p[0].pos == 0 &&
              p[1].row == 125 && p[1].len == 126 && p[1].pos == 875);
    }
    printf("  %d partitions (%d with P not dividing S), %d refusals\n", configs, ragged, rejects);
    CHECK(configs > 8000 && ragged > 5800 && rejects > 1350);
    CHECK(all_ok);
}

/* The CHUNKS split (the document-balanced one's layout) for fixed tables:
 * rank r holding chunks r*cpr.. (contiguous), and chunks r, r+P, .. (strided),
 * over every S from P*cpr (and refused just below it). */
static void test_chunks_partition(void)
{
    int configs = 0, all_ok = 1;
    int32_t table[MAX_P * CPA_SPLIT_MAX_PIECES];
    for (int P = 1; P <= 8; ++P)
        for (int cpr = 1; cpr <= CPA_SPLIT_MAX_PIECES; cpr *= 2)
            for (int layout = 0; layout < 2; ++layout) {
                for (int r = 0; r < P; ++r)
                    for (int k = 0; k < cpr; ++k)
                        table[r * cpr + k] = layout == 0 ? r * cpr + k : k * P + r;
                const cpa_split sp = mk_chunks(P, cpr, table);
                const int64_t min = (int64_t)P * cpr;
                all_ok &= check_rejects_S(sp, min - 1);
                for (int64_t S = min; S <= 3 * min + 1; ++S) {
                    all_ok &= check_partition(sp, S);
                    ++configs;
                }
                all_ok &= check_partition(sp, 997) & check_partition(sp, 1000);
                configs += 2;
            }
    CHECK(configs > 1000);
    CHECK(all_ok);
}

/* CONTIGUOUS with U > 1: ring-level chunks of R = P/U, each cut into U
 * parts.  When P divides S that is chunk r of P (the same as U = 1); for a
 * ragged S it need not be. */
static void test_contiguous_with_U(void)
{
    int ok = 1, differ = 0;
    for (int P = 2; P <= MAX_P; ++P)
        for (int U = 2; U <= P; ++U) {
            if (P % U != 0)
                continue;
            for (int64_t k = 1; k <= 5; ++k) {
                const int64_t S = k * (int64_t)P;
                for (int r = 0; r < P; ++r) {
                    cpa_piece a[CPA_SPLIT_MAX_PIECES], b[CPA_SPLIT_MAX_PIECES];
                    int na = 0, nb = 0;
                    CHECK_OK(cpa_split_pieces(mk(CPA_SPLIT_CONTIGUOUS, P, 1), S, r, a, &na));
                    CHECK_OK(cpa_split_pieces(mk(CPA_SPLIT_CONTIGUOUS, P, U), S, r, b, &nb));
                    ok &= na == 1 && nb == 1 && a[0].row == b[0].row && a[0].len == b[0].len &&
                          a[0].pos == b[0].pos && b[0].pos == r * k && b[0].len == k &&
                          b[0].row == 0;
                }
            }
            for (int64_t S = P; S <= 6 * (int64_t)P; ++S)
                for (int r = 0; r < P; ++r)
                    if (model_position(mk(CPA_SPLIT_CONTIGUOUS, P, U), S, r, 0) !=
                        model_position(mk(CPA_SPLIT_CONTIGUOUS, P, 1), S, r, 0)) {
                        ++differ;
                        break;
                    }
        }
    CHECK(ok);
    CHECK(differ > 0); /* the U > 1 layout is a layout of its own (below) */

    /* Worked by hand: P = 6, U = 2, S = 8.  R = 3 ring chunks of 8: starts
     * floor(8ρ/3) = 0, 2, 5, 8 (lengths 2, 3, 3); each cut in two: L = 2 ->
     * 1 + 1, L = 3 -> floor(3u/2) = 0, 1, 3 -> 1 + 2.  Ranks: {0} {1} {2}
     * {3,4} {5} {6,7}.  With U = 1 (6 chunks: floor(8i/6) = 0,1,2,4,5,6,8)
     * ranks 2 and 3 would hold {2,3} and {4} instead. */
    const cpa_split c62 = mk(CPA_SPLIT_CONTIGUOUS, 6, 2), c61 = mk(CPA_SPLIT_CONTIGUOUS, 6, 1);
    static const int64_t start62[6] = {0, 1, 2, 3, 5, 6}, len62[6] = {1, 1, 1, 2, 1, 2};
    static const int64_t start61[6] = {0, 1, 2, 4, 5, 6}, len61[6] = {1, 1, 2, 1, 1, 2};
    for (int r = 0; r < 6; ++r) {
        cpa_piece p[CPA_SPLIT_MAX_PIECES];
        int n = 0;
        CHECK_OK(cpa_split_pieces(c62, 8, r, p, &n));
        CHECK(n == 1 && p[0].row == 0 && p[0].pos == start62[r] && p[0].len == len62[r]);
        CHECK(cpa_split_rows(c62, 8, r) == len62[r]);
        CHECK_OK(cpa_split_pieces(c61, 8, r, p, &n));
        CHECK(n == 1 && p[0].row == 0 && p[0].pos == start61[r] && p[0].len == len61[r]);
    }
    CHECK(cpa_split_max_rows(c62, 8) == 2 && cpa_split_max_rows(c61, 8) == 2);
}

static int positions_equal(cpa_split sp, int64_t S, int r, const int64_t *want, int64_t n)
{
    int64_t got[64];
    if (cpa_split_rows(sp, S, r) != n || n > 64 || cpa_split_positions(sp, S, r, got) != CPA_OK)
        return 0;
    return memcmp(got, want, (size_t)n * sizeof *got) == 0;
}

/* The worked examples of the documentation, spelled out, and ragged ones
 * worked by hand. */
static void test_documented_examples(void)
{
    /* P = 4, S = 16, c = 2: rank r holds chunks r and 7-r. */
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
    /* Hybrid P = 6, U = 3, R = 2, S = 12, c = 3.  Ring rank 0 holds chunks
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
    /* Hybrid P = 8, U = 2, R = 4, S = 16, c = 2: ring rank ρ = r/2 holds
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

    /* Ragged, by hand.  Zigzag P = 3, S = 10: 6 chunks, starts
     * floor(10i/6) = 0, 1, 3, 5, 6, 8, 10 (lengths 1, 2, 2, 1, 2, 2).
     * Rank 0 = chunks 0 and 5 = {0, 8, 9}; rank 1 = chunks 1 and 4 =
     * {1, 2, 6, 7}; rank 2 = chunks 2 and 3 = {3, 4, 5} (two adjacent
     * chunks, still two pieces or one). */
    {
        const cpa_split z3 = mk(CPA_SPLIT_ZIGZAG, 3, 1);
        static const int64_t r0[3] = {0, 8, 9}, r1[4] = {1, 2, 6, 7}, r2[3] = {3, 4, 5};
        CHECK(positions_equal(z3, 10, 0, r0, 3));
        CHECK(positions_equal(z3, 10, 1, r1, 4));
        CHECK(positions_equal(z3, 10, 2, r2, 3));
        CHECK(cpa_split_max_rows(z3, 10) == 4);
        cpa_piece p[CPA_SPLIT_MAX_PIECES];
        int n = 0;
        CHECK_OK(cpa_split_pieces(z3, 10, 0, p, &n));
        CHECK(n == 2 && p[0].row == 0 && p[0].len == 1 && p[0].pos == 0 && p[1].row == 1 &&
              p[1].len == 2 && p[1].pos == 8);
        CHECK_OK(cpa_split_pieces(z3, 10, 1, p, &n));
        CHECK(n == 2 && p[0].row == 0 && p[0].len == 2 && p[0].pos == 1 && p[1].row == 2 &&
              p[1].len == 2 && p[1].pos == 6);
    }
    /* Hybrid zigzag P = 6, U = 3, S = 13: R = 2, 4 chunks, starts
     * floor(13i/4) = 0, 3, 6, 9, 13.  Ring rank 0 = chunks 0 and 3 =
     * {0,1,2, 9,10,11,12} (L = 7, parts floor(7u/3) = 0, 2, 4, 7): ranks 0,
     * 1, 2 hold {0,1}, {2,9}, {10,11,12}.  Ring rank 1 = chunks 1 and 2 =
     * {3..8} (L = 6, parts of 2): ranks 3, 4, 5 hold {3,4}, {5,6}, {7,8}. */
    {
        const cpa_split h = mk(CPA_SPLIT_ZIGZAG, 6, 3);
        static const int64_t a[2] = {0, 1}, b[2] = {2, 9}, c[3] = {10, 11, 12}, d[2] = {3, 4},
                             e[2] = {5, 6}, f[2] = {7, 8};
        CHECK(positions_equal(h, 13, 0, a, 2));
        CHECK(positions_equal(h, 13, 1, b, 2));
        CHECK(positions_equal(h, 13, 2, c, 3));
        CHECK(positions_equal(h, 13, 3, d, 2));
        CHECK(positions_equal(h, 13, 4, e, 2));
        CHECK(positions_equal(h, 13, 5, f, 2));
        cpa_piece p[CPA_SPLIT_MAX_PIECES];
        int n = 0;
        CHECK_OK(cpa_split_pieces(h, 13, 1, p, &n));
        CHECK(n == 2 && p[0].row == 0 && p[0].len == 1 && p[0].pos == 2 && p[1].row == 1 &&
              p[1].len == 1 && p[1].pos == 9);
    }
    /* Contiguous P = 4, S = 10: starts floor(10i/4) = 0, 2, 5, 7, 10. */
    {
        const cpa_split c4 = mk(CPA_SPLIT_CONTIGUOUS, 4, 1);
        static const int64_t a[2] = {0, 1}, b[3] = {2, 3, 4}, c[2] = {5, 6}, d[3] = {7, 8, 9};
        CHECK(positions_equal(c4, 10, 0, a, 2) && positions_equal(c4, 10, 1, b, 3) &&
              positions_equal(c4, 10, 2, c, 2) && positions_equal(c4, 10, 3, d, 3));
    }
    /* Chunks P = 2, cpr = 2, S = 7, table {0, 3 | 1, 2}: starts floor(7i/4)
     * = 0, 1, 3, 5, 7.  Rank 0 = {0} + {5, 6}; rank 1 = {1, 2} + {3, 4},
     * adjacent, so one piece [1, 5). */
    {
        static const int32_t t[4] = {0, 3, 1, 2};
        const cpa_split ch = mk_chunks(2, 2, t);
        static const int64_t a[3] = {0, 5, 6}, b[4] = {1, 2, 3, 4};
        CHECK(positions_equal(ch, 7, 0, a, 3) && positions_equal(ch, 7, 1, b, 4));
        cpa_piece p[CPA_SPLIT_MAX_PIECES];
        int n = 0;
        CHECK_OK(cpa_split_pieces(ch, 7, 1, p, &n));
        CHECK(n == 1 && p[0].row == 0 && p[0].len == 4 && p[0].pos == 1);
        CHECK_OK(cpa_split_pieces(ch, 7, 0, p, &n));
        CHECK(n == 2 && p[0].len == 1 && p[0].pos == 0 && p[1].row == 1 && p[1].len == 2 &&
              p[1].pos == 5);
    }
}

/* What the hybrid's Ulysses all-to-all relies on: the U parts of Ulysses
 * group ρ, concatenated in Ulysses-rank order, are ring rank ρ's piece of
 * the same kind over R = P/U ranks with U = 1 — for any S. */
static void test_hybrid_concatenation(void)
{
    static const int64_t extra[] = {97, 997, 1001};
    int cases = 0, ragged = 0, ok = 1;
    int64_t *ring = malloc(1100 * sizeof *ring), *cat = malloc(1100 * sizeof *cat);
    for (int kind = CPA_SPLIT_CONTIGUOUS; kind <= CPA_SPLIT_ZIGZAG; ++kind)
        for (int P = 2; P <= MAX_P; ++P)
            for (int U = 2; U <= P; ++U) {
                if (P % U != 0)
                    continue;
                const int R = P / U;
                const cpa_split hy = mk((cpa_split_kind)kind, P, U);
                const cpa_split rg = mk((cpa_split_kind)kind, R, 1);
                int64_t Ss[6 * MAX_P + 3];
                int nS = 0;
                for (int64_t S = model_chunks(hy); S <= 6 * (int64_t)P; ++S)
                    Ss[nS++] = S;
                for (size_t i = 0; i < sizeof extra / sizeof extra[0]; ++i)
                    Ss[nS++] = extra[i];
                for (int si = 0; si < nS; ++si) {
                    const int64_t SS = Ss[si];
                    for (int rho = 0; rho < R; ++rho) {
                        const int64_t want = cpa_split_rows(rg, SS, rho);
                        int64_t got = 0;
                        CHECK_OK(cpa_split_positions(rg, SS, rho, ring));
                        for (int u = 0; u < U; ++u) {
                            CHECK_OK(cpa_split_positions(hy, SS, rho * U + u, cat + got));
                            got += cpa_split_rows(hy, SS, rho * U + u);
                        }
                        ok &= want == got && memcmp(ring, cat, (size_t)want * sizeof *ring) == 0;
                        ++cases;
                        ragged += SS % P != 0;
                    }
                }
            }
    free(ring);
    free(cat);
    CHECK(cases > 2000 && ragged > 1500);
    CHECK(ok);
}

/* Visible causal (query, key) pairs of rank r: sum over its positions q of
 * q + 1 (keys 0..q). */
static int64_t causal_pairs(cpa_split sp, int64_t S, int r)
{
    const int64_t rows = cpa_split_rows(sp, S, r);
    int64_t *pos = malloc((size_t)(rows > 0 ? rows : 1) * sizeof *pos), sum = 0;
    if (rows < 0 || cpa_split_positions(sp, S, r, pos) != CPA_OK) {
        free(pos);
        return -1;
    }
    for (int64_t i = 0; i < rows; ++i)
        sum += pos[i] + 1;
    free(pos);
    return sum;
}

/* max/mean of the causal pairs over the ranks, or over the ring ranks
 * (the sum over each Ulysses group) when by_group. */
static double causal_imbalance(cpa_split sp, int64_t S, int by_group)
{
    const int groups = by_group ? sp.P / sp.U : sp.P, per = sp.P / groups;
    int64_t hi = 0, total = 0;
    for (int g = 0; g < groups; ++g) {
        int64_t w = 0;
        for (int k = 0; k < per; ++k)
            w += causal_pairs(sp, S, g * per + k);
        hi = w > hi ? w : hi;
        total += w;
    }
    return total == S * (S + 1) / 2 ? (double)hi * groups / (double)total : -1.0;
}

static void test_causal_balance(void)
{
    /* Zigzag (U = 1), 2P | S: every rank does exactly the same causal work,
     * so max/mean == 1 exactly (integers: max == min == total/P). */
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

    /* Zigzag, ragged S: no longer exact, but max/mean < 1 + 2P/S for every
     * P <= 16 and S >= 2P (measured: (max/mean - 1)·S/P peaks at 1.874,
     * P = 16, S = 3169).  So <= 1.125 from S = 16P on (worst 1.116 at P = 16,
     * S = 257: ranks hold 16 or 17 rows) and < 1.032 from S = 64P.  By hand,
     * P = 2, S = 5: chunks {0} {1} {2} {3,4}; rank 0 = {0, 3, 4} sees
     * 1 + 4 + 5 = 10 pairs, rank 1 = {1, 2} 2 + 3 = 5; mean 7.5, max/mean
     * 4/3 (< 1 + 4/5). */
    ok = 1;
    double worst16 = 0.0, worst64 = 0.0;
    for (int P = 1; P <= MAX_P; ++P)
        for (int64_t S = 2 * (int64_t)P; S <= 80 * (int64_t)P; ++S) {
            const double x = causal_imbalance(mk(CPA_SPLIT_ZIGZAG, P, 1), S, 0);
            ok &= x >= 1.0 && x < 1.0 + 2.0 * P / (double)S;
            if (S >= 16 * P)
                worst16 = x > worst16 ? x : worst16;
            if (S >= 64 * P)
                worst64 = x > worst64 ? x : worst64;
        }
    CHECK(ok);
    CHECK(worst16 > 1.11 && worst16 <= 1.125 && worst64 < 1.032);
    CHECK(causal_pairs(mk(CPA_SPLIT_ZIGZAG, 2, 1), 5, 0) == 10 &&
          causal_pairs(mk(CPA_SPLIT_ZIGZAG, 2, 1), 5, 1) == 5);
    printf("  zigzag causal max/mean, ragged S: worst %.4f for S >= 16P, %.4f for S >= 64P\n",
           worst16, worst64);

    /* Hybrid: each Ulysses group (one ring rank) is the unit the ring
     * schedules: exactly balanced when 2R | S (here 4P), and for any S the
     * group's work is the R-rank zigzag's, so within 1 + 2R/S. */
    ok = 1;
    for (int P = 2; P <= MAX_P; ++P)
        for (int U = 2; U <= P; ++U) {
            if (P % U != 0)
                continue;
            const int R = P / U;
            const int64_t S = 4 * (int64_t)P, total = S * (S + 1) / 2;
            for (int rho = 0; rho < R; ++rho) {
                int64_t w = 0;
                for (int u = 0; u < U; ++u)
                    w += causal_pairs(mk(CPA_SPLIT_ZIGZAG, P, U), S, rho * U + u);
                ok &= w * R == total;
            }
            for (int64_t S2 = 2 * (int64_t)P; S2 <= 20 * (int64_t)P; S2 += 3) {
                const double x = causal_imbalance(mk(CPA_SPLIT_ZIGZAG, P, U), S2, 1);
                ok &= x >= 1.0 && x < 1.0 + 2.0 * R / (double)S2 &&
                      x == causal_imbalance(mk(CPA_SPLIT_ZIGZAG, R, 1), S2, 0);
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
    /* Ragged, the same picture: contiguous near 1.875, zigzag near 1. */
    for (int64_t s2 = 1021; s2 <= 1027; s2 += 2) {
        const double c = causal_imbalance(mk(CPA_SPLIT_CONTIGUOUS, P, 1), s2, 0);
        const double z = causal_imbalance(mk(CPA_SPLIT_ZIGZAG, P, 1), s2, 0);
        CHECK_MSG(c > 1.86 && c < 1.89 && z >= 1.0 && z < 1.0 + 2.0 * P / (double)s2,
                  "S %lld: contiguous %.4f, zigzag %.4f", (long long)s2, c, z);
    }
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
 * for every (global layout, local layout) pair, for S divisible by 2P and
 * ragged (each rank's local view holds cpa_split_rows rows). */
static void test_shard_roundtrip(void)
{
    static const int32_t table[6] = {0, 5, 1, 4, 2, 3}; /* P = 3, cpr = 2 */
    static const struct { cpa_split_kind kind; int P, U; } splits[] = {
        {CPA_SPLIT_CONTIGUOUS, 1, 1}, {CPA_SPLIT_CONTIGUOUS, 4, 1}, {CPA_SPLIT_ZIGZAG, 1, 1},
        {CPA_SPLIT_ZIGZAG, 4, 1},     {CPA_SPLIT_ZIGZAG, 6, 3},     {CPA_SPLIT_ZIGZAG, 8, 2},
        {CPA_SPLIT_ZIGZAG, 5, 1},     {CPA_SPLIT_ZIGZAG, 3, 1},     {CPA_SPLIT_CONTIGUOUS, 3, 1},
        {CPA_SPLIT_CONTIGUOUS, 6, 2}, {CPA_SPLIT_CONTIGUOUS, 8, 4}, {CPA_SPLIT_CHUNKS, 3, 1}};
    const int64_t B = 2, N = 3, D = 4;
    int ok_local = 1, ok_round = 1, ok_rows = 1, cases = 0, ragged = 0;
    for (size_t si = 0; si < sizeof splits / sizeof splits[0]; ++si) {
        const cpa_split sp = splits[si].kind == CPA_SPLIT_CHUNKS
                                 ? mk_chunks(splits[si].P, 2, table)
                                 : mk(splits[si].kind, splits[si].P, splits[si].U);
        const int64_t Ss[4] = {6 * (int64_t)sp.P, 6 * (int64_t)sp.P - 1, 6 * (int64_t)sp.P + 1,
                               2 * (int64_t)sp.P + 1};
        for (int k = 0; k < 4; ++k) {
            const int64_t S = Ss[k], most = cpa_split_max_rows(sp, S);
            int64_t positions[64];
            for (int gl = 0; gl < 3; ++gl)
                for (int ll = 0; ll < 3; ++ll) {
                    tu_tensor g = tu_attn((cpa_layout)gl, B, S, N, D);
                    tu_tensor back = tu_attn((cpa_layout)gl, B, S, N, D);
                    float *lbuf = malloc((size_t)(B * most * N * D) * sizeof *lbuf);
                    fill_encoded(g.t);
                    fill_const(back.buf, (size_t)(B * S * N * D), -1.0f);
                    int64_t sum = 0;
                    for (int r = 0; r < sp.P; ++r) {
                        const int64_t rows = cpa_split_rows(sp, S, r);
                        ok_rows &= rows == model_rows(sp, S, r) && rows <= most;
                        sum += rows;
                        cpa_tensor l = cpa_tensor_attn(lbuf, (cpa_layout)ll, B, rows, N, D);
                        fill_const(lbuf, (size_t)(B * most * N * D), -1.0f);
                        CHECK_OK(cpa_split_positions(sp, S, r, positions));
                        CHECK_OK(cpa_shard(sp, r, g.t, l));
                        ok_local &= local_matches(l, positions);
                        CHECK_OK(cpa_unshard(sp, r, l, back.t));
                    }
                    ok_rows &= sum == S;
                    ok_round &= tu_bitwise_equal(back.t, g.t);
                    ++cases;
                    ragged += S % sp.P != 0;
                    free(g.buf);
                    free(back.buf);
                    free(lbuf);
                }
        }
    }
    CHECK(cases == 12 * 4 * 9);
    CHECK(ragged > 150);
    CHECK(ok_rows);
    CHECK(ok_local);
    CHECK(ok_round);
}

/* Arbitrary strides: a padded local view (gaps between heads, rows and
 * batches, D not unit stride) and a global view with S in reversed memory
 * order, for S divisible by 2P and ragged.  The padding must stay
 * untouched. */
static void test_shard_strided(void)
{
    static const int64_t Ss[] = {24, 25, 19, 12};
    const cpa_split sp = mk(CPA_SPLIT_ZIGZAG, 6, 3);
    for (size_t k = 0; k < sizeof Ss / sizeof Ss[0]; ++k) {
        const int64_t B = 2, S = Ss[k], N = 3, D = 4, most = cpa_split_max_rows(sp, S);
        /* Local: element (b,s,n,d) at b*st0 + s*st1 + n*st2 + d*2 (D stride 2). */
        const int64_t st2 = 2 * D + 1, st1 = N * st2 + 3, st0 = most * st1 + 5;
        const size_t lsize = (size_t)(B * st0);
        float *lbuf = malloc(lsize * sizeof *lbuf);
        /* Global: BSHD but walking S backwards from the last row. */
        float *gbuf = malloc((size_t)(B * S * N * D) * sizeof *gbuf);
        float *back_buf = malloc((size_t)(B * S * N * D) * sizeof *back_buf);
        cpa_tensor g = {gbuf + (S - 1) * N * D, 4, {B, S, N, D}, {S * N * D, -N * D, D, 1}};
        cpa_tensor back = g;
        back.data = back_buf + (S - 1) * N * D;
        fill_encoded(g);
        fill_const(back_buf, (size_t)(B * S * N * D), -1.0f);

        int ok_local = 1, ok_pad = 1;
        int64_t positions[32];
        for (int r = 0; r < sp.P; ++r) {
            const int64_t rows = cpa_split_rows(sp, S, r);
            cpa_tensor l = {lbuf, 4, {B, rows, N, D}, {st0, st1, st2, 2}};
            fill_const(lbuf, lsize, -3.0f);
            CHECK_OK(cpa_split_positions(sp, S, r, positions));
            CHECK_OK(cpa_shard(sp, r, g, l));
            ok_local &= local_matches(l, positions);
            /* Count elements that changed: exactly B*rows*N*D. */
            size_t written = 0;
            for (size_t i = 0; i < lsize; ++i)
                written += lbuf[i] != -3.0f;
            ok_pad &= written == (size_t)(B * rows * N * D);
            CHECK_OK(cpa_unshard(sp, r, l, back));
        }
        CHECK_MSG(ok_local, "S %lld", (long long)S);
        CHECK_MSG(ok_pad, "S %lld", (long long)S);
        CHECK(memcmp(gbuf, back_buf, (size_t)(B * S * N * D) * sizeof *gbuf) == 0);
        free(lbuf);
        free(gbuf);
        free(back_buf);
    }
}

/* Unsharding one rank writes only its rows (every rank in turn, for S
 * divisible by 2P and ragged). */
static void test_unshard_touches_only_own_rows(void)
{
    static const int64_t Ss[] = {16, 17, 9};
    const cpa_split sp = mk(CPA_SPLIT_ZIGZAG, 4, 2);
    int ok = 1;
    for (size_t k = 0; k < sizeof Ss / sizeof Ss[0]; ++k) {
        const int64_t B = 1, S = Ss[k], N = 2, D = 2;
        tu_tensor g = tu_attn(CPA_LAYOUT_SBHD, B, S, N, D);
        tu_tensor back = tu_attn(CPA_LAYOUT_BNSD, B, S, N, D);
        tu_tensor l = tu_attn(CPA_LAYOUT_BSHD, B, cpa_split_max_rows(sp, S), N, D);
        fill_encoded(g.t);
        for (int r = 0; r < sp.P; ++r) {
            const int64_t rows = cpa_split_rows(sp, S, r);
            cpa_tensor lr = cpa_tensor_attn(l.buf, CPA_LAYOUT_BSHD, B, rows, N, D);
            fill_const(back.buf, (size_t)(B * S * N * D), -1.0f);
            int64_t positions[16];
            CHECK_OK(cpa_split_positions(sp, S, r, positions));
            CHECK_OK(cpa_shard(sp, r, g.t, lr));
            CHECK_OK(cpa_unshard(sp, r, lr, back.t));
            for (int64_t s = 0; s < S; ++s) {
                int mine = 0;
                for (int64_t i = 0; i < rows; ++i)
                    mine |= positions[i] == s;
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t d = 0; d < D; ++d) {
                        const int64_t idx[4] = {0, s, n, d};
                        ok &= *tu_at(&back.t, idx) == (mine ? encode(0, s, n, d) : -1.0f);
                    }
            }
        }
        free(g.buf);
        free(back.buf);
        free(l.buf);
    }
    CHECK(ok);
}

/* No message of the old divisibility rule may survive. */
static int no_old_rule(void) { return !has("S % P") && !has("S % (2P)") && !has("try "); }

static void test_errors_check(void)
{
    /* Too short: every chunk needs a position, with the values and the
     * rule in the message. */
    cpa_clear_error();
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, 4, 1), 3), CPA_ERR_ARG);
    CHECK(has("shorter than") && has("3") && has("S >= 4") && no_old_rule());
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 4, 1), 7), CPA_ERR_ARG);
    CHECK(has("shorter than") && has("7") && has("S >= 8") && no_old_rule());
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 6, 3), 11), CPA_ERR_ARG);
    CHECK(has("shorter than") && has("S >= 12") && no_old_rule());
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, 6, 2), 5), CPA_ERR_ARG);
    CHECK(has("shorter than") && has("S >= 6"));
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 1, 1), 1), CPA_ERR_ARG);
    CHECK(has("shorter than") && has("S >= 2"));
    {
        static const int32_t t[8] = {0, 1, 2, 3, 4, 5, 6, 7};
        CHECK_STATUS(cpa_split_check(mk_chunks(2, 4, t), 7), CPA_ERR_ARG);
        CHECK(has("shorter than") && has("S >= 8"));
        CHECK_OK(cpa_split_check(mk_chunks(2, 4, t), 8));
        CHECK_OK(cpa_split_check(mk_chunks(2, 4, t), 13));
    }
    /* What the old rule refused is fine now: any S from the chunk count. */
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, 4, 1), 10));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, 4, 1), 4));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 4, 1), 12));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 4, 1), 8));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 6, 3), 18));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 6, 3), 13));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, 6, 2), 7));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 1, 1), 3));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, 1, 1), 1));
    /* P < 1. */
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, 0, 1), 8), CPA_ERR_ARG);
    CHECK(has("at least 1"));
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, -2, 1), 8), CPA_ERR_ARG);
    CHECK(has("-2") && has("at least 1"));
    /* U < 1, U not dividing P (also for contiguous), U > P; the rank rules
     * come before the length rule. */
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
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, 4, 3), 2), CPA_ERR_ARG);
    CHECK(has("divide") && !has("shorter"));
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, 0, 1), 0), CPA_ERR_ARG);
    CHECK(has("at least 1"));
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
    /* Row counts: -1 wherever the split or the rank is refused. */
    CHECK(cpa_split_rows(mk(CPA_SPLIT_ZIGZAG, 4, 1), 7, 0) == -1);
    CHECK(cpa_split_rows(mk(CPA_SPLIT_ZIGZAG, 4, 1), 16, 4) == -1);
    CHECK(cpa_split_rows(mk(CPA_SPLIT_ZIGZAG, 4, 1), 16, -1) == -1);
    CHECK(cpa_split_rows(mk(CPA_SPLIT_ZIGZAG, 4, 3), 24, 0) == -1);
    CHECK(cpa_split_rows(mk((cpa_split_kind)7, 2, 1), 4, 0) == -1);
    CHECK(cpa_split_max_rows(mk(CPA_SPLIT_ZIGZAG, 4, 1), 7) == -1);
    CHECK(cpa_split_max_rows(mk(CPA_SPLIT_CONTIGUOUS, 0, 1), 8) == -1);
    CHECK(cpa_split_max_rows(mk(CPA_SPLIT_ZIGZAG, 4, 3), 24) == -1);
    CHECK(cpa_split_rows(mk(CPA_SPLIT_ZIGZAG, 4, 1), 16, 3) == 4);
    CHECK(cpa_split_max_rows(mk(CPA_SPLIT_CONTIGUOUS, 4, 1), 10) == 3);
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
    CHECK_STATUS(cpa_split_pieces(sp, 17, 4, p, &n), CPA_ERR_ARG); /* ragged S, same rule */
    CHECK(has("rank 4") && has("outside"));
    /* NULL outputs. */
    CHECK_STATUS(cpa_split_pieces(sp, 16, 0, NULL, &n), CPA_ERR_ARG);
    CHECK(has("NULL"));
    CHECK_STATUS(cpa_split_pieces(sp, 16, 0, p, NULL), CPA_ERR_ARG);
    CHECK(has("NULL"));
    CHECK_STATUS(cpa_split_positions(sp, 16, 0, NULL), CPA_ERR_ARG);
    CHECK(has("positions") && has("NULL"));
    /* A broken split propagates the check's message. */
    CHECK_STATUS(cpa_split_pieces(mk(CPA_SPLIT_ZIGZAG, 4, 1), 7, 0, p, &n), CPA_ERR_ARG);
    CHECK(has("shorter than") && has("S >= 8"));
    CHECK_STATUS(cpa_split_positions(mk(CPA_SPLIT_ZIGZAG, 4, 1), 7, 0, pos), CPA_ERR_ARG);
    CHECK(has("shorter than"));
    CHECK_STATUS(cpa_split_positions(mk(CPA_SPLIT_ZIGZAG, 0, 1), 20, 0, pos), CPA_ERR_ARG);
    CHECK(has("at least 1"));
    /* Nothing was written by any failing call. */
    CHECK(n == -5);
    CHECK(p[0].row == 11 && p[0].len == 12 && p[0].pos == 13 && p[1].row == 14);
    CHECK(pos[0] == -9 && pos[1] == -9 && pos[2] == -9 && pos[3] == -9);
    /* S = 20 (once refused as 20 % 8 != 0) is fine: 8 chunks, starts
     * floor(20i/8) = 0,2,5,7,10,12,15,17,20; rank 0 = chunks 0 and 7 =
     * {0,1, 17,18,19}. */
    {
        cpa_piece q[CPA_SPLIT_MAX_PIECES];
        int m = 0;
        int64_t want[5] = {0, 1, 17, 18, 19};
        CHECK_OK(cpa_split_pieces(mk(CPA_SPLIT_ZIGZAG, 4, 1), 20, 0, q, &m));
        CHECK(m == 2 && q[0].len == 2 && q[1].pos == 17 && q[1].len == 3);
        CHECK(positions_equal(mk(CPA_SPLIT_ZIGZAG, 4, 1), 20, 0, want, 5));
    }
}

static void test_errors_shard(void)
{
    const cpa_split sp = mk(CPA_SPLIT_ZIGZAG, 4, 1);
    const int64_t B = 2, S = 16, N = 3, D = 2, local = 4;
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
        CHECK(has("[B, rows of rank 1, N, D] = [2, 4, 3, 2]"));
        CHECK_STATUS(cpa_unshard(sp, 1, wrong, g.t), CPA_ERR_ARG);
        CHECK(has("[B, rows of rank 1, N, D] = [2, 4, 3, 2]"));
    }
    /* Ragged S = 10 over 3 ranks: ranks hold 3, 4, 3 rows, so a view right
     * for one rank is wrong for the next. */
    {
        const cpa_split z3 = mk(CPA_SPLIT_ZIGZAG, 3, 1);
        cpa_tensor g10 = cpa_tensor_attn(g.buf, CPA_LAYOUT_BSHD, B, 10, N, D);
        cpa_tensor l3 = cpa_tensor_attn(l.buf, CPA_LAYOUT_BSHD, B, 3, N, D);
        cpa_tensor l4 = cpa_tensor_attn(l.buf, CPA_LAYOUT_BSHD, B, 4, N, D);
        CHECK_STATUS(cpa_shard(z3, 1, g10, l3), CPA_ERR_ARG);
        CHECK(has("rows of rank 1") && has("= [2, 4, 3, 2]") && has("[2, 3, 3, 2]"));
        CHECK_STATUS(cpa_unshard(z3, 1, l3, g10), CPA_ERR_ARG);
        CHECK(has("rows of rank 1") && has("= [2, 4, 3, 2]"));
        CHECK_STATUS(cpa_shard(z3, 0, g10, l4), CPA_ERR_ARG);
        CHECK(has("rows of rank 0") && has("= [2, 3, 3, 2]"));
        CHECK_STATUS(cpa_unshard(z3, 2, l4, g10), CPA_ERR_ARG);
        CHECK(has("rows of rank 2") && has("= [2, 3, 3, 2]"));
    }
    /* The whole global as "local" (forgot to shard). */
    CHECK_STATUS(cpa_shard(sp, 0, g.t, g.t), CPA_ERR_ARG);
    CHECK(has("rows of rank 0") && has("[2, 16, 3, 2]") && !has("S/P"));
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
    cpa_tensor l3d = l.t;
    l3d.ndim = 3;
    CHECK_STATUS(cpa_shard(sp, 0, g.t, l3d), CPA_ERR_ARG);
    CHECK(has("4-d"));
    /* Rank out of range; an S (global rows) the split cannot take. */
    CHECK_STATUS(cpa_shard(sp, 4, g.t, l.t), CPA_ERR_ARG);
    CHECK(has("outside"));
    CHECK_STATUS(cpa_unshard(sp, -1, l.t, g.t), CPA_ERR_ARG);
    CHECK(has("outside"));
    cpa_tensor g7 = cpa_tensor_attn(g.buf, CPA_LAYOUT_BSHD, B, 7, N, D);
    cpa_tensor l1row = cpa_tensor_attn(l.buf, CPA_LAYOUT_BSHD, B, 1, N, D);
    CHECK_STATUS(cpa_shard(sp, 0, g7, l1row), CPA_ERR_ARG);
    CHECK(has("shorter than") && has("S >= 8") && no_old_rule());
    CHECK_STATUS(cpa_unshard(sp, 0, l1row, g7), CPA_ERR_ARG);
    CHECK(has("shorter than"));
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
    /* S = 12 over 4 zigzag ranks, once refused, now shards: 8 chunks, starts
     * floor(12i/8) = 0,1,3,4,6,7,9,10,12; rank 0 = chunks 0 and 7 =
     * {0, 10, 11}. */
    {
        tu_tensor g12 = tu_attn(CPA_LAYOUT_BSHD, B, 12, N, D);
        tu_tensor l12 = tu_attn(CPA_LAYOUT_BSHD, B, 3, N, D);
        static const int64_t want[3] = {0, 10, 11};
        fill_encoded(g12.t);
        CHECK(cpa_split_rows(sp, 12, 0) == 3);
        CHECK_OK(cpa_shard(sp, 0, g12.t, l12.t));
        CHECK(local_matches(l12.t, want));
        free(g12.buf);
        free(l12.buf);
    }
    free(ref.buf);
    free(g.buf);
    free(l.buf);
}

/* Rank r's rows at a size near the int range: cpa_split_rows and every
 * position against the exact model (rows <= 16 here). */
static int large_matches(cpa_split sp, int64_t S, int r)
{
    int64_t pos[17] = {0}, bad = -1;
    const int64_t rows = model_rows(sp, S, r), got = cpa_split_rows(sp, S, r);
    /* positions only where the library's own count fits the buffer */
    int ok = rows >= 1 && rows <= 16 && got == rows;
    if (ok) {
        pos[rows] = -99;
        ok = cpa_split_positions(sp, S, r, pos) == CPA_OK && pos[rows] == -99;
    }
    for (int64_t i = 0; ok && i < rows; ++i)
        if (pos[i] != model_position(sp, S, r, i))
            ok = 0, bad = i;
    CHECK_MSG(ok, "kind %d P %d U %d S %lld rank %d: rows %lld (model %lld); row %lld at "
              "position %lld (model %lld)", sp.kind, sp.P, sp.U, (long long)S, r,
              (long long)got, (long long)rows, (long long)bad,
              (long long)(bad >= 0 ? pos[bad] : -1),
              (long long)(bad >= 0 ? model_position(sp, S, r, bad) : -1));
    return ok;
}

/* Sizes near the int range: no int overflow in the arithmetic (UBSan) and
 * the last ring rank still gets chunks P-1 and P; ragged S there too. */
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
    /* Shorter than the chunk count at INT_MAX ranks; the count in full. */
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, INT_MAX, 1), 5), CPA_ERR_ARG);
    CHECK(has("shorter than") && has("S >= 4294967294") && no_old_rule());
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, INT_MAX, 1), 5), CPA_ERR_ARG);
    CHECK(has("shorter than") && has("S >= 2147483647") && no_old_rule());
    CHECK_STATUS(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, INT_MAX, 1), 2 * (int64_t)INT_MAX - 1),
                 CPA_ERR_ARG);
    CHECK(has("S >= 4294967294"));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, INT_MAX, 1), 2 * (int64_t)INT_MAX));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_ZIGZAG, INT_MAX, 1), 2 * (int64_t)INT_MAX * 3));
    CHECK_OK(cpa_split_check(mk(CPA_SPLIT_CONTIGUOUS, INT_MAX, 1), (int64_t)INT_MAX));

    /* Ragged S near the int range, against the exact 128-bit model. */
    int ok = 1;
    const cpa_split z30 = mk(CPA_SPLIT_ZIGZAG, P, 1), z30u2 = mk(CPA_SPLIT_ZIGZAG, P, 2);
    const cpa_split c30u4 = mk(CPA_SPLIT_CONTIGUOUS, P, 4);
    const cpa_split cmax = mk(CPA_SPLIT_CONTIGUOUS, INT_MAX, 1);
    const cpa_split zmax = mk(CPA_SPLIT_ZIGZAG, INT_MAX, 1);
    const int ranks30[] = {0, 1, P / 2 - 1, P / 2, P / 2 + 1, P - 2, P - 1};
    const int ranksmax[] = {0, 1, INT_MAX / 2, INT_MAX / 2 + 1, INT_MAX - 2, INT_MAX - 1};
    for (size_t i = 0; i < sizeof ranks30 / sizeof ranks30[0]; ++i) {
        ok &= large_matches(z30, 3 * (int64_t)P + 7, ranks30[i]);
        ok &= large_matches(z30, 4 * (int64_t)P - 1, ranks30[i]);
        ok &= large_matches(z30u2, 4 * (int64_t)P + 3, ranks30[i]);
        ok &= large_matches(c30u4, 5 * (int64_t)P + 3, ranks30[i]);
    }
    for (size_t i = 0; i < sizeof ranksmax / sizeof ranksmax[0]; ++i) {
        ok &= large_matches(cmax, 3 * (int64_t)INT_MAX - 1, ranksmax[i]);
        ok &= large_matches(zmax, 2 * (int64_t)INT_MAX + 1, ranksmax[i]);
        ok &= large_matches(zmax, 4 * (int64_t)INT_MAX - 1, ranksmax[i]);
    }
    CHECK(ok);
    /* By hand, P = INT_MAX, n = 2P chunks, S = 2n - 1: chunk i starts at
     * floor(i(2n-1)/n) = 2i - 1 (0 < i < n), so chunk 0 = {0}, chunk n-1 =
     * {S-2, S-1}: rank 0 holds {0, S-2, S-1}; rank P-1 holds chunks P-1 and
     * P = {2P-3, 2P-2} + {2P-1, 2P}. */
    {
        const int64_t n = 2 * (int64_t)INT_MAX, S2 = 2 * n - 1, P2 = INT_MAX;
        const int64_t r0[3] = {0, S2 - 2, S2 - 1};
        const int64_t rl[4] = {2 * P2 - 3, 2 * P2 - 2, 2 * P2 - 1, 2 * P2};
        CHECK(positions_equal(zmax, S2, 0, r0, 3));
        CHECK(positions_equal(zmax, S2, INT_MAX - 1, rl, 4));
    }
}

/* Cumulative document lengths of a long-tailed mix (one long document and
 * many short ones), cut at S: the boundaries below S, then S. */
static int cu_for(int64_t S, int64_t *cu)
{
    static const int64_t base[] = {0, 600, 610, 640, 700, 720, 800, 830, 900, 1000};
    int n = 0;
    for (size_t i = 0; i < sizeof base / sizeof base[0] && base[i] < S; ++i)
        cu[n++] = base[i];
    cu[n++] = S;
    return n - 1; /* documents */
}

/* The document-aware assignment: a permutation of the chunks, every
 * position held once at its place, for S divisible by P*cpr and ragged;
 * balance no worse than zigzag on packed documents and exact on a dense
 * causal sequence; bad tables refused. */
static void test_document_balance(void)
{
    static const int64_t Ss[] = {1024, 1000, 997, 1023};
    const cpa_mask dense = {CPA_MASK_CAUSAL, 0, NULL, 0};
    int cases = 0, ragged = 0;
    for (size_t si = 0; si < sizeof Ss / sizeof Ss[0]; ++si) {
        const int64_t S = Ss[si];
        int64_t cu[16];
        const int ndocs = cu_for(S, cu);
        const cpa_mask docs = {CPA_MASK_CAUSAL, 0, cu, ndocs};
        for (int P = 1; P <= 8; ++P)
            for (int cpr = 1; cpr <= 4; cpr *= 2) {
                int32_t table[64];
                for (int i = 0; i < 64; ++i)
                    table[i] = -1;
                CHECK_OK(cpa_split_balance(S, P, cpr, docs, table));
                const cpa_split sp = mk_chunks(P, cpr, table);
                CHECK_OK(cpa_split_check(sp, S));
                /* Every position exactly once, at the model's place; rows ==
                 * cpa_split_rows; pieces in row order. */
                CHECK_MSG(check_partition(sp, S), "S %lld P %d cpr %d", (long long)S, P, cpr);
                CHECK(table[P * cpr] == -1); /* nothing past the P*cpr entries */
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
                    CHECK(row == cpa_split_rows(sp, S, r));
                }
                CHECK(held == S);
                /* Without a table: the most any table could give a rank. */
                const cpa_split no_table = mk_chunks(P, cpr, NULL);
                CHECK(cpa_split_max_rows(no_table, S) >= cpa_split_max_rows(sp, S));
                const cpa_split zz = mk(CPA_SPLIT_ZIGZAG, P, 1);
                const double ib = cpa_split_imbalance(sp, S, docs),
                             iz = cpa_split_imbalance(zz, S, docs);
                CHECK_MSG(ib >= 1.0 && ib <= iz + 1e-12, "S=%lld P=%d cpr=%d: documents %.3f, "
                          "zigzag %.3f", (long long)S, P, cpr, ib, iz);
                if (S == 1024 && P == 4 && cpr == 4)
                    printf("  imbalance at P=4 (visible pairs, max/mean): zigzag %.3f, documents "
                           "%.3f\n", iz, ib);
                if (S % (2 * P) == 0)
                    CHECK(cpa_split_imbalance(zz, S, dense) < 1.0 + 1e-12);
                ++cases;
                ragged += S % ((int64_t)P * cpr) != 0;
            }
    }
    CHECK(cases == 4 * 8 * 3 && ragged > 40);
    /* A ragged case by hand: S = 1000, P = 3, cpr = 4: 12 chunks
     * of floor(1000i/12) = 0, 83, 166, 250, 333, 416, 500, 583, 666, 750,
     * 833, 916, 1000 (83 or 84 long); each rank holds 4 of them. */
    {
        int64_t cu[16];
        const cpa_mask docs = {CPA_MASK_CAUSAL, 0, cu, cu_for(1000, cu)};
        int32_t table[12];
        CHECK_OK(cpa_split_balance(1000, 3, 4, docs, table));
        const cpa_split sp = mk_chunks(3, 4, table);
        int64_t sum = 0;
        for (int r = 0; r < 3; ++r) {
            const int64_t rows = cpa_split_rows(sp, 1000, r);
            CHECK(rows >= 4 * 83 && rows <= 4 * 84);
            sum += rows;
        }
        CHECK(sum == 1000);
    }
    /* Bad tables: a repeated chunk, a rank's chunks out of order, no table;
     * a good table with S shorter than its chunks. */
    int32_t rep[4] = {0, 1, 1, 3}, order[4] = {1, 0, 2, 3}, good[4] = {0, 3, 1, 2};
    cpa_split b = mk_chunks(2, 2, rep);
    CHECK(cpa_split_check(b, 64) == CPA_ERR_ARG);
    b.chunk_of = order;
    CHECK(cpa_split_check(b, 64) == CPA_ERR_ARG);
    CHECK(has("ascending"));
    b.chunk_of = NULL;
    CHECK(cpa_split_check(b, 64) == CPA_ERR_ARG);
    b.chunk_of = good;
    CHECK(cpa_split_check(b, 3) == CPA_ERR_ARG);
    CHECK(has("shorter than") && has("S >= 4"));
    CHECK_OK(cpa_split_check(b, 4));
    CHECK_OK(cpa_split_check(b, 65));
    /* cpa_split_balance needs only S >= P*cpr (S = 66 at P*cpr = 4, once
     * refused, is fine). */
    int32_t t[8];
    CHECK_OK(cpa_split_balance(66, 2, 2, dense, t));
    CHECK_OK(cpa_split_balance(4, 2, 2, dense, t));
    CHECK(cpa_split_balance(3, 2, 2, dense, t) == CPA_ERR_ARG);
    CHECK(has("S >= P*cpr"));
    CHECK(cpa_split_balance(7, 2, 4, dense, t) == CPA_ERR_ARG);
    CHECK(has("S >= P*cpr"));
    CHECK_OK(cpa_split_balance(8, 2, 4, dense, t));
    CHECK(cpa_split_balance(64, 0, 2, dense, t) == CPA_ERR_ARG);
    CHECK(cpa_split_balance(64, 2, 0, dense, t) == CPA_ERR_ARG);
    CHECK(cpa_split_balance(64, 2, CPA_SPLIT_MAX_PIECES + 1, dense, t) == CPA_ERR_ARG);
    CHECK(cpa_split_balance(64, 2, 2, dense, NULL) == CPA_ERR_ARG);
    /* Chunks per rank of --cp-load-balance documents: 4 from S = 4P, 2
     * from 2P, 1 from P, else 0. */
    for (int P = 1; P <= MAX_P; ++P) {
        const int64_t p = P;
        CHECK(cpa_split_document_chunks(4 * p, P) == 4);
        CHECK(cpa_split_document_chunks(100 * p, P) == 4);
        CHECK(cpa_split_document_chunks(4 * p - 1, P) == 2);
        CHECK(cpa_split_document_chunks(2 * p, P) == 2);
        CHECK(cpa_split_document_chunks(2 * p - 1, P) == 1);
        CHECK(cpa_split_document_chunks(p, P) == 1);
        CHECK(cpa_split_document_chunks(p - 1, P) == 0);
    }
    CHECK(cpa_split_document_chunks(1001, 3) == 4 && cpa_split_document_chunks(11, 3) == 2 &&
          cpa_split_document_chunks(5, 3) == 1 && cpa_split_document_chunks(2, 3) == 0);
    CHECK(cpa_split_document_chunks(64, 0) == 0 && cpa_split_document_chunks(64, -1) == 0);
    CHECK(cpa_split_document_chunks(4 * (int64_t)INT_MAX, INT_MAX) == 4);
    CHECK(cpa_split_document_chunks(4 * (int64_t)INT_MAX - 1, INT_MAX) == 2);
}

int main(void)
{
    RUN_TEST(test_partition_all_configs);
    RUN_TEST(test_chunks_partition);
    RUN_TEST(test_contiguous_with_U);
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
