/*
 * indexed.c — Megatron's indexed dataset (indexed.h has the layout): the
 * checked reader, the atomic writer, and the byte-level documents of
 * `cpattn preprocess` (whole text files, JSON-lines strings).
 *
 * What it is: the file format, exactly.  The reader copies the index into
 * memory and maps the .bin; every field is checked before any is used, in
 * the order a reader meets them, and the first problem is reported naming
 * the file and the field, so a damaged or mismatched pair is a clear
 * CPA_ERR_FORMAT rather than a wild read.  The writer stages the tokens in
 * a temporary file and writes the index at commit.
 *
 * What it is not: a sampler (data.c cuts training samples from the token
 * array), a tokenizer (tokens are bytes 0..255 plus an end-of-document id),
 * or a full JSON library: it reads one object per line and decodes the one
 * string it is asked for, validating the rest of the line as JSON.
 *
 * Byte order: the format is little-endian and so is every machine cpattn
 * builds for (x86-64, see CMakeLists.txt); the header's integers are still
 * decoded byte by byte, and the arrays are memcpy'd (they are not aligned
 * in the file: the header is 34 bytes).
 */
#include "indexed.h"

#include "atomic_file.h"
#include "internal.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PATH_CAP 4096

static const unsigned char idx_magic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};

/* Item sizes of the dtype codes 1..8 (0: not a code). */
static size_t item_size(int code)
{
    static const size_t sizes[9] = {0, 1, 1, 2, 4, 8, 8, 4, 2};
    return code >= 1 && code <= 8 ? sizes[code] : 0;
}

const char *cpa_indexed_dtype_name(int code)
{
    static const char *const names[9] = {"unknown", "uint8",   "int8",    "int16", "int32",
                                         "int64",   "float64", "float32", "uint16"};
    return names[code >= 1 && code <= 8 ? code : 0];
}

/* The token at p (one item of dtype `code`, little-endian, any alignment). */
static int64_t load_token(const unsigned char *p, int code)
{
    switch (code) {
    case CPA_IDX_UINT8: return p[0];
    case CPA_IDX_INT8: return (int8_t)p[0];
    case CPA_IDX_INT16: { int16_t v; memcpy(&v, p, 2); return v; }
    case CPA_IDX_UINT16: { uint16_t v; memcpy(&v, p, 2); return v; }
    case CPA_IDX_INT32: { int32_t v; memcpy(&v, p, 4); return v; }
    case CPA_IDX_INT64: { int64_t v; memcpy(&v, p, 8); return v; }
    default: return -1;
    }
}

static uint64_t load_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i)
        v = (v << 8) | p[i];
    return v;
}

static void store_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; ++i)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* PREFIX + suffix into buf; false if it does not fit. */
static bool join(char *buf, size_t cap, const char *prefix, const char *suffix)
{
    int n = snprintf(buf, cap, "%s%s", prefix, suffix);
    return n >= 0 && (size_t)n < cap;
}

/* ------------------------------------------------------------------------ */
/* Reading                                                                   */
/* ------------------------------------------------------------------------ */

struct cpa_indexed {
    char idx_path[PATH_CAP], bin_path[PATH_CAP];
    int dtype;
    size_t item;          /* bytes per token */
    int64_t n_seq;        /* Ns */
    int64_t n_docidx;     /* Nd: entries of document_indices (documents + 1) */
    int32_t *sizes;       /* [Ns] */
    int64_t *starts;      /* [Ns + 1] first token of each sequence; starts[Ns] = all tokens */
    int64_t *doc_indices; /* [Nd] */
    const unsigned char *bin; /* mapped .bin, [bin_bytes] (NULL when empty) */
    size_t bin_bytes;
    int64_t max_token;
};

int cpa_indexed_exists(const char *prefix)
{
    char path[PATH_CAP];
    struct stat sb;
    if (!prefix)
        return 0;
    if (join(path, sizeof path, prefix, ".idx") && stat(path, &sb) == 0)
        return 1;
    return join(path, sizeof path, prefix, ".bin") && stat(path, &sb) == 0;
}

/* The whole of `path` in a new buffer (the index: small). */
static cpa_status read_small_file(const char *path, unsigned char **out, size_t *n_out)
{
    char why[128];
    int fd;
    struct stat sb;
    CPA_TRY(cpa_open_read(path, &fd, &sb));
    size_t n = (size_t)sb.st_size;
    unsigned char *buf = cpa_malloc(n ? n : 1, "the dataset index");
    if (!buf) {
        close(fd);
        return cpa_nomem_for(path);
    }
    int64_t got = cpa_read_full(fd, buf, n);
    int err = errno;
    close(fd);
    if (got < 0 || (size_t)got != n) {
        cpa_free(buf);
        return got < 0 ? cpa_error(CPA_ERR_IO, "%s: cannot read: %s", path,
                                   cpa_errno_text(err, why, sizeof why))
                       : cpa_error(CPA_ERR_IO, "%s: the file shrank while being read", path);
    }
    *out = buf;
    *n_out = n;
    return CPA_OK;
}

/* Check the header and arrays of the index in buf [n] and copy them into ix.
 * Every message names ix->idx_path and the field. */
