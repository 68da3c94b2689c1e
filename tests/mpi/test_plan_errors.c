/*
 * test_plan_errors.c — cpa_plan_create's validation is collective: for a
 * bad configuration every rank of the communicator must return the same
 * status with the same message, and none may be left waiting in a
 * collective the others skipped (a hang here is a bug; CTest's timeout
 * catches it).  Starting from a valid ring configuration (checked to plan
 * and destroy cleanly), each case breaks one rule — on every rank, or on
 * one rank only — and checks on all ranks: the status is CPA_ERR_ARG, no
 * plan is handed out, the message equals rank 0's byte for byte, and it
 * names the offending flag; valid Ulysses and hybrid configurations plan.
 * Run under `mpiexec -n P`, P >= 2.
 */
#include "cpattn.h"
#include "test.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

static int rank_, P_;

static cpa_cp_config base(void)
{
    cpa_cp_config c;
    memset(&c, 0, sizeof c);
    c.algo = CPA_ALGO_RING;
    c.cp_size = P_;
    c.window = 1;
    c.mask.kind = CPA_MASK_CAUSAL;
    c.layout = CPA_LAYOUT_BSHD;
    c.batch = 1;
    c.seq_length = 16 * P_;
    c.num_heads = 8;
    c.num_kv_heads = 2;
    c.head_dim = 16;
    c.v_head_dim = 16;
    c.tp_size = 1;
    c.num_threads = 1;
    return c;
}

/* Create a plan from `c` on every rank; return this rank's status and copy
 * its message into msg.  Checks that all ranks got the same status. */
static cpa_status create(const char *name, MPI_Comm comm, const cpa_cp_config *c, cpa_plan **plan,
                         char msg[1024])
{
    *plan = NULL;
    cpa_clear_error();
    cpa_status st = cpa_plan_create(comm, c, plan);
    snprintf(msg, 1024, "%s", cpa_last_error());
    int lo = (int)st, hi = (int)st;
    MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    CHECK_MSG(lo == hi, "%s: ranks disagree on the status (%d..%d)", name, lo, hi);
    return st;
}

/* Every rank's message must equal rank 0's. */
static void check_same_message(const char *name, const char msg[1024])
{
    char root[1024];
    memcpy(root, msg, sizeof root);
    MPI_Bcast(root, (int)sizeof root, MPI_CHAR, 0, MPI_COMM_WORLD);
    CHECK_MSG(!strcmp(root, msg), "%s: rank %d's message differs from rank 0's:\n  mine: %s\n"
              "  rank 0: %s", name, rank_, msg, root);
}

/* The case must fail with CPA_ERR_ARG everywhere, the same message naming
 * `flag` (or, if flag2 is given, either). */
static void expect_arg(const char *name, MPI_Comm comm, const cpa_cp_config *c, const char *flag,
                       const char *flag2)
{
    char msg[1024];
    cpa_plan *plan;
    cpa_status st = create(name, comm, c, &plan, msg);
    CHECK_MSG(st == CPA_ERR_ARG, "%s: rank %d got %s: %s", name, rank_, cpa_status_string(st), msg);
    CHECK_MSG(plan == NULL, "%s: a plan was handed out with an error", name);
    if (st == CPA_OK)
        cpa_plan_destroy(plan);
    check_same_message(name, msg);
    CHECK_MSG(strstr(msg, flag) || (flag2 && strstr(msg, flag2)),
              "%s: message does not name %s: %s", name, flag, msg);
    if (rank_ == 0 && getenv("TEST_VERBOSE"))
        fprintf(stderr, "%s: %s\n", name, msg);
}

static void valid_base(void)
{
    cpa_cp_config c = base();
    char msg[1024];
    cpa_plan *plan;
    CHECK_MSG(create("base", MPI_COMM_WORLD, &c, &plan, msg) == CPA_OK, "base: %s", msg);
    CHECK(plan != NULL);
    cpa_plan_destroy(plan);
    c.mask.kind = CPA_MASK_NONE, c.seq_length = 3 * P_; /* the general mask needs only S % P */
    CHECK_MSG(create("general", MPI_COMM_WORLD, &c, &plan, msg) == CPA_OK, "general: %s", msg);
    cpa_plan_destroy(plan);
}

