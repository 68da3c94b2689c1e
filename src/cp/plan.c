/*
 * plan.c — context-parallel plans: collective validation of the
 * configuration (every rank returns the same verdict and message), the
 * algorithm table, and plan-once/run-many state (duplicated communicator,
 * kernel context, the algorithm's buffers).  Forward and backward calls
 * allocate nothing.
 */
#include "cp_internal.h"
#include "kernel_internal.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

struct cpa_plan {
    cpa_cp_config cfg;
    const struct algo_entry *algo;
    MPI_Comm comm;        /* duplicate of the caller's, MPI_ERRORS_RETURN */
    MPI_Comm ucomm, rcomm; /* hybrid: the Ulysses group and the ring group */
    int rank, P;
    cpa_split split;
    int64_t Sl;
    cpa_attn_ctx *ctx;
    cpa_ring ring;
    cpa_ulysses uly;
    cpa_plan_stats stats;
};

/* ---- the algorithm table (one row per algorithm: STYLE.md habit 4) ------- */

typedef struct algo_entry {
    cpa_algo id;
    const char *name;
    /* The algorithm's own rules (the common ones are checked before). */
    cpa_status (*validate)(const cpa_cp_config *c);
    cpa_split (*split)(const cpa_cp_config *c);
    cpa_status (*init)(cpa_plan *plan);
    int64_t (*bytes)(const cpa_cp_config *c); /* what init allocates on one rank */
    /* The largest local kernel call: q [B, *Sq, *H, .] against k [B, *Sk, *G, .]. */
    void (*kernel_shape)(const cpa_cp_config *c, int64_t *H, int64_t *G, int64_t *Sq,
                         int64_t *Sk);
    cpa_status (*forward)(cpa_plan *plan, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                          cpa_tensor out, cpa_tensor lse);
    cpa_status (*backward)(cpa_plan *plan, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                           cpa_tensor out, cpa_tensor lse, cpa_tensor dout, cpa_tensor dq,
                           cpa_tensor dk, cpa_tensor dv);
} algo_entry;

static const algo_entry *find_algo(cpa_algo id);

const char *cpa_algo_name(cpa_algo algo)
{
    const algo_entry *e = find_algo(algo);
    return e ? e->name : "unknown";
}

int cpa_algo_count(void) { return 3; }

cpa_status cpa_algo_parse(const char *name, cpa_algo *out)
{
    for (int i = 0; i < cpa_algo_count(); ++i)
        if (name && !strcmp(name, cpa_algo_name((cpa_algo)i))) {
            *out = (cpa_algo)i;
            return CPA_OK;
        }
    return cpa_error(CPA_ERR_ARG, "--context-parallel-algo %s: unknown algorithm (expected "
                     "ulysses_cp_algo, megatron_cp_algo or hybrid_cp_algo)", name ? name : "(null)");
}

/* ---- validation (local; made collective by cpa_plan_create) ------------- */

static cpa_status window_rule(int W, int R, const char *of)
{
    if (W != 1 && (W < 1 || W >= R || R % W != 0))
        return cpa_error(CPA_ERR_ARG, "--cp-window-size %d with %s %d: the window must be 1, or "
                         "satisfy 1 < W < %s and %s %% W == 0 (double ring: windows of W ranks)",
                         W, of, R, of, of);
    return CPA_OK;
}

