// cpu/ref/ref.hpp — the scalar oracle: the definition of every CPU op. SIMD kernels call these
// for the parts they do not vectorize (tails, odd layouts).
#pragma once

#include "cpu/kernels.hpp"

namespace nybble::cpu::ref {

void quantize_4bit(const void* x, DType dt, int64_t n, int64_t blocksize, QuantType qt,
                   uint8_t* packed, float* absmax, int64_t b0, int64_t b1);
void dequantize_4bit(const uint8_t* packed, const Scales& s, int64_t n, int64_t blocksize,
                     QuantType qt, void* out, DType dt, int64_t b0, int64_t b1);
void quantize_8bit(const void* x, DType dt, int64_t n, int64_t blocksize, const float* code,
                   uint8_t* q, float* absmax, int64_t b0, int64_t b1);
void dequantize_8bit(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                     int64_t blocksize, void* out, DType dt, int64_t b0, int64_t b1);
void gemm_4bit(const Gemm4Args& a, int64_t n0, int64_t n1);
void int8_quant_rows(const void* A, DType dt, int64_t cols, float threshold, int8_t* CA,
                     float* row_stats, uint8_t* outlier_mask, int64_t r0, int64_t r1);
void int8_matmul(const int8_t* A, const int8_t* B, int32_t* out, int64_t M, int64_t N, int64_t K,
                 int64_t n0, int64_t n1);
void int8_mm_dequant(const int32_t* acc, const float* row_stats, const float* col_stats,
                     const void* bias, DType bias_dt, void* out, DType out_dt, int64_t N, int64_t r0,
                     int64_t r1);

// One element of int8 row quantization: round_half_even(x * 127 / row_stat), NaN -> 0. The
// product x * 127 is rounded to fp32 before the division, as in the reference (§2.1).
int8_t int8_quantize_value(float x, float row_stat);

}  // namespace nybble::cpu::ref
