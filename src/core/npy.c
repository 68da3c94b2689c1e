/*
 * npy.c — NumPy .npy input and output for fp32 tensors.
 *
 * What it is: a strict reader for the one kind of .npy file cpattn uses —
 * little-endian float32 ('<f4'), C order, 1 to 4 dims, format versions 1.0,
 * 2.0 and 3.0 (3.0 only allows a UTF-8 header, which changes nothing for the
 * ASCII headers we accept) — and a writer that produces the same bytes as
 * numpy.save for such an array.  Both sides stream strided views through a
 * bounded buffer, so a multi-GB tensor never needs a second full-size copy.
 *
 * What it is not: a general .npy library.  Other dtypes and byte orders,
 * Fortran order, structured dtypes, pickled objects, .npz archives and 0-d
 * arrays (shape ()) are rejected with CPA_ERR_FORMAT and a message that names
 * the file, the problem and, where there is one, the numpy fix.  0-d arrays
 * are refused rather than read as 1 element because no cpa_tensor has 0 dims;
 * the message suggests arr.reshape(1).  The host must be little-endian
 * (checked at compile time): data are copied without byte swapping.
 *
 * Reading checks the data length against the file size before touching the
 * data, so a truncated file or one with trailing bytes fails up front instead
 * of half-way.  Saving is atomic (atomic_file.h): the bytes go to
 * "<dir>/.<name>.tmp.<pid>.<n>" in the folder of `path`, are fsync'd and
 * renamed over `path`, and the folder is fsync'd; on any failure the
 * temporary is removed and an existing file at `path` is left as it was.
 *
 * The sharded reader and writer over MPI-IO (src/comm/npy_rows.c) use the
 * same header check, header bytes and view copies through npy_internal.h,
 * so a sharded file is byte for byte what cpa_npy_save writes.
 */
#include "atomic_file.h"
#include "internal.h"
#include "npy_internal.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy.c copies '<f4' data without byte swapping and needs a little-endian host"
#endif

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
/* numpy pads headers so the data start at a multiple of 64 bytes. */
#define NPY_ALIGN 64
/* A sane header is ~120 bytes; refuse to allocate for an absurd length field. */
#define NPY_MAX_HEADER ((size_t)1 << 20)
/* The streaming buffer: big enough to amortise system calls, small enough to
 * be irrelevant next to a large tensor. */
#define NPY_CHUNK_BYTES ((size_t)4 << 20)
/* Room for the longest path we write a temporary for, plus its suffix. */
#define NPY_PATH_CAP 4160

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

/* "(2, 3)", "(5,)" or "()": Python's repr of the shape tuple, as numpy
 * writes it and as users will recognise it in messages. */
static const char *shape_text(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(buf, cap, "(");
    for (int i = 0; i < ndim && used < cap; ++i)
        used += (size_t)snprintf(buf + used, cap - used, i ? ", %lld" : "%lld",
                                 (long long)shape[i]);
    if (used < cap)
        snprintf(buf + used, cap - used, ndim == 1 ? ",)" : ")");
    return buf;
}

#define SHAPE_TEXT_CAP 128

/* Read exactly `len` data bytes or fail naming the file.  The size was
 * checked against fstat, so a short read means the file changed under us. */
static cpa_status read_data(int fd, const char *path, void *buf, size_t len)
{
    int64_t got = cpa_read_full(fd, buf, len);
    if (got < 0) {
        char why[128];
        return cpa_error(CPA_ERR_IO, "%s: cannot read: %s", path,
                         cpa_errno_text(errno, why, sizeof why));
    }
    if ((size_t)got < len)
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: truncated: the file ended while reading its data "
                         "(was it changed while being read?)",
                         path);
    return CPA_OK;
}

/* Elements per streaming chunk for a tensor of `numel` elements (>= 1). */
static size_t chunk_elems(int64_t numel)
{
    size_t most = NPY_CHUNK_BYTES / sizeof(float);
    if (numel < 1)
        return 1;
    return (uint64_t)numel < most ? (size_t)numel : most;
}

/* ------------------------------------------------------------------------ */
/* Strided views                                                             */
/* ------------------------------------------------------------------------ */

/* Check a caller's view (the save source or the load_into destination) and
 * return its element count.  The extent check guarantees that the offset
 * arithmetic in view_copy cannot overflow. */
