// cuda/no_cuda.cpp — the runtime queries of a build without the CUDA backend, and its empty
// backend table (core then rejects GPU tensors with a clear error).
#include "cuda/backend.hpp"
#include "nybble/error.hpp"
#include "nybble/ops.hpp"

namespace nybble {
bool cuda_built() { return false; }
int cuda_device_count() { return 0; }

void* managed_alloc(int64_t, int) {
  throw Error(ErrorKind::Runtime, "managed_alloc: paged (managed) memory needs the CUDA backend, and this build of nybble has none");
}
void managed_free(void*) noexcept {}
void managed_prefetch(const void*, int64_t, int, void*) {}
}  // namespace nybble

namespace nybble::cuda {
const Backend* backend() { return nullptr; }
const OptimBackend* optim_backend() { return nullptr; }
}  // namespace nybble::cuda
