// cpu/avx2/avx2.hpp — the AVX2 (+FMA, F16C) kernel set: the same signatures as cpu/ref/ref.hpp.
// Translation units in this directory are compiled with -mavx2 -mfma -mf16c and only ever called
// after core/dispatch.cpp checked the CPU and OS support them.
#pragma once

#include "cpu/kernels.hpp"

namespace nybble::cpu::avx2 {

#include "cpu/kernel_signatures.inc"

}  // namespace nybble::cpu::avx2
