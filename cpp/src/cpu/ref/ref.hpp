// cpu/ref/ref.hpp — the scalar oracle: the definition of every CPU op. SIMD kernels call these
// for the parts they do not vectorize (tails, odd layouts).
#pragma once

#include "cpu/kernels.hpp"

namespace nybble::cpu::ref {

#include "cpu/kernel_signatures.inc"

// One element of int8 row quantization: round_half_even(x * 127 / row_stat), NaN -> 0. The
// product x * 127 is rounded to fp32 before the division, as in the reference (§2.1).
int8_t int8_quantize_value(float x, float row_stat);

}  // namespace nybble::cpu::ref
