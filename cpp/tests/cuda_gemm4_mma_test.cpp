// cuda_gemm4_mma_test.cpp — gemm_4bit's tensor-core paths (bf16/fp16 activations): the register-
// decoding kernel (cuda/gemm4_mma.cu, unusual shapes), the shared-memory tiled kernel
// (cuda/gemm4_tile.cu, M > 16) and the weight-streaming kernel for few rows (cuda/gemm4_skinny.cu,
// M <= 16), against the CPU oracle's dequantize_4bit (NYBBLE_CPU_ISA=ref)
// and an exact (double) sum, on fresh random inputs: M from 1 to 1000, odd and even N, K not a
// multiple of the blocksize or of 64 (and odd K, whose odd rows start mid-byte), NF4/FP4, plain and
// nested absmax, several blocksizes, bias or not, A and the packed buffer off 16-byte alignment
// (the general path), every tile (forced through cuda::gemm_4bit_mma and cuda::gemm_4bit_tile) and
// the skinny kernel forced (cuda::gemm_4bit_skinny), and an infinite absmax next to a row boundary (a row's K tail must not
// pick up its neighbour's weights). The output is poisoned (0xFF: NaN in bf16/fp16) before each
// run. Every test skips when no GPU is visible.
//
// Tolerances, with u = 2^-8 (bf16) or 2^-11 (fp16), the unit roundoff of T, for out[m, n]:
// - against ref_T = the exact sum of a * w_T (+ bias), w_T = dequantize_4bit to T (what the tiled
//   kernel multiplies: the weight rounded to T once, as dequantize + a bf16/fp16 GEMM would have
//   it); not for the skinny kernel, which rounds the code to T and multiplies the scale in fp32:
//     |out - ref_T| <= acc + u * (|ref_T| + acc),   acc = (K / 16 + 8) * 2^-21 * sum |a * w_T|
//   acc: one fp32 accumulation per mma (16 k) plus the K-warps' partial sums and the bias, each
//   allowed 4 ulps of the running magnitude (tensor cores truncate inside their adder); u: the
//   final rounding to T.
// - against ref_f = the same sum over the oracle's fp32 weights (cpu/ref gemm_4bit's weights), for
//   both kernels:
//     |out - ref_f| <= r + acc + u * (|ref_f| + r + acc),   r = u * sum |a * w_f| + s * sum |a|
//   r being the rounding of every weight to T (|w_T - w_f| <= u |w_f|, or s = half the subnormal
//   spacing of T where w_T is subnormal: 2^-25 for fp16; the skinny kernel's w = T(code) * scale
//   is within u |w_f| too).
// A non-finite reference (an infinite absmax) requires a non-finite output, and a finite one a
// finite output within the tolerance.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/backend.hpp"
#include "cuda_test_util.hpp"
#include "test_util.hpp"

namespace nybble {
namespace {

using Bytes = std::vector<uint8_t>;
using test::cuda_check, test::DeviceBuffer, test::download, test::upload;

struct Case {
  DType dt;
  QuantType qt;
  int64_t M, N, K, bs;
  bool nested, bias;
  size_t a_shift = 0;   // elements by which A is moved off 16-byte alignment (the general path)
  size_t p_shift = 0;   // bytes by which the packed buffer is moved (4: off 16-byte alignment)
  bool inf_block = false;  // one block, at the start of a row, gets an infinite absmax (plain only)
  int tile_wk = -1;        // -1: the public gemm_4bit; 0, 1, 2, 4: cuda::gemm_4bit_mma with that tile
  bool skinny = false;     // cuda::gemm_4bit_skinny (tile_wk ignored)
  int tile_bm = 0;         // > 0: cuda::gemm_4bit_tile with this tile height and tile_split
  int tile_split = 0;
  bool grad = false;       // gemm_4bit_grad: A is G [M, N], out [M, K] = G @ W (tile_bm: cuda::gemm_4bit_grad_tile)
};

std::string describe(const Case& c) {
  return std::string(dtype_name(c.dt)) + " " + std::string(quant_type_name(c.qt)) + " M " + std::to_string(c.M) +
         " N " + std::to_string(c.N) + " K " + std::to_string(c.K) + " bs " + std::to_string(c.bs) +
         (c.nested ? " nested" : "") + (c.bias ? " bias" : "") + " a_shift " + std::to_string(c.a_shift) +
         " p_shift " + std::to_string(c.p_shift) + (c.inf_block ? " inf_block" : "") +
         (c.tile_wk >= 0 ? " tile_wk " + std::to_string(c.tile_wk) : "") +
         (c.skinny ? " skinny" : "") +
         (c.tile_bm > 0 ? " tile_bm " + std::to_string(c.tile_bm) + " split " + std::to_string(c.tile_split) : "") +
         (c.grad ? " grad" : "");
}

class CudaGemm4Mma : public test::CudaStreamTest {
 protected:
  void run(const Case& c);
  void every_height_and_split(bool grad);

