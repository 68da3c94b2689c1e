/*
 * test_gpt.c — the whole GPT's gradient against finite differences, under
 * `mpiexec -n P` (the attention runs on a CP plan over all ranks, so the
 * check covers the model's use of the CP API: shards, RoPE positions,
 * strided q/k/v views, the loss over the whole sequence).
 *
 * usage: test_gpt ALGO [U W RECOMPUTE]
 *        test_gpt tp ALGO [G SP] (4 ranks: TP = 2 x CP = 2, below)
 *
 * The loss is the mean cross-entropy over the B·S tokens, summed over the
 * ranks.  For a sample of parameters from every tensor, the analytic
 * gradient (summed over ranks, as the trainer's all-reduce does) is compared
 * with (L(p+h) - L(p-h)) / 2h, h = 1e-3.  The forward runs in fp32: its
 * rounding (~1e-7 of a loss of ~2.5) divided by 2h gives ~1e-4 at most,
 * and the truncation error h²·f''' is far smaller, so each element must
 * agree within 1e-3 absolute + 2% relative (measured worst: 8e-5 against
 * gradients up to 0.7); the worst error is printed.
 *
 * Then the batch path of --reset-position-ids and --eod-mask-loss
 * (cpa_gpt_step_batch): positions equal to the global ones reproduce
 * cpa_gpt_step bit for bit; per-sample positions that restart at document
 * starts, with some targets masked, give the loss and gradients of the
 * same batch on one rank (a P = 1 model on MPI_COMM_SELF with the same
 * weights: each rank's rows must have taken their own documents'
 * positions, whatever the split), within 1e-5 relative on the loss and
 * 1e-4 + 1e-3 relative per gradient element (the attention sums in
 * another order); and the gradient agrees with finite differences of the
 * masked loss, as above.
 *
 * Then per-sample documents (--reset-attention-mask: a model with
 * sample_documents runs its plan once per sample with that sample's
 * cu_seqlens): the same documents in both rows reproduce a model whose plan
 * holds them from creation (loss 1e-6 relative, gradients as above); rows
 * with different documents give on P ranks the loss and gradients of one
 * rank, change the loss (so the documents are used), and agree with finite
 * differences.
 *
 * `tp`: TP = 2 x CP = 2 (Megatron's layers: column-parallel QKV and gate/up,
 * row-parallel projections, vocabulary-parallel embedding, LM head and
 * cross-entropy, the vocabulary 11 padded to 12): the loss equals a TP = 1
 * model's on one rank (1e-5 relative), and the gradient agrees with finite
 * differences, perturbing the same local element on every rank — for a
 * sharded tensor that moves one element of each TP rank's shard, so the
 * expected change is the sum of the TP ranks' gradients; for an element
 * both TP ranks hold (a norm weight, the KV head when G = 1 < TP: the same
 * logical index) it is the one gradient both hold after
 * cpa_gpt_reduce_shared_grads.  G (default 2) and SP (1:
 * --sequence-parallel) select the variant.  First, the logical layout of
 * checkpoints: the shards scatter into the TP = 1 model's values bit for
 * bit, cover it, and come back from it exactly.
 */
#include "gpt.h"
#include "test.h"

#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

