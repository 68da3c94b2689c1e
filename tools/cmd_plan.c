/*
 * cmd_plan.c — `cpattn plan`: which context-parallel configuration to run,
 * from measurements on this job's ranks (the library's planner,
 * cpa_planner_run in src/cp/planner.c, does the work; this file parses the
 * flags and prints).
 *
 * Under `mpiexec -n P cpattn plan --context-parallel-size P <shape flags>`
 * it prints the calibration (hosts, links, progress behaviour), then for
 * each --seq-length a ranked table of every legal configuration with its
 * predicted forward and backward time, exposed communication, bytes and
 * memory per rank, and the request's rule S/(T*alpha) >= 1/(W*beta)
 * evaluated per ring candidate with the measured T*alpha and W*beta; with
 * --validate K the best K also run for real (predicted vs measured).  The
 * last line is `recommended: FLAGS`, the flags as `attn` and `train` take
 * them.  Only rank 0 prints; every failure is agreed by all ranks.
 */
#include "args.h"
#include "cmd.h"
#include "util.h"

#include "cpattn.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct plan_cfg {
    int64_t B, H, G, D, Dv, P, tp, threads, validate, iters;
    int gqa, mask;
    cli_int_list S;
    double comm_timeout;
} plan_cfg;

#define AT(f) offsetof(plan_cfg, f)

static const cli_option plan_options[] = {
    {.flag = "--micro-batch-size", .type = CLI_INT, .def = "1", .metavar = "B", .min = 1,
     .max = INT64_MAX, .help = "Batch size B.", .offset = AT(B)},
    {.flag = "--seq-length", .type = CLI_INT_LIST, .def = "8192", .metavar = "S[,S...]",
     .min = 1, .max = INT64_MAX, .help = "Sequence length(s) S; a list plans each and shows where "
     "the recommendation changes.", .offset = AT(S)},
    {.flag = "--num-attention-heads", .type = CLI_INT, .def = "8", .metavar = "H", .min = 1,
     .max = INT64_MAX, .help = "Query heads H.", .offset = AT(H)},
    {.flag = "--num-query-groups", .type = CLI_INT, .metavar = "G", .min = 1, .max = INT64_MAX,
     .help = "Key/value heads G (GQA), H % G == 0. Default: H, or 1 with "
     "--group-query-attention.", .offset = AT(G)},
    {.flag = "--group-query-attention", .type = CLI_FLAG,
     .help = "Megatron's GQA switch; without --num-query-groups it means G = 1.",
     .offset = AT(gqa)},
    {.flag = "--kv-channels", .type = CLI_INT, .def = "128", .metavar = "D", .min = 1,
     .max = INT64_MAX, .help = "Head dim D of Q and K.", .offset = AT(D)},
    {.flag = "--v-channels", .type = CLI_INT, .metavar = "Dv", .min = 1, .max = INT64_MAX,
     .help = "Head dim Dv of V. Default: D.", .offset = AT(Dv)},
    {.flag = "--attention-mask-type", .type = CLI_CHOICE, .def = "causal",
     .choices = "causal|general", .help = "causal, or general (no mask).", .offset = AT(mask)},
    {.flag = "--context-parallel-size", .type = CLI_INT, .def = "1", .metavar = "P", .min = 1,
     .max = INT_MAX, .help = "Ranks sharing the sequence; must equal the MPI world size.",
     .offset = AT(P)},
    {.flag = "--tensor-model-parallel-size", .type = CLI_INT, .def = "1", .metavar = "TP",
     .min = 1, .max = INT_MAX, .help = "Tensor-parallel size the head rules assume (H % (TP*P) "
     "== 0 for Ulysses).", .offset = AT(tp)},
    {.flag = "--threads", .env = "CPATTN_THREADS", .type = CLI_INT, .def = "0", .min = 0,
     .max = 4096, .help = "Kernel threads per rank; 0 means omp_get_max_threads().",
     .offset = AT(threads)},
    {.flag = "--validate", .type = CLI_INT, .def = "0", .metavar = "K", .min = 0, .max = 64,
     .help = "Also run the best K candidates for real and print predicted vs measured.",
     .offset = AT(validate)},
    {.flag = "--iters", .type = CLI_INT, .def = "3", .min = 1, .max = 64,
     .help = "Timed repeats of each calibration run and each --validate run (medians).",
     .offset = AT(iters)},
    {.flag = "--comm-timeout", .type = CLI_FLOAT, .def = "600", .fmin = 0, .fmax = 1e9,
     .help = "Seconds any MPI wait may last before the job stops with a message (0: none).",
     .offset = AT(comm_timeout)},
};

