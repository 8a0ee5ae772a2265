// cuda/gemm4.cu — out[M, N] = A[M, K] @ W^T (+ bias[N]) with W the 4-bit weight [N, K], for small
// M (meant for M <= 8, correct for any M): the weight is streamed once and never dequantized into
// memory. fp32 accumulation; equal to the CPU oracle (cpu/ref/gemm4.cpp) within fp32 rounding of
// a different summation order.
//
// gemm4_warp_per_row_kernel<T, MT>: one warp per weight row n, MT (1..8) rows of A per CTA row of
// the grid. The weight is packed over its flat N*K elements (docs/formats.md), so the warp cuts
// row n's flat range [n*K, n*K + K) into the 8-element units of the flat array that it touches:
// unit x holds elements [8x, 8x + 8), packed bytes [4x, 4x + 4). Lane l takes units
// x_first + l, + 32, ...: consecutive lanes take consecutive units, so the warp's 4-byte weight
// loads (streaming, evict-first) cover 128 contiguous bytes and its 16-byte activation loads 512
// contiguous bytes: one or four L1 wavefronts. (A first version gave each lane 32 consecutive
// elements; its activation loads touched 16 cache lines per instruction.) Each lane issues the
// weight and scale loads of kAhead units before it uses the first. Codes are decoded through the
// 16-entry table in shared memory (16 words in 16 banks: no conflicts); a nested absmax's code map
// is copied to shared memory too. Each unit's 8 weights are used for every row of A: dot = the
// 8-term fp32 product, acc += dot * scale(block); every blocksize is a multiple of 8 and units are
// 8-aligned in the flat index, so a unit never straddles a block. The first and last unit of a row
// may reach outside it (K not a multiple of 8, or odd K: rows start mid-byte); lanes 0 and 1 take
// them, masked element by element. The warp sums its lanes with shuffles; lane 0 adds the bias
// and stores.
//
// Bytes moved (M = 1): N*K/2 of weight + the scales (4 per block, or 1 per block + 4 per 256
// blocks nested) + K*sizeof(T) of activations (from cache, for every warp) + N*sizeof(T) out.
// Measured (H200, bf16, NF4 bs 64 nested, M = 1): 24-26 % of the copy bandwidth for the large
// shapes (28672 x 8192), 10-19 % for 4096-8192 square ones; ncu: L1/shared-memory throughput at
// ~80 % (one shared-memory word read per weight for the decode table, plus the activation and
// scale loads), DRAM at ~22 %. Limitations: SIMT fp32 with an exact fp32 decode table is bound by
// L1 bandwidth, not by memory, at M = 1, and by the FMA issue rate above M ~ 4. Reaching the
// bandwidth needs fewer L1 bytes per weight: a tensor-core kernel decoding to bf16/fp16 in
// registers (as the reference's MMA kernel and Marlin do), which gives up the exact fp32 weight.
// Non-finite scales (an absmax of Inf) may give Inf where the oracle gives NaN or vice versa,
// because the scale multiplies the unit's dot product instead of each weight.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/backend.hpp"
#include "cuda/codebook.hpp"
#include "cuda/elem.cuh"
#include "cuda/gemm4_operands.cuh"
#include "cuda/launch.cuh"
#include "cuda/scales.cuh"