  std::mt19937_64 rng_{test::test_seed()};
};

void CudaGemm4Mma::run(const Case& c) {
  SCOPED_TRACE(describe(c));
  const int64_t n = c.N * c.K, nb = num_blocks(n, c.bs), nbytes = packed_4bit_bytes(n);
  const size_t es = static_cast<size_t>(dtype_size(c.dt));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> positive(0.01f, 3.0f);

  // The product's shape: rows x cols, summed over depth (forward: M x N over K; grad: M x K over N).
  const int64_t cols = c.grad ? c.K : c.N, depth_len = c.grad ? c.N : c.K;

  // Inputs: A and bias ~ N(0, 1) in T, random packed bytes, random scales.
  test::FloatBuffer A(c.dt, c.M * depth_len), bias(c.dt, c.N);
  for (int64_t i = 0; i < A.size(); ++i) A.set(i, normal(rng_));
  for (int64_t i = 0; i < bias.size(); ++i) bias.set(i, normal(rng_));
  Bytes packed(static_cast<size_t>(nbytes));
  for (auto& b : packed) b = static_cast<uint8_t>(rng_());
  std::vector<float> absmax, nested_absmax;
  Bytes qabsmax;
  float offset = 0.0f;
  const int64_t nested_bs = rng_() % 2 ? kNestedBlocksize : 100;  // any positive nested blocksize is allowed
  if (!c.nested) {
    absmax.resize(static_cast<size_t>(nb));
    for (auto& a : absmax) a = positive(rng_);
    if (nb > 2) absmax[static_cast<size_t>(rng_() % static_cast<uint64_t>(nb))] = 0.0f;  // an all-zero block
    if (c.inf_block && c.N > 1) {
      // The block holding row r's first element: it starts in row r or straddles rows r - 1 and r.
      const int64_t r = 1 + static_cast<int64_t>(rng_() % static_cast<uint64_t>(c.N - 1));
      absmax[static_cast<size_t>(r * c.K / c.bs)] = std::numeric_limits<float>::infinity();
    }
  } else {
    qabsmax.resize(static_cast<size_t>(nb));
    for (auto& q : qabsmax) q = static_cast<uint8_t>(rng_());
    nested_absmax.resize(static_cast<size_t>(num_blocks(nb, nested_bs)));
    for (auto& a : nested_absmax) a = positive(rng_);
    offset = std::uniform_real_distribution<float>(-0.5f, 1.5f)(rng_);
  }
  const bool offset_on_device = c.nested && rng_() % 2 == 0;
  const auto nabs_count = static_cast<int64_t>(nested_absmax.size());
  const BlockScales host_scales =
      c.nested ? BlockScales{TensorView(qabsmax.data(), DType::U8, {nb}),
                             NestedAbsmax{TensorView(nested_absmax.data(), DType::F32, {nabs_count}),
                                          TensorView(dynamic_map_signed().data(), DType::F32, {256}), offset, nested_bs}}
               : BlockScales{TensorView(absmax.data(), DType::F32, {nb}), std::nullopt};

  // The oracle's weights, in T (what the kernel multiplies) and in fp32 (what cpu/ref gemm_4bit
  // multiplies).
  const TensorView packed_view(packed.data(), DType::U8, {nbytes});
  test::FloatBuffer w_t(c.dt, n);
  std::vector<float> w_f(static_cast<size_t>(n));
  dequantize_4bit(packed_view, host_scales, c.bs, c.qt, w_t.view());
  dequantize_4bit(packed_view, host_scales, c.bs, c.qt, TensorView(w_f.data(), DType::F32, {n}));

  // The GPU run.
  DeviceBuffer d_A(A.bytes.size()), d_packed(packed.size()), d_bias(bias.bytes.size()),
      d_out(static_cast<size_t>(c.M * cols) * es);
  upload(d_A, c.a_shift * es, A.bytes.data(), A.bytes.size());
  upload(d_packed, c.p_shift, packed.data(), packed.size());
  upload(d_bias, 0, bias.bytes.data(), bias.bytes.size());
  std::unique_ptr<DeviceBuffer> d_absmax, d_nested, d_code, d_offset;
  BlockScales dev_scales{};
  if (!c.nested) {
    d_absmax = std::make_unique<DeviceBuffer>(absmax.size() * 4);
    upload(*d_absmax, 0, absmax.data(), absmax.size() * 4);
    dev_scales = {gpu(*d_absmax, 0, DType::F32, {nb}), std::nullopt};
  } else {
    d_absmax = std::make_unique<DeviceBuffer>(qabsmax.size());
    upload(*d_absmax, 0, qabsmax.data(), qabsmax.size());
    d_nested = std::make_unique<DeviceBuffer>(nested_absmax.size() * 4);
    upload(*d_nested, 0, nested_absmax.data(), nested_absmax.size() * 4);
    d_code = std::make_unique<DeviceBuffer>(256 * 4);
    upload(*d_code, 0, dynamic_map_signed().data(), 256 * 4);
    d_offset = std::make_unique<DeviceBuffer>(4);
    upload(*d_offset, 0, &offset, 4);
    NestedAbsmax na{gpu(*d_nested, 0, DType::F32, {nabs_count}), gpu(*d_code, 0, DType::F32, {256}),
                    offset_on_device ? 123.0f : offset, nested_bs};  // 123: must be ignored for offset_tensor
    if (offset_on_device) na.offset_tensor = gpu(*d_offset, 0, DType::F32, {1});
    dev_scales = {gpu(*d_absmax, 0, DType::U8, {nb}), na};
  }
  d_out.poison();
  const TensorView gA = gpu(d_A, c.a_shift * es, c.dt, {c.M, depth_len}), gp = gpu(d_packed, c.p_shift, DType::U8, {nbytes}),
                   gout = gpu(d_out, 0, c.dt, {c.M, cols});
  const std::optional<TensorView> gbias = c.bias ? std::optional<TensorView>(gpu(d_bias, 0, c.dt, {c.N})) : std::nullopt;
  // The tiled kernel's weights are dequantize_4bit's (ref_T); the public call also reaches the
  // skinny kernel and, below 9 rows, the fp32 streaming kernel (gemm4.cu's Note [gemm_4bit paths]).
  const bool tiled = c.grad ? c.tile_bm > 0 || cuda::gemm4_tile_grad_applies(gA, gp, dev_scales, c.bs, c.K)
                            : c.tile_bm > 0 || (!c.skinny && (c.tile_wk >= 0 ||
                                                              (c.M > 8 && !cuda::gemm4_skinny_applies(gA, gp, dev_scales, c.bs, c.N))));
  if (c.grad && c.tile_bm > 0) {
    ASSERT_TRUE(cuda::gemm4_tile_grad_applies(gA, gp, dev_scales, c.bs, c.K));
    cuda::gemm_4bit_grad_tile(gA, gp, dev_scales, c.bs, c.qt, gout, c.tile_bm, c.tile_split);
  } else if (c.grad) {
    gemm_4bit_grad(gA, gp, dev_scales, c.bs, c.qt, gout);
  } else if (c.tile_bm > 0) {
    ASSERT_TRUE(cuda::gemm4_tile_applies(gA, gp, dev_scales, c.bs, c.N));
    cuda::gemm_4bit_tile(gA, gp, dev_scales, c.bs, c.qt, gbias, gout, c.tile_bm, c.tile_split);
  } else if (c.skinny) {
    ASSERT_TRUE(cuda::gemm4_skinny_applies(gA, gp, dev_scales, c.bs, c.N));
    cuda::gemm_4bit_skinny(gA, gp, dev_scales, c.bs, c.qt, gbias, gout);
  } else if (c.tile_wk < 0) {
    gemm_4bit(gA, gp, dev_scales, c.bs, c.qt, gbias, gout);
  } else {
    cuda::gemm_4bit_mma(gA, gp, dev_scales, c.bs, c.qt, gbias, gout, c.tile_wk);
  }
  sync();
  const Bytes got = download(d_out, 0, static_cast<size_t>(c.M * cols) * es);

  // The exact sums, in double (products of two T values, or of T and fp32, are exact in double).
  const double u = c.dt == DType::BF16 ? std::exp2(-8) : std::exp2(-11);
  const double tiny = c.dt == DType::BF16 ? std::exp2(-134) : std::exp2(-25);  // half the subnormal spacing
  const double depth = static_cast<double>(depth_len) / 16 + 8;
  // wt, wf: the weights as [cols][depth] (the transposed weight for grad), so a sum runs along a row.
  std::vector<double> a_row(static_cast<size_t>(depth_len)), wt(static_cast<size_t>(n)), wf(static_cast<size_t>(n));
  for (int64_t r = 0; r < c.N; ++r)
    for (int64_t k = 0; k < c.K; ++k) {
      const int64_t i = r * c.K + k, o = c.grad ? k * c.N + r : i;
      wt[static_cast<size_t>(o)] = w_t.get(i);
      wf[static_cast<size_t>(o)] = w_f[static_cast<size_t>(i)];
    }
  int64_t checked_finite = 0;
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t k = 0; k < depth_len; ++k) a_row[static_cast<size_t>(k)] = A.get(m * depth_len + k);
    for (int64_t j = 0; j < cols; ++j) {
      const double* wtr = wt.data() + j * depth_len;
      const double* wfr = wf.data() + j * depth_len;
      double ref_t = 0.0, ref_f = 0.0, mag_t = 0.0, mag_f = 0.0, sum_a = 0.0;
      for (int64_t k = 0; k < depth_len; ++k) {
        const double a = a_row[static_cast<size_t>(k)], pt = a * wtr[k], pf = a * wfr[k];
        ref_t += pt;
        ref_f += pf;
        mag_t += std::fabs(pt);
        mag_f += std::fabs(pf);
        sum_a += std::fabs(a);
      }
      if (c.bias) {
        const double b = bias.get(j);
        ref_t += b, ref_f += b, mag_t += std::fabs(b), mag_f += std::fabs(b);
      }
      const double g = load_as_float(got.data(), c.dt, m * cols + j);
      if (!std::isfinite(ref_t)) {
        ASSERT_FALSE(std::isfinite(g)) << "out[" << m << ", " << j << "] = " << g << " where the reference is " << ref_t;
        continue;
      }
      ASSERT_TRUE(std::isfinite(g)) << "out[" << m << ", " << j << "] = " << g << " where the reference is " << ref_t;
      const double acc_t = depth * std::exp2(-21) * mag_t, acc_f = depth * std::exp2(-21) * mag_f;
      if (tiled) {
        ASSERT_LE(std::fabs(g - ref_t), acc_t + u * (std::fabs(ref_t) + acc_t) + 1e-6)
            << "out[" << m << ", " << j << "] = " << g << ", dequantize + exact GEMM " << ref_t << " (sum |a w| " << mag_t << ")";
      }
      const double w_round = u * mag_f + tiny * sum_a;  // every weight rounded to T (subnormal: absolute)
      ASSERT_LE(std::fabs(g - ref_f), w_round + acc_f + u * (std::fabs(ref_f) + w_round + acc_f) + 1e-6)
          << "out[" << m << ", " << j << "] = " << g << ", fp32 oracle " << ref_f << " (sum |a w| " << mag_f << ")";
      ++checked_finite;
    }
  }
  if (!c.inf_block) {
    EXPECT_EQ(checked_finite, c.M * cols);
  }
}

