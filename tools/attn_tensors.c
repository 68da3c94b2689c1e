/*
 * attn_tensors.c — one rank's rows of a `cpattn attn` run (attn_tensors.h).
 */
#include "attn_tensors.h"
#include "cmd.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define fail(...) tool_fail(EXIT_RUNTIME, __VA_ARGS__)

const char *const attn_tensor_names[T_COUNT] = {"q",   "k",   "v",  "dout", "out",
                                                "lse", "dq", "dk", "dv"};

void attn_dims(const attn_shape *sh, int i, int64_t *N, int64_t *D)
{
    switch (i) {
    case T_Q: case T_DQ: *N = sh->H, *D = sh->D; break;
    case T_K: case T_DK: *N = sh->G, *D = sh->D; break;
    case T_V: case T_DV: *N = sh->G, *D = sh->Dv; break;
    case T_LSE: *N = sh->H, *D = 1; break;
    default: *N = sh->H, *D = sh->Dv; break; /* dout, out */
    }
}

static int64_t numel(const attn_shape *sh, int i, int64_t S)
{
    int64_t N, D;
    attn_dims(sh, i, &N, &D);
    return sh->B * S * N * D;
}

double attn_bytes(const attn_shape *sh, unsigned mask, int64_t S)
{
    double bytes = 0;
    for (int i = 0; i < T_COUNT; ++i)
        if (mask & T_BIT(i))
            bytes += 4.0 * (double)numel(sh, i, S);
    return bytes;
}

int attn_set_alloc(attn_set *s, const attn_shape *sh, cpa_split split, int shard, unsigned mask)
{
    memset(s, 0, sizeof *s);
    s->sh = *sh;
    s->Sl = cpa_split_rows(split, sh->S, shard); /* any S: this shard's own count */
    if (s->Sl < 0 || cpa_split_pieces(split, sh->S, shard, s->pieces, &s->npieces) != CPA_OK)
        return tool_agree(fail("internal error: %s", cpa_last_error()));
    int rc = 0;
    for (int i = 0; i < T_COUNT && !rc; ++i) {
        if (!(mask & T_BIT(i)))
            continue;
        const int64_t n = numel(sh, i, s->Sl);
        if (!(s->t[i] = cpa_alloc_floats(n)))
            rc = fail("out of memory: cannot allocate %lld floats for %s", (long long)n,
                      attn_tensor_names[i]);
    }
    return tool_agree(rc);
}

void attn_set_free(attn_set *s)
{
    for (int i = 0; i < T_COUNT; ++i)
        free(s->t[i]);
    memset(s, 0, sizeof *s);
}

cpa_tensor attn_view(const attn_set *s, int i)
{
    int64_t N, D;
    attn_dims(&s->sh, i, &N, &D);
    if (i == T_LSE) {
        const int64_t shape[3] = {s->sh.B, s->sh.H, s->Sl};
        return cpa_tensor_make(s->t[i], 3, shape);
    }
    return cpa_tensor_attn(s->t[i], s->sh.layout, s->sh.B, s->Sl, N, D);
}

cpa_tensor attn_view4(const attn_set *s, int i)
{
    if (i != T_LSE)
        return attn_view(s, i);
    const int64_t H = s->sh.H, Sl = s->Sl;
    cpa_tensor t = {.data = s->t[i], .ndim = 4, .shape = {s->sh.B, Sl, H, 1},
                    .stride = {H * Sl, 1, Sl, 1}};
    return t;
}

cpa_rows attn_rows(const attn_set *s)
{
    cpa_rows r = {s->pieces, s->npieces};
    return r;
}

/* The rows of piece p of a 4-d view. */
static cpa_tensor piece_view(cpa_tensor t, const cpa_piece *p)
{
    t.data += p->row * t.stride[1];
    t.shape[1] = p->len;
    return t;
}

void attn_fill_random(attn_set *s, uint64_t seed)
{
    for (int i = 0; i < 4; ++i)
        for (int p = 0; p < s->npieces; ++p)
            cpa_tensor_fill_uniform(piece_view(attn_view(s, i), &s->pieces[p]), seed,
                                    (uint64_t)i, s->sh.S, s->pieces[p].pos);
}

/* A failed library call: its message, with the path if it lacks it. */
static int npy_fail(cpa_status st, const char *path)
{
    const char *msg = cpa_last_error();
    if (strstr(msg, path))
        return fail("%s: %s", cpa_status_string(st), msg);
    return fail("%s: %s: %s", cpa_status_string(st), path, msg);
}

