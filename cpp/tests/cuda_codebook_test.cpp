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

#include "cpu/ref/optim_rules.hpp"
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

// torch.linspace(-1, 1, 256) in fp32, as formats.cpp evaluates torch's linspace (the reference's
// create_linear_map(signed=True)). Its middle midpoint is exactly 0, so its threshold 127 is
// -denorm_min: -0.0 and +0.0 get code 128, -denorm_min 127.
Code8 linear_map() {
  Code8 m{};
  const float step = 2.0f / 255.0f;
  for (int j = 0; j < 256; ++j)
    m[static_cast<size_t>(j)] = j < 128 ? std::fma(step, static_cast<float>(j), -1.0f) : std::fma(-step, static_cast<float>(255 - j), 1.0f);
  return m;
}

// The code a kernel computes with a table built by code8_build_serial: the buckets when it passed
// its checks, else the tree.
uint32_t kernel_code8(const cuda::Code8Table& t, bool fast, float x) {
  return fast ? cuda::quantize_8bit_bucket(t, x) : cuda::quantize_8bit_tree(t.tree, t.code, x);
}

// Every probe of a map through its table (both forms, and the pair form), against formats.hpp:
// each entry, midpoint and threshold with the 4 floats either side, both ends of every bucket with
// the 2 floats either side, the special values, random bit patterns, uniform values in [-1, 1]
// and the probes() of the entries and midpoints. Adds the number of values checked to checked.
void check_8bit_table(const Code8& code, std::mt19937_64& rng, bool expect_fast, int64_t& checked) {
  static cuda::Code8Table t;  // 6 KiB
  const bool fast = cuda::code8_build_serial(code.data(), t);
  EXPECT_EQ(fast, expect_fast);
  if (fast) {
    // Note [8-bit bucket tables]: the count of thresholds exceeded is formats.hpp's rule.
    EXPECT_EQ(float_bits(t.thr[255]), float_bits(kInf));
    for (int i = 0; i + 1 < 255; ++i) EXPECT_LE(t.thr[i], t.thr[i + 1]) << i;
  }
  std::vector<float> xs = {0.0f, -0.0f, kInf, -kInf, std::numeric_limits<float>::quiet_NaN(),
                           -std::numeric_limits<float>::quiet_NaN(), bits_float(0x7F800001u), bits_float(0xFFBFFFFFu),
                           bits_float(0x7FC00123u), std::numeric_limits<float>::denorm_min(),
                           -std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::min(),
                           -std::numeric_limits<float>::min(), std::numeric_limits<float>::max(),
                           -std::numeric_limits<float>::max(), 1.0f, -1.0f, 1.5f, -1.5f, 2.0f, -2.0f,
                           cuda::kCode8Clamp, -cuda::kCode8Clamp, 3.0f, -3.0f, 1e10f, -1e10f, 65504.0f, 65536.0f, 1e-39f, -1e-39f};
  const auto around = [&](float v, int d) {
    for (float s : {1.0f, -1.0f}) {
      const auto b = static_cast<int64_t>(float_bits(s * v));
      for (int k = -d; k <= d; ++k) xs.push_back(bits_float(static_cast<uint32_t>(b + k)));
    }
  };
  std::vector<float> mids;
  for (size_t i = 0; i < 256; ++i) {
    around(code[i], 4);
    if (i < 255) {
      mids.push_back((code[i] + code[i + 1]) * 0.5f);
      around(mids.back(), 4);
      around(std::nextafter(mids.back(), -kInf), 1);
    }
  }
  for (uint32_t k = 0; k < 2048; ++k) {  // both ends of each bucket (its lowest magnitude and the float below the next's)
    around(cuda::half_floor_value(k << 3), 2);
    around(std::nextafter(cuda::half_floor_value((k + 1) << 3), 0.0f), 2);
  }
  for (int i = 0; i < 2000000; ++i) xs.push_back(bits_float(static_cast<uint32_t>(rng())));
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (int i = 0; i < 2000000; ++i) xs.push_back(unit(rng));
  std::uniform_int_distribution<uint32_t> denormal(1, 0x7FFFFFu);
  for (int i = 0; i < 100000; ++i) xs.push_back(bits_float(denormal(rng) | (i % 2 ? 0x80000000u : 0u)));
  for (const std::vector<float>& p : {probes(code.data(), 256, rng), probes(mids.data(), mids.size(), rng)})
    xs.insert(xs.end(), p.begin(), p.end());
  if (xs.size() % 2 != 0) xs.push_back(0.5f);
  for (size_t i = 0; i < xs.size(); i += 2) {
    const float x0 = xs[i], x1 = xs[i + 1];
    const uint32_t want0 = quantize_8bit_value(code.data(), x0), want1 = quantize_8bit_value(code.data(), x1);
    ASSERT_EQ(kernel_code8(t, fast, x0), want0) << "x = " << x0 << " bits " << std::hex << float_bits(x0);
    ASSERT_EQ(kernel_code8(t, fast, x1), want1) << "x = " << x1 << " bits " << std::hex << float_bits(x1);
    if (fast) {
      uint32_t q0 = 0, q1 = 0;
      cuda::quantize_8bit_bucket2(t, x0, x1, q0, q1);
      ASSERT_EQ(q0, want0) << "pair, x = " << x0 << " bits " << std::hex << float_bits(x0);
      ASSERT_EQ(q1, want1) << "pair, x = " << x1 << " bits " << std::hex << float_bits(x1);
    }
  }
  checked += static_cast<int64_t>(xs.size());
}

