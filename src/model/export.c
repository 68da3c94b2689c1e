/*
 * export.c — write a trained GPT as a Hugging Face Llama folder (see
 * export.h for the correspondence of the two models).
 *
 * safetensors: an 8-byte little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]},
 * ..., "__metadata__": {"format": "pt"}} (padded with spaces so the data
 * start 8-byte aligned), then the tensors' bytes back to back, offsets
 * relative to the data start, no holes.  x86-64 is little-endian, so the
 * floats are written as they lie in memory.
 */
#include "export.h"

#include "atomic_file.h"
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- the shape -------------------------------------------------------------- */

static cpa_status get_key(const char *text, const char *key, int64_t *out)
{
    const size_t n = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (!strncmp(p, key, n) && p[n] == '=') {
            char *end;
            errno = 0;
            long long v = strtoll(p + n + 1, &end, 10);
            if (errno || end == p + n + 1 || (*end != '\n' && *end != '\0') || v < 1)
                return cpa_error(CPA_ERR_FORMAT, "the checkpoint's configuration has a bad %s "
                                 "value", key);
            *out = v;
            return CPA_OK;
        }
    }
    return cpa_error(CPA_ERR_FORMAT, "the checkpoint's configuration has no %s (not a cpattn "
                     "train checkpoint?)", key);
}

cpa_status cpa_llama_shape_parse(const char *text, cpa_llama_shape *s)
{
    memset(s, 0, sizeof *s);
    CPA_TRY(get_key(text, "num_layers", &s->layers));
    CPA_TRY(get_key(text, "hidden_size", &s->hidden));
    CPA_TRY(get_key(text, "ffn_hidden_size", &s->ffn_hidden));
    CPA_TRY(get_key(text, "num_attention_heads", &s->heads));
    CPA_TRY(get_key(text, "num_query_groups", &s->kv_heads));
    CPA_TRY(get_key(text, "vocab_size", &s->vocab));
    if (s->hidden % s->heads || s->heads % s->kv_heads || (s->hidden / s->heads) % 2)
        return cpa_error(CPA_ERR_FORMAT, "the checkpoint's configuration breaks the model's "
                         "rules: hidden_size %" PRId64 ", num_attention_heads %" PRId64
                         ", num_query_groups %" PRId64, s->hidden, s->heads, s->kv_heads);
    return CPA_OK;
}

int64_t cpa_llama_param_count(const cpa_llama_shape *s)
{
    const int64_t L = s->layers, C = s->hidden, F = s->ffn_hidden, D = C / s->heads;
    if (L > (1 << 20) || C > (1 << 20) || F > (1 << 24) || s->vocab > (1 << 26))
        return -1;
    /* wte, ln1, qkv, proj, ln2, fc1, fc2, lnf: gpt.c's layout_params order */
    return s->vocab * C + L * C + L * (s->heads + 2 * s->kv_heads) * D * C + L * C * s->heads * D +
           L * C + L * 2 * F * C + L * C * F + C;
}

/* ---- the tensors ------------------------------------------------------------- */

typedef struct tensor {
    char name[96];
    const float *data;
    int64_t rows, cols; /* cols 0: a vector of `rows` */
} tensor;

