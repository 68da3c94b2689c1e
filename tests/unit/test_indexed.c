/*
 * test_indexed.c — unit tests of Megatron's indexed dataset
 * (src/model/indexed.c) and of the documents `cpattn preprocess` makes.
 *
 * Reading: .bin/.idx pairs written here byte by byte from the layout in
 * indexed.h (not by the library's writer) are read back exactly for the
 * dtypes uint8, int16, uint16, int32 and int64, with several sequences per
 * document and empty sequences; then every field is broken in turn and
 * the open must fail with CPA_ERR_FORMAT and a message naming the file and
 * the field (a missing file is CPA_ERR_IO).  Writing: the writer's files
 * equal the hand-written layout byte for byte, nothing appears before the
 * commit, no temporary is left, and a failed commit leaves the old pair.
 * Documents: a text file of every byte value and JSON lines with every
 * escape come back as exactly their bytes followed by the EOD token; every
 * kind of malformed line is refused naming FILE:LINE.
 */
#include "cpattn.h"
#include "indexed.h"
#include "test.h"
#include "test_files.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHECK_ERR(word)                                                          \
    CHECK_MSG(strstr(cpa_last_error(), (word)) != NULL, "message \"%s\" lacks \"%s\"", \
              cpa_last_error(), (word))

/* ---- the layout, by hand ------------------------------------------------------ */

static size_t put_le(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; ++i)
        p[i] = (unsigned char)(v >> (8 * i));
    return (size_t)bytes;
}

static int item_of(int code)
{
    switch (code) {
    case CPA_IDX_UINT8: case CPA_IDX_INT8: return 1;
    case CPA_IDX_INT16: case CPA_IDX_UINT16: return 2;
    case CPA_IDX_INT32: return 4;
    default: return 8;
    }
}

/* An index of `ns` sequences (lengths `sizes`) and `nd` document index
 * entries `docs`, with contiguous pointers, into idx (returns its size). */
static size_t make_idx(unsigned char *idx, int code, int64_t ns, const int32_t *sizes, int64_t nd,
                       const int64_t *docs)
{
    size_t o = 0;
    memcpy(idx, "MMIDIDX\0\0", 9);
    o += 9;
    o += put_le(idx + o, 1, 8);
    idx[o++] = (unsigned char)code;
    o += put_le(idx + o, (uint64_t)ns, 8);
    o += put_le(idx + o, (uint64_t)nd, 8);
    for (int64_t i = 0; i < ns; ++i)
        o += put_le(idx + o, (uint32_t)sizes[i], 4);
    int64_t ptr = 0;
    for (int64_t i = 0; i < ns; ++i) {
        o += put_le(idx + o, (uint64_t)ptr, 8);
        ptr += sizes[i] * item_of(code);
    }
    for (int64_t j = 0; j < nd; ++j)
        o += put_le(idx + o, (uint64_t)docs[j], 8);
    return o;
}

static size_t make_bin(unsigned char *bin, int code, const int64_t *tokens, int64_t n)
{
    size_t o = 0;
    for (int64_t i = 0; i < n; ++i)
        o += put_le(bin + o, (uint64_t)tokens[i], item_of(code));
    return o;
}

static const char *prefix_of(char *buf, size_t cap, const char *name) { return path_of(buf, cap, name); }

static bool write_pair(const char *prefix, const unsigned char *idx, size_t ni,
                       const unsigned char *bin, size_t nb)
{
    char p[512];
    snprintf(p, sizeof p, "%s.idx", prefix);
    bool ok = write_bytes(p, idx, ni);
    snprintf(p, sizeof p, "%s.bin", prefix);
    return write_bytes(p, bin, nb) && ok;
}

/* Five sequences (one empty) in three documents (one of two sequences, one
 * empty document). */
static const int32_t demo_sizes[5] = {3, 0, 4, 1, 2};
static const int64_t demo_docs[4] = {0, 2, 2, 5};
static const int64_t demo_tokens[10] = {7, 0, 255, 12, 13, 14, 255, 1, 200, 3};

