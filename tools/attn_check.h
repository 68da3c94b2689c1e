/*
 * attn_check.h — `cpattn attn --check` and `--iters`: the comparison with
 * the reference implementation and the timing report, each rank working on
 * its own rows only.
 *
 * --check streams.  Each rank computes the reference for its own query rows
 * with the reference kernel (double accumulation), key/value blocks of the
 * other ranks streaming past it around a ring of all ranks (each partial
 * merged as the blocks arrive), so no rank ever holds more than two blocks
 * of S/P rows.  The backward does the same the other way: every rank's
 * query block (q, dout, the reference out and lse, a dQ accumulator) travels
 * past every rank, which adds the block's dK/dV into its own rows and the
 * block's dQ contribution into the accumulator, which is home after P
 * steps.  The comparison's maxima are reduced over the ranks.  The ring of
 * the check is a plain contiguous rotation over the plain kernel, not any of
 * the algorithms under test.
 */
#ifndef CPATTN_TOOLS_ATTN_CHECK_H
#define CPATTN_TOOLS_ATTN_CHECK_H

#include "attn_tensors.h"

typedef struct attn_check_cfg {
    cpa_split split;
    cpa_mask mask;
    float scale;       /* 0: 1/sqrt(D) */
    int forward_only;
    double tol_fwd, tol_grad;
} attn_check_cfg;

/* Bytes the check allocates on one rank (reference results and blocks). */
double attn_check_bytes(const attn_shape *sh, int64_t Sl, int forward_only);

/* Compare the results in `s` with the reference; rank 0 prints the lines
 * "check <tensor> ..." and "check: PASS|FAIL".  EXIT_RUNTIME on FAIL. */
int attn_check(const attn_set *s, const attn_check_cfg *cfg);

/* --iters: `call(arg, which, &sec)` runs one timed forward (which 0) or
 * backward (1) on every rank and returns an agreed exit code; `stats`
 * (may be NULL) gives the last call's plan counters. */
typedef struct attn_timing {
    int64_t iters, warmup;
    int forward_only, P;
    double flops; /* forward flops of the whole problem */
    /* visible-pair imbalance (max/mean rank) of the zigzag and the
     * document-aware assignments (< 0: not applicable) */
    double imbalance_zigzag, imbalance_documents;
    int (*call)(void *arg, int which, double *sec);
    void (*stats)(void *arg, cpa_plan_stats *st);
    void *arg;
} attn_timing;

int attn_report_timing(const attn_timing *t);

#endif
