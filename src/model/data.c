/*
 * data.c — training samples for `cpattn train`: the synthetic copy task and
 * byte-level text.  See data.h for the contract.
 *
 * What it is: a source of samples that are a pure function of (seed, split,
 * index), computed with splitmix64-style hashing, so any rank can produce
 * sample i of either split without shared state, and a resumed run only
 * needs its iteration number to continue the same stream.
 *
 * What it is not: a tokenizer or a shuffler with epochs.  Text samples are
 * windows at hashed offsets (sampling with replacement).
 *
 * The copy task, precisely.  A sample is S+1 tokens; let h = S/2 (integer
 * division).  Then
 *     tokens[j]       in 2..V-1, hashed from (seed, split, index, j),  0 <= j < h
 *     tokens[h]       = 1, the marker
 *     tokens[j]       = tokens[j - (h+1)],                             h < j <= S
 * Inputs are tokens[0..S-1] and the target at position t is tokens[t+1].
 * For t >= h the target tokens[t+1] equals tokens[t+1-(h+1)] = tokens[t-h],
 * a copy of the token h positions before the input at t: such a target is
 * "long-range" (cpa_data_long_range), every other one (t < h: random tokens
 * and the marker) is not predictable from the past at all.  There are S - h
 * long-range targets per sample.  For even S the repeated half is exactly
 * tokens[0..h-1]; for odd S it is one longer, so its last token,
 * tokens[S] = tokens[h], repeats the marker (a copy like the others, though
 * also predictable from its fixed position).  Token 0 is never produced
 * (left free for padding).
 *
 * Text: the whole file is read into memory; bytes are tokens (V = 256).  The
 * train split is bytes [0, n_train) with n_train = floor(n * (1 - holdout)),
 * the eval split is bytes [n_train, n).  Sample i of a split is the S+1
 * bytes starting at split_start + hash(seed, split, i) mod (n_split - S - 1),
 * so every window lies wholly inside its split; each split must therefore
 * hold at least S+2 bytes.
 *
 * The two splits use different hash streams (the split number is mixed into
 * the key), so eval samples never repeat train samples of the copy task.
 *
 * The packed copy task (--synthetic-documents) fills a sample from position
 * 0 with documents d = 0, 1, ... until S+1 tokens are written (the last one
 * cut off there).  Document d has a half-length h_d, drawn uniformly from
 * [h_min, h_max] = [max(1, S/16), max(h_min, S/4)] by the sample's stream,
 * and is 2·h_d + 2 tokens long starting at position q:
 *     tokens[q + j]           in 2..V-1, hashed from the position q + j,  0 <= j < h
 *     tokens[q + h]           = 1, the marker
 *     tokens[q + h + 1 + j]   = tokens[q + j],                            0 <= j < h
 *     tokens[q + 2h + 1]      = 0, the end-of-document token
 * The targets that are copies (tokens[t+1] in a repeated half, h+1
 * positions after its original) are the long-range ones.  Documents are
 * 2·S/16+2 to 2·S/4+2 tokens long, so at CP = 2..4 most of them cross a
 * shard boundary, and their copies are predictable only through attention
 * across ranks, inside the document.
 *
 * The indexed dataset (indexed.c reads the files): Megatron's split of its
 * documents (cpa_data_split_bounds) gives each split a contiguous run of
 * documents, and since the documents lie back to back in the .bin, a run
 * of the token array: [first, first + len).  Sample i of a split starts at
 * S·w, w = hash(seed, split, i) mod W with W = floor((len - 1) / S) windows
 * (W = 1 when len <= S), and takes S+1 tokens — consecutive samples of
 * Megatron's GPT dataset overlap by one token the same way.  Where a split
 * holds fewer than S+1 tokens, the window wraps around to its start (the
 * split repeated, as Megatron repeats epochs).  Megatron shuffles its
 * document order and samples per epoch; here the order is the file's and
 * the windows are drawn with replacement, like the text windows above.
 * (Megatron's GPT dataset counts sequences, not documents, for the split;
 * they are the same for one sequence per document, which is what `cpattn
 * preprocess` and Megatron's preprocess_data.py without --split-sentences
 * write; data.c follows Megatron and splits sequences.)
 */
