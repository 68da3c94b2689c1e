/*
 * fuzz_ckpt.c — libFuzzer harness for the checkpoint reader
 * (src/model/checkpoint.c: cpa_ckpt_load, cpa_ckpt_peek).
 *
 * Byte 0 of the input steers, bytes 1.. are DIR/checkpoint.bin.  So that
 * mutations get past the checksum into the structure behind it, bit 0 of
 * byte 0 rewrites the file's last 32 bytes with the SHA-256 of the rest
 * (format 2) and bit 1 its last 8 bytes with the FNV-1a of the rest
 * (format 1).  The file is then loaded against a small model (config
 * "layers=2 hidden=8 heads=2", arrays params[4], adam_m[2], adam_v[3]),
 * loaded with no expectations, and peeked.  Properties: every refusal has a
 * printable message; a refused load leaves the caller's arrays untouched
 * (checked by a canary); an accepted one returns a NUL-terminated config and
 * a non-negative iteration.
 * Seeds: tests/fuzz/corpus/ckpt; dictionary: tests/fuzz/ckpt.dict.
 */
#include "fuzz_common.h"

#include "checkpoint.h"
#include "internal.h"

#include <sys/stat.h>

static char path[600];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_init_file(path, sizeof path, "checkpoint.bin");
    return 0;
}

static void fix_sums(uint8_t *p, size_t n, int how)
{
    if ((how & 1) && n >= 32) {
        cpa_sha256 h;
        cpa_sha256_init(&h);
        cpa_sha256_update(&h, p, n - 32);
        cpa_sha256_final(&h, p + n - 32);
    }
    if ((how & 2) && n >= 8) {
        uint64_t h = 0xcbf29ce484222325ULL;
        for (size_t i = 0; i + 8 < n; ++i)
            h = (h ^ p[i]) * 0x100000001b3ULL;
        for (int i = 0; i < 8; ++i)
            p[n - 8 + i] = (uint8_t)(h >> (8 * i));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const size_t n = size - 1;
    uint8_t *file = malloc(n ? n : 1);
    memcpy(file, data + 1, n);
    fix_sums(file, n, data[0]);
    fuzz_write(path, file, n);
    free(file);

    enum { CANARY = 0x5a };
    float a[4], b[2], c[3];
    memset(a, CANARY, sizeof a), memset(b, CANARY, sizeof b), memset(c, CANARY, sizeof c);
    const cpa_ckpt_array arrays[3] = {{"params", a, 4}, {"adam_m", b, 2}, {"adam_v", c, 3}};
    cpa_ckpt_meta meta;
    cpa_status s = cpa_ckpt_load(fuzz_dir, "layers=2\nhidden=8\nheads=2\n", &meta, arrays, 3);
    fuzz_check_message(s, "cpa_ckpt_load");
    if (s == CPA_OK) {
        if (!memchr(meta.config, '\0', sizeof meta.config) || meta.iteration < 0)
            abort();
    } else if (s != CPA_ERR_IO) {
        /* Refused after checking the whole file: nothing was written. */
        const unsigned char *bytes[3] = {(void *)a, (void *)b, (void *)c};
        const size_t sizes[3] = {sizeof a, sizeof b, sizeof c};
        for (int i = 0; i < 3; ++i)
            for (size_t j = 0; j < sizes[i]; ++j)
                if (bytes[i][j] != CANARY)
                    abort();
    }
    s = cpa_ckpt_load(fuzz_dir, NULL, NULL, NULL, 0);
    fuzz_check_message(s, "cpa_ckpt_load (no expectations)");
    s = cpa_ckpt_peek(fuzz_dir, &meta);
    fuzz_check_message(s, "cpa_ckpt_peek");
    if (s == CPA_OK && !memchr(meta.config, '\0', sizeof meta.config))
        abort();
    return 0;
}