static cpa_status parse_index(cpa_indexed *ix, const unsigned char *buf, size_t n)
{
    const char *f = ix->idx_path;
    char seen[64];
    if (n < CPA_IDX_HEADER_BYTES)
        return cpa_error(CPA_ERR_FORMAT, "%s: truncated header: %zu bytes, the header alone (magic, "
                         "version, dtype, sequence count, document count) is %d",
                         f, n, CPA_IDX_HEADER_BYTES);
    if (memcmp(buf, idx_magic, sizeof idx_magic) != 0)
        return cpa_error(CPA_ERR_FORMAT, "%s: magic: the file starts with \"%s\", not Megatron's "
                         "\"MMIDIDX\\x00\\x00\" (not an MMapIndexedDataset index)",
                         f, cpa_escape(seen, sizeof seen, (const char *)buf, sizeof idx_magic));
    const uint64_t version = load_u64(buf + 9);
    if (version != 1)
        return cpa_error(CPA_ERR_FORMAT, "%s: version %llu: Megatron's index has version 1", f,
                         (unsigned long long)version);
    const int code = buf[17];
    if (item_size(code) == 0)
        return cpa_error(CPA_ERR_FORMAT, "%s: dtype code %d: not one of Megatron's codes 1 (uint8), "
                         "2 (int8), 3 (int16), 4 (int32), 5 (int64), 6 (float64), 7 (float32), "
                         "8 (uint16)", f, code);
    if (code == CPA_IDX_FLOAT32 || code == CPA_IDX_FLOAT64)
        return cpa_error(CPA_ERR_FORMAT, "%s: dtype code %d (%s): token ids are integers; a float "
                         "dtype cannot hold them", f, code, cpa_indexed_dtype_name(code));
    const uint64_t ns = load_u64(buf + 18), nd = load_u64(buf + 26);
    const size_t body = n - CPA_IDX_HEADER_BYTES;
    /* 12 bytes per sequence (size, pointer), 8 per document index entry. */
    if (ns > body / 12)
        return cpa_error(CPA_ERR_FORMAT, "%s: sequence count %llu: its sizes and pointers alone "
                         "need %s bytes, the file has %zu after the header", f,
                         (unsigned long long)ns, ns > UINT64_MAX / 12 ? "more than 2^64" : "more",
                         body);
    if (nd > (body - 12 * ns) / 8)
        return cpa_error(CPA_ERR_FORMAT, "%s: document count %llu: with sequence count %llu the "
                         "index needs %s than the file's %zu bytes", f, (unsigned long long)nd,
                         (unsigned long long)ns, "more", n);
    const size_t want = CPA_IDX_HEADER_BYTES + 12 * (size_t)ns + 8 * (size_t)nd;
    if (want != n) {
        if (n - want == ns && ns > 0)
            return cpa_error(CPA_ERR_FORMAT, "%s: %zu bytes after the document index, one per "
                             "sequence: a multimodal index (sequence modes), which cpattn does "
                             "not read", f, (size_t)ns);
        return cpa_error(CPA_ERR_FORMAT, "%s: sequence count %llu and document count %llu make "
                         "an index of %zu bytes (34 + 12 x %llu + 8 x %llu); the file has %zu",
                         f, (unsigned long long)ns, (unsigned long long)nd, want,
                         (unsigned long long)ns, (unsigned long long)nd, n);
    }
    if (nd == 0)
        return cpa_error(CPA_ERR_FORMAT, "%s: document count 0: document_indices holds at least "
                         "its leading 0 (the count is the number of documents + 1)", f);
    ix->dtype = code;
    ix->item = item_size(code);
    ix->n_seq = (int64_t)ns;
    ix->n_docidx = (int64_t)nd;
    ix->sizes = cpa_malloc(sizeof(int32_t) * (ns ? ns : 1), "the dataset's sizes");
    ix->starts = cpa_malloc(sizeof(int64_t) * (ns + 1), "the dataset's sequence starts");
    ix->doc_indices = cpa_malloc(sizeof(int64_t) * nd, "the dataset's document index");
    if (!ix->sizes || !ix->starts || !ix->doc_indices)
        return cpa_nomem_for(f);
    const unsigned char *p_sizes = buf + CPA_IDX_HEADER_BYTES;
    const unsigned char *p_ptrs = p_sizes + 4 * ns;
    const unsigned char *p_docs = p_ptrs + 8 * ns;
    memcpy(ix->sizes, p_sizes, 4 * (size_t)ns);
    memcpy(ix->doc_indices, p_docs, 8 * (size_t)nd);
    /* The sequences lie back to back from byte 0, as Megatron's writer puts
     * them: pointer i is where sequence i-1 ends. */
    int64_t tokens = 0;
    for (int64_t i = 0; i < ix->n_seq; ++i) {
        const int32_t len = ix->sizes[i];
        if (len < 0)
            return cpa_error(CPA_ERR_FORMAT, "%s: sizes[%lld] = %d: a sequence length is >= 0", f,
                             (long long)i, len);
        int64_t ptr;
        memcpy(&ptr, p_ptrs + 8 * i, 8);
        const int64_t expect = tokens * (int64_t)ix->item;
        if (ptr != expect) {
            if (i == 0)
                return cpa_error(CPA_ERR_FORMAT, "%s: pointers[0] = %lld: the first sequence "
                                 "starts at byte 0 of the .bin", f, (long long)ptr);
            return cpa_error(CPA_ERR_FORMAT, "%s: pointers[%lld] = %lld: sequence %lld starts "
                             "where sequence %lld ends, at byte %lld (pointers[%lld] + sizes[%lld] "
                             "x %zu bytes)", f, (long long)i, (long long)ptr, (long long)i,
                             (long long)(i - 1), (long long)expect, (long long)(i - 1),
                             (long long)(i - 1), ix->item);
        }
        ix->starts[i] = tokens;
        tokens += len; /* <= 2^31 x 2^60 sequences cannot overflow */
    }
    ix->starts[ix->n_seq] = tokens;
    const int64_t *d = ix->doc_indices;
    if (d[0] != 0)
        return cpa_error(CPA_ERR_FORMAT, "%s: document_indices[0] = %lld: the document index "
                         "starts at sequence 0", f, (long long)d[0]);
    for (int64_t j = 1; j < ix->n_docidx; ++j)
        if (d[j] < d[j - 1] || d[j] > ix->n_seq)
            return cpa_error(CPA_ERR_FORMAT, "%s: document_indices[%lld] = %lld: %s", f,
                             (long long)j, (long long)d[j],
                             d[j] < d[j - 1] ? "smaller than the entry before it (document "
                                               "boundaries never decrease)"
                                             : "beyond the sequence count");
    if (d[ix->n_docidx - 1] != ix->n_seq)
        return cpa_error(CPA_ERR_FORMAT, "%s: document_indices[%lld] = %lld: the last entry is "
                         "the sequence count %lld", f, (long long)(ix->n_docidx - 1),
                         (long long)d[ix->n_docidx - 1], (long long)ix->n_seq);
    return CPA_OK;
}

