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
 *
 * Packed copy task: every sample follows the layout data.c defines
 * (half-lengths in range, marker, copy, EOD 0), and the long-range flags
 * mark exactly the copies.  Megatron's --split: parsing, and the bounds
 * rule (round half to even) on known cases.  Indexed dataset: samples are
 * windows of the split's documents at multiples of S, every window is
 * drawn, a split shorter than S+1 wraps around, the vocabulary comes from
 * the data or must exceed it, an empty valid split is refused.  Documents:
 * cu_seqlens, positions that restart after each EOD, and the loss mask of
 * EOD inputs, on a hand-made sample.
 */
#include "cpattn.h"
#include "data.h"
#include "indexed.h"
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

/* ---- the packed copy task ---------------------------------------------------- */

static void check_packed(int64_t S, int64_t V)
{
    cpa_data *d = NULL;
    CHECK_OK(cpa_data_packed_create(S, V, 5, &d));
    if (!d)
        return;
    CHECK(cpa_data_eod(d) == 0 && cpa_data_vocab(d) == V);
    const int64_t h_min = S / 16 > 1 ? S / 16 : 1, h_max = S / 4 > h_min ? S / 4 : h_min;
    int32_t tok[300], again[300];
    uint8_t flags[300];
    int bad = 0, bad_flags = 0, docs = 0, seen_min = 0, seen_max = 0;
    for (int64_t i = 0; i < 200; ++i) {
        cpa_data_sample(d, CPA_DATA_TRAIN, i, tok);
        cpa_data_sample(d, CPA_DATA_TRAIN, i, again);
        bad += !same_tokens(tok, again, S + 1);
        cpa_data_sample_long_range(d, CPA_DATA_TRAIN, i, flags);
        uint8_t want[300] = {0};
        /* Walk the documents by the rule of data.c. */
        int64_t q = 0;
        while (q <= S) {
            int64_t h = 0;
            while (q + h <= S && tok[q + h] != 1) {
                bad += tok[q + h] < 2 || tok[q + h] >= V;
                ++h;
            }
            if (q + h > S) /* cut off before its marker */
                break;
            ++docs;
            bad += h < h_min || h > h_max;
            seen_min |= h == h_min, seen_max |= h == h_max;
            for (int64_t j = 0; j < h && q + h + 1 + j <= S; ++j) {
                bad += tok[q + h + 1 + j] != tok[q + j];
                want[q + h + j] = 1; /* the target at q+h+j is the copy */
            }
            if (q + 2 * h + 1 <= S)
                bad += tok[q + 2 * h + 1] != 0;
            q += 2 * h + 2;
        }
        for (int64_t t = 0; t < S; ++t)
            bad_flags += flags[t] != want[t];
    }
    CHECK_MSG(bad == 0, "S=%lld V=%lld: %d layout errors", (long long)S, (long long)V, bad);
    CHECK_MSG(bad_flags == 0, "S=%lld: %d wrong long-range flags", (long long)S, bad_flags);
    CHECK(docs >= 200);
    CHECK_MSG(seen_min && seen_max, "S=%lld: half-lengths %lld..%lld not both drawn", (long long)S,
              (long long)h_min, (long long)h_max);
    /* Splits and seeds give other samples. */
    cpa_data_sample(d, CPA_DATA_TRAIN, 3, tok);
    cpa_data_sample(d, CPA_DATA_EVAL, 3, again);
    CHECK(S < 16 || !same_tokens(tok, again, S + 1)); /* tiny samples may coincide */
    cpa_data_destroy(d);
}

static void test_packed(void)
{
    check_packed(4, 4);
    check_packed(16, 10);
    check_packed(64, 32);
    check_packed(65, 32);
    check_packed(256, 1000);
    cpa_data *d = (cpa_data *)&d;
    CHECK_STATUS(cpa_data_packed_create(3, 10, 0, &d), CPA_ERR_ARG);
    CHECK_STATUS(cpa_data_packed_create(16, 3, 0, &d), CPA_ERR_ARG);
    CHECK(d == (cpa_data *)&d);
}

/* ---- documents ------------------------------------------------------------------ */

