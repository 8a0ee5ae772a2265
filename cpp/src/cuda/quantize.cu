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
// - quantize_blocks_kernel: blocksize a power of two from 16 (8 for fp32) to 4096 (every 4-bit
//   blocksize, the usual 8-bit ones). A thread's tile is 32 bytes of consecutive elements (16 of
//   a 2-byte type, 8 of fp32), read with two 16-byte loads; the bs/16 (bs/8) threads of a block
//   reduce the absmax with shuffles (through shared memory when a block spans several warps),
//   then each thread quantizes its elements and writes 8 or 4 (4-bit), 16 or 8 (8-bit) bytes at
//   once. Every element is read once. Each thread has the loads of its next tile in flight while
//   it quantizes the current one (two tiles in registers, as loaded), and the grid is what is
//   resident (kResidentThreads a multiprocessor): 40 KiB of loads always in flight per
//   multiprocessor. A 4-bit code takes one 32-bit shared-memory read and eight other
//   instructions (Note [Bucket tables]); an 8-bit code two shared-memory reads (a byte, then a
//   threshold) and about eight other instructions (Note [8-bit bucket tables]), when the map
//   passes that note's checks (the dynamic maps, a linear map), else the tree search of
//   Note [Search trees] (9 reads). Each CTA builds its table (16 KiB for 4-bit, 6 KiB for 8-bit)
//   once.
// - quantize_8bit_warp_kernel: any other 8-bit blocksize. One warp per block, two passes over it
//   (max, then codes); the second pass mostly hits L1/L2. Correctness path for unusual sizes.
//
// Bytes moved (the count the benchmarks divide by): 4-bit: n * sizeof(T) read + n / 2 written +
// 4 per block; 8-bit: n * sizeof(T) + n + 4 per block.
// Limitations: the 8-bit tree search (~9 shared-memory reads per element) ran at 22 % of the copy
// bandwidth on an H200; the 8-bit bucket tables that replace it for maps passing their checks
// run at 62 % (16384^2 bf16, bs 256). A map that fails them (e.g. entries closer than a bucket, or beyond +-2)
// still takes the tree search.
#include <cuda_runtime.h>

#include <optional>

#include "cuda/backend.hpp"
#include "cuda/codebook.hpp"
#include "cuda/elem.cuh"
#include "cuda/launch.cuh"

