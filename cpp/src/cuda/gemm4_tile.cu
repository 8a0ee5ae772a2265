// cuda/gemm4_tile.cu — out[M, N] = A[M, K] @ W^T (+ bias[N]) with W the 4-bit weight [N, K], for
// bf16/fp16 activations and a few dozen to a few hundred rows of A: each weight decoded once per
// CTA into a shared-memory tile that all of the CTA's rows of A multiply (mma.sync m16n8k16, fp32
// accumulation, sm_80+), the K range split over the CTAs of a thread-block cluster (sm_90) whose
// partial sums meet through distributed shared memory, so that few weight rows still fill the GPU
// and nothing is written to global memory but the output.
//
// Each weight is decoded as dequantize_4bit decodes it, w = round_to_T(code[c] * scale(block)), the
// product in fp32: the result is dequantize_4bit + a bf16/fp16 GEMM with fp32 accumulation, up to
// summation order (cuda_gemm4_mma_test.cpp's ref_T tolerance).
//
// The tile. A CTA of 8 warps owns BN = 128 weight rows (output columns) x BM rows of A (16, 32, 64
// or 128) and a range of K in steps of BK = 64. A step's operands are copied by cp.async into a
// ring of kStages stages: the packed weight sub-rows [128][32 bytes] (the reference's layout as it
// is) and the activations [BM][72 elements] (64 + 8 of padding: rows 144 bytes apart, so ldmatrix's
// eight 16-byte row reads hit distinct banks). Then the CTA decodes the step's weights into one bf16
// tile [128][72] (thread i: row i / 2, k 32 (i % 2) .. + 32: one 16-byte packed read, 32 code-table
// reads from the 16-entry table in shared memory (16 words in 16 banks: no conflicts), 32 FMUL, 16
// packing conversions, four 16-byte stores), and the warps multiply: warp (wm, wn) of WM x WN takes
// rows [wm BM / WM, ..) of A and weight rows [wn 128 / WN, ..), MF m16 and NF n8 fragments, loaded
// by ldmatrix (the weight tile is the col-major B operand as it lies: row n holds k contiguous).
// The blocksize is at least 64 and K % 64 == 0, so a step's 64 k of a weight row lie in one block:
// one scale per decoding thread and step, loaded two steps ahead into registers.
//
// The split (Note [Split over a cluster]): the S CTAs of a cluster (grid z) take consecutive K
// ranges of the same output tile. Each writes its fp32 sums into its own shared memory (reusing the
// stages), the cluster synchronizes, and CTA r adds the S partial tiles for its 1/S of the tile's
// elements in rank order (deterministic), reading the others' shared memory; + bias in fp32,
// rounded once to T. S is chosen so that the grid has about two CTAs a multiprocessor. Without
// clusters (sm_80) S = 1.
//
// Edges: weight rows n >= N and A rows m >= M load nothing (zero-filled; the scale of a missing row
// is 0, so its weights decode to 0) and are not stored.
//
// Conditions (gemm4_tile_applies): T bf16/fp16, M >= 1, K % 64 == 0, blocksize >= 64, packed and A
// 16-byte aligned, fp32 scale buffers 4-byte aligned.
//
// Measured on the H200 (cpp/bench/cuda_bench.cpp rows `tile`, weights rotated past L2; the Python
// sweep against dequantize + cuBLASLt: docs/benchmarks/h200-gemm4-sweep.md), NF4 bs 64 nested, bf16:
// 9-18 % of the copy bandwidth at M = 1-16 whatever M (28672 x 8192: 160 us; the skinny kernel:
// 69-105 us), M = 64 230 us, M = 256 600 us; 1.08-1.46x faster than dequantize + cuBLASLt at 24-32
// rows on weights of 2^25 elements or more, slower past 32-64 rows. What does not limit it
// (variants measured and not landed, 2026-11-29): the decode's instruction count (pair-table
// lookups with the scale applied to each step's fp32 partial sums, a third of the instructions a
// weight, and two decoded tiles with one barrier a step: as fast at M <= 16, slower above), and the
// DRAM access pattern (each weight row's 128 contiguous bytes in one stage of 4 steps, 64 at BM 32-64:
// 179 us at M = 1 on 28672 x 8192, slower). About 1.2 us a step on that weight, with 2 CTAs an SM
// waiting at two barriers a step; the SASS (BM = 16) has ~270 instructions a warp and step, so ~1.8
// of 4 issue slots a cycle are used at that speed: stalls. Nsight Compute (h200-ncu.md, BM = 32 and
// 64 on 28672 x 8192): L1/shared-memory throughput 73-75 % of peak against DRAM 9-10 %, issue 47 %,
// and per issued instruction 0.5-0.6 warps stalled at a barrier, 0.3-0.4 on global memory, 1.5-1.9
// on shared memory, 0.6-0.7 on the MIO queue: the shared-memory pipe, not the barriers nor DRAM, is
// what it waits on (per weight one code-table read, the decoded tile's store and its ldmatrix, and
// every warp's ldmatrix of the activations). Closing it needs fewer shared-memory bytes a weight:
// the code table in registers (a byte permute over a per-block bf16 table) and wgmma reading both
// operands from shared memory (no per-warp ldmatrix), sm_90a.
//
// Note [The gradient]: gemm_4bit_grad, out[M, K] = G[M, N] @ W (MatMul4Bit's backward), is the same
// kernel with the roles of the weight tile's sides swapped (kGrad). A CTA owns 64 output columns
// (weight columns k) x BM rows of G, and a step decodes the 128 x 64 weight tile of rows
// [128 s, 128 s + 128) at those columns, exactly as above (same thread mapping, the scale of row
// n's block at those columns), and reduces over its 128 rows: G's step slice [BM][128] (staged
// rows of 136 elements, 272 bytes: ldmatrix conflict-free too) is the A operand, and the decoded
// tile, whose rows hold k contiguous, is a row-major B operand, read by ldmatrix.trans. The split
// over the cluster runs over N. N % 8 == 0 (16-byte chunks of G rows lie wholly inside or outside
// N; rows of the last step past N load zeros and decode to 0). Shared memory at BM = 128: 171 KiB,
// one CTA an SM.
// Measured (h200-gemm4-grad-sweep.md, bf16, NF4 bs 64 nested): 18-233 us at M = 1-16 on the six
// weights, 1.17-1.50x faster than dequantize + cuBLASLt (which writes and rereads the bf16 weight),
// 0.47-0.63x bf16 G @ W; at 24-32 rows 1.0-1.2x on weights of 2^25+ elements with K >= 8192;
// slower from 48 rows (the tile decodes each weight once per BM rows of G, as the forward does).
#include <cooperative_groups.h>
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

