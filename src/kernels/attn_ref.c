/*
 * attn_ref.c — the plain reference attention: one query row at a time,
 * every score, sum and product in double, no tiling, no online softmax.
 * Slow (O(Sq·Sk·D) with no blocking) but obviously right; tests and
 * `cpattn attn --check` compare the fast kernels against it.  It follows
 * the same contract as the fast path (pieces, positions, masks, GQA, MLA,
 * accumulating backward) and may allocate.
 *
 * Parallel over (batch, head) in the forward and over (batch, key/value
 * head) in the backward, with serial sums inside a task, so it too is
 * deterministic.
 */
#include "kernel_internal.h"

#include <stdlib.h>
#include <string.h>

/* The query rows / key rows as flat lists of (row, pos). */
typedef struct row_list {
    int64_t n;
    int64_t *row, *pos;
} row_list;

static cpa_status row_list_make(cpa_rows rows, int64_t nrows, row_list *out)
{
    cpa_tiling t;
    cpa_tiling_init(&t, rows, nrows, 1);
    int64_t n = cpa_tiling_count(&t);
    out->n = n;
    out->row = cpa_malloc(sizeof(int64_t) * (size_t)(2 * n + 1), "reference row list");
    if (!out->row)
        return CPA_ERR_NOMEM;
    out->pos = out->row + n;
    int64_t k = 0;
    for (int p = 0; p < t.count; ++p)
        for (int64_t i = 0; i < t.pieces[p].len; ++i, ++k) {
            out->row[k] = t.pieces[p].row + i;
            out->pos[k] = t.pieces[p].pos + i;
        }
    return CPA_OK;
}

/* The query and the key rows of a descriptor. */
static cpa_status row_lists_make(const cpa_attn_desc *d, row_list *qr, row_list *kr)
{
    CPA_TRY(row_list_make(d->q_rows, d->q.shape[1], qr));
    if (row_list_make(d->kv_rows, d->k.shape[1], kr) != CPA_OK) {
        cpa_free(qr->row);
        return CPA_ERR_NOMEM;
    }
    return CPA_OK;
}

static int visible(cpa_mask m, int64_t qpos, int64_t kpos)
{
    int64_t lo, hi;
    cpa_mask_range(m, qpos, &lo, &hi);
    return kpos >= lo && kpos <= hi;
}

static double dot_d(const float *a, const float *b, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i)
        s += (double)a[i] * (double)b[i];
    return s;
}

cpa_status cpa_attn_forward_ref(const cpa_attn_desc *d, cpa_tensor out, cpa_tensor lse)
{
    const int64_t B = d->q.shape[0], H = d->q.shape[2], G = d->k.shape[2];
    const int64_t Dqk = d->q.shape[3], Dv = d->v.shape[3];
    const double scale = cpa_attn_scale(d);
    row_list qr, kr;
    CPA_TRY(row_lists_make(d, &qr, &kr));
    int failed = 0;
#pragma omp parallel
    {
        double *s = malloc(sizeof(double) * (size_t)(kr.n + Dv + 1)); /* scores, then output */
        double *acc = s ? s + kr.n : NULL;
        if (!s) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < B * H; ++t) {
            if (!s)
                continue;
            const int64_t b = t / H, h = t % H, g = h / (H / G);
            for (int64_t qi = 0; qi < qr.n; ++qi) {
                const float *q = cpa_at4(&d->q, b, qr.row[qi], h);
                /* The maximum over the visible scores; a NaN score makes it
                 * NaN and keeps it so (NaN in, NaN out: a NaN must never
                 * look like a masked key). */
                double m = -INFINITY;
                int64_t nvis = 0;
                for (int64_t ki = 0; ki < kr.n; ++ki) {
                    if (!visible(d->mask, qr.pos[qi], kr.pos[ki])) {
                        s[ki] = NAN; /* marks "masked" below; never read as a score */
                        continue;
                    }
                    s[ki] = scale * dot_d(q, cpa_at4(&d->k, b, kr.row[ki], g), Dqk);
                    ++nvis;
                    if (!isnan(m) && (isnan(s[ki]) || s[ki] > m))
                        m = s[ki];
                }
                float *o = cpa_at4(&out, b, qr.row[qi], h);
                float *l = cpa_at3(&lse, b, h, qr.row[qi]);
                if (nvis == 0) { /* sees no key */
                    memset(o, 0, sizeof(float) * (size_t)Dv);
                    *l = -INFINITY;
                    continue;
                }
                if (m == -INFINITY) { /* every visible score is -inf: 0/0 in a softmax */
                    for (int64_t c = 0; c < Dv; ++c)
                        o[c] = NAN;
                    *l = NAN;
                    continue;
                }
                double sum = 0.0;
                memset(acc, 0, sizeof(double) * (size_t)Dv);
                for (int64_t ki = 0; ki < kr.n; ++ki) {
                    if (!visible(d->mask, qr.pos[qi], kr.pos[ki]))
                        continue;
                    double p = exp(s[ki] - m);
                    sum += p;
                    const float *v = cpa_at4(&d->v, b, kr.row[ki], g);
                    for (int64_t c = 0; c < Dv; ++c)
                        acc[c] += p * v[c];
                }
                for (int64_t c = 0; c < Dv; ++c)
                    o[c] = (float)(acc[c] / sum);
                *l = (float)(m + log(sum));
            }
        }
        free(s);
    }
    cpa_free(qr.row);
    cpa_free(kr.row);
    if (failed)
        return cpa_error(CPA_ERR_NOMEM, "reference forward: cannot allocate a score row of %lld",
                         (long long)kr.n);
    return CPA_OK;
}

