/*
 * npy_rows.c — sharded .npy files over MPI-IO: cpa_npy_read_rows and
 * cpa_npy_write_rows (contract in cpattn.h).
 *
 * What it is: every rank of a communicator reads or writes only its own
 * rows of one global float32 C-order array, with collective MPI-IO, so no
 * rank ever holds the whole array.  The array is seen as [outer, S, inner]
 * (outer = product of the dims before `axis`, inner = product after); a
 * rank's rows are its pieces {row, len, pos}, and its part of the file is
 * one block of len·inner floats at data offset + 4·(o·S + pos)·inner for
 * each outer index o and piece.  Those blocks, sorted by file offset (o,
 * then pos), are the file view (an hindexed type whose unit is one "row"
 * of `inner` floats, so no count passed to MPI is an element count: arrays
 * beyond 2^31 floats work).  A local tensor that is C-contiguous with its
 * rows in position order is read or written in place; any other (strides,
 * or pieces out of position order) goes through one staging buffer of the
 * local size, in block order.
 *
 * Reading accepts exactly the files cpa_npy_load accepts: every rank
 * checks the header itself with npy.c's parser (npy_internal.h).  Writing
 * produces exactly the bytes cpa_npy_save would write, atomically: rank 0
 * creates an exclusive temporary next to `path` (atomic_file.h's
 * "<dir>/.<base>.tmp.<pid>.<n>") and broadcasts its name, every rank
 * writes its blocks and rank 0 the header, and only when every rank has
 * succeeded does rank 0 fsync and rename it over `path`; on any failure
 * the temporary is removed and `path` is untouched.
 *
 * Errors: no rank proceeds to a collective that another rank has skipped.
 * Each step that can fail on one rank alone (a check, an allocation, the
 * open, the view, the transfer, the rename) ends in an agreement
 * (cpa_comm_agree): every rank returns the status and message of the
 * lowest failing rank.  The files use MPI_ERRORS_RETURN; MPI errors are
 * reported naming the file.
 *
 * What it is not: a general parallel .npy library (float32 only, like
 * npy.c), nor a way to read a file that changes while it is read.  It
 * lives in the Comm layer and knows nothing about attention.
 */
#include "atomic_file.h"
#include "comm.h"
#include "npy_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The agreed message: cpa_last_error's capacity. */
#define ROWS_MSG_CAP 1024
/* Room for the temporary's name (as npy.c: the longest path plus suffix). */
#define ROWS_PATH_CAP 4160
/* One rank's record in the write's all-gather: ndim, axis, 4 dims, the
 * path's hash, the piece count, then (pos, len) of each piece. */
#define REC_HEAD 8
#define REC_LEN (REC_HEAD + 2 * CPA_MAX_PIECES)

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

/* Every rank learns whether any rank failed; if one did, all return the
 * status and message of the lowest failing rank. */
static cpa_status agree(MPI_Comm comm, cpa_status mine)
{
    int code = (int)mine, who = -1;
    char msg[ROWS_MSG_CAP];
    snprintf(msg, sizeof msg, "%s", mine == CPA_OK ? "" : cpa_last_error());
    CPA_TRY(cpa_comm_agree(comm, &code, msg, sizeof msg, &who));
    return code == CPA_OK ? CPA_OK : cpa_error((cpa_status)code, "%s", msg);
}

/* An MPI-IO failure, naming the file: CPA_ERR_IO for the error classes
 * that describe the file (missing, no access, no space, ...), CPA_ERR_MPI
 * for the others. */
static cpa_status file_error(int rc, const char *path, const char *op)
{
    int cls = MPI_ERR_OTHER;
    MPI_Error_class(rc, &cls);
    bool io = cls == MPI_ERR_FILE || cls == MPI_ERR_NO_SUCH_FILE || cls == MPI_ERR_ACCESS ||
              cls == MPI_ERR_IO || cls == MPI_ERR_NO_SPACE || cls == MPI_ERR_QUOTA ||
              cls == MPI_ERR_READ_ONLY || cls == MPI_ERR_FILE_IN_USE ||
              cls == MPI_ERR_BAD_FILE || cls == MPI_ERR_FILE_EXISTS || cls == MPI_ERR_AMODE;
    cpa_mpi_error(rc, op);
    char why[ROWS_MSG_CAP - 64];
    snprintf(why, sizeof why, "%s", cpa_last_error()); /* cpa_error reuses that buffer */
    return cpa_error(io ? CPA_ERR_IO : CPA_ERR_MPI, "%s: %s", path, why);
}

/* ------------------------------------------------------------------------ */
/* The layout of one rank's rows                                             */
/* ------------------------------------------------------------------------ */