/* Map the .bin, check it is exactly as long as the index says, and that
 * every token is an id >= 0 that fits an int32 (noting the largest). */
static cpa_status map_bin(cpa_indexed *ix)
{
    char why[128];
    const char *f = ix->bin_path;
    int fd;
    struct stat sb;
    CPA_TRY(cpa_open_read(f, &fd, &sb));
    const int64_t tokens = ix->starts[ix->n_seq];
    const uint64_t need = (uint64_t)tokens * ix->item;
    if ((uint64_t)sb.st_size != need) {
        close(fd);
        return cpa_error(CPA_ERR_FORMAT, "%s: %lld bytes, but its index %s says %lld tokens of "
                         "%zu bytes (sizes summed) = %llu bytes: the .bin is %s", f,
                         (long long)sb.st_size, ix->idx_path, (long long)tokens, ix->item,
                         (unsigned long long)need,
                         (uint64_t)sb.st_size < need ? "truncated, or from another dataset"
                                                     : "longer: from another dataset?");
    }
    ix->bin_bytes = (size_t)need;
    if (need > 0) {
        void *p = mmap(NULL, ix->bin_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int err = errno;
            close(fd);
            return cpa_error(CPA_ERR_IO, "%s: cannot map %zu bytes: %s", f, ix->bin_bytes,
                             cpa_errno_text(err, why, sizeof why));
        }
        ix->bin = p;
    }
    close(fd); /* the mapping stays valid */
    int64_t max = -1;
    for (int64_t t = 0; t < tokens; ++t) {
        const int64_t v = load_token(ix->bin + (size_t)t * ix->item, ix->dtype);
        if (v < 0 || v > INT32_MAX) {
            /* Which sequence: the last start <= t. */
            int64_t lo = 0, hi = ix->n_seq - 1;
            while (lo < hi) {
                int64_t mid = lo + (hi - lo + 1) / 2;
                if (ix->starts[mid] <= t)
                    lo = mid;
                else
                    hi = mid - 1;
            }
            return cpa_error(CPA_ERR_FORMAT, "%s: token %lld (sequence %lld, offset %lld) is "
                             "%lld: token ids are >= 0 and at most %d", f, (long long)t,
                             (long long)lo, (long long)(t - ix->starts[lo]), (long long)v,
                             INT32_MAX);
        }
        max = v > max ? v : max;
    }
    ix->max_token = max;
    return CPA_OK;
}

cpa_status cpa_indexed_open(const char *prefix, cpa_indexed **out)
{
    if (!prefix || !out)
        return cpa_error(CPA_ERR_ARG, "cpa_indexed_open: NULL %s", !prefix ? "prefix" : "out");
    cpa_indexed *ix = cpa_calloc(sizeof *ix, "the indexed dataset");
    if (!ix)
        return CPA_ERR_NOMEM;
    ix->max_token = -1;
    if (!join(ix->idx_path, sizeof ix->idx_path, prefix, ".idx") ||
        !join(ix->bin_path, sizeof ix->bin_path, prefix, ".bin")) {
        cpa_free(ix);
        return cpa_error(CPA_ERR_ARG, "dataset prefix of %zu characters: too long", strlen(prefix));
    }
    unsigned char *buf = NULL;
    size_t n = 0;
    cpa_status st = read_small_file(ix->idx_path, &buf, &n);
    if (st == CPA_OK) {
        st = parse_index(ix, buf, n);
        cpa_free(buf);
    }
    if (st == CPA_OK)
        st = map_bin(ix);
    if (st != CPA_OK) {
        cpa_indexed_close(ix);
        return st;
    }
    *out = ix;
    return CPA_OK;
}