static const cli_spec plan_spec = {
    .command = "cpattn plan",
    .synopsis = "[flags]",
    .description =
        "Choose the context-parallel configuration from measurements: calibrate this job's "
        "ranks (kernels at each candidate's block shapes, the exchange patterns between "
        "neighbours on the same and on different hosts, all-to-all and all-gather rates, how "
        "much of a transfer hides behind compute), predict every legal configuration, rank "
        "them, and print the best as flags.",
    .options = plan_options,
    .count = (int)(sizeof plan_options / sizeof plan_options[0]),
    .epilog =
        "Output (rank 0): '# ' lines with the calibration; per sequence length a table\n"
        "  rank pred_fwd_ms pred_bwd_ms pred_ms compute_ms exposed_ms sent_MiB mem_MiB\n"
        "       Talpha_GF/s Wbeta_GB/s step_c_ms step_t_ms rule [meas_fwd_ms meas_bwd_ms\n"
        "       meas_ms err%] flags\n"
        "(pred = predicted, slowest rank; sent = bytes the busiest rank sends per\n"
        "forward + backward; mem = the plan's buffers + one saved state per rank; rule =\n"
        "the request's S/(T*alpha) >= 1/(W*beta) for one ring step: its kernel time at\n"
        "the measured rate T*alpha against its transfer at the measured rate W*beta,\n"
        "'hides' or 'exposed', '-' where the schedule is not a ring); with --validate\n"
        "summary lines; and as the last line\n"
        "  recommended: FLAGS\n"
        "(for the last --seq-length when several are given).\n\n"
        "Examples:\n"
        "  mpiexec -n 4 cpattn plan --context-parallel-size 4 --seq-length 8192 --threads 1\n"
        "  mpiexec -n 4 cpattn plan --context-parallel-size 4 --seq-length 2048,8192,32768\n"
        "  mpiexec -n 4 cpattn plan --context-parallel-size 4 --validate 20\n",
};

#define fail(...) tool_fail(EXIT_RUNTIME, __VA_ARGS__)

static double ms(double s) { return 1e3 * s; }

static void print_calibration(const cpa_planner_calibration *cal, const plan_cfg *c, int64_t S)
{
    tool_say("# S=%lld: calibration %.1f s on %d host(s) (at most %d ranks per host); kernels "
             "timed on %d of %lld heads; hidden fraction of a transfer beside compute %.2f; "
             "memcpy %.1f GB/s\n",
             (long long)S, cal->seconds, cal->hosts, cal->max_ranks_per_host, cal->calib_heads,
             (long long)c->H, cal->hidden_fraction, cal->copy_gbytes);
    for (int i = 0; i < cal->nlinks; ++i) {
        const cpa_planner_link *l = &cal->links[i];
        tool_say("#   %-36s %9.3f MiB %9.3f ms %7.2f GB/s  latency %7.1f us  %s\n", l->what,
                 l->bytes / 1048576.0, ms(l->seconds),
                 l->seconds > 0 ? l->bytes / l->seconds / 1e9 : 0.0, 1e6 * l->latency_s,
                 l->inter_host ? "inter-host" : "intra-host");
    }
}

static void print_table(const cpa_plan_candidate *k, int n)
{
    tool_say("rank pred_fwd_ms pred_bwd_ms  pred_ms compute_ms exposed_ms sent_MiB  mem_MiB "
             "Talpha_GF/s Wbeta_GB/s step_c_ms step_t_ms rule    meas_fwd_ms meas_bwd_ms "
             " meas_ms   err%%  flags\n");
    for (int i = 0; i < n; ++i) {
        const cpa_plan_candidate *x = &k[i];
        const double pred = x->fwd_s + x->bwd_s;
        char rule[64] = "   -      -         -     ", meas[96] = "          -           -        -      -";
        if (x->step_compute_s >= 0)
            snprintf(rule, sizeof rule, "%10.2f %9.3f %9.3f %-7s", x->link_gbytes,
                     ms(x->step_compute_s), ms(x->step_transfer_s),
                     x->step_compute_s >= x->step_transfer_s ? "hides" : "exposed");
        else
            snprintf(rule, sizeof rule, "%10s %9s %9s %-7s", "-", "-", "-", "-");
        if (x->validated) {
            const double m = x->measured_fwd_s + x->measured_bwd_s;
            snprintf(meas, sizeof meas, "%11.2f %11.2f %8.2f %6.1f", ms(x->measured_fwd_s),
                     ms(x->measured_bwd_s), ms(m), m > 0 ? 100.0 * (pred - m) / m : 0.0);
        }
        tool_say("%4d %11.2f %11.2f %8.2f %10.2f %10.2f %8.2f %8.2f %11.2f %s %s  %s\n", i + 1,
                 ms(x->fwd_s), ms(x->bwd_s), ms(pred), ms(x->compute_s), ms(x->exposed_s),
                 (x->fwd_bytes + x->bwd_bytes) / 1048576.0, (double)x->memory_bytes / 1048576.0,
                 x->kernel_gflops, rule, meas, x->flags);
    }
}

