/*
 * ckpt_file.c — the checkpoint container (see ckpt_file.h): writing a file
 * of named float32 arrays atomically, and reading one back with every
 * length, the checksum and the arrays' names and counts checked.
 *
 * The file, all integers little-endian:
 *
 *     "CPATTNCK"                      8 bytes, the magic
 *     u32 version                     CKPT_VERSION (2; 1 is still read)
 *     u64 word[0]                     the caller's (the trainer: the iteration, an i64)
 *     u64 word[1]                     the caller's (the trainer: the RNG state)
 *     u32 text_len, text bytes        no terminating NUL (the trainer: "key=value\n" lines)
 *     u32 narrays
 *     narrays times:
 *         u32 name_len, name bytes
 *         i64 count
 *         count float32 values
 *     checksum                        version 2: SHA-256 (32 bytes) of every byte above;
 *                                     version 1: FNV-1a (u64)
 *
 * The checksum detects damage (a flipped bit, truncation, a partial copy)
 * and casual edits: changing a header word or a value with a hex editor
 * needs a SHA-256 recomputed by hand.  It is not a signature — whoever
 * knows the format can recompute it — so a caller also checks what the
 * values mean (src/model/checkpoint.c: the iteration is >= 0).  See
 * docs/reliability.md.
 *
 * Writing is atomic (atomic_file.h): the bytes go to
 * DIR/.BASE.tmp.<pid>.<n> (created with O_EXCL; <n> counts temporaries in
 * this process, so neither a concurrent write nor a stale temporary left by
 * a crashed process that had the same pid can collide), are fsync'd and
 * renamed over the file, and the folder is fsync'd so the rename itself
 * survives a crash.  On any failure the temporary is removed and the
 * previous file is untouched.
 *
 * Reading goes over the file twice through a bounded buffer, so a file of
 * hundreds of MB never needs a second copy in memory.  The first pass
 * (cpa_ckpt_reader_scan) checks the structure (magic, version, every length
 * against the file size) and the checksum, and records how the arrays
 * differ from the caller's; the caller checks what the header means, then
 * asks for that difference (cpa_ckpt_reader_match) — a changed model shape
 * shows in both, and the configuration key that differs is the better
 * message.  Only then does the second pass (cpa_ckpt_reader_copy) copy the
 * data.  If the file changes in place between the passes (a write renames
 * a new file in and never modifies the old one, so only a foreign writer
 * can do this) the arrays may be partly written and an error is returned.
 *
 * Not handled: big-endian hosts (refused at compile time) and files of
 * other format versions (refused with a message naming both versions).
 */
#include "ckpt_file.h"
#include "atomic_file.h"
#include "internal.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ckpt_file.c writes float32 data without byte swapping and needs a little-endian host"
#endif

#define CKPT_MAGIC "CPATTNCK"
#define CKPT_MAGIC_LEN 8
#define CKPT_VERSION 2u
#define CKPT_SUM_LEN 32 /* SHA-256 */
#define CKPT_SUM_LEN_V1 8 /* FNV-1a */
#define CKPT_MAX_NAME CPA_CKPT_FILE_MAX_NAME
#define CKPT_TEXT_CAP CPA_CKPT_FILE_TEXT_CAP
/* The streaming buffer: big enough to amortise system calls, small enough to
 * be irrelevant next to the arrays. */
#define CKPT_CHUNK ((size_t)4 << 20)
#define CKPT_PATH_CAP 4200

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; ++i)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; ++i)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

