/*
 * cp_flags.h — the context-parallel flags every subcommand that runs
 * attention shares (`cpattn attn`, `cpattn train`), defined once: their
 * rows of the config table, their bounds and help, and how they become a
 * cpa_cp_config.  The --context-parallel-algo choices and help come from
 * the library's algorithm table (cpa_algo_count / cpa_algo_describe), so an
 * algorithm added there appears here, in both commands, with nothing typed
 * by hand.  The rules that tie the flags together are the plan's
 * (cpa_plan_create checks them collectively); the tools do not re-check
 * them.
 */
#ifndef CPATTN_TOOLS_CP_FLAGS_H
#define CPATTN_TOOLS_CP_FLAGS_H

#include "args.h"

/* The values, embedded in each command's config struct. */
typedef struct cp_flags {
    int64_t cp;          /* --context-parallel-size P */
    int algo;            /* --context-parallel-algo: index in the table = cpa_algo */
    int64_t window;      /* --cp-window-size W */
    int64_t ulysses;     /* --ulysses-degree-in-cp U (0: unset) */
    int overlap;         /* --use-cp-send-recv-overlap */
    int mask;            /* --attention-mask-type: CP_MASK_CAUSAL or CP_MASK_GENERAL */
    int bnsd;            /* --megatron-cp-in-bnsd */
    int64_t sliding;     /* --sliding-window N (0: unset, no window) */
    int balance;         /* --cp-load-balance: index in "zigzag|documents" = cpa_balance */
    double comm_timeout; /* --comm-timeout, seconds */
} cp_flags;

enum { CP_MASK_CAUSAL = 0, CP_MASK_GENERAL = 1 };

#define CP_FLAG_COUNT 10

/* Write the CP_FLAG_COUNT rows into `rows`, their offsets relative to
 * `base` (offsetof the cp_flags inside the command's config); `cp_help` is
 * the command's sentence for --context-parallel-size. */
void cp_flag_rows(cli_option *rows, size_t base, const char *cp_help);

/* Build a command's table: its own rows `own` (n_own) with the CP rows
 * inserted before own row `at`, into `out` (room for n_own + CP_FLAG_COUNT
 * rows); returns the count. */
int cp_build_table(cli_option *out, const cli_option *own, int n_own, int at, size_t base,
                   const char *cp_help);

/* Let --context-parallel-algo of the table `rows` (n rows) also take
 * "auto" (its index is CP_ALGO_AUTO): the trainer's planner choice. */
void cp_flags_allow_auto(cli_option *rows, int n);
#define CP_ALGO_AUTO cpa_algo_count()

/* The plan configuration's algorithm, degrees, overlap and mask (kind and
 * window; documents are the command's). */
void cp_flags_apply(const cp_flags *f, cpa_cp_config *cc);

/* "# context parallel: ..." words for the configuration printout: the
 * algorithm and the degrees that apply to it. */
void cp_flags_describe(const cp_flags *f, char *buf, size_t cap);

#endif
