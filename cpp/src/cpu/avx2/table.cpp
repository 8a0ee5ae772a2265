// cpu/avx2/table.cpp — the AVX2 kernel table.
#include "cpu/avx2/avx2.hpp"

namespace nybble::cpu {

const Kernels* avx2_kernels() {
  static const Kernels k{
      "avx2",
      avx2::quantize_4bit,
      avx2::dequantize_4bit,
      avx2::quantize_8bit,
      avx2::dequantize_8bit,
      avx2::gemm_4bit,
      avx2::gemm_4bit_grad,
      avx2::int8_quant_rows,
      avx2::int8_matmul,
      avx2::int8_mm_dequant,
      avx2::optimizer_32bit,
      avx2::optimizer_8bit,
  };
  return &k;
}

}  // namespace nybble::cpu
