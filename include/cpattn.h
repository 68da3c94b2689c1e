/*
 * cpattn.h — the one public header of cpattn, a C library for context-parallel
 * (sequence-parallel) attention over MPI.
 *
 * This header holds everything a caller uses: status codes and the last-error
 * message, strided fp32 tensor views, the local blockwise attention kernels
 * (forward, backward, merge) and their plain reference counterparts, and
 * NumPy .npy input/output.  The context-parallel algorithms (ring, double
 * ring, Ulysses, hybrid) build on the kernels declared here.
 *
 * Conventions
 *   - Every fallible call returns a cpa_status.  On failure the library writes
 *     one message, retrievable with cpa_last_error(), and never exits or
 *     aborts.  Outputs are written only on success where that is possible.
 *   - Dimension letters: B batch, S sequence rows, H query heads, G key/value
 *     heads (GQA: H % G == 0), D head dim (Dqk for Q·K, Dv for V), P ranks.
 *   - All tensors are fp32.  Strides count elements, not bytes.
 */
#ifndef CPATTN_H
#define CPATTN_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CPA_VERSION_STRING "0.1.0"

/* ------------------------------------------------------------------------ */
/* Status and errors                                                         */
/* ------------------------------------------------------------------------ */

typedef enum cpa_status {
    CPA_OK = 0,
    CPA_ERR_ARG = 1,      /* invalid argument: NULL, bad shape or stride, a rule broken */
    CPA_ERR_NOMEM = 2,    /* allocation failed */
    CPA_ERR_IO = 3,       /* a file could not be opened, read, written or renamed */
    CPA_ERR_FORMAT = 4,   /* a file is malformed: bad header, dtype, order, truncated */
    CPA_ERR_MPI = 5,      /* an MPI call failed */
    CPA_ERR_NUMERIC = 6,  /* NaN or Inf found where finite values were required */
    CPA_ERR_INTERNAL = 7, /* a bug in cpattn: please report it */
    CPA_ERR_TIMEOUT = 8   /* a communication did not complete within the timeout (a dead or
                             stuck peer); see cpa_set_comm_timeout */
} cpa_status;

/* A short constant name for a status ("invalid argument", ...). */
const char *cpa_status_string(cpa_status status);

/* The message written by the last failing call on this thread ("" if none). */
const char *cpa_last_error(void);

/* Forget the last error on this thread. */
void cpa_clear_error(void);

/* ------------------------------------------------------------------------ */
/* The BLAS                                                                  */
/* ------------------------------------------------------------------------ */

/* What the BLAS cpattn links (OpenBLAS) runs, against what this CPU could
 * run.  OpenBLAS chooses its kernel family when it loads, from the CPU
 * model; on CPUs it does not recognise it runs its oldest (SSE) kernels,
 * several times slower.  The environment variable OPENBLAS_CORETYPE, read
 * at load time, overrides that choice: `message` says which value fits.
 * The cpattn program applies it by itself (see docs/kernels.md); a program
 * that links the library can call this to report the problem. */
typedef struct cpa_blas_report {
    char core[32];       /* the family in use: "Haswell", "SkylakeX", "Prescott", ... */
    char cpu_family[32]; /* a family that fits this CPU's widest vectors ("" if none) */
    int below_cpu;       /* 1: the kernels in use are a lower instruction set than the CPU's */
    int user_set;        /* 1: OPENBLAS_CORETYPE is set in the environment */
    char message[320];   /* one sentence in words, with the fix when there is one */
} cpa_blas_report;

void cpa_blas_inspect(cpa_blas_report *report);

/* An sgemm of ragged shape against a plain loop in double: 1 if the BLAS
 * as configured computes it correctly. */
int cpa_blas_selftest(void);

/* ------------------------------------------------------------------------ */
/* Tensor views                                                              */
/* ------------------------------------------------------------------------ */

#define CPA_MAX_DIMS 4

/* A strided view of fp32 data; it never owns the memory.  Element
 * (i0, i1, ...) lives at data[i0*stride[0] + i1*stride[1] + ...]. */
typedef struct cpa_tensor {
    float *data;
    int ndim;
    int64_t shape[CPA_MAX_DIMS];
    int64_t stride[CPA_MAX_DIMS];
} cpa_tensor;

/* Physical orders of the four logical attention dims [B, S, N, D]
 * (N = heads).  The kernels see every tensor as logical [B, S, N, D]; the
 * layout only decides the strides, so no layout needs a copy. */
typedef enum cpa_layout {
    CPA_LAYOUT_BSHD = 0, /* [B, S, N, D]: batch-major, the default */
    CPA_LAYOUT_SBHD = 1, /* [S, B, N, D]: Megatron's sequence-major */
    CPA_LAYOUT_BNSD = 2  /* [B, N, S, D]: --megatron-cp-in-bnsd */
} cpa_layout;

/* A C-contiguous view of `ndim` dims (1..4). */
cpa_tensor cpa_tensor_make(float *data, int ndim, const int64_t *shape);

/* A logical [B, S, N, D] view over `data` stored in `layout` order. */
cpa_tensor cpa_tensor_attn(float *data, cpa_layout layout, int64_t B, int64_t S, int64_t N,
                           int64_t D);

/* A buffer for `count` floats, as the library allocates its own: 64-byte
 * aligned, and for large tensors (4 MiB and more) 2 MiB aligned with
 * transparent huge pages requested (rows of a bshd tensor are kilobytes
 * apart; with 4 KiB pages the kernels would miss the TLB on nearly every
 * row).  NULL on failure or overflow; release with free(). */
float *cpa_alloc_floats(int64_t count);

/* CPA_OK if every element of `t` is finite; otherwise CPA_ERR_NUMERIC with
 * a message naming `name`, the logical index of the first NaN or infinity
 * (row-major order) and what it is, and that index in `index` (may be
 * NULL).  The kernels propagate non-finite inputs the way a plain softmax
 * attention does (docs/reliability.md); this is how a caller refuses them
 * up front instead. */