cpa_status cpa_ckpt_file_check_arrays(const char *who, const cpa_ckpt_array *arrays, int narrays,
                                      int for_write)
{
    if (narrays < 0 || (narrays > 0 && !arrays))
        return cpa_error(CPA_ERR_ARG, "%s: %d arrays at %p", who, narrays, (const void *)arrays);
    for (int i = 0; i < narrays; ++i) {
        const cpa_ckpt_array *a = &arrays[i];
        if (!a->name || a->name[0] == '\0' || strlen(a->name) > CKPT_MAX_NAME)
            return cpa_error(CPA_ERR_ARG, "%s: array %d needs a name of 1 to %d characters", who,
                             i, CKPT_MAX_NAME);
        /* Writing multiplies the count by 4; reading only compares it. */
        if (a->count < 0 || (for_write && a->count > INT64_MAX / (int64_t)sizeof(float)) ||
            (a->count > 0 && !a->data))
            return cpa_error(CPA_ERR_ARG, "%s: array %s has count %lld and data %p", who, a->name,
                             (long long)a->count, (const void *)a->data);
    }
    return CPA_OK;
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                   */
/* ------------------------------------------------------------------------ */

/* A buffered writer that hashes everything it is given.  `err` keeps the
 * errno of the first failed write; later puts do nothing. */
typedef struct ckpt_writer {
    int fd;
    unsigned char *buf;
    size_t used;
    cpa_sha256 hash;
    int err;
} ckpt_writer;

static void write_all(ckpt_writer *w, const void *data, size_t n)
{
    if (!w->err && !cpa_write_full(w->fd, data, n))
        w->err = errno;
}

static void writer_flush(ckpt_writer *w)
{
    write_all(w, w->buf, w->used);
    w->used = 0;
}

static void writer_put(ckpt_writer *w, const void *data, size_t n)
{
    if (w->err)
        return;
    cpa_sha256_update(&w->hash, data, n);
    if (w->used + n <= CKPT_CHUNK) {
        memcpy(w->buf + w->used, data, n);
        w->used += n;
        return;
    }
    /* Large data (an array) goes straight from the caller's memory. */
    writer_flush(w);
    if (n < CKPT_CHUNK) {
        memcpy(w->buf, data, n);
        w->used = n;
    } else {
        write_all(w, data, n);
    }
}

static void writer_put_u32(ckpt_writer *w, uint32_t v)
{
    unsigned char b[4];
    put_u32(b, v);
    writer_put(w, b, sizeof b);
}

static void writer_put_u64(ckpt_writer *w, uint64_t v)
{
    unsigned char b[8];
    put_u64(b, v);
    writer_put(w, b, sizeof b);
}

/* The temporary named in messages. */
#define CKPT_TEMP_WHAT "checkpoint temporary"

/* Everything the file holds, through the writer (cpa_temp_commit syncs). */
static cpa_status write_contents(ckpt_writer *w, const char *path, const char *tmp,
                                 const cpa_ckpt_file_header *h, const cpa_ckpt_array *arrays,
                                 int narrays)
{
    writer_put(w, CKPT_MAGIC, CKPT_MAGIC_LEN);
    writer_put_u32(w, CKPT_VERSION);
    writer_put_u64(w, h->word[0]);
    writer_put_u64(w, h->word[1]);
    size_t text_len = strlen(h->text);
    writer_put_u32(w, (uint32_t)text_len);
    writer_put(w, h->text, text_len);
    writer_put_u32(w, (uint32_t)narrays);
    for (int i = 0; i < narrays; ++i) {
        size_t name_len = strlen(arrays[i].name);
        writer_put_u32(w, (uint32_t)name_len);
        writer_put(w, arrays[i].name, name_len);
        writer_put_u64(w, (uint64_t)arrays[i].count);
        if (arrays[i].count > 0)
            writer_put(w, arrays[i].data, (size_t)arrays[i].count * sizeof(float));
    }
    unsigned char sum[CKPT_SUM_LEN];
    cpa_sha256_final(&w->hash, sum);
    writer_put(w, sum, sizeof sum); /* (hashing it too is harmless: the state is final) */
    writer_flush(w);
    if (w->err)
        return cpa_temp_error(path, "write", CKPT_TEMP_WHAT, tmp, w->err);
    return CPA_OK;
}

/* The folder part of `path` for messages: everything before the last '/'
 * ("." without one), which for DIR/NAME is DIR exactly as the caller gave
 * it. */
static void folder_of(const char *path, char *buf, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(buf, cap, ".");
    else if (slash == path)
        snprintf(buf, cap, "/");
    else
        snprintf(buf, cap, "%.*s", (int)(slash - path), path);
}

cpa_status cpa_ckpt_file_write(const char *path, const cpa_ckpt_file_header *header,
                               const cpa_ckpt_array *arrays, int narrays)
{
    if (!path || !header)
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_file_write: NULL %s", !path ? "path" : "header");
    if (memchr(header->text, '\0', sizeof header->text) == NULL)
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_file_write: the header text is not "
                                      "NUL-terminated");
    CPA_TRY(cpa_ckpt_file_check_arrays("cpa_ckpt_file_write", arrays, narrays, 1));
    char tmp[CKPT_PATH_CAP], dir[CKPT_PATH_CAP], why[128];
    /* Allocate before creating anything, so running out of memory leaves no
     * trace on disk. */
    ckpt_writer w = {.fd = -1};
    cpa_sha256_init(&w.hash);
    w.buf = cpa_malloc(CKPT_CHUNK, "checkpoint write buffer");
    if (!w.buf)
        return cpa_nomem_for(path);

    cpa_status st;
    w.fd = cpa_temp_create(path, tmp, sizeof tmp);
    if (w.fd < 0) {
        int err = errno;
        folder_of(path, dir, sizeof dir);
        st = cpa_error(CPA_ERR_IO, "cannot create a temporary file in %s to save %s: %s", dir,
                       path, cpa_errno_text(err, why, sizeof why));
    } else {
        st = write_contents(&w, path, tmp, header, arrays, narrays);
        if (st == CPA_OK)
            st = cpa_temp_commit(w.fd, tmp, path, CKPT_TEMP_WHAT);
        else
            cpa_temp_discard(w.fd, tmp);
        if (st == CPA_OK)
            cpa_temp_sweep(path); /* what earlier crashed writes left behind */
    }
    cpa_free(w.buf);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Reading                                                                   */
/* ------------------------------------------------------------------------ */

/* A buffered reader over the open file and what the first pass learnt.
 * `pos` is the file offset of the next byte handed out; when `hashing`,
 * every byte handed out is hashed. */
struct cpa_ckpt_reader {
    int fd;
    const char *path; /* for messages */
    int64_t size;     /* from fstat */
    unsigned char *buf;
    size_t start, end; /* unread bytes are buf[start, end) */
    int64_t pos;
    bool hashing;
    uint32_t version; /* decides the checksum */
    int sum_len;      /* bytes of the checksum at the end of the file */
    uint64_t fnv;     /* version 1 */
    cpa_sha256 sha;   /* version 2 */

    enum { FRESH, HEADER_READ, SCANNED } state; /* what has succeeded so far */
    cpa_ckpt_file_header header;
    int64_t arrays_at; /* file offset of the first array's name_len */
    const cpa_ckpt_array *expected; /* the caller's arrays, from the scan */
    int nexpected;
    /* The first difference from the caller's arrays, reported only after
     * the checksum proved the file intact (a damaged file is a different
     * problem from a wrong one). */
    enum { MATCH, WRONG_NAME, WRONG_COUNT, WRONG_NARRAYS } mismatch;
    uint32_t at;                  /* the array that differs */
    char name[CKPT_MAX_NAME + 1]; /* its name in the file, escaped for messages */
    int64_t count;                /* its count in the file */
    uint32_t narrays;             /* arrays in the file */
    char names[256];              /* their names, "params, adam_m, ..." */
};

cpa_status cpa_ckpt_reader_open(const char *path, cpa_ckpt_reader **out)
{
    if (!path || !out)
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_reader_open: NULL %s", !path ? "path" : "out");
    int fd = -1;
    struct stat sb;
    CPA_TRY(cpa_open_read(path, &fd, &sb));
    cpa_ckpt_reader *r = cpa_malloc(sizeof *r, "checkpoint reader");
    unsigned char *buf = r ? cpa_malloc(CKPT_CHUNK, "checkpoint read buffer") : NULL;
    if (!r || !buf) {
        cpa_free(r);
        close(fd);
        return cpa_nomem_for(path);
    }
    memset(r, 0, sizeof *r);
    r->fd = fd;
    r->path = path;
    r->size = (int64_t)sb.st_size;
    r->buf = buf;
    r->hashing = true;
    r->version = CKPT_VERSION;
    r->sum_len = CKPT_SUM_LEN;
    cpa_sha256_init(&r->sha);
    r->state = FRESH;
    *out = r;
    return CPA_OK;
}

void cpa_ckpt_reader_close(cpa_ckpt_reader *r)
{
    if (!r)
        return;
    close(r->fd);
    cpa_free(r->buf);
    cpa_free(r);
}

static cpa_status truncated(const cpa_ckpt_reader *r, const char *what)
{
    return cpa_error(CPA_ERR_FORMAT,
                     "%s: truncated: the file has %lld bytes and ends while reading %s", r->path,
                     (long long)r->size, what);
}

/* Refill the buffer; fails naming `what` at the end of the file. */
static cpa_status reader_fill(cpa_ckpt_reader *r, const char *what)
{
    char why[128];
    if (r->start > 0 && r->start < r->end)
        memmove(r->buf, r->buf + r->start, r->end - r->start);
    r->end -= r->start;
    r->start = 0;
    for (;;) {
        ssize_t got = read(r->fd, r->buf + r->end, CKPT_CHUNK - r->end);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return cpa_error(CPA_ERR_IO, "%s: cannot read: %s", r->path,
                             cpa_errno_text(errno, why, sizeof why));
        if (got == 0)
            return truncated(r, what);
        r->end += (size_t)got;
        return CPA_OK;
    }
}

/* Hand out the next `n` bytes: copied to `dst` unless it is NULL (skip). */
static cpa_status reader_get(cpa_ckpt_reader *r, void *dst, size_t n, const char *what)
{
    unsigned char *out = dst;
    while (n > 0) {
        if (r->start == r->end)
            CPA_TRY(reader_fill(r, what));
        size_t take = r->end - r->start < n ? r->end - r->start : n;
        if (r->hashing) {
            if (r->version == 1)
                r->fnv = cpa_fnv1a64(r->fnv, r->buf + r->start, take);
            else
                cpa_sha256_update(&r->sha, r->buf + r->start, take);
        }
        if (out) {
            memcpy(out, r->buf + r->start, take);
            out += take;
        }
        r->start += take;
        r->pos += (int64_t)take;
        n -= take;
    }
    return CPA_OK;
}

static cpa_status reader_u32(cpa_ckpt_reader *r, uint32_t *v, const char *what)
{
    unsigned char b[4];
    CPA_TRY(reader_get(r, b, sizeof b, what));
    *v = get_u32(b);
    return CPA_OK;
}

static cpa_status reader_u64(cpa_ckpt_reader *r, uint64_t *v, const char *what)
{
    unsigned char b[8];
    CPA_TRY(reader_get(r, b, sizeof b, what));
    *v = get_u64(b);
    return CPA_OK;
}

/* Bytes left after the current position, not counting the checksum. */
static int64_t body_left(const cpa_ckpt_reader *r) { return r->size - r->sum_len - r->pos; }

/* Append `name` (bytes from the file, escaped) to the list "params,
 * adam_m, ..." while there is room. */
static void list_name(char *list, size_t cap, const char *name, size_t len)
{
    char shown[4 * 64 + 4];
    cpa_escape(shown, sizeof shown, name, len > 64 ? 64 : len);
    size_t used = strlen(list), slen = strlen(shown);
    if (used + slen + 8 >= cap) {
        if (used + 5 < cap && (used < 4 || strcmp(list + used - 3, "...") != 0))
            snprintf(list + used, cap - used, "%s...", used ? ", " : "");
        return;
    }
    snprintf(list + used, cap - used, "%s%s", used ? ", " : "", shown);
}

/* A reader is used once: read_header or scan on a fresh one. */
static cpa_status check_fresh(const cpa_ckpt_reader *r, const char *who)
{
    if (!r)
        return cpa_error(CPA_ERR_ARG, "%s: NULL reader", who);
    if (r->state != FRESH || r->pos != 0)
        return cpa_error(CPA_ERR_ARG, "%s: the reader of %s was used before; open it again", who,
                         r->path);
    return CPA_OK;
}

/* The header: magic, format version (which decides the checksum), the two
 * words and the text, each length checked against the file size.  Shared by
 * reading the header alone and by the scan.  The messages name the fields
 * as the trainer's checkpoints use them (iteration, RNG state,
 * configuration), the only files of this format there are. */
static cpa_status read_header(cpa_ckpt_reader *r)
{
    cpa_ckpt_file_header *h = &r->header;
    /* The magic first, so a foreign file is named as one even if short. */
    unsigned char magic[CKPT_MAGIC_LEN];
    size_t have = r->size < CKPT_MAGIC_LEN ? (size_t)r->size : CKPT_MAGIC_LEN;
    CPA_TRY(reader_get(r, magic, have, "the magic"));
    if (memcmp(magic, CKPT_MAGIC, have) != 0)
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: not a cpattn checkpoint (it does not start with \"%s\")", r->path,
                         CKPT_MAGIC);
    if (have < CKPT_MAGIC_LEN)
        return truncated(r, "the magic");

    /* The magic and version are hashed by both checksums; the FNV state
     * starts over here once the version says which one applies. */
    uint32_t version;
    unsigned char vb[4];
    CPA_TRY(reader_get(r, vb, sizeof vb, "the format version"));
    version = get_u32(vb);
    if (version != 1 && version != CKPT_VERSION)
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: checkpoint format version %u; this build of cpattn reads versions "
                         "1 and %u", r->path, version, CKPT_VERSION);
    r->version = version;
    r->sum_len = version == 1 ? CKPT_SUM_LEN_V1 : CKPT_SUM_LEN;
    if (version == 1) {
        r->fnv = cpa_fnv1a64(cpa_fnv1a64(CPA_FNV_OFFSET, CKPT_MAGIC, CKPT_MAGIC_LEN), vb, sizeof vb);
    }
    CPA_TRY(reader_u64(r, &h->word[0], "the iteration"));
    CPA_TRY(reader_u64(r, &h->word[1], "the RNG state"));

    uint32_t text_len;
    CPA_TRY(reader_u32(r, &text_len, "the configuration length"));
    if ((int64_t)text_len > body_left(r))
        return truncated(r, "the configuration");
    if (text_len >= (uint32_t)CKPT_TEXT_CAP)
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: corrupted: configuration of %u bytes (at most %d are written)",
                         r->path, text_len, CKPT_TEXT_CAP - 1);
    CPA_TRY(reader_get(r, h->text, text_len, "the configuration"));
    h->text[text_len] = '\0';
    if (strlen(h->text) != text_len)
        return cpa_error(CPA_ERR_FORMAT, "%s: corrupted: NUL byte inside the configuration",
                         r->path);
    return CPA_OK;
}

