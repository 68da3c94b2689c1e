/*
 * test_a2a.c — exact tests of the Ulysses all-to-alls (cp_internal.h:
 * cpa_ulysses_seq_to_heads / cpa_ulysses_heads_to_seq), ALGORITHMS.md §4.
 * MPI_COMM_WORLD (duplicated) is the Ulysses group, U = its size.  Every
 * float encodes (batch, global position, head, d) as an integer below 2^24,
 * so it is exact in fp32 and every comparison is ==: a row from the wrong
 * rank, a head from the wrong group, a position out of rank order or a
 * truncated slab all show up as mismatches.  Buffers that should be
 * overwritten are poisoned with NaN first (NaN != anything).  For each
 * shape (B in {1,2}, Sl in {3,5}, H=8 with G in {8,2,1} and H=12 with G in
 * {3,4} where U divides H, Dqk=4, Dv=3) and every pair (layout of the
 * head-sharded side = x.layout, layout of the local sequence-sharded view,
 * plus a padded non-dense local view) it checks:
 *   1. Q: group rank j holds query heads j*Hl.. for all U*Sl rows, the rows
 *      concatenated in rank order (contiguous split: row = rank*Sl + s);
 *   2. K and V: the KV head map (G % U == 0: heads j*G/U..; else each rank
 *      gets the KV head of each of its query heads at local index
 *      i / (Hl/Gl)) and the data that arrived under it;
 *   3. the round trip heads_to_seq(seq_to_heads(t)) == t bit-exactly, into
 *      the same layout (memcmp of the whole buffer) and into another one;
 *   4. the replica sum: heads_to_seq with accumulate=1 of a dK whose value
 *      depends on the sending rank gives, for each local KV head, the sum
 *      over every (rank, slot) that holds a replica of it;
 *   5. LSE-shaped tensors: [B, H, Sl] seen as a [B, Sl, H, 1] view goes
 *      through seq_to_heads (checked) and back bit-exactly.
 * The verdict is summed over all ranks and printed by rank 0.
 */
#include "cp_internal.h"
#include "test.h"

#include <mpi.h>
#include <string.h>

static int rank_, P_;

/* The value of element (b, pos, head, d) in tests 1-3 and 5. */
static float code(int64_t b, int64_t pos, int64_t head, int64_t d)
{
    return (float)(((b * 1000 + pos) * 64 + head) * 16 + d);
}

/* The dK value rank `r` sends in test 4: small enough that a sum over up
 * to 16 replicas is still an exact integer in fp32. */
static float dk_code(int r, int64_t b, int64_t pos, int64_t head, int64_t d)
{
    return (float)(64 * (((b * 64 + pos) * 16 + head) * 8 + d) + (r + 1));
}

