/*
 * cmd_train.c — `cpattn train`: Megatron-style GPT pretraining with context
 * parallelism, the project's main job.  World = TP x CP x DP in Megatron's
 * rank order (TP ranks adjacent, then CP, then DP); the TP ranks share
 * every layer's weights (gpt.c), each CP group shares one sequence split by
 * the attention algorithm; the loss is the mean over every token of the
 * global batch; parameter gradients are summed over the replicas (the CP x
 * DP ranks of one TP coordinate).  Flags use Megatron's names.
 *
 * This file is the configuration, the loop and the logging; the process
 * grid and its reductions (src/model/parallel.c), the model
 * (src/model/gpt.c), the optimizer, the data and the checkpoints are
 * library code.
 */
#include "args.h"
#include "cmd.h"
#include "cp_flags.h"
#include "trace_opts.h"
#include "util.h"

#include "checkpoint.h"
#include "data.h"
#include "gpt.h"
#include "optim.h"
#include "parallel.h"

#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct train_cfg {
    int64_t L, C, F, H, G, S, B, GB, iters, warmup, log_interval, eval_interval, eval_iters;
    int64_t save_interval, exit_interval, vocab, tp, threads, seed, eod_token;
    int gqa, recompute, overwrite_save, sequence_parallel;
    int synthetic_documents, reset_position_ids, reset_attention_mask, eod_mask_loss;
    double lr, min_lr, wd, clip;
    cp_flags cpf; /* the context-parallel flags, shared with attn (cp_flags.h) */
    const char *save, *load, *data_path, *split;
    const char *trace; /* --trace FILE (docs/trace.md) */
    int64_t trace_max; /* --trace-max-events */
    /* Not flags: which of the data flags were given (check_rules). */
    int vocab_given, split_given, eod_given;
} train_cfg;

#define AT(f) offsetof(train_cfg, f)
#define INT_FLAG(name_, def_, help_, fld_, lo_, hi_)                                   \
    {.flag = name_, .type = CLI_INT, .def = def_, .help = help_, .min = lo_, .max = hi_, \
     .offset = AT(fld_)}
#define FLOAT_FLAG(name_, def_, help_, fld_, lo_, hi_)                                 \
    {.flag = name_, .type = CLI_FLOAT, .def = def_, .help = help_, .fmin = lo_,         \
     .fmax = hi_, .offset = AT(fld_)}

static const cli_option train_options[] = {
    INT_FLAG("--num-layers", "2", "Transformer blocks L.", L, 1, 1024),
    INT_FLAG("--hidden-size", "128", "Model width C (= heads x head dim).", C, 1, 65536),
    INT_FLAG("--ffn-hidden-size", NULL, "SwiGLU width F. Default: 4 x --hidden-size.", F, 1, 1 << 20),
    INT_FLAG("--num-attention-heads", "4", "Query heads H.", H, 1, 4096),
    {.flag = "--group-query-attention", .type = CLI_FLAG,
     .help = "Megatron's GQA switch (uses --num-query-groups).", .offset = AT(gqa)},
    INT_FLAG("--num-query-groups", NULL, "Key/value heads G. Default: H (1 with "
             "--group-query-attention alone).", G, 1, 4096),
    INT_FLAG("--seq-length", "256", "Sequence length S (global, split over the CP ranks).", S, 4,
             1LL << 32),
    INT_FLAG("--micro-batch-size", "1", "Sequences per rank per micro-step.", B, 1, 65536),
    INT_FLAG("--global-batch-size", NULL, "Sequences per iteration over all replicas. Default: "
             "micro batch x data-parallel size.", GB, 1, 1 << 24),
    INT_FLAG("--train-iters", "100", "Iterations to train (in total, resumed runs included).",
             iters, 1, 1LL << 40),
    FLOAT_FLAG("--lr", "1e-3", "Peak learning rate.", lr, 0, 10),
    FLOAT_FLAG("--min-lr", "1e-4", "Learning rate at the end of the cosine decay.", min_lr, 0, 10),
    INT_FLAG("--lr-warmup-iters", "10", "Linear warm-up iterations.", warmup, 0, 1LL << 40),
    FLOAT_FLAG("--weight-decay", "0.1", "AdamW decoupled weight decay (matrices only).", wd, 0, 10),
    FLOAT_FLAG("--clip-grad", "1.0", "Clip the global gradient norm to this (0: off).", clip, 0,
               1e9),
    INT_FLAG("--seed", "1234", "Seed of the initialisation and the data.", seed, 0, 1LL << 62),
    INT_FLAG("--log-interval", "10", "Iterations between log lines.", log_interval, 1, 1LL << 40),
    INT_FLAG("--eval-interval", "50", "Iterations between evaluations (0: only at the end).",
             eval_interval, 0, 1LL << 40),
    INT_FLAG("--eval-iters", "4", "Batches per evaluation.", eval_iters, 1, 1 << 20),
    {.flag = "--save", .type = CLI_STRING, .help = "Checkpoint folder to write (checked for "
     "writing before any work).", .offset = AT(save)},
    {.flag = "--overwrite-save", .type = CLI_FLAG, .help = "Let a run that does not resume the "
     "checkpoint in --save replace it (refused otherwise).", .offset = AT(overwrite_save)},
    {.flag = "--load", .type = CLI_STRING, .help = "Checkpoint folder to resume from.",
     .offset = AT(load)},
    INT_FLAG("--save-interval", "0", "Iterations between checkpoints (0: only at the end).",
             save_interval, 0, 1LL << 40),
    INT_FLAG("--exit-interval", "0", "Stop after the iteration divisible by this (0: never), "
             "saving a checkpoint first when --save is given (Megatron's flag).",
             exit_interval, 0, 1LL << 40),
    {.flag = "--data-path", .type = CLI_STRING,
     .help = "Megatron's indexed dataset PREFIX.bin + PREFIX.idx (give PREFIX; `cpattn "
             "preprocess` writes one), or a text file for byte-level language modelling (last "
             "10% held out). Default: the built-in copy task, whose second half can only be "
             "predicted across CP shards.",
     .offset = AT(data_path)},
    INT_FLAG("--vocab-size", "32", "Vocabulary of the copy tasks (text: 256; indexed dataset: "
             "its largest token + 1 unless given).", vocab, 4, 1 << 20),
    {.flag = "--split", .type = CLI_STRING, .def = "969,30,1", .metavar = "TRAIN,VALID,TEST",
     .help = "Megatron's split of an indexed dataset's documents by weight: training uses "
             "train, evaluation valid.", .offset = AT(split)},
    INT_FLAG("--eod-token", "256", "End-of-document token of an indexed dataset (cpattn "
             "preprocess writes 256; Megatron's comes from its tokenizer, e.g. 50256 for GPT-2).",
             eod_token, 0, INT32_MAX),
    {.flag = "--synthetic-documents", .type = CLI_FLAG,
     .help = "The built-in task as packed documents: random lengths, each a copy task, the EOD "
             "token 0 after each.", .offset = AT(synthetic_documents)},
    {.flag = "--reset-position-ids", .type = CLI_FLAG,
     .help = "RoPE positions restart at 0 after every EOD token (Megatron's flag; needs "
             "documents: an indexed dataset or --synthetic-documents).",
     .offset = AT(reset_position_ids)},
    {.flag = "--reset-attention-mask", .type = CLI_FLAG,
     .help = "Attention inside each document only (Megatron's flag): every sample's "
             "documents end after its EOD tokens, under every CP algorithm (needs "
             "documents).", .offset = AT(reset_attention_mask)},
    {.flag = "--eod-mask-loss", .type = CLI_FLAG,
     .help = "No loss where the input is the EOD token (Megatron's flag; needs documents).",
     .offset = AT(eod_mask_loss)},
    {.flag = "--recompute-granularity", .type = CLI_CHOICE, .def = "none", .choices = "none|full",
     .help = "full: keep only each block's input and recompute the block in backward.",
     .offset = AT(recompute)},
#define TRAIN_CP_AT 33 /* the CP rows (cp_flags.h) go here */
    INT_FLAG("--tensor-model-parallel-size", "1", "Megatron's tensor parallelism: TP adjacent "
             "ranks share every layer (column-parallel QKV and gate/up, row-parallel output and "
             "down projections, vocabulary-parallel embedding, LM head and cross-entropy); world "
             "= TP x CP x DP.", tp, 1, 1 << 20),
    {.flag = "--sequence-parallel", .type = CLI_FLAG,
     .help = "Megatron's sequence parallelism (TP > 1): norms and residuals on S/(TP x CP) "
             "tokens per rank, an all-gather before each column-parallel layer and a "
             "reduce-scatter after each row-parallel one instead of the all-reduce.",
     .offset = AT(sequence_parallel)},
    {.flag = "--threads", .env = "CPATTN_THREADS", .type = CLI_INT, .def = "1",
     .help = "OpenMP threads per rank (kernels and GEMMs).", .min = 1, .max = 1024,
     .offset = AT(threads)},
    /* --trace, --trace-max-events (trace_opts.h): last, so no row index above moves. */
    TRACE_FLAG_ROWS(AT(trace), AT(trace_max)),
};

