/*
 * attn_avx2.c — the attention micro-kernels for AVX2 + FMA (compiled with -mavx2 -mfma).
 * The code is attn_simd.c; this file only chooses the instruction set.
 */
#define CPA_SIMD_AVX2 1
#define CPA_ISA_SUFFIX _avx2
#include "attn_simd.c"