void cpa_indexed_close(cpa_indexed *ix)
{
    if (!ix)
        return;
    if (ix->bin)
        munmap((void *)ix->bin, ix->bin_bytes);
    cpa_free(ix->sizes);
    cpa_free(ix->starts);
    cpa_free(ix->doc_indices);
    cpa_free(ix);
}

int cpa_indexed_dtype(const cpa_indexed *ix) { return ix->dtype; }
int64_t cpa_indexed_num_sequences(const cpa_indexed *ix) { return ix->n_seq; }
int64_t cpa_indexed_num_documents(const cpa_indexed *ix) { return ix->n_docidx - 1; }
int64_t cpa_indexed_num_tokens(const cpa_indexed *ix) { return ix->starts[ix->n_seq]; }
int64_t cpa_indexed_max_token(const cpa_indexed *ix) { return ix->max_token; }
int64_t cpa_indexed_sequence_length(const cpa_indexed *ix, int64_t i) { return ix->sizes[i]; }
int64_t cpa_indexed_sequence_start(const cpa_indexed *ix, int64_t i) { return ix->starts[i]; }
const int64_t *cpa_indexed_document_indices(const cpa_indexed *ix) { return ix->doc_indices; }

void cpa_indexed_read(const cpa_indexed *ix, int64_t first, int64_t n, int32_t *out)
{
    const unsigned char *p = ix->bin + (size_t)first * ix->item;
    if (ix->dtype == CPA_IDX_UINT16) { /* the common case, and what preprocess writes */
        for (int64_t i = 0; i < n; ++i) {
            uint16_t v;
            memcpy(&v, p + 2 * i, 2);
            out[i] = v;
        }
        return;
    }
    for (int64_t i = 0; i < n; ++i)
        out[i] = (int32_t)load_token(p + (size_t)i * ix->item, ix->dtype);
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                   */
/* ------------------------------------------------------------------------ */

#define STAGE_BYTES ((size_t)1 << 20)

struct cpa_indexed_writer {
    char bin_final[PATH_CAP], idx_final[PATH_CAP], bin_tmp[PATH_CAP + 64];
    int fd_bin;
    int dtype;
    size_t item;
    int32_t *sizes; /* [cap] the closed documents' lengths */
    int64_t n_docs, cap;
    int64_t open_len; /* tokens of the open document */
    int64_t tokens;   /* all tokens written */
    unsigned char *stage; /* [STAGE_BYTES] encoded tokens not yet written */
    size_t staged;
};

cpa_status cpa_indexed_writer_create(const char *prefix, int code, cpa_indexed_writer **out)
{
    char why[128];
    if (!prefix || !out)
        return cpa_error(CPA_ERR_ARG, "cpa_indexed_writer_create: NULL %s",
                         !prefix ? "prefix" : "out");
    if (item_size(code) == 0 || code == CPA_IDX_FLOAT32 || code == CPA_IDX_FLOAT64)
        return cpa_error(CPA_ERR_ARG, "dtype code %d: the writer takes an integer dtype "
                         "(1..5 or 8)", code);
    cpa_indexed_writer *w = cpa_calloc(sizeof *w, "the dataset writer");
    if (!w)
        return CPA_ERR_NOMEM;
    w->fd_bin = -1;
    w->dtype = code;
    w->item = item_size(code);
    if (!join(w->bin_final, sizeof w->bin_final, prefix, ".bin") ||
        !join(w->idx_final, sizeof w->idx_final, prefix, ".idx")) {
        cpa_free(w);
        return cpa_error(CPA_ERR_ARG, "output prefix of %zu characters: too long", strlen(prefix));
    }
    w->cap = 1024;
    w->sizes = cpa_malloc(sizeof(int32_t) * (size_t)w->cap, "the document sizes");
    w->stage = cpa_malloc(STAGE_BYTES, "the token staging buffer");
    if (!w->sizes || !w->stage) {
        cpa_free(w->sizes);
        cpa_free(w->stage);
        cpa_free(w);
        return CPA_ERR_NOMEM;
    }
    w->fd_bin = cpa_temp_create(w->bin_final, w->bin_tmp, sizeof w->bin_tmp);
    if (w->fd_bin < 0) {
        int err = errno;
        cpa_free(w->sizes);
        cpa_free(w->stage);
        cpa_free(w);
        return cpa_error(CPA_ERR_IO, "%s: cannot create a temporary file next to it: %s",
                         prefix, cpa_errno_text(err, why, sizeof why));
    }
    *out = w;
    return CPA_OK;
}

static cpa_status flush_stage(cpa_indexed_writer *w)
{
    if (w->staged && !cpa_write_full(w->fd_bin, w->stage, w->staged))
        return cpa_temp_error(w->bin_final, "write", "temporary file", w->bin_tmp, errno);
    w->staged = 0;
    return CPA_OK;
}

/* One token into the staging buffer (its range checked by the caller). */
static cpa_status stage_token(cpa_indexed_writer *w, int64_t v)
{
    if (w->staged + w->item > STAGE_BYTES)
        CPA_TRY(flush_stage(w));
    unsigned char *p = w->stage + w->staged;
    switch (w->dtype) {
    case CPA_IDX_UINT8: case CPA_IDX_INT8: p[0] = (unsigned char)v; break;
    case CPA_IDX_INT16: { int16_t x = (int16_t)v; memcpy(p, &x, 2); break; }
    case CPA_IDX_UINT16: { uint16_t x = (uint16_t)v; memcpy(p, &x, 2); break; }
    case CPA_IDX_INT32: { int32_t x = (int32_t)v; memcpy(p, &x, 4); break; }
    default: memcpy(p, &v, 8); break;
    }
    w->staged += w->item;
    return CPA_OK;
}

static int64_t dtype_max(int code)
{
    switch (code) {
    case CPA_IDX_UINT8: return UINT8_MAX;
    case CPA_IDX_INT8: return INT8_MAX;
    case CPA_IDX_INT16: return INT16_MAX;
    case CPA_IDX_UINT16: return UINT16_MAX;
    default: return INT32_MAX; /* the reader's limit, for int32 and int64 */
    }
}

static cpa_status grow_len(cpa_indexed_writer *w, int64_t n)
{
    if (n > (int64_t)INT32_MAX - w->open_len)
        return cpa_error(CPA_ERR_ARG, "%s: document %lld would exceed %d tokens (Megatron's "
                         "sizes are int32)", w->bin_final, (long long)w->n_docs, INT32_MAX);
    w->open_len += n;
    w->tokens += n;
    return CPA_OK;
}

cpa_status cpa_indexed_writer_append(cpa_indexed_writer *w, const int64_t *tokens, int64_t n)
{
    const int64_t max = dtype_max(w->dtype);
    for (int64_t i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] > max)
            return cpa_error(CPA_ERR_ARG, "%s: token %lld does not fit the dtype %s (0..%lld)",
                             w->bin_final, (long long)tokens[i],
                             cpa_indexed_dtype_name(w->dtype), (long long)max);
    CPA_TRY(grow_len(w, n));
    for (int64_t i = 0; i < n; ++i)
        CPA_TRY(stage_token(w, tokens[i]));
    return CPA_OK;
}

