/*
 * plan.c — context-parallel plans: collective validation of the
 * configuration (every rank returns the same verdict and message), the
 * algorithm table, and plan-once/run-many state (duplicated communicator,
 * kernel context, the algorithm's buffers).  Forward and backward calls
 * allocate nothing.
 */
#include "cp_internal.h"
#include "kernel_internal.h"
#include "trace.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

struct cpa_plan {
    cpa_cp_config cfg;    /* v_head_dim resolved */
    const cpa_algo_row *row;
    MPI_Comm comm;        /* duplicate of the caller's, MPI_ERRORS_RETURN */
    int rank, P;
    cpa_split split;
    int64_t Sl;
    cpa_attn_ctx *ctx;
    void *state;          /* the row's own */
    int64_t *cu_seqlens;  /* the plan's copy of cfg.mask.cu_seqlens (NULL: none) */
    int64_t docs_cap;     /* entries cu_seqlens has room for */
    uint64_t docs_hash;   /* of the current cu_seqlens (0: none) */
    int32_t *chunk_of;    /* CHUNKS split: the plan's assignment (split.chunk_of) */
    int64_t saved_floats;
    uint64_t serial;      /* unique per plan of this process: ties saved states to it */
    cpa_status broken;    /* CPA_ERR_TIMEOUT once a call timed out: see check_usable */
    cpa_plan_stats stats;
};

struct cpa_plan_saved {
    const cpa_plan *plan; /* the plan whose forwards fill it */
    uint64_t serial;      /* and its serial (an address can be reused by a later plan) */
    int filled;           /* a forward has written it */
    uint64_t docs_hash;   /* the plan's documents when it was filled */
    float *data;          /* plan->saved_floats floats (NULL if 0) */
};

/* ---- the algorithm table: one line per algorithm (STYLE.md habit 4) ----- */

static const cpa_algo_row *const algo_table[] = {
    &cpa_ulysses_row,
    &cpa_ring_row,
    &cpa_hybrid_row,
    &cpa_allgather_row,
};

#define ALGO_COUNT ((int)(sizeof algo_table / sizeof algo_table[0]))

static const cpa_algo_row *find_algo(cpa_algo id)
{
    /* Ids are the table's indices (checked by the unit tests). */
    if ((int)id < 0 || (int)id >= ALGO_COUNT || algo_table[id]->id != id)
        return NULL;
    return algo_table[id];
}

int cpa_algo_count(void) { return ALGO_COUNT; }

const char *cpa_algo_name(cpa_algo algo)
{
    const cpa_algo_row *e = find_algo(algo);
    return e ? e->name : "unknown";
}

cpa_status cpa_algo_describe(cpa_algo algo, cpa_algo_info *info)
{
    const cpa_algo_row *e = find_algo(algo);
    if (!e || !info)
        return cpa_error(CPA_ERR_ARG, "cpa_algo_describe: no algorithm %d (0 .. %d)", (int)algo,
                         ALGO_COUNT - 1);
    info->name = e->name;
    info->summary = e->summary;
    info->uses_window = e->uses_window;
    info->uses_ulysses_degree = e->uses_ulysses_degree;
    info->uses_overlap = e->uses_overlap;
    info->uses_balance = e->uses_balance;
    return CPA_OK;
}

/* "a, b or c" over the rows that pass `pick` (NULL: all). */
static const char *names_of(char *buf, size_t cap, int (*pick)(const cpa_algo_row *))
{
    const char *list[ALGO_COUNT];
    int n = 0;
    for (int i = 0; i < ALGO_COUNT; ++i)
        if (!pick || pick(algo_table[i]))
            list[n++] = algo_table[i]->name;
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && len < cap; ++i)
        len += (size_t)snprintf(buf + len, cap - len, "%s%s", list[i],
                                i + 2 < n ? ", " : i + 1 < n ? " or " : "");
    return buf;
}

