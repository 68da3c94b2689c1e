/*
 * npy_internal.h — what npy.c shares with the sharded .npy reader and
 * writer (src/comm/npy_rows.c), never installed.
 *
 * What it is: the pieces of the single-process .npy code that a collective
 * MPI-IO reader and writer need so that they accept exactly the files
 * cpa_npy_load accepts and write exactly the bytes cpa_npy_save writes —
 * the strict header check (with the data offset, which the public calls
 * keep to themselves), the header bytes for a shape, the check of a
 * caller's strided view, and the C-order copy between a view and a flat
 * buffer.  Every function that returns a cpa_status records its message
 * with cpa_error, naming the file.
 *
 * What it is not: a second .npy API.  Everything here behaves as the
 * public cpa_npy_* calls do; they are built from the same code.
 */
#ifndef CPATTN_NPY_INTERNAL_H
#define CPATTN_NPY_INTERNAL_H

#include "internal.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Room for any header cpa_npy_header_build writes (4 dims of 20 digits
 * need 128 bytes; numpy pads to a multiple of 64). */
#define CPA_NPY_HEADER_CAP 256
/* Room for cpa_npy_shape_text of up to CPA_MAX_DIMS dims. */
#define CPA_NPY_SHAPE_TEXT_CAP 128

/* What a valid header says. */
typedef struct cpa_npy_info {
    int ndim;
    int64_t shape[CPA_MAX_DIMS]; /* entries from ndim on are 1 */
    int64_t numel;
    int64_t data_offset; /* bytes before the first data byte */
} cpa_npy_info;

/* Open `path`, check its header exactly as cpa_npy_load does (magic,
 * version, dict, '<f4', C order, 1..CPA_MAX_DIMS dims, the data length
 * against the file size), close it, and return what the header says.
 * Same statuses and messages as cpa_npy_shape. */
cpa_status cpa_npy_read_header(const char *path, cpa_npy_info *info);

/* The bytes cpa_npy_save (and numpy.save) write before the data of a
 * C-order float32 array of `ndim` dims `shape`: magic, version 1.0, the
 * header length and the padded dict, a multiple of 64 bytes in all.
 * Returns the length, or 0 if `cap` is too small (CPA_NPY_HEADER_CAP never
 * is). */
size_t cpa_npy_header_build(int ndim, const int64_t *shape, char *out, size_t cap);

/* Check a caller's view as the public calls do — 1..CPA_MAX_DIMS dims, no
 * negative shape, byte size and stride offsets inside int64, data not NULL
 * unless empty — and return its element count.  `role` names it in the
 * message ("source", "destination", "local"). */
cpa_status cpa_npy_check_view(const char *path, const cpa_tensor *t, const char *role,
                              int64_t *numel);

/* Copy every element of the view `t` (checked by cpa_npy_check_view), in
 * C order, to `buf` (into_view false: gather) or from `buf` into the view
 * (into_view true: scatter). */
void cpa_npy_view_copy(const cpa_tensor *t, float *buf, bool into_view);

/* "(2, 3)", "(5,)": Python's repr of a shape, as numpy writes it in a
 * header and as the .npy messages print it.  Returns `buf`. */
const char *cpa_npy_shape_text(char *buf, size_t cap, int ndim, const int64_t *shape);

#endif /* CPATTN_NPY_INTERNAL_H */
