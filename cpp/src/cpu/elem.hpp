// cpu/elem.hpp — typed element access for the CPU kernels (compile-time dtype).
#pragma once

#include <cstdint>

#include "nybble/dtype.hpp"

namespace nybble::cpu {

template <DType T>
struct Elem;

template <>
struct Elem<DType::F32> {
  using storage = float;
  static float load(const storage* p, int64_t i) { return p[i]; }
  static void store(storage* p, int64_t i, float v) { p[i] = v; }
};
template <>
struct Elem<DType::F16> {
  using storage = uint16_t;
  static float load(const storage* p, int64_t i) { return half_to_float(p[i]); }
  static void store(storage* p, int64_t i, float v) { p[i] = float_to_half(v); }
};
template <>
struct Elem<DType::BF16> {
  using storage = uint16_t;
  static float load(const storage* p, int64_t i) { return bf16_to_float(p[i]); }
  static void store(storage* p, int64_t i, float v) { p[i] = float_to_bf16(v); }
};

// Calls f.template operator()<T>() for the float dtype dt (F32, F16 or BF16).
template <class F>
decltype(auto) dispatch_float(DType dt, F&& f) {
  switch (dt) {
    case DType::F16: return f.template operator()<DType::F16>();
    case DType::BF16: return f.template operator()<DType::BF16>();
    default: return f.template operator()<DType::F32>();
  }
}

// Largest |x| over a run, ignoring NaN (like CUDA's fmaxf): NaN never compares greater.
inline float absmax_step(float m, float x) {
  const float a = x < 0.0f ? -x : x;
  return a > m ? a : m;
}

}  // namespace nybble::cpu