static void check_read_back(int code, const int64_t *tokens)
{
    char prefix[256];
    prefix_of(prefix, sizeof prefix, "hand");
    unsigned char idx[512], bin[128];
    size_t ni = make_idx(idx, code, 5, demo_sizes, 4, demo_docs);
    size_t nb = make_bin(bin, code, tokens, 10);
    CHECK(ni == 34 + 12 * 5 + 8 * 4);
    CHECK(write_pair(prefix, idx, ni, bin, nb));
    cpa_indexed *ix = NULL;
    CHECK_OK(cpa_indexed_open(prefix, &ix));
    if (!ix)
        return;
    CHECK(cpa_indexed_dtype(ix) == code);
    CHECK(cpa_indexed_num_sequences(ix) == 5);
    CHECK(cpa_indexed_num_documents(ix) == 3);
    CHECK(cpa_indexed_num_tokens(ix) == 10);
    int64_t start = 0, max = -1;
    for (int64_t i = 0; i < 5; ++i) {
        CHECK(cpa_indexed_sequence_length(ix, i) == demo_sizes[i]);
        CHECK(cpa_indexed_sequence_start(ix, i) == start);
        start += demo_sizes[i];
    }
    CHECK(cpa_indexed_sequence_start(ix, 5) == 10);
    for (int j = 0; j < 4; ++j)
        CHECK(cpa_indexed_document_indices(ix)[j] == demo_docs[j]);
    int32_t got[10];
    cpa_indexed_read(ix, 0, 10, got);
    int bad = 0;
    for (int i = 0; i < 10; ++i) {
        bad += got[i] != tokens[i];
        max = tokens[i] > max ? tokens[i] : max;
    }
    CHECK_MSG(bad == 0, "dtype %s: %d tokens differ", cpa_indexed_dtype_name(code), bad);
    CHECK(cpa_indexed_max_token(ix) == max);
    cpa_indexed_read(ix, 6, 3, got); /* a range inside */
    CHECK(got[0] == tokens[6] && got[2] == tokens[8]);
    cpa_indexed_close(ix);
}

static void test_read_layout(void)
{
    check_read_back(CPA_IDX_UINT16, demo_tokens);
    check_read_back(CPA_IDX_INT32, demo_tokens);
    check_read_back(CPA_IDX_UINT8, demo_tokens);
    check_read_back(CPA_IDX_INT16, demo_tokens);
    const int64_t wide[10] = {70000, 0, 2147483647, 12, 13, 14, 50256, 1, 128255, 3};
    check_read_back(CPA_IDX_INT32, wide);
    check_read_back(CPA_IDX_INT64, wide);
    const int64_t u16[10] = {65535, 0, 256, 12, 13, 14, 50256, 1, 32768, 3};
    check_read_back(CPA_IDX_UINT16, u16);
    /* An empty dataset is a valid file. */
    char prefix[256];
    prefix_of(prefix, sizeof prefix, "empty");
    unsigned char idx[64];
    const int64_t zero = 0;
    size_t ni = make_idx(idx, CPA_IDX_UINT16, 0, NULL, 1, &zero);
    CHECK(write_pair(prefix, idx, ni, idx, 0));
    cpa_indexed *ix = NULL;
    CHECK_OK(cpa_indexed_open(prefix, &ix));
    if (ix) {
        CHECK(cpa_indexed_num_tokens(ix) == 0 && cpa_indexed_max_token(ix) == -1);
        CHECK(cpa_indexed_num_documents(ix) == 0);
        cpa_indexed_close(ix);
    }
    CHECK(cpa_indexed_exists(prefix));
    prefix_of(prefix, sizeof prefix, "nothing-here");
    CHECK(!cpa_indexed_exists(prefix));
}

/* ---- malformed files ---------------------------------------------------------- */

typedef struct bad_case {
    const char *name;
    const char *words[3]; /* what the message must name */
} bad_case;

/* Open `prefix` expecting `want` with every word in the message. */
static void expect_bad(const char *prefix, cpa_status want, const char *case_name,
                       const char *w0, const char *w1, const char *w2)
{
    cpa_indexed *ix = (cpa_indexed *)&ix;
    cpa_indexed *const before = ix;
    cpa_status s = cpa_indexed_open(prefix, &ix);
    CHECK_MSG(s == want, "%s: status %s, want %s (%s)", case_name, cpa_status_string(s),
              cpa_status_string(want), cpa_last_error());
    CHECK_MSG(want == CPA_OK || ix == before, "%s: *out written on failure", case_name);
    const char *words[3] = {w0, w1, w2};
    for (int k = 0; k < 3; ++k)
        if (words[k])
            CHECK_MSG(strstr(cpa_last_error(), words[k]) != NULL, "%s: message \"%s\" lacks \"%s\"",
                      case_name, cpa_last_error(), words[k]);
    if (s == CPA_OK)
        cpa_indexed_close(ix);
}

