// cuda/dequantize.cu — blockwise dequantization on the GPU: 4-bit NF4/FP4 with plain or nested
// scales, and 8-bit with a 256-entry map. Elementwise, so the outputs equal the CPU oracle's
// exactly: out[i] = code[q[i]] * scale(i / bs), one fp32 product rounded once to the output type.
//
// Both kernels work in units of 8 elements (4 packed bytes / 8 codes) written with one 16-byte
// store (two for fp32). A warp takes kUnits * 32 consecutive units per round: unit u of lane l is
// the warp's unit u * 32 + l, so each load and each store instruction of the warp covers one
// contiguous span (128/256 bytes read, 512 bytes written), and each thread has kUnits independent
// loads in flight before it uses the first (one load per thread left the H200 at a third of its
// bandwidth).
// dequantize_4bit_kernel: 8 elements never straddle a block (every 4-bit blocksize is a multiple
//   of 32); the 16-entry table sits in shared memory (16 words in 16 banks: no conflicts).
// dequantize_8bit_kernel: the 256-entry map in shared memory; any positive blocksize (block
//   changes are tracked element by element).
//
// Bytes moved: 4-bit: n / 2 read + n * sizeof(T) written + the scales (4 per block, or 1 per
// block + 4 per 256 blocks nested); 8-bit: n read + n * sizeof(T) written + 4 per block.
#include <cuda_runtime.h>

#include "cuda/backend.hpp"
#include "cuda/codebook.hpp"
#include "cuda/elem.cuh"
#include "cuda/launch.cuh"
#include "cuda/scales.cuh"

namespace nybble::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnit = 8;   // elements per unit: one 16-byte store of a 2-byte type
constexpr int kUnits = 4;  // units per thread and round, their loads issued together

// The warp's first unit this round and the stride between rounds, in units.
struct WarpUnits {
  int64_t first, stride;
  int lane;
  __device__ WarpUnits() {
    const int64_t warp = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
    lane = threadIdx.x % 32;
    first = warp * (32 * kUnits);
    stride = int64_t{gridDim.x} * blockDim.x / 32 * (32 * kUnits);
  }
};