static cpa_status validate(const cpa_cp_config *c, int world)
{
    const algo_entry *e = find_algo(c->algo);
    if (!e)
        return cpa_error(CPA_ERR_ARG, "--context-parallel-algo: unknown algorithm %d", (int)c->algo);
    if (c->cp_size != world)
        return cpa_error(CPA_ERR_ARG, "--context-parallel-size %d does not match the %d ranks of "
                         "the communicator (run with mpiexec -n %d)", c->cp_size, world, c->cp_size);
    if (c->batch < 1 || c->num_heads < 1 || c->num_kv_heads < 1 || c->head_dim < 1 ||
        c->v_head_dim < 0)
        return cpa_error(CPA_ERR_ARG, "batch %lld, heads %lld, kv heads %lld, head dim %lld: all "
                         "must be positive", (long long)c->batch, (long long)c->num_heads,
                         (long long)c->num_kv_heads, (long long)c->head_dim);
    if (c->num_heads % c->num_kv_heads != 0)
        return cpa_error(CPA_ERR_ARG, "--num-attention-heads %lld is not a multiple of "
                         "--num-query-groups %lld (GQA needs H %% G == 0)",
                         (long long)c->num_heads, (long long)c->num_kv_heads);
    if (c->mask != CPA_MASK_CAUSAL && c->mask != CPA_MASK_NONE)
        return cpa_error(CPA_ERR_ARG, "--attention-mask-type: unknown mask %d", (int)c->mask);
    if ((int)c->layout < 0 || (int)c->layout > 2)
        return cpa_error(CPA_ERR_ARG, "unknown layout %d", (int)c->layout);
    if (c->tp_size < 1)
        return cpa_error(CPA_ERR_ARG, "--tensor-model-parallel-size %d: must be >= 1", c->tp_size);
    if (c->num_threads < 0)
        return cpa_error(CPA_ERR_ARG, "threads %d: must be >= 0", c->num_threads);
    if (!isfinite(c->softmax_scale))
        return cpa_error(CPA_ERR_ARG, "--softmax-scale is not finite");
    if (c->algo != CPA_ALGO_HYBRID && c->ulysses_degree > 1)
        return cpa_error(CPA_ERR_ARG, "--ulysses-degree-in-cp %d is only for hybrid_cp_algo "
                         "(this run uses %s)", c->ulysses_degree, e->name);
    CPA_TRY(e->validate(c));
    return cpa_split_check(e->split(c), c->seq_length);
}

/* ---- ring (megatron_cp_algo) ------------------------------------------------ */

static cpa_split ring_split(const cpa_cp_config *c)
{
    cpa_split s = {c->mask == CPA_MASK_CAUSAL ? CPA_SPLIT_ZIGZAG : CPA_SPLIT_CONTIGUOUS,
                   c->cp_size, 1};
    return s;
}

static cpa_status ring_validate(const cpa_cp_config *c)
{
    return window_rule(c->window, c->cp_size, "--context-parallel-size");
}

static cpa_ring_shape ring_shape(const cpa_cp_config *c, int64_t H, int64_t G)
{
    cpa_ring_shape sh = {c->window, c->send_recv_overlap, c->mask, c->layout, c->seq_length,
                         c->batch, H, G, c->head_dim, c->v_head_dim, c->softmax_scale};
    return sh;
}

static int64_t ring_bytes(const cpa_cp_config *c)
{
    cpa_ring_shape sh = ring_shape(c, c->num_heads, c->num_kv_heads);
    return cpa_ring_bytes(&sh, c->cp_size);
}

static void ring_kernel_shape(const cpa_cp_config *c, int64_t *H, int64_t *G, int64_t *Sq,
                              int64_t *Sk)
{
    *H = c->num_heads, *G = c->num_kv_heads, *Sq = *Sk = c->seq_length / c->cp_size;
}

static cpa_status ring_init(cpa_plan *plan)
{
    cpa_ring_shape sh = ring_shape(&plan->cfg, plan->cfg.num_heads, plan->cfg.num_kv_heads);
    return cpa_ring_init(&plan->ring, plan->comm, &sh, plan->ctx);
}

static cpa_status ring_forward(cpa_plan *plan, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                               cpa_tensor out, cpa_tensor lse)
{
    cpa_status s = cpa_ring_forward(&plan->ring, q, k, v, out, lse);
    plan->stats.wait_s = plan->ring.xfer.wait_s;
    plan->stats.bytes_sent = plan->ring.xfer.bytes_sent;
    plan->stats.compute_s = plan->ring.compute_s;
    plan->stats.flops = plan->ring.flops;
    return s;
}