// The optimizers' sign rule through the sign split of a map that passed the checks equals
// optim_rules.hpp's, for every code and states of both signs, zeros and NaN.
TEST(CudaCodebook, SignRuleBySplit) {
  Code8 all_negative{};
  for (size_t i = 0; i < 256; ++i) all_negative[i] = -1.0f + static_cast<float>(i) / 512.0f;
  Code8 with_minus_zero = linear_map();
  with_minus_zero[128] = -0.0f;  // between -1/255 and +3/255: still strictly ascending
  for (const Code8* code : std::initializer_list<const Code8*>{&dynamic_map_signed(), &dynamic_map_unsigned(), &all_negative, &with_minus_zero}) {
    uint32_t negatives = 1000;
    int found = 0;
    for (int i = 0; i < 256; ++i) found += cuda::code8_negatives_at(code->data(), i, negatives);
    ASSERT_EQ(found, 1);
    for (uint32_t q = 0; q < 256; ++q)
      for (float s : {0.0f, -0.0f, 1.0f, -1.0f, 1e-30f, -1e-30f, std::numeric_limits<float>::quiet_NaN(),
                      -std::numeric_limits<float>::quiet_NaN(), kInf, -kInf})
        ASSERT_EQ(cuda::sign_rule_by_split(q, negatives, s), optim::apply_sign_rule(code->data(), static_cast<uint8_t>(q), s))
            << "q = " << q << " s = " << s << " negatives = " << negatives;
  }
}

// The host's form of the conversion the bucket index rests on (cvt.rz.f16.f32) against its
// definition: the fp16 value of the bits is at most |y| and the next fp16 is above it.
TEST(CudaCodebook, HalfRoundedTowardZero) {
  std::mt19937_64 rng(test::test_seed());
  SCOPED_TRACE(test::seed_note());
  const auto check = [](float y) {
    const uint32_t h = cuda::half_rz_bits(y);
    // The fp16 value of h, exactly, as a double: it is at most |y| and the next one is above |y|.
    const auto value = [](uint32_t b) {
      const uint32_t e = (b >> 10) & 0x1Fu, m = b & 0x3FFu;
      return e == 0 ? std::ldexp(static_cast<double>(m), -24) : std::ldexp(static_cast<double>(m | 0x400u), static_cast<int>(e) - 25);
    };
    const double a = std::fabs(static_cast<double>(y));
    ASSERT_EQ(h >> 15, float_bits(y) >> 31) << y;
    ASSERT_LE(value(h & 0x7FFFu), a) << y;
    ASSERT_GT(value((h & 0x7FFFu) + 1), a) << y;
    ASSERT_EQ(cuda::half_floor_value(h & 0x7FF8u), static_cast<float>(value(h & 0x7FF8u))) << y;
  };
  for (float y : {0.0f, -0.0f, 1.0f, -1.0f, cuda::kCode8Clamp, -cuda::kCode8Clamp, 0x1p-14f, 0x1p-24f, 0x1.fffffep-25f,
                  std::numeric_limits<float>::denorm_min(), 0x1.ffep-1f, 0x1.ffefffp-1f})
    check(y);
  std::uniform_real_distribution<float> unit(-cuda::kCode8Clamp, cuda::kCode8Clamp);
  for (int i = 0; i < 1000000; ++i) {
    check(unit(rng));
    check(bits_float(static_cast<uint32_t>(rng()) & 0xBFFFFFFFu));  // any float of magnitude below 2
  }
}

