/*
 * cmd_export.c — `cpattn export`: a `cpattn train` checkpoint as a Hugging
 * Face Llama folder (model.safetensors + config.json; src/model/export.h
 * says why the model maps one to one).  One process.  With --loss-tokens
 * it also evaluates the checkpoint with cpattn's own model on the given
 * sequences and prints each one's mean loss, so that whoever loads the
 * export elsewhere can check they get the same numbers
 * (tests/python/test_export.py does, with an independent PyTorch model).
 */
#include "args.h"
#include "cmd.h"
#include "util.h"

#include "checkpoint.h"
#include "export.h"
#include "gpt.h"

#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What `cpattn train` builds its model with (cmd_train.c, setup): the
 * checkpoint's configuration text does not record them. */
#define TRAIN_ROPE_BASE 10000.0f
#define TRAIN_NORM_EPS 1e-5f

typedef struct export_cfg {
    const char *load, *out, *loss_tokens;
    int64_t max_positions;
} export_cfg;

#define AT(f) offsetof(export_cfg, f)
static const cli_option export_options[] = {
    {.flag = "--load", .type = CLI_STRING, .metavar = "CKPT",
     .help = "Checkpoint folder written by `cpattn train --save` (any TP/CP/DP grid).",
     .offset = AT(load)},
    {.flag = "--out", .type = CLI_STRING, .metavar = "DIR",
     .help = "Folder to write model.safetensors and config.json into (created if missing; both "
             "files replaced atomically).", .offset = AT(out)},
    {.flag = "--max-position-embeddings", .type = CLI_INT, .def = "4096",
     .help = "config.json's max_position_embeddings (RoPE works at any position; the "
             "checkpoint does not record the training length).", .min = 1, .max = 1LL << 40,
     .offset = AT(max_positions)},
    {.flag = "--loss-tokens", .type = CLI_STRING, .metavar = "FILE.npy",
     .help = "float32 .npy [N, S+1] of token ids: also print cpattn's mean next-token loss of "
             "each of the N sequences (inputs [:S], targets [1:]) under the checkpoint.",
     .offset = AT(loss_tokens)},
};

static const cli_spec export_spec = {
    .command = "cpattn export",
    .synopsis = "--load CKPT --out DIR [flags]",
    .description = "Write a trained GPT as a Hugging Face Llama model: model.safetensors "
                   "(float32; model.embed_tokens, model.layers.N.{self_attn.{q,k,v,o}_proj, "
                   "mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm}, "
                   "model.norm; the LM head tied) and config.json (LlamaForCausalLM).",
    .options = export_options,
    .count = (int)(sizeof export_options / sizeof export_options[0]),
    .epilog = "Example:\n"
              "  cpattn train --save ckpt --train-iters 100 && cpattn export --load ckpt --out "
              "hf\n"
              "  python3 -c \"import transformers as t; "
              "t.LlamaForCausalLM.from_pretrained('hf')\"\n",
};

/* The logical parameters of the checkpoint in `dir` (malloc'd) and its shape. */
static int load_params(const char *dir, cpa_llama_shape *shape, float **params)
{
    cpa_ckpt_meta meta;
    *params = NULL;
    if (!cpa_ckpt_exists(dir))
        return tool_fail(EXIT_USAGE, "--load %s: no checkpoint there (expected %s/checkpoint.bin "
                         "from cpattn train --save)", dir, dir);
    cpa_status s = cpa_ckpt_peek(dir, &meta);
    if (s == CPA_OK)
        s = cpa_llama_shape_parse(meta.config, shape);
    if (s != CPA_OK)
        return tool_fail(EXIT_USAGE, "--load %s: %s", dir, cpa_last_error());
    const int64_t n = cpa_llama_param_count(shape);
    float *buf = n > 0 ? malloc(sizeof(float) * (size_t)n * 3) : NULL;
    if (!buf)
        return tool_fail(EXIT_RUNTIME, "out of memory for the checkpoint (%lld parameters)",
                         (long long)n);
    /* The AdamW moments are read (the loader checks every array and the
     * checksum) and dropped. */
    cpa_ckpt_array a[3] = {{"params", buf, n}, {"adam_m", buf + n, n}, {"adam_v", buf + 2 * n, n}};
    s = cpa_ckpt_load(dir, meta.config, &meta, a, 3);
    if (s != CPA_OK) {
        free(buf);
        return tool_fail(s == CPA_ERR_ARG || s == CPA_ERR_FORMAT ? EXIT_USAGE : EXIT_RUNTIME,
                         "--load %s: %s", dir, cpa_last_error());
    }
    *params = buf;
    return 0;
}

/* cpattn's own forward on each sequence of the token file: one line per
 * sequence, "loss[i] = <mean loss>". */