static cpa_status check_view(const char *path, const cpa_tensor *t, const char *role,
                             int64_t *numel_out)
{
    if (t->ndim < 1 || t->ndim > CPA_MAX_DIMS)
        return cpa_error(CPA_ERR_ARG, "%s: %s tensor has ndim %d; expected 1 to %d", path, role,
                         t->ndim, CPA_MAX_DIMS);
    int64_t numel = 1;
    bool empty = false;
    for (int d = 0; d < t->ndim; ++d) {
        if (t->shape[d] < 0)
            return cpa_error(CPA_ERR_ARG, "%s: %s tensor has negative shape[%d] = %lld", path,
                             role, d, (long long)t->shape[d]);
        if (t->shape[d] == 0)
            empty = true;
    }
    if (empty) {
        *numel_out = 0;
        return CPA_OK;
    }
    /* Byte sizes and byte offsets must fit in int64, hence the limit. */
    const int64_t limit = INT64_MAX / (int64_t)sizeof(float);
    int64_t extent = 0; /* the largest |offset| of any element, in elements */
    for (int d = 0; d < t->ndim; ++d) {
        int64_t n = t->shape[d], s = t->stride[d];
        if (numel > limit / n)
            return cpa_error(CPA_ERR_ARG, "%s: %s tensor is too large (its byte size overflows "
                                          "64 bits)",
                             path, role);
        numel *= n;
        if (s == INT64_MIN || (n > 1 && (s < 0 ? -s : s) > (limit - extent) / (n - 1)))
            return cpa_error(CPA_ERR_ARG, "%s: %s tensor strides overflow 64-bit offsets", path,
                             role);
        extent += (n - 1) * (s < 0 ? -s : s);
    }
    if (!t->data)
        return cpa_error(CPA_ERR_ARG, "%s: %s tensor has NULL data but %lld elements", path,
                         role, (long long)numel);
    *numel_out = numel;
    return CPA_OK;
}

/* A position in a view's elements, walked in C order. */
typedef struct view_cursor {
    const cpa_tensor *t;
    int64_t idx[CPA_MAX_DIMS];
} view_cursor;

/* Copy the next `n` elements of the view to `buf` (gather) or from `buf` into
 * the view (scatter), a run of the innermost dim at a time.  The caller never
 * asks for more elements than remain, so every pointer formed is inside the
 * view. */