template <DType T>
__global__ void dequantize_4bit_kernel(const uint8_t* __restrict__ packed, DeviceScales scales, int64_t n, int log2_bs,
                                       Code4Tables t4, storage_t<T>* __restrict__ out, bool vec_in, bool vec_out) {
  __shared__ float lut[16];
  if (threadIdx.x < 16) lut[threadIdx.x] = t4.code[threadIdx.x];
  __syncthreads();
  const int64_t units = ceil_div(n, kUnit), nbytes = (n + 1) / 2;
  const WarpUnits wu;
  for (int64_t base = wu.first; base < units; base += wu.stride) {
    uint32_t w[kUnits];
    float scale[kUnits];
#pragma unroll
    for (int u = 0; u < kUnits; ++u) {  // unit x: packed bytes [4x, 4x + 4), elements [8x, 8x + 8)
      const int64_t x = base + u * 32 + wu.lane;
      w[u] = 0;
      if (x >= units) continue;
      if (vec_in && 4 * x + 4 <= nbytes) {
        w[u] = *reinterpret_cast<const uint32_t*>(packed + 4 * x);
      } else {
        for (int b = 0; b < 4; ++b)
          if (4 * x + b < nbytes) w[u] |= uint32_t{packed[4 * x + b]} << (8 * b);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnits; ++u) {
      const int64_t x = base + u * 32 + wu.lane;
      scale[u] = x < units ? scales((x * kUnit) >> log2_bs) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kUnits; ++u) {
      const int64_t x = base + u * 32 + wu.lane;
      if (x >= units) continue;
      float v[kUnit];
#pragma unroll
      for (int b = 0; b < 4; ++b) {  // byte b holds element 2b in its high nibble, 2b + 1 in its low one
        const uint32_t byte = (w[u] >> (8 * b)) & 0xFFu;
        v[2 * b] = __fmul_rn(lut[byte >> 4], scale[u]);
        v[2 * b + 1] = __fmul_rn(lut[byte & 0xFu], scale[u]);
      }
      store8<T>(out, x * kUnit, n, vec_out, v);
    }
  }
}

template <DType T>
__global__ void dequantize_8bit_kernel(const uint8_t* __restrict__ q, const float* __restrict__ absmax,
                                       const float* __restrict__ code, int64_t n, int64_t bs, int log2_bs,
                                       storage_t<T>* __restrict__ out, bool vec_in, bool vec_out) {
  __shared__ float map[256];
  for (int t = threadIdx.x; t < 256; t += blockDim.x) map[t] = code[t];
  __syncthreads();
  const int64_t units = ceil_div(n, kUnit);
  const WarpUnits wu;
  for (int64_t base = wu.first; base < units; base += wu.stride) {
    uint2 w[kUnits];
#pragma unroll
    for (int u = 0; u < kUnits; ++u) {  // unit x: codes [8x, 8x + 8)
      const int64_t x = base + u * 32 + wu.lane, i = x * kUnit;
      w[u] = make_uint2(0, 0);
      if (x >= units) continue;
      if (vec_in && i + kUnit <= n) {
        w[u] = *reinterpret_cast<const uint2*>(q + i);
      } else {
        for (int j = 0; j < kUnit; ++j)
          if (i + j < n) (j < 4 ? w[u].x : w[u].y) |= uint32_t{q[i + j]} << (8 * (j % 4));
      }
    }
#pragma unroll
    for (int u = 0; u < kUnits; ++u) {
      const int64_t x = base + u * 32 + wu.lane, i = x * kUnit;
      if (x >= units) continue;
      // The block of element i and where the next one starts; a power-of-two blocksize divides by shifting.
      int64_t b = log2_bs >= 0 ? i >> log2_bs : i / bs;
      int64_t next = (b + 1) * bs;
      float scale = absmax[b];
      float v[kUnit];
#pragma unroll
      for (int j = 0; j < kUnit; ++j) {
        if (i + j >= next && i + j < n) {  // at most one block boundary per element: bs >= 1
          ++b;
          next += bs;
          scale = absmax[b];
        }
        v[j] = __fmul_rn(map[((j < 4 ? w[u].x : w[u].y) >> (8 * (j % 4))) & 0xFFu], scale);
      }
      store8<T>(out, i, n, vec_out, v);
    }
  }
}

}  // namespace

void dequantize_4bit(const TensorView& packed, const BlockScales& scales, int64_t blocksize, QuantType qt,
                     const TensorView& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const Call call("dequantize_4bit", out);
  dispatch_float(out.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    dequantize_4bit_kernel<T><<<call.grid(ceil_div(n, kUnit * kUnits), kThreads), kThreads, 0, call.stream()>>>(
        packed.ptr<const uint8_t>(), device_scales(scales), n, exact_log2(blocksize), code4_tables(qt),
        static_cast<storage_t<T>*>(out.data), aligned(packed.data, 4), aligned(out.data, 16));
    call.check_launch("dequantize_4bit_kernel");
  });
}

void dequantize_blockwise(const TensorView& codes, const TensorView& absmax, const TensorView& code, int64_t blocksize,
                          const TensorView& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const Call call("dequantize_blockwise", out);
  dispatch_float(out.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    dequantize_8bit_kernel<T><<<call.grid(ceil_div(n, kUnit * kUnits), kThreads), kThreads, 0, call.stream()>>>(
        codes.ptr<const uint8_t>(), absmax.ptr<const float>(), code.ptr<const float>(), n, blocksize,
        exact_log2(blocksize), static_cast<storage_t<T>*>(out.data), aligned(codes.data, 8), aligned(out.data, 16));
    call.check_launch("dequantize_8bit_kernel");
  });
}

}  // namespace nybble::cuda