static float *at(cpa_tensor t, int64_t b, int64_t s, int64_t n, int64_t d)
{
    return t.data + b * t.stride[0] + s * t.stride[1] + n * t.stride[2] + d * t.stride[3];
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

static void poison(float *p, int64_t n) { memset(p, 0xff, sizeof(float) * (size_t)n); }

/* Local (sequence-sharded) views: kinds 0-2 are the three layouts, kind 3
 * is a bshd view whose rows are padded by PAD floats (not dense). */
enum { NKINDS = 4, PAD = 3 };

static int64_t local_floats(int kind, int64_t B, int64_t S, int64_t N, int64_t D)
{
    return B * S * N * (D + (kind == 3 ? PAD : 0));
}

static cpa_tensor local_view(float *buf, int kind, int64_t B, int64_t S, int64_t N, int64_t D)
{
    if (kind < 3)
        return cpa_tensor_attn(buf, (cpa_layout)kind, B, S, N, D);
    cpa_tensor t = cpa_tensor_attn(buf, CPA_LAYOUT_BSHD, B, S, N, D + PAD);
    t.shape[3] = D;
    return t;
}

static const char *kind_name(int kind)
{
    return kind < 3 ? cpa_layout_name((cpa_layout)kind) : "bshd+pad";
}

/* lse [B, N, S] seen as a [B, S, N, 1] view (as ulysses.c does). */
static cpa_tensor lse_as_rows(cpa_tensor lse)
{
    cpa_tensor t = lse;
    t.ndim = 4;
    t.shape[1] = lse.shape[2], t.shape[2] = lse.shape[1], t.shape[3] = 1;
    t.stride[1] = lse.stride[2], t.stride[2] = lse.stride[1], t.stride[3] = 1;
    return t;
}

typedef struct shape_case {
    int64_t B, Sl, H, G, Dqk, Dv;
} shape_case;

static char where_[160];

/* Mismatches of the head-sharded `mine` [B, Sf, nl, D] against code() for
 * the heads heads[u*nl ..]; the first one is reported. */
static int64_t check_mine(cpa_tensor mine, const int *heads, int64_t nl, const char *what)
{
    int64_t bad = 0;
    for (int64_t b = 0; b < mine.shape[0]; ++b)
        for (int64_t pos = 0; pos < mine.shape[1]; ++pos)
            for (int64_t i = 0; i < nl; ++i)
                for (int64_t d = 0; d < mine.shape[3]; ++d) {
                    const float got = *at(mine, b, pos, i, d);
                    const float want = code(b, pos, heads[rank_ * nl + i], d);
                    if (got != want && bad++ == 0)
                        fprintf(stderr,
                                "rank %d %s %s: [b=%lld pos=%lld i=%lld d=%lld] = %.0f, want "
                                "%.0f (head %d)\n",
                                rank_, where_, what, (long long)b, (long long)pos, (long long)i,
                                (long long)d, got, want, heads[rank_ * nl + i]);
                }
    return bad;
}

/* Logical bit-exact comparison of two local views of the same shape. */
static int64_t check_same(cpa_tensor a, cpa_tensor b, const char *what)
{
    int64_t bad = 0;
    for (int64_t i0 = 0; i0 < a.shape[0]; ++i0)
        for (int64_t i1 = 0; i1 < a.shape[1]; ++i1)
            for (int64_t i2 = 0; i2 < a.shape[2]; ++i2)
                for (int64_t i3 = 0; i3 < a.shape[3]; ++i3)
                    if (!same_bits(*at(a, i0, i1, i2, i3), *at(b, i0, i1, i2, i3)) && bad++ == 0)
                        fprintf(stderr, "rank %d %s %s: [%lld,%lld,%lld,%lld] = %g, want %g\n",
                                rank_, where_, what, (long long)i0, (long long)i1, (long long)i2,
                                (long long)i3, *at(b, i0, i1, i2, i3), *at(a, i0, i1, i2, i3));
    return bad;
}

/* The head maps (checks 1-2 without data): q_heads is the contiguous head
 * group, kv_heads follows the replication rule and gives every local query
 * head its KV head at local index i / (Hl/Gl).  Returns 0 when a map names
 * a head that does not exist (the data tests would read out of bounds);
 * the maps are the same on every rank, so all ranks skip together. */
static int check_maps(const cpa_ulysses *x)
{
    const int U = x->U;
    const int64_t H = x->H, G = x->G, Hl = x->Hl, Gl = x->Gl, hpg = H / G;
    CHECK_MSG(Hl * U == H && x->Sf == U * x->Sl, "%s: Hl %lld Sf %lld", where_, (long long)Hl,
              (long long)x->Sf);
    CHECK_MSG(Gl == cpa_ulysses_kv_heads(H, G, U) && Gl >= 1 && Hl % Gl == 0, "%s: Gl %lld",
              where_, (long long)Gl);
    if (G % U == 0)
        CHECK_MSG(Gl == G / U, "%s: Gl %lld, want G/U", where_, (long long)Gl);
    int bad_q = 0, bad_kv = 0, out_of_range = 0;
    for (int j = 0; j < U; ++j) {
        for (int64_t i = 0; i < Hl; ++i)
            bad_q += x->q_heads[j * Hl + i] != (int)(j * Hl + i);
        if (G % U == 0)
            for (int64_t g = 0; g < Gl; ++g)
                bad_kv += x->kv_heads[j * Gl + g] != (int)(j * Gl + g);
        for (int64_t i = 0; i < Hl && Hl % Gl == 0; ++i) {
            const int q = x->q_heads[j * Hl + i];
            if (x->kv_heads[j * Gl + i / (Hl / Gl)] != (int)(q / hpg) && bad_kv++ == 0)
                fprintf(stderr, "%s: rank %d query head %d wants KV head %lld, slot %lld has %d\n",
                        where_, j, q, (long long)(q / hpg), (long long)(i / (Hl / Gl)),
                        x->kv_heads[j * Gl + i / (Hl / Gl)]);
        }
        for (int64_t i = 0; i < Hl; ++i)
            out_of_range += x->q_heads[j * Hl + i] < 0 || x->q_heads[j * Hl + i] >= H;
        for (int64_t g = 0; g < Gl; ++g)
            out_of_range += x->kv_heads[j * Gl + g] < 0 || x->kv_heads[j * Gl + g] >= G;
    }
    CHECK_MSG(bad_q == 0, "%s: q_heads is not the contiguous head split", where_);
    CHECK_MSG(bad_kv == 0, "%s: kv_heads breaks the replication rule", where_);
    CHECK_MSG(out_of_range == 0, "%s: a head map names a head that does not exist", where_);
    return out_of_range == 0 && Hl >= 1 && Gl >= 1 && Hl % Gl == 0;
}

/* Tests 1-3 for one tensor: fill a local view with code(), send it to the
 * head-sharded buffer `hbuf`, check it, bring it back (same kind, then
 * another kind) and compare. */
static void one_tensor(cpa_ulysses *x, int kind, const int *heads, int64_t N, int64_t nl,
                       int64_t D, float *hbuf, const char *what)
{
    const int64_t B = x->B, Sl = x->Sl, n = local_floats(kind, B, Sl, N, D);
    float *src = malloc(sizeof(float) * (size_t)n), *back = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; ++i)
        src[i] = -1.0f; /* padding sentinel */
    cpa_tensor local = local_view(src, kind, B, Sl, N, D);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < Sl; ++s)
            for (int64_t h = 0; h < N; ++h)
                for (int64_t d = 0; d < D; ++d)
                    *at(local, b, s, h, d) = code(b, rank_ * Sl + s, h, d);

    /* 1-2: sequence -> heads. */
    poison(hbuf, B * x->Sf * nl * D);
    cpa_tensor mine = cpa_tensor_attn(hbuf, x->layout, B, x->Sf, nl, D);
    CHECK_OK(cpa_ulysses_seq_to_heads(x, local, heads, nl, mine));
    CHECK_MSG(check_mine(mine, heads, nl, what) == 0, "%s %s seq_to_heads", where_, what);

    /* 3: heads -> sequence into the same kind: the whole buffer (padding
     * included) must come back bit for bit. */
    memcpy(back, src, sizeof(float) * (size_t)n); /* keeps the padding sentinels */
    cpa_tensor lb = local_view(back, kind, B, Sl, N, D);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < Sl; ++s)
            for (int64_t h = 0; h < N; ++h)
                for (int64_t d = 0; d < D; ++d)
                    *at(lb, b, s, h, d) = NAN;
    CHECK_OK(cpa_ulysses_heads_to_seq(x, mine, heads, nl, lb, 0));
    CHECK_MSG(memcmp(src, back, sizeof(float) * (size_t)n) == 0 && check_same(local, lb, what) == 0,
              "%s %s round trip", where_, what);

    /* ... and into another kind, compared in logical order. */
    const int other = (kind + 1) % NKINDS;
    const int64_t n2 = local_floats(other, B, Sl, N, D);
    float *back2 = malloc(sizeof(float) * (size_t)n2);
    poison(back2, n2);
    cpa_tensor lb2 = local_view(back2, other, B, Sl, N, D);
    CHECK_OK(cpa_ulysses_heads_to_seq(x, mine, heads, nl, lb2, 0));
    CHECK_MSG(check_same(local, lb2, what) == 0, "%s %s round trip into %s", where_, what,
              kind_name(other));
    free(back2), free(src), free(back);
}

