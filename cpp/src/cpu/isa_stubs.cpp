// cpu/isa_stubs.cpp — null entries for the kernel sets this build did not compile, so dispatch
// can ask for every set on every platform.
#include "cpu/kernels.hpp"

namespace nybble::cpu {
#ifndef NYBBLE_HAVE_AVX2
const Kernels* avx2_kernels() { return nullptr; }
#endif
#ifndef NYBBLE_HAVE_AVX512
const Kernels* avx512_kernels() { return nullptr; }
#endif
}  // namespace nybble::cpu