cpa_status cpa_tensor_check_finite(cpa_tensor t, const char *name, int64_t index[CPA_MAX_DIMS]);

/* Copy between 4-d views of the same shape (any strides); set a 4-d view
 * to zero. */
void cpa_tensor_copy(cpa_tensor dst, cpa_tensor src);
void cpa_tensor_zero(cpa_tensor t);

/* Number of elements (product of the shape). */
int64_t cpa_tensor_numel(const cpa_tensor *t);

/* Deterministic inputs for tests and benchmarks: fill the logical
 * [B, S, N, D] view `t` (4 dims) with values uniform in [-1, 1), exact in
 * fp32, that depend only on (seed, tensor_id) and the element's GLOBAL
 * index (b, s_offset + s, n, d) in a sequence of s_global positions — so
 * each rank can generate its own rows of a sharded tensor and get the same
 * values as one process generating all of them, in any layout. */
void cpa_tensor_fill_uniform(cpa_tensor t, uint64_t seed, uint64_t tensor_id, int64_t s_global,
                             int64_t s_offset);

/* FNV-1a over the float bits of `t` (1..4 dims) in logical order: equal
 * digests mean bitwise-equal values, whatever the strides. */
uint64_t cpa_tensor_digest(cpa_tensor t);


/* "bshd", "sbhd", "bnsd"; and the reverse (CPA_ERR_ARG on an unknown name). */
const char *cpa_layout_name(cpa_layout layout);
cpa_status cpa_layout_parse(const char *name, cpa_layout *out);

/* ------------------------------------------------------------------------ */
/* Local attention kernels                                                   */
/* ------------------------------------------------------------------------ */

/* A contiguous run of rows of a tensor's S dimension with its place in the
 * global sequence: rows [row, row+len) sit at global positions
 * [pos, pos+len).  Masks are applied by global position, which is what lets a
 * context-parallel rank compute, say, its late zigzag chunk of queries
 * against both chunks of a remote key block with one call. */
typedef struct cpa_piece {
    int64_t row;
    int64_t len;
    int64_t pos;
} cpa_piece;

/* A list of pieces.  count == 0 means "every row of the tensor, at global
 * positions 0, 1, ..." (the single-process case).  Pieces must lie inside
 * the tensor; query pieces must not overlap each other. */
typedef struct cpa_rows {
    const cpa_piece *pieces;
    int count;
} cpa_rows;

/* A digest of a sharded tensor: t is a logical [B, S, N, D] view whose S
 * local rows sit at the global positions `rows` gives (count 0: 0, 1, ...)
 * of a sequence of s_global.  Each (b, position) row is hashed (FNV-1a over
 * its float bits) and keyed by its global index, and the rows are summed,
 * so the digests of every rank's rows add up (mod 2^64, MPI_SUM on
 * MPI_UINT64_T) to the digest of the whole tensor held by one process:
 * equal sums mean bitwise-equal tensors, for any P and any split.
 * An lse [B, H, S] is passed as its [B, S, H, 1] view. */
uint64_t cpa_tensor_digest_rows(cpa_tensor t, int64_t s_global, cpa_rows rows);

typedef enum cpa_mask_kind {
    CPA_MASK_NONE = 0,   /* every query sees every key ("general") */
    CPA_MASK_CAUSAL = 1  /* query at position i sees keys at positions <= i */
} cpa_mask_kind;

/* The mask as a rule on global positions: a query at position p sees the
 * keys in one interval [lo(p), hi(p)], and lo and hi never decrease with p,
 * which is what lets the kernels skip tiles with no visible pair.
 *   kind         CAUSAL: keys <= p; NONE ("general"): every key.
 *   window       sliding window N > 0 (0: none): CAUSAL sees [p-N+1, p],
 *                NONE the keys with |p - k| < N (Mistral, Gemma).
 *   cu_seqlens   packed documents (NULL: one sequence): [num_docs + 1]
 *                cumulative lengths 0 = c0 < c1 < ... < c_N; a query sees only
 *                keys of its own document [c_d, c_{d+1}) (Megatron's
 *                --reset-attention-mask, TE's THD cu_seqlens).  Every
 *                position must lie below c_N.  Not copied: it must outlive the
 *                call (a plan copies the one of its configuration).
 * All three combine (intersection). */
typedef struct cpa_mask {
    cpa_mask_kind kind;
    int64_t window;
    const int64_t *cu_seqlens;
    int64_t num_docs;
} cpa_mask;

/* CPA_OK if `m` is a valid mask for a sequence of S positions (S <= 0: any
 * length the documents cover): a known kind, window >= 0, and cu_seqlens
 * starting at 0, strictly increasing, ending at S.  The message names
 * cu_seqlens or the window and the rule. */
cpa_status cpa_mask_check(cpa_mask m, int64_t S);

/* Which implementation runs a call: the blocked fast kernel, or the plain
 * reference (double accumulation, O(S) memory per row, slow but obviously
 * right).  Selectable for every call. */
typedef enum cpa_impl {
    CPA_IMPL_FAST = 0,
    CPA_IMPL_REFERENCE = 1
} cpa_impl;

/* One attention block: the rows of Q in q_rows against the rows of K/V in
 * kv_rows.  Tensors are logical [B, S, N, D] views with unit stride in D.
 *   q : [B, Sq, H, Dqk]
 *   k : [B, Sk, G, Dqk]
 *   v : [B, Sk, G, Dv]
 * Query head h reads key/value head h / (H/G); K and V are never
 * replicated. */
