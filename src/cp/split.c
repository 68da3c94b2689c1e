/*
 * split.c — how a global sequence is cut across the ranks of a CP group
 * (contiguous, or zigzag for causal load balance, optionally followed by a
 * contiguous cut into U Ulysses parts for the hybrid), the global positions
 * of each rank's rows, and copies between global and local tensors.
 *
 * Any length S: a sequence cut into n chunks has chunk i at
 * [i·S/n, (i+1)·S/n) (rounded down), so ranks hold lengths that differ by at
 * most one row per chunk, and every engine works with each rank's own count.
 *
 * The third kind, CHUNKS, is any assignment of P*cpr such chunks to the
 * ranks (cpr each); cpa_split_balance chooses one from the documents of a
 * mask so that every rank sees about the same number of visible pairs.
 *
 * Everything derives from cpa_split_pieces: a rank's local rows are one to
 * eight pieces {row, len, pos}.  The kernels take the same pieces, so what a
 * rank holds and what it computes can never disagree.
 */
#include "cp_internal.h"
#include "kernel_internal.h" /* cpa_mask_range */

#include <stdlib.h>
#include <string.h>

/* Chunk i of a sequence of S positions cut into n nearly equal chunks:
 * [i·S/n, (i+1)·S/n) rounded down, so lengths differ by at most one and
 * the longer chunks are spread evenly (any S, any n <= S). */
static int64_t chunk_start(int64_t S, int64_t n, int64_t i)
{
    /* i·S exceeds int64 for long sequences over many chunks: 128 bits. */
    return (int64_t)((__int128)i * S / n);
}

/* The chunks a split cuts the sequence into (every one must hold a row). */
static int64_t split_chunks(cpa_split split)
{
    return split.kind == CPA_SPLIT_CONTIGUOUS ? split.P
           : split.kind == CPA_SPLIT_CHUNKS   ? (int64_t)split.P * split.chunks_per_rank
                                              : 2 * (int64_t)split.P; /* zigzag: 2R chunks cut
                                                                         into U parts */
}

cpa_status cpa_split_check(cpa_split split, int64_t S)
{
    if (split.kind != CPA_SPLIT_CONTIGUOUS && split.kind != CPA_SPLIT_ZIGZAG &&
        split.kind != CPA_SPLIT_CHUNKS)
        return cpa_error(CPA_ERR_ARG, "unknown split kind %d", (int)split.kind);
    if (split.P < 1)
        return cpa_error(CPA_ERR_ARG, "split over %d ranks: need at least 1", split.P);
    if (split.U < 1 || split.P % split.U != 0)
        return cpa_error(CPA_ERR_ARG,
                         "split: Ulysses degree %d must be >= 1 and divide the %d ranks", split.U,
                         split.P);
    if (S < 1)
        return cpa_error(CPA_ERR_ARG, "--seq-length %lld: must be positive", (long long)S);
    if (split.kind == CPA_SPLIT_CHUNKS) {
        const int cpr = split.chunks_per_rank;
        if (cpr < 1 || cpr > CPA_SPLIT_MAX_PIECES || !split.chunk_of)
            return cpa_error(CPA_ERR_ARG, "chunk split: %d chunks per rank (1..%d) and a chunk "
                             "table are needed", cpr, CPA_SPLIT_MAX_PIECES);
    }
    /* Any length: chunks differ by at most one position, but each must hold
     * one (the zigzag's 2P chunks also give each of the U parts a row). */
    const int64_t n = split_chunks(split);
    if (S < n)
        return cpa_error(CPA_ERR_ARG,
                         "--seq-length %lld is shorter than the %lld chunks the %s split cuts "
                         "it into (%s); every chunk needs at least one position: S >= %lld",
                         (long long)S, (long long)n,
                         split.kind == CPA_SPLIT_CONTIGUOUS ? "contiguous"
                         : split.kind == CPA_SPLIT_ZIGZAG   ? "causal zigzag"
                                                            : "document-balanced",
                         split.kind == CPA_SPLIT_CONTIGUOUS ? "one per rank"
                         : split.kind == CPA_SPLIT_ZIGZAG   ? "two per rank"
                                                            : "chunks per rank x ranks",
                         (long long)n);
    if (split.kind == CPA_SPLIT_CHUNKS) {
        const int cpr = split.chunks_per_rank, nc = split.P * cpr;
        char *seen = calloc((size_t)nc, 1);
        if (!seen)
            return cpa_error(CPA_ERR_NOMEM, "chunk split: out of memory");
        int bad = -1;
        for (int i = 0; i < nc && bad < 0; ++i) {
            const int32_t c = split.chunk_of[i];
            if (c < 0 || c >= nc || seen[c] || (i % cpr && c <= split.chunk_of[i - 1]))
                bad = i;
            else
                seen[c] = 1;
        }
        free(seen);
        if (bad >= 0)
            return cpa_error(CPA_ERR_ARG, "chunk split: entry %d (%d) of the table: every chunk "
                             "0..%d must appear once, each rank's in ascending order", bad,
                             (int)split.chunk_of[bad], nc - 1);
    }
    return CPA_OK;
}

