/*
 * test_cp.c — every context-parallel plan against the single-process
 * reference.  Run under `mpiexec -n P`: every rank builds the same global
 * inputs (values depend only on the logical index), computes the
 * double-precision reference on the whole sequence, runs the plan on its
 * shard, and compares its rows of out, lse, dq, dk, dv.  The verdict is
 * collected over all ranks.
 *
 *   test_cp matrix
 *       every row of the library's algorithm table (cpa_algo_count) with
 *       every degree valid at this P (U for rows that use it, every double-
 *       ring window W for rows that use it), causal and general, each also
 *       with packed documents (cu_seqlens: a document of length 1, edges on
 *       shard and chunk edges, documents spanning several shards, many short
 *       ones) and/or a sliding window (shorter than a shard, longer than S),
 *       the rows that take it also with the document-aware assignment,
 *       and some cases with the documents set per call on a plan made
 *       without them (cpa_plan_set_documents, a changed set refusing the
 *       saved state);
 *       shapes
 *       rotate over the layouts, GQA (G = H, 2, 1), D 64/80, Dv != D,
 *       overlap on/off, and S = 240 or 233 (uneven shards at every P); each case twice: with a saved state (the forward
 *       fills it, the backward starts from it) and without (the backward,
 *       given copies of its inputs, rebuilds what it needs); every fifth case
 *       runs the reference kernel inside the plan.  An algorithm added to
 *       the table is tested here with no edit.
 *   test_cp ALGO W OVERLAP MASK B S H G D DV LAYOUT [U]
 *       one case (for debugging).
 *
 * Tolerances: relative to the largest reference magnitude, 1e-5 for out/lse
 * and 5e-5 for the gradients — the kernel tests' bounds.  A ring adds only
 * one fp32 merge (out, lse) or one fp32 sum (dK/dV) per step, the all-gather
 * one fp32 sum of P partial dK/dV, so the error stays in that range for
 * every P; the measured errors are printed so growth with P shows.
 *
 * Each case also checks that forward and backward allocate nothing and that
 * cpa_plan_memory_bytes / cpa_plan_saved_bytes cover what was allocated.
 */
#include "cpattn.h"
#include "kernel_test_util.h"
#include "internal.h"
#include "test.h"

#include <mpi.h>
#include <string.h>

static int rank_, P_;

static tu_tensor shard_of(cpa_split split, int r, tu_tensor g, cpa_layout layout)
{
    tu_tensor l = tu_attn(layout, g.t.shape[0], cpa_split_rows(split, g.t.shape[1], r),
                          g.t.shape[2], g.t.shape[3]);
    cpa_shard(split, r, g.t, l.t);
    return l;
}

/* One configuration, both ways (saved state, and none with fresh copies).
 * late_docs: the plan is made without the documents and gets them per call
 * (cpa_plan_set_documents), as a trainer with per-sample documents does. */
