/*
 * error.c — status names, the per-thread last-error message, and the
 * library's allocator (aligned, with a failure-injection hook for tests).
 */
#define _DEFAULT_SOURCE 1 /* madvise, MADV_HUGEPAGE */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static _Thread_local char last_error[1024];

const char *cpa_status_string(cpa_status status)
{
    switch (status) {
    case CPA_OK: return "ok";
    case CPA_ERR_ARG: return "invalid argument";
    case CPA_ERR_NOMEM: return "out of memory";
    case CPA_ERR_IO: return "I/O error";
    case CPA_ERR_FORMAT: return "malformed file";
    case CPA_ERR_MPI: return "MPI error";
    case CPA_ERR_NUMERIC: return "non-finite value";
    case CPA_ERR_INTERNAL: return "internal error";
    case CPA_ERR_TIMEOUT: return "communication timed out";
    }
    return "unknown status";
}

const char *cpa_last_error(void) { return last_error; }

void cpa_clear_error(void) { last_error[0] = '\0'; }

cpa_status cpa_error(cpa_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

static long fail_alloc_countdown;

void cpa_debug_fail_alloc_after(long n) { fail_alloc_countdown = n; }

/* Bytes requested from cpa_malloc so far (tests compare memory estimates
 * with what was really allocated). */
static _Atomic long long alloc_bytes_total;
long long cpa_debug_alloc_bytes(void) { return alloc_bytes_total; }

void *cpa_malloc(size_t bytes, const char *what)
{
    if (fail_alloc_countdown > 0 && --fail_alloc_countdown == 0) {
        cpa_error(CPA_ERR_NOMEM, "cannot allocate %zu bytes for %s (injected failure)", bytes,
                  what);
        return NULL;
    }
    void *p = cpa_alloc_big(bytes);
    if (p)
        alloc_bytes_total += (long long)bytes;
    if (!p)
        cpa_error(CPA_ERR_NOMEM, "cannot allocate %zu bytes for %s", bytes, what);
    return p;
}

void *cpa_alloc_big(size_t bytes)
{
    /* Large blocks start on a 2 MiB boundary and ask for transparent huge
     * pages: tensors are walked with strides of kilobytes (one row per 4 KiB
     * page in bshd), and with 4 KiB pages nearly every row access misses the
     * TLB.  Debian's default THP mode, "madvise", grants them only on
     * request.  Small blocks are 64-byte aligned. */
    const size_t huge = (size_t)2 << 20;
    if (bytes >= 2 * huge) {
        size_t rounded = (bytes + huge - 1) / huge * huge;
        void *p = aligned_alloc(huge, rounded);
#ifdef MADV_HUGEPAGE
        if (p)
            madvise(p, rounded, MADV_HUGEPAGE); /* advice: failure changes nothing */
#endif
        return p;
    }
    size_t rounded = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, rounded ? rounded : 64);
}

void *cpa_calloc(size_t bytes, const char *what)
{
    void *p = cpa_malloc(bytes, what);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void cpa_free(void *p) { free(p); }

float *cpa_alloc_floats(int64_t count)
{
    if (count < 0 || (uint64_t)count > (SIZE_MAX - 64) / sizeof(float))
        return NULL;
    return cpa_alloc_big((size_t)count * sizeof(float));
}

const char *cpa_escape(char *buf, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    if (cap == 0)
        return buf;
    for (size_t i = 0; i < n; ++i) {
        unsigned char c = (unsigned char)s[i];
        char one[5];
        int len;
        if (c >= 0x20 && c <= 0x7e && c != '\\') {
            one[0] = (char)c;
            len = 1;
        } else {
            len = snprintf(one, sizeof one, "\\x%02x", c);
        }
        if (o + (size_t)len + 4 >= cap) { /* room for "..." and the NUL */
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(buf + o, one, (size_t)len);
        o += (size_t)len;
    }
    buf[o] = '\0';
    return buf;
}