static double loss_of(cpa_gpt *m, const int32_t *sample, int64_t tokens)
{
    double l, ls, lc;
    cpa_gpt_step(m, sample, NULL, 1.0f, 0, &l, &ls, &lc);
    MPI_Allreduce(MPI_IN_PLACE, &l, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return l / (double)tokens;
}

/* The loss of a batch with extras, over `comm`'s ranks, per counted target. */
static double batch_loss_of(cpa_gpt *m, const cpa_gpt_batch *b, int64_t targets, MPI_Comm comm)
{
    double l, ls, lc;
    cpa_gpt_step_batch(m, b, 1.0f, 0, &l, &ls, &lc);
    MPI_Allreduce(MPI_IN_PLACE, &l, 1, MPI_DOUBLE, MPI_SUM, comm);
    return l / (double)targets;
}

/* Documents [0,5) [5,11) [11,16) in row 0 and [0,9) [9,16) in row 1 (S = 16):
 * positions restart at each start; the targets of the last position of
 * every document but the last (where an EOD input would be) are masked. */
static int64_t reset_batch(int64_t S, int64_t *pos, uint8_t *mask)
{
    const int64_t starts[2][3] = {{0, 5, 11}, {0, 9, -1}};
    int64_t targets = 0;
    for (int b = 0; b < 2; ++b) {
        int64_t start = 0;
        for (int64_t p = 0; p < S; ++p) {
            for (int d = 1; d < 3; ++d)
                if (starts[b][d] == p)
                    start = p;
            pos[b * S + p] = p - start;
            int ends = 0;
            for (int d = 1; d < 3; ++d)
                ends |= starts[b][d] == p + 1;
            mask[b * S + p] = (uint8_t)!ends;
            targets += mask[b * S + p];
        }
    }
    return targets;
}

static void check_batch_extras(cpa_gpt *m, const cpa_gpt_config *g, const int32_t *sample,
                               double plain_loss, const float *plain_grad)
{
    const int64_t S = g->seq_length, n = cpa_gpt_num_params(m);
    float *p = cpa_gpt_params_buffer(m), *grad = cpa_gpt_grads_buffer(m);
    int64_t pos[2 * 16], global[2 * 16];
    uint8_t mask[2 * 16];
    for (int64_t i = 0; i < 2 * S; ++i)
        global[i] = i % S;
    const int64_t targets = reset_batch(S, pos, mask), tokens = 2 * S;
    double l, ls, lc;

    /* Global positions through the batch path: the same computation. */
    cpa_gpt_batch same = {sample, NULL, global, NULL, NULL, NULL};
    memset(grad, 0, sizeof(float) * (size_t)n);
    CHECK_OK(cpa_gpt_step_batch(m, &same, 1.0f / (float)tokens, 1, &l, &ls, &lc));
    MPI_Allreduce(MPI_IN_PLACE, &l, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, grad, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    CHECK_MSG(l == plain_loss, "global positions: loss %.17g vs cpa_gpt_step %.17g", l, plain_loss);
    CHECK(memcmp(grad, plain_grad, sizeof(float) * (size_t)n) == 0);

    /* Reset positions alone change the loss (so the positions are used). */
    cpa_gpt_batch reset_only = {sample, NULL, pos, NULL, NULL, NULL};
    CHECK_OK(cpa_gpt_step_batch(m, &reset_only, 1.0f, 0, &l, &ls, &lc));
    MPI_Allreduce(MPI_IN_PLACE, &l, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    CHECK_MSG(fabs(l - plain_loss) > 1e-5 * plain_loss, "reset positions: loss %.9g, plain %.9g",
              l, plain_loss);

    /* Reset positions and a mask: P ranks against one. */
    cpa_gpt_batch full = {sample, NULL, pos, mask, NULL, NULL};
    memset(grad, 0, sizeof(float) * (size_t)n);
    CHECK_OK(cpa_gpt_step_batch(m, &full, 1.0f / (float)targets, 1, &l, &ls, &lc));
    MPI_Allreduce(MPI_IN_PLACE, &l, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, grad, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    cpa_gpt_config one = *g;
    one.cp.algo = CPA_ALGO_RING;
    one.cp.ulysses_degree = 0, one.cp.window = 1;
    cpa_gpt *ref = NULL;
    cpa_status st = cpa_gpt_create(&one, MPI_COMM_SELF, &ref);
    CHECK_MSG(st == CPA_OK, "reference model: %s", cpa_last_error());
    if (st != CPA_OK)
        return;
    memcpy(cpa_gpt_params_buffer(ref), p, sizeof(float) * (size_t)n);
    float *rgrad = cpa_gpt_grads_buffer(ref);
    memset(rgrad, 0, sizeof(float) * (size_t)n);
    double rl;
    CHECK_OK(cpa_gpt_step_batch(ref, &full, 1.0f / (float)targets, 1, &rl, &ls, &lc));
    CHECK_MSG(fabs(l - rl) <= 1e-5 * fabs(rl), "reset + mask: loss %.9g on P ranks, %.9g on one",
              l, rl);
    int bad = 0;
    double worst = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        double e = fabs((double)grad[i] - (double)rgrad[i]);
        bad += !(e <= 1e-4 + 1e-3 * fabs((double)rgrad[i]));
        worst = e > worst ? e : worst;
    }
    CHECK_MSG(bad == 0, "reset + mask: %d gradient elements differ from one rank's (worst %.3g)",
              bad, worst);
    cpa_gpt_destroy(ref);

    /* The masked loss's gradient against finite differences. */
    const double h = 1e-3;
    for (int64_t i = 0; i < n; i += 1 + n / 31) {
        float p0 = p[i];
        p[i] = p0 + (float)h;
        double lp = batch_loss_of(m, &full, targets, MPI_COMM_WORLD);
        p[i] = p0 - (float)h;
        double lm = batch_loss_of(m, &full, targets, MPI_COMM_WORLD);
        p[i] = p0;
        double fd = (lp - lm) / (2 * h), an = grad[i];
        CHECK_MSG(fabs(fd - an) <= 1e-3 + 0.02 * fabs(an),
                  "reset + mask, param %lld: analytic %.6g, finite difference %.6g", (long long)i,
                  an, fd);
    }
}

/* Sum a step's loss and gradients over the ranks of comm. */
static double step_sums(cpa_gpt *m, const cpa_gpt_batch *b, float scale, MPI_Comm comm)
{
    const int64_t n = cpa_gpt_num_params(m);
    float *grad = cpa_gpt_grads_buffer(m);
    memset(grad, 0, sizeof(float) * (size_t)n);
    double l = 0, ls, lc;
    CHECK_OK(cpa_gpt_step_batch(m, b, scale, 1, &l, &ls, &lc));
    MPI_Allreduce(MPI_IN_PLACE, &l, 1, MPI_DOUBLE, MPI_SUM, comm);
    MPI_Allreduce(MPI_IN_PLACE, grad, (int)n, MPI_FLOAT, MPI_SUM, comm);
    return l;
}

static int grads_close(const float *a, const float *b, int64_t n, double *worst)
{
    int bad = 0;
    *worst = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        double e = fabs((double)a[i] - (double)b[i]);
        bad += !(e <= 1e-4 + 1e-3 * fabs((double)b[i]));
        *worst = e > *worst ? e : *worst;
    }
    return bad;
}

static void check_sample_documents(cpa_gpt *m, const cpa_gpt_config *g, const int32_t *sample)
{
    const int64_t S = g->seq_length, n = cpa_gpt_num_params(m), tokens = 2 * S;
    const float scale = 1.0f / (float)tokens;
    /* Row 0: [0,5) [5,11) [11,16); row 1: [0,9) [9,16) (S = 16). */
    int64_t cu[2 * 17] = {0, 5, 11, 16};
    cu[17] = 0, cu[18] = 9, cu[19] = 16;
    const int64_t nd[2] = {3, 2}, same_nd[2] = {3, 3};
    int64_t same_cu[2 * 17] = {0, 5, 11, 16};
    same_cu[17] = 0, same_cu[18] = 5, same_cu[19] = 11, same_cu[20] = 16;
    cpa_gpt_config gd = *g;
    gd.sample_documents = 1;
    cpa_gpt *md = NULL, *fixed = NULL, *one = NULL;
    CHECK_OK(cpa_gpt_create(&gd, MPI_COMM_WORLD, &md));
    cpa_gpt_config gf = *g; /* the plan-time path: documents in the plan's mask */
    gf.cp.mask.cu_seqlens = same_cu, gf.cp.mask.num_docs = 3;
    CHECK_OK(cpa_gpt_create(&gf, MPI_COMM_WORLD, &fixed));
    cpa_gpt_config g1 = gd;
    g1.cp.algo = CPA_ALGO_RING, g1.cp.ulysses_degree = 0, g1.cp.window = 1;
    CHECK_OK(cpa_gpt_create(&g1, MPI_COMM_SELF, &one));
    float *ref = malloc(sizeof(float) * (size_t)n);
    if (!md || !fixed || !one || !ref)
        goto done;
    cpa_gpt *models[3] = {md, fixed, one};
    for (int i = 0; i < 3; ++i)
        memcpy(cpa_gpt_params_buffer(models[i]), cpa_gpt_params_buffer(m), sizeof(float) * (size_t)n);

    /* The same documents in both rows: per call == at plan time. */
    cpa_gpt_batch same = {sample, NULL, NULL, NULL, same_cu, same_nd}, plain = same;
    plain.cu_seqlens = NULL, plain.num_docs = NULL;
    const double lf = step_sums(fixed, &plain, scale, MPI_COMM_WORLD);
    memcpy(ref, cpa_gpt_grads_buffer(fixed), sizeof(float) * (size_t)n);
    const double ls = step_sums(md, &same, scale, MPI_COMM_WORLD);
    double worst;
    CHECK_MSG(fabs(ls - lf) <= 1e-6 * fabs(lf), "same documents: loss %.9g per call, %.9g at plan "
              "time", ls, lf);
    int bad = grads_close(cpa_gpt_grads_buffer(md), ref, n, &worst);
    CHECK_MSG(bad == 0, "same documents: %d gradient elements differ (worst %.3g)", bad, worst);

    /* Different documents per row: P ranks == one rank, and not the dense loss. */
    cpa_gpt_batch docs = {sample, NULL, NULL, NULL, cu, nd};
    const double lr = step_sums(one, &docs, scale, MPI_COMM_SELF);
    memcpy(ref, cpa_gpt_grads_buffer(one), sizeof(float) * (size_t)n);
    const double lp = step_sums(md, &docs, scale, MPI_COMM_WORLD);
    CHECK_MSG(fabs(lp - lr) <= 1e-5 * fabs(lr), "per-sample documents: loss %.9g on P ranks, "
              "%.9g on one", lp, lr);
    bad = grads_close(cpa_gpt_grads_buffer(md), ref, n, &worst);
    CHECK_MSG(bad == 0, "per-sample documents: %d gradient elements differ from one rank's "
              "(worst %.3g)", bad, worst);
    CHECK_MSG(fabs(lp - ls) > 1e-6 * fabs(ls), "per-sample documents: loss %.9g equals the "
              "other documents' %.9g", lp, ls);
    /* And the gradient against finite differences of that loss. */
    memcpy(ref, cpa_gpt_grads_buffer(md), sizeof(float) * (size_t)n);
    float *p = cpa_gpt_params_buffer(md);
    const double h = 1e-3;
    for (int64_t i = 0; i < n; i += 1 + n / 23) {
        const float p0 = p[i];
        p[i] = p0 + (float)h;
        const double up = batch_loss_of(md, &docs, tokens, MPI_COMM_WORLD);
        p[i] = p0 - (float)h;
        const double dn = batch_loss_of(md, &docs, tokens, MPI_COMM_WORLD);
        p[i] = p0;
        const double fd = (up - dn) / (2 * h), an = ref[i];
        CHECK_MSG(fabs(fd - an) <= 1e-3 + 0.02 * fabs(an), "per-sample documents, param %lld: "
                  "analytic %.6g, finite difference %.6g", (long long)i, an, fd);
    }
    /* cpa_gpt_step (no documents) is refused by such a model. */
    double l0, l1, l2;
    CHECK_STATUS(cpa_gpt_step(md, sample, NULL, 1.0f, 0, &l0, &l1, &l2), CPA_ERR_ARG);
done:
    free(ref);
    cpa_gpt_destroy(md);
    cpa_gpt_destroy(fixed);
    cpa_gpt_destroy(one);
}

/* The TP = 2 x CP = 2 check (see the top of the file). */
/* The logical layout a checkpoint holds, bit for bit: the TP = 2 shards
 * of a model initialised like `ref` (TP = 1, the logical layout itself)
 * scatter into ref's values and together cover every element, and each
 * rank's shard taken from ref's array (what --load does) is its own. */
static void check_logical(cpa_gpt *m, cpa_gpt *ref, MPI_Comm tp_comm)
{
    const int64_t n = cpa_gpt_num_params(m), nl = cpa_gpt_logical_params(m);
    int tr;
    MPI_Comm_rank(tp_comm, &tr);
    CHECK_MSG(nl == cpa_gpt_num_params(ref), "logical count %lld, the TP = 1 model has %lld",
              (long long)nl, (long long)cpa_gpt_num_params(ref));
    if (nl != cpa_gpt_num_params(ref))
        return;
    float *logical = calloc((size_t)nl, sizeof(float)), *back = malloc(sizeof(float) * (size_t)n);
    unsigned char *seen = calloc((size_t)nl, 1);
    const float *rp = cpa_gpt_params_buffer(ref), *p = cpa_gpt_params_buffer(m);
    cpa_gpt_to_logical(m, tr, p, logical);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t g = cpa_gpt_logical_index(m, i);
        if (g >= 0) {
            seen[g] = 1;
            bad += memcmp(&logical[g], &rp[g], sizeof(float)) != 0;
        }
    }
    MPI_Allreduce(MPI_IN_PLACE, seen, (int)nl, MPI_UNSIGNED_CHAR, MPI_BOR, tp_comm);
    int64_t missing = 0;
    for (int64_t g = 0; g < nl; ++g)
        missing += !seen[g];
    cpa_gpt_from_logical(m, rp, back);
    const int same = memcmp(back, p, sizeof(float) * (size_t)n) == 0;
    CHECK_MSG(bad == 0 && missing == 0 && same, "logical layout: %lld shard elements differ from "
              "TP = 1, %lld logical elements held by no rank, shard from logical %s",
              (long long)bad, (long long)missing, same ? "exact" : "differs");
    free(logical);
    free(back);
    free(seen);
}

static int run_tp(const char *algo, int kv_heads, int sp)
{
    int rank, W;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &W);
    if (W != 4) {
        if (rank == 0)
            fprintf(stderr, "test_gpt tp needs 4 ranks (TP = 2 x CP = 2), got %d\n", W);
        return 2;
    }
    MPI_Comm tp_comm, cp_comm; /* world rank = cp_rank * 2 + tp_rank */
    MPI_Comm_split(MPI_COMM_WORLD, rank / 2, rank % 2, &tp_comm);
    MPI_Comm_split(MPI_COMM_WORLD, rank % 2, rank / 2, &cp_comm);
    cpa_gpt_config g;
    memset(&g, 0, sizeof g);
    g.num_layers = 2, g.hidden = 16, g.ffn_hidden = 24, g.heads = 4, g.kv_heads = kv_heads;
    g.vocab = 11, g.seq_length = 16, g.micro_batch = 2;
    g.rope_base = 10000.0f, g.norm_eps = 1e-5f;
    g.sequence_parallel = sp;
    cpa_algo_parse(algo, &g.cp.algo);
    g.cp.window = 1;
    g.cp.mask.kind = CPA_MASK_CAUSAL;
    g.cp.num_threads = 1;
    g.cp.tp_size = 1;
    cpa_gpt *ref = NULL, *m = NULL;
    CHECK_OK(cpa_gpt_create(&g, MPI_COMM_SELF, &ref));
    g.cp.tp_size = 2;
    CHECK_OK(cpa_gpt_create_tp(&g, cp_comm, tp_comm, &m));
    if (!ref || !m)
        return 1;
    cpa_gpt_init_params(ref, 7);
    cpa_gpt_init_params(m, 7);
    check_logical(m, ref, tp_comm);
    float *p = cpa_gpt_params_buffer(m), *grad = cpa_gpt_grads_buffer(m);
    const int64_t n = cpa_gpt_num_params(m), tokens = g.micro_batch * g.seq_length;
    int32_t sample[2 * 17];
    for (int i = 0; i < 2 * 17; ++i)
        sample[i] = (int32_t)((i * 7 + 3) % 11);
    double l, ls, lc, rl;
    CHECK_OK(cpa_gpt_step(ref, sample, NULL, 1.0f / (float)tokens, 0, &rl, &ls, &lc));
    memset(grad, 0, sizeof(float) * (size_t)n);
    CHECK_OK(cpa_gpt_step(m, sample, NULL, 1.0f / (float)tokens, 1, &l, &ls, &lc));
    CHECK_OK(cpa_gpt_reduce_shared_grads(m, grad)); /* as the trainer, once per iteration */
    MPI_Allreduce(MPI_IN_PLACE, &l, 1, MPI_DOUBLE, MPI_SUM, cp_comm);
    MPI_Allreduce(MPI_IN_PLACE, grad, (int)n, MPI_FLOAT, MPI_SUM, cp_comm);
    CHECK_MSG(fabs(l - rl) <= 1e-5 * fabs(rl), "TP=2 x CP=2 %s G=%d sp=%d: loss %.9g, TP=1 %.9g",
              algo, kv_heads, sp, l, rl);
    float *sum = malloc(sizeof(float) * (size_t)n);
    memcpy(sum, grad, sizeof(float) * (size_t)n);
    MPI_Allreduce(MPI_IN_PLACE, sum, (int)n, MPI_FLOAT, MPI_SUM, tp_comm);
    const double h = 1e-3;
    double worst = 0.0;
    int checked = 0;
    for (int64_t i = 0; i < n; i += 1 + n / 61) {
        /* The same logical element on both TP ranks (a norm; the KV head
         * when G = 1 < TP): one element moved, its gradient held by both. */
        int64_t gi[2];
        gi[rank % 2] = cpa_gpt_logical_index(m, i);
        MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, gi, 1, MPI_INT64_T, tp_comm);
        const int replicated = gi[0] == gi[1];
        const float p0 = p[i];
        p[i] = p0 + (float)h;
        double up;
        CHECK_OK(cpa_gpt_step(m, sample, NULL, 1.0f, 0, &up, &ls, &lc));
        p[i] = p0 - (float)h;
        double dn;
        CHECK_OK(cpa_gpt_step(m, sample, NULL, 1.0f, 0, &dn, &ls, &lc));
        p[i] = p0;
        MPI_Allreduce(MPI_IN_PLACE, &up, 1, MPI_DOUBLE, MPI_SUM, cp_comm);
        MPI_Allreduce(MPI_IN_PLACE, &dn, 1, MPI_DOUBLE, MPI_SUM, cp_comm);
        const double fd = (up - dn) / (2 * h) / (double)tokens;
        const double an = replicated ? grad[i] : sum[i], err = fabs(fd - an);
        CHECK_MSG(err <= 1e-3 + 0.02 * fabs(an), "TP param %lld (%s): analytic %.6g, finite "
                  "difference %.6g", (long long)i, replicated ? "replicated" : "sharded", an, fd);
        worst = err > worst ? err : worst;
        ++checked;
    }
    if (rank == 0)
        printf("TP=2 x CP=2 %s G=%d%s: loss %.9g (TP=1: %.9g), %d parameters checked, worst "
               "|fd - analytic| %.2g\n", algo, kv_heads, sp ? " sequence-parallel" : "", l, rl,
               checked, worst);
    free(sum);
    cpa_gpt_destroy(m);
    cpa_gpt_destroy(ref);
    MPI_Comm_free(&tp_comm);
    MPI_Comm_free(&cp_comm);
    return 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (argc > 2 && !strcmp(argv[1], "tp")) {
        int rc = run_tp(argv[2], argc > 3 ? atoi(argv[3]) : 2, argc > 4 ? atoi(argv[4]) : 0),
            rank;
        int counts[2] = {test_passed_, test_failed_}, total[2];
        MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        if (rank == 0)
            printf("%d passed, %d failed\n", total[0], total[1]);
        MPI_Finalize();
        return rc ? rc : total[1] ? 1 : 0;
    }
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    cpa_gpt_config g;
    memset(&g, 0, sizeof g);
    g.num_layers = 2, g.hidden = 16, g.ffn_hidden = 24, g.heads = 4, g.kv_heads = 2;
    g.vocab = 11, g.seq_length = 16, g.micro_batch = 2;
    g.rope_base = 10000.0f, g.norm_eps = 1e-5f;
    cpa_algo_parse(argc > 1 ? argv[1] : "megatron_cp_algo", &g.cp.algo);
    g.cp.ulysses_degree = argc > 2 ? atoi(argv[2]) : 0;
    g.cp.window = argc > 3 ? atoi(argv[3]) : 1;
    g.recompute = argc > 4 ? atoi(argv[4]) : 0;
    g.cp.mask.kind = CPA_MASK_CAUSAL;
    g.cp.tp_size = 1;
    g.cp.num_threads = 1;
    cpa_gpt *m = NULL;
    cpa_status st = cpa_gpt_create(&g, MPI_COMM_WORLD, &m);
    CHECK_MSG(st == CPA_OK, "create: %s", cpa_last_error());
    if (st != CPA_OK) {
        MPI_Finalize();
        return 1;
    }
    cpa_gpt_init_params(m, 7);
    float *p = cpa_gpt_params_buffer(m), *grad = cpa_gpt_grads_buffer(m);
    const int64_t n = cpa_gpt_num_params(m), tokens = g.micro_batch * g.seq_length;
    /* 3x the GPT-2 init, so that attention is far from uniform and every
     * path has a gradient worth checking. */
    for (int64_t i = 0; i < n; ++i)
        p[i] *= 3.0f;
    int32_t sample[2 * 17];
    for (int i = 0; i < 2 * 17; ++i)
        sample[i] = (int32_t)((i * 7 + 3) % 11);

    memset(grad, 0, sizeof(float) * (size_t)n);
    double l, ls, lc;
    CHECK_OK(cpa_gpt_step(m, sample, NULL, 1.0f / (float)tokens, 1, &l, &ls, &lc));
    MPI_Allreduce(MPI_IN_PLACE, grad, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);

    const double h = 1e-3;
    double worst = 0.0, gmax = 0.0;
    int checked = 0;
    for (int64_t i = 0; i < n; i += 1 + n / 97) { /* ~100 elements across every tensor */
        float p0 = p[i];
        p[i] = p0 + (float)h;
        double lp = loss_of(m, sample, tokens);
        p[i] = p0 - (float)h;
        double lm = loss_of(m, sample, tokens);
        p[i] = p0;
        double fd = (lp - lm) / (2 * h), an = grad[i], err = fabs(fd - an);
        CHECK_MSG(err <= 1e-3 + 0.02 * fabs(an), "param %lld: analytic %.6g, finite difference %.6g",
                  (long long)i, an, fd);
        worst = err > worst ? err : worst;
        gmax = fabs(an) > gmax ? fabs(an) : gmax;
        ++checked;
    }
    float *plain_grad = malloc(sizeof(float) * (size_t)n);
    if (plain_grad) {
        memset(grad, 0, sizeof(float) * (size_t)n);
        CHECK_OK(cpa_gpt_step(m, sample, NULL, 1.0f / (float)tokens, 1, &l, &ls, &lc));
        MPI_Allreduce(MPI_IN_PLACE, &l, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        MPI_Allreduce(MPI_IN_PLACE, grad, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        memcpy(plain_grad, grad, sizeof(float) * (size_t)n);
        check_batch_extras(m, &g, sample, l, plain_grad);
        free(plain_grad);
        check_sample_documents(m, &g, sample);
    }
    int counts[2] = {test_passed_, test_failed_}, total[2];
    MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("P=%d %s: %d parameters checked, worst |fd - analytic| %.2g (largest gradient %.2g)\n",
               P, argc > 1 ? argv[1] : "megatron_cp_algo", checked, worst, gmax);
        printf("%d passed, %d failed\n", total[0], total[1]);
    }
    cpa_gpt_destroy(m);
    MPI_Finalize();
    return total[1] ? 1 : 0;
}
