/*
 * test_npy.c — unit tests of the .npy reader and writer (src/core/npy.c).
 *
 * Round trips of contiguous and strided views (transposed, permuted, reversed,
 * zero-size, larger than one streaming chunk) must be bit-exact, NaN payloads
 * included.  Hand-written files exercise the reader on what numpy or a person
 * might produce (versions 1.0/2.0/3.0, any key order and whitespace), and
 * every malformed file must fail with the right status and a message naming
 * the file.  Saving must be atomic: failures leave an existing file intact and
 * no temporary behind.  Everything happens in a mkdtemp folder under /tmp that
 * is removed at the end.  numpy is not needed.
 */
#include "cpattn.h"
#include "internal.h"
#include "test.h"

/* The usual dict up to the shape value. */
#define F4_SHAPE "{'descr': '<f4', 'fortran_order': False, 'shape': "
#include "test_files.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A .npy file written by hand: magic, version, a 2-byte (1.0) or 4-byte
 * (2.0, 3.0) length of `dict` as given, then `nbytes` of data. */
static bool write_npy(const char *path, int major, int minor, const char *dict, const void *data,
                      size_t nbytes)
{
    size_t dlen = strlen(dict), pre = major == 1 ? 10 : 12;
    unsigned char *buf = malloc(pre + dlen + nbytes + 1);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = (unsigned char)minor;
    for (size_t i = 8; i < pre; ++i)
        buf[i] = (unsigned char)(dlen >> (8 * (i - 8)));
    memcpy(buf + pre, dict, dlen);
    if (nbytes)
        memcpy(buf + pre + dlen, data, nbytes);
    bool ok = write_bytes(path, buf, pre + dlen + nbytes);
    free(buf);
    return ok;
}

/* Arbitrary 32-bit patterns, NaNs with payloads and denormals included, so
 * that only a bit-exact copy passes. */
static void fill_bits(float *x, int64_t n, uint32_t seed)
{
    uint32_t s = seed * 2654435761u + 1;
    for (int64_t i = 0; i < n; ++i) {
        s = s * 1664525u + 1013904223u;
        uint32_t bits = s ^ (s >> 13);
        if (i % 7 == 3)
            bits = 0x7fc00000u | (bits & 0x3fffff); /* quiet NaN, payload */
        memcpy(&x[i], &bits, sizeof bits);
    }
}

static bool same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

/* Element number `lin` (C order) of a strided view. */
static float *elem(const cpa_tensor *t, int64_t lin)
{
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; --d) {
        off += (lin % t->shape[d]) * t->stride[d];
        lin /= t->shape[d];
    }
    return t->data + off;
}

/* The file at `path` holds exactly the view's elements in C order. */
static bool file_matches_view(const char *path, const cpa_tensor *t)
{
    float *data = NULL;
    int ndim = -1;
    int64_t shape[CPA_MAX_DIMS];
    if (cpa_npy_load(path, &data, &ndim, shape) != CPA_OK)
        return false;
    bool ok = ndim == t->ndim;
    int64_t numel = 1;
    for (int d = 0; ok && d < ndim; ++d) {
        ok = shape[d] == t->shape[d];
        numel *= shape[d];
    }
    for (int64_t i = 0; ok && i < numel; ++i)
        ok = same_bits(data[i], *elem(t, i));
    free(data);
    return ok;
}

/* The last error names `path` and contains `keyword`. */
#define CHECK_ERR(path, keyword)                                                        \
    CHECK_MSG(strstr(cpa_last_error(), (path)) && strstr(cpa_last_error(), (keyword)), \
              "message lacks '%s' or '%s': %s", (path), (keyword), cpa_last_error())

/* ------------------------------------------------------------------------ */

