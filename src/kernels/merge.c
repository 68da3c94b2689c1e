/*
 * merge.c — combine two partial attention results over disjoint key sets.
 *
 *   lse = m + log(e^(l1-m) + e^(l2-m)),  m = max(l1, l2)
 *   out = out1·e^(l1-lse) + out2·e^(l2-lse)
 *
 * Written as lse = m + log1p(e^-(|l1-l2|)) so that nothing overflows and
 * the larger side keeps full precision.  A side with lse = -inf (it saw no
 * key) contributes nothing; both -inf leaves out = 0, lse = -inf.
 */
#include "kernel_internal.h"

static cpa_status check_merge_view(const char *name, const cpa_tensor *t, int ndim)
{
    if (t->ndim != ndim || !t->data)
        return cpa_error(CPA_ERR_ARG, "merge: %s must be a %d-d view with data", name, ndim);
    return CPA_OK;
}

cpa_status cpa_attn_merge(cpa_tensor out, cpa_tensor lse, cpa_tensor out2, cpa_tensor lse2,
                          cpa_rows rows)
{
    CPA_TRY(check_merge_view("out", &out, 4));
    CPA_TRY(check_merge_view("out2", &out2, 4));
    CPA_TRY(check_merge_view("lse", &lse, 3));
    CPA_TRY(check_merge_view("lse2", &lse2, 3));
    const int64_t B = out.shape[0], S = out.shape[1], H = out.shape[2], Dv = out.shape[3];
    for (int i = 0; i < 4; ++i)
        if (out2.shape[i] != out.shape[i] || out.shape[i] <= 0)
            return cpa_error(CPA_ERR_ARG, "merge: out2 dim %d is %lld, out's is %lld; they must "
                             "match and be positive", i, (long long)out2.shape[i],
                             (long long)out.shape[i]);
    const int64_t lse_shape[3] = {B, H, S};
    for (int i = 0; i < 3; ++i)
        if (lse.shape[i] != lse_shape[i] || lse2.shape[i] != lse_shape[i])
            return cpa_error(CPA_ERR_ARG, "merge: lse and lse2 must be [B, H, S] = [%lld, %lld, "
                             "%lld]", (long long)B, (long long)H, (long long)S);
    if (rows.count < 0 || rows.count > CPA_MAX_PIECES || (rows.count > 0 && !rows.pieces))
        return cpa_error(CPA_ERR_ARG, "merge: rows has %d pieces (limit %d)", rows.count,
                         CPA_MAX_PIECES);
    for (int p = 0; p < rows.count; ++p)
        if (rows.pieces[p].row < 0 || rows.pieces[p].len < 0 ||
            rows.pieces[p].row > S - rows.pieces[p].len)
            return cpa_error(CPA_ERR_ARG, "merge: piece %d {row %lld, len %lld} lies outside the "
                             "%lld rows", p, (long long)rows.pieces[p].row,
                             (long long)rows.pieces[p].len, (long long)S);

    cpa_tiling t;
    cpa_tiling_init(&t, rows, S, 1);
    for (int p = 0; p < t.count; ++p) {
        const cpa_piece pc = t.pieces[p];
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t b = 0; b < B; ++b)
            for (int64_t h = 0; h < H; ++h)
                for (int64_t r = pc.row; r < pc.row + pc.len; ++r) {
                    float *l1p = cpa_at3(&lse, b, h, r);
                    const float l1 = *l1p, l2 = *cpa_at3(&lse2, b, h, r);
                    float *o1 = cpa_at4(&out, b, r, h);
                    const float *o2 = cpa_at4(&out2, b, r, h);
                    if (l2 == -INFINITY)
                        continue;
                    if (l1 == -INFINITY) {
                        for (int64_t c = 0; c < Dv; ++c)
                            o1[c] = o2[c];
                        *l1p = l2;
                        continue;
                    }
                    const float m = l1 > l2 ? l1 : l2;
                    const float l = m + log1pf(expf(-fabsf(l1 - l2)));
                    const float w1 = expf(l1 - l), w2 = expf(l2 - l);
                    for (int64_t c = 0; c < Dv; ++c)
                        o1[c] = o1[c] * w1 + o2[c] * w2;
                    *l1p = l;
                }
    }
    return CPA_OK;
}
