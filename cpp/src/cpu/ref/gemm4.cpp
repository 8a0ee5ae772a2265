// cpu/ref/gemm4.cpp — scalar oracle for the 4-bit matmul: out[m, n] = sum_k A[m, k] * W[n, k]
// (+ bias[n]), W[n, k] = code[nibble(n*K + k)] * scale((n*K + k) / blocksize) in fp32, the sum
// accumulated in fp32 in ascending k. Reads the packed weight directly (no dequantized copy).
#include "cpu/elem.hpp"
#include "cpu/ref/ref.hpp"

namespace nybble::cpu::ref {

void gemm_4bit(const Gemm4Args& a, int64_t n0, int64_t n1) {
  const auto& code = code_table(a.qt);
  dispatch_float(a.dt, [&]<DType T>() {
    using S = typename Elem<T>::storage;
    const auto* A = static_cast<const S*>(a.A);
    const auto* bias = static_cast<const S*>(a.bias);
    auto* out = static_cast<S*>(a.out);
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t m = 0; m < a.M; ++m) {
        float acc = 0.0f;
        for (int64_t k = 0; k < a.K; ++k) {
          const int64_t i = n * a.K + k;
          const float w = code[nibble_at(a.packed, i)] * a.scales(i / a.blocksize);
          acc += Elem<T>::load(A, m * a.K + k) * w;
        }
        if (bias) acc += Elem<T>::load(bias, n);
        Elem<T>::store(out, m * a.N + n, acc);
      }
    }
  });
}

}  // namespace nybble::cpu::ref