static void test_roundtrip_contiguous(void)
{
    static const int64_t shapes[4][4] = {{5}, {2, 3}, {2, 3, 4}, {2, 3, 4, 5}};
    for (int nd = 1; nd <= 4; ++nd) {
        char path[256], name[32];
        snprintf(name, sizeof name, "c%d.npy", nd);
        path_of(path, sizeof path, name);
        float src[120], back[120];
        cpa_tensor t = cpa_tensor_make(src, nd, shapes[nd - 1]);
        int64_t n = cpa_tensor_numel(&t);
        fill_bits(src, n, (uint32_t)nd);
        CHECK_OK(cpa_npy_save(path, t));

        int ndim = -1;
        int64_t shape[CPA_MAX_DIMS] = {-1, -1, -1, -1};
        CHECK_OK(cpa_npy_shape(path, &ndim, shape));
        CHECK(ndim == nd);
        for (int d = 0; d < CPA_MAX_DIMS; ++d)
            CHECK(shape[d] == (d < nd ? shapes[nd - 1][d] : 1));
        CHECK(file_matches_view(path, &t));

        memset(back, 0, sizeof back);
        CHECK_OK(cpa_npy_load_into(path, cpa_tensor_make(back, nd, shapes[nd - 1])));
        CHECK(memcmp(src, back, (size_t)n * sizeof(float)) == 0);
    }
    CHECK(count_temps(tmp_dir) == 0);
}

/* The bytes numpy.save writes: the exact dict, space padding, '\n', data
 * starting at a multiple of 64. */
