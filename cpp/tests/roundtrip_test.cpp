// roundtrip_test.cpp — quantize -> dequantize errors on randn / rand data within the reference's
// test tolerances (spec §8.2), for every blocksize, dtype, quant type, nested and not.
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.hpp"

namespace nybble {
namespace {

using test::FloatBuffer;

struct Err {
  double abs = 0, rel = 0;
};

// mean |A - A'| and mean |A - A'| / (|A| + 1e-8), against the input as stored in its dtype.
Err errors(const FloatBuffer& a, const FloatBuffer& b) {
  Err e;
  const int64_t n = a.size();
  for (int64_t i = 0; i < n; ++i) {
    const double x = a.get(i), d = std::fabs(x - b.get(i));
    e.abs += d;
    e.rel += d / (std::fabs(x) + 1e-8);
  }
  e.abs /= static_cast<double>(n);
  e.rel /= static_cast<double>(n);
  return e;
}

// One 4-bit round trip; nested = double-quantized absmax.
FloatBuffer roundtrip_4bit(const FloatBuffer& x, int64_t bs, QuantType qt, bool nested) {
  const int64_t n = x.size(), nb = num_blocks(n, bs), nnb = num_blocks(nb, kNestedBlocksize);
  std::vector<uint8_t> packed(static_cast<size_t>(packed_4bit_bytes(n)));
  std::vector<float> absmax(static_cast<size_t>(nb));
  const TensorView pv(packed.data(), DType::U8, {static_cast<int64_t>(packed.size())});
  quantize_4bit(x.view(), pv, TensorView(absmax.data(), DType::F32, {nb}), bs, qt);
  FloatBuffer out(x.dtype, n);
  if (!nested) {
    dequantize_4bit(pv, BlockScales{TensorView(absmax.data(), DType::F32, {nb}), std::nullopt}, bs, qt, out.view());
    return out;
  }
  const float offset = absmax_mean(TensorView(absmax.data(), DType::F32, {nb}));
  std::vector<uint8_t> q(static_cast<size_t>(nb));
  std::vector<float> nested_absmax(static_cast<size_t>(nnb));
  quantize_absmax_nested(TensorView(absmax.data(), DType::F32, {nb}), offset, TensorView(q.data(), DType::U8, {nb}),
                         TensorView(nested_absmax.data(), DType::F32, {nnb}));
  const BlockScales scales{TensorView(q.data(), DType::U8, {nb}),
                           NestedAbsmax{TensorView(nested_absmax.data(), DType::F32, {nnb}),
                                        TensorView(dynamic_map_signed().data(), DType::F32, {256}), offset,
                                        kNestedBlocksize}};
  dequantize_4bit(pv, scales, bs, qt, out.view());
  return out;
}

// §8.2 4-bit table: limit = mean + 7 std, per blocksize (abs, rel) for FP4 and NF4.
struct Limit4 {
  int64_t bs;
  double fp4_abs, fp4_abs_sd, fp4_rel, fp4_rel_sd, nf4_abs, nf4_abs_sd, nf4_rel, nf4_rel_sd;
};
constexpr Limit4 kLimits4[] = {
    {32, 0.088925, 0.000091, 0.242443, 0.000330, 0.067746, 0.000069, 0.189726, 0.000304},
    {64, 0.096543, 0.000111, 0.260125, 0.000379, 0.072798, 0.000074, 0.203339, 0.000340},
    {128, 0.102969, 0.000134, 0.275817, 0.000433, 0.076831, 0.000091, 0.215237, 0.000391},
    {256, 0.108684, 0.000182, 0.289831, 0.000497, 0.080337, 0.000102, 0.226105, 0.000398},
    {512, 0.114115, 0.000234, 0.302881, 0.000583, 0.083547, 0.000143, 0.236079, 0.000544},
    {1024, 0.119333, 0.000320, 0.315000, 0.000757, 0.086610, 0.000187, 0.245370, 0.000600},
    {2048, 0.124556, 0.000455, 0.326607, 0.000955, 0.089592, 0.000251, 0.254163, 0.000747},
    {4096, 0.129536, 0.000612, 0.337169, 0.001239, 0.092547, 0.000360, 0.262473, 0.000999},
};

class FourBitRoundTrip : public ::testing::TestWithParam<std::tuple<QuantType, DType>> {};

TEST_P(FourBitRoundTrip, RandnWithinReferenceTolerance) {
  const auto [qt, dt] = GetParam();
  SCOPED_TRACE(test::seed_note());
  const FloatBuffer x = test::randn(dt, 1024 * 1024, test::test_seed() + static_cast<uint64_t>(dt));
  for (const Limit4& l : kLimits4) {
    const bool nf4 = qt == QuantType::NF4;
    const double abs_limit = nf4 ? l.nf4_abs + 7 * l.nf4_abs_sd : l.fp4_abs + 7 * l.fp4_abs_sd;
    const double rel_limit = nf4 ? l.nf4_rel + 7 * l.nf4_rel_sd : l.fp4_rel + 7 * l.fp4_rel_sd;
    for (bool nested : {false, true}) {
      const Err e = errors(x, roundtrip_4bit(x, l.bs, qt, nested));
      SCOPED_TRACE("blocksize " + std::to_string(l.bs) + (nested ? " nested" : ""));
      // The reference's double-quantization test bounds (bs 32/64/128): abs < 0.11, rel < 0.28.
      if (nested && l.bs <= 128) {
        EXPECT_LT(e.abs, 0.11);
        EXPECT_LT(e.rel, 0.28);
      }
      EXPECT_LT(e.abs, abs_limit);
      EXPECT_LT(e.rel, rel_limit);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, FourBitRoundTrip,
                         ::testing::Combine(::testing::Values(QuantType::NF4, QuantType::FP4),
                                            ::testing::Values(DType::F32, DType::F16, DType::BF16)));

// 8-bit round trip; nested follows the reference's 8-bit quirk (§1.6): offset = mean(absmax),
// absmax - offset quantized with the signed dynamic map at the SAME blocksize.
FloatBuffer roundtrip_8bit(const FloatBuffer& x, int64_t bs, const Code8& map, bool nested) {
  const int64_t n = x.size(), nb = num_blocks(n, bs);
  const TensorView code(map.data(), DType::F32, {256});
  std::vector<uint8_t> q(static_cast<size_t>(n));
  std::vector<float> absmax(static_cast<size_t>(nb));
  quantize_blockwise(x.view(), code, TensorView(q.data(), DType::U8, {n}), TensorView(absmax.data(), DType::F32, {nb}), bs);
  if (nested) {
    const float offset = absmax_mean(TensorView(absmax.data(), DType::F32, {nb}));
    std::vector<float> centered(absmax);
    for (float& v : centered) v -= offset;
    const int64_t nnb = num_blocks(nb, bs);
    std::vector<uint8_t> qa(static_cast<size_t>(nb));
    std::vector<float> nested_absmax(static_cast<size_t>(nnb));
    const TensorView signed_map(dynamic_map_signed().data(), DType::F32, {256});
    quantize_blockwise(TensorView(centered.data(), DType::F32, {nb}), signed_map, TensorView(qa.data(), DType::U8, {nb}),
                       TensorView(nested_absmax.data(), DType::F32, {nnb}), bs);
    dequantize_blockwise(TensorView(qa.data(), DType::U8, {nb}), TensorView(nested_absmax.data(), DType::F32, {nnb}),
                         signed_map, bs, TensorView(absmax.data(), DType::F32, {nb}));
    for (float& v : absmax) v += offset;
  }
  FloatBuffer out(x.dtype, n);
  dequantize_blockwise(TensorView(q.data(), DType::U8, {n}), TensorView(absmax.data(), DType::F32, {nb}), code, bs, out.view());
  return out;
}

class EightBitRoundTrip : public ::testing::TestWithParam<DType> {};

TEST_P(EightBitRoundTrip, WithinReferenceTolerance) {
  const DType dt = GetParam();
  SCOPED_TRACE(test::seed_note());
  const FloatBuffer normal = test::randn(dt, 1024 * 1024, test::test_seed() + 11);
  const FloatBuffer uniform = test::rand01(dt, 1024 * 1024, test::test_seed() + 12);
  for (int64_t bs : k8bitCudaBlocksizes)
    for (bool nested : {false, true}) {
      SCOPED_TRACE("blocksize " + std::to_string(bs) + (nested ? " nested" : ""));
      Err e = errors(normal, roundtrip_8bit(normal, bs, dynamic_map_signed(), nested));
      EXPECT_LT(e.abs, 0.011);
      EXPECT_LT(e.rel, 0.018);
      e = errors(uniform, roundtrip_8bit(uniform, bs, dynamic_map_signed(), nested));
      EXPECT_LT(e.abs, 0.0036);
      EXPECT_LT(e.rel, 0.015);
      e = errors(uniform, roundtrip_8bit(uniform, bs, dynamic_map_unsigned(), nested));
      EXPECT_LT(e.abs, 0.0023);
      EXPECT_LT(e.rel, 0.012);
    }
}

// The reference's CPU test: randn [128, 128, 128] at blocksizes 4096 and 16384.
TEST_P(EightBitRoundTrip, LargeCpuBlocksizes) {
  const DType dt = GetParam();
  SCOPED_TRACE(test::seed_note());
  const FloatBuffer x = test::randn(dt, 128 * 128 * 128, test::test_seed() + 13);
  for (int64_t bs : {4096, 16384}) EXPECT_LT(errors(x, roundtrip_8bit(x, bs, dynamic_map_signed(), false)).abs, 0.011);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, EightBitRoundTrip, ::testing::Values(DType::F32, DType::F16, DType::BF16));

}  // namespace
}  // namespace nybble
