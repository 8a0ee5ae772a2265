// cpu/avx2/table.cpp — the AVX2 kernel table. An entry that has no AVX2 kernel points at the
// scalar oracle.
#include "cpu/avx2/avx2.hpp"
#include "cpu/ref/ref.hpp"

namespace nybble::cpu {

const Kernels* avx2_kernels() {
  static const Kernels k{
      "avx2",
      ref::quantize_4bit,
      ref::dequantize_4bit,
      ref::quantize_8bit,
      ref::dequantize_8bit,
      ref::gemm_4bit,
      ref::int8_quant_rows,
      ref::int8_matmul,
      ref::int8_mm_dequant,
  };
  return &k;
}

}  // namespace nybble::cpu
