/*
 * test_planner.c — the planner (src/cp/planner.c) under `mpiexec -n P`:
 *
 *  1. Its cost model's schedule (cpa_planner_schedule: ring steps and
 *     blocks, all-to-all calls and slabs, all-gathers and reduce-scatter)
 *     against the engines' own counters: for every configuration the
 *     planner enumerates, on causal and general masks, MHA and GQA (with
 *     KV heads replicated where G < U), one forward and one backward run
 *     through a real plan and the bytes each rank sent (cpa_plan_stats)
 *     must equal the model's forward and backward bytes exactly.
 *  2. cpa_planner_run on a small problem: every legal configuration is a
 *     candidate (each plans), predictions are finite and positive, sorted
 *     best first, the same on every rank; bytes are cpa_plan_volume's and
 *     memory the plan's + one saved state; the flags name the algorithm
 *     and its degrees; --validate fills measured times for the best K.
 *  3. Refusals are collective: a communicator of the wrong size and a
 *     problem no algorithm can split give CPA_ERR_ARG on every rank with
 *     the same message.
 */
#include "cp_internal.h"
#include "cpattn.h"
#include "test.h"

#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

static int rank_, P_;

static cpa_cp_config problem(int64_t H, int64_t G, cpa_mask_kind mask)
{
    cpa_cp_config c;
    memset(&c, 0, sizeof c);
    c.algo = CPA_ALGO_RING, c.cp_size = P_, c.window = 1, c.ulysses_degree = 1;
    c.mask.kind = mask;
    c.layout = CPA_LAYOUT_BSHD;
    c.batch = 2, c.seq_length = 32 * P_, c.num_heads = H, c.num_kv_heads = G;
    c.head_dim = 16, c.v_head_dim = 8, c.tp_size = 1, c.num_threads = 1;
    return c;
}

/* One forward + backward of `c`: the most bytes any rank sent in each. */
static void engine_bytes(const cpa_cp_config *c, double *fwd, double *bwd)
{
    cpa_plan *plan = NULL;
    cpa_plan_saved *saved = NULL;
    *fwd = *bwd = -1;
    CHECK_OK(cpa_plan_create(MPI_COMM_WORLD, c, &plan));
    if (!plan)
        return;
    CHECK_OK(cpa_plan_saved_create(plan, &saved));
    const int64_t B = c->batch, Sl = cpa_plan_local_seq(plan), H = c->num_heads,
                  G = c->num_kv_heads, Dk = c->head_dim, Dv = c->v_head_dim;
    float *q = cpa_alloc_floats(B * Sl * H * Dk), *dq = cpa_alloc_floats(B * Sl * H * Dk);
    float *k = cpa_alloc_floats(B * Sl * G * Dk), *dk = cpa_alloc_floats(B * Sl * G * Dk);
    float *v = cpa_alloc_floats(B * Sl * G * Dv), *dv = cpa_alloc_floats(B * Sl * G * Dv);
    float *o = cpa_alloc_floats(B * Sl * H * Dv), *dout = cpa_alloc_floats(B * Sl * H * Dv);
    float *lse = cpa_alloc_floats(B * H * Sl);
    cpa_tensor tq = cpa_tensor_attn(q, c->layout, B, Sl, H, Dk);
    cpa_tensor tk = cpa_tensor_attn(k, c->layout, B, Sl, G, Dk);
    cpa_tensor tv = cpa_tensor_attn(v, c->layout, B, Sl, G, Dv);
    cpa_tensor to = cpa_tensor_attn(o, c->layout, B, Sl, H, Dv);
    cpa_tensor tdo = cpa_tensor_attn(dout, c->layout, B, Sl, H, Dv);
    cpa_tensor tdq = cpa_tensor_attn(dq, c->layout, B, Sl, H, Dk);
    cpa_tensor tdk = cpa_tensor_attn(dk, c->layout, B, Sl, G, Dk);
    cpa_tensor tdv = cpa_tensor_attn(dv, c->layout, B, Sl, G, Dv);
    const int64_t lsh[3] = {B, H, Sl};
    cpa_tensor tl = cpa_tensor_make(lse, 3, lsh);
    cpa_tensor_fill_uniform(tq, 5, 1, c->seq_length, 0);
    cpa_tensor_fill_uniform(tk, 5, 2, c->seq_length, 0);
    cpa_tensor_fill_uniform(tv, 5, 3, c->seq_length, 0);
    cpa_tensor_fill_uniform(tdo, 5, 4, c->seq_length, 0);
    cpa_plan_stats st;
    double b[2] = {-1, -1};
    CHECK_OK(cpa_plan_forward(plan, saved, tq, tk, tv, to, tl));
    cpa_plan_last_stats(plan, &st);
    b[0] = st.bytes_sent;
    CHECK_OK(cpa_plan_backward(plan, saved, tq, tk, tv, to, tl, tdo, tdq, tdk, tdv));
    cpa_plan_last_stats(plan, &st);
    b[1] = st.bytes_sent;
    MPI_Allreduce(MPI_IN_PLACE, b, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    *fwd = b[0], *bwd = b[1];
    float *all[] = {q, dq, k, dk, v, dv, o, dout, lse};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i)
        cpa_free(all[i]);
    cpa_plan_saved_destroy(saved);
    cpa_plan_destroy(plan);
}