#define TRAIN_OWN ((int)(sizeof train_options / sizeof train_options[0]))
static cli_option train_table[TRAIN_OWN + CP_FLAG_COUNT];

static cli_spec train_spec = {
    .command = "cpattn train",
    .synopsis = "[flags]",
    .description = "Train a GPT (RMSNorm, RoPE, GQA, SwiGLU) with context-parallel attention, "
                   "Megatron style, under mpiexec -n TP*CP*DP.",
    .options = train_table, /* train_options with the CP flags: see cmd_train_spec() */
    .epilog = "Examples:\n"
              "  mpiexec -n 2 cpattn train --context-parallel-size 2 --context-parallel-algo "
              "megatron_cp_algo\n"
              "  mpiexec -n 4 cpattn train --context-parallel-size 4 --context-parallel-algo "
              "hybrid_cp_algo --ulysses-degree-in-cp 2\n",
};

const cli_spec *cmd_train_spec(void)
{
    if (!train_spec.count)
    {
        train_spec.count = cp_build_table(train_table, train_options, TRAIN_OWN, TRAIN_CP_AT,
                                          AT(cpf), "CP ranks per sequence (world = TP x CP x DP).");
        cp_flags_allow_auto(train_table, train_spec.count);
    }
    return &train_spec;
}

/* ---- the run ------------------------------------------------------------------ */

typedef struct train_run {
    train_cfg c;
    int rank, world;
    cpa_grid *grid; /* CP groups of consecutive ranks, DP across them */
    cpa_gpt *model;
    cpa_data *data;
    cpa_adamw opt;
    float *adam_m, *adam_v;
    int32_t *tokens;     /* [B, S+1] */
    uint8_t *long_range; /* [B, S] long-range flags of each sample */
    int64_t *positions;  /* [B, S] RoPE positions (--reset-position-ids) */
    uint8_t *loss_mask;  /* [B, S] (--eod-mask-loss) */
    int64_t *cu_seqlens; /* [B, S+1] each sample's documents (--reset-attention-mask) */
    int64_t *num_docs;   /* [B] */
    int32_t *scratch;    /* [S+1] one sample, for counting a batch's targets */
    int64_t accum, start_iter, n;
    tool_ceilings ceil; /* this rank's FMA peak and sgemm, the minimum over ranks */
    double mem_estimate; /* bytes per rank, estimated before allocating */
    char shape[512];
} train_run;

