/*
 * test_checkpoint.c — unit tests of training checkpoints
 * (src/model/checkpoint.c).
 *
 * Round trips must be bit-exact (NaN payloads and arrays larger than the
 * streaming buffer included), and the bytes must follow the documented
 * layout (magic, version 2, a trailing SHA-256 recomputed here; format 1
 * with its FNV-1a checksum is still read).  Saving is atomic: overwriting leaves no temporary, and a
 * failed save (DIR a regular file, DIR uncreatable, a write failing half-way
 * through an RLIMIT_FSIZE limit) returns CPA_ERR_IO and leaves the previous
 * checkpoint loadable.  Every damaged file (flipped byte, truncation,
 * trailing bytes, bad magic, other version) and every wrong one (array
 * names, counts, configuration) fails with the right status and message,
 * and a failed load leaves the caller's arrays and meta untouched (filled
 * with a sentinel and checked).  Everything happens in a mkdtemp folder
 * under /tmp that is removed at the end.
 */
#include "checkpoint.h"
#include "cpattn.h"
#include "internal.h"
#include "test.h"
#include "test_files.h"

#include <dirent.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* The last error mentions `word`. */
#define CHECK_ERR(word)                                                                  \
    CHECK_MSG(strstr(cpa_last_error(), (word)) != NULL, "message \"%s\" lacks \"%s\"", \
              cpa_last_error(), (word))

/* Arbitrary 32-bit patterns (NaNs with payloads, denormals, -0), so only a
 * bit-exact copy passes. */
static void fill_bits(float *x, int64_t n, uint32_t seed)
{
    uint32_t s = seed * 2654435761u + 1;
    for (int64_t i = 0; i < n; ++i) {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        memcpy(&x[i], &s, sizeof s);
    }
}

static void fill_sentinel(float *x, int64_t n)
{
    const uint32_t bits = 0x7fc0dead; /* a NaN no checkpoint here contains */
    for (int64_t i = 0; i < n; ++i)
        memcpy(&x[i], &bits, sizeof bits);
}

static bool all_sentinel(const float *x, int64_t n)
{
    float s;
    fill_sentinel(&s, 1);
    for (int64_t i = 0; i < n; ++i)
        if (memcmp(&x[i], &s, sizeof s) != 0)
            return false;
    return true;
}

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; ++i)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

/* The format-2 checksum of n bytes. */
static void sha_of(const unsigned char *p, size_t n, unsigned char out[32])
{
    cpa_sha256 s;
    cpa_sha256_init(&s);
    cpa_sha256_update(&s, p, n);
    cpa_sha256_final(&s, out);
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void set_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; ++i)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* A model's state: three arrays as the trainer saves them. */
enum { NP = 1000, NM = 1000, NV = 1000 };
typedef struct state {
    float p[NP], m[NM], v[NV];
    cpa_ckpt_array arr[3];
    cpa_ckpt_meta meta;
} state;

static const char *const CONFIG = "n_layers=2\nhidden_size=256\nheads=4\nseq_len=64\n";

static void state_init(state *s, uint32_t seed)
{
    fill_bits(s->p, NP, seed);
    fill_bits(s->m, NM, seed + 1);
    fill_bits(s->v, NV, seed + 2);
    s->arr[0] = (cpa_ckpt_array){"params", s->p, NP};
    s->arr[1] = (cpa_ckpt_array){"adam_m", s->m, NM};
    s->arr[2] = (cpa_ckpt_array){"adam_v", s->v, NV};
    memset(&s->meta, 0, sizeof s->meta);
    s->meta.iteration = 1000 + seed;
    s->meta.rng_state = 0x0123456789abcdefULL ^ seed;
    snprintf(s->meta.config, sizeof s->meta.config, "%s", CONFIG);
}