static void bad_cp_size(void)
{
    cpa_cp_config c = base();
    c.cp_size = P_ + 1;
    expect_arg("cp_size", MPI_COMM_WORLD, &c, "--context-parallel-size", NULL);
}

static void bad_window(void)
{
    cpa_cp_config c = base();
    for (int W = 2; W < P_; ++W) /* the first window that does not divide P */
        if (P_ % W) {
            c.window = W;
            expect_arg("window not dividing P", MPI_COMM_WORLD, &c, "--cp-window-size", NULL);
            break;
        }
    c.window = P_;
    expect_arg("window == P", MPI_COMM_WORLD, &c, "--cp-window-size", NULL);
    c.window = P_ + 2;
    expect_arg("window > P", MPI_COMM_WORLD, &c, "--cp-window-size", NULL);
    c.window = 0;
    expect_arg("window 0", MPI_COMM_WORLD, &c, "--cp-window-size", NULL);
}

static void expect_ok(const char *name, const cpa_cp_config *c);

static void bad_seq_length(void)
{
    cpa_cp_config c = base();
    /* Any length is fine (uneven shards) as long as every chunk holds a
     * position: causal zigzag needs S >= 2P, the contiguous split S >= P. */
    c.seq_length = 17 * P_; /* divisible by P, not by 2P */
    expect_ok("causal S % 2P != 0", &c);
    c.seq_length = 2 * P_ - 1;
    expect_arg("causal S < 2P", MPI_COMM_WORLD, &c, "--seq-length", "shorter than");
    c.mask.kind = CPA_MASK_NONE;
    c.seq_length = 16 * P_ + 1;
    expect_ok("general S % P != 0", &c);
    if (P_ > 1) {
        c.seq_length = P_ - 1;
        expect_arg("general S < P", MPI_COMM_WORLD, &c, "--seq-length", "S >= ");
    }
}

static void bad_heads(void)
{
    cpa_cp_config c = base();
    c.num_kv_heads = 3;
    expect_arg("H % G", MPI_COMM_WORLD, &c, "--num-attention-heads", "--num-query-groups");
}

static void expect_ok(const char *name, const cpa_cp_config *c)
{
    char msg[1024];
    cpa_plan *plan;
    cpa_status st = create(name, MPI_COMM_WORLD, c, &plan, msg);
    CHECK_MSG(st == CPA_OK && plan != NULL, "%s: valid configuration refused: %s", name, msg);
    cpa_plan_destroy(plan);
}

/* Ulysses: H % (TP*P) == 0, no window, no Ulysses degree on other algorithms. */
static void ulysses_rules(void)
{
    cpa_cp_config c = base();
    c.algo = CPA_ALGO_ULYSSES;
    if (8 % P_ == 0)
        expect_ok("ulysses valid", &c);
    else
        expect_arg("ulysses H % P", MPI_COMM_WORLD, &c, "--num-attention-heads", NULL);
    c.tp_size = 3; /* 8 % (3P) != 0 for every P */
    expect_arg("ulysses H % (TP*P)", MPI_COMM_WORLD, &c, "--tensor-model-parallel-size", NULL);
    c = base();
    c.algo = CPA_ALGO_ULYSSES;
    c.num_heads = 8 * P_;
    c.window = 2;
    expect_arg("ulysses window", MPI_COMM_WORLD, &c, "--cp-window-size", NULL);
    c = base();
    c.ulysses_degree = 2; /* ring */
    expect_arg("ring with a Ulysses degree", MPI_COMM_WORLD, &c, "--ulysses-degree-in-cp", NULL);
    c = base();
    c.algo = CPA_ALGO_ULYSSES;
    c.num_heads = 8 * P_;
    c.mask.kind = CPA_MASK_NONE;
    c.seq_length = 16 * P_ + 1;
    expect_ok("ulysses S % P != 0", &c);
    if (P_ > 1) {
        c.seq_length = P_ - 1;
        expect_arg("ulysses S < P", MPI_COMM_WORLD, &c, "--seq-length", NULL);
    }
}

