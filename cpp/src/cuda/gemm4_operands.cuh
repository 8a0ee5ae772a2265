// cuda/gemm4_operands.cuh — the operands of a gemm_4bit call as both 4-bit matmul kernels read
// them (the streaming kernel of gemm4.cu and the tensor-core kernel of gemm4_mma.cu):
// out[M, N] = A[M, K] @ dequantize(packed)^T (+ bias), A row-major, packed the [N, K] weight's
// codes (two a byte, row-major), scaled per block of 2^log2_bs elements.
#pragma once

#include <cstdint>
#include <optional>

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

}  // namespace nybble::cuda
