// cuda/gemm4_mma.cu — out[M, N] = A[M, K] @ W^T (+ bias[N]) with W the 4-bit weight [N, K] on tensor
// cores (mma.sync m16n8k16, bf16 or fp16 inputs, fp32 accumulation, sm_80+), for bf16/fp16
// activations on the shapes the weight-streaming kernel (gemm4_skinny.cu) does not take and for M
// above 16 when called (gemm4.cu, Note [gemm_4bit paths]). The
// weight is streamed once per CTA row of the grid and decoded in registers; it is never written to
// memory. Each weight is decoded exactly as dequantize_4bit decodes it: w = round_to_T(code[c] *
// scale(block)), the product in fp32. So the result is dequantize_4bit + a bf16/fp16 GEMM with fp32
// accumulation, up to summation order; against the CPU oracle (which keeps w in fp32) it differs by
// the rounding of w to T, at most 2^-8 (bf16) or 2^-11 (fp16) of sum_k |a w|.
//
// The swap. W's rows are the mma's M dimension (16 per fragment, the A operand) and A's rows its N
// dimension (8 per fragment, the B operand): a weight-row tile is 16 high where an A-row tile may be
// only 8, and out^T = W A^T is computed. The accumulator fragment of a thread holds out[m][n] for
// n = g, g + 8 and m = 2t, 2t + 1 (g = lane / 4, t = lane % 4; PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type").
//
// Note [k permutation]: the mma sums over its 16 k slots; any one-to-one assignment of real k to
// slots is fine if both operands use it. Slot κ of a k16 step is held by the threads with
// t = (κ % 8) / 2, in both operands, so the assignment may depend on (step, κ) only. This kernel
// gives step s (of 4 per 64 k), slot 2t + e + 8h (e, h in {0, 1}) the real k = 16t + 4s + 2h + e.
// Then thread (g, t) holds, for the whole 64-k sub-slice, weight columns [16t, 16t + 16) of its
// rows g and g + 8 and activation columns [16t, 16t + 16) of its A row g: 8 packed bytes per
// weight row (one 8-byte shared load, no repacking of the reference's layout) and 32 bytes of
// activations (two 16-byte shared loads, no ldmatrix). Packed byte j (codes 2j, 2j + 1) is one
// fp16x2/bf16x2 register: step s takes pairs 2s (a0/a1, b0) and 2s + 1 (a2/a3, b1).
//
// Tiles. 4 warps per CTA as WN (along N) x WK (along K) warps, WK in {1, 2, 4}; a warp owns 32
// weight rows (2 fragments) x 8 * MF rows of A (MF = 8 / WK fragments): the CTA covers BN = 128 / WK
// weight rows x BM = 64 / WK rows of A, and a stage covers BK = 64 * WK of k (one 64-k sub-slice per
// K-warp; the K-warps' partial sums are added in the epilogue). So a stage always holds 128 weight
// sub-rows and 64 activation sub-rows: 13.5 KiB, 3 stages in 41 KiB (no opt-in past 48 KiB).
// WK = 4 (BM = 16) serves small M on few weight rows; WK = 1 (BM = 64) re-reads W least at large M
// (Note [Tile choice]). The stage layout:
//   W: [WK][BN][32 bytes] (aligned path) or [WK][BN][36 bytes] (general path, below)
//   A: [WK][BM][72 elements]: 64 + 8 of padding, so a row is 144 bytes (16 mod 128) and the 8
//      threads of each quarter-warp's 16-byte read hit distinct banks; the 8-byte weight reads of a
//      half-warp cover 128 contiguous bytes.
// Stages are filled with cp.async (3 in flight); the scales of slice i + 1 are loaded into
// registers while slice i is computed (the nested form keeps the raw code and group absmax, and
// finishes through the 8-bit code map copied to shared memory). The 16-entry code table is in
// shared memory (16 banks, no conflicts): one shared load, one FMUL and half a CVT (packed
// cvt.rn.bf16x2.f32) per weight. A warp decodes and multiplies a sub-slice in two halves of 32 k
// (a loop kept rolled: fully unrolled, ptxas hoisted every table load and spilled). The epilogue
// adds the K-warps' partial sums through shared memory (reusing the stages) in a fixed order, adds
// the bias in fp32 and rounds once to T, as the oracle does; consecutive threads store
// consecutive n.
//
// Paths and edges (the weight is packed over the flat N*K index, docs/formats.md):
// - aligned (K % 64 == 0, A and packed 16-byte aligned): every 64-k sub-row of W is 32 bytes at a
//   32-byte boundary and every 16-element chunk of a thread lies in one block (blocksizes are
//   multiples of 32 and the chunk starts at a multiple of 16 of the flat index): 16-byte cp.async
//   for both operands, one scale per chunk.
// - general (any K; packed 4-byte aligned): a weight sub-row is staged as the 9 aligned words
//   around its bytes (4-byte cp.async; words past the buffer's end zero-filled byte-exactly, so
//   nothing outside it is read); a thread takes its 8 bytes (+1 when the row starts mid-byte, i.e.
//   n*K odd) with funnel shifts and shifts odd rows by one nibble. A chunk of 16 may straddle two
//   blocks (blocksize >= 32 > 16): two scales and the split point. Columns k >= K of the K tail
//   (which belong to the next row) decode to 0 and the activations there are staged as 0, so
//   no Inf/NaN scale of a neighbouring row leaks in. Activations are loaded element by element
//   (synchronously, rows may start at any element).
// - Sub-slices that start at or past K (K not a multiple of BK) are skipped by their warp.
// - Weight rows n >= N and A rows m >= M: loads zero-filled, scales not read, outputs not stored
//   (an mma output row depends on its own operand row only).
// - Any M: the grid's y loops over M tiles past 65535. K == 0: the bias alone (or 0).
//
// Bytes moved: N*K/2 of weight + the scales (4 per block, or 1 per block + 4 per 256 blocks
// nested), once per M tile of BM rows (the first from DRAM, the rest hopefully from L2), + M*K*2
// of activations once per N tile (from L2 after the first) + M*N*2 out. Judged by bandwidth for M
// up to ~64 and by the bf16 mma.sync rate above.
//
// Resources (ptxas, CUDA 13.0; no spills anywhere): 1088 bytes of static shared memory + 39936
// (aligned) or 41472 (general) dynamic. Registers a thread, sm_90 / sm_80: aligned WK = 4 and 2:
// 168 / 166-168 (budgeted for 3 CTAs = 12 warps an SM), WK = 1: 254 / 248 (2 CTAs); general path:
// 180-237 / 174-229 (2 CTAs). A budget of 128 registers (4 CTAs) spilled.
//
// Measured on the H200 (docs/benchmarks/h200.md's six weight shapes, NF4 bs 64 nested, bf16, CUDA
// graphs): 28672 x 8192: M = 16 198 us (dequantize + cuBLASLt: 278 us, bf16 F.linear 107 us),
// M = 64 415 us, M = 256 1.13 ms, M = 1024 3.9 ms (bf16: 757 us): 123 TFLOP/s at M = 1024. Since
// the weight-streaming kernel (gemm4_skinny.cu) it wins nowhere on those shapes
// (docs/benchmarks/h200-sweep.md): gemm_4bit reaches it only for shapes the other kernel does not
// take (K % 64 != 0, blocksize 32, misaligned buffers); cuda_gemm4_mma_test passes on the H200,
// with memcheck and racecheck clean.
// Limitations: the work per weight is the bound, not DRAM: a shared-memory table load, an FMUL and
// a conversion per weight, repeated for every M tile of 64 rows (16 times at M = 1024), on
// mma.sync. The fixes, in order: decode each weight once per CTA into a shared-memory bf16 tile
// reused by all M tiles (a persistent loop over M), a register decode (the 16 codes as bf16 pairs
// selected by prmt, no table load), then wgmma with the bf16 tile in shared memory (sm_90a). Few weight rows (N ~ 4096) give few CTAs at small M even with WK = 4
// (128 for N = 4096): a split-K over CTAs would need a workspace the op does not have. W is
// re-read (from L2) for every M tile and A for every N tile. The general path loads activations
// synchronously. Not wgmma (sm_90a) yet. Output stores are 2-byte. Needs sm_80+ (mma.sync bf16,
// cp.async).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "cuda/backend.hpp"
#include "cuda/codebook.hpp"
#include "cuda/elem.cuh"
#include "cuda/gemm4_operands.cuh"
#include "cuda/launch.cuh"
#include "cuda/mma.cuh"
#include "cuda/scales.cuh"