static void view_copy(view_cursor *c, float *buf, int64_t n, bool into_view)
{
    const cpa_tensor *t = c->t;
    int last = t->ndim - 1;
    int64_t step = t->stride[last];
    while (n > 0) {
        int64_t off = 0;
        for (int d = 0; d < t->ndim; ++d)
            off += c->idx[d] * t->stride[d];
        int64_t run = t->shape[last] - c->idx[last];
        if (run > n)
            run = n;
        float *p = t->data + off;
        if (step == 1 && into_view)
            memcpy(p, buf, (size_t)run * sizeof(float));
        else if (step == 1)
            memcpy(buf, p, (size_t)run * sizeof(float));
        else if (into_view)
            for (int64_t i = 0; i < run; ++i)
                p[i * step] = buf[i];
        else
            for (int64_t i = 0; i < run; ++i)
                buf[i] = p[i * step];
        buf += run;
        n -= run;
        /* Advance like an odometer; idx[0] may reach shape[0] at the end. */
        c->idx[last] += run;
        for (int d = last; d > 0 && c->idx[d] == t->shape[d]; --d) {
            c->idx[d] = 0;
            ++c->idx[d - 1];
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Header dict parsing                                                       */
/* ------------------------------------------------------------------------ */

/* The header is a Python dict literal such as
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 * We parse the small subset of Python that numpy (any version) writes, plus
 * what a hand-written header may reasonably contain: keys in any order,
 * either quote style, any whitespace, trailing commas, and the 'L' suffix
 * that Python 2 era numpy put on shape values.  Nothing is evaluated. */

typedef struct npy_dict {
    const char *descr; /* points into the header text, not terminated */
    size_t descr_len;
    bool fortran_order;
    int ndim; /* as written; may exceed CPA_MAX_DIMS (only the first are kept) */
    int64_t shape[CPA_MAX_DIMS];
    bool has_descr, has_fortran, has_shape;
} npy_dict;

typedef struct npy_scan {
    const char *p, *end;
    const char *path; /* for messages */
} npy_scan;

static void skip_ws(npy_scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        ++s->p;
}

static bool at(const npy_scan *s, char c) { return s->p < s->end && *s->p == c; }

static bool eat(npy_scan *s, char c)
{
    if (!at(s, c))
        return false;
    ++s->p;
    return true;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static cpa_status syntax_error(const npy_scan *s, const char *expected)
{
    int left = (int)(s->end - s->p);
    if (left == 0)
        return cpa_error(CPA_ERR_FORMAT, "%s: malformed header: expected %s, found the end",
                         s->path, expected);
    char shown[128];
    return cpa_error(CPA_ERR_FORMAT, "%s: malformed header: expected %s at \"%s\"", s->path,
                     expected, cpa_escape(shown, sizeof shown, s->p, left < 24 ? (size_t)left : 24));
}

/* A quoted string without escapes (no dtype string or key needs one). */
static cpa_status parse_string(npy_scan *s, const char **text, size_t *len)
{
    if (!at(s, '\'') && !at(s, '"'))
        return syntax_error(s, "a quoted string");
    char quote = *s->p++;
    const char *start = s->p;
    while (s->p < s->end && *s->p != quote && *s->p != '\\' && *s->p != '\n')
        ++s->p;
    if (!at(s, quote))
        return syntax_error(s, "the end of the string (escapes are not supported)");
    *text = start;
    *len = (size_t)(s->p - start);
    ++s->p;
    return CPA_OK;
}

/* True or False, as a whole word. */
static cpa_status parse_bool(npy_scan *s, bool *out)
{
    static const char *const words[2] = {"False", "True"};
    for (int v = 0; v < 2; ++v) {
        size_t n = strlen(words[v]);
        if ((size_t)(s->end - s->p) >= n && memcmp(s->p, words[v], n) == 0) {
            const char *after = s->p + n;
            bool word_ends = after == s->end || !((*after >= 'a' && *after <= 'z') ||
                                                  (*after >= 'A' && *after <= 'Z') ||
                                                  is_digit(*after) || *after == '_');
            if (word_ends) {
                s->p = after;
                *out = v == 1;
                return CPA_OK;
            }
        }
    }
    return syntax_error(s, "True or False");
}

/* One shape value: a non-negative decimal integer that fits in int64. */
static cpa_status parse_dim(npy_scan *s, int64_t *out)
{
    bool negative = eat(s, '-');
    if (!(s->p < s->end && is_digit(*s->p)))
        return syntax_error(s, "an integer shape value");
    const char *start = s->p;
    int64_t v = 0;
    while (s->p < s->end && is_digit(*s->p)) {
        int digit = *s->p - '0';
        if (v > (INT64_MAX - digit) / 10) {
            size_t n = s->end - start < 20 ? (size_t)(s->end - start) : 20;
            char shown[96];
            return cpa_error(CPA_ERR_FORMAT,
                             "%s: shape value %s%s... does not fit in 64 bits", s->path,
                             negative ? "-" : "", cpa_escape(shown, sizeof shown, start, n));
        }
        v = v * 10 + digit;
        ++s->p;
    }
    eat(s, 'L'); /* Python 2 long suffix, e.g. (2L, 3L) */
    if (negative && v != 0)
        return cpa_error(CPA_ERR_FORMAT, "%s: negative dimension -%lld in shape", s->path,
                         (long long)v);
    *out = v;
    return CPA_OK;
}

/* A tuple of ints: "()", "(5,)", "(2, 3)", "(2, 3,)".  "(5)" is not a tuple
 * in Python (it is the int 5) and numpy refuses it, so we do too. */
static cpa_status parse_shape(npy_scan *s, npy_dict *d)
{
    if (!eat(s, '('))
        return syntax_error(s, "a shape tuple '('");
    skip_ws(s);
    int n = 0;
    bool trailing_comma = false;
    while (!at(s, ')')) {
        int64_t v = 0;
        CPA_TRY(parse_dim(s, &v));
        if (n < CPA_MAX_DIMS)
            d->shape[n] = v;
        ++n;
        skip_ws(s);
        trailing_comma = eat(s, ',');
        if (!trailing_comma && !at(s, ')'))
            return syntax_error(s, "',' or ')' in the shape tuple");
        skip_ws(s);
    }
    ++s->p; /* the ')' */
    if (n == 1 && !trailing_comma)
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: malformed header: shape (%lld) is not a tuple; a 1-d shape is "
                         "written (%lld,)",
                         s->path, (long long)d->shape[0], (long long)d->shape[0]);
    d->ndim = n;
    return CPA_OK;
}

static bool key_is(const char *key, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(key, want, len) == 0;
}

/* One "key: value" pair; the three known keys, each at most once. */
static cpa_status parse_item(npy_scan *s, npy_dict *d)
{
    const char *key;
    size_t len;
    CPA_TRY(parse_string(s, &key, &len));
    skip_ws(s);
    if (!eat(s, ':'))
        return syntax_error(s, "':' after a key");
    skip_ws(s);
    bool *seen = key_is(key, len, "descr")           ? &d->has_descr
                 : key_is(key, len, "fortran_order") ? &d->has_fortran
                 : key_is(key, len, "shape")         ? &d->has_shape
                                                     : NULL;
    char shown[192];
    if (!seen)
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: malformed header: unexpected key '%s' (a .npy header has "
                         "exactly 'descr', 'fortran_order' and 'shape')",
                         s->path, cpa_escape(shown, sizeof shown, key, len < 40 ? len : 40));
    if (*seen)
        return cpa_error(CPA_ERR_FORMAT, "%s: malformed header: key '%s' appears twice",
                         s->path, cpa_escape(shown, sizeof shown, key, len));
    *seen = true;
    if (seen == &d->has_shape)
        return parse_shape(s, d);
    if (seen == &d->has_fortran)
        return parse_bool(s, &d->fortran_order);
    if (at(s, '[') || at(s, '{'))
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: dtype is a structured (record) dtype; cpattn reads plain float32 "
                         "('<f4') arrays only",
                         s->path);
    return parse_string(s, &d->descr, &d->descr_len);
}

static cpa_status parse_dict(const char *path, const char *text, size_t len, npy_dict *d)
{
    npy_scan s = {text, text + len, path};
    memset(d, 0, sizeof *d);
    skip_ws(&s);
    if (!eat(&s, '{'))
        return syntax_error(&s, "'{' starting the header dict");
    skip_ws(&s);
    while (!at(&s, '}')) {
        CPA_TRY(parse_item(&s, d));
        skip_ws(&s);
        if (!eat(&s, ',') && !at(&s, '}'))
            return syntax_error(&s, "',' or '}' after a value");
        skip_ws(&s);
    }
    ++s.p; /* the '}' */
    skip_ws(&s); /* numpy pads with spaces and ends with '\n' */
    if (s.p != s.end)
        return syntax_error(&s, "only padding after the header dict");
    return CPA_OK;
}

/* Name a dtype string for a message: "float64", "big-endian float32", ... */
static void describe_dtype(const char *descr, size_t len, char *buf, size_t cap)
{
    static const struct {
        char kind;
        const char *name;
        bool sized; /* name takes the bit width */
    } kinds[] = {
        {'f', "float", true},    {'i', "int", true},          {'u', "uint", true},
        {'c', "complex", true},  {'b', "bool", false},        {'U', "unicode string", false},
        {'S', "byte string", false}, {'O', "Python object", false}, {'M', "datetime64", false},
        {'m', "timedelta64", false}, {'V', "raw bytes", false},
    };
    int size = 0; /* bytes per item; absent for '|O' */
    bool digits_ok = len >= 2 && len <= 6;
    for (size_t i = 2; digits_ok && i < len; ++i) {
        digits_ok = is_digit(descr[i]);
        size = size * 10 + (descr[i] - '0');
    }
    if (!digits_ok || descr[0] == '\0' || !strchr("<>|=", descr[0])) {
        snprintf(buf, cap, "an unrecognised dtype");
        return;
    }
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; ++k) {
        if (kinds[k].kind != descr[1])
            continue;
        const char *order = descr[0] == '>' && size > 1 ? "big-endian " : "";
        if (kinds[k].sized && size > 0)
            snprintf(buf, cap, "%s%s%d", order, kinds[k].name, size * 8);
        else
            snprintf(buf, cap, "%s%s", order, kinds[k].name);
        return;
    }
    snprintf(buf, cap, "an unrecognised dtype");
}

/* The checks after syntax: required keys, dtype, order, dims, byte size. */
/* What a reader accepts: float32 data, or an index array (int32/int64). */
typedef enum { NPY_WANT_F4 = 0, NPY_WANT_INDEX = 1 } npy_want;

static cpa_status check_dict(const char *path, const char *text, size_t len, const npy_dict *d,
                             npy_want want, int *itemsize, int64_t *numel_out)
{
    const char *missing = !d->has_descr     ? "descr"
                          : !d->has_fortran ? "fortran_order"
                          : !d->has_shape   ? "shape"
                                            : NULL;
    char shown[900];
    if (missing)
        return cpa_error(CPA_ERR_FORMAT, "%s: malformed header: no '%s' key in %s", path,
                         missing, cpa_escape(shown, sizeof shown, text, len < 200 ? len : 200));
    *itemsize = 4;
    if (want == NPY_WANT_INDEX) {
        if (key_is(d->descr, d->descr_len, "<i8"))
            *itemsize = 8;
        else if (!key_is(d->descr, d->descr_len, "<i4")) {
            char name[64];
            cpa_escape(shown, 160, d->descr, d->descr_len < 32 ? d->descr_len : 32);
            describe_dtype(d->descr, d->descr_len, name, sizeof name);
            return cpa_error(CPA_ERR_FORMAT, "%s: dtype is '%s' (%s); an index array must be "
                             "little-endian int32 or int64 ('<i4' or '<i8'); convert with "
                             "arr.astype(np.int64)", path, shown, name);
        }
    } else if (!key_is(d->descr, d->descr_len, "<f4")) {
        char name[64];
        cpa_escape(shown, 160, d->descr, d->descr_len < 32 ? d->descr_len : 32);
        describe_dtype(d->descr, d->descr_len, name, sizeof name);
        if (d->descr_len == 3 && d->descr[1] == 'f' && d->descr[2] == '4')
            return cpa_error(CPA_ERR_FORMAT,
                             "%s: dtype is '%s' (%s); cpattn reads little-endian float32 "
                             "('<f4') only; convert with arr.astype('<f4')",
                             path, shown, name);
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: dtype is '%s' (%s); cpattn reads float32 ('<f4') only; "
                         "convert with arr.astype(np.float32)",
                         path, shown, name);
    }
    if (d->fortran_order)
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: fortran_order is True; save a C-order array "
                         "(np.ascontiguousarray(arr))",
                         path);
    if (d->ndim == 0)
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: 0-d arrays (shape ()) are not supported; save arr.reshape(1)",
                         path);
    if (d->ndim > CPA_MAX_DIMS)
        /* A sound file of a rank cpattn does not take: a usage problem. */
        return cpa_error(CPA_ERR_ARG, "%s: shape has %d dims; cpattn supports at most %d",
                         path, d->ndim, CPA_MAX_DIMS);
    /* The byte size must fit in int64 (and size_t).  A zero dim makes the
     * array empty whatever the others say, so it is checked first. */
    int64_t numel = 1;
    for (int i = 0; i < d->ndim; ++i)
        if (d->shape[i] == 0)
            numel = 0;
    for (int i = 0; i < d->ndim && numel != 0; ++i) {
        if (numel > INT64_MAX / (int64_t)*itemsize / d->shape[i] ||
            (uint64_t)numel * d->shape[i] > SIZE_MAX / (size_t)*itemsize) {
            char shape[SHAPE_TEXT_CAP];
            return cpa_error(CPA_ERR_FORMAT,
                             "%s: shape %s is too large: its byte size overflows 64 bits", path,
                             shape_text(shape, sizeof shape, d->ndim, d->shape));
        }
        numel *= d->shape[i];
    }
    *numel_out = numel;
    return CPA_OK;
}