static cpa_status ring_backward(cpa_plan *plan, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                                cpa_tensor out, cpa_tensor lse, cpa_tensor dout, cpa_tensor dq,
                                cpa_tensor dk, cpa_tensor dv)
{
    cpa_status s = cpa_ring_backward(&plan->ring, q, k, v, out, lse, dout, dq, dk, dv);
    plan->stats.wait_s = plan->ring.xfer.wait_s;
    plan->stats.bytes_sent = plan->ring.xfer.bytes_sent;
    plan->stats.compute_s = plan->ring.compute_s;
    plan->stats.flops = plan->ring.flops;
    return s;
}

/* ---- Ulysses (ulysses_cp_algo) and hybrid (hybrid_cp_algo) ---------------- */

static cpa_split ulysses_split(const cpa_cp_config *c)
{
    cpa_split s = {CPA_SPLIT_CONTIGUOUS, c->cp_size, 1};
    return s;
}

static cpa_status ulysses_validate(const cpa_cp_config *c)
{
    const long long tp = c->tp_size, P = c->cp_size;
    if (c->num_heads % (tp * P) != 0)
        return cpa_error(CPA_ERR_ARG, "--num-attention-heads %lld is not divisible by "
                         "--tensor-model-parallel-size %lld x --context-parallel-size %lld "
                         "(Ulysses gives each rank whole heads: H %% (TP*P) == 0)",
                         (long long)c->num_heads, tp, P);
    if (c->window != 1)
        return cpa_error(CPA_ERR_ARG, "--cp-window-size %d applies to megatron_cp_algo and "
                         "hybrid_cp_algo; ulysses_cp_algo needs 1", c->window);
    return CPA_OK;
}

static cpa_ulysses_shape ulysses_shape(const cpa_cp_config *c, int64_t S)
{
    cpa_ulysses_shape sh = {c->batch, S, c->num_heads, c->num_kv_heads, c->head_dim,
                            c->v_head_dim, c->layout, c->mask, c->softmax_scale};
    return sh;
}

static int64_t ulysses_bytes(const cpa_cp_config *c)
{
    cpa_ulysses_shape sh = ulysses_shape(c, c->seq_length);
    return cpa_ulysses_bytes(&sh, c->cp_size);
}

static void ulysses_kernel_shape(const cpa_cp_config *c, int64_t *H, int64_t *G, int64_t *Sq,
                                 int64_t *Sk)
{
    *H = c->num_heads / c->cp_size;
    *G = cpa_ulysses_kv_heads(c->num_heads, c->num_kv_heads, c->cp_size);
    *Sq = *Sk = c->seq_length;
}

static cpa_status ulysses_init(cpa_plan *plan)
{
    cpa_ulysses_shape sh = ulysses_shape(&plan->cfg, plan->cfg.seq_length);
    return cpa_ulysses_init(&plan->uly, plan->comm, &sh, NULL, plan->ctx);
}

static void ulysses_stats(cpa_plan *plan)
{
    plan->stats.wait_s = plan->uly.wait_s;
    plan->stats.bytes_sent = plan->uly.bytes_sent;
    plan->stats.compute_s = plan->uly.compute_s;
    plan->stats.flops = plan->uly.flops;
}

static cpa_status ulysses_forward(cpa_plan *plan, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                                  cpa_tensor out, cpa_tensor lse)
{
    cpa_status s = cpa_ulysses_forward(&plan->uly, q, k, v, out, lse);
    ulysses_stats(plan);
    return s;
}

static cpa_status ulysses_backward(cpa_plan *plan, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                                   cpa_tensor out, cpa_tensor lse, cpa_tensor dout, cpa_tensor dq,
                                   cpa_tensor dk, cpa_tensor dv)
{
    cpa_status s = cpa_ulysses_backward(&plan->uly, q, k, v, out, lse, dout, dq, dk, dv);
    ulysses_stats(plan);
    return s;
}

