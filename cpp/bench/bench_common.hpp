// bench_common.hpp — shared pieces of the CPU benchmarks: aligned buffers, multi-threaded random
// fills, the cache size, and the large inputs the memory-bound benchmarks share.
//
// Sizing: memory-bound inputs are sized from the L3 cache (see mem_elems(), rotation_copies())
// so that no iteration finds its operands in cache. Inputs are random (approximately normal,
// never all zeros), drawn once per process from a fresh seed.
#pragma once

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "nybble/nybble.hpp"

namespace nybble::bench {

// A heap buffer aligned to 4 KiB. Move-only; memory is not touched until filled.
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t bytes);
  ~Buffer();
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return p_; }
  size_t size() const { return n_; }
  template <class T>
  T* as() const { return static_cast<T*>(p_); }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

// Runs fn(begin, end) over [0, n) split evenly across `threads` std::threads (the caller's thread
// takes the first part).
void split_threads(int64_t n, int threads, const std::function<void(int64_t, int64_t)>& fn);
inline void split_threads(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  split_threads(n, nybble::get_num_threads(), fn);
}

// Fills n elements of a float dtype with approximately N(0, scale^2) values (multi-threaded).
void fill_randn(const Buffer& b, DType t, int64_t n, float scale = 1.0f);
// Fills the buffer with uniformly random bytes.
void fill_random_bytes(const Buffer& b);
// Writes every page (so page faults are not timed) with a non-zero byte pattern.
void prefault(const Buffer& b);

// The L3 cache size in bytes (sysconf / sysfs; 32 MiB when unknown).
int64_t l3_bytes();
// Elements of the large 1-D inputs of the memory-bound ops: NYBBLE_BENCH_ELEMS if set, else the
// smallest power of two >= 64 Mi whose bf16 tensor is at least twice the L3 cache.
int64_t mem_elems();
// How many copies of an operand of `bytes` bytes to cycle through so that together they are at
// least twice the L3 cache (at least 1): each iteration uses the next copy, as a model's layers do.
int64_t rotation_copies(int64_t bytes);

// "512Mi", "64Mi", "4096" ...
std::string human_count(int64_t n);

// The large inputs shared by the memory-bound benchmarks, built on first use.
struct Store {
  int64_t n = 0;           // elements
  Buffer src_bf16;         // bf16 [n], random
  Buffer dst_bf16;         // bf16 [n], output of the dequantize / copy benchmarks
  // NF4 bs64 of src_bf16:
  Buffer packed;           // u8 [n/2]
  Buffer absmax;           // f32 [n/64]
  Buffer qabsmax;          // u8 [n/64] (double quant)
  Buffer nested_absmax;    // f32 [ceil(n/64/256)]
  float offset = 0.0f;
  // 8-bit blockwise bs256 of src_bf16:
  Buffer codes8;           // u8 [n]
  Buffer absmax8;          // f32 [n/256]
};
Store& store();

inline constexpr int64_t k4bitBlock = 64;
inline constexpr int64_t k8bitBlock = 256;

// The dynamic signed map as an f32 [256] view.
TensorView signed_map_view();

// Registration hooks of each benchmark file (called by main in this order).
void register_bandwidth();
void register_quantize();
void register_matmul();
void register_int8();

}  // namespace nybble::bench
