/*
 * attn_avx512.c — the attention micro-kernels for AVX-512 (F, DQ, BW, VL; compiled with -mavx512f -mavx512dq -mavx512bw -mavx512vl -mfma).
 * The code is attn_simd.c; this file only chooses the instruction set.
 */
#define CPA_SIMD_AVX512 1
#define CPA_ISA_SUFFIX _avx512
#include "attn_simd.c"