static cpa_split hybrid_split(const cpa_cp_config *c)
{
    cpa_split s = {CPA_SPLIT_CONTIGUOUS, c->cp_size, 1};
    if (c->mask == CPA_MASK_CAUSAL)
        s.kind = CPA_SPLIT_ZIGZAG, s.U = c->ulysses_degree;
    return s;
}

static cpa_status hybrid_validate(const cpa_cp_config *c)
{
    const int U = c->ulysses_degree, P = c->cp_size;
    if (U <= 1 || P % U != 0)
        return cpa_error(CPA_ERR_ARG, "--ulysses-degree-in-cp %d with --context-parallel-size %d: "
                         "hybrid_cp_algo needs U > 1 and P %% U == 0", U, P);
    if (U == P)
        return cpa_error(CPA_ERR_ARG, "--ulysses-degree-in-cp %d equals --context-parallel-size: "
                         "that is pure Ulysses, use --context-parallel-algo ulysses_cp_algo", U);
    if (c->num_heads % ((long long)U * c->tp_size) != 0)
        return cpa_error(CPA_ERR_ARG, "--num-attention-heads %lld is not divisible by "
                         "--ulysses-degree-in-cp %d x --tensor-model-parallel-size %d "
                         "(H %% (U*TP) == 0)", (long long)c->num_heads, U, c->tp_size);
    return window_rule(c->window, P / U, "the ring size P/U =");
}

static cpa_status hybrid_init(cpa_plan *plan)
{
    const cpa_cp_config *c = &plan->cfg;
    const int U = c->ulysses_degree, R = plan->P / U;
    /* Ulysses groups: U consecutive ranks; ring groups: strided by U. */
    int rc = MPI_Comm_split(plan->comm, plan->rank / U, plan->rank % U, &plan->ucomm);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_split(plan->comm, plan->rank % U, plan->rank / U, &plan->rcomm);
    if (rc != MPI_SUCCESS)
        return cpa_mpi_error(rc, "MPI_Comm_split (hybrid groups)");
    const int64_t Hl = c->num_heads / U, Gl = cpa_ulysses_kv_heads(c->num_heads, c->num_kv_heads, U);
    cpa_ring_shape rs = ring_shape(c, Hl, Gl);
    CPA_TRY(cpa_ring_init(&plan->ring, plan->rcomm, &rs, plan->ctx));
    cpa_ulysses_shape us = ulysses_shape(c, c->seq_length / R);
    return cpa_ulysses_init(&plan->uly, plan->ucomm, &us, &plan->ring, plan->ctx);
}

static void hybrid_kernel_shape(const cpa_cp_config *c, int64_t *H, int64_t *G, int64_t *Sq,
                                int64_t *Sk)
{
    const int U = c->ulysses_degree, R = c->cp_size / U;
    *H = c->num_heads / U, *G = cpa_ulysses_kv_heads(c->num_heads, c->num_kv_heads, U);
    *Sq = *Sk = c->seq_length / R; /* the inner ring: blocks of the gathered rows */
}

static int64_t hybrid_bytes(const cpa_cp_config *c)
{
    const int U = c->ulysses_degree, R = c->cp_size / U;
    const int64_t Hl = c->num_heads / U, Gl = cpa_ulysses_kv_heads(c->num_heads, c->num_kv_heads, U);
    cpa_ring_shape rs = ring_shape(c, Hl, Gl);
    cpa_ulysses_shape us = ulysses_shape(c, c->seq_length / R);
    return cpa_ring_bytes(&rs, R) + cpa_ulysses_bytes(&us, U);
}

static const algo_entry algo_table[] = {
    {CPA_ALGO_ULYSSES, "ulysses_cp_algo", ulysses_validate, ulysses_split, ulysses_init,
     ulysses_bytes, ulysses_kernel_shape, ulysses_forward, ulysses_backward},
    {CPA_ALGO_RING, "megatron_cp_algo", ring_validate, ring_split, ring_init, ring_bytes,
     ring_kernel_shape, ring_forward, ring_backward},
    {CPA_ALGO_HYBRID, "hybrid_cp_algo", hybrid_validate, hybrid_split, hybrid_init, hybrid_bytes,
     hybrid_kernel_shape, ulysses_forward, ulysses_backward},
};

