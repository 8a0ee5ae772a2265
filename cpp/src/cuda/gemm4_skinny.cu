// cuda/gemm4_skinny.cu — out[M, N] = A[M, K] @ W^T (+ bias[N]) for few rows of A (M <= 16, bf16 or
// fp16) with W the 4-bit weight [N, K]: the weight streamed from memory once, decoded in registers
// and multiplied on tensor cores (mma.sync m16n8k16, fp32 accumulation, sm_80+). Meant to run at
// the memory's bandwidth: at M <= 16 a 4-bit weight is read in a quarter of a bf16 weight's time,
// and the work per weight and the bytes in flight decide whether that is reached.
//
// The weights as the mma sees them (Note [k permutation] of gemm4_mma.cu, same operand roles): W's
// rows are the mma's M dimension (16 a row tile), A's rows its N dimension (8 a fragment, NF = 1 or
// 2 fragments), and out^T = W A^T. For a 64-k sub-slice of a row tile, thread (g, t) (g = lane / 4,
// t = lane % 4) holds packed bytes [8t, 8t + 8) of the sub-slice of weight rows g and g + 8 (the
// reference's layout as it is) and activations [16t, 16t + 16) of A row g of each fragment (two
// 16-byte loads); k step s (of 4) takes bytes 2s and 2s + 1.
//
// The work per weight. A thread's packed byte (two codes, the even column in the high nibble) is
// one operand register: a bf16x2 / fp16x2 pair looked up in a 256-entry pair table in shared
// memory, built once per CTA from the 16-entry code table. Each entry is replicated for the 32
// lanes, lane l at byte 256 x + 4 l of entry x: lane l always reads bank l, so no lookup conflicts
// whatever the codes, and one byte permute builds the address (pair_at). So a pair of weights
// costs one permute and one shared-memory load, and no multiply: the blocksize is at least 64 and
// K % 64 == 0, so a 64-k sub-slice of a weight row lies in one block, and the 4 mma of a sub-slice
// go to zeroed partial accumulators that are then added with their rows' scales,
// acc = fma(partial, scale, acc), in fp32.
//
// Precision: each weight is the code's table value rounded to T (bf16: 2^-9 relative, the only
// rounding of a weight) times its scale in fp32, i.e. within u = 2^-8 (bf16) or 2^-11 (fp16) of the
// fp32 oracle's weight; products and sums in fp32 (tensor cores truncate inside their adder), the
// output rounded once to T. Against the oracle: |out - ref| <= u sum |a w| + the fp32 accumulation
// error + u |ref| (cuda_gemm4_mma_test.cpp). The reference's GEMV rounds each weight to T twice
// (code and scale product in T). An infinite scale gives Inf or NaN where the oracle may give the
// other (the scale multiplies a partial sum, not each weight).
//
// Work split. A CTA of 8 warps takes one row tile (16 weight rows) at a time (a persistent loop
// over tiles) and all of K: warp w takes the items (chunks of 4 sub-slices, 256 k) c = w, w + 8, ...
// of every tile. Lane l copies row l / 2's 64 bytes of sub-slices 2 (l % 2) and 2 (l % 2) + 1 of an
// item by cp.async into the warp's ring of two slots in shared memory, and loads those two blocks'
// scales into registers (the plain absmax, or the 8-bit code and the group's absmax); the next
// item's copies are in flight while an item is multiplied, across tile boundaries. Each lane
// finishes the two scales it loaded and the lanes that multiply take theirs with shuffles.
// Activations (the mma's B operand) are read from global memory (L1) when an item is multiplied,
// at constant offsets from one address an item. The slots live in the pair table's unused half
// (bytes 128..255 of every entry: 32 KiB in 128-byte pieces, Note [Ring in the table]), so a CTA
// needs 69 KiB and three fit a multiprocessor: 24 warps to hide the latencies. The 8 warps' partial
// sums meet in shared memory and are added in warp order (deterministic), + bias, rounded to T;
// stores are coalesced along N.
//
// Measured on the H200 (cpp/bench/cuda_bench.cpp, CUDA-event batches, weights rotated past L2;
// docs/benchmarks/h200-sweep.md), NF4 bs 64 nested, bf16: M = 1 at 21-42 % of the copy bandwidth
// (28672 x 8192: 68.6 us, 1.77 TB/s; 4096 x 4096: 9.7 us), M = 16 at 17-28 %. The way there, on the
// 28672 x 8192 weight at M = 1: items of 2 sub-slices loaded into registers just before use: 76 us;
// cp.async rings of such items (beside the table, then in its holes), 16-24 warps an SM: 92-93 us (ncu: 0.46-0.52 instructions
// issued per scheduler and cycle, 11 cycles between a warp's instructions, DRAM 21 %: about 430
// instructions an item, most of them 64-bit index arithmetic and per-item overhead, not the
// decode); this form (4 sub-slices an item, the scales in registers, constant offsets): 68.6 us.
// Limitations: still issue- and latency-bound (not DRAM-bound) on every shape; the next steps are
// fewer instructions an item (32-bit offsets, a repacked weight layout whose items are contiguous,
// one 16-byte copy per lane and sub-slice pair) and more bytes in flight a warp.
//
// Conditions (gemm4_skinny_applies): T bf16/fp16, 1 <= M <= 16, K % 64 == 0, blocksize >= 64,
// packed and A 16-byte aligned, the fp32 scale buffers 4-byte aligned. Everything else stays on
// gemm4.cu / gemm4_mma.cu.
// Weight rows n >= N and sub-slices past K load nothing (zero-filled operands) and A rows m >= M
// are zero; an mma output depends on its own operand rows only, and rows n >= N are not stored.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/backend.hpp"
#include "cuda/codebook.hpp"
#include "cuda/elem.cuh"
#include "cuda/gemm4_operands.cuh"
#include "cuda/launch.cuh"
#include "cuda/mma.cuh"
#include "cuda/scales.cuh"