cpa_status cpa_indexed_writer_append_bytes(cpa_indexed_writer *w, const uint8_t *bytes, size_t n)
{
    if (w->dtype == CPA_IDX_INT8)
        for (size_t i = 0; i < n; ++i)
            if (bytes[i] > INT8_MAX)
                return cpa_error(CPA_ERR_ARG, "%s: byte %u does not fit the dtype int8",
                                 w->bin_final, bytes[i]);
    CPA_TRY(grow_len(w, (int64_t)n));
    for (size_t i = 0; i < n; ++i)
        CPA_TRY(stage_token(w, bytes[i]));
    return CPA_OK;
}

cpa_status cpa_indexed_writer_end_document(cpa_indexed_writer *w)
{
    if (w->n_docs == w->cap) {
        int32_t *bigger = cpa_malloc(sizeof(int32_t) * (size_t)(2 * w->cap), "the document sizes");
        if (!bigger)
            return CPA_ERR_NOMEM;
        memcpy(bigger, w->sizes, sizeof(int32_t) * (size_t)w->cap);
        cpa_free(w->sizes);
        w->sizes = bigger;
        w->cap *= 2;
    }
    w->sizes[w->n_docs++] = (int32_t)w->open_len;
    w->open_len = 0;
    return CPA_OK;
}

int64_t cpa_indexed_writer_documents(const cpa_indexed_writer *w) { return w->n_docs; }
int64_t cpa_indexed_writer_tokens(const cpa_indexed_writer *w) { return w->tokens; }

void cpa_indexed_writer_discard(cpa_indexed_writer *w)
{
    if (!w)
        return;
    if (w->fd_bin >= 0)
        cpa_temp_discard(w->fd_bin, w->bin_tmp);
    cpa_free(w->sizes);
    cpa_free(w->stage);
    cpa_free(w);
}

/* The index of the closed documents (one sequence each) into fd. */
static cpa_status write_index(const cpa_indexed_writer *w, int fd, const char *tmp)
{
    unsigned char head[CPA_IDX_HEADER_BYTES];
    memcpy(head, idx_magic, sizeof idx_magic);
    store_u64(head + 9, 1);
    head[17] = (unsigned char)w->dtype;
    store_u64(head + 18, (uint64_t)w->n_docs);
    store_u64(head + 26, (uint64_t)w->n_docs + 1);
    if (!cpa_write_full(fd, head, sizeof head) ||
        !cpa_write_full(fd, w->sizes, sizeof(int32_t) * (size_t)w->n_docs))
        return cpa_temp_error(w->idx_final, "write", "temporary file", tmp, errno);
    /* pointers, then document_indices 0..n, in chunks. */
    int64_t chunk[1024];
    for (int pass = 0; pass < 2; ++pass) {
        int64_t count = pass == 0 ? w->n_docs : w->n_docs + 1, ptr = 0;
        for (int64_t i = 0; i < count;) {
            int k = 0;
            for (; k < 1024 && i < count; ++k, ++i) {
                if (pass == 0) {
                    chunk[k] = ptr;
                    ptr += (int64_t)w->sizes[i] * (int64_t)w->item;
                } else {
                    chunk[k] = i;
                }
            }
            if (!cpa_write_full(fd, chunk, sizeof(int64_t) * (size_t)k))
                return cpa_temp_error(w->idx_final, "write", "temporary file", tmp, errno);
        }
    }
    return CPA_OK;
}