static const algo_entry *find_algo(cpa_algo id)
{
    for (size_t i = 0; i < sizeof algo_table / sizeof algo_table[0]; ++i)
        if (algo_table[i].id == id)
            return &algo_table[i];
    return NULL;
}

/* The configuration as numbers with their flag names, to find a flag whose
 * value differs between ranks (a launcher or script bug that would
 * otherwise end in a hang or wrong results). */
#define CONFIG_FIELDS 15
static void config_fields(const cpa_cp_config *c, long long v[CONFIG_FIELDS])
{
    uint32_t scale_bits;
    memcpy(&scale_bits, &c->softmax_scale, sizeof scale_bits);
    const long long x[CONFIG_FIELDS] = {
        c->algo, c->cp_size, c->window, c->ulysses_degree, c->tp_size, c->send_recv_overlap,
        c->mask, c->layout, c->batch, c->seq_length, c->num_heads, c->num_kv_heads, c->head_dim,
        c->v_head_dim ? c->v_head_dim : c->head_dim, scale_bits};
    memcpy(v, x, sizeof x);
}

static const char *const config_flags[CONFIG_FIELDS] = {
    "--context-parallel-algo", "--context-parallel-size", "--cp-window-size",
    "--ulysses-degree-in-cp", "--tensor-model-parallel-size", "--use-cp-send-recv-overlap",
    "--attention-mask-type", "--megatron-cp-in-bnsd (layout)", "--micro-batch-size",
    "--seq-length", "--num-attention-heads", "--num-query-groups", "--kv-channels",
    "--v-channels", "--softmax-scale"};

static cpa_status check_same_everywhere(MPI_Comm comm, const cpa_cp_config *c)
{
    long long v[CONFIG_FIELDS], lo[CONFIG_FIELDS], hi[CONFIG_FIELDS];
    config_fields(c, v);
    memcpy(lo, v, sizeof v);
    memcpy(hi, v, sizeof v);
    CPA_TRY(cpa_comm_allreduce(lo, CONFIG_FIELDS, MPI_LONG_LONG, MPI_MIN, comm,
                               "plan creation: the configuration check"));
    CPA_TRY(cpa_comm_allreduce(hi, CONFIG_FIELDS, MPI_LONG_LONG, MPI_MAX, comm,
                               "plan creation: the configuration check"));
    for (int i = 0; i < CONFIG_FIELDS; ++i)
        if (lo[i] != hi[i])
            return cpa_error(CPA_ERR_ARG, "%s differs between ranks (from %lld to %lld); every "
                             "rank must pass the same flags", config_flags[i], lo[i], hi[i]);
    return CPA_OK;
}

/* Every rank learns whether any rank failed; if one did, all return the
 * status and message of the lowest failing rank. */
static cpa_status agree(MPI_Comm comm, cpa_status mine)
{
    int code = (int)mine, who = -1;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mine == CPA_OK ? "" : cpa_last_error());
    CPA_TRY(cpa_comm_agree(comm, &code, msg, sizeof msg, &who));
    return code == CPA_OK ? CPA_OK : cpa_error((cpa_status)code, "%s", msg);
}

/* ---- plans ------------------------------------------------------------------ */

