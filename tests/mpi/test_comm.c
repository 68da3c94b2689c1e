/*
 * test_comm.c — exact tests of the communication layer (comm.h), in the
 * style of nccl-tests: every float sent encodes (sender rank, channel,
 * index) as an exact integer below 2^24, and what arrives is compared with
 * ==, so a message delivered to the wrong buffer, from the wrong rank, on
 * the wrong channel or truncated shows up as a mismatch.  Run under
 * `mpiexec -n P` for any P >= 2 (odd P matters: the wrap-around of an odd
 * ring joins two even positions, which is where parity-picked
 * communicators can mismatch).  Cases: ring shifts in both directions with
 * overlap off (one communicator) and on (two, picked by the SENDER's ring
 * position parity, as ring.c does); several channels in flight between one
 * pair with progress driven during a busy loop; the double ring's inner and
 * outer rings in flight together; counts beyond MPI's int (derived types,
 * threshold lowered); the post limits (more than INT_MAX blocks, more
 * than CPA_XFER_SLOTS transfers); and the error handler of cpa_comm_dup.
 * The verdict is summed over all ranks and printed by rank 0.
 */
#include "comm.h"
#include "test.h"

#include <limits.h>
#include <mpi.h>
#include <string.h>

static int rank_, P_;

/* The value at `index` of channel `ch` as sent by rank `r`: exact in fp32. */
static float enc(int r, int ch, int64_t index)
{
    return (float)(((r & 15) << 20) | ((ch & 3) << 18) | (int)(index & 0x3FFFF));
}

static void fill(float *b, int64_t n, int r, int ch)
{
    for (int64_t i = 0; i < n; ++i)
        b[i] = enc(r, ch, i);
}

/* Count mismatches against rank r's channel ch; report the first. */
static int64_t mismatches(const float *b, int64_t n, int r, int ch, const char *what, int step)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i)
        if (b[i] != enc(r, ch, i) && bad++ == 0)
            fprintf(stderr, "rank %d %s step %d: [%lld] = %.0f, want %.0f (rank %d ch %d)\n",
                    rank_, what, step, (long long)i, b[i], enc(r, ch, i), r, ch);
    return bad;
}

static int mod(int a, int m) { return (a % m + m) % m; }

/* Two communicators for the overlap mode, or one used twice. */
static void comms_make(int overlap, MPI_Comm c[2])
{
    CHECK_OK(cpa_comm_dup(MPI_COMM_WORLD, &c[0]));
    c[1] = c[0];
    if (overlap)
        CHECK_OK(cpa_comm_dup(MPI_COMM_WORLD, &c[1]));
}

static void comms_free(int overlap, MPI_Comm c[2])
{
    if (overlap)
        MPI_Comm_free(&c[1]);
    MPI_Comm_free(&c[0]);
}

/* P steps of a ring shift r -> r+1 (channel 0) and r -> r-1 (channel 1) at
 * once, double-buffered.  The message's communicator is c[sender & 1]. */
static void ring_shift(int overlap)
{
    const int64_t n = 4099;
    const int r = rank_, P = P_, next = mod(r + 1, P), prev = mod(r - 1, P);
    MPI_Comm c[2];
    comms_make(overlap, c);
    float *fw[2] = {malloc(sizeof(float) * n), malloc(sizeof(float) * n)};
    float *bw[2] = {malloc(sizeof(float) * n), malloc(sizeof(float) * n)};
    fill(fw[0], n, r, 0);
    fill(bw[0], n, r, 1);
    cpa_xfer x;
    cpa_xfer_init(&x);
    int cur = 0;
    for (int t = 1; t <= P; ++t) {
        int h0 = -1, h1 = -1;
        CHECK_OK(cpa_xfer_post(&x, fw[cur], n, next, c[r & 1], fw[1 - cur], n, prev, c[prev & 1],
                               21, "test transfer", &h0));
        CHECK_OK(cpa_xfer_post(&x, bw[cur], n, prev, c[r & 1], bw[1 - cur], n, next, c[next & 1],
                               22, "test transfer", &h1));
        CHECK_OK(cpa_xfer_wait(&x, h0));
        CHECK_OK(cpa_xfer_wait(&x, h1));
        cur = 1 - cur;
        CHECK(mismatches(fw[cur], n, mod(r - t, P), 0, overlap ? "fwd ovl" : "fwd", t) == 0);
        CHECK(mismatches(bw[cur], n, mod(r + t, P), 1, overlap ? "bwd ovl" : "bwd", t) == 0);
    }
    CHECK(x.bytes_sent == 2.0 * P * n * sizeof(float));
    for (int i = 0; i < 2; ++i)
        free(fw[i]), free(bw[i]);
    comms_free(overlap, c);
}

