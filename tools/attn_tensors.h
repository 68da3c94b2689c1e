/*
 * attn_tensors.h — the tensors of one `cpattn attn` run as each rank holds
 * them: its own rows of the global [B, S, N, D] tensors (lse [B, H, S]),
 * never the whole sequence.  Random inputs are generated row by row from
 * their global index, --load reads and --save writes each rank's rows of
 * the global .npy files with collective MPI-IO (cpa_npy_read_rows /
 * cpa_npy_write_rows), and digests are sums of per-row hashes
 * (cpa_tensor_digest_rows), so every result is the same for any P.
 *
 * Every function that can fail records its message with tool_fail() and
 * returns an exit code agreed by all ranks (tool_agree).
 */
#ifndef CPATTN_TOOLS_ATTN_TENSORS_H
#define CPATTN_TOOLS_ATTN_TENSORS_H

#include "cpattn.h"

#include <stdint.h>

/* Every tensor of a run: four inputs, then the results. */
enum { T_Q, T_K, T_V, T_DOUT, T_OUT, T_LSE, T_DQ, T_DK, T_DV, T_COUNT };
extern const char *const attn_tensor_names[T_COUNT];
#define T_BIT(i) (1u << (i))
#define T_INPUTS (T_BIT(T_Q) | T_BIT(T_K) | T_BIT(T_V) | T_BIT(T_DOUT))
#define T_FORWARD (T_BIT(T_OUT) | T_BIT(T_LSE))
#define T_GRADS (T_BIT(T_DQ) | T_BIT(T_DK) | T_BIT(T_DV))

/* The global problem. */
typedef struct attn_shape {
    int64_t B, S, H, G, D, Dv;
    cpa_layout layout; /* memory order of the local tensors */
} attn_shape;

/* One rank's rows: each tensor [B, Sl, N, D] in `layout` (lse [B, H, Sl]),
 * local row pieces[i].row + j at global position pieces[i].pos + j. */
typedef struct attn_set {
    attn_shape sh;
    int64_t Sl;
    cpa_piece pieces[CPA_SPLIT_MAX_PIECES];
    int npieces;
    float *t[T_COUNT]; /* NULL: not held */
} attn_set;

/* Heads N and head dim D of tensor i (lse: H and 1). */
void attn_dims(const attn_shape *sh, int i, int64_t *N, int64_t *D);
/* Bytes of the tensors in `mask` over S rows. */
double attn_bytes(const attn_shape *sh, unsigned mask, int64_t S);

/* The rows of shard `shard` of `split`, buffers for the tensors in `mask`. */
int attn_set_alloc(attn_set *s, const attn_shape *sh, cpa_split split, int shard, unsigned mask);
void attn_set_free(attn_set *s);

/* Tensor i as the plan takes it (lse [B, H, Sl]), and as a 4-d row view
 * (lse as [B, Sl, H, 1]); the pieces as cpa_rows. */
cpa_tensor attn_view(const attn_set *s, int i);
cpa_tensor attn_view4(const attn_set *s, int i);
cpa_rows attn_rows(const attn_set *s);

/* The four inputs from --seed: values of the global index only. */
void attn_fill_random(attn_set *s, uint64_t seed);
/* The inputs from DIR/{q,k,v,dout}.npy (dout zeroed and not read with
 * forward_only); non-finite values refused unless allowed. */
int attn_load(attn_set *s, const char *dir, int forward_only, int allow_non_finite);
/* The tensors in `mask` to DIR/<name>.npy (DIR created by rank 0). */
int attn_save(const attn_set *s, const char *dir, unsigned mask);
/* Rank 0 prints "digest out=... lse=..." for the tensors in `mask`. */
int attn_print_digests(const attn_set *s, unsigned mask);

#endif
