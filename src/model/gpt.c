/*
 * gpt.c — the GPT model of gpt.h: parameters, activations, forward and
 * backward of one micro-batch on this rank's shard of the sequence.
 *
 * Memory (llm.c style): one buffer of parameters, one of gradients, one of
 * activations, each carved into named tensors.  N = B·T token rows of this
 * rank, W = (H+2G)·D the fused QKV width.  Without recomputation every
 * block keeps its activations (slot l); with --recompute-granularity full
 * only the block inputs res[l] are kept, a single slot holds one block's
 * activations, and the backward re-runs each block's forward first.
 *
 * The attention is a context-parallel plan (public API); q, k, v are
 * strided views into the fused QKV activation and dq, dk, dv views into its
 * gradient, so nothing is copied around the attention.
 *
 * Tensor parallelism (Megatron's layers, TP ranks of one group): H, G, F
 * and V below are THIS rank's shares (heads H/TP and G/TP, FFN width F/TP,
 * vocabulary rows ceil(V/TP)); the QKV and gate/up projections are
 * column-parallel (this rank's output rows), the attention output and
 * down projections row-parallel (this rank's input columns, the partial
 * outputs summed over TP), and the embedding and LM head
 * vocabulary-parallel: each rank looks up only its rows of the vocabulary
 * and the cross-entropy combines the ranks' shares of every row's max, sum
 * and target logit, so no rank holds [tokens x vocab] logits.  Norms are
 * replicated.  Initialisation keys every element by its index in the TP = 1
 * model, so any TP size starts from the same weights.
 */
#include "gpt.h"

#include "internal.h"
#include "layers.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct acts {
    float *res;    /* (L+1, N, C) block inputs; res[L] is the final residual */
    float *ln1;    /* (La, N, C) */
    float *rstd1;  /* (La, N) */
    float *qkv;    /* (La, N, W) after RoPE */
    float *att;    /* (La, N, H*D) attention output */
    float *lse;    /* (La, B, H, T) */
    float *resmid; /* (La, N, C) */
    float *ln2;    /* (La, N, C) */
    float *rstd2;  /* (La, N) */
    float *fc1;    /* (La, N, 2F) */
    float *sw;     /* (La, N, F) */
    float *lnf;    /* (N, C) */
    float *rstdf;  /* (N) */
    float *logits; /* (N, V) */
    float *losses; /* (N) */
    float *tmp;    /* (N, C) */
    /* backward scratch */
    float *dres;    /* (N, C) */
    float *dln;     /* (N, C) */
    float *dqkv;    /* (N, W) */
    float *datt;    /* (N, H*D) */
    float *dfc1;    /* (N, 2F) */
    float *dsw;     /* (N, F) */
    float *dlogits; /* (N, V) */
} acts;

struct cpa_gpt {
    cpa_gpt_config cfg;
    int64_t L, C, F, H, G, D, V, S, B, T, N, W, La; /* H, G, F, V, W: this TP rank's */
    /* tensor parallelism: the whole model's sizes, this rank's vocabulary rows
     * v0 .. v0+Vv-1 (Vv <= V: the last rank may hold padding), the group */
    int64_t Hf, Gf, Ff, Vf, v0, Vv;
    int tp, tp_rank;
    MPI_Comm tp_comm;
    double *ce;         /* (3, N) vocabulary-parallel cross-entropy: max, sum, target */
    cpa_gpt_params p, g;
    float *params, *grads;
    uint8_t *decay;
    int64_t num_params;
    acts a;
    float *act_buf;
    int32_t *tok, *tgt; /* (N) this rank's inputs and targets */
    uint8_t *longf;     /* (N) */
    int64_t *pos;       /* (T) global positions of the local rows */
    int64_t *rpos;      /* (B, T) RoPE positions of the local rows of this micro-batch */
    int per_row_pos;    /* rpos holds them (a batch with positions), else pos does */
    cpa_plan *plan;
    cpa_plan_saved **saved; /* (La, Bs) what each layer's attention forward keeps for its
                               backward: Bs = B with sample_documents (one per sample), else 1 */
    int64_t Bs;
    const int64_t *docs, *ndocs; /* the current batch's documents (sample_documents) */
    double attn_fwd_flops; /* attention forward flops of this micro-batch (kernel count) */
};

/* ---- set-up ---------------------------------------------------------------- */

static int64_t carve(float **dst, float **cursor, int64_t n)
{
    *dst = *cursor;
    *cursor += n;
    return n;
}

static int64_t layout_params(cpa_gpt *m, cpa_gpt_params *p, float *base)
{
    float *c = base;
    int64_t n = 0;
    n += carve(&p->wte, &c, m->V * m->C);
    n += carve(&p->ln1w, &c, m->L * m->C);
    n += carve(&p->qkvw, &c, m->L * m->W * m->C);
    n += carve(&p->projw, &c, m->L * m->C * m->H * m->D);
    n += carve(&p->ln2w, &c, m->L * m->C);
    n += carve(&p->fc1w, &c, m->L * 2 * m->F * m->C);
    n += carve(&p->fc2w, &c, m->L * m->C * m->F);
    n += carve(&p->lnfw, &c, m->C);
    return n;
}