namespace nybble::cuda {
namespace {

constexpr int kThreads = 256;  // per CTA, unless one block needs more (fp32 bs 4096: 512 threads)
constexpr int kTileBytes = 32;  // input bytes per thread and tile: two 16-byte loads
// Threads of quantize_blocks_kernel resident on a multiprocessor: its grid is exactly this many,
// so each CTA builds its table once and no second, partial wave of CTAs runs with the
// multiprocessors half idle. Its launch bounds make them fit: 5 CTAs of 256 threads (at most 48
// registers a thread, 16.5 KiB of shared memory a CTA), or for fp32, whose CTAs reach 512
// threads, 40 registers.
constexpr int kResidentThreads = 1280;

// Elements per thread and tile: 16 of a 2-byte type, 8 of fp32.
template <DType T>
inline constexpr int kPer = kTileBytes / static_cast<int>(sizeof(storage_t<T>));
template <DType T>
inline constexpr int kMaxThreads = 4096 / kPer<T> > kThreads ? 4096 / kPer<T> : kThreads;

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

// A thread's tile as loaded: its storage bits, two elements a word (2-byte types) or one (fp32).
// The kernel loads the next tile into one before it quantizes the current one, and unpacks the
// values only when it uses them, so a load stays in flight for a whole tile's work.
struct RawTile {
  uint32_t w[kTileBytes / 4];
};

template <DType T>
__device__ __forceinline__ uint32_t storage_bits(storage_t<T> s) {
  if constexpr (T == DType::F32) return __float_as_uint(s);
  else return s;
}

// Elements [i, i + kPer<T>), 0 past n; whole: all of them below n, p 16-byte aligned and i a
// multiple of kPer<T> (two 16-byte loads).
template <DType T>
__device__ __forceinline__ void load_tile(const storage_t<T>* p, int64_t i, int64_t n, bool whole, RawTile& t) {
  constexpr int kPerWord = kPer<T> / (kTileBytes / 4);
  if (whole) {
#pragma unroll
    for (int h = 0; h < kTileBytes / 16; ++h) {
      const uint4 u = reinterpret_cast<const uint4*>(p + i)[h];
      t.w[4 * h] = u.x, t.w[4 * h + 1] = u.y, t.w[4 * h + 2] = u.z, t.w[4 * h + 3] = u.w;
    }
    return;
  }
#pragma unroll
  for (uint32_t& w : t.w) w = 0;
#pragma unroll
  for (int j = 0; j < kPer<T>; ++j)
    if (i + j < n) t.w[j / kPerWord] |= storage_bits<T>(p[i + j]) << (32 / kPerWord * (j % kPerWord));
}

template <DType T>
__device__ __forceinline__ float unpack(const RawTile& t, int j) {
  if constexpr (T == DType::F32) return __uint_as_float(t.w[j]);
  else return Elem<T>::from_bits(j % 2 ? t.w[j / 2] >> 16 : t.w[j / 2] & 0xFFFFu);  // element 2j: the low half
}

// The absmax of the group of threads (a power of two) this thread belongs to (groups are aligned:
// thread t is in group t / group). Every thread of the CTA must call it (it holds barriers for
// groups > 32).
__device__ float group_absmax(float m, int group, float* red) {
  if (group <= 32) {
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      if (o >= group) break;  // uniform
      m = absmax_step(m, __shfl_xor_sync(0xFFFFFFFFu, m, o));
    }
    return m;
  }
  m = warp_max(m);
  const int warp = threadIdx.x / 32, first = (threadIdx.x / group) * (group / 32);
  __syncthreads();  // red is free: the previous round's readers are done
  if (threadIdx.x % 32 == 0) red[warp] = m;
  __syncthreads();
  m = 0.0f;
  for (int w = first; w < first + group / 32; ++w) m = absmax_step(m, red[w]);
  return m;
}

// Stores the first `bytes` bytes of w to dst: as kWords words at once when vec (dst aligned to
// them, bytes = all of them), else byte by byte (unrolled: w stays in registers).
template <int kWords>
__device__ __forceinline__ void store_bytes(uint8_t* dst, const uint32_t (&w)[kWords], int bytes, bool vec) {
  if (vec) {
    if constexpr (kWords == 1) *reinterpret_cast<uint32_t*>(dst) = w[0];
    else if constexpr (kWords == 2) *reinterpret_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
    else *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
    return;
  }
#pragma unroll
  for (int j = 0; j < 4 * kWords; ++j)
    if (j < bytes) dst[j] = static_cast<uint8_t>(w[j / 4] >> (8 * (j % 4)));
}

// 4-bit or 8-bit (Bits) quantization of blocks of 2^log2_bs elements, kPer<T> <= bs <= 4096.
// kCentered: quantize x - offset (nested quantization of an absmax; offset from *offset_ptr when
// given). Out: packed bytes (4-bit) or codes (8-bit); vec_out: out is aligned for a thread's
// whole output (kPer/2 or kPer bytes) at once.
// 4-bit codes come from the bucket table (Note [Bucket tables]) that each CTA builds in shared
// memory (16 KiB); 8-bit codes from the map's Code8Table (6 KiB): its buckets (Note [8-bit bucket
// tables]) when the map passes their checks, else its search tree.
template <DType T, int Bits, QuantType QT, class Code, bool kCentered>
__global__ void __launch_bounds__(kMaxThreads<T>, (kResidentThreads + kMaxThreads<T> - 1) / kMaxThreads<T>)
    quantize_blocks_kernel(const storage_t<T>* __restrict__ x, int64_t n, int log2_bs, Code4Tables t4, Code code8,
                           const float* offset_ptr, float offset, uint8_t* __restrict__ out,
                           float* __restrict__ absmax, bool vec_x, bool vec_out) {
  constexpr int kN = kPer<T>;
  constexpr size_t kTableBytes = Bits == 4 ? sizeof(uint32_t) * kBuckets : sizeof(Code8Table);
  __shared__ alignas(16) unsigned char table[kTableBytes];
  __shared__ float red[32];
  const auto* buckets = reinterpret_cast<const uint32_t*>(table);
  const auto* t8 = reinterpret_cast<const Code8Table*>(table);
  float off = 0.0f;
  if constexpr (kCentered) off = offset_ptr != nullptr ? *offset_ptr : offset;
  const int group = (1 << log2_bs) / kN;
  const int64_t per_tile = int64_t{blockDim.x} * kN, stride = int64_t{gridDim.x} * per_tile;
  const int64_t mine = int64_t{threadIdx.x} * kN;
  // One round: quantizes the tile at start from `now` after sending the loads of the one this CTA
  // takes next (the last round reloads its own) into `next`. kind: whether 8-bit codes come from
  // the buckets of the Code8Table (std::true_type) or from its tree (std::false_type).
  const auto round = [&](int64_t start, const RawTile& now, RawTile& next, auto kind) {
    const int64_t i = start + mine;
    const bool whole = start + per_tile <= n;
    const int valid = whole ? kN : (n > i ? static_cast<int>(n - i < kN ? n - i : kN) : 0);  // elements below n
    const int64_t ahead = start + stride < n ? start + stride : start;
    load_tile<T>(x, ahead + mine, n, vec_x && ahead + per_tile <= n, next);
    float v[kN];
    float m = 0.0f;
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      v[j] = unpack<T>(now, j);
      if constexpr (kCentered) v[j] = __fsub_rn(v[j], off);
      if (!kCentered || j < valid) m = absmax_step(m, v[j]);  // past n the loads are 0, which no max takes
    }
    m = group_absmax(m, group, red);
    if (valid == 0) return;  // no barrier follows in this round
    if ((threadIdx.x & (group - 1)) == 0) absmax[i >> log2_bs] = m;
    const float r = __fdiv_rn(1.0f, m);
    if constexpr (Bits == 4) {
      uint32_t w[kN / 8] = {};  // element j in byte j / 2, the even one in the high nibble
#pragma unroll
      for (int j = 0; j < kN; ++j)
        w[j / 8] |= quantize_4bit_bucket_at(buckets, __fmul_rn(v[j], r), 8 * (j % 8 / 2) + (j % 2 ? 0 : 4));
      if (valid % 2 != 0) {  // an odd tail: the low nibble of its last byte is the code of 0.0
        const int s = 8 * (valid % 8 / 2);
#pragma unroll
        for (int k = 0; k < kN / 8; ++k) {  // every word, masked (an index would put w in memory)
          const uint32_t pad = k == valid / 8 ? 0xFu << s : 0u;
          w[k] = (w[k] & ~pad) | (t4.zero_code * 0x11111111u & pad);
        }
      }
      store_bytes(out + i / 2, w, (valid + 1) / 2, vec_out && valid == kN);
    } else {
      uint32_t w[kN / 4] = {};
#pragma unroll
      for (int j = 0; j < kN; j += 2) {  // two at a time: one conversion for both bucket indices
        const float y0 = __fmul_rn(v[j], r), y1 = __fmul_rn(v[j + 1], r);
        uint32_t q0, q1;
        if constexpr (decltype(kind)::value) {
          quantize_8bit_bucket2(*t8, y0, y1, q0, q1);
        } else {
          q0 = quantize_8bit_tree(t8->tree, t8->code, y0);
          q1 = quantize_8bit_tree(t8->tree, t8->code, y1);
        }
        w[j / 4] |= (q0 << (8 * (j % 4))) | (q1 << (8 * ((j + 1) % 4)));
      }
      store_bytes(out + i, w, valid, vec_out && valid == kN);
    }
  };
  // Two tiles in flight per thread at a time, in registers that swap roles every round (unrolled
  // by two so that no round copies one into the other). The grid has no more CTAs than tiles.
  bool buckets8 = true;  // 8-bit: whether the map passed the checks of Note [8-bit bucket tables]
  if constexpr (Bits == 4) {
    for (uint32_t k = threadIdx.x; k < kBuckets; k += blockDim.x)
      reinterpret_cast<uint32_t*>(table)[k] = make_bucket<QT>(t4.thresholds, k);
    __syncthreads();
  } else {
    buckets8 = code8_build(*reinterpret_cast<Code8Table*>(table), code8);
  }
  RawTile a, b;
  int64_t start = int64_t{blockIdx.x} * per_tile;
  load_tile<T>(x, start + mine, n, vec_x && start + per_tile <= n, a);
  const auto loop = [&](auto kind) {
    for (;;) {
      round(start, a, b, kind);
      if ((start += stride) >= n) break;
      round(start, b, a, kind);
      if ((start += stride) >= n) break;
    }
  };
  if (Bits == 4 || buckets8) loop(std::true_type{});  // uniform within the launch
  else if constexpr (Bits == 8) loop(std::false_type{});
}

