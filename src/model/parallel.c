/*
 * parallel.c — the trainer's process grid (see parallel.h): the axis
 * table, the rank mapping, the communicators and the reductions.
 *
 * Creation is collective and agrees before it splits: every rank first
 * contributes its sizes (and whether its own allocation or arguments
 * failed) to one bounded all-reduce, so that all ranks take the same
 * branch — a rank that gave up alone would leave the others waiting in
 * MPI_Comm_split, which has no timeout.  The grid keeps its own duplicate
 * of the parent communicator (MPI_ERRORS_RETURN) and splits that, so its
 * collectives never interleave with the caller's traffic on the parent.
 */
#include "parallel.h"
#include "internal.h"

#include <stdio.h>
#include <string.h>

/* The axes, innermost (fastest-varying world rank) first.  TP shards the
 * parameters; CP and DP replicate them. */
static const struct axis_info {
    cpa_grid_axis axis;
    const char *name;
    int replicates_params; /* 1: the ranks along it hold the same parameters */
} axis_table[] = {
    {CPA_GRID_TP, "TP", 0},
    {CPA_GRID_CP, "CP", 1},
    {CPA_GRID_DP, "DP", 1},
};
#define NUM_AXES ((int)(sizeof axis_table / sizeof axis_table[0]))
_Static_assert(NUM_AXES <= CPA_GRID_MAX_DIMS, "CPA_GRID_MAX_DIMS is too small for the axes");

struct cpa_grid {
    MPI_Comm world;    /* duplicate of the caller's communicator */
    int world_size, world_rank;
    int ndims;
    cpa_grid_dim dims[CPA_GRID_MAX_DIMS]; /* innermost first */
    MPI_Comm replicas; /* ranks holding the same parameters (the same TP coordinate) */
    MPI_Comm host;     /* ranks on this rank's host */
    int host_rank, host_size;
};

cpa_status cpa_model_mpi_error(int rc, const char *what)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS)
        snprintf(text, sizeof text, "error %d", rc);
    return cpa_error(CPA_ERR_MPI, "%s failed: %s", what, text);
}

static void comm_free(MPI_Comm *c)
{
    if (*c != MPI_COMM_NULL)
        MPI_Comm_free(c);
    *c = MPI_COMM_NULL;
}

void cpa_grid_destroy(cpa_grid *g)
{
    if (!g)
        return;
    for (int i = 0; i < g->ndims; ++i)
        comm_free(&g->dims[i].comm);
    comm_free(&g->replicas);
    comm_free(&g->host);
    comm_free(&g->world);
    cpa_free(g);
}

/* The size of each axis: the configured ones, and DP takes what is left. */
static int axis_size(cpa_grid_axis axis, int tp_size, int cp_size, int world_size)
{
    switch (axis) {
    case CPA_GRID_TP:
        return tp_size;
    case CPA_GRID_CP:
        return cp_size;
    case CPA_GRID_DP:
        return world_size / (tp_size * cp_size);
    }
    return 1;
}

/* The communicators, on a grid whose sizes are valid. */
static cpa_status build(cpa_grid *g, MPI_Comm parent, int tp_size, int cp_size)
{
    int rc = MPI_Comm_dup(parent, &g->world);
    if (rc != MPI_SUCCESS)
        return cpa_model_mpi_error(rc, "process grid: MPI_Comm_dup");
    MPI_Comm_set_errhandler(g->world, MPI_ERRORS_RETURN);
    MPI_Comm_rank(g->world, &g->world_rank);
    MPI_Comm_size(g->world, &g->world_size);

    /* world rank = sum of coordinate * stride, innermost axis first. */
    int stride = 1, shard_color = 0;
    for (int i = 0; i < NUM_AXES; ++i) {
        cpa_grid_dim *d = &g->dims[i];
        d->axis = axis_table[i].axis;
        d->name = axis_table[i].name;
        d->size = axis_size(d->axis, tp_size, cp_size, g->world_size);
        d->stride = stride;
        d->rank = (g->world_rank / stride) % d->size;
        d->comm = MPI_COMM_NULL;
        g->ndims = i + 1;
        /* The ranks differing only along this axis share every other
         * coordinate: name the group by its member at coordinate 0. */
        rc = MPI_Comm_split(g->world, g->world_rank - d->rank * stride, d->rank, &d->comm);
        if (rc != MPI_SUCCESS)
            return cpa_model_mpi_error(rc, "process grid: MPI_Comm_split (one group per axis)");
        if (!axis_table[i].replicates_params)
            shard_color += d->rank * stride;
        stride *= d->size;
    }
    /* The replica group: the ranks whose coordinates differ only along
     * axes that replicate the parameters, in world order. */
    rc = MPI_Comm_split(g->world, shard_color, g->world_rank, &g->replicas);
    if (rc != MPI_SUCCESS)
        return cpa_model_mpi_error(rc, "process grid: MPI_Comm_split (the replica group)");
    rc = MPI_Comm_split_type(g->world, MPI_COMM_TYPE_SHARED, g->world_rank, MPI_INFO_NULL,
                             &g->host);
    if (rc != MPI_SUCCESS)
        return cpa_model_mpi_error(rc, "process grid: MPI_Comm_split_type (ranks per host)");
    MPI_Comm_rank(g->host, &g->host_rank);
    MPI_Comm_size(g->host, &g->host_size);
    return CPA_OK;
}

