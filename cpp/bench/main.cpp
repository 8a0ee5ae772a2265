// main.cpp — nybble_bench: Google Benchmark's main, plus the context the report needs (nybble's
// CPU kernel set and detected features, thread count, L3 size and input sizes).
#include <string>

#include "bench_common.hpp"

namespace nb = nybble::bench;

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  benchmark::AddCustomContext("nybble_version", nybble::version());
  benchmark::AddCustomContext("nybble_cpu_isa", nybble::cpu_isa());
  benchmark::AddCustomContext("nybble_cpu_features", nybble::cpu_features());
  benchmark::AddCustomContext("nybble_threads", std::to_string(nybble::get_num_threads()));
  benchmark::AddCustomContext("l3_bytes", std::to_string(nb::l3_bytes()));
  benchmark::AddCustomContext("mem_elems", std::to_string(nb::mem_elems()));
#if defined(__clang__)
  benchmark::AddCustomContext("compiler", std::string("clang ") + __clang_version__);
#elif defined(__GNUC__)
  benchmark::AddCustomContext("compiler", std::string("gcc ") + __VERSION__);
#endif

  nb::register_bandwidth();
  nb::register_quantize();
  nb::register_matmul();
  nb::register_int8();

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