/* Hybrid: U > 1, P % U == 0, U != P, H % (U*TP) == 0, W relative to R = P/U,
 * S >= 2P for causal. */
static void hybrid_rules(void)
{
    cpa_cp_config c = base();
    c.algo = CPA_ALGO_HYBRID;
    const int U_ok = P_ % 2 == 0 && P_ > 2 ? 2 : 0;
    if (U_ok) {
        c.ulysses_degree = U_ok;
        expect_ok("hybrid valid", &c);
        c.tp_size = 3; /* 8 % (2*3) != 0 */
        expect_arg("hybrid H % (U*TP)", MPI_COMM_WORLD, &c, "--num-attention-heads", NULL);
        c.tp_size = 1;
        c.window = P_ / U_ok; /* W == R */
        expect_arg("hybrid W >= R", MPI_COMM_WORLD, &c, "--cp-window-size", NULL);
        c.window = 1;
        c.seq_length = 16 * P_ + 2;
        expect_ok("hybrid S % 2P != 0", &c);
        c.seq_length = 2 * P_ - 1;
        expect_arg("hybrid S < 2P", MPI_COMM_WORLD, &c, "--seq-length", NULL);
    }
    c = base();
    c.algo = CPA_ALGO_HYBRID;
    c.ulysses_degree = 1;
    expect_arg("hybrid U = 1", MPI_COMM_WORLD, &c, "--ulysses-degree-in-cp", NULL);
    c.ulysses_degree = 0;
    expect_arg("hybrid U unset", MPI_COMM_WORLD, &c, "--ulysses-degree-in-cp", NULL);
    c.ulysses_degree = P_;
    expect_arg("hybrid U = P", MPI_COMM_WORLD, &c, "ulysses_cp_algo", NULL);
    c.ulysses_degree = P_ + 1;
    expect_arg("hybrid P % U", MPI_COMM_WORLD, &c, "--ulysses-degree-in-cp", NULL);
}

/* One rank's configuration differs from the others'. */
static void rank_mismatch(void)
{
    cpa_cp_config c = base();
    if (rank_ == 1)
        c.seq_length = 18 * P_; /* valid on its own */
    expect_arg("rank 1 valid other S", MPI_COMM_WORLD, &c, "--seq-length differs between ranks",
               NULL);
    c = base();
    if (rank_ == P_ - 1)
        c.window = P_; /* invalid on the last rank only */
    expect_arg("last rank bad W", MPI_COMM_WORLD, &c, "--cp-window-size", NULL);
    c = base();
    if (rank_ == 1)
        c.seq_length = P_; /* invalid on rank 1 only (causal: S >= 2P) */
    if (rank_ == P_ - 1 && P_ > 2)
        c.num_kv_heads = 3; /* another rule on a later rank: the lowest failing rank speaks */
    expect_arg("two ranks bad", MPI_COMM_WORLD, &c, "--seq-length", NULL);
    c = base();
    expect_arg("NULL config on rank 0", MPI_COMM_WORLD, rank_ == 0 ? NULL : &c, "NULL", NULL);
}

/* MPI_COMM_NULL is rejected locally (there is no group to agree with). */
static void null_comm(void)
{
    cpa_cp_config c = base();
    cpa_plan *plan = NULL;
    CHECK_STATUS(cpa_plan_create(MPI_COMM_NULL, &c, &plan), CPA_ERR_ARG);
    CHECK(plan == NULL);
    CHECK(strstr(cpa_last_error(), "MPI_COMM_NULL") != NULL);
}