constexpr int64_t kBlocksizes[] = {64, 128, 4096};

// M x K over the sizes of the issue, N odd and even; every other property rotates with the case
// number. The largest products (M * N * K) are left out to keep the double-precision reference fast.
TEST_F(CudaGemm4Mma, AgainstDequantizeAndExactSum) {
  SCOPED_TRACE(test::seed_note());
  const int64_t Ns[] = {127, 256, 1000};
  int v = 0;
  for (int64_t M : {9, 16, 17, 33, 64, 127, 256, 1000})
    for (int64_t K : {64, 100, 192, 1000, 4096, 4136}) {
      int64_t N = Ns[v % 3];
      while (M * N * K > 40'000'000 && N > Ns[0]) N = N == 1000 ? 256 : 127;
      ++v;
      if (M * N * K > 150'000'000) continue;
      Case c{v % 2 ? DType::BF16 : DType::F16, (v / 2) % 2 ? QuantType::FP4 : QuantType::NF4, M, N, K,
             kBlocksizes[(v / 3) % 3], v % 3 == 0, v % 4 < 2};
      c.a_shift = v % 5 == 4 ? 1 : 0;
      c.p_shift = v % 7 == 3 ? 4 : 0;
      c.inf_block = !c.nested && v % 6 == 1;
      run(c);
      if (HasFatalFailure()) return;
    }
}

