// cuda_codebook_test.cpp — the CUDA kernels' form of the nearest-code rules (cuda/codebook.hpp)
// against formats.hpp, on the host: runs without a GPU. Every threshold, its float neighbours, the
// special values and random values; for 8-bit also random maps, ascending or not, with repeats.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "cuda/codebook.hpp"
#include "test_util.hpp"

namespace nybble {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Values that probe a rule with thresholds t: each threshold, its two float neighbours, scaled
// copies of both signs, the special values and random values over several magnitudes.
std::vector<float> probes(const float* t, size_t nt, std::mt19937_64& rng) {
  std::vector<float> v = {0.0f, -0.0f, kInf, -kInf, std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::max(), -std::numeric_limits<float>::max()};
  for (size_t i = 0; i < nt; ++i)
    for (float s : {1.0f, -1.0f})
      for (float x : {t[i], std::nextafter(t[i], kInf), std::nextafter(t[i], -kInf)}) v.push_back(s * x);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int i = 0; i < 200000; ++i) v.push_back(normal(rng) * std::exp2(static_cast<float>(static_cast<int>(rng() % 24) - 20)));
  return v;
}

TEST(CudaCodebook, TablesComeFromFormats) {
  for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
    const cuda::Code4Tables t = cuda::code4_tables(qt);
    for (size_t i = 0; i < 16; ++i) EXPECT_EQ(float_bits(t.code[i]), float_bits(code_table(qt)[i])) << i;
    EXPECT_EQ(t.zero_code, zero_code(qt));
  }
  // Heap order keeps every threshold exactly once.
  const cuda::Code4Tables nf4 = cuda::code4_tables(QuantType::NF4);
  std::vector<float> seen(nf4.tree + 1, nf4.tree + 16);
  std::sort(seen.begin(), seen.end());
  for (size_t i = 0; i < 15; ++i) EXPECT_EQ(seen[i], kNF4Threshold[i]);
  static_assert(cuda::heap_order(kNF4Threshold)[1] == kNF4Threshold[7]);
  static_assert(cuda::heap_order(kFP4Threshold)[1] == kFP4Threshold[3]);
  static_assert(cuda::kFP4ByRankPacked == 0x32547610u);
}

TEST(CudaCodebook, FourBitRulesMatchFormats) {
  std::mt19937_64 rng(test::test_seed());
  SCOPED_TRACE(test::seed_note());
  const cuda::Code4Tables nf4 = cuda::code4_tables(QuantType::NF4), fp4 = cuda::code4_tables(QuantType::FP4);
  for (float x : probes(kNF4Threshold.data(), kNF4Threshold.size(), rng))
    ASSERT_EQ(cuda::quantize_nf4_tree(nf4.tree, x), quantize_nf4(x)) << "x = " << x;
  for (float x : probes(kFP4Threshold.data(), kFP4Threshold.size(), rng))
    ASSERT_EQ(cuda::quantize_fp4_tree(fp4.tree, x), quantize_fp4(x)) << "x = " << x;
}