constexpr int kThreads = 256;  // 8 warps
constexpr int kBN = 128;       // weight rows of a step's tile
constexpr int kBK = 64;        // weight columns of a step's tile
constexpr int kStages = 4;
constexpr int kRowBytes = (kBK + 8) * 2;     // 144: a decoded weight row (see the header)
constexpr int kPackedBytes = kBN * kBK / 2;  // a step's packed weights: 4 KiB
constexpr int kMaxSplit = 8;                 // portable cluster size

// Warps as WM x WN over the BM x kCols output tile; MF m16 fragments of A and NF n8 fragments of W
// a warp. Forward: a CTA's output columns are the tile's 128 weight rows, a step reduces over its
// 64 columns; kGrad (Note [The gradient]): the output columns are the tile's 64 weight columns, a
// step reduces over its 128 rows.
template <int BM, bool kGrad>
struct Tile {
  static constexpr int kCols = kGrad ? kBK : kBN;    // output columns of a CTA
  static constexpr int kDepth = kGrad ? kBN : kBK;   // the reduction of a step
  static constexpr int kActRowBytes = (kDepth + 8) * 2;  // a staged activation row: 144 or 272 bytes
  static constexpr int kRedRow = kCols + 4;        // floats of a row of the epilogue's sums
  static constexpr int kWM = BM <= 16 ? 1 : BM <= 64 ? 2 : 4;
  static constexpr int kWN = 8 / kWM;
  static constexpr int kMF = BM / (16 * kWM);
  static constexpr int kNF = kCols / (8 * kWN);
  static_assert(kMF >= 1 && kNF >= 1 && (kGrad || kNF % 2 == 0), "ldmatrix.x4 loads two n8 fragments");
  // Shared memory: the stages (packed, then activations), the decoded tile, the nested code map.
  static constexpr int kStageBytes = kPackedBytes + BM * kActRowBytes;
  static constexpr int kDecoded = kStages * kStageBytes;
  static constexpr int kCode8 = kDecoded + kBN * kRowBytes;
  static constexpr int kSmem = kCode8 + 256 * 4;
  static_assert(BM * kRedRow * 4 <= kDecoded, "the epilogue's sums fit in the stages");
};