namespace nybble::cuda {
namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kStages = 3;
constexpr int kSub = 64;                  // k of one warp's sub-slice
constexpr int kARow = kSub + 8;           // elements of a staged activation row (padding: see the header)
constexpr int kWRowAligned = kSub / 2;    // bytes of a staged weight sub-row, aligned path
constexpr int kWRowWords = 9;             // 4-byte words of a staged weight sub-row, general path
constexpr int kRedPad = 4;                // floats of padding per row of the epilogue's sums

template <int WK>
struct Tile {
  static_assert(WK == 1 || WK == 2 || WK == 4, "4 warps split as WN x WK");
  static constexpr int kWN = 4 / WK;    // warps along N
  static constexpr int kMF = 8 / WK;    // 8-row fragments of A per warp
  static constexpr int kBN = 32 * kWN;  // weight rows per CTA: 2 fragments of 16 per warp
  static constexpr int kBM = 8 * kMF;   // rows of A per CTA
  static constexpr int kBK = kSub * WK; // k per stage
  static_assert(WK * kBN == 128 && WK * kBM == 64, "every stage holds 128 weight and 64 activation sub-rows");
};

// The bytes of one stage: weight sub-rows [WK][BN] (128 in all), then activation sub-rows [WK][BM]
// (64 in all).
template <bool kAligned>
struct Stage {
  static constexpr int kWRow = kAligned ? kWRowAligned : 4 * kWRowWords;  // bytes of a weight sub-row
  static constexpr int kWBytes = 128 * kWRow;
  static constexpr int kABytes = 64 * kARow * 2;
  static constexpr int kBytes = kWBytes + kABytes;
  static constexpr int kSmem = kStages * kBytes;  // dynamic shared memory of the kernel
  static_assert(kWBytes % 16 == 0 && kABytes % 16 == 0, "16-byte cp.async destinations");
};
template <int WK>
constexpr int kRedBytes = WK * Tile<WK>::kBM * (Tile<WK>::kBN + kRedPad) * 4;

static_assert(Stage<false>::kSmem + 16 * 4 + 256 * 4 <= 48 * 1024, "stages + tables within the default 48 KiB");
static_assert(kRedBytes<1> <= Stage<true>::kSmem && kRedBytes<2> <= Stage<true>::kSmem && kRedBytes<4> <= Stage<true>::kSmem,
              "the epilogue's sums fit in the stages");

// v clamped to [lo, hi], which fit an int.
__device__ __forceinline__ int clamp_i64(int64_t v, int lo, int hi) {
  return static_cast<int>(v < lo ? lo : v > hi ? hi : v);
}

// The table entry whose byte offset is byte b of q4.
__device__ __forceinline__ float lut_at(const float* lut, uint32_t q4, int b) {
  return *reinterpret_cast<const float*>(reinterpret_cast<const char*>(lut) + __byte_perm(q4, 0, 0x4440u + b));
}

// ---- scales ------------------------------------------------------------------------------------

// The scales of one thread's 16-element chunk of one weight row: lo for the chunk's first element,
// hi for its last valid one (another block only on the general path, where chunks may straddle).
struct ChunkScale {
  RawScale lo, hi;
};

// ---- the kernel ----------------------------------------------------------------------------------

template <DType T, int WK, bool kAligned>
struct Gemm4Mma {
  using Tl = Tile<WK>;
  using S = storage_t<T>;
  static constexpr int kBN = Tl::kBN, kBM = Tl::kBM, kBK = Tl::kBK, kMF = Tl::kMF;
  using St = Stage<kAligned>;
  static constexpr int kWRow = St::kWRow;

