/*
 * test_grid.c — the trainer's process grid (src/model/parallel.c), under
 * `mpiexec -n W` for any W >= 1 (CTest runs W = 1, 2, 4).
 *
 * For every TP size T and CP size P with T x P dividing W: the rank
 * mapping (tp_rank = r % T, cp_rank = r / T % P, dp_rank = r / (T P), the
 * axes innermost first with their strides), the members of each TP, CP and
 * DP group (gathered world ranks compared with ==), the host groups
 * covering the world, the description string, and the reductions over the
 * replica group (the ranks of one TP coordinate): gradients and loss sums
 * that encode (rank, index) as exact integers must sum exactly, and random
 * gradients must sum bit for bit as MPI_Allreduce over that group does.  For P that do not divide W, P = 0, sizes that differ
 * between ranks and a NULL config on one rank: CPA_ERR_ARG on every rank
 * with the message naming the values and the rule, and *out untouched.
 * The verdict is summed over all ranks and printed by rank 0.
 */
#include "parallel.h"
#include "test.h"

#include <mpi.h>
#include <stdint.h>
#include <string.h>

static int rank_, W_;

#define CHECK_ERR(word)                                                                  \
    CHECK_MSG(strstr(cpa_last_error(), (word)) != NULL, "message \"%s\" lacks \"%s\"", \
              cpa_last_error(), (word))

/* The world ranks of `comm`'s members, in comm rank order. */
static void members(MPI_Comm comm, int *out, int n)
{
    int size = 0;
    MPI_Comm_size(comm, &size);
    CHECK(size == n);
    if (size == n)
        MPI_Allgather(&rank_, 1, MPI_INT, out, 1, MPI_INT, comm);
}

