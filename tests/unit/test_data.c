/*
 * test_data.c — unit tests of the training data (src/model/data.c).
 *
 * Copy task: samples are a pure function of (seed, split, index) and differ
 * when any of the three changes; tokens lie in 2..V-1 except the marker;
 * the second half repeats the first exactly as data.c defines it, and the
 * long-range flags mark the targets that are copies, for even and odd S.
 * Text: every window lies wholly inside its split (found by searching the
 * file, whose windows are unique), offsets spread over the split, and a
 * missing, tiny or badly split file fails with the right status and a
 * message naming the file.  Files live in a mkdtemp folder, removed at the
 * end.
 */
#include "cpattn.h"
#include "data.h"
#include "test.h"
#include "test_files.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The last error mentions `word`. */
#define CHECK_ERR(word)                                                          \
    CHECK_MSG(strstr(cpa_last_error(), (word)) != NULL, "message \"%s\" lacks \"%s\"", \
              cpa_last_error(), (word))

#define MAX_S 64

static bool same_tokens(const int32_t *a, const int32_t *b, int64_t n)
{
    return memcmp(a, b, (size_t)n * sizeof *a) == 0;
}

static void test_copy_determinism(void)
{
    const int64_t S = 32, V = 50;
    cpa_data *d = NULL, *d2 = NULL, *d3 = NULL;
    CHECK_OK(cpa_data_synthetic_create(S, V, 1234, &d));
    CHECK_OK(cpa_data_synthetic_create(S, V, 1234, &d2));
    CHECK_OK(cpa_data_synthetic_create(S, V, 1235, &d3));
    if (!d || !d2 || !d3)
        goto out;
    CHECK(cpa_data_vocab(d) == V);
    int32_t a[MAX_S + 1], b[MAX_S + 1];
    /* Same key → same tokens, from the same object or a second one. */
    for (int split = 0; split < 2; ++split) {
        for (int64_t i = 0; i < 50; ++i) {
            cpa_data_sample(d, split, i, a);
            cpa_data_sample(d, split, i, b);
            CHECK(same_tokens(a, b, S + 1));
            cpa_data_sample(d2, split, i, b);
            CHECK(same_tokens(a, b, S + 1));
        }
    }
    /* Any change of index, split or seed → different tokens (16 random
     * tokens from 48 values collide with probability ~1e-27). */
    int differ_index = 0, differ_split = 0, differ_seed = 0, n = 0;
    for (int64_t i = 0; i < 200; ++i, ++n) {
        cpa_data_sample(d, CPA_DATA_TRAIN, i, a);
        cpa_data_sample(d, CPA_DATA_TRAIN, i + 1, b);
        differ_index += !same_tokens(a, b, S + 1);
        cpa_data_sample(d, CPA_DATA_EVAL, i, b);
        differ_split += !same_tokens(a, b, S + 1);
        cpa_data_sample(d3, CPA_DATA_TRAIN, i, b);
        differ_seed += !same_tokens(a, b, S + 1);
    }
    CHECK_MSG(differ_index == n, "%d of %d", differ_index, n);
    CHECK_MSG(differ_split == n, "%d of %d", differ_split, n);
    CHECK_MSG(differ_seed == n, "%d of %d", differ_seed, n);
    /* Eval sample i must not equal any train sample j nearby either. */
    int clashes = 0;
    for (int64_t i = 0; i < 40; ++i) {
        cpa_data_sample(d, CPA_DATA_EVAL, i, a);
        for (int64_t j = 0; j < 40; ++j) {
            cpa_data_sample(d, CPA_DATA_TRAIN, j, b);
            clashes += same_tokens(a, b, S + 1);
        }
    }
    CHECK(clashes == 0);
    /* Negative and huge indices are just keys. */
    cpa_data_sample(d, CPA_DATA_TRAIN, -1, a);
    cpa_data_sample(d, CPA_DATA_TRAIN, INT64_MAX, b);
    CHECK(!same_tokens(a, b, S + 1));
out:
    cpa_data_destroy(d);
    cpa_data_destroy(d2);
    cpa_data_destroy(d3);
}