/* ------------------------------------------------------------------------ */
/* Opening a file for reading                                                */
/* ------------------------------------------------------------------------ */

typedef struct npy_header {
    int ndim;
    int itemsize;        /* bytes per element: 4 (float32, int32) or 8 (int64) */
    int64_t shape[CPA_MAX_DIMS];
    int64_t numel;
    int64_t data_offset; /* bytes before the first data byte */
} npy_header;

/* Read the length-prefixed header text after the magic; on success returns
 * it in a cpa_malloc'd buffer and leaves the file at the first data byte. */
static cpa_status read_header_text(int fd, const char *path, int64_t file_size, char **text,
                                   size_t *text_len, int64_t *data_offset)
{
    unsigned char pre[12]; /* magic, major, minor, 2- or 4-byte length */
    int64_t got = cpa_read_full(fd, pre, 8);
    char why[128];
    if (got < 0)
        return cpa_error(CPA_ERR_IO, "%s: cannot read: %s", path,
                         cpa_errno_text(errno, why, sizeof why));
    if (got >= 4 && memcmp(pre, "PK\x03\x04", 4) == 0) /* np.savez writes zip archives */
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: not a .npy file (bad magic): it is a .npz (zip) archive; save "
                         "each array with np.save",
                         path);
    if (got < NPY_MAGIC_LEN || memcmp(pre, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
        return cpa_error(CPA_ERR_FORMAT, "%s: not a .npy file (bad magic)", path);
    if (got < 8)
        return cpa_error(CPA_ERR_FORMAT, "%s: truncated header: the file has only %lld bytes",
                         path, (long long)file_size);
    int major = pre[6], minor = pre[7];
    if (major < 1 || major > 3 || minor != 0)
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: unsupported .npy format version %d.%d (cpattn reads 1.0, 2.0 and "
                         "3.0)",
                         path, major, minor);
    /* 1.0 stores the header length in 2 bytes; 2.0 and 3.0 in 4 (little-endian). */
    size_t len_bytes = major == 1 ? 2 : 4;
    got = cpa_read_full(fd, pre + 8, len_bytes);
    if (got < 0)
        return cpa_error(CPA_ERR_IO, "%s: cannot read: %s", path,
                         cpa_errno_text(errno, why, sizeof why));
    if ((size_t)got < len_bytes)
        return cpa_error(CPA_ERR_FORMAT, "%s: truncated header: the file has only %lld bytes",
                         path, (long long)file_size);
    uint64_t hlen = 0;
    for (size_t i = len_bytes; i-- > 0;)
        hlen = hlen << 8 | pre[8 + i];
    int64_t offset = (int64_t)(8 + len_bytes + hlen);
    if (offset > file_size)
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: truncated header: header length %llu exceeds file (%lld bytes)",
                         path, (unsigned long long)hlen, (long long)file_size);
    if (hlen > NPY_MAX_HEADER)
        return cpa_error(CPA_ERR_FORMAT, "%s: header length %llu is implausibly large (limit %zu)",
                         path, (unsigned long long)hlen, NPY_MAX_HEADER);
    char *buf = cpa_malloc(hlen ? hlen : 1, "npy header");
    if (!buf)
        return cpa_nomem_for(path);
    cpa_status st = read_data(fd, path, buf, hlen);
    if (st != CPA_OK) {
        cpa_free(buf);
        return st;
    }
    *text = buf;
    *text_len = hlen;
    *data_offset = offset;
    return CPA_OK;
}