#include "data.h"
#include "atomic_file.h"
#include "indexed.h"
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum data_kind { DATA_COPY, DATA_TEXT, DATA_PACKED, DATA_INDEXED };

struct cpa_data {
    enum data_kind kind;
    int64_t S;      /* sequence length: samples hold S+1 tokens */
    int64_t V;      /* vocabulary size */
    uint64_t seed;
    int64_t eod;    /* end-of-document token; -1: no documents (copy task, text) */
    /* Text only. */
    uint8_t *bytes;     /* [n_bytes], the whole file */
    int64_t n_bytes;
    int64_t n_train;    /* the train split is bytes [0, n_train), eval the rest */
    /* Packed copy task only: the range of the half-lengths. */
    int64_t h_min, h_max;
    /* Indexed only. */
    cpa_indexed *ix;
    char prefix[256];      /* for cpa_data_describe (cut if longer) */
    int64_t bounds[4];     /* split k is sequences [bounds[k], bounds[k+1]) */
    int64_t first[3], len[3]; /* ... and tokens [first[k], first[k] + len[k]) */
    int64_t windows[3];    /* sample starts of split k */
};

/* ------------------------------------------------------------------------ */
/* Hashing                                                                   */
/* ------------------------------------------------------------------------ */

/* cpa_mix64 (internal.h) is splitmix64's finaliser: nearby inputs give
 * unrelated outputs. */

/* The key of one sample.  Each argument goes through a full mix before the
 * next is added, so (seed, split, index) triples do not alias the way a
 * plain sum would.  Distinct split constants give the splits distinct
 * streams. */
static uint64_t sample_key(uint64_t seed, int split, int64_t index)
{
    uint64_t k = cpa_mix64(seed + CPA_GOLDEN_GAMMA);
    k = cpa_mix64(k ^ (0x5eed0000d47aULL + (uint64_t)(uint32_t)split * CPA_GOLDEN_GAMMA));
    return cpa_mix64(k + (uint64_t)index * CPA_GOLDEN_GAMMA);
}

/* The j-th value of a sample's stream: splitmix64's output for state
 * key + (j+1)·gamma. */
static uint64_t stream_value(uint64_t key, int64_t j)
{
    return cpa_mix64(key + (uint64_t)(j + 1) * CPA_GOLDEN_GAMMA);
}

/* ------------------------------------------------------------------------ */
/* Creation                                                                  */
/* ------------------------------------------------------------------------ */

cpa_status cpa_data_synthetic_create(int64_t S, int64_t V, uint64_t seed, cpa_data **out)
{
    if (!out)
        return cpa_error(CPA_ERR_ARG, "cpa_data_synthetic_create: NULL out");
    /* S+1 tokens must be addressable; V must fit the int32 tokens. */
    if (S < 4 || S > INT64_MAX / 8)
        return cpa_error(CPA_ERR_ARG, "copy task: sequence length S = %lld; need S >= 4",
                         (long long)S);
    if (V < 4 || V > INT32_MAX)
        return cpa_error(CPA_ERR_ARG,
                         "copy task: vocabulary size V = %lld; need 4 <= V <= %d (tokens 0 and "
                         "1 are reserved, random tokens are 2..V-1)",
                         (long long)V, INT32_MAX);
    cpa_data *d = cpa_calloc(sizeof *d, "copy-task data");
    if (!d)
        return CPA_ERR_NOMEM;
    d->kind = DATA_COPY;
    d->S = S;
    d->V = V;
    d->seed = seed;
    d->eod = -1;
    *out = d;
    return CPA_OK;
}

