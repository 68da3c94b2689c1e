/*
 * internal.h — helpers shared by cpattn's own sources, never installed.
 *
 * Error convention (after UCX): the function that first detects an error
 * writes the message with cpa_error() and returns its status; callers only
 * propagate with CPA_TRY.  Allocation goes through cpa_malloc so that tests
 * can inject failures.
 */
#ifndef CPATTN_INTERNAL_H
#define CPATTN_INTERNAL_H

#include "cpattn.h"

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define CPA_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CPA_PRINTF(a, b)
#endif

/* Record `status` with a printf-style message as this thread's last error;
 * returns `status` so a detector can `return cpa_error(...)`. */
cpa_status cpa_error(cpa_status status, const char *fmt, ...) CPA_PRINTF(2, 3);

/* Propagate a failing status without adding a message. */
#define CPA_TRY(expr)                         \
    do {                                      \
        cpa_status cpa_try_s_ = (expr);       \
        if (cpa_try_s_ != CPA_OK)             \
            return cpa_try_s_;                \
    } while (0)

/* 64-byte aligned allocation (NULL on failure, with the error recorded).
 * `what` names the buffer for the message.  cpa_free accepts NULL. */
void *cpa_malloc(size_t bytes, const char *what);
void *cpa_calloc(size_t bytes, const char *what);
void cpa_free(void *p);
/* Hashing.  cpa_mix64: splitmix64's finaliser (Steele, Lea, Flood 2014),
 * a bijection on 64 bits with full avalanche, for counter-based random
 * values; cpa_fnv1a64: FNV-1a over bytes, for digests and the format-1
 * checkpoint checksum (start from CPA_FNV_OFFSET). */
#define CPA_GOLDEN_GAMMA 0x9e3779b97f4a7c15ULL
#define CPA_FNV_OFFSET 0xcbf29ce484222325ULL

static inline uint64_t cpa_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t cpa_fnv1a64(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    for (size_t i = 0; i < n; ++i)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

/* SHA-256 (sha256.c), streaming. */
typedef struct cpa_sha256 {
    uint32_t h[8];
    uint64_t len; /* bytes so far */
    unsigned char block[64];
    size_t used;
} cpa_sha256;
void cpa_sha256_init(cpa_sha256 *s);
void cpa_sha256_update(cpa_sha256 *s, const void *data, size_t n);
void cpa_sha256_final(cpa_sha256 *s, unsigned char digest[32]);

/* Bytes that came from a file, made safe to print: printable ASCII is
 * kept, every other byte (control characters, escape sequences, UTF-8) and
 * the backslash become \xNN; "..." ends a text cut to fit `cap`.  Returns
 * `buf`.  Every message quoting file content goes through this, so a
 * crafted file cannot drive the user's terminal. */
const char *cpa_escape(char *buf, size_t cap, const char *s, size_t n);

/* The allocation behind cpa_malloc, without error reporting or injected
 * failures: 64-byte aligned; blocks of 4 MiB and more are 2 MiB aligned and
 * advised to use transparent huge pages.  Free with free() / cpa_free. */
void *cpa_alloc_big(size_t bytes);

/* Test hook: the bytes cpa_malloc/cpa_calloc handed out so far. */
long long cpa_debug_alloc_bytes(void);

/* Test hook: make the n-th following cpa_malloc/cpa_calloc fail (n >= 1);
 * 0 disables.  Not thread-safe; for unit tests only. */
void cpa_debug_fail_alloc_after(long n);

#endif /* CPATTN_INTERNAL_H */