static void test_documents(void)
{
    cpa_data *d = NULL, *copy = NULL;
    CHECK_OK(cpa_data_packed_create(16, 10, 1, &d));
    CHECK_OK(cpa_data_synthetic_create(16, 10, 1, &copy));
    if (!d || !copy)
        goto out;
    /* EOD (0) inputs at 2, 6, 7 and 15 = S-1; the target tokens[16] is not an input. */
    const int32_t tok[17] = {5, 6, 0, 7, 8, 9, 0, 0, 4, 4, 4, 4, 4, 4, 4, 0, 0};
    int64_t cu[17], pos[16];
    uint8_t mask[16];
    int64_t n = cpa_data_sample_documents(d, tok, cu);
    const int64_t want_cu[5] = {0, 3, 7, 8, 16};
    CHECK_MSG(n == 4, "%lld documents", (long long)n);
    for (int k = 0; k <= 4 && n == 4; ++k)
        CHECK_MSG(cu[k] == want_cu[k], "cu_seqlens[%d] = %lld, want %lld", k, (long long)cu[k],
                  (long long)want_cu[k]);
    cpa_data_sample_positions(d, tok, pos);
    const int64_t want_pos[16] = {0, 1, 2, 0, 1, 2, 3, 0, 0, 1, 2, 3, 4, 5, 6, 7};
    int bad = 0;
    for (int t = 0; t < 16; ++t)
        bad += pos[t] != want_pos[t];
    CHECK_MSG(bad == 0, "%d positions differ", bad);
    cpa_data_sample_loss_mask(d, tok, mask);
    bad = 0;
    for (int t = 0; t < 16; ++t)
        bad += mask[t] != !(t == 2 || t == 6 || t == 7 || t == 15);
    CHECK_MSG(bad == 0, "%d mask entries differ", bad);
    /* Without an EOD token: one document, plain positions, nothing masked. */
    CHECK(cpa_data_eod(copy) == -1 && cpa_data_eod(NULL) == -1);
    n = cpa_data_sample_documents(copy, tok, cu);
    CHECK(n == 1 && cu[0] == 0 && cu[1] == 16);
    cpa_data_sample_positions(copy, tok, pos);
    cpa_data_sample_loss_mask(copy, tok, mask);
    bad = 0;
    for (int t = 0; t < 16; ++t)
        bad += pos[t] != t || mask[t] != 1;
    CHECK(bad == 0);
    /* A real packed sample: the documents are the EOD-ended ones. */
    int32_t sample[17];
    cpa_data_sample(d, CPA_DATA_TRAIN, 9, sample);
    n = cpa_data_sample_documents(d, sample, cu);
    bad = 0;
    for (int64_t k = 1; k < n; ++k)
        bad += sample[cu[k] - 1] != 0 || cu[k] <= cu[k - 1];
    CHECK(bad == 0 && cu[n] == 16);
out:
    cpa_data_destroy(d);
    cpa_data_destroy(copy);
}

/* ---- Megatron's split --------------------------------------------------------------- */