typedef struct rows_layout {
    int ndim, axis;
    int64_t outer, S, inner; /* the global array as [outer, S, inner] */
    int64_t L;               /* local rows along axis */
    int64_t numel;           /* local elements: outer·L·inner */
    int n;                   /* pieces with len > 0, sorted by pos */
    cpa_piece p[CPA_MAX_PIECES];
    int index[CPA_MAX_PIECES]; /* each one's index in the caller's list, for messages */
    bool direct;               /* local memory is the blocks in file order */
} rows_layout;

/* Dims of size 1 may have any stride. */
static bool is_c_contiguous(const cpa_tensor *t)
{
    int64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; --d) {
        if (t->shape[d] != 1 && t->stride[d] != expect)
            return false;
        expect *= t->shape[d];
    }
    return true;
}

static void sort_pieces(cpa_piece *p, int *index, int n, bool by_pos)
{
    for (int i = 1; i < n; ++i) /* insertion sort: stable, n <= CPA_MAX_PIECES */
        for (int j = i; j > 0 && (by_pos ? p[j - 1].pos > p[j].pos : p[j - 1].row > p[j].row);
             --j) {
            cpa_piece t = p[j];
            p[j] = p[j - 1];
            p[j - 1] = t;
            int k = index[j];
            index[j] = index[j - 1];
            index[j - 1] = k;
        }
}

/* Check this rank's pieces against the global array (`shape`, S =
 * shape[axis]) and the local tensor (which already matches `shape` outside
 * `axis`), and lay them out.  Local rows must be covered exactly once, and
 * a rank may not hold a position twice (a file view cannot go backwards). */
static cpa_status plan_rows(const char *path, int rank, int ndim, const int64_t *shape,
                            int axis, cpa_rows rows, const cpa_tensor *local, rows_layout *lay)
{
    memset(lay, 0, sizeof *lay);
    lay->ndim = ndim;
    lay->axis = axis;
    lay->outer = lay->inner = 1;
    for (int d = 0; d < axis; ++d)
        lay->outer *= shape[d];
    for (int d = axis + 1; d < ndim; ++d)
        lay->inner *= shape[d];
    lay->S = shape[axis];
    lay->L = local->shape[axis];
    lay->numel = lay->outer * lay->L * lay->inner;
    const int64_t S = lay->S, L = lay->L;

    if (rows.count < 0 || rows.count > CPA_MAX_PIECES)
        return cpa_error(CPA_ERR_ARG, "%s: rank %d passes %d row pieces; expected 0 to %d", path,
                         rank, rows.count, CPA_MAX_PIECES);
    if (rows.count > 0 && !rows.pieces)
        return cpa_error(CPA_ERR_ARG, "%s: rank %d passes %d row pieces but a NULL list", path,
                         rank, rows.count);
    if (rows.count == 0 && L > S)
        return cpa_error(CPA_ERR_ARG,
                         "%s: rank %d's local tensor has %lld rows along axis %d but the array "
                         "has only %lld (no pieces: local row j is global position j)",
                         path, rank, (long long)L, axis, (long long)S);
    cpa_piece all[CPA_MAX_PIECES];
    int idx[CPA_MAX_PIECES];
    int count = rows.count ? rows.count : 1;
    if (rows.count == 0)
        all[0] = (cpa_piece){0, L, 0};
    else
        memcpy(all, rows.pieces, sizeof(cpa_piece) * (size_t)count);
    int64_t total = 0;
    for (int i = 0; i < count; ++i) {
        const cpa_piece *q = &all[i];
        idx[i] = i;
        if (q->len < 0)
            return cpa_error(CPA_ERR_ARG, "%s: rank %d's piece %d has negative length %lld", path,
                             rank, i, (long long)q->len);
        if (q->pos < 0 || q->pos > S - q->len)
            return cpa_error(CPA_ERR_ARG,
                             "%s: rank %d's piece %d {row %lld, len %lld, pos %lld} covers "
                             "positions [%lld, %lld), outside the array's %lld along axis %d",
                             path, rank, i, (long long)q->row, (long long)q->len,
                             (long long)q->pos, (long long)q->pos, (long long)(q->pos + q->len),
                             (long long)S, axis);
        if (q->row < 0 || q->row > L - q->len)
            return cpa_error(CPA_ERR_ARG,
                             "%s: rank %d's piece %d {row %lld, len %lld, pos %lld} covers local "
                             "rows [%lld, %lld), outside the local tensor's %lld along axis %d",
                             path, rank, i, (long long)q->row, (long long)q->len,
                             (long long)q->pos, (long long)q->row, (long long)(q->row + q->len),
                             (long long)L, axis);
        total += q->len;
    }
    if (total != L)
        return cpa_error(CPA_ERR_ARG,
                         "%s: rank %d's pieces hold %lld rows but its local tensor has %lld "
                         "along axis %d; they must be equal",
                         path, rank, (long long)total, (long long)L, axis);
    /* Empty pieces place nothing; drop them. */
    int n = 0;
    for (int i = 0; i < count; ++i)
        if (all[i].len > 0) {
            all[n] = all[i];
            idx[n++] = idx[i];
        }
    sort_pieces(all, idx, n, false);
    for (int i = 1; i < n; ++i)
        if (all[i].row < all[i - 1].row + all[i - 1].len)
            return cpa_error(CPA_ERR_ARG,
                             "%s: rank %d's pieces %d and %d both place local rows [%lld, %lld) "
                             "along axis %d; each local row belongs to one piece",
                             path, rank, idx[i - 1], idx[i], (long long)all[i].row,
                             (long long)(all[i - 1].row + all[i - 1].len < all[i].row + all[i].len
                                             ? all[i - 1].row + all[i - 1].len
                                             : all[i].row + all[i].len),
                             axis);
    sort_pieces(all, idx, n, true);
    bool in_order = true;
    int64_t next_row = 0;
    for (int i = 0; i < n; ++i) {
        if (i > 0 && all[i].pos < all[i - 1].pos + all[i - 1].len)
            return cpa_error(CPA_ERR_ARG,
                             "%s: rank %d's pieces %d and %d both hold positions [%lld, %lld) "
                             "along axis %d; a rank holds each position at most once",
                             path, rank, idx[i - 1], idx[i], (long long)all[i].pos,
                             (long long)(all[i - 1].pos + all[i - 1].len < all[i].pos + all[i].len
                                             ? all[i - 1].pos + all[i - 1].len
                                             : all[i].pos + all[i].len),
                             axis);
        in_order = in_order && all[i].row == next_row;
        next_row += all[i].len;
    }
    lay->n = n;
    memcpy(lay->p, all, sizeof(cpa_piece) * (size_t)n);
    memcpy(lay->index, idx, sizeof(int) * (size_t)n);
    lay->direct = lay->numel == 0 || (in_order && is_c_contiguous(local));
    return CPA_OK;
}

