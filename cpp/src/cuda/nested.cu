// cuda/nested.cu — double quantization's helpers on the GPU: the offset (mean of a 4-bit absmax)
// and the decoded scales of a nested absmax. (The nested 8-bit quantization itself runs the 8-bit
// kernel of quantize.cu.)
//
// absmax_mean_kernel: one CTA in the summation order of Note [Offset] (formats.hpp): lane l sums
//   elements l, l + kMeanLanes, ... in double, ascending (a thread owns 4 neighbouring lanes and
//   reads them with one float4 per row, 16 rows in flight); the CTA then adds the lane sums
//   pairwise in shared memory. The CPU follows the same order, so the
//   offset is bit-identical on both. One CTA reads at a small fraction of the GPU's bandwidth;
//   absmax is 1/32 of a bf16 weight's bytes at bs 64 (less at larger blocksizes), which keeps the
//   cost to a fraction of one pass over the weight — the price of a deterministic, device-
//   independent offset without a workspace. Bytes moved: 4 per absmax value.
// dequantize_absmax_nested_kernel: elementwise, 1 byte read + 4 written per value (+ 4 per 256).
#include <cuda_runtime.h>

#include <mutex>

#include "cuda/backend.hpp"
#include "cuda/launch.cuh"
#include "cuda/scales.cuh"

namespace nybble::cuda {
namespace {

constexpr int kLanes = static_cast<int>(kMeanLanes);
constexpr int kMeanThreads = kLanes / 4;  // each thread owns 4 consecutive lanes: one float4 per row of lanes
constexpr int kMeanRows = 16;             // rows of lanes whose loads a thread issues together
static_assert(kLanes % 4 == 0 && ((kLanes / 4) & (kLanes / 4 - 1)) == 0 && kLanes / 4 <= 1024,
              "one CTA holds every lane; the tree halves it");

// vec: absmax is 16-byte aligned, so a thread reads its 4 lanes of a row with one float4.
__global__ void __launch_bounds__(kMeanThreads) absmax_mean_kernel(const float* __restrict__ absmax, int64_t n,
                                                                    float* __restrict__ out, bool vec) {
  __shared__ double lane[kLanes];
  double s[4] = {0.0, 0.0, 0.0, 0.0};  // lanes 4t .. 4t + 3, each summed in ascending row order
  int64_t i = int64_t{threadIdx.x} * 4;
  if (vec) {
    for (; i + (kMeanRows - 1) * int64_t{kLanes} + 3 < n; i += kMeanRows * int64_t{kLanes}) {
      float4 v[kMeanRows];
#pragma unroll
      for (int r = 0; r < kMeanRows; ++r) v[r] = *reinterpret_cast<const float4*>(absmax + i + r * int64_t{kLanes});
#pragma unroll
      for (int r = 0; r < kMeanRows; ++r) {
        s[0] = __dadd_rn(s[0], static_cast<double>(v[r].x));
        s[1] = __dadd_rn(s[1], static_cast<double>(v[r].y));
        s[2] = __dadd_rn(s[2], static_cast<double>(v[r].z));
        s[3] = __dadd_rn(s[3], static_cast<double>(v[r].w));
      }
    }
  }
  for (; i < n; i += kLanes)
    for (int j = 0; j < 4; ++j)
      if (i + j < n) s[j] = __dadd_rn(s[j], static_cast<double>(absmax[i + j]));
  for (int j = 0; j < 4; ++j) lane[4 * threadIdx.x + j] = s[j];
  __syncthreads();
  for (int h = kLanes / 2; h >= 1; h /= 2) {
    for (int l = threadIdx.x; l < h; l += kMeanThreads) lane[l] = __dadd_rn(lane[l], lane[l + h]);
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = __fmul_rn(__double2float_rn(lane[0]), __fdiv_rn(1.0f, static_cast<float>(n)));
}

// Where the float form of absmax_mean leaves its result for the copy to the host (one per device).
__device__ float g_mean_result;

void launch_mean(const Call& call, const TensorView& absmax, float* out) {
  absmax_mean_kernel<<<1, kMeanThreads, 0, call.stream()>>>(absmax.ptr<const float>(), absmax.numel(), out,
                                                            aligned(absmax.data, 16));
  call.check_launch("absmax_mean_kernel");
}

__global__ void dequantize_absmax_nested_kernel(DeviceScales scales, int64_t n, float* __restrict__ out) {
  for (int64_t b = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; b < n; b += int64_t{gridDim.x} * blockDim.x)
    out[b] = scales(b);
}

}  // namespace

void absmax_mean(const TensorView& absmax, const TensorView& out) {
  const Call call("absmax_mean", absmax);
  launch_mean(call, absmax, out.ptr<float>());
}

float absmax_mean_to_host(const TensorView& absmax) {
  const Call call("absmax_mean", absmax);
  // g_mean_result is shared by every call on this device: one call at a time from launch to copy.
  static std::mutex busy;
  const std::lock_guard<std::mutex> lock(busy);
  float* result = nullptr;
  call.check(cudaGetSymbolAddress(reinterpret_cast<void**>(&result), g_mean_result), "cudaGetSymbolAddress");
  launch_mean(call, absmax, result);
  float host = 0.0f;
  call.check(cudaMemcpyAsync(&host, result, sizeof(float), cudaMemcpyDeviceToHost, call.stream()), "cudaMemcpyAsync");
  call.check(cudaStreamSynchronize(call.stream()),
             "cudaStreamSynchronize (the float form of absmax_mean waits for the GPU; under graph capture use "
             "absmax_mean(absmax, out))");
  return host;
}

void dequantize_absmax_nested(const TensorView& qabsmax, const NestedAbsmax& nested, const TensorView& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const Call call("dequantize_absmax_nested", out);
  constexpr int threads = 256;
  dequantize_absmax_nested_kernel<<<call.grid(n, threads), threads, 0, call.stream()>>>(
      device_scales(BlockScales{qabsmax, nested}), n, out.ptr<float>());
  call.check_launch("dequantize_absmax_nested_kernel");
}

}  // namespace nybble::cuda
