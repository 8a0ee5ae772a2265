// cuda/no_cuda.cpp — the runtime queries of a build without the CUDA backend.
#include "nybble/ops.hpp"

namespace nybble {
bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
}  // namespace nybble