namespace nybble::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kSub = 64;     // k of a sub-slice: one block per weight row (blocksize >= 64)
constexpr int kChunk = 4;    // sub-slices of an item (256 k)
constexpr int kEntry = 256;  // bytes between pair-table entries: see pair_at
constexpr int kTableBytes = 256 * kEntry;
constexpr int kMaxRows = 16;

// Note [Ring in the table]: an entry of the pair table uses bytes 0..127 of its 256 (32 lanes x 4);
// bytes 128..255 of the 256 entries hold the warps' rings. Ring byte i (of 32 KiB) lives at
// hole(i); a slot starts at a 128-byte piece and nothing in it straddles pieces (16-byte copies at
// 16-byte offsets, 8-byte reads), so hole(slot start + j) = 2 * (slot start) + hole(j).
__host__ __device__ constexpr int hole(int i) { return (i >> 7) * 256 + 128 + (i & 127); }

// An item in a slot: the weights [16 rows][kChunk sub-slices][32 bytes] (each row's 128 bytes as
// they lie in memory). Two slots a warp fill the holes exactly.
constexpr int kItemBytes = 16 * kChunk * 32;
constexpr int kStages = 2;
static_assert(kWarps * kStages * kItemBytes == 256 * 128, "the rings fill the table's holes");

// Shared memory: the pair table with the rings, the warps' partial sums [warp][16][NF * 8] (fp32),
// the nested code map.
template <int NF>
struct Smem {
  static constexpr int kRed = kTableBytes;
  static constexpr int kCode8 = kRed + kWarps * 16 * NF * 8 * 4;
  static constexpr int kBytes = kCode8 + 256 * 4;
};

// The operand register of packed byte b (bits 8b..8b+7) of word w: a pair-table lookup. One byte
// permute builds the offset, x * 256 + lane4 (lane4 = 4 * lane, in byte 0 of its register), and the
// table's own address is the load's constant offset: the table starts the dynamic shared memory.
__device__ __forceinline__ uint32_t pair_at(const uint8_t* table, uint32_t w, int b, uint32_t lane4) {
  const uint32_t off = __byte_perm(w, lane4, 0x5504u + (b << 4));  // bytes: lane4, x, 0, 0
  return *reinterpret_cast<const uint32_t*>(table + off);
}

template <DType T, int NF>
struct Skinny {
  using S = storage_t<T>;

  const Gemm4MmaParams<T>& p;
  const uint8_t* table;
  const float* code8;
  float off;
  int lane, g, t;
  uint32_t lane4;
  int64_t subs;