cpa_status cpa_split_pieces(cpa_split split, int64_t S, int r, cpa_piece *pieces, int *count)
{
    CPA_TRY(cpa_split_check(split, S));
    if (r < 0 || r >= split.P)
        return cpa_error(CPA_ERR_ARG, "rank %d is outside the %d ranks of the split", r, split.P);
    if (!pieces || !count)
        return cpa_error(CPA_ERR_ARG, "cpa_split_pieces: pieces and count must not be NULL");
    if (split.kind == CPA_SPLIT_CONTIGUOUS) { /* chunk rho of R, then part u of U */
        const int64_t R = split.P / split.U, rho = r / split.U, u = r % split.U;
        const int64_t a = chunk_start(S, R, rho), L = chunk_start(S, R, rho + 1) - a;
        const int64_t lo = chunk_start(L, split.U, u), hi = chunk_start(L, split.U, u + 1);
        pieces[0] = (cpa_piece){0, hi - lo, a + lo};
        *count = 1;
        return CPA_OK;
    }
    if (split.kind == CPA_SPLIT_CHUNKS) { /* adjacent chunks make one piece */
        const int cpr = split.chunks_per_rank;
        const int64_t nc = (int64_t)split.P * cpr;
        int n = 0;
        int64_t row = 0;
        for (int i = 0; i < cpr; ++i) {
            const int64_t c = split.chunk_of[r * cpr + i];
            const int64_t pos = chunk_start(S, nc, c), len = chunk_start(S, nc, c + 1) - pos;
            if (n && pieces[n - 1].pos + pieces[n - 1].len == pos)
                pieces[n - 1].len += len;
            else
                pieces[n++] = (cpa_piece){row, len, pos};
            row += len;
        }
        *count = n;
        return CPA_OK;
    }
    /* Zigzag over R ring ranks: ring rank rho holds chunks rho and 2R-1-rho
     * of 2R (c0 + c1 rows), cut contiguously into U parts; part u is mine. */
    /* int64 throughout: 2R overflows an int once P/U > 2^30. */
    const int64_t R = split.P / split.U, rho = r / split.U, u = r % split.U;
    const int64_t starts[2] = {chunk_start(S, 2 * R, rho), chunk_start(S, 2 * R, 2 * R - 1 - rho)};
    const int64_t c0 = chunk_start(S, 2 * R, rho + 1) - starts[0];
    const int64_t L = c0 + chunk_start(S, 2 * R, 2 * R - rho) - starts[1];
    const int64_t lo = chunk_start(L, split.U, u), hi = chunk_start(L, split.U, u + 1);
    const int64_t edge[3] = {0, c0, L}; /* offsets in [0, L) of the two chunks */
    int n = 0;
    for (int h = 0; h < 2; ++h) {
        int64_t a = lo > edge[h] ? lo : edge[h], b = hi < edge[h + 1] ? hi : edge[h + 1];
        if (b > a)
            pieces[n++] = (cpa_piece){a - lo, b - a, starts[h] + (a - edge[h])};
    }
    *count = n;
    return CPA_OK;
}

int64_t cpa_split_rows(cpa_split split, int64_t S, int r)
{
    cpa_piece p[CPA_SPLIT_MAX_PIECES];
    int n = 0;
    if (cpa_split_pieces(split, S, r, p, &n) != CPA_OK)
        return -1;
    int64_t rows = 0;
    for (int i = 0; i < n; ++i)
        rows += p[i].len;
    return rows;
}

