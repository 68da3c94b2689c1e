/*
 * gpt.h — a GPT decoder trained with context parallelism, written by hand
 * in the style of llm.c (one allocation per tensor family, shapes in
 * comments), using the CP algorithms only through the public plan API.
 *
 *   tokens -> embedding -> L x [RMSNorm, QKV, RoPE, CP attention (GQA),
 *   output projection, residual, RMSNorm, SwiGLU MLP, residual] -> RMSNorm
 *   -> LM head (tied to the embedding) -> cross-entropy
 *
 * Each rank of a CP group holds T = S/P tokens of the same sequence, split
 * the way the attention algorithm wants (zigzag for causal rings); RoPE
 * uses the tokens' global positions, or per-sample positions given with
 * the batch (cpa_gpt_step_batch: --reset-position-ids); a model with
 * sample_documents attends inside each sample's own documents
 * (--reset-attention-mask): its plan runs once per sample, each with that
 * sample's cu_seqlens (cpa_plan_set_documents).  With tensor parallelism
 * (cpa_gpt_create_tp) each TP rank holds its shards of the weights (gpt.c);
 * the CP and DP replicas hold the same ones, their gradients summed by the
 * trainer.
 */
#ifndef CPATTN_MODEL_GPT_H
#define CPATTN_MODEL_GPT_H

#include "cpattn.h"

#include <mpi.h>
#include <stdint.h>

typedef struct cpa_gpt_config {
    int64_t num_layers;   /* L */
    int64_t hidden;       /* C */
    int64_t ffn_hidden;   /* F (SwiGLU width) */
    int64_t heads;        /* H */
    int64_t kv_heads;     /* G */
    int64_t vocab;        /* V */
    int64_t seq_length;   /* S, global */
    int64_t micro_batch;  /* B */
    int recompute;        /* --recompute-granularity full: keep block inputs only */
    int sample_documents; /* --reset-attention-mask: each sample attends inside its own
                             documents (the batch's cu_seqlens); the plan runs per sample */
    int sequence_parallel; /* --sequence-parallel (TP > 1): norms and residuals on this TP
                              rank's N/TP token rows (see gpt.c) */
    float rope_base;      /* 10000 */
    float norm_eps;       /* 1e-5 */
    cpa_cp_config cp;     /* the attention algorithm and its options (sizes filled by the model) */
} cpa_gpt_config;

/* Parameter tensors, all carved out of one buffer (shapes in comments). */
typedef struct cpa_gpt_params {
    float *wte;   /* (V, C) embedding, tied with the LM head */
    float *ln1w;  /* (L, C) */
    float *qkvw;  /* (L, (H+2G)*D, C) */
    float *projw; /* (L, C, H*D) */
    float *ln2w;  /* (L, C) */
    float *fc1w;  /* (L, 2F, C) gate rows then up rows */
    float *fc2w;  /* (L, C, F) */
    float *lnfw;  /* (C) */
} cpa_gpt_params;

typedef struct cpa_gpt cpa_gpt;

/* Make the model for this rank: `cp_comm` is the rank's CP group (its size
 * is the CP size).  Collective over cp_comm (the attention plan is).
 * cpa_gpt_create_tp also takes the rank's TP group (its size must be
 * config->cp.tp_size): the layers are Megatron's tensor-parallel ones (see
 * gpt.c), each TP rank running the CP plan on its own heads. */
cpa_status cpa_gpt_create(const cpa_gpt_config *config, MPI_Comm cp_comm, cpa_gpt **out);
cpa_status cpa_gpt_create_tp(const cpa_gpt_config *config, MPI_Comm cp_comm, MPI_Comm tp_comm,
                             cpa_gpt **out);

/* The model's tensor-parallel rules (H, G and F divisible by TP, C by H),
 * CPA_ERR_ARG naming the flags: what create checks first. */
cpa_status cpa_gpt_tp_rules(const cpa_gpt_config *config);

/* Checkpoints store the logical (TP = 1) parameters: their count, one TP
 * rank's local array scattered into a logical one (padding rows of the
 * vocabulary left out), and this rank's local array taken from a logical
 * one.  Parameters and the optimizer's moments are sharded alike. */
int64_t cpa_gpt_logical_params(const cpa_gpt *model);
void cpa_gpt_to_logical(const cpa_gpt *model, int tp_rank, const float *local, float *logical);
void cpa_gpt_from_logical(const cpa_gpt *model, const float *logical, float *local);

/* Where this rank's parameter i lives in the logical layout: its index
 * there, or -1 for a padding row of the vocabulary.  TP ranks that share a
 * tensor (the norms; a KV head replicated when G < TP) give the same index. */
int64_t cpa_gpt_logical_index(const cpa_gpt *model, int64_t i);

/* Once per iteration, after the last micro-batch's backward (Megatron's
 * finalize_model_grads): sum the gradients of the tensors several TP ranks
 * hold whose ranks saw different parts of the work — with
 * --sequence-parallel the norm weights (each TP rank saw its own token
 * rows), with G < TP the key/value rows of a replicated KV head (each rank
 * its own query heads).  Nothing otherwise.  Collective over the TP group. */
