/*
 * test_core.c — the core layer: status names and the last-error message,
 * tensor views for each attention layout (strides checked against the
 * memory order each layout promises), layout names, allocation failures
 * surfacing as CPA_ERR_NOMEM from a public call, the sharded digest (the
 * parts of any split add up to the whole), and the algorithm table's
 * self-description (ids are indices, names parse back, unknown ids refused).
 */
#include "cpattn.h"
#include "internal.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_status_and_errors(void)
{
    for (int s = CPA_OK; s <= CPA_ERR_TIMEOUT; ++s)
        CHECK(strlen(cpa_status_string((cpa_status)s)) > 0);
    CHECK(strcmp(cpa_status_string((cpa_status)99), "unknown status") == 0);
    cpa_clear_error();
    CHECK(cpa_last_error()[0] == '\0');
    CHECK(cpa_error(CPA_ERR_ARG, "value %d is wrong", 7) == CPA_ERR_ARG);
    CHECK(strcmp(cpa_last_error(), "value 7 is wrong") == 0);
    cpa_clear_error();
    CHECK(cpa_last_error()[0] == '\0');
}

/* Element (b, s, n, d) must sit where each layout's memory order puts it. */
static void test_layout_views(void)
{
    const int64_t B = 2, S = 5, N = 3, D = 4;
    float buf[2 * 5 * 3 * 4];
    for (int l = 0; l < 3; ++l) {
        cpa_tensor t = cpa_tensor_attn(buf, (cpa_layout)l, B, S, N, D);
        CHECK(t.ndim == 4 && cpa_tensor_numel(&t) == B * S * N * D);
        int ok = 1;
        for (int64_t b = 0; b < B; ++b)
            for (int64_t s = 0; s < S; ++s)
                for (int64_t n = 0; n < N; ++n)
                    for (int64_t d = 0; d < D; ++d) {
                        int64_t off = b * t.stride[0] + s * t.stride[1] + n * t.stride[2] +
                                      d * t.stride[3];
                        int64_t want = l == CPA_LAYOUT_BSHD   ? ((b * S + s) * N + n) * D + d
                                       : l == CPA_LAYOUT_SBHD ? ((s * B + b) * N + n) * D + d
                                                              : ((b * N + n) * S + s) * D + d;
                        ok &= off == want;
                    }
        CHECK_MSG(ok, "layout %s strides do not match its memory order", cpa_layout_name((cpa_layout)l));
        cpa_layout back;
        CHECK_OK(cpa_layout_parse(cpa_layout_name((cpa_layout)l), &back));
        CHECK(back == (cpa_layout)l);
    }
    cpa_layout x;
    CHECK_STATUS(cpa_layout_parse("bhsd", &x), CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "bshd, sbhd or bnsd") != NULL);
    CHECK_STATUS(cpa_layout_parse(NULL, &x), CPA_ERR_ARG);

    int64_t shape[3] = {2, 3, 4};
    cpa_tensor c = cpa_tensor_make(buf, 3, shape);
    CHECK(c.stride[0] == 12 && c.stride[1] == 4 && c.stride[2] == 1);
}

/* An allocation failure inside the library is a status, not a crash. */
static void test_alloc_failure(void)
{
    cpa_attn_ctx *ctx = NULL;
    cpa_attn_ctx_config cfg = {64, 1, CPA_ISA_AUTO};
    cpa_debug_fail_alloc_after(1);
    CHECK_STATUS(cpa_attn_ctx_create(&cfg, &ctx), CPA_ERR_NOMEM);
    cpa_debug_fail_alloc_after(2); /* the scratch buffer, after the context */
    CHECK_STATUS(cpa_attn_ctx_create(&cfg, &ctx), CPA_ERR_NOMEM);
    CHECK(strstr(cpa_last_error(), "scratch") != NULL);
    cpa_debug_fail_alloc_after(0);
    CHECK_OK(cpa_attn_ctx_create(&cfg, &ctx));
    cpa_attn_ctx_destroy(ctx);
    cpa_attn_ctx_destroy(NULL);
}

/* FIPS 180-4 test vectors, whole and fed in ragged pieces. */
static void hex_of(const unsigned char *d, char *out)
{
    for (int i = 0; i < 32; ++i)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void test_sha256(void)
{
    static const struct {
        const char *msg;
        const char *hex;
    } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; ++i) {
        unsigned char d[32];
        char hex[65];
        cpa_sha256 s;
        cpa_sha256_init(&s);
        cpa_sha256_update(&s, v[i].msg, strlen(v[i].msg));
        cpa_sha256_final(&s, d);
        hex_of(d, hex);
        CHECK_MSG(strcmp(hex, v[i].hex) == 0, "sha256(\"%s\") = %s", v[i].msg, hex);
        /* The same message one byte at a time. */
        cpa_sha256_init(&s);
        for (const char *p = v[i].msg; *p; ++p)
            cpa_sha256_update(&s, p, 1);
        cpa_sha256_final(&s, d);
        hex_of(d, hex);
        CHECK(strcmp(hex, v[i].hex) == 0);
    }
    /* One million 'a', in pieces of 1000 (crosses block boundaries). */
    char chunk[1000];
    memset(chunk, 'a', sizeof chunk);
    cpa_sha256 s;
    cpa_sha256_init(&s);
    for (int i = 0; i < 1000; ++i)
        cpa_sha256_update(&s, chunk, sizeof chunk);
    unsigned char d[32];
    char hex[65];
    cpa_sha256_final(&s, d);
    hex_of(d, hex);
    CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0);
}