/* Test 4: every rank's head-sharded dK (value dk_code(rank, ...), for the
 * KV head the slot holds) summed back with accumulate=1. */
static void replica_sum(cpa_ulysses *x, int kind)
{
    const int64_t B = x->B, Sl = x->Sl, Sf = x->Sf, G = x->G, Gl = x->Gl, D = x->Dqk;
    cpa_tensor dK = cpa_tensor_attn(x->dk, x->layout, B, Sf, Gl, D);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t pos = 0; pos < Sf; ++pos)
            for (int64_t g = 0; g < Gl; ++g)
                for (int64_t d = 0; d < D; ++d)
                    *at(dK, b, pos, g, d) = dk_code(rank_, b, pos, x->kv_heads[rank_ * Gl + g], d);
    const int64_t n = local_floats(kind, B, Sl, G, D);
    float *buf = malloc(sizeof(float) * (size_t)n);
    poison(buf, n); /* the padding stays NaN; the view is zeroed */
    cpa_tensor dk = local_view(buf, kind, B, Sl, G, D);
    cpa_tensor_zero(dk);
    CHECK_OK(cpa_ulysses_heads_to_seq(x, dK, x->kv_heads, Gl, dk, 1));
    int64_t bad = 0;
    for (int64_t h = 0; h < G; ++h) {
        /* Holders of KV head h: every (rank, slot) whose kv_heads entry is h. */
        int copies = 0, rank_sum = 0;
        for (int j = 0; j < x->U; ++j)
            for (int64_t g = 0; g < Gl; ++g)
                if (x->kv_heads[j * Gl + g] == h)
                    ++copies, rank_sum += j + 1;
        if (copies == 0 && bad++ == 0)
            fprintf(stderr, "rank %d %s: KV head %lld is held by no rank\n", rank_, where_,
                    (long long)h);
        for (int64_t b = 0; b < B; ++b)
            for (int64_t s = 0; s < Sl; ++s)
                for (int64_t d = 0; d < D; ++d) {
                    const int64_t pos = rank_ * Sl + s;
                    const float want = (float)copies * (dk_code(0, b, pos, h, d) - 1.0f) +
                                       (float)rank_sum;
                    const float got = *at(dk, b, s, h, d);
                    if (got != want && bad++ == 0)
                        fprintf(stderr,
                                "rank %d %s dk sum: [b=%lld s=%lld kv=%lld d=%lld] = %.0f, want "
                                "%.0f (%d copies)\n",
                                rank_, where_, (long long)b, (long long)s, (long long)h,
                                (long long)d, got, want, copies);
                }
    }
    CHECK_MSG(bad == 0, "%s replica sum", where_);
    free(buf);
}