  const Gemm4MmaParams<T>& p;
  uint8_t* smem;       // kStages stages, then reused by the epilogue
  const float* lut;    // the code table in shared memory
  const float* code8;  // the nested code map in shared memory
  float off;           // the nested offset
  int tid, g, t, wn, wk;
  int64_t nb, mb;  // first weight row and first A row of the CTA's tile

  __device__ uint8_t* w_stage(int s) const { return smem + s * St::kBytes; }
  __device__ S* a_stage(int s) const { return reinterpret_cast<S*>(smem + s * St::kBytes + St::kWBytes); }

  // CTA-local weight row of this thread's fragment f (0, 1), half h (rows g, g + 8).
  __device__ int w_row(int f, int h) const { return 32 * wn + 16 * f + 8 * h + g; }

  // Stage `slice` (BK of k) into stage buffer s: weight sub-rows [WK][BN], activation rows [WK][BM].
  __device__ void load_stage(int s, int64_t slice) const {
    const int64_t k_slice = slice * kBK;
    uint8_t* ws = w_stage(s);
    S* as = a_stage(s);
    if constexpr (kAligned) {
      // 128 sub-rows of 32 bytes: 2 x 16 bytes each. K % 64 == 0: a sub-row is inside its row or past K.
#pragma unroll
      for (int c = tid; c < 128 * 2; c += kThreads) {
        const int row = c / 2, half = c % 2, sub = row / kBN;
        const int64_t n = nb + row % kBN, k = k_slice + int64_t{kSub} * sub;
        const bool ok = n < p.N && k < p.K;
        cp_async<16>(ws + row * kWRow + 16 * half, ok ? p.packed + (n * p.K + k) / 2 + 16 * half : p.packed, ok ? 16 : 0);
      }
      // 64 activation sub-rows of 64 elements: 8 x 16 bytes each.
#pragma unroll
      for (int c = tid; c < 64 * 8; c += kThreads) {
        const int row = c / 8, q = c % 8, sub = row / kBM;
        const int64_t m = mb + row % kBM, k = k_slice + int64_t{kSub} * sub + 8 * q;
        const bool ok = m < p.M && k < p.K;
        cp_async<16>(as + row * kARow + 8 * q, ok ? p.A + m * p.K + k : p.A, ok ? 16 : 0);
      }
    } else {
      // 128 sub-rows of 9 words: the aligned words around the sub-row's bytes, clipped to the buffer.
#pragma unroll 1
      for (int c = tid; c < 128 * kWRowWords; c += kThreads) {
        const int row = c / kWRowWords, v = c % kWRowWords, sub = row / kBN;
        const int64_t n = nb + row % kBN, k = k_slice + int64_t{kSub} * sub;
        const int64_t word = ((n * p.K + k) >> 3) + v;  // element >> 1 = byte, byte >> 2 = word
        const int bytes = n < p.N && k < p.K ? clamp_i64(p.nbytes - 4 * word, 0, 4) : 0;
        cp_async<4>(ws + row * kWRow + 4 * v, bytes > 0 ? p.packed + 4 * word : p.packed, bytes);
      }
      // 64 activation sub-rows element by element, 0 past M and K.
#pragma unroll 2
      for (int c = tid; c < 64 * kSub; c += kThreads) {
        const int row = c / kSub, kk = c % kSub, sub = row / kBM;
        const int64_t m = mb + row % kBM, k = k_slice + int64_t{kSub} * sub + kk;
        as[row * kARow + kk] = m < p.M && k < p.K ? p.A[m * p.K + k] : S{0};
      }
    }
  }