typedef struct cpa_attn_desc {
    cpa_tensor q;
    cpa_tensor k;
    cpa_tensor v;
    cpa_rows q_rows;
    cpa_rows kv_rows;
    cpa_mask mask;
    float softmax_scale; /* 0 means 1/sqrt(Dqk) */
    cpa_impl impl;
    /* Optional: called by the calling thread (OpenMP thread 0) between
     * tiles, about every few hundred microseconds of work, so that a
     * caller can drive MPI progress (MPI_Test) while the kernel runs
     * without the kernel knowing about MPI.  NULL: no callback. */
    void (*progress)(void *arg);
    void *progress_arg;
} cpa_attn_desc;

/* A kernel context: the thread count and every per-thread scratch buffer, made
 * once so that forward and backward calls allocate nothing. */
typedef struct cpa_attn_ctx cpa_attn_ctx;

/* Limit on the number of pieces in one cpa_rows list (context-parallel
 * blocks need at most a handful). */
#define CPA_MAX_PIECES 64

/* Instruction sets of the fast kernels.  One binary carries every path
 * compiled in and picks one at run time from the CPU (CPUID); a context can
 * also be given one explicitly, for tests and comparisons. */
typedef enum cpa_isa {
    CPA_ISA_AUTO = 0,   /* $CPATTN_ISA if set, else the best the CPU supports */
    CPA_ISA_SCALAR = 1, /* portable C, one lane */
    CPA_ISA_AVX2 = 2,   /* AVX2 + FMA, 8 lanes */
    CPA_ISA_AVX512 = 3  /* AVX-512 F/DQ/BW/VL, 16 lanes */
} cpa_isa;

/* "auto", "scalar", "avx2", "avx512"; and the reverse (CPA_ERR_ARG naming
 * the choices). */
const char *cpa_isa_name(cpa_isa isa);
cpa_status cpa_isa_parse(const char *name, cpa_isa *out);
/* 1 if `isa` is compiled in and this CPU (and OS) can run it. */
int cpa_isa_supported(cpa_isa isa);
/* The best supported instruction set. */
cpa_isa cpa_isa_best(void);
/* What CPA_ISA_AUTO means in this process: $CPATTN_ISA when set (an
 * unknown or unsupported name is CPA_ERR_ARG, naming the variable), else
 * cpa_isa_best(). */
cpa_status cpa_isa_resolve(cpa_isa requested, cpa_isa *out);

/* The fp32 FMA peak of `isa` (CPA_ISA_AUTO: what a context would use) on
 * `threads` threads at once (0: omp_get_max_threads()), measured now in
 * about 0.45 s: 12 independent FMA chains per thread after a 0.25 s
 * warm-up of every thread, best of 7 runs,
 * GFLOP/s summed over the threads.  The honest ceiling for the kernels:
 * no kernel can beat it.  0 if `isa` cannot run here. */
double cpa_fma_peak_gflops(cpa_isa isa, int threads);

typedef struct cpa_attn_ctx_config {
    int64_t max_head_dim; /* largest Dqk or Dv the context will see */
    int num_threads;      /* OpenMP threads for a call; 0 means omp_get_max_threads() */
    cpa_isa isa;          /* CPA_ISA_AUTO (0) unless forcing a path */
} cpa_attn_ctx_config;

cpa_status cpa_attn_ctx_create(const cpa_attn_ctx_config *config, cpa_attn_ctx **out);
void cpa_attn_ctx_destroy(cpa_attn_ctx *ctx);
int cpa_attn_ctx_threads(const cpa_attn_ctx *ctx);
/* The instruction set the context's fast kernels run. */
cpa_isa cpa_attn_ctx_isa(const cpa_attn_ctx *ctx);

/* Bytes a context of these settings allocates, with the workspace of a
 * backward over q [B, Sq, H, .] and k [B, Sk, G, .] included: what to
 * budget before creating one. */
int64_t cpa_attn_ctx_bytes(int64_t max_head_dim, int num_threads, cpa_isa isa, int64_t B,
                           int64_t H, int64_t G, int64_t Sq, int64_t Sk);

/* Forward.  `ctx` may be NULL: a temporary context is then made (and
 * allocated) for the call.  For each selected query row writes (overwrites)
 *   out : [B, Sq, H, Dv]  the softmax-weighted sum of V over the visible keys
 *   lse : [B, H, Sq]      natural-log sum of exp(scale * q·k) over those keys
 * A row that sees no key gets out = 0 and lse = -inf.  Rows outside q_rows
 * are not touched.  Results are bitwise identical for any thread count. */
cpa_status cpa_attn_forward(cpa_attn_ctx *ctx, const cpa_attn_desc *desc, cpa_tensor out,
                            cpa_tensor lse);

/* Backward of one block given the FINAL out and lse of the query rows (after
 * merging every block), FlashAttention-2 style.  ADDS this block's
 * contribution to dq [B, Sq, H, Dqk], dk [B, Sk, G, Dqk] and dv [B, Sk, G, Dv]
 * (dk/dv summed over the query heads of each group), so ring steps can
 * accumulate.  dout has out's shape.  Bitwise identical for any thread
 * count. */
cpa_status cpa_attn_backward(cpa_attn_ctx *ctx, const cpa_attn_desc *desc, cpa_tensor out,
                             cpa_tensor lse, cpa_tensor dout, cpa_tensor dq, cpa_tensor dk,
                             cpa_tensor dv);

/* Merge a partial result (out2, lse2) over one key set into (out, lse) over a
 * disjoint key set, in place, for the rows in `rows` (count 0: all rows):
 *   lse = log(e^lse + e^lse2),  out = out·e^(lse_old-lse) + out2·e^(lse2-lse)
 * Stable in fp32; -inf on either side is handled exactly.  out/out2 are
 * [B, S, H, Dv] and lse/lse2 [B, H, S] with matching shapes. */