  // Lane l's share of item (tile, c): row l / 2, sub-slices 2 (l % 2) and 2 (l % 2) + 1 (64 bytes,
  // copied into slot) and their two scales (loaded into raw).
  __device__ void issue(uint8_t* slot, int64_t tile, int64_t c, RawScale (&raw)[2]) const {
    const int row = lane / 2, half = lane % 2;
    const int64_t n = tile * 16 + row, sub0 = c * kChunk + 2 * half;
    const int64_t first = n * p.K + sub0 * kSub;  // flat index of the lane's first sub-row
    const uint8_t* src = p.packed + first / 2;
    uint8_t* dst = slot + hole(row * kChunk * 32 + half * 64);
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const bool ok = n < p.N && sub0 + q < subs;
      cp_async<16>(dst + 32 * q, ok ? src + 32 * q : p.packed, ok ? 16 : 0);
      cp_async<16>(dst + 32 * q + 16, ok ? src + 32 * q + 16 : p.packed, ok ? 16 : 0);
      raw[q] = ok ? load_scale(p.scales, (first + q * kSub) >> p.log2_bs) : RawScale{};
    }
  }

  // acc += item c of tile in slot, with the scales this lane loaded for it (raw). Sub-slices past K
  // were zero-filled and their activations are 0.
  __device__ void multiply(const uint8_t* slot, int64_t c, const RawScale (&raw)[2], float (&acc)[NF][4]) const {
    const float mine[2] = {scale(p.scales, raw[0], off, code8), scale(p.scales, raw[1], off, code8)};
    const int64_t sub0 = c * kChunk;
    // This thread's activation rows 8j + g, from column 16t of the item.
    const S* a_base = p.A + g * p.K + sub0 * kSub + 16 * t;
#pragma unroll
    for (int q = 0; q < kChunk; ++q) {
      uint32_t b[NF][8];
#pragma unroll
      for (int j = 0; j < NF; ++j) {
        uint4 lo = {0, 0, 0, 0}, hi = {0, 0, 0, 0};
        if (8 * j + g < p.M && sub0 + q < subs) {
          const uint4* src = reinterpret_cast<const uint4*>(a_base + 8 * j * p.K + q * kSub);
          lo = src[0];
          hi = src[1];
        }
        const uint32_t v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
        for (int e = 0; e < 8; ++e) b[j][e] = v[e];
      }
      // Rows g and g + 8, sub-slice q, bytes [8t, 8t + 8).
      const uint2 w0 = *reinterpret_cast<const uint2*>(slot + hole(g * kChunk * 32 + q * 32 + 8 * t));
      const uint2 w1 = *reinterpret_cast<const uint2*>(slot + hole((g + 8) * kChunk * 32 + q * 32 + 8 * t));
      float part[NF][4];
#pragma unroll
      for (int j = 0; j < NF; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) part[j][e] = 0.0f;
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const uint32_t x0 = s < 2 ? w0.x : w0.y, x1 = s < 2 ? w1.x : w1.y;
        const int bb = 2 * (s % 2);
        const uint32_t a[4] = {pair_at(table, x0, bb, lane4), pair_at(table, x1, bb, lane4),
                               pair_at(table, x0, bb + 1, lane4), pair_at(table, x1, bb + 1, lane4)};
#pragma unroll
        for (int j = 0; j < NF; ++j) mma_16816<T>(part[j], a, b[j][2 * s], b[j][2 * s + 1]);
      }
      // Row r's scale of sub-slice q was loaded by lane 2r + q / 2, as its (q % 2)-th.
      const float s_lo = __shfl_sync(0xFFFFFFFFu, mine[q % 2], 2 * g + q / 2);
      const float s_hi = __shfl_sync(0xFFFFFFFFu, mine[q % 2], 2 * (g + 8) + q / 2);
#pragma unroll
      for (int j = 0; j < NF; ++j) {
        acc[j][0] = fmaf(part[j][0], s_lo, acc[j][0]);
        acc[j][1] = fmaf(part[j][1], s_lo, acc[j][1]);
        acc[j][2] = fmaf(part[j][2], s_hi, acc[j][2]);
        acc[j][3] = fmaf(part[j][3], s_hi, acc[j][3]);
      }
    }
  }
};