static int print_losses(const char *path, const cpa_llama_shape *sh, const float *params)
{
    float *tok = NULL;
    int ndim = 0;
    int64_t shape[CPA_MAX_DIMS];
    if (cpa_npy_load(path, &tok, &ndim, shape) != CPA_OK)
        return tool_fail(EXIT_USAGE, "--loss-tokens: %s", cpa_last_error());
    int err = 0;
    if (ndim != 2 || shape[1] < 5)
        err = tool_fail(EXIT_USAGE, "--loss-tokens %s: expected a [N, S+1] array with S >= 4",
                        path);
    const int64_t N = ndim == 2 ? shape[0] : 0, S = ndim == 2 ? shape[1] - 1 : 0;
    int32_t *ids = err ? NULL : malloc(sizeof(int32_t) * (size_t)(N * (S + 1)));
    if (!err && !ids)
        err = tool_fail(EXIT_RUNTIME, "out of memory for the tokens");
    for (int64_t i = 0; !err && i < N * (S + 1); ++i) {
        const float t = tok[i];
        if (!(t >= 0.0f && t < (float)sh->vocab && t == floorf(t)))
            err = tool_fail(EXIT_USAGE, "--loss-tokens %s: element %lld is %g, not a token id in "
                            "[0, %lld)", path, (long long)i, (double)t, (long long)sh->vocab);
        else
            ids[i] = (int32_t)t;
    }
    cpa_gpt *model = NULL;
    if (!err) {
        cpa_gpt_config g;
        memset(&g, 0, sizeof g);
        g.num_layers = sh->layers, g.hidden = sh->hidden, g.ffn_hidden = sh->ffn_hidden;
        g.heads = sh->heads, g.kv_heads = sh->kv_heads, g.vocab = sh->vocab;
        g.seq_length = S, g.micro_batch = 1;
        g.rope_base = TRAIN_ROPE_BASE, g.norm_eps = TRAIN_NORM_EPS;
        g.cp.algo = CPA_ALGO_RING, g.cp.cp_size = 1, g.cp.window = 1, g.cp.tp_size = 1;
        g.cp.mask.kind = CPA_MASK_CAUSAL, g.cp.layout = CPA_LAYOUT_BSHD, g.cp.num_threads = 1;
        if (cpa_gpt_create(&g, MPI_COMM_SELF, &model) != CPA_OK)
            err = tool_fail(EXIT_RUNTIME, "the model: %s", cpa_last_error());
        else if (cpa_gpt_num_params(model) != cpa_gpt_logical_params(model))
            err = tool_fail(EXIT_RUNTIME, "the model's parameters do not match the checkpoint's");
        else
            cpa_gpt_from_logical(model, params, cpa_gpt_params_buffer(model));
    }
    for (int64_t i = 0; !err && i < N; ++i) {
        double loss = 0.0;
        if (cpa_gpt_step(model, ids + i * (S + 1), NULL, 1.0f, 0, &loss, NULL, NULL) != CPA_OK)
            err = tool_fail(EXIT_RUNTIME, "sequence %lld: %s", (long long)i, cpa_last_error());
        else
            printf("loss[%lld] = %.9f\n", (long long)i, loss / (double)S);
    }
    cpa_gpt_destroy(model);
    free(ids);
    free(tok);
    return err;
}

static int export_main(int argc, char **argv)
{
    export_cfg c;
    memset(&c, 0, sizeof c);
    cli_args args;
    cli_result pr = cli_parse(&args, &export_spec, &c, argc, argv);
    if (pr == CLI_HELP)
        return EXIT_OK;
    if (pr == CLI_USAGE)
        return EXIT_USAGE;
    if (!c.load || !*c.load)
        return cli_usage(&export_spec, "--load: give the checkpoint folder (cpattn train --save)");
    if (!c.out || !*c.out)
        return cli_usage(&export_spec, "--out: give the folder to write the model into");
    if (tool_world_size() != 1)
        return cli_usage(&export_spec, "runs on one process, not under mpiexec -n %d",
                         tool_world_size());
    cpa_llama_shape shape;
    float *params = NULL;
    int err = load_params(c.load, &shape, &params);
    if (!err) {
        shape.max_positions = c.max_positions;
        shape.rope_theta = TRAIN_ROPE_BASE, shape.rms_norm_eps = TRAIN_NORM_EPS;
        if (cpa_llama_export(c.out, &shape, params) != CPA_OK)
            err = tool_fail(EXIT_RUNTIME, "--out %s: %s; nothing was replaced", c.out,
                            cpa_last_error());
        else
            printf("wrote %s/model.safetensors and %s/config.json: Llama, %lld layers, hidden "
                   "%lld, %lld heads (%lld KV), SwiGLU %lld, vocabulary %lld, %lld parameters "
                   "(float32, embeddings tied)\n",
                   c.out, c.out, (long long)shape.layers, (long long)shape.hidden,
                   (long long)shape.heads, (long long)shape.kv_heads, (long long)shape.ffn_hidden,
                   (long long)shape.vocab, (long long)cpa_llama_param_count(&shape));
    }
    if (!err && c.loss_tokens)
        err = print_losses(c.loss_tokens, &shape, params);
    free(params);
    return tool_agree(err);
}

int cmd_export(int argc, char **argv)
{
    return tool_mpi_command("cpattn export", 0, export_main, argc, argv);
}
