// matmul_bench.cpp — compute-side kernels, all threads (nybble's pool).
//
// gemm_4bit: out[M, N] = A[M, K] @ W^T, W NF4 bs64 with double-quant scales, bf16 A and out,
//   K = N = 8192, M = 1, 16, 128. Each iteration uses the next of several weight copies (together
//   at least twice the L3 cache, as a model's layers would), so the weight comes from memory.
//   Bytes counted: the packed weight (N*K/2) + its absmax (1 B per block: u8 codes) + the nested
//   absmax (4 B per 256 blocks); A and out are not counted. FLOP counted: 2*M*N*K.
// int8_linear_matmul: out (i32 [M, N]) = A (i8 [M, K]) @ B (i8 [N, K])^T, M = 128, N = K = 4096.
//   OP counted: 2*M*N*K; no bytes (compute-bound).
#include <cstring>
#include <vector>

#include "bench_common.hpp"

namespace nybble::bench {
namespace {

constexpr int64_t kGemmN = 8192, kGemmK = 8192;

// Copies of one NF4 bs64 double-quant weight [kGemmN, kGemmK], quantized from random bf16.
struct GemmWeights {
  int64_t nb = 0, nnested = 0;
  float offset = 0.0f;
  std::vector<Buffer> packed, qabsmax, nested_absmax;

  int64_t bytes_per_copy() const { return kGemmN * kGemmK / 2 + nb + 4 * nnested; }
};

const GemmWeights& gemm_weights() {
  static const GemmWeights w = [] {
    GemmWeights g;
    const int64_t n = kGemmN * kGemmK;
    g.nb = num_blocks(n, k4bitBlock);
    g.nnested = num_blocks(g.nb, kNestedBlocksize);
    Buffer dense(static_cast<size_t>(n) * 2), absmax(static_cast<size_t>(g.nb) * 4);
    fill_randn(dense, DType::BF16, n, 0.02f);
    const int64_t copies = rotation_copies(g.bytes_per_copy());
    for (int64_t c = 0; c < copies; ++c) {
      g.packed.emplace_back(static_cast<size_t>(n / 2));
      g.qabsmax.emplace_back(static_cast<size_t>(g.nb));
      g.nested_absmax.emplace_back(static_cast<size_t>(g.nnested) * 4);
    }
    const TensorView av(absmax.data(), DType::F32, {g.nb});
    quantize_4bit(TensorView(dense.data(), DType::BF16, {n}), TensorView(g.packed[0].data(), DType::U8, {n / 2}),
                  av, k4bitBlock, QuantType::NF4);
    g.offset = absmax_mean(av);
    quantize_absmax_nested(av, g.offset, TensorView(g.qabsmax[0].data(), DType::U8, {g.nb}),
                           TensorView(g.nested_absmax[0].data(), DType::F32, {g.nnested}));
    for (int64_t c = 1; c < copies; ++c) {
      const auto k = static_cast<size_t>(c);
      split_threads(n / 2, [&](int64_t b, int64_t e) {
        std::memcpy(g.packed[k].as<uint8_t>() + b, g.packed[0].as<uint8_t>() + b, static_cast<size_t>(e - b));
      });
      std::memcpy(g.qabsmax[k].data(), g.qabsmax[0].data(), g.qabsmax[0].size());
      std::memcpy(g.nested_absmax[k].data(), g.nested_absmax[0].data(), g.nested_absmax[0].size());
    }
    return g;
  }();
  return w;
}

void BM_gemm_4bit(benchmark::State& state) {
  const int64_t M = state.range(0);
  const GemmWeights& w = gemm_weights();
  Buffer a(static_cast<size_t>(M * kGemmK) * 2), out(static_cast<size_t>(M * kGemmN) * 2);
  fill_randn(a, DType::BF16, M * kGemmK);
  prefault(out);
  const TensorView A(a.data(), DType::BF16, {M, kGemmK});
  const TensorView O(out.data(), DType::BF16, {M, kGemmN});
  const auto copies = static_cast<int64_t>(w.packed.size());
  std::vector<BlockScales> scales(static_cast<size_t>(copies));
  std::vector<TensorView> packed(static_cast<size_t>(copies));
  for (size_t c = 0; c < scales.size(); ++c) {
    packed[c] = TensorView(w.packed[c].data(), DType::U8, {kGemmN * kGemmK / 2});
    scales[c].absmax = TensorView(w.qabsmax[c].data(), DType::U8, {w.nb});
    scales[c].nested = NestedAbsmax{TensorView(w.nested_absmax[c].data(), DType::F32, {w.nnested}),
                                    signed_map_view(), w.offset, kNestedBlocksize};
  }
  size_t next = 0;
  for (auto _ : state) {
    gemm_4bit(A, packed[next], scales[next], k4bitBlock, QuantType::NF4, std::nullopt, O);
    benchmark::ClobberMemory();
    next = (next + 1) % scales.size();
  }
  state.SetBytesProcessed(state.iterations() * w.bytes_per_copy());
  state.counters["FLOP/s"] =
      benchmark::Counter(static_cast<double>(2 * M * kGemmN * kGemmK), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("M=" + std::to_string(M) + " N=" + std::to_string(kGemmN) + " K=" + std::to_string(kGemmK) +
                 " bf16, " + std::to_string(copies) + " weight copies");
}

void BM_int8_linear_matmul(benchmark::State& state) {
  const int64_t M = state.range(0), N = 4096, K = 4096;
  Buffer a(static_cast<size_t>(M * K)), b(static_cast<size_t>(N * K)), out(static_cast<size_t>(M * N) * 4);
  fill_random_bytes(a);
  fill_random_bytes(b);
  prefault(out);
  const TensorView A(a.data(), DType::I8, {M, K}), B(b.data(), DType::I8, {N, K});
  const TensorView O(out.data(), DType::I32, {M, N});
  for (auto _ : state) {
    int8_linear_matmul(A, B, O);
    benchmark::ClobberMemory();
  }
  state.counters["OP/s"] =
      benchmark::Counter(static_cast<double>(2 * M * N * K), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + " i8");
}

}  // namespace

void register_matmul() {
  benchmark::RegisterBenchmark("gemm_4bit/nf4_bs64_double_quant", BM_gemm_4bit)
      ->ArgName("M")
      ->Arg(1)
      ->Arg(16)
      ->Arg(128)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond)
      ->MinTime(0.3);
  benchmark::RegisterBenchmark("int8_linear_matmul", BM_int8_linear_matmul)
      ->ArgName("M")
      ->Arg(128)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond)
      ->MinTime(0.3);
}

}  // namespace nybble::bench