cpa_status cpa_ckpt_reader_read_header(cpa_ckpt_reader *r)
{
    CPA_TRY(check_fresh(r, "cpa_ckpt_reader_read_header"));
    CPA_TRY(read_header(r));
    r->state = HEADER_READ;
    return CPA_OK;
}

/* Pass 1: structure and checksum of the whole file. */
static cpa_status scan_file(cpa_ckpt_reader *r)
{
    CPA_TRY(read_header(r));

    uint32_t file_narrays;
    CPA_TRY(reader_u32(r, &file_narrays, "the array count"));
    /* Each array takes at least 12 bytes; refuse an absurd count up front. */
    if ((int64_t)file_narrays > body_left(r) / 12)
        return truncated(r, "the arrays");
    r->arrays_at = r->pos;
    r->mismatch = MATCH;
    r->narrays = file_narrays;
    r->names[0] = '\0';
    const cpa_ckpt_array *arrays = r->expected;
    const int narrays = r->nexpected;
    for (uint32_t i = 0; i < file_narrays; ++i) {
        uint32_t name_len;
        char name[CKPT_MAX_NAME + 1];
        CPA_TRY(reader_u32(r, &name_len, "an array name"));
        if ((int64_t)name_len > body_left(r))
            return truncated(r, "an array name");
        if (name_len == 0 || name_len > CKPT_MAX_NAME)
            return cpa_error(CPA_ERR_FORMAT,
                             "%s: corrupted: array %u has a name of %u bytes (1 to %d are "
                             "written)",
                             r->path, i, name_len, CKPT_MAX_NAME);
        CPA_TRY(reader_get(r, name, name_len, "an array name"));
        name[name_len] = '\0';
        uint64_t count_bits;
        CPA_TRY(reader_u64(r, &count_bits, "an array size"));
        int64_t count = (int64_t)count_bits;
        if (count < 0) {
            char shown[4 * 64 + 4];
            return cpa_error(CPA_ERR_FORMAT, "%s: corrupted: array %s has %lld floats", r->path,
                             cpa_escape(shown, sizeof shown, name, name_len > 64 ? 64 : name_len),
                             (long long)count);
        }
        if (count > body_left(r) / (int64_t)sizeof(float))
            return truncated(r, "the array data");
        CPA_TRY(reader_get(r, NULL, (size_t)count * sizeof(float), "the array data"));

        list_name(r->names, sizeof r->names, name, name_len);
        if (r->mismatch != MATCH || (int)i >= narrays)
            continue;
        if (strcmp(arrays[i].name, name) != 0)
            r->mismatch = WRONG_NAME;
        else if (arrays[i].count != count)
            r->mismatch = WRONG_COUNT;
        if (r->mismatch != MATCH) {
            r->at = i;
            cpa_escape(r->name, sizeof r->name, name, name_len);
            r->count = count;
        }
    }
    if (r->mismatch == MATCH && (int64_t)file_narrays != narrays)
        r->mismatch = WRONG_NARRAYS;

    if (body_left(r) < 0)
        return truncated(r, "the checksum");
    if (body_left(r) > 0)
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: corrupted: %lld unexpected bytes after the arrays (the file has "
                         "%lld bytes)",
                         r->path, (long long)body_left(r), (long long)r->size);
    r->hashing = false;
    if (r->version == 1) {
        uint64_t stored;
        CPA_TRY(reader_u64(r, &stored, "the checksum"));
        if (stored != r->fnv)
            return cpa_error(CPA_ERR_FORMAT,
                             "%s: corrupted (checksum mismatch: stored %016llx, computed %016llx)",
                             r->path, (unsigned long long)stored, (unsigned long long)r->fnv);
        return CPA_OK;
    }
    unsigned char stored[CKPT_SUM_LEN], computed[CKPT_SUM_LEN];
    CPA_TRY(reader_get(r, stored, sizeof stored, "the checksum"));
    cpa_sha256_final(&r->sha, computed);
    if (memcmp(stored, computed, sizeof stored) != 0)
        return cpa_error(CPA_ERR_FORMAT, "%s: corrupted (SHA-256 checksum mismatch)", r->path);
    return CPA_OK;
}