static int64_t layout_acts(cpa_gpt *m, acts *a, float *base)
{
    const int64_t N = m->N, C = m->C, La = m->La;
    float *c = base;
    int64_t n = 0;
    n += carve(&a->res, &c, (m->L + 1) * N * C);
    n += carve(&a->ln1, &c, La * N * C);
    n += carve(&a->rstd1, &c, La * N);
    n += carve(&a->qkv, &c, La * N * m->W);
    n += carve(&a->att, &c, La * N * m->H * m->D);
    n += carve(&a->lse, &c, La * m->B * m->H * m->T);
    n += carve(&a->resmid, &c, La * N * C);
    n += carve(&a->ln2, &c, La * N * C);
    n += carve(&a->rstd2, &c, La * N);
    n += carve(&a->fc1, &c, La * N * 2 * m->F);
    n += carve(&a->sw, &c, La * N * m->F);
    n += carve(&a->lnf, &c, N * C);
    n += carve(&a->rstdf, &c, N);
    n += carve(&a->logits, &c, N * m->V);
    n += carve(&a->losses, &c, N);
    n += carve(&a->tmp, &c, N * C);
    n += carve(&a->dres, &c, N * C);
    n += carve(&a->dln, &c, N * C);
    n += carve(&a->dqkv, &c, N * m->W);
    n += carve(&a->datt, &c, N * m->H * m->D);
    n += carve(&a->dfc1, &c, N * 2 * m->F);
    n += carve(&a->dsw, &c, N * m->F);
    n += carve(&a->dlogits, &c, N * m->V);
    return n;
}

/* The shape fields of a model of `cfg` on P CP ranks, TP rank tp_rank of
 * cfg->cp.tp_size (what create sets). */
static void shape_of(cpa_gpt *m, const cpa_gpt_config *cfg, int P, int tp_rank)
{
    m->cfg = *cfg;
    m->tp = cfg->cp.tp_size > 1 ? cfg->cp.tp_size : 1, m->tp_rank = tp_rank;
    m->Hf = cfg->heads, m->Gf = cfg->kv_heads, m->Ff = cfg->ffn_hidden, m->Vf = cfg->vocab;
    m->L = cfg->num_layers, m->C = cfg->hidden, m->F = m->Ff / m->tp, m->H = m->Hf / m->tp;
    m->G = m->Gf / m->tp, m->D = cfg->hidden / cfg->heads;
    m->V = (m->Vf + m->tp - 1) / m->tp, m->v0 = tp_rank * m->V;
    m->Vv = m->Vf - m->v0 < m->V ? (m->Vf - m->v0 > 0 ? m->Vf - m->v0 : 0) : m->V;
    /* T: this rank's tokens; any S gives ranks counts that differ by a few,
     * so the estimate takes the most (S/P + 2) and create sets the plan's. */
    m->S = cfg->seq_length, m->B = cfg->micro_batch;
    m->T = P == 1 ? cfg->seq_length : cfg->seq_length / P + 2;
    m->N = m->B * m->T, m->W = (m->H + 2 * m->G) * m->D, m->La = cfg->recompute ? 1 : m->L;
    m->Bs = cfg->sample_documents ? m->B : 1;
}

/* The attention plan's configuration for a model of `cfg` on P ranks. */
static cpa_cp_config plan_config(const cpa_gpt *m, int P)
{
    cpa_cp_config cc = m->cfg.cp;
    cc.cp_size = P;
    cc.tp_size = 1; /* the plan runs this TP rank's heads; the trainer checks the TP rules */
    /* Per-sample documents: the plan attends one sample at a time. */
    cc.batch = m->cfg.sample_documents ? 1 : m->B;
    cc.seq_length = m->S, cc.num_heads = m->H, cc.num_kv_heads = m->G;
    cc.head_dim = m->D, cc.v_head_dim = m->D;
    if (cc.tp_size < 1)
        cc.tp_size = 1;
    return cc;
}

int64_t cpa_gpt_memory_bytes(const cpa_gpt_config *cfg, int cp_size, int64_t *num_params)
{
    if (!cfg || cp_size < 1 || cfg->heads < 1 || cfg->hidden % cfg->heads != 0)
        return -1;
    cpa_gpt m;
    memset(&m, 0, sizeof m);
    shape_of(&m, cfg, cp_size, 0);
    cpa_gpt_params tmp;
    acts atmp;
    const int64_t np = layout_params(&m, &tmp, NULL), na = layout_acts(&m, &atmp, NULL);
    if (num_params)
        *num_params = np;
    cpa_cp_config cc = plan_config(&m, cp_size);
    const int64_t plan = cpa_plan_memory_bytes(&cc), saved = cpa_plan_saved_bytes(&cc);
    if (plan < 0 || saved < 0)
        return -1;
    /* parameters and gradients (float), the decay mask (byte), activations,
     * tokens and targets, flags, positions: the allocations of create. */
    return (int64_t)sizeof m + np * (2 * (int64_t)sizeof(float) + 1) +
           na * (int64_t)sizeof(float) + m.N * (2 * (int64_t)sizeof(int32_t) + 1) +
           (m.T + m.N) * (int64_t)sizeof(int64_t) + 3 * m.N * (int64_t)sizeof(double) + plan +
           m.La * m.Bs * (saved + (int64_t)sizeof(void *));
}

cpa_status cpa_gpt_create(const cpa_gpt_config *cfg, MPI_Comm cp_comm, cpa_gpt **out)
{
    return cpa_gpt_create_tp(cfg, cp_comm, MPI_COMM_SELF, out);
}

