// cuda/gemm4_operands.cuh — the operands of a gemm_4bit call as the 4-bit matmul kernels read
// them (the streaming kernel of gemm4.cu, the tensor-core kernels of gemm4_mma.cu and
// gemm4_skinny.cu):
// out[M, N] = A[M, K] @ dequantize(packed)^T (+ bias), A row-major, packed the [N, K] weight's
// codes (two a byte, row-major), scaled per block of 2^log2_bs elements.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>

#include "cuda/codebook.hpp"
#include "cuda/elem.cuh"
#include "cuda/launch.cuh"
#include "cuda/scales.cuh"

namespace nybble::cuda {

template <DType T>
struct Gemm4Operands {
  const storage_t<T>* A;
  const uint8_t* packed;
  int64_t nbytes;  // of packed: bytes past it are never read
  DeviceScales scales;
  int log2_bs;
  const storage_t<T>* bias;  // null: no bias
  storage_t<T>* out;
  int64_t M, N, K;
};

// The operands of a validated call (ops.cpp checked shapes, dtypes and the blocksize).
template <DType T>
Gemm4Operands<T> gemm4_operands(const TensorView& A, const TensorView& packed, const BlockScales& scales,
                                int64_t blocksize, const std::optional<TensorView>& bias, const TensorView& out) {
  return {static_cast<const storage_t<T>*>(A.data),
          packed.ptr<const uint8_t>(),
          packed.nbytes(),
          device_scales(scales),
          exact_log2(blocksize),
          bias ? static_cast<const storage_t<T>*>(bias->data) : nullptr,
          static_cast<storage_t<T>*>(out.data),
          A.shape[0], out.shape[1], A.shape[1]};
}

// The operands and the format's 16-entry code table by value: what the tensor-core kernels
// (gemm4_mma.cu, gemm4_skinny.cu) take; each builds its own decode table from the code table.
template <DType T>
struct Gemm4MmaParams : Gemm4Operands<T> {
  float code[16];  // formats.hpp code_table
};

template <DType T>
Gemm4MmaParams<T> gemm4_mma_params(const TensorView& A, const TensorView& packed, const BlockScales& scales,
                                   int64_t blocksize, QuantType qt, const std::optional<TensorView>& bias,
                                   const TensorView& out) {
  Gemm4MmaParams<T> p{gemm4_operands<T>(A, packed, scales, blocksize, bias, out), {}};
  const Code4Tables t4 = code4_tables(qt);
  std::copy(t4.code, t4.code + 16, p.code);
  return p;
}

// gemm_4bit_grad's operands (out[M, K] = G[M, N] @ W) in the same struct: A is G, N its columns,
// K out's columns, no bias.
template <DType T>
Gemm4MmaParams<T> gemm4_grad_params(const TensorView& G, const TensorView& packed, const BlockScales& scales,
                                    int64_t blocksize, QuantType qt, const TensorView& out) {
  Gemm4MmaParams<T> p = gemm4_mma_params<T>(G, packed, scales, blocksize, qt, std::nullopt, out);
  p.N = G.shape[1];
  p.K = out.shape[1];
  return p;
}

// Calls f(std::integral_constant<DType, T>{}) for dt = BF16 or F16, the tensor-core kernels' types.
template <class F>
void dispatch_half(DType dt, F&& f) {
  if (dt == DType::BF16) f(std::integral_constant<DType, DType::BF16>{});
  else f(std::integral_constant<DType, DType::F16>{});
}

}  // namespace nybble::cuda
