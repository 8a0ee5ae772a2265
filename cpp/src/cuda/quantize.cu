// cuda/quantize.cu — blockwise quantization on the GPU: 4-bit NF4/FP4 (packed two codes a byte),
// 8-bit with a 256-entry map, and the nested 8-bit quantization of a 4-bit absmax. Codes and
// absmax equal the CPU oracle's (cpu/ref/quantize.cpp) bit for bit.
//
// Layout (docs/formats.md): block b covers flat elements [b*bs, min((b+1)*bs, n)); absmax[b] is the
// NaN-ignoring max |x|; x is scaled by the IEEE reciprocal 1.0f / absmax[b] (__fdiv_rn) and mapped
// by the rules of cuda/codebook.hpp, which equal formats.hpp's. 4-bit: byte j = (q[2j] << 4) |
// q[2j+1], an odd tail padded with the code of 0.0.
//
// Kernels:
// - quantize_blocks_kernel: blocksize a power of two from 8 to 4096 (every 4-bit blocksize, the
//   usual 8-bit ones). Each thread holds 8 consecutive elements in registers,
//   read with 16-byte loads; the bs/8 threads of a block reduce the absmax with shuffles (through
//   shared memory when a block spans several warps), then each thread quantizes its elements and
//   writes 4 (4-bit) or 8 (8-bit) bytes at once. Every element is read once.
// - quantize_8bit_warp_kernel: any other 8-bit blocksize. One warp per block, two passes over it
//   (max, then codes); the second pass mostly hits L1/L2. Correctness path for unusual sizes.
//
// Bytes moved (the count the benchmarks divide by): 4-bit: n * sizeof(T) read + n / 2 written +
// 4 per block; 8-bit: n * sizeof(T) + n + 4 per block.
// Limitations: the 8-bit search costs ~9 shared-memory reads per element, so 8-bit quantization
// is compute-bound below the bandwidth of 2-byte inputs on an H200.
#include <cuda_runtime.h>

#include <optional>

#include "cuda/backend.hpp"
#include "cuda/codebook.hpp"
#include "cuda/elem.cuh"
#include "cuda/launch.cuh"