/* cpa_comm_agree: nobody failed; then ranks 1.. fail with different codes
 * and messages and every rank gets rank 1's (the lowest failing). */
static void agreement(void)
{
    MPI_Comm c;
    CHECK_OK(cpa_comm_dup(MPI_COMM_WORLD, &c));
    char msg[64] = "untouched";
    int code = 0, who = 7;
    CHECK_OK(cpa_comm_agree(c, &code, msg, sizeof msg, &who));
    CHECK(code == 0 && who == -1 && strcmp(msg, "untouched") == 0);
    code = rank_ >= 1 ? 10 + rank_ : 0;
    snprintf(msg, sizeof msg, rank_ >= 1 ? "rank %d failed" : "fine %d", rank_);
    CHECK_OK(cpa_comm_agree(c, &code, msg, sizeof msg, &who));
    CHECK_MSG(code == 11 && who == 1 && strcmp(msg, "rank 1 failed") == 0,
              "rank %d: code %d who %d msg '%s'", rank_, code, who, msg);
    MPI_Comm_free(&c);
}

static void ring_shift_overlap_off(void) { ring_shift(0); }
static void ring_shift_overlap_on(void) { ring_shift(1); }

/* Transfers beyond MPI's int count, with the threshold lowered to 1000
 * floats so that small buffers take the derived-type path: whole blocks
 * only, blocks and a remainder, a remainder of one, and just below and at
 * the threshold (plain MPI_FLOAT); each exact, nothing written past the end. */
static void large_count_transfers(void)
{
    static const int64_t counts[] = {999, 1000, 1001, 3000, 3007, 12345};
    const int r = rank_, next = mod(r + 1, P_), prev = mod(r - 1, P_);
    MPI_Comm c;
    CHECK_OK(cpa_comm_dup(MPI_COMM_WORLD, &c));
    cpa_debug_set_max_mpi_count(1000);
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; ++i) {
        const int64_t n = counts[i];
        float *s = malloc(sizeof(float) * n), *d = malloc(sizeof(float) * (n + 1));
        fill(s, n, r, 2);
        d[n] = -7.0f;
        cpa_xfer x;
        cpa_xfer_init(&x);
        int h = -1;
        CHECK_OK(cpa_xfer_post(&x, s, n, next, c, d, n, prev, c, 31, "test transfer", &h));
        CHECK_OK(cpa_xfer_wait(&x, h));
        CHECK_MSG(mismatches(d, n, prev, 2, "large count", (int)n) == 0, "%lld floats", (long long)n);
        CHECK_MSG(d[n] == -7.0f, "%lld floats: written past the end", (long long)n);
        CHECK(x.bytes_sent == (double)n * sizeof(float));
        free(s), free(d);
    }
    cpa_debug_set_max_mpi_count(0);
    MPI_Comm_free(&c);
}

/* Three channels r -> r+1 in flight at once (1 MiB, tiny, odd-sized), with
 * progress driven while "computing"; then the counters. */
static void channels_with_progress(void)
{
    const int64_t n[3] = {262144, 7, 40961};
    const int r = rank_, next = mod(r + 1, P_), prev = mod(r - 1, P_);
    MPI_Comm c;
    CHECK_OK(cpa_comm_dup(MPI_COMM_WORLD, &c));
    float *s[3], *d[3];
    cpa_xfer x;
    cpa_xfer_init(&x);
    x.bytes_sent = 123.0, x.wait_s = 4.0;
    cpa_xfer_reset_counters(&x);
    CHECK(x.bytes_sent == 0.0 && x.wait_s == 0.0);
    int h[3];
    double posted = 0.0;
    for (int ch = 0; ch < 3; ++ch) {
        s[ch] = malloc(sizeof(float) * n[ch]);
        d[ch] = malloc(sizeof(float) * n[ch]);
        fill(s[ch], n[ch], r, ch);
        memset(d[ch], 0xff, sizeof(float) * n[ch]); /* NaN: never equal */
        CHECK_OK(cpa_xfer_post(&x, s[ch], n[ch], next, c, d[ch], n[ch], prev, c, 30 + ch, "test transfer", &h[ch]));
        posted += (double)n[ch] * sizeof(float);
    }
    volatile double acc = 0.0;
    double t0 = MPI_Wtime();
    int calls = 0;
    while (MPI_Wtime() - t0 < 0.02) {
        for (int i = 0; i < 20000; ++i)
            acc += i * 1e-9;
        cpa_xfer_progress(&x);
        ++calls;
    }
    CHECK(calls > 0);
    for (int ch = 2; ch >= 0; --ch) /* waited out of posting order on purpose */
        CHECK_OK(cpa_xfer_wait(&x, h[ch]));
    for (int ch = 0; ch < 3; ++ch) {
        CHECK(mismatches(d[ch], n[ch], prev, ch, "channel", 0) == 0);
        free(s[ch]), free(d[ch]);
    }
    CHECK_MSG(x.bytes_sent == posted, "bytes_sent %.0f, posted %.0f", x.bytes_sent, posted);
    CHECK_MSG(x.wait_s >= 0.0, "wait_s %g", x.wait_s);
    MPI_Comm_free(&c);
}