// Every bucket holds at most one threshold, and the bucket rule equals formats.hpp on the probes,
// on every float of the buckets that hold a threshold (stepping by 7 ulps, plus the 64 floats
// around each threshold) and on a sample of every other bucket.
TEST(CudaCodebook, BucketRulesMatchFormats) {
  std::mt19937_64 rng(test::test_seed());
  SCOPED_TRACE(test::seed_note());
  std::vector<cuda::Bucket> nf4(cuda::kBuckets), fp4(cuda::kBuckets);
  for (uint32_t k = 0; k < static_cast<uint32_t>(cuda::kBuckets); ++k) {
    nf4[k] = cuda::make_bucket(kNF4Threshold.data(), 15, k);
    fp4[k] = cuda::make_bucket(kFP4Threshold.data(), 7, k);
  }
  const auto check = [&](float x) {
    if (std::isnan(x) && (float_bits(x) & 0x00400000u) == 0) return;  // signalling NaN: never a product
    ASSERT_EQ(cuda::quantize_nf4_bucket(nf4.data(), x), quantize_nf4(x)) << "nf4 x = " << x << " bits " << std::hex << float_bits(x);
    ASSERT_EQ(cuda::quantize_fp4_bucket(fp4.data(), x), quantize_fp4(x)) << "fp4 x = " << x << " bits " << std::hex << float_bits(x);
  };
  for (const float* t : {kNF4Threshold.data(), kFP4Threshold.data()})
    for (float x : probes(t, t == kNF4Threshold.data() ? 15 : 7, rng)) check(x);
  for (uint32_t k = 0; k < static_cast<uint32_t>(cuda::kBuckets); ++k) {
    const bool crowded = !std::isinf(nf4[k].thr) || !std::isinf(fp4[k].thr);
    const uint32_t step = crowded ? 7 : 65521;
    for (uint32_t low = 0; low < (1u << cuda::kBucketShift); low += step) check(bits_float((k << cuda::kBucketShift) | low));
    check(bits_float((k << cuda::kBucketShift) | ((1u << cuda::kBucketShift) - 1)));
  }
  for (float t : kNF4Threshold)
    for (float s : {1.0f, -1.0f})
      for (int d = -32; d <= 32; ++d) check(bits_float(static_cast<uint32_t>(static_cast<int64_t>(float_bits(s * t)) + d)));
  for (float t : kFP4Threshold)
    for (float s : {1.0f, -1.0f})
      for (int d = -32; d <= 32; ++d) check(bits_float(static_cast<uint32_t>(static_cast<int64_t>(float_bits(s * t)) + d)));
}

// Builds the kernels' tree of a map and checks every probe.
void check_8bit_map(const Code8& code, std::mt19937_64& rng) {
  float tree[256];
  for (int k = 1; k < 256; ++k) tree[k] = code[static_cast<size_t>(cuda::code8_tree_index(k))];
  std::vector<float> mids;
  for (size_t i = 0; i + 1 < 256; ++i) mids.push_back((code[i] + code[i + 1]) * 0.5f);
  std::vector<float> xs = probes(code.data(), 256, rng);
  const std::vector<float> mx = probes(mids.data(), mids.size(), rng);
  xs.insert(xs.end(), mx.begin(), mx.end());
  for (float x : xs) ASSERT_EQ(cuda::quantize_8bit_tree(tree, code.data(), x), quantize_8bit_value(code.data(), x)) << "x = " << x;
}

TEST(CudaCodebook, EightBitRuleMatchesFormatsForAnyMap) {
  std::mt19937_64 rng(test::test_seed());
  SCOPED_TRACE(test::seed_note());
  // The internal tree entries are formats.hpp's pivots: 127 first, its children 63 and 191.
  EXPECT_EQ(cuda::code8_tree_index(1), 127);
  EXPECT_EQ(cuda::code8_tree_index(2), 63);
  EXPECT_EQ(cuda::code8_tree_index(3), 191);
  EXPECT_EQ(cuda::code8_tree_index(128), 0);
  EXPECT_EQ(cuda::code8_tree_index(255), 254);
  check_8bit_map(dynamic_map_signed(), rng);
  check_8bit_map(dynamic_map_unsigned(), rng);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int trial = 0; trial < 20; ++trial) {
    Code8 m;
    for (float& v : m) v = normal(rng);
    if (trial % 4 == 1) std::sort(m.begin(), m.end());                      // ascending
    if (trial % 4 == 2) for (size_t i = 0; i < 256; ++i) m[i] = m[i & ~size_t{7}];  // runs of repeats
    if (trial % 4 == 3) {                                                   // ascending with repeats
      for (float& v : m) v = std::round(v * 4.0f) / 4.0f;
      std::sort(m.begin(), m.end());
    }
    check_8bit_map(m, rng);
  }
}

}  // namespace
}  // namespace nybble