cpa_status cpa_algo_parse(const char *name, cpa_algo *out)
{
    for (int i = 0; i < ALGO_COUNT; ++i)
        if (name && !strcmp(name, algo_table[i]->name)) {
            *out = algo_table[i]->id;
            return CPA_OK;
        }
    char all[256];
    return cpa_error(CPA_ERR_ARG, "--context-parallel-algo %s: unknown algorithm (expected %s)",
                     name ? name : "(null)", names_of(all, sizeof all, NULL));
}

/* ---- validation (local; made collective by cpa_plan_create) ------------- */

static int uses_window(const cpa_algo_row *e) { return e->uses_window; }
static int uses_overlap(const cpa_algo_row *e) { return e->uses_overlap; }
static int uses_balance(const cpa_algo_row *e) { return e->uses_balance; }
static int uses_degree(const cpa_algo_row *e) { return e->uses_ulysses_degree; }

static cpa_status validate(const cpa_cp_config *c, int world)
{
    const cpa_algo_row *e = find_algo(c->algo);
    char names[256];
    if (!e)
        return cpa_error(CPA_ERR_ARG, "--context-parallel-algo: unknown algorithm %d (expected "
                         "%s)", (int)c->algo, names_of(names, sizeof names, NULL));
    if (c->cp_size != world)
        return cpa_error(CPA_ERR_ARG, "--context-parallel-size %d does not match the %d ranks of "
                         "the communicator (run with mpiexec -n %d)", c->cp_size, world, c->cp_size);
    if (c->batch < 1 || c->num_heads < 1 || c->num_kv_heads < 1 || c->head_dim < 1 ||
        c->v_head_dim < 0 || c->seq_length < 1)
        return cpa_error(CPA_ERR_ARG, "batch %lld, sequence %lld, heads %lld, kv heads %lld, "
                         "head dim %lld: all must be positive", (long long)c->batch,
                         (long long)c->seq_length, (long long)c->num_heads,
                         (long long)c->num_kv_heads, (long long)c->head_dim);
    if (c->num_heads % c->num_kv_heads != 0)
        return cpa_error(CPA_ERR_ARG, "--num-query-groups %lld: must divide "
                         "--num-attention-heads %lld (GQA needs H %% G == 0)",
                         (long long)c->num_kv_heads, (long long)c->num_heads);
    CPA_TRY(cpa_mask_check(c->mask, c->seq_length));
    if ((int)c->layout < 0 || (int)c->layout > 2)
        return cpa_error(CPA_ERR_ARG, "unknown layout %d", (int)c->layout);
    if (c->impl != CPA_IMPL_FAST && c->impl != CPA_IMPL_REFERENCE)
        return cpa_error(CPA_ERR_ARG, "unknown implementation %d (fast 0, reference 1)",
                         (int)c->impl);
    if (c->tp_size < 1)
        return cpa_error(CPA_ERR_ARG, "--tensor-model-parallel-size %d: must be >= 1", c->tp_size);
    if (c->num_threads < 0)
        return cpa_error(CPA_ERR_ARG, "threads %d: must be >= 0", c->num_threads);
    if (!isfinite(c->softmax_scale))
        return cpa_error(CPA_ERR_ARG, "--softmax-scale is not finite");
    if (!e->uses_window && c->window != 1)
        return cpa_error(CPA_ERR_ARG, "--cp-window-size %d applies to %s; %s needs 1", c->window,
                         names_of(names, sizeof names, uses_window), e->name);
    if (!e->uses_overlap && c->send_recv_overlap)
        return cpa_error(CPA_ERR_ARG, "--use-cp-send-recv-overlap applies to %s; %s has no ring "
                         "step to overlap", names_of(names, sizeof names, uses_overlap), e->name);
    if (c->balance != CPA_BALANCE_ZIGZAG && c->balance != CPA_BALANCE_DOCUMENTS)
        return cpa_error(CPA_ERR_ARG, "--cp-load-balance: unknown value %d", (int)c->balance);
    if (!e->uses_balance && c->balance == CPA_BALANCE_DOCUMENTS)
        return cpa_error(CPA_ERR_ARG, "--cp-load-balance documents applies to %s; %s balances "
                         "by heads (every rank attends the whole sequence)",
                         names_of(names, sizeof names, uses_balance), e->name);
    if (!e->uses_ulysses_degree && c->ulysses_degree > 1)
        return cpa_error(CPA_ERR_ARG, "--ulysses-degree-in-cp %d is only for %s (this run uses "
                         "%s)", c->ulysses_degree, names_of(names, sizeof names, uses_degree),
                         e->name);
    CPA_TRY(e->validate(c));
    const cpa_split sp = e->split(c);
    if (sp.kind == CPA_SPLIT_CHUNKS) { /* its table comes at creation; the rule now */
        if (cpa_split_document_chunks(c->seq_length, c->cp_size) == 0)
            return cpa_error(CPA_ERR_ARG, "--seq-length %lld is shorter than the %d ranks "
                             "(--cp-load-balance documents assigns each rank 1 to 4 chunks of "
                             "at least one position: S >= P)",
                             (long long)c->seq_length, c->cp_size);
        return CPA_OK;
    }
    return cpa_split_check(sp, c->seq_length);
}