/* The double ring for each W dividing P (W < P): rank w*W + p sends to
 * (w, p+1 mod W) on the inner ring and to (w+1 mod I, p) on the outer ring,
 * both in flight at once; max(W, I) steps, double-buffered.  With overlap,
 * each ring picks c[sender's position in that ring & 1]. */
static void double_ring(int overlap)
{
    const int64_t n = 1031;
    const int P = P_;
    MPI_Comm c[2];
    comms_make(overlap, c);
    for (int W = 1; W < P; ++W) {
        if (P % W)
            continue;
        const int I = P / W, w = rank_ / W, p = rank_ % W;
        const int in_to = w * W + mod(p + 1, W), in_from = w * W + mod(p - 1, W);
        const int out_to = mod(w + 1, I) * W + p, out_from = mod(w - 1, I) * W + p;
        float *in[2] = {malloc(sizeof(float) * n), malloc(sizeof(float) * n)};
        float *out[2] = {malloc(sizeof(float) * n), malloc(sizeof(float) * n)};
        fill(in[0], n, rank_, 2);
        fill(out[0], n, rank_, 3);
        cpa_xfer x;
        cpa_xfer_init(&x);
        int cur = 0;
        const int steps = W > I ? W : I;
        for (int t = 1; t <= steps; ++t) {
            int hi = -1, ho = -1;
            CHECK_OK(cpa_xfer_post(&x, in[cur], n, in_to, c[p & 1], in[1 - cur], n, in_from,
                                   c[mod(p - 1, W) & 1], 11, "test transfer", &hi));
            CHECK_OK(cpa_xfer_post(&x, out[cur], n, out_to, c[w & 1], out[1 - cur], n, out_from,
                                   c[mod(w - 1, I) & 1], 12, "test transfer", &ho));
            CHECK_OK(cpa_xfer_wait(&x, ho));
            CHECK_OK(cpa_xfer_wait(&x, hi));
            cur = 1 - cur;
            CHECK_MSG(mismatches(in[cur], n, w * W + mod(p - t, W), 2, "inner", t) == 0,
                      "W=%d overlap=%d", W, overlap);
            CHECK_MSG(mismatches(out[cur], n, mod(w - t, I) * W + p, 3, "outer", t) == 0,
                      "W=%d overlap=%d", W, overlap);
        }
        for (int i = 0; i < 2; ++i)
            free(in[i]), free(out[i]);
    }
    comms_free(overlap, c);
}

static void double_ring_overlap_off(void) { double_ring(0); }
static void double_ring_overlap_on(void) { double_ring(1); }

/* Rejected posts: a count MPI cannot take, a negative count, and one
 * transfer more than there are slots (self-sends, so they complete). */