/* Open `path` and validate everything but the data values: on success *fd is
 * positioned at the first data byte and the file holds exactly the data the
 * header promises. */
static cpa_status npy_open_as(const char *path, npy_want want, int *fd_out, npy_header *h)
{
    int fd;
    struct stat sb;
    CPA_TRY(cpa_open_read(path, &fd, &sb));
    cpa_status st;
    char *text = NULL;
    size_t text_len = 0;
    int64_t offset = 0;
    st = read_header_text(fd, path, (int64_t)sb.st_size, &text, &text_len, &offset);
    if (st != CPA_OK)
        goto close_file;
    npy_dict d;
    int64_t numel = 0;
    st = parse_dict(path, text, text_len, &d);
    if (st == CPA_OK)
        st = check_dict(path, text, text_len, &d, want, &h->itemsize, &numel);
    if (st != CPA_OK)
        goto free_text;

    const int64_t bytes = numel * (int64_t)h->itemsize, have = (int64_t)sb.st_size - offset;
    if (have != bytes) {
        char shape[SHAPE_TEXT_CAP];
        st = cpa_error(CPA_ERR_FORMAT,
                       "%s: %s: header says shape %s = %lld bytes of data but the file has %lld",
                       path, have < bytes ? "truncated" : "trailing bytes after the data",
                       shape_text(shape, sizeof shape, d.ndim, d.shape), (long long)bytes,
                       (long long)have);
        goto free_text;
    }
    h->ndim = d.ndim;
    memcpy(h->shape, d.shape, sizeof h->shape);
    h->numel = numel;
    h->data_offset = offset;
    cpa_free(text);
    *fd_out = fd;
    return CPA_OK;

free_text:
    cpa_free(text);
close_file:
    close(fd);
    return st;
}