/* The file view of this rank's blocks, relative to the data offset: one
 * block of len rows (of `inner` floats) per (outer index, piece), in file
 * order.  A rank with nothing to transfer gets MPI_FLOAT (not to be
 * freed): a zero-sized file type is not something every MPI-IO takes. */
static cpa_status build_filetype(const char *path, const rows_layout *lay, MPI_Datatype *ft)
{
    *ft = MPI_FLOAT;
    if (lay->numel == 0)
        return CPA_OK;
    /* A block length is an int count of rows: cut longer runs. */
    int64_t per_outer = 0;
    for (int k = 0; k < lay->n; ++k)
        per_outer += (lay->p[k].len + INT_MAX - 1) / INT_MAX;
    if (lay->outer > INT_MAX / per_outer)
        return cpa_error(CPA_ERR_ARG,
                         "%s: %lld blocks of rows on one rank are more than MPI can describe "
                         "(at most %d)",
                         path, (long long)(lay->outer * per_outer), INT_MAX);
    const int nblocks = (int)(lay->outer * per_outer);
    int *lens = cpa_malloc(sizeof(int) * (size_t)nblocks, "file view block lengths");
    MPI_Aint *disps = lens ? cpa_malloc(sizeof(MPI_Aint) * (size_t)nblocks,
                                        "file view block offsets")
                           : NULL;
    if (!disps) {
        cpa_free(lens);
        return cpa_nomem_for(path);
    }
    int b = 0;
    const int64_t row_bytes = lay->inner * (int64_t)sizeof(float);
    for (int64_t o = 0; o < lay->outer; ++o)
        for (int k = 0; k < lay->n; ++k)
            for (int64_t at = 0; at < lay->p[k].len; at += INT_MAX) {
                int64_t left = lay->p[k].len - at;
                lens[b] = left < INT_MAX ? (int)left : INT_MAX;
                disps[b] = (MPI_Aint)((o * lay->S + lay->p[k].pos + at) * row_bytes);
                ++b;
            }
    /* The unit: one row of `inner` floats (itself a derived type beyond
     * MPI's int count). */
    MPI_Datatype unit, row = MPI_DATATYPE_NULL;
    int n = 0, rc = MPI_SUCCESS;
    cpa_status st = cpa_comm_float_type(lay->inner, &unit, &n);
    if (st == CPA_OK) {
        rc = MPI_Type_contiguous(n, unit, &row);
        if (unit != MPI_FLOAT)
            MPI_Type_free(&unit);
        if (rc == MPI_SUCCESS)
            rc = MPI_Type_create_hindexed(nblocks, lens, disps, row, ft);
        if (rc == MPI_SUCCESS)
            rc = MPI_Type_commit(ft);
        if (row != MPI_DATATYPE_NULL)
            MPI_Type_free(&row);
        if (rc != MPI_SUCCESS) {
            *ft = MPI_FLOAT;
            st = file_error(rc, path, "building the file view (MPI_Type_create_hindexed)");
        }
    }
    cpa_free(disps);
    cpa_free(lens);
    return st;
}