/* Arrays pointing at sentinel-filled buffers, and a sentinel meta. */
static void state_sentinel(state *s)
{
    state_init(s, 0);
    fill_sentinel(s->p, NP);
    fill_sentinel(s->m, NM);
    fill_sentinel(s->v, NV);
    s->meta.iteration = -777;
    s->meta.rng_state = 777;
    snprintf(s->meta.config, sizeof s->meta.config, "sentinel");
}

static bool state_untouched(const state *s)
{
    return all_sentinel(s->p, NP) && all_sentinel(s->m, NM) && all_sentinel(s->v, NV) &&
           s->meta.iteration == -777 && s->meta.rng_state == 777 &&
           strcmp(s->meta.config, "sentinel") == 0;
}

static bool state_equal(const state *a, const state *b)
{
    return memcmp(a->p, b->p, sizeof a->p) == 0 && memcmp(a->m, b->m, sizeof a->m) == 0 &&
           memcmp(a->v, b->v, sizeof a->v) == 0 && a->meta.iteration == b->meta.iteration &&
           a->meta.rng_state == b->meta.rng_state &&
           strcmp(a->meta.config, b->meta.config) == 0;
}

/* ------------------------------------------------------------------------ */

static void test_roundtrip(void)
{
    char dir[256], file[300];
    path_of(dir, sizeof dir, "rt"); /* created by the save */
    snprintf(file, sizeof file, "%s/checkpoint.bin", dir);
    CHECK(!cpa_ckpt_exists(dir));
    static state a, b;
    state_init(&a, 1);
    CHECK_OK(cpa_ckpt_save(dir, &a.meta, a.arr, 3));
    CHECK(cpa_ckpt_exists(dir));
    CHECK(count_temps(dir) == 0);
    state_sentinel(&b);
    CHECK_OK(cpa_ckpt_load(dir, CONFIG, &b.meta, b.arr, 3));
    CHECK(state_equal(&a, &b));
    /* No expected configuration and no meta are fine too. */
    state_sentinel(&b);
    CHECK_OK(cpa_ckpt_load(dir, NULL, NULL, b.arr, 3));
    CHECK(memcmp(a.p, b.p, sizeof a.p) == 0 && memcmp(a.v, b.v, sizeof a.v) == 0);

    /* The layout of checkpoint.c's comment: header fields at fixed offsets,
     * SHA-256 of everything before the last 32 bytes, the total size. */
    size_t n = 0;
    unsigned char *bytes = read_bytes(file, &n);
    CHECK(bytes != NULL);
    if (bytes) {
        size_t cfg = strlen(CONFIG);
        size_t names = strlen("params") + strlen("adam_m") + strlen("adam_v");
        size_t want = 8 + 4 + 8 + 8 + 4 + cfg + 4 + 3 * (4 + 8) + names +
                      4 * (NP + NM + NV) + 32;
        CHECK_MSG(n == want, "size %zu, want %zu", n, want);
        CHECK(memcmp(bytes, "CPATTNCK", 8) == 0);
        CHECK(bytes[8] == 2 && bytes[9] == 0 && bytes[10] == 0 && bytes[11] == 0);
        CHECK(le64(bytes + 12) == (uint64_t)a.meta.iteration);
        CHECK(le64(bytes + 20) == a.meta.rng_state);
        CHECK(memcmp(bytes + 32, CONFIG, cfg) == 0);
        unsigned char sum[32];
        if (n >= 32) {
            sha_of(bytes, n - 32, sum);
            CHECK(memcmp(bytes + n - 32, sum, 32) == 0);
        }
        /* The same content as format 1 (FNV-1a, 8 bytes) still loads. */
        if (n >= 32) {
            unsigned char *v1 = malloc(n);
            memcpy(v1, bytes, n - 32);
            v1[8] = 1;
            set_le64(v1 + n - 32, fnv1a(v1, n - 32));
            CHECK(write_bytes(file, v1, n - 24));
            state c;
            state_init(&c, 99);
            CHECK_OK(cpa_ckpt_load(dir, CONFIG, &c.meta, c.arr, 3));
            CHECK(c.meta.iteration == a.meta.iteration && memcmp(c.p, a.p, sizeof a.p) == 0);
            CHECK(write_bytes(file, bytes, n)); /* restore */
            free(v1);
        }
        free(bytes);
    }

    /* Edge shapes: no arrays; an empty array; an array larger than the
     * 4 MiB streaming buffer, next to small ones. */
    cpa_ckpt_meta meta = {0}, got = {0};
    meta.iteration = 0;
    CHECK_OK(cpa_ckpt_save(dir, &meta, NULL, 0));
    CHECK_OK(cpa_ckpt_load(dir, "", &got, NULL, 0));
    CHECK(got.iteration == 0 && got.config[0] == '\0');

    const int64_t big = (int64_t)1600 * 1000; /* 6.4 MB */
    float *x = malloc((size_t)big * sizeof(float)), *y = malloc((size_t)big * sizeof(float));
    float small[3] = {1, 2, 3}, small2[3];
    fill_bits(x, big, 42);
    fill_sentinel(y, big);
    cpa_ckpt_array in[3] = {{"empty", NULL, 0}, {"big", x, big}, {"small", small, 3}};
    cpa_ckpt_array out[3] = {{"empty", NULL, 0}, {"big", y, big}, {"small", small2, 3}};
    meta.iteration = INT64_MAX;
    meta.rng_state = UINT64_MAX;
    CHECK_OK(cpa_ckpt_save(dir, &meta, in, 3));
    CHECK_OK(cpa_ckpt_load(dir, NULL, &got, out, 3));
    CHECK(memcmp(x, y, (size_t)big * sizeof(float)) == 0);
    CHECK(memcmp(small, small2, sizeof small) == 0);
    CHECK(got.iteration == INT64_MAX && got.rng_state == UINT64_MAX);
    free(x);
    free(y);
    remove_tree(dir);
}