/* Every configuration the planner would consider, by the same rules: the
 * model's bytes against the engines'. */
static void model_vs_engines(int64_t H, int64_t G, cpa_mask_kind mask)
{
    cpa_cp_config base = problem(H, G, mask);
    const cpa_algo algos[] = {CPA_ALGO_ULYSSES, CPA_ALGO_RING, CPA_ALGO_HYBRID, CPA_ALGO_ALLGATHER};
    int tested = 0;
    for (size_t a = 0; a < sizeof algos / sizeof algos[0]; ++a)
        for (int U = 1; U <= P_; ++U)
            for (int W = 1; W <= P_; ++W) {
                cpa_cp_config c = base;
                c.algo = algos[a], c.ulysses_degree = U, c.window = W;
                const int uses_u = c.algo == CPA_ALGO_HYBRID, uses_w = c.algo == CPA_ALGO_RING ||
                                                                      c.algo == CPA_ALGO_HYBRID;
                if ((!uses_u && U != 1) || (!uses_w && W != 1))
                    continue;
                double vf, vb;
                if (cpa_plan_memory_bytes(&c) < 0 || cpa_plan_volume(&c, &vf, &vb) != CPA_OK) {
                    cpa_clear_error();
                    continue;
                }
                cpa_planner_sched s;
                cpa_planner_schedule(&c, &s);
                double ef, eb;
                engine_bytes(&c, &ef, &eb);
                CHECK_MSG(ef == s.fwd_bytes && eb == s.bwd_bytes,
                          "H %lld G %lld %s %s U %d W %d: engines sent %.0f / %.0f bytes, the "
                          "model says %.0f / %.0f", (long long)H, (long long)G,
                          mask == CPA_MASK_CAUSAL ? "causal" : "general", cpa_algo_name(c.algo),
                          U, W, ef, eb, s.fwd_bytes, s.bwd_bytes);
                if (c.algo == CPA_ALGO_RING || c.algo == CPA_ALGO_HYBRID)
                    CHECK_MSG(s.ring_steps == P_ / (c.algo == CPA_ALGO_HYBRID ? U : 1),
                              "%s U %d: %d ring steps", cpa_algo_name(c.algo), U, s.ring_steps);
                ++tested;
            }
    CHECK_MSG(tested >= (P_ > 1 ? 2 : 1), "only %d configurations tested", tested);
}

static void model_vs_engines_mha(void) { model_vs_engines(8, 8, CPA_MASK_CAUSAL); }
static void model_vs_engines_gqa(void) { model_vs_engines(8, 2, CPA_MASK_CAUSAL); }
/* G = 1 < U: Ulysses and the hybrid replicate the one KV head */
static void model_vs_engines_general_mqa(void) { model_vs_engines(4, 1, CPA_MASK_NONE); }