template <DType T, int BM, bool kGrad>
__global__ void __launch_bounds__(kThreads, 2) gemm4_tile_kernel(Gemm4MmaParams<T> p, int64_t steps_per_split) {
  using Tl = Tile<BM, kGrad>;
  using S = storage_t<T>;
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ float lut[16];
  uint8_t* decoded = smem + Tl::kDecoded;
  float* code8 = reinterpret_cast<float*>(smem + Tl::kCode8);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = warp / Tl::kWN, wn = warp % Tl::kWN;
  const int64_t c0 = int64_t{blockIdx.x} * Tl::kCols, m0 = int64_t{blockIdx.y} * BM;  // output tile
  const int64_t steps = kGrad ? ceil_div(p.N, kBN) : p.K / kBK;
  const int64_t first = int64_t{blockIdx.z} * steps_per_split;
  const int64_t last = first + steps_per_split < steps ? first + steps_per_split : steps;
  const int64_t count = last > first ? last - first : 0;
  const bool nested = p.scales.qabsmax != nullptr;

  // Step s's weight tile: rows [row0(s), + 128), columns [col0(s), + 64). This thread's share: row
  // dr, packed bytes [16 dh, 16 dh + 16).
  const int dr = tid / 2, dh = tid % 2;
  const auto row0 = [&](int64_t s) { return kGrad ? s * kBN : c0; };
  const auto col0 = [&](int64_t s) { return kGrad ? c0 : s * kBK; };
  // The activations (G for kGrad) of step s: A[m0 + r, s kDepth + j] for j < kDepth, 16 bytes at a time.
  const int64_t lda = kGrad ? p.N : p.K;

  const auto load_stage = [&](int64_t i) {  // step first + i into its stage; always commits a group
    if (i < count) {
      uint8_t* st = smem + (i % kStages) * Tl::kStageBytes;
      const int64_t s = first + i, dn = row0(s) + dr;
      cp_async<16>(st + 32 * dr + 16 * dh, dn < p.N ? p.packed + (dn * p.K + col0(s)) / 2 + 16 * dh : p.packed,
                   dn < p.N ? 16 : 0);
      S* as = reinterpret_cast<S*>(st + kPackedBytes);
      const int64_t j0 = s * Tl::kDepth;
      constexpr int kChunks = Tl::kDepth / 8;
      for (int c = tid; c < BM * kChunks; c += kThreads) {
        const int r = c / kChunks, q = c % kChunks;
        const bool ok = m0 + r < p.M && j0 + 8 * q < lda;  // kGrad: N % 8 == 0, a chunk is in or out
        cp_async<16>(as + r * (Tl::kActRowBytes / 2) + 8 * q, ok ? p.A + (m0 + r) * lda + j0 + 8 * q : p.A, ok ? 16 : 0);
      }
    }
    cp_async_commit();
  };
  const auto load_raw = [&](int64_t i) {  // this thread's scale of step first + i
    const int64_t s = first + i, dn = row0(s) + dr;
    return i < count && dn < p.N ? load_scale(p.scales, (dn * p.K + col0(s)) >> p.log2_bs) : RawScale{};
  };

  for (int i = 0; i < kStages - 1; ++i) load_stage(i);
  RawScale raw0 = load_raw(0), raw1 = load_raw(1);
  if (tid < 16) lut[tid] = p.code[tid];
  if (nested)
    for (int i = tid; i < 256; i += kThreads) code8[i] = p.scales.nested_code[i];
  const float off = nested ? p.scales.offset_value() : 0.0f;

  float acc[Tl::kMF][Tl::kNF][4] = {};
  // ldmatrix row addresses: A fragment rows (lane % 16), k half (lane / 16); forward: W rows of a
  // fragment pair (lane % 8 + 8 (lane / 16)), k half ((lane / 8) % 2).
  const int a_row = wm * 16 * Tl::kMF + lane % 16, a_col = 8 * (lane / 16);

  for (int64_t i = 0; i < count; ++i) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // step i has landed for every thread; step i - 1's readers are done
    load_stage(i + kStages - 1);
    const uint8_t* st = smem + (i % kStages) * Tl::kStageBytes;

    // Decode: row dr, k [32 dh, 32 dh + 32): byte j holds k 2j (high nibble) and 2j + 1.
    {
      const float sc = row0(first + i) + dr < p.N ? scale(p.scales, raw0, off, code8) : 0.0f;
      raw0 = raw1;
      raw1 = load_raw(i + 2);
      const uint4 w = *reinterpret_cast<const uint4*>(st + 32 * dr + 16 * dh);
      const uint32_t words[4] = {w.x, w.y, w.z, w.w};
      uint32_t out[16];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const uint32_t hi4 = (words[q] >> 2) & 0x3C3C3C3Cu, lo4 = (words[q] << 2) & 0x3C3C3C3Cu;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const float even = *reinterpret_cast<const float*>(reinterpret_cast<const char*>(lut) + __byte_perm(hi4, 0, 0x4440u + b));
          const float odd = *reinterpret_cast<const float*>(reinterpret_cast<const char*>(lut) + __byte_perm(lo4, 0, 0x4440u + b));
          out[4 * q + b] = pack2<T>(even * sc, odd * sc);
        }
      }
      uint4* dst = reinterpret_cast<uint4*>(decoded + dr * kRowBytes + 64 * dh);