cpa_status cpa_gpt_tp_rules(const cpa_gpt_config *cfg)
{
    const int tp = cfg->cp.tp_size > 1 ? cfg->cp.tp_size : 1;
    if (cfg->heads < 1 || cfg->hidden % cfg->heads != 0)
        return cpa_error(CPA_ERR_ARG, "--hidden-size %lld is not divisible by "
                         "--num-attention-heads %lld (head dim = C / H)",
                         (long long)cfg->hidden, (long long)cfg->heads);
    if (cfg->heads % tp != 0)
        return cpa_error(CPA_ERR_ARG, "--num-attention-heads %lld is not divisible by "
                         "--tensor-model-parallel-size %d (each TP rank takes H/TP heads)",
                         (long long)cfg->heads, tp);
    if (cfg->kv_heads % tp != 0)
        return cpa_error(CPA_ERR_ARG, "--num-query-groups %lld is not divisible by "
                         "--tensor-model-parallel-size %d (each TP rank takes G/TP key/value "
                         "heads; replicating KV heads when G < TP is not supported yet)",
                         (long long)cfg->kv_heads, tp);
    if (cfg->ffn_hidden % tp != 0)
        return cpa_error(CPA_ERR_ARG, "--ffn-hidden-size %lld is not divisible by "
                         "--tensor-model-parallel-size %d (each TP rank takes F/TP of the "
                         "SwiGLU width)", (long long)cfg->ffn_hidden, tp);
    return CPA_OK;
}

cpa_status cpa_gpt_create_tp(const cpa_gpt_config *cfg, MPI_Comm cp_comm, MPI_Comm tp_comm,
                             cpa_gpt **out)
{
    int P = 1, tpn = 1, tpr = 0;
    MPI_Comm_size(cp_comm, &P);
    MPI_Comm_size(tp_comm, &tpn);
    MPI_Comm_rank(tp_comm, &tpr);
    CPA_TRY(cpa_gpt_tp_rules(cfg));
    if (tpn != (cfg->cp.tp_size > 1 ? cfg->cp.tp_size : 1))
        return cpa_error(CPA_ERR_ARG, "cpa_gpt_create_tp: the TP group has %d ranks but the "
                         "configuration says --tensor-model-parallel-size %d", tpn,
                         cfg->cp.tp_size);
    cpa_gpt *m = cpa_calloc(sizeof *m, "model");
    if (!m)
        return CPA_ERR_NOMEM;
    shape_of(m, cfg, P, tpr);
    m->tp_comm = tp_comm;

    /* The attention plan validates the CP rules collectively. */
    cpa_cp_config cc = plan_config(m, P);
    cpa_status s = cpa_plan_create(cp_comm, &cc, &m->plan);
    if (s != CPA_OK) {
        cpa_free(m);
        return s;
    }
    m->T = cpa_plan_local_seq(m->plan), m->N = m->B * m->T;
    cpa_gpt_params tmp;
    m->num_params = layout_params(m, &tmp, NULL);
    acts atmp;
    int64_t nacts = layout_acts(m, &atmp, NULL);
    m->params = cpa_calloc(sizeof(float) * (size_t)m->num_params, "parameters");
    m->grads = cpa_calloc(sizeof(float) * (size_t)m->num_params, "gradients");
    m->decay = cpa_calloc((size_t)m->num_params, "weight-decay mask");
    m->act_buf = cpa_calloc(sizeof(float) * (size_t)nacts, "activations");
    m->tok = cpa_malloc(sizeof(int32_t) * (size_t)(2 * m->N), "tokens");
    m->longf = cpa_malloc((size_t)m->N, "long-range flags");
    m->pos = cpa_malloc(sizeof(int64_t) * (size_t)m->T, "positions");
    m->rpos = cpa_malloc(sizeof(int64_t) * (size_t)m->N, "per-sample positions");
    m->ce = cpa_malloc(sizeof(double) * (size_t)(3 * m->N), "cross-entropy row sums");
    m->saved = cpa_calloc(sizeof *m->saved * (size_t)(m->La * m->Bs), "saved attention states");
    for (int64_t i = 0; m->saved && i < m->La * m->Bs && s == CPA_OK; ++i)
        s = cpa_plan_saved_create(m->plan, &m->saved[i]);
    if (!m->params || !m->grads || !m->decay || !m->act_buf || !m->tok || !m->longf || !m->pos ||
        !m->rpos || !m->ce || !m->saved || s != CPA_OK) {
        cpa_gpt_destroy(m);
        return CPA_ERR_NOMEM;
    }
    m->tgt = m->tok + m->N;
    layout_params(m, &m->p, m->params);
    layout_params(m, &m->g, m->grads);
    layout_acts(m, &m->a, m->act_buf);
    s = cpa_split_positions(cpa_plan_split(m->plan), m->S, cpa_plan_rank(m->plan), m->pos);
    if (s != CPA_OK) {
        cpa_gpt_destroy(m);
        return s;
    }
    /* Weight decay on the matrices, not on the norms. */
    const struct { float *t; int64_t n; } mats[] = {
        {m->p.wte, m->V * m->C}, {m->p.qkvw, m->L * m->W * m->C},
        {m->p.projw, m->L * m->C * m->H * m->D}, {m->p.fc1w, m->L * 2 * m->F * m->C},
        {m->p.fc2w, m->L * m->C * m->F}};
    for (size_t i = 0; i < sizeof mats / sizeof mats[0]; ++i)
        memset(m->decay + (mats[i].t - m->params), 1, (size_t)mats[i].n);
    *out = m;
    return CPA_OK;
}

void cpa_gpt_destroy(cpa_gpt *m)
{
    if (!m)
        return;
    for (int64_t i = 0; m->saved && i < m->La * m->Bs; ++i)
        cpa_plan_saved_destroy(m->saved[i]);
    cpa_free(m->saved);
    cpa_plan_destroy(m->plan);
    cpa_free(m->params);
    cpa_free(m->grads);
    cpa_free(m->decay);
    cpa_free(m->act_buf);
    cpa_free(m->tok);
    cpa_free(m->longf);
    cpa_free(m->pos);
    cpa_free(m->rpos);
    cpa_free(m->ce);
    cpa_free(m);
}