cpa_status cpa_plan_create(MPI_Comm comm, const cpa_cp_config *config, cpa_plan **out)
{
    if (comm == MPI_COMM_NULL)
        return cpa_error(CPA_ERR_ARG, "cpa_plan_create: communicator is MPI_COMM_NULL");
    int rank = 0, world = 0;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &world);
    cpa_status s = CPA_OK;
    if (!config || !out)
        s = cpa_error(CPA_ERR_ARG, "cpa_plan_create: config and out must not be NULL");
    else
        s = validate(config, world);
    CPA_TRY(agree(comm, s));

    CPA_TRY(check_same_everywhere(comm, config));

    cpa_plan *plan = cpa_calloc(sizeof *plan, "plan");
    s = plan ? CPA_OK : CPA_ERR_NOMEM;
    if (s == CPA_OK) {
        plan->cfg = *config;
        if (plan->cfg.v_head_dim == 0)
            plan->cfg.v_head_dim = plan->cfg.head_dim;
        plan->algo = find_algo(config->algo);
        plan->comm = plan->ucomm = plan->rcomm = MPI_COMM_NULL;
        plan->rank = rank;
        plan->P = world;
        plan->split = plan->algo->split(config);
        plan->Sl = config->seq_length / world;
        s = cpa_comm_dup(comm, &plan->comm);
    }
    if (s == CPA_OK) {
        int64_t dmax = plan->cfg.head_dim > plan->cfg.v_head_dim ? plan->cfg.head_dim
                                                                  : plan->cfg.v_head_dim;
        cpa_attn_ctx_config kc = {dmax, config->num_threads, config->isa};
        s = cpa_attn_ctx_create(&kc, &plan->ctx);
        /* The backward's workspace for the largest call, now: no call allocates. */
        int64_t H, G, Sq, Sk;
        plan->algo->kernel_shape(&plan->cfg, &H, &G, &Sq, &Sk);
        if (s == CPA_OK)
            s = cpa_attn_ctx_reserve_for(plan->ctx, plan->cfg.batch, H, G, Sq, Sk);
    }
    if (s == CPA_OK)
        s = plan->algo->init(plan);
    /* Allocation can fail on one rank only: agree before anyone proceeds. */
    cpa_status all = agree(comm, s);
    if (all != CPA_OK) {
        cpa_plan_destroy(plan);
        return all;
    }
    *out = plan;
    return CPA_OK;
}

void cpa_plan_destroy(cpa_plan *plan)
{
    if (!plan)
        return;
    cpa_ulysses_free(&plan->uly);
    cpa_ring_free(&plan->ring);
    cpa_attn_ctx_destroy(plan->ctx);
    MPI_Comm *comms[] = {&plan->ucomm, &plan->rcomm, &plan->comm};
    for (int i = 0; i < 3; ++i)
        if (*comms[i] != MPI_COMM_NULL)
            MPI_Comm_free(comms[i]);
    cpa_free(plan);
}

cpa_split cpa_plan_split(const cpa_plan *plan) { return plan->split; }
int cpa_plan_rank(const cpa_plan *plan) { return plan->rank; }
int64_t cpa_plan_local_seq(const cpa_plan *plan) { return plan->Sl; }

/* The local tensors must have the plan's local shapes. */
static cpa_status check_local(const cpa_plan *plan, const char *name, const cpa_tensor *t,
                              int64_t heads, int64_t dim)
{
    const int64_t want[4] = {plan->cfg.batch, plan->Sl, heads, dim};
    if (t->ndim != 4 || !t->data)
        return cpa_error(CPA_ERR_ARG, "%s: expected a 4-d local view with data", name);
    for (int i = 0; i < 4; ++i)
        if (t->shape[i] != want[i])
            return cpa_error(CPA_ERR_ARG, "%s: local shape [%lld, %lld, %lld, %lld] does not "
                             "match the plan's [B, S/P, N, D] = [%lld, %lld, %lld, %lld]", name,
                             (long long)t->shape[0], (long long)t->shape[1],
                             (long long)t->shape[2], (long long)t->shape[3], (long long)want[0],
                             (long long)want[1], (long long)want[2], (long long)want[3]);
    if (t->stride[3] != 1)
        return cpa_error(CPA_ERR_ARG, "%s: the head dim must have unit stride", name);
    return CPA_OK;
}

