// cpu/ref/gemm4.cpp — scalar oracle for the 4-bit matmuls: gemm_4bit, out[m, n] = sum_k A[m, k] *
// W[n, k] (+ bias[n]), and gemm_4bit_grad, out[m, k] = sum_n G[m, n] * W[n, k], with
// W[n, k] = code[nibble(n*K + k)] * scale((n*K + k) / blocksize) in fp32, each sum accumulated in
// fp32 in ascending k (resp. n). Both read the packed weight directly (no dequantized copy).
#include <vector>

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

void gemm_4bit_grad(const Gemm4Args& a, int64_t k0, int64_t k1) {
  const auto& code = code_table(a.qt);
  dispatch_float(a.dt, [&]<DType T>() {
    using S = typename Elem<T>::storage;
    const auto* G = static_cast<const S*>(a.A);
    auto* out = static_cast<S*>(a.out);
    // Weight row n's columns [k0, k1) are decoded once and used for every row of G: the sums of
    // all rows over those columns run side by side, each still in ascending n.
    const int64_t width = k1 - k0;
    std::vector<float> acc(static_cast<size_t>(a.M * width), 0.0f), w(static_cast<size_t>(width));
    for (int64_t n = 0; n < a.N; ++n) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t i = n * a.K + k;
        w[static_cast<size_t>(k - k0)] = code[nibble_at(a.packed, i)] * a.scales(i / a.blocksize);
      }
      for (int64_t m = 0; m < a.M; ++m) {
        const float g = Elem<T>::load(G, m * a.N + n);
        float* row = acc.data() + m * width;
        for (int64_t j = 0; j < width; ++j) row[j] += g * w[static_cast<size_t>(j)];
      }
    }
    for (int64_t m = 0; m < a.M; ++m)
      for (int64_t j = 0; j < width; ++j) Elem<T>::store(out, m * a.K + k0 + j, acc[static_cast<size_t>(m * width + j)]);
  });
}

}  // namespace nybble::cpu::ref