/* A float32 file (every reader but the index one). */
static cpa_status npy_open(const char *path, int *fd_out, npy_header *h)
{
    return npy_open_as(path, NPY_WANT_F4, fd_out, h);
}

/* Unused trailing entries are set to 1 so the product of all four is numel. */
static void publish_shape(const npy_header *h, int *ndim, int64_t shape[CPA_MAX_DIMS])
{
    for (int i = 0; i < CPA_MAX_DIMS; ++i)
        shape[i] = i < h->ndim ? h->shape[i] : 1;
    *ndim = h->ndim;
}

/* ------------------------------------------------------------------------ */
/* Public: reading                                                           */
/* ------------------------------------------------------------------------ */

cpa_status cpa_npy_shape(const char *path, int *ndim, int64_t shape[CPA_MAX_DIMS])
{
    if (!path || !ndim || !shape)
        return cpa_error(CPA_ERR_ARG, "cpa_npy_shape: NULL %s",
                         !path ? "path" : !ndim ? "ndim" : "shape");
    int fd;
    npy_header h;
    CPA_TRY(npy_open(path, &fd, &h));
    close(fd);
    publish_shape(&h, ndim, shape);
    return CPA_OK;
}

cpa_status cpa_npy_load(const char *path, float **data, int *ndim, int64_t shape[CPA_MAX_DIMS])
{
    if (!path || !data || !ndim || !shape)
        return cpa_error(CPA_ERR_ARG, "cpa_npy_load: NULL %s",
                         !path ? "path" : !data ? "data" : !ndim ? "ndim" : "shape");
    int fd;
    npy_header h;
    CPA_TRY(npy_open(path, &fd, &h));
    /* The array is wanted contiguous anyway, so read straight into it. */
    size_t bytes = (size_t)h.numel * sizeof(float);
    float *buf = cpa_malloc(bytes, "npy data");
    cpa_status st = buf ? read_data(fd, path, buf, bytes) : cpa_nomem_for(path);
    close(fd);
    if (st != CPA_OK) {
        cpa_free(buf);
        return st;
    }
    *data = buf;
    publish_shape(&h, ndim, shape);
    return CPA_OK;
}