static cpa_status check_io(const cpa_plan *plan, const cpa_tensor *q, const cpa_tensor *k,
                           const cpa_tensor *v, const cpa_tensor *out, const cpa_tensor *lse)
{
    const cpa_cp_config *c = &plan->cfg;
    CPA_TRY(check_local(plan, "q", q, c->num_heads, c->head_dim));
    CPA_TRY(check_local(plan, "k", k, c->num_kv_heads, c->head_dim));
    CPA_TRY(check_local(plan, "v", v, c->num_kv_heads, c->v_head_dim));
    CPA_TRY(check_local(plan, "out", out, c->num_heads, c->v_head_dim));
    if (lse->ndim != 3 || !lse->data || lse->shape[0] != c->batch || lse->shape[1] != c->num_heads ||
        lse->shape[2] != plan->Sl)
        return cpa_error(CPA_ERR_ARG, "lse: expected a local [B, H, S/P] = [%lld, %lld, %lld] view",
                         (long long)c->batch, (long long)c->num_heads, (long long)plan->Sl);
    return CPA_OK;
}


cpa_status cpa_plan_forward(cpa_plan *plan, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                            cpa_tensor out, cpa_tensor lse)
{
    if (!plan)
        return cpa_error(CPA_ERR_ARG, "cpa_plan_forward: plan is NULL");
    CPA_TRY(check_io(plan, &q, &k, &v, &out, &lse));
    double t0 = cpa_wtime();
    cpa_status s = plan->algo->forward(plan, q, k, v, out, lse);
    plan->stats.total_s = cpa_wtime() - t0;
    return s;
}

cpa_status cpa_plan_backward(cpa_plan *plan, cpa_tensor q, cpa_tensor k, cpa_tensor v,
                             cpa_tensor out, cpa_tensor lse, cpa_tensor dout, cpa_tensor dq,
                             cpa_tensor dk, cpa_tensor dv)
{
    if (!plan)
        return cpa_error(CPA_ERR_ARG, "cpa_plan_backward: plan is NULL");
    const cpa_cp_config *c = &plan->cfg;
    CPA_TRY(check_io(plan, &q, &k, &v, &out, &lse));
    CPA_TRY(check_local(plan, "dout", &dout, c->num_heads, c->v_head_dim));
    CPA_TRY(check_local(plan, "dq", &dq, c->num_heads, c->head_dim));
    CPA_TRY(check_local(plan, "dk", &dk, c->num_kv_heads, c->head_dim));
    CPA_TRY(check_local(plan, "dv", &dv, c->num_kv_heads, c->v_head_dim));
    double t0 = cpa_wtime();
    cpa_status s = plan->algo->backward(plan, q, k, v, out, lse, dout, dq, dk, dv);
    plan->stats.total_s = cpa_wtime() - t0;
    return s;
}

void cpa_plan_last_stats(const cpa_plan *plan, cpa_plan_stats *stats)
{
    if (plan && stats)
        *stats = plan->stats;
}

int64_t cpa_plan_memory_bytes(const cpa_cp_config *c)
{
    /* Only a configuration plan creation would accept has an estimate: the
     * algorithms' shapes divide by the degrees the rules check.  The rule
     * broken is left in cpa_last_error. */
    const algo_entry *e = c ? find_algo(c->algo) : NULL;
    if (!e || c->cp_size < 1 || validate(c, c->cp_size) != CPA_OK)
        return -1;
    cpa_cp_config cfg = *c;
    if (cfg.v_head_dim == 0)
        cfg.v_head_dim = cfg.head_dim;
    const int64_t dmax = cfg.head_dim > cfg.v_head_dim ? cfg.head_dim : cfg.v_head_dim;
    int64_t H, G, Sq, Sk;
    e->kernel_shape(&cfg, &H, &G, &Sq, &Sk);
    return (int64_t)sizeof(cpa_plan) + e->bytes(&cfg) +
           cpa_attn_ctx_bytes(dmax, cfg.num_threads, cfg.isa, cfg.batch, H, G, Sq, Sk);
}
