/*
 * blas.c — is the BLAS running kernels that fit this CPU?
 *
 * cpattn's own attention kernels pick their instruction set at run time
 * (src/kernels/isa.c); everything else that multiplies matrices (the
 * trainer's linear layers) calls OpenBLAS.  Debian's OpenBLAS picks its
 * kernel family from the CPU model at load time and falls back to its
 * oldest ("Prescott", SSE3) kernels on CPUs it does not know — newer Xeons
 * among them — which runs sgemm 3-5x below the chip.  OPENBLAS_CORETYPE,
 * read when the library loads, overrides the choice; so the fix has to
 * happen before the program starts (the cpattn tool re-executes itself,
 * tools/blas_setup.c).  This file only inspects and tests; it never changes
 * the process.
 *
 * Testing hook: CPATTN_BLAS_PRETEND_CORE=NAME makes the inspection report
 * NAME as the family OpenBLAS chose by itself (to exercise the fix on a
 * machine that OpenBLAS recognises); it has no effect once
 * OPENBLAS_CORETYPE is set.
 */
#include "internal.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* OpenBLAS's own query (not part of CBLAS). */
char *openblas_get_corename(void);

/* The widest vector instructions a kernel family of OpenBLAS 0.3.x uses:
 * 3 AVX-512, 2 AVX2+FMA, 1 AVX, 0 older (SSE).  Unknown names count as 0,
 * so a family newer than this table is never "fixed" downward: the fix
 * only applies when the CPU level is higher. */
static int core_level(const char *core)
{
    static const char *const avx512[] = {"skylakex", "cooperlake", "sapphirerapids", "zen4"};
    static const char *const avx2[] = {"haswell", "zen", "skylake", "excavator"};
    static const char *const avx[] = {"sandybridge", "bulldozer", "piledriver", "steamroller"};
    char low[32];
    size_t n = 0;
    for (; core[n] && n + 1 < sizeof low; ++n)
        low[n] = (char)(core[n] >= 'A' && core[n] <= 'Z' ? core[n] - 'A' + 'a' : core[n]);
    low[n] = '\0';
    for (size_t i = 0; i < sizeof avx512 / sizeof *avx512; ++i)
        if (!strcmp(low, avx512[i]))
            return 3;
    for (size_t i = 0; i < sizeof avx2 / sizeof *avx2; ++i)
        if (!strcmp(low, avx2[i]))
            return 2;
    for (size_t i = 0; i < sizeof avx / sizeof *avx; ++i)
        if (!strcmp(low, avx[i]))
            return 1;
    return 0;
}

static const char *const level_words[] = {"SSE", "AVX", "AVX2", "AVX-512"};

/* The CPU's level and the OpenBLAS family that matches it. */
static int cpu_level(const char **family)
{
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
        *family = __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
        return 3;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        *family = "Haswell";
        return 2;
    }
    if (__builtin_cpu_supports("avx")) {
        *family = "Sandybridge";
        return 1;
    }
#endif
    *family = "";
    return 0;
}

void cpa_blas_inspect(cpa_blas_report *r)
{
    memset(r, 0, sizeof *r);
    /* The hook stands for OpenBLAS's own choice, so it is ignored once
     * OPENBLAS_CORETYPE overrides that choice. */
    const char *pretend = getenv("CPATTN_BLAS_PRETEND_CORE"), *user = getenv("OPENBLAS_CORETYPE");
    const char *core = pretend && *pretend && !(user && *user) ? pretend : openblas_get_corename();
    snprintf(r->core, sizeof r->core, "%s", core ? core : "unknown");
    const char *family;
    const int cpu = cpu_level(&family), have = core_level(r->core);
    snprintf(r->cpu_family, sizeof r->cpu_family, "%s", family);
    r->user_set = user && *user;
    r->below_cpu = cpu > have;
    if (!r->below_cpu)
        snprintf(r->message, sizeof r->message,
                 "OpenBLAS runs its %s kernels (%s), which fit this CPU (%s)", r->core,
                 level_words[have], level_words[cpu]);
    else
        snprintf(r->message, sizeof r->message,
                 "OpenBLAS runs its %s kernels (%s) on a CPU with %s, so sgemm runs several times "
                 "below the chip; start the program with OPENBLAS_CORETYPE=%s in its environment",
                 r->core, level_words[have], level_words[cpu], r->cpu_family);
}

int cpa_blas_selftest(void)
{
    /* Ragged sizes exercise the edge kernels as well as the main ones. */
    enum { M = 67, N = 45, K = 131 };
    static float a[M * K], b[K * N], c[M * N];
    for (int i = 0; i < M * K; ++i)
        a[i] = (float)((i * 7919) % 17) / 17.0f - 0.5f;
    for (int i = 0; i < K * N; ++i)
        b[i] = (float)((i * 104729) % 13) / 13.0f - 0.5f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            double want = 0.0, mag = 0.0;
            for (int k = 0; k < K; ++k) {
                want += (double)a[i * K + k] * (double)b[k * N + j];
                mag += fabs((double)a[i * K + k] * (double)b[k * N + j]);
            }
            if (!(fabs((double)c[i * N + j] - want) <= 1e-5 * mag + 1e-30))
                return 0;
        }
    return 1;
}