static void planner_run(void)
{
    cpa_cp_config base = problem(8, 2, CPA_MASK_CAUSAL);
    cpa_planner_options opt = {.validate = 2, .iters = 1};
    cpa_plan_candidate *k = NULL;
    cpa_planner_calibration cal;
    int n = 0;
    CHECK_OK(cpa_planner_run(MPI_COMM_WORLD, &base, &opt, &k, &n, &cal));
    if (!k)
        return;
    CHECK_MSG(n >= 1, "%d candidates", n);
    CHECK(cal.hosts >= 1 && cal.max_ranks_per_host >= 1);
    CHECK(cal.hidden_fraction >= 0 && cal.hidden_fraction <= 1);
    int rings = 0;
    for (int i = 0; i < n; ++i) {
        const cpa_plan_candidate *x = &k[i];
        const double t = x->fwd_s + x->bwd_s;
        CHECK_MSG(isfinite(t) && x->fwd_s > 0 && x->bwd_s > 0 && x->compute_s > 0,
                  "%s: predicted %g + %g s", x->flags, x->fwd_s, x->bwd_s);
        if (i > 0)
            CHECK_MSG(t >= k[i - 1].fwd_s + k[i - 1].bwd_s, "candidate %d (%s) before a slower "
                      "one", i, x->flags);
        double vf, vb;
        CHECK_OK(cpa_plan_volume(&x->config, &vf, &vb));
        CHECK(vf == x->fwd_bytes && vb == x->bwd_bytes);
        CHECK(x->memory_bytes == cpa_plan_memory_bytes(&x->config) +
                                     cpa_plan_saved_bytes(&x->config));
        CHECK_MSG(strstr(x->flags, cpa_algo_name(x->config.algo)) != NULL, "flags '%s'",
                  x->flags);
        CHECK(x->validated == (i < 2));
        if (x->validated)
            CHECK(x->measured_fwd_s > 0 && x->measured_bwd_s > 0);
        rings += x->config.algo == CPA_ALGO_RING && x->config.window == 1;
        /* the same table on every rank */
        double mine[2] = {t, (double)x->config.algo * 100 + x->config.window}, lo[2], hi[2];
        MPI_Allreduce(mine, lo, 2, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
        MPI_Allreduce(mine, hi, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        CHECK_MSG(lo[0] == hi[0] && lo[1] == hi[1], "candidate %d differs between ranks", i);
    }
    CHECK_MSG(rings == 2, "%d plain-ring candidates (with and without overlap)",
              rings);
    /* Each candidate plans. */
    for (int i = 0; i < n; ++i) {
        cpa_plan *p = NULL;
        CHECK_OK(cpa_plan_create(MPI_COMM_WORLD, &k[i].config, &p));
        cpa_plan_destroy(p);
    }
    cpa_planner_free(k);
}

static void same_refusal(cpa_status st, const char *what)
{
    CHECK_MSG(st == CPA_ERR_ARG, "%s: status %d", what, (int)st);
    char msg[512] = {0}, root[512] = {0};
    snprintf(msg, sizeof msg, "%s", cpa_last_error());
    memcpy(root, msg, sizeof root);
    MPI_Bcast(root, sizeof root, MPI_CHAR, 0, MPI_COMM_WORLD);
    CHECK_MSG(!strcmp(msg, root), "%s: rank %d says '%s', rank 0 '%s'", what, rank_, msg, root);
}

static void refusals(void)
{
    cpa_plan_candidate *k = NULL;
    cpa_planner_calibration cal;
    int n = 0;
    cpa_cp_config c = problem(8, 2, CPA_MASK_CAUSAL);
    c.cp_size = P_ + 1;
    same_refusal(cpa_planner_run(MPI_COMM_WORLD, &c, NULL, &k, &n, &cal), "wrong size");
    CHECK(k == NULL && n == 0);
    if (P_ > 1) {
        c = problem(8, 2, CPA_MASK_CAUSAL);
        c.seq_length = 1; /* fewer rows than ranks: nothing can split it */
        same_refusal(cpa_planner_run(MPI_COMM_WORLD, &c, NULL, &k, &n, &cal), "S = 1");
        CHECK(k == NULL && n == 0);
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &P_);
    RUN_TEST(model_vs_engines_mha);
    RUN_TEST(model_vs_engines_gqa);
    RUN_TEST(model_vs_engines_general_mqa);
    RUN_TEST(planner_run);
    RUN_TEST(refusals);
    int failed = test_failed_;
    MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rank_ == 0)
        (void)TEST_SUMMARY();
    MPI_Finalize();
    return failed ? 1 : 0;
}