static void check_mapping(int T, int P)
{
    cpa_grid_config cfg = {.cp_size = P, .tp_size = T};
    cpa_grid *g = NULL;
    CHECK_OK(cpa_grid_create(MPI_COMM_WORLD, &cfg, &g));
    if (!g)
        return;
    /* world rank = (dp * P + cp) * T + tp */
    const int D = W_ / (T * P), tp_rank = rank_ % T, cp_rank = rank_ / T % P;
    const int dp_rank = rank_ / (T * P);
    CHECK(cpa_grid_world_size(g) == W_);
    CHECK(cpa_grid_world_rank(g) == rank_);
    CHECK(cpa_grid_size(g, CPA_GRID_TP) == T);
    CHECK(cpa_grid_size(g, CPA_GRID_CP) == P);
    CHECK(cpa_grid_size(g, CPA_GRID_DP) == D);
    CHECK_MSG(cpa_grid_rank(g, CPA_GRID_TP) == tp_rank && cpa_grid_rank(g, CPA_GRID_CP) == cp_rank &&
                  cpa_grid_rank(g, CPA_GRID_DP) == dp_rank,
              "T=%d P=%d rank %d: tp %d cp %d dp %d, want %d %d %d", T, P, rank_,
              cpa_grid_rank(g, CPA_GRID_TP), cpa_grid_rank(g, CPA_GRID_CP),
              cpa_grid_rank(g, CPA_GRID_DP), tp_rank, cp_rank, dp_rank);

    /* The axes, innermost first: TP (stride 1), CP (stride T), DP (stride T*P). */
    int nd = 0;
    const cpa_grid_dim *d = cpa_grid_dims(g, &nd);
    CHECK(nd == 3);
    if (nd == 3) {
        CHECK(d[0].axis == CPA_GRID_TP && d[0].stride == 1 && !strcmp(d[0].name, "TP"));
        CHECK(d[1].axis == CPA_GRID_CP && d[1].stride == T && !strcmp(d[1].name, "CP"));
        CHECK(d[2].axis == CPA_GRID_DP && d[2].stride == T * P && !strcmp(d[2].name, "DP"));
        CHECK(d[0].rank * d[0].stride + d[1].rank * d[1].stride + d[2].rank * d[2].stride ==
              rank_);
    }
    char text[128], want[128];
    snprintf(want, sizeof want, "world %d = TP %d x CP %d x DP %d", W_, T, P, D);
    CHECK_MSG(!strcmp(cpa_grid_describe(g, text, sizeof text), want), "\"%s\", want \"%s\"",
              text, want);

    /* TP groups are adjacent ranks; CP groups stride T; DP groups stride T*P. */
    int got[64];
    int tr = -1, cr = -1, dr = -1;
    MPI_Comm_rank(cpa_grid_comm(g, CPA_GRID_TP), &tr);
    MPI_Comm_rank(cpa_grid_comm(g, CPA_GRID_CP), &cr);
    MPI_Comm_rank(cpa_grid_comm(g, CPA_GRID_DP), &dr);
    CHECK(tr == tp_rank && cr == cp_rank && dr == dp_rank);
    const int base = rank_ - tp_rank - cp_rank * T - dp_rank * T * P;
    members(cpa_grid_comm(g, CPA_GRID_TP), got, T);
    for (int j = 0; j < T; ++j)
        CHECK_MSG(got[j] == base + (dp_rank * P + cp_rank) * T + j, "T=%d P=%d rank %d: TP member "
                  "%d is %d", T, P, rank_, j, got[j]);
    members(cpa_grid_comm(g, CPA_GRID_CP), got, P);
    for (int j = 0; j < P; ++j)
        CHECK_MSG(got[j] == (dp_rank * P + j) * T + tp_rank, "T=%d P=%d rank %d: CP member %d "
                  "is %d, want %d", T, P, rank_, j, got[j], (dp_rank * P + j) * T + tp_rank);
    members(cpa_grid_comm(g, CPA_GRID_DP), got, D);
    for (int j = 0; j < D; ++j)
        CHECK_MSG(got[j] == (j * P + cp_rank) * T + tp_rank, "T=%d P=%d rank %d: DP member %d "
                  "is %d", T, P, rank_, j, got[j]);

    /* The host groups partition the world. */
    int hr = cpa_grid_host_rank(g), hs = cpa_grid_host_size(g);
    CHECK(hs >= 1 && hr >= 0 && hr < hs);
    int counted = hr == 0 ? hs : 0, total = 0;
    MPI_Allreduce(&counted, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    CHECK(total == W_);

    /* Exact sums over the replica group (the ranks of my TP coordinate):
     * value (rank, i) = rank * 4096 + i, below 2^24. */
    enum { N = 1000 };
    float grads[N];
    for (int i = 0; i < N; ++i)
        grads[i] = (float)(rank_ * 4096 + i);
    CHECK_OK(cpa_grid_sum_grads(g, grads, N));
    const int R = W_ / T; /* replicas: ranks tp_rank, tp_rank + T, ... */
    const double rank_sum = (double)R * tp_rank + (double)T * R * (R - 1) / 2.0;
    int64_t bad = 0;
    for (int i = 0; i < N; ++i) {
        const float want_i = (float)(4096.0 * rank_sum + (double)R * i);
        if (grads[i] != want_i && bad++ == 0)
            fprintf(stderr, "T=%d P=%d rank %d: grad[%d] = %.0f, want %.0f\n", T, P, rank_, i,
                    (double)grads[i], (double)want_i);
    }
    CHECK(bad == 0);
    double sums[3] = {rank_ + 0.5, 2.0 * rank_, 1.0};
    CHECK_OK(cpa_grid_sum_losses(g, sums, 3));
    CHECK(sums[0] == rank_sum + 0.5 * R);
    CHECK(sums[1] == 2.0 * rank_sum);
    CHECK(sums[2] == (double)R);

    /* Rounding: the same bits as one all-reduce over the replica group. */
    float a[N], b[N];
    uint32_t s = 2654435761u * (uint32_t)(rank_ + 1);
    for (int i = 0; i < N; ++i) {
        s ^= s << 13, s ^= s >> 17, s ^= s << 5;
        a[i] = b[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
    }
    CHECK_OK(cpa_grid_sum_grads(g, a, N));
    MPI_Comm rep;
    MPI_Comm_split(MPI_COMM_WORLD, tp_rank, rank_, &rep);
    MPI_Allreduce(MPI_IN_PLACE, b, N, MPI_FLOAT, MPI_SUM, rep);
    MPI_Comm_free(&rep);
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK_OK(cpa_grid_sum_grads(g, NULL, 0));

    cpa_grid_destroy(g);
}

static void mapping(void)
{
    for (int T = 1; T <= W_; ++T)
        for (int P = 1; P * T <= W_; ++P)
            if (W_ % (T * P) == 0)
                check_mapping(T, P);
}

/* CPA_ERR_ARG on every rank, the message holding each of `words`, and the
 * output left alone. */
static void expect_arg(const char *label, MPI_Comm comm, const cpa_grid_config *cfg,
                       const char *w1, const char *w2, const char *w3)
{
    cpa_grid *const sentinel = (cpa_grid *)&rank_;
    cpa_grid *g = sentinel;
    cpa_status s = cpa_grid_create(comm, cfg, &g);
    CHECK_MSG(s == CPA_ERR_ARG, "%s: %s: %s", label, cpa_status_string(s), cpa_last_error());
    CHECK_MSG(g == sentinel, "%s: *out was written", label);
    const char *words[3] = {w1, w2, w3};
    for (int i = 0; i < 3; ++i)
        if (words[i])
            CHECK_MSG(strstr(cpa_last_error(), words[i]) != NULL, "%s: \"%s\" lacks \"%s\"",
                      label, cpa_last_error(), words[i]);
    /* Every rank got the same verdict. */
    int ok = s == CPA_ERR_ARG, all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    CHECK(all == W_);
}

static void errors(void)
{
    char world[64], cp[64];
    /* Every CP size up to W + 1 that does not divide the world. */
    for (int P = 2; P <= W_ + 1; ++P) {
        if (W_ % P == 0)
            continue;
        cpa_grid_config c = {.cp_size = P};
        snprintf(world, sizeof world, "world of %d ranks", W_);
        snprintf(cp, sizeof cp, "context-parallel size %d", P);
        expect_arg("indivisible", MPI_COMM_WORLD, &c, world, cp, "multiple of TP x CP");
    }
    if (W_ >= 2 && W_ % 2 == 0) { /* TP x CP must divide the world too */
        cpa_grid_config c = {.cp_size = W_, .tp_size = 2}; /* 2W ranks asked of W */
        snprintf(world, sizeof world, "world of %d ranks", W_);
        expect_arg("TP x CP indivisible", MPI_COMM_WORLD, &c, world, "tensor-parallel size 2",
                   "multiple of TP x CP");
    }
    cpa_grid_config tzero = {.cp_size = 1, .tp_size = -1};
    expect_arg("TP < 1", MPI_COMM_WORLD, &tzero, "tensor-parallel size -1", "at least 1", NULL);
    if (W_ >= 2) {
        cpa_grid_config c = {.cp_size = 1, .tp_size = rank_ == 0 ? 1 : W_};
        expect_arg("TP sizes differ", MPI_COMM_WORLD, &c, "tensor-parallel size differs", NULL,
                   NULL);
    }
    cpa_grid_config zero = {.cp_size = 0};
    expect_arg("P = 0", MPI_COMM_WORLD, &zero, "context-parallel size 0", "at least 1", NULL);
    if (W_ >= 2) {
        /* Valid on every rank alone, but not the same everywhere. */
        cpa_grid_config c = {.cp_size = rank_ == 0 ? 1 : W_};
        expect_arg("sizes differ", MPI_COMM_WORLD, &c, "differs between ranks", NULL, NULL);
    }
    cpa_grid_config one = {.cp_size = 1};
    expect_arg("NULL config on the last rank", MPI_COMM_WORLD, rank_ == W_ - 1 ? NULL : &one,
               "NULL config", NULL, NULL);
    /* Refused locally: nothing to agree with. */
    cpa_grid *g = NULL;
    CHECK_STATUS(cpa_grid_create(MPI_COMM_NULL, &one, &g), CPA_ERR_ARG);
    CHECK_ERR("MPI_COMM_NULL");
    CHECK(g == NULL);
    CHECK_STATUS(cpa_grid_create(MPI_COMM_WORLD, &one, NULL), CPA_ERR_ARG);
    cpa_grid_destroy(NULL);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &W_);
    cpa_set_comm_timeout(60);
    RUN_TEST(mapping);
    RUN_TEST(errors);
    RUN_TEST(mapping); /* nothing left behind by the failures */
    int counts[2] = {test_passed_, test_failed_}, total[2];
    MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank_ == 0)
        printf("test_grid W=%d\n%d passed, %d failed\n", W_, total[0], total[1]);
    MPI_Finalize();
    return total[1] ? 1 : 0;
}
