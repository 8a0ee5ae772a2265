// Quantizes a small weight matrix to NF4 and multiplies a vector by it without dequantizing.
#include <nybble/nybble.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const int64_t N = 64, K = 256, bs = 64;
  std::vector<float> w(N * K), x(K, 1.0f), y(N);
  for (int64_t i = 0; i < N * K; ++i) w[i] = std::sin(0.01f * static_cast<float>(i));
  std::vector<uint8_t> packed(N * K / 2);
  std::vector<float> absmax(N * K / bs);

  nybble::quantize_4bit({w.data(), nybble::DType::F32, {N, K}}, {packed.data(), nybble::DType::U8, {N * K / 2}},
                        {absmax.data(), nybble::DType::F32, {N * K / bs}}, bs, nybble::QuantType::NF4);
  nybble::gemm_4bit({x.data(), nybble::DType::F32, {1, K}}, {packed.data(), nybble::DType::U8, {N * K / 2}},
                    {{absmax.data(), nybble::DType::F32, {N * K / bs}}, std::nullopt}, bs, nybble::QuantType::NF4,
                    std::nullopt, {y.data(), nybble::DType::F32, {1, N}});

  double exact = 0;
  for (int64_t k = 0; k < K; ++k) exact += w[k];
  std::printf("nybble %s (%s): y[0] = %.4f, exact %.4f\n", nybble::version().c_str(), nybble::cpu_isa().c_str(), y[0], exact);
  return std::fabs(y[0] - exact) < 0.05 * K ? 0 : 1;
}
