/*
 * isa.c — which instruction set the fast kernels run: what is compiled in,
 * what this CPU and its OS support (CPUID and XGETBV, through the
 * compiler's __builtin_cpu_supports), what $CPATTN_ISA asks for, and the
 * table from an instruction set to its kernels.
 *
 * The per-ISA objects are built with their own -m flags and only ever
 * called after cpa_isa_supported() said yes, so one binary runs on any
 * x86-64 CPU and uses the widest vectors it has.
 */
#include "kernel_internal.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#define CPA_HAVE_X86_KERNELS 1
extern const cpa_isa_kernels cpa_kernels_avx512;
extern const cpa_isa_kernels cpa_kernels_avx2;
#endif
extern const cpa_isa_kernels cpa_kernels_scalar;

static const char *const isa_names[] = {"auto", "scalar", "avx2", "avx512"};

const char *cpa_isa_name(cpa_isa isa)
{
    return (int)isa >= 0 && (int)isa < 4 ? isa_names[isa] : "unknown";
}

cpa_status cpa_isa_parse(const char *name, cpa_isa *out)
{
    for (int i = 0; i < 4; ++i)
        if (name && strcmp(name, isa_names[i]) == 0) {
            *out = (cpa_isa)i;
            return CPA_OK;
        }
    return cpa_error(CPA_ERR_ARG, "unknown instruction set '%s': choose auto, scalar, avx2 or avx512",
                     name ? name : "(null)");
}

int cpa_isa_supported(cpa_isa isa)
{
    switch (isa) {
    case CPA_ISA_SCALAR:
        return 1;
#ifdef CPA_HAVE_X86_KERNELS
    case CPA_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CPA_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("fma");
#endif
    default:
        return 0;
    }
}

cpa_isa cpa_isa_best(void)
{
    if (cpa_isa_supported(CPA_ISA_AVX512))
        return CPA_ISA_AVX512;
    if (cpa_isa_supported(CPA_ISA_AVX2))
        return CPA_ISA_AVX2;
    return CPA_ISA_SCALAR;
}

cpa_status cpa_isa_resolve(cpa_isa requested, cpa_isa *out)
{
    const char *from = "the context configuration";
    if (requested == CPA_ISA_AUTO) {
        const char *env = getenv("CPATTN_ISA");
        if (env && *env) {
            if (cpa_isa_parse(env, &requested) != CPA_OK)
                return cpa_error(CPA_ERR_ARG, "CPATTN_ISA=%s: unknown instruction set; choose auto, "
                                 "scalar, avx2 or avx512 (or unset it)", env);
            from = "CPATTN_ISA";
        }
        if (requested == CPA_ISA_AUTO) {
            *out = cpa_isa_best();
            return CPA_OK;
        }
    }
    if ((int)requested < 1 || (int)requested > 3)
        return cpa_error(CPA_ERR_ARG, "instruction set %d: not one of auto, scalar, avx2, avx512",
                         (int)requested);
    if (!cpa_isa_supported(requested))
        return cpa_error(CPA_ERR_ARG, "%s asks for %s, which this CPU does not support (the best "
                         "it has is %s)", from, cpa_isa_name(requested),
                         cpa_isa_name(cpa_isa_best()));
    *out = requested;
    return CPA_OK;
}

const cpa_isa_kernels *cpa_isa_kernels_of(cpa_isa isa)
{
    switch (isa) {
    case CPA_ISA_SCALAR:
        return &cpa_kernels_scalar;
#ifdef CPA_HAVE_X86_KERNELS
    case CPA_ISA_AVX2:
        return &cpa_kernels_avx2;
    case CPA_ISA_AVX512:
        return &cpa_kernels_avx512;
#endif
    default:
        return NULL;
    }
}

/* ---- the FMA ceiling ----------------------------------------------------- */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

double cpa_fma_peak_gflops(cpa_isa isa, int threads)
{
    if (cpa_isa_resolve(isa, &isa) != CPA_OK)
        return 0.0;
    const cpa_isa_kernels *k = cpa_isa_kernels_of(isa);
    if (threads <= 0)
        threads = omp_get_max_threads();
    /* Calibrate on one thread to ~25 ms a run, warm every thread up, then
     * take the best of 7 runs with every thread at once (~0.45 s in all). */
    int64_t iters = 1 << 16;
    volatile float sink = 0.0f;
    for (;;) {
        double t0 = now_s();
        sink += k->fma_probe(iters);
        double t = now_s() - t0;
        if (t > 0.005 || iters > ((int64_t)1 << 40)) {
            iters = (int64_t)((double)iters * 0.025 / (t > 0 ? t : 1e-9)) + 1;
            break;
        }
        iters *= 4;
    }
    /* Warm up every thread for ~0.25 s: a vCPU that sat idle (a 1-thread
     * benchmark ran for minutes) can take that long to run at full speed
     * again on a shared host. */
    for (double t0 = now_s(); now_s() - t0 < 0.25;) {
#pragma omp parallel num_threads(threads)
        {
            float r = k->fma_probe(iters / 4 + 1);
#pragma omp atomic
            sink += r;
        }
    }
    double best = 0.0;
    for (int run = 0; run < 7; ++run) {
        double t0 = now_s();
#pragma omp parallel num_threads(threads)
        {
            float r = k->fma_probe(iters);
#pragma omp atomic
            sink += r;
        }
        double gflops = 24.0 * k->lanes * (double)iters * threads / (now_s() - t0) / 1e9;
        best = gflops > best ? gflops : best;
    }
    (void)sink;
    return best;
}