int64_t cpa_split_max_rows(cpa_split split, int64_t S)
{
    if (split.kind == CPA_SPLIT_CHUNKS && !split.chunk_of && split.P > 0 &&
        split.chunks_per_rank > 0) { /* no table yet: the most any table can give */
        const int64_t n = (int64_t)split.P * split.chunks_per_rank;
        return split.chunks_per_rank * ((S + n - 1) / n);
    }
    int64_t most = -1;
    for (int r = 0; r < split.P; ++r) {
        const int64_t n = cpa_split_rows(split, S, r);
        if (n < 0)
            return -1;
        most = n > most ? n : most;
    }
    return most;
}

cpa_status cpa_split_positions(cpa_split split, int64_t S, int r, int64_t *positions)
{
    cpa_piece p[CPA_SPLIT_MAX_PIECES];
    int n;
    CPA_TRY(cpa_split_pieces(split, S, r, p, &n));
    if (!positions)
        return cpa_error(CPA_ERR_ARG, "cpa_split_positions: positions is NULL");
    for (int i = 0; i < n; ++i)
        for (int64_t j = 0; j < p[i].len; ++j)
            positions[p[i].row + j] = p[i].pos + j;
    return CPA_OK;
}

/* Copy rows between a global and a local [B, *, N, D] view. */
static cpa_status copy_rows(cpa_split split, int r, cpa_tensor global, cpa_tensor local,
                            int to_local)
{
    if (global.ndim != 4 || local.ndim != 4 || !global.data || !local.data)
        return cpa_error(CPA_ERR_ARG, "shard: global and local must be 4-d [B, S, N, D] views "
                         "with data");
    const int64_t S = global.shape[1];
    cpa_piece p[CPA_SPLIT_MAX_PIECES];
    int n;
    CPA_TRY(cpa_split_pieces(split, S, r, p, &n));
    const int64_t rows = cpa_split_rows(split, S, r);
    if (local.shape[0] != global.shape[0] || local.shape[1] != rows ||
        local.shape[2] != global.shape[2] || local.shape[3] != global.shape[3])
        return cpa_error(CPA_ERR_ARG,
                         "shard: local view is [%lld, %lld, %lld, %lld] but must be [B, rows of "
                         "rank %d, N, D] = [%lld, %lld, %lld, %lld]", (long long)local.shape[0],
                         (long long)local.shape[1], (long long)local.shape[2],
                         (long long)local.shape[3], r, (long long)global.shape[0],
                         (long long)rows, (long long)global.shape[2],
                         (long long)global.shape[3]);
    const int64_t B = global.shape[0], N = global.shape[2], D = global.shape[3];
    for (int i = 0; i < n; ++i)
        for (int64_t b = 0; b < B; ++b)
            for (int64_t j = 0; j < p[i].len; ++j)
                for (int64_t h = 0; h < N; ++h) {
                    float *g = global.data + b * global.stride[0] + (p[i].pos + j) * global.stride[1] +
                               h * global.stride[2];
                    float *l = local.data + b * local.stride[0] + (p[i].row + j) * local.stride[1] +
                               h * local.stride[2];
                    for (int64_t d = 0; d < D; ++d) {
                        if (to_local)
                            l[d * local.stride[3]] = g[d * global.stride[3]];
                        else
                            g[d * global.stride[3]] = l[d * local.stride[3]];
                    }
                }
    return CPA_OK;
}

cpa_status cpa_shard(cpa_split split, int r, cpa_tensor global, cpa_tensor local)
{
    return copy_rows(split, r, global, local, 1);
}

cpa_status cpa_unshard(cpa_split split, int r, cpa_tensor local, cpa_tensor global)
{
    return copy_rows(split, r, global, local, 0);
}

/* ---- document-aware balance ------------------------------------------------ */

/* Visible keys of the queries at positions [a, b) against 0..S-1. */
static double visible_keys(cpa_mask m, int64_t S, int64_t a, int64_t b)
{
    double pairs = 0.0;
    for (int64_t p = a; p < b; ++p) {
        int64_t lo, hi;
        cpa_mask_range(m, p, &lo, &hi);
        lo = lo < 0 ? 0 : lo;
        hi = hi > S - 1 ? S - 1 : hi;
        if (hi >= lo)
            pairs += (double)(hi - lo + 1);
    }
    return pairs;
}

typedef struct chunk_cost {
    double cost;
    int32_t chunk;
} chunk_cost;

static int by_cost_desc(const void *a, const void *b)
{
    const chunk_cost *x = a, *y = b;
    if (x->cost != y->cost)
        return x->cost < y->cost ? 1 : -1;
    return x->chunk - y->chunk; /* deterministic: every rank computes the same table */
}