static int check_rules(cli_args *args, train_cfg *c, int world)
{
    const cli_spec *sp = cmd_train_spec();
    if (!cli_given(args, "--num-query-groups")) {
        c->G = c->gqa ? 1 : c->H;
        cli_mark_derived(args, "--num-query-groups", c->gqa ? "--group-query-attention" : "= H");
    }
    if (!cli_given(args, "--ffn-hidden-size")) {
        c->F = 4 * c->C;
        cli_mark_derived(args, "--ffn-hidden-size", "= 4 x --hidden-size");
    }
    if (c->C % c->H != 0)
        return cli_usage(sp, "--hidden-size %lld: must be divisible by --num-attention-heads %lld",
                         (long long)c->C, (long long)c->H);
    if ((c->C / c->H) % 2 != 0)
        return cli_usage(sp, "--hidden-size %lld / --num-attention-heads %lld = head dim %lld: "
                         "must be even (RoPE rotates pairs)", (long long)c->C, (long long)c->H,
                         (long long)(c->C / c->H));
    if (world % (c->tp * c->cpf.cp) != 0)
        return cli_usage(sp, "--tensor-model-parallel-size %lld x --context-parallel-size %lld: "
                         "must divide the %d MPI ranks (world = TP x CP x DP)", (long long)c->tp,
                         (long long)c->cpf.cp, world);
    const int64_t dp = world / (c->tp * c->cpf.cp);
    if (c->tp > 1) {
        cpa_gpt_config rules;
        memset(&rules, 0, sizeof rules);
        rules.heads = c->H, rules.kv_heads = c->G, rules.hidden = c->C, rules.ffn_hidden = c->F;
        rules.cp.tp_size = (int)c->tp;
        if (cpa_gpt_tp_rules(&rules) != CPA_OK)
            return cli_usage(sp, "%s", cpa_last_error());
        /* The request's head rules, with the full H (each TP rank's plan sees H/TP). */
        if (c->cpf.algo == CPA_ALGO_ULYSSES && c->H % (c->tp * c->cpf.cp) != 0)
            return cli_usage(sp, "--num-attention-heads %lld is not divisible by "
                             "--tensor-model-parallel-size %lld x --context-parallel-size %lld "
                             "(ulysses_cp_algo: H %% (TP*CP) == 0)", (long long)c->H,
                             (long long)c->tp, (long long)c->cpf.cp);
        if (c->cpf.algo == CPA_ALGO_HYBRID && c->cpf.ulysses > 1 &&
            c->H % (c->tp * c->cpf.ulysses) != 0)
            return cli_usage(sp, "--num-attention-heads %lld is not divisible by "
                             "--ulysses-degree-in-cp %lld x --tensor-model-parallel-size %lld "
                             "(hybrid_cp_algo: H %% (U*TP) == 0)", (long long)c->H,
                             (long long)c->cpf.ulysses, (long long)c->tp);
    }
    if (!cli_given(args, "--global-batch-size")) {
        c->GB = c->B * dp;
        cli_mark_derived(args, "--global-batch-size", "= micro batch x DP");
    }
    if (c->GB % (c->B * dp) != 0)
        return cli_usage(sp, "--global-batch-size %lld: must be a multiple of --micro-batch-size "
                         "%lld x data-parallel size %lld", (long long)c->GB, (long long)c->B,
                         (long long)dp);
    if (c->min_lr > c->lr)
        return cli_usage(sp, "--min-lr %g: must not exceed --lr %g", c->min_lr, c->lr);
    /* Per-sample documents change every step: an assignment made at plan
     * time from documents cannot follow them. */
    if (c->reset_attention_mask && c->cpf.balance == CPA_BALANCE_DOCUMENTS)
        return cli_usage(sp, "--reset-attention-mask: each sample has its own documents, so "
                         "--cp-load-balance documents (one assignment from plan-time documents) "
                         "cannot follow them; use --cp-load-balance zigzag");
    if (c->synthetic_documents && c->data_path)
        return cli_usage(sp, "--synthetic-documents: is the built-in data; it does not go with "
                         "--data-path %s", c->data_path);
    if ((c->reset_position_ids || c->eod_mask_loss || c->reset_attention_mask) && !c->data_path &&
        !c->synthetic_documents)
        return cli_usage(sp, "%s: needs documents: an indexed dataset (--data-path PREFIX) or "
                         "--synthetic-documents; the copy task has no end-of-document token",
                         c->reset_position_ids   ? "--reset-position-ids"
                         : c->reset_attention_mask ? "--reset-attention-mask"
                                                   : "--eod-mask-loss");
    c->vocab_given = cli_given(args, "--vocab-size");
    c->split_given = cli_given(args, "--split");
    c->eod_given = cli_given(args, "--eod-token");
    return 0;
}

/* The data source the flags name, made on every rank (exit code agreed):
 * an indexed dataset, a text file, or one of the copy tasks.  Rules that
 * need to know which kind --data-path is are checked here. */
static int make_data(train_run *r)
{
    const train_cfg *c = &r->c;
    const uint64_t seed = (uint64_t)c->seed;
    cpa_status s;
    int err = 0;
    if (c->data_path && cpa_data_is_indexed(c->data_path)) {
        double w[3];
        s = cpa_data_split_parse(c->split, w);
        if (s == CPA_OK)
            s = cpa_data_indexed_create(c->data_path, c->S, w, c->vocab_given ? c->vocab : 0,
                                        c->eod_token, seed, &r->data);
        else
            err = tool_fail(2, "--split: %s", cpa_last_error());
    } else if (c->data_path) {
        const char *flag = c->split_given ? "--split" : c->eod_given ? "--eod-token"
                           : c->reset_position_ids ? "--reset-position-ids"
                           : c->eod_mask_loss ? "--eod-mask-loss" : NULL;
        if (c->vocab_given && c->vocab != 32)
            err = tool_fail(2, "--vocab-size %lld: text data is byte-level (256); drop the flag",
                            (long long)c->vocab);
        else if (flag)
            err = tool_fail(2, "%s: needs an indexed dataset (PREFIX.bin + PREFIX.idx, made by "
                            "cpattn preprocess); --data-path %s is read as a text file, which "
                            "has no documents", flag, c->data_path);
        s = err ? CPA_OK : cpa_data_text_create(c->data_path, c->S, 0.1, seed, &r->data);
    } else {
        s = c->synthetic_documents ? cpa_data_packed_create(c->S, c->vocab, seed, &r->data)
                                   : cpa_data_synthetic_create(c->S, c->vocab, seed, &r->data);
    }
    /* Name the flag: the library's message names only the file.  A
     * malformed dataset is bad input (exit 2), like a bad flag. */
    if (!err && s != CPA_OK)
        err = tool_fail(s == CPA_ERR_ARG || s == CPA_ERR_FORMAT ? 2 : 1, "%s%s",
                        c->data_path ? "--data-path: " : "", cpa_last_error());
    return tool_agree(err);
}

/* --context-parallel-algo auto: the planner on this rank's CP group, over
 * the attention each TP rank runs (H/TP heads, its KV heads), then world
 * rank 0's choice for everyone, so every group and replica runs the same
 * configuration (groups calibrate at once and could differ by noise). */