// Every blocksize on odd K (odd rows start mid-byte), K below 16, one weight row, no K.
TEST_F(CudaGemm4Mma, EveryBlocksizeOddK) {
  SCOPED_TRACE(test::seed_note());
  int v = 0;
  for (DType dt : {DType::BF16, DType::F16})
    for (int64_t bs : k4bitBlocksizes)
      for (int64_t K : {77, 333}) {
        ++v;
        Case c{dt, v % 2 ? QuantType::NF4 : QuantType::FP4, 24 + v % 3, 67, K, bs, v % 3 == 1, v % 2 == 0};
        c.inf_block = !c.nested && v % 4 == 0;
        run(c);
        if (HasFatalFailure()) return;
      }
  for (DType dt : {DType::BF16, DType::F16}) {
    run(Case{dt, QuantType::NF4, 9, 1, 77, 32, false, true});
    run(Case{dt, QuantType::FP4, 40, 33, 5, 32, true, true});
    run(Case{dt, QuantType::NF4, 13, 50, 1, 64, false, false});
    run(Case{dt, QuantType::NF4, 20, 11, 0, 64, false, true});  // K = 0: the bias alone
    if (HasFatalFailure()) return;
  }
}

// Every tile of Note [Tile choice] on both paths, forced, so that the test does not depend on the
// GPU's multiprocessor count; with M and N past one tile and K past one stage.
TEST_F(CudaGemm4Mma, EveryTile) {
  SCOPED_TRACE(test::seed_note());
  int v = 0;
  for (int wk : {1, 2, 4})
    for (int64_t K : {256 + 64, 331})  // aligned (K % 64 == 0, one K-warp's last sub-slice empty) and general
      for (DType dt : {DType::BF16, DType::F16}) {
        ++v;
        Case c{dt, v % 2 ? QuantType::NF4 : QuantType::FP4, 150, 301, K, v % 3 ? 64 : 128, v % 2 == 0, v % 3 != 1};
        c.tile_wk = wk;
        run(c);
        if (HasFatalFailure()) return;
      }
  run(Case{DType::BF16, QuantType::NF4, 70, 130, 4096, 64, true, true, 0, 0, false, 0});  // the rule's own pick
}