#pragma unroll
      for (int q = 0; q < 4; ++q) dst[q] = make_uint4(out[4 * q], out[4 * q + 1], out[4 * q + 2], out[4 * q + 3]);
    }
    __syncthreads();  // the decoded tile is complete

    const uint8_t* as = st + kPackedBytes;
    if constexpr (!kGrad) {
      const int w_row = wn * 8 * Tl::kNF + lane % 8 + 8 * (lane / 16), w_col = 8 * ((lane / 8) % 2);
#pragma unroll
      for (int kk = 0; kk < kBK; kk += 16) {
        uint32_t a[Tl::kMF][4], b[Tl::kNF][2];
#pragma unroll
        for (int f = 0; f < Tl::kMF; ++f) ldmatrix_x4(a[f], as + (a_row + 16 * f) * Tl::kActRowBytes + 2 * (kk + a_col));
#pragma unroll
        for (int f = 0; f < Tl::kNF; f += 2) {
          uint32_t r[4];
          ldmatrix_x4(r, decoded + (w_row + 8 * f) * kRowBytes + 2 * (kk + w_col));
          b[f][0] = r[0], b[f][1] = r[1], b[f + 1][0] = r[2], b[f + 1][1] = r[3];
        }
#pragma unroll
        for (int mf = 0; mf < Tl::kMF; ++mf)
#pragma unroll
          for (int nf = 0; nf < Tl::kNF; ++nf) mma_16816<T>(acc[mf][nf], a[mf], b[nf][0], b[nf][1]);
      }
    } else {
      // Note [The gradient]: the mma's k runs over the tile's 128 weight rows, its n over the 64
      // weight columns; the decoded tile (row n holds k contiguous) is a row-major B operand, which
      // ldmatrix.trans turns into the col fragments: lane l reads weight row kk + l, matrices j =
      // rows kk + 8j .. + 8 at this fragment's 8 columns, i.e. b0, b1 of k16 slices kk and kk + 16.
#pragma unroll
      for (int kk = 0; kk < kBN; kk += 32) {
        uint32_t a[2][Tl::kMF][4], b[Tl::kNF][4];
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int f = 0; f < Tl::kMF; ++f)
            ldmatrix_x4(a[h][f], as + (a_row + 16 * f) * Tl::kActRowBytes + 2 * (kk + 16 * h + a_col));
#pragma unroll
        for (int f = 0; f < Tl::kNF; ++f)
          ldmatrix_x4_trans(b[f], decoded + (kk + lane) * kRowBytes + 2 * (wn * 8 * Tl::kNF + 8 * f));
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int mf = 0; mf < Tl::kMF; ++mf)
#pragma unroll
            for (int nf = 0; nf < Tl::kNF; ++nf) mma_16816<T>(acc[mf][nf], a[h][mf], b[nf][2 * h], b[nf][2 * h + 1]);
      }
    }
  }
  cp_async_wait<0>();  // only empty groups can be left
  __syncthreads();     // every warp is done with the stages: they become the sums

  // The sums [BM][kRedRow]: fragment (mf, nf) of this thread holds rows g, g + 8 and columns 2t, 2t + 1.
  float* red = reinterpret_cast<float*>(smem);
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mf = 0; mf < Tl::kMF; ++mf)
#pragma unroll
    for (int nf = 0; nf < Tl::kNF; ++nf) {
      const int r = wm * 16 * Tl::kMF + 16 * mf + g, c = wn * 8 * Tl::kNF + 8 * nf + 2 * t;
      *reinterpret_cast<float2*>(red + r * Tl::kRedRow + c) = make_float2(acc[mf][nf][0], acc[mf][nf][1]);
      *reinterpret_cast<float2*>(red + (r + 8) * Tl::kRedRow + c) = make_float2(acc[mf][nf][2], acc[mf][nf][3]);
    }

  // Note [Split over a cluster]: CTA `rank` of the `split` finishes elements [rank * chunk, ..) of
  // the tile, adding every CTA's sums in rank order.
  const int split = static_cast<int>(gridDim.z);
  int rank = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  if (split > 1) {
    cg::this_cluster().sync();
    rank = static_cast<int>(cg::this_cluster().block_rank());
  } else {
    __syncthreads();
  }
