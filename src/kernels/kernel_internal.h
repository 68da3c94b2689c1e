/*
 * kernel_internal.h — what the attention kernels share and nothing else:
 * tile sizes, the context and job layouts, the table of instruction sets,
 * argument validation, the tiling of piece lists and the mask's visible key
 * ranges.  Kernels never call MPI.
 */
#ifndef CPATTN_KERNEL_INTERNAL_H
#define CPATTN_KERNEL_INTERNAL_H

#include "internal.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>

/* Forward: keys per key tile (the score buffer holds CPA_FWD_KEYS x panel
 * rows); at most CPA_FWD_MAX_PANELS query panels share each K/V tile while
 * it is in cache.  Backward: query rows per unit (a unit is the work a key
 * task does for one query tile of one head; dQ is added per unit). */
#define CPA_FWD_KEYS 128
#define CPA_FWD_MAX_PANELS 8
#define CPA_BWD_ROWS 64

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

/* ---- instruction sets ------------------------------------------------- */

typedef struct cpa_fwd_job cpa_fwd_job;
typedef struct cpa_bwd_job cpa_bwd_job;

/* One instruction set's kernels (attn_simd.c compiled for it): its panel
 * sizes, scratch needs and task functions. */
typedef struct cpa_isa_kernels {
    int lanes;    /* floats per vector */
    int fwd_rows; /* query rows per forward panel (lanes) */
    int bwd_keys; /* keys per backward task (lanes) */
    size_t (*fwd_scratch_floats)(int64_t max_head_dim, int panels);
    size_t (*bwd_scratch_floats)(int64_t max_head_dim);
    void (*fwd_task)(const cpa_fwd_job *job, int64_t task, float *scratch, int progress);
    void (*bwd_task)(const cpa_bwd_job *job, int64_t task, float *scratch, int progress);
    float (*fma_probe)(int64_t iters); /* 24 · lanes · iters flops */
} cpa_isa_kernels;

/* The kernels of `isa` (NULL if not compiled in); isa.c. */
const cpa_isa_kernels *cpa_isa_kernels_of(cpa_isa isa);

struct cpa_attn_ctx {
    int num_threads;
    cpa_isa isa;
    const cpa_isa_kernels *kern;
    int64_t max_head_dim;
    int fwd_panels;        /* query panels per forward task */
    size_t scratch_floats; /* per thread */
    float *scratch;        /* [num_threads, scratch_floats] */
    void *work;            /* per-call workspace (backward: task counters, Dr) */
    size_t work_cap;       /* bytes; grows, never shrinks */
};

/* A forward call: tasks are (query block, b, g, head chunk); each runs
 * `heads_per_task` x `tiles_per_task` panels against every key tile. */
struct cpa_fwd_job {
    const cpa_attn_desc *d;
    cpa_tensor out, lse;
    cpa_tiling qt, kt; /* query tiles of fwd_rows rows, key tiles of CPA_FWD_KEYS */
    float qscale;      /* softmax scale · log2 e, folded into the packed Q */
    int64_t hpg;       /* query heads per key/value head */
    int64_t heads_per_task, tiles_per_task, nhchunks, nqblocks;
};

/* A backward call: task t = j·(B·G) + b·G + g owns key tile j of the chain
 * (b, g), whose previous task is t - B·G; its query
 * units are (head in group, query tile) in a fixed order; chain[t] counts
 * the units whose dQ this task and all earlier ones of its chain have
 * added (INT64_MAX when done). */
struct cpa_bwd_job {
    const cpa_attn_desc *d;
    cpa_tensor out, lse, dout, dq, dk, dv;
    cpa_tiling qt, kt; /* query tiles of CPA_BWD_ROWS rows, key tiles of bwd_keys */
    float scale, kscale; /* softmax scale, and scale · log2 e */
    int64_t hpg, nq, nk;
    int64_t *chain;   /* [B·G·nk] */
    const float *dr;  /* [B, H, Sq] rowsum(dO ∘ O), computed once per call */
};

/* How a key tile relates to a query tile under the mask. */
typedef enum { CPA_TILE_SKIP, CPA_TILE_FULL, CPA_TILE_PARTIAL } cpa_tile_class;