static void test_header_bytes(void)
{
    static const struct {
        int ndim;
        int64_t shape[4];
        const char *dict;
    } cases[] = {
        {2, {2, 3}, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"},
        {1, {5}, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }"},
        {4, {1, 0, 7, 123456789012},
         "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 0, 7, 123456789012), }"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c) {
        char path[256];
        path_of(path, sizeof path, "hdr.npy");
        float x[6] = {1, 2, 3, 4, 5, 6};
        CHECK_OK(cpa_npy_save(path, cpa_tensor_make(x, cases[c].ndim, cases[c].shape)));
        size_t n = 0;
        unsigned char *b = read_bytes(path, &n);
        CHECK(b != NULL);
        if (!b)
            continue;
        size_t hlen = (size_t)b[8] | (size_t)b[9] << 8, dlen = strlen(cases[c].dict);
        int64_t numel = 1;
        for (int d = 0; d < cases[c].ndim; ++d)
            numel *= cases[c].shape[d];
        CHECK(memcmp(b, "\x93NUMPY\x01\x00", 8) == 0);
        CHECK((10 + hlen) % 64 == 0);
        CHECK(n == 10 + hlen + (size_t)numel * 4);
        CHECK(hlen > dlen && memcmp(b + 10, cases[c].dict, dlen) == 0);
        bool padded = b[10 + hlen - 1] == '\n';
        for (size_t i = 10 + dlen; i < 10 + hlen - 1; ++i)
            padded = padded && b[i] == ' ';
        CHECK(padded);
        CHECK(memcmp(b + 10 + hlen, x, (size_t)numel * 4) == 0);
        free(b);
    }
}

static void test_roundtrip_strided(void)
{
    char path[256];
    path_of(path, sizeof path, "s.npy");

    /* A transposed matrix: view (4, 3) of a row-major (3, 4) buffer. */
    float base[64];
    fill_bits(base, 64, 11);
    cpa_tensor tr = {base, 2, {4, 3}, {1, 4}};
    CHECK_OK(cpa_npy_save(path, tr));
    CHECK(file_matches_view(path, &tr));

    /* A permuted 4-d view: logical [B, S, N, D] stored BNSD. */
    float attn[2 * 3 * 4 * 5];
    fill_bits(attn, 120, 12);
    cpa_tensor perm = cpa_tensor_attn(attn, CPA_LAYOUT_BNSD, 2, 3, 4, 5);
    CHECK_OK(cpa_npy_save(path, perm));
    CHECK(file_matches_view(path, &perm));

    /* Every other element, reversed (negative stride), of a 3-d block. */
    cpa_tensor odd = {base + 63, 3, {2, 2, 4}, {-32, -16, -2}};
    CHECK_OK(cpa_npy_save(path, odd));
    CHECK(file_matches_view(path, &odd));

    /* load_into a strided destination: the transposed view with padded rows;
     * the padding must stay untouched. */
    float dst_buf[4 * 5];
    for (int i = 0; i < 20; ++i)
        dst_buf[i] = -1.0f;
    CHECK_OK(cpa_npy_save(path, tr));
    cpa_tensor dst = {dst_buf, 2, {4, 3}, {1, 5}};
    CHECK_OK(cpa_npy_load_into(path, dst));
    bool ok = true;
    for (int64_t i = 0; i < 12; ++i)
        ok = ok && same_bits(*elem(&dst, i), *elem(&tr, i));
    /* The view covers columns 0-3 of a (4, 5) buffer's first 3 rows: column 4
     * and row 3 are padding. */
    for (int i = 0; i < 4; ++i)
        ok = ok && dst_buf[i + 3 * 5] == -1.0f && dst_buf[4 + 5 * (i % 3)] == -1.0f;
    CHECK(ok);

    /* Zero-size dims: a valid empty array, even with NULL data. */
    cpa_tensor empty = {NULL, 3, {3, 0, 2}, {0, 0, 0}};
    CHECK_OK(cpa_npy_save(path, empty));
    float *data = NULL;
    int ndim = 0;
    int64_t shape[CPA_MAX_DIMS];
    CHECK_OK(cpa_npy_load(path, &data, &ndim, shape));
    CHECK(data != NULL && ndim == 3 && shape[0] == 3 && shape[1] == 0 && shape[2] == 2);
    free(data);
    CHECK_OK(cpa_npy_load_into(path, empty));
    size_t n = 0;
    unsigned char *b = read_bytes(path, &n);
    CHECK(b && n == 128);
    free(b);
    CHECK(count_temps(tmp_dir) == 0);
}

/* More than one 4 MiB streaming chunk, strided both ways, with run
 * boundaries that do not line up with the chunk size. */
static void test_roundtrip_large(void)
{
    char path[256];
    path_of(path, sizeof path, "big.npy");
    const int64_t A = 3, B = 701, C = 997, n = A * B * C; /* 2.1M floats, 8.4 MB */
    float *src = malloc((size_t)n * sizeof(float)), *dst = malloc((size_t)n * sizeof(float));
    fill_bits(src, n, 99);
    /* View (C, B, A) of a row-major (A, B, C) buffer: dims 0 and 2 swapped. */
    cpa_tensor v = {src, 3, {C, B, A}, {1, C, B * C}};
    CHECK_OK(cpa_npy_save(path, v));
    cpa_tensor w = {dst, 3, {C, B, A}, {1, C, B * C}};
    memset(dst, 0, (size_t)n * sizeof(float));
    CHECK_OK(cpa_npy_load_into(path, w));
    CHECK(memcmp(src, dst, (size_t)n * sizeof(float)) == 0);
    CHECK(file_matches_view(path, &v));
    free(src);
    free(dst);
}

/* Files as numpy or a person might write them. */
static void test_read_handwritten(void)
{
    static const struct {
        int major;
        const char *dict;
        int ndim;
        int64_t shape[4];
    } cases[] = {
        /* odd whitespace, key order, quotes, trailing commas, no padding */
        {1, "{ \"shape\" : ( 2 ,3 , ) ,'fortran_order':False,\n'descr'  :  '<f4'  }  \n", 2,
         {2, 3}},
        {1, "{'descr':'<f4','fortran_order':False,'shape':(6,)}", 1, {6}},
        {1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }\n", 2, {2, 3}},
        {1, "\t{'fortran_order': False, 'shape': (1, 2, 1, 3), 'descr': '<f4'}\r\n", 4,
         {1, 2, 1, 3}},
        {2, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }          \n", 2, {3, 2}},
        {3, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }\n", 1, {6}},
    };
    float x[6];
    fill_bits(x, 6, 5);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c) {
        char path[256];
        path_of(path, sizeof path, "hand.npy");
        CHECK(write_npy(path, cases[c].major, 0, cases[c].dict, x, sizeof x));
        float *data = NULL;
        int ndim = 0;
        int64_t shape[CPA_MAX_DIMS];
        cpa_status st = cpa_npy_load(path, &data, &ndim, shape);
        CHECK_MSG(st == CPA_OK, "case %zu: %s", c, cpa_last_error());
        if (st != CPA_OK)
            continue;
        CHECK(ndim == cases[c].ndim);
        for (int d = 0; d < ndim; ++d)
            CHECK(shape[d] == cases[c].shape[d]);
        CHECK(memcmp(data, x, sizeof x) == 0);
        free(data);
    }

    /* An empty array needs no data bytes. */
    char path[256];
    path_of(path, sizeof path, "hand0.npy");
    CHECK(write_npy(path, 1, 0, "{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }\n",
                    NULL, 0));
    int ndim = 0;
    int64_t shape[CPA_MAX_DIMS];
    CHECK_OK(cpa_npy_shape(path, &ndim, shape));
    CHECK(ndim == 1 && shape[0] == 0);
}

/* A failure of every reader on `path` with `want` and a message naming the
 * file and containing `keyword`; outputs stay untouched. */
static void expect_read_failure(const char *path, cpa_status want, const char *keyword)
{
    int ndim = -7;
    int64_t shape[CPA_MAX_DIMS] = {-7, -7, -7, -7};
    float *data = (float *)&ndim; /* a sentinel, never freed */
    CHECK_STATUS(cpa_npy_shape(path, &ndim, shape), want);
    CHECK_ERR(path, keyword);
    CHECK_STATUS(cpa_npy_load(path, &data, &ndim, shape), want);
    CHECK_ERR(path, keyword);
    CHECK(data == (float *)&ndim && ndim == -7 && shape[0] == -7 && shape[3] == -7);
    float buf[6] = {0};
    int64_t dshape[2] = {2, 3};
    CHECK_STATUS(cpa_npy_load_into(path, cpa_tensor_make(buf, 2, dshape)), want);
    CHECK_ERR(path, keyword);
}

static void test_malformed(void)
{
    static const struct {
        int major, minor;
        const char *dict;
        size_t data_bytes;
        const char *keyword;
    } cases[] = {
/* The usual dict up to the shape value. */
#define F4 F4_SHAPE
        {4, 0, F4 "(2, 3), }", 24, "version 4.0"},
        {1, 1, F4 "(2, 3), }", 24, "version 1.1"},
        {1, 0, F4 "(2, 3), }", 20,
         "truncated: header says shape (2, 3) = 24 bytes of data but the file has 20"},
        {1, 0, F4 "(2, 3), }", 28, "trailing bytes"},
        {1, 0, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", 24, "'<f8' (float64)"},
        {1, 0, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24,
         "big-endian float32"},
        {1, 0, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", 24, "int32"},
        {1, 0, "{'descr': '|u1', 'fortran_order': False, 'shape': (24,), }", 24, "uint8"},
        {1, 0, "{'descr': '<f2', 'fortran_order': False, 'shape': (12,), }", 24, "float16"},
        {1, 0, "{'descr': '|O', 'fortran_order': False, 'shape': (3,), }", 24, "Python object"},
        {1, 0, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,), }", 24,
         "structured"},
        {1, 0, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24,
         "fortran_order is True"},
        {1, 0, "{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3), }", 24, "True or False"},
        {1, 0, "{'descr': '<f4', 'fortran_order': False, }", 24, "no 'shape' key"},
        {1, 0, "{'fortran_order': False, 'shape': (2, 3), }", 24, "no 'descr' key"},
        {1, 0, "{'descr': '<f4', 'shape': (2, 3), }", 24, "no 'fortran_order' key"},
        {1, 0, F4 "(2 3), }", 24, "malformed"},
        {1, 0, F4 "(2, 3), ", 24, "malformed"},
        {1, 0, F4 "(2, 3, }", 24, "malformed"},
        {1, 0, F4 "[2, 3], }", 24, "malformed"},
        {1, 0, F4 "(6), }", 24, "not a tuple"},
        {1, 0, F4 "(2,,3), }", 24, "malformed"},
        {1, 0, F4 "(x,), }", 24, "malformed"},
        {1, 0, F4 "(2, 3), } junk", 24, "malformed"},
        {1, 0, "'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)", 24, "malformed"},
        {1, 0, "{'descr': '<f4, 'fortran_order': False, 'shape': (2, 3), }", 24, "malformed"},
        {1, 0, "", 24, "malformed"},
        {1, 0, F4 "(2, 3), 'x': 1}", 24, "unexpected key 'x'"},
        {1, 0, F4 "(2, 3), 'shape': (2, 3)}", 24, "twice"},
        {1, 0, F4 "(2, -3), }", 24, "negative dimension -3"},
        {1, 0, F4 "(), }", 4, "0-d"},
        {1, 0, F4 "(4611686018427387904, 2), }", 24, "overflows"},
        {1, 0, F4 "(3037000500, 3037000500), }", 24, "overflows"},
        {1, 0, F4 "(99999999999999999999,), }", 24, "64 bits"},
        {2, 0, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24, "fortran_order"},
#undef F4
    };
    unsigned char zeros[32] = {0};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c) {
        char path[256], name[32];
        snprintf(name, sizeof name, "bad%zu.npy", c);
        path_of(path, sizeof path, name);
        CHECK(write_npy(path, cases[c].major, cases[c].minor, cases[c].dict, zeros,
                        cases[c].data_bytes));
        expect_read_failure(path, CPA_ERR_FORMAT, cases[c].keyword);
    }

    /* A sound file of a rank cpattn does not take is a usage error, not a
     * malformed file (like a 3-d q.npy where 4 dims are needed). */
    {
        char path[256];
        path_of(path, sizeof path, "five_dims.npy");
        CHECK(write_npy(path, 1, 0, F4_SHAPE "(1, 1, 2, 1, 3), }", zeros, 24));
        expect_read_failure(path, CPA_ERR_ARG, "5 dims");
    }

    /* Bytes from the file are escaped in messages: a dtype made of terminal
     * escape sequences (set the title, clear the screen) reaches the user as
     * text, never as control characters. */
    {
        char path[256];
        path_of(path, sizeof path, "escape.npy");
        CHECK(write_npy(path, 1, 0,
                        "{'descr': '\x1b]0;owned\x07\x1b[2J', 'fortran_order': False, "
                        "'shape': (6,), }",
                        zeros, 24));
        int ndim;
        int64_t shape[CPA_MAX_DIMS];
        CHECK_STATUS(cpa_npy_shape(path, &ndim, shape), CPA_ERR_FORMAT);
        const char *msg = cpa_last_error();
        int raw = 0;
        for (const char *p = msg; *p; ++p)
            raw |= (unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f;
        CHECK_MSG(!raw, "the message carries raw control characters");
        CHECK_MSG(strstr(msg, "\\x1b]0;owned\\x07") != NULL, "escaped dtype missing from: %s", msg);
    }

    /* Damage below the dict level, written byte by byte. */
    static const struct {
        const char *bytes;
        size_t len;
        const char *keyword;
    } raw[] = {
#define RAW(bytes, keyword) {bytes, sizeof(bytes) - 1, keyword}
        RAW("\x93NUMPX\x01\x00\x10\x00{}              ", "bad magic"),
        RAW("PK\x03\x04 this is an .npz (zip) file", ".npz"),
        RAW("", "bad magic"),
        RAW("\x93NUM", "bad magic"),
        RAW("\x93NUMPY\x01", "truncated header"),
        RAW("\x93NUMPY\x02\x00\x10\x00", "truncated header"),
        RAW("\x93NUMPY\x01\x00\x64\x00{'descr': '<f4'}", "header length 100 exceeds file"),
        RAW("\x93NUMPY\x02\x00\xff\xff\xff\xff{}", "exceeds file"),
#undef RAW
    };
    for (size_t c = 0; c < sizeof raw / sizeof raw[0]; ++c) {
        char path[256], name[32];
        snprintf(name, sizeof name, "raw%zu.npy", c);
        path_of(path, sizeof path, name);
        CHECK(write_bytes(path, raw[c].bytes, raw[c].len));
        expect_read_failure(path, CPA_ERR_FORMAT, raw[c].keyword);
    }

    /* Not there, or not a file: I/O errors. */
    char path[256];
    expect_read_failure(path_of(path, sizeof path, "missing.npy"), CPA_ERR_IO, "cannot open");
    expect_read_failure(tmp_dir, CPA_ERR_IO, "not a regular file");
}

static void test_load_into_errors(void)
{
    char path[256];
    path_of(path, sizeof path, "li.npy");
    float x[6] = {1, 2, 3, 4, 5, 6}, dst[6] = {0};
    int64_t s23[2] = {2, 3}, s32[2] = {3, 2}, s6[1] = {6};
    CHECK_OK(cpa_npy_save(path, cpa_tensor_make(x, 2, s23)));

    CHECK_STATUS(cpa_npy_load_into(path, cpa_tensor_make(dst, 2, s32)), CPA_ERR_ARG);
    CHECK_ERR(path, "file has shape (2, 3) but the destination tensor has shape (3, 2)");
    CHECK_STATUS(cpa_npy_load_into(path, cpa_tensor_make(dst, 1, s6)), CPA_ERR_ARG);
    CHECK_ERR(path, "(6,)");
    bool untouched = true;
    for (int i = 0; i < 6; ++i)
        untouched = untouched && dst[i] == 0.0f;
    CHECK(untouched);

    CHECK_STATUS(cpa_npy_load_into(path, cpa_tensor_make(NULL, 2, s23)), CPA_ERR_ARG);
    CHECK_ERR(path, "NULL data");
    cpa_tensor bad = cpa_tensor_make(dst, 2, s23);
    bad.ndim = 0;
    CHECK_STATUS(cpa_npy_load_into(path, bad), CPA_ERR_ARG);
    bad.ndim = 5;
    CHECK_STATUS(cpa_npy_load_into(path, bad), CPA_ERR_ARG);
    CHECK_ERR(path, "ndim 5");
    bad = cpa_tensor_make(dst, 2, s23);
    bad.shape[1] = -3;
    CHECK_STATUS(cpa_npy_load_into(path, bad), CPA_ERR_ARG);
    bad = cpa_tensor_make(dst, 2, s23);
    bad.stride[0] = INT64_MAX / 2;
    CHECK_STATUS(cpa_npy_load_into(path, bad), CPA_ERR_ARG);
    CHECK_ERR(path, "overflow");
    bad = cpa_tensor_make(dst, 2, s23);
    bad.shape[0] = INT64_MAX / 2;
    bad.shape[1] = 4;
    CHECK_STATUS(cpa_npy_load_into(path, bad), CPA_ERR_ARG);
    CHECK_ERR(path, "too large");
    CHECK_STATUS(cpa_npy_load_into(NULL, cpa_tensor_make(dst, 2, s23)), CPA_ERR_ARG);

    int ndim;
    int64_t shape[CPA_MAX_DIMS];
    float *data;
    CHECK_STATUS(cpa_npy_shape(path, NULL, shape), CPA_ERR_ARG);
    CHECK_STATUS(cpa_npy_load(path, NULL, &ndim, shape), CPA_ERR_ARG);
    CHECK_STATUS(cpa_npy_load(NULL, &data, &ndim, shape), CPA_ERR_ARG);
}

/* Allocation failures while reading: outputs untouched, nothing leaked. */
static void test_load_nomem(void)
{
    char path[256];
    path_of(path, sizeof path, "nomem.npy");
    float x[6] = {1, 2, 3, 4, 5, 6}, dst[6] = {0};
    int64_t s23[2] = {2, 3};
    CHECK_OK(cpa_npy_save(path, cpa_tensor_make(x, 2, s23)));
    for (long k = 1; k <= 2; ++k) { /* 1: header text, 2: data */
        int ndim = -7;
        int64_t shape[CPA_MAX_DIMS] = {-7, -7, -7, -7};
        float *data = NULL;
        cpa_debug_fail_alloc_after(k);
        CHECK_STATUS(cpa_npy_load(path, &data, &ndim, shape), CPA_ERR_NOMEM);
        CHECK_ERR(path, "injected");
        CHECK(data == NULL && ndim == -7 && shape[0] == -7);
        cpa_debug_fail_alloc_after(k);
        CHECK_STATUS(cpa_npy_load_into(path, cpa_tensor_make(dst, 2, s23)), CPA_ERR_NOMEM);
        CHECK(dst[0] == 0.0f);
    }
    cpa_debug_fail_alloc_after(0);
}

/* `path` still holds the 2x3 file saved from `x`. */
static bool still_old(const char *path, const float *x)
{
    float y[6] = {0};
    int64_t s23[2] = {2, 3};
    return cpa_npy_load_into(path, cpa_tensor_make(y, 2, s23)) == CPA_OK &&
           memcmp(x, y, sizeof y) == 0;
}

static void test_save_atomic(void)
{
    char path[256];
    path_of(path, sizeof path, "atomic.npy");
    float old_x[6] = {1, 2, 3, 4, 5, 6}, new_x[12];
    fill_bits(new_x, 12, 3);
    int64_t s23[2] = {2, 3}, s43[2] = {4, 3};

    /* Replacing an existing file: the new content, no temporary left. */
    CHECK_OK(cpa_npy_save(path, cpa_tensor_make(new_x, 2, s43)));
    CHECK_OK(cpa_npy_save(path, cpa_tensor_make(old_x, 2, s23)));
    CHECK(still_old(path, old_x));
    CHECK(count_temps(tmp_dir) == 0);

    /* Failures before anything is written. */
    CHECK_STATUS(cpa_npy_save(path, cpa_tensor_make(NULL, 2, s43)), CPA_ERR_ARG);
    CHECK_ERR(path, "NULL data");
    cpa_tensor bad = cpa_tensor_make(new_x, 2, s43);
    bad.ndim = 0;
    CHECK_STATUS(cpa_npy_save(path, bad), CPA_ERR_ARG);
    CHECK_STATUS(cpa_npy_save(NULL, cpa_tensor_make(new_x, 2, s43)), CPA_ERR_ARG);
    CHECK(still_old(path, old_x));

    /* The write buffer cannot be allocated (a strided source). */
    cpa_tensor tr = {new_x, 2, {3, 4}, {1, 3}};
    cpa_debug_fail_alloc_after(1);
    CHECK_STATUS(cpa_npy_save(path, tr), CPA_ERR_NOMEM);
    cpa_debug_fail_alloc_after(0);
    CHECK_ERR(path, "injected");
    CHECK(still_old(path, old_x));
    CHECK(count_temps(tmp_dir) == 0);

    /* The rename fails after the temporary was written: `path` is a
     * non-empty folder.  The temporary must be removed. */
    char dir[256], inner[300];
    path_of(dir, sizeof dir, "occupied.npy");
    CHECK(mkdir(dir, 0700) == 0);
    snprintf(inner, sizeof inner, "%s/keep", dir);
    CHECK(write_bytes(inner, "k", 1));
    CHECK_STATUS(cpa_npy_save(dir, tr), CPA_ERR_IO);
    CHECK_ERR(dir, "rename");
    CHECK(count_temps(tmp_dir) == 0);
    struct stat sb;
    CHECK(stat(inner, &sb) == 0);

    /* A folder that does not exist. */
    const char *nowhere = "/nonexistent/dir/x.npy";
    CHECK_STATUS(cpa_npy_save(nowhere, tr), CPA_ERR_IO);
    CHECK_ERR(nowhere, "temporary");
    CHECK(stat("/nonexistent/dir", &sb) != 0);

    /* A read-only folder (root ignores permissions, so only as a user). */
    if (geteuid() != 0) {
        char ro[256], target[300];
        path_of(ro, sizeof ro, "readonly");
        CHECK(mkdir(ro, 0500) == 0);
        snprintf(target, sizeof target, "%s/x.npy", ro);
        CHECK_STATUS(cpa_npy_save(target, tr), CPA_ERR_IO);
        CHECK_ERR(target, "Permission denied");
    }
    CHECK(still_old(path, old_x));
}

int main(void)
{
    if (!tmp_dir_create("cpattn_test_npy"))
        return 1;
    RUN_TEST(test_roundtrip_contiguous);
    RUN_TEST(test_header_bytes);
    RUN_TEST(test_roundtrip_strided);
    RUN_TEST(test_roundtrip_large);
    RUN_TEST(test_read_handwritten);
    RUN_TEST(test_malformed);
    RUN_TEST(test_load_into_errors);
    RUN_TEST(test_load_nomem);
    RUN_TEST(test_save_atomic);
    remove_tree(tmp_dir);
    return TEST_SUMMARY();
}