cpa_status cpa_grid_create(MPI_Comm world, const cpa_grid_config *config, cpa_grid **out)
{
    /* Refused locally: without a communicator or a place for the result
     * there is nothing to agree with (as cpa_plan_create does). */
    if (world == MPI_COMM_NULL || !out)
        return cpa_error(CPA_ERR_ARG, "cpa_grid_create: %s",
                         !out ? "NULL out" : "MPI_COMM_NULL (there is no group to lay out)");
    int world_size = 1;
    MPI_Comm_size(world, &world_size);
    cpa_grid *g = cpa_calloc(sizeof *g, "process grid");
    if (g) {
        g->world = g->replicas = g->host = MPI_COMM_NULL;
        g->ndims = 0;
    }

    /* One bounded all-reduce (MAX) so every rank takes the same branch:
     * any rank without a config, any rank out of memory, and the range of
     * the CP sizes passed. */
    const int cp = config ? config->cp_size : 0;
    const int tp = !config ? 0 : config->tp_size == 0 ? 1 : config->tp_size;
    int v[6] = {config == NULL, g == NULL, cp, -cp, tp, -tp};
    cpa_status st = cpa_comm_allreduce(v, 6, MPI_INT, MPI_MAX, world,
                                       "process grid creation: the sizes check");
    if (st == CPA_OK && v[0])
        st = cpa_error(CPA_ERR_ARG, "cpa_grid_create: NULL config (on at least one rank)");
    else if (st == CPA_OK && v[1])
        st = cpa_error(CPA_ERR_NOMEM, "cpa_grid_create: out of memory for the process grid "
                                      "(on at least one rank)");
    else if (st == CPA_OK && -v[3] != v[2])
        st = cpa_error(CPA_ERR_ARG, "the context-parallel size differs between ranks (from %d "
                       "to %d); every rank must pass the same sizes", -v[3], v[2]);
    else if (st == CPA_OK && -v[5] != v[4])
        st = cpa_error(CPA_ERR_ARG, "the tensor-parallel size differs between ranks (from %d "
                       "to %d); every rank must pass the same sizes", -v[5], v[4]);
    else if (st == CPA_OK && cp < 1)
        st = cpa_error(CPA_ERR_ARG, "context-parallel size %d: must be at least 1", cp);
    else if (st == CPA_OK && tp < 1)
        st = cpa_error(CPA_ERR_ARG, "tensor-parallel size %d: must be at least 1", tp);
    else if (st == CPA_OK && world_size % ((long long)tp * cp) != 0)
        st = cpa_error(CPA_ERR_ARG, "the world of %d ranks is not divisible by the "
                       "tensor-parallel size %d x the context-parallel size %d: world = TP x CP "
                       "x DP with the TP ranks adjacent, then the CP ranks of a replica, so the "
                       "number of ranks must be a multiple of TP x CP", world_size, tp, cp);
    if (st == CPA_OK)
        st = build(g, world, tp, cp);
    if (st != CPA_OK) {
        cpa_grid_destroy(g);
        return st;
    }
    *out = g;
    return CPA_OK;
}

const cpa_grid_dim *cpa_grid_dims(const cpa_grid *g, int *ndims)
{
    *ndims = g->ndims;
    return g->dims;
}

static const cpa_grid_dim *find(const cpa_grid *g, cpa_grid_axis axis)
{
    for (int i = 0; i < g->ndims; ++i)
        if (g->dims[i].axis == axis)
            return &g->dims[i];
    return NULL;
}

/* An axis the grid does not have has size 1 and coordinate 0 (as TP = 1
 * is today), and no communicator. */
int cpa_grid_size(const cpa_grid *g, cpa_grid_axis axis)
{
    const cpa_grid_dim *d = find(g, axis);
    return d ? d->size : 1;
}

int cpa_grid_rank(const cpa_grid *g, cpa_grid_axis axis)
{
    const cpa_grid_dim *d = find(g, axis);
    return d ? d->rank : 0;
}

MPI_Comm cpa_grid_comm(const cpa_grid *g, cpa_grid_axis axis)
{
    const cpa_grid_dim *d = find(g, axis);
    return d ? d->comm : MPI_COMM_NULL;
}

int cpa_grid_world_size(const cpa_grid *g) { return g->world_size; }
int cpa_grid_world_rank(const cpa_grid *g) { return g->world_rank; }
MPI_Comm cpa_grid_world(const cpa_grid *g) { return g->world; }
MPI_Comm cpa_grid_host(const cpa_grid *g) { return g->host; }
int cpa_grid_host_rank(const cpa_grid *g) { return g->host_rank; }
int cpa_grid_host_size(const cpa_grid *g) { return g->host_size; }

const char *cpa_grid_describe(const cpa_grid *g, char *buf, size_t cap)
{
    if (!cap)
        return buf;
    int used = snprintf(buf, cap, "world %d =", g->world_size);
    for (int i = 0; i < g->ndims && used >= 0 && (size_t)used < cap; ++i)
        used += snprintf(buf + used, cap - (size_t)used, "%s %s %d", i ? " x" : "",
                         g->dims[i].name, g->dims[i].size);
    return buf;
}

cpa_status cpa_grid_sum_grads(const cpa_grid *g, float *grads, int64_t count)
{
    if (count < 0 || (count > 0 && !grads))
        return cpa_error(CPA_ERR_ARG, "cpa_grid_sum_grads: %lld gradients at %p",
                         (long long)count, (void *)grads);
    return cpa_comm_allreduce(grads, count, MPI_FLOAT, MPI_SUM, g->replicas,
                              "the gradient all-reduce");
}

cpa_status cpa_grid_sum_losses(const cpa_grid *g, double *sums, int count)
{
    if (count < 0 || (count > 0 && !sums))
        return cpa_error(CPA_ERR_ARG, "cpa_grid_sum_losses: %d sums at %p", count,
                         (void *)sums);
    return cpa_comm_allreduce(sums, count, MPI_DOUBLE, MPI_SUM, g->replicas, "the loss sums");
}