cpa_status cpa_gpt_reduce_shared_grads(cpa_gpt *model, float *grads);

/* The global gradient norm of this rank's gradients (after the replica
 * sum and cpa_gpt_reduce_shared_grads): the squares summed over the TP
 * group, a tensor held by k TP ranks counted once (each copy weighted
 * 1/k).  Collective over the TP group. */
double cpa_gpt_grad_norm(const cpa_gpt *model, const float *grads);

/* Communication of this rank since the last reset: the TP collectives'
 * volume per rank under a bandwidth-optimal (ring) algorithm — all-reduce
 * 2(p-1)/p of the payload, all-gather and reduce-scatter (p-1)/p — and
 * the time spent in them; the CP attention's bytes sent (the plans'
 * counts) and its exposed waits. */
typedef struct cpa_gpt_comm_stats {
    double tp_bytes, tp_s;     /* TP collectives: volume, wall time in them */
    double cp_bytes, cp_wait_s; /* CP attention: bytes sent, time blocked on MPI */
    int64_t tp_calls;          /* TP collectives issued */
} cpa_gpt_comm_stats;
void cpa_gpt_comm_stats_get(const cpa_gpt *model, cpa_gpt_comm_stats *stats);
void cpa_gpt_comm_stats_reset(cpa_gpt *model);

/* The bytes cpa_gpt_create allocates on one of cp_size ranks (parameters,
 * gradients, activations, the attention plan and its kernel context),
 * without allocating: what to check against the memory limit first; the
 * parameter count in *num_params (may be NULL).  -1 for a configuration
 * create would refuse outright. */
int64_t cpa_gpt_memory_bytes(const cpa_gpt_config *config, int cp_size, int64_t *num_params);
void cpa_gpt_destroy(cpa_gpt *model);

int64_t cpa_gpt_num_params(const cpa_gpt *model);
float *cpa_gpt_params_buffer(cpa_gpt *model); /* [num_params] */
float *cpa_gpt_grads_buffer(cpa_gpt *model);  /* [num_params] */
/* 1 for each parameter that takes weight decay (matrices, not norms). */
const uint8_t *cpa_gpt_decay_mask(const cpa_gpt *model);
int64_t cpa_gpt_local_tokens(const cpa_gpt *model); /* T = S/P */

/* GPT-2 style initialisation from `seed` (identical on every rank). */
void cpa_gpt_init_params(cpa_gpt *model, uint64_t seed);

/* Forward and backward of one micro-batch.  `sample` holds the B global
 * sequences of S+1 tokens ([B, S+1]); the model takes this rank's shard.
 * `loss_scale` multiplies the per-token loss gradient (1 / tokens in the
 * global batch).  Returns in *loss_sum the sum of this rank's token losses
 * and in *long_sum / *long_count those of the targets flagged in
 * `long_range` [S] (may be NULL).  Gradients are ADDED to the grads
 * buffer.  Collective over the CP group. */
cpa_status cpa_gpt_step(cpa_gpt *model, const int32_t *sample, const uint8_t *long_range,
                        float loss_scale, int backward, double *loss_sum, double *long_sum,
                        double *long_count);

/* A micro-batch with per-sample extras (Megatron's position_ids and
 * loss_mask).  Every array is over GLOBAL positions; the model takes this
 * rank's rows. */
typedef struct cpa_gpt_batch {
    const int32_t *tokens;      /* [B, S+1] */
    const uint8_t *long_range;  /* [B, S] long-range flags (NULL: none) */
    const int64_t *positions;   /* [B, S] RoPE position of each input (NULL: its global
                                   position, the plain case) */
    const uint8_t *loss_mask;   /* [B, S] 0: this target takes no loss and no gradient
                                   (NULL: every target counts) */
    const int64_t *cu_seqlens;  /* [B, S+1] sample b's documents: cu_seqlens[b*(S+1) + 0 ..
                                   num_docs[b]] = 0, c1, ..., S (sample_documents models) */
    const int64_t *num_docs;    /* [B] */
} cpa_gpt_batch;

/* cpa_gpt_step for a cpa_gpt_batch: masked targets add nothing to
 * *loss_sum, the long-range sums or the gradients.  With positions and no
 * mask this is bitwise the same computation as cpa_gpt_step when the
 * positions are the global ones. */
cpa_status cpa_gpt_step_batch(cpa_gpt *model, const cpa_gpt_batch *batch, float loss_scale,
                              int backward, double *loss_sum, double *long_sum,
                              double *long_count);

/* Model flops of the last forward+backward of a micro-batch on this rank:
 * 6 per matmul weight per token, plus 3x the attention forward's flops over
 * the visible (query, key) pairs; recomputation is not counted (the
 * formula is in docs/train.md). */
double cpa_gpt_step_flops(const cpa_gpt *model);

/* The configuration lines that define the parameter shapes (for checkpoints). */
void cpa_gpt_shape_string(const cpa_gpt *model, char *buf, size_t n);

#endif
