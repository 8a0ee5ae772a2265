// cpu/avx2/gemm4.cpp — AVX2 4-bit matmul (placeholder: forwards to the oracle until the vector
// kernel lands).
#include "cpu/avx2/avx2.hpp"
#include "cpu/ref/ref.hpp"

namespace nybble::cpu::avx2 {

void gemm_4bit(const Gemm4Args& a, int64_t n0, int64_t n1) { ref::gemm_4bit(a, n0, n1); }

}  // namespace nybble::cpu::avx2