static void run_case(const cpa_cp_config *cfg, const char *label, int late_docs)
{
    cpa_cp_config c = *cfg;
    const int fails0 = test_failed_;
    const int64_t B = c.batch, S = c.seq_length, H = c.num_heads, G = c.num_kv_heads;
    const int64_t D = c.head_dim, Dv = c.v_head_dim;

    cpa_plan *plan = NULL;
    cpa_plan_saved *saved = NULL;
    cpa_cp_config made = c;
    if (late_docs)
        made.mask.cu_seqlens = NULL, made.mask.num_docs = 0;
    const long long bytes0 = cpa_debug_alloc_bytes();
    cpa_status st = cpa_plan_create(MPI_COMM_WORLD, &made, &plan);
    if (st == CPA_OK && late_docs)
        st = cpa_plan_set_documents(plan, c.mask.cu_seqlens, c.mask.num_docs);
    const long long plan_bytes = cpa_debug_alloc_bytes() - bytes0;
    CHECK_MSG(st == CPA_OK, "%s: plan: %s", label, cpa_last_error());
    if (st != CPA_OK) {
        cpa_plan_destroy(plan);
        return;
    }
    const long long saved0 = cpa_debug_alloc_bytes();
    CHECK_OK(cpa_plan_saved_create(plan, &saved));
    const long long saved_bytes = cpa_debug_alloc_bytes() - saved0;
    const cpa_split split = cpa_plan_split(plan);
    const int64_t Sl = cpa_plan_local_seq(plan);

    /* Global inputs and the reference. */
    tu_tensor q = tu_attn(CPA_LAYOUT_BSHD, B, S, H, D), k = tu_attn(CPA_LAYOUT_BSHD, B, S, G, D);
    tu_tensor v = tu_attn(CPA_LAYOUT_BSHD, B, S, G, Dv), dout = tu_attn(CPA_LAYOUT_BSHD, B, S, H, Dv);
    tu_fill(q.t, 1, 1.0f), tu_fill(k.t, 2, 1.0f), tu_fill(v.t, 3, 1.0f), tu_fill(dout.t, 4, 1.0f);
    tu_tensor out = tu_attn(CPA_LAYOUT_BSHD, B, S, H, Dv), lse = tu_lse(B, H, S);
    tu_tensor dq = tu_attn(CPA_LAYOUT_BSHD, B, S, H, D), dk = tu_attn(CPA_LAYOUT_BSHD, B, S, G, D);
    tu_tensor dv = tu_attn(CPA_LAYOUT_BSHD, B, S, G, Dv);
    cpa_attn_desc d;
    memset(&d, 0, sizeof d);
    d.q = q.t, d.k = k.t, d.v = v.t;
    d.mask = c.mask;
    d.impl = CPA_IMPL_REFERENCE;
    CHECK_OK(cpa_attn_forward(NULL, &d, out.t, lse.t));
    CHECK_OK(cpa_attn_backward(NULL, &d, out.t, lse.t, dout.t, dq.t, dk.t, dv.t));

    /* The reference's rows of this rank. */
    tu_tensor ro = shard_of(split, rank_, out, c.layout), rdq = shard_of(split, rank_, dq, c.layout);
    tu_tensor rdk = shard_of(split, rank_, dk, c.layout), rdv = shard_of(split, rank_, dv, c.layout);
    tu_tensor rl = tu_lse(B, H, Sl);
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)Sl);
    cpa_split_positions(split, S, rank_, pos);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t s = 0; s < Sl; ++s)
                rl.buf[(b * H + h) * Sl + s] = lse.buf[(b * H + h) * S + pos[s]];

    /* My shard, in the plan's layout. */
    tu_tensor lq = shard_of(split, rank_, q, c.layout), lk = shard_of(split, rank_, k, c.layout);
    tu_tensor lv = shard_of(split, rank_, v, c.layout), ldo = shard_of(split, rank_, dout, c.layout);
    double worst[5] = {0};
    for (int with_saved = 1; with_saved >= 0; --with_saved) {
        tu_tensor lo = tu_attn(c.layout, B, Sl, H, Dv), ll = tu_lse(B, H, Sl);
        tu_tensor ldq = tu_attn(c.layout, B, Sl, H, D), ldk = tu_attn(c.layout, B, Sl, G, D);
        tu_tensor ldv = tu_attn(c.layout, B, Sl, G, Dv);
        tu_fill(ldq.t, 9, 3.0f); /* garbage: the plan must overwrite, not add */
        tu_fill(ldk.t, 10, 3.0f);
        /* The bytes sent are the schedule's (cpa_plan_rank_volume: this rank's; the
         * plan-wide figure is the most any rank sends), forward and backward. */
        double vf = -1, vb = -1, mf = -1, mb = -1;
        CHECK_OK(cpa_plan_rank_volume(&c, rank_, &vf, &vb));
        CHECK_OK(cpa_plan_volume(&c, &mf, &mb));
        CHECK_MSG(vf >= 0 && vb >= 0 && vf <= mf && vb <= mb,
                  "%s rank %d: its volume %.0f/%.0f vs the largest %.0f/%.0f", label, rank_, vf,
                  vb, mf, mb);
        const long long calls0 = cpa_debug_alloc_bytes();
        CHECK_OK(cpa_plan_forward(plan, with_saved ? saved : NULL, lq.t, lk.t, lv.t, lo.t, ll.t));
        if (with_saved && late_docs) {
            /* Documents changed between forward and backward: the saved state
             * is refused on every rank; set back, it is accepted. */
            CHECK_OK(cpa_plan_set_documents(plan, NULL, 0));
            CHECK_STATUS(cpa_plan_backward(plan, saved, lq.t, lk.t, lv.t, lo.t, ll.t, ldo.t,
                                           ldq.t, ldk.t, ldv.t), CPA_ERR_ARG);
            CHECK(strstr(cpa_last_error(), "documents changed") != NULL);
            CHECK_OK(cpa_plan_set_documents(plan, c.mask.cu_seqlens, c.mask.num_docs));
        }
        if (with_saved) {
            cpa_plan_stats fs, bs;
            cpa_plan_last_stats(plan, &fs);
            CHECK_OK(cpa_plan_backward(plan, saved, lq.t, lk.t, lv.t, lo.t, ll.t, ldo.t, ldq.t,
                                       ldk.t, ldv.t));
            cpa_plan_last_stats(plan, &bs);
            CHECK_MSG(fs.bytes_sent == vf && bs.bytes_sent == vb, "%s rank %d: sent %.0f/%.0f "
                      "bytes forward/backward, the schedule says %.0f/%.0f", label, rank_,
                      fs.bytes_sent, bs.bytes_sent, vf, vb);
        } else { /* other tensors of the same values: nothing may be remembered */
            tu_tensor cp[5] = {tu_attn(c.layout, B, Sl, H, D), tu_attn(c.layout, B, Sl, G, D),
                               tu_attn(c.layout, B, Sl, G, Dv), tu_attn(c.layout, B, Sl, H, Dv),
                               tu_lse(B, H, Sl)};
            tu_copy(cp[0].t, lq.t), tu_copy(cp[1].t, lk.t), tu_copy(cp[2].t, lv.t);
            tu_copy(cp[3].t, lo.t);
            memcpy(cp[4].buf, ll.buf, sizeof(float) * (size_t)(B * H * Sl));
            const long long c1 = cpa_debug_alloc_bytes();
            CHECK_OK(cpa_plan_backward(plan, NULL, cp[0].t, cp[1].t, cp[2].t, cp[3].t, cp[4].t,
                                       ldo.t, ldq.t, ldk.t, ldv.t));
            CHECK_MSG(cpa_debug_alloc_bytes() == c1 || c.impl == CPA_IMPL_REFERENCE,
                      "%s: the backward allocated", label);
            for (int i = 0; i < 5; ++i)
                free(cp[i].buf);
        }
        if (with_saved) {
            const long long calls = cpa_debug_alloc_bytes() - calls0, used = plan_bytes + calls;
            /* The reference kernel keeps O(S) row buffers per call: only the
             * fast path is allocation-free. */
            CHECK_MSG(calls == 0 || c.impl == CPA_IMPL_REFERENCE,
                      "%s rank %d: forward and backward allocated %lld bytes", label, rank_, calls);
            const int64_t est = cpa_plan_memory_bytes(&c);
            CHECK_MSG(c.impl == CPA_IMPL_REFERENCE ||
                          (est >= used && (double)est <= 1.10 * (double)used + (1 << 20)),
                      "%s rank %d: estimated %lld bytes for the plan, it allocated %lld", label,
                      rank_, (long long)est, used);
            CHECK_MSG(cpa_plan_saved_bytes(&c) >= saved_bytes,
                      "%s: saved state estimated %lld bytes, allocated %lld", label,
                      (long long)cpa_plan_saved_bytes(&c), saved_bytes);
        }
        tu_err e[5] = {tu_compare(lo.t, ro.t), tu_compare(ll.t, rl.t), tu_compare(ldq.t, rdq.t),
                       tu_compare(ldk.t, rdk.t), tu_compare(ldv.t, rdv.t)};
        static const char *const names[5] = {"out", "lse", "dq", "dk", "dv"};
        for (int i = 0; i < 5; ++i) {
            double err = i == 1 ? e[i].abs / (e[i].scale > 1 ? e[i].scale : 1) : e[i].rel;
            double tol = i < 2 ? 1e-5 : 5e-5;
            CHECK_MSG(err <= tol, "%s (%s saved state) rank %d %s: error %.3g > %.1g", label,
                      with_saved ? "with" : "without", rank_, names[i], err, tol);
            worst[i] = err > worst[i] ? err : worst[i];
        }
        tu_tensor mine[] = {lo, ll, ldq, ldk, ldv};
        for (size_t i = 0; i < sizeof mine / sizeof mine[0]; ++i)
            free(mine[i].buf);
    }
    double all[5];
    MPI_Reduce(worst, all, 5, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    int bad = test_failed_ - fails0, anybad = 0;
    MPI_Allreduce(&bad, &anybad, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank_ == 0)
        printf("%s %s: max errors out %.2g lse %.2g dq %.2g dk %.2g dv %.2g\n",
               anybad ? "FAIL" : "ok  ", label, all[0], all[1], all[2], all[3], all[4]);
    free(pos);
    tu_tensor bufs[] = {q, k, v, dout, out, lse, dq, dk, dv, lq, lk, lv, ldo, ro, rdq, rdk, rdv, rl};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; ++i)
        free(bufs[i].buf);
    cpa_plan_saved_destroy(saved);
    cpa_plan_destroy(plan);
}