/* Test 5: lse [B, H, Sl] as a [B, Sl, H, 1] view, to [B, Hl, Sf] and back. */
static void lse_round_trip(cpa_ulysses *x)
{
    const int64_t B = x->B, Sl = x->Sl, H = x->H, Hl = x->Hl, Sf = x->Sf;
    int64_t shape[3] = {B, H, Sl}, hshape[3] = {B, Hl, Sf};
    float *src = malloc(sizeof(float) * (size_t)(B * H * Sl));
    float *back = malloc(sizeof(float) * (size_t)(B * H * Sl));
    cpa_tensor lse = cpa_tensor_make(src, 3, shape);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t s = 0; s < Sl; ++s)
                src[(b * H + h) * Sl + s] = code(b, rank_ * Sl + s, h, 0);
    poison(x->scratch, B * Hl * Sf);
    cpa_tensor L = cpa_tensor_make(x->scratch, 3, hshape);
    CHECK_OK(cpa_ulysses_seq_to_heads(x, lse_as_rows(lse), x->q_heads, Hl, lse_as_rows(L)));
    int64_t bad = 0;
    for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < Hl; ++i)
            for (int64_t pos = 0; pos < Sf; ++pos) {
                const float got = x->scratch[(b * Hl + i) * Sf + pos];
                const float want = code(b, pos, x->q_heads[rank_ * Hl + i], 0);
                if (got != want && bad++ == 0)
                    fprintf(stderr, "rank %d %s lse: [b=%lld i=%lld pos=%lld] = %.0f, want %.0f\n",
                            rank_, where_, (long long)b, (long long)i, (long long)pos, got, want);
            }
    CHECK_MSG(bad == 0, "%s lse seq_to_heads", where_);
    poison(back, B * H * Sl);
    cpa_tensor lb = cpa_tensor_make(back, 3, shape);
    CHECK_OK(cpa_ulysses_heads_to_seq(x, lse_as_rows(L), x->q_heads, Hl, lse_as_rows(lb), 0));
    CHECK_MSG(memcmp(src, back, sizeof(float) * (size_t)(B * H * Sl)) == 0, "%s lse round trip",
              where_);
    free(src), free(back);
}