/* NaN and Inf would propagate as in a plain softmax attention; a user
 * almost never means that, so they are refused unless asked.  The element
 * is named by its global index. */
static int refuse_non_finite(const attn_set *s, int i, const char *path)
{
    int64_t at[CPA_MAX_DIMS];
    cpa_tensor t = attn_view(s, i);
    if (cpa_tensor_check_finite(t, path, at) == CPA_OK)
        return 0;
    const float x = t.data[at[0] * t.stride[0] + at[1] * t.stride[1] + at[2] * t.stride[2] +
                           at[3] * t.stride[3]];
    int64_t pos = at[1];
    for (int p = 0; p < s->npieces; ++p)
        if (at[1] >= s->pieces[p].row && at[1] < s->pieces[p].row + s->pieces[p].len)
            pos = s->pieces[p].pos + at[1] - s->pieces[p].row;
    return fail("%s: element [%lld, %lld, %lld, %lld] is %s (the first non-finite value of "
                "this rank's rows); the inputs must be finite (--allow-non-finite runs anyway: "
                "NaN and Inf then propagate as in a plain softmax attention)", path,
                (long long)at[0], (long long)pos, (long long)at[2], (long long)at[3],
                isnan(x) ? "NaN" : x > 0 ? "+inf" : "-inf");
}

int attn_load(attn_set *s, const char *dir, int forward_only, int allow_non_finite)
{
    const int n = forward_only ? 3 : 4; /* dout.npy is not read with --forward-only */
    if (forward_only)
        memset(s->t[T_DOUT], 0, sizeof(float) * (size_t)numel(&s->sh, T_DOUT, s->Sl));
    for (int i = 0; i < n; ++i) {
        char path[4096];
        char name[16];
        snprintf(name, sizeof name, "%s.npy", attn_tensor_names[i]);
        tool_join_path(path, sizeof path, dir, name); /* its length was checked before */
        /* Collective: the same status and message on every rank. */
        cpa_status st = cpa_npy_read_rows(MPI_COMM_WORLD, path, 1, attn_rows(s), attn_view(s, i));
        int rc = tool_agree(st == CPA_OK ? 0 : npy_fail(st, path));
        if (!rc && !allow_non_finite)
            rc = tool_agree(refuse_non_finite(s, i, path));
        if (rc)
            return rc;
    }
    return 0;
}

int attn_save(const attn_set *s, const char *dir, unsigned mask)
{
    int rc = 0;
    if (tool_rank() == 0 && !tool_make_dirs(dir))
        rc = fail("I/O error: --save %s: cannot create directory: %s", dir, strerror(errno));
    if ((rc = tool_agree(rc)))
        return rc;
    const attn_shape *sh = &s->sh;
    for (int i = 0; i < T_COUNT && !rc; ++i) {
        if (!(mask & T_BIT(i)))
            continue;
        char path[4096], name[16];
        snprintf(name, sizeof name, "%s.npy", attn_tensor_names[i]);
        if (!tool_join_path(path, sizeof path, dir, name)) {
            rc = tool_agree(fail("--save %s: path too long", dir));
            break;
        }
        int64_t N, D;
        attn_dims(sh, i, &N, &D);
        const int64_t rows4[4] = {sh->B, sh->S, N, D}, lse3[3] = {sh->B, sh->H, sh->S};
        cpa_status st = i == T_LSE
                            ? cpa_npy_write_rows(MPI_COMM_WORLD, path, 3, lse3, 2, attn_rows(s),
                                                 attn_view(s, i))
                            : cpa_npy_write_rows(MPI_COMM_WORLD, path, 4, rows4, 1, attn_rows(s),
                                                 attn_view(s, i));
        rc = tool_agree(st == CPA_OK ? 0 : npy_fail(st, path));
    }
    if (!rc)
        tool_say("saved to %s\n", dir);
    return rc;
}

int attn_print_digests(const attn_set *s, unsigned mask)
{
    uint64_t d[T_COUNT] = {0};
    for (int i = 0; i < T_COUNT; ++i)
        if (mask & T_BIT(i))
            d[i] = cpa_tensor_digest_rows(attn_view4(s, i), s->sh.S, attn_rows(s));
    if (cpa_comm_allreduce(d, T_COUNT, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD, "the digests") !=
        CPA_OK)
        return tool_agree(fail("%s", cpa_last_error()));
    if (tool_rank() == 0) {
        printf("digest");
        for (int i = 0; i < T_COUNT; ++i)
            if (mask & T_BIT(i))
                printf(" %s=%016llx", attn_tensor_names[i], (unsigned long long)d[i]);
        printf("\n");
    }
    return 0;
}