static void test_overwrite(void)
{
    char dir[256];
    path_of(dir, sizeof dir, "ow");
    CHECK(mkdir(dir, 0700) == 0); /* an existing folder is fine */
    static state a, b, c;
    state_init(&a, 1);
    state_init(&b, 2);
    CHECK_OK(cpa_ckpt_save(dir, &a.meta, a.arr, 3));
    CHECK_OK(cpa_ckpt_save(dir, &b.meta, b.arr, 3));
    CHECK(count_temps(dir) == 0);
    state_sentinel(&c);
    CHECK_OK(cpa_ckpt_load(dir, CONFIG, &c.meta, c.arr, 3));
    CHECK(state_equal(&b, &c));
    /* Many saves in a row leave exactly one file. */
    for (int i = 0; i < 5; ++i) {
        a.meta.iteration = i;
        CHECK_OK(cpa_ckpt_save(dir, &a.meta, a.arr, 3));
    }
    int entries = 0;
    DIR *d = opendir(dir);
    if (d) {
        for (struct dirent *e; (e = readdir(d));)
            entries += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
        closedir(d);
    }
    CHECK_MSG(entries == 1, "%d entries", entries);
    state_sentinel(&c);
    CHECK_OK(cpa_ckpt_load(dir, CONFIG, &c.meta, c.arr, 3));
    CHECK(c.meta.iteration == 4);
    remove_tree(dir);
}

/* Load `dir` into sentinel buffers, expecting failure with `want` and a
 * message containing `word`, and nothing written. */
