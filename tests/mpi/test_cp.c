/*
 * test_cp.c — a context-parallel plan against the single-process reference.
 * Run under `mpiexec -n P`: every rank builds the same global inputs (values
 * depend only on the logical index), computes the double-precision reference
 * on the whole sequence, runs the plan on its shard, and compares its rows
 * of out, lse, dq, dk, dv.  The verdict is collected over all ranks.
 *
 * usage: test_cp ALGO W OVERLAP MASK B S H G D DV LAYOUT [U [FRESH]]
 *   e.g. test_cp megatron_cp_algo 2 1 causal 2 96 8 2 64 64 bshd
 * FRESH=1 gives the backward copies of q, k, v, out, lse (other pointers
 * than the forward's), which makes Ulysses rebuild its head-sharded state.
 *
 * Tolerances: relative to the largest reference magnitude, 1e-5 for out/lse
 * and 5e-5 for the gradients — the kernel tests' bounds.  A ring adds only
 * one fp32 merge (out, lse) or one fp32 sum (dK/dV) per step, so the error
 * must stay in the same range for every P; the measured errors are printed
 * so growth with P is visible in the log.
 */
#include "cpattn.h"
#include "kernel_test_util.h"
#include "internal.h"
#include "test.h"

#include <mpi.h>
#include <string.h>

