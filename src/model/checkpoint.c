/*
 * checkpoint.c — save and load training checkpoints (see checkpoint.h).
 *
 * The file DIR/checkpoint.bin, all integers little-endian:
 *
 *     "CPATTNCK"                      8 bytes, the magic
 *     u32 version                     CKPT_VERSION (2; 1 is still read)
 *     i64 iteration
 *     u64 rng_state
 *     u32 config_len, config bytes    "key=value\n" lines, no terminating NUL
 *     u32 narrays
 *     narrays times:
 *         u32 name_len, name bytes
 *         i64 count
 *         count float32 values
 *     checksum                        version 2: SHA-256 (32 bytes) of every byte above;
 *                                     version 1: FNV-1a (u64)
 *
 * The checksum detects damage (a flipped bit, truncation, a partial copy)
 * and casual edits: changing the iteration or a value with a hex editor
 * needs a SHA-256 recomputed by hand.  It is not a signature — whoever
 * knows the format can recompute it — so the loader also checks what the
 * values mean (the iteration is >= 0; the trainer refuses one beyond
 * --train-iters).  See docs/reliability.md.
 *
 * Saving is atomic (atomic_file.h): the bytes go to
 * DIR/.checkpoint.bin.tmp.<pid>.<n> (created with O_EXCL; <n> counts
 * temporaries in this process, so neither a concurrent save nor a stale
 * temporary left by a crashed process that had the same pid can collide),
 * are fsync'd and renamed over checkpoint.bin, and the folder is fsync'd so
 * the rename itself survives a crash.  On any failure the temporary is
 * removed and the previous checkpoint is untouched.
 *
 * Loading reads the file twice through a bounded buffer, so a checkpoint of
 * hundreds of MB never needs a second copy in memory.  The first pass checks
 * the structure (magic, version, every length against the file size) and
 * the checksum, then the configuration and the arrays' names and counts
 * against the caller's; only then does the second pass copy the data.  The
 * configuration is compared before the arrays because a changed model shape
 * shows in both, and the key that differs ("hidden_size") is the better
 * message.  If the file changes in place between the passes (a save renames
 * a new file in and never modifies the old one, so only a foreign writer can
 * do this) the arrays may be partly written and an error is returned.
 *
 * Not handled: big-endian hosts (refused at compile time) and files of other
 * format versions (refused with a message naming both versions).
 */
#include "checkpoint.h"
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
#error "checkpoint.c writes float32 data without byte swapping and needs a little-endian host"
#endif

#define CKPT_MAGIC "CPATTNCK"
#define CKPT_MAGIC_LEN 8
#define CKPT_VERSION 2u
#define CKPT_SUM_LEN 32 /* SHA-256 */
#define CKPT_SUM_LEN_V1 8 /* FNV-1a */
#define CKPT_FILE "checkpoint.bin"
/* Array names are short labels ("params", "adam_m"); a longer length field
 * means the file is damaged, so refuse it before reading that many bytes. */
#define CKPT_MAX_NAME 1024
/* The streaming buffer: big enough to amortise system calls, small enough to
 * be irrelevant next to the arrays. */
#define CKPT_CHUNK ((size_t)4 << 20)
#define CKPT_PATH_CAP 4200
#define CKPT_CONFIG_CAP ((int)sizeof(((cpa_ckpt_meta *)0)->config))


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

static cpa_status file_path(const char *dir, char *buf, size_t cap)
{
    int len = snprintf(buf, cap, "%s/%s", dir, CKPT_FILE);
    if (len < 0 || (size_t)len >= cap)
        return cpa_error(CPA_ERR_ARG, "checkpoint folder name is too long (%zu characters)",
                         strlen(dir));
    return CPA_OK;
}

/* ------------------------------------------------------------------------ */
/* Saving                                                                    */
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

static cpa_status check_save_args(const char *dir, const cpa_ckpt_meta *meta,
                                  const cpa_ckpt_array *arrays, int narrays)
{
    if (!dir || !meta)
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_save: NULL %s", !dir ? "dir" : "meta");
    if (narrays < 0 || (narrays > 0 && !arrays))
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_save: %d arrays at %p", narrays,
                         (const void *)arrays);
    if (memchr(meta->config, '\0', sizeof meta->config) == NULL)
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_save: meta->config is not NUL-terminated");
    for (int i = 0; i < narrays; ++i) {
        const cpa_ckpt_array *a = &arrays[i];
        if (!a->name || a->name[0] == '\0' || strlen(a->name) > CKPT_MAX_NAME)
            return cpa_error(CPA_ERR_ARG,
                             "cpa_ckpt_save: array %d needs a name of 1 to %d characters", i,
                             CKPT_MAX_NAME);
        if (a->count < 0 || a->count > INT64_MAX / (int64_t)sizeof(float) ||
            (a->count > 0 && !a->data))
            return cpa_error(CPA_ERR_ARG, "cpa_ckpt_save: array %s has count %lld and data %p",
                             a->name, (long long)a->count, (const void *)a->data);
    }
    return CPA_OK;
}