int64_t cpa_gpt_num_params(const cpa_gpt *m) { return m->num_params; }
float *cpa_gpt_params_buffer(cpa_gpt *m) { return m->params; }
float *cpa_gpt_grads_buffer(cpa_gpt *m) { return m->grads; }
const uint8_t *cpa_gpt_decay_mask(const cpa_gpt *m) { return m->decay; }
int64_t cpa_gpt_local_tokens(const cpa_gpt *m) { return m->T; }

void cpa_gpt_shape_string(const cpa_gpt *m, char *buf, size_t n)
{
    snprintf(buf, n,
             "num_layers=%lld\nhidden_size=%lld\nffn_hidden_size=%lld\nnum_attention_heads=%lld\n"
             "num_query_groups=%lld\nvocab_size=%lld\n",
             (long long)m->L, (long long)m->C, (long long)m->Ff, (long long)m->Hf,
             (long long)m->Gf, (long long)m->Vf);
}

/* ---- initialisation --------------------------------------------------------- */

/* A normal value that depends only on (seed, i): Box-Muller on two
 * splitmix64 outputs. */
static float normal_at(uint64_t seed, uint64_t i)
{
    double u1 = ((double)(cpa_mix64((seed ^ (2 * i)) + CPA_GOLDEN_GAMMA) >> 11) + 0.5) * 0x1.0p-53;
    double u2 = (double)(cpa_mix64((seed ^ (2 * i + 1)) + CPA_GOLDEN_GAMMA) >> 11) * 0x1.0p-53;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* Element (row r, column c) of this rank's share of a tensor, as its index
 * in the TP = 1 model: `off` is the tensor's offset there, `cols` its full
 * row length; rows map through the column-parallel blocks (row_map) and
 * columns through the row-parallel one (col0).  TP = 1: the identity. */
typedef struct shard_map {
    int64_t off, cols;       /* in the whole model */
    int64_t blocks;          /* column-parallel: row blocks of `block` local rows each, */
    int64_t block, stride0;  /* block i of the whole tensor starts at row i*stride0 + */
    int64_t first;           /* tp_rank * block */
    int64_t col0;            /* row-parallel: first column of this rank */
} shard_map;

/* dst = std * N(0, 1) * factor, keyed by the TP = 1 index. */
static void init_tensor(float *dst, int64_t rows, int64_t cols, const shard_map *mp,
                        uint64_t seed, float std, float factor)
{
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t bi = mp->blocks > 1 ? r / mp->block : 0, br = r - bi * mp->block;
        const int64_t grow = bi * mp->stride0 + mp->first + br;
        for (int64_t c = 0; c < cols; ++c)
            dst[r * cols + c] =
                std * normal_at(seed, (uint64_t)(mp->off + grow * mp->cols + mp->col0 + c)) *
                factor;
    }
}

void cpa_gpt_init_params(cpa_gpt *m, uint64_t seed)
{
    const float std = 0.02f, std_out = 0.02f / sqrtf(2.0f * (float)m->L);
    const int64_t L = m->L, C = m->C, D = m->D, t = m->tp_rank;
    const int64_t Wf = (m->Hf + 2 * m->Gf) * D;
    /* The tensors' offsets in the TP = 1 model (layout_params' order). */
    const int64_t o_wte = 0, o_ln1 = o_wte + m->Vf * C, o_qkv = o_ln1 + L * C;
    const int64_t o_proj = o_qkv + L * Wf * C, o_ln2 = o_proj + L * C * m->Hf * D;
    const int64_t o_fc1 = o_ln2 + L * C, o_fc2 = o_fc1 + L * 2 * m->Ff * C;
    /* wte: this rank's vocabulary rows (padding rows stay 0). */
    memset(m->p.wte, 0, sizeof(float) * (size_t)(m->V * C));
    shard_map mw = {o_wte, C, 1, m->V, 0, m->v0, 0};
    init_tensor(m->p.wte, m->Vv, C, &mw, seed, std, 1.0f);
    for (int64_t l = 0; l < L; ++l) {
        /* QKV: q heads, then k, then v, each this rank's block of rows. */
        const int64_t q = m->H * D, kv = m->G * D;
        float *w = m->p.qkvw + l * m->W * C;
        shard_map mq = {o_qkv + l * Wf * C, C, 1, q, 0, t * q, 0};
        init_tensor(w, q, C, &mq, seed, std, 1.0f);
        shard_map mk = {o_qkv + l * Wf * C, C, 1, kv, 0, m->Hf * D + t * kv, 0};
        init_tensor(w + q * C, kv, C, &mk, seed, std, 1.0f);
        shard_map mv = {o_qkv + l * Wf * C, C, 1, kv, 0, (m->Hf + m->Gf) * D + t * kv, 0};
        init_tensor(w + (q + kv) * C, kv, C, &mv, seed, std, 1.0f);
        /* Output projection (C, H*D): this rank's columns; GPT-2's 1/sqrt(2L). */
        shard_map mp = {o_proj + l * C * m->Hf * D, m->Hf * D, 1, C, 0, 0, t * q};
        init_tensor(m->p.projw + l * C * q, C, q, &mp, seed, std, std_out / std);
        /* gate rows then up rows, each this rank's block. */
        shard_map mf = {o_fc1 + l * 2 * m->Ff * C, C, 2, m->F, m->Ff, t * m->F, 0};
        init_tensor(m->p.fc1w + l * 2 * m->F * C, 2 * m->F, C, &mf, seed, std, 1.0f);
        shard_map m2 = {o_fc2 + l * C * m->Ff, m->Ff, 1, C, 0, 0, t * m->F};
        init_tensor(m->p.fc2w + l * C * m->F, C, m->F, &m2, seed, std, std_out / std);
    }
    /* Norms start at 1. */
    float *norms[] = {m->p.ln1w, m->p.ln2w};
    for (int k = 0; k < 2; ++k)
        for (int64_t i = 0; i < L * C; ++i)
            norms[k][i] = 1.0f;
    for (int64_t i = 0; i < C; ++i)
        m->p.lnfw[i] = 1.0f;
}

