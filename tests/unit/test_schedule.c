/*
 * test_schedule.c — a deterministic simulation (no MPI) of the ring and
 * double-ring schedules, using the same peer and block functions as the
 * engine (cp_internal.h).  For every P <= 16 and every W with W | P, W < P
 * (W = 1 is the plain ring) it moves block ids and dK/dV accumulators
 * between simulated ranks exactly as ring.c posts its transfers, and checks:
 *   - every message has a matching receiver (a's "to" is b iff b's "from"
 *     is a), for every channel;
 *   - the block a rank computes at each step is the one the transfers
 *     brought it, and the formula cpa_dring_block agrees;
 *   - every rank sees every block exactly once, forward and backward, and
 *     the backward order is the exact reverse of the forward order;
 *   - the accumulator a rank receives belongs to the block it is about to
 *     process, and every accumulator ends at its owner with all P
 *     contributions;
 *   - the worked examples of ALGORITHMS.md §3.
 */
#include "cp_internal.h"
#include "test.h"

#include <string.h>

#define PMAX 16

typedef struct acc_state {
    int block;
    unsigned contributors; /* bit r: rank r added its part */
} acc_state;

static int order_fwd[PMAX][PMAX], order_bwd[PMAX][PMAX];

/* Forward: returns 1 if every check held. */
static int simulate_forward(int P, int W)
{
    const int I = P / W;
    int cur[PMAX], round_start[PMAX], next[PMAX], ok = 1;
    for (int r = 0; r < P; ++r)
        cur[r] = r;
    for (int j = 0; j < I; ++j) {
        memcpy(round_start, cur, sizeof cur);
        for (int i = 0; i < W; ++i) {
            for (int r = 0; r < P; ++r) {
                int w = r / W, p = r % W;
                int want = cpa_dring_block(W, I, w, p, j, i, 0);
                if (cur[r] != want)
                    ok = 0;
                order_fwd[r][j * W + i] = cur[r];
            }
            if (i < W - 1) {
                for (int r = 0; r < P; ++r) {
                    cpa_dring_peers pr = cpa_dring_peers_of(W, I, r / W, r % W, 0);
                    cpa_dring_peers src = cpa_dring_peers_of(W, I, pr.inner_from / W,
                                                             pr.inner_from % W, 0);
                    if (src.inner_to != r)
                        ok = 0;
                    next[r] = cur[pr.inner_from];
                }
                memcpy(cur, next, sizeof cur);
            }
        }
        if (j < I - 1)
            for (int r = 0; r < P; ++r) {
                cpa_dring_peers pr = cpa_dring_peers_of(W, I, r / W, r % W, 0);
                cpa_dring_peers src = cpa_dring_peers_of(W, I, pr.outer_from / W,
                                                         pr.outer_from % W, 0);
                if (src.outer_to != r)
                    ok = 0;
                cur[r] = round_start[pr.outer_from]; /* the outer send reads the round's first block */
            }
    }
    return ok;
}

static int simulate_backward(int P, int W)
{
    const int I = P / W;
    int cur[PMAX], round_start[PMAX], next[PMAX], ok = 1;
    acc_state acc[PMAX], sent[PMAX];
    for (int r = 0; r < P; ++r) {
        cpa_dring_peers pr = cpa_dring_peers_of(W, I, r / W, r % W, 1);
        cpa_dring_peers src = cpa_dring_peers_of(W, I, pr.shift_from / W, pr.shift_from % W, 1);
        if (src.shift_to != r)
            ok = 0;
        cur[r] = pr.shift_from; /* each rank sends its own block */
    }
    int step = 0;
    for (int j = 0; j < I; ++j) {
        memcpy(round_start, cur, sizeof cur);
        for (int i = 0; i < W; ++i, ++step) {
            for (int r = 0; r < P; ++r) {
                int w = r / W, p = r % W;
                if (cur[r] != cpa_dring_block(W, I, w, p, j, i, 1))
                    ok = 0;
                order_bwd[r][step] = cur[r];
                if (step == 0) {
                    acc[r].block = cur[r];
                    acc[r].contributors = 0;
                } else {
                    cpa_dring_peers pr = cpa_dring_peers_of(W, I, w, p, 1);
                    int from = i > 0 ? pr.intra_from : pr.inter_from;
                    acc[r] = sent[from];
                    if (acc[r].block != cur[r]) /* received the wrong block's accumulator */
                        ok = 0;
                }
                acc[r].contributors |= 1u << r;
            }
            if (step < P - 1)
                for (int r = 0; r < P; ++r) {
                    cpa_dring_peers pr = cpa_dring_peers_of(W, I, r / W, r % W, 1);
                    int to = i < W - 1 ? pr.intra_to : pr.inter_to;
                    cpa_dring_peers dst = cpa_dring_peers_of(W, I, to / W, to % W, 1);
                    if ((i < W - 1 ? dst.intra_from : dst.inter_from) != r)
                        ok = 0;
                    sent[r] = acc[r];
                }
            if (i < W - 1) {
                for (int r = 0; r < P; ++r) {
                    cpa_dring_peers pr = cpa_dring_peers_of(W, I, r / W, r % W, 1);
                    next[r] = cur[pr.inner_from];
                }
                memcpy(cur, next, sizeof cur);
            }
        }
        if (j < I - 1)
            for (int r = 0; r < P; ++r) {
                cpa_dring_peers pr = cpa_dring_peers_of(W, I, r / W, r % W, 1);
                cur[r] = round_start[pr.outer_from];
            }
    }
    for (int r = 0; r < P; ++r)
        if (acc[r].block != r || acc[r].contributors != (1u << P) - 1)
            ok = 0;
    return ok;
}

