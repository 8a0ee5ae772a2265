// nybble/ops.hpp — every operation of the library, on caller-owned buffers.
//
// All tensors are TensorViews over memory the caller owns; nybble never allocates device memory
// behind the caller's back. Inputs and outputs must be contiguous (row-major). Every function
// validates its arguments and throws nybble::Error naming the argument, its value and the rule.
// Element counts and indices are 64-bit throughout. Formats: see nybble/formats.hpp and
// docs/formats.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "nybble/formats.hpp"
#include "nybble/tensor_view.hpp"

namespace nybble {

// ---- 4-bit (NF4 / FP4) -------------------------------------------------------------------------

// Double-quantized absmax (§1.6): scale of block i = nested_code[q[i]] *
// nested_absmax[i / nested_blocksize] + offset, each step rounded to fp32.
struct NestedAbsmax {
  TensorView nested_absmax;  // f32 [ceil(nblocks / nested_blocksize)]
  TensorView nested_code;    // f32 [256]
  float offset = 0.0f;
  int64_t nested_blocksize = kNestedBlocksize;
  // The offset as a tensor (f32, one element, on the device of the data): when given it is used
  // instead of `offset`, and a GPU kernel reads it on the GPU, so the offset that
  // absmax_mean(absmax, out) left there never has to come back to the host.
  std::optional<TensorView> offset_tensor = std::nullopt;
};

// Per-block scales of a blockwise-quantized tensor: plain f32 absmax, or u8 codes of a
// double-quantized absmax when `nested` is set.
struct BlockScales {
  TensorView absmax;  // f32 [nblocks], or u8 [nblocks] when nested
  std::optional<NestedAbsmax> nested;
};

// A (f32/f16/bf16, n elements, any shape) -> packed (any dtype, (n+1)/2 bytes), absmax
// (f32 [ceil(n/blocksize)]). blocksize in {32, ..., 4096}.
void quantize_4bit(const TensorView& A, const TensorView& packed, const TensorView& absmax,
                   int64_t blocksize, QuantType quant_type);

// packed + scales -> out (f32/f16/bf16; its element count n defines the tensor).
void dequantize_4bit(const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                     QuantType quant_type, const TensorView& out);

// out[M, N] = A[M, K] @ W^T (+ bias[N]), W the 4-bit weight [N, K] packed row-major over its
// N*K elements (blocks run over that flat index, so any K works). A, bias and out share one
// dtype (f32/f16/bf16); accumulation is in fp32. The dequantized weight is never materialized.
// The weights enter the products exactly (fp32), except on CUDA with more than 8 rows of bf16/fp16
// A, where the tensor-core kernel rounds each weight to A's type as dequantize_4bit does.
void gemm_4bit(const TensorView& A, const TensorView& packed, const BlockScales& scales,
               int64_t blocksize, QuantType quant_type, const std::optional<TensorView>& bias,
               const TensorView& out);

// out[M, K] = G[M, N] @ W, W the 4-bit weight [N, K] of gemm_4bit: the gradient of gemm_4bit's
// output with respect to its A (a frozen weight's backward), the weight read in place, never
// materialized. G and out share one dtype (f32/f16/bf16); accumulation is in fp32, in ascending n
// on the CPU (the oracle: exact fp32 weights). On CUDA, bf16/fp16 G on the tiled kernel's shapes
// (K % 64 == 0, N % 8 == 0, blocksize >= 64, aligned buffers) rounds each weight to G's type as
// dequantize_4bit does (dequantize + a bf16/fp16 GEMM with fp32 accumulation); others are exact.
void gemm_4bit_grad(const TensorView& G, const TensorView& packed, const BlockScales& scales,
                    int64_t blocksize, QuantType quant_type, const TensorView& out);

// ---- 8-bit blockwise ---------------------------------------------------------------------------

// A (f32/f16/bf16, n elements) -> out (u8 [n], index into code), absmax (f32 [ceil(n/bs)]).
// code: f32 [256], ascending (e.g. dynamic_map_signed()). Any positive blocksize on the CPU.
void quantize_blockwise(const TensorView& A, const TensorView& code, const TensorView& out,
                        const TensorView& absmax, int64_t blocksize);

// codes (u8 [n]) + absmax -> out (f32/f16/bf16, n elements): out[i] = code[q[i]] * absmax[i / bs].
void dequantize_blockwise(const TensorView& codes, const TensorView& absmax, const TensorView& code,
                          int64_t blocksize, const TensorView& out);

// ---- double quantization of absmax (§1.6) ------------------------------------------------------

// The offset subtracted before nesting: mean of absmax, as fp32 (summed in double in the fixed
// order of Note [Offset] in formats.hpp, so every device gives the same bits). For a GPU tensor
// this form waits for the GPU (it synchronizes the tensor's stream); the next form does not.
float absmax_mean(const TensorView& absmax);
// The same mean written to out (f32, one element, on absmax's device), without synchronizing.
void absmax_mean(const TensorView& absmax, const TensorView& out);

// absmax (f32 [nblocks]) -> qabsmax (u8 [nblocks]) and nested_absmax (f32 [ceil(nblocks/256)]):
// quantize_blockwise(absmax - offset, dynamic_map_signed(), blocksize 256).
void quantize_absmax_nested(const TensorView& absmax, float offset, const TensorView& qabsmax,
                            const TensorView& nested_absmax);
// The same with the offset read from a tensor (f32, one element, on absmax's device), e.g. the
// output of absmax_mean(absmax, out).
void quantize_absmax_nested(const TensorView& absmax, const TensorView& offset, const TensorView& qabsmax,
                            const TensorView& nested_absmax);

// The inverse: out (f32 [nblocks]) = the scales the nested absmax stands for.
void dequantize_absmax_nested(const TensorView& qabsmax, const NestedAbsmax& nested,
                              const TensorView& out);

// ---- LLM.int8 (§2.1) ---------------------------------------------------------------------------

// A (f32/f16/bf16 [rows, cols]) -> CA (i8 [rows, cols]), row_stats (f32 [rows]).
// row_stats[r] = max |A[r, j]| over the row; CA = round_half_even(A * 127 / row_stats).
// threshold > 0: elements with |x| >= threshold are outliers: they are left out of row_stats,
// every column holding one is zeroed in CA, and outlier_cols (u8 [cols], if given) gets 1 for
// those columns and 0 elsewhere. On a GPU, outlier_cols is required when threshold > 0: the
// kernels collect the columns there (nybble allocates no device memory of its own).
void int8_vectorwise_quant(const TensorView& A, float threshold, const TensorView& CA,
                           const TensorView& row_stats,
                           const std::optional<TensorView>& outlier_cols = std::nullopt);

// CA (i8 [rows, cols]) * stats[r] / 127 -> out (f32/f16/bf16 [rows, cols]).
void int8_vectorwise_dequant(const TensorView& CA, const TensorView& stats, const TensorView& out);

// out (i32 [M, N]) = A (i8 [M, K]) @ B (i8 [N, K])^T, exact int32 accumulation.
void int8_linear_matmul(const TensorView& A, const TensorView& B, const TensorView& out);

// out[r, c] = acc[r, c] * row_stats[r] * col_stats[c] / (127*127) (+ bias[c]), computed in fp32
// and stored in out's dtype (f32/f16/bf16). bias: f32/f16/bf16 [N].
void int8_mm_dequant(const TensorView& acc, const TensorView& row_stats, const TensorView& col_stats,
                     const std::optional<TensorView>& bias, const TensorView& out);

// ---- runtime -----------------------------------------------------------------------------------

// Worker threads for CPU kernels (default: all hardware threads). Results do not depend on it.
void set_num_threads(int n);
int get_num_threads();

// CPU kernel set in use: "ref", "avx2" or "avx512". The environment variable NYBBLE_CPU_ISA
// (ref / avx2 / avx512 / auto) or set_cpu_isa() force a set; asking for one the CPU cannot run
// throws. Returns the set now in use.
std::string cpu_isa();
std::string set_cpu_isa(const std::string& isa);
// The CPU features nybble detected (e.g. "avx2 fma f16c"), for diagnostics.
std::string cpu_features();

std::string version();

// Whether this build includes the CUDA backend, and how many GPUs it sees (0 without a driver).
// GPU tensors: all tensors of one call must be on the same GPU and carry the same stream
// (TensorView::stream); every kernel of the call runs on that stream.
bool cuda_built();
int cuda_device_count();

// ---- managed (paged) memory --------------------------------------------------------------------

// CUDA managed memory for paged buffers (optimizer states): `bytes` zero-filled bytes that the
// driver migrates between the GPU and the host on demand, so they may exceed the GPU's free
// memory. Tensors over it are ordinary device tensors of `device` to every kernel. Throws
// (ErrorKind::Runtime) in a build without CUDA or when the allocation fails.
void* managed_alloc(int64_t bytes, int device);
void managed_free(void* ptr) noexcept;
// Asks the driver to migrate [ptr, ptr + bytes) to GPU `device`, or to the host when device < 0,
// asynchronously on `stream` (a cudaStream_t). A no-op where the GPU cannot access managed
// memory concurrently (the driver then migrates on first touch) and for memory that is not
// managed (nothing to migrate).
void managed_prefetch(const void* ptr, int64_t bytes, int device, void* stream);

}  // namespace nybble