/* Structure, ranges and long-range flags for one (S, V). */
static void check_copy_structure(int64_t S, int64_t V)
{
    cpa_data *d = NULL;
    CHECK_OK(cpa_data_synthetic_create(S, V, 99, &d));
    if (!d)
        return;
    const int64_t h = S / 2;
    int32_t tok[MAX_S + 1];
    int bad_range = 0, bad_marker = 0, bad_copy = 0;
    int64_t hist[8] = {0}; /* value counts for V <= 8 */
    for (int split = 0; split < 2; ++split) {
        for (int64_t i = 0; i < 300; ++i) {
            cpa_data_sample(d, split, i, tok);
            for (int64_t j = 0; j < h; ++j) {
                bad_range += tok[j] < 2 || tok[j] >= V;
                if (V <= 8 && tok[j] >= 0 && tok[j] < 8)
                    ++hist[tok[j]];
            }
            bad_marker += tok[h] != 1;
            /* The rule in data.h: for t >= h, target tokens[t+1] copies
             * tokens[t+1-(h+1)]. */
            for (int64_t t = h; t < S; ++t)
                bad_copy += tok[t + 1] != tok[t + 1 - (h + 1)];
            /* The marker appears once, except for odd S where the last token
             * repeats it. */
            int markers = 0;
            for (int64_t j = 0; j <= S; ++j)
                markers += tok[j] == 1;
            bad_marker += markers != (S % 2 ? 2 : 1);
            bad_marker += (S % 2 == 1) && tok[S] != 1;
        }
    }
    CHECK_MSG(bad_range == 0, "S=%lld V=%lld: %d tokens outside 2..V-1", (long long)S,
              (long long)V, bad_range);
    CHECK_MSG(bad_marker == 0, "S=%lld: %d marker errors", (long long)S, bad_marker);
    CHECK_MSG(bad_copy == 0, "S=%lld: %d copy errors", (long long)S, bad_copy);
    /* Every value 2..V-1 is used, roughly evenly (600 samples × h tokens). */
    if (V <= 8) {
        int64_t total = 600 * h, lo = total, hi = 0;
        for (int v = 2; v < V; ++v) {
            lo = hist[v] < lo ? hist[v] : lo;
            hi = hist[v] > hi ? hist[v] : hi;
        }
        double expect = (double)total / (double)(V - 2);
        CHECK_MSG(lo > 0.8 * expect && hi < 1.2 * expect, "V=%lld: counts %lld..%lld, expect %.0f",
                  (long long)V, (long long)lo, (long long)hi, expect);
    }
    /* Long-range exactly for t in [h, S). */
    int bad_flag = 0, nlong = 0;
    for (int64_t t = -2; t < S + 3; ++t) {
        int want = t >= h && t < S;
        bad_flag += cpa_data_long_range(d, t) != want;
        nlong += cpa_data_long_range(d, t);
    }
    CHECK_MSG(bad_flag == 0, "S=%lld: %d wrong long-range flags", (long long)S, bad_flag);
    CHECK(nlong == S - h);
    cpa_data_destroy(d);
}

static void test_copy_structure(void)
{
    check_copy_structure(4, 4);
    check_copy_structure(5, 4);
    check_copy_structure(6, 7);
    check_copy_structure(7, 8);
    check_copy_structure(32, 100);
    check_copy_structure(33, 1000);
    check_copy_structure(64, 50257);
}

static void test_copy_errors(void)
{
    cpa_data *d = (cpa_data *)&d; /* must stay untouched on failure */
    cpa_data *const before = d;
    CHECK_STATUS(cpa_data_synthetic_create(3, 10, 0, &d), CPA_ERR_ARG);
    CHECK_ERR("S = 3");
    CHECK_STATUS(cpa_data_synthetic_create(8, 3, 0, &d), CPA_ERR_ARG);
    CHECK_ERR("V = 3");
    CHECK_STATUS(cpa_data_synthetic_create(8, (int64_t)INT32_MAX + 1, 0, &d), CPA_ERR_ARG);
    CHECK_STATUS(cpa_data_synthetic_create(8, 10, 0, NULL), CPA_ERR_ARG);
    CHECK(d == before);
    cpa_data_destroy(NULL);
    CHECK(cpa_data_vocab(NULL) == 0);
    CHECK(cpa_data_long_range(NULL, 3) == 0);
}

/* n bytes in which every 8-byte window is unique (a de Bruijn-like walk is
 * overkill: hashed bytes collide in 8-byte windows with probability
 * ~n²/2^65). */
static void fill_text(uint8_t *buf, int64_t n)
{
    uint64_t x = 0x243f6a8885a308d3ULL;
    for (int64_t i = 0; i < n; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (uint8_t)(x >> 24);
    }
}

/* Where the window `tok` (S+1 tokens) occurs in `text`; -1 if nowhere or
 * more than once. */