/* The split with its chunk table (CHUNKS), into plan->chunk_of. */
static cpa_status plan_split(cpa_plan *plan)
{
    plan->split = plan->row->split(&plan->cfg);
    CPA_TRY(cpa_split_fill_table(&plan->split, plan->cfg.seq_length, plan->cfg.mask,
                                 &plan->chunk_of));
    plan->Sl = cpa_split_rows(plan->split, plan->cfg.seq_length, plan->rank);
    return plan->Sl < 0 ? CPA_ERR_ARG : CPA_OK;
}

/* The configuration with its defaults filled in (v_head_dim). */
static cpa_cp_config resolved(const cpa_cp_config *c)
{
    cpa_cp_config r = *c;
    if (r.v_head_dim == 0)
        r.v_head_dim = r.head_dim;
    return r;
}

/* The configuration as numbers with their flag names, to find a flag whose
 * value differs between ranks (a launcher or script bug that would
 * otherwise end in a hang or wrong results). */
#define CONFIG_FIELDS 20
static void config_fields(const cpa_cp_config *c, long long v[CONFIG_FIELDS])
{
    uint32_t scale_bits;
    memcpy(&scale_bits, &c->softmax_scale, sizeof scale_bits);
    const long long x[CONFIG_FIELDS] = {
        c->algo, c->cp_size, c->window, c->ulysses_degree, c->tp_size, c->send_recv_overlap,
        c->mask.kind, c->layout, c->batch, c->seq_length, c->num_heads, c->num_kv_heads,
        c->head_dim, c->v_head_dim ? c->v_head_dim : c->head_dim, scale_bits, c->impl,
        c->mask.window, c->mask.num_docs,
        (long long)(c->mask.cu_seqlens ? cpa_fnv1a64(CPA_FNV_OFFSET, c->mask.cu_seqlens,
                                                     sizeof(int64_t) *
                                                         (size_t)(c->mask.num_docs + 1))
                                       : 0),
        c->balance};
    memcpy(v, x, sizeof x);
}

static const char *const config_flags[CONFIG_FIELDS] = {
    "--context-parallel-algo", "--context-parallel-size", "--cp-window-size",
    "--ulysses-degree-in-cp", "--tensor-model-parallel-size", "--use-cp-send-recv-overlap",
    "--attention-mask-type", "--megatron-cp-in-bnsd (layout)", "--micro-batch-size",
    "--seq-length", "--num-attention-heads", "--num-query-groups", "--kv-channels",
    "--v-channels", "--softmax-scale", "the implementation (--reference)", "--sliding-window",
    "the number of documents (cu_seqlens)", "cu_seqlens", "--cp-load-balance"};

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