cpa_status cpa_npy_load_index(const char *path, int64_t **data, int64_t *n)
{
    if (!path || !data || !n)
        return cpa_error(CPA_ERR_ARG, "cpa_npy_load_index: NULL %s",
                         !path ? "path" : !data ? "data" : "n");
    int fd;
    npy_header h;
    CPA_TRY(npy_open_as(path, NPY_WANT_INDEX, &fd, &h));
    if (h.ndim != 1) {
        close(fd);
        char shape[SHAPE_TEXT_CAP];
        return cpa_error(CPA_ERR_ARG, "%s: shape %s has %d dims; an index array is 1-D", path,
                         shape_text(shape, sizeof shape, h.ndim, h.shape), h.ndim);
    }
    const size_t bytes = (size_t)h.numel * (size_t)h.itemsize;
    int64_t *out = cpa_malloc(sizeof(int64_t) * (size_t)(h.numel ? h.numel : 1), "npy index");
    void *raw = out ? cpa_malloc(bytes ? bytes : 1, "npy index data") : NULL;
    cpa_status st = raw ? read_data(fd, path, raw, bytes) : cpa_nomem_for(path);
    close(fd);
    if (st == CPA_OK)
        for (int64_t i = 0; i < h.numel; ++i) { /* little-endian on every target of cpattn */
            if (h.itemsize == 8) {
                memcpy(&out[i], (const char *)raw + 8 * i, 8);
            } else {
                int32_t v;
                memcpy(&v, (const char *)raw + 4 * i, 4);
                out[i] = v;
            }
        }
    cpa_free(raw);
    if (st != CPA_OK) {
        cpa_free(out);
        return st;
    }
    *data = out;
    *n = h.numel;
    return CPA_OK;
}

/* On failure after the shape check (a read error half-way), `dst` may hold
 * part of the data: streaming a large file cannot promise otherwise. */