static int choose_algo(train_run *r)
{
    train_cfg *c = &r->c;
    const int64_t tp = c->tp;
    cpa_cp_config base = {.cp_size = (int)c->cpf.cp, .window = 1, .ulysses_degree = 1,
                          .tp_size = 1, .batch = c->B, .seq_length = c->S,
                          .num_heads = c->H / tp, .num_kv_heads = c->G >= tp ? c->G / tp : 1,
                          .head_dim = c->C / c->H, .v_head_dim = c->C / c->H,
                          .num_threads = (int)c->threads};
    cp_flags_apply(&c->cpf, &base);
    base.algo = CPA_ALGO_RING;
    base.layout = c->cpf.bnsd ? CPA_LAYOUT_BNSD : CPA_LAYOUT_BSHD;
    cpa_planner_options opt = {.iters = 2};
    cpa_plan_candidate *k = NULL;
    cpa_planner_calibration cal;
    int n = 0, err = 0;
    int pick[4] = {0, 1, 1, 0};
    cpa_status s = cpa_planner_run(cpa_grid_comm(r->grid, CPA_GRID_CP), &base, &opt, &k, &n,
                                   &cal);
    if (s != CPA_OK)
        err = tool_fail(s == CPA_ERR_ARG ? 2 : 1, "--context-parallel-algo auto: %s",
                        cpa_last_error());
    else
        pick[0] = (int)k[0].config.algo, pick[1] = k[0].config.window,
        pick[2] = k[0].config.ulysses_degree, pick[3] = k[0].config.send_recv_overlap;
    if ((err = tool_agree(err)))
        return err;
    if (cpa_comm_bcast(pick, 4, MPI_INT, 0, MPI_COMM_WORLD, "the planner's choice") != CPA_OK)
        err = tool_fail(1, "--context-parallel-algo auto: %s", cpa_last_error());
    if (!err) {
        c->cpf.algo = pick[0], c->cpf.window = pick[1], c->cpf.ulysses = pick[2];
        c->cpf.overlap = pick[3];
        cpa_cp_config chosen = base;
        chosen.algo = (cpa_algo)pick[0], chosen.window = pick[1];
        chosen.ulysses_degree = pick[2], chosen.send_recv_overlap = pick[3];
        char flags[192];
        cpa_plan_flags(&chosen, flags, sizeof flags);
        tool_say("# --context-parallel-algo auto: the planner chose %s (of %d configurations; "
                 "predicted %.2f ms attention fwd+bwd per layer per micro-batch; calibration "
                 "%.1f s on %d host(s))\n",
                 flags, n, 1e3 * (k[0].fwd_s + k[0].bwd_s), cal.seconds, cal.hosts);
    }
    cpa_planner_free(k);
    return tool_agree(err);
}

static int setup(train_run *r)
{
    train_cfg *c = &r->c;
    r->accum = c->GB / (c->B * cpa_grid_size(r->grid, CPA_GRID_DP));
    omp_set_num_threads((int)c->threads);

    int err = make_data(r);
    if (err)
        return err;

    cpa_gpt_config g;
    memset(&g, 0, sizeof g);
    g.num_layers = c->L, g.hidden = c->C, g.ffn_hidden = c->F, g.heads = c->H, g.kv_heads = c->G;
    g.vocab = cpa_data_vocab(r->data), g.seq_length = c->S, g.micro_batch = c->B;
    g.recompute = c->recompute, g.rope_base = 10000.0f, g.norm_eps = 1e-5f;
    g.sample_documents = c->reset_attention_mask;
    g.sequence_parallel = c->sequence_parallel && c->tp > 1;
    cp_flags_apply(&c->cpf, &g.cp);
    g.cp.tp_size = (int)c->tp;
    g.cp.layout = c->cpf.bnsd ? CPA_LAYOUT_BNSD : CPA_LAYOUT_BSHD;
    g.cp.num_threads = (int)c->threads;
    /* The peak memory, estimated before anything big is allocated: the
     * model (parameters, gradients, activations, the attention plan), the
     * AdamW moments, the batch, and an allowance for the libraries (MPI,
     * OpenBLAS's buffers) and the start-up sgemm's 48 MiB, measured at
     * 66-69 MiB for a tiny model.  Over the container's or machine's limit
     * the run is refused here rather than OOM-killed later. */
    int64_t np = 0;
    int64_t model_bytes = cpa_gpt_memory_bytes(&g, (int)c->cpf.cp, &np);
    r->mem_estimate = (model_bytes > 0 ? (double)model_bytes : 0.0) + 8.0 * (double)np +
                      4.0 * (double)((c->B + 1) * (c->S + 1)) + 10.0 * (double)(c->B * c->S) +
                      96.0 * 1048576.0;
    err = tool_check_memory("this training run", r->mem_estimate);
    if ((err = tool_agree(err)))
        return err;
    cpa_status s = cpa_gpt_create_tp(&g, cpa_grid_comm(r->grid, CPA_GRID_CP),
                                     cpa_grid_comm(r->grid, CPA_GRID_TP), &r->model);
    /* The plan's verdict is the same on every rank of a CP group, and every
     * group has the same configuration. */
    err = s == CPA_OK ? 0 : tool_fail(s == CPA_ERR_ARG ? 2 : 1, "%s", cpa_last_error());
    if ((err = tool_agree(err)))
        return err;

    r->n = cpa_gpt_num_params(r->model);
    r->adam_m = cpa_alloc_floats(r->n);
    r->adam_v = cpa_alloc_floats(r->n);
    r->tokens = malloc(sizeof(int32_t) * (size_t)(c->B * (c->S + 1)));
    r->long_range = malloc((size_t)(c->B * c->S));
    r->positions = malloc(sizeof(int64_t) * (size_t)(c->B * c->S));
    r->loss_mask = malloc((size_t)(c->B * c->S));
    r->cu_seqlens = malloc(sizeof(int64_t) * (size_t)(c->B * (c->S + 1)));
    r->num_docs = malloc(sizeof(int64_t) * (size_t)c->B);
    r->scratch = malloc(sizeof(int32_t) * (size_t)(c->S + 1));
    err = (!r->adam_m || !r->adam_v || !r->tokens || !r->long_range || !r->positions ||
           !r->loss_mask || !r->cu_seqlens || !r->num_docs || !r->scratch)
              ? tool_fail(1, "out of memory for the optimizer state and the batch")
              : 0;
    if ((err = tool_agree(err)))
        return err;
    memset(r->adam_m, 0, sizeof(float) * (size_t)r->n);
    memset(r->adam_v, 0, sizeof(float) * (size_t)r->n);
    cpa_gpt_init_params(r->model, (uint64_t)c->seed);
    cpa_gpt_shape_string(r->model, r->shape, sizeof r->shape);

    r->opt.lr = (float)c->lr, r->opt.min_lr = (float)c->min_lr;
    r->opt.beta1 = 0.9f, r->opt.beta2 = 0.95f, r->opt.eps = 1e-8f;
    r->opt.weight_decay = (float)c->wd, r->opt.warmup_iters = c->warmup;
    r->opt.decay_iters = c->iters;
    /* The ceilings are what one rank's cores do undisturbed, a property of
     * the host's cores: the first rank of each host measures while the
     * others wait, and the slowest host's figures are the ceiling. */
    err = 0;
    double ce[2] = {INFINITY, INFINITY}; /* a host's other ranks do not count in the minimum */
    if (cpa_grid_host_rank(r->grid) == 0) {
        err = tool_measure_ceilings(CPA_ISA_AUTO, (int)c->threads, 2048, 3, &r->ceil);
        ce[0] = r->ceil.fma_gflops, ce[1] = r->ceil.sgemm_gflops;
    }
    cpa_comm_bcast(&r->ceil, (int)sizeof r->ceil, MPI_BYTE, 0, cpa_grid_host(r->grid),
                   "the ceiling measurement");
    if ((err = tool_agree(err ? tool_fail(err, "%s", cpa_last_error()) : 0)))
        return err;
    cpa_comm_allreduce(ce, 2, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD, "the ceilings");
    r->ceil.fma_gflops = ce[0], r->ceil.sgemm_gflops = ce[1];
    return 0;
}

