// cuda/gemm4_grad.cu — gemm_4bit_grad on the GPU: out[M, K] = G[M, N] @ W, W the 4-bit weight
// [N, K], the gradient of gemm_4bit with respect to its activations (a frozen weight's backward).
//
// Note [gemm_4bit_grad paths]: bf16/fp16 G on the tiled kernel's shapes (gemm4_tile_grad_applies:
// K % 64 == 0, N % 8 == 0, blocksize >= 64, aligned buffers) takes gemm4_tile.cu's kernel in its
// gradient form (each weight decoded once per CTA, rounded to T as dequantize_4bit rounds it, then
// tensor cores). Every other call (fp32, odd shapes) takes the kernel of this file: one thread per
// output element (consecutive threads, consecutive k: the weight row's codes are read as one
// contiguous span by a warp), the sum over n in ascending order with the fp32 weight of the CPU
// oracle: the oracle's fp32 operations in its order (neither side contracts them into FMAs:
// -fmad=false, -ffp-contract=off, cmake/NybbleOptions.cmake). It reads each weight once
// per row of G: meant for correctness on every shape, not for speed (the Python layer sends large
// M and these shapes to dequantize + cuBLASLt, _ops.py's rule).
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/backend.hpp"
#include "cuda/elem.cuh"
#include "cuda/gemm4_operands.cuh"
#include "cuda/launch.cuh"
#include "cuda/scales.cuh"

namespace nybble::cuda {
namespace {

constexpr int kThreads = 256;

template <DType T>
__global__ void gemm4_grad_kernel(Gemm4MmaParams<T> p) {
  __shared__ float lut[16];
  if (threadIdx.x < 16) lut[threadIdx.x] = p.code[threadIdx.x];
  __syncthreads();
  const int64_t k = int64_t{blockIdx.x} * kThreads + threadIdx.x;
  if (k >= p.K) return;
  for (int64_t m = blockIdx.y; m < p.M; m += gridDim.y) {
    float acc = 0.0f;
    for (int64_t n = 0; n < p.N; ++n) {
      const int64_t i = n * p.K + k;
      const uint8_t byte = p.packed[i / 2];
      const float w = __fmul_rn(lut[i % 2 ? byte & 0xF : byte >> 4], p.scales(i >> p.log2_bs));
      acc += Elem<T>::load(p.A, m * p.N + n) * w;
    }
    Elem<T>::store(p.out, m * p.K + k, acc);
  }
}

}  // namespace

void gemm_4bit_grad(const TensorView& G, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                    QuantType qt, const TensorView& out) {
  const int64_t M = G.shape[0], N = G.shape[1], K = out.shape[1];
  if (M == 0 || K == 0) return;
  if (N > 0 && gemm4_tile_grad_applies(G, packed, scales, blocksize, K))
    return gemm_4bit_grad_tile(G, packed, scales, blocksize, qt, out);
  const Call call("gemm_4bit_grad", G);
  dispatch_float(G.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    const Gemm4MmaParams<T> p = gemm4_grad_params<T>(G, packed, scales, blocksize, qt, out);
    const dim3 grid(static_cast<unsigned>(ceil_div(K, kThreads)), static_cast<unsigned>(std::min<int64_t>(M, 65535)));
    gemm4_grad_kernel<T><<<grid, kThreads, 0, call.stream()>>>(p);
    call.check_launch("gemm4_grad_kernel");
  });
}

}  // namespace nybble::cuda