/* Flags a row does not use are refused, naming the rows that take them. */
static void flags_a_row_does_not_use(void)
{
    cpa_cp_config c = base();
    c.algo = CPA_ALGO_ALLGATHER, c.send_recv_overlap = 1;
    expect_arg("allgather overlap", MPI_COMM_WORLD, &c, "--use-cp-send-recv-overlap", NULL);
    c.algo = CPA_ALGO_ULYSSES, c.num_heads = 8 * P_, c.num_kv_heads = 8 * P_;
    expect_arg("ulysses overlap", MPI_COMM_WORLD, &c, "megatron_cp_algo", NULL);
    cpa_cp_config w = base();
    w.algo = CPA_ALGO_ALLGATHER, w.window = 2;
    if (P_ > 2)
        expect_arg("allgather window", MPI_COMM_WORLD, &w, "--cp-window-size", NULL);
    cpa_cp_config d = base();
    static const int64_t bad_docs[] = {0, 5, 4};
    d.mask.cu_seqlens = bad_docs, d.mask.num_docs = 2;
    expect_arg("decreasing cu_seqlens", MPI_COMM_WORLD, &d, "cu_seqlens", NULL);
    d.mask.cu_seqlens = NULL, d.mask.num_docs = 0, d.mask.window = -3;
    expect_arg("negative window", MPI_COMM_WORLD, &d, "--sliding-window", NULL);
}

/* Saved states: filled only by a successful forward of their own plan. */
static void saved_state_misuse(void)
{
    cpa_cp_config c = base();
    c.algo = CPA_ALGO_ULYSSES, c.num_heads = 2 * P_, c.num_kv_heads = 2 * P_;
    char msg[1024];
    cpa_plan *a = NULL, *b = NULL;
    CHECK_MSG(create("saved a", MPI_COMM_WORLD, &c, &a, msg) == CPA_OK, "%s", msg);
    CHECK_MSG(create("saved b", MPI_COMM_WORLD, &c, &b, msg) == CPA_OK, "%s", msg);
    if (!a || !b)
        return;
    const int64_t Sl = c.seq_length / P_, H = c.num_heads, D = c.head_dim;
    float *buf = calloc((size_t)(9 * Sl * H * D + H * Sl), sizeof(float));
    cpa_tensor t[9];
    for (int i = 0; i < 9; ++i)
        t[i] = cpa_tensor_attn(buf + i * Sl * H * D, CPA_LAYOUT_BSHD, 1, Sl, H, D);
    const int64_t ls[3] = {1, H, Sl};
    cpa_tensor lse = cpa_tensor_make(buf + 9 * Sl * H * D, 3, ls);
    cpa_plan_saved *sa = NULL;
    CHECK_OK(cpa_plan_saved_create(a, &sa));
    /* backward before any forward */
    CHECK(cpa_plan_backward(a, sa, t[0], t[1], t[2], t[3], lse, t[4], t[5], t[6], t[7]) ==
          CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "no forward has filled") != NULL);
    /* another plan's saved state */
    CHECK(cpa_plan_forward(b, sa, t[0], t[1], t[2], t[3], lse) == CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "another plan") != NULL);
    /* a good forward, then one refused for its shapes: the state is no longer filled */
    CHECK_OK(cpa_plan_forward(a, sa, t[0], t[1], t[2], t[3], lse));
    cpa_tensor bad = t[3];
    bad.shape[1] += 1;
    CHECK(cpa_plan_forward(a, sa, t[0], t[1], t[2], bad, lse) == CPA_ERR_ARG);
    CHECK(cpa_plan_backward(a, sa, t[0], t[1], t[2], t[3], lse, t[4], t[5], t[6], t[7]) ==
          CPA_ERR_ARG);
    CHECK_OK(cpa_plan_forward(a, sa, t[0], t[1], t[2], t[3], lse));
    CHECK_OK(cpa_plan_backward(a, sa, t[0], t[1], t[2], t[3], lse, t[4], t[5], t[6], t[7]));
    cpa_plan_saved_destroy(sa);
    cpa_plan_destroy(a);
    cpa_plan_destroy(b);
    free(buf);
}