cpa_status cpa_cp_agree(MPI_Comm comm, cpa_status mine)
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
    CPA_TRY(cpa_cp_agree(comm, s));

    CPA_TRY(check_same_everywhere(comm, config));

    cpa_plan *plan = cpa_calloc(sizeof *plan, "plan");
    s = plan ? CPA_OK : CPA_ERR_NOMEM;
    if (s == CPA_OK) {
        plan->cfg = resolved(config);
        plan->row = find_algo(config->algo);
        plan->comm = MPI_COMM_NULL;
        plan->rank = rank;
        plan->P = world;
        plan->Sl = 0; /* this rank's rows: set with the split */
        plan->saved_floats = plan->row->saved_floats(&plan->cfg);
        static uint64_t next_serial; /* plans are made by one thread at a time (MPI calls) */
        plan->serial = ++next_serial;
        s = cpa_comm_dup(comm, &plan->comm);
    }
    if (s == CPA_OK && config->mask.cu_seqlens) { /* the plan's own copy */
        const size_t n = (size_t)(config->mask.num_docs + 1);
        plan->cu_seqlens = cpa_malloc(sizeof(int64_t) * n, "the plan's cu_seqlens");
        s = plan->cu_seqlens ? CPA_OK : CPA_ERR_NOMEM;
        if (s == CPA_OK) {
            memcpy(plan->cu_seqlens, config->mask.cu_seqlens, sizeof(int64_t) * n);
            plan->cfg.mask.cu_seqlens = plan->cu_seqlens;
            plan->docs_cap = (int64_t)n;
            plan->docs_hash = cpa_fnv1a64(CPA_FNV_OFFSET, plan->cu_seqlens, sizeof(int64_t) * n);
        }
    }
    if (s == CPA_OK) {
        s = plan_split(plan);
    }
    if (s == CPA_OK) {
        int64_t dmax = plan->cfg.head_dim > plan->cfg.v_head_dim ? plan->cfg.head_dim
                                                                  : plan->cfg.v_head_dim;
        cpa_attn_ctx_config kc = {dmax, config->num_threads, config->isa};
        s = cpa_attn_ctx_create(&kc, &plan->ctx);
        /* The backward's workspace for the largest call, now: no call allocates. */
        int64_t H, G, Sq, Sk;
        plan->row->kernel_shape(&plan->cfg, &H, &G, &Sq, &Sk);
        if (s == CPA_OK)
            s = cpa_attn_ctx_reserve_for(plan->ctx, plan->cfg.batch, H, G, Sq, Sk);
    }
    if (s == CPA_OK)
        s = plan->row->init(plan->comm, &plan->cfg, plan->split, plan->ctx, &plan->state);
    /* Allocation can fail on one rank only: agree before anyone proceeds. */
    cpa_status all = cpa_cp_agree(comm, s);
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
    if (plan->row)
        plan->row->destroy(plan->state);
    cpa_attn_ctx_destroy(plan->ctx);
    cpa_free(plan->cu_seqlens);
    cpa_free(plan->chunk_of);
    if (plan->comm != MPI_COMM_NULL)
        MPI_Comm_free(&plan->comm);
    cpa_free(plan);
}

const cpa_cp_config *cpa_plan_config(const cpa_plan *plan) { return plan ? &plan->cfg : NULL; }
cpa_split cpa_plan_split(const cpa_plan *plan) { return plan->split; }
int cpa_plan_rank(const cpa_plan *plan) { return plan->rank; }
int64_t cpa_plan_local_seq(const cpa_plan *plan) { return plan->Sl; }

/* ---- saved state ---------------------------------------------------------------- */

cpa_status cpa_plan_saved_create(const cpa_plan *plan, cpa_plan_saved **out)
{
    if (!plan || !out)
        return cpa_error(CPA_ERR_ARG, "cpa_plan_saved_create: plan and out must not be NULL");
    cpa_plan_saved *sv = cpa_calloc(sizeof *sv, "saved attention state");
    if (!sv)
        return CPA_ERR_NOMEM;
    sv->plan = plan;
    sv->serial = plan->serial;
    if (plan->saved_floats > 0 &&
        !(sv->data = cpa_calloc(sizeof(float) * (size_t)plan->saved_floats,
                                "saved attention state"))) {
        cpa_free(sv);
        return CPA_ERR_NOMEM;
    }
    *out = sv;
    return CPA_OK;
}

void cpa_plan_saved_destroy(cpa_plan_saved *saved)
{
    if (!saved)
        return;
    cpa_free(saved->data);
    cpa_free(saved);
}

