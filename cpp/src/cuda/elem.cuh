// cuda/elem.cuh — device-side element access: fp32/fp16/bf16 loads and stores (exact conversions,
// round to nearest even on the way down, as dtype.hpp does on the host), runs of eight elements
// read and written with 16-byte accesses, and the NaN-ignoring running max of formats.md.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "nybble/dtype.hpp"

namespace nybble::cuda {

template <DType T>
struct Elem;

template <>
struct Elem<DType::F32> {
  using storage = float;
  __device__ static float load(const storage* p, int64_t i) { return p[i]; }
  __device__ static void store(storage* p, int64_t i, float v) { p[i] = v; }
};
template <>
struct Elem<DType::F16> {
  using storage = uint16_t;
  __device__ static float from_bits(uint32_t h) { return __half2float(__ushort_as_half(static_cast<unsigned short>(h))); }
  __device__ static uint16_t to_bits(float v) { return __half_as_ushort(__float2half_rn(v)); }
  __device__ static float load(const storage* p, int64_t i) { return from_bits(p[i]); }
  __device__ static void store(storage* p, int64_t i, float v) { p[i] = to_bits(v); }
};
template <>
struct Elem<DType::BF16> {
  using storage = uint16_t;
  __device__ static float from_bits(uint32_t h) { return __uint_as_float(h << 16); }
  __device__ static uint16_t to_bits(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
  __device__ static float load(const storage* p, int64_t i) { return from_bits(p[i]); }
  __device__ static void store(storage* p, int64_t i, float v) { p[i] = to_bits(v); }
};

template <DType T>
using storage_t = typename Elem<T>::storage;

// Elements [i, i + 8) as fp32, 0 past n. vec: p is 16-byte aligned and i a multiple of 8, so a
// run that lies inside [0, n) is read with 16-byte loads (one for 2-byte types, two for fp32).
template <DType T>
__device__ __forceinline__ void load8(const storage_t<T>* p, int64_t i, int64_t n, bool vec, float (&v)[8]) {
  if (vec && i + 8 <= n) {
    if constexpr (T == DType::F32) {
      const float4 a = *reinterpret_cast<const float4*>(p + i);
      const float4 b = *reinterpret_cast<const float4*>(p + i + 4);
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
      const uint4 u = *reinterpret_cast<const uint4*>(p + i);
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        v[2 * j] = Elem<T>::from_bits(w[j] & 0xFFFFu);  // little endian: element 2j is the low half
        v[2 * j + 1] = Elem<T>::from_bits(w[j] >> 16);
      }
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = i + j < n ? Elem<T>::load(p, i + j) : 0.0f;
}

// Elements p[0 .. 8) as fp32, all of them valid; vec: p is 16-byte aligned.
template <DType T>
__device__ __forceinline__ void load8_full(const storage_t<T>* p, bool vec, float (&v)[8]) {
  load8<T>(p, 0, 8, vec, v);
}

// Stores v to elements [i, i + 8) that are below n; vec as for load8.
template <DType T>
__device__ __forceinline__ void store8(storage_t<T>* p, int64_t i, int64_t n, bool vec, const float (&v)[8]) {
  if (vec && i + 8 <= n) {
    if constexpr (T == DType::F32) {
      *reinterpret_cast<float4*>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
      *reinterpret_cast<float4*>(p + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
    } else {
      uint32_t w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) w[j] = Elem<T>::to_bits(v[2 * j]) | (uint32_t{Elem<T>::to_bits(v[2 * j + 1])} << 16);
      *reinterpret_cast<uint4*>(p + i) = make_uint4(w[0], w[1], w[2], w[3]);
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (i + j < n) Elem<T>::store(p, i + j, v[j]);
}

// Running max of |x| that never takes a NaN (cpu/elem.hpp absmax_step): fmaxf returns its other
// operand for a NaN, and |x| is never -0.0, so from m = +0.0 this is the oracle's result (one
// FMNMX), the same in any order of steps and merges: tree reductions match the oracle.
__device__ __forceinline__ float absmax_step(float m, float x) { return fmaxf(m, fabsf(x)); }

__device__ __forceinline__ float warp_max(float m, int width = 32) {
  for (int o = width / 2; o > 0; o /= 2) m = absmax_step(m, __shfl_xor_sync(0xFFFFFFFFu, m, o));
  return m;
}

}  // namespace nybble::cuda