/* Read the whole of `path` into a new buffer. */
static cpa_status read_whole_file(const char *path, uint8_t **bytes_out, int64_t *n_out)
{
    char why[128];
    int fd;
    struct stat sb;
    CPA_TRY(cpa_open_read(path, &fd, &sb));
    cpa_status st = CPA_OK;
    uint8_t *buf = NULL;
    size_t n = (size_t)sb.st_size;
    buf = cpa_malloc(n ? n : 1, "text data");
    if (!buf) {
        st = cpa_nomem_for(path);
        goto close_file;
    }
    int64_t got = cpa_read_full(fd, buf, n);
    if (got < 0) {
        st = cpa_error(CPA_ERR_IO, "%s: cannot read: %s", path,
                       cpa_errno_text(errno, why, sizeof why));
        goto free_buf;
    }
    if ((size_t)got < n) {
        st = cpa_error(CPA_ERR_IO, "%s: the file shrank while being read (%zu of %zu bytes)",
                       path, (size_t)got, n);
        goto free_buf;
    }
    close(fd);
    *bytes_out = buf;
    *n_out = (int64_t)n;
    return CPA_OK;

free_buf:
    cpa_free(buf);
close_file:
    close(fd);
    return st;
}

/* Bytes in the train split of an n-byte file. */
static int64_t train_bytes(int64_t n, double holdout)
{
    return (int64_t)floor((double)n * (1.0 - holdout));
}

/* The smallest file size whose two splits both hold `need` bytes (both split
 * sizes grow monotonically with n, so a binary search finds it). */