  // Load the scales of this thread's 4 chunks of slice `slice` (rows w_row(f, h), columns
  // [16t, 16t + 16) of the warp's sub-slice); chunks past N or K read nothing.
  __device__ void load_scales(ChunkScale (&cs)[2][2], int64_t slice) const {
    const int64_t kc = slice * kBK + int64_t{kSub} * wk + 16 * t;
#pragma unroll
    for (int f = 0; f < 2; ++f)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t n = nb + w_row(f, h);
        cs[f][h] = ChunkScale{};
        if (n >= p.N || kc >= p.K) continue;
        const int64_t first = n * p.K + kc;
        const int64_t b = first >> p.log2_bs;
        cs[f][h].lo = load_scale(p.scales, b);
        if constexpr (!kAligned) {
          const int64_t last = first + clamp_i64(p.K - kc, 0, 16) - 1;
          const int64_t b_last = last >> p.log2_bs;
          cs[f][h].hi = b_last != b ? load_scale(p.scales, b_last) : cs[f][h].lo;
        }
      }
  }

  // One thread's chunk of one weight row for a sub-slice: its 16 codes (byte j = codes of columns
  // 16t + 2j, + 1, the even one in the high nibble as in the packed layout) and their scales.
  struct Chunk {
    uint64_t codes;
    float lo, hi;  // columns >= split take hi
    int split;
  };

