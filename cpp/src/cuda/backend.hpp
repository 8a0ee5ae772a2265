// cuda/backend.hpp — what core calls to run an op on CUDA tensors: one launcher per op, reached
// through a table so that a build without CUDA needs no stubs (no_cuda.cpp returns no table).
//
// Plain C++ (no CUDA types), included by core and by the .cu files that define the launchers.
// Launchers receive arguments that core has already validated (dtypes, sizes, one device, one
// stream); they set the device for the call, launch on the views' stream and throw nybble::Error
// (ErrorKind::Runtime) naming the op and the CUDA error when a launch or a library call fails.
#pragma once

#include <cstdint>
#include <optional>

#include "nybble/ops.hpp"
#include "nybble/optim.hpp"

namespace nybble::optim {
struct Step;  // cpu/ref/optim_rules.hpp
}  // namespace nybble::optim

namespace nybble::cuda {

// The launchers, one definition each in the op family's .cu file. Most have the signature of the
// public op they run (ops.hpp); the others are spelled out.
decltype(nybble::quantize_4bit) quantize_4bit;
decltype(nybble::dequantize_4bit) dequantize_4bit;
decltype(nybble::gemm_4bit) gemm_4bit;
decltype(nybble::gemm_4bit_grad) gemm_4bit_grad;
decltype(nybble::quantize_blockwise) quantize_blockwise;
decltype(nybble::dequantize_blockwise) dequantize_blockwise;
decltype(nybble::dequantize_absmax_nested) dequantize_absmax_nested;
decltype(nybble::int8_vectorwise_quant) int8_vectorwise_quant;  // outlier_cols given whenever threshold > 0
decltype(nybble::int8_vectorwise_dequant) int8_vectorwise_dequant;
decltype(nybble::int8_linear_matmul) int8_linear_matmul;
decltype(nybble::int8_mm_dequant) int8_mm_dequant;
// gemm_4bit's tensor-core kernel (gemm4_mma.cu), which gemm_4bit (gemm4.cu) calls under the rule
// of Note [gemm_4bit paths]: bf16/fp16 activations and a 4-byte aligned packed buffer, any M, N, K.
// tile_wk 1, 2 or 4 forces a tile (Note [Tile choice]; for tests and sweeps), 0 picks one.
void gemm_4bit_mma(const TensorView& A, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                   QuantType qt, const std::optional<TensorView>& bias, const TensorView& out, int tile_wk = 0);
// gemm_4bit's kernel for few rows of A (gemm4_skinny.cu), which gemm_4bit calls whenever
// gemm4_skinny_applies: bf16/fp16, M <= 16, K % 64 == 0, blocksize >= 64, packed and A 16-byte
// aligned, the scales 4-byte aligned.
bool gemm4_skinny_applies(const TensorView& A, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                          int64_t N);
void gemm_4bit_skinny(const TensorView& A, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                      QuantType qt, const std::optional<TensorView>& bias, const TensorView& out);
// gemm_4bit's kernel for tens to hundreds of rows of A (gemm4_tile.cu): each weight decoded once
// per CTA into shared memory, K split over a cluster. Applies under gemm4_skinny_applies' shape
// conditions, any M. bm (16, 32, 64, 128) and split (1..8) force the tile and the split (for tests
// and sweeps); 0 picks them.
bool gemm4_tile_applies(const TensorView& A, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                        int64_t N);
void gemm_4bit_tile(const TensorView& A, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                    QuantType qt, const std::optional<TensorView>& bias, const TensorView& out, int bm = 0, int split = 0);
// gemm_4bit_grad's tensor-core form of the tiled kernel (gemm4_tile.cu, Note [The gradient]),
// which gemm_4bit_grad (gemm4_grad.cu) calls whenever gemm4_tile_grad_applies: bf16/fp16 G [M, N],
// N % 8 == 0, K % 64 == 0, blocksize >= 64, packed and G 16-byte aligned, the scales 4-byte aligned.
// bm and split as for gemm_4bit_tile (the split runs over N).
bool gemm4_tile_grad_applies(const TensorView& G, const TensorView& packed, const BlockScales& scales,
                             int64_t blocksize, int64_t K);
void gemm_4bit_grad_tile(const TensorView& G, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                         QuantType qt, const TensorView& out, int bm = 0, int split = 0);
// The mean into a device tensor, or back to the host (this one synchronizes absmax's stream).
void absmax_mean(const TensorView& absmax, const TensorView& out);
float absmax_mean_to_host(const TensorView& absmax);
// Both public forms: offset_tensor, when given, replaces offset.
void quantize_absmax_nested(const TensorView& absmax, float offset, const std::optional<TensorView>& offset_tensor,
                            const TensorView& qabsmax, const TensorView& nested_absmax);

struct Backend {
  decltype(&cuda::quantize_4bit) quantize_4bit;
  decltype(&cuda::dequantize_4bit) dequantize_4bit;
  decltype(&cuda::gemm_4bit) gemm_4bit;
  decltype(&cuda::gemm_4bit_grad) gemm_4bit_grad;
  decltype(&cuda::quantize_blockwise) quantize_blockwise;
  decltype(&cuda::dequantize_blockwise) dequantize_blockwise;
  void (*absmax_mean)(const TensorView& absmax, const TensorView& out);
  decltype(&cuda::absmax_mean_to_host) absmax_mean_to_host;
  decltype(&cuda::quantize_absmax_nested) quantize_absmax_nested;
  decltype(&cuda::dequantize_absmax_nested) dequantize_absmax_nested;
  decltype(&cuda::int8_vectorwise_quant) int8_vectorwise_quant;
  decltype(&cuda::int8_vectorwise_dequant) int8_vectorwise_dequant;
  decltype(&cuda::int8_linear_matmul) int8_linear_matmul;
  decltype(&cuda::int8_mm_dequant) int8_mm_dequant;
};

// The CUDA backend of this build, or nullptr when it was built without CUDA.
const Backend* backend();

// The optimizer launchers (cuda/optim.cu), in a table of their own: `count` validated
// parameters on one GPU and stream, updated with one step's scalars (norm pass included when
// step.max_unorm > 0). lr: the config's lr_tensor on the GPU or nullptr; with it or a parameter's
// step_count, the kernels derive the step's scalars from those values (Note [Device scalars]).
// Null in a build without CUDA, like backend().
struct OptimBackend {
  void (*optimizer_32bit)(const optim::Step& step, const float* lr, const OptimizerState32* params, size_t count);
  void (*optimizer_8bit)(const optim::Step& step, const float* lr, const TensorView& qmap1, const std::optional<TensorView>& qmap2,
                         const OptimizerState8bit* params, size_t count);
};
const OptimBackend* optim_backend();

}  // namespace nybble::cuda
