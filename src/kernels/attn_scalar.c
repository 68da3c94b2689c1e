/*
 * attn_scalar.c — the attention micro-kernels for portable C, one lane (no -m flags: runs on any CPU).
 * The code is attn_simd.c; this file only chooses the instruction set.
 */
#define CPA_ISA_SUFFIX _scalar
#include "attn_simd.c"