#else
  __syncthreads();
#endif
  constexpr int kElems = BM * Tl::kCols;
  const int chunk = static_cast<int>(ceil_div(kElems, split));
  const int end = (rank + 1) * chunk < kElems ? (rank + 1) * chunk : kElems;
  const int64_t cols = kGrad ? p.K : p.N;
  for (int e = rank * chunk + tid; e < end; e += kThreads) {
    const int r = e / Tl::kCols, c = e % Tl::kCols;
    const int64_t m = m0 + r, n = c0 + c;
    if (m >= p.M || n >= cols) continue;
    float v = 0.0f;
    for (int q = 0; q < split; ++q) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      const float* src = split > 1 ? cg::this_cluster().map_shared_rank(red, q) : red;
#else
      const float* src = red;
#endif
      v += src[r * Tl::kRedRow + c];
    }
    if (p.bias != nullptr) v += Elem<T>::load(p.bias, n);
    Elem<T>::store(p.out, m * cols + n, v);
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (split > 1) cg::this_cluster().sync();  // no CTA leaves while another reads its sums
#endif
}

// Per GPU, set up once: the kernels' shared-memory opt-in (a per-GPU function attribute) and
// whether clusters are available (compute capability 9.0+).
template <DType T, int BM, bool kGrad>
bool setup(const Call& call) {
  static PerDevice cache;  // 1: no clusters, 2: clusters
  return cache.get(call.device(), [&] {
    call.check(cudaFuncSetAttribute(gemm4_tile_kernel<T, BM, kGrad>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    Tile<BM, kGrad>::kSmem),
               "cudaFuncSetAttribute");
    int major = 0;
    call.check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, call.device()), "cudaDeviceGetAttribute");
    return major >= 9 ? 2 : 1;
  }) == 2;
}