namespace nybble::cuda {
namespace {

constexpr int kThreads = 256;  // per CTA, unless one block needs more (bs 4096: 512 threads)
constexpr int kPerThread = 8;  // elements per thread and tile: one 16-byte load of a 2-byte type
constexpr int kTablesPerSm = 6;  // CTAs per multiprocessor of the 4-bit grid (32 KiB of table each)

// Where an 8-bit kernel reads its map from: a device tensor, or the kernel's parameters (the
// signed dynamic map of nested quantization, which then needs no device copy).
struct CodeInGlobal {
  const float* p;
  __device__ float operator[](int i) const { return p[i]; }
};
struct CodeByValue {
  float v[256];
  __device__ float operator[](int i) const { return v[i]; }
};

// Shared-memory tables of an 8-bit map: the sorted map and its search tree (codebook.hpp).
struct Code8Shared {
  float code[256];
  float tree[256];
};

template <class Code>
__device__ void load_code8(Code8Shared& s, const Code& code) {
  for (int t = threadIdx.x; t < 256; t += blockDim.x) {
    s.code[t] = code[t];
    s.tree[t] = t == 0 ? 0.0f : code[code8_tree_index(t)];
  }
  __syncthreads();
}

// The absmax of the bs/8-thread group this thread belongs to (groups are aligned: thread t is in
// group t / group). Every thread of the CTA must call it (it holds barriers for groups > 32).
__device__ float group_absmax(float m, int group, float* red) {
  if (group <= 32) return warp_max(m, group);
  m = warp_max(m);
  const int warp = threadIdx.x / 32, first = (threadIdx.x / group) * (group / 32);
  __syncthreads();  // red is free: the previous round's readers are done
  if (threadIdx.x % 32 == 0) red[warp] = m;
  __syncthreads();
  m = 0.0f;
  for (int w = first; w < first + group / 32; ++w) m = absmax_step(m, red[w]);
  return m;
}

// 4-bit or 8-bit (Bits) quantization of blocks of 2^log2_bs elements, 8 <= bs <= 4096.
// kCentered: quantize x - offset (nested quantization of an absmax; offset from *offset_ptr when
// given). Out: packed bytes (4-bit) or codes (8-bit); vec_out: out allows 4-/8-byte stores.
// 4-bit codes come from the bucket table (Note [Bucket tables]) that each CTA builds in shared
// memory (32 KiB; the grid is about what is resident, so each CTA builds it once); 8-bit codes
// from the search tree of the map.
template <DType T, int Bits, QuantType QT, class Code, bool kCentered>
__global__ void quantize_blocks_kernel(const storage_t<T>* __restrict__ x, int64_t n, int log2_bs, Code4Tables t4,
                                       Code code8, const float* offset_ptr, float offset, uint8_t* __restrict__ out,
                                       float* __restrict__ absmax, bool vec_x, bool vec_out) {
  constexpr size_t kTableBytes = Bits == 4 ? sizeof(Bucket) * kBuckets : sizeof(Code8Shared);
  __shared__ alignas(16) unsigned char table[kTableBytes];
  __shared__ float red[32];
  const auto* buckets = reinterpret_cast<const Bucket*>(table);
  const auto* t8 = reinterpret_cast<const Code8Shared*>(table);
  if constexpr (Bits == 4) {
    const uint32_t used = QT == QuantType::NF4 ? kBuckets : kBuckets / 2;  // FP4 looks up |x| only
    for (uint32_t k = threadIdx.x; k < used; k += blockDim.x)
      reinterpret_cast<Bucket*>(table)[k] = make_bucket(t4.thresholds, t4.nthresholds, k);
    __syncthreads();
  } else {
    load_code8(*reinterpret_cast<Code8Shared*>(table), code8);
  }
  float off = 0.0f;
  if constexpr (kCentered) off = offset_ptr != nullptr ? *offset_ptr : offset;
  const int group = (1 << log2_bs) / kPerThread;
  const int64_t per_tile = int64_t{blockDim.x} * kPerThread;
  const int64_t tiles = ceil_div(n, per_tile);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t i = tile * per_tile + int64_t{threadIdx.x} * kPerThread;
    const int valid = n - i >= kPerThread ? kPerThread : (n > i ? static_cast<int>(n - i) : 0);  // elements below n
    float v[kPerThread];
    load8<T>(x, i, n, vec_x, v);
    float m = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      if constexpr (kCentered) v[j] = __fsub_rn(v[j], off);
      if (j < valid) m = absmax_step(m, v[j]);
    }
    m = group_absmax(m, group, red);
    if (valid == 0) continue;  // no barrier follows in this round
    if ((threadIdx.x & (group - 1)) == 0) absmax[i >> log2_bs] = m;
    const float r = __fdiv_rn(1.0f, m);
    if constexpr (Bits == 4) {
      uint32_t word = 0;
#pragma unroll
      for (int j = 0; j < kPerThread / 2; ++j) {
        const uint32_t hi = quantize_4bit_bucket<QT>(buckets, __fmul_rn(v[2 * j], r));
        const uint32_t lo = 2 * j + 1 < valid ? quantize_4bit_bucket<QT>(buckets, __fmul_rn(v[2 * j + 1], r)) : t4.zero_code;
        word |= ((hi << 4) | lo) << (8 * j);
      }
      uint8_t* dst = out + i / 2;
      if (vec_out && valid == kPerThread) {
        *reinterpret_cast<uint32_t*>(dst) = word;
      } else {
        for (int j = 0; 2 * j < valid; ++j) dst[j] = static_cast<uint8_t>(word >> (8 * j));
      }
    } else {
      uint32_t w[2] = {0, 0};
#pragma unroll
      for (int j = 0; j < kPerThread; ++j)
        w[j / 4] |= uint32_t{quantize_8bit_tree(t8->tree, t8->code, __fmul_rn(v[j], r))} << (8 * (j % 4));
      uint8_t* dst = out + i;
      if (vec_out && valid == kPerThread) {
        *reinterpret_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
      } else {
        for (int j = 0; j < valid; ++j) dst[j] = static_cast<uint8_t>(w[j / 4] >> (8 * (j % 4)));
      }
    }
  }
}

// 8-bit quantization for any blocksize: one warp per block, reading it twice.
template <DType T, class Code>
__global__ void quantize_8bit_warp_kernel(const storage_t<T>* __restrict__ x, int64_t n, int64_t bs, Code code8,
                                          uint8_t* __restrict__ q, float* __restrict__ absmax) {
  __shared__ Code8Shared t8;
  load_code8(t8, code8);
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  const int64_t nb = ceil_div(n, bs);
  for (int64_t b = int64_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32; b < nb; b += warps) {
    const int64_t begin = b * bs, end = begin + bs < n ? begin + bs : n;
    float m = 0.0f;
    for (int64_t i = begin + lane; i < end; i += 32) m = absmax_step(m, Elem<T>::load(x, i));
    m = warp_max(m);
    if (lane == 0) absmax[b] = m;
    const float r = __fdiv_rn(1.0f, m);
    for (int64_t i = begin + lane; i < end; i += 32)
      q[i] = quantize_8bit_tree(t8.tree, t8.code, __fmul_rn(Elem<T>::load(x, i), r));
  }
}