static void teardown(train_run *r)
{
    cpa_gpt_destroy(r->model);
    cpa_data_destroy(r->data);
    free(r->adam_m);
    free(r->adam_v);
    free(r->tokens);
    free(r->long_range);
    free(r->positions);
    free(r->loss_mask);
    free(r->cu_seqlens);
    free(r->num_docs);
    free(r->scratch);
    cpa_grid_destroy(r->grid);
}

/* A checkpoint holds the logical (TP = 1) parameters and AdamW moments,
 * whatever the TP, CP and DP sizes that wrote it, so any grid can resume
 * it: the replicas (CP, DP) hold the same values, and the TP shards are
 * gathered into the logical arrays on world rank 0 when saving and taken
 * from them by every rank when loading. */
static const char *const ckpt_names[3] = {"params", "adam_m", "adam_v"};

static float *local_array(train_run *r, int i)
{
    return i == 0 ? cpa_gpt_params_buffer(r->model) : i == 1 ? r->adam_m : r->adam_v;
}

/* The logical arrays: the local ones at TP = 1, else n_logical floats each
 * (freed by free_logical). */
static int logical_arrays(train_run *r, cpa_ckpt_array a[3])
{
    const int tp = cpa_grid_size(r->grid, CPA_GRID_TP);
    const int64_t n = tp == 1 ? r->n : cpa_gpt_logical_params(r->model);
    int err = 0;
    for (int i = 0; i < 3; ++i) {
        a[i] = (cpa_ckpt_array){ckpt_names[i], tp == 1 ? local_array(r, i) : NULL, n};
        if (tp > 1 && !(a[i].data = calloc((size_t)n, sizeof(float))))
            err = tool_fail(1, "out of memory: the checkpoint's logical %s (%lld floats)",
                            ckpt_names[i], (long long)n);
    }
    return err;
}

static void free_logical(train_run *r, cpa_ckpt_array a[3])
{
    if (cpa_grid_size(r->grid, CPA_GRID_TP) > 1)
        for (int i = 0; i < 3; ++i)
            free(a[i].data);
}

/* World rank 0's TP group (the first replica) sends its shards to it,
 * which scatters them into the logical arrays. */
static int gather_shards(train_run *r, cpa_ckpt_array a[3])
{
    const int tp = cpa_grid_size(r->grid, CPA_GRID_TP);
    if (tp == 1 || cpa_grid_rank(r->grid, CPA_GRID_CP) != 0 ||
        cpa_grid_rank(r->grid, CPA_GRID_DP) != 0)
        return 0;
    const int root = cpa_grid_rank(r->grid, CPA_GRID_TP) == 0;
    float *all = NULL;
    if (root && !(all = malloc(sizeof(float) * (size_t)(r->n * tp))))
        return tool_fail(1, "out of memory: gathering the TP shards (%lld floats)",
                         (long long)(r->n * tp));
    MPI_Comm comm = cpa_grid_comm(r->grid, CPA_GRID_TP);
    int err = 0;
    for (int i = 0; i < 3 && !err; ++i) {
        MPI_Request req;
        int rc = MPI_Igather(local_array(r, i), (int)r->n, MPI_FLOAT, all, (int)r->n, MPI_FLOAT, 0,
                             comm, &req);
        if (rc != MPI_SUCCESS)
            err = tool_fail_mpi(1, rc, "gathering the TP shards of the checkpoint");
        else if (cpa_comm_wait(1, &req, "gathering the TP shards of %s", ckpt_names[i]) != CPA_OK)
            err = tool_fail(1, "%s", cpa_last_error());
        for (int t = 0; root && !err && t < tp; ++t)
            cpa_gpt_to_logical(r->model, t, all + (int64_t)t * r->n, a[i].data);
    }
    free(all);
    return err;
}

static int save(train_run *r, int64_t iters_done)
{
    cpa_ckpt_array a[3];
    int err = logical_arrays(r, a);
    if (!err)
        err = gather_shards(r, a);
    if (!err && r->rank == 0) {
        cpa_ckpt_meta meta;
        memset(&meta, 0, sizeof meta);
        meta.iteration = iters_done;
        meta.rng_state = (uint64_t)r->c.seed;
        snprintf(meta.config, sizeof meta.config, "%s", r->shape);
        cpa_status s = cpa_ckpt_save(r->c.save, &meta, a, 3);
        if (s != CPA_OK)
            err = tool_fail(1, "cannot save the checkpoint: %s", cpa_last_error());
        else
            tool_say(" saved checkpoint at iteration %lld to %s\n", (long long)iters_done, r->c.save);
    }
    free_logical(r, a);
    return tool_agree(err);
}