static void free_type(MPI_Datatype *t)
{
    if (*t != MPI_FLOAT && *t != MPI_DATATYPE_NULL)
        MPI_Type_free(t);
    *t = MPI_FLOAT;
}

/* Copy between the local view and `buf`, which holds the blocks in file
 * order (for each outer index, the pieces by position, each len·inner
 * floats in C order). */
static void stage_copy(const rows_layout *lay, const cpa_tensor *local, float *buf,
                       bool into_local)
{
    const int axis = lay->axis;
    int64_t idx[CPA_MAX_DIMS] = {0}; /* the outer dims, as an odometer */
    for (int64_t o = 0; o < lay->outer; ++o) {
        int64_t base = 0;
        for (int d = 0; d < axis; ++d)
            base += idx[d] * local->stride[d];
        for (int k = 0; k < lay->n; ++k) {
            cpa_tensor sub; /* [len, dims after axis...] of the local view */
            sub.ndim = lay->ndim - axis;
            sub.data = local->data + base + lay->p[k].row * local->stride[axis];
            for (int d = 0; d < sub.ndim; ++d) {
                sub.shape[d] = local->shape[axis + d];
                sub.stride[d] = local->stride[axis + d];
            }
            sub.shape[0] = lay->p[k].len;
            cpa_npy_view_copy(&sub, buf, into_local);
            buf += lay->p[k].len * lay->inner;
        }
        for (int d = axis - 1; d >= 0; --d) {
            if (++idx[d] < local->shape[d])
                break;
            idx[d] = 0;
        }
    }
}

/* The buffer MPI transfers from or to: the local data in place, or a
 * staging buffer.  *stage is what to free. */
static cpa_status transfer_buffer(const char *path, const rows_layout *lay,
                                  const cpa_tensor *local, float **buf, float **stage)
{
    *stage = NULL;
    if (lay->direct) {
        *buf = local->data;
        return CPA_OK;
    }
    *stage = cpa_malloc((size_t)lay->numel * sizeof(float), "sharded .npy staging buffer");
    if (!*stage)
        return cpa_nomem_for(path);
    *buf = *stage;
    return CPA_OK;
}

/* ------------------------------------------------------------------------ */
/* Reading                                                                   */
/* ------------------------------------------------------------------------ */

/* The local tensor has the file's shape except along `axis`. */
static cpa_status check_read_shape(const char *path, const cpa_npy_info *info, int axis,
                                   const cpa_tensor *local)
{
    char fs[CPA_NPY_SHAPE_TEXT_CAP], ls[CPA_NPY_SHAPE_TEXT_CAP], es[CPA_NPY_SHAPE_TEXT_CAP];
    cpa_npy_shape_text(fs, sizeof fs, info->ndim, info->shape);
    if (axis < 0 || axis >= info->ndim)
        return cpa_error(CPA_ERR_ARG, "%s: axis %d is outside the file's %d dims (shape %s)",
                         path, axis, info->ndim, fs);
    cpa_npy_shape_text(ls, sizeof ls, local->ndim, local->shape);
    if (local->ndim != info->ndim)
        return cpa_error(CPA_ERR_ARG,
                         "%s: shape %s has %d dims but the local tensor %s has %d", path, fs,
                         info->ndim, ls, local->ndim);
    int64_t expect[CPA_MAX_DIMS];
    memcpy(expect, local->shape, sizeof expect);
    expect[axis] = info->shape[axis];
    for (int d = 0; d < info->ndim; ++d)
        if (info->shape[d] != expect[d])
            return cpa_error(CPA_ERR_ARG,
                             "%s: shape %s does not match the expected %s (the local tensor's "
                             "%s with the file's %lld positions along axis %d)",
                             path, fs, cpa_npy_shape_text(es, sizeof es, info->ndim, expect), ls,
                             (long long)info->shape[axis], axis);
    return CPA_OK;
}