/* Per-call documents (cpa_plan_set_documents): a bad cu_seqlens, one that
 * differs between ranks, or documents on a plan that balances by them are
 * refused with CPA_ERR_ARG on every rank, the same message; the plan stays
 * usable (good documents, then none, are accepted afterwards). */
static void per_call_documents(void)
{
    cpa_cp_config c = base();
    const int64_t S = c.seq_length;
    cpa_plan *plan = NULL;
    char msg[1024];
    CHECK_MSG(create("per-call documents", MPI_COMM_WORLD, &c, &plan, msg) == CPA_OK, "%s", msg);
    if (!plan)
        return;
    struct {
        const char *name, *word;
        int64_t cu[4], n;
        int only_rank1; /* the bad value on rank 1 only */
    } cases[] = {
        {"not starting at 0", "cu_seqlens", {1, 5, S}, 2, 0},
        {"not ending at S", "cu_seqlens", {0, 5, S - 1}, 2, 0},
        {"not increasing", "cu_seqlens", {0, 7, 7, S}, 3, 0},
        {"differs between ranks", "cu_seqlens differs between ranks", {0, 3, S}, 2, 1},
    };
    const int64_t good[3] = {0, 5, S};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        const int bad_here = !cases[i].only_rank1 || rank_ == 1;
        cpa_status st = cpa_plan_set_documents(plan, bad_here ? cases[i].cu : good,
                                               bad_here ? cases[i].n : 2);
        snprintf(msg, sizeof msg, "%s", st == CPA_OK ? "" : cpa_last_error());
        if (cases[i].only_rank1 && P_ == 1) {
            CHECK_MSG(st == CPA_OK, "%s at P=1: %s", cases[i].name, msg);
            continue;
        }
        CHECK_MSG(st == CPA_ERR_ARG, "per-call cu_seqlens %s: rank %d got %s", cases[i].name,
                  rank_, cpa_status_string(st));
        check_same_message(cases[i].name, msg);
        CHECK_MSG(strstr(msg, cases[i].word) != NULL, "%s: message lacks '%s': %s", cases[i].name,
                  cases[i].word, msg);
    }
    CHECK_OK(cpa_plan_set_documents(plan, good, 2));
    CHECK_OK(cpa_plan_set_documents(plan, NULL, 0));
    cpa_plan_destroy(plan);
    /* A plan whose chunk assignment comes from its documents. */
    if (c.seq_length >= 2 * (int64_t)P_) {
        c.balance = CPA_BALANCE_DOCUMENTS;
        c.mask.cu_seqlens = good, c.mask.num_docs = 2;
        plan = NULL;
        CHECK_MSG(create("documents balance", MPI_COMM_WORLD, &c, &plan, msg) == CPA_OK, "%s", msg);
        if (plan) {
            CHECK_STATUS(cpa_plan_set_documents(plan, good, 2), CPA_ERR_ARG);
            CHECK(strstr(cpa_last_error(), "--cp-load-balance documents") != NULL);
            cpa_plan_destroy(plan);
        }
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &P_);
    RUN_TEST(valid_base);
    RUN_TEST(bad_cp_size);
    RUN_TEST(bad_window);
    RUN_TEST(bad_seq_length);
    RUN_TEST(bad_heads);
    RUN_TEST(ulysses_rules);
    RUN_TEST(hybrid_rules);
    RUN_TEST(rank_mismatch);
    RUN_TEST(null_comm);
    RUN_TEST(flags_a_row_does_not_use);
    RUN_TEST(saved_state_misuse);
    RUN_TEST(per_call_documents);
    RUN_TEST(valid_base); /* nothing left behind by the failures */
    int counts[2] = {test_passed_, test_failed_}, total[2];
    MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank_ == 0)
        printf("test_plan_errors P=%d\n%d passed, %d failed\n", P_, total[0], total[1]);
    MPI_Finalize();
    return total[1] ? 1 : 0;
}