static int64_t find_window(const uint8_t *text, int64_t n, const int32_t *tok, int64_t S)
{
    int64_t found = -1;
    for (int64_t off = 0; off + S < n; ++off) {
        int64_t j = 0;
        while (j <= S && text[off + j] == tok[j])
            ++j;
        if (j > S) {
            if (found >= 0)
                return -1;
            found = off;
        }
    }
    return found;
}

static void check_text_splits(int64_t n, int64_t S, double holdout)
{
    char path[256];
    path_of(path, sizeof path, "text.bin");
    uint8_t *text = malloc((size_t)n);
    fill_text(text, n);
    CHECK(write_bytes(path, text, (size_t)n));
    cpa_data *d = NULL, *d2 = NULL;
    CHECK_OK(cpa_data_text_create(path, S, holdout, 7, &d));
    CHECK_OK(cpa_data_text_create(path, S, holdout, 8, &d2));
    if (!d || !d2)
        goto out;
    CHECK(cpa_data_vocab(d) == 256);
    CHECK(cpa_data_long_range(d, 0) == 0 && cpa_data_long_range(d, S / 2) == 0);
    /* The split rule of data.c: train = [0, floor(n(1-holdout))). */
    int64_t n_train = (int64_t)floor((double)n * (1.0 - holdout));
    int32_t tok[MAX_S + 1], again[MAX_S + 1], other[MAX_S + 1];
    for (int split = 0; split < 2; ++split) {
        int64_t lo = split ? n_train : 0, hi = (split ? n : n_train) - S - 2; /* offsets lo..hi */
        int64_t min_off = INT64_MAX, max_off = -1;
        int outside = 0, missing = 0, unstable = 0, seed_same = 0;
        const int count = 400;
        for (int64_t i = 0; i < count; ++i) {
            cpa_data_sample(d, split, i, tok);
            cpa_data_sample(d, split, i, again);
            unstable += !same_tokens(tok, again, S + 1);
            cpa_data_sample(d2, split, i, other);
            seed_same += same_tokens(tok, other, S + 1);
            int64_t off = find_window(text, n, tok, S);
            if (off < 0) {
                ++missing;
                continue;
            }
            outside += off < lo || off > hi;
            min_off = off < min_off ? off : min_off;
            max_off = off > max_off ? off : max_off;
        }
        CHECK_MSG(missing == 0, "split %d: %d windows not found in the file", split, missing);
        CHECK_MSG(outside == 0, "split %d: %d windows outside offsets [%lld, %lld]", split,
                  outside, (long long)lo, (long long)hi);
        CHECK(unstable == 0);
        CHECK_MSG(seed_same < count / 10, "split %d: %d of %d windows equal for another seed",
                  split, seed_same, count);
        /* Offsets spread over the split: the extremes come within 5% of the
         * ends (400 uniform draws miss a 5% end with probability ~1e-9). */
        int64_t range = hi - lo + 1;
        CHECK_MSG(min_off - lo <= range / 20 + 1 && hi - max_off <= range / 20 + 1,
                  "split %d: offsets %lld..%lld of %lld..%lld", split, (long long)min_off,
                  (long long)max_off, (long long)lo, (long long)hi);
    }
out:
    cpa_data_destroy(d);
    cpa_data_destroy(d2);
    free(text);
    unlink(path);
}

static void test_text_splits(void)
{
    check_text_splits(6000, 16, 0.1);
    check_text_splits(3001, 31, 0.5);
    check_text_splits(997, 8, 0.25);
}

/* The smallest sizes: each split exactly S+2 bytes works, one byte less
 * in either split fails. */
