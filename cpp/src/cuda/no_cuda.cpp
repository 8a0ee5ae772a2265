// cuda/no_cuda.cpp — the runtime queries of a build without the CUDA backend, and its empty
// backend table (core then rejects GPU tensors with a clear error).
#include "cuda/backend.hpp"
#include "nybble/ops.hpp"

namespace nybble {
bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
}  // namespace nybble

namespace nybble::cuda {
const Backend* backend() { return nullptr; }
}  // namespace nybble::cuda