/* ---- tensor parallelism --------------------------------------------------- */

/* Sum the TP ranks' partial outputs (row-parallel layers, the column-
 * parallel layers' input gradients, the embedding): nothing at TP = 1. */
static cpa_status tp_sum(const cpa_gpt *m, float *x, int64_t n, const char *what)
{
    if (m->tp == 1)
        return CPA_OK;
    return cpa_comm_allreduce(x, n, MPI_FLOAT, MPI_SUM, m->tp_comm, what);
}

/* Vocabulary-parallel embedding: this rank's rows, zero elsewhere, summed. */
static cpa_status embedding_forward(cpa_gpt *m, float *out)
{
    const int64_t N = m->N, C = m->C;
    if (m->tp == 1) {
        cpa_embedding_forward(out, m->tok, m->p.wte, N, C);
        return CPA_OK;
    }
    for (int64_t n = 0; n < N; ++n) {
        const int64_t v = (int64_t)m->tok[n] - m->v0;
        if (v >= 0 && v < m->Vv)
            memcpy(out + n * C, m->p.wte + v * C, sizeof(float) * (size_t)C);
        else
            memset(out + n * C, 0, sizeof(float) * (size_t)C);
    }
    return tp_sum(m, out, N * C, "the vocabulary-parallel embedding (TP all-reduce)");
}

static void embedding_backward(cpa_gpt *m, const float *dout)
{
    const int64_t C = m->C;
    if (m->tp == 1) {
        cpa_embedding_backward(m->g.wte, dout, m->tok, m->N, C);
        return;
    }
    for (int64_t n = 0; n < m->N; ++n) {
        const int64_t v = (int64_t)m->tok[n] - m->v0;
        if (v >= 0 && v < m->Vv)
            for (int64_t c = 0; c < C; ++c)
                m->g.wte[v * C + c] += dout[n * C + c];
    }
}

/* Vocabulary-parallel cross-entropy over logits [N, Vv] (this rank's
 * columns v0 ..): the rows' max, sum of exponentials and target logit are
 * combined over TP (three all-reduces of N doubles); ce[0..N) keeps each
 * row's log-sum-exp for the backward.  Returns this rank's loss sum (the
 * same on every TP rank). */
static cpa_status tp_crossentropy_forward(cpa_gpt *m, const float *logits, double *sum)
{
    const int64_t N = m->N, V = m->Vv;
    if (m->tp == 1) {
        *sum = cpa_crossentropy_forward(m->a.losses, logits, m->tgt, N, V);
        return CPA_OK;
    }
    double *mx = m->ce, *se = m->ce + N, *zt = m->ce + 2 * N;
    for (int64_t n = 0; n < N; ++n) {
        double x = -INFINITY;
        for (int64_t v = 0; v < V; ++v)
            x = logits[n * V + v] > x ? logits[n * V + v] : x;
        mx[n] = x;
    }
    CPA_TRY(cpa_comm_allreduce(mx, N, MPI_DOUBLE, MPI_MAX, m->tp_comm,
                               "the vocabulary-parallel cross-entropy (row max)"));
    for (int64_t n = 0; n < N; ++n) {
        double e = 0.0;
        for (int64_t v = 0; v < V; ++v)
            e += exp((double)logits[n * V + v] - mx[n]);
        se[n] = e;
        const int64_t t = (int64_t)m->tgt[n] - m->v0;
        zt[n] = m->tgt[n] >= 0 && t >= 0 && t < V ? (double)logits[n * V + t] : 0.0;
    }
    CPA_TRY(cpa_comm_allreduce(se, 2 * N, MPI_DOUBLE, MPI_SUM, m->tp_comm,
                               "the vocabulary-parallel cross-entropy (sums)"));
    double total = 0.0;
    for (int64_t n = 0; n < N; ++n) {
        mx[n] += log(se[n]); /* now the row's log-sum-exp */
        m->a.losses[n] = m->tgt[n] < 0 ? 0.0f : (float)(mx[n] - zt[n]);
        total += m->a.losses[n];
    }
    *sum = total;
    return CPA_OK;
}

static void tp_crossentropy_backward(cpa_gpt *m, float *dlogits, const float *logits,
                                     float scale)
{
    const int64_t N = m->N, V = m->Vv;
    if (m->tp == 1) {
        cpa_crossentropy_backward(dlogits, logits, m->tgt, scale, N, V);
        return;
    }
    for (int64_t n = 0; n < N; ++n) {
        const int64_t t = m->tgt[n] < 0 ? -1 : (int64_t)m->tgt[n] - m->v0;
        for (int64_t v = 0; v < V; ++v)
            dlogits[n * V + v] =
                m->tgt[n] < 0 ? 0.0f
                              : (float)((exp((double)logits[n * V + v] - m->ce[n]) -
                                         (v == t ? 1.0 : 0.0)) *
                                        (double)scale);
    }
}