namespace nybble::cuda {
namespace {

constexpr int kWarps = 4;     // weight rows per CTA
constexpr int kMaxRows = 8;   // rows of A per CTA (MT), the template instances 1..8
constexpr int kUnit = 8;      // weight elements per unit: 4 packed bytes, one 16-byte load of 2-byte activations
constexpr int kAhead = 8;     // units per lane whose loads are in flight together

template <DType T>
struct Gemm4Params : Gemm4Operands<T> {
  Code4Tables t4;
  bool vec_w;  // packed is 4-byte aligned
  bool vec_a;  // A is 16-byte aligned and K % 8 == 0: every unit's 8 activations are too
};

// The 4 packed bytes of unit x, little endian (byte b in bits 8b..8b+7), checked against the end.
__device__ __forceinline__ uint32_t load_unit_checked(const uint8_t* packed, int64_t nbytes, int64_t x) {
  uint32_t w = 0;
  for (int b = 0; b < 4; ++b)
    if (4 * x + b < nbytes) w |= uint32_t{packed[4 * x + b]} << (8 * b);
  return w;
}

// The 8 weights (before scaling) of a unit: code e sits in byte e / 2, high nibble for even e.
// Each byte of even4 / odd4 holds 4 * the code of one element, the byte offset of its table entry,
// so one byte permute per element finds it. (A register table read with shuffles was no faster on
// the H200: shuffles use the same L1/shared-memory bandwidth.)
__device__ __forceinline__ void decode_unit(uint32_t w, const float* lut, float (&wf)[kUnit]) {
  const uint32_t even4 = (w >> 2) & 0x3C3C3C3Cu, odd4 = (w << 2) & 0x3C3C3C3Cu;
  const char* base = reinterpret_cast<const char*>(lut);
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    wf[2 * b] = *reinterpret_cast<const float*>(base + __byte_perm(even4, 0, 0x4440u + b));
    wf[2 * b + 1] = *reinterpret_cast<const float*>(base + __byte_perm(odd4, 0, 0x4440u + b));
  }
}

// Row n's units, numbered j = 0 .. units - 1 from the unit holding the row's first element. Unit j
// holds the row's columns 8j - head .. 8j - head + 7. Units [jb, je) lie wholly inside the row;
// only unit 0 (head > 0) and unit units - 1 (tail > 0) can reach outside it.
struct RowUnits {
  int64_t x_first;  // flat unit index of unit 0
  int units, head, tail, jb, je;
  __device__ RowUnits(int64_t n, int64_t K) {
    const int64_t begin = n * K;
    x_first = begin / kUnit;
    units = static_cast<int>((begin + K - 1) / kUnit - x_first + 1);
    head = static_cast<int>(begin - x_first * kUnit);
    tail = static_cast<int>((begin + K) % kUnit);
    jb = head > 0 ? 1 : 0;
    je = tail > 0 && units > jb ? units - 1 : units;
  }
};

// The accumulation of one row of W against MT rows of A (one warp, one m tile).
template <DType T, int MT, bool kNested>
struct RowDot {
  const Gemm4Params<T>& p;
  const RowUnits& ru;
  const float* lut;    // the decode table in shared memory
  const float* code8;  // the nested code map in shared memory
  const storage_t<T>* arow;  // unit j's activations of row m: arow + m * K + 8j
  int64_t m0;
  int rows;
  float off;
  float acc[MT];

  __device__ float scale(int j) const {
    const int64_t b = ((ru.x_first + j) * kUnit) >> p.log2_bs;
    return kNested ? p.scales.nested(b, off, code8) : p.scales.absmax[b];
  }