/* mkdir DIR unless it exists as a folder. */
static cpa_status make_dir(const char *dir)
{
    char why[128];
    if (mkdir(dir, 0777) == 0)
        return CPA_OK;
    int err = errno;
    struct stat sb;
    if (err == EEXIST && stat(dir, &sb) == 0) {
        if (S_ISDIR(sb.st_mode))
            return CPA_OK;
        return cpa_error(CPA_ERR_IO, "cannot save a checkpoint in %s: it exists and is not a "
                                     "folder",
                         dir);
    }
    return cpa_error(CPA_ERR_IO, "cannot create checkpoint folder %s: %s", dir,
                     cpa_errno_text(err, why, sizeof why));
}

/* The temporary named in messages. */
#define CKPT_TEMP_WHAT "checkpoint temporary"

/* Everything the file holds, through the writer (cpa_temp_commit syncs). */
static cpa_status write_contents(ckpt_writer *w, const char *path, const char *tmp,
                                 const cpa_ckpt_meta *meta, const cpa_ckpt_array *arrays,
                                 int narrays)
{
    writer_put(w, CKPT_MAGIC, CKPT_MAGIC_LEN);
    writer_put_u32(w, CKPT_VERSION);
    writer_put_u64(w, (uint64_t)meta->iteration);
    writer_put_u64(w, meta->rng_state);
    size_t config_len = strlen(meta->config);
    writer_put_u32(w, (uint32_t)config_len);
    writer_put(w, meta->config, config_len);
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

cpa_status cpa_ckpt_save(const char *dir, const cpa_ckpt_meta *meta, const cpa_ckpt_array *arrays,
                         int narrays)
{
    CPA_TRY(check_save_args(dir, meta, arrays, narrays));
    char path[CKPT_PATH_CAP], tmp[CKPT_PATH_CAP], why[128];
    CPA_TRY(file_path(dir, path, sizeof path));
    CPA_TRY(make_dir(dir));
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
        st = cpa_error(CPA_ERR_IO, "cannot create a temporary file in %s to save %s: %s", dir,
                       path, cpa_errno_text(errno, why, sizeof why));
    } else {
        st = write_contents(&w, path, tmp, meta, arrays, narrays);
        if (st == CPA_OK)
            st = cpa_temp_commit(w.fd, tmp, path, CKPT_TEMP_WHAT);
        else
            cpa_temp_discard(w.fd, tmp);
        if (st == CPA_OK)
            cpa_temp_sweep(path); /* what earlier crashed saves left behind */
    }
    cpa_free(w.buf);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                   */
/* ------------------------------------------------------------------------ */

/* A buffered reader over the open file; `pos` is the file offset of the next
 * byte handed out.  When `hashing`, every byte handed out is hashed. */
typedef struct ckpt_reader {
    int fd;
    const char *path; /* for messages */
    int64_t size;     /* from fstat */
    unsigned char *buf;
    size_t start, end; /* unread bytes are buf[start, end) */
    int64_t pos;
    bool hashing;
    uint32_t version;  /* decides the checksum */
    int sum_len;       /* bytes of the checksum at the end of the file */
    uint64_t fnv;      /* version 1 */
    cpa_sha256 sha;    /* version 2 */
} ckpt_reader;

static cpa_status truncated(const ckpt_reader *r, const char *what)
{
    return cpa_error(CPA_ERR_FORMAT,
                     "%s: truncated: the file has %lld bytes and ends while reading %s", r->path,
                     (long long)r->size, what);
}

/* Refill the buffer; fails naming `what` at the end of the file. */
static cpa_status reader_fill(ckpt_reader *r, const char *what)
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
static cpa_status reader_get(ckpt_reader *r, void *dst, size_t n, const char *what)
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

static cpa_status reader_u32(ckpt_reader *r, uint32_t *v, const char *what)
{
    unsigned char b[4];
    CPA_TRY(reader_get(r, b, sizeof b, what));
    *v = get_u32(b);
    return CPA_OK;
}

static cpa_status reader_u64(ckpt_reader *r, uint64_t *v, const char *what)
{
    unsigned char b[8];
    CPA_TRY(reader_get(r, b, sizeof b, what));
    *v = get_u64(b);
    return CPA_OK;
}

/* Bytes left after the current position, not counting the checksum. */
static int64_t body_left(const ckpt_reader *r) { return r->size - r->sum_len - r->pos; }

/* What the first pass learnt. */
typedef struct ckpt_header {
    uint64_t iteration, rng_state;
    char config[CKPT_CONFIG_CAP];
    int64_t arrays_at; /* file offset of the first array's name_len */
    /* The first difference from the caller's arrays, reported only after
     * the checksum proved the file intact (a damaged file is a different
     * problem from a wrong one). */
    enum { MATCH, WRONG_NAME, WRONG_COUNT, WRONG_NARRAYS } mismatch;
    uint32_t at;                   /* the array that differs */
    char name[CKPT_MAX_NAME + 1];  /* its name in the file, escaped for messages */
    int64_t count;                 /* its count in the file */
    uint32_t narrays;              /* arrays in the file */
    char names[256];               /* their names, "params, adam_m, ..." */
} ckpt_header;

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

/* The header: magic, format version (which decides the checksum), the
 * iteration, RNG state and configuration, each length checked against the
 * file size.  Shared by loading (pass 1) and peeking. */
static cpa_status read_header(ckpt_reader *r, ckpt_header *h)
{
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
    CPA_TRY(reader_u64(r, &h->iteration, "the iteration"));
    CPA_TRY(reader_u64(r, &h->rng_state, "the RNG state"));

    uint32_t config_len;
    CPA_TRY(reader_u32(r, &config_len, "the configuration length"));
    if ((int64_t)config_len > body_left(r))
        return truncated(r, "the configuration");
    if (config_len >= (uint32_t)CKPT_CONFIG_CAP)
        return cpa_error(CPA_ERR_FORMAT,
                         "%s: corrupted: configuration of %u bytes (at most %d are written)",
                         r->path, config_len, CKPT_CONFIG_CAP - 1);
    CPA_TRY(reader_get(r, h->config, config_len, "the configuration"));
    h->config[config_len] = '\0';
    if (strlen(h->config) != config_len)
        return cpa_error(CPA_ERR_FORMAT, "%s: corrupted: NUL byte inside the configuration",
                         r->path);
    return CPA_OK;
}

/* Pass 1: structure and checksum of the whole file; fills `h`. */
static cpa_status scan_file(ckpt_reader *r, const cpa_ckpt_array *arrays, int narrays,
                            ckpt_header *h)
{
    CPA_TRY(read_header(r, h));

    uint32_t file_narrays;
    CPA_TRY(reader_u32(r, &file_narrays, "the array count"));
    /* Each array takes at least 12 bytes; refuse an absurd count up front. */
    if ((int64_t)file_narrays > body_left(r) / 12)
        return truncated(r, "the arrays");
    h->arrays_at = r->pos;
    h->mismatch = MATCH;
    h->narrays = file_narrays;
    h->names[0] = '\0';
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

        list_name(h->names, sizeof h->names, name, name_len);
        if (h->mismatch != MATCH || (int)i >= narrays)
            continue;
        if (strcmp(arrays[i].name, name) != 0)
            h->mismatch = WRONG_NAME;
        else if (arrays[i].count != count)
            h->mismatch = WRONG_COUNT;
        if (h->mismatch != MATCH) {
            h->at = i;
            cpa_escape(h->name, sizeof h->name, name, name_len);
            h->count = count;
        }
    }
    if (h->mismatch == MATCH && (int64_t)file_narrays != narrays)
        h->mismatch = WRONG_NARRAYS;

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

/* Trim spaces and tabs (and a '\r') around [*s, *e). */
static void trim(const char **s, const char **e)
{
    while (*s < *e && (**s == ' ' || **s == '\t'))
        ++*s;
    while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t' || (*e)[-1] == '\r'))
        --*e;
}

/* The next "key=value" line of `text` from *cursor; false at the end.
 * Lines without '=' (blank lines, comments) are skipped. */
static bool next_pair(const char **cursor, const char **key, size_t *key_len, const char **val,
                      size_t *val_len)
{
    while (**cursor) {
        const char *line = *cursor, *eol = strchr(line, '\n');
        if (!eol)
            eol = line + strlen(line);
        *cursor = *eol ? eol + 1 : eol;
        const char *eq = memchr(line, '=', (size_t)(eol - line));
        if (!eq)
            continue;
        const char *ks = line, *ke = eq, *vs = eq + 1, *ve = eol;
        trim(&ks, &ke);
        trim(&vs, &ve);
        if (ks == ke)
            continue;
        *key = ks;
        *key_len = (size_t)(ke - ks);
        *val = vs;
        *val_len = (size_t)(ve - vs);
        return true;
    }
    return false;
}

/* The value of `key` in `text` (the last one if repeated); false if absent. */
static bool find_value(const char *text, const char *key, size_t key_len, const char **val,
                       size_t *val_len)
{
    bool found = false;
    const char *cur = text, *k, *v;
    size_t kl, vl;
    while (next_pair(&cur, &k, &kl, &v, &vl)) {
        if (kl == key_len && memcmp(k, key, kl) == 0) {
            *val = v;
            *val_len = vl;
            found = true;
        }
    }
    return found;
}

/* Keys present in both configurations must agree; the first that does not
 * (in the running configuration's order) is named with both values. */
static cpa_status compare_configs(const char *path, const char *saved, const char *expected)
{
    const char *cur = expected, *k, *v;
    size_t kl, vl;
    while (next_pair(&cur, &k, &kl, &v, &vl)) {
        const char *sv;
        size_t svl;
        if (!find_value(saved, k, kl, &sv, &svl) || (svl == vl && memcmp(sv, v, vl) == 0))
            continue;
        /* Re-read the running value: a repeated key means its last line. */
        find_value(expected, k, kl, &v, &vl);
        if (svl == vl && memcmp(sv, v, vl) == 0)
            continue;
        /* Both sides may come from a file: escaped before printing. */
        char ek[420], esv[820], ev[820];
        cpa_escape(ek, sizeof ek, k, kl > 100 ? 100 : kl);
        cpa_escape(esv, sizeof esv, sv, svl > 200 ? 200 : svl);
        cpa_escape(ev, sizeof ev, v, vl > 200 ? 200 : vl);
        return cpa_error(CPA_ERR_ARG, "%s was saved with %s=%s but this run has %s=%s", path, ek,
                         esv, ek, ev);
    }
    return CPA_OK;
}

/* The arrays of a sound file are not the caller's. */
static cpa_status report_mismatch(const char *path, const ckpt_header *h,
                                  const cpa_ckpt_array *arrays, int narrays)
{
    const cpa_ckpt_array *a = h->mismatch == WRONG_NARRAYS ? NULL : &arrays[h->at];
    switch (h->mismatch) {
    case WRONG_NAME:
        return cpa_error(CPA_ERR_ARG, "%s: array %u of the checkpoint is %s, this run expects %s",
                         path, h->at, h->name, a->name);
    case WRONG_COUNT:
        return cpa_error(CPA_ERR_ARG,
                         "%s: checkpoint has %s with %lld floats, this model needs %lld (a "
                         "different model shape?)",
                         path, h->name, (long long)h->count, (long long)a->count);
    default: {
        char want[256] = "";
        for (int i = 0; i < narrays; ++i)
            list_name(want, sizeof want, arrays[i].name, strlen(arrays[i].name));
        return cpa_error(CPA_ERR_ARG, "%s: checkpoint has %u arrays (%s), this run expects %d (%s)",
                         path, h->narrays, h->names, narrays, want);
    }
    }
}

/* Pass 2: the array data into the caller's arrays; the structure was
 * checked by pass 1 and matches `arrays`. */
static cpa_status copy_arrays(ckpt_reader *r, const ckpt_header *h, const cpa_ckpt_array *arrays,
                              int narrays)
{
    char why[128];
    if (lseek(r->fd, (off_t)h->arrays_at, SEEK_SET) == (off_t)-1)
        return cpa_error(CPA_ERR_IO, "%s: cannot seek: %s", r->path,
                         cpa_errno_text(errno, why, sizeof why));
    r->pos = h->arrays_at;
    r->start = r->end = 0;
    for (int i = 0; i < narrays; ++i) {
        /* name_len, name, count: the same as in pass 1. */
        size_t skip = 4 + strlen(arrays[i].name) + 8;
        CPA_TRY(reader_get(r, NULL, skip, "an array header"));
        if (arrays[i].count > 0)
            CPA_TRY(reader_get(r, arrays[i].data, (size_t)arrays[i].count * sizeof(float),
                               "the array data"));
    }
    return CPA_OK;
}

static cpa_status check_load_args(const char *dir, const cpa_ckpt_array *arrays, int narrays)
{
    if (!dir)
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_load: NULL dir");
    if (narrays < 0 || (narrays > 0 && !arrays))
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_load: %d arrays at %p", narrays,
                         (const void *)arrays);
    for (int i = 0; i < narrays; ++i) {
        const cpa_ckpt_array *a = &arrays[i];
        if (!a->name || a->name[0] == '\0' || strlen(a->name) > CKPT_MAX_NAME)
            return cpa_error(CPA_ERR_ARG,
                             "cpa_ckpt_load: array %d needs a name of 1 to %d characters", i,
                             CKPT_MAX_NAME);
        if (a->count < 0 || (a->count > 0 && !a->data))
            return cpa_error(CPA_ERR_ARG, "cpa_ckpt_load: array %s has count %lld and data %p",
                             a->name, (long long)a->count, (const void *)a->data);
    }
    return CPA_OK;
}