static void test_malformed(void)
{
    char prefix[256], idx_path[300], bin_path[300];
    prefix_of(prefix, sizeof prefix, "bad");
    snprintf(idx_path, sizeof idx_path, "%s.idx", prefix);
    snprintf(bin_path, sizeof bin_path, "%s.bin", prefix);
    unsigned char good[512], idx[600], bin[128];
    const int code = CPA_IDX_UINT16;
    const size_t ni = make_idx(good, code, 5, demo_sizes, 4, demo_docs);
    const size_t nb = make_bin(bin, code, demo_tokens, 10);
    const size_t SZ = 34, PTR = 34 + 4 * 5, DOC = 34 + 12 * 5;

    /* The good pair opens (the baseline of every case below). */
    CHECK(write_pair(prefix, good, ni, bin, nb));
    expect_bad(prefix, CPA_OK, "good", NULL, NULL, NULL);

#define BREAK(label, edit, ...)                                 \
    do {                                                        \
        memcpy(idx, good, ni);                                  \
        size_t n_ = ni;                                         \
        edit;                                                   \
        CHECK(write_pair(prefix, idx, n_, bin, nb));            \
        expect_bad(prefix, CPA_ERR_FORMAT, label, __VA_ARGS__); \
    } while (0)

    BREAK("truncated header", n_ = 20, idx_path, "truncated header", "20 bytes");
    BREAK("magic", idx[3] = 'X', idx_path, "magic", "MMIDIDX");
    BREAK("version", put_le(idx + 9, 2, 8), idx_path, "version 2", "version 1");
    BREAK("dtype code 9", idx[17] = 9, idx_path, "dtype code 9", "8 (uint16)");
    BREAK("dtype code 0", idx[17] = 0, idx_path, "dtype code 0", NULL);
    BREAK("dtype float32", idx[17] = CPA_IDX_FLOAT32, idx_path, "dtype code 7 (float32)",
          "integers");
    BREAK("dtype float64", idx[17] = CPA_IDX_FLOAT64, idx_path, "dtype code 6 (float64)", NULL);
    BREAK("sequence count too large", put_le(idx + 18, 1000000, 8), idx_path,
          "sequence count 1000000", NULL);
    BREAK("sequence count huge", put_le(idx + 18, UINT64_MAX, 8), idx_path, "sequence count",
          NULL);
    BREAK("document count too large", put_le(idx + 26, 1000, 8), idx_path, "document count 1000",
          NULL);
    BREAK("document count 0", (put_le(idx + 26, 0, 8), n_ = ni - 32), idx_path, "document count 0",
          NULL);
    BREAK("trailing bytes", (memset(idx + ni, 0, 3), n_ = ni + 3), idx_path, "sequence count 5",
          "document count 4");
    BREAK("multimodal", (memset(idx + ni, 0, 5), n_ = ni + 5), idx_path, "multimodal", NULL);
    BREAK("short by one", n_ = ni - 1, idx_path, "document count 4", NULL);
    BREAK("sizes negative", put_le(idx + SZ + 4 * 2, (uint32_t)-4, 4), idx_path, "sizes[2] = -4",
          NULL);
    BREAK("pointers[0]", put_le(idx + PTR, 2, 8), idx_path, "pointers[0] = 2", "byte 0");
    BREAK("pointers gap", put_le(idx + PTR + 8 * 3, 16, 8), idx_path, "pointers[3] = 16",
          "at byte 14");
    BREAK("pointers past .bin", put_le(idx + PTR + 8 * 4, 1 << 20, 8), idx_path,
          "pointers[4] = 1048576", NULL);
    BREAK("sizes inconsistent with pointers", put_le(idx + SZ + 4 * 0, 4, 4), idx_path,
          "pointers[1] = 6", "sizes[0]");
    BREAK("document_indices[0]", put_le(idx + DOC, 1, 8), idx_path, "document_indices[0] = 1",
          NULL);
    BREAK("document_indices decrease", put_le(idx + DOC + 8 * 2, 1, 8), idx_path,
          "document_indices[2] = 1", "never decrease");
    BREAK("document_indices beyond", put_le(idx + DOC + 8 * 2, 9, 8), idx_path,
          "document_indices[2] = 9", "sequence count");
    BREAK("document_indices last", put_le(idx + DOC + 8 * 3, 4, 8), idx_path,
          "document_indices[3] = 4", "sequence count 5");
#undef BREAK

    /* The .bin against a good index: too short, too long, a negative
     * token (int32), a token beyond int32 (int64). */
    CHECK(write_pair(prefix, good, ni, bin, nb - 2));
    expect_bad(prefix, CPA_ERR_FORMAT, ".bin short", bin_path, "18 bytes", "truncated");
    memcpy(bin + nb, "\0\0", 2);
    CHECK(write_pair(prefix, good, ni, bin, nb + 2));
    expect_bad(prefix, CPA_ERR_FORMAT, ".bin long", bin_path, "22 bytes", "another dataset");
    {
        int64_t neg[10];
        memcpy(neg, demo_tokens, sizeof neg);
        neg[7] = -3;
        size_t n32 = make_idx(idx, CPA_IDX_INT32, 5, demo_sizes, 4, demo_docs);
        size_t b32 = make_bin(bin, CPA_IDX_INT32, neg, 10);
        CHECK(write_pair(prefix, idx, n32, bin, b32));
        expect_bad(prefix, CPA_ERR_FORMAT, "negative token", bin_path,
                   "token 7 (sequence 3, offset 0) is -3", NULL);
        neg[7] = 7;
        neg[2] = (int64_t)1 << 40;
        size_t n64 = make_idx(idx, CPA_IDX_INT64, 5, demo_sizes, 4, demo_docs);
        size_t b64 = make_bin(bin, CPA_IDX_INT64, neg, 10);
        CHECK(write_pair(prefix, idx, n64, bin, b64));
        expect_bad(prefix, CPA_ERR_FORMAT, "token beyond int32", bin_path,
                   "token 2 (sequence 0, offset 2)", "at most 2147483647");
    }
    /* Missing files: I/O errors naming them. */
    CHECK(write_pair(prefix, good, ni, bin, nb));
    unlink(bin_path);
    expect_bad(prefix, CPA_ERR_IO, "missing .bin", bin_path, "No such file", NULL);
    unlink(idx_path);
    expect_bad(prefix, CPA_ERR_IO, "missing .idx", idx_path, "No such file", NULL);
    CHECK(cpa_indexed_open(NULL, NULL) == CPA_ERR_ARG);
}