cpa_status cpa_indexed_writer_commit(cpa_indexed_writer *w)
{
    char why[128], idx_tmp[PATH_CAP + 64];
    cpa_status st = CPA_OK;
    int fd_idx = -1;
    if (w->open_len > 0) {
        st = cpa_error(CPA_ERR_ARG, "%s: a document is still open (%lld tokens): end it before "
                       "committing", w->bin_final, (long long)w->open_len);
        goto discard;
    }
    if ((st = flush_stage(w)) != CPA_OK)
        goto discard;
    fd_idx = cpa_temp_create(w->idx_final, idx_tmp, sizeof idx_tmp);
    if (fd_idx < 0) {
        st = cpa_error(CPA_ERR_IO, "%s: cannot create a temporary file next to it: %s",
                       w->idx_final, cpa_errno_text(errno, why, sizeof why));
        goto discard;
    }
    if ((st = write_index(w, fd_idx, idx_tmp)) != CPA_OK)
        goto discard_idx;
    /* Both temporaries are on disk before either final name changes (a
     * full disk shows at fsync), so a failure below is only a rename. */
    if (fsync(w->fd_bin) != 0) {
        st = cpa_temp_error(w->bin_final, "sync", "temporary file", w->bin_tmp, errno);
        goto discard_idx;
    }
    if (fsync(fd_idx) != 0) {
        st = cpa_temp_error(w->idx_final, "sync", "temporary file", idx_tmp, errno);
        goto discard_idx;
    }
    if (unlink(w->idx_final) != 0 && errno != ENOENT) {
        st = cpa_error(CPA_ERR_IO, "%s: cannot remove the old index: %s", w->idx_final,
                       cpa_errno_text(errno, why, sizeof why));
        goto discard_idx;
    }
    st = cpa_temp_commit(w->fd_bin, w->bin_tmp, w->bin_final, "temporary file");
    w->fd_bin = -1; /* closed (and removed on failure) by the commit */
    if (st != CPA_OK)
        goto discard_idx;
    st = cpa_temp_commit(fd_idx, idx_tmp, w->idx_final, "temporary file");
    fd_idx = -1;
    goto discard;

discard_idx:
    if (fd_idx >= 0)
        cpa_temp_discard(fd_idx, idx_tmp);
discard:
    cpa_indexed_writer_discard(w);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Documents from text files                                                 */
/* ------------------------------------------------------------------------ */

static cpa_status append_eod(cpa_indexed_writer *w, int64_t eod)
{
    if (eod >= 0)
        CPA_TRY(cpa_indexed_writer_append(w, &eod, 1));
    return cpa_indexed_writer_end_document(w);
}

cpa_status cpa_indexed_add_text_file(cpa_indexed_writer *w, const char *path, int64_t eod)
{
    char why[128];
    int fd;
    struct stat sb;
    CPA_TRY(cpa_open_read(path, &fd, &sb));
    cpa_status st = CPA_OK;
    unsigned char *buf = cpa_malloc(STAGE_BYTES, "the input buffer");
    if (!buf) {
        close(fd);
        return cpa_nomem_for(path);
    }
    for (;;) {
        int64_t got = cpa_read_full(fd, buf, STAGE_BYTES);
        if (got < 0) {
            st = cpa_error(CPA_ERR_IO, "%s: cannot read: %s", path,
                           cpa_errno_text(errno, why, sizeof why));
            break;
        }
        if (got > 0 && (st = cpa_indexed_writer_append_bytes(w, buf, (size_t)got)) != CPA_OK)
            break;
        if ((size_t)got < STAGE_BYTES)
            break;
    }
    cpa_free(buf);
    close(fd);
    if (st == CPA_OK)
        st = append_eod(w, eod);
    return st;
}

/* ------------------------------------------------------------------------ */
/* JSON                                                                      */
/* ------------------------------------------------------------------------ */

/* A strict JSON reader for one line: p[0..n), position i.  Values nest at
 * most JSON_DEPTH deep (a bound on the recursion, not a limit in practice). */
#define JSON_DEPTH 256

typedef struct json {
    const unsigned char *s;
    size_t n, i;
} json;

static cpa_status json_err(const json *j, const char *what)
{
    return cpa_error(CPA_ERR_FORMAT, "column %zu: %s", j->i + 1, what);
}

static void json_ws(json *j)
{
    while (j->i < j->n && (j->s[j->i] == ' ' || j->s[j->i] == '\t' || j->s[j->i] == '\n' ||
                           j->s[j->i] == '\r'))
        ++j->i;
}

static int hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Four hex digits at j->i (after "\u"). */
static cpa_status json_hex4(json *j, unsigned *out)
{
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
        int h = j->i < j->n ? hex_digit(j->s[j->i]) : -1;
        if (h < 0)
            return json_err(j, "\\u needs four hex digits");
        v = v * 16 + (unsigned)h;
        ++j->i;
    }
    *out = v;
    return CPA_OK;
}

/* Append a byte to out if there is room; count it either way. */
static void put(uint8_t *out, size_t cap, size_t *len, unsigned v)
{
    if (out && *len < cap)
        out[*len] = (uint8_t)v;
    ++*len;
}