// The skinny kernel (M <= 16, K % 64 == 0, blocksize >= 64), forced: every M, N below, at and past
// a row tile, K of one sub-slice up to an odd number of items and past one item a warp.
TEST_F(CudaGemm4Mma, SkinnyEveryRowCount) {
  SCOPED_TRACE(test::seed_note());
  const int64_t Ns[] = {1, 15, 16, 17, 100, 257, 1000};
  const int64_t Ks[] = {64, 128, 192, 576, 1024, 4160};
  const int64_t bss[] = {64, 128, 256, 4096};
  int v = 0;
  for (int64_t M = 1; M <= 16; ++M)
    for (int rep = 0; rep < 3; ++rep) {
      ++v;
      const int64_t K = Ks[v % 6], bs = bss[(v / 2) % 4];
      Case c{v % 2 ? DType::BF16 : DType::F16, (v / 3) % 2 ? QuantType::FP4 : QuantType::NF4, M, Ns[v % 7], K, bs,
             v % 3 == 0, v % 4 < 2};
      c.skinny = true;
      c.inf_block = !c.nested && v % 5 == 1;
      run(c);
      if (HasFatalFailure()) return;
    }
}

// The tiled kernel (K % 64 == 0, blocksize >= 64) with every tile height and split forced: M below,
// at and past a tile, N below, at and past the 128 weight rows of a CTA, K of one step up to an odd
// number of steps that the split does not divide (and splits past half the steps, which the
// launcher clamps). Then the public gemm_4bit above 16 rows, the split its own pick.
// Every tile height and split of gemm4_tile.cu forced, two cases each (the shapes rotating with the
// case number); grad: its gradient form (N % 8 == 0, no bias).
void CudaGemm4Mma::every_height_and_split(bool grad) {
  const int64_t Ms[] = {1, 16, 17, 31, 64, 65, 127, 129, 200};
  const std::vector<int64_t> Ns = grad ? std::vector<int64_t>{8, 120, 128, 136, 392, 1000}
                                       : std::vector<int64_t>{1, 127, 128, 129, 300, 1000};
  const std::vector<int64_t> Ks = grad ? std::vector<int64_t>{64, 192, 576, 1088}
                                       : std::vector<int64_t>{64, 192, 576, 1088, 2112};
  const int64_t bss[] = {64, 128, 256, 4096};
  int v = 0;
  for (int bm : {16, 32, 64, 128})
    for (int split : {1, 2, 3, 8})
      for (int rep = 0; rep < 2; ++rep) {
        ++v;
        const int64_t M = Ms[(v * 5 + rep) % 9], K = Ks[static_cast<size_t>(v) % Ks.size()];
        int64_t N = Ns[static_cast<size_t>(v * 7 + rep) % Ns.size()];
        while (M * N * K > 30'000'000) N /= 2;
        if (grad) N -= N % 8;
        Case c{v % 2 ? DType::BF16 : DType::F16, (v / 3) % 2 ? QuantType::FP4 : QuantType::NF4, M, N, K,
               bss[(v / 2) % 4], v % 3 == 0, !grad && v % 4 < 2};
        c.inf_block = !c.nested && v % 5 == 1;
        c.tile_bm = bm;
        c.tile_split = split;
        c.grad = grad;
        run(c);
        if (HasFatalFailure()) return;
      }
}