static void expect_load_failure(const char *dir, const char *config, cpa_status want,
                                const char *word, int line)
{
    static state s;
    state_sentinel(&s);
    cpa_status st = cpa_ckpt_load(dir, config, &s.meta, s.arr, 3);
    CHECK_MSG(st == want, "line %d: status %s, want %s: %s", line, cpa_status_string(st),
              cpa_status_string(want), cpa_last_error());
    CHECK_MSG(strstr(cpa_last_error(), word) != NULL, "line %d: message \"%s\" lacks \"%s\"",
              line, cpa_last_error(), word);
    CHECK_MSG(strstr(cpa_last_error(), "checkpoint.bin") != NULL,
              "line %d: message \"%s\" does not name the file", line, cpa_last_error());
    CHECK_MSG(state_untouched(&s), "line %d: arrays or meta written by a failed load", line);
}
#define EXPECT_LOAD_FAILURE(dir, config, want, word) \
    expect_load_failure(dir, config, want, word, __LINE__)

static void test_corruption(void)
{
    char dir[256], file[300];
    path_of(dir, sizeof dir, "bad");
    snprintf(file, sizeof file, "%s/checkpoint.bin", dir);
    static state a;
    state_init(&a, 3);
    CHECK_OK(cpa_ckpt_save(dir, &a.meta, a.arr, 3));
    size_t n = 0;
    unsigned char *good = read_bytes(file, &n);
    unsigned char *bad = malloc(n + 16);
    if (!good || !bad || n < 100) {
        CHECK(!"could not read the saved checkpoint");
        free(good);
        free(bad);
        return;
    }

    /* A flipped bit anywhere past the version is a checksum mismatch:
     * in the data, the configuration, an array name, the checksum. */
    const size_t flips[] = {n / 2, n - 100, 32 + 3, 32 + strlen(CONFIG) + 4 + 4 + 2, n - 1,
                            n - 32};
    for (size_t i = 0; i < sizeof flips / sizeof *flips; ++i) {
        memcpy(bad, good, n);
        bad[flips[i]] ^= 0x10;
        CHECK(write_bytes(file, bad, n));
        EXPECT_LOAD_FAILURE(dir, CONFIG, CPA_ERR_FORMAT, "checksum mismatch");
    }
    /* The iteration and RNG state are covered too. */
    memcpy(bad, good, n);
    bad[12] ^= 1;
    CHECK(write_bytes(file, bad, n));
    EXPECT_LOAD_FAILURE(dir, CONFIG, CPA_ERR_FORMAT, "checksum mismatch");

    /* A negative iteration with the checksum recomputed (as an edit
     * would): the checksum is no signature, so what it means is checked. */
    memcpy(bad, good, n);
    set_le64(bad + 12, (uint64_t)(int64_t)-1000);
    sha_of(bad, n - 32, bad + n - 32);
    CHECK(write_bytes(file, bad, n));
    EXPECT_LOAD_FAILURE(dir, CONFIG, CPA_ERR_FORMAT, "iteration -1000");
    cpa_ckpt_meta peeked;
    CHECK_STATUS(cpa_ckpt_peek(dir, &peeked), CPA_ERR_FORMAT);

    /* Truncated anywhere, the empty file and a partial magic included. */
    const size_t cuts[] = {0, 5, 8, 10, 20, 31, 40, n / 2, n - 33, n - 32, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; ++i) {
        CHECK(write_bytes(file, good, cuts[i]));
        EXPECT_LOAD_FAILURE(dir, CONFIG, CPA_ERR_FORMAT, "truncated");
    }
    /* Trailing bytes. */
    memcpy(bad, good, n);
    memset(bad + n, 0, 4);
    CHECK(write_bytes(file, bad, n + 4));
    EXPECT_LOAD_FAILURE(dir, CONFIG, CPA_ERR_FORMAT, "corrupted");

    /* Not a checkpoint at all, long or short. */
    memcpy(bad, good, n);
    memcpy(bad, "\x93NUMPY\x01\x00", 8);
    CHECK(write_bytes(file, bad, n));
    EXPECT_LOAD_FAILURE(dir, CONFIG, CPA_ERR_FORMAT, "not a cpattn checkpoint");
    CHECK(write_bytes(file, "hello", 5));
    EXPECT_LOAD_FAILURE(dir, CONFIG, CPA_ERR_FORMAT, "not a cpattn checkpoint");

    /* Another format version, even with a valid checksum. */
    memcpy(bad, good, n);
    bad[8] = 3;
    sha_of(bad, n - 32, bad + n - 32);
    CHECK(write_bytes(file, bad, n));
    EXPECT_LOAD_FAILURE(dir, CONFIG, CPA_ERR_FORMAT, "version 3");

    /* Absurd lengths are refused before anything is allocated or read. */
    memcpy(bad, good, n);
    bad[28] = 0xff, bad[29] = 0xff, bad[30] = 0xff, bad[31] = 0x7f; /* config length */
    CHECK(write_bytes(file, bad, n));
    EXPECT_LOAD_FAILURE(dir, CONFIG, CPA_ERR_FORMAT, "truncated");
    memcpy(bad, good, n);
    bad[28] = 0x00, bad[29] = 0x20, bad[30] = 0, bad[31] = 0; /* 8192: fits, but too long */
    CHECK(write_bytes(file, bad, n));
    EXPECT_LOAD_FAILURE(dir, CONFIG, CPA_ERR_FORMAT, "corrupted");

    /* The file missing altogether; a folder in its place. */
    unlink(file);
    EXPECT_LOAD_FAILURE(dir, CONFIG, CPA_ERR_IO, "No such file");
    CHECK(!cpa_ckpt_exists(dir));
    CHECK(mkdir(file, 0700) == 0);
    CHECK(!cpa_ckpt_exists(dir));
    EXPECT_LOAD_FAILURE(dir, CONFIG, CPA_ERR_IO, "not a regular file");
    rmdir(file);

    /* Out of memory while loading: nothing written either. */
    CHECK(write_bytes(file, good, n));
    cpa_debug_fail_alloc_after(1);
    EXPECT_LOAD_FAILURE(dir, CONFIG, CPA_ERR_NOMEM, "injected");
    cpa_debug_fail_alloc_after(0);

    free(good);
    free(bad);
    remove_tree(dir);
}