static void test_text_minimum(void)
{
    char path[256];
    path_of(path, sizeof path, "small.bin");
    uint8_t text[64];
    fill_text(text, sizeof text);
    const int64_t S = 8; /* each split needs 10 bytes */
    cpa_data *d = NULL;

    CHECK(write_bytes(path, text, 20)); /* 10 + 10 with holdout 0.5 */
    CHECK_OK(cpa_data_text_create(path, S, 0.5, 1, &d));
    if (d) {
        int32_t tok[MAX_S + 1];
        /* One possible offset per split: the very start of each. */
        for (int64_t i = 0; i < 20; ++i) {
            cpa_data_sample(d, CPA_DATA_TRAIN, i, tok);
            CHECK(tok[0] == text[0] && tok[S] == text[S]);
            cpa_data_sample(d, CPA_DATA_EVAL, i, tok);
            CHECK(tok[0] == text[10] && tok[S] == text[10 + S]);
        }
        cpa_data_destroy(d);
        d = NULL;
    }
    CHECK(write_bytes(path, text, 19)); /* 9 + 10 */
    CHECK_STATUS(cpa_data_text_create(path, S, 0.5, 1, &d), CPA_ERR_ARG);
    CHECK_ERR(path);
    CHECK_ERR("too small");
    CHECK_ERR("19 bytes");
    CHECK_ERR("at least 20 bytes");
    CHECK(d == NULL);

    /* holdout 0.25: the eval split is the short one.  n = 40 → 30 + 10,
     * n = 39 → floor(29.25) = 29 + 10, both fine; n = 36 → 27 + 9 fails,
     * and the smallest size that works is 37 (27 + 10). */
    CHECK(write_bytes(path, text, 40));
    CHECK_OK(cpa_data_text_create(path, S, 0.25, 1, &d));
    cpa_data_destroy(d);
    d = NULL;
    CHECK(write_bytes(path, text, 39));
    CHECK_OK(cpa_data_text_create(path, S, 0.25, 1, &d));
    cpa_data_destroy(d);
    d = NULL;
    CHECK(write_bytes(path, text, 36));
    CHECK_STATUS(cpa_data_text_create(path, S, 0.25, 1, &d), CPA_ERR_ARG);
    CHECK_ERR("27 train + 9 eval");
    CHECK_ERR("at least 37 bytes");
    CHECK(d == NULL);
    unlink(path);
}

static void test_text_errors(void)
{
    char path[256], missing[256];
    path_of(path, sizeof path, "ok.bin");
    path_of(missing, sizeof missing, "no_such_file.txt");
    uint8_t text[1000];
    fill_text(text, sizeof text);
    CHECK(write_bytes(path, text, sizeof text));
    cpa_data *d = NULL;

    CHECK_STATUS(cpa_data_text_create(missing, 16, 0.1, 1, &d), CPA_ERR_IO);
    CHECK_ERR(missing);
    CHECK_ERR("No such file");
    CHECK(d == NULL);

    CHECK_STATUS(cpa_data_text_create(tmp_dir, 16, 0.1, 1, &d), CPA_ERR_IO); /* a folder */
    CHECK_ERR(tmp_dir);
    CHECK(d == NULL);

    /* An empty file is merely too small. */
    char empty[256];
    path_of(empty, sizeof empty, "empty.bin");
    CHECK(write_bytes(empty, "", 0));
    CHECK_STATUS(cpa_data_text_create(empty, 16, 0.1, 1, &d), CPA_ERR_ARG);
    CHECK_ERR(empty);
    CHECK_ERR("0 bytes");
    unlink(empty);

    /* Unreadable (only meaningful when permissions apply). */
    if (geteuid() != 0) {
        char locked[256];
        path_of(locked, sizeof locked, "locked.bin");
        CHECK(write_bytes(locked, text, sizeof text));
        CHECK(chmod(locked, 0) == 0);
        CHECK_STATUS(cpa_data_text_create(locked, 16, 0.1, 1, &d), CPA_ERR_IO);
        CHECK_ERR(locked);
        CHECK_ERR("Permission denied");
        unlink(locked);
    }

    const double bad_holdout[] = {0.0, -0.1, 0.5000001, 1.0, NAN};
    for (size_t i = 0; i < sizeof bad_holdout / sizeof *bad_holdout; ++i) {
        CHECK_STATUS(cpa_data_text_create(path, 16, bad_holdout[i], 1, &d), CPA_ERR_ARG);
        CHECK_ERR("holdout");
    }
    CHECK_OK(cpa_data_text_create(path, 16, 0.5, 1, &d)); /* 0.5 itself is allowed */
    cpa_data_destroy(d);
    d = NULL;
    CHECK_STATUS(cpa_data_text_create(path, 0, 0.1, 1, &d), CPA_ERR_ARG);
    CHECK_STATUS(cpa_data_text_create(NULL, 16, 0.1, 1, &d), CPA_ERR_ARG);
    CHECK_STATUS(cpa_data_text_create(path, 16, 0.1, 1, NULL), CPA_ERR_ARG);
    CHECK(d == NULL);
    unlink(path);
}

int main(void)
{
    if (!tmp_dir_create("cpattn_test_data"))
        return 1;
    RUN_TEST(test_copy_determinism);
    RUN_TEST(test_copy_structure);
    RUN_TEST(test_copy_errors);
    RUN_TEST(test_text_splits);
    RUN_TEST(test_text_minimum);
    RUN_TEST(test_text_errors);
    remove_tree(tmp_dir);
    return TEST_SUMMARY();
}