template <DType T, int BM, bool kGrad>
void launch(const Call& call, const Gemm4MmaParams<T>& p, int split) {
  using Tl = Tile<BM, kGrad>;
  const bool clusters = setup<T, BM, kGrad>(call);
  const int64_t col_tiles = ceil_div(kGrad ? p.K : p.N, Tl::kCols);
  const int64_t tiles = col_tiles * ceil_div(p.M, BM), steps = kGrad ? ceil_div(p.N, kBN) : p.K / kBK;
  if (split <= 0)  // about two CTAs a multiprocessor, at least two steps a CTA
    split = static_cast<int>(std::clamp<int64_t>(ceil_div(2 * sm_count(call.device()), tiles), 1, kMaxSplit));
  split = static_cast<int>(std::min<int64_t>({split, kMaxSplit, std::max<int64_t>(1, steps / 2)}));
  if (!clusters) split = 1;
  const int64_t per_split = ceil_div(steps, split);
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(col_tiles), static_cast<unsigned>(ceil_div(p.M, BM)), static_cast<unsigned>(split));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = Tl::kSmem;
  cfg.stream = call.stream();
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = 1;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = static_cast<unsigned>(split);
  cfg.attrs = &attr;
  cfg.numAttrs = split > 1 ? 1 : 0;
  call.check(cudaLaunchKernelEx(&cfg, gemm4_tile_kernel<T, BM, kGrad>, p, per_split), "gemm4_tile_kernel");
}

// The tile height for M rows (bm <= 0), or the one forced.
int tile_height(int64_t M, int bm) { return bm > 0 ? bm : M <= 16 ? 16 : M <= 32 ? 32 : M <= 64 ? 64 : 128; }

template <bool kGrad, DType T>
void launch_height(const Call& call, const Gemm4MmaParams<T>& p, int bm, int split) {
  switch (tile_height(p.M, bm)) {
    case 16: return launch<T, 16, kGrad>(call, p, split);
    case 32: return launch<T, 32, kGrad>(call, p, split);
    case 64: return launch<T, 64, kGrad>(call, p, split);
    default: return launch<T, 128, kGrad>(call, p, split);
  }
}

// The shape and alignment conditions both directions share; A is the activations (G for kGrad).
bool tile_operands_fit(const TensorView& A, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                       int64_t K) {
  const bool scales_aligned = aligned(scales.absmax.data, 4) &&
                              (!scales.nested || aligned(scales.nested->nested_absmax.data, 4));
  return (A.dtype == DType::BF16 || A.dtype == DType::F16) && A.shape[0] >= 1 && A.shape[0] <= int64_t{65535} * 16 &&
         K > 0 && K % kBK == 0 && blocksize >= kBK && aligned(packed.data, 16) && aligned(A.data, 16) && scales_aligned;
}

}  // namespace

bool gemm4_tile_applies(const TensorView& A, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                        int64_t N) {
  return N >= 1 && tile_operands_fit(A, packed, scales, blocksize, A.shape[1]);
}

void gemm_4bit_tile(const TensorView& A, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                    QuantType qt, const std::optional<TensorView>& bias, const TensorView& out, int bm, int split) {
  const Call call("gemm_4bit", A);
  dispatch_half(A.dtype, [&](auto t) {
    launch_height<false>(call, gemm4_mma_params<decltype(t)::value>(A, packed, scales, blocksize, qt, bias, out), bm, split);
  });
}

bool gemm4_tile_grad_applies(const TensorView& G, const TensorView& packed, const BlockScales& scales,
                             int64_t blocksize, int64_t K) {
  const int64_t N = G.shape[1];
  return N >= 1 && N % 8 == 0 && tile_operands_fit(G, packed, scales, blocksize, K);
}

void gemm_4bit_grad_tile(const TensorView& G, const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                         QuantType qt, const TensorView& out, int bm, int split) {
  const Call call("gemm_4bit_grad", G);
  dispatch_half(G.dtype, [&](auto t) {
    launch_height<true>(call, gemm4_grad_params<decltype(t)::value>(G, packed, scales, blocksize, qt, out), bm, split);
  });
}

}  // namespace nybble::cuda