static void test_all_schedules(void)
{
    int configs = 0;
    for (int P = 1; P <= PMAX; ++P)
        for (int W = 1; W <= P; ++W) {
            if (P % W != 0 || (W >= P && !(P == 1 && W == 1)))
                continue;
            CHECK_MSG(simulate_forward(P, W), "forward schedule broken at P=%d W=%d", P, W);
            CHECK_MSG(simulate_backward(P, W), "backward schedule broken at P=%d W=%d", P, W);
            for (int r = 0; r < P; ++r) {
                unsigned seen_f = 0, seen_b = 0;
                int reversed = 1;
                for (int t = 0; t < P; ++t) {
                    seen_f |= 1u << order_fwd[r][t];
                    seen_b |= 1u << order_bwd[r][t];
                    reversed &= order_bwd[r][t] == order_fwd[r][P - 1 - t];
                }
                CHECK_MSG(seen_f == (1u << P) - 1 && seen_b == (1u << P) - 1,
                          "P=%d W=%d rank %d does not see every block exactly once", P, W, r);
                CHECK_MSG(reversed, "P=%d W=%d rank %d: backward is not the reverse of forward",
                          P, W, r);
            }
            ++configs;
        }
    CHECK(configs == 35); /* (P, W) pairs with W | P, W < P, P <= 16, plus P = W = 1 */
}

static void check_order(int P, int W, int r, const int *want)
{
    simulate_forward(P, W);
    int same = 1;
    for (int t = 0; t < P; ++t)
        same &= order_fwd[r][t] == want[t];
    CHECK_MSG(same, "P=%d W=%d rank %d: forward order differs from ALGORITHMS.md §3", P, W, r);
}

static void test_documented_examples(void)
{
    const int a[] = {0, 1, 6, 7, 4, 5, 2, 3}, b[] = {1, 0, 7, 6, 5, 4, 3, 2};
    const int c[] = {7, 6, 5, 4, 3, 2, 1, 0}, d[] = {0, 3, 2, 1, 4, 7, 6, 5};
    check_order(8, 2, 0, a);
    check_order(8, 2, 1, b);
    check_order(8, 2, 7, c);
    check_order(8, 4, 0, d);
    /* dKV chains: P=8 W=2 (0,3,4,7)(1,2,5,6); P=8 W=4 (0,5,2,7)(1,6,3,4):
     * the chain map is (w, p) -> (w+1, p+1), the inverse of inter_to. */
    const int chain2[] = {0, 3, 4, 7}, chain4[] = {0, 5, 2, 7};
    for (int t = 0; t < 3; ++t) {
        cpa_dring_peers x = cpa_dring_peers_of(2, 4, chain2[t] / 2, chain2[t] % 2, 1);
        CHECK(x.inter_from == chain2[t + 1]);
        cpa_dring_peers y = cpa_dring_peers_of(4, 2, chain4[t] / 4, chain4[t] % 4, 1);
        CHECK(y.inter_from == chain4[t + 1]);
    }
}

int main(void)
{
    RUN_TEST(test_all_schedules);
    RUN_TEST(test_documented_examples);
    return TEST_SUMMARY();
}