double cpa_gpt_grad_norm(const cpa_gpt *m, const float *grads)
{
    /* Sharded tensors: their squares summed over TP; replicated ones (the
     * norms) counted once. */
    const cpa_gpt_params *p = &m->p;
    const int64_t off_ln1 = p->ln1w - m->params, off_ln2 = p->ln2w - m->params;
    const int64_t off_lnf = p->lnfw - m->params, LC = m->L * m->C;
    double sh = 0.0, rep = 0.0;
    for (int64_t i = 0; i < m->num_params; ++i) {
        const int replicated = (i >= off_ln1 && i < off_ln1 + LC) ||
                               (i >= off_ln2 && i < off_ln2 + LC) ||
                               (i >= off_lnf && i < off_lnf + m->C);
        const double g = grads[i];
        if (replicated)
            rep += g * g;
        else
            sh += g * g;
    }
    if (m->tp > 1 && cpa_comm_allreduce(&sh, 1, MPI_DOUBLE, MPI_SUM, m->tp_comm,
                                        "the gradient norm (TP)") != CPA_OK)
        return NAN;
    return sqrt(sh + rep);
}

/* ---- views ------------------------------------------------------------------ */

/* A logical [B, T, N, D] view whose rows are `rowstride` floats apart. */
static cpa_tensor rows_view(const cpa_gpt *m, float *base, int64_t heads, int64_t rowstride)
{
    cpa_tensor t;
    memset(&t, 0, sizeof t);
    t.data = base;
    t.ndim = 4;
    t.shape[0] = m->B, t.shape[1] = m->T, t.shape[2] = heads, t.shape[3] = m->D;
    t.stride[0] = m->T * rowstride, t.stride[1] = rowstride, t.stride[2] = m->D, t.stride[3] = 1;
    return t;
}

static cpa_tensor lse_view(const cpa_gpt *m, float *lse)
{
    int64_t shape[3] = {m->B, m->H, m->T};
    return cpa_tensor_make(lse, 3, shape);
}

/* RoPE on a [B, T, heads, D] view of this rank's rows: by the global
 * positions (shared by every row of the batch), or, for a batch with
 * positions (--reset-position-ids), row b by its own rpos[b]. */
static void rope(const cpa_gpt *m, cpa_tensor x, int inverse)
{
    if (!m->per_row_pos) {
        cpa_rope_apply(x, m->pos, m->cfg.rope_base, inverse);
        return;
    }
    cpa_tensor row = x;
    row.shape[0] = 1;
    for (int64_t b = 0; b < m->B; ++b) {
        row.data = (float *)x.data + b * x.stride[0];
        cpa_rope_apply(row, m->rpos + b * m->T, m->cfg.rope_base, inverse);
    }
}

/* ---- one block ---------------------------------------------------------------- */

typedef struct slot {
    float *ln1, *rstd1, *qkv, *att, *lse, *resmid, *ln2, *rstd2, *fc1, *sw;
    cpa_plan_saved **saved; /* Bs of them */
} slot;

static slot slot_of(const cpa_gpt *m, int64_t s)
{
    const acts *a = &m->a;
    const int64_t N = m->N, C = m->C;
    slot x = {a->ln1 + s * N * C, a->rstd1 + s * N, a->qkv + s * N * m->W,
              a->att + s * N * m->H * m->D, a->lse + s * m->B * m->H * m->T,
              a->resmid + s * N * C, a->ln2 + s * N * C, a->rstd2 + s * N,
              a->fc1 + s * N * 2 * m->F, a->sw + s * N * m->F, m->saved + s * m->Bs};
    return x;
}

/* ---- the attention call: the whole micro-batch, or sample by sample ---------- */

/* Sample b of a [B, ...] view (its first dim). */
static cpa_tensor sample_of(cpa_tensor t, int64_t b)
{
    t.data += b * t.stride[0];
    t.shape[0] = 1;
    return t;
}

/* With per-sample documents the plan (made for one sample) gets sample b's. */
static cpa_status set_sample_documents(cpa_gpt *m, int64_t b)
{
    return cpa_plan_set_documents(m->plan, m->docs + b * (m->S + 1), m->ndocs[b]);
}

static cpa_status attention_forward(cpa_gpt *m, cpa_plan_saved **saved, cpa_tensor q,
                                    cpa_tensor k, cpa_tensor v, cpa_tensor out, cpa_tensor lse,
                                    double *flops)
{
    cpa_plan_stats st;
    *flops = 0.0;
    if (!m->cfg.sample_documents) {
        CPA_TRY(cpa_plan_forward(m->plan, saved[0], q, k, v, out, lse));
        cpa_plan_last_stats(m->plan, &st);
        *flops = st.flops;
        return CPA_OK;
    }
    for (int64_t b = 0; b < m->B; ++b) {
        CPA_TRY(set_sample_documents(m, b));
        CPA_TRY(cpa_plan_forward(m->plan, saved[b], sample_of(q, b), sample_of(k, b),
                                 sample_of(v, b), sample_of(out, b), sample_of(lse, b)));
        cpa_plan_last_stats(m->plan, &st);
        *flops += st.flops;
    }
    return CPA_OK;
}

static cpa_status attention_backward(cpa_gpt *m, cpa_plan_saved **saved, cpa_tensor q,
                                     cpa_tensor k, cpa_tensor v, cpa_tensor out, cpa_tensor lse,
                                     cpa_tensor dout, cpa_tensor dq, cpa_tensor dk, cpa_tensor dv)
{
    if (!m->cfg.sample_documents)
        return cpa_plan_backward(m->plan, saved[0], q, k, v, out, lse, dout, dq, dk, dv);
    for (int64_t b = 0; b < m->B; ++b) {
        CPA_TRY(set_sample_documents(m, b));
        CPA_TRY(cpa_plan_backward(m->plan, saved[b], sample_of(q, b), sample_of(k, b),
                                  sample_of(v, b), sample_of(out, b), sample_of(lse, b),
                                  sample_of(dout, b), sample_of(dq, b), sample_of(dk, b),
                                  sample_of(dv, b)));
    }
    return CPA_OK;
}

