/*
 * test_npy_rows.c — the sharded .npy reader and writer (cpa_npy_read_rows,
 * cpa_npy_write_rows) under `mpiexec -n P` for any P >= 1.
 *
 * Every value of a global array is an exact integer in fp32 that encodes
 * its flat index, and every comparison is bitwise (memcmp), so a row read
 * from or written to the wrong place shows up.  Cases: write then read back
 * with zigzag and contiguous splits (cpa_split_pieces) in the bshd, sbhd
 * and bnsd layouts (the last two are strided views, staged); the whole
 * file compared with cpa_npy_load on every rank and byte for byte with
 * what cpa_npy_save writes for the whole array (header included); an lse
 * [B, H, S] with axis 2, C-contiguous and padded; pieces out of position
 * order; 1-D and 2-D arrays along axis 0; the derived-type path of large
 * counts (threshold lowered); and the errors, each of which must come back
 * with the same status and message on every rank: a missing file, garbage
 * and a malformed header, a truncated file, a shape mismatch, an axis out
 * of range, pieces outside the array or not summing to the local length
 * (on one rank only), an allocation failing on one rank, overlapping and
 * missing coverage on write, ranks passing different shapes, an unwritable
 * folder (the old file kept, no temporary left: the folder is listed) and
 * a rename that fails after the data are written (the temporary removed).
 * The verdict is summed over all ranks and printed by rank 0.
 */
#include "comm.h"
#include "internal.h"
#include "test.h"
#include "test_files.h"

#include <mpi.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

static int rank_, P_;

/* ---- helpers ----------------------------------------------------------------- */

static int64_t prod(int n, const int64_t *s)
{
    int64_t p = 1;
    for (int i = 0; i < n; ++i)
        p *= s[i];
    return p;
}

/* A global C-order array whose values encode (salt, flat index) exactly. */
static float *make_global(int ndim, const int64_t *shape, int salt)
{
    int64_t n = prod(ndim, shape);
    float *g = malloc(sizeof(float) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; ++i)
        g[i] = (float)((i * 131 + salt * 7919 + 1) % 8388608);
    return g;
}

/* The reference: copy this rank's rows between the global C-order array
 * `g` and the local view, element by element (count 0: local row j is
 * position j). */
static void ref_copy(float *g, const int64_t *gs, int ndim, int axis, const cpa_piece *p, int n,
                     cpa_tensor local, int to_global)
{
    int64_t numel = cpa_tensor_numel(&local);
    for (int64_t e = 0; e < numel; ++e) {
        int64_t i[CPA_MAX_DIMS] = {0}, rem = e;
        for (int d = ndim - 1; d >= 0; --d) {
            i[d] = rem % local.shape[d];
            rem /= local.shape[d];
        }
        int64_t j = i[axis], pos = n == 0 ? j : -1;
        for (int k = 0; k < n; ++k)
            if (j >= p[k].row && j < p[k].row + p[k].len)
                pos = p[k].pos + (j - p[k].row);
        int64_t gi = 0, off = 0;
        for (int d = 0; d < ndim; ++d) {
            gi = gi * gs[d] + (d == axis ? pos : i[d]);
            off += i[d] * local.stride[d];
        }
        if (to_global)
            g[gi] = local.data[off];
        else
            local.data[off] = g[gi];
    }
}

/* The status and message are what this case expects, and the same on
 * every rank. */