/* ---- the writer ----------------------------------------------------------------- */

static int count_files_like(const char *needle)
{
    DIR *d = opendir(tmp_dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        n += strstr(e->d_name, needle) != NULL;
    if (d)
        closedir(d);
    return n;
}

static void test_writer(void)
{
    char prefix[256], path[300];
    prefix_of(prefix, sizeof prefix, "written");
    /* One sequence per document: sizes {3, 0, 4}, document index 0..3. */
    const int32_t sizes[3] = {3, 0, 4};
    const int64_t docs[4] = {0, 1, 2, 3};
    const int64_t tok[7] = {5, 256, 0, 65535, 1, 2, 3};
    const int codes[4] = {CPA_IDX_UINT16, CPA_IDX_INT32, CPA_IDX_INT64, CPA_IDX_UINT8};
    for (int c = 0; c < 4; ++c) {
        const int code = codes[c];
        int64_t t[7];
        memcpy(t, tok, sizeof t);
        if (code == CPA_IDX_UINT8)
            t[1] = 200, t[3] = 255;
        cpa_indexed_writer *w = NULL;
        CHECK_OK(cpa_indexed_writer_create(prefix, code, &w));
        if (!w)
            continue;
        CHECK_OK(cpa_indexed_writer_append(w, t, 2));
        CHECK_OK(cpa_indexed_writer_append(w, t + 2, 1));
        CHECK_OK(cpa_indexed_writer_end_document(w));
        CHECK_OK(cpa_indexed_writer_end_document(w)); /* empty */
        CHECK_OK(cpa_indexed_writer_append(w, t + 3, 4));
        CHECK_OK(cpa_indexed_writer_end_document(w));
        CHECK(cpa_indexed_writer_documents(w) == 3 && cpa_indexed_writer_tokens(w) == 7);
        /* Nothing under the final names before the commit. */
        snprintf(path, sizeof path, "%s.bin", prefix);
        if (c == 0)
            CHECK(access(path, F_OK) != 0);
        CHECK_OK(cpa_indexed_writer_commit(w));
        unsigned char want_idx[256], want_bin[128];
        size_t ni = make_idx(want_idx, code, 3, sizes, 4, docs);
        size_t nb = make_bin(want_bin, code, t, 7);
        size_t n = 0;
        unsigned char *got = read_bytes(path, &n);
        CHECK_MSG(got && n == nb && memcmp(got, want_bin, nb) == 0, "dtype %s: .bin differs",
                  cpa_indexed_dtype_name(code));
        free(got);
        snprintf(path, sizeof path, "%s.idx", prefix);
        got = read_bytes(path, &n);
        CHECK_MSG(got && n == ni && memcmp(got, want_idx, ni) == 0, "dtype %s: .idx differs",
                  cpa_indexed_dtype_name(code));
        free(got);
        CHECK(count_files_like(".tmp.") == 0);
    }
    /* Refusals: a token the dtype cannot hold, a document left open; a
     * failed or discarded write leaves the committed pair as it was. */
    snprintf(path, sizeof path, "%s.bin", prefix);
    size_t before_n = 0;
    unsigned char *before = read_bytes(path, &before_n);
    cpa_indexed_writer *w = NULL;
    CHECK_OK(cpa_indexed_writer_create(prefix, CPA_IDX_UINT16, &w));
    const int64_t big = 65536, neg = -1;
    CHECK_STATUS(cpa_indexed_writer_append(w, &big, 1), CPA_ERR_ARG);
    CHECK_ERR("65536");
    CHECK_ERR("uint16");
    CHECK_STATUS(cpa_indexed_writer_append(w, &neg, 1), CPA_ERR_ARG);
    const uint8_t bytes[3] = {1, 2, 3};
    CHECK_OK(cpa_indexed_writer_append_bytes(w, bytes, 3));
    CHECK_STATUS(cpa_indexed_writer_commit(w), CPA_ERR_ARG); /* frees w */
    CHECK_ERR("still open");
    size_t after_n = 0;
    unsigned char *after = read_bytes(path, &after_n);
    CHECK(before && after && before_n == after_n && memcmp(before, after, before_n) == 0);
    free(after);
    CHECK(count_files_like(".tmp.") == 0);
    CHECK_OK(cpa_indexed_writer_create(prefix, CPA_IDX_UINT16, &w));
    CHECK_OK(cpa_indexed_writer_append_bytes(w, bytes, 3));
    cpa_indexed_writer_discard(w);
    after = read_bytes(path, &after_n);
    CHECK(before && after && before_n == after_n && memcmp(before, after, before_n) == 0);
    free(after);
    free(before);
    CHECK(count_files_like(".tmp.") == 0);
    cpa_indexed_writer_discard(NULL);
    CHECK_STATUS(cpa_indexed_writer_create(prefix, CPA_IDX_FLOAT32, &w), CPA_ERR_ARG);
    char nowhere[300];
    snprintf(nowhere, sizeof nowhere, "%s/no/such/folder/x", tmp_dir);
    CHECK_STATUS(cpa_indexed_writer_create(nowhere, CPA_IDX_UINT16, &w), CPA_ERR_IO);
    CHECK_ERR(nowhere);
}

/* ---- documents: text and JSON lines ------------------------------------------------- */

/* The tokens of the dataset at `prefix`, with its documents' sizes. */
static int64_t read_all(const char *prefix, int32_t *tokens, int64_t cap, int32_t *sizes,
                        int64_t *n_docs)
{
    cpa_indexed *ix = NULL;
    CHECK_OK(cpa_indexed_open(prefix, &ix));
    if (!ix)
        return -1;
    int64_t n = cpa_indexed_num_tokens(ix);
    *n_docs = cpa_indexed_num_documents(ix);
    CHECK(cpa_indexed_num_sequences(ix) == *n_docs);
    CHECK(cpa_indexed_dtype(ix) == CPA_IDX_UINT16);
    for (int64_t i = 0; i < *n_docs; ++i)
        sizes[i] = (int32_t)cpa_indexed_sequence_length(ix, i);
    if (n <= cap)
        cpa_indexed_read(ix, 0, n, tokens);
    cpa_indexed_close(ix);
    return n;
}

static void test_text_round_trip(void)
{
    char in1[256], in2[256], prefix[256];
    path_of(in1, sizeof in1, "all-bytes.txt");
    path_of(in2, sizeof in2, "empty.txt");
    prefix_of(prefix, sizeof prefix, "text-ds");
    unsigned char bytes[600];
    for (int i = 0; i < 600; ++i)
        bytes[i] = (unsigned char)((i * 37 + 11) % 256); /* every value, NUL and \r\n included */
    CHECK(write_bytes(in1, bytes, sizeof bytes));
    CHECK(write_bytes(in2, "", 0));
    cpa_indexed_writer *w = NULL;
    CHECK_OK(cpa_indexed_writer_create(prefix, CPA_IDX_UINT16, &w));
    if (!w)
        return;
    CHECK_OK(cpa_indexed_add_text_file(w, in1, 256));
    CHECK_OK(cpa_indexed_add_text_file(w, in2, 256));
    CHECK_OK(cpa_indexed_add_text_file(w, in1, 256));
    CHECK_OK(cpa_indexed_writer_commit(w));
    int32_t tok[2000], sizes[8];
    int64_t docs = 0, n = read_all(prefix, tok, 2000, sizes, &docs);
    CHECK(n == 2 * 601 + 1 && docs == 3);
    CHECK(sizes[0] == 601 && sizes[1] == 1 && sizes[2] == 601);
    int bad = 0;
    for (int d = 0; d < 2; ++d)
        for (int i = 0; i < 600; ++i)
            bad += tok[d * 602 + i] != bytes[i];
    CHECK_MSG(bad == 0, "%d bytes differ", bad);
    CHECK(tok[600] == 256 && tok[601] == 256 && tok[1202] == 256);

    /* A missing input is an I/O error naming it. */
    char missing[256];
    path_of(missing, sizeof missing, "no-such-input.txt");
    CHECK_OK(cpa_indexed_writer_create(prefix, CPA_IDX_UINT16, &w));
    CHECK_STATUS(cpa_indexed_add_text_file(w, missing, 256), CPA_ERR_IO);
    CHECK_ERR(missing);
    cpa_indexed_writer_discard(w);
}

static void test_jsonl_round_trip(void)
{
    char in[256], prefix[256];
    path_of(in, sizeof in, "docs.jsonl");
    prefix_of(prefix, sizeof prefix, "json-ds");
    /* Each line's "text" and the bytes it must decode to. */
    static const char lines[] =
        "{\"text\": \"plain ascii\"}\n"
        "  {\"id\": 7, \"text\": \"tab\\there\\nnewline \\\"quoted\\\" back\\\\slash \\/\"}\r\n"
        "\n"
        "{\"meta\": {\"a\": [1, 2.5e-3, -0, true, false, null, \"\\u0041\"]}, \"text\": "
        "\"caf\\u00e9 \\u20ac \\ud83d\\ude00 \\u0000 \\b\\f\\r\"}\n"
        "{\"text\": \"first\", \"text\": \"last wins\"}\n"
        "{\"text\": \"\"}\n"
        "{\"text\": \"raw UTF-8 \xc3\xa9\"}"; /* no newline at the end */
    static const char *const want[6] = {
        "plain ascii",
        "tab\there\nnewline \"quoted\" back\\slash /",
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \0 \b\f\r",
        "last wins",
        "",
        "raw UTF-8 \xc3\xa9",
    };
    const size_t want_len[6] = {strlen(want[0]), strlen(want[1]), 20, strlen(want[3]), 0,
                                strlen(want[5])};
    CHECK(write_bytes(in, lines, sizeof lines - 1));
    cpa_indexed_writer *w = NULL;
    CHECK_OK(cpa_indexed_writer_create(prefix, CPA_IDX_UINT16, &w));
    if (!w)
        return;
    int64_t added = -1;
    CHECK_OK(cpa_indexed_add_jsonl_file(w, in, "text", 256, &added));
    CHECK(added == 6);
    CHECK_OK(cpa_indexed_writer_commit(w));
    int32_t tok[512], sizes[8];
    int64_t docs = 0;
    read_all(prefix, tok, 512, sizes, &docs);
    CHECK(docs == 6);
    int64_t at = 0;
    for (int d = 0; d < 6 && d < docs; ++d) {
        CHECK_MSG(sizes[d] == (int32_t)want_len[d] + 1, "document %d: %d tokens, want %zu + EOD",
                  d, sizes[d], want_len[d]);
        int bad = 0;
        for (size_t i = 0; i < want_len[d] && (int32_t)i < sizes[d]; ++i)
            bad += tok[at + (int64_t)i] != (unsigned char)want[d][i];
        CHECK_MSG(bad == 0, "document %d: %d bytes differ", d, bad);
        CHECK(tok[at + sizes[d] - 1] == 256);
        at += sizes[d];
    }
}

static void test_jsonl_errors(void)
{
    static const struct {
        const char *line;
        const char *words[2];
    } bad[] = {
        {"[\"text\"]", {"expected a JSON object", NULL}},
        {"{\"id\": 1}", {"no top-level key \"text\"", NULL}},
        {"{\"a\": {\"text\": \"nested\"}}", {"no top-level key", NULL}},
        {"{\"text\": 5}", {"column 10", "not a string"}},
        {"{\"text\": [\"x\"]}", {"not a string", NULL}},
        {"{\"text\": \"bad \\q escape\"}", {"invalid escape", NULL}},
        {"{\"text\": \"\\u12g4\"}", {"four hex digits", NULL}},
        {"{\"text\": \"\\ud800 alone\"}", {"high surrogate", NULL}},
        {"{\"text\": \"\\udc00\"}", {"lone low surrogate", NULL}},
        {"{\"text\": \"raw\ttab\"}", {"control character", NULL}},
        {"{\"text\": \"open", {"not closed", NULL}},
        {"{\"text\": \"x\"} extra", {"after the end of the object", NULL}},
        {"{\"text\" \"x\"}", {"expected ':'", NULL}},
        {"{\"text\": \"x\",}", {"expected a string", NULL}},
        {"{\"n\": 01, \"text\": \"x\"}", {"expected ',' or '}'", NULL}},
        {"{\"n\": tru, \"text\": \"x\"}", {"expected a value", NULL}},
        {"{\"n\": 1.e5, \"text\": \"x\"}", {"needs a digit", NULL}},
    };
    char in[256], prefix[256], line2[300];
    path_of(in, sizeof in, "bad.jsonl");
    prefix_of(prefix, sizeof prefix, "bad-json-ds");
    snprintf(line2, sizeof line2, "%s:2:", in);
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
        char text[256];
        /* A good first line, then the bad one: the message names line 2. */
        int n = snprintf(text, sizeof text, "{\"text\": \"fine\"}\n%s\n", bad[k].line);
        CHECK(write_bytes(in, text, (size_t)n));
        cpa_indexed_writer *w = NULL;
        CHECK_OK(cpa_indexed_writer_create(prefix, CPA_IDX_UINT16, &w));
        if (!w)
            continue;
        cpa_status s = cpa_indexed_add_jsonl_file(w, in, "text", 256, NULL);
        CHECK_MSG(s == CPA_ERR_FORMAT, "line '%s': %s", bad[k].line, cpa_status_string(s));
        CHECK_MSG(strstr(cpa_last_error(), line2) != NULL, "line '%s': \"%s\" lacks \"%s\"",
                  bad[k].line, cpa_last_error(), line2);
        for (int j = 0; j < 2; ++j)
            if (bad[k].words[j])
                CHECK_MSG(strstr(cpa_last_error(), bad[k].words[j]) != NULL,
                          "line '%s': \"%s\" lacks \"%s\"", bad[k].line, cpa_last_error(),
                          bad[k].words[j]);
        cpa_indexed_writer_discard(w);
    }
    CHECK(count_files_like(".tmp.") == 0);
    /* The decoder alone: deep nesting is bounded, not a stack overflow. */
    static char deep[4096];
    size_t o = 0;
    o += (size_t)snprintf(deep, sizeof deep, "{\"a\": ");
    for (int i = 0; i < 1000; ++i)
        deep[o++] = '[';
    uint8_t out[4096];
    size_t len = 0;
    CHECK_STATUS(cpa_json_string_field(deep, o, "text", out, &len), CPA_ERR_FORMAT);
    CHECK_ERR("nested");
    const char ok[] = "{\"text\":\"\\\"\"}";
    CHECK_OK(cpa_json_string_field(ok, sizeof ok - 1, "text", out, &len));
    CHECK(len == 1 && out[0] == '"');
}

int main(void)
{
    if (!tmp_dir_create("cpattn_test_indexed"))
        return 1;
    RUN_TEST(test_read_layout);
    RUN_TEST(test_malformed);
    RUN_TEST(test_writer);
    RUN_TEST(test_text_round_trip);
    RUN_TEST(test_jsonl_round_trip);
    RUN_TEST(test_jsonl_errors);
    remove_tree(tmp_dir);
    return TEST_SUMMARY();
}
