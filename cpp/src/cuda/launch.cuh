// cuda/launch.cuh — what every launcher does around its kernels: make the tensors' GPU current,
// take the call's stream, size grids, check launches, dispatch on the element type.
//
// Note [Streams]: every kernel and library call of an op runs on the stream its tensors carry
// (TensorView::stream; core checks that all tensors of a call carry the same one). nullptr is CUDA
// stream 0. No launcher synchronizes, except the forms documented to return a value to the host
// (absmax_mean's float form), so every op can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "nybble/dtype.hpp"
#include "nybble/tensor_view.hpp"

namespace nybble::cuda {

// Throws nybble::Error(Runtime) "<op>: <what> failed: <CUDA error name>: <description>".
[[noreturn]] void throw_cuda_error(const char* op, const char* what, cudaError_t err);

inline void check_cuda(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess) throw_cuda_error(op, what, err);
}

// One op's call on one GPU: makes the GPU of its tensors current for the call (restoring the one
// the thread had before) and carries the call's stream (Note [Streams]).
class Call {
 public:
  Call(const char* op, const TensorView& any_tensor);
  ~Call();
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  const char* op() const { return op_; }
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }
  void check(cudaError_t err, const char* what) const { check_cuda(err, op_, what); }
  // After every launch: throws if the launch failed (bad configuration, no kernel image, ...).
  void check_launch(const char* kernel) const { check_cuda(cudaGetLastError(), op_, kernel); }
  // Blocks of a grid-stride kernel over `items` work items, `per_block` per block and round:
  // what the items need, at most per_sm blocks per multiprocessor (the default, 32, is more than
  // can be resident, so a grid never idles multiprocessors; the kernels loop when there are more
  // items). Kernels that build tables per block ask for about what is resident.
  unsigned grid(int64_t items, int64_t per_block, int per_sm = 32) const;

 private:
  const char* op_;
  int device_;
  int previous_device_;
  cudaStream_t stream_;
};

// Multiprocessors of a device (queried once per device).
int sm_count(int device);

// A nonzero int per GPU, computed by the first call for that GPU and kept (GPUs past the 64th
// compute it on every call): device attributes, a kernel's occupancy, a one-time set-up's outcome.
class PerDevice {
 public:
  template <class F>
  int get(int device, F&& compute) {
    const bool cached = device >= 0 && device < static_cast<int>(values_.size());
    if (cached)
      if (int v = values_[static_cast<size_t>(device)].load(std::memory_order_relaxed)) return v;
    const int v = compute();
    if (cached) values_[static_cast<size_t>(device)].store(v, std::memory_order_relaxed);
    return v;
  }

 private:
  std::array<std::atomic<int>, 64> values_{};  // 0: not computed yet
};

inline bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// log2(v) when v is a power of two, else -1.
inline int exact_log2(int64_t v) {
  if (v <= 0 || (v & (v - 1)) != 0) return -1;
  int l = 0;
  while ((int64_t{1} << l) < v) ++l;
  return l;
}

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls f(std::integral_constant<DType, T>{}) for the float dtype dt (F32, F16 or BF16): the C++17
// form of cpu/elem.hpp's dispatch_float.
template <class F>
void dispatch_float(DType dt, F&& f) {
  switch (dt) {
    case DType::F16: f(std::integral_constant<DType, DType::F16>{}); break;
    case DType::BF16: f(std::integral_constant<DType, DType::BF16>{}); break;
    default: f(std::integral_constant<DType, DType::F32>{}); break;
  }
}

}  // namespace nybble::cuda