cpa_status cpa_attn_merge(cpa_tensor out, cpa_tensor lse, cpa_tensor out2, cpa_tensor lse2,
                          cpa_rows rows);

/* Flop counts used by every benchmark: 4·Sq·Sk·Dqk-ish per head for the
 * forward (2 GEMMs), counted as 2·Sq·Sk·(Dqk+Dv) per head over the visible
 * (unmasked) pairs; the backward is counted as 2.5x the forward. */
double cpa_attn_forward_flops(const cpa_attn_desc *desc);

/* ------------------------------------------------------------------------ */
/* Sequence splits (sharding)                                                */
/* ------------------------------------------------------------------------ */

/* How a global sequence of S tokens is cut across the P ranks of a CP group.
 * Any S works: cut into n chunks, chunk i is [i·S/n, (i+1)·S/n) rounded
 * down (lengths differ by at most one), so ranks may hold different row
 * counts (cpa_split_rows); every chunk must hold a position (S >= n).
 *   CONTIGUOUS: R = P/U ring ranks hold chunks of R, each cut the same way
 *               into U parts; rank r = ρ·U + u holds part u (U = 1: chunk r
 *               of P; general mask, Ulysses, the hybrid's general mask)
 *   ZIGZAG:     2R chunks over R = P/U ring ranks; ring rank ρ holds chunk ρ
 *               then chunk 2R-1-ρ; those L rows are cut the same way into
 *               U parts and rank r = ρ·U + u holds part u.  U = 1 is the
 *               ring's zigzag; U > 1 is the hybrid's (the Ulysses
 *               all-to-all then rebuilds exactly the ring-level zigzag
 *               piece). */
typedef enum cpa_split_kind {
    CPA_SPLIT_CONTIGUOUS = 0,
    CPA_SPLIT_ZIGZAG = 1,
    CPA_SPLIT_CHUNKS = 2 /* P*cpr chunks, rank r holding the ones chunk_of lists */
} cpa_split_kind;

typedef struct cpa_split {
    cpa_split_kind kind;
    int P; /* ranks sharing the sequence */
    int U; /* Ulysses degree inside each ring rank (1 for plain ring); not for CHUNKS */
    /* CHUNKS only: the sequence is cut into P*chunks_per_rank chunks (as
     * above: lengths differ by at most one); rank r holds chunks
     * chunk_of[r*chunks_per_rank ...] (ascending), in that order.  The table
     * is borrowed (a plan's split points into the plan). */
    int chunks_per_rank;
    const int32_t *chunk_of;
} cpa_split;

/* Document-aware load balance: assign the P*cpr chunks of a sequence of S
 * positions to the P ranks, cpr each, so that every rank's queries see about
 * the same number of keys under `mask` (the longest-processing-time rule
 * with equal chunk counts: chunks in decreasing order of visible pairs, each
 * to the least loaded rank with room).  chunk_of gets P*cpr entries, each
 * rank's ascending.  Positions stay exact: the chunks keep their global
 * positions (RoPE, masks). */
cpa_status cpa_split_balance(int64_t S, int P, int cpr, cpa_mask mask, int32_t *chunk_of);

/* Chunks per rank --cp-load-balance documents uses at S positions over P
 * ranks: 4 when S >= 4P, else 2 when S >= 2P, else 1 when S >= P, else 0
 * (none). */
int cpa_split_document_chunks(int64_t S, int P);

/* max/mean over the ranks of the visible (query, key) pairs of each rank's
 * query rows against the whole sequence under `mask`: 1.0 is perfect
 * balance.  What the ring's and all-gather's compute follows. */
double cpa_split_imbalance(cpa_split split, int64_t S, cpa_mask mask);

/* Check that S tokens can be split: 1 <= U, U divides P, and every chunk
 * holds a position (S >= P contiguous, S >= 2P zigzag, S >= P*cpr chunks).
 * The message names the values and the rule. */
cpa_status cpa_split_check(cpa_split split, int64_t S);

/* Local rows of rank r (-1 for a split cpa_split_check refuses), and the
 * most any rank holds. */
int64_t cpa_split_rows(cpa_split split, int64_t S, int r);
int64_t cpa_split_max_rows(cpa_split split, int64_t S);

/* The local rows of rank r as pieces {row, len, pos}: local row `row`
 * holds global position `pos`.  *count gets 1 to 8 (pieces needs room for
 * CPA_SPLIT_MAX_PIECES). */
#define CPA_SPLIT_MAX_PIECES 8
cpa_status cpa_split_pieces(cpa_split split, int64_t S, int r, cpa_piece *pieces, int *count);

/* Global positions of rank r's local rows (cpa_split_rows of them), in
 * local order (what RoPE needs). */
cpa_status cpa_split_positions(cpa_split split, int64_t S, int r, int64_t *positions);

/* Copy rank r's rows of a global [B, S, N, D] view into a local
 * [B, rows of r, N, D] view (any strides), and back. */
cpa_status cpa_shard(cpa_split split, int r, cpa_tensor global, cpa_tensor local);
cpa_status cpa_unshard(cpa_split split, int r, cpa_tensor local, cpa_tensor global);

/* ------------------------------------------------------------------------ */
/* Context-parallel attention plans                                          */
/* ------------------------------------------------------------------------ */

/* The algorithms, by MindSpeed's --context-parallel-algo names (and
 * TransformerEngine's cp_comm_type=all_gather for the fourth). */
typedef enum cpa_algo {
    CPA_ALGO_ULYSSES = 0,  /* ulysses_cp_algo */
    CPA_ALGO_RING = 1,     /* megatron_cp_algo (window > 1: double ring) */
    CPA_ALGO_HYBRID = 2,   /* hybrid_cp_algo */
    CPA_ALGO_ALLGATHER = 3 /* allgather_cp_algo: all-gather K/V, attend the own query rows */
} cpa_algo;