TEST_F(CudaGemm4Mma, TileEveryHeightAndSplit) {
  SCOPED_TRACE(test::seed_note());
  every_height_and_split(false);
  if (HasFatalFailure()) return;
  for (DType dt : {DType::BF16, DType::F16})
    for (int64_t M : {17, 100, 300}) {
      run(Case{dt, QuantType::NF4, M, 1000, 4096, 64, true, true});
      run(Case{dt, QuantType::FP4, M, 77, 8192, 128, false, false});
      if (HasFatalFailure()) return;
    }
}

// gemm_4bit_grad's tiled kernel (Note [The gradient] of gemm4_tile.cu: the weight tile's 128 rows
// are the reduction, its 64 columns the output) with every tile height and split forced: M below,
// at and past a tile, N (the reduction, N % 8 == 0) of one partial step up to an odd number of steps
// that the split does not divide, K of one output tile and more. Then the public gemm_4bit_grad on
// the kernel's shapes (its own tile and split) and beside them (N % 8 != 0, K % 64 != 0, blocksize
// 32, G off alignment: the exact fp32 kernel of gemm4_grad.cu).
TEST_F(CudaGemm4Mma, GradTileEveryHeightAndSplit) {
  SCOPED_TRACE(test::seed_note());
  every_height_and_split(true);
  if (HasFatalFailure()) return;
  for (DType dt : {DType::BF16, DType::F16}) {
    for (int64_t M : {1, 17, 100, 300}) {
      run(Case{dt, QuantType::NF4, M, 4096, 1024, 64, true, false, 0, 0, false, -1, false, 0, 0, true});
      run(Case{dt, QuantType::FP4, M, 1000, 576, 128, false, false, 0, 0, M == 17, -1, false, 0, 0, true});
      if (HasFatalFailure()) return;
    }
    run(Case{dt, QuantType::NF4, 9, 77, 256, 64, true, false, 0, 0, false, -1, false, 0, 0, true});   // N % 8 != 0
    run(Case{dt, QuantType::FP4, 40, 128, 100, 64, false, false, 0, 0, true, -1, false, 0, 0, true}); // K % 64 != 0
    run(Case{dt, QuantType::NF4, 5, 64, 256, 32, true, false, 0, 0, false, -1, false, 0, 0, true});   // blocksize 32
    run(Case{dt, QuantType::NF4, 33, 64, 128, 64, false, false, 1, 0, false, -1, false, 0, 0, true}); // G off alignment
    run(Case{dt, QuantType::FP4, 3, 33, 77, 32, true, false, 0, 0, false, -1, false, 0, 0, true});    // odd K
    if (HasFatalFailure()) return;
  }
  run(Case{DType::F32, QuantType::NF4, 7, 100, 130, 64, true, false, 0, 0, false, -1, false, 0, 0, true});  // fp32
}