/* Bytes from files are printed escaped. */
static void test_escape(void)
{
    char buf[64];
    CHECK(strcmp(cpa_escape(buf, sizeof buf, "ab\x1b[2J\\\n", 8), "ab\\x1b[2J\\x5c\\x0a") == 0);
    CHECK(strcmp(cpa_escape(buf, 8, "abcdefghijkl", 12), "abc...") == 0);
}

/* Digests of every rank's rows, summed, equal the digest of the whole, in
 * any layout; one flipped bit changes it. */
static void test_digest_rows(void)
{
    const int64_t B = 2, S = 24, N = 3, D = 5;
    float *whole = cpa_alloc_floats(B * S * N * D), *part = cpa_alloc_floats(B * S * N * D);
    cpa_tensor w = cpa_tensor_attn(whole, CPA_LAYOUT_BSHD, B, S, N, D);
    cpa_tensor_fill_uniform(w, 3, 1, S, 0);
    const uint64_t want = cpa_tensor_digest_rows(w, S, (cpa_rows){NULL, 0});
    const cpa_split splits[] = {{.kind = CPA_SPLIT_CONTIGUOUS, .P = 3, .U = 1},
                                {.kind = CPA_SPLIT_ZIGZAG, .P = 4, .U = 1},
                                {.kind = CPA_SPLIT_ZIGZAG, .P = 6, .U = 2}};
    for (size_t i = 0; i < sizeof splits / sizeof splits[0]; ++i)
        for (int lay = 0; lay < 3; ++lay) {
            uint64_t sum = 0;
            for (int r = 0; r < splits[i].P; ++r) {
                const int64_t Sl = S / splits[i].P;
                cpa_tensor l = cpa_tensor_attn(part, (cpa_layout)lay, B, Sl, N, D);
                cpa_piece pc[CPA_SPLIT_MAX_PIECES];
                int np = 0;
                CHECK_OK(cpa_shard(splits[i], r, w, l));
                CHECK_OK(cpa_split_pieces(splits[i], S, r, pc, &np));
                sum += cpa_tensor_digest_rows(l, S, (cpa_rows){pc, np});
            }
            CHECK_MSG(sum == want, "split %zu layout %d: parts sum to %016llx, whole %016llx", i,
                      lay, (unsigned long long)sum, (unsigned long long)want);
        }
    uint32_t bits;
    memcpy(&bits, &whole[7], 4);
    bits ^= 1u;
    memcpy(&whole[7], &bits, 4);
    CHECK(cpa_tensor_digest_rows(w, S, (cpa_rows){NULL, 0}) != want);
    free(whole);
    free(part);
}

static void test_algo_table(void)
{
    CHECK(cpa_algo_count() >= 4);
    for (int i = 0; i < cpa_algo_count(); ++i) {
        cpa_algo_info info;
        cpa_algo a = (cpa_algo)-1;
        CHECK_OK(cpa_algo_describe((cpa_algo)i, &info));
        CHECK(info.name && info.summary && strlen(info.summary) > 10);
        CHECK_OK(cpa_algo_parse(info.name, &a));
        CHECK_MSG(a == (cpa_algo)i, "%s parses to %d, not its index %d", info.name, (int)a, i);
        CHECK(strcmp(cpa_algo_name((cpa_algo)i), info.name) == 0);
    }
    cpa_algo_info info;
    CHECK(cpa_algo_describe((cpa_algo)cpa_algo_count(), &info) == CPA_ERR_ARG);
    cpa_algo a;
    CHECK(cpa_algo_parse("ring_cp_algo", &a) == CPA_ERR_ARG);
    CHECK(strstr(cpa_last_error(), "allgather_cp_algo") != NULL); /* the choices are named */
    CHECK(cpa_algo_parse("allgather_cp_algo", &a) == CPA_OK && a == CPA_ALGO_ALLGATHER);
}

int main(void)
{
    RUN_TEST(test_status_and_errors);
    RUN_TEST(test_layout_views);
    RUN_TEST(test_alloc_failure);
    RUN_TEST(test_sha256);
    RUN_TEST(test_escape);
    RUN_TEST(test_digest_rows);
    RUN_TEST(test_algo_table);
    return TEST_SUMMARY();
}