static void one_case(MPI_Comm comm, const shape_case *c, cpa_layout hl, int kind)
{
    const int U = P_;
    snprintf(where_, sizeof where_, "U=%d B=%lld Sl=%lld H=%lld G=%lld heads:%s local:%s", U,
             (long long)c->B, (long long)c->Sl, (long long)c->H, (long long)c->G,
             cpa_layout_name(hl), kind_name(kind));
    cpa_ulysses_shape sh = {.B = c->B, .S = U * c->Sl, .H = c->H, .G = c->G, .Dqk = c->Dqk,
                            .Dv = c->Dv, .layout = hl, .mask = {CPA_MASK_CAUSAL}, .scale = 0.5f};
    cpa_ulysses x;
    cpa_status st = cpa_ulysses_init(&x, comm, &sh, NULL, NULL);
    CHECK_OK(st);
    if (st != CPA_OK)
        return;
    if (!check_maps(&x)) {
        cpa_ulysses_free(&x);
        return;
    }
    one_tensor(&x, kind, x.q_heads, x.H, x.Hl, x.Dqk, x.scratch, "q");
    one_tensor(&x, kind, x.kv_heads, x.G, x.Gl, x.Dqk, x.scratch, "k");
    one_tensor(&x, kind, x.kv_heads, x.G, x.Gl, x.Dv, x.scratch, "v");
    replica_sum(&x, kind);
    if (kind == 0)
        lse_round_trip(&x);
    cpa_ulysses_free(&x);
}

static void all_to_alls(void)
{
    static const shape_case cases[] = {
        {1, 3, 8, 8, 4, 3},  {2, 5, 8, 8, 4, 3},  {1, 3, 8, 2, 4, 3}, {2, 5, 8, 2, 4, 3},
        {1, 3, 8, 1, 4, 3},  {2, 5, 8, 1, 4, 3},  {2, 3, 12, 3, 4, 3}, {1, 5, 12, 4, 4, 3},
        {2, 3, 12, 6, 4, 3},
    };
    MPI_Comm comm;
    CHECK_OK(cpa_comm_dup(MPI_COMM_WORLD, &comm));
    int ran = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        if (cases[i].H % P_ != 0)
            continue;
        for (int hl = 0; hl < 3; ++hl)
            for (int kind = 0; kind < NKINDS; ++kind, ++ran)
                one_case(comm, &cases[i], (cpa_layout)hl, kind);
    }
    CHECK(ran > 0);
    MPI_Comm_free(&comm);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &P_);
    RUN_TEST(all_to_alls);
    /* Again with every slab beyond a lowered "int count" of 7 floats, so
     * each all-to-all moves one element of a derived type per rank. */
    cpa_debug_set_max_mpi_count(7);
    RUN_TEST(all_to_alls);
    cpa_debug_set_max_mpi_count(0);
    int counts[2] = {test_passed_, test_failed_}, total[2];
    MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank_ == 0)
        printf("test_a2a U=%d\n%d passed, %d failed\n", P_, total[0], total[1]);
    MPI_Finalize();
    return total[1] ? 1 : 0;
}