static int load(train_run *r)
{
    cpa_ckpt_meta meta;
    cpa_ckpt_array a[3];
    int err = tool_agree(logical_arrays(r, a));
    if (err) {
        free_logical(r, a);
        return err;
    }
    cpa_status s = cpa_ckpt_load(r->c.load, r->shape, &meta, a, 3);
    err = s == CPA_OK ? 0 : tool_fail(s == CPA_ERR_ARG ? 2 : 1, "--load %s: %s", r->c.load,
                                      cpa_last_error());
    if (!err && cpa_grid_size(r->grid, CPA_GRID_TP) > 1) /* this rank's shards */
        for (int i = 0; i < 3; ++i)
            cpa_gpt_from_logical(r->model, a[i].data, local_array(r, i));
    free_logical(r, a);
    if ((err = tool_agree(err)))
        return err;
    /* The loader refuses a negative iteration; resuming below one would
     * rewind the run (and, with --save on the same folder, relabel the
     * checkpoint). */
    if (meta.iteration > r->c.iters)
        err = tool_fail(2, "--train-iters %lld is below the iteration of the checkpoint in --load "
                        "%s (%lld): resuming would rewind it; give --train-iters %lld or more",
                        (long long)r->c.iters, r->c.load, (long long)meta.iteration,
                        (long long)meta.iteration);
    if ((err = tool_agree(err)))
        return err;
    r->start_iter = meta.iteration;
    tool_say(" resumed from %s at iteration %lld\n", r->c.load, (long long)meta.iteration);
    return 0;
}

/* Before any work, on rank 0: a run that does not resume the checkpoint
 * already in --save must not replace it unless told (--overwrite-save);
 * and the temporaries of crashed saves there are removed. */
static int guard_save(train_run *r)
{
    const train_cfg *c = &r->c;
    int err = 0;
    if (r->rank == 0 && c->save) {
        int removed = cpa_ckpt_sweep(c->save);
        if (removed)
            tool_say(" removed %d temporar%s of interrupted saves in %s\n", removed,
                     removed == 1 ? "y" : "ies", c->save);
        const int resumes_it = c->load && !strcmp(c->load, c->save);
        cpa_ckpt_meta old;
        if (!resumes_it && cpa_ckpt_exists(c->save)) {
            int peek = cpa_ckpt_peek(c->save, &old) == CPA_OK;
            const char *other = peek && strcmp(old.config, r->shape) != 0 ? ", of a different "
                                                                            "model shape" : "";
            char it[48] = "";
            if (peek)
                snprintf(it, sizeof it, " (iteration %lld%s)", (long long)old.iteration, other);
            if (!c->overwrite_save)
                err = tool_fail(2, "--save %s already holds a checkpoint%s that this run does "
                                "not resume: pass --load %s to resume it, another --save folder, "
                                "or --overwrite-save to replace it", c->save, it, c->save);
            else
                tool_say(" --overwrite-save: this run will replace the checkpoint in %s%s\n",
                         c->save, it);
        }
    }
    return tool_agree(err);
}

/* The targets that take a loss in the global batch of iteration `it`: all
 * GB·S of them, or with --eod-mask-loss those whose input is not an EOD.
 * Every rank counts every sample of the batch (a pure function of the
 * data), so all agree without communicating, before any gradient. */
static int64_t batch_targets(train_run *r, int split, int64_t it)
{
    const train_cfg *c = &r->c;
    if (!c->eod_mask_loss)
        return c->GB * c->S;
    const int64_t eod = cpa_data_eod(r->data);
    int64_t n = 0;
    for (int64_t j = 0; j < c->GB; ++j) {
        cpa_data_sample(r->data, split, it * c->GB + j, r->scratch);
        for (int64_t t = 0; t < c->S; ++t)
            n += r->scratch[t] != eod;
    }
    return n;
}

/* One pass over the global batch of iteration `it` (split `split`): the
 * summed losses over every rank and, when training, summed gradients; the
 * loss is the mean over the batch's targets that count (sums[3] of them). */
static int batch_pass(train_run *r, int split, int64_t it, int backward, double sums[4])
{
    const train_cfg *c = &r->c;
    const int64_t targets = batch_targets(r, split, it);
    const float scale = targets > 0 ? 1.0f / (float)targets : 0.0f;
    const int dp = cpa_grid_size(r->grid, CPA_GRID_DP);
    const int dp_rank = cpa_grid_rank(r->grid, CPA_GRID_DP);
    const cpa_gpt_batch batch = {r->tokens, r->long_range,
                                 c->reset_position_ids ? r->positions : NULL,
                                 c->eod_mask_loss ? r->loss_mask : NULL,
                                 c->reset_attention_mask ? r->cu_seqlens : NULL,
                                 c->reset_attention_mask ? r->num_docs : NULL};
    sums[0] = sums[1] = sums[2] = 0.0;
    sums[3] = (double)targets;
    for (int64_t m = 0; m < r->accum; ++m) {
        for (int64_t b = 0; b < c->B; ++b) {
            int64_t index = it * c->GB + (m * dp + dp_rank) * c->B + b;
            int32_t *tok = r->tokens + b * (c->S + 1);
            cpa_data_sample(r->data, split, index, tok);
            cpa_data_sample_long_range(r->data, split, index, r->long_range + b * c->S);
            if (c->reset_position_ids)
                cpa_data_sample_positions(r->data, tok, r->positions + b * c->S);
            if (c->eod_mask_loss)
                cpa_data_sample_loss_mask(r->data, tok, r->loss_mask + b * c->S);
            if (c->reset_attention_mask)
                r->num_docs[b] =
                    cpa_data_sample_documents(r->data, tok, r->cu_seqlens + b * (c->S + 1));
        }
        double l, ls, lc;
        const int64_t tt = cpa_trace_begin();
        cpa_status s = cpa_gpt_step_batch(r->model, &batch, scale, backward, &l, &ls, &lc);
        cpa_trace_end(tt, backward ? "micro-batch" : "evaluation batch", CPA_TRACE_MODEL, 0,
                      (cpa_trace_arg[]){{"micro_batch", (double)m}, {"iteration", (double)it}}, 2);
        if (s != CPA_OK)
            return tool_agree(tool_fail(1, "step %lld: %s", (long long)it, cpa_last_error()));
        sums[0] += l, sums[1] += ls, sums[2] += lc;
    }
    if (cpa_grid_sum_losses(r->grid, sums, 3) != CPA_OK)
        return tool_agree(tool_fail(1, "%s", cpa_last_error()));
    return tool_agree(0);
}