int64_t cpa_plan_saved_bytes(const cpa_cp_config *c)
{
    if (!c || c->cp_size < 1 || validate(c, c->cp_size) != CPA_OK)
        return -1;
    cpa_cp_config r = resolved(c);
    return (int64_t)sizeof(cpa_plan_saved) +
           (int64_t)sizeof(float) * find_algo(c->algo)->saved_floats(&r);
}

/* ---- calls ------------------------------------------------------------------ */

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
                             "match the plan's [B, local rows, N, D] = [%lld, %lld, %lld, %lld] on "
                             "this rank", name,
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
        return cpa_error(CPA_ERR_ARG, "lse: expected a local [B, H, local rows] = [%lld, %lld, %lld] view",
                         (long long)c->batch, (long long)c->num_heads, (long long)plan->Sl);
    return CPA_OK;
}

static cpa_status check_saved(const cpa_plan *plan, const cpa_plan_saved *saved, int backward)
{
    if (!saved)
        return CPA_OK;
    if (saved->plan != plan || saved->serial != plan->serial)
        return cpa_error(CPA_ERR_ARG, "saved: this saved state belongs to another plan (make it "
                         "with cpa_plan_saved_create on the plan that runs the layer)");
    if (backward && !saved->filled)
        return cpa_error(CPA_ERR_ARG, "saved: no forward has filled this saved state; pass the "
                         "one the layer's forward filled, or NULL to rebuild it");
    if (backward && saved->docs_hash != plan->docs_hash)
        return cpa_error(CPA_ERR_ARG, "saved: the plan's documents changed "
                         "(cpa_plan_set_documents) since the forward that filled this saved "
                         "state; set the forward's documents again before its backward");
    return CPA_OK;
}

/* A call that timed out leaves collectives pending on the plan's
 * communicators; a later call would pair with them and exchange the wrong
 * data, so the plan refuses further work. */
static cpa_status check_usable(const cpa_plan *plan)
{
    if (plan->broken != CPA_OK)
        return cpa_error(CPA_ERR_ARG, "this plan's communication %s in an earlier call and may "
                         "still have transfers pending; destroy it (a dead or stuck peer "
                         "usually means the job must stop)",
                         plan->broken == CPA_ERR_TIMEOUT ? "timed out" : "failed");
    return CPA_OK;
}

static void note_outcome(cpa_plan *plan, cpa_status s)
{
    if (s == CPA_ERR_TIMEOUT || s == CPA_ERR_MPI)
        plan->broken = s;
}

cpa_status cpa_plan_forward(cpa_plan *plan, cpa_plan_saved *saved, cpa_tensor q, cpa_tensor k,
                            cpa_tensor v, cpa_tensor out, cpa_tensor lse)
{
    if (!plan)
        return cpa_error(CPA_ERR_ARG, "cpa_plan_forward: plan is NULL");
    CPA_TRY(check_usable(plan));
    CPA_TRY(check_saved(plan, saved, 0));
    if (saved)
        saved->filled = 0; /* until this forward succeeds */
    CPA_TRY(check_io(plan, &q, &k, &v, &out, &lse));
    double t0 = cpa_wtime();
    const int64_t tt = cpa_trace_t0();
    cpa_status s = plan->row->forward(plan->state, saved ? saved->data : NULL, q, k, v, out, lse);
    note_outcome(plan, s);
    plan->row->stats(plan->state, &plan->stats);
    plan->stats.total_s = cpa_wtime() - t0;
    CPA_TRACE_END(tt, "plan forward", CPA_TRACE_PLAN, CPA_TRACE_LANE_MAIN,
                  {"bytes_sent", plan->stats.bytes_sent}, {"flops", plan->stats.flops},
                  {"wait_s", plan->stats.wait_s}, {"algo", (double)plan->cfg.algo});
    if (saved && s == CPA_OK) {
        saved->filled = 1;
        saved->docs_hash = plan->docs_hash;
    }
    return s;
}

/* ---- per-call documents ------------------------------------------------------ */