/* The checksum is no signature: check what the iteration means too. */
static cpa_status check_iteration(const char *path, int64_t iteration)
{
    if (iteration < 0)
        return cpa_error(CPA_ERR_FORMAT, "%s: the checkpoint says iteration %lld; iterations are "
                         ">= 0 (the file was damaged or edited)", path, (long long)iteration);
    return CPA_OK;
}

cpa_status cpa_ckpt_load(const char *dir, const char *expected_config, cpa_ckpt_meta *meta,
                         const cpa_ckpt_array *arrays, int narrays)
{
    CPA_TRY(check_load_args(dir, arrays, narrays));
    char path[CKPT_PATH_CAP];
    CPA_TRY(file_path(dir, path, sizeof path));

    ckpt_reader r = {.fd = -1, .path = path, .hashing = true, .version = CKPT_VERSION,
                     .sum_len = CKPT_SUM_LEN};
    cpa_sha256_init(&r.sha);
    struct stat sb;
    CPA_TRY(cpa_open_read(path, &r.fd, &sb));
    cpa_status st;
    ckpt_header *h = NULL;
    r.size = (int64_t)sb.st_size;
    r.buf = cpa_malloc(CKPT_CHUNK, "checkpoint read buffer");
    h = cpa_malloc(sizeof *h, "checkpoint header");
    if (!r.buf || !h) {
        st = cpa_nomem_for(path);
        goto free_buffers;
    }
    st = scan_file(&r, arrays, narrays, h);
    if (st == CPA_OK)
        st = check_iteration(path, (int64_t)h->iteration);
    if (st == CPA_OK && expected_config)
        st = compare_configs(path, h->config, expected_config);
    if (st == CPA_OK && h->mismatch != MATCH)
        st = report_mismatch(path, h, arrays, narrays);
    if (st == CPA_OK)
        st = copy_arrays(&r, h, arrays, narrays);
    if (st == CPA_OK && meta) {
        meta->iteration = (int64_t)h->iteration;
        meta->rng_state = h->rng_state;
        memset(meta->config, 0, sizeof meta->config);
        memcpy(meta->config, h->config, strlen(h->config));
    }

free_buffers:
    cpa_free(h);
    cpa_free(r.buf);
    close(r.fd);
    return st;
}