static void label_of(const cpa_cp_config *c, char *buf, size_t cap)
{
    snprintf(buf, cap, "P=%d %s U=%d W=%d overlap=%d %s docs=%lld window=%lld%s B=%lld S=%lld "
             "H=%lld G=%lld D=%lld Dv=%lld %s %s", c->cp_size, cpa_algo_name(c->algo),
             c->ulysses_degree, c->window, c->send_recv_overlap,
             c->mask.kind == CPA_MASK_CAUSAL ? "causal" : "general", (long long)c->mask.num_docs,
             (long long)c->mask.window,
             c->balance == CPA_BALANCE_DOCUMENTS ? " balance=documents" : "",
             (long long)c->batch, (long long)c->seq_length, (long long)c->num_heads,
             (long long)c->num_kv_heads, (long long)c->head_dim, (long long)c->v_head_dim,
             cpa_layout_name(c->layout), c->impl == CPA_IMPL_REFERENCE ? "reference" : "fast");
}

/* Every row of the table with every degree valid at P. */
static void run_matrix(void)
{
    int n = 0;
    for (int a = 0; a < cpa_algo_count(); ++a) {
        cpa_algo_info info;
        CHECK_OK(cpa_algo_describe((cpa_algo)a, &info));
        CHECK_MSG(cpa_algo_describe((cpa_algo)a, &info) == CPA_OK && !strcmp(info.name,
                  cpa_algo_name((cpa_algo)a)), "table row %d: id and name disagree", a);
        for (int U = info.uses_ulysses_degree ? 2 : 0; U <= (info.uses_ulysses_degree ? P_ - 1 : 0);
             ++U) {
            if (U && P_ % U)
                continue;
            const int R = U ? P_ / U : P_;
            for (int W = 1; W == 1 || (info.uses_window && W < R); ++W) {
                if (W > 1 && R % W)
                    continue;
                for (int m = 0; m < 4; ++m, ++n) {
                    cpa_cp_config c;
                    memset(&c, 0, sizeof c);
                    c.algo = (cpa_algo)a;
                    c.cp_size = P_, c.ulysses_degree = U, c.window = W;
                    c.send_recv_overlap = info.uses_overlap ? n & 1 : 0;
                    c.mask.kind = m % 2 == 0 ? CPA_MASK_CAUSAL : CPA_MASK_NONE;
                    if (m >= 2) { /* documents and/or a sliding window, rotating */
                        static const int64_t docs[2][8] = {{0, 1, 37, 120, 121, 200, 240},
                                                           {0, 3, 5, 60, 61, 64, 180, 240}};
                        static const int64_t ndocs[2] = {6, 7}, windows[3] = {7, 45, 300};
                        const int v = n / 4;
                        if (v % 3 != 2)
                            c.mask.cu_seqlens = docs[v % 2], c.mask.num_docs = ndocs[v % 2];
                        if (v % 3 != 0)
                            c.mask.window = windows[v % 3];
                        /* Rows that take it: the document-aware assignment. */
                        if (info.uses_balance && v % 2 == 0)
                            c.balance = CPA_BALANCE_DOCUMENTS;
                    }
                    c.layout = (cpa_layout)(n % 3);
                    /* Heads: Ulysses scatters H over P (hybrid over U). */
                    c.num_heads = (P_ % 3 == 0 || U == 3) ? 12 : 8;
                    const int64_t gs[3] = {c.num_heads, 2, 1};
                    c.num_kv_heads = gs[n % 3];
                    c.head_dim = n % 2 ? 80 : 64;
                    c.v_head_dim = n % 4 == 3 ? 48 : c.head_dim;
                    /* Any length: every other case without documents is ragged (233
                     * is prime: uneven shards at every P > 1). */
                    c.batch = 2, c.tp_size = 1, c.num_threads = 1;
                    c.seq_length = c.mask.cu_seqlens || n % 2 == 0 ? 240 : 233;
                    c.impl = n % 5 == 0 ? CPA_IMPL_REFERENCE : CPA_IMPL_FAST;
                    char label[256];
                    label_of(&c, label, sizeof label);
                    /* Every other case with documents gets them per call. */
                    const int late = c.mask.cu_seqlens && c.balance != CPA_BALANCE_DOCUMENTS &&
                                     (n / 4) % 4 < 2;
                    if (late)
                        strncat(label, " per-call-docs", sizeof label - strlen(label) - 1);
                    run_case(&c, label, late);
                }
            }
        }
    }
    CHECK_MSG(n > 0, "no configuration of any algorithm is valid at P=%d", P_);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &P_);
    if (argc == 2 && !strcmp(argv[1], "matrix")) {
        run_matrix();
    } else if (argc == 12 || argc == 13) {
        cpa_cp_config c;
        memset(&c, 0, sizeof c);
        CHECK_OK(cpa_algo_parse(argv[1], &c.algo));
        c.cp_size = P_;
        c.window = atoi(argv[2]);
        c.send_recv_overlap = atoi(argv[3]);
        c.mask.kind = !strcmp(argv[4], "causal") ? CPA_MASK_CAUSAL : CPA_MASK_NONE;
        c.batch = atoll(argv[5]), c.seq_length = atoll(argv[6]);
        c.num_heads = atoll(argv[7]), c.num_kv_heads = atoll(argv[8]);
        c.head_dim = atoll(argv[9]), c.v_head_dim = atoll(argv[10]);
        cpa_layout_parse(argv[11], &c.layout);
        c.ulysses_degree = argc > 12 ? atoi(argv[12]) : 0;
        c.tp_size = 1, c.num_threads = 1;
        char label[256];
        label_of(&c, label, sizeof label);
        run_case(&c, label, 0);
    } else {
        if (rank_ == 0)
            fprintf(stderr, "usage: test_cp matrix | test_cp ALGO W OVERLAP MASK B S H G D DV "
                            "LAYOUT [U]\n");
        MPI_Finalize();
        return 2;
    }
    int counts[2] = {test_passed_, test_failed_}, total[2];
    MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank_ == 0)
        printf("%d passed, %d failed\n", total[0], total[1]);
    MPI_Finalize();
    return total[1] ? 1 : 0;
}
