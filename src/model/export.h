/*
 * export.h — the trained GPT as a Hugging Face Llama model folder:
 * model.safetensors (float32, Llama's tensor names) and config.json
 * (LlamaForCausalLM), from the logical (TP = 1) parameter array a trainer
 * checkpoint stores (checkpoint.h, "params").  See docs/export.md.
 *
 * The model of gpt.h IS Llama's architecture: RMSNorm (weight only), RoPE
 * on (i, i + D/2) pairs — Llama's rotate_half, so no row permutation of
 * q/k is needed —, GQA with query head h reading KV head h / (H/G) (HF's
 * repeat_kv), SwiGLU down(silu(gate) * up), no biases, the LM head tied to
 * the embedding.  The export is therefore a renaming and a split of the
 * fused tensors: the QKV rows (q rows, then k, then v) and the fc1 rows
 * (gate rows, then up) of each layer, all row-major [out, in] as
 * torch.nn.Linear stores them.
 */
#ifndef CPATTN_MODEL_EXPORT_H
#define CPATTN_MODEL_EXPORT_H

#include "cpattn.h"

#include <stdint.h>

typedef struct cpa_llama_shape {
    int64_t layers, hidden, ffn_hidden, heads, kv_heads, vocab; /* L, C, F, H, G, V */
    int64_t max_positions; /* config.json max_position_embeddings */
    double rope_theta;     /* RoPE base */
    double rms_norm_eps;   /* both written with 7 significant digits: the model's are floats */
} cpa_llama_shape;

/* The shape from a checkpoint's configuration text ("key=value" lines:
 * num_layers, hidden_size, ffn_hidden_size, num_attention_heads,
 * num_query_groups, vocab_size); rope_theta, rms_norm_eps and
 * max_positions are left for the caller.  CPA_ERR_FORMAT naming a missing
 * or malformed key, or sizes that break the model's rules. */
cpa_status cpa_llama_shape_parse(const char *config_text, cpa_llama_shape *shape);

/* Floats in the logical parameter array of that shape (-1 on overflow). */
int64_t cpa_llama_param_count(const cpa_llama_shape *shape);

/* Write DIR/model.safetensors and DIR/config.json from `params`
 * [cpa_llama_param_count] (DIR is created if missing).  Both files are
 * written to temporaries in DIR first and renamed into place only when both
 * are complete, so a failure leaves DIR's previous files (if any) as they
 * were.  CPA_ERR_IO naming the file on failure. */
cpa_status cpa_llama_export(const char *dir, const cpa_llama_shape *shape, const float *params);

#endif