int cpa_ckpt_exists(const char *dir)
{
    char path[CKPT_PATH_CAP];
    struct stat sb;
    if (!dir || snprintf(path, sizeof path, "%s/%s", dir, CKPT_FILE) >= (int)sizeof path)
        return 0;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

int cpa_ckpt_sweep(const char *dir)
{
    char path[CKPT_PATH_CAP];
    if (!dir || file_path(dir, path, sizeof path) != CPA_OK)
        return 0;
    return cpa_temp_sweep(path);
}

cpa_status cpa_ckpt_peek(const char *dir, cpa_ckpt_meta *meta)
{
    if (!dir || !meta)
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_peek: NULL %s", !dir ? "dir" : "meta");
    char path[CKPT_PATH_CAP];
    CPA_TRY(file_path(dir, path, sizeof path));
    ckpt_reader r = {.fd = -1, .path = path, .version = CKPT_VERSION, .sum_len = CKPT_SUM_LEN};
    struct stat sb;
    CPA_TRY(cpa_open_read(path, &r.fd, &sb));
    r.size = (int64_t)sb.st_size;
    r.buf = cpa_malloc(CKPT_CHUNK, "checkpoint read buffer");
    ckpt_header *h = cpa_malloc(sizeof *h, "checkpoint header");
    cpa_status st = r.buf && h ? read_header(&r, h) : cpa_nomem_for(path);
    if (st == CPA_OK)
        st = check_iteration(path, (int64_t)h->iteration);
    if (st == CPA_OK) {
        meta->iteration = (int64_t)h->iteration;
        meta->rng_state = h->rng_state;
        memset(meta->config, 0, sizeof meta->config);
        memcpy(meta->config, h->config, strlen(h->config));
    }
    cpa_free(h);
    cpa_free(r.buf);
    close(r.fd);
    return st;
}