// The public gemm_4bit on the skinny kernel's shapes and beside them: off alignment, K % 64 != 0,
// blocksize 32 (those go to the other kernels), and a large square weight.
TEST_F(CudaGemm4Mma, SkinnyAndItsNeighboursThroughGemm4bit) {
  SCOPED_TRACE(test::seed_note());
  int v = 0;
  for (DType dt : {DType::BF16, DType::F16})
    for (int64_t M : {1, 3, 8, 9, 16}) {
      ++v;
      run(Case{dt, QuantType::NF4, M, 300, 512, 64, v % 2 == 0, true});                  // skinny
      run(Case{dt, QuantType::FP4, M, 129, 520, 64, v % 2 == 1, false});                 // K % 64 != 0
      run(Case{dt, QuantType::NF4, M, 64, 256, 32, true, true});                         // blocksize 32
      run(Case{dt, QuantType::NF4, M, 77, 256, 64, false, true, 1, 0});                  // A off alignment
      run(Case{dt, QuantType::FP4, M, 77, 256, 128, true, false, 0, 4});                 // packed off 8-byte alignment
      if (HasFatalFailure()) return;
    }
  run(Case{DType::BF16, QuantType::NF4, 1, 4096, 4096, 64, true, false});
  run(Case{DType::F16, QuantType::NF4, 16, 2048, 4096, 64, true, true});
}

}  // namespace
}  // namespace nybble