cpa_status cpa_npy_read_rows(MPI_Comm comm, const char *path, int axis, cpa_rows rows,
                             cpa_tensor local)
{
    if (comm == MPI_COMM_NULL)
        return cpa_error(CPA_ERR_ARG, "cpa_npy_read_rows: communicator is MPI_COMM_NULL");
    int rank = 0;
    MPI_Comm_rank(comm, &rank);

    /* 1. Every check this rank can make alone, and what the transfer needs. */
    cpa_status st = CPA_OK;
    int64_t numel = 0;
    cpa_npy_info info;
    rows_layout lay;
    MPI_Datatype ft = MPI_FLOAT, mt = MPI_FLOAT;
    int mn = 0;
    float *buf = NULL, *stage = NULL, dummy = 0.0f;
    if (!path)
        st = cpa_error(CPA_ERR_ARG, "cpa_npy_read_rows: NULL path");
    if (st == CPA_OK)
        st = cpa_npy_check_view(path, &local, "local", &numel);
    if (st == CPA_OK)
        st = cpa_npy_read_header(path, &info);
    if (st == CPA_OK)
        st = check_read_shape(path, &info, axis, &local);
    if (st == CPA_OK)
        st = plan_rows(path, rank, info.ndim, info.shape, axis, rows, &local, &lay);
    if (st == CPA_OK)
        st = transfer_buffer(path, &lay, &local, &buf, &stage);
    if (st == CPA_OK)
        st = build_filetype(path, &lay, &ft);
    if (st == CPA_OK)
        st = cpa_comm_float_type(numel, &mt, &mn);
    cpa_status all = agree(comm, st);
    if (all != CPA_OK)
        goto free_types;

    /* 2. Open; nobody touches the file unless everybody has it open. */
    MPI_File fh = MPI_FILE_NULL;
    int rc = MPI_File_open(comm, path, MPI_MODE_RDONLY, MPI_INFO_NULL, &fh);
    st = rc == MPI_SUCCESS ? CPA_OK : file_error(rc, path, "MPI_File_open (reading)");
    if (st == CPA_OK && (rc = MPI_File_set_errhandler(fh, MPI_ERRORS_RETURN)) != MPI_SUCCESS)
        st = file_error(rc, path, "MPI_File_set_errhandler");
    all = agree(comm, st);
    if (all != CPA_OK)
        /* If only some ranks opened it, its collective close would wait for
         * the others forever: their handle is left open instead. */
        goto free_types;

    /* 3. The view, agreed before the collective read. */
    rc = MPI_File_set_view(fh, (MPI_Offset)info.data_offset, MPI_FLOAT, ft, "native",
                           MPI_INFO_NULL);
    st = rc == MPI_SUCCESS ? CPA_OK : file_error(rc, path, "MPI_File_set_view (reading)");
    all = agree(comm, st);
    if (all == CPA_OK) {
        MPI_Status status;
        rc = MPI_File_read_all(fh, buf ? buf : &dummy, mn, mt, &status);
        MPI_Count got = 0;
        if (rc != MPI_SUCCESS)
            st = file_error(rc, path, "MPI_File_read_all");
        else if (MPI_Get_elements_x(&status, MPI_FLOAT, &got) != MPI_SUCCESS || got != numel)
            st = cpa_error(CPA_ERR_FORMAT,
                           "%s: truncated: rank %d read %lld of its %lld values (was the file "
                           "changed while being read?)",
                           path, rank, (long long)got, (long long)numel);
    }
    rc = MPI_File_close(&fh);
    if (rc != MPI_SUCCESS && st == CPA_OK)
        st = file_error(rc, path, "MPI_File_close (reading)");
    if (all == CPA_OK)
        all = agree(comm, st);
    /* Staged rows reach the caller's tensor only on success everywhere. */
    if (all == CPA_OK && stage)
        stage_copy(&lay, &local, stage, true);

free_types:
    free_type(&mt);
    free_type(&ft);
    cpa_free(stage);
    return all;
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                   */
/* ------------------------------------------------------------------------ */

/* The global shape and the local tensor against it. */
static cpa_status check_write_args(const char *path, int ndim, const int64_t *global_shape,
                                   int axis, const cpa_tensor *local, int64_t *numel)
{
    if (ndim < 1 || ndim > CPA_MAX_DIMS)
        return cpa_error(CPA_ERR_ARG, "%s: the global array has ndim %d; expected 1 to %d",
                         path, ndim, CPA_MAX_DIMS);
    if (!global_shape)
        return cpa_error(CPA_ERR_ARG, "%s: NULL global shape", path);
    char gs[CPA_NPY_SHAPE_TEXT_CAP], ls[CPA_NPY_SHAPE_TEXT_CAP];
    cpa_npy_shape_text(gs, sizeof gs, ndim, global_shape);
    int64_t total = 1;
    for (int d = 0; d < ndim; ++d)
        if (global_shape[d] < 0)
            return cpa_error(CPA_ERR_ARG, "%s: the global shape %s has a negative dim", path,
                             gs);
        else if (global_shape[d] == 0)
            total = 0;
    for (int d = 0; d < ndim && total != 0; ++d) {
        if (total > INT64_MAX / (int64_t)sizeof(float) / global_shape[d])
            return cpa_error(CPA_ERR_ARG,
                             "%s: the global shape %s is too large: its byte size overflows 64 "
                             "bits",
                             path, gs);
        total *= global_shape[d];
    }
    if (axis < 0 || axis >= ndim)
        return cpa_error(CPA_ERR_ARG, "%s: axis %d is outside the global array's %d dims (shape "
                                      "%s)",
                         path, axis, ndim, gs);
    CPA_TRY(cpa_npy_check_view(path, local, "local", numel));
    cpa_npy_shape_text(ls, sizeof ls, local->ndim, local->shape);
    bool same = local->ndim == ndim;
    for (int d = 0; same && d < ndim; ++d)
        same = d == axis || local->shape[d] == global_shape[d];
    if (!same)
        return cpa_error(CPA_ERR_ARG,
                         "%s: the local tensor's shape %s does not match the global shape %s "
                         "outside axis %d",
                         path, ls, gs, axis);
    return CPA_OK;
}

typedef struct cover_entry {
    int64_t pos, len;
    int rank;
} cover_entry;

static int cover_cmp(const void *a, const void *b)
{
    const cover_entry *x = a, *y = b;
    if (x->pos != y->pos)
        return x->pos < y->pos ? -1 : 1;
    return x->rank - y->rank;
}

/* Every rank passed the same array and path, and the pieces of all ranks
 * cover [0, S) exactly once.  One all-gather of a fixed record per rank
 * (O(P) memory, whatever S); every rank then reaches the same verdict. */
static cpa_status check_cover(MPI_Comm comm, const char *path, const int64_t *global_shape,
                              const rows_layout *lay)
{
    int P = 1;
    MPI_Comm_size(comm, &P);
    int64_t mine[REC_LEN] = {0};
    mine[0] = lay->ndim;
    mine[1] = lay->axis;
    for (int d = 0; d < CPA_MAX_DIMS; ++d)
        mine[2 + d] = d < lay->ndim ? global_shape[d] : 1;
    mine[6] = (int64_t)(cpa_fnv1a64(CPA_FNV_OFFSET, path, strlen(path)) >> 1);
    mine[7] = lay->n;
    for (int k = 0; k < lay->n; ++k) {
        mine[REC_HEAD + 2 * k] = lay->p[k].pos;
        mine[REC_HEAD + 2 * k + 1] = lay->p[k].len;
    }
    int64_t *recs = cpa_malloc(sizeof(int64_t) * REC_LEN * (size_t)P, "the ranks' pieces");
    cover_entry *e = recs ? cpa_malloc(sizeof(cover_entry) * CPA_MAX_PIECES * (size_t)P,
                                       "the ranks' pieces")
                          : NULL;
    if (!e) {
        cpa_free(recs);
        return cpa_nomem_for(path);
    }
    cpa_status st = CPA_OK;
    MPI_Request req;
    int rc = MPI_Iallgather(mine, REC_LEN, MPI_INT64_T, recs, REC_LEN, MPI_INT64_T, comm, &req);
    if (rc != MPI_SUCCESS)
        st = cpa_mpi_error(rc, "MPI_Iallgather (the ranks' pieces)");
    else
        st = cpa_comm_wait(1, &req, "%s: gathering the ranks' pieces", path);
    int n = 0;
    for (int r = 0; st == CPA_OK && r < P; ++r) {
        const int64_t *rec = recs + (size_t)r * REC_LEN;
        if (memcmp(rec, recs, sizeof(int64_t) * 6) != 0) {
            char s0[CPA_NPY_SHAPE_TEXT_CAP], sr[CPA_NPY_SHAPE_TEXT_CAP];
            int n0 = (int)recs[0], nr = (int)rec[0];
            st = cpa_error(CPA_ERR_ARG,
                           "%s: the ranks disagree on the array: rank 0 passes shape %s and "
                           "axis %d, rank %d shape %s and axis %d; every rank must pass the same",
                           path, cpa_npy_shape_text(s0, sizeof s0, n0, recs + 2), (int)recs[1],
                           r, cpa_npy_shape_text(sr, sizeof sr, nr, rec + 2), (int)rec[1]);
        } else if (rec[6] != recs[6]) {
            st = cpa_error(CPA_ERR_ARG,
                           "%s: rank %d names a different file than rank 0; every rank must "
                           "pass the same path",
                           path, r);
        }
        for (int k = 0; st == CPA_OK && k < (int)rec[7]; ++k)
            e[n++] = (cover_entry){rec[REC_HEAD + 2 * k], rec[REC_HEAD + 2 * k + 1], r};
    }
    if (st == CPA_OK) {
        qsort(e, (size_t)n, sizeof *e, cover_cmp);
        int64_t end = 0;
        int owner = -1;
        for (int i = 0; i <= n && st == CPA_OK; ++i) {
            int64_t pos = i < n ? e[i].pos : lay->S;
            if (pos > end)
                st = cpa_error(CPA_ERR_ARG,
                               "%s: positions [%lld, %lld) along axis %d are written by no "
                               "rank; the pieces of all ranks must cover each of the %lld "
                               "positions exactly once",
                               path, (long long)end, (long long)pos, lay->axis,
                               (long long)lay->S);
            else if (i < n && pos < end)
                st = cpa_error(CPA_ERR_ARG,
                               "%s: positions [%lld, %lld) along axis %d are written by both "
                               "rank %d and rank %d; the pieces of all ranks must cover each "
                               "position exactly once",
                               path, (long long)pos,
                               (long long)(end < pos + e[i].len ? end : pos + e[i].len),
                               lay->axis, owner, e[i].rank);
            else if (i < n) {
                end = pos + e[i].len;
                owner = e[i].rank;
            }
        }
    }
    cpa_free(e);
    cpa_free(recs);
    return st;
}

cpa_status cpa_npy_write_rows(MPI_Comm comm, const char *path, int ndim,
                              const int64_t *global_shape, int axis, cpa_rows rows,
                              cpa_tensor local)
{
    if (comm == MPI_COMM_NULL)
        return cpa_error(CPA_ERR_ARG, "cpa_npy_write_rows: communicator is MPI_COMM_NULL");
    int rank = 0;
    MPI_Comm_rank(comm, &rank);

    /* 1. Every check this rank can make alone, and the data ready to go:
     * nothing is created on disk before every rank is. */
    cpa_status st = CPA_OK;
    int64_t numel = 0;
    rows_layout lay;
    MPI_Datatype ft = MPI_FLOAT, mt = MPI_FLOAT;
    int mn = 0;
    float *buf = NULL, *stage = NULL, dummy = 0.0f;
    char header[CPA_NPY_HEADER_CAP];
    size_t header_len = 0;
    if (!path)
        st = cpa_error(CPA_ERR_ARG, "cpa_npy_write_rows: NULL path");
    if (st == CPA_OK)
        st = check_write_args(path, ndim, global_shape, axis, &local, &numel);
    if (st == CPA_OK)
        st = plan_rows(path, rank, ndim, global_shape, axis, rows, &local, &lay);
    if (st == CPA_OK && (header_len = cpa_npy_header_build(ndim, global_shape, header,
                                                           sizeof header)) == 0)
        st = cpa_error(CPA_ERR_INTERNAL, "%s: .npy header does not fit its buffer", path);
    if (st == CPA_OK)
        st = transfer_buffer(path, &lay, &local, &buf, &stage);
    if (st == CPA_OK && stage)
        stage_copy(&lay, &local, stage, false);
    if (st == CPA_OK)
        st = build_filetype(path, &lay, &ft);
    if (st == CPA_OK)
        st = cpa_comm_float_type(numel, &mt, &mn);
    cpa_status all = agree(comm, st);
    if (all == CPA_OK)
        all = agree(comm, check_cover(comm, path, global_shape, &lay));
    if (all != CPA_OK)
        goto free_types;

    /* 2. Rank 0 makes the temporary and tells the others its name. */
    char tmp[ROWS_PATH_CAP] = "";
    bool made = false; /* rank 0: the temporary exists and is ours to remove */
    st = CPA_OK;
    if (rank == 0) {
        char why[128];
        int fd = cpa_temp_create(path, tmp, sizeof tmp);
        if (fd < 0)
            st = cpa_error(CPA_ERR_IO, "%s: cannot create a temporary file next to it: %s", path,
                           cpa_errno_text(errno, why, sizeof why));
        else {
            made = true;
            if (close(fd) != 0)
                st = cpa_temp_error(path, "close", "temporary file", tmp, errno);
        }
    }
    all = agree(comm, st);
    if (all == CPA_OK)
        all = agree(comm, cpa_comm_bcast(tmp, (int)sizeof tmp, MPI_CHAR, 0, comm,
                                         "the temporary file's name"));
    if (all != CPA_OK)
        goto remove_temp;
    tmp[sizeof tmp - 1] = '\0';

    /* 3. Open; nobody touches the file unless everybody has it open. */
    MPI_File fh = MPI_FILE_NULL;
    int rc = MPI_File_open(comm, tmp, MPI_MODE_CREATE | MPI_MODE_WRONLY, MPI_INFO_NULL, &fh);
    st = rc == MPI_SUCCESS ? CPA_OK : file_error(rc, path, "MPI_File_open (the temporary file)");
    if (st == CPA_OK && (rc = MPI_File_set_errhandler(fh, MPI_ERRORS_RETURN)) != MPI_SUCCESS)
        st = file_error(rc, path, "MPI_File_set_errhandler");
    all = agree(comm, st);
    if (all != CPA_OK)
        /* If only some ranks opened it, its collective close would wait for
         * the others forever: their handle is left open instead. */
        goto remove_temp;

    /* 4. Rank 0's header, then the view, agreed before the collective write. */
    if (rank == 0) {
        MPI_Status status;
        int wrote = 0;
        rc = MPI_File_write_at(fh, 0, header, (int)header_len, MPI_BYTE, &status);
        if (rc != MPI_SUCCESS)
            st = file_error(rc, path, "MPI_File_write_at (the header)");
        else if (MPI_Get_count(&status, MPI_BYTE, &wrote) != MPI_SUCCESS ||
                 wrote != (int)header_len)
            st = cpa_error(CPA_ERR_IO, "%s: wrote %d of the header's %zu bytes to %s", path,
                           wrote, header_len, tmp);
    }
    rc = MPI_File_set_view(fh, (MPI_Offset)header_len, MPI_FLOAT, ft, "native", MPI_INFO_NULL);
    if (rc != MPI_SUCCESS && st == CPA_OK)
        st = file_error(rc, path, "MPI_File_set_view (writing)");
    all = agree(comm, st);
    if (all == CPA_OK) {
        MPI_Status status;
        MPI_Count put = 0;
        rc = MPI_File_write_all(fh, buf ? buf : &dummy, mn, mt, &status);
        if (rc != MPI_SUCCESS)
            st = file_error(rc, path, "MPI_File_write_all");
        else if (MPI_Get_elements_x(&status, MPI_FLOAT, &put) != MPI_SUCCESS || put != numel)
            st = cpa_error(CPA_ERR_IO, "%s: rank %d wrote %lld of its %lld values to %s", path,
                           rank, (long long)put, (long long)numel, tmp);
        /* ENOSPC and friends may only show here; collective, so everybody. */
        rc = MPI_File_sync(fh);
        if (rc != MPI_SUCCESS && st == CPA_OK)
            st = file_error(rc, path, "MPI_File_sync");
    }
    rc = MPI_File_close(&fh);
    if (rc != MPI_SUCCESS && st == CPA_OK)
        st = file_error(rc, path, "MPI_File_close (writing)");
    if (all == CPA_OK)
        all = agree(comm, st);
    if (all != CPA_OK)
        goto remove_temp;

    /* 5. Every rank wrote: rank 0 renames the temporary into place (fsync,
     * rename, folder fsync; cpa_temp_commit removes it on failure). */
    st = CPA_OK;
    if (rank == 0) {
        int fd = open(tmp, O_RDONLY | O_CLOEXEC);
        struct stat sb;
        memset(&sb, 0, sizeof sb);
        /* Some MPI-IO modules (Open MPI's ompio) report a write cut short
         * by a full disk as a success: the size on disk is the proof. */
        int64_t values = 1; /* the file must hold the header and 4 bytes per value */
        for (int i = 0; i < ndim; ++i)
            values *= global_shape[i];
        const int64_t want = (int64_t)header_len + 4 * values;
        if (fd < 0) {
            st = cpa_temp_error(path, "reopen", "temporary file", tmp, errno);
        } else if (fstat(fd, &sb) != 0 || (int64_t)sb.st_size != want) {
            st = cpa_error(CPA_ERR_IO, "%s: the temporary file %s holds %lld bytes after every "
                           "rank's write, not the %lld of the header and data (a full disk or "
                           "quota?); nothing was replaced", path, tmp,
                           (long long)sb.st_size, (long long)want);
            close(fd);
            fd = -1;
        } else {
            st = cpa_temp_commit(fd, tmp, path, "temporary file");
        }
        made = st != CPA_OK && fd < 0; /* commit removed it itself on failure */
    }
    all = agree(comm, st);
    if (all == CPA_OK && rank == 0)
        cpa_temp_sweep(path); /* what earlier crashed saves left behind */

remove_temp:
    if (made && all != CPA_OK)
        unlink(tmp);
free_types:
    free_type(&mt);
    free_type(&ft);
    cpa_free(stage);
    return all;
}
