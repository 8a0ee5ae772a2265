// bandwidth_bench.cpp — the machine's copy bandwidth B, the ceiling the memory-bound kernels are
// compared with: memcpy of the shared bf16 input (2 * mem_elems() bytes, at least twice the L3
// cache) split evenly over nybble::get_num_threads() std::threads.
// Bytes counted: bytes read + bytes written (2 * size).
#include <cstring>

#include "bench_common.hpp"

namespace nybble::bench {
namespace {

void BM_copy(benchmark::State& state) {
  Store& s = store();
  const int64_t bytes = s.n * 2;
  const auto* src = s.src_bf16.as<const uint8_t>();
  auto* dst = s.dst_bf16.as<uint8_t>();
  const int threads = get_num_threads();
  for (auto _ : state) {
    split_threads(bytes, threads, [&](int64_t b, int64_t e) {
      std::memcpy(dst + b, src + b, static_cast<size_t>(e - b));
    });
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 2 * bytes);
  state.SetLabel(human_count(bytes) + "B, " + std::to_string(threads) + " threads");
}

}  // namespace

void register_bandwidth() {
  benchmark::RegisterBenchmark("copy/memcpy", BM_copy)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond)
      ->MinTime(0.5);
}

}  // namespace nybble::bench