  // The chunk of CTA-local row r in stage buffer ws, for the warp's sub-slice starting at k_sub.
  __device__ Chunk chunk(const uint8_t* ws, int r, int64_t k_sub, const ChunkScale& cs) const {
    Chunk c;
    c.lo = scale(p.scales, cs.lo, off, code8);
    if constexpr (kAligned) {
      const uint2 v = *reinterpret_cast<const uint2*>(ws + r * kWRow + 8 * t);
      c.codes = v.x | (uint64_t{v.y} << 32);
      c.hi = c.lo;
      c.split = 16;
    } else {
      c.hi = scale(p.scales, cs.hi, off, code8);
      const int64_t row_first = (nb + r) * p.K + k_sub;  // flat index of the sub-row's first element
      const int64_t first = row_first + 16 * t;          // and of the chunk's
      c.split = clamp_i64((((first >> p.log2_bs) + 1) << p.log2_bs) - first, 0, 16);
      // The chunk's first byte, first >> 1 = (row_first >> 1) + 8t, is at offset o of the staged
      // words, which start at the word holding byte row_first >> 1.
      const int o = static_cast<int>((row_first >> 1) & 3) + 8 * t;
      const uint32_t* src = reinterpret_cast<const uint32_t*>(ws + r * kWRow) + o / 4;
      const uint32_t sh = 8 * (o % 4);
      const uint32_t w0 = src[0], w1 = src[1], w2 = src[2];
      uint64_t x = __funnelshift_r(w0, w1, sh) | (uint64_t{__funnelshift_r(w1, w2, sh)} << 32);
      if (first & 1) {
        // The chunk starts at a low nibble: its byte j is (low nibble of byte j) << 4 | (high
        // nibble of byte j + 1), byte 8 being the next staged byte.
        const uint64_t next = (x >> 8) | (uint64_t{(w2 >> sh) & 0xFFu} << 56);
        x = ((x & 0x0F0F0F0F0F0F0F0Full) << 4) | ((next >> 4) & 0x0F0F0F0F0F0F0F0Full);
      }
      c.codes = x;
    }
    return c;
  }

