/*
 * checkpoint.c — save and load training checkpoints (see checkpoint.h).
 *
 * The file is DIR/checkpoint.bin in the checkpoint container of
 * src/core/ckpt_file.c, which owns the byte layout, the checksums, the
 * atomic write and the checks of a file's structure.  What is left here is
 * what makes it a trainer's checkpoint:
 *
 *   - the folder: DIR is created if missing, the file name is fixed, and
 *     the temporaries of crashed saves in DIR can be swept;
 *   - the header: word 0 is the iteration (an i64, refused when negative:
 *     the checksum is no signature, so a forged file must still mean
 *     something), word 1 the RNG state, the text the model configuration as
 *     "key=value" lines;
 *   - the configuration check: keys present both in the file and in the
 *     running configuration must agree, and the first that does not is
 *     named with both values.  It runs after the container proved the file
 *     intact and before the container reports arrays of other names or
 *     counts, because a changed model shape shows in both and the key that
 *     differs ("hidden_size") is the better message.
 */
#include "checkpoint.h"
#include "atomic_file.h"
#include "ckpt_file.h"
#include "internal.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#define CKPT_FILE "checkpoint.bin"
#define CKPT_PATH_CAP 4200

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

static cpa_status check_save_args(const char *dir, const cpa_ckpt_meta *meta,
                                  const cpa_ckpt_array *arrays, int narrays)
{
    if (!dir || !meta)
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_save: NULL %s", !dir ? "dir" : "meta");
    if (memchr(meta->config, '\0', sizeof meta->config) == NULL)
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_save: meta->config is not NUL-terminated");
    return cpa_ckpt_file_check_arrays("cpa_ckpt_save", arrays, narrays, 1);
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

cpa_status cpa_ckpt_save(const char *dir, const cpa_ckpt_meta *meta, const cpa_ckpt_array *arrays,
                         int narrays)
{
    CPA_TRY(check_save_args(dir, meta, arrays, narrays));
    char path[CKPT_PATH_CAP];
    CPA_TRY(file_path(dir, path, sizeof path));
    CPA_TRY(make_dir(dir));
    cpa_ckpt_file_header h;
    h.word[0] = (uint64_t)meta->iteration;
    h.word[1] = meta->rng_state;
    _Static_assert(sizeof h.text == sizeof meta->config, "the configuration is the header text");
    memcpy(h.text, meta->config, sizeof h.text);
    return cpa_ckpt_file_write(path, &h, arrays, narrays);
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                   */
/* ------------------------------------------------------------------------ */

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

static cpa_status check_load_args(const char *dir, const cpa_ckpt_array *arrays, int narrays)
{
    if (!dir)
        return cpa_error(CPA_ERR_ARG, "cpa_ckpt_load: NULL dir");
    return cpa_ckpt_file_check_arrays("cpa_ckpt_load", arrays, narrays, 0);
}

/* The checksum is no signature: check what the iteration means too. */
static cpa_status check_iteration(const char *path, int64_t iteration)
{
    if (iteration < 0)
        return cpa_error(CPA_ERR_FORMAT, "%s: the checkpoint says iteration %lld; iterations are "
                         ">= 0 (the file was damaged or edited)", path, (long long)iteration);
    return CPA_OK;
}

/* The header as the trainer's meta. */
static void meta_from(const cpa_ckpt_file_header *h, cpa_ckpt_meta *meta)
{
    meta->iteration = (int64_t)h->word[0];
    meta->rng_state = h->word[1];
    memset(meta->config, 0, sizeof meta->config);
    memcpy(meta->config, h->text, strlen(h->text));
}

cpa_status cpa_ckpt_load(const char *dir, const char *expected_config, cpa_ckpt_meta *meta,
                         const cpa_ckpt_array *arrays, int narrays)
{
    CPA_TRY(check_load_args(dir, arrays, narrays));
    char path[CKPT_PATH_CAP];
    CPA_TRY(file_path(dir, path, sizeof path));

    cpa_ckpt_reader *r = NULL;
    CPA_TRY(cpa_ckpt_reader_open(path, &r));
    cpa_status st = cpa_ckpt_reader_scan(r, arrays, narrays);
    const cpa_ckpt_file_header *h = cpa_ckpt_reader_header(r);
    if (st == CPA_OK)
        st = check_iteration(path, (int64_t)h->word[0]);
    if (st == CPA_OK && expected_config)
        st = compare_configs(path, h->text, expected_config);
    if (st == CPA_OK)
        st = cpa_ckpt_reader_match(r);
    if (st == CPA_OK)
        st = cpa_ckpt_reader_copy(r);
    if (st == CPA_OK && meta)
        meta_from(h, meta);
    cpa_ckpt_reader_close(r);
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
    cpa_ckpt_reader *r = NULL;
    CPA_TRY(cpa_ckpt_reader_open(path, &r));
    cpa_status st = cpa_ckpt_reader_read_header(r);
    const cpa_ckpt_file_header *h = cpa_ckpt_reader_header(r);
    if (st == CPA_OK)
        st = check_iteration(path, (int64_t)h->word[0]);
    if (st == CPA_OK)
        meta_from(h, meta);
    cpa_ckpt_reader_close(r);
    return st;
}