// 3 CTAs a multiprocessor for one activation fragment (24 warps), 2 for two.
template <DType T, int NF>
__global__ void __launch_bounds__(kThreads, NF == 1 ? 3 : 2) gemm4_skinny_kernel(Gemm4MmaParams<T> p) {
  using Sm = Smem<NF>;
  constexpr int kCols = NF * 8;
  extern __shared__ __align__(16) uint8_t smem[];
  float* red = reinterpret_cast<float*>(smem + Sm::kRed);
  float* code8 = reinterpret_cast<float*>(smem + Sm::kCode8);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  uint8_t* ring = smem + 2 * warp * kStages * kItemBytes;  // hole(i) for a slot start i = 2 i

  const int64_t subs = p.K / kSub, chunks = ceil_div(subs, kChunk), tiles = ceil_div(p.N, 16);
  // This warp's items: (the CTA's tiles blockIdx.x + i * gridDim.x, the warp's chunks warp + 8 j),
  // j fastest. Each item's weights are copied while the one before is multiplied.
  const int64_t per_tile = warp < chunks ? (chunks - warp + kWarps - 1) / kWarps : 0;
  const int64_t my_tiles = blockIdx.x < tiles ? (tiles - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
  const bool nested = p.scales.qabsmax != nullptr;
  const Skinny<T, NF> k{p, smem, code8, nested ? p.scales.offset_value() : 0.0f, lane, lane / 4, lane % 4, 4u * lane, subs};
  int64_t next_i = 0, next_j = 0;  // the next item to copy
  int next_slot = 0;
  RawScale raw0[2], raw1[2];  // the scales of the items in slots 0 and 1 (named: registers, not an indexed array)
  const auto issue = [&] {  // always commits a group, empty past the last item
    if (per_tile > 0 && next_i < my_tiles) {
      const int64_t tile = blockIdx.x + next_i * gridDim.x, c = warp + next_j * kWarps;
      if (next_slot == 0) k.issue(ring, tile, c, raw0);
      else k.issue(ring + 2 * kItemBytes, tile, c, raw1);
      if (++next_j == per_tile) next_j = 0, ++next_i;
    }
    cp_async_commit();
    next_slot ^= 1;
  };
  issue();  // the first item's copies go out before the table is built (they only touch its holes)

  // The pair table: entry x = (code[x >> 4], code[x & 15]) in T, low half the even column.
  for (int x = warp; x < 256; x += kWarps)
    *reinterpret_cast<uint32_t*>(smem + x * kEntry + 4 * lane) = pack2<T>(p.code[x >> 4], p.code[x & 15]);
  if (nested)
    for (int i = tid; i < 256; i += kThreads) code8[i] = p.scales.nested_code[i];
  __syncthreads();

  int slot = 0;  // of the item multiplied next
  for (int64_t i = 0; i < my_tiles; ++i) {
    const int64_t tile = blockIdx.x + i * gridDim.x;
    float acc[NF][4];
#pragma unroll
    for (int j = 0; j < NF; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
    for (int64_t j = 0; j < per_tile; ++j) {
      cp_async_wait<0>();  // this lane's copies of the item have landed
      __syncwarp();        // and every lane's; the previous item's slot is free
      issue();
      if (slot == 0) k.multiply(ring, warp + j * kWarps, raw0, acc);
      else k.multiply(ring + 2 * kItemBytes, warp + j * kWarps, raw1, acc);
      slot ^= 1;
    }

    // The warps' partial sums: (weight row g (+ 8), A row 8 j + 2t (+ 1)).
    float* mine = red + warp * 16 * kCols;
#pragma unroll
    for (int j = 0; j < NF; ++j) {
      float* d = mine + k.g * kCols + 8 * j + 2 * k.t;
      d[0] = acc[j][0];
      d[1] = acc[j][1];
      d[8 * kCols] = acc[j][2];
      d[8 * kCols + 1] = acc[j][3];
    }
    __syncthreads();
    for (int e = tid; e < 16 * static_cast<int>(p.M); e += kThreads) {
      const int nl = e % 16, m = e / 16;
      const int64_t n = tile * 16 + nl;
      if (n >= p.N) continue;
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) v += red[(w * 16 + nl) * kCols + m];
      if (p.bias != nullptr) v += Elem<T>::load(p.bias, n);
      Elem<T>::store(p.out, m * p.N + n, v);
    }
    __syncthreads();  // the next tile rewrites red
  }
  cp_async_wait<0>();  // (only empty groups can be left)
}

// Resident CTAs a multiprocessor of `device` for kernel<T, NF>, found once per GPU; the kernel's
// shared-memory opt-in (a per-GPU function attribute) is set then too, not on every launch.
template <DType T, int NF>
int resident_ctas(const Call& call) {
  static PerDevice cache;
  return cache.get(call.device(), [&] {
    const auto kernel = gemm4_skinny_kernel<T, NF>;
    constexpr int smem = Smem<NF>::kBytes;
    call.check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "cudaFuncSetAttribute");
    int n = 0;
    call.check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, smem),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    return std::max(n, 1);
  });
}

template <DType T, int NF>
void launch(const Call& call, const Gemm4MmaParams<T>& p) {
  const int64_t ctas = int64_t{resident_ctas<T, NF>(call)} * sm_count(call.device());
  const auto grid = static_cast<unsigned>(std::min<int64_t>(ceil_div(p.N, 16), ctas));
  gemm4_skinny_kernel<T, NF><<<grid, kThreads, Smem<NF>::kBytes, call.stream()>>>(p);
  call.check_launch("gemm4_skinny_kernel");
}

}  // namespace

bool gemm4_skinny_applies(const TensorView& A, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                          int64_t N) {
  return A.shape[0] <= kMaxRows && gemm4_tile_applies(A, packed, scales, blocksize, N);  // the same shapes
}

void gemm_4bit_skinny(const TensorView& A, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                      QuantType qt, const std::optional<TensorView>& bias, const TensorView& out) {
  const Call call("gemm_4bit", A);
  dispatch_half(A.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    const Gemm4MmaParams<T> p = gemm4_mma_params<T>(A, packed, scales, blocksize, qt, bias, out);
    if (p.M <= 8) launch<T, 1>(call, p);
    else launch<T, 2>(call, p);
  });
}

}  // namespace nybble::cuda
