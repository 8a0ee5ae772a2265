// cuda_codebook_test.cpp — the CUDA kernels' form of the nearest-code rules (cuda/codebook.hpp)
// against formats.hpp, on the host: runs without a GPU. Every threshold, its float neighbours, the
// special values and random values; every bucket of the 4-bit tables; for 8-bit also random maps,
// ascending or not, with repeats; the int8 row code against cpu/ref.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "cpu/ref/ref.hpp"
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

// Every bucket holds at most one threshold, and the bucket rule (Note [Bucket tables]) equals
// formats.hpp at every nibble position on the probes, on both ends of every bucket, on every
// threshold and the 32 floats either side of it, on every 7th float of the buckets that step and
// on a sample of every other bucket.
TEST(CudaCodebook, BucketRulesMatchFormats) {
  std::mt19937_64 rng(test::test_seed());
  SCOPED_TRACE(test::seed_note());
  const std::vector<float> thresholds[] = {{kNF4Threshold.begin(), kNF4Threshold.end()},
                                           {kFP4Threshold.begin(), kFP4Threshold.end()}};
  for (const std::vector<float>& t : thresholds) {
    std::vector<uint32_t> buckets;
    for (float x : t) buckets.push_back(float_bits(x) >> cuda::kBucketShift);
    std::sort(buckets.begin(), buckets.end());
    EXPECT_EQ(std::adjacent_find(buckets.begin(), buckets.end()), buckets.end()) << "two thresholds share a bucket";
  }
  std::vector<uint32_t> nf4(cuda::kBuckets), fp4(cuda::kBuckets);
  for (uint32_t k = 0; k < static_cast<uint32_t>(cuda::kBuckets); ++k) {
    nf4[k] = cuda::make_bucket<QuantType::NF4>(kNF4Threshold.data(), k);
    fp4[k] = cuda::make_bucket<QuantType::FP4>(kFP4Threshold.data(), k);
  }
  int position = 0;  // the nibble the next check places its code at (all eight in turn)
  const auto check = [&](float x, bool every_position) {
    if (std::isnan(x) && (float_bits(x) & 0x00400000u) == 0) return;  // signalling NaN: never a product
    for (int p = 0; p < (every_position ? 8 : 1); ++p) {
      const int s = 4 * (every_position ? p : position++ % 8);
      ASSERT_EQ(cuda::quantize_4bit_bucket_at(nf4.data(), x, s), uint32_t{quantize_nf4(x)} << s)
          << "nf4 x = " << x << " bits " << std::hex << float_bits(x) << " at bit " << std::dec << s;
      ASSERT_EQ(cuda::quantize_4bit_bucket_at(fp4.data(), x, s), uint32_t{quantize_fp4(x)} << s)
          << "fp4 x = " << x << " bits " << std::hex << float_bits(x) << " at bit " << std::dec << s;
    }
  };
  for (const std::vector<float>& t : thresholds) {
    for (float x : probes(t.data(), t.size(), rng)) check(x, false);
    for (float x : t)  // each threshold and the 32 floats either side, both signs
      for (float sign : {1.0f, -1.0f})
        for (int d = -32; d <= 32; ++d) check(bits_float(static_cast<uint32_t>(static_cast<int64_t>(float_bits(sign * x)) + d)), true);
  }
  const auto steps = [](uint32_t w) { return w >> (32 - cuda::kBucketShift) != cuda::kBucketLow; };
  for (uint32_t k = 0; k < static_cast<uint32_t>(cuda::kBuckets); ++k) {
    const uint32_t first = k << cuda::kBucketShift;
    check(bits_float(first), true);
    check(bits_float(first | cuda::kBucketLow), true);
    const uint32_t stride = steps(nf4[k]) || steps(fp4[k]) ? 7 : 65521;
    for (uint32_t low = 1; low < cuda::kBucketLow; low += stride) check(bits_float(first | low), false);
  }
  EXPECT_EQ(cuda::quantize_4bit_bucket(nf4.data(), 0.5f), quantize_nf4(0.5f));  // the unplaced form
  EXPECT_EQ(cuda::quantize_4bit_bucket(fp4.data(), -0.5f), quantize_fp4(-0.5f));
}

// Note [Int8 codes]: the rule with one division per row equals cpu::ref::int8_quantize_value for
// row statistics across the float range (subnormal, 1 / m subnormal, 0, inf) on the special
// values, random elements, and every half-integer boundary of 127 x / m with 16 floats either side.
TEST(CudaCodebook, Int8CodeMatchesOracle) {
  std::mt19937_64 rng(test::test_seed());
  SCOPED_TRACE(test::seed_note());
  constexpr float kMax = std::numeric_limits<float>::max();
  std::vector<float> stats = {0.0f, std::numeric_limits<float>::denorm_min(), 3e-39f, std::numeric_limits<float>::min(),
                              1e-30f, 0.1f, 1.0f, 3.0f, 6.0f, 127.0f, 1e30f, 1.5f * 0x1p126f, kMax, kInf};
  for (int i = 0; i < 40; ++i)
    stats.push_back(std::uniform_real_distribution<float>(1.0f, 2.0f)(rng) * std::exp2(static_cast<float>(static_cast<int>(rng() % 250) - 125)));
  for (float m : stats) {
    const float y = 1.0f / m;
    const auto check = [&](float x) {
      ASSERT_EQ(cuda::int8_code(x, m, y), static_cast<uint8_t>(cpu::ref::int8_quantize_value(x, m)))
          << "x = " << x << " bits " << std::hex << float_bits(x) << " m = " << m << " bits " << float_bits(m);
    };
    for (float x : {0.0f, -0.0f, m, -m, 2.0f * m, kMax, -kMax, kInf, -kInf, std::numeric_limits<float>::quiet_NaN()}) check(x);
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
    for (int i = 0; i < 2000; ++i) check(unit(rng) * m);
    for (int k = -128; k <= 127; ++k) {
      const auto at = static_cast<float>((k + 0.5) / 127.0 * static_cast<double>(m));
      for (int d = -16; d <= 16; ++d) check(bits_float(static_cast<uint32_t>(static_cast<int64_t>(float_bits(at)) + d)));
    }
  }
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
