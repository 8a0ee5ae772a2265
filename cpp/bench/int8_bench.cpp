// int8_bench.cpp — LLM.int8 row-wise quantization: int8_vectorwise_quant of a 4096 x 4096 matrix
// (bf16 and fp16; threshold 0 and 6 with the outlier-column output), all threads (nybble's pool).
// Inputs are random normal with outliers (|x| >= 6) planted in 8 columns; each iteration uses the
// next of several input/output copies (together at least twice the L3 cache).
// Bytes counted: 2 B read + 1 B written per element (row_stats and outlier columns not counted).
#include <vector>

#include "bench_common.hpp"

namespace nybble::bench {
namespace {

constexpr int64_t kRows = 4096, kCols = 4096, kOutlierCols = 8;

struct Int8Inputs {
  std::vector<Buffer> in, ca, row_stats, outlier_cols;
};

const Int8Inputs& int8_inputs(DType t) {
  auto build = [](DType dt) {
    Int8Inputs s;
    const int64_t n = kRows * kCols;
    const int64_t copies = rotation_copies(n * 3);
    for (int64_t c = 0; c < copies; ++c) {
      Buffer& in = s.in.emplace_back(static_cast<size_t>(n) * 2);
      fill_randn(in, dt, n);
      // Outliers: every 32nd row of 8 spread columns gets +-(6.5 .. 9.5).
      auto* p = in.as<uint16_t>();
      for (int64_t j = 0; j < kOutlierCols; ++j) {
        const int64_t col = (j * 509 + 37 * (c + 1)) % kCols;
        for (int64_t r = j % 32; r < kRows; r += 32) {
          const float v = ((r / 32) % 2 ? -1.0f : 1.0f) * (6.5f + static_cast<float>(r % 4));
          p[r * kCols + col] = dt == DType::F16 ? float_to_half(v) : float_to_bf16(v);
        }
      }
      prefault(s.ca.emplace_back(static_cast<size_t>(n)));
      prefault(s.row_stats.emplace_back(static_cast<size_t>(kRows) * 4));
      prefault(s.outlier_cols.emplace_back(static_cast<size_t>(kCols)));
    }
    return s;
  };
  if (t == DType::F16) {
    static const Int8Inputs f16 = build(DType::F16);
    return f16;
  }
  static const Int8Inputs bf16 = build(DType::BF16);
  return bf16;
}

void BM_int8_vectorwise_quant(benchmark::State& state, DType t, float threshold) {
  const Int8Inputs& s = int8_inputs(t);
  const size_t copies = s.in.size();
  size_t next = 0;
  for (auto _ : state) {
    const TensorView A(s.in[next].data(), t, {kRows, kCols});
    const TensorView CA(s.ca[next].data(), DType::I8, {kRows, kCols});
    const TensorView stats(s.row_stats[next].data(), DType::F32, {kRows});
    std::optional<TensorView> cols;
    if (threshold > 0.0f) cols = TensorView(s.outlier_cols[next].data(), DType::U8, {kCols});
    int8_vectorwise_quant(A, threshold, CA, stats, cols);
    benchmark::ClobberMemory();
    next = (next + 1) % copies;
  }
  state.SetBytesProcessed(state.iterations() * kRows * kCols * 3);
  state.SetLabel(std::to_string(kRows) + "x" + std::to_string(kCols) + " " + std::string(dtype_name(t)) + ", " +
                 std::to_string(copies) + " copies");
}

void configure(benchmark::internal::Benchmark* b) {
  b->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.3);
}

}  // namespace

void register_int8() {
  configure(benchmark::RegisterBenchmark("int8_vectorwise_quant/bf16_threshold0", BM_int8_vectorwise_quant,
                                         DType::BF16, 0.0f));
  configure(benchmark::RegisterBenchmark("int8_vectorwise_quant/bf16_threshold6", BM_int8_vectorwise_quant,
                                         DType::BF16, 6.0f));
  configure(benchmark::RegisterBenchmark("int8_vectorwise_quant/fp16_threshold0", BM_int8_vectorwise_quant,
                                         DType::F16, 0.0f));
  configure(benchmark::RegisterBenchmark("int8_vectorwise_quant/fp16_threshold6", BM_int8_vectorwise_quant,
                                         DType::F16, 6.0f));
}

}  // namespace nybble::bench