// Launches quantize_blocks_kernel for a power-of-two blocksize in [8, 4096].
template <DType T, int Bits, QuantType QT, class Code, bool kCentered>
void launch_blocks(const Call& call, const void* x, int64_t n, int64_t bs, const Code& code8, const float* offset_ptr,
                   float offset, uint8_t* out, float* absmax) {
  const int threads = static_cast<int>(bs / kPerThread > kThreads ? bs / kPerThread : kThreads);
  const auto* xs = static_cast<const storage_t<T>*>(x);
  const unsigned grid = call.grid(n, int64_t{threads} * kPerThread, Bits == 4 ? kTablesPerSm : 32);
  quantize_blocks_kernel<T, Bits, QT, Code, kCentered><<<grid, threads, 0, call.stream()>>>(
      xs, n, exact_log2(bs), code4_tables(QT), code8, offset_ptr, offset, out, absmax, aligned(x, 16),
      aligned(out, Bits == 4 ? 4 : 8));
  call.check_launch("quantize_blocks_kernel");
}

bool blocks_kernel_fits(int64_t bs) { return exact_log2(bs) >= 3 && bs <= 4096; }

}  // namespace

void quantize_4bit(const TensorView& A, const TensorView& packed, const TensorView& absmax, int64_t blocksize,
                   QuantType qt) {
  const int64_t n = A.numel();
  if (n == 0) return;
  const Call call("quantize_4bit", A);
  dispatch_float(A.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    const CodeInGlobal none{nullptr};
    if (qt == QuantType::NF4)
      launch_blocks<T, 4, QuantType::NF4, CodeInGlobal, false>(call, A.data, n, blocksize, none, nullptr, 0.0f,
                                                               packed.ptr<uint8_t>(), absmax.ptr<float>());
    else
      launch_blocks<T, 4, QuantType::FP4, CodeInGlobal, false>(call, A.data, n, blocksize, none, nullptr, 0.0f,
                                                               packed.ptr<uint8_t>(), absmax.ptr<float>());
  });
}

void quantize_blockwise(const TensorView& A, const TensorView& code, const TensorView& out, const TensorView& absmax,
                        int64_t blocksize) {
  const int64_t n = A.numel();
  if (n == 0) return;
  const Call call("quantize_blockwise", A);
  const CodeInGlobal map{code.ptr<const float>()};
  dispatch_float(A.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    if (blocks_kernel_fits(blocksize)) {
      launch_blocks<T, 8, QuantType::NF4, CodeInGlobal, false>(call, A.data, n, blocksize, map, nullptr, 0.0f,
                                                               out.ptr<uint8_t>(), absmax.ptr<float>());
      return;
    }
    const int threads = kThreads;
    quantize_8bit_warp_kernel<T, CodeInGlobal><<<call.grid(ceil_div(n, blocksize), threads / 32), threads, 0, call.stream()>>>(
        static_cast<const storage_t<T>*>(A.data), n, blocksize, map, out.ptr<uint8_t>(), absmax.ptr<float>());
    call.check_launch("quantize_8bit_warp_kernel");
  });
}

void quantize_absmax_nested(const TensorView& absmax, float offset, const std::optional<TensorView>& offset_tensor,
                            const TensorView& qabsmax, const TensorView& nested_absmax) {
  const int64_t n = absmax.numel();
  if (n == 0) return;
  const Call call("quantize_absmax_nested", absmax);
  CodeByValue map{};
  const Code8& signed_map = dynamic_map_signed();
  for (int i = 0; i < 256; ++i) map.v[i] = signed_map[static_cast<size_t>(i)];
  static_assert(kNestedBlocksize >= 8 && kNestedBlocksize <= 4096 && (kNestedBlocksize & (kNestedBlocksize - 1)) == 0,
                "the nested blocksize must suit quantize_blocks_kernel");
  launch_blocks<DType::F32, 8, QuantType::NF4, CodeByValue, true>(
      call, absmax.data, n, kNestedBlocksize, map, offset_tensor ? offset_tensor->ptr<const float>() : nullptr, offset,
      qabsmax.ptr<uint8_t>(), nested_absmax.ptr<float>());
}

}  // namespace nybble::cuda