static int cmp_abs(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void print_validation(const cpa_plan_candidate *k, int n)
{
    double err[64];
    int m = 0, fastest = -1;
    for (int i = 0; i < n && m < 64; ++i) {
        if (!k[i].validated)
            continue;
        const double meas = k[i].measured_fwd_s + k[i].measured_bwd_s;
        err[m++] = fabs(k[i].fwd_s + k[i].bwd_s - meas) / meas;
        if (fastest < 0 || meas < k[fastest].measured_fwd_s + k[fastest].measured_bwd_s)
            fastest = i;
    }
    if (!m)
        return;
    qsort(err, (size_t)m, sizeof *err, cmp_abs);
    const double med = m % 2 ? err[m / 2] : 0.5 * (err[m / 2 - 1] + err[m / 2]);
    const double rec = k[0].measured_fwd_s + k[0].measured_bwd_s,
                 best = k[fastest].measured_fwd_s + k[fastest].measured_bwd_s;
    tool_say("# validate: median |predicted - measured| / measured %.1f%% over %d candidates\n",
             100.0 * med, m);
    tool_say("# validate: recommended measured %.2f ms, fastest measured %.2f ms (rank %d: %s): "
             "recommended is %.1f%% slower\n",
             ms(rec), ms(best), fastest + 1, k[fastest].flags, 100.0 * (rec - best) / best);
}

static int plan_main(int argc, char **argv)
{
    plan_cfg c;
    cli_args args;
    memset(&c, 0, sizeof c);
    cli_result pr = cli_parse(&args, &plan_spec, &c, argc, argv);
    if (pr != CLI_OK)
        return pr == CLI_HELP ? EXIT_OK : EXIT_USAGE;
    cpa_set_comm_timeout(c.comm_timeout);
    if (!cli_given(&args, "--num-query-groups")) {
        c.G = c.gqa ? 1 : c.H;
        cli_mark_derived(&args, "--num-query-groups", c.gqa ? "--group-query-attention" : "= H");
    }
    if (!cli_given(&args, "--v-channels")) {
        c.Dv = c.D;
        cli_mark_derived(&args, "--v-channels", "= --kv-channels");
    }
    if (c.H % c.G)
        return cli_usage(&plan_spec, "--num-query-groups %lld: must divide "
                         "--num-attention-heads %lld (H %% G == 0)", (long long)c.G,
                         (long long)c.H);
    if (c.P != tool_world_size())
        return cli_usage(&plan_spec, "--context-parallel-size %lld: must equal the MPI world "
                         "size %d (mpiexec -n %lld)", (long long)c.P, tool_world_size(),
                         (long long)c.P);
    if (tool_rank() == 0)
        cli_print_config(&args, stdout, "# ");
    cpa_cp_config base = {.cp_size = (int)c.P, .window = 1, .ulysses_degree = 1,
                          .tp_size = (int)c.tp, .mask = {.kind = c.mask ? CPA_MASK_NONE
                                                                        : CPA_MASK_CAUSAL},
                          .batch = c.B, .num_heads = c.H, .num_kv_heads = c.G,
                          .head_dim = c.D, .v_head_dim = c.Dv, .num_threads = (int)c.threads};
    cpa_planner_options opt = {.validate = (int)c.validate, .iters = (int)c.iters};
    char last[192] = "";
    char summary[CLI_LIST_MAX][256], best[CLI_LIST_MAX][192];
    int rc = EXIT_OK;
    for (int s = 0; s < c.S.n && !rc; ++s) {
        base.seq_length = c.S.v[s];
        cpa_plan_candidate *k = NULL;
        cpa_planner_calibration cal;
        int n = 0;
        cpa_status st = cpa_planner_run(MPI_COMM_WORLD, &base, &opt, &k, &n, &cal);
        if (st != CPA_OK) {
            rc = fail("S=%lld: %s: %s", (long long)base.seq_length, cpa_status_string(st),
                      cpa_last_error());
            rc = tool_agree(rc);
            break;
        }
        print_calibration(&cal, &c, base.seq_length);
        tool_say("# S=%lld: %d legal configurations, best predicted first\n",
                 (long long)base.seq_length, n);
        print_table(k, n);
        print_validation(k, n);
        snprintf(last, sizeof last, "%s", k[0].flags);
        snprintf(best[s], sizeof best[s], "%s", k[0].flags);
        snprintf(summary[s], sizeof summary[s], "S=%lld (S/P=%lld): %s (predicted %.2f ms)",
                 (long long)base.seq_length, (long long)(base.seq_length / c.P), k[0].flags,
                 ms(k[0].fwd_s + k[0].bwd_s));
        cpa_planner_free(k);
        rc = tool_agree(rc);
    }
    if (rc)
        return rc;
    if (c.S.n > 1) {
        tool_say("# the recommendation per sequence length:\n");
        for (int s = 0; s < c.S.n; ++s)
            tool_say("#   %s%s\n", summary[s],
                     s > 0 && strcmp(best[s], best[s - 1]) ? "   <- changes here" : "");
    }
    tool_say("recommended: %s\n", last);
    return EXIT_OK;
}

int cmd_plan(int argc, char **argv)
{
    return tool_mpi_command("cpattn plan", 1, plan_main, argc, argv);
}
