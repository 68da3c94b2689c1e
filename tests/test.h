/*
 * test.h — the in-repo test harness.  A test program is a list of test
 * functions; each check that fails prints where and why.  main() ends with
 * TEST_SUMMARY(), which prints "N passed, N failed" (counting checks) and
 * returns non-zero if anything failed, so CTest sees the verdict.
 *
 * Numerical checks print the measured error next to the tolerance, so a
 * near-miss is visible in the log even when it passes (with TEST_VERBOSE).
 */
#ifndef CPATTN_TEST_H
#define CPATTN_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int test_passed_, test_failed_;

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (cond) {                                                              \
            ++test_passed_;                                                      \
        } else {                                                                 \
            ++test_failed_;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);      \
        }                                                                        \
    } while (0)

#define CHECK_MSG(cond, ...)                                                     \
    do {                                                                         \
        if (cond) {                                                              \
            ++test_passed_;                                                      \
        } else {                                                                 \
            ++test_failed_;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
        }                                                                        \
    } while (0)

/* A status check that prints the library's last error on failure. */
#define CHECK_OK(expr)                                                           \
    do {                                                                         \
        cpa_status s_ = (expr);                                                  \
        CHECK_MSG(s_ == CPA_OK, "%s -> %s: %s", #expr, cpa_status_string(s_),    \
                  cpa_last_error());                                             \
    } while (0)

#define CHECK_STATUS(expr, want)                                                 \
    do {                                                                         \
        cpa_status s_ = (expr);                                                  \
        CHECK_MSG(s_ == (want), "%s -> %s (want %s): %s", #expr,                 \
                  cpa_status_string(s_), cpa_status_string(want),                \
                  cpa_last_error());                                             \
    } while (0)

static inline double test_now_(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#define RUN_TEST(fn)                                                             \
    do {                                                                         \
        int f0_ = test_failed_;                                                  \
        double t0_ = test_now_();                                                \
        fn();                                                                    \
        fprintf(stderr, "%s %s (%.1f s)\n", test_failed_ == f0_ ? "ok  " : "FAIL", \
                #fn, test_now_() - t0_);                                         \
    } while (0)

#define TEST_SUMMARY()                                                           \
    (printf("%d passed, %d failed\n", test_passed_, test_failed_),               \
     test_failed_ ? 1 : 0)

#endif /* CPATTN_TEST_H */