/* The string starting at j->i (a '"'), decoded to UTF-8 into out (first cap
 * bytes; out may be NULL), its decoded length in *len. */
static cpa_status json_string(json *j, uint8_t *out, size_t cap, size_t *len)
{
    *len = 0;
    if (j->i >= j->n || j->s[j->i] != '"')
        return json_err(j, "expected a string");
    ++j->i;
    for (;;) {
        if (j->i >= j->n)
            return json_err(j, "the string is not closed (no '\"' before the end of the line)");
        unsigned c = j->s[j->i];
        if (c == '"') {
            ++j->i;
            return CPA_OK;
        }
        if (c < 0x20)
            return json_err(j, "a control character inside a string (JSON writes it as an "
                               "escape such as \\n)");
        if (c != '\\') {
            put(out, cap, len, c);
            ++j->i;
            continue;
        }
        if (++j->i >= j->n)
            return json_err(j, "the line ends inside an escape");
        c = j->s[j->i++];
        switch (c) {
        case '"': case '\\': case '/': put(out, cap, len, c); break;
        case 'b': put(out, cap, len, '\b'); break;
        case 'f': put(out, cap, len, '\f'); break;
        case 'n': put(out, cap, len, '\n'); break;
        case 'r': put(out, cap, len, '\r'); break;
        case 't': put(out, cap, len, '\t'); break;
        case 'u': {
            unsigned cp = 0;
            CPA_TRY(json_hex4(j, &cp));
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return json_err(j, "a lone low surrogate \\uDC00..\\uDFFF (not UTF-16 text)");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo = 0;
                if (j->i + 1 >= j->n || j->s[j->i] != '\\' || j->s[j->i + 1] != 'u')
                    return json_err(j, "a high surrogate \\uD800..\\uDBFF not followed by a "
                                       "low one");
                j->i += 2;
                CPA_TRY(json_hex4(j, &lo));
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return json_err(j, "a high surrogate \\uD800..\\uDBFF not followed by a "
                                       "low one");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp < 0x80) {
                put(out, cap, len, cp);
            } else if (cp < 0x800) {
                put(out, cap, len, 0xC0 | (cp >> 6));
                put(out, cap, len, 0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                put(out, cap, len, 0xE0 | (cp >> 12));
                put(out, cap, len, 0x80 | ((cp >> 6) & 0x3F));
                put(out, cap, len, 0x80 | (cp & 0x3F));
            } else {
                put(out, cap, len, 0xF0 | (cp >> 18));
                put(out, cap, len, 0x80 | ((cp >> 12) & 0x3F));
                put(out, cap, len, 0x80 | ((cp >> 6) & 0x3F));
                put(out, cap, len, 0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            --j->i;
            return json_err(j, "an invalid escape (JSON has \\\" \\\\ \\/ \\b \\f \\n \\r \\t "
                               "\\uXXXX)");
        }
    }
}

static cpa_status json_digits(json *j)
{
    if (j->i >= j->n || j->s[j->i] < '0' || j->s[j->i] > '9')
        return json_err(j, "a number needs a digit here");
    while (j->i < j->n && j->s[j->i] >= '0' && j->s[j->i] <= '9')
        ++j->i;
    return CPA_OK;
}

static cpa_status json_number(json *j)
{
    if (j->i < j->n && j->s[j->i] == '-')
        ++j->i;
    if (j->i < j->n && j->s[j->i] == '0')
        ++j->i; /* no leading zeros */
    else
        CPA_TRY(json_digits(j));
    if (j->i < j->n && j->s[j->i] == '.') {
        ++j->i;
        CPA_TRY(json_digits(j));
    }
    if (j->i < j->n && (j->s[j->i] == 'e' || j->s[j->i] == 'E')) {
        ++j->i;
        if (j->i < j->n && (j->s[j->i] == '+' || j->s[j->i] == '-'))
            ++j->i;
        CPA_TRY(json_digits(j));
    }
    return CPA_OK;
}

static cpa_status json_value(json *j, int depth);

/* An object or array at j->i, its members validated. */
static cpa_status json_container(json *j, int depth)
{
    const unsigned char open = j->s[j->i], close = open == '{' ? '}' : ']';
    if (depth >= JSON_DEPTH)
        return json_err(j, "values nested more than 256 deep");
    ++j->i;
    json_ws(j);
    if (j->i < j->n && j->s[j->i] == close) {
        ++j->i;
        return CPA_OK;
    }
    for (;;) {
        size_t len;
        if (open == '{') {
            json_ws(j);
            CPA_TRY(json_string(j, NULL, 0, &len));
            json_ws(j);
            if (j->i >= j->n || j->s[j->i] != ':')
                return json_err(j, "expected ':' after the key");
            ++j->i;
        }
        CPA_TRY(json_value(j, depth + 1));
        json_ws(j);
        if (j->i < j->n && j->s[j->i] == ',') {
            ++j->i;
            continue;
        }
        if (j->i < j->n && j->s[j->i] == close) {
            ++j->i;
            return CPA_OK;
        }
        return json_err(j, open == '{' ? "expected ',' or '}' in the object"
                                       : "expected ',' or ']' in the array");
    }
}

static cpa_status json_value(json *j, int depth)
{
    json_ws(j);
    if (j->i >= j->n)
        return json_err(j, "expected a value before the end of the line");
    const unsigned char c = j->s[j->i];
    size_t len;
    if (c == '"')
        return json_string(j, NULL, 0, &len);
    if (c == '{' || c == '[')
        return json_container(j, depth);
    if (c == '-' || (c >= '0' && c <= '9'))
        return json_number(j);
    static const char *const words[3] = {"true", "false", "null"};
    for (int k = 0; k < 3; ++k) {
        size_t wl = strlen(words[k]);
        if (j->n - j->i >= wl && memcmp(j->s + j->i, words[k], wl) == 0) {
            j->i += wl;
            return CPA_OK;
        }
    }
    return json_err(j, "expected a value (a string, number, object, array, true, false or null)");
}

cpa_status cpa_json_string_field(const char *line, size_t n, const char *key, uint8_t *out,
                                 size_t *out_len)
{
    json j = {(const unsigned char *)line, n, 0};
    const size_t klen = strlen(key);
    uint8_t kbuf[256];
    size_t value_at = 0;
    int found = 0, is_string = 0;
    json_ws(&j);
    if (j.i >= j.n || j.s[j.i] != '{')
        return json_err(&j, "expected a JSON object ('{')");
    ++j.i;
    json_ws(&j);
    if (j.i < j.n && j.s[j.i] == '}') {
        ++j.i;
    } else {
        for (;;) {
            size_t len;
            json_ws(&j);
            CPA_TRY(json_string(&j, kbuf, sizeof kbuf, &len));
            const int match = len == klen && klen <= sizeof kbuf && memcmp(kbuf, key, klen) == 0;
            json_ws(&j);
            if (j.i >= j.n || j.s[j.i] != ':')
                return json_err(&j, "expected ':' after the key");
            ++j.i;
            json_ws(&j);
            if (match) { /* the last one wins, as in Python's json */
                found = 1;
                value_at = j.i;
                is_string = j.i < j.n && j.s[j.i] == '"';
            }
            CPA_TRY(json_value(&j, 1));
            json_ws(&j);
            if (j.i < j.n && j.s[j.i] == ',') {
                ++j.i;
                continue;
            }
            if (j.i < j.n && j.s[j.i] == '}') {
                ++j.i;
                break;
            }
            return json_err(&j, "expected ',' or '}' in the object");
        }
    }
    json_ws(&j);
    if (j.i != j.n)
        return json_err(&j, "text after the end of the object (one object per line)");
    char shown[96];
    if (!found)
        return cpa_error(CPA_ERR_FORMAT, "no top-level key \"%s\" in the object",
                         cpa_escape(shown, sizeof shown, key, klen));
    if (!is_string)
        return cpa_error(CPA_ERR_FORMAT, "column %zu: the value of \"%s\" is not a string",
                         value_at + 1, cpa_escape(shown, sizeof shown, key, klen));
    j.i = value_at;
    return json_string(&j, out, n, out_len);
}

cpa_status cpa_indexed_add_jsonl_file(cpa_indexed_writer *w, const char *path, const char *key,
                                      int64_t eod, int64_t *documents)
{
    char why[128], msg[1024];
    int fd;
    struct stat sb;
    CPA_TRY(cpa_open_read(path, &fd, &sb));
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        int err = errno;
        close(fd);
        return cpa_error(CPA_ERR_IO, "%s: cannot read: %s", path,
                         cpa_errno_text(err, why, sizeof why));
    }
    cpa_status st = CPA_OK;
    char *line = NULL;
    size_t line_cap = 0, out_cap = 0;
    uint8_t *out = NULL;
    int64_t lineno = 0, added = 0;
    ssize_t got;
    errno = 0;
    while ((got = getline(&line, &line_cap, f)) >= 0) {
        ++lineno;
        size_t n = (size_t)got, k = 0;
        while (k < n && (line[k] == ' ' || line[k] == '\t' || line[k] == '\n' || line[k] == '\r'))
            ++k;
        if (k == n)
            continue; /* a blank line: no document */
        /* The line ends before its newline: a string left open is "not
         * closed", not a raw control character. */
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            --n;
        if (n > out_cap) {
            cpa_free(out);
            out_cap = n;
            out = cpa_malloc(out_cap, "a decoded JSON string");
            if (!out) {
                st = cpa_nomem_for(path);
                break;
            }
        }
        size_t len = 0;
        st = cpa_json_string_field(line, n, key, out, &len);
        if (st != CPA_OK) {
            snprintf(msg, sizeof msg, "%s", cpa_last_error()); /* cpa_error reuses its buffer */
            st = cpa_error(st, "%s:%lld: %s", path, (long long)lineno, msg);
            break;
        }
        if ((st = cpa_indexed_writer_append_bytes(w, out, len)) != CPA_OK ||
            (st = append_eod(w, eod)) != CPA_OK)
            break;
        ++added;
        errno = 0;
    }
    if (st == CPA_OK && ferror(f))
        st = cpa_error(CPA_ERR_IO, "%s: cannot read: %s", path,
                       cpa_errno_text(errno ? errno : EIO, why, sizeof why));
    free(line); /* getline's buffer */
    cpa_free(out);
    fclose(f);
    if (documents)
        *documents = added;
    return st;
}
