/*
 * cmd_algos.c — `cpattn algos`: the library's algorithm table, and with
 * --context-parallel-size P every configuration of every algorithm valid at
 * P for a given shape, with the plan's memory per rank and the bytes a rank
 * sends per forward and per backward (from the schedule: cpa_plan_volume).
 * The CP benchmark (bench/cp_bench.sh) and the tests iterate this list, so
 * an algorithm added to the table is benchmarked with no edit there.
 *
 * Output, one line per configuration:
 *   config <algo> [--ulysses-degree-in-cp U] [--cp-window-size W]
 *          [--use-cp-send-recv-overlap] plan_MiB X fwd_sent_MiB Y bwd_sent_MiB Z
 * Rows that take --use-cp-send-recv-overlap are listed with it (full
 * duplex, what a benchmark wants), their memory computed with it.
 * Candidate degrees come from what each row says it uses; the plan's own
 * rules (cpa_plan_volume refuses what cpa_plan_create would) decide which
 * are valid, so no rule is repeated here.
 */
#include "args.h"
#include "cmd.h"

#include "cpattn.h"

#include <stdio.h>
#include <string.h>

typedef struct algos_cfg {
    int64_t P, B, S, H, G, D;
    int mask;
} algos_cfg;

#define AT(f) offsetof(algos_cfg, f)
static const cli_option algos_options[] = {
    {.flag = "--context-parallel-size", .type = CLI_INT, .def = "0", .metavar = "P", .min = 0,
     .max = 1 << 20, .help = "List the valid configurations at P ranks (0: only the table).",
     .offset = AT(P)},
    {.flag = "--micro-batch-size", .type = CLI_INT, .def = "1", .min = 1, .max = 1 << 20,
     .help = "Batch size B.", .offset = AT(B)},
    {.flag = "--seq-length", .type = CLI_INT, .def = "8192", .min = 1, .max = 1LL << 40,
     .help = "Sequence length S.", .offset = AT(S)},
    {.flag = "--num-attention-heads", .type = CLI_INT, .def = "32", .min = 1, .max = 1 << 20,
     .help = "Query heads H.", .offset = AT(H)},
    {.flag = "--num-query-groups", .type = CLI_INT, .def = "0", .min = 0, .max = 1 << 20,
     .help = "Key/value heads G (0: H).", .offset = AT(G)},
    {.flag = "--kv-channels", .type = CLI_INT, .def = "128", .min = 1, .max = 1 << 16,
     .help = "Head dim D.", .offset = AT(D)},
    {.flag = "--attention-mask-type", .type = CLI_CHOICE, .def = "causal",
     .choices = "causal|general", .help = "The mask (decides the split).", .offset = AT(mask)},
};

static const cli_spec algos_spec = {
    .command = "cpattn algos",
    .synopsis = "[flags]",
    .description = "The context-parallel algorithms of the library's table; with "
                   "--context-parallel-size P, every valid configuration at P with its plan "
                   "memory per rank and communication volume.",
    .options = algos_options,
    .count = (int)(sizeof algos_options / sizeof algos_options[0]),
};

static void one(const algos_cfg *c, cpa_algo a, const cpa_algo_info *info, int U, int W)
{
    cpa_cp_config cc = {.algo = a, .cp_size = (int)c->P, .window = W, .ulysses_degree = U,
                        .tp_size = 1, .batch = c->B, .seq_length = c->S, .num_heads = c->H,
                        .num_kv_heads = c->G ? c->G : c->H, .head_dim = c->D, .num_threads = 1};
    cc.mask.kind = c->mask == 0 ? CPA_MASK_CAUSAL : CPA_MASK_NONE;
    cc.send_recv_overlap = info->uses_overlap; /* the line below lists the flag: model it */
    double fwd, bwd;
    if (cpa_plan_volume(&cc, &fwd, &bwd) != CPA_OK)
        return; /* a rule of the plan refuses it */
    printf("config %s", info->name);
    if (U)
        printf(" --ulysses-degree-in-cp %d", U);
    if (info->uses_window)
        printf(" --cp-window-size %d", W);
    if (info->uses_overlap)
        printf(" --use-cp-send-recv-overlap");
    printf(" plan_MiB %.1f fwd_sent_MiB %.3f bwd_sent_MiB %.3f\n",
           (double)cpa_plan_memory_bytes(&cc) / 1048576.0, fwd / 1048576.0, bwd / 1048576.0);
}

int cmd_algos(int argc, char **argv)
{
    algos_cfg c;
    cli_args args;
    memset(&c, 0, sizeof c);
    cli_result pr = cli_parse(&args, &algos_spec, &c, argc, argv);
    if (pr != CLI_OK)
        return pr == CLI_HELP ? EXIT_OK : EXIT_USAGE;
    for (int a = 0; a < cpa_algo_count(); ++a) {
        cpa_algo_info info;
        if (cpa_algo_describe((cpa_algo)a, &info) != CPA_OK)
            continue;
        if (!c.P) {
            printf("%-18s %s%s%s\n    %s\n", info.name, info.uses_ulysses_degree ?
                   "--ulysses-degree-in-cp " : "", info.uses_window ? "--cp-window-size " : "",
                   info.uses_overlap ? "--use-cp-send-recv-overlap" : "", info.summary);
            continue;
        }
        const int P = (int)c.P;
        for (int U = info.uses_ulysses_degree ? 2 : 0; U <= (info.uses_ulysses_degree ? P : 0);
             ++U)
            for (int W = 1; W == 1 || (info.uses_window && W < P); ++W)
                one(&c, (cpa_algo)a, &info, U, W);
    }
    return EXIT_OK;
}