cpa_status cpa_attn_backward_ref(const cpa_attn_desc *d, cpa_tensor out, cpa_tensor lse,
                                 cpa_tensor dout, cpa_tensor dq, cpa_tensor dk, cpa_tensor dv)
{
    const int64_t B = d->q.shape[0], H = d->q.shape[2], G = d->k.shape[2];
    const int64_t Dqk = d->q.shape[3], Dv = d->v.shape[3], hpg = H / G;
    const double scale = cpa_attn_scale(d);
    row_list qr, kr;
    CPA_TRY(row_lists_make(d, &qr, &kr));
    int failed = 0;
#pragma omp parallel
    {
        /* Per task: double accumulators for dK and dV of the key rows, and
         * one row of dQ. */
        size_t n = (size_t)(kr.n * (Dqk + Dv) + Dqk);
        double *dkacc = malloc(sizeof(double) * n);
        double *dvacc = dkacc ? dkacc + kr.n * Dqk : NULL;
        double *dqrow = dkacc ? dvacc + kr.n * Dv : NULL;
        if (!dkacc) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < B * G; ++t) {
            if (!dkacc)
                continue;
            const int64_t b = t / G, g = t % G;
            memset(dkacc, 0, sizeof(double) * (size_t)(kr.n * (Dqk + Dv)));
            for (int64_t h = g * hpg; h < (g + 1) * hpg; ++h) {
                for (int64_t qi = 0; qi < qr.n; ++qi) {
                    const float *q = cpa_at4(&d->q, b, qr.row[qi], h);
                    const float *o = cpa_at4(&out, b, qr.row[qi], h);
                    const float *dO = cpa_at4(&dout, b, qr.row[qi], h);
                    const double L = *cpa_at3(&lse, b, h, qr.row[qi]);
                    if (L == -INFINITY)
                        continue; /* the row saw no key: no gradient */
                    const double dr = dot_d(dO, o, Dv);
                    memset(dqrow, 0, sizeof(double) * (size_t)Dqk);
                    for (int64_t ki = 0; ki < kr.n; ++ki) {
                        if (!visible(d->mask, qr.pos[qi], kr.pos[ki]))
                            continue;
                        const float *k = cpa_at4(&d->k, b, kr.row[ki], g);
                        const float *v = cpa_at4(&d->v, b, kr.row[ki], g);
                        const double p = exp(scale * dot_d(q, k, Dqk) - L);
                        const double ds = p * (dot_d(dO, v, Dv) - dr);
                        for (int64_t c = 0; c < Dv; ++c)
                            dvacc[ki * Dv + c] += p * dO[c];
                        for (int64_t c = 0; c < Dqk; ++c) {
                            dqrow[c] += scale * ds * k[c];
                            dkacc[ki * Dqk + c] += scale * ds * q[c];
                        }
                    }
                    float *dqp = cpa_at4(&dq, b, qr.row[qi], h);
                    for (int64_t c = 0; c < Dqk; ++c)
                        dqp[c] = (float)((double)dqp[c] + dqrow[c]);
                }
            }
            for (int64_t ki = 0; ki < kr.n; ++ki) {
                float *dkp = cpa_at4(&dk, b, kr.row[ki], g);
                float *dvp = cpa_at4(&dv, b, kr.row[ki], g);
                for (int64_t c = 0; c < Dqk; ++c)
                    dkp[c] = (float)((double)dkp[c] + dkacc[ki * Dqk + c]);
                for (int64_t c = 0; c < Dv; ++c)
                    dvp[c] = (float)((double)dvp[c] + dvacc[ki * Dv + c]);
            }
        }
        free(dkacc);
    }
    cpa_free(qr.row);
    cpa_free(kr.row);
    if (failed)
        return cpa_error(CPA_ERR_NOMEM, "reference backward: cannot allocate accumulators for "
                         "%lld key rows", (long long)kr.n);
    return CPA_OK;
}