/* Visible keys of a query at position qpos are [lo, hi] (inclusive). */
static inline void cpa_mask_range(cpa_mask m, int64_t qpos, int64_t *lo, int64_t *hi)
{
    *lo = INT64_MIN;
    *hi = (m.kind == CPA_MASK_CAUSAL) ? qpos : INT64_MAX;
    if (m.window > 0) {
        *lo = qpos - m.window + 1;
        if (m.kind != CPA_MASK_CAUSAL)
            *hi = qpos + m.window - 1;
    }
    if (m.cu_seqlens && m.num_docs > 0) {
        /* The document d with c[d] <= qpos < c[d+1] (binary search). */
        int64_t a = 0, b = m.num_docs - 1;
        while (a < b) {
            const int64_t mid = a + (b - a + 1) / 2;
            if (m.cu_seqlens[mid] <= qpos)
                a = mid;
            else
                b = mid - 1;
        }
        const int64_t start = m.cu_seqlens[a], end = m.cu_seqlens[a + 1] - 1;
        *lo = *lo > start ? *lo : start;
        *hi = *hi < end ? *hi : end;
    }
}

cpa_tile_class cpa_tile_classify(cpa_mask m, cpa_tile q, cpa_tile k);

/* Keys of tile k that some row of q can see are among its first
 * cpa_tile_visible_len(...) keys. */
int64_t cpa_tile_visible_len(cpa_mask m, cpa_tile q, cpa_tile k);

/* Forward lanes: for query lane i (< lanes) of tile q, the visible keys of
 * k are those with index j, lo[i] <= j <= hi[i], among the first klen;
 * lanes past q.len see all of them (their results are discarded). */
void cpa_tile_lane_ranges(cpa_mask m, cpa_tile q, cpa_tile k, int64_t klen, int lanes,
                          int32_t *lo, int32_t *hi);

/* Backward rows: for query row i (< q.len) of tile q, the visible keys of
 * k are the lanes lo[i] <= j <= hi[i] (empty: lo > hi). */
void cpa_tile_row_ranges(cpa_mask m, cpa_tile q, cpa_tile k, int32_t *lo, int32_t *hi);

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

/* Element pointer of a 4-D view at (b, s, n, 0). */
static inline float *cpa_at4(const cpa_tensor *t, int64_t b, int64_t s, int64_t n)
{
    return t->data + b * t->stride[0] + s * t->stride[1] + n * t->stride[2];
}
static inline float *cpa_at3(const cpa_tensor *t, int64_t b, int64_t h, int64_t s)
{
    return t->data + b * t->stride[0] + h * t->stride[1] + s * t->stride[2];
}

/* The start of a kernel's parallel region: whether this thread drives the
 * progress callback (thread 0, the one MPI allows to call it), and this
 * thread's scratch block. */
static inline float *cpa_thread_begin(const cpa_attn_ctx *ctx, const cpa_attn_desc *d,
                                      int *progress)
{
    *progress = d->progress && omp_get_thread_num() == 0;
    return ctx->scratch + (size_t)omp_get_thread_num() * ctx->scratch_floats;
}

/* Make ctx->work at least `bytes` long (grows, never shrinks; 64-byte
 * aligned). */
cpa_status cpa_attn_ctx_reserve(cpa_attn_ctx *ctx, size_t bytes);

/* The workspace a backward over q [B, Sq, H, .] and k [B, Sk, G, .]
 * needs (task counters, Dr), and reserving it up front: a plan does this at
 * creation so that no call allocates. */
size_t cpa_attn_work_bytes(int bwd_keys, int64_t B, int64_t H, int64_t G, int64_t Sq,
                           int64_t Sk);
cpa_status cpa_attn_ctx_reserve_for(cpa_attn_ctx *ctx, int64_t B, int64_t H, int64_t G,
                                    int64_t Sq, int64_t Sk);

/* The reference implementations (attn_ref.c). */
cpa_status cpa_attn_forward_ref(const cpa_attn_desc *d, cpa_tensor out, cpa_tensor lse);
cpa_status cpa_attn_backward_ref(const cpa_attn_desc *d, cpa_tensor out, cpa_tensor lse,
                                 cpa_tensor dout, cpa_tensor dq, cpa_tensor dk, cpa_tensor dv);

#endif /* CPATTN_KERNEL_INTERNAL_H */