/* `count`: add the attention's flops to the model flops (not when the
 * backward recomputes the block). */
static cpa_status block_forward(cpa_gpt *m, int64_t l, slot x, int count)
{
    const int64_t N = m->N, C = m->C, HD = m->H * m->D;
    const float *in = m->a.res + l * N * C;
    float *out = m->a.res + (l + 1) * N * C;
    cpa_rmsnorm_forward(x.ln1, x.rstd1, in, m->p.ln1w + l * C, N, C, m->cfg.norm_eps);
    cpa_matmul_forward(x.qkv, x.ln1, m->p.qkvw + l * m->W * C, N, C, m->W);
    cpa_tensor q = rows_view(m, x.qkv, m->H, m->W), k = rows_view(m, x.qkv + HD, m->G, m->W);
    cpa_tensor v = rows_view(m, x.qkv + HD + m->G * m->D, m->G, m->W);
    rope(m, q, 0);
    rope(m, k, 0);
    double flops;
    CPA_TRY(attention_forward(m, x.saved, q, k, v, rows_view(m, x.att, m->H, HD),
                              lse_view(m, x.lse), &flops));
    if (count)
        m->attn_fwd_flops += flops;
    cpa_matmul_forward(m->a.tmp, x.att, m->p.projw + l * C * HD, N, HD, C);
    CPA_TRY(tp_sum(m, m->a.tmp, N * C, "the attention output projection (TP all-reduce)"));
    cpa_residual_forward(x.resmid, in, m->a.tmp, N * C);
    cpa_rmsnorm_forward(x.ln2, x.rstd2, x.resmid, m->p.ln2w + l * C, N, C, m->cfg.norm_eps);
    cpa_matmul_forward(x.fc1, x.ln2, m->p.fc1w + l * 2 * m->F * C, N, C, 2 * m->F);
    cpa_swiglu_forward(x.sw, x.fc1, N, m->F);
    cpa_matmul_forward(m->a.tmp, x.sw, m->p.fc2w + l * C * m->F, N, m->F, C);
    CPA_TRY(tp_sum(m, m->a.tmp, N * C, "the MLP down projection (TP all-reduce)"));
    cpa_residual_forward(out, x.resmid, m->a.tmp, N * C);
    return CPA_OK;
}

/* dres holds d loss / d res[l+1] on entry and d loss / d res[l] on return. */
static cpa_status block_backward(cpa_gpt *m, int64_t l, slot x)
{
    const int64_t N = m->N, C = m->C, HD = m->H * m->D, F = m->F;
    acts *a = &m->a;
    const float *in = a->res + l * N * C;
    /* MLP branch: dres is the gradient of fc2's output. */
    memset(a->dsw, 0, sizeof(float) * (size_t)(N * F));
    cpa_matmul_backward(a->dsw, m->g.fc2w + l * C * F, a->dres, x.sw, m->p.fc2w + l * C * F, N, F, C);
    memset(a->dfc1, 0, sizeof(float) * (size_t)(N * 2 * F));
    cpa_swiglu_backward(a->dfc1, a->dsw, x.fc1, N, F);
    memset(a->dln, 0, sizeof(float) * (size_t)(N * C));
    cpa_matmul_backward(a->dln, m->g.fc1w + l * 2 * F * C, a->dfc1, x.ln2,
                        m->p.fc1w + l * 2 * F * C, N, C, 2 * F);
    CPA_TRY(tp_sum(m, a->dln, N * C, "the MLP input gradient (TP all-reduce)"));
    cpa_rmsnorm_backward(a->dres, m->g.ln2w + l * C, a->dln, x.resmid, m->p.ln2w + l * C,
                         x.rstd2, N, C); /* dres is now d/d resmid */
    /* Attention branch. */
    memset(a->datt, 0, sizeof(float) * (size_t)(N * HD));
    cpa_matmul_backward(a->datt, m->g.projw + l * C * HD, a->dres, x.att, m->p.projw + l * C * HD,
                        N, HD, C);
    cpa_tensor q = rows_view(m, x.qkv, m->H, m->W), k = rows_view(m, x.qkv + HD, m->G, m->W);
    cpa_tensor v = rows_view(m, x.qkv + HD + m->G * m->D, m->G, m->W);
    cpa_tensor dq = rows_view(m, a->dqkv, m->H, m->W);
    cpa_tensor dk = rows_view(m, a->dqkv + HD, m->G, m->W);
    cpa_tensor dv = rows_view(m, a->dqkv + HD + m->G * m->D, m->G, m->W);
    CPA_TRY(attention_backward(m, x.saved, q, k, v, rows_view(m, x.att, m->H, HD),
                               lse_view(m, x.lse), rows_view(m, a->datt, m->H, HD), dq, dk, dv));
    rope(m, dq, 1);
    rope(m, dk, 1);
    memset(a->dln, 0, sizeof(float) * (size_t)(N * C));
    cpa_matmul_backward(a->dln, m->g.qkvw + l * m->W * C, a->dqkv, x.ln1, m->p.qkvw + l * m->W * C,
                        N, C, m->W);
    CPA_TRY(tp_sum(m, a->dln, N * C, "the QKV input gradient (TP all-reduce)"));
    cpa_rmsnorm_backward(a->dres, m->g.ln1w + l * C, a->dln, in, m->p.ln1w + l * C, x.rstd1, N, C);
    return CPA_OK;
}

/* ---- a micro-batch ------------------------------------------------------------ */

/* This rank's rows of the batch: row t of sample b is global position
 * pos[t].  long_stride is 0 for flags [S] shared by every sample, S for
 * [B, S].  A masked target becomes -1, which the cross-entropy skips. */