/* The algorithm table: ids 0 .. cpa_algo_count()-1 (in this order), their
 * names, and the reverse lookup (CPA_ERR_ARG naming the valid choices).
 * Tools build their flags, help and test matrices from it. */
int cpa_algo_count(void);
const char *cpa_algo_name(cpa_algo algo);
cpa_status cpa_algo_parse(const char *name, cpa_algo *out);

/* What a row of the table says of itself, for help texts and sweeps. */
typedef struct cpa_algo_info {
    const char *name;        /* "megatron_cp_algo", ... */
    const char *summary;     /* one line: how it communicates */
    int uses_window;         /* --cp-window-size applies (double ring) */
    int uses_ulysses_degree; /* --ulysses-degree-in-cp applies (and is required) */
    int uses_overlap;        /* --use-cp-send-recv-overlap applies */
    int uses_balance;        /* --cp-load-balance documents applies */
} cpa_algo_info;

/* CPA_ERR_ARG for an id outside the table. */
cpa_status cpa_algo_describe(cpa_algo algo, cpa_algo_info *info);

/* How a causal sequence's rows are assigned to the ranks of a ring or an
 * all-gather.  ZIGZAG (default): chunk r and 2P-1-r, which balances one
 * dense causal sequence.  DOCUMENTS: 2 or 4 chunks per rank chosen at plan
 * time from the mask's documents and window (cpa_split_balance), which
 * balances packed documents; needs S % (4P) == 0 for 4 chunks, else
 * S % (2P) == 0 for 2. */
typedef enum cpa_balance {
    CPA_BALANCE_ZIGZAG = 0,
    CPA_BALANCE_DOCUMENTS = 1
} cpa_balance;

/* Everything a plan needs; identical on every rank of the group.  Sizes
 * are GLOBAL (S is the whole sequence). */
typedef struct cpa_cp_config {
    cpa_algo algo;
    int cp_size;              /* --context-parallel-size P: must equal the communicator size */
    int window;               /* --cp-window-size W (ring/hybrid), 1 = plain ring */
    int ulysses_degree;       /* --ulysses-degree-in-cp U (hybrid) */
    int tp_size;              /* --tensor-model-parallel-size (head rules), 1 */
    int send_recv_overlap;    /* --use-cp-send-recv-overlap */
    cpa_mask mask;            /* the whole mask: .kind = --attention-mask-type (causal or
                                 general = CPA_MASK_NONE) */
    cpa_impl impl;            /* CPA_IMPL_FAST (0), or the reference kernel inside every step
                                 of the algorithm (every exchange still happens) */
    cpa_balance balance;      /* --cp-load-balance: how causal rows are assigned to ranks */
    cpa_layout layout;        /* local tensors' layout (bnsd = --megatron-cp-in-bnsd) */
    int64_t batch;            /* B */
    int64_t seq_length;       /* S, global */
    int64_t num_heads;        /* H */
    int64_t num_kv_heads;     /* G */
    int64_t head_dim;         /* Dqk */
    int64_t v_head_dim;       /* Dv (0: = head_dim) */
    float softmax_scale;      /* 0: 1/sqrt(Dqk) */
    int num_threads;          /* kernel threads per rank, 0: omp_get_max_threads() */
    cpa_isa isa;              /* kernel instruction set, CPA_ISA_AUTO (0) by default */
} cpa_cp_config;

typedef struct cpa_plan cpa_plan;

/* Validate `config` against every rule of the algorithm COLLECTIVELY: all
 * ranks of `comm` return the same status and the same message (naming the
 * flag, the values and the rule), so no rank is left waiting.  On success
 * the plan owns a duplicate of `comm` (MPI_ERRORS_RETURN), its
 * sub-communicators and every buffer; forward/backward allocate nothing. */
cpa_status cpa_plan_create(MPI_Comm comm, const cpa_cp_config *config, cpa_plan **out);
void cpa_plan_destroy(cpa_plan *plan);

/* The memory one rank's plan of `config` allocates (its buffers and the
 * kernel context), in bytes, without creating it: what to check against the
 * machine's or container's limit before starting.  -1 for a configuration
 * that cpa_plan_create would refuse outright. */
int64_t cpa_plan_memory_bytes(const cpa_cp_config *config);

/* The configuration the plan runs (v_head_dim resolved). */
const cpa_cp_config *cpa_plan_config(const cpa_plan *plan);

/* The split of this plan's local rows, this rank's index in the group, and
 * this rank's local sequence length (S/P when P divides S; in general
 * cpa_split_rows of the split, which may differ by rank). */
cpa_split cpa_plan_split(const cpa_plan *plan);
int cpa_plan_rank(const cpa_plan *plan);
int64_t cpa_plan_local_seq(const cpa_plan *plan);

/* What one layer's forward keeps for its backward (autograd's
 * save_for_backward), owned by the caller: one per layer in flight.  Sized
 * by the plan (Ulysses and hybrid keep the head-sharded q, k, v, out and
 * lse; the ring keeps nothing beyond the caller's tensors) and made once,
 * so forward and backward allocate nothing. */
typedef struct cpa_plan_saved cpa_plan_saved;

cpa_status cpa_plan_saved_create(const cpa_plan *plan, cpa_plan_saved **out);
void cpa_plan_saved_destroy(cpa_plan_saved *saved);
/* Bytes one cpa_plan_saved of `config` allocates (-1: a configuration the
 * plan would refuse). */
int64_t cpa_plan_saved_bytes(const cpa_cp_config *config);

