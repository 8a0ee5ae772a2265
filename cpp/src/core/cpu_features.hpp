// core/cpu_features.hpp — what this CPU and OS can run, read once (CPUID + XGETBV).
#pragma once

#include <string>

namespace nybble::core {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;  // the AVX2 kernel set needs all three
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512_bf16 = false, avx512_vnni = false;
  bool avx_vnni = false;
  bool has_avx2_set() const { return avx2 && fma && f16c; }
  bool has_avx512_set() const { return has_avx2_set() && avx512f && avx512bw && avx512vl; }
  std::string describe() const;
};

const CpuFeatures& cpu_features();

}  // namespace nybble::core
