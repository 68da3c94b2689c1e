/*
 * test_a2a_count.c — how many all-to-alls one training iteration of the
 * GPT makes, counted through the MPI profiling interface: this file defines
 * MPI_Alltoall, MPI_Ialltoall, MPI_Alltoallv and MPI_Ialltoallv, counts each
 * call and forwards it to PMPI_*.  The library is linked unchanged.
 *
 * usage: test_a2a_count ALGO LAYERS RECOMPUTE [U] MAX_PER_LAYER
 *
 * A layer's attention is 5 all-to-alls forward (q, k, v in; out, lse back)
 * and 4 backward (dout in; dq, dk, dv back) when the forward's saved state
 * reaches the backward: 9 per layer, 36 at L = 4.  Each rank must count
 * exactly MAX_PER_LAYER x LAYERS for one forward+backward (no redundant
 * rebuild of the head-sharded state).  With --recompute-granularity full the
 * backward recomputes each block's forward, 5 more per layer, by design.
 */
#include "gpt.h"
#include "test.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

static long long alltoalls;

int MPI_Alltoall(const void *sb, int sc, MPI_Datatype st, void *rb, int rc, MPI_Datatype rt,
                 MPI_Comm comm)
{
    ++alltoalls;
    return PMPI_Alltoall(sb, sc, st, rb, rc, rt, comm);
}

int MPI_Ialltoall(const void *sb, int sc, MPI_Datatype st, void *rb, int rc, MPI_Datatype rt,
                  MPI_Comm comm, MPI_Request *req)
{
    ++alltoalls;
    return PMPI_Ialltoall(sb, sc, st, rb, rc, rt, comm, req);
}

int MPI_Alltoallv(const void *sb, const int *sc, const int *sd, MPI_Datatype st, void *rb,
                  const int *rc, const int *rd, MPI_Datatype rt, MPI_Comm comm)
{
    ++alltoalls;
    return PMPI_Alltoallv(sb, sc, sd, st, rb, rc, rd, rt, comm);
}

int MPI_Ialltoallv(const void *sb, const int *sc, const int *sd, MPI_Datatype st, void *rb,
                   const int *rc, const int *rd, MPI_Datatype rt, MPI_Comm comm,
                   MPI_Request *req)
{
    ++alltoalls;
    return PMPI_Ialltoallv(sb, sc, sd, st, rb, rc, rd, rt, comm, req);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    if (argc != 5 && argc != 6) {
        if (rank == 0)
            fprintf(stderr, "usage: test_a2a_count ALGO LAYERS RECOMPUTE [U] PER_LAYER\n");
        MPI_Finalize();
        return 2;
    }
    cpa_gpt_config g;
    memset(&g, 0, sizeof g);
    g.num_layers = atoi(argv[2]), g.hidden = 32, g.ffn_hidden = 48, g.heads = 4, g.kv_heads = 2;
    g.vocab = 11, g.seq_length = 32, g.micro_batch = 1;
    g.rope_base = 10000.0f, g.norm_eps = 1e-5f;
    CHECK_OK(cpa_algo_parse(argv[1], &g.cp.algo));
    g.recompute = atoi(argv[3]);
    g.cp.ulysses_degree = argc == 6 ? atoi(argv[4]) : 0;
    const long long per_layer = atoll(argv[argc - 1]);
    g.cp.window = 1;
    g.cp.mask.kind = CPA_MASK_CAUSAL;
    g.cp.tp_size = 1;
    g.cp.num_threads = 1;
    cpa_gpt *m = NULL;
    cpa_status st = cpa_gpt_create(&g, MPI_COMM_WORLD, &m);
    CHECK_MSG(st == CPA_OK, "create: %s", cpa_last_error());
    if (st == CPA_OK) {
        cpa_gpt_init_params(m, 7);
        int32_t sample[33];
        for (int i = 0; i < 33; ++i)
            sample[i] = (int32_t)((i * 7 + 3) % 11);
        double l, ls, lc;
        for (int it = 0; it < 2; ++it) { /* two iterations: nothing carries over */
            const long long before = alltoalls;
            CHECK_OK(cpa_gpt_step(m, sample, NULL, 1.0f, 1, &l, &ls, &lc));
            const long long got = alltoalls - before, want = per_layer * g.num_layers;
            CHECK_MSG(got == want, "rank %d iteration %d: %lld all-to-alls, want %lld (%lld per "
                      "layer x %lld layers)", rank, it, got, want, per_layer,
                      (long long)g.num_layers);
            if (rank == 0 && it == 0)
                printf("%s P=%d L=%lld recompute=%d: %lld all-to-alls per iteration per rank\n",
                       argv[1], P, (long long)g.num_layers, g.recompute, got);
        }
        cpa_gpt_destroy(m);
    }
    int counts[2] = {test_passed_, test_failed_}, total[2];
    MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("%d passed, %d failed\n", total[0], total[1]);
    MPI_Finalize();
    return total[1] ? 1 : 0;
}