static tu_tensor shard_of(cpa_split split, int r, tu_tensor g, cpa_layout layout)
{
    tu_tensor l = tu_attn(layout, g.t.shape[0], g.t.shape[1] / split.P, g.t.shape[2], g.t.shape[3]);
    cpa_shard(split, r, g.t, l.t);
    return l;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    if (argc < 12 || argc > 14) {
        if (rank == 0)
            fprintf(stderr, "usage: test_cp ALGO W OVERLAP MASK B S H G D DV LAYOUT [U [FRESH]]\n");
        MPI_Finalize();
        return 2;
    }
    cpa_cp_config c;
    memset(&c, 0, sizeof c);
    cpa_algo_parse(argv[1], &c.algo);
    c.cp_size = P;
    c.window = atoi(argv[2]);
    c.send_recv_overlap = atoi(argv[3]);
    c.mask = !strcmp(argv[4], "causal") ? CPA_MASK_CAUSAL : CPA_MASK_NONE;
    c.batch = atoll(argv[5]);
    c.seq_length = atoll(argv[6]);
    c.num_heads = atoll(argv[7]);
    c.num_kv_heads = atoll(argv[8]);
    c.head_dim = atoll(argv[9]);
    c.v_head_dim = atoll(argv[10]);
    cpa_layout_parse(argv[11], &c.layout);
    c.ulysses_degree = argc > 12 ? atoi(argv[12]) : 0;
    c.tp_size = 1;
    c.num_threads = 1;
    const int64_t B = c.batch, S = c.seq_length, H = c.num_heads, G = c.num_kv_heads;
    const int64_t D = c.head_dim, Dv = c.v_head_dim;

    cpa_plan *plan = NULL;
    const long long bytes0 = cpa_debug_alloc_bytes();
    cpa_status st = cpa_plan_create(MPI_COMM_WORLD, &c, &plan);
    const long long plan_bytes = cpa_debug_alloc_bytes() - bytes0; /* the reference's come next */
    CHECK_MSG(st == CPA_OK, "plan: %s", cpa_last_error());
    if (st != CPA_OK) {
        MPI_Finalize();
        return 1;
    }
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
    d.mask.kind = c.mask;
    d.impl = CPA_IMPL_REFERENCE;
    CHECK_OK(cpa_attn_forward(NULL, &d, out.t, lse.t));
    CHECK_OK(cpa_attn_backward(NULL, &d, out.t, lse.t, dout.t, dq.t, dk.t, dv.t));

    /* My shard, in the plan's layout, and the plan's results. */
    tu_tensor lq = shard_of(split, rank, q, c.layout), lk = shard_of(split, rank, k, c.layout);
    tu_tensor lv = shard_of(split, rank, v, c.layout), ldo = shard_of(split, rank, dout, c.layout);
    tu_tensor lo = tu_attn(c.layout, B, Sl, H, Dv), ll = tu_lse(B, H, Sl);
    tu_tensor ldq = tu_attn(c.layout, B, Sl, H, D), ldk = tu_attn(c.layout, B, Sl, G, D);
    tu_tensor ldv = tu_attn(c.layout, B, Sl, G, Dv);
    tu_fill(ldq.t, 9, 3.0f); /* garbage: the plan must overwrite, not add */
    const long long calls0 = cpa_debug_alloc_bytes();
    CHECK_OK(cpa_plan_forward(plan, lq.t, lk.t, lv.t, lo.t, ll.t));
    if (argc > 13 && atoi(argv[13])) {
        tu_tensor cp[5] = {tu_attn(c.layout, B, Sl, H, D), tu_attn(c.layout, B, Sl, G, D),
                           tu_attn(c.layout, B, Sl, G, Dv), tu_attn(c.layout, B, Sl, H, Dv),
                           tu_lse(B, H, Sl)};
        tu_copy(cp[0].t, lq.t), tu_copy(cp[1].t, lk.t), tu_copy(cp[2].t, lv.t);
        tu_copy(cp[3].t, lo.t);
        memcpy(cp[4].buf, ll.buf, sizeof(float) * (size_t)(B * H * Sl));
        CHECK_OK(cpa_plan_backward(plan, cp[0].t, cp[1].t, cp[2].t, cp[3].t, cp[4].t, ldo.t,
                                   ldq.t, ldk.t, ldv.t));
        for (int i = 0; i < 5; ++i)
            free(cp[i].buf);
    } else {
        CHECK_OK(cpa_plan_backward(plan, lq.t, lk.t, lv.t, lo.t, ll.t, ldo.t, ldq.t, ldk.t, ldv.t));
    }

    /* The memory estimate (what a run checks against the limit before
     * creating the plan) covers what the plan and its kernel context really
     * allocated, forward and backward included, and not by much more. */
    {
        const long long calls = cpa_debug_alloc_bytes() - calls0, used = plan_bytes + calls;
        CHECK_MSG(calls == 0, "rank %d: forward and backward allocated %lld bytes (plans allocate "
                  "everything at creation)", rank, calls);
        const int64_t est = cpa_plan_memory_bytes(&c);
        CHECK_MSG(est >= used && (double)est <= 1.10 * (double)used + (1 << 20),
                  "rank %d: estimated %lld bytes for the plan, it allocated %lld", rank,
                  (long long)est, used);
    }

    /* The reference's rows of this rank. */
    tu_tensor ro = shard_of(split, rank, out, c.layout), rdq = shard_of(split, rank, dq, c.layout);
    tu_tensor rdk = shard_of(split, rank, dk, c.layout), rdv = shard_of(split, rank, dv, c.layout);
    tu_tensor rl = tu_lse(B, H, Sl);
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)Sl);
    cpa_split_positions(split, S, rank, pos);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t s = 0; s < Sl; ++s)
                rl.buf[(b * H + h) * Sl + s] = lse.buf[(b * H + h) * S + pos[s]];

    tu_err e[5] = {tu_compare(lo.t, ro.t), tu_compare(ll.t, rl.t), tu_compare(ldq.t, rdq.t),
                   tu_compare(ldk.t, rdk.t), tu_compare(ldv.t, rdv.t)};
    const char *names[5] = {"out", "lse", "dq", "dk", "dv"};
    double errs[5], worst[5];
    for (int i = 0; i < 5; ++i) {
        errs[i] = i == 1 ? e[i].abs / (e[i].scale > 1 ? e[i].scale : 1) : e[i].rel;
        double tol = i < 2 ? 1e-5 : 5e-5;
        CHECK_MSG(errs[i] <= tol, "rank %d %s: error %.3g > %.1g", rank, names[i], errs[i], tol);
    }
    MPI_Reduce(errs, worst, 5, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    cpa_plan_stats fs;
    cpa_plan_last_stats(plan, &fs);

    int counts[2] = {test_passed_, test_failed_}, total[2];
    MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("P=%d %s W=%d overlap=%d %s B=%lld S=%lld H=%lld G=%lld D=%lld Dv=%lld %s: "
               "max errors out %.2g lse %.2g dq %.2g dk %.2g dv %.2g\n",
               P, argv[1], c.window, c.send_recv_overlap, argv[4], (long long)B, (long long)S,
               (long long)H, (long long)G, (long long)D, (long long)Dv, argv[11], worst[0],
               worst[1], worst[2], worst[3], worst[4]);
        printf("%d passed, %d failed\n", total[0], total[1]);
    }
    free(pos);
    tu_tensor all[] = {q, k, v, dout, out, lse, dq, dk, dv, lq, lk, lv, ldo, lo, ll, ldq, ldk, ldv,
                       ro, rdq, rdk, rdv, rl};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i)
        free(all[i].buf);
    cpa_plan_destroy(plan);
    MPI_Finalize();
    return total[1] ? 1 : 0;
}
