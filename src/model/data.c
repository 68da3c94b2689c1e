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
 */
#include "data.h"
#include "atomic_file.h"
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

enum data_kind { DATA_COPY, DATA_TEXT };

struct cpa_data {
    enum data_kind kind;
    int64_t S;      /* sequence length: samples hold S+1 tokens */
    int64_t V;      /* vocabulary size */
    uint64_t seed;
    /* Text only. */
    uint8_t *bytes;     /* [n_bytes], the whole file */
    int64_t n_bytes;
    int64_t n_train;    /* the train split is bytes [0, n_train), eval the rest */
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
    d->bytes = bytes;
    d->n_bytes = n;
    d->n_train = n_train;
    *out = d;
    return CPA_OK;
}

void cpa_data_destroy(cpa_data *data)
{
    if (!data)
        return;
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
void cpa_data_sample(const cpa_data *data, int split, int64_t index, int32_t *tokens)
{
    if (!data || !tokens)
        return;
    const int64_t S = data->S;
    uint64_t key = sample_key(data->seed, split, index);
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
