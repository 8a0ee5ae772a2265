// quantize_bench.cpp — blockwise quantization of the shared bf16 input (mem_elems() elements, at
// least twice the L3 cache), all threads (nybble's pool).
// Bytes counted (docs/benchmarks/cpu.md, spec performance.md), n elements:
//   quantize_4bit NF4 bs64:      2n read + n/2 written + 4 B per block of absmax written;
//     + double quant:            the same (absmax_mean + quantize_absmax_nested on the absmax
//                                are timed but their extra traffic is not counted);
//   dequantize_4bit NF4 bs64:    the same bytes in the other direction;
//     nested scales:             2n written + n/2 read + 1 B per block (u8 absmax code)
//                                + 4 B per 256 blocks (nested absmax) read;
//   8-bit blockwise bs256:       2n + n (codes) + 4 B per block of absmax.
#include "bench_common.hpp"

namespace nybble::bench {
namespace {

constexpr QuantType kNF4 = QuantType::NF4;

struct Views4 {
  TensorView src, dst, packed, absmax, qabsmax, nested_absmax;
  int64_t n, nb;
};

Views4 views4(Store& s) {
  const int64_t n = s.n, nb = num_blocks(n, k4bitBlock);
  return {TensorView(s.src_bf16.data(), DType::BF16, {n}),
          TensorView(s.dst_bf16.data(), DType::BF16, {n}),
          TensorView(s.packed.data(), DType::U8, {packed_4bit_bytes(n)}),
          TensorView(s.absmax.data(), DType::F32, {nb}),
          TensorView(s.qabsmax.data(), DType::U8, {nb}),
          TensorView(s.nested_absmax.data(), DType::F32, {num_blocks(nb, kNestedBlocksize)}),
          n,
          nb};
}

int64_t bytes_4bit(const Views4& v) { return 2 * v.n + packed_4bit_bytes(v.n) + 4 * v.nb; }

void BM_quantize_4bit(benchmark::State& state, bool double_quant) {
  Store& s = store();
  const Views4 v = views4(s);
  for (auto _ : state) {
    quantize_4bit(v.src, v.packed, v.absmax, k4bitBlock, kNF4);
    if (double_quant) {
      const float offset = absmax_mean(v.absmax);
      quantize_absmax_nested(v.absmax, offset, v.qabsmax, v.nested_absmax);
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * bytes_4bit(v));
  state.SetLabel("n=" + human_count(v.n) + " bf16");
}

void BM_dequantize_4bit(benchmark::State& state, bool nested) {
  Store& s = store();
  const Views4 v = views4(s);
  BlockScales scales;
  int64_t bytes = bytes_4bit(v);
  if (nested) {
    scales.absmax = v.qabsmax;
    scales.nested = NestedAbsmax{v.nested_absmax, signed_map_view(), s.offset, kNestedBlocksize};
    bytes = 2 * v.n + packed_4bit_bytes(v.n) + v.nb + 4 * num_blocks(v.nb, kNestedBlocksize);
  } else {
    scales.absmax = v.absmax;
  }
  for (auto _ : state) {
    dequantize_4bit(v.packed, scales, k4bitBlock, kNF4, v.dst);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * bytes);
  state.SetLabel("n=" + human_count(v.n) + " bf16");
}

void BM_blockwise_8bit(benchmark::State& state, bool quantize) {
  Store& s = store();
  const int64_t n = s.n, nb = num_blocks(n, k8bitBlock);
  const TensorView src(s.src_bf16.data(), DType::BF16, {n});
  const TensorView dst(s.dst_bf16.data(), DType::BF16, {n});
  const TensorView codes(s.codes8.data(), DType::U8, {n});
  const TensorView absmax(s.absmax8.data(), DType::F32, {nb});
  const TensorView map = signed_map_view();
  for (auto _ : state) {
    if (quantize)
      quantize_blockwise(src, map, codes, absmax, k8bitBlock);
    else
      dequantize_blockwise(codes, absmax, map, k8bitBlock, dst);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * (2 * n + n + 4 * nb));
  state.SetLabel("n=" + human_count(n) + " bf16");
}

void configure(benchmark::internal::Benchmark* b) {
  b->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.5);
}

}  // namespace

void register_quantize() {
  configure(benchmark::RegisterBenchmark("quantize_4bit/nf4_bs64", BM_quantize_4bit, false));
  configure(benchmark::RegisterBenchmark("quantize_4bit/nf4_bs64_double_quant", BM_quantize_4bit, true));
  configure(benchmark::RegisterBenchmark("dequantize_4bit/nf4_bs64", BM_dequantize_4bit, false));
  configure(benchmark::RegisterBenchmark("dequantize_4bit/nf4_bs64_nested", BM_dequantize_4bit, true));
  configure(benchmark::RegisterBenchmark("quantize_blockwise/8bit_bs256", BM_blockwise_8bit, true));
  configure(benchmark::RegisterBenchmark("dequantize_blockwise/8bit_bs256", BM_blockwise_8bit, false));
}

}  // namespace nybble::bench