static void test_split(void)
{
    double w[3];
    CHECK_OK(cpa_data_split_parse("949,50,1", w));
    CHECK(w[0] == 949 && w[1] == 50 && w[2] == 1);
    CHECK_OK(cpa_data_split_parse("969, 30, 1", w));
    CHECK(w[0] == 969 && w[1] == 30 && w[2] == 1);
    CHECK_OK(cpa_data_split_parse("80,20", w));
    CHECK(w[0] == 80 && w[1] == 20 && w[2] == 0);
    CHECK_OK(cpa_data_split_parse("1", w));
    CHECK(w[0] == 1 && w[1] == 0 && w[2] == 0);
    CHECK_OK(cpa_data_split_parse("0.5,0.25,0.25", w));
    const char *bad[] = {"", "a", "-1,2", "1,2,3,4", "0,0,0", "1;2", "1,,2", "nan", "inf,1", "1,"};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; ++k) {
        CHECK_STATUS(cpa_data_split_parse(bad[k], w), CPA_ERR_ARG);
        CHECK_MSG(strstr(cpa_last_error(), "split '") != NULL, "'%s': %s", bad[k],
                  cpa_last_error());
    }
    /* The bounds, worked by hand with Python's round (half to even). */
    static const struct {
        double w[3];
        int64_t n, b[4];
    } cases[] = {
        {{949, 50, 1}, 1000, {0, 949, 999, 1000}},
        {{969, 30, 1}, 100, {0, 97, 100, 100}},
        {{80, 20, 0}, 5, {0, 4, 5, 5}},
        {{1, 1, 0}, 5, {0, 2, 5, 5}}, /* 2.5 -> 2 */
        {{1, 1, 0}, 7, {0, 4, 7, 7}}, /* 3.5 -> 4 */
        {{949, 50, 1}, 5, {0, 5, 5, 5}},
        {{0, 1, 0}, 9, {0, 0, 9, 9}},
        {{1, 2, 1}, 0, {0, 0, 0, 0}},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; ++k) {
        int64_t b[4];
        cpa_data_split_bounds(cases[k].w, cases[k].n, b);
        CHECK_MSG(memcmp(b, cases[k].b, sizeof b) == 0,
                  "case %zu: bounds %lld %lld %lld %lld, want %lld %lld %lld %lld", k,
                  (long long)b[0], (long long)b[1], (long long)b[2], (long long)b[3],
                  (long long)cases[k].b[0], (long long)cases[k].b[1], (long long)cases[k].b[2],
                  (long long)cases[k].b[3]);
    }
}

/* ---- the indexed dataset -------------------------------------------------------------- */

/* 20 documents of 5 + (i % 7) tokens, every token unique: 100 + its index
 * in the whole token array.  Returns the token count. */
static int64_t write_unique_dataset(const char *prefix)
{
    cpa_indexed_writer *w = NULL;
    CHECK_OK(cpa_indexed_writer_create(prefix, CPA_IDX_UINT16, &w));
    if (!w)
        return 0;
    int64_t g = 0;
    for (int i = 0; i < 20; ++i) {
        for (int j = 0; j < 5 + i % 7; ++j, ++g) {
            int64_t t = 100 + g;
            CHECK_OK(cpa_indexed_writer_append(w, &t, 1));
        }
        CHECK_OK(cpa_indexed_writer_end_document(w));
    }
    CHECK_OK(cpa_indexed_writer_commit(w));
    return g;
}