  // Half hf (pairs 4hf .. 4hf + 3, i.e. columns 16t + 8hf .. + 8) of a chunk as 4 T x2 registers,
  // low half the smaller column; columns at or past `valid` are 0.
  __device__ void decode_half(const Chunk& c, int hf, int valid, uint32_t (&w)[4]) const {
    // Each byte of even4 / odd4 is 4 * the code of one element, the byte offset of its table
    // entry (gemm4.cu's decode): even4 holds the high nibbles, the even columns.
    const uint32_t word = static_cast<uint32_t>(c.codes >> (32 * hf));
    const uint32_t even4 = (word >> 2) & 0x3C3C3C3Cu, odd4 = (word << 2) & 0x3C3C3C3Cu;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int e = 8 * hf + 2 * b;  // the chunk's column of the even code
      float v0 = __fmul_rn(lut_at(lut, even4, b), e < c.split ? c.lo : c.hi);
      float v1 = __fmul_rn(lut_at(lut, odd4, b), e + 1 < c.split ? c.lo : c.hi);
      if constexpr (!kAligned) {
        v0 = e < valid ? v0 : 0.0f;
        v1 = e + 1 < valid ? v1 : 0.0f;
      }
      w[b] = pack2<T>(v0, v1);
    }
  }

  // One warp's 64-k sub-slice of stage s: 2 weight fragments x kMF activation fragments x 4 steps,
  // in two halves of 2 steps (32 k). The halves are a loop that is not unrolled: it bounds the
  // registers the compiler's hoisting of shared loads can take.
  __device__ void compute(int s, int64_t slice, const ChunkScale (&cs)[2][2], float (&acc)[2][kMF][4]) const {
    const int64_t k_sub = slice * kBK + int64_t{kSub} * wk;
    if (k_sub >= p.K) return;  // warp-uniform: the K tail left this sub-slice empty
    const uint8_t* ws = w_stage(s) + wk * kBN * kWRow;
    const S* as = a_stage(s) + wk * kBM * kARow + 16 * t;
    const int valid = kAligned ? 16 : clamp_i64(p.K - (k_sub + 16 * t), 0, 16);
    Chunk c[2][2];
#pragma unroll
    for (int f = 0; f < 2; ++f)
#pragma unroll
      for (int h = 0; h < 2; ++h) c[f][h] = chunk(ws, w_row(f, h), k_sub, cs[f][h]);
#pragma unroll 1
    for (int hf = 0; hf < 2; ++hf) {
      uint32_t w[2][2][4];
#pragma unroll
      for (int f = 0; f < 2; ++f)
#pragma unroll
        for (int h = 0; h < 2; ++h) decode_half(c[f][h], hf, valid, w[f][h]);
#pragma unroll
      for (int j = 0; j < kMF; ++j) {
        // Activation row 8j + g, columns 16t + 8hf .. + 8: words 4hf .. 4hf + 3 of the thread's 8.
        const uint4 a = *reinterpret_cast<const uint4*>(as + (8 * j + g) * kARow + 8 * hf);
        const uint32_t b[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
        for (int st = 0; st < 2; ++st)
#pragma unroll
          for (int f = 0; f < 2; ++f) {
            const uint32_t wa[4] = {w[f][0][2 * st], w[f][1][2 * st], w[f][0][2 * st + 1], w[f][1][2 * st + 1]};
            mma_16816<T>(acc[f][j], wa, b[2 * st], b[2 * st + 1]);
          }
      }
    }
  }

  // The partial sums of the K-warps through shared memory ([WK][BM][BN + pad] fp32, the stages'
  // memory), added in K-warp order, + bias, rounded once to T.
  __device__ void epilogue(const float (&acc)[2][kMF][4]) const {
    constexpr int kRow = kBN + kRedPad;
    float* red = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int f = 0; f < 2; ++f)
#pragma unroll
      for (int j = 0; j < kMF; ++j) {
        float* r = red + (wk * kBM + 8 * j + 2 * t) * kRow + 32 * wn + 16 * f + g;
        r[0] = acc[f][j][0];         // (n = g,     m = 2t)
        r[kRow] = acc[f][j][1];      // (n = g,     m = 2t + 1)
        r[8] = acc[f][j][2];         // (n = g + 8, m = 2t)
        r[kRow + 8] = acc[f][j][3];  // (n = g + 8, m = 2t + 1)
      }
    __syncthreads();
    for (int e = tid; e < kBM * kBN; e += kThreads) {
      const int ml = e / kBN, nl = e % kBN;
      const int64_t m = mb + ml, n = nb + nl;
      if (m >= p.M || n >= p.N) continue;
      float v = red[ml * kRow + nl];
#pragma unroll
      for (int q = 1; q < WK; ++q) v += red[(q * kBM + ml) * kRow + nl];
      if (p.bias != nullptr) v += Elem<T>::load(p.bias, n);
      Elem<T>::store(p.out, m * p.N + n, v);
    }
    __syncthreads();  // the next M tile refills the stages
  }

  __device__ void run() {
    const int64_t slices = ceil_div(p.K, kBK);
    const int64_t m_tiles = ceil_div(p.M, kBM);
    for (int64_t mt = blockIdx.y; mt < m_tiles; mt += gridDim.y) {
      mb = mt * kBM;
      float acc[2][kMF][4];
#pragma unroll
      for (int f = 0; f < 2; ++f)
#pragma unroll
        for (int j = 0; j < kMF; ++j)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[f][j][c] = 0.0f;
      // Prologue: kStages - 1 groups committed, empty ones included, so that the wait below
      // always counts the same.
#pragma unroll
      for (int s = 0; s < kStages - 1; ++s) {
        if (s < slices) load_stage(s, s);
        cp_async_commit();
      }
      ChunkScale next[2][2];
      if (slices > 0) load_scales(next, 0);
      for (int64_t i = 0; i < slices; ++i) {
        ChunkScale cur[2][2];
#pragma unroll
        for (int f = 0; f < 2; ++f)
#pragma unroll
          for (int h = 0; h < 2; ++h) cur[f][h] = next[f][h];
        if (i + 1 < slices) load_scales(next, i + 1);  // in flight while slice i is computed
        cp_async_wait<kStages - 2>();  // this thread's part of slice i has landed
        __syncthreads();               // everyone's part, and nobody still reads slice i - 1's stage
        if (i + kStages - 1 < slices) load_stage(static_cast<int>((i + kStages - 1) % kStages), i + kStages - 1);
        cp_async_commit();
        compute(static_cast<int>(i % kStages), i, cur, acc);
      }
      cp_async_wait<0>();
      __syncthreads();  // the stages become the epilogue's sums
      epilogue(acc);
    }
  }
};

