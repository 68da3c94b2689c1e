/*
 * util.c — helpers shared by the subcommands (see util.h).
 */
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Helpers shared by the subcommands                                         */
/* ------------------------------------------------------------------------ */

int tool_mul_ok(int64_t a, int64_t b, int64_t *out)
{
    if (a < 0 || b < 0 || (b != 0 && a > INT64_MAX / b))
        return 0;
    *out = a * b;
    return 1;
}

double tool_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double tool_peak_rss_mib(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0.0;
    return (double)ru.ru_maxrss / 1024.0; /* Linux reports KiB */
}

double tool_phys_mem_bytes(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (double)pages * (double)page : 0.0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void tool_stats(double *x, int n, double *median, double *min, double *max)
{
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    *min = x[0];
    *max = x[n - 1];
    *median = n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

float *tool_alloc_floats(int64_t count)
{
    if (count < 0 || (uint64_t)count > (SIZE_MAX - 64) / sizeof(float))
        return NULL;
    size_t bytes = ((size_t)count * sizeof(float) + 63) / 64 * 64;
    return aligned_alloc(64, bytes ? bytes : 64);
}

/* splitmix64's output function: a bijective 64-bit mixer. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void tool_fill_uniform(cpa_tensor t, uint64_t seed, uint64_t tensor_id, int64_t s_global,
                       int64_t s_offset)
{
    const int64_t B = t.shape[0], S = t.shape[1], N = t.shape[2], D = t.shape[3];
    const uint64_t key = mix64(seed ^ mix64(tensor_id + 0x9e3779b97f4a7c15ULL));
    for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < S; ++s)
            for (int64_t n = 0; n < N; ++n) {
                float *row = t.data + b * t.stride[0] + s * t.stride[1] + n * t.stride[2];
                uint64_t base = (uint64_t)(((b * s_global + s_offset + s) * N + n) * D);
                for (int64_t d = 0; d < D; ++d) {
                    uint64_t r = mix64(key + (base + (uint64_t)d) * 0x9e3779b97f4a7c15ULL);
                    /* top 24 bits -> [0, 1) exactly representable, then [-1, 1) */
                    row[d * t.stride[3]] = (float)(r >> 40) * 0x1p-23f - 1.0f;
                }
            }
}