/* Local shards, in the plan's layout, Sl = cpa_plan_local_seq (this rank's):
 *   q, dq, dout, out: [B, Sl, H, D*]   k, v, dk, dv: [B, Sl, G, D*]
 *   lse: [B, H, Sl] (any strides)
 * forward writes out and lse, and fills `saved` (NULL: keep nothing).
 * backward takes the forward's q, k, v, out and lse and WRITES (not adds)
 * dq, dk, dv for the local rows.  Given the `saved` its forward filled it
 * starts from that state; given NULL it rebuilds what it needs from its
 * arguments (Ulysses and hybrid: 5 more all-to-alls).  A `saved` that no
 * forward of this plan filled is refused.  Collective over the plan's
 * group.  After a call that timed out (CPA_ERR_TIMEOUT) or failed in MPI,
 * the plan refuses further calls: transfers may still be pending on its
 * communicators, and only cpa_plan_destroy is safe. */
cpa_status cpa_plan_forward(cpa_plan *plan, cpa_plan_saved *saved, cpa_tensor q, cpa_tensor k,
                            cpa_tensor v, cpa_tensor out, cpa_tensor lse);
cpa_status cpa_plan_backward(cpa_plan *plan, const cpa_plan_saved *saved, cpa_tensor q,
                             cpa_tensor k, cpa_tensor v, cpa_tensor out, cpa_tensor lse,
                             cpa_tensor dout, cpa_tensor dq, cpa_tensor dk, cpa_tensor dv);

/* The bytes one rank sends in one forward and in one backward of `config`,
 * from the algorithm's schedule (what the stats of a call will count):
 * the communication volume, without running anything.  cpa_plan_volume
 * gives the most any rank sends (every rank sends the same when the
 * sequence divides evenly); cpa_plan_rank_volume that of rank `rank` of
 * the group.  CPA_ERR_ARG for a configuration the plan would refuse. */
cpa_status cpa_plan_volume(const cpa_cp_config *config, double *forward_bytes,
                           double *backward_bytes);
cpa_status cpa_plan_rank_volume(const cpa_cp_config *config, int rank, double *forward_bytes,
                                double *backward_bytes);

/* Per-call documents (Megatron's --reset-attention-mask, where every sample
 * packs its own documents): replace the plan's cu_seqlens [num_docs + 1]
 * (0 = c0 < c1 < ... < c_N = S; NULL / 0 for none) for the calls that
 * follow, keeping its kind and window.  Collective: every rank of the plan
 * passes the same documents (checked: a hash is compared, two small
 * collectives per call); a bad cu_seqlens is refused on every rank naming
 * the rule.  Refused for a plan with --cp-load-balance documents (its chunk
 * assignment comes from the plan's documents).  A backward given a saved
 * state refuses it if the documents changed since the forward that filled
 * it.  The plan copies the array (allocating only when it holds more
 * documents than any before). */
cpa_status cpa_plan_set_documents(cpa_plan *plan, const int64_t *cu_seqlens, int64_t num_docs);

/* Counters of the last forward or backward call on this rank. */
typedef struct cpa_plan_stats {
    double total_s;       /* wall time of the call */
    double wait_s;        /* time blocked in MPI waits: exposed communication */
    double compute_s;     /* time in the local kernels */
    double bytes_sent;    /* bytes this rank sent */
    double flops;         /* kernel flops this rank did (visible pairs; bwd counted 2.5x) */
} cpa_plan_stats;

void cpa_plan_last_stats(const cpa_plan *plan, cpa_plan_stats *stats);

/* ------------------------------------------------------------------------ */
/* The planner: choosing the algorithm from measurements                     */
/* ------------------------------------------------------------------------ */

/* What the planner measured on this job's ranks before predicting.  Links
 * are the exchange patterns the candidates' schedules use, each timed with
 * every rank sending at once (the ring's pattern, not a lone ping-pong). */
#define CPA_PLANNER_MAX_LINKS 16

typedef struct cpa_planner_link {
    char what[64];      /* "ring +1 over 4", "window +2 over 4", "all-to-all over 4", ... */
    double bytes;       /* per rank per exchange, at the size the candidates send */
    double seconds;     /* median over repeats of the slowest rank */
    double latency_s;   /* the same pattern with one float */
    int inter_host;     /* 1: some rank's peer is on another host (processor name) */
} cpa_planner_link;

typedef struct cpa_planner_calibration {
    int hosts;              /* distinct MPI processor names among the ranks */
    int max_ranks_per_host;
    double hidden_fraction; /* of min(transfer, compute) hidden when a ring step's
                               transfer runs beside a kernel driving MPI progress */
    double copy_gbytes;     /* memcpy rate (the all-to-alls' packing), GB/s */
    int calib_heads;        /* heads the candidates' kernels were timed on (of H) */
    int nlinks;
    cpa_planner_link links[CPA_PLANNER_MAX_LINKS];
    double seconds;         /* wall time of the calibration (without --validate) */
} cpa_planner_calibration;

/* One legal configuration and what the planner predicts for it, per rank
 * (the slowest rank's times). */
typedef struct cpa_plan_candidate {
    cpa_cp_config config;   /* the base with algo, window, ulysses_degree and
                               send_recv_overlap set */
    char flags[192];        /* those settings as `cpattn attn` and `train` take them */
    double fwd_s, bwd_s;    /* predicted forward and backward (with saved state) time */
    double compute_s;       /* predicted kernel time, forward + backward */
    double exposed_s;       /* predicted exposed communication, fwd + bwd */
    double fwd_bytes, bwd_bytes; /* bytes the busiest rank sends (cpa_plan_volume) */
    int64_t memory_bytes;   /* the plan's buffers + one saved state, per rank */
    /* The request's rule S/(T*alpha) >= 1/(W*beta) for one ring step (< 0:
     * not a ring schedule): a step's kernel time at the measured rate T*alpha
     * against its transfer's time at the measured rate W*beta. */
    double step_compute_s, step_transfer_s;
    double kernel_gflops;   /* T*alpha: this candidate's measured kernel rate */
    double link_gbytes;     /* W*beta: its step transfer's measured rate, GB/s */
    /* --validate: measured by running the configuration (validated = 1). */
    int validated;
    double measured_fwd_s, measured_bwd_s, measured_wait_s;
} cpa_plan_candidate;