// 8-bit quantization for any blocksize: one warp per block, reading it twice.
template <DType T, class Code>
__global__ void quantize_8bit_warp_kernel(const storage_t<T>* __restrict__ x, int64_t n, int64_t bs, Code code8,
                                          uint8_t* __restrict__ q, float* __restrict__ absmax) {
  __shared__ Code8Table t8;
  const bool buckets8 = code8_build(t8, code8);  // Note [8-bit bucket tables], else the tree
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
    for (int64_t i = begin + lane; i < end; i += 32) {
      const float y = __fmul_rn(Elem<T>::load(x, i), r);
      q[i] = static_cast<uint8_t>(buckets8 ? quantize_8bit_bucket(t8, y) : quantize_8bit_tree(t8.tree, t8.code, y));
    }
  }
}

// Launches quantize_blocks_kernel for a power-of-two blocksize in [kPer<T>, 4096].
template <DType T, int Bits, QuantType QT, class Code, bool kCentered>
void launch_blocks(const Call& call, const void* x, int64_t n, int64_t bs, const Code& code8, const float* offset_ptr,
                   float offset, uint8_t* out, float* absmax) {
  const int threads = static_cast<int>(bs / kPer<T> > kThreads ? bs / kPer<T> : kThreads);
  const auto* xs = static_cast<const storage_t<T>*>(x);
  const unsigned grid = call.grid(n, int64_t{threads} * kPer<T>, kResidentThreads / threads);
  quantize_blocks_kernel<T, Bits, QT, Code, kCentered><<<grid, threads, 0, call.stream()>>>(
      xs, n, exact_log2(bs), code4_tables(QT), code8, offset_ptr, offset, out, absmax, aligned(x, 16),
      aligned(out, Bits == 4 ? kPer<T> / 2 : kPer<T>));
  call.check_launch("quantize_blocks_kernel");
}

template <DType T>
bool blocks_kernel_fits(int64_t bs) {
  return exact_log2(bs) >= 0 && bs >= kPer<T> && bs <= 4096;
}

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
    if (blocks_kernel_fits<T>(blocksize)) {
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
  static_assert(kNestedBlocksize >= kPer<DType::F32> && kNestedBlocksize <= 4096 && (kNestedBlocksize & (kNestedBlocksize - 1)) == 0,
                "the nested blocksize must suit quantize_blocks_kernel");
  launch_blocks<DType::F32, 8, QuantType::NF4, CodeByValue, true>(
      call, absmax.data, n, kNestedBlocksize, map, offset_tensor ? offset_tensor->ptr<const float>() : nullptr, offset,
      qabsmax.ptr<uint8_t>(), nested_absmax.ptr<float>());
}

}  // namespace nybble::cuda