static int evaluate(train_run *r, int64_t it)
{
    double tot[4] = {0, 0, 0, 0}, sums[4];
    for (int64_t e = 0; e < r->c.eval_iters; ++e) {
        int err = batch_pass(r, CPA_DATA_EVAL, e, 0, sums);
        if (err)
            return err;
        tot[0] += sums[0], tot[1] += sums[1], tot[2] += sums[2], tot[3] += sums[3];
    }
    tool_say(" eval at iteration %lld: loss %.4f", (long long)it, tot[3] > 0 ? tot[0] / tot[3] : 0.0);
    if (tot[2] > 0)
        tool_say(" | long-range loss %.4f", tot[1] / tot[2]);
    tool_say("\n");
    return 0;
}

static int train(train_run *r)
{
    const train_cfg *c = &r->c;
    float *grads = cpa_gpt_grads_buffer(r->model), *params = cpa_gpt_params_buffer(r->model);
    double window_t = 0.0, window_flops = 0.0, total_t = 0.0, last_loss = NAN, last_long = NAN;
    int64_t window_n = 0, done = 0, saved_at = -1, exit_at = -1;
    /* Bytes per rank and iteration: TP collectives and CP attention as the
     * model counts them, the replicas' gradient all-reduce by its ring
     * volume 2(R-1)/R of the gradients. */
    const int reps = cpa_grid_size(r->grid, CPA_GRID_CP) * cpa_grid_size(r->grid, CPA_GRID_DP);
    const double grad_bytes = 4.0 * (double)r->n * 2.0 * (reps - 1) / reps;
    double window_tp = 0.0, window_cp = 0.0;
    if (r->start_iter == c->iters) {
        tool_say(" the checkpoint is already at --train-iters %lld: nothing to train (raise "
                 "--train-iters to continue); the checkpoint is left as it is\n",
                 (long long)c->iters);
        return 0;
    }
    for (int64_t it = r->start_iter; it < c->iters; ++it) {
        double t0 = MPI_Wtime();
        const int64_t trace_it = cpa_trace_begin(); /* the iteration's span (docs/trace.md) */
        cpa_gpt_comm_stats_reset(r->model);
        memset(grads, 0, sizeof(float) * (size_t)r->n);
        double sums[4];
        int err = batch_pass(r, CPA_DATA_TRAIN, it, 1, sums);
        if (err)
            return err;
        /* Megatron's finalize_model_grads: the TP-shared tensors' partial
         * gradients, then the replicas' sum. */
        int64_t tt = cpa_trace_begin();
        if (cpa_gpt_reduce_shared_grads(r->model, grads) != CPA_OK ||
            cpa_grid_sum_grads(r->grid, grads, r->n) != CPA_OK)
            return tool_agree(tool_fail(1, "%s", cpa_last_error()));
        cpa_trace_end(tt, "gradient reduction", CPA_TRACE_MODEL, 0,
                      (cpa_trace_arg[]){{"bytes", 4.0 * (double)r->n}}, 1);
        double norm = cpa_gpt_grad_norm(r->model, grads); /* TP: shards' squares summed */
        /* Megatron's guard: a NaN or Inf loss or gradient stops the run
         * before the update, so neither the weights nor any checkpoint ever
         * hold that state.  Every rank has the same sums and norm. */
        if (!isfinite(sums[0]) || !isfinite(norm)) {
            return tool_agree(tool_fail(1, "iteration %lld: the %s is %s; training stops before "
                                        "the update (no checkpoint is written from this state%s)",
                                        (long long)(it + 1), isfinite(sums[0]) ? "gradient norm" : "loss",
                                        isnan(isfinite(sums[0]) ? norm : sums[0]) ? "NaN" : "infinite",
                                        saved_at > 0 ? "; the last one saved is intact" : ""));
        }
        float clip = (c->clip > 0 && norm > c->clip) ? (float)(c->clip / norm) : 1.0f;
        float lr = cpa_lr_at(&r->opt, it);
        tt = cpa_trace_begin();
        cpa_adamw_update(&r->opt, params, grads, r->adam_m, r->adam_v, cpa_gpt_decay_mask(r->model),
                         r->n, it + 1, lr, clip);
        cpa_trace_end(tt, "optimizer step", CPA_TRACE_MODEL, 0,
                      (cpa_trace_arg[]){{"parameters", (double)r->n}}, 1);
        cpa_trace_end(trace_it, "iteration", CPA_TRACE_MODEL, 0,
                      (cpa_trace_arg[]){{"iteration", (double)(it + 1)}}, 1);
        double dt = MPI_Wtime() - t0;
        window_t += dt, total_t += dt, ++window_n, ++done;
        window_flops += cpa_gpt_step_flops(r->model) * (double)r->accum;
        cpa_gpt_comm_stats cs;
        cpa_gpt_comm_stats_get(r->model, &cs);
        window_tp += cs.tp_bytes, window_cp += cs.cp_bytes;
        last_loss = sums[3] > 0 ? sums[0] / sums[3] : 0.0;
        last_long = sums[2] > 0 ? sums[1] / sums[2] : NAN;
        if ((it + 1) % c->log_interval == 0 || it + 1 == c->iters) {
            double ms = 1e3 * window_t / (double)window_n;
            double tps = (double)(c->GB * c->S) * (double)window_n / window_t;
            double tflops = window_flops / window_t / 1e12; /* this rank */
            double mem = tool_peak_rss_mib();
            cpa_comm_allreduce(&mem, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD, "the peak memory");
            tool_say(" iteration %6lld/%6lld | loss %.6f", (long long)(it + 1), (long long)c->iters,
                     last_loss);
            if (!isnan(last_long))
                tool_say(" | long-range loss %.6f", last_long);
            /* MFU: model flops per second over the FMA peak (a hard ceiling),
             * and over the sgemm this BLAS reaches. */
            tool_say(" | lr %.3e | grad norm %.3f | %.1f ms/iter | %.0f tokens/s | %.3f TFLOP/s "
                     "per rank | MFU %.2f (sgemm %.2f) | peak mem %.0f MiB | MiB/iter per rank: "
                     "TP %.3f CP %.3f grads %.3f\n",
                     (double)lr, norm, ms, tps, tflops, tflops * 1e3 / r->ceil.fma_gflops,
                     tflops * 1e3 / r->ceil.sgemm_gflops, mem,
                     window_tp / window_n / 1048576.0, window_cp / window_n / 1048576.0,
                     grad_bytes / 1048576.0);
            fflush(stdout);
            window_t = window_flops = window_tp = window_cp = 0.0;
            window_n = 0;
        }
        if (c->eval_interval > 0 && (it + 1) % c->eval_interval == 0 && (err = evaluate(r, it + 1)))
            return err;
        if (c->save && c->save_interval > 0 && (it + 1) % c->save_interval == 0) {
            if ((err = save(r, it + 1)))
                return err;
            saved_at = it + 1;
        }
        /* Megatron's --exit-interval: stop after an iteration divisible by
         * it, with a checkpoint when --save is given, and no final eval. */
        if (c->exit_interval > 0 && (it + 1) % c->exit_interval == 0 && it + 1 < c->iters) {
            exit_at = it + 1;
            break;
        }
    }
    const int64_t end = exit_at > 0 ? exit_at : c->iters;
    /* A final evaluation, unless stopping early or the interval just made one. */
    const int evaluated = c->eval_interval > 0 && c->iters % c->eval_interval == 0;
    int err = (exit_at > 0 || evaluated) ? 0 : evaluate(r, c->iters);
    /* Not twice: the last --save-interval checkpoint may be this one. */
    if (!err && c->save && saved_at != end)
        err = save(r, end);
    if (err)
        return err;
    if (exit_at > 0)
        tool_say(" exiting at iteration %lld (--exit-interval %lld)\n", (long long)exit_at,
                 (long long)c->exit_interval);
    double mem = tool_peak_rss_mib();
    cpa_comm_allreduce(&mem, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD, "the peak memory");
    tool_say("summary: %lld iterations in %.1f s | final loss %.4f", (long long)done, total_t,
             last_loss);
    if (!isnan(last_long))
        tool_say(" | final long-range loss %.4f", last_long);
    tool_say(" | %.0f tokens/s | peak mem per rank %.0f MiB\n",
             done ? (double)(c->GB * c->S) * (double)done / total_t : 0.0, mem);
    return 0;
}

