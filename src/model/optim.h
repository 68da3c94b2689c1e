/*
 * optim.h — AdamW with a linear warm-up + cosine learning-rate schedule and
 * gradient clipping by global norm, as Megatron's defaults do it.
 */
#ifndef CPATTN_MODEL_OPTIM_H
#define CPATTN_MODEL_OPTIM_H

#include <stdint.h>

typedef struct cpa_adamw {
    float lr, min_lr, beta1, beta2, eps, weight_decay;
    int64_t warmup_iters, decay_iters;
} cpa_adamw;

/* Learning rate at iteration `it` (0-based): linear from lr/warmup up to lr
 * over warmup_iters, then cosine down to min_lr at decay_iters. */
float cpa_lr_at(const cpa_adamw *opt, int64_t it);

/* The global L2 norm of g[0..n-1] (double accumulation, fixed order). */
double cpa_grad_norm(const float *g, int64_t n);

/* One AdamW step (bias-corrected; `step` counts from 1): params, m, v
 * updated in place; decay[i] selects decoupled weight decay; grads are
 * multiplied by grad_scale first (clipping). */
void cpa_adamw_update(const cpa_adamw *opt, float *params, const float *grads, float *m, float *v,
                      const uint8_t *decay, int64_t n, int64_t step, float lr, float grad_scale);

#endif