static uint64_t docs_hash(cpa_mask m)
{
    return m.cu_seqlens ? cpa_fnv1a64(CPA_FNV_OFFSET, m.cu_seqlens,
                                      sizeof(int64_t) * (size_t)(m.num_docs + 1))
                        : 0;
}

cpa_status cpa_plan_set_documents(cpa_plan *plan, const int64_t *cu_seqlens, int64_t num_docs)
{
    if (!plan)
        return cpa_error(CPA_ERR_ARG, "cpa_plan_set_documents: plan is NULL");
    CPA_TRY(check_usable(plan));
    cpa_mask m = plan->cfg.mask;
    m.cu_seqlens = num_docs > 0 ? cu_seqlens : NULL;
    m.num_docs = num_docs > 0 ? num_docs : 0;
    cpa_status s = CPA_OK;
    if (num_docs < 0 || (num_docs > 0 && !cu_seqlens))
        s = cpa_error(CPA_ERR_ARG, "cu_seqlens: %lld documents at %p: give N >= 1 documents "
                      "and N+1 offsets, or 0 for none", (long long)num_docs,
                      (const void *)cu_seqlens);
    else if (plan->cfg.balance == CPA_BALANCE_DOCUMENTS)
        s = cpa_error(CPA_ERR_ARG, "cu_seqlens: this plan assigns chunks to ranks from its "
                      "documents (--cp-load-balance documents), so they cannot change per call; "
                      "use the zigzag balance for per-sample documents");
    else
        s = cpa_mask_check(m, plan->cfg.seq_length);
    /* Every rank must pass the same documents: the check agrees on the
     * status and compares a hash of them (two collectives per call). */
    CPA_TRY(cpa_cp_agree(plan->comm, s));
    const uint64_t h = docs_hash(m);
    long long v[4] = {(long long)(h >> 33), (long long)(h & 0x1ffffffffULL), 0, 0};
    v[2] = -v[0], v[3] = -v[1];
    CPA_TRY(cpa_comm_allreduce(v, 4, MPI_LONG_LONG, MPI_MAX, plan->comm,
                               "cpa_plan_set_documents: the documents check"));
    if (v[0] != -v[2] || v[1] != -v[3])
        return cpa_error(CPA_ERR_ARG, "cu_seqlens differs between ranks: every rank of the "
                         "plan must pass the same documents");
    if (m.cu_seqlens && m.num_docs + 1 > plan->docs_cap) { /* grows only */
        int64_t *n = cpa_malloc(sizeof(int64_t) * (size_t)(m.num_docs + 1), "the plan's cu_seqlens");
        CPA_TRY(cpa_cp_agree(plan->comm, n ? CPA_OK : CPA_ERR_NOMEM));
        cpa_free(plan->cu_seqlens);
        plan->cu_seqlens = n;
        plan->docs_cap = m.num_docs + 1;
    }
    if (m.cu_seqlens) {
        memcpy(plan->cu_seqlens, m.cu_seqlens, sizeof(int64_t) * (size_t)(m.num_docs + 1));
        m.cu_seqlens = plan->cu_seqlens;
    }
    plan->cfg.mask = m;
    plan->docs_hash = h;
    plan->row->set_mask(plan->state, m);
    return CPA_OK;
}