static int train_main(int argc, char **argv)
{
    train_run r;
    memset(&r, 0, sizeof r);
    r.rank = tool_rank(), r.world = tool_world_size();
    cli_args args;
    cli_result pr = cli_parse(&args, cmd_train_spec(), &r.c, argc, argv);
    if (pr == CLI_HELP)
        return 0;
    if (pr == CLI_USAGE)
        return 2;
    cpa_set_comm_timeout(r.c.cpf.comm_timeout);
    int rc = check_rules(&args, &r.c, r.world);
    if (rc)
        return rc;
    /* An unwritable --save would otherwise be found at the first save:
     * with --save-interval 0, after the whole run. */
    if (r.c.save && (rc = tool_agree(r.rank == 0 ? tool_check_output_dir("--save", r.c.save) : 0)))
        return rc;
    if (r.c.trace && (rc = tool_agree(r.rank == 0 ? trace_check_path(r.c.trace) : 0)))
        return rc; /* --trace's folder, before any work */
    cpa_grid_config grid = {.cp_size = (int)r.c.cpf.cp, .tp_size = (int)r.c.tp};
    cpa_status gs = cpa_grid_create(MPI_COMM_WORLD, &grid, &r.grid);
    rc = gs == CPA_OK ? 0 : tool_fail(gs == CPA_ERR_ARG ? 2 : 1, "%s", cpa_last_error());
    if ((rc = tool_agree(rc)))
        return rc;
    if (r.rank == 0) {
        char layout[128];
        cli_print_config(&args, stdout, "# ");
        printf("# %s\n", cpa_grid_describe(r.grid, layout, sizeof layout));
    }
    if (r.c.cpf.algo == CP_ALGO_AUTO && (rc = choose_algo(&r)))
        return rc;
    rc = setup(&r);
    if (!rc) {
        char data[1024];
        cpa_data_describe(r.data, data, sizeof data);
        tool_say("# data: %s\n", data);
        /* Any S: CP ranks may hold counts that differ by a few tokens. */
        long long tok[2] = {cpa_gpt_local_tokens(r.model), -cpa_gpt_local_tokens(r.model)};
        if (cpa_comm_allreduce(tok, 2, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD,
                               "the tokens per rank") != CPA_OK)
            tok[1] = -tok[0];
        char per[64];
        if (tok[0] == -tok[1])
            snprintf(per, sizeof per, "%lld", tok[0]);
        else
            snprintf(per, sizeof per, "%lld to %lld", -tok[1], tok[0]);
        tool_say("# model: %lld parameters, %s tokens per rank (S/CP), %lld micro-steps per "
                 "iteration\n", (long long)r.n, per, (long long)r.accum);
        char source[1200];
        int ranks = 1;
        double host = tool_host_total(r.mem_estimate, &ranks);
        double limit = tool_memory_limit(source, sizeof source);
        tool_say("# memory: estimated peak %.0f MiB per rank, %.0f MiB for the %d rank(s) of "
                 "this host; limit %.0f MiB (%s)\n", r.mem_estimate / 1048576.0,
                 host / 1048576.0, ranks, limit / 1048576.0, source);
        tool_say_platform(r.ceil.isa);
        tool_say_ceilings(&r.ceil);
        tool_say("# MFU = model TFLOP/s per rank / FMA peak per rank (model flops: docs/train.md)\n");
        if (r.c.sequence_parallel && r.c.tp == 1)
            tool_say("# --sequence-parallel: no effect at --tensor-model-parallel-size 1 "
                     "(Megatron turns it off too)\n");
        if (r.c.load)
            rc = load(&r);
    }
    if (!rc)
        rc = guard_save(&r);
    if (!rc && r.c.trace) /* the trace: the iterations, not the set-up */
        rc = trace_begin(r.c.trace_max);
    if (!rc)
        rc = train(&r);
    if (!rc && r.c.trace)
        rc = trace_finish(r.c.trace);
    cpa_trace_stop();
    teardown(&r);
    return rc;
}

int cmd_train(int argc, char **argv)
{
    return tool_mpi_command("cpattn train", 1, train_main, argc, argv);
}