/* Every tensor of the export, in gpt.c's parameter order; *n gets the count. */
static tensor *list_tensors(const cpa_llama_shape *s, const float *p, int64_t *n)
{
    const int64_t L = s->layers, C = s->hidden, F = s->ffn_hidden, D = C / s->heads;
    const int64_t HD = s->heads * D, GD = s->kv_heads * D, W = HD + 2 * GD;
    tensor *t = cpa_malloc(sizeof(tensor) * (size_t)(9 * L + 2), "the export's tensor list");
    if (!t)
        return NULL;
    const float *wte = p, *ln1 = wte + s->vocab * C, *qkv = ln1 + L * C;
    const float *proj = qkv + L * W * C, *ln2 = proj + L * C * HD, *fc1 = ln2 + L * C;
    const float *fc2 = fc1 + L * 2 * F * C, *lnf = fc2 + L * C * F;
    int64_t k = 0;
    t[k++] = (tensor){"model.embed_tokens.weight", wte, s->vocab, C};
    for (int64_t l = 0; l < L; ++l) {
        const struct { const char *name; const float *data; int64_t rows, cols; } layer[9] = {
            {"input_layernorm.weight", ln1 + l * C, C, 0},
            {"self_attn.q_proj.weight", qkv + l * W * C, HD, C},
            {"self_attn.k_proj.weight", qkv + (l * W + HD) * C, GD, C},
            {"self_attn.v_proj.weight", qkv + (l * W + HD + GD) * C, GD, C},
            {"self_attn.o_proj.weight", proj + l * C * HD, C, HD},
            {"post_attention_layernorm.weight", ln2 + l * C, C, 0},
            {"mlp.gate_proj.weight", fc1 + l * 2 * F * C, F, C},
            {"mlp.up_proj.weight", fc1 + (l * 2 * F + F) * C, F, C},
            {"mlp.down_proj.weight", fc2 + l * C * F, C, F}};
        for (int i = 0; i < 9; ++i) {
            snprintf(t[k].name, sizeof t[k].name, "model.layers.%" PRId64 ".%s", l, layer[i].name);
            t[k].data = layer[i].data, t[k].rows = layer[i].rows, t[k].cols = layer[i].cols;
            ++k;
        }
    }
    t[k++] = (tensor){"model.norm.weight", lnf, C, 0};
    *n = k;
    return t;
}

static int64_t numel(const tensor *t) { return t->cols ? t->rows * t->cols : t->rows; }

/* The safetensors JSON header, padded with spaces to a multiple of 8. */
static char *safetensors_header(const tensor *t, int64_t n, size_t *len)
{
    const size_t cap = (size_t)n * 200 + 128;
    char *h = cpa_malloc(cap, "the safetensors header");
    if (!h)
        return NULL;
    size_t u = (size_t)snprintf(h, cap, "{\"__metadata__\":{\"format\":\"pt\"}");
    int64_t off = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t bytes = 4 * numel(&t[i]);
        if (t[i].cols)
            u += (size_t)snprintf(h + u, cap - u, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%" PRId64
                                  ",%" PRId64 "],\"data_offsets\":[%" PRId64 ",%" PRId64 "]}",
                                  t[i].name, t[i].rows, t[i].cols, off, off + bytes);
        else
            u += (size_t)snprintf(h + u, cap - u, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%" PRId64
                                  "],\"data_offsets\":[%" PRId64 ",%" PRId64 "]}",
                                  t[i].name, t[i].rows, off, off + bytes);
        off += bytes;
    }
    u += (size_t)snprintf(h + u, cap - u, "}");
    while ((8 + u) % 8)
        h[u++] = ' ';
    h[u] = '\0';
    *len = u;
    return h;
}

static cpa_status config_json(const cpa_llama_shape *s, char *buf, size_t cap)
{
    const int64_t D = s->hidden / s->heads;
    int len = snprintf(
        buf, cap,
        "{\n"
        "  \"architectures\": [\"LlamaForCausalLM\"],\n"
        "  \"model_type\": \"llama\",\n"
        "  \"hidden_size\": %" PRId64 ",\n"
        "  \"intermediate_size\": %" PRId64 ",\n"
        "  \"num_hidden_layers\": %" PRId64 ",\n"
        "  \"num_attention_heads\": %" PRId64 ",\n"
        "  \"num_key_value_heads\": %" PRId64 ",\n"
        "  \"head_dim\": %" PRId64 ",\n"
        "  \"vocab_size\": %" PRId64 ",\n"
        "  \"max_position_embeddings\": %" PRId64 ",\n"
        "  \"rope_theta\": %.7g,\n"
        "  \"rope_scaling\": null,\n"
        "  \"rms_norm_eps\": %.7g,\n"
        "  \"hidden_act\": \"silu\",\n"
        "  \"attention_bias\": false,\n"
        "  \"mlp_bias\": false,\n"
        "  \"tie_word_embeddings\": true,\n"
        "  \"pretraining_tp\": 1,\n"
        "  \"initializer_range\": 0.02,\n"
        "  \"bos_token_id\": null,\n"
        "  \"eos_token_id\": null,\n"
        "  \"torch_dtype\": \"float32\",\n"
        "  \"use_cache\": true\n"
        "}\n",
        s->hidden, s->ffn_hidden, s->layers, s->heads, s->kv_heads, D, s->vocab,
        s->max_positions, s->rope_theta, s->rms_norm_eps);
    if (len < 0 || (size_t)len >= cap)
        return cpa_error(CPA_ERR_INTERNAL, "config.json does not fit its buffer");
    return CPA_OK;
}