static void take_shard(cpa_gpt *m, const cpa_gpt_batch *batch, int64_t long_stride)
{
    m->per_row_pos = batch->positions != NULL;
    for (int64_t b = 0; b < m->B; ++b)
        for (int64_t t = 0; t < m->T; ++t) {
            const int32_t *seq = batch->tokens + b * (m->S + 1);
            const int64_t p = m->pos[t], n = b * m->T + t, g = b * m->S + p;
            const int counts = !batch->loss_mask || batch->loss_mask[g];
            m->tok[n] = seq[p];
            m->tgt[n] = counts ? seq[p + 1] : -1;
            m->longf[n] = counts && batch->long_range ? batch->long_range[b * long_stride + p] : 0;
            if (batch->positions)
                m->rpos[n] = batch->positions[g];
        }
}

static cpa_status step(cpa_gpt *m, const cpa_gpt_batch *batch, int64_t long_stride,
                       float loss_scale, int backward, double *loss_sum, double *long_sum,
                       double *long_count)
{
    const int64_t N = m->N, C = m->C;
    acts *a = &m->a;
    m->attn_fwd_flops = 0.0;
    take_shard(m, batch, long_stride);
    CPA_TRY(embedding_forward(m, a->res));
    for (int64_t l = 0; l < m->L; ++l)
        CPA_TRY(block_forward(m, l, slot_of(m, m->cfg.recompute ? 0 : l), 1));
    const float *last = a->res + m->L * N * C;
    cpa_rmsnorm_forward(a->lnf, a->rstdf, last, m->p.lnfw, N, C, m->cfg.norm_eps);
    cpa_matmul_forward(a->logits, a->lnf, m->p.wte, N, C, m->Vv); /* [N, Vv]: my columns */
    CPA_TRY(tp_crossentropy_forward(m, a->logits, loss_sum));
    double ls = 0.0, lc = 0.0;
    for (int64_t n = 0; n < N; ++n)
        if (m->longf[n]) {
            ls += a->losses[n];
            lc += 1.0;
        }
    if (long_sum)
        *long_sum = ls;
    if (long_count)
        *long_count = lc;
    if (!backward)
        return CPA_OK;

    tp_crossentropy_backward(m, a->dlogits, a->logits, loss_scale);
    memset(a->dln, 0, sizeof(float) * (size_t)(N * C));
    cpa_matmul_backward(a->dln, m->g.wte, a->dlogits, a->lnf, m->p.wte, N, C, m->Vv);
    CPA_TRY(tp_sum(m, a->dln, N * C, "the LM head input gradient (TP all-reduce)"));
    memset(a->dres, 0, sizeof(float) * (size_t)(N * C));
    cpa_rmsnorm_backward(a->dres, m->g.lnfw, a->dln, last, m->p.lnfw, a->rstdf, N, C);
    for (int64_t l = m->L - 1; l >= 0; --l) {
        if (m->cfg.recompute) /* rebuild this block's activations from its input */
            CPA_TRY(block_forward(m, l, slot_of(m, 0), 0));
        CPA_TRY(block_backward(m, l, slot_of(m, m->cfg.recompute ? 0 : l)));
    }
    embedding_backward(m, a->dres);
    return CPA_OK;
}

cpa_status cpa_gpt_step(cpa_gpt *m, const int32_t *sample, const uint8_t *long_range,
                        float loss_scale, int backward, double *loss_sum, double *long_sum,
                        double *long_count)
{
    if (m->cfg.sample_documents)
        return cpa_error(CPA_ERR_ARG, "cpa_gpt_step: this model attends per-sample documents "
                         "(sample_documents); use cpa_gpt_step_batch with cu_seqlens");
    const cpa_gpt_batch batch = {sample, long_range, NULL, NULL, NULL, NULL};
    return step(m, &batch, 0, loss_scale, backward, loss_sum, long_sum, long_count);
}

cpa_status cpa_gpt_step_batch(cpa_gpt *m, const cpa_gpt_batch *batch, float loss_scale,
                              int backward, double *loss_sum, double *long_sum,
                              double *long_count)
{
    if (!m || !batch || !batch->tokens)
        return cpa_error(CPA_ERR_ARG, "cpa_gpt_step_batch: NULL %s",
                         !m ? "model" : !batch ? "batch" : "tokens");
    if (m->cfg.sample_documents && (!batch->cu_seqlens || !batch->num_docs))
        return cpa_error(CPA_ERR_ARG, "cpa_gpt_step_batch: this model attends per-sample "
                         "documents (--reset-attention-mask) and needs the batch's cu_seqlens "
                         "and num_docs");
    m->docs = batch->cu_seqlens, m->ndocs = batch->num_docs;
    return step(m, batch, m->S, loss_scale, backward, loss_sum, long_sum, long_count);
}

double cpa_gpt_step_flops(const cpa_gpt *m)
{
    /* Model flops (docs/train.md): 6 per matmul weight per token (forward
     * 2, backward 4), the LM head included, plus 3x the attention
     * forward's kernel count (2·(Dqk+Dv) per visible pair and head: QKᵀ
     * and PV forward; dP, dV, dQ, dK backward).  Recomputed work — the
     * scores the attention backward rebuilds, and --recompute-granularity
     * — is hardware work, not model work, and is not counted. */
    const double per_token = 2.0 * (double)m->L *
                                 (double)(m->C * m->W + m->H * m->D * m->C + m->C * 2 * m->F +
                                          m->F * m->C) +
                             2.0 * (double)(m->C * m->Vv);
    return 3.0 * per_token * (double)m->N + 3.0 * m->attn_fwd_flops;
}