static void test_mismatch(void)
{
    char dir[256], want[512];
    path_of(dir, sizeof dir, "mm");
    float p[5678], q[5678];
    fill_bits(p, 5678, 9);
    cpa_ckpt_meta meta = {0}, got;
    snprintf(meta.config, sizeof meta.config, "n_layers=2\nhidden_size=256\nlr=0.001\n");
    cpa_ckpt_array saved[2] = {{"params", p, 1234}, {"adam_m", p, 10}};
    CHECK_OK(cpa_ckpt_save(dir, &meta, saved, 2));

    /* Array sizes: the message of the brief, word for word. */
    fill_sentinel(q, 5678);
    cpa_ckpt_array bigger[2] = {{"params", q, 5678}, {"adam_m", q, 10}};
    CHECK_STATUS(cpa_ckpt_load(dir, NULL, &got, bigger, 2), CPA_ERR_ARG);
    snprintf(want, sizeof want,
             "%s/checkpoint.bin: checkpoint has params with 1234 floats, this model needs 5678 "
             "(a different model shape?)",
             dir);
    CHECK_MSG(strcmp(cpa_last_error(), want) == 0, "\"%s\"", cpa_last_error());
    CHECK(all_sentinel(q, 5678));

    /* Array names; array counts. */
    cpa_ckpt_array renamed[2] = {{"params", q, 1234}, {"adam_v", q, 10}};
    CHECK_STATUS(cpa_ckpt_load(dir, NULL, &got, renamed, 2), CPA_ERR_ARG);
    CHECK_ERR("adam_m");
    CHECK_ERR("adam_v");
    CHECK(all_sentinel(q, 5678));
    cpa_ckpt_array fewer[1] = {{"params", q, 1234}};
    CHECK_STATUS(cpa_ckpt_load(dir, NULL, &got, fewer, 1), CPA_ERR_ARG);
    CHECK_ERR("checkpoint has 2 arrays (params, adam_m), this run expects 1 (params)");
    CHECK(all_sentinel(q, 5678));
    cpa_ckpt_array more[3] = {{"params", q, 1234}, {"adam_m", q, 10}, {"adam_v", q, 10}};
    CHECK_STATUS(cpa_ckpt_load(dir, NULL, &got, more, 3), CPA_ERR_ARG);
    CHECK_ERR("checkpoint has 2 arrays");
    CHECK(all_sentinel(q, 5678));

    /* Configuration: the first differing key, both values. */
    cpa_ckpt_array same[2] = {{"params", q, 1234}, {"adam_m", q + 2000, 10}};
    CHECK_STATUS(cpa_ckpt_load(dir, "n_layers=2\nhidden_size=128\n", &got, same, 2),
                 CPA_ERR_ARG);
    snprintf(want, sizeof want,
             "%s/checkpoint.bin was saved with hidden_size=256 but this run has hidden_size=128",
             dir);
    CHECK_MSG(strcmp(cpa_last_error(), want) == 0, "\"%s\"", cpa_last_error());
    CHECK(all_sentinel(q, 5678));
    /* It is reported before a size mismatch the different shape causes. */
    CHECK_STATUS(cpa_ckpt_load(dir, "hidden_size=128\n", &got, bigger, 2), CPA_ERR_ARG);
    CHECK_ERR("hidden_size=128");
    /* Keys in only one of them, blank lines, spaces and CRLF do not matter. */
    CHECK_OK(cpa_ckpt_load(dir, "\n  hidden_size = 256 \r\nnew_key=7\n\nn_layers=2", &got, same,
                           2));
    CHECK(memcmp(q, p, 1234 * sizeof(float)) == 0 && memcmp(q + 2000, p, 10 * sizeof(float)) == 0);
    CHECK(strcmp(got.config, meta.config) == 0);
    /* The first differing key in the running configuration's order. */
    CHECK_STATUS(cpa_ckpt_load(dir, "lr=0.002\nn_layers=3\n", &got, same, 2), CPA_ERR_ARG);
    CHECK_ERR("saved with lr=0.001 but this run has lr=0.002");
    remove_tree(dir);
}