typedef struct cpa_planner_options {
    int validate;           /* run the best `validate` candidates for real (0: none) */
    int iters;              /* timed repeats of each measurement (0: 3) */
} cpa_planner_options;

/* Calibrate on the ranks of `comm` (collective; its size is base->cp_size)
 * and predict every legal configuration of `base`'s problem (its shape,
 * mask, layout, threads and TP head rule; its algorithm, window, Ulysses
 * degree and overlap are ignored): Ulysses; the ring with and without
 * overlap; the double ring for each window W dividing P; the hybrid for
 * each Ulysses degree U dividing P with each window of its ring;
 * all-gather.  *candidates (cpa_planner_free) holds *count of them, best
 * predicted fwd + bwd first, the same on every rank.  A problem no
 * configuration can run is refused on every rank naming why. */
cpa_status cpa_planner_run(MPI_Comm comm, const cpa_cp_config *base,
                           const cpa_planner_options *options, cpa_plan_candidate **candidates,
                           int *count, cpa_planner_calibration *calibration);
void cpa_planner_free(cpa_plan_candidate *candidates);

/* The flags that select `config`'s algorithm, window, Ulysses degree and
 * overlap, as the tools take them ("--context-parallel-algo ... "). */
void cpa_plan_flags(const cpa_cp_config *config, char *buf, size_t cap);

/* ------------------------------------------------------------------------ */
/* The communication watchdog                                               */
/* ------------------------------------------------------------------------ */

/* Every wait of the library on MPI (ring transfers, all-to-alls, the plans'
 * agreements, cpa_comm_wait and cpa_comm_allreduce below) is bounded, like
 * NCCL's and PyTorch's collective timeout: after `seconds` without
 * completion the wait gives up, names what it waited for (operation, peer
 * rank, ring step), calls the timeout handler if one is set, and returns
 * CPA_ERR_TIMEOUT.  0 means no bound; the default is 600 s.  Process-wide;
 * set it before starting work. */
void cpa_set_comm_timeout(double seconds);
double cpa_comm_timeout(void);

/* Called with the message when a wait times out, before CPA_ERR_TIMEOUT is
 * returned.  A dead peer usually means the job cannot go on, and the error
 * path may itself need the dead peer (an agreement on the error), so a
 * program typically prints the message and calls MPI_Abort here, as the
 * cpattn tool does.  NULL (the default): just return the error. */
void cpa_set_comm_timeout_handler(void (*handler)(const char *message, void *arg), void *arg);

/* Wait for `n` requests under the timeout.  `what` (printf-style) names the
 * operation for the message, e.g. "gradient all-reduce (layer %d)"; it is
 * formatted only if the wait times out. */
cpa_status cpa_comm_wait(int n, MPI_Request *reqs, const char *what, ...);

/* In-place all-reduce of `count` elements of `type` on `comm` under the
 * timeout, in pieces of at most 2^30 elements so any int64 count works. */
cpa_status cpa_comm_allreduce(void *buf, int64_t count, MPI_Datatype type, MPI_Op op,
                              MPI_Comm comm, const char *what);

/* Agreement on an error, so that every rank stops with the same verdict:
 * each rank passes its own *code (0: fine) and, if it failed, its message
 * in msg (cap bytes, the same cap on every rank).  On return every rank
 * has the code and message of the lowest-numbered failing rank (*code 0
 * and msg untouched if none failed) and that rank in *who (-1: none).  One
 * all-reduce and, on failure, one broadcast, both under the timeout. */
cpa_status cpa_comm_agree(MPI_Comm comm, int *code, char *msg, size_t cap, int *who);

/* MPI_Bcast under the timeout. */
cpa_status cpa_comm_bcast(void *buf, int count, MPI_Datatype type, int root, MPI_Comm comm,
                          const char *what);

/* ------------------------------------------------------------------------ */
/* Traces (docs/trace.md)                                                    */
/* ------------------------------------------------------------------------ */

/* A process-wide recorder of timed events, written as a Chrome / Perfetto
 * trace-event JSON file (open it in https://ui.perfetto.dev or
 * chrome://tracing).  While recording, the plans log each ring step's
 * kernel work, every send and receive (post to completion), the time
 * blocked in waits, the all-to-alls and all-gathers, and each forward and
 * backward call; a program adds its own events (layers, iterations) with
 * cpa_trace_begin / cpa_trace_end.  Not recording costs one predictable
 * branch per event site; recording allocates nothing after
 * cpa_trace_start (events go into its preallocated buffer; once it is
 * full, further events are dropped, counted and reported, never a crash). */

/* What an event is; its "cat" in the JSON and its colour in `cpattn
 * trace-svg`. */
typedef enum cpa_trace_kind {
    CPA_TRACE_COMPUTE = 0,    /* local kernel work (one ring step, a layer's matmuls) */
    CPA_TRACE_SEND = 1,       /* a point-to-point send, from its post to its completion */
    CPA_TRACE_RECV = 2,       /* a point-to-point receive, from its post to its completion */
    CPA_TRACE_WAIT = 3,       /* blocked in an MPI wait: exposed communication */
    CPA_TRACE_ALLTOALL = 4,   /* an all-to-all (Ulysses, the hybrid's outer level) */
    CPA_TRACE_ALLGATHER = 5,  /* an all-gather or reduce-scatter (allgather_cp_algo, SP) */
    CPA_TRACE_COLLECTIVE = 6, /* another collective: all-reduce, broadcast */
    CPA_TRACE_PLAN = 7,       /* one cpa_plan_forward / cpa_plan_backward call */
    CPA_TRACE_MODEL = 8       /* a program's own spans: layers, iterations, the optimizer */
} cpa_trace_kind;

