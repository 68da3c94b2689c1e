/*
 * util.h — small helpers shared by the subcommands of the `cpattn` program:
 * timing and statistics, memory figures, overflow-checked sizes, aligned
 * buffers and the deterministic input generator.  Not part of the library.
 */
#ifndef CPATTN_TOOLS_UTIL_H
#define CPATTN_TOOLS_UTIL_H

#include "cpattn.h"

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------ */
/* Helpers shared by the subcommands                                         */
/* ------------------------------------------------------------------------ */

/* a * b into *out, or 0 on int64 overflow (operands must be >= 0). */
int tool_mul_ok(int64_t a, int64_t b, int64_t *out);

/* Monotonic wall-clock seconds. */
double tool_now(void);

/* Peak resident set size of this process so far, in MiB. */
double tool_peak_rss_mib(void);

/* Physical memory of the machine in bytes (0 if unknown). */
double tool_phys_mem_bytes(void);

/* Median, minimum and maximum of x[0..n-1] (n >= 1); sorts x in place. */
void tool_stats(double *x, int n, double *median, double *min, double *max);

/* 64-byte aligned buffer of `count` floats (NULL on failure); free() it. */
float *tool_alloc_floats(int64_t count);

/* Fill the logical [B, S, N, D] view `t` with uniform values in [-1, 1)
 * that depend only on (seed, tensor_id, global logical index), where the
 * view's rows are rows [s_offset, s_offset + S) of a global sequence of
 * s_global rows.  So a tensor has the same values in every layout, and a
 * rank holding a slice of the sequence generates exactly its slice of the
 * global tensor, for any rank count. */
void tool_fill_uniform(cpa_tensor t, uint64_t seed, uint64_t tensor_id, int64_t s_global,
                       int64_t s_offset);

#endif /* CPATTN_TOOLS_UTIL_H */