// CTAs per SM the registers are budgeted for: 3 (168 registers a thread) where that does not
// spill, else 2 (255): WK = 1's accumulators and the general path's index arithmetic need more.
// (4 CTAs, 128 registers, spilled on sm_80.)
constexpr int min_blocks(int wk, bool aligned) { return wk == 1 || !aligned ? 2 : 3; }

template <DType T, int WK, bool kAligned>
__global__ void __launch_bounds__(kThreads, min_blocks(WK, kAligned)) gemm4_mma_kernel(Gemm4MmaParams<T> p) {
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ float lut[16];
  __shared__ float code8[256];
  const int tid = threadIdx.x;
  if (tid < 16) lut[tid] = p.code[tid];
  if (p.scales.qabsmax != nullptr)
    for (int i = tid; i < 256; i += kThreads) code8[i] = p.scales.nested_code[i];
  __syncthreads();
  const int warp = tid / 32, lane = tid % 32;
  Gemm4Mma<T, WK, kAligned> k{p, smem, lut, code8, p.scales.qabsmax != nullptr ? p.scales.offset_value() : 0.0f,
                              tid, lane / 4, lane % 4, warp % Tile<WK>::kWN, warp / Tile<WK>::kWN,
                              int64_t{blockIdx.x} * Tile<WK>::kBN, 0};
  k.run();
}

template <DType T, int WK, bool kAligned>
void launch(const Call& call, const Gemm4MmaParams<T>& p) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.N, Tile<WK>::kBN)),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(p.M, Tile<WK>::kBM), 65535)));
  gemm4_mma_kernel<T, WK, kAligned><<<grid, kThreads, Stage<kAligned>::kSmem, call.stream()>>>(p);
  call.check_launch("gemm4_mma_kernel");
}

// Note [Tile choice]: the largest tile (WK = 1: BM = 64, the fewest re-reads of W) that is not
// taller than M rounded up to 16 rows and whose grid still gives every multiprocessor two CTAs;
// else WK = 4 (BM = 16: the most CTAs on the same weight). A tile taller than M would only multiply
// zeros; for a single M tile a smaller one decodes W as often and runs more CTAs. A rule of thumb,
// not swept (the tile sweep of issue 7 is still to do).
// tile_wk 1, 2 or 4 forces that tile (tests, sweeps); anything else applies the rule.
template <DType T, bool kAligned>
void launch_for_shape(const Call& call, const Gemm4MmaParams<T>& p, int tile_wk) {
  if (tile_wk == 1) return launch<T, 1, kAligned>(call, p);
  if (tile_wk == 2) return launch<T, 2, kAligned>(call, p);
  if (tile_wk == 4) return launch<T, 4, kAligned>(call, p);
  const int64_t want = 2 * int64_t{sm_count(call.device())}, rows = ceil_div(p.M, 16) * 16;
  const auto fits = [&](int wk) { return 64 / wk <= rows && ceil_div(p.N, 128 / wk) * ceil_div(p.M, 64 / wk) >= want; };
  if (fits(1)) return launch<T, 1, kAligned>(call, p);
  if (fits(2)) return launch<T, 2, kAligned>(call, p);
  launch<T, 4, kAligned>(call, p);
}

}  // namespace

void gemm_4bit_mma(const TensorView& A, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                   QuantType qt, const std::optional<TensorView>& bias, const TensorView& out, int tile_wk) {
  const int64_t M = A.shape[0], K = A.shape[1], N = out.shape[1];
  if (M == 0 || N == 0) return;
  const Call call("gemm_4bit", A);
  dispatch_half(A.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    const Gemm4MmaParams<T> p = gemm4_mma_params<T>(A, packed, scales, blocksize, qt, bias, out);
    if (K % kSub == 0 && aligned(A.data, 16) && aligned(packed.data, 16)) launch_for_shape<T, true>(call, p, tile_wk);
    else launch_for_shape<T, false>(call, p, tile_wk);
  });
}

}  // namespace nybble::cuda
