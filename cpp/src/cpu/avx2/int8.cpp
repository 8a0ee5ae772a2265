// cpu/avx2/int8.cpp — AVX2 LLM.int8 kernels (placeholder: forwards to the oracle until the
// vector kernels land).
#include "cpu/avx2/avx2.hpp"
#include "cpu/ref/ref.hpp"

namespace nybble::cpu::avx2 {

void int8_quant_rows(const void* A, DType dt, int64_t cols, float threshold, int8_t* CA,
                     float* row_stats, uint8_t* outlier_mask, int64_t r0, int64_t r1) {
  ref::int8_quant_rows(A, dt, cols, threshold, CA, row_stats, outlier_mask, r0, r1);
}
void int8_matmul(const int8_t* A, const int8_t* B, int32_t* out, int64_t M, int64_t N, int64_t K,
                 int64_t n0, int64_t n1) {
  ref::int8_matmul(A, B, out, M, N, K, n0, n1);
}
void int8_mm_dequant(const int32_t* acc, const float* row_stats, const float* col_stats,
                     const void* bias, DType bias_dt, void* out, DType out_dt, int64_t N, int64_t r0,
                     int64_t r1) {
  ref::int8_mm_dequant(acc, row_stats, col_stats, bias, bias_dt, out, out_dt, N, r0, r1);
}

}  // namespace nybble::cpu::avx2
