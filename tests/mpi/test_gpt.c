/*
 * test_gpt.c — the whole GPT's gradient against finite differences, under
 * `mpiexec -n P` (the attention runs on a CP plan over all ranks, so the
 * check covers the model's use of the CP API: shards, RoPE positions,
 * strided q/k/v views, the loss over the whole sequence).
 *
 * usage: test_gpt ALGO [U W RECOMPUTE]
 *
 * The loss is the mean cross-entropy over the B·S tokens, summed over the
 * ranks.  For a sample of parameters from every tensor, the analytic
 * gradient (summed over ranks, as the trainer's all-reduce does) is compared
 * with (L(p+h) - L(p-h)) / 2h, h = 1e-3.  The forward runs in fp32: its
 * rounding (~1e-7 of a loss of ~2.5) divided by 2h gives ~1e-4 at most,
 * and the truncation error h²·f''' is far smaller, so each element must
 * agree within 1e-3 absolute + 2% relative (measured worst: 8e-5 against
 * gradients up to 0.7); the worst error is printed.
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

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
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