static void test_indexed_samples(void)
{
    char prefix[256];
    path_of(prefix, sizeof prefix, "unique");
    const int64_t total = write_unique_dataset(prefix);
    /* Documents 0..15 train, 16..19 valid (80,20,0 of 20), test empty. */
    int64_t first_valid = 0;
    for (int i = 0; i < 16; ++i)
        first_valid += 5 + i % 7;
    const int64_t len[2] = {first_valid, total - first_valid}, start[2] = {0, first_valid};
    const double w[3] = {80, 20, 0};
    const int64_t S = 8;
    cpa_data *d = NULL;
    CHECK_OK(cpa_data_indexed_create(prefix, S, w, 0, -1, 42, &d));
    if (!d)
        return;
    CHECK(cpa_data_vocab(d) == 100 + total);
    CHECK(cpa_data_eod(d) == -1);
    char desc[512];
    cpa_data_describe(d, desc, sizeof desc);
    CHECK_MSG(strstr(desc, "20 documents") && strstr(desc, "train 16 documents"), "%s", desc);
    int32_t tok[64];
    for (int k = 0; k < 2; ++k) {
        const int64_t windows = (len[k] - 1) / S;
        int seen[64] = {0}, bad = 0;
        for (int64_t i = 0; i < 400; ++i) {
            cpa_data_sample(d, k == 0 ? CPA_DATA_TRAIN : CPA_DATA_EVAL, i, tok);
            const int64_t g0 = tok[0] - 100 - start[k];
            bad += g0 % S != 0 || g0 < 0 || g0 / S >= windows;
            for (int64_t j = 0; j <= S; ++j)
                bad += tok[j] != tok[0] + j; /* consecutive, inside the split */
            if (g0 >= 0 && g0 % S == 0 && g0 / S < 64)
                seen[g0 / S] = 1;
        }
        int n_seen = 0;
        for (int64_t v = 0; v < windows && v < 64; ++v)
            n_seen += seen[v];
        CHECK_MSG(bad == 0, "split %d: %d tokens outside the split's windows", k, bad);
        CHECK_MSG(n_seen == windows, "split %d: %d of %lld windows drawn", k, n_seen,
                  (long long)windows);
    }
    cpa_data_sample(d, CPA_DATA_TEST, 0, tok); /* empty: zeros */
    CHECK(tok[0] == 0 && tok[S] == 0);
    cpa_data_destroy(d);

    /* S longer than the valid split: the window wraps to its start. */
    const int64_t S2 = 40;
    CHECK(len[1] < S2 + 1);
    CHECK_OK(cpa_data_indexed_create(prefix, S2, w, 0, -1, 42, &d));
    if (d) {
        cpa_data_sample(d, CPA_DATA_EVAL, 3, tok);
        int bad = 0;
        for (int64_t j = 0; j <= S2; ++j)
            bad += tok[j] != 100 + start[1] + j % len[1];
        CHECK_MSG(bad == 0, "wrapped window: %d tokens differ", bad);
        cpa_data_destroy(d);
        d = NULL;
    }
    /* The vocabulary: given and large enough, or refused naming the token. */
    CHECK_OK(cpa_data_indexed_create(prefix, S, w, 50000, -1, 42, &d));
    CHECK(d && cpa_data_vocab(d) == 50000);
    cpa_data_destroy(d);
    d = NULL;
    CHECK_STATUS(cpa_data_indexed_create(prefix, S, w, 150, -1, 42, &d), CPA_ERR_ARG);
    char word[64];
    snprintf(word, sizeof word, "token %lld", (long long)(99 + total));
    CHECK_ERR(word);
    snprintf(word, sizeof word, "at least %lld ids, not 150", (long long)(100 + total));
    CHECK_ERR(word);
    /* An empty valid split is refused, naming it. */
    const double no_valid[3] = {100, 0, 0};
    CHECK_STATUS(cpa_data_indexed_create(prefix, S, no_valid, 0, -1, 42, &d), CPA_ERR_ARG);
    CHECK_ERR("valid split is empty");
    CHECK(d == NULL);
    /* A malformed index is the reader's CPA_ERR_FORMAT. */
    char idx[300];
    snprintf(idx, sizeof idx, "%s.idx", prefix);
    CHECK(write_bytes(idx, "MMIDIDX\0\0", 9));
    CHECK_STATUS(cpa_data_indexed_create(prefix, S, w, 0, -1, 42, &d), CPA_ERR_FORMAT);
    CHECK_ERR("truncated header");
}

static void test_is_indexed(void)
{
    char a[256], b[300];
    path_of(a, sizeof a, "plain.txt");
    CHECK(write_bytes(a, "x", 1));
    CHECK(!cpa_data_is_indexed(a)); /* a text file */
    snprintf(b, sizeof b, "%s.idx", a);
    CHECK(write_bytes(b, "x", 1));
    CHECK(!cpa_data_is_indexed(a)); /* still text: only one of the pair */
    snprintf(b, sizeof b, "%s.bin", a);
    CHECK(write_bytes(b, "x", 1));
    CHECK(cpa_data_is_indexed(a)); /* both: the dataset wins */
    path_of(a, sizeof a, "prefix-only");
    snprintf(b, sizeof b, "%s.idx", a);
    CHECK(write_bytes(b, "x", 1));
    CHECK(cpa_data_is_indexed(a)); /* a half pair: meant as a dataset (the error names the .bin) */
    path_of(a, sizeof a, "absent");
    CHECK(!cpa_data_is_indexed(a));
    CHECK(!cpa_data_is_indexed(NULL));
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
    RUN_TEST(test_packed);
    RUN_TEST(test_documents);
    RUN_TEST(test_split);
    RUN_TEST(test_indexed_samples);
    RUN_TEST(test_is_indexed);
    remove_tree(tmp_dir);
    return TEST_SUMMARY();
}
