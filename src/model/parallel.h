/*
 * parallel.h — the trainer's process grid: how the ranks of a job are laid
 * out over the parallel dimensions, the communicator of each dimension, and
 * the reductions the training loop makes over the grid.
 *
 * The grid is an ordered list of dimensions (axes), innermost first: the
 * innermost axis varies fastest with the world rank.  There are three, in
 * Megatron's order: TP (tensor parallel: the ranks that share every layer's
 * weights, each holding 1/TP of the heads, the FFN width and the
 * vocabulary), CP (context parallel: the ranks that share one sequence,
 * each holding S/CP of its tokens) and DP (data parallel: the replicas,
 * each on different sequences).  TP ranks are adjacent because they talk
 * the most (twice per layer), then the CP ranks (every attention layer):
 *
 *     world rank = (dp_rank * CP + cp_rank) * TP + tp_rank   (world = TP x CP x DP)
 *
 * and in general, with the axes in order, world rank = sum of
 * coordinate[i] * stride[i], stride[0] = 1, stride[i+1] = stride[i] *
 * size[i].  Each axis has the communicator of the ranks that differ from
 * this one only along that axis (for CP: this rank's CP group, what the
 * attention plan runs on; for DP: the ranks with the same cp_rank in every
 * replica).
 *
 * Parameters are replicated along CP and DP but sharded along TP, which is
 * why the gradient sum runs over the "replica group" — the ranks whose
 * coordinates differ only along axes that replicate the parameters (the
 * same TP coordinate: Megatron's data-parallel group with context
 * parallelism) — rather than over the whole world or the DP axis alone:
 * the CP ranks of a replica hold different tokens, so their gradients must
 * be summed too.
 *
 * What it is not: the attention plan (src/cp, which gets the CP
 * communicator), or the trainer's configuration and logging (tools/).
 * Every wait of the reductions is bounded by the library's watchdog
 * (cpa_comm_allreduce), so a dead rank is named instead of hanging the
 * others.
 */
#ifndef CPATTN_MODEL_PARALLEL_H
#define CPATTN_MODEL_PARALLEL_H

#include "cpattn.h"

#include <mpi.h>
#include <stdint.h>

/* The parallel dimensions.  The values are names, not positions: the
 * order of the axes in the grid is cpa_grid_dims'. */
typedef enum cpa_grid_axis {
    CPA_GRID_CP = 0, /* context parallel: --context-parallel-size */
    CPA_GRID_DP = 1, /* data parallel: world / (product of the other sizes) */
    CPA_GRID_TP = 2  /* tensor parallel: --tensor-model-parallel-size */
} cpa_grid_axis;

#define CPA_GRID_MAX_DIMS 4 /* room for TP and PP next to CP and DP */

/* The sizes asked for; the innermost-first order is fixed by the grid.
 * DP is whatever the world leaves. */
typedef struct cpa_grid_config {
    int cp_size; /* ranks per CP group, >= 1 */
    int tp_size; /* ranks per TP group, >= 1 (0 is taken as 1); TP x CP divides the world */
} cpa_grid_config;

/* One axis of the grid, as this rank sees it. */
typedef struct cpa_grid_dim {
    cpa_grid_axis axis;
    const char *name; /* "CP", "DP" */
    int size;         /* ranks along this axis */
    int rank;         /* this rank's coordinate along it, 0 .. size-1 */
    int stride;       /* world-rank distance between neighbours along it */
    MPI_Comm comm;    /* the ranks differing from this one only along this axis, ordered by
                         coordinate (comm rank == coordinate) */
} cpa_grid_dim;

typedef struct cpa_grid cpa_grid;

/* Lay out the ranks of `world` (the grid keeps duplicates; `world` is not
 * used afterwards).  Collective over `world`: every rank returns the same
 * status and message.  A bounded agreement first checks that every rank
 * passed the same sizes; then CPA_ERR_ARG names the rule broken (a size
 * below 1, or a world size that is not a multiple of TP x CP, naming
 * them).  The communicator splits that follow are plain MPI calls (MPI has
 * no non-blocking split); the agreement has already found a dead rank. */
cpa_status cpa_grid_create(MPI_Comm world, const cpa_grid_config *config, cpa_grid **out);

/* Free the grid's communicators and the grid (NULL is accepted). */
void cpa_grid_destroy(cpa_grid *grid);

/* The axes, innermost first, in *ndims entries. */
const cpa_grid_dim *cpa_grid_dims(const cpa_grid *grid, int *ndims);

/* One axis: its size, this rank's coordinate, its communicator. */
int cpa_grid_size(const cpa_grid *grid, cpa_grid_axis axis);
int cpa_grid_rank(const cpa_grid *grid, cpa_grid_axis axis);
MPI_Comm cpa_grid_comm(const cpa_grid *grid, cpa_grid_axis axis);

/* The whole grid: the product of the sizes, this rank's world rank, and
 * the grid's duplicate of `world`. */
int cpa_grid_world_size(const cpa_grid *grid);
int cpa_grid_world_rank(const cpa_grid *grid);
MPI_Comm cpa_grid_world(const cpa_grid *grid);

/* The ranks of this grid on this rank's host (shared memory), this rank's
 * index among them and their number: what per-host work (measuring the
 * cores once, summing a host's memory) is organised by. */
MPI_Comm cpa_grid_host(const cpa_grid *grid);
int cpa_grid_host_rank(const cpa_grid *grid);
int cpa_grid_host_size(const cpa_grid *grid);

/* "world 8 = TP 2 x CP 2 x DP 2": the axes innermost first.  Returns `buf`. */
const char *cpa_grid_describe(const cpa_grid *grid, char *buf, size_t cap);

/* In-place sum of `count` parameter gradients over the replica group (the
 * ranks holding the same parameters: the same TP coordinate), in
 * pieces so that any int64 count works, under the watchdog.  Collective
 * over the group. */
/* An MPI return code as CPA_ERR_MPI: "WHAT failed: <MPI's error string>". */
cpa_status cpa_model_mpi_error(int rc, const char *what);

cpa_status cpa_grid_sum_grads(const cpa_grid *grid, float *grads, int64_t count);

/* In-place sum of `count` per-rank loss sums over the ranks that together
 * hold the global batch (the replica group too: every TP rank computes the
 * same loss), under the watchdog.  The mean loss is the sum over the
 * number of tokens of the global batch. */
cpa_status cpa_grid_sum_losses(const cpa_grid *grid, double *sums, int count);

#endif /* CPATTN_MODEL_PARALLEL_H */
