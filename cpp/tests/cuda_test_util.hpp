// cuda_test_util.hpp — what the CUDA tests share: device buffers, host copies, and a fixture that
// skips without a GPU and runs each test's kernels on its own non-blocking stream.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace nybble::test {

inline void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Device memory with 16 bytes of slack, freed on scope exit. at(offset) is the address `offset`
// bytes in: tests shift views by one element to leave the 16-byte alignment the vectorized paths
// need.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes + 16) { cuda_check(cudaMalloc(&p_, bytes_), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  uint8_t* at(size_t offset) const { return static_cast<uint8_t*>(p_) + offset; }
  // cudaMemset runs on the legacy stream, asynchronously: finish it before a kernel on the test's
  // non-blocking stream writes the buffer (else the poison may land after the kernel's output).
  void poison() const {
    cuda_check(cudaMemset(p_, 0xFF, bytes_), "cudaMemset");
    cuda_check(cudaDeviceSynchronize(), "poison: cudaDeviceSynchronize");
  }

 private:
  void* p_ = nullptr;
  size_t bytes_;
};

inline void upload(const DeviceBuffer& d, size_t offset, const void* src, size_t bytes) {
  if (!bytes) return;
  cuda_check(cudaMemcpy(d.at(offset), src, bytes, cudaMemcpyHostToDevice), "upload");
  // A copy from pageable memory may return before its DMA lands, and the kernels run on a
  // non-blocking stream that does not wait for the legacy stream: finish the copy first.
  cuda_check(cudaDeviceSynchronize(), "upload: cudaDeviceSynchronize");
}

inline std::vector<uint8_t> download(const DeviceBuffer& d, size_t offset, size_t bytes) {
  std::vector<uint8_t> h(bytes);
  if (bytes) cuda_check(cudaMemcpy(h.data(), d.at(offset), bytes, cudaMemcpyDeviceToHost), "download");
  return h;
}

// Skips without a GPU; the CPU oracle at its scalar ISA ("ref"); a non-blocking stream per test.
class CudaStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible: the CUDA backend's tests need a GPU";
    set_cpu_isa("ref");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    set_cpu_isa("auto");
  }

  // A view of device memory on this test's stream.
  TensorView gpu(const DeviceBuffer& b, size_t offset, DType t, std::initializer_list<int64_t> shape) const {
    TensorView v(b.at(offset), t, shape, Device::CUDA);
    v.device_index = 0;
    v.stream = stream_;
    return v;
  }
  void sync() const {
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    cuda_check(cudaGetLastError(), "cudaGetLastError");
  }

  cudaStream_t stream_ = nullptr;
};

}  // namespace nybble::test
