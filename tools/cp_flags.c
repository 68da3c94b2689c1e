/*
 * cp_flags.c — the shared context-parallel flags (see cp_flags.h).
 */
#include "cp_flags.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

/* "a|b|c" and "a: summary; b: ..." from the library's table, built once. */
static char algo_choices[512], algo_help[2048];
static char auto_choices[560], auto_help[2400]; /* the same with "auto" (train) */

static void build_algo_texts(void)
{
    if (algo_choices[0])
        return;
    size_t nc = 0, nh = 0;
    nh += (size_t)snprintf(algo_help, sizeof algo_help, "Context-parallel attention algorithm "
                           "(the rules of each are checked by the plan, on every rank alike).");
    for (int i = 0; i < cpa_algo_count(); ++i) {
        cpa_algo_info info;
        if (cpa_algo_describe((cpa_algo)i, &info) != CPA_OK)
            continue;
        nc += (size_t)snprintf(algo_choices + nc, sizeof algo_choices - nc, "%s%s", i ? "|" : "",
                               info.name);
        if (nh < sizeof algo_help)
            nh += (size_t)snprintf(algo_help + nh, sizeof algo_help - nh, " %s: %s.", info.name,
                                   info.summary);
    }
    snprintf(auto_choices, sizeof auto_choices, "%s|auto", algo_choices);
    snprintf(auto_help, sizeof auto_help, "%s auto: the planner (`cpattn plan`) calibrates the "
             "job's ranks at start-up and picks the algorithm, window, Ulysses degree and "
             "overlap it predicts fastest for this model's attention; rank 0 prints its choice.",
             algo_help);
}

void cp_flags_allow_auto(cli_option *rows, int n)
{
    build_algo_texts();
    for (int i = 0; i < n; ++i)
        if (!strcmp(rows[i].flag, "--context-parallel-algo"))
            rows[i].choices = auto_choices, rows[i].help = auto_help;
}

void cp_flag_rows(cli_option *rows, size_t base, const char *cp_help)
{
    build_algo_texts();
    const cli_option r[CP_FLAG_COUNT] = {
        {.flag = "--context-parallel-size", .type = CLI_INT, .def = "1", .metavar = "P",
         .min = 1, .max = INT_MAX, .help = cp_help, .offset = base + offsetof(cp_flags, cp)},
        {.flag = "--context-parallel-algo", .type = CLI_CHOICE, .def = "ulysses_cp_algo",
         .choices = algo_choices, .help = algo_help, .offset = base + offsetof(cp_flags, algo)},
        {.flag = "--cp-window-size", .type = CLI_INT, .def = "1", .metavar = "W", .min = 1,
         .max = INT_MAX, .help = "Ring and hybrid: ranks per inner ring window; W > 1 is the "
         "double ring (1 <= W < R, R % W == 0; R = P, or P/U for hybrid).",
         .offset = base + offsetof(cp_flags, window)},
        {.flag = "--ulysses-degree-in-cp", .type = CLI_INT, .metavar = "U", .min = 1,
         .max = INT_MAX, .help = "Hybrid: Ulysses group size U (U > 1, P % U == 0, P/U > 1, "
         "H % (U*TP) == 0). Default: unset.", .offset = base + offsetof(cp_flags, ulysses)},
        {.flag = "--use-cp-send-recv-overlap", .type = CLI_FLAG,
         .help = "Ring and hybrid: the send and the receive of each step on separate "
         "communicators (full duplex).", .offset = base + offsetof(cp_flags, overlap)},
        {.flag = "--attention-mask-type", .type = CLI_CHOICE, .def = "causal",
         .choices = "causal|general", .help = "causal: query i sees keys <= i; general: every "
         "query sees every key.", .offset = base + offsetof(cp_flags, mask)},
        {.flag = "--megatron-cp-in-bnsd", .type = CLI_FLAG, .help = "Attention tensors in "
         "[B, N, S, D] order (--layout bnsd).", .offset = base + offsetof(cp_flags, bnsd)},
        {.flag = "--sliding-window", .type = CLI_INT, .metavar = "N", .min = 1,
         .max = INT64_MAX, .help = "Sliding-window attention (Mistral, Gemma): with causal, "
         "query p sees keys in [p-N+1, p]; with general, keys with |p-k| < N. Default: off.",
         .offset = base + offsetof(cp_flags, sliding)},
        {.flag = "--cp-load-balance", .type = CLI_CHOICE, .def = "zigzag",
         .choices = "zigzag|documents", .help = "Ring and all-gather: how causal rows are "
         "assigned to ranks. zigzag: chunks r and 2P-1-r (balances one dense sequence); "
         "documents: 2 or 4 chunks per rank chosen from the documents and window so that "
         "every rank sees as many visible pairs (packed data).",
         .offset = base + offsetof(cp_flags, balance)},
        {.flag = "--comm-timeout", .type = CLI_FLOAT, .def = "600", .metavar = "SECONDS",
         .fmin = 0, .fmax = 1e9, .help = "Bound on every wait for another rank; on expiry the "
         "rank names what it waited for and aborts the job (0: wait forever).",
         .offset = base + offsetof(cp_flags, comm_timeout)},
    };
    memcpy(rows, r, sizeof r);
}

int cp_build_table(cli_option *out, const cli_option *own, int n_own, int at, size_t base,
                   const char *cp_help)
{
    memcpy(out, own, sizeof *own * (size_t)at);
    cp_flag_rows(out + at, base, cp_help);
    memcpy(out + at + CP_FLAG_COUNT, own + at, sizeof *own * (size_t)(n_own - at));
    return n_own + CP_FLAG_COUNT;
}

void cp_flags_apply(const cp_flags *f, cpa_cp_config *cc)
{
    cc->algo = (cpa_algo)f->algo;
    cc->cp_size = (int)f->cp;
    cc->window = (int)f->window;
    cc->ulysses_degree = (int)f->ulysses;
    cc->send_recv_overlap = f->overlap;
    cc->mask.kind = f->mask == CP_MASK_CAUSAL ? CPA_MASK_CAUSAL : CPA_MASK_NONE;
    cc->mask.window = f->sliding;
    cc->balance = (cpa_balance)f->balance;
}

void cp_flags_describe(const cp_flags *f, char *buf, size_t cap)
{
    cpa_algo_info info;
    if (cpa_algo_describe((cpa_algo)f->algo, &info) != CPA_OK) {
        snprintf(buf, cap, "algorithm %d", f->algo);
        return;
    }
    size_t n = (size_t)snprintf(buf, cap, "%s", info.name);
    if (info.uses_ulysses_degree && n < cap)
        n += (size_t)snprintf(buf + n, cap - n, ", ulysses-degree-in-cp %lld",
                              (long long)f->ulysses);
    if (info.uses_window && n < cap)
        n += (size_t)snprintf(buf + n, cap - n, ", cp-window-size %lld", (long long)f->window);
    if (info.uses_overlap && n < cap)
        snprintf(buf + n, cap - n, ", send/recv overlap %s", f->overlap ? "on" : "off");
}