  // kAhead full units j0, j0 + 32, ... (those below je when kCheck): all loads first. The units
  // of a round sit at constant offsets from one base (128 packed bytes, 256 activations apart).
  // kVecW: packed is 4-byte aligned.
  template <bool kCheck, bool kVecW>
  __device__ void round(int j0) {
    const int64_t x0 = ru.x_first + j0;
    const uint8_t* wp = p.packed + 4 * x0;
    const storage_t<T>* ap = arow + int64_t{8} * j0;
    uint32_t w[kAhead];
    float sc[kAhead];
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      w[u] = 0;
      sc[u] = 0.0f;
      if (kCheck && j0 + 32 * u >= ru.je) continue;
      if constexpr (kVecW) w[u] = __ldcs(reinterpret_cast<const unsigned int*>(wp + 128 * u));  // read once: evict first
      else w[u] = load_unit_checked(p.packed, p.nbytes, x0 + 32 * u);
      const int64_t b = ((x0 + 32 * u) * kUnit) >> p.log2_bs;  // a unit never straddles a block
      sc[u] = kNested ? p.scales.nested(b, off, code8) : p.scales.absmax[b];
    }
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      if (kCheck && j0 + 32 * u >= ru.je) continue;
      float wf[kUnit];
      decode_unit(w[u], lut, wf);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m >= rows) break;
        float v[kUnit];
        load8_full<T>(ap + m * p.K + 256 * u, p.vec_a, v);
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < kUnit; ++e) dot = fmaf(v[e], wf[e], dot);
        acc[m] = fmaf(dot, sc[u], acc[m]);
      }
    }
  }

  template <bool kVecW>
  __device__ void full_units(int lane) {
    // Unchecked rounds while every lane of the warp has kAhead units left, then one checked round.
    int j0 = ru.jb + lane, first = ru.jb;
    for (; first + 32 * kAhead <= ru.je; j0 += 32 * kAhead, first += 32 * kAhead) round<false, kVecW>(j0);
    if (first < ru.je) round<true, kVecW>(j0);
  }

  // A unit that reaches outside the row: only its columns inside it count.
  __device__ void edge(int j) {
    const uint32_t w = load_unit_checked(p.packed, p.nbytes, ru.x_first + j);
    float dot[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) dot[m] = 0.0f;
    for (int e = 0; e < kUnit; ++e) {
      const int64_t k = int64_t{8} * j + e - ru.head;
      if (k < 0 || k >= p.K) continue;
      const float wv = lut[(w >> (8 * (e / 2) + (e % 2 == 0 ? 4 : 0))) & 0xFu];
#pragma unroll
      for (int m = 0; m < MT; ++m)
        if (m < rows) dot[m] = fmaf(Elem<T>::load(p.A, (m0 + m) * p.K + k), wv, dot[m]);
    }
    const float sc = scale(j);
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m] = fmaf(dot[m], sc, acc[m]);
  }
};

template <DType T, int MT, bool kNested>
__global__ void __launch_bounds__(kWarps * 32) gemm4_warp_per_row_kernel(Gemm4Params<T> p) {
  __shared__ float lut[16];
  __shared__ float code8[kNested ? 256 : 1];
  if (threadIdx.x < 16) lut[threadIdx.x] = p.t4.code[threadIdx.x];
  if constexpr (kNested)
    for (int i = threadIdx.x; i < 256; i += blockDim.x) code8[i] = p.scales.nested_code[i];
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t{blockIdx.x} * kWarps + threadIdx.x / 32;
  if (n >= p.N || p.K == 0) {
    if (n < p.N && lane == 0)  // K == 0: the bias alone
      for (int64_t m0 = int64_t{blockIdx.y} * MT; m0 < p.M; m0 += int64_t{gridDim.y} * MT)
        for (int64_t m = m0; m < m0 + MT && m < p.M; ++m)
          Elem<T>::store(p.out, m * p.N + n, p.bias != nullptr ? Elem<T>::load(p.bias, n) : 0.0f);
    return;  // no barrier follows
  }
  const RowUnits ru(n, p.K);
  const float off = kNested ? p.scales.offset_value() : 0.0f;
  for (int64_t m0 = int64_t{blockIdx.y} * MT; m0 < p.M; m0 += int64_t{gridDim.y} * MT) {
    RowDot<T, MT, kNested> d{p, ru, lut, code8, p.A + m0 * p.K - ru.head, m0, p.M - m0 < MT ? static_cast<int>(p.M - m0) : MT, off, {}};
#pragma unroll
    for (int m = 0; m < MT; ++m) d.acc[m] = 0.0f;
    if (p.vec_w) d.template full_units<true>(lane);
    else d.template full_units<false>(lane);
    if (lane == 0 && ru.jb > 0) d.edge(0);
    if (lane == 1 && ru.je < ru.units) d.edge(ru.units - 1);
#pragma unroll
    for (int m = 0; m < MT; ++m)
      for (int o = 16; o > 0; o /= 2) d.acc[m] += __shfl_xor_sync(0xFFFFFFFFu, d.acc[m], o);
    if (lane == 0) {
      const float b = p.bias != nullptr ? Elem<T>::load(p.bias, n) : 0.0f;
#pragma unroll
      for (int m = 0; m < MT; ++m)
        if (m < d.rows) Elem<T>::store(p.out, (m0 + m) * p.N + n, p.bias != nullptr ? d.acc[m] + b : d.acc[m]);
    }
  }
}