// Note [8-bit bucket tables]: the signed and unsigned dynamic maps and the linear map pass the
// checks and their bucket codes equal formats.hpp's; random sorted maps mostly fail them and then
// the tree does; whichever path a map takes equals formats.hpp.
TEST(CudaCodebook, EightBitBucketsMatchFormats) {
  std::mt19937_64 rng(test::test_seed());
  SCOPED_TRACE(test::seed_note());
  int64_t checked = 0;
  check_8bit_table(dynamic_map_signed(), rng, true, checked);
  check_8bit_table(dynamic_map_unsigned(), rng, true, checked);
  check_8bit_table(linear_map(), rng, true, checked);
  {
    Code8 m = linear_map();  // the linear map's reverse (descending): fails (a)
    std::reverse(m.begin(), m.end());
    check_8bit_table(m, rng, false, checked);
  }
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  int fast_random = 0;
  for (int trial = 0; trial < 8; ++trial) {
    Code8 m;
    if (trial % 4 == 0) {  // sorted normal values: some beyond +-2, (b) fails
      for (float& v : m) v = normal(rng);
      std::sort(m.begin(), m.end());
      check_8bit_table(m, rng, false, checked);
    } else if (trial % 4 == 1) {  // sorted uniform values in [-1, 1]: close pairs share buckets
      for (float& v : m) v = unit(rng);
      std::sort(m.begin(), m.end());
      check_8bit_table(m, rng, false, checked);
    } else if (trial % 4 == 2) {  // the linear map jittered by a tenth of its step: usually passes
      const Code8 lin = linear_map();
      for (size_t i = 0; i < 256; ++i) m[i] = lin[i] + unit(rng) * (0.1f / 255.0f);
      static cuda::Code8Table t;
      const bool fast = cuda::code8_build_serial(m.data(), t);
      fast_random += fast;
      check_8bit_table(m, rng, fast, checked);
    } else {  // sorted with repeats: fails (a)
      for (float& v : m) v = std::round(unit(rng) * 8.0f) / 8.0f;
      std::sort(m.begin(), m.end());
      check_8bit_table(m, rng, false, checked);
    }
  }
  EXPECT_GT(fast_random, 0) << "no jittered linear map took the buckets";
  {
    // Condition (c): code[k + 1] the float after code[k] (k odd, code[k]'s last bit 0), so that
    // their midpoint rounds onto code[k]; with threshold k = the float below it, x = code[k] would
    // count it.
    Code8 m = linear_map();
    size_t k = 101;
    while ((float_bits(m[k]) & 1u) != 0) k += 2;
    m[k + 1] = std::nextafter(m[k], kInf);
    ASSERT_EQ((m[k] + m[k + 1]) * 0.5f, m[k]);
    check_8bit_table(m, rng, false, checked);
  }
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), kInf, 4.5f}) {  // one entry breaks (a) or (b)
    Code8 m = dynamic_map_signed();
    m[255] = bad;
    check_8bit_table(m, rng, false, checked);
  }
  RecordProperty("values_checked", std::to_string(checked));
}

}  // namespace
}  // namespace nybble
