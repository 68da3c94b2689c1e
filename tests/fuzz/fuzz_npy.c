/*
 * fuzz_npy.c — libFuzzer harness for the .npy reader (src/core/npy.c).
 *
 * The input is written to a file and read three ways: cpa_npy_shape (the
 * header alone), cpa_npy_load (a fresh buffer) and cpa_npy_load_into (a
 * tensor of the header's shape, contiguous and then with padded rows so the
 * strided copy runs).  The three must agree: same verdict, same shape, the
 * same bytes.  Any failure must carry a printable message (fuzz_common.h).
 * Seeds: tests/fuzz/corpus/npy; dictionary: tests/fuzz/npy.dict.
 */
#include "fuzz_common.h"

static char path[600];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_init_file(path, sizeof path, "input.npy");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_write(path, data, size);
    int ndim = 0;
    int64_t shape[CPA_MAX_DIMS];
    cpa_status s = cpa_npy_shape(path, &ndim, shape);
    fuzz_check_message(s, "cpa_npy_shape");

    float *a = NULL;
    int nd2 = 0;
    int64_t sh2[CPA_MAX_DIMS];
    cpa_status s2 = cpa_npy_load(path, &a, &nd2, sh2);
    fuzz_check_message(s2, "cpa_npy_load");
    if ((s == CPA_OK) != (s2 == CPA_OK))
        abort(); /* the header reader and the loader disagree */
    if (s != CPA_OK)
        return 0;
    if (nd2 != ndim || memcmp(shape, sh2, sizeof(int64_t) * (size_t)ndim) != 0)
        abort();
    cpa_tensor t = cpa_tensor_make(a, ndim, shape);
    const int64_t n = cpa_tensor_numel(&t);
    /* The data must be the file's last n*4 bytes. */
    if (n < 0 || (size_t)n * 4 > size || (n && memcmp(a, data + size - (size_t)n * 4, (size_t)n * 4)))
        abort();

    float *b = malloc(sizeof(float) * (size_t)(2 * n + 1));
    cpa_tensor u = cpa_tensor_make(b, ndim, shape);
    s = cpa_npy_load_into(path, u);
    fuzz_check_message(s, "cpa_npy_load_into");
    if (s != CPA_OK || (n && memcmp(a, b, sizeof(float) * (size_t)n)))
        abort();
    if (ndim >= 1 && n > 0) { /* every row (1-d: every element) at twice the spacing */
        if (ndim == 1)
            u.stride[0] = 2;
        else
            u.stride[ndim - 2] = 2 * u.shape[ndim - 1];
        for (int d = ndim - 3; d >= 0; --d)
            u.stride[d] = u.shape[d + 1] * u.stride[d + 1];
        memset(b, 0xff, sizeof(float) * (size_t)(2 * n + 1));
        s = cpa_npy_load_into(path, u);
        fuzz_check_message(s, "cpa_npy_load_into (strided)");
        if (s != CPA_OK)
            abort();
        int64_t idx[CPA_MAX_DIMS] = {0};
        for (int64_t i = 0; i < n; ++i) { /* element i in C order */
            int64_t off = 0;
            for (int d = 0; d < ndim; ++d)
                off += idx[d] * u.stride[d];
            if (memcmp(&b[off], &a[i], sizeof(float)))
                abort();
            for (int d = ndim - 1; d >= 0 && ++idx[d] == shape[d]; --d)
                idx[d] = 0;
        }
    }
    /* A tensor of another shape is refused with a message. */
    if (ndim >= 1) {
        int64_t other[CPA_MAX_DIMS];
        memcpy(other, shape, sizeof other);
        other[0] += 1;
        cpa_tensor w = cpa_tensor_make(b, ndim, other);
        s = cpa_npy_load_into(path, w);
        if (s == CPA_OK)
            abort();
        fuzz_check_message(s, "cpa_npy_load_into (wrong shape)");
    }
    free(a);
    free(b);
    return 0;
}