static void post_limits(void)
{
    MPI_Comm c;
    CHECK_OK(cpa_comm_dup(MPI_COMM_WORLD, &c));
    cpa_xfer x;
    cpa_xfer_init(&x);
    float one = 0.0f, got = 0.0f;
    int h = -1;
    /* Beyond MPI's int count a derived type of 2^20-float blocks covers the
     * transfer; only more than INT_MAX such blocks is refused. */
    CHECK_STATUS(cpa_xfer_post(&x, &one, ((int64_t)INT_MAX + 1) << 20, rank_, c, &got, ((int64_t)INT_MAX + 1) << 20, rank_, c, 1, "test transfer", &h),
                 CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "too large even in blocks") != NULL);
    CHECK_STATUS(cpa_xfer_post(&x, &one, -1, rank_, c, &got, -1, rank_, c, 1, "test transfer", &h), CPA_ERR_ARG);
    CHECK(h == -1); /* nothing was handed out */

    float s[CPA_XFER_SLOTS + 1], d[CPA_XFER_SLOTS + 1];
    for (int i = 0; i <= CPA_XFER_SLOTS; ++i)
        s[i] = enc(rank_, 0, i), d[i] = -1.0f;
    for (int i = 0; i < CPA_XFER_SLOTS; ++i) {
        CHECK_OK(cpa_xfer_post(&x, &s[i], 1, rank_, c, &d[i], 1, rank_, c, 40 + i, "test transfer", &h));
        CHECK(h == i);
    }
    CHECK_STATUS(cpa_xfer_post(&x, &s[CPA_XFER_SLOTS], 1, rank_, c, &d[CPA_XFER_SLOTS], 1, rank_, c,
                               99, "test transfer", &h),
                 CPA_ERR_INTERNAL);
    cpa_xfer_drain(&x);
    CHECK(mismatches(d, CPA_XFER_SLOTS, rank_, 0, "self", 0) == 0);
    CHECK(d[CPA_XFER_SLOTS] == -1.0f); /* the rejected transfer was never posted */
    for (int i = 0; i < CPA_XFER_SLOTS; ++i)
        CHECK(!x.busy[i] && x.req[2 * i] == MPI_REQUEST_NULL && x.req[2 * i + 1] == MPI_REQUEST_NULL);
    /* After the drain every slot is free again. */
    CHECK_OK(cpa_xfer_post(&x, &s[CPA_XFER_SLOTS], 1, rank_, c, &d[CPA_XFER_SLOTS], 1, rank_, c, 99, "test transfer",
                           &h));
    CHECK(h == 0);
    CHECK_OK(cpa_xfer_wait(&x, h));
    CHECK(d[CPA_XFER_SLOTS] == s[CPA_XFER_SLOTS]);
    MPI_Comm_free(&c);
}

/* cpa_comm_dup: MPI_ERRORS_RETURN on the copy (an invalid call returns an
 * error instead of aborting), the parent's handler untouched. */
static void dup_errhandler(void)
{
    MPI_Errhandler parent0, parent1, eh;
    MPI_Comm_get_errhandler(MPI_COMM_WORLD, &parent0);
    MPI_Comm c = MPI_COMM_NULL;
    CHECK_OK(cpa_comm_dup(MPI_COMM_WORLD, &c));
    CHECK(c != MPI_COMM_NULL && c != MPI_COMM_WORLD);
    int cmp = MPI_UNEQUAL;
    MPI_Comm_compare(c, MPI_COMM_WORLD, &cmp);
    CHECK(cmp == MPI_CONGRUENT);
    MPI_Comm_get_errhandler(c, &eh);
    CHECK(eh == MPI_ERRORS_RETURN);
    MPI_Comm_get_errhandler(MPI_COMM_WORLD, &parent1);
    CHECK(parent1 == parent0);
    float v = 0.0f;
    int rc = MPI_Send(&v, 1, MPI_FLOAT, P_ + 5, 0, c); /* no such rank */
    CHECK(rc != MPI_SUCCESS);
    CHECK_STATUS(cpa_mpi_error(rc, "MPI_Send"), CPA_ERR_MPI);
    CHECK(strstr(cpa_last_error(), "MPI_Send failed") != NULL);
    MPI_Errhandler_free(&eh);
    MPI_Errhandler_free(&parent0);
    MPI_Errhandler_free(&parent1);
    MPI_Comm_free(&c);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &P_);
    RUN_TEST(ring_shift_overlap_off);
    RUN_TEST(ring_shift_overlap_on);
    RUN_TEST(large_count_transfers);
    RUN_TEST(channels_with_progress);
    RUN_TEST(double_ring_overlap_off);
    RUN_TEST(double_ring_overlap_on);
    RUN_TEST(post_limits);
    RUN_TEST(dup_errhandler);
    RUN_TEST(agreement);
    int counts[2] = {test_passed_, test_failed_}, total[2];
    MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank_ == 0)
        printf("test_comm P=%d\n%d passed, %d failed\n", P_, total[0], total[1]);
    MPI_Finalize();
    return total[1] ? 1 : 0;
}
