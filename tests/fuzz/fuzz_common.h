/*
 * fuzz_common.h — what the libFuzzer harnesses of tests/fuzz/ share: a
 * private scratch folder per process, writing the input to a file in it,
 * and the two properties every reader must keep whatever the bytes are —
 * a refusal carries a message, and no message carries a raw control byte
 * from the file (they are escaped before anything reaches a terminal).
 * A violated property calls abort(), which libFuzzer reports as a crash
 * with the input that caused it.
 */
#ifndef CPATTN_FUZZ_COMMON_H
#define CPATTN_FUZZ_COMMON_H

#include "cpattn.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The scratch folder: $TMPDIR (or /tmp)/cpattn-fuzz.XXXXXX, made once. */
static char fuzz_dir[512];

static void fuzz_make_dir(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(fuzz_dir, sizeof fuzz_dir, "%s/cpattn-fuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(fuzz_dir)) {
        perror("mkdtemp");
        abort();
    }
}

/* LLVMFuzzerInitialize of a harness that reads one file, `name`, from the
 * scratch folder: make the folder and the file's path. */
static void fuzz_init_file(char *path, size_t cap, const char *name)
{
    fuzz_make_dir();
    snprintf(path, cap, "%s/%s", fuzz_dir, name);
}

/* Write n bytes to `path` (replacing it). */
static void fuzz_write(const char *path, const uint8_t *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

/* A refusal must say why, in printable text (tab and newline allowed). */
static void fuzz_check_message(cpa_status s, const char *what)
{
    if (s == CPA_OK)
        return;
    const char *m = cpa_last_error();
    if (!m || !*m) {
        fprintf(stderr, "%s failed with status %d and no message\n", what, (int)s);
        abort();
    }
    for (const unsigned char *p = (const unsigned char *)m; *p; ++p)
        if ((*p < 0x20 && *p != '\t' && *p != '\n') || *p == 0x7f) {
            fprintf(stderr, "%s: raw control byte 0x%02x in the message\n", what, *p);
            abort();
        }
}

#endif
