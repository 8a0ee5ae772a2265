// cpu/ref/int8.cpp — scalar oracle for LLM.int8 (spec §2.1): row-wise int8 quantization with
// an outlier threshold, int8 x int8 -> int32 matmul, and the fp32 dequantization of its result.
#include <cmath>

#include "cpu/elem.hpp"
#include "cpu/ref/ref.hpp"

namespace nybble::cpu::ref {

int8_t int8_quantize_value(float x, float row_stat) {
  const float v = (x * 127.0f) / row_stat;
  if (std::isnan(v)) return 0;  // 0/0, NaN input
  // |x| <= row_stat, but x * 127 is rounded before the division, so v can exceed 127 by an ulp
  // (fp32 inputs): clamp, as the reference's saturating conversion does.
  return static_cast<int8_t>(std::nearbyint(std::fmin(std::fmax(v, -127.0f), 127.0f)));  // half to even
}

void int8_quant_rows(const void* Av, DType dt, int64_t cols, float threshold, int8_t* CA,
                     float* row_stats, uint8_t* outlier_mask, int64_t r0, int64_t r1) {
  const bool split = threshold > 0.0f;
  dispatch_float(dt, [&]<DType T>() {
    const auto* A = static_cast<const typename Elem<T>::storage*>(Av);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = r * cols;
      float m = 0.0f;
      for (int64_t j = 0; j < cols; ++j) {
        const float x = Elem<T>::load(A, base + j);
        if (split && std::fabs(x) >= threshold) {
          outlier_mask[j] = 1;
          continue;
        }
        m = absmax_step(m, x);
      }
      row_stats[r] = m;
      for (int64_t j = 0; j < cols; ++j) {
        const float x = Elem<T>::load(A, base + j);
        CA[base + j] = (split && std::fabs(x) >= threshold) ? 0 : int8_quantize_value(x, m);
      }
    }
  });
}

void int8_matmul(const int8_t* A, const int8_t* B, int32_t* out, int64_t M, int64_t N, int64_t K,
                 int64_t n0, int64_t n1) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = n0; n < n1; ++n) {
      int32_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += int32_t{A[m * K + k]} * int32_t{B[n * K + k]};
      out[m * N + n] = acc;
    }
}

void int8_mm_dequant(const int32_t* acc, const float* row_stats, const float* col_stats,
                     const void* bias, DType bias_dt, void* outv, DType out_dt, int64_t N,
                     int64_t r0, int64_t r1) {
  dispatch_float(out_dt, [&]<DType T>() {
    auto* out = static_cast<typename Elem<T>::storage*>(outv);
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < N; ++c) {
        float v = static_cast<float>(acc[r * N + c]) * row_stats[r] * col_stats[c] * kInt8MmDequantScale;
        if (bias) v += load_as_float(bias, bias_dt, c);
        Elem<T>::store(out, r * N + c, v);
      }
  });
}

}  // namespace nybble::cpu::ref
