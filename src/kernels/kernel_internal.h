/*
 * kernel_internal.h — what the attention kernels share and nothing else:
 * tile sizes, the context layout, argument validation, the tiling of piece
 * lists, the mask's visible key range, and vectorised row primitives
 * (exp, max, sums).  Kernels never call MPI.
 */
#ifndef CPATTN_KERNEL_INTERNAL_H
#define CPATTN_KERNEL_INTERNAL_H

#include "internal.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>

/* Tile sizes: a query tile of CPA_TILE_Q rows meets a key tile of
 * CPA_TILE_K rows.  128x128 keeps a tile's scores (64 KiB) plus the Q, K,
 * V tiles inside L2 and gives OpenBLAS shapes it runs near peak. */
#define CPA_TILE_Q 128
#define CPA_TILE_K 128
/* The forward uses longer key tiles: it has one score buffer instead of two,
 * and fewer tiles mean fewer rescalings of the output accumulator
 * (measured: 128x256 runs ~5% faster than 128x128 at D=128). */
#ifndef CPA_FWD_TILE_Q
#define CPA_FWD_TILE_Q CPA_TILE_Q
#endif
#ifndef CPA_FWD_TILE_K
#define CPA_FWD_TILE_K 256
#endif

struct cpa_attn_ctx {
    int num_threads;
    int64_t max_head_dim;
    size_t scratch_floats; /* per thread */
    float *scratch;        /* [num_threads, scratch_floats] */
};

/* One tile: `len` rows of a tensor starting at `row`, at global positions
 * starting at `pos`.  Tiles never straddle pieces, so positions inside a
 * tile are contiguous. */
typedef struct cpa_tile {
    int64_t row, len, pos;
} cpa_tile;

/* A piece list cut into tiles of at most `tile` rows. */
typedef struct cpa_tiling {
    cpa_piece pieces[CPA_MAX_PIECES];
    int64_t first_tile[CPA_MAX_PIECES + 1]; /* prefix count of tiles per piece */
    int count;
    int64_t tile;
} cpa_tiling;

void cpa_tiling_init(cpa_tiling *t, cpa_rows rows, int64_t nrows, int64_t tile);
static inline int64_t cpa_tiling_count(const cpa_tiling *t) { return t->first_tile[t->count]; }
cpa_tile cpa_tiling_get(const cpa_tiling *t, int64_t index);

/* How a key tile relates to a query tile under the mask. */
typedef enum { CPA_TILE_SKIP, CPA_TILE_FULL, CPA_TILE_PARTIAL } cpa_tile_class;

/* Visible keys of a query at position qpos are [lo, hi] (inclusive). */
static inline void cpa_mask_range(cpa_mask m, int64_t qpos, int64_t *lo, int64_t *hi)
{
    *lo = INT64_MIN;
    *hi = (m.kind == CPA_MASK_CAUSAL) ? qpos : INT64_MAX;
}

cpa_tile_class cpa_tile_classify(cpa_mask m, cpa_tile q, cpa_tile k);

/* For a partial tile: in query row i, key columns outside [*j0, *j1) are
 * masked (the visible columns form one contiguous run, possibly empty). */
void cpa_tile_row_visible(cpa_mask m, cpa_tile q, cpa_tile k, int64_t i, int64_t *j0,
                          int64_t *j1);

/* Number of visible (query, key) pairs between two pieces. */
double cpa_visible_pairs(cpa_mask m, cpa_piece q, cpa_piece k);

/* Argument checks shared by the fast and reference paths.  `backward`
 * selects the extra tensors' checks; the pointers may be NULL otherwise. */
cpa_status cpa_attn_check(const cpa_attn_desc *d, const cpa_tensor *out, const cpa_tensor *lse,
                          const cpa_tensor *dout, const cpa_tensor *dq, const cpa_tensor *dk,
                          const cpa_tensor *dv);

float cpa_attn_scale(const cpa_attn_desc *d);

/* Resolve a NULL context into a temporary one sized for `d`; *tmp is set to
 * the context to destroy afterwards (NULL if the caller's was used). */
cpa_status cpa_attn_ctx_resolve(cpa_attn_ctx *ctx, const cpa_attn_desc *d, cpa_attn_ctx **use,
                                cpa_attn_ctx **tmp);

/* Row primitives (vectorised with AVX2+FMA where available). */
float cpa_row_max(const float *x, int64_t n);
/* x[j] = exp(x[j] - shift) for j < n; returns the sum of the results.
 * Entries equal to -inf give exactly 0. */
float cpa_row_exp_sum(float *x, int64_t n, float shift);
/* x[j] = exp(x[j] - shift), no sum. */
void cpa_row_exp(float *x, int64_t n, float shift);
/* Returns sum_j a[j]*b[j]. */
float cpa_row_dot(const float *a, const float *b, int64_t n);
/* Element pointer of a 4-D view at (b, s, n, 0). */
static inline float *cpa_at4(const cpa_tensor *t, int64_t b, int64_t s, int64_t n)
{
    return t->data + b * t->stride[0] + s * t->stride[1] + n * t->stride[2];
}
static inline float *cpa_at3(const cpa_tensor *t, int64_t b, int64_t h, int64_t s)
{
    return t->data + b * t->stride[0] + h * t->stride[1] + s * t->stride[2];
}

/* Call at the top of every parallel region that calls BLAS.  The OpenMP
 * build of OpenBLAS runs single-threaded inside an *active* parallel region,
 * but a team of one thread is not active, so with one thread OpenBLAS would
 * split its GEMMs over all cores — oversubscribing, and changing the
 * rounding (the results must not depend on the thread count).  Setting the
 * thread's own OpenMP thread limit to 1 (an ICV local to this region)
 * keeps every GEMM on the calling thread. */
static inline void cpa_blas_single_thread(void) { omp_set_num_threads(1); }

/* The start of a kernel's parallel region: pin BLAS to this thread, say
 * whether this thread drives the progress callback (thread 0, the one MPI
 * allows to call it), and return this thread's scratch block. */
static inline float *cpa_thread_begin(const cpa_attn_ctx *ctx, const cpa_attn_desc *d,
                                      int *progress)
{
    cpa_blas_single_thread();
    *progress = d->progress && omp_get_thread_num() == 0;
    return ctx->scratch + (size_t)omp_get_thread_num() * ctx->scratch_floats;
}

/* Scalar exp with the same polynomial as the vector path (for tails). */
float cpa_expf(float x);

/* The reference implementations (attn_ref.c). */
cpa_status cpa_attn_forward_ref(const cpa_attn_desc *d, cpa_tensor out, cpa_tensor lse);
cpa_status cpa_attn_backward_ref(const cpa_attn_desc *d, cpa_tensor out, cpa_tensor lse,
                                 cpa_tensor dout, cpa_tensor dq, cpa_tensor dk, cpa_tensor dv);

#endif /* CPATTN_KERNEL_INTERNAL_H */
