// cpu/ref/table.cpp — the scalar oracle's kernel table.
#include "cpu/ref/ref.hpp"

namespace nybble::cpu {

const Kernels& ref_kernels() {
  static const Kernels k{
      "ref",         ref::quantize_4bit,   ref::dequantize_4bit, ref::quantize_8bit,
      ref::dequantize_8bit, ref::gemm_4bit, ref::gemm_4bit_grad, ref::int8_quant_rows, ref::int8_matmul,
      ref::int8_mm_dequant, ref::optimizer_32bit, ref::optimizer_8bit,
  };
  return k;
}

}  // namespace nybble::cpu
