// core/dispatch.hpp — which CPU kernel set runs: the best one this CPU can run, unless forced
// by NYBBLE_CPU_ISA or set_cpu_isa().
#pragma once

#include <string>

#include "cpu/kernels.hpp"

namespace nybble::core {

const cpu::Kernels& cpu_kernels();
// Forces a set ("ref", "avx2", "avx512" or "auto"); throws nybble::Error if unknown or not
// runnable here. Returns the name of the set now in use.
std::string select_cpu_kernels(const std::string& isa);

}  // namespace nybble::core