static void test_failed_save(void)
{
    char dir[256], file[300];
    path_of(dir, sizeof dir, "fs");
    snprintf(file, sizeof file, "%s/checkpoint.bin", dir);
    static state a, b, c;
    state_init(&a, 5);
    state_init(&b, 6);
    CHECK_OK(cpa_ckpt_save(dir, &a.meta, a.arr, 3));

    /* A write that fails half-way: the file size limit makes write() fail
     * with EFBIG (SIGXFSZ ignored), for root as for anyone.  The previous
     * checkpoint stays, the temporary goes. */
    struct rlimit old;
    CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = old;
    small.rlim_cur = 4096;
    CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0);
    cpa_status st = cpa_ckpt_save(dir, &b.meta, b.arr, 3);
    CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
    signal(SIGXFSZ, old_handler);
    CHECK_MSG(st == CPA_ERR_IO, "status %s: %s", cpa_status_string(st), cpa_last_error());
    CHECK_ERR("File too large");
    CHECK_ERR(dir);
    CHECK(count_temps(dir) == 0);
    state_sentinel(&c);
    CHECK_OK(cpa_ckpt_load(dir, CONFIG, &c.meta, c.arr, 3));
    CHECK(state_equal(&a, &c));

    /* A read-only folder (root ignores permissions, so only as a user). */
    if (geteuid() != 0) {
        CHECK(chmod(dir, 0500) == 0);
        CHECK_STATUS(cpa_ckpt_save(dir, &b.meta, b.arr, 3), CPA_ERR_IO);
        CHECK_ERR("Permission denied");
        CHECK(chmod(dir, 0700) == 0);
        state_sentinel(&c);
        CHECK_OK(cpa_ckpt_load(dir, CONFIG, &c.meta, c.arr, 3));
        CHECK(state_equal(&a, &c));
    }

    /* DIR is a regular file; DIR cannot be created. */
    char plain[256];
    path_of(plain, sizeof plain, "plain_file");
    CHECK(write_bytes(plain, "x", 1));
    CHECK_STATUS(cpa_ckpt_save(plain, &b.meta, b.arr, 3), CPA_ERR_IO);
    CHECK_ERR(plain);
    CHECK_ERR("not a folder");
    CHECK(!cpa_ckpt_exists(plain));
    unlink(plain);
    CHECK_STATUS(cpa_ckpt_save("/proc/cpattn_no_such_dir", &b.meta, b.arr, 3), CPA_ERR_IO);
    CHECK_ERR("/proc/cpattn_no_such_dir");
    char deep[300];
    snprintf(deep, sizeof deep, "%s/missing/deeper", tmp_dir);
    CHECK_STATUS(cpa_ckpt_save(deep, &b.meta, b.arr, 3), CPA_ERR_IO);
    CHECK_ERR("No such file");

    /* Out of memory before anything is created. */
    cpa_debug_fail_alloc_after(1);
    CHECK_STATUS(cpa_ckpt_save(dir, &b.meta, b.arr, 3), CPA_ERR_NOMEM);
    cpa_debug_fail_alloc_after(0);
    CHECK(count_temps(dir) == 0);

    /* Bad arguments. */
    cpa_ckpt_meta meta = b.meta;
    memset(meta.config, 'x', sizeof meta.config); /* no NUL */
    CHECK_STATUS(cpa_ckpt_save(dir, &meta, b.arr, 3), CPA_ERR_ARG);
    cpa_ckpt_array noname[1] = {{NULL, b.p, 3}};
    CHECK_STATUS(cpa_ckpt_save(dir, &b.meta, noname, 1), CPA_ERR_ARG);
    cpa_ckpt_array nodata[1] = {{"params", NULL, 3}};
    CHECK_STATUS(cpa_ckpt_save(dir, &b.meta, nodata, 1), CPA_ERR_ARG);
    cpa_ckpt_array negative[1] = {{"params", b.p, -1}};
    CHECK_STATUS(cpa_ckpt_save(dir, &b.meta, negative, 1), CPA_ERR_ARG);
    CHECK_STATUS(cpa_ckpt_save(NULL, &b.meta, b.arr, 3), CPA_ERR_ARG);
    CHECK_STATUS(cpa_ckpt_save(dir, NULL, b.arr, 3), CPA_ERR_ARG);
    CHECK_STATUS(cpa_ckpt_save(dir, &b.meta, NULL, 3), CPA_ERR_ARG);
    CHECK_STATUS(cpa_ckpt_load(NULL, NULL, NULL, b.arr, 3), CPA_ERR_ARG);
    CHECK_STATUS(cpa_ckpt_load(dir, NULL, NULL, nodata, 1), CPA_ERR_ARG);
    CHECK(!cpa_ckpt_exists(NULL));

    /* After all that, the first checkpoint is still the one on disk. */
    state_sentinel(&c);
    CHECK_OK(cpa_ckpt_load(dir, CONFIG, &c.meta, c.arr, 3));
    CHECK(state_equal(&a, &c));
    CHECK(count_temps(dir) == 0);
    remove_tree(dir);
}

int main(void)
{
    if (!tmp_dir_create("cpattn_test_ckpt"))
        return 1;
    RUN_TEST(test_roundtrip);
    RUN_TEST(test_overwrite);
    RUN_TEST(test_corruption);
    RUN_TEST(test_mismatch);
    RUN_TEST(test_failed_save);
    remove_tree(tmp_dir);
    return TEST_SUMMARY();
}