static void check_agreed(cpa_status st, cpa_status want, const char *needle, const char *what)
{
    const char *msg = cpa_last_error();
    CHECK_MSG(st == want, "%s: rank %d got %s (want %s): %s", what, rank_, cpa_status_string(st),
              cpa_status_string(want), msg);
    if (needle)
        CHECK_MSG(strstr(msg, needle) != NULL, "%s: rank %d: message lacks \"%s\": %s", what,
                  rank_, needle, msg);
    long long v[2] = {(long long)st,
                      (long long)(cpa_fnv1a64(CPA_FNV_OFFSET, msg, strlen(msg)) >> 1)};
    long long lo[2], hi[2];
    MPI_Allreduce(v, lo, 2, MPI_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(v, hi, 2, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
    CHECK_MSG(lo[0] == hi[0] && lo[1] == hi[1], "%s: ranks differ in status or message (rank "
                                                 "%d: %s)", what, rank_, msg);
    if (rank_ == 0)
        fprintf(stderr, "  %s -> %s: %s\n", what, cpa_status_string(st), msg);
}

/* Both files exist with the same bytes (read on every rank). */
static void check_same_bytes(const char *a, const char *b, const char *what)
{
    size_t na = 0, nb = 0;
    unsigned char *x = read_bytes(a, &na), *y = read_bytes(b, &nb);
    CHECK_MSG(x && y && na == nb && memcmp(x, y, na) == 0,
              "%s: rank %d: %s (%zu bytes) differs from %s (%zu bytes)", what, rank_, a, na, b,
              nb);
    free(x);
    free(y);
}

/* Every rank loads the whole file and finds `g` bitwise. */
static void check_load(const char *path, const float *g, int ndim, const int64_t *shape)
{
    float *data = NULL;
    int nd = 0;
    int64_t s[CPA_MAX_DIMS];
    CHECK_OK(cpa_npy_load(path, &data, &nd, s));
    int same = data && nd == ndim;
    for (int d = 0; same && d < ndim; ++d)
        same = s[d] == shape[d];
    CHECK_MSG(same && memcmp(data, g, sizeof(float) * (size_t)prod(ndim, shape)) == 0,
              "rank %d: cpa_npy_load(%s) differs from the global array", rank_, path);
    free(data);
}

/* Rank 0 saves the whole array with cpa_npy_save to `ref` (the bytes a
 * sharded write must reproduce). */
static void save_reference(const char *ref, float *g, int ndim, const int64_t *shape)
{
    if (rank_ == 0)
        CHECK_OK(cpa_npy_save(ref, cpa_tensor_make(g, ndim, shape)));
    MPI_Barrier(MPI_COMM_WORLD);
}

static cpa_rows split_rows(cpa_split_kind kind, int64_t S, cpa_piece *p)
{
    int n = 0;
    cpa_split sp = {.kind = kind, .P = P_, .U = 1};
    CHECK_OK(cpa_split_pieces(sp, S, rank_, p, &n));
    return (cpa_rows){p, n};
}

/* ---- round trips -------------------------------------------------------------- */

/* [B, S, N, D] with axis 1, written from and read into a `layout` view. */
static void roundtrip_attn(cpa_split_kind kind, cpa_layout layout, const char *name)
{
    const int64_t B = 2, N = 3, D = 4, c = 3;
    const int64_t S = kind == CPA_SPLIT_ZIGZAG ? 2 * P_ * c : P_ * 5;
    const int64_t L = S / P_, shape[4] = {B, S, N, D};
    char path[256], ref[256], nm[64];
    snprintf(nm, sizeof nm, "%s.npy", name);
    path_of(path, sizeof path, nm);
    snprintf(nm, sizeof nm, "%s_ref.npy", name);
    path_of(ref, sizeof ref, nm);
    float *g = make_global(4, shape, 1);
    save_reference(ref, g, 4, shape);

    cpa_piece p[CPA_SPLIT_MAX_PIECES];
    cpa_rows rows = split_rows(kind, S, p);
    size_t n = (size_t)(B * L * N * D);
    float *mine = malloc(sizeof(float) * n), *want = malloc(sizeof(float) * n),
          *back = malloc(sizeof(float) * n);
    cpa_tensor lm = cpa_tensor_attn(mine, layout, B, L, N, D);
    ref_copy(g, shape, 4, 1, p, rows.count, lm, 0);
    memcpy(want, mine, sizeof(float) * n);
    CHECK_OK(cpa_npy_write_rows(MPI_COMM_WORLD, path, 4, shape, 1, rows, lm));
    CHECK_MSG(memcmp(mine, want, sizeof(float) * n) == 0, "%s: the write changed its source",
              name);
    check_load(path, g, 4, shape);
    check_same_bytes(path, ref, name);

    memset(back, 0xff, sizeof(float) * n); /* NaNs: an unread element shows */
    CHECK_OK(cpa_npy_read_rows(MPI_COMM_WORLD, path, 1, rows,
                               cpa_tensor_attn(back, layout, B, L, N, D)));
    CHECK_MSG(memcmp(back, want, sizeof(float) * n) == 0, "%s: rank %d read other rows back",
              name, rank_);
    free(mine);
    free(want);
    free(back);
    free(g);
}

static void zigzag_bshd(void) { roundtrip_attn(CPA_SPLIT_ZIGZAG, CPA_LAYOUT_BSHD, "zz_bshd"); }
static void contiguous_bshd(void)
{
    roundtrip_attn(CPA_SPLIT_CONTIGUOUS, CPA_LAYOUT_BSHD, "ct_bshd");
}
static void zigzag_bnsd(void) { roundtrip_attn(CPA_SPLIT_ZIGZAG, CPA_LAYOUT_BNSD, "zz_bnsd"); }
static void contiguous_sbhd(void)
{
    roundtrip_attn(CPA_SPLIT_CONTIGUOUS, CPA_LAYOUT_SBHD, "ct_sbhd");
}

/* Counts above 5 take cpa_comm_float_type's derived-type path: rows of
 * N·D = 12 floats and the whole local buffer, as for arrays beyond 2^31. */
static void large_count_path(void)
{
    cpa_debug_set_max_mpi_count(5);
    roundtrip_attn(CPA_SPLIT_ZIGZAG, CPA_LAYOUT_BSHD, "big_bshd");
    roundtrip_attn(CPA_SPLIT_CONTIGUOUS, CPA_LAYOUT_BNSD, "big_bnsd");
    cpa_debug_set_max_mpi_count(0);
}

/* lse [B, H, S] along axis 2 (outer B·H, inner 1): written from a padded
 * view (staged), read into a C-contiguous one (direct), and back. */
static void lse_axis2(void)
{
    const int64_t B = 2, H = 3, S = 2 * P_ * 4, L = S / P_, shape[3] = {B, H, S};
    char path[256], ref[256];
    path_of(path, sizeof path, "lse.npy");
    path_of(ref, sizeof ref, "lse_ref.npy");
    float *g = make_global(3, shape, 2);
    save_reference(ref, g, 3, shape);
    cpa_piece p[CPA_SPLIT_MAX_PIECES];
    cpa_rows rows = split_rows(CPA_SPLIT_ZIGZAG, S, p);

    const int64_t pad = L + 2, lshape[3] = {B, H, L};
    float *padded = malloc(sizeof(float) * (size_t)(B * H * pad));
    memset(padded, 0, sizeof(float) * (size_t)(B * H * pad));
    cpa_tensor tp = {padded, 3, {B, H, L}, {H * pad, pad, 1}};
    ref_copy(g, shape, 3, 2, p, rows.count, tp, 0);
    CHECK_OK(cpa_npy_write_rows(MPI_COMM_WORLD, path, 3, shape, 2, rows, tp));
    check_load(path, g, 3, shape);
    check_same_bytes(path, ref, "lse");

    size_t n = (size_t)(B * H * L);
    float *flat = malloc(sizeof(float) * n), *want = malloc(sizeof(float) * n);
    cpa_tensor tf = cpa_tensor_make(flat, 3, lshape), tw = cpa_tensor_make(want, 3, lshape);
    ref_copy(g, shape, 3, 2, p, rows.count, tw, 0);
    memset(flat, 0xff, sizeof(float) * n);
    CHECK_OK(cpa_npy_read_rows(MPI_COMM_WORLD, path, 2, rows, tf));
    CHECK_MSG(memcmp(flat, want, sizeof(float) * n) == 0, "lse: rank %d read other rows",
              rank_);
    /* And into the padded view: the padding stays as it was. */
    for (int64_t i = 0; i < B * H * pad; ++i)
        padded[i] = -7.0f;
    CHECK_OK(cpa_npy_read_rows(MPI_COMM_WORLD, path, 2, rows, tp));
    int bad = 0;
    for (int64_t bh = 0; bh < B * H; ++bh)
        for (int64_t j = 0; j < pad; ++j)
            bad += j < L ? padded[bh * pad + j] != want[bh * L + j] : padded[bh * pad + j] != -7.0f;
    CHECK_MSG(bad == 0, "lse padded: rank %d has %d wrong elements", rank_, bad);
    free(padded);
    free(flat);
    free(want);
    free(g);
}

/* The zigzag pieces with their local rows swapped: local memory is not in
 * position order, so even a C-contiguous tensor is staged. */
static void pieces_out_of_order(void)
{
    const int64_t B = 2, N = 2, D = 3, S = 2 * P_ * 2, L = S / P_, shape[4] = {B, S, N, D};
    char path[256], ref[256];
    path_of(path, sizeof path, "swapped.npy");
    path_of(ref, sizeof ref, "swapped_ref.npy");
    float *g = make_global(4, shape, 3);
    save_reference(ref, g, 4, shape);
    cpa_piece p[CPA_SPLIT_MAX_PIECES];
    cpa_rows rows = split_rows(CPA_SPLIT_ZIGZAG, S, p);
    CHECK(rows.count == 2);
    p[0].row = p[1].len;
    p[1].row = 0;
    size_t n = (size_t)(B * L * N * D);
    float *mine = malloc(sizeof(float) * n), *back = malloc(sizeof(float) * n);
    cpa_tensor lm = cpa_tensor_attn(mine, CPA_LAYOUT_BSHD, B, L, N, D);
    ref_copy(g, shape, 4, 1, p, rows.count, lm, 0);
    CHECK_OK(cpa_npy_write_rows(MPI_COMM_WORLD, path, 4, shape, 1, rows, lm));
    check_same_bytes(path, ref, "swapped");
    memset(back, 0xff, sizeof(float) * n);
    CHECK_OK(cpa_npy_read_rows(MPI_COMM_WORLD, path, 1, rows,
                               cpa_tensor_attn(back, CPA_LAYOUT_BSHD, B, L, N, D)));
    CHECK_MSG(memcmp(back, mine, sizeof(float) * n) == 0, "swapped: rank %d read other rows",
              rank_);
    free(mine);
    free(back);
    free(g);
}

/* A 1-D [S] and a 2-D [S, 7] array along axis 0, contiguous; and reading
 * with no pieces (local row j is position j: every rank the first rows). */
static void axis0_and_no_pieces(void)
{
    for (int nd = 1; nd <= 2; ++nd) {
        const int64_t S = 4 * P_ + 0, L = S / P_, shape[2] = {S, 7};
        char path[256], ref[256];
        path_of(path, sizeof path, nd == 1 ? "a1.npy" : "a2.npy");
        path_of(ref, sizeof ref, nd == 1 ? "a1_ref.npy" : "a2_ref.npy");
        float *g = make_global(nd, shape, 4 + nd);
        save_reference(ref, g, nd, shape);
        cpa_piece p[CPA_SPLIT_MAX_PIECES];
        cpa_rows rows = split_rows(CPA_SPLIT_CONTIGUOUS, S, p);
        const int64_t lshape[2] = {L, 7};
        size_t n = (size_t)prod(nd, lshape);
        float *mine = malloc(sizeof(float) * n), *back = malloc(sizeof(float) * n);
        cpa_tensor lm = cpa_tensor_make(mine, nd, lshape);
        ref_copy(g, shape, nd, 0, p, rows.count, lm, 0);
        CHECK_OK(cpa_npy_write_rows(MPI_COMM_WORLD, path, nd, shape, 0, rows, lm));
        check_same_bytes(path, ref, nd == 1 ? "axis 0, 1-D" : "axis 0, 2-D");
        CHECK_OK(cpa_npy_read_rows(MPI_COMM_WORLD, path, 0, (cpa_rows){NULL, 0},
                                   cpa_tensor_make(back, nd, lshape)));
        CHECK_MSG(memcmp(back, g, sizeof(float) * n) == 0,
                  "no pieces: rank %d did not read the first %lld rows", rank_, (long long)L);
        free(mine);
        free(back);
        free(g);
    }
}

/* ---- read errors -------------------------------------------------------------- */

/* A good [2, S, 3, 4] file to get wrong, and this rank's zigzag rows. */
static const int64_t EB = 2, EN = 3, ED = 4;
static int64_t eS, eL;
static char good_[256];
static float *eg_, *el_;
static cpa_piece ep_[CPA_SPLIT_MAX_PIECES];
static cpa_rows erows_;

static void errors_setup(void)
{
    eS = 2 * P_ * 2;
    eL = eS / P_;
    const int64_t shape[4] = {EB, eS, EN, ED};
    path_of(good_, sizeof good_, "good.npy");
    eg_ = make_global(4, shape, 9);
    save_reference(good_, eg_, 4, shape);
    erows_ = split_rows(CPA_SPLIT_ZIGZAG, eS, ep_);
    el_ = malloc(sizeof(float) * (size_t)(EB * eL * (EN + 1) * ED));
}

static cpa_tensor elocal(int64_t L, int64_t N)
{
    return cpa_tensor_attn(el_, CPA_LAYOUT_BSHD, EB, L, N, ED);
}

static void read_errors(void)
{
    char path[256];
    path_of(path, sizeof path, "missing.npy");
    check_agreed(cpa_npy_read_rows(MPI_COMM_WORLD, path, 1, erows_, elocal(eL, EN)), CPA_ERR_IO,
                 "missing.npy: cannot open", "missing file");

    path_of(path, sizeof path, "garbage.npy");
    if (rank_ == 0)
        CHECK(write_bytes(path, "this is not a .npy file at all", 30));
    MPI_Barrier(MPI_COMM_WORLD);
    check_agreed(cpa_npy_read_rows(MPI_COMM_WORLD, path, 1, erows_, elocal(eL, EN)),
                 CPA_ERR_FORMAT, "garbage.npy: not a .npy file", "garbage");

    path_of(path, sizeof path, "badheader.npy");
    static const char bad[] = "\x93NUMPY\x01\x00\x10\x00{'descr': '<f4' ";
    if (rank_ == 0)
        CHECK(write_bytes(path, bad, sizeof bad - 1));
    MPI_Barrier(MPI_COMM_WORLD);
    check_agreed(cpa_npy_read_rows(MPI_COMM_WORLD, path, 1, erows_, elocal(eL, EN)),
                 CPA_ERR_FORMAT, "badheader.npy: malformed header", "malformed header");

    path_of(path, sizeof path, "short.npy");
    if (rank_ == 0) {
        size_t n = 0;
        unsigned char *bytes = read_bytes(good_, &n);
        CHECK(bytes && write_bytes(path, bytes, n - 4));
        free(bytes);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    check_agreed(cpa_npy_read_rows(MPI_COMM_WORLD, path, 1, erows_, elocal(eL, EN)),
                 CPA_ERR_FORMAT, "short.npy: truncated", "truncated data");

    check_agreed(cpa_npy_read_rows(MPI_COMM_WORLD, good_, 1, erows_, elocal(eL, EN + 1)),
                 CPA_ERR_ARG, "does not match the expected", "shape mismatch");
    check_agreed(cpa_npy_read_rows(MPI_COMM_WORLD, good_, 4, erows_, elocal(eL, EN)),
                 CPA_ERR_ARG, "axis 4 is outside", "axis out of range");

    /* One rank alone is wrong; every rank reports it. */
    char who[64];
    snprintf(who, sizeof who, "rank %d's piece", P_ - 1);
    cpa_piece p[CPA_SPLIT_MAX_PIECES];
    memcpy(p, ep_, sizeof p);
    if (rank_ == P_ - 1)
        p[erows_.count - 1].pos += eS;
    check_agreed(cpa_npy_read_rows(MPI_COMM_WORLD, good_, 1, (cpa_rows){p, erows_.count},
                                   elocal(eL, EN)),
                 CPA_ERR_ARG, who, "a piece outside the array on the last rank");
    memcpy(p, ep_, sizeof p);
    snprintf(who, sizeof who, "rank %d's pieces hold", P_ - 1);
    if (rank_ == P_ - 1)
        p[0].len -= 1;
    check_agreed(cpa_npy_read_rows(MPI_COMM_WORLD, good_, 1, (cpa_rows){p, erows_.count},
                                   elocal(eL, EN)),
                 CPA_ERR_ARG, who, "pieces not summing to the local length");
    /* Two pieces of one rank on the same positions (a file view cannot go back). */
    cpa_piece twice[2] = {{0, eL / 2, 0}, {eL / 2, eL / 2, 0}};
    check_agreed(cpa_npy_read_rows(MPI_COMM_WORLD, good_, 1, (cpa_rows){twice, 2},
                                   elocal(eL, EN)),
                 CPA_ERR_ARG, "both hold positions", "one rank holding a position twice");

    if (rank_ == P_ - 1)
        cpa_debug_fail_alloc_after(1);
    check_agreed(cpa_npy_read_rows(MPI_COMM_WORLD, good_, 1, erows_, elocal(eL, EN)),
                 CPA_ERR_NOMEM, "injected failure", "an allocation failing on the last rank");
    cpa_debug_fail_alloc_after(0);
    /* And everything still works after all that. */
    CHECK_OK(cpa_npy_read_rows(MPI_COMM_WORLD, good_, 1, erows_, elocal(eL, EN)));
}

/* ---- write errors ------------------------------------------------------------- */

/* Nothing named `name` and no temporary in the folder `dir`. */
static void check_no_trace(const char *dir, const char *path, const char *what)
{
    MPI_Barrier(MPI_COMM_WORLD);
    CHECK_MSG(access(path, F_OK) != 0, "%s: %s exists", what, path);
    CHECK_MSG(count_temps(dir) == 0, "%s: a temporary file is left in %s", what, dir);
}

static void write_errors(void)
{
    const int64_t shape[4] = {EB, eS, EN, ED};
    ref_copy(eg_, shape, 4, 1, ep_, erows_.count, elocal(eL, EN), 0);
    char path[256];

    path_of(path, sizeof path, "overlap.npy");
    if (P_ > 1) {
        /* The last rank writes rank 0's contiguous rows: overlap (and a gap). */
        cpa_piece p = {0, eL, rank_ == P_ - 1 ? 0 : rank_ * eL};
        check_agreed(cpa_npy_write_rows(MPI_COMM_WORLD, path, 4, shape, 1, (cpa_rows){&p, 1},
                                        elocal(eL, EN)),
                     CPA_ERR_ARG, "written by both rank 0 and rank", "overlapping coverage");
        check_no_trace(tmp_dir, path, "overlapping coverage");
    }
    cpa_piece twice[2] = {{0, eL / 2, 0}, {eL / 2, eL / 2, 0}};
    check_agreed(cpa_npy_write_rows(MPI_COMM_WORLD, path, 4, shape, 1, (cpa_rows){twice, 2},
                                    elocal(eL, EN)),
                 CPA_ERR_ARG, "both hold positions", "one rank writing a position twice");
    check_no_trace(tmp_dir, path, "one rank writing a position twice");

    /* S not a multiple of P: contiguous rows of S/P leave the last row out. */
    path_of(path, sizeof path, "gap.npy");
    const int64_t gshape[4] = {EB, eS + 1, EN, ED};
    cpa_piece cp = {0, eL, rank_ * eL};
    check_agreed(cpa_npy_write_rows(MPI_COMM_WORLD, path, 4, gshape, 1, (cpa_rows){&cp, 1},
                                    elocal(eL, EN)),
                 CPA_ERR_ARG, "are written by no rank", "missing coverage");
    check_no_trace(tmp_dir, path, "missing coverage");

    path_of(path, sizeof path, "mismatch.npy");
    check_agreed(cpa_npy_write_rows(MPI_COMM_WORLD, path, 4, shape, 1, erows_,
                                    elocal(eL, EN + 1)),
                 CPA_ERR_ARG, "does not match the global shape", "local shape mismatch");
    check_no_trace(tmp_dir, path, "local shape mismatch");
    if (P_ > 1) {
        int64_t other[4] = {EB, eS + 2 * P_, EN, ED};
        check_agreed(cpa_npy_write_rows(MPI_COMM_WORLD, path, 4, rank_ == P_ - 1 ? other : shape,
                                        1, erows_, elocal(eL, EN)),
                     CPA_ERR_ARG, "the ranks disagree on the array", "ranks passing different "
                                                                     "shapes");
        check_no_trace(tmp_dir, path, "ranks passing different shapes");
    }

    /* An unwritable folder holding an old file: refused, the old file kept,
     * no temporary.  Root ignores permissions, so as root the folder is made
     * immutable (chattr +i), which refuses even root. */
    char ro[256], old[300];
    path_of(ro, sizeof ro, "ro");
    snprintf(old, sizeof old, "%s/old.npy", ro);
    int locked = 0;
    if (rank_ == 0) {
        mkdir(ro, 0700);
        CHECK_OK(cpa_npy_save(old, cpa_tensor_make(eg_, 4, shape)));
        char cmd[512];
        snprintf(cmd, sizeof cmd, "chattr +i '%s' 2>/dev/null", ro);
        if (geteuid() != 0)
            locked = chmod(ro, 0555) == 0;
        else
            locked = system(cmd) == 0;
    }
    MPI_Bcast(&locked, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (locked) {
        size_t n0 = 0;
        unsigned char *before = read_bytes(old, &n0);
        check_agreed(cpa_npy_write_rows(MPI_COMM_WORLD, old, 4, shape, 1, erows_,
                                        elocal(eL, EN)),
                     CPA_ERR_IO, "cannot create a temporary file next to it",
                     "an unwritable folder");
        MPI_Barrier(MPI_COMM_WORLD);
        size_t n1 = 0;
        unsigned char *after = read_bytes(old, &n1);
        CHECK_MSG(before && after && n0 == n1 && memcmp(before, after, n0) == 0,
                  "unwritable folder: the old file changed");
        CHECK_MSG(count_temps(ro) == 0, "unwritable folder: a temporary is left in %s", ro);
        free(before);
        free(after);
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank_ == 0) {
            char cmd[512];
            snprintf(cmd, sizeof cmd, "chattr -i '%s' 2>/dev/null", ro);
            if (geteuid() == 0)
                CHECK(system(cmd) == 0);
            chmod(ro, 0700);
        }
    } else if (rank_ == 0) {
        fprintf(stderr, "  skip the unwritable folder: chattr +i is not possible here\n");
    }

    /* `path` is a folder: everything is written, then the rename fails;
     * the temporary must go and the folder stay. */
    char folder[256], inside[300];
    path_of(folder, sizeof folder, "afolder");
    snprintf(inside, sizeof inside, "%s/keep", folder);
    if (rank_ == 0) {
        mkdir(folder, 0700);
        CHECK(write_bytes(inside, "x", 1));
    }
    MPI_Barrier(MPI_COMM_WORLD);
    check_agreed(cpa_npy_write_rows(MPI_COMM_WORLD, folder, 4, shape, 1, erows_,
                                    elocal(eL, EN)),
                 CPA_ERR_IO, "cannot rename", "a rename failing after the write");
    MPI_Barrier(MPI_COMM_WORLD);
    struct stat sb;
    CHECK(stat(folder, &sb) == 0 && S_ISDIR(sb.st_mode) && access(inside, F_OK) == 0);
    CHECK_MSG(count_temps(tmp_dir) == 0, "failed rename: a temporary is left in %s", tmp_dir);

    /* The writes that failed left the good file alone; a good write works. */
    path_of(path, sizeof path, "after_errors.npy");
    CHECK_OK(cpa_npy_write_rows(MPI_COMM_WORLD, path, 4, shape, 1, erows_, elocal(eL, EN)));
    check_same_bytes(path, good_, "a write after the errors");
    CHECK_MSG(count_temps(tmp_dir) == 0, "a temporary is left in %s", tmp_dir);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &P_);
    int ok = rank_ != 0 || tmp_dir_create("cpa_npy_rows");
    MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Bcast(tmp_dir, (int)sizeof tmp_dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (!ok) {
        MPI_Finalize();
        return 1;
    }
    RUN_TEST(zigzag_bshd);
    RUN_TEST(contiguous_bshd);
    RUN_TEST(zigzag_bnsd);
    RUN_TEST(contiguous_sbhd);
    RUN_TEST(large_count_path);
    RUN_TEST(lse_axis2);
    RUN_TEST(pieces_out_of_order);
    RUN_TEST(axis0_and_no_pieces);
    errors_setup();
    RUN_TEST(read_errors);
    RUN_TEST(write_errors);
    free(eg_);
    free(el_);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank_ == 0)
        remove_tree(tmp_dir);
    int counts[2] = {test_passed_, test_failed_}, total[2];
    MPI_Allreduce(counts, total, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank_ == 0)
        printf("test_npy_rows P=%d\n%d passed, %d failed\n", P_, total[0], total[1]);
    MPI_Finalize();
    return total[1] ? 1 : 0;
}