#define CPA_TRACE_KIND_COUNT 9
#define CPA_TRACE_MAX_ARGS 4 /* numeric arguments per event */

/* "compute", "send", "recv", "wait", "alltoall", "allgather", "collective",
 * "plan", "model" ("?" outside the table). */
const char *cpa_trace_kind_name(cpa_trace_kind kind);

/* A numeric argument of an event ("args" in the JSON): `key` must be a
 * string that outlives the trace (a literal). */
typedef struct cpa_trace_arg {
    const char *key;
    double value;
} cpa_trace_arg;

/* Start recording on this process into a new buffer of `max_events`
 * events (about 100 bytes each), dropping any earlier one.  CPA_ERR_ARG
 * for max_events < 1, CPA_ERR_NOMEM if the buffer cannot be had.  Not
 * collective: each rank records its own events. */
cpa_status cpa_trace_start(int64_t max_events);

/* Stop recording and free the buffer (what was recorded is lost: write it
 * first).  Safe when not recording. */
void cpa_trace_stop(void);

/* 1 while recording. */
int cpa_trace_recording(void);

/* Events recorded and dropped (buffer full) since cpa_trace_start. */
int64_t cpa_trace_count(void);
int64_t cpa_trace_dropped(void);

/* A program's own event: t = cpa_trace_begin() before the work (0 when not
 * recording), cpa_trace_end(t, ...) after it, which records
 * [t, now) on track `lane` (0: the main track, where the plans' compute and
 * waits go; 1..31 free for the program) with up to CPA_TRACE_MAX_ARGS
 * arguments.  `name` must outlive the trace (a literal).  Events on one
 * lane must nest or be disjoint.  cpa_trace_end(0, ...) does nothing. */
int64_t cpa_trace_begin(void);
void cpa_trace_end(int64_t begin, const char *name, cpa_trace_kind kind, int lane,
                   const cpa_trace_arg *args, int nargs);

/* Write the events every rank of `comm` recorded so far as one JSON file
 * at `path`, collectively: each rank's events go to rank 0 (in pieces of a
 * few MiB), which writes a temporary file next to `path` and renames it
 * into place only when every rank succeeded, so `path` is the old file or
 * the complete new one.  "pid" is the rank in `comm`, named "rank N
 * (host)"; "tid" a track of that rank (the main track, a receive and a send
 * track per transfer slot), named by metadata events; "otherData" holds the
 * dropped-event counts.  Timestamps are microseconds of the monotonic clock
 * from the earliest event (on several hosts, clocks are aligned to rank 0's
 * by a ping-pong estimate).  Every rank returns the same status and
 * message.  Recording goes on unless stopped. */
cpa_status cpa_trace_write(MPI_Comm comm, const char *path);

/* ------------------------------------------------------------------------ */
/* NumPy .npy files (float32, C order, format versions 1.0, 2.0 and 3.0)     */
/* ------------------------------------------------------------------------ */

/* Read the header of `path`: its shape (up to CPA_MAX_DIMS dims).  Fails with
 * CPA_ERR_FORMAT naming the file and the problem for anything that is not a
 * float32 little-endian C-order array whose data length matches. */
cpa_status cpa_npy_shape(const char *path, int *ndim, int64_t shape[CPA_MAX_DIMS]);

/* Read `path` into a newly malloc'd buffer; the caller frees *data. */
cpa_status cpa_npy_load(const char *path, float **data, int *ndim, int64_t shape[CPA_MAX_DIMS]);

/* Read `path` into `dst`, which must have exactly the file's shape (any
 * strides). */
cpa_status cpa_npy_load_into(const char *path, cpa_tensor dst);

/* Read a 1-D little-endian int32 or int64 array (an index such as
 * cu_seqlens.npy) into a new malloc'd int64 buffer of *n entries; the
 * caller frees *data.  CPA_ERR_FORMAT for a malformed file or another
 * dtype, CPA_ERR_ARG for more than one dim. */
cpa_status cpa_npy_load_index(const char *path, int64_t **data, int64_t *n);

/* Write `src` (any strides) as a C-order float32 .npy.  The data go to a
 * temporary file in the same folder which is renamed into place, so `path`
 * is either the old file or the complete new one. */
cpa_status cpa_npy_save(const char *path, cpa_tensor src);

/* Sharded .npy files over MPI: every rank of `comm` reads or writes only
 * its own rows of one global array, with collective MPI-IO at the header's
 * data offset, so no rank ever holds the whole array.
 *
 * `axis` is the array's sequence dim (1 for [B, S, N, D], 2 for an lse
 * [B, H, S]); `rows` places the local rows: local row pieces[i].row + j
 * along `axis` is global position pieces[i].pos + j (count 0: local row j
 * is global position j).  `local` has the file's shape except along
 * `axis`, where its length is the sum of the pieces' lengths; any strides.
 * Both calls are collective and return the same status and message on
 * every rank (a malformed or missing file, a shape that does not match,
 * pieces outside the array: named on every rank). */
cpa_status cpa_npy_read_rows(MPI_Comm comm, const char *path, int axis, cpa_rows rows,
                             cpa_tensor local);

/* Write `local` as the rows of a global float32 C-order array of `ndim`
 * dims `global_shape`.  Rank 0 writes the header once; every rank writes
 * its rows; the pieces of all ranks must cover each position exactly once.
 * The data go to a temporary file in the same folder, which is renamed
 * into place only after every rank has written successfully, so `path` is
 * either the old file or the complete new one (the temporary file is
 * removed on failure). */
cpa_status cpa_npy_write_rows(MPI_Comm comm, const char *path, int ndim,
                              const int64_t *global_shape, int axis, cpa_rows rows,
                              cpa_tensor local);

#ifdef __cplusplus
}
#endif

#endif /* CPATTN_H */