template <DType T, int MT>
void launch_rows(const Call& call, const Gemm4Params<T>& p) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, kWarps)), static_cast<unsigned>(std::min<int64_t>(ceil_div(p.M, MT), 65535)));
  if (p.scales.qabsmax != nullptr)
    gemm4_warp_per_row_kernel<T, MT, true><<<grid, kWarps * 32, 0, call.stream()>>>(p);
  else
    gemm4_warp_per_row_kernel<T, MT, false><<<grid, kWarps * 32, 0, call.stream()>>>(p);
  call.check_launch("gemm4_warp_per_row_kernel");
}

// MT = min(M, 8), a compile-time row count for the accumulators.
template <DType T, int MT = 1>
void launch_for_rows(const Call& call, const Gemm4Params<T>& p) {
  if constexpr (MT < kMaxRows) {
    if (p.M > MT) return launch_for_rows<T, MT + 1>(call, p);
  }
  launch_rows<T, MT>(call, p);
}

}  // namespace

void gemm_4bit(const TensorView& A, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
               QuantType qt, const std::optional<TensorView>& bias, const TensorView& out) {
  const int64_t M = A.shape[0], K = A.shape[1], N = out.shape[1];
  if (M == 0 || N == 0) return;
  // Note [gemm_4bit paths]: bf16/fp16 activations on the usual shapes (K % 64 == 0, blocksize >= 64,
  // aligned buffers: gemm4_skinny_applies, gemm4_tile_applies) take, up to 16 rows, the
  // weight-streaming tensor-core kernel (gemm4_skinny.cu: each weight's code rounded to T, times its
  // scale in fp32), and above, the tiled kernel that decodes each weight once per CTA into shared
  // memory (gemm4_tile.cu: the weights rounded to T as dequantize_4bit rounds them). Other shapes:
  // up to kMaxRows (8) rows of A, the streaming kernel of this file (exact fp32 weights); above, with
  // bf16/fp16 activations, the register-decoding tensor-core kernel (gemm4_mma.cu). The Python layer
  // sends M above GPU_FUSED_MAX_ROWS (_ops.py) to dequantize + cuBLASLt instead. fp32 activations,
  // and a packed buffer that is not 4-byte aligned (the tensor-core kernels' loads), stay on the
  // streaming kernel for every M.
  if (gemm4_skinny_applies(A, packed, scales, blocksize, N)) return gemm_4bit_skinny(A, packed, scales, blocksize, qt, bias, out);
  if (gemm4_tile_applies(A, packed, scales, blocksize, N)) return gemm_4bit_tile(A, packed, scales, blocksize, qt, bias, out);
  if (M > kMaxRows && (A.dtype == DType::BF16 || A.dtype == DType::F16) && aligned(packed.data, 4))
    return gemm_4bit_mma(A, packed, scales, blocksize, qt, bias, out);
  const Call call("gemm_4bit", A);
  dispatch_float(A.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    const Gemm4Params<T> p{gemm4_operands<T>(A, packed, scales, blocksize, bias, out), code4_tables(qt),
                           aligned(packed.data, 4), aligned(A.data, 16) && K % 8 == 0};
    launch_for_rows<T>(call, p);
  });
}

}  // namespace nybble::cuda