cpa_status cpa_ckpt_reader_scan(cpa_ckpt_reader *r, const cpa_ckpt_array *expected,
                                int nexpected)
{
    CPA_TRY(check_fresh(r, "cpa_ckpt_reader_scan"));
    CPA_TRY(cpa_ckpt_file_check_arrays("cpa_ckpt_reader_scan", expected, nexpected, 0));
    r->expected = expected;
    r->nexpected = nexpected;
    CPA_TRY(scan_file(r));
    r->state = SCANNED;
    return CPA_OK;
}

const cpa_ckpt_file_header *cpa_ckpt_reader_header(const cpa_ckpt_reader *r)
{
    return &r->header;
}

/* The arrays of a sound file are not the caller's. */
cpa_status cpa_ckpt_reader_match(const cpa_ckpt_reader *r)
{
    if (!r || r->state != SCANNED)
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_reader_match: %s", !r ? "NULL reader" :
                         "the file was not scanned (cpa_ckpt_reader_scan)");
    if (r->mismatch == MATCH)
        return CPA_OK;
    const char *path = r->path;
    const cpa_ckpt_array *arrays = r->expected;
    const int narrays = r->nexpected;
    const cpa_ckpt_array *a = r->mismatch == WRONG_NARRAYS ? NULL : &arrays[r->at];
    switch (r->mismatch) {
    case WRONG_NAME:
        return cpa_error(CPA_ERR_ARG, "%s: array %u of the checkpoint is %s, this run expects %s",
                         path, r->at, r->name, a->name);
    case WRONG_COUNT:
        return cpa_error(CPA_ERR_ARG,
                         "%s: checkpoint has %s with %lld floats, this model needs %lld (a "
                         "different model shape?)",
                         path, r->name, (long long)r->count, (long long)a->count);
    default: {
        char want[256] = "";
        for (int i = 0; i < narrays; ++i)
            list_name(want, sizeof want, arrays[i].name, strlen(arrays[i].name));
        return cpa_error(CPA_ERR_ARG, "%s: checkpoint has %u arrays (%s), this run expects %d (%s)",
                         path, r->narrays, r->names, narrays, want);
    }
    }
}

/* Pass 2: the array data into the caller's arrays; the structure was
 * checked by pass 1 and matches them. */
cpa_status cpa_ckpt_reader_copy(cpa_ckpt_reader *r)
{
    if (!r || r->state != SCANNED || r->mismatch != MATCH)
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_reader_copy: %s", !r ? "NULL reader" :
                         "the file was not scanned, or its arrays differ from the expected ones");
    char why[128];
    if (lseek(r->fd, (off_t)r->arrays_at, SEEK_SET) == (off_t)-1)
        return cpa_error(CPA_ERR_IO, "%s: cannot seek: %s", r->path,
                         cpa_errno_text(errno, why, sizeof why));
    r->pos = r->arrays_at;
    r->start = r->end = 0;
    const cpa_ckpt_array *arrays = r->expected;
    for (int i = 0; i < r->nexpected; ++i) {
        /* name_len, name, count: the same as in pass 1. */
        size_t skip = 4 + strlen(arrays[i].name) + 8;
        CPA_TRY(reader_get(r, NULL, skip, "an array header"));
        if (arrays[i].count > 0)
            CPA_TRY(reader_get(r, arrays[i].data, (size_t)arrays[i].count * sizeof(float),
                               "the array data"));
    }
    return CPA_OK;
}
