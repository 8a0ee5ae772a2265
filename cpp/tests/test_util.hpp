// test_util.hpp — random inputs, typed buffers and comparisons shared by the tests.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "nybble/nybble.hpp"

namespace nybble::test {

// A contiguous buffer of n elements of a float dtype, stored as raw bytes.
struct FloatBuffer {
  DType dtype;
  std::vector<uint8_t> bytes;
  FloatBuffer(DType t, int64_t n) : dtype(t), bytes(static_cast<size_t>(n * dtype_size(t))) {}
  int64_t size() const { return static_cast<int64_t>(bytes.size()) / dtype_size(dtype); }
  float get(int64_t i) const { return load_as_float(bytes.data(), dtype, i); }
  void set(int64_t i, float v) { store_from_float(bytes.data(), dtype, i, v); }
  TensorView view(std::initializer_list<int64_t> shape) const { return TensorView(bytes.data(), dtype, shape); }
  TensorView view() const { return TensorView(bytes.data(), dtype, {size()}); }
};

// randn values (rounded to dtype) from a seeded generator.
FloatBuffer randn(DType t, int64_t n, uint64_t seed, float scale = 1.0f);
FloatBuffer rand01(DType t, int64_t n, uint64_t seed);

inline constexpr DType kFloatTypes[] = {DType::F32, DType::F16, DType::BF16};

// Seed for this run's random inputs: NYBBLE_TEST_SEED if set, else drawn fresh. Tests print it
// (SCOPED_TRACE) so a failure can be replayed.
uint64_t test_seed();
std::string seed_note();

}  // namespace nybble::test