/* ---- writing ------------------------------------------------------------------ */

static cpa_status write_or_fail(int fd, const void *buf, size_t len, const char *final,
                                const char *tmp)
{
    if (!cpa_write_full(fd, buf, len))
        return cpa_temp_error(final, "write", "temporary file", tmp, errno);
    return CPA_OK;
}

cpa_status cpa_llama_export(const char *dir, const cpa_llama_shape *s, const float *params)
{
    char st_path[4200], cfg_path[4200], st_tmp[4300], cfg_tmp[4300], why[128];
    if (snprintf(st_path, sizeof st_path, "%s/model.safetensors", dir) >= (int)sizeof st_path ||
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir) >= (int)sizeof cfg_path)
        return cpa_error(CPA_ERR_ARG, "--out: the folder name is too long");
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return cpa_error(CPA_ERR_IO, "cannot create %s: %s", dir,
                         cpa_errno_text(errno, why, sizeof why));
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return cpa_error(CPA_ERR_IO, "%s exists and is not a folder", dir);

    int64_t n = 0;
    tensor *t = list_tensors(s, params, &n);
    size_t hlen = 0;
    char *header = t ? safetensors_header(t, n, &hlen) : NULL;
    char cfg[4096];
    cpa_status st = (!t || !header) ? CPA_ERR_NOMEM : config_json(s, cfg, sizeof cfg);
    int fd_st = -1, fd_cfg = -1;
    if (st == CPA_OK && (fd_st = cpa_temp_create(st_path, st_tmp, sizeof st_tmp)) < 0)
        st = cpa_temp_error(st_path, "create", "temporary file", "", errno);
    if (st == CPA_OK) {
        const uint64_t n8 = (uint64_t)hlen; /* little-endian on x86-64 */
        st = write_or_fail(fd_st, &n8, 8, st_path, st_tmp);
        if (st == CPA_OK)
            st = write_or_fail(fd_st, header, hlen, st_path, st_tmp);
        for (int64_t i = 0; st == CPA_OK && i < n; ++i)
            st = write_or_fail(fd_st, t[i].data, sizeof(float) * (size_t)numel(&t[i]), st_path,
                               st_tmp);
    }
    if (st == CPA_OK && (fd_cfg = cpa_temp_create(cfg_path, cfg_tmp, sizeof cfg_tmp)) < 0)
        st = cpa_temp_error(cfg_path, "create", "temporary file", "", errno);
    if (st == CPA_OK)
        st = write_or_fail(fd_cfg, cfg, strlen(cfg), cfg_path, cfg_tmp);
    if (st != CPA_OK) { /* nothing in DIR was replaced */
        if (fd_st >= 0)
            cpa_temp_discard(fd_st, st_tmp);
        if (fd_cfg >= 0)
            cpa_temp_discard(fd_cfg, cfg_tmp);
    } else {
        /* Both complete: the weights first, then the configuration that
         * describes them. */
        st = cpa_temp_commit(fd_st, st_tmp, st_path, "temporary file");
        if (st == CPA_OK)
            st = cpa_temp_commit(fd_cfg, cfg_tmp, cfg_path, "temporary file");
        else
            cpa_temp_discard(fd_cfg, cfg_tmp);
    }
    cpa_free(header);
    cpa_free(t);
    return st;
}
