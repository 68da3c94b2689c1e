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
 *
 * KV heads when G < TP (Megatron's replication): each TP rank holds one
 * KV head, g0 = tp_rank / (TP/G) (the group of all its H/TP query heads),
 * so TP/G ranks hold copies of each; each copy's gradient sees only its
 * rank's query heads, and cpa_gpt_reduce_shared_grads sums them.
 *
 * Sequence parallelism (--sequence-parallel, Megatron's): the residual
 * stream, the norms and their inputs live on this TP rank's Nl of the N
 * token rows (rows n0 .. n0+Nl-1, floor(t·N/TP) .. floor((t+1)·N/TP)).
 * Before a column-parallel layer its input rows are all-gathered over TP;
 * after a row-parallel layer the partial outputs are reduce-scattered
 * (one all-reduce's volume, split in two); the backward swaps the two.
 * The gathered norm outputs are not kept: the weight gradients gather them
 * again (Megatron's choice, memory over a second all-gather).  The norm
 * weights' gradients then cover only this rank's rows and are summed over
 * TP once per iteration (cpa_gpt_reduce_shared_grads).
 */
#include "gpt.h"

#include "internal.h"
#include "layers.h"
#include "parallel.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Nl: this rank's rows of the residual stream (N without
 * --sequence-parallel, see the top). */
typedef struct acts {
    float *res;    /* (L+1, Nl, C) block inputs; res[L] is the final residual */
    float *ln1;    /* (La, Nl, C) */
    float *rstd1;  /* (La, Nl) */
    float *qkv;    /* (La, N, W) after RoPE */
    float *att;    /* (La, N, H*D) attention output */
    float *lse;    /* (La, B, H, T) */
    float *resmid; /* (La, Nl, C) */
    float *ln2;    /* (La, Nl, C) */
    float *rstd2;  /* (La, Nl) */
    float *fc1;    /* (La, N, 2F) */
    float *sw;     /* (La, N, F) */
    float *lnf;    /* (N, C) all rows (gathered: the LM head's input) */
    float *rstdf;  /* (Nl) */
    float *logits; /* (N, V) */
    float *losses; /* (N) */
    float *tmp;    /* (N, C) */
    float *full;   /* (N, C) sequence parallel: an all-gathered input (else empty) */
    float *part;   /* (Nl, C) sequence parallel: a reduce-scattered output (else empty) */
    /* backward scratch */
    float *dres;    /* (Nl, C) */
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
    int64_t g0;         /* this rank's first KV head in the whole model */
    int kv_rep;         /* TP ranks holding each KV head: TP/G when G < TP, else 1 */
    MPI_Comm kv_comm;   /* those ranks (kv_rep > 1), else MPI_COMM_NULL */
    int sp;             /* sequence parallel (TP > 1) */
    int64_t Nl, n0;     /* this rank's residual rows (all N without sp), the first */
    int *sp_counts, *sp_displs; /* (TP) every rank's residual rows x C, and offsets */
    float *share;       /* cpa_gpt_reduce_shared_grads' packing buffer */
    int64_t share_n;
    cpa_gpt_comm_stats comm; /* since the last reset */
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
    const int64_t N = m->N, Nl = m->Nl, C = m->C, La = m->La;
    float *c = base;
    int64_t n = 0;
    n += carve(&a->res, &c, (m->L + 1) * Nl * C);
    n += carve(&a->ln1, &c, La * Nl * C);
    n += carve(&a->rstd1, &c, La * Nl);
    n += carve(&a->qkv, &c, La * N * m->W);
    n += carve(&a->att, &c, La * N * m->H * m->D);
    n += carve(&a->lse, &c, La * m->B * m->H * m->T);
    n += carve(&a->resmid, &c, La * Nl * C);
    n += carve(&a->ln2, &c, La * Nl * C);
    n += carve(&a->rstd2, &c, La * Nl);
    n += carve(&a->fc1, &c, La * N * 2 * m->F);
    n += carve(&a->sw, &c, La * N * m->F);
    n += carve(&a->lnf, &c, N * C);
    n += carve(&a->rstdf, &c, Nl);
    n += carve(&a->logits, &c, N * m->V);
    n += carve(&a->losses, &c, N);
    n += carve(&a->tmp, &c, N * C);
    n += carve(&a->full, &c, m->sp ? N * C : 0);
    n += carve(&a->part, &c, m->sp ? Nl * C : 0);
    n += carve(&a->dres, &c, Nl * C);
    n += carve(&a->dln, &c, N * C);
    n += carve(&a->dqkv, &c, N * m->W);
    n += carve(&a->datt, &c, N * m->H * m->D);
    n += carve(&a->dfc1, &c, N * 2 * m->F);
    n += carve(&a->dsw, &c, N * m->F);
    n += carve(&a->dlogits, &c, N * m->V);
    return n;
}

/* N = B·T token rows, and this rank's residual rows (sequence parallel:
 * floor(t·N/TP) .. floor((t+1)·N/TP) - 1; else all). */
static void set_rows(cpa_gpt *m)
{
    m->N = m->B * m->T;
    m->n0 = m->sp ? m->tp_rank * m->N / m->tp : 0;
    m->Nl = m->sp ? (m->tp_rank + 1) * m->N / m->tp - m->n0 : m->N;
}

/* The floats cpa_gpt_reduce_shared_grads packs at most (before layout). */
static int64_t share_count(const cpa_gpt *m)
{
    const int64_t norms = m->sp ? (2 * m->L + 1) * m->C : 0;
    const int64_t kv = m->kv_rep > 1 ? m->L * 2 * m->G * m->D * m->C : 0;
    return norms > kv ? norms : kv;
}

/* The shape fields of a model of `cfg` on P CP ranks, TP rank tp_rank of
 * cfg->cp.tp_size (what create sets). */
static void shape_of(cpa_gpt *m, const cpa_gpt_config *cfg, int P, int tp_rank)
{
    m->cfg = *cfg;
    m->tp = cfg->cp.tp_size > 1 ? cfg->cp.tp_size : 1, m->tp_rank = tp_rank;
    m->Hf = cfg->heads, m->Gf = cfg->kv_heads, m->Ff = cfg->ffn_hidden, m->Vf = cfg->vocab;
    m->L = cfg->num_layers, m->C = cfg->hidden, m->F = m->Ff / m->tp, m->H = m->Hf / m->tp;
    m->D = cfg->hidden / cfg->heads;
    if (m->Gf >= m->tp || m->Gf < 1) /* G/TP heads each (the rules check G % TP) */
        m->G = m->Gf / m->tp, m->kv_rep = 1, m->g0 = tp_rank * m->G;
    else /* one KV head each, held by TP/G ranks */
        m->G = 1, m->kv_rep = m->tp / (int)m->Gf, m->g0 = tp_rank / m->kv_rep;
    m->sp = cfg->sequence_parallel && m->tp > 1;
    m->V = (m->Vf + m->tp - 1) / m->tp, m->v0 = tp_rank * m->V;
    m->Vv = m->Vf - m->v0 < m->V ? (m->Vf - m->v0 > 0 ? m->Vf - m->v0 : 0) : m->V;
    /* T: this rank's tokens; any S gives ranks counts that differ by a few,
     * so the estimate takes the most (S/P + 2) and create sets the plan's. */
    m->S = cfg->seq_length, m->B = cfg->micro_batch;
    m->T = P == 1 ? cfg->seq_length : cfg->seq_length / P + 2;
    m->W = (m->H + 2 * m->G) * m->D, m->La = cfg->recompute ? 1 : m->L;
    m->Bs = cfg->sample_documents ? m->B : 1;
    set_rows(m);
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
           m.La * m.Bs * (saved + (int64_t)sizeof(void *)) +
           share_count(&m) * (int64_t)sizeof(float) + 2 * m.tp * (int64_t)sizeof(int);
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
    if (cfg->kv_heads < 1 || cfg->heads % cfg->kv_heads != 0)
        return cpa_error(CPA_ERR_ARG, "--num-attention-heads %lld is not divisible by "
                         "--num-query-groups %lld (each KV head serves H/G query heads)",
                         (long long)cfg->heads, (long long)cfg->kv_heads);
    if (cfg->kv_heads % tp != 0 && tp % cfg->kv_heads != 0)
        return cpa_error(CPA_ERR_ARG, "--num-query-groups %lld and "
                         "--tensor-model-parallel-size %d: one must divide the other (G/TP "
                         "key/value heads on each TP rank, or when G < TP each KV head "
                         "replicated on TP/G ranks)", (long long)cfg->kv_heads, tp);
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
    m->kv_comm = MPI_COMM_NULL;

    /* The attention plan validates the CP rules collectively. */
    cpa_cp_config cc = plan_config(m, P);
    cpa_status s = cpa_plan_create(cp_comm, &cc, &m->plan);
    if (s != CPA_OK) {
        cpa_free(m);
        return s;
    }
    m->T = cpa_plan_local_seq(m->plan);
    set_rows(m);
    if (m->sp && m->N * m->C > INT_MAX) {
        cpa_gpt_destroy(m);
        return cpa_error(CPA_ERR_ARG, "--sequence-parallel: %lld token rows x hidden %lld per "
                         "rank exceed one MPI all-gather's int count; lower "
                         "--micro-batch-size or raise --context-parallel-size",
                         (long long)m->N, (long long)m->C);
    }
    /* The ranks sharing a KV head (collective over the TP group). */
    if (m->kv_rep > 1) {
        int rc = MPI_Comm_split(tp_comm, (int)m->g0, tpr, &m->kv_comm);
        if (rc != MPI_SUCCESS) {
            m->kv_comm = MPI_COMM_NULL;
            cpa_gpt_destroy(m);
            return cpa_model_mpi_error(rc, "MPI_Comm_split (the TP ranks sharing a KV head)");
        }
    }
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
    m->sp_counts = cpa_calloc(sizeof(int) * (size_t)(2 * m->tp), "sequence-parallel counts");
    m->share_n = share_count(m);
    m->share = cpa_malloc(sizeof(float) * (size_t)(m->share_n > 0 ? m->share_n : 1),
                          "shared gradients");
    for (int64_t i = 0; m->saved && i < m->La * m->Bs && s == CPA_OK; ++i)
        s = cpa_plan_saved_create(m->plan, &m->saved[i]);
    if (!m->params || !m->grads || !m->decay || !m->act_buf || !m->tok || !m->longf || !m->pos ||
        !m->rpos || !m->ce || !m->saved || !m->sp_counts || !m->share || s != CPA_OK) {
        cpa_gpt_destroy(m);
        return CPA_ERR_NOMEM;
    }
    m->tgt = m->tok + m->N;
    m->sp_displs = m->sp_counts + m->tp;
    for (int t = 0; t < m->tp; ++t) { /* every rank's residual rows (sp), in floats */
        const int64_t r0 = m->sp ? t * m->N / m->tp : 0, r1 = m->sp ? (t + 1) * m->N / m->tp : m->N;
        m->sp_counts[t] = (int)((r1 - r0) * m->C), m->sp_displs[t] = (int)(r0 * m->C);
    }
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
    cpa_free(m->sp_counts);
    cpa_free(m->share);
    if (m->kv_comm != MPI_COMM_NULL)
        MPI_Comm_free(&m->kv_comm);
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

/* The tensors, in layout_params' order. */
enum { T_WTE, T_LN1, T_QKV, T_PROJ, T_LN2, T_FC1, T_FC2, T_LNF, T_COUNT };

/* The tensors' sizes in this rank's share (local) and in the TP = 1 model
 * (full, the vocabulary unpadded), in layout_params' order. */
static void tensor_sizes(const cpa_gpt *m, int64_t local[T_COUNT], int64_t full[T_COUNT])
{
    const int64_t L = m->L, C = m->C, D = m->D;
    const int64_t loc[T_COUNT] = {m->V * C, L * C, L * m->W * C, L * C * m->H * D, L * C,
                                  L * 2 * m->F * C, L * C * m->F, C};
    const int64_t whole[T_COUNT] = {m->Vf * C, L * C, L * (m->Hf + 2 * m->Gf) * D * C,
                                    L * C * m->Hf * D, L * C, L * 2 * m->Ff * C, L * C * m->Ff, C};
    for (int k = 0; k < T_COUNT; ++k)
        local[k] = loc[k], full[k] = whole[k];
}

/* Where local parameter i of TP rank `tp_rank` lives in the TP = 1 model
 * (the logical layout a checkpoint stores): its index there, or -1 for a
 * padding row of the vocabulary; *tensor gets which tensor it is.  The
 * column-parallel tensors (wte rows, q/k/v rows of the fused QKV, gate and
 * up rows) take this rank's block of rows, the row-parallel ones (the two
 * projections) its block of columns, the norms are whole.  TP = 1: i. */
static int64_t logical_index(const cpa_gpt *m, int tp_rank, int64_t i, int *tensor)
{
    const int64_t C = m->C, D = m->D, t = tp_rank;
    const int64_t q = m->H * D, kv = m->G * D, Wf = (m->Hf + 2 * m->Gf) * D;
    int64_t size[T_COUNT], full[T_COUNT];
    tensor_sizes(m, size, full);
    int64_t off = 0, loff = 0;
    int k = 0;
    while (k < T_COUNT - 1 && i >= off + size[k])
        off += size[k], loff += full[k], ++k;
    *tensor = k;
    const int64_t e = i - off; /* element of this tensor */
    switch (k) {
    case T_WTE: {
        const int64_t row = t * m->V + e / C;
        return row < m->Vf ? loff + row * C + e % C : -1;
    }
    case T_QKV: { /* (L, W, C): q rows, k rows, v rows */
        const int64_t l = e / (m->W * C), r = e / C % m->W, c = e % C;
        /* TP rank t's KV heads (shared when G < TP) */
        const int64_t k0 = (m->kv_rep > 1 ? t / m->kv_rep : t * m->G) * D;
        const int64_t g = r < q ? t * q + r : r < q + kv ? m->Hf * D + k0 + (r - q)
                                                         : (m->Hf + m->Gf) * D + k0 + (r - q - kv);
        return loff + (l * Wf + g) * C + c;
    }
    case T_PROJ: { /* (L, C, H*D): columns */
        const int64_t row = e / q, c = e % q;
        return loff + row * m->Hf * D + t * q + c;
    }
    case T_FC1: { /* (L, 2F, C): gate rows, up rows */
        const int64_t l = e / (2 * m->F * C), r = e / C % (2 * m->F), c = e % C;
        const int64_t g = r < m->F ? t * m->F + r : m->Ff + t * m->F + (r - m->F);
        return loff + (l * 2 * m->Ff + g) * C + c;
    }
    case T_FC2: { /* (L, C, F): columns */
        const int64_t row = e / m->F, c = e % m->F;
        return loff + row * m->Ff + t * m->F + c;
    }
    default: /* the norms: replicated */
        return loff + e;
    }
}

int64_t cpa_gpt_logical_index(const cpa_gpt *m, int64_t i)
{
    int k;
    return i < 0 || i >= m->num_params ? -1 : logical_index(m, m->tp_rank, i, &k);
}

int64_t cpa_gpt_logical_params(const cpa_gpt *m)
{
    int64_t local[T_COUNT], full[T_COUNT], n = 0;
    tensor_sizes(m, local, full);
    for (int k = 0; k < T_COUNT; ++k)
        n += full[k];
    return n;
}

void cpa_gpt_to_logical(const cpa_gpt *m, int tp_rank, const float *local, float *logical)
{
    for (int64_t i = 0; i < m->num_params; ++i) {
        int k;
        const int64_t g = logical_index(m, tp_rank, i, &k);
        if (g >= 0)
            logical[g] = local[i];
    }
}

void cpa_gpt_from_logical(const cpa_gpt *m, const float *logical, float *local)
{
    for (int64_t i = 0; i < m->num_params; ++i) {
        int k;
        const int64_t g = logical_index(m, m->tp_rank, i, &k);
        local[i] = g >= 0 ? logical[g] : 0.0f;
    }
}

void cpa_gpt_init_params(cpa_gpt *m, uint64_t seed)
{
    /* GPT-2: N(0, 0.02), the output projections scaled by 1/sqrt(2L), norms
     * at 1; each element keyed by its TP = 1 index, so every TP size starts
     * from the same weights. */
    const float std = 0.02f, std_out = 0.02f / sqrtf(2.0f * (float)m->L);
    for (int64_t i = 0; i < m->num_params; ++i) {
        int k;
        const int64_t g = logical_index(m, m->tp_rank, i, &k);
        if (k == T_LN1 || k == T_LN2 || k == T_LNF)
            m->params[i] = 1.0f;
        else if (g < 0) /* vocabulary padding */
            m->params[i] = 0.0f;
        else
            m->params[i] = std * normal_at(seed, (uint64_t)g) *
                           (k == T_PROJ || k == T_FC2 ? std_out / std : 1.0f);
    }
}

/* ---- tensor parallelism --------------------------------------------------- */

/* TP collectives, each counted in m->comm: `bytes` the payload, `share`
 * the fraction of it a ring algorithm sends per rank. */
static void tp_count(cpa_gpt *m, double bytes, double share, double t0)
{
    m->comm.tp_bytes += bytes * share * (double)(m->tp - 1) / (double)m->tp;
    m->comm.tp_s += MPI_Wtime() - t0;
    m->comm.tp_calls += 1;
}

static cpa_status tp_allreduce(cpa_gpt *m, void *x, int64_t n, MPI_Datatype type, MPI_Op op,
                               const char *what)
{
    if (m->tp == 1)
        return CPA_OK;
    int size = 0;
    MPI_Type_size(type, &size);
    const double t0 = MPI_Wtime();
    CPA_TRY(cpa_comm_allreduce(x, n, type, op, m->tp_comm, what));
    tp_count(m, (double)n * size, 2.0, t0);
    return CPA_OK;
}

/* Sum the TP ranks' partial outputs (row-parallel layers, the column-
 * parallel layers' input gradients, the embedding): nothing at TP = 1. */
static cpa_status tp_sum(cpa_gpt *m, float *x, int64_t n, const char *what)
{
    return tp_allreduce(m, x, n, MPI_FLOAT, MPI_SUM, what);
}

/* Sequence parallel: every rank's residual rows [Nl, C] into all N rows
 * (`local` NULL: in place, this rank's rows already at row n0 of `all`). */
static cpa_status sp_allgather(cpa_gpt *m, const float *local, float *all, const char *what)
{
    const double t0 = MPI_Wtime();
    const int64_t tt = cpa_trace_begin();
    MPI_Request req;
    int rc = MPI_Iallgatherv(local ? local : MPI_IN_PLACE, m->sp_counts[m->tp_rank], MPI_FLOAT,
                             all, m->sp_counts, m->sp_displs, MPI_FLOAT, m->tp_comm, &req);
    if (rc != MPI_SUCCESS)
        return cpa_model_mpi_error(rc, "MPI_Iallgatherv");
    CPA_TRY(cpa_comm_wait(1, &req, "%s (TP all-gather of %lld rows)", what, (long long)m->N));
    tp_count(m, 4.0 * (double)(m->N * m->C), 1.0, t0);
    cpa_trace_end(tt, "TP all-gather", CPA_TRACE_ALLGATHER, 0,
                  (cpa_trace_arg[]){{"bytes", 4.0 * (double)(m->N * m->C)}}, 1);
    return CPA_OK;
}

/* Sequence parallel: the partial sums [N, C] of every rank, each rank
 * keeping its residual rows' total [Nl, C]. */
static cpa_status sp_reduce_scatter(cpa_gpt *m, const float *all, float *local, const char *what)
{
    const double t0 = MPI_Wtime();
    const int64_t tt = cpa_trace_begin();
    MPI_Request req;
    int rc = MPI_Ireduce_scatter(all, local, m->sp_counts, MPI_FLOAT, MPI_SUM, m->tp_comm, &req);
    if (rc != MPI_SUCCESS)
        return cpa_model_mpi_error(rc, "MPI_Ireduce_scatter");
    CPA_TRY(cpa_comm_wait(1, &req, "%s (TP reduce-scatter of %lld rows)", what,
                          (long long)m->N));
    tp_count(m, 4.0 * (double)(m->N * m->C), 1.0, t0);
    cpa_trace_end(tt, "TP reduce-scatter", CPA_TRACE_ALLGATHER, 0,
                  (cpa_trace_arg[]){{"bytes", 4.0 * (double)(m->N * m->C)}}, 1);
    return CPA_OK;
}

/* The input of a column-parallel layer (or the gradient arriving at a
 * row-parallel one's output): this rank's residual rows `local` [Nl, C]
 * as all N rows — themselves without sp, else gathered into a->full. */
static cpa_status tp_rows_in(cpa_gpt *m, const float *local, const float **all, const char *what)
{
    *all = local;
    if (!m->sp)
        return CPA_OK;
    CPA_TRY(sp_allgather(m, local, m->a.full, what));
    *all = m->a.full;
    return CPA_OK;
}

/* The partial output [N, C] of a row-parallel layer (or a column-parallel
 * one's input gradient) summed over TP, as this rank's residual rows:
 * all-reduced in place without sp, else reduce-scattered into a->part. */
static cpa_status tp_rows_out(cpa_gpt *m, float *partial, const float **local, const char *what)
{
    *local = partial;
    if (!m->sp)
        return tp_sum(m, partial, m->N * m->C, what);
    CPA_TRY(sp_reduce_scatter(m, partial, m->a.part, what));
    *local = m->a.part;
    return CPA_OK;
}

/* Vocabulary-parallel embedding into this rank's residual rows res0
 * [Nl, C]: each TP rank looks up its vocabulary rows (zero elsewhere) for
 * all N tokens, and the partial rows are summed over TP (all-reduce, or
 * reduce-scatter with sp). */
static cpa_status embedding_forward(cpa_gpt *m, float *res0)
{
    const int64_t N = m->N, C = m->C;
    if (m->tp == 1) {
        cpa_embedding_forward(res0, m->tok, m->p.wte, N, C);
        return CPA_OK;
    }
    float *out = m->sp ? m->a.tmp : res0; /* [N, C] partial rows */
    for (int64_t n = 0; n < N; ++n) {
        const int64_t v = (int64_t)m->tok[n] - m->v0;
        if (v >= 0 && v < m->Vv)
            memcpy(out + n * C, m->p.wte + v * C, sizeof(float) * (size_t)C);
        else
            memset(out + n * C, 0, sizeof(float) * (size_t)C);
    }
    const char *what = "the vocabulary-parallel embedding";
    return m->sp ? sp_reduce_scatter(m, out, res0, what) : tp_sum(m, out, N * C, what);
}

/* dres0: the gradient at this rank's residual rows [Nl, C] (all N rows
 * are needed: gathered with sp). */
static cpa_status embedding_backward(cpa_gpt *m, const float *dres0)
{
    const int64_t C = m->C;
    if (m->tp == 1) {
        cpa_embedding_backward(m->g.wte, dres0, m->tok, m->N, C);
        return CPA_OK;
    }
    const float *dout;
    CPA_TRY(tp_rows_in(m, dres0, &dout, "the embedding gradient"));
    for (int64_t n = 0; n < m->N; ++n) {
        const int64_t v = (int64_t)m->tok[n] - m->v0;
        if (v >= 0 && v < m->Vv)
            for (int64_t c = 0; c < C; ++c)
                m->g.wte[v * C + c] += dout[n * C + c];
    }
    return CPA_OK;
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
    CPA_TRY(tp_allreduce(m, mx, N, MPI_DOUBLE, MPI_MAX,
                         "the vocabulary-parallel cross-entropy (row max)"));
    for (int64_t n = 0; n < N; ++n) {
        double e = 0.0;
        for (int64_t v = 0; v < V; ++v)
            e += exp((double)logits[n * V + v] - mx[n]);
        se[n] = e;
        const int64_t t = (int64_t)m->tgt[n] - m->v0;
        zt[n] = m->tgt[n] >= 0 && t >= 0 && t < V ? (double)logits[n * V + t] : 0.0;
    }
    CPA_TRY(tp_allreduce(m, se, 2 * N, MPI_DOUBLE, MPI_SUM,
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

/* The tensors several TP ranks hold: the norm weights (all TP ranks) and,
 * when G < TP, each layer's key and value rows (kv_rep ranks): `fn` gets
 * each range [off, off + n) of the local parameters and how many ranks
 * hold it.  Returns the number of floats visited. */
static int64_t shared_ranges(const cpa_gpt *m, int norms, int kv,
                             void (*fn)(void *arg, int64_t off, int64_t n, int copies), void *arg)
{
    const int64_t L = m->L, C = m->C, kvrows = 2 * m->G * m->D;
    int64_t total = 0;
    if (norms) {
        const int64_t off[3] = {m->p.ln1w - m->params, m->p.ln2w - m->params,
                                m->p.lnfw - m->params};
        const int64_t n[3] = {L * C, L * C, C};
        for (int k = 0; k < 3; ++k) {
            if (fn)
                fn(arg, off[k], n[k], m->tp);
            total += n[k];
        }
    }
    if (kv && m->kv_rep > 1)
        for (int64_t l = 0; l < L; ++l) {
            const int64_t off = (m->p.qkvw - m->params) + (l * m->W + m->H * m->D) * C;
            if (fn)
                fn(arg, off, kvrows * C, m->kv_rep);
            total += kvrows * C;
        }
    return total;
}

typedef struct pack_arg {
    float *grads, *buf;
    int64_t at;
    int unpack;
} pack_arg;

static void pack_range(void *arg, int64_t off, int64_t n, int copies)
{
    pack_arg *p = arg;
    (void)copies;
    if (p->unpack)
        memcpy(p->grads + off, p->buf + p->at, sizeof(float) * (size_t)n);
    else
        memcpy(p->buf + p->at, p->grads + off, sizeof(float) * (size_t)n);
    p->at += n;
}

/* Sum the shared ranges (norms, or KV rows) over `comm`, packed into one
 * buffer: one all-reduce. */
static cpa_status sum_shared(cpa_gpt *m, float *grads, int norms, int kv, MPI_Comm comm,
                             int ranks, const char *what)
{
    pack_arg pk = {grads, m->share, 0, 0};
    const int64_t n = shared_ranges(m, norms, kv, pack_range, &pk);
    const double t0 = MPI_Wtime();
    CPA_TRY(cpa_comm_allreduce(m->share, n, MPI_FLOAT, MPI_SUM, comm, what));
    m->comm.tp_bytes += 4.0 * (double)n * 2.0 * (ranks - 1) / ranks;
    m->comm.tp_s += MPI_Wtime() - t0;
    m->comm.tp_calls += 1;
    pk.at = 0, pk.unpack = 1;
    shared_ranges(m, norms, kv, pack_range, &pk);
    return CPA_OK;
}

cpa_status cpa_gpt_reduce_shared_grads(cpa_gpt *m, float *grads)
{
    if (m->sp)
        CPA_TRY(sum_shared(m, grads, 1, 0, m->tp_comm, m->tp,
                           "the norm weights' gradients (sequence parallel: TP all-reduce)"));
    if (m->kv_rep > 1)
        CPA_TRY(sum_shared(m, grads, 0, 1, m->kv_comm, m->kv_rep,
                           "the replicated KV heads' gradients (all-reduce over their TP ranks)"));
    return CPA_OK;
}

typedef struct norm_arg {
    const float *grads;
    double extra; /* sum over the shared ranges of g^2 (1/copies - 1) */
} norm_arg;

static void norm_range(void *arg, int64_t off, int64_t n, int copies)
{
    norm_arg *a = arg;
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i)
        s += (double)a->grads[off + i] * a->grads[off + i];
    a->extra += s * (1.0 / copies - 1.0);
}

double cpa_gpt_grad_norm(const cpa_gpt *m, const float *grads)
{
    /* Every local square, the shared ranges' weighted down to count each
     * logical element once after the sum over TP. */
    double sum = 0.0;
    for (int64_t i = 0; i < m->num_params; ++i)
        sum += (double)grads[i] * grads[i];
    if (m->tp > 1) {
        norm_arg a = {grads, 0.0};
        shared_ranges(m, 1, 1, norm_range, &a);
        sum += a.extra;
        if (cpa_comm_allreduce(&sum, 1, MPI_DOUBLE, MPI_SUM, m->tp_comm,
                               "the gradient norm (TP)") != CPA_OK)
            return NAN;
    }
    return sqrt(sum > 0.0 ? sum : 0.0);
}

void cpa_gpt_comm_stats_get(const cpa_gpt *m, cpa_gpt_comm_stats *st) { *st = m->comm; }
void cpa_gpt_comm_stats_reset(cpa_gpt *m) { memset(&m->comm, 0, sizeof m->comm); }

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
    const int64_t N = m->N, Nl = m->Nl, C = m->C;
    slot x = {a->ln1 + s * Nl * C, a->rstd1 + s * Nl, a->qkv + s * N * m->W,
              a->att + s * N * m->H * m->D, a->lse + s * m->B * m->H * m->T,
              a->resmid + s * Nl * C, a->ln2 + s * Nl * C, a->rstd2 + s * Nl,
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

/* The last plan call's bytes and exposed waits into m->comm. */
static void count_cp(cpa_gpt *m)
{
    cpa_plan_stats st;
    cpa_plan_last_stats(m->plan, &st);
    m->comm.cp_bytes += st.bytes_sent;
    m->comm.cp_wait_s += st.wait_s;
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
        count_cp(m);
        return CPA_OK;
    }
    for (int64_t b = 0; b < m->B; ++b) {
        CPA_TRY(set_sample_documents(m, b));
        CPA_TRY(cpa_plan_forward(m->plan, saved[b], sample_of(q, b), sample_of(k, b),
                                 sample_of(v, b), sample_of(out, b), sample_of(lse, b)));
        cpa_plan_last_stats(m->plan, &st);
        *flops += st.flops;
        count_cp(m);
    }
    return CPA_OK;
}

static cpa_status attention_backward(cpa_gpt *m, cpa_plan_saved **saved, cpa_tensor q,
                                     cpa_tensor k, cpa_tensor v, cpa_tensor out, cpa_tensor lse,
                                     cpa_tensor dout, cpa_tensor dq, cpa_tensor dk, cpa_tensor dv)
{
    if (!m->cfg.sample_documents) {
        CPA_TRY(cpa_plan_backward(m->plan, saved[0], q, k, v, out, lse, dout, dq, dk, dv));
        count_cp(m);
        return CPA_OK;
    }
    for (int64_t b = 0; b < m->B; ++b) {
        CPA_TRY(set_sample_documents(m, b));
        CPA_TRY(cpa_plan_backward(m->plan, saved[b], sample_of(q, b), sample_of(k, b),
                                  sample_of(v, b), sample_of(out, b), sample_of(lse, b),
                                  sample_of(dout, b), sample_of(dq, b), sample_of(dk, b),
                                  sample_of(dv, b)));
        count_cp(m);
    }
    return CPA_OK;
}

/* `count`: add the attention's flops to the model flops (not when the
 * backward recomputes the block).  res[l] and the slot's norms hold this
 * rank's Nl residual rows; the column-parallel matmuls take all N rows
 * (tp_rows_in) and the row-parallel ones give them back (tp_rows_out). */
/* A span of the trace (cpattn.h, docs/trace.md) on the main track, with
 * the layer as its argument: nothing when not recording. */
static void trace_layer(int64_t t, const char *name, int64_t l)
{
    cpa_trace_end(t, name, CPA_TRACE_MODEL, 0, (cpa_trace_arg[]){{"layer", (double)l}}, 1);
}

static cpa_status block_forward(cpa_gpt *m, int64_t l, slot x, int count)
{
    const int64_t N = m->N, Nl = m->Nl, C = m->C, HD = m->H * m->D;
    const float *in = m->a.res + l * Nl * C, *h, *o;
    float *out = m->a.res + (l + 1) * Nl * C;
    const int64_t t_block = cpa_trace_begin(), t_att = cpa_trace_begin(); /* inside t_block */
    cpa_rmsnorm_forward(x.ln1, x.rstd1, in, m->p.ln1w + l * C, Nl, C, m->cfg.norm_eps);
    CPA_TRY(tp_rows_in(m, x.ln1, &h, "the QKV projection's input"));
    cpa_matmul_forward(x.qkv, h, m->p.qkvw + l * m->W * C, N, C, m->W);
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
    CPA_TRY(tp_rows_out(m, m->a.tmp, &o, "the attention output projection"));
    cpa_residual_forward(x.resmid, in, o, Nl * C);
    trace_layer(t_att, "attention", l);
    const int64_t t_mlp = cpa_trace_begin();
    cpa_rmsnorm_forward(x.ln2, x.rstd2, x.resmid, m->p.ln2w + l * C, Nl, C, m->cfg.norm_eps);
    CPA_TRY(tp_rows_in(m, x.ln2, &h, "the MLP's input"));
    cpa_matmul_forward(x.fc1, h, m->p.fc1w + l * 2 * m->F * C, N, C, 2 * m->F);
    cpa_swiglu_forward(x.sw, x.fc1, N, m->F);
    cpa_matmul_forward(m->a.tmp, x.sw, m->p.fc2w + l * C * m->F, N, m->F, C);
    CPA_TRY(tp_rows_out(m, m->a.tmp, &o, "the MLP down projection"));
    cpa_residual_forward(out, x.resmid, o, Nl * C);
    trace_layer(t_mlp, "MLP", l);
    trace_layer(t_block, count ? "block forward" : "block forward (recomputed)", l);
    return CPA_OK;
}

/* dres [Nl, C] holds d loss / d res[l+1] on entry and d loss / d res[l] on
 * return.  The backward of tp_rows_out is tp_rows_in and vice versa; with
 * sp the norm outputs are gathered again for the weight gradients. */
static cpa_status block_backward(cpa_gpt *m, int64_t l, slot x)
{
    const int64_t N = m->N, Nl = m->Nl, C = m->C, HD = m->H * m->D, F = m->F;
    acts *a = &m->a;
    const float *in = a->res + l * Nl * C, *dy, *h, *d;
    const int64_t t_block = cpa_trace_begin(), t_mlp = cpa_trace_begin(); /* inside t_block */
    /* MLP branch: dres is the gradient of fc2's output rows. */
    CPA_TRY(tp_rows_in(m, a->dres, &dy, "the MLP down projection's output gradient"));
    memset(a->dsw, 0, sizeof(float) * (size_t)(N * F));
    cpa_matmul_backward(a->dsw, m->g.fc2w + l * C * F, dy, x.sw, m->p.fc2w + l * C * F, N, F, C);
    memset(a->dfc1, 0, sizeof(float) * (size_t)(N * 2 * F));
    cpa_swiglu_backward(a->dfc1, a->dsw, x.fc1, N, F);
    CPA_TRY(tp_rows_in(m, x.ln2, &h, "the MLP's input (again, for its weight gradient)"));
    memset(a->dln, 0, sizeof(float) * (size_t)(N * C));
    cpa_matmul_backward(a->dln, m->g.fc1w + l * 2 * F * C, a->dfc1, h,
                        m->p.fc1w + l * 2 * F * C, N, C, 2 * F);
    CPA_TRY(tp_rows_out(m, a->dln, &d, "the MLP input gradient"));
    cpa_rmsnorm_backward(a->dres, m->g.ln2w + l * C, d, x.resmid, m->p.ln2w + l * C,
                         x.rstd2, Nl, C); /* dres is now d/d resmid */
    trace_layer(t_mlp, "MLP backward", l);
    const int64_t t_att = cpa_trace_begin();
    /* Attention branch. */
    CPA_TRY(tp_rows_in(m, a->dres, &dy, "the attention output projection's output gradient"));
    memset(a->datt, 0, sizeof(float) * (size_t)(N * HD));
    cpa_matmul_backward(a->datt, m->g.projw + l * C * HD, dy, x.att, m->p.projw + l * C * HD,
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
    CPA_TRY(tp_rows_in(m, x.ln1, &h, "the QKV projection's input (again, for its weight "
                                     "gradient)"));
    memset(a->dln, 0, sizeof(float) * (size_t)(N * C));
    cpa_matmul_backward(a->dln, m->g.qkvw + l * m->W * C, a->dqkv, h, m->p.qkvw + l * m->W * C,
                        N, C, m->W);
    CPA_TRY(tp_rows_out(m, a->dln, &d, "the QKV input gradient"));
    cpa_rmsnorm_backward(a->dres, m->g.ln1w + l * C, d, in, m->p.ln1w + l * C, x.rstd1, Nl, C);
    trace_layer(t_att, "attention backward", l);
    trace_layer(t_block, "block backward", l);
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
    int64_t tt = cpa_trace_begin();
    CPA_TRY(embedding_forward(m, a->res));
    trace_layer(tt, "embedding", -1);
    for (int64_t l = 0; l < m->L; ++l)
        CPA_TRY(block_forward(m, l, slot_of(m, m->cfg.recompute ? 0 : l), 1));
    const int64_t Nl = m->Nl;
    const float *last = a->res + m->L * Nl * C;
    tt = cpa_trace_begin();
    /* The final norm on this rank's rows, in place among all N rows of lnf. */
    cpa_rmsnorm_forward(a->lnf + m->n0 * C, a->rstdf, last, m->p.lnfw, Nl, C, m->cfg.norm_eps);
    if (m->sp)
        CPA_TRY(sp_allgather(m, NULL, a->lnf, "the LM head's input"));
    cpa_matmul_forward(a->logits, a->lnf, m->p.wte, N, C, m->Vv); /* [N, Vv]: my columns */
    CPA_TRY(tp_crossentropy_forward(m, a->logits, loss_sum));
    trace_layer(tt, "LM head and loss", m->L);
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

    tt = cpa_trace_begin();
    tp_crossentropy_backward(m, a->dlogits, a->logits, loss_scale);
    memset(a->dln, 0, sizeof(float) * (size_t)(N * C));
    cpa_matmul_backward(a->dln, m->g.wte, a->dlogits, a->lnf, m->p.wte, N, C, m->Vv);
    const float *d;
    CPA_TRY(tp_rows_out(m, a->dln, &d, "the LM head input gradient"));
    memset(a->dres, 0, sizeof(float) * (size_t)(Nl * C));
    cpa_rmsnorm_backward(a->dres, m->g.lnfw, d, last, m->p.lnfw, a->rstdf, Nl, C);
    trace_layer(tt, "LM head backward", m->L);
    for (int64_t l = m->L - 1; l >= 0; --l) {
        if (m->cfg.recompute) /* rebuild this block's activations from its input */
            CPA_TRY(block_forward(m, l, slot_of(m, 0), 0));
        CPA_TRY(block_backward(m, l, slot_of(m, m->cfg.recompute ? 0 : l)));
    }
    tt = cpa_trace_begin();
    CPA_TRY(embedding_backward(m, a->dres));
    trace_layer(tt, "embedding backward", -1);
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