static int64_t min_file_bytes(int64_t need, double holdout)
{
    int64_t lo = 2 * need, hi = 2 * need;
    while (hi < INT64_MAX / 4) {
        int64_t tr = train_bytes(hi, holdout);
        if (tr >= need && hi - tr >= need)
            break;
        hi *= 2;
    }
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int64_t tr = train_bytes(mid, holdout);
        if (tr >= need && mid - tr >= need)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

cpa_status cpa_data_text_create(const char *path, int64_t S, double holdout, uint64_t seed,
                                cpa_data **out)
{
    if (!path || !out)
        return cpa_error(CPA_ERR_ARG, "cpa_data_text_create: NULL %s", !path ? "path" : "out");
    if (S < 1 || S > INT64_MAX / 8)
        return cpa_error(CPA_ERR_ARG, "%s: sequence length S = %lld; need S >= 1", path,
                         (long long)S);
    /* Written so that NaN fails too. */
    if (!(holdout > 0.0 && holdout <= 0.5))
        return cpa_error(CPA_ERR_ARG,
                         "%s: holdout %g is outside (0, 0.5]: it is the fraction of the file "
                         "kept for evaluation",
                         path, holdout);
    uint8_t *bytes = NULL;
    int64_t n = 0;
    CPA_TRY(read_whole_file(path, &bytes, &n));

    int64_t need = S + 2; /* one window of S+1 bytes, and the offset modulus n_split-S-1 >= 1 */
    int64_t n_train = train_bytes(n, holdout), n_eval = n - n_train;
    if (n_train < need || n_eval < need) {
        cpa_free(bytes);
        return cpa_error(CPA_ERR_ARG,
                         "%s: too small: %lld bytes, split %lld train + %lld eval (holdout %g); "
                         "each split needs at least S+2 = %lld bytes, so the file needs at least "
                         "%lld bytes",
                         path, (long long)n, (long long)n_train, (long long)n_eval, holdout,
                         (long long)need, (long long)min_file_bytes(need, holdout));
    }
    cpa_data *d = cpa_calloc(sizeof *d, "text data");
    if (!d) {
        cpa_free(bytes);
        return CPA_ERR_NOMEM;
    }
    d->kind = DATA_TEXT;
    d->S = S;
    d->V = 256;
    d->seed = seed;
    d->eod = -1;
    d->bytes = bytes;
    d->n_bytes = n;
    d->n_train = n_train;
    *out = d;
    return CPA_OK;
}

cpa_status cpa_data_packed_create(int64_t S, int64_t V, uint64_t seed, cpa_data **out)
{
    cpa_data *d = NULL;
    CPA_TRY(cpa_data_synthetic_create(S, V, seed, &d));
    d->kind = DATA_PACKED;
    d->eod = 0;
    d->h_min = S / 16 > 1 ? S / 16 : 1;
    d->h_max = S / 4 > d->h_min ? S / 4 : d->h_min;
    *out = d;
    return CPA_OK;
}

/* ---- Megatron's split ---------------------------------------------------- */

cpa_status cpa_data_split_parse(const char *text, double weights[3])
{
    if (!text || !weights)
        return cpa_error(CPA_ERR_ARG, "cpa_data_split_parse: NULL %s", !text ? "text" : "weights");
    char shown[96];
    cpa_escape(shown, sizeof shown, text, strlen(text));
    weights[0] = weights[1] = weights[2] = 0.0;
    const char *p = text;
    int k = 0;
    for (;;) {
        while (*p == ' ')
            ++p;
        if (k == 3)
            return cpa_error(CPA_ERR_ARG, "split '%s': more than three weights (train, valid, "
                             "test)", shown);
        char *end;
        errno = 0;
        double w = strtod(p, &end);
        if (end == p || errno == ERANGE || !isfinite(w) || w < 0.0)
            return cpa_error(CPA_ERR_ARG, "split '%s': weight %d is not a number >= 0 (the form "
                             "is train,valid,test, e.g. 949,50,1)", shown, k + 1);
        weights[k++] = w;
        p = end;
        while (*p == ' ')
            ++p;
        if (*p == '\0')
            break;
        if (*p != ',')
            return cpa_error(CPA_ERR_ARG, "split '%s': weights are separated by commas (e.g. "
                             "949,50,1)", shown);
        ++p;
    }
    if (!(weights[0] + weights[1] + weights[2] > 0.0))
        return cpa_error(CPA_ERR_ARG, "split '%s': the weights sum to 0; at least one must be "
                         "positive", shown);
    return CPA_OK;
}

void cpa_data_split_bounds(const double weights[3], int64_t n, int64_t bounds[4])
{
    /* The arithmetic of Megatron's normalize() and
     * convert_split_vector_to_split_matrix(), in the same order, so the
     * doubles are the same: w / sum, running sums from 0. */
    const double sum = weights[0] + weights[1] + weights[2];
    double e = 0.0;
    bounds[0] = 0;
    for (int k = 0; k < 3; ++k) {
        e = e + weights[k] / sum;
        /* Python's round() rounds half to even, as nearbyint does in the
         * default rounding mode. */
        int64_t b = (int64_t)nearbyint(e * (double)n);
        b = b < bounds[k] ? bounds[k] : b > n ? n : b;
        bounds[k + 1] = b;
    }
    bounds[3] = n;
}

int cpa_data_is_indexed(const char *path)
{
    if (!path)
        return 0;
    char buf[4096];
    struct stat sb;
    int has_idx = snprintf(buf, sizeof buf, "%s.idx", path) < (int)sizeof buf && stat(buf, &sb) == 0;
    int has_bin = snprintf(buf, sizeof buf, "%s.bin", path) < (int)sizeof buf && stat(buf, &sb) == 0;
    if (has_idx && has_bin)
        return 1;
    if (!has_idx && !has_bin)
        return 0;
    return !(stat(path, &sb) == 0 && S_ISREG(sb.st_mode));
}

static const char *const split_names[3] = {"train", "valid", "test"};

cpa_status cpa_data_indexed_create(const char *prefix, int64_t S, const double split[3],
                                   int64_t vocab, int64_t eod, uint64_t seed, cpa_data **out)
{
    if (!prefix || !split || !out)
        return cpa_error(CPA_ERR_ARG, "cpa_data_indexed_create: NULL %s",
                         !prefix ? "prefix" : !split ? "split" : "out");
    if (S < 1 || S > INT64_MAX / 8)
        return cpa_error(CPA_ERR_ARG, "%s: sequence length S = %lld; need S >= 1", prefix,
                         (long long)S);
    if (!(split[0] >= 0 && split[1] >= 0 && split[2] >= 0 && split[0] + split[1] + split[2] > 0))
        return cpa_error(CPA_ERR_ARG, "%s: split weights %g, %g, %g: need weights >= 0 with a "
                         "positive sum", prefix, split[0], split[1], split[2]);
    if (vocab < 0 || vocab > INT32_MAX)
        return cpa_error(CPA_ERR_ARG, "%s: vocabulary size %lld: need 1..%d (0: from the data)",
                         prefix, (long long)vocab, INT32_MAX);
    cpa_indexed *ix = NULL;
    CPA_TRY(cpa_indexed_open(prefix, &ix));
    cpa_status st = CPA_OK;
    const int64_t max = cpa_indexed_max_token(ix);
    if (max < 0) {
        st = cpa_error(CPA_ERR_ARG, "%s: the dataset holds no tokens (%lld documents)", prefix,
                       (long long)cpa_indexed_num_documents(ix));
        goto close_ix;
    }
    if (vocab > 0 && vocab <= max) {
        st = cpa_error(CPA_ERR_ARG, "%s: the dataset holds token %lld, so the vocabulary needs at "
                       "least %lld ids, not %lld", prefix, (long long)max, (long long)max + 1,
                       (long long)vocab);
        goto close_ix;
    }
    if (vocab == 0 && max + 1 > INT32_MAX) {
        st = cpa_error(CPA_ERR_ARG, "%s: the dataset holds token %lld: a vocabulary of %lld ids "
                       "does not fit an int32", prefix, (long long)max, (long long)max + 1);
        goto close_ix;
    }
    cpa_data *d = cpa_calloc(sizeof *d, "indexed data");
    if (!d) {
        st = CPA_ERR_NOMEM;
        goto close_ix;
    }
    d->kind = DATA_INDEXED;
    d->S = S;
    d->V = vocab > 0 ? vocab : max + 1;
    d->seed = seed;
    d->eod = eod;
    d->ix = ix;
    snprintf(d->prefix, sizeof d->prefix, "%s", prefix);
    const int64_t n = cpa_indexed_num_sequences(ix);
    cpa_data_split_bounds(split, n, d->bounds);
    for (int k = 0; k < 3; ++k) {
        const int64_t a = cpa_indexed_sequence_start(ix, d->bounds[k]);
        d->first[k] = a;
        d->len[k] = cpa_indexed_sequence_start(ix, d->bounds[k + 1]) - a;
        d->windows[k] = d->len[k] > S ? (d->len[k] - 1) / S : 1;
        if (k < 2 && d->len[k] == 0) {
            st = cpa_error(CPA_ERR_ARG, "%s: the %s split is empty: split weights %g,%g,%g give it "
                           "documents [%lld, %lld) of %lld, holding no tokens; training needs "
                           "train and valid documents (give more documents, or more weight to "
                           "the %s split)", prefix, split_names[k], split[0], split[1], split[2],
                           (long long)d->bounds[k], (long long)d->bounds[k + 1], (long long)n,
                           split_names[k]);
            d->ix = NULL;
            cpa_free(d);
            goto close_ix;
        }
    }
    *out = d;
    return CPA_OK;

close_ix:
    cpa_indexed_close(ix);
    return st;
}

void cpa_data_describe(const cpa_data *d, char *buf, size_t cap)
{
    if (!d) {
        snprintf(buf, cap, "no data");
        return;
    }
    switch (d->kind) {
    case DATA_COPY:
        snprintf(buf, cap, "the copy task, vocabulary %lld", (long long)d->V);
        return;
    case DATA_PACKED:
        snprintf(buf, cap, "the packed copy task: documents of %lld..%lld tokens (EOD = 0), "
                 "vocabulary %lld", (long long)(2 * d->h_min + 2), (long long)(2 * d->h_max + 2),
                 (long long)d->V);
        return;
    case DATA_TEXT:
        snprintf(buf, cap, "byte-level text, %lld bytes: %lld train, %lld eval",
                 (long long)d->n_bytes, (long long)d->n_train, (long long)(d->n_bytes - d->n_train));
        return;
    case DATA_INDEXED: {
        const cpa_indexed *ix = d->ix;
        int n = snprintf(buf, cap, "indexed dataset %s: %lld documents, %lld tokens (%s), "
                         "vocabulary %lld, EOD token %lld; split", d->prefix,
                         (long long)cpa_indexed_num_sequences(ix),
                         (long long)cpa_indexed_num_tokens(ix),
                         cpa_indexed_dtype_name(cpa_indexed_dtype(ix)), (long long)d->V,
                         (long long)d->eod);
        for (int k = 0; k < 3 && n >= 0 && (size_t)n < cap; ++k)
            n += snprintf(buf + n, cap - (size_t)n, "%s %s %lld documents / %lld tokens",
                          k ? "," : "", split_names[k],
                          (long long)(d->bounds[k + 1] - d->bounds[k]), (long long)d->len[k]);
        return;
    }
    }
}

void cpa_data_destroy(cpa_data *data)
{
    if (!data)
        return;
    cpa_indexed_close(data->ix);
    cpa_free(data->bytes);
    cpa_free(data);
}

/* ------------------------------------------------------------------------ */
/* Samples                                                                   */
/* ------------------------------------------------------------------------ */

int64_t cpa_data_vocab(const cpa_data *data) { return data ? data->V : 0; }

/* `split` is CPA_DATA_TRAIN or CPA_DATA_EVAL; for text any other value reads
 * the eval split, for the copy task it selects yet another stream.  `index`
 * may be any value (negative ones too): it only feeds the hash. */
/* The packed copy task's sample for `key` (see the top of the file):
 * tokens [S+1] and/or flags [S] (either may be NULL). */
static void packed_sample(const cpa_data *d, uint64_t key, int32_t *tokens, uint8_t *flags)
{
    const int64_t S = d->S;
    const uint64_t range = (uint64_t)(d->V - 2), spread = (uint64_t)(d->h_max - d->h_min + 1);
    const uint64_t len_key = cpa_mix64(key ^ 0x1e9a7c0de5d0c5ULL); /* lengths: another stream */
    if (flags)
        memset(flags, 0, (size_t)S);
    int64_t q = 0;
    for (int64_t doc = 0; q <= S; ++doc) {
        const int64_t h = d->h_min + (int64_t)(stream_value(len_key, doc) % spread);
        for (int64_t j = 0; j < 2 * h + 2 && q + j <= S; ++j) {
            const int64_t p = q + j;
            if (tokens) {
                if (j < h)
                    tokens[p] = (int32_t)(2 + stream_value(key, p) % range);
                else if (j == h)
                    tokens[p] = 1;
                else if (j <= 2 * h)
                    tokens[p] = tokens[p - (h + 1)];
                else
                    tokens[p] = 0;
            }
            if (flags && j > h && j <= 2 * h)
                flags[p - 1] = 1; /* the target at p - 1 is a copy */
        }
        q += 2 * h + 2;
    }
}

/* S+1 tokens of split k of the indexed dataset from its position `start`,
 * wrapping around at the split's end. */
static void indexed_window(const cpa_data *d, int k, int64_t start, int32_t *tokens)
{
    int64_t left = d->S + 1, q = start % d->len[k];
    while (left > 0) {
        const int64_t n = left < d->len[k] - q ? left : d->len[k] - q;
        cpa_indexed_read(d->ix, d->first[k] + q, n, tokens);
        tokens += n;
        left -= n;
        q = 0;
    }
}

void cpa_data_sample(const cpa_data *data, int split, int64_t index, int32_t *tokens)
{
    if (!data || !tokens)
        return;
    const int64_t S = data->S;
    uint64_t key = sample_key(data->seed, split, index);
    if (data->kind == DATA_PACKED) {
        packed_sample(data, key, tokens, NULL);
        return;
    }
    if (data->kind == DATA_INDEXED) {
        const int k = split == CPA_DATA_TRAIN ? 0 : split == CPA_DATA_TEST ? 2 : 1;
        if (data->len[k] == 0) { /* an empty test split */
            memset(tokens, 0, sizeof *tokens * (size_t)(S + 1));
            return;
        }
        key = sample_key(data->seed, k, index);
        indexed_window(data, k, S * (int64_t)(key % (uint64_t)data->windows[k]), tokens);
        return;
    }
    if (data->kind == DATA_COPY) {
        const int64_t h = S / 2;
        const uint64_t range = (uint64_t)(data->V - 2);
        for (int64_t j = 0; j < h; ++j)
            tokens[j] = (int32_t)(2 + stream_value(key, j) % range);
        tokens[h] = 1;
        for (int64_t j = h + 1; j <= S; ++j)
            tokens[j] = tokens[j - (h + 1)];
        return;
    }
    int64_t start = 0, len = data->n_train;
    if (split != CPA_DATA_TRAIN) {
        start = data->n_train;
        len = data->n_bytes - data->n_train;
    }
    /* len >= S+2 was checked at creation, so the modulus is >= 1. */
    int64_t off = start + (int64_t)(key % (uint64_t)(len - S - 1));
    for (int64_t j = 0; j <= S; ++j)
        tokens[j] = data->bytes[off + j];
}

int cpa_data_long_range(const cpa_data *data, int64_t t)
{
    if (!data || data->kind != DATA_COPY)
        return 0;
    return t >= data->S / 2 && t < data->S;
}

void cpa_data_sample_long_range(const cpa_data *data, int split, int64_t index, uint8_t *flags)
{
    if (!data || !flags)
        return;
    if (data->kind == DATA_PACKED) {
        packed_sample(data, sample_key(data->seed, split, index), NULL, flags);
        return;
    }
    for (int64_t t = 0; t < data->S; ++t)
        flags[t] = (uint8_t)cpa_data_long_range(data, t);
}

/* ---- Documents ------------------------------------------------------------ */

int64_t cpa_data_eod(const cpa_data *data) { return data ? data->eod : -1; }

int64_t cpa_data_sample_documents(const cpa_data *data, const int32_t *tokens, int64_t *cu_seqlens)
{
    const int64_t S = data->S, eod = data->eod;
    int64_t n = 0;
    cu_seqlens[0] = 0;
    /* An EOD token ends its document (Megatron: attention_mask[i+1:, :i+1]
     * = 0); one at t = S-1 ends the last document, which ends at S anyway. */
    for (int64_t t = 0; eod >= 0 && t + 1 < S; ++t)
        if (tokens[t] == eod)
            cu_seqlens[++n] = t + 1;
    cu_seqlens[++n] = S;
    return n;
}

void cpa_data_sample_positions(const cpa_data *data, const int32_t *tokens, int64_t *positions)
{
    const int64_t S = data->S, eod = data->eod;
    int64_t start = 0;
    for (int64_t t = 0; t < S; ++t) {
        positions[t] = t - start;
        if (eod >= 0 && tokens[t] == eod)
            start = t + 1;
    }
}

void cpa_data_sample_loss_mask(const cpa_data *data, const int32_t *tokens, uint8_t *mask)
{
    const int64_t S = data->S, eod = data->eod;
    for (int64_t t = 0; t < S; ++t)
        mask[t] = (uint8_t)!(eod >= 0 && tokens[t] == eod);
}