static int by_value(const void *a, const void *b)
{
    return *(const int32_t *)a - *(const int32_t *)b;
}

cpa_status cpa_split_balance(int64_t S, int P, int cpr, cpa_mask mask, int32_t *chunk_of)
{
    if (P < 1 || cpr < 1 || cpr > CPA_SPLIT_MAX_PIECES || !chunk_of || S < (int64_t)P * cpr)
        return cpa_error(CPA_ERR_ARG, "cpa_split_balance: S %lld, P %d, %d chunks per rank: "
                         "need P >= 1, 1 <= cpr <= %d and S >= P*cpr", (long long)S, P,
                         cpr, CPA_SPLIT_MAX_PIECES);
    CPA_TRY(cpa_mask_check(mask, S));
    const int n = P * cpr;
    chunk_cost *cc = cpa_malloc(sizeof *cc * (size_t)n, "chunk costs");
    double *load = cpa_calloc(sizeof *load * (size_t)P, "rank loads");
    int *fill = cpa_calloc(sizeof *fill * (size_t)P, "rank fills");
    if (!cc || !load || !fill) {
        cpa_free(cc), cpa_free(load), cpa_free(fill);
        return CPA_ERR_NOMEM;
    }
    for (int c = 0; c < n; ++c)
        cc[c] = (chunk_cost){
            visible_keys(mask, S, chunk_start(S, n, c), chunk_start(S, n, c + 1)), c};
    qsort(cc, (size_t)n, sizeof *cc, by_cost_desc);
    for (int i = 0; i < n; ++i) {
        int best = -1;
        for (int r = 0; r < P; ++r) /* the least loaded rank with room; ties: lowest rank */
            if (fill[r] < cpr && (best < 0 || load[r] < load[best]))
                best = r;
        chunk_of[best * cpr + fill[best]++] = cc[i].chunk;
        load[best] += cc[i].cost;
    }
    for (int r = 0; r < P; ++r)
        qsort(chunk_of + r * cpr, (size_t)cpr, sizeof *chunk_of, by_value);
    cpa_free(cc), cpa_free(load), cpa_free(fill);
    return CPA_OK;
}

cpa_status cpa_split_fill_table(cpa_split *split, int64_t S, cpa_mask mask, int32_t **table)
{
    *table = NULL;
    if (split->kind != CPA_SPLIT_CHUNKS)
        return CPA_OK;
    const int n = split->P * split->chunks_per_rank;
    if (n < 1)
        return cpa_error(CPA_ERR_ARG, "chunk split: %d chunks per rank over %d ranks",
                         split->chunks_per_rank, split->P);
    if (!(*table = cpa_malloc(sizeof(int32_t) * (size_t)n, "the chunk assignment")))
        return CPA_ERR_NOMEM;
    cpa_status s = cpa_split_balance(S, split->P, split->chunks_per_rank, mask, *table);
    if (s == CPA_OK) {
        split->chunk_of = *table;
        s = cpa_split_check(*split, S);
    }
    if (s != CPA_OK) {
        cpa_free(*table);
        *table = NULL;
        split->chunk_of = NULL;
    }
    return s;
}

int cpa_split_document_chunks(int64_t S, int P)
{
    /* Four chunks per rank where every chunk keeps a position, else fewer. */
    return P < 1 ? 0 : S >= 4 * (int64_t)P ? 4 : S >= 2 * (int64_t)P ? 2 : S >= P ? 1 : 0;
}

double cpa_split_imbalance(cpa_split split, int64_t S, cpa_mask mask)
{
    if (cpa_split_check(split, S) != CPA_OK || cpa_mask_check(mask, S) != CPA_OK)
        return -1.0;
    double mx = 0.0, sum = 0.0;
    for (int r = 0; r < split.P; ++r) {
        cpa_piece pc[CPA_SPLIT_MAX_PIECES];
        int np = 0;
        cpa_split_pieces(split, S, r, pc, &np);
        double pairs = 0.0;
        for (int i = 0; i < np; ++i)
            pairs += visible_keys(mask, S, pc[i].pos, pc[i].pos + pc[i].len);
        mx = pairs > mx ? pairs : mx;
        sum += pairs;
    }
    return sum > 0 ? mx / (sum / split.P) : 1.0;
}
