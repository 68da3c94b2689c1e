/*
 * layers.h — the GPT's local layers, forward and backward, written by hand
 * in the style of llm.c: plain row-major fp32 arrays with their shapes in
 * comments, N = number of token rows, C = model width.  Backward functions
 * ACCUMULATE (+=) into parameter gradients and into input gradients, so a
 * residual stream can sum its branches.  Results are bitwise identical for
 * any thread count.  Nothing here knows about MPI or attention; the model
 * (gpt.c) wires the layers around a context-parallel attention plan.
 */
#ifndef CPATTN_MODEL_LAYERS_H
#define CPATTN_MODEL_LAYERS_H

#include "cpattn.h"

#include <stdint.h>

/* Token embedding: out[n, :] = wte[tokens[n], :].
 *   out [N, C], tokens [N] in 0..V-1, wte [V, C] */
void cpa_embedding_forward(float *out, const int32_t *tokens, const float *wte, int64_t N,
                           int64_t C);
/* dwte[tokens[n], :] += dout[n, :] (rows added in order n = 0..N-1). */
void cpa_embedding_backward(float *dwte, const float *dout, const int32_t *tokens, int64_t N,
                            int64_t C);

/* RMSNorm: out = inp / sqrt(mean(inp²) + eps) * weight.
 *   out, inp [N, C], weight [C], rstd [N] (saved for backward) */
void cpa_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                         int64_t N, int64_t C, float eps);
/* dinp += ..., dweight += ... */
void cpa_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                          const float *weight, const float *rstd, int64_t N, int64_t C);

/* Linear layer without bias: out[N, OC] = inp[N, C] · weight[OC, C]ᵀ (sgemm). */
void cpa_matmul_forward(float *out, const float *inp, const float *weight, int64_t N, int64_t C,
                        int64_t OC);
/* dinp[N, C] += dout · weight ; dweight[OC, C] += doutᵀ · inp.  Either
 * output may be NULL (skipped). */
void cpa_matmul_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                         const float *weight, int64_t N, int64_t C, int64_t OC);

/* Rotary position embedding, in place, on a logical [B, T, N, D] view (any
 * strides, D even), rotating the halves (x[i], x[i + D/2]) by angle
 * pos[t] · base^(-2i/D) ("NeoX" style).  pos [T] are GLOBAL token positions
 * (from the sequence split), so zigzag shards get their true positions.
 * inverse = 1 rotates by the opposite angle, which is the backward. */
void cpa_rope_apply(cpa_tensor x, const int64_t *pos, float base, int inverse);

/* SwiGLU: out = silu(gate) * up, with gate_up [N, 2F] holding gate in columns
 * 0..F-1 and up in F..2F-1; out [N, F]. */
void cpa_swiglu_forward(float *out, const float *gate_up, int64_t N, int64_t F);
/* dgate_up [N, 2F] += d/d(gate_up) given dout [N, F]. */
void cpa_swiglu_backward(float *dgate_up, const float *dout, const float *gate_up, int64_t N,
                         int64_t F);

/* Cross-entropy over V classes for each row: losses[n] = logsumexp(logits[n])
 * - logits[n, targets[n]] (double inside).  A target < 0 means "no target":
 * loss 0 and no gradient.  Returns the sum of the losses. */
double cpa_crossentropy_forward(float *losses, const float *logits, const int32_t *targets,
                                int64_t N, int64_t V);
/* dlogits [N, V] = (softmax(logits) - onehot(target)) · scale (written, not
 * added); rows without a target get 0. */
void cpa_crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets,
                               float scale, int64_t N, int64_t V);

/* out[i] = a[i] + b[i] (the residual stream); n elements. */
void cpa_residual_forward(float *out, const float *a, const float *b, int64_t n);

#endif /* CPATTN_MODEL_LAYERS_H */
