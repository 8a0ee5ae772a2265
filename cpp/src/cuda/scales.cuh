// cuda/scales.cuh — per-block scales as the CUDA kernels read them: plain fp32 absmax, or a
// double-quantized absmax decoded inline (cpu::Scales' device twin, same fp32 roundings).
#pragma once

#include <cstdint>

#include "cuda/launch.cuh"
#include "nybble/ops.hpp"

namespace nybble::cuda {

// Passed to kernels by value. The nested scale of block b is
// __fadd_rn(__fmul_rn(nested_code[qabsmax[b]], nested_absmax[b / nested_blocksize]), offset):
// the product and the sum each rounded, as the reference's two torch ops round them (the
// intrinsics are never contracted into an FMA, whatever the compiler flags).
struct DeviceScales {
  const float* absmax = nullptr;  // plain, when qabsmax is null
  const uint8_t* qabsmax = nullptr;
  const float* nested_absmax = nullptr;
  const float* nested_code = nullptr;
  const float* offset_ptr = nullptr;  // device offset; null: use offset
  float offset = 0.0f;
  int64_t nested_blocksize = 1;
  int nested_shift = -1;  // log2(nested_blocksize) when a power of two: a shift instead of a division

  __device__ float operator()(int64_t b) const {
    if (qabsmax == nullptr) return absmax[b];
    return nested(b, offset_value());
  }
  __device__ float offset_value() const { return offset_ptr != nullptr ? *offset_ptr : offset; }
  // The nested scale of block b, with the offset already read; code: nested_code or a copy of it
  // (in shared memory).
  __device__ float nested(int64_t b, float off, const float* code) const {
    const int64_t g = nested_shift >= 0 ? b >> nested_shift : b / nested_blocksize;
    return __fadd_rn(__fmul_rn(code[qabsmax[b]], nested_absmax[g]), off);
  }
  __device__ float nested(int64_t b, float off) const { return nested(b, off, nested_code); }
};

inline DeviceScales device_scales(const BlockScales& s) {
  DeviceScales d;
  if (!s.nested) {
    d.absmax = s.absmax.ptr<const float>();
    return d;
  }
  const NestedAbsmax& n = *s.nested;
  d.qabsmax = s.absmax.ptr<const uint8_t>();
  d.nested_absmax = n.nested_absmax.ptr<const float>();
  d.nested_code = n.nested_code.ptr<const float>();
  d.offset_ptr = n.offset_tensor ? n.offset_tensor->ptr<const float>() : nullptr;
  d.offset = n.offset;
  d.nested_blocksize = n.nested_blocksize;
  d.nested_shift = exact_log2(n.nested_blocksize);
  return d;
}

// A block's scale as loaded ahead of its use: the absmax, or for a nested absmax the group's fp32
// absmax and the block's 8-bit code, finished by scale() (DeviceScales::nested's roundings).
struct RawScale {
  float a = 0.0f;
  uint32_t q = 0;
};

__device__ __forceinline__ RawScale load_scale(const DeviceScales& s, int64_t b) {
  if (s.qabsmax == nullptr) return {__ldg(s.absmax + b), 0};
  const int64_t grp = s.nested_shift >= 0 ? b >> s.nested_shift : b / s.nested_blocksize;
  return {__ldg(s.nested_absmax + grp), __ldg(s.qabsmax + b)};
}
__device__ __forceinline__ float scale(const DeviceScales& s, RawScale r, float off, const float* code8) {
  if (s.qabsmax == nullptr) return r.a;
  return __fadd_rn(__fmul_rn(code8[r.q], r.a), off);
}

}  // namespace nybble::cuda
