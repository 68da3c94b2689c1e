/*
 * optim.c — AdamW, the learning-rate schedule and the gradient norm (see
 * optim.h).  Element-wise loops, parallel over elements (each element's
 * update is independent, so results do not depend on the thread count); the
 * norm sums in double in a fixed order.
 */
#include "optim.h"

#include <math.h>

float cpa_lr_at(const cpa_adamw *o, int64_t it)
{
    if (o->warmup_iters > 0 && it < o->warmup_iters)
        return o->lr * (float)(it + 1) / (float)o->warmup_iters;
    if (it >= o->decay_iters)
        return o->min_lr;
    double span = (double)(o->decay_iters - o->warmup_iters);
    double frac = span > 0 ? (double)(it - o->warmup_iters) / span : 1.0;
    double coeff = 0.5 * (1.0 + cos(3.14159265358979323846 * frac));
    return (float)(o->min_lr + coeff * (o->lr - o->min_lr));
}

double cpa_grad_norm(const float *g, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i)
        s += (double)g[i] * (double)g[i];
    return sqrt(s);
}

void cpa_adamw_update(const cpa_adamw *o, float *params, const float *grads, float *m, float *v,
                      const uint8_t *decay, int64_t n, int64_t step, float lr, float grad_scale)
{
    const float c1 = 1.0f - powf(o->beta1, (float)step), c2 = 1.0f - powf(o->beta2, (float)step);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        float g = grads[i] * grad_scale;
        m[i] = o->beta1 * m[i] + (1.0f - o->beta1) * g;
        v[i] = o->beta2 * v[i] + (1.0f - o->beta2) * g * g;
        float mhat = m[i] / c1, vhat = v[i] / c2;
        float wd = decay[i] ? o->weight_decay * params[i] : 0.0f;
        params[i] -= lr * (mhat / (sqrtf(vhat) + o->eps) + wd);
    }
}