cpa_status cpa_npy_load_into(const char *path, cpa_tensor dst)
{
    if (!path)
        return cpa_error(CPA_ERR_ARG, "cpa_npy_load_into: NULL path");
    int64_t numel;
    CPA_TRY(check_view(path, &dst, "destination", &numel));
    int fd;
    npy_header h;
    CPA_TRY(npy_open(path, &fd, &h));

    cpa_status st = CPA_OK;
    bool same = h.ndim == dst.ndim;
    for (int i = 0; same && i < h.ndim; ++i)
        same = h.shape[i] == dst.shape[i];
    if (!same) {
        char fs[SHAPE_TEXT_CAP], ds[SHAPE_TEXT_CAP];
        st = cpa_error(CPA_ERR_ARG, "%s: file has shape %s but the destination tensor has shape %s",
                       path, shape_text(fs, sizeof fs, h.ndim, h.shape),
                       shape_text(ds, sizeof ds, dst.ndim, dst.shape));
        goto close_file;
    }
    size_t chunk = chunk_elems(numel);
    float *buf = cpa_malloc(chunk * sizeof(float), "npy read buffer");
    if (!buf) {
        st = cpa_nomem_for(path);
        goto close_file;
    }
    view_cursor cur = {&dst, {0}};
    for (int64_t done = 0; done < numel && st == CPA_OK;) {
        int64_t n = numel - done < (int64_t)chunk ? numel - done : (int64_t)chunk;
        st = read_data(fd, path, buf, (size_t)n * sizeof(float));
        if (st == CPA_OK)
            view_copy(&cur, buf, n, true);
        done += n;
    }
    cpa_free(buf);
close_file:
    close(fd);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Public: writing                                                           */
/* ------------------------------------------------------------------------ */

/* The bytes numpy.save writes before the data of a C-order float32 array:
 * magic, version 1.0, the 2-byte header length, and the dict padded with
 * spaces and ended by '\n' so the data start at a multiple of 64 bytes.  With
 * at most 4 dims the dict is under 200 bytes, far below the 65535 limit that
 * would call for version 2.0, so 1.0 is always right.  Returns the length. */
static size_t build_header(int ndim, const int64_t *dims, char *out, size_t cap)
{
    char shape[SHAPE_TEXT_CAP];
    char dict[SHAPE_TEXT_CAP + 64];
    int dict_len = snprintf(dict, sizeof dict,
                            "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }",
                            shape_text(shape, sizeof shape, ndim, dims));
    size_t pre = NPY_MAGIC_LEN + 4;
    size_t total = (pre + (size_t)dict_len + 1 + NPY_ALIGN - 1) / NPY_ALIGN * NPY_ALIGN;
    size_t hlen = total - pre;
    if (total > cap)
        return 0; /* cannot happen: cap is sized for 4 dims of 20 digits */
    memcpy(out, NPY_MAGIC, NPY_MAGIC_LEN);
    out[6] = 1;
    out[7] = 0;
    out[8] = (char)(hlen & 0xff);
    out[9] = (char)(hlen >> 8);
    memcpy(out + pre, dict, (size_t)dict_len);
    memset(out + pre + dict_len, ' ', hlen - (size_t)dict_len - 1);
    out[total - 1] = '\n';
    return total;
}

/* Stream header and data into the open temporary.  Any error here is
 * reported; the caller removes the temporary (and cpa_temp_commit reports
 * ENOSPC and the like that only show at fsync or close). */
static cpa_status write_temp(int fd, const char *path, const char *tmp, const cpa_tensor *src,
                             int64_t numel, float *buf, size_t chunk)
{
    char header[CPA_NPY_HEADER_CAP];
    size_t header_len = build_header(src->ndim, src->shape, header, sizeof header);
    if (header_len == 0)
        return cpa_error(CPA_ERR_INTERNAL, "%s: .npy header does not fit its buffer", path);
    if (!cpa_write_full(fd, header, header_len))
        goto write_failed;
    view_cursor cur = {src, {0}};
    for (int64_t done = 0; done < numel;) {
        int64_t n = numel - done < (int64_t)chunk ? numel - done : (int64_t)chunk;
        view_copy(&cur, buf, n, false);
        if (!cpa_write_full(fd, buf, (size_t)n * sizeof(float)))
            goto write_failed;
        done += n;
    }
    return CPA_OK;

write_failed:
    return cpa_temp_error(path, "write", "temporary file", tmp, errno);
}

cpa_status cpa_npy_save(const char *path, cpa_tensor src)
{
    if (!path)
        return cpa_error(CPA_ERR_ARG, "cpa_npy_save: NULL path");
    int64_t numel;
    CPA_TRY(check_view(path, &src, "source", &numel));
    /* Allocate before creating anything, so running out of memory leaves no
     * trace on disk. */
    size_t chunk = chunk_elems(numel);
    float *buf = cpa_malloc(chunk * sizeof(float), "npy write buffer");
    if (!buf)
        return cpa_nomem_for(path);

    char tmp[NPY_PATH_CAP], why[128];
    cpa_status st;
    int fd = cpa_temp_create(path, tmp, sizeof tmp);
    if (fd < 0) {
        st = cpa_error(CPA_ERR_IO, "%s: cannot create a temporary file next to it: %s", path,
                       cpa_errno_text(errno, why, sizeof why));
    } else {
        st = write_temp(fd, path, tmp, &src, numel, buf, chunk);
        if (st == CPA_OK)
            st = cpa_temp_commit(fd, tmp, path, "temporary file");
        else
            cpa_temp_discard(fd, tmp);
        if (st == CPA_OK)
            cpa_temp_sweep(path); /* what earlier crashed saves left behind */
    }
    cpa_free(buf);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Internal: shared with the sharded reader and writer (npy_internal.h)     */
/* ------------------------------------------------------------------------ */

cpa_status cpa_npy_read_header(const char *path, cpa_npy_info *info)
{
    int fd;
    npy_header h;
    CPA_TRY(npy_open(path, &fd, &h));
    close(fd);
    publish_shape(&h, &info->ndim, info->shape);
    info->numel = h.numel;
    info->data_offset = h.data_offset;
    return CPA_OK;
}

size_t cpa_npy_header_build(int ndim, const int64_t *shape, char *out, size_t cap)
{
    return build_header(ndim, shape, out, cap);
}

cpa_status cpa_npy_check_view(const char *path, const cpa_tensor *t, const char *role,
                              int64_t *numel)
{
    return check_view(path, t, role, numel);
}

void cpa_npy_view_copy(const cpa_tensor *t, float *buf, bool into_view)
{
    int64_t numel = 1;
    for (int d = 0; d < t->ndim; ++d)
        numel *= t->shape[d];
    view_cursor cur = {t, {0}};
    view_copy(&cur, buf, numel, into_view);
}

const char *cpa_npy_shape_text(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    return shape_text(buf, cap, ndim, shape);
}