cpa_status cpa_plan_backward(cpa_plan *plan, const cpa_plan_saved *saved, cpa_tensor q,
                             cpa_tensor k, cpa_tensor v, cpa_tensor out, cpa_tensor lse,
                             cpa_tensor dout, cpa_tensor dq, cpa_tensor dk, cpa_tensor dv)
{
    if (!plan)
        return cpa_error(CPA_ERR_ARG, "cpa_plan_backward: plan is NULL");
    const cpa_cp_config *c = &plan->cfg;
    CPA_TRY(check_usable(plan));
    CPA_TRY(check_io(plan, &q, &k, &v, &out, &lse));
    CPA_TRY(check_local(plan, "dout", &dout, c->num_heads, c->v_head_dim));
    CPA_TRY(check_local(plan, "dq", &dq, c->num_heads, c->head_dim));
    CPA_TRY(check_local(plan, "dk", &dk, c->num_kv_heads, c->head_dim));
    CPA_TRY(check_local(plan, "dv", &dv, c->num_kv_heads, c->v_head_dim));
    CPA_TRY(check_saved(plan, saved, 1));
    double t0 = cpa_wtime();
    const int64_t tt = cpa_trace_t0();
    /* A row with nothing to save (ring, all-gather) gets NULL either way. */
    cpa_status s = plan->row->backward(plan->state, saved ? saved->data : NULL, q, k, v, out, lse,
                                       dout, dq, dk, dv);
    note_outcome(plan, s);
    plan->row->stats(plan->state, &plan->stats);
    plan->stats.total_s = cpa_wtime() - t0;
    CPA_TRACE_END(tt, "plan backward", CPA_TRACE_PLAN, CPA_TRACE_LANE_MAIN,
                  {"bytes_sent", plan->stats.bytes_sent}, {"flops", plan->stats.flops},
                  {"wait_s", plan->stats.wait_s}, {"algo", (double)plan->cfg.algo});
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
    if (!c || c->cp_size < 1 || validate(c, c->cp_size) != CPA_OK)
        return -1;
    const cpa_algo_row *e = find_algo(c->algo);
    cpa_cp_config cfg = resolved(c);
    const int64_t dmax = cfg.head_dim > cfg.v_head_dim ? cfg.head_dim : cfg.v_head_dim;
    int64_t H, G, Sq, Sk;
    e->kernel_shape(&cfg, &H, &G, &Sq, &Sk);
    return (int64_t)sizeof(cpa_plan) + e->state_bytes(&cfg) +
           (cfg.mask.cu_seqlens ? (int64_t)sizeof(int64_t) * (cfg.mask.num_docs + 1) : 0) +
           /* a chunk table, and cpa_split_balance's scratch while it is made */
           (int64_t)(sizeof(int32_t) + 16) * cfg.cp_size * CPA_SPLIT_MAX_PIECES +
           (int64_t)(sizeof(double) + sizeof(int)) * cfg.cp_size +
           cpa_attn_ctx_bytes(dmax, cfg.num_threads, cfg.isa, cfg.batch, H, G, Sq, Sk);
}

cpa_status cpa_plan_volume(const cpa_cp_config *c, double *forward_bytes, double *backward_bytes)
{
    if (!c || !forward_bytes || !backward_bytes)
        return cpa_error(CPA_ERR_ARG, "cpa_plan_volume: config and outputs must not be NULL");
    if (c->cp_size < 1)
        return cpa_error(CPA_ERR_ARG, "--context-parallel-size %d: must be >= 1", c->cp_size);
    CPA_TRY(validate(c, c->cp_size));
    cpa_cp_config cfg = resolved(c);
    *forward_bytes = *backward_bytes = 0.0;
    for (int r = 0; r < c->cp_size; ++r) {
        double f, b;
        find_algo(c->algo)->volume(&cfg, r, &f, &b);
        *forward_bytes = f > *forward_bytes ? f : *forward_bytes;
        *backward_bytes = b > *backward_bytes ? b : *backward_bytes;
    }
    return CPA_OK;
}

cpa_status cpa_plan_rank_volume(const cpa_cp_config *c, int rank, double *forward_bytes,
                                double *backward_bytes)
{
    if (!c || !forward_bytes || !backward_bytes)
        return cpa_error(CPA_ERR_ARG, "cpa_plan_rank_volume: config and outputs must not be NULL");
    if (c->cp_size < 1)
        return cpa_error(CPA_ERR_ARG, "--context-parallel-size %d: must be >= 1", c->cp_size);
    if (rank < 0 || rank >= c->cp_size)
        return cpa_error(CPA_ERR_ARG, "cpa_plan_rank_volume: rank %d is outside the %d ranks",
                         rank, c->cp_size);
    CPA_TRY(validate(c, c->cp_size));
    cpa_cp_config cfg = resolved(c);
    find_algo(c->algo)->volume(&cfg, rank, forward_bytes, backward_bytes);
    return CPA_OK;
}
