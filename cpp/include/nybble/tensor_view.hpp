// nybble/tensor_view.hpp — a non-owning view of a tensor: pointer, dtype, shape, strides, device.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>

#include "nybble/dtype.hpp"

namespace nybble {

enum class Device : uint8_t { CPU, CUDA };

inline constexpr int kMaxDims = 8;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  int32_t ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> strides{};  // in elements
  Device device = Device::CPU;
  int32_t device_index = 0;
  // cudaStream_t that a call's CUDA kernels run on. nullptr is CUDA's stream 0: the device's
  // legacy default stream (which synchronizes with other blocking streams) unless the program is
  // compiled for per-thread default streams. Pass the stream your framework works on (the Python
  // layer passes torch's current stream). Ignored for CPU views.
  void* stream = nullptr;

  // A contiguous (row-major) view.
  TensorView() = default;
  TensorView(const void* ptr, DType t, std::initializer_list<int64_t> dims, Device dev = Device::CPU)
      : data(const_cast<void*>(ptr)), dtype(t), device(dev) {
    for (int64_t d : dims) shape[static_cast<size_t>(ndim++)] = d;
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      strides[static_cast<size_t>(i)] = s;
      s *= shape[static_cast<size_t>(i)];
    }
  }

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[static_cast<size_t>(i)];
    return n;
  }
  int64_t size(int i) const { return shape[static_cast<size_t>(i < 0 ? i + ndim : i)]; }
  int64_t nbytes() const { return numel() * dtype_size(dtype); }

  bool is_contiguous() const {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      const auto k = static_cast<size_t>(i);
      if (shape[k] != 1 && strides[k] != s) return false;
      s *= shape[k];
    }
    return true;
  }

  template <class T>
  T* ptr() const { return static_cast<T*>(data); }
};

}  // namespace nybble
