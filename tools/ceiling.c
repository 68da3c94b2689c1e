/*
 * ceiling.c — the two ceilings every speed figure of the tool is divided
 * by, measured in the same process: the fp32 FMA peak of the instruction
 * set the kernels run (cpa_fma_peak_gflops, ~0.1 s), and a square sgemm
 * with the BLAS exactly as configured (after the start-up check of
 * blas_setup.c), at the same thread count.  The FMA peak is a hard
 * ceiling: nothing can exceed it, so a ratio above 1 would mean a wrong
 * measurement and is reported as such.  sgemm is the practical ceiling of
 * a matrix-multiply-bound program on this machine.
 */
#include "util.h"

#include "cmd.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int tool_measure_ceilings(cpa_isa isa, int threads, int sgemm_n, int reps, tool_ceilings *c)
{
    if (threads <= 0)
        threads = omp_get_max_threads();
    c->threads = threads;
    c->sgemm_n = sgemm_n;
    if (cpa_isa_resolve(isa, &c->isa) != CPA_OK)
        return EXIT_USAGE;
    c->fma_gflops = cpa_fma_peak_gflops(c->isa, threads);
    const int64_t nn = (int64_t)sgemm_n * sgemm_n;
    float *a = cpa_alloc_floats(3 * nn);
    double *t = malloc(sizeof(double) * (size_t)(reps > 0 ? reps : 1));
    if (!a || !t) {
        free(a);
        free(t);
        return EXIT_RUNTIME;
    }
    for (int64_t i = 0; i < 3 * nn; ++i)
        a[i] = (float)((i * 7919) % 2003) / 2003.0f - 0.5f;
    omp_set_num_threads(threads); /* the OpenMP build of OpenBLAS follows it */
    for (int r = -1; r < reps; ++r) { /* one untimed call: OpenBLAS starts its threads */
        double t0 = tool_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, sgemm_n, sgemm_n, sgemm_n, 1.0f, a,
                    sgemm_n, a + nn, sgemm_n, 0.0f, a + 2 * nn, sgemm_n);
        if (r >= 0)
            t[r] = tool_now() - t0;
    }
    double med, min, max, flops = 2.0 * (double)nn * sgemm_n;
    tool_stats(t, reps, &med, &min, &max);
    c->sgemm_gflops = flops / med / 1e9;
    c->sgemm_min = flops / max / 1e9;
    c->sgemm_max = flops / min / 1e9;
    free(a);
    free(t);
    return EXIT_OK;
}

void tool_say_ceilings(const tool_ceilings *c)
{
    tool_say("# ceilings, %d thread(s): FMA peak (%s) %.1f GFLOP/s; sgemm %dx%dx%d median %.1f "
             "GFLOP/s (min %.1f, max %.1f) = %.2f of the FMA peak\n", c->threads,
             cpa_isa_name(c->isa), c->fma_gflops, c->sgemm_n, c->sgemm_n, c->sgemm_n,
             c->sgemm_gflops, c->sgemm_min, c->sgemm_max,
             c->fma_gflops > 0 ? c->sgemm_gflops / c->fma_gflops : 0.0);
}
