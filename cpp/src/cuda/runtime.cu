// cuda/runtime.cu — CUDA runtime queries, the per-call device/stream helper of launch.cuh, and the
// backend table core dispatches GPU tensors through. The kernels live beside this file, one op
// family per file (see docs/ARCHITECTURE.md).
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "cuda/backend.hpp"
#include "cuda/launch.cuh"
#include "nybble/error.hpp"
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

void* managed_alloc(int64_t bytes, int device) {
  const char* op = "managed_alloc";
  if (bytes < 0)
    throw Error(ErrorKind::Value, std::string(op) + ": bytes = " + std::to_string(bytes) + " must be >= 0");
  int current = -1;
  cuda::check_cuda(cudaGetDevice(&current), op, "cudaGetDevice");
  cuda::check_cuda(cudaSetDevice(device), op, ("cudaSetDevice(" + std::to_string(device) + ")").c_str());
  void* p = nullptr;
  // Attached globally (any stream may touch it) and zero-filled before anyone can read it.
  cudaError_t err = cudaMallocManaged(&p, static_cast<size_t>(std::max<int64_t>(bytes, 1)), cudaMemAttachGlobal);
  if (err == cudaSuccess) err = cudaMemset(p, 0, static_cast<size_t>(bytes));
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  (void)cudaSetDevice(current);
  if (err != cudaSuccess) {
    if (p) (void)cudaFree(p);
    cuda::throw_cuda_error(op, ("cudaMallocManaged(" + std::to_string(bytes) + " bytes)").c_str(), err);
  }
  return p;
}

void managed_free(void* ptr) noexcept {
  if (ptr) (void)cudaFree(ptr);
}

void managed_prefetch(const void* ptr, int64_t bytes, int device, void* stream) {
  const char* op = "managed_prefetch";
  if (!ptr || bytes <= 0) return;
  // Memory that is not managed has nothing to migrate: a tensor still flagged as paged after a
  // copy (deepcopy, a state_dict loaded into ordinary device memory) is a no-op, not an error.
  cudaPointerAttributes attr{};
  cuda::check_cuda(cudaPointerGetAttributes(&attr, ptr), op, "cudaPointerGetAttributes");
  if (attr.type != cudaMemoryTypeManaged) return;
  int concurrent = 0;
  if (device >= 0) {
    cuda::check_cuda(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, device), op,
                     "cudaDeviceGetAttribute");
    if (!concurrent) return;
  }
  cudaMemLocation where{};
  where.type = device >= 0 ? cudaMemLocationTypeDevice : cudaMemLocationTypeHost;
  where.id = device >= 0 ? device : 0;
  cuda::check_cuda(cudaMemPrefetchAsync(ptr, static_cast<size_t>(bytes), where, 0, static_cast<cudaStream_t>(stream)),
                   op, "cudaMemPrefetchAsync");
}

}  // namespace nybble

namespace nybble::cuda {

void throw_cuda_error(const char* op, const char* what, cudaError_t err) {
  (void)cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  throw Error(ErrorKind::Runtime, std::string(op) + ": " + what + " failed: " + cudaGetErrorName(err) + ": " +
                                      cudaGetErrorString(err));
}

Call::Call(const char* op, const TensorView& t)
    : op_(op), device_(t.device_index), previous_device_(-1), stream_(static_cast<cudaStream_t>(t.stream)) {
  int current = -1;
  check(cudaGetDevice(&current), "cudaGetDevice");
  if (current != device_) {
    check(cudaSetDevice(device_), ("cudaSetDevice(" + std::to_string(device_) + ")").c_str());
    previous_device_ = current;
  }
}

Call::~Call() {
  if (previous_device_ >= 0) (void)cudaSetDevice(previous_device_);  // best effort: destructors do not throw
}

int sm_count(int device) {
  static PerDevice cache;
  return cache.get(device, [&] {
    int n = 0;
    check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "sm_count", "cudaDeviceGetAttribute");
    return n;
  });
}

unsigned Call::grid(int64_t items, int64_t per_block, int per_sm) const {
  const int64_t needed = std::max<int64_t>(1, ceil_div(items, per_block));
  return static_cast<unsigned>(std::min<int64_t>(needed, int64_t{per_sm} * sm_count(device_)));
}

const Backend* backend() {
  static const Backend b{
      quantize_4bit,        dequantize_4bit,          gemm_4bit,
      gemm_4bit_grad,
      quantize_blockwise,   dequantize_blockwise,     absmax_mean,
      absmax_mean_to_host,  quantize_absmax_nested,   dequantize_absmax_nested,
      int8_vectorwise_quant, int8_vectorwise_dequant, int8_linear_matmul,
      int8_mm_dequant,
  };
  return &b;
}

}  // namespace nybble::cuda
