// cuda/runtime.cu — CUDA runtime queries. The CUDA kernels themselves live beside this file, one
// op family per file (see docs/ARCHITECTURE.md).
#include <cuda_runtime.h>

#include "nybble/ops.hpp"

namespace nybble {

bool cuda_built() { return true; }

// Devices visible to this process; 0 when there is no driver or no GPU (never an error, so a
// CUDA build runs on machines without a GPU).
int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return n;
}

}  // namespace nybble
