// cpu/kernels.hpp — the CPU kernel table: one entry per op family, the same signatures for the
// scalar oracle (cpu/ref) and every SIMD set (cpu/avx2, cpu/avx512).
//
// A kernel computes one slice [begin, end) of its op (blocks, rows or output columns, as named);
// core/ops.cpp validates arguments, splits the work over the thread pool and calls the kernel
// once per slice. A kernel's result for an element never depends on how the work was split.
#pragma once

#include <cstdint>

#include "nybble/dtype.hpp"
#include "nybble/formats.hpp"

namespace nybble::optim {
struct Step;  // cpu/ref/optim_rules.hpp
}  // namespace nybble::optim

namespace nybble::cpu {

// Per-block scales as kernels read them: plain fp32 absmax, or a double-quantized absmax
// (Note [Nested scale rounding]: the product and the sum are each rounded to fp32, as the
// reference does in two torch ops; nybble builds with -ffp-contract=off so no FMA fuses them).
struct Scales {
  const float* absmax = nullptr;   // plain, when qabsmax is null
  const uint8_t* qabsmax = nullptr;
  const float* nested_absmax = nullptr;
  const float* nested_code = nullptr;
  float offset = 0.0f;
  int64_t nested_blocksize = kNestedBlocksize;

  float operator()(int64_t block) const {
    if (qabsmax == nullptr) return absmax[block];
    const float v = nested_code[qabsmax[block]] * nested_absmax[block / nested_blocksize];
    return v + offset;
  }
};

struct Gemm4Args {
  const void* A;  // [M, K], dtype dt
  DType dt;
  int64_t M, N, K;
  const uint8_t* packed;  // W [N, K], 4-bit, row-major over N*K elements
  Scales scales;
  int64_t blocksize;
  QuantType qt;
  const void* bias;  // [N], dtype dt, or null
  void* out;         // [M, N], dtype dt
};

// One parameter of an optimizer step (nybble/optim.hpp) as the kernels see it: n elements of
// g and p (dtype dt), and its states. AdEMAMix's state1 holds 2n values (fast EMA, then slow EMA)
// and its absmax1 2 * ceil(n / kOptimizerBlocksize) scales. update_scale: the clipping factor of
// Note [Update norm] (1 without max_unorm).
struct Optim32Args {
  DType dt;
  int64_t n;
  const void* g;
  void* p;
  float* state1;
  float* state2;  // null for 1-state optimizers
  float update_scale;
};
struct Optim8Args {
  DType dt;
  int64_t n;
  const void* g;
  void* p;
  uint8_t* state1;
  uint8_t* state2;  // null for 1-state optimizers, as absmax2 and qmap2
  float* absmax1;
  float* absmax2;
  const float* qmap1;  // ascending, signed
  const float* qmap2;  // ascending, unsigned
  float update_scale;
};

struct Kernels {
  const char* name;
  // blocks [b0, b1): absmax[b] and the packed bytes of those blocks (blocksize is even).
  void (*quantize_4bit)(const void* x, DType dt, int64_t n, int64_t blocksize, QuantType qt,
                        uint8_t* packed, float* absmax, int64_t b0, int64_t b1);
  // blocks [b0, b1) of out.
  void (*dequantize_4bit)(const uint8_t* packed, const Scales& s, int64_t n, int64_t blocksize,
                          QuantType qt, void* out, DType dt, int64_t b0, int64_t b1);
  // blocks [b0, b1): absmax[b] and q of those blocks; code is an ascending 256-entry map.
  void (*quantize_8bit)(const void* x, DType dt, int64_t n, int64_t blocksize, const float* code,
                        uint8_t* q, float* absmax, int64_t b0, int64_t b1);
  void (*dequantize_8bit)(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                          int64_t blocksize, void* out, DType dt, int64_t b0, int64_t b1);
  // output columns [n0, n1) of every row.
  void (*gemm_4bit)(const Gemm4Args& a, int64_t n0, int64_t n1);
  // gemm_4bit_grad: a.A is G [M, N], a.out [M, K] (a.bias unused); output columns [k0, k1) of every row.
  void (*gemm_4bit_grad)(const Gemm4Args& a, int64_t k0, int64_t k1);
  // rows [r0, r1). outlier_mask (u8 [cols], may be null when threshold <= 0) gets 1 at the
  // columns where these rows hold an outlier; it is never cleared here.
  void (*int8_quant_rows)(const void* A, DType dt, int64_t cols, float threshold, int8_t* CA,
                          float* row_stats, uint8_t* outlier_mask, int64_t r0, int64_t r1);
  // output columns [n0, n1) of every row: out[m, n] = sum_k A[m, k] * B[n, k].
  void (*int8_matmul)(const int8_t* A, const int8_t* B, int32_t* out, int64_t M, int64_t N,
                      int64_t K, int64_t n0, int64_t n1);
  // rows [r0, r1).
  void (*int8_mm_dequant)(const int32_t* acc, const float* row_stats, const float* col_stats,
                          const void* bias, DType bias_dt, void* out, DType out_dt, int64_t N,
                          int64_t r0, int64_t r1);
  // Optimizer steps over blocks [b0, b1) of kOptimizerBlocksize elements. unorm null: the
  // update. Otherwise the norm pass of Note [Update norm]: unorm[b - b0] = the block's sum of u^2,
  // nothing else written.
  void (*optimizer_32bit)(const optim::Step& s, const Optim32Args& a, double* unorm, int64_t b0, int64_t b1);
  void (*optimizer_8bit)(const optim::Step& s, const Optim8Args& a, double* unorm, int64_t b0, int64_t b1);
};

// The kernel sets compiled into this build; avx2/avx512 are null when not compiled.
const Kernels& ref_kernels();
const Kernels* avx2_kernels();
const Kernels* avx512_kernels();

}  // namespace nybble::cpu
