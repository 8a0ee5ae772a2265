// cpu_vs_ref_quantize_test.cpp — the AVX2 blockwise quantize/dequantize kernels (4-bit and 8-bit)
// against the scalar oracle, byte for byte: packed codes, 8-bit codes, absmax and dequantized
// outputs must be bit-identical for every dtype, quant type, blocksize, length and special value.
// The kernels are called through the kernel tables directly (and once through the public API).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cpu/kernels.hpp"
#include "test_util.hpp"

namespace nybble {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

constexpr int64_t kSizes[] = {0, 1, 2, 3, 7, 31, 33, 63, 64, 65, 255, 257, 1000, 4095, 4097, 12291, 100003};
constexpr int64_t k8bitBlocksizes[] = {1, 3, 7, 64, 100, 256, 4096, 5000};

bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

class CpuVsRefQuantize : public ::testing::Test {
 protected:
  void SetUp() override {
    simd = cpu::avx2_kernels();
    if (simd == nullptr) GTEST_SKIP() << "AVX2 kernels are not compiled into this build";
    if (!cpu_has_avx2()) GTEST_SKIP() << "this CPU lacks AVX2/FMA/F16C";
  }
  const cpu::Kernels& ref = cpu::ref_kernels();
  const cpu::Kernels* simd = nullptr;
};

// Success when a and b hold the same bytes; otherwise names the first differing element.
template <class T>
::testing::AssertionResult same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "sizes " << a.size() << " vs " << b.size();
  if (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0) return ::testing::AssertionSuccess();
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) {
      uint64_t ua = 0, ub = 0;
      std::memcpy(&ua, &a[i], sizeof(T));
      std::memcpy(&ub, &b[i], sizeof(T));
      return ::testing::AssertionFailure() << "first difference at element " << i << " of " << a.size() << ": ref 0x"
                                           << std::hex << ua << " vs simd 0x" << ub;
    }
  return ::testing::AssertionSuccess();
}

// Raw bytes of n elements of dtype dt.
struct Buf {
  DType dt;
  std::vector<uint8_t> bytes;
  Buf(DType t, int64_t n) : dt(t), bytes(static_cast<size_t>(n * dtype_size(t))) {}
  void set(int64_t i, float v) { store_from_float(bytes.data(), dt, i, v); }
  int64_t size() const { return static_cast<int64_t>(bytes.size()) / dtype_size(dt); }
};

// Values of one of several shapes; kind 3 sprinkles every special value.
std::vector<float> make_values(int64_t n, std::mt19937_64& rng, int kind) {
  std::vector<float> v(static_cast<size_t>(n));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  const float scale = std::exp2(static_cast<float>(static_cast<int>(rng() % 41) - 20)) * (1.0f + uni(rng));
  for (auto& x : v) x = (kind == 1 ? uni(rng) : normal(rng)) * scale;
  if (kind == 2) {  // zero runs (all-zero blocks of every size) and -0.0
    for (int64_t i = 0; i < n;) {
      const int64_t len = static_cast<int64_t>(rng() % 300) + 1;
      if (rng() % 3 == 0)
        for (int64_t k = i; k < std::min(n, i + len); ++k) v[static_cast<size_t>(k)] = (rng() & 1) ? 0.0f : -0.0f;
      i += len;
    }
  }
  if (kind == 3) {
    const float specials[] = {kNaN, -kNaN, kInf, -kInf, 0.0f, -0.0f, std::numeric_limits<float>::denorm_min(),
                              -std::numeric_limits<float>::denorm_min(), 1e-40f, -3e-39f, std::numeric_limits<float>::min(),
                              std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(), 65504.0f, 7e4f, 1e-7f};
    for (auto& x : v)
      if (rng() % 16 == 0) x = specials[rng() % std::size(specials)];
  }
  return v;
}

Buf to_buf(DType dt, const std::vector<float>& v) {
  Buf b(dt, static_cast<int64_t>(v.size()));
  for (size_t i = 0; i < v.size(); ++i) b.set(static_cast<int64_t>(i), v[i]);
  return b;
}

// Random 16-bit patterns (every fp16/bf16 value, NaNs and subnormals included) or 32-bit ones.
Buf random_bits(DType dt, int64_t n, std::mt19937_64& rng) {
  Buf b(dt, n);
  for (auto& byte : b.bytes) byte = static_cast<uint8_t>(rng());
  return b;
}

// Block boundaries [0 = s0 < s1 < ... = nb] cut at random: the kernels must not depend on them.
std::vector<int64_t> random_splits(int64_t nb, std::mt19937_64& rng) {
  std::vector<int64_t> s{0};
  while (s.back() < nb) s.push_back(std::min(nb, s.back() + 1 + static_cast<int64_t>(rng() % 7)));
  if (nb == 0) s.push_back(0);
  return s;
}

// ---- 4-bit -----------------------------------------------------------------------------------------

// Quantizes x with both kernel sets (the SIMD one in random block slices) and compares. Output
// buffers start with different fill bytes, so a byte one set leaves unwritten shows up too.
void check_quantize_4bit(const cpu::Kernels& ref, const cpu::Kernels& simd, const Buf& x, int64_t bs, QuantType qt,
                         std::mt19937_64& rng) {
  const int64_t n = x.size(), nb = num_blocks(n, bs);
  std::vector<uint8_t> p_ref(static_cast<size_t>(packed_4bit_bytes(n)), 0xA5), p_simd(p_ref.size(), 0x5A);
  std::vector<float> a_ref(static_cast<size_t>(nb), -1.0f), a_simd(a_ref.size(), -2.0f);
  ref.quantize_4bit(x.bytes.data(), x.dt, n, bs, qt, p_ref.data(), a_ref.data(), 0, nb);
  const auto s = random_splits(nb, rng);
  for (size_t k = 0; k + 1 < s.size(); ++k)
    simd.quantize_4bit(x.bytes.data(), x.dt, n, bs, qt, p_simd.data(), a_simd.data(), s[k], s[k + 1]);
  SCOPED_TRACE(std::string(dtype_name(x.dt)) + " " + std::string(quant_type_name(qt)) + " n=" + std::to_string(n) +
               " bs=" + std::to_string(bs));
  EXPECT_TRUE(same_bytes(a_ref, a_simd)) << "absmax";
  EXPECT_TRUE(same_bytes(p_ref, p_simd)) << "packed";
}

void check_dequantize_4bit(const cpu::Kernels& ref, const cpu::Kernels& simd, const std::vector<uint8_t>& packed,
                           const cpu::Scales& sc, int64_t n, int64_t bs, QuantType qt, DType dt, std::mt19937_64& rng) {
  const int64_t nb = num_blocks(n, bs);
  Buf o_ref(dt, n), o_simd(dt, n);
  std::fill(o_ref.bytes.begin(), o_ref.bytes.end(), uint8_t{0xA5});
  std::fill(o_simd.bytes.begin(), o_simd.bytes.end(), uint8_t{0x5A});
  ref.dequantize_4bit(packed.data(), sc, n, bs, qt, o_ref.bytes.data(), dt, 0, nb);
  const auto s = random_splits(nb, rng);
  for (size_t k = 0; k + 1 < s.size(); ++k)
    simd.dequantize_4bit(packed.data(), sc, n, bs, qt, o_simd.bytes.data(), dt, s[k], s[k + 1]);
  EXPECT_TRUE(same_bytes(o_ref.bytes, o_simd.bytes))
      << dtype_name(dt) << " " << quant_type_name(qt) << " n=" << n << " bs=" << bs << (sc.qabsmax ? " nested" : "");
}

TEST_F(CpuVsRefQuantize, Quantize4bitRandom) {
  SCOPED_TRACE(test::seed_note());
  std::mt19937_64 rng(test::test_seed() ^ 0x4b17);
  for (int64_t n : kSizes)
    for (int64_t bs : k4bitBlocksizes)
      for (DType dt : test::kFloatTypes)
        for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
          const int kind = static_cast<int>(rng() % 4);
          check_quantize_4bit(ref, *simd, to_buf(dt, make_values(n, rng, kind)), bs, qt, rng);
        }
}

TEST_F(CpuVsRefQuantize, Quantize4bitEveryHalfPattern) {
  SCOPED_TRACE(test::seed_note());
  std::mt19937_64 rng(test::test_seed() ^ 0x16b);
  for (DType dt : {DType::F16, DType::BF16})
    for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
      // All 65536 bit patterns in order (blocks mix NaN/Inf/subnormals), then shuffled.
      Buf x(dt, 65536);
      for (int64_t i = 0; i < 65536; ++i) std::memcpy(x.bytes.data() + 2 * i, &i, 2);
      check_quantize_4bit(ref, *simd, x, 64, qt, rng);
      check_quantize_4bit(ref, *simd, random_bits(dt, 65537, rng), 32, qt, rng);
    }
  for (QuantType qt : {QuantType::NF4, QuantType::FP4})
    check_quantize_4bit(ref, *simd, random_bits(DType::F32, 100001, rng), 128, qt, rng);
}

// Normalized values exactly on (and one ulp around) every threshold and code value: element 0
// of each block sets absmax, so with absmax 1 the normalized value is the stored value itself.
TEST_F(CpuVsRefQuantize, Quantize4bitOnThresholds) {
  SCOPED_TRACE(test::seed_note());
  std::mt19937_64 rng(test::test_seed() ^ 0x7e);
  std::vector<float> pts;
  for (float t : kNF4Threshold) pts.push_back(t);
  for (float t : kFP4Threshold) pts.push_back(t);
  for (float t : kNF4Code) pts.push_back(t);
  for (float t : kFP4Code) pts.push_back(t);
  std::vector<float> all;
  for (float p : pts)
    for (float v : {p, std::nextafter(p, kInf), std::nextafter(p, -kInf)}) {
      all.push_back(v);
      all.push_back(-v);
    }
  for (float amax : {1.0f, 2.0f, 3.0f, 0.1f, 1e-30f, 7e-39f}) {
    for (int64_t bs : {int64_t{32}, int64_t{64}, int64_t{256}}) {
      std::vector<float> v;
      for (size_t k = 0; k < all.size(); ++k) {
        if (v.size() % static_cast<size_t>(bs) == 0) v.push_back(amax);
        v.push_back(all[k] * amax);
      }
      v.push_back(amax);  // odd length: the padding nibble
      for (DType dt : test::kFloatTypes)
        for (QuantType qt : {QuantType::NF4, QuantType::FP4}) check_quantize_4bit(ref, *simd, to_buf(dt, v), bs, qt, rng);
    }
  }
}

TEST_F(CpuVsRefQuantize, Quantize4bitSpecialBlocks) {
  SCOPED_TRACE(test::seed_note());
  std::mt19937_64 rng(test::test_seed() ^ 0x5bec);
  const std::vector<std::vector<float>> blocks = {
      std::vector<float>(64, 0.0f),  std::vector<float>(64, -0.0f),     std::vector<float>(64, kNaN),
      std::vector<float>(64, kInf),  std::vector<float>(64, -kInf),     std::vector<float>(64, 1e-45f),
      std::vector<float>(64, -1e-41f), std::vector<float>(64, 3.0e38f),
  };
  for (DType dt : test::kFloatTypes)
    for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
      std::vector<float> v;
      for (const auto& b : blocks) v.insert(v.end(), b.begin(), b.end());
      for (const auto& b : blocks) {  // the same blocks with one ordinary value and one NaN
        std::vector<float> c = b;
        c[5] = 0.25f;
        c[17] = kNaN;
        c[40] = -0.0f;
        v.insert(v.end(), c.begin(), c.end());
      }
      v.resize(v.size() - 3);  // odd partial last block
      for (int64_t bs : {int64_t{32}, int64_t{64}, int64_t{128}}) check_quantize_4bit(ref, *simd, to_buf(dt, v), bs, qt, rng);
    }
}

TEST_F(CpuVsRefQuantize, Dequantize4bitPlainAndNested) {
  SCOPED_TRACE(test::seed_note());
  std::mt19937_64 rng(test::test_seed() ^ 0xd4);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float special_scales[] = {0.0f, -0.0f, kInf, -kInf, kNaN, 1e-45f, 3e38f, -2.5f, 1e-39f};
  for (int64_t n : kSizes)
    for (int64_t bs : k4bitBlocksizes)
      for (DType dt : test::kFloatTypes)
        for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
          const int64_t nb = num_blocks(n, bs);
          std::vector<uint8_t> packed(static_cast<size_t>(packed_4bit_bytes(n)));
          for (auto& b : packed) b = static_cast<uint8_t>(rng());
          std::vector<float> absmax(static_cast<size_t>(nb));
          for (auto& a : absmax)
            a = rng() % 8 == 0 ? special_scales[rng() % std::size(special_scales)] : std::fabs(normal(rng)) * 10.0f;
          cpu::Scales plain;
          plain.absmax = absmax.data();
          check_dequantize_4bit(ref, *simd, packed, plain, n, bs, qt, dt, rng);

          // Double-quantized absmax: code * nested_absmax + offset, both rounded.
          for (int64_t nbs : {kNestedBlocksize, int64_t{3}}) {
            std::vector<uint8_t> qabs(static_cast<size_t>(nb));
            for (auto& q : qabs) q = static_cast<uint8_t>(rng());
            std::vector<float> nested(static_cast<size_t>(num_blocks(nb, nbs)));
            for (auto& a : nested) a = rng() % 16 == 0 ? special_scales[rng() % std::size(special_scales)] : std::fabs(normal(rng));
            cpu::Scales sc;
            sc.qabsmax = qabs.data();
            sc.nested_absmax = nested.data();
            sc.nested_code = dynamic_map_signed().data();
            sc.offset = normal(rng);
            sc.nested_blocksize = nbs;
            check_dequantize_4bit(ref, *simd, packed, sc, n, bs, qt, dt, rng);
          }
        }
}

// ---- 8-bit -----------------------------------------------------------------------------------------

void check_quantize_8bit(const cpu::Kernels& ref, const cpu::Kernels& simd, const Buf& x, int64_t bs, const float* code,
                         const char* code_name, std::mt19937_64& rng) {
  const int64_t n = x.size(), nb = num_blocks(n, bs);
  std::vector<uint8_t> q_ref(static_cast<size_t>(n), 0xA5), q_simd(q_ref.size(), 0x5A);
  std::vector<float> a_ref(static_cast<size_t>(nb), -1.0f), a_simd(a_ref.size(), -2.0f);
  ref.quantize_8bit(x.bytes.data(), x.dt, n, bs, code, q_ref.data(), a_ref.data(), 0, nb);
  const auto s = random_splits(nb, rng);
  for (size_t k = 0; k + 1 < s.size(); ++k)
    simd.quantize_8bit(x.bytes.data(), x.dt, n, bs, code, q_simd.data(), a_simd.data(), s[k], s[k + 1]);
  SCOPED_TRACE(std::string(dtype_name(x.dt)) + " code=" + code_name + " n=" + std::to_string(n) + " bs=" + std::to_string(bs));
  EXPECT_TRUE(same_bytes(a_ref, a_simd)) << "absmax";
  EXPECT_TRUE(same_bytes(q_ref, q_simd)) << "codes";
}

void check_dequantize_8bit(const cpu::Kernels& ref, const cpu::Kernels& simd, const std::vector<uint8_t>& q,
                           const std::vector<float>& absmax, const float* code, int64_t bs, DType dt, std::mt19937_64& rng) {
  const int64_t n = static_cast<int64_t>(q.size()), nb = num_blocks(n, bs);
  Buf o_ref(dt, n), o_simd(dt, n);
  std::fill(o_ref.bytes.begin(), o_ref.bytes.end(), uint8_t{0xA5});
  std::fill(o_simd.bytes.begin(), o_simd.bytes.end(), uint8_t{0x5A});
  ref.dequantize_8bit(q.data(), absmax.data(), code, n, bs, o_ref.bytes.data(), dt, 0, nb);
  const auto s = random_splits(nb, rng);
  for (size_t k = 0; k + 1 < s.size(); ++k)
    simd.dequantize_8bit(q.data(), absmax.data(), code, n, bs, o_simd.bytes.data(), dt, s[k], s[k + 1]);
  EXPECT_TRUE(same_bytes(o_ref.bytes, o_simd.bytes)) << dtype_name(dt) << " n=" << n << " bs=" << bs;
}

// Codes the 8-bit kernels must handle: the two dynamic maps, random sorted maps (one with
// repeated entries, one of adjacent floats so midpoints round onto entries, one with
// infinities, one of subnormal steps) and maps that are not sorted or hold NaN: the oracle's
// search is defined for any map and the SIMD one must follow it there too.
struct NamedCode {
  std::string name;
  Code8 code;
};

std::vector<NamedCode> test_codes(std::mt19937_64& rng) {
  std::vector<NamedCode> out;
  out.push_back({"signed", dynamic_map_signed()});
  out.push_back({"unsigned", dynamic_map_unsigned()});
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  Code8 c;
  for (auto& v : c) v = uni(rng);
  std::sort(c.begin(), c.end());
  out.push_back({"random-sorted", c});
  for (size_t i = 1; i < 256; i += 1 + rng() % 4) c[i] = c[i - 1];
  std::sort(c.begin(), c.end());
  out.push_back({"repeats", c});
  Code8 adj;
  adj[0] = -0.75f;
  for (size_t i = 1; i < 256; ++i) adj[i] = rng() % 3 == 0 ? std::nextafter(adj[i - 1], kInf) : adj[i - 1] + 1.0f / 128;
  out.push_back({"adjacent", adj});
  Code8 inf = dynamic_map_signed();
  inf[0] = -kInf;
  inf[255] = kInf;
  inf[254] = 1.0f;
  inf[127] = -0.0f;
  out.push_back({"infinite-ends", inf});
  Code8 tiny;
  for (size_t i = 0; i < 256; ++i) tiny[i] = static_cast<float>(static_cast<int>(i) - 128) * 1e-45f;  // subnormal steps
  out.push_back({"subnormal", tiny});
  Code8 unsorted = dynamic_map_signed();
  std::swap(unsorted[10], unsorted[200]);
  out.push_back({"unsorted", unsorted});
  Code8 with_nan = dynamic_map_signed();
  for (size_t i : {0, 1, 63, 76, 77, 127, 128, 191, 254, 255}) with_nan[i] = kNaN;
  out.push_back({"nan-entries", with_nan});
  Code8 shuffled = dynamic_map_signed();
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  out.push_back({"shuffled", shuffled});
  Code8 wild;
  for (auto& v : wild) v = rng() % 10 == 0 ? std::vector<float>{kNaN, kInf, -kInf, 0.0f, -0.0f}[rng() % 5] : uni(rng);
  out.push_back({"wild", wild});
  Code8 flat;
  flat.fill(0.25f);
  out.push_back({"constant", flat});
  return out;
}

TEST_F(CpuVsRefQuantize, Quantize8bitRandom) {
  SCOPED_TRACE(test::seed_note());
  std::mt19937_64 rng(test::test_seed() ^ 0x8b17);
  const auto codes = test_codes(rng);
  for (const auto& c : codes)
    for (int64_t n : kSizes)
      for (int64_t bs : k8bitBlocksizes)
        for (DType dt : test::kFloatTypes) {
          const int kind = static_cast<int>(rng() % 4);
          check_quantize_8bit(ref, *simd, to_buf(dt, make_values(n, rng, kind)), bs, c.code.data(), c.name.c_str(), rng);
        }
}

TEST_F(CpuVsRefQuantize, Quantize8bitEveryHalfPattern) {
  SCOPED_TRACE(test::seed_note());
  std::mt19937_64 rng(test::test_seed() ^ 0x816b);
  for (const auto& c : test_codes(rng))
    for (DType dt : {DType::F16, DType::BF16}) {
      Buf x(dt, 65536);
      for (int64_t i = 0; i < 65536; ++i) std::memcpy(x.bytes.data() + 2 * i, &i, 2);
      check_quantize_8bit(ref, *simd, x, 64, c.code.data(), c.name.c_str(), rng);
      check_quantize_8bit(ref, *simd, random_bits(dt, 40001, rng), 256, c.code.data(), c.name.c_str(), rng);
    }
}

// Normalized values exactly on (and one ulp around) every entry and every midpoint
// (code[i] + code[i+1]) * 0.5f of each map; element 0 of a block sets absmax.
TEST_F(CpuVsRefQuantize, Quantize8bitOnMidpoints) {
  SCOPED_TRACE(test::seed_note());
  std::mt19937_64 rng(test::test_seed() ^ 0x3d);
  for (const auto& c : test_codes(rng)) {
    std::vector<float> pts;
    for (size_t i = 0; i < 256; ++i) {
      pts.push_back(c.code[i]);
      if (i < 255) pts.push_back((c.code[i] + c.code[i + 1]) * 0.5f);
    }
    for (float amax : {1.0f, 2.0f, 0.75f, 3.0f, 1e-20f}) {
      for (int64_t bs : {int64_t{64}, int64_t{256}, int64_t{100}}) {
        std::vector<float> v;
        for (float p : pts)
          for (float w : {p, std::nextafter(p, kInf), std::nextafter(p, -kInf)}) {
            if (v.size() % static_cast<size_t>(bs) == 0) v.push_back(amax);
            v.push_back(w * amax);
          }
        for (DType dt : test::kFloatTypes) check_quantize_8bit(ref, *simd, to_buf(dt, v), bs, c.code.data(), c.name.c_str(), rng);
      }
    }
  }
}

TEST_F(CpuVsRefQuantize, Dequantize8bitRandom) {
  SCOPED_TRACE(test::seed_note());
  std::mt19937_64 rng(test::test_seed() ^ 0xd8);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float special_scales[] = {0.0f, -0.0f, kInf, -kInf, kNaN, 1e-45f, 3e38f, -2.5f, 1e-39f};
  const auto codes = test_codes(rng);
  for (const auto& c : codes)
    for (int64_t n : kSizes)
      for (int64_t bs : k8bitBlocksizes)
        for (DType dt : test::kFloatTypes) {
          std::vector<uint8_t> q(static_cast<size_t>(n));
          for (auto& b : q) b = static_cast<uint8_t>(rng());
          std::vector<float> absmax(static_cast<size_t>(num_blocks(n, bs)));
          for (auto& a : absmax)
            a = rng() % 8 == 0 ? special_scales[rng() % std::size(special_scales)] : std::fabs(normal(rng)) * 10.0f;
          check_dequantize_8bit(ref, *simd, q, absmax, c.code.data(), bs, dt, rng);
        }
}

// A map of arbitrary fp32 bit patterns with absmax 1 makes the outputs those patterns (quieted
// if NaN): this drives the fp16/bf16 rounding of the stores over every kind of fp32 value.
TEST_F(CpuVsRefQuantize, DequantizeStoresRoundLikeTheOracle) {
  SCOPED_TRACE(test::seed_note());
  std::mt19937_64 rng(test::test_seed() ^ 0x5707e);
  std::vector<uint8_t> q(4096);
  for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<uint8_t>(i);
  for (int round = 0; round < 64; ++round) {
    Code8 code;
    for (size_t i = 0; i < 256; ++i) {
      uint32_t u = static_cast<uint32_t>(rng());
      if (i % 4 == 1) u = (u & 0x80000000u) | (0x33000000u + (u % 0x0C000000u));  // fp16 subnormal / rounding range
      if (i % 4 == 2) u = (u & 0x807FFFFFu) | 0x47000000u;                          // near fp16 overflow
      if (i % 8 == 3) u |= 0x7F800000u;                                             // Inf / NaN
      std::memcpy(&code[i], &u, 4);
    }
    const std::vector<float> absmax(1, 1.0f);
    for (DType dt : test::kFloatTypes) check_dequantize_8bit(ref, *simd, q, absmax, code.data(), 4096, dt, rng);
  }
}

// Outputs of 32 MiB and more, 32-byte aligned, take the non-temporal store path of the SIMD
// dequantizers; the same calls with an unaligned output and with blocks that are not a multiple
// of 8 take the plain one.
TEST_F(CpuVsRefQuantize, DequantizeLargeOutputs) {
  SCOPED_TRACE(test::seed_note());
  std::mt19937_64 rng(test::test_seed() ^ 0x1a26e);
  const int64_t n = (int64_t{17} << 20) + 37;
  std::vector<uint8_t> bytes(static_cast<size_t>(n));
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t max_out = static_cast<size_t>(n) * 4 + 64;
  std::unique_ptr<uint8_t, decltype(&std::free)> o_ref(static_cast<uint8_t*>(std::aligned_alloc(64, max_out)), &std::free),
      o_simd(static_cast<uint8_t*>(std::aligned_alloc(64, max_out)), &std::free);
  ASSERT_TRUE(o_ref && o_simd);
  for (DType dt : test::kFloatTypes)
    for (size_t misalign : {size_t{0}, size_t{4}}) {
      const size_t out_bytes = static_cast<size_t>(n * dtype_size(dt));
      uint8_t* r = o_ref.get() + misalign;
      uint8_t* v = o_simd.get() + misalign;
      auto compare = [&](const char* what, int64_t bs) {
        EXPECT_EQ(std::memcmp(r, v, out_bytes), 0) << what << " " << dtype_name(dt) << " bs=" << bs << " misalign=" << misalign;
      };
      for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
        const int64_t bs = 64, nb = num_blocks(n, bs);
        std::vector<float> absmax(static_cast<size_t>(nb));
        for (auto& a : absmax) a = std::fabs(normal(rng));
        cpu::Scales sc;
        sc.absmax = absmax.data();
        std::memset(r, 0xA5, out_bytes);
        std::memset(v, 0x5A, out_bytes);
        ref.dequantize_4bit(bytes.data(), sc, n, bs, qt, r, dt, 0, nb);
        for (int64_t b0 = 0, b1; b0 < nb; b0 = b1) {  // slices of a few thousand blocks, as threads get
          b1 = std::min(nb, b0 + 1000 + static_cast<int64_t>(rng() % 4000));
          simd->dequantize_4bit(bytes.data(), sc, n, bs, qt, v, dt, b0, b1);
        }
        compare("dequantize_4bit", bs);
      }
      for (int64_t bs : {int64_t{256}, int64_t{100}}) {
        const int64_t nb = num_blocks(n, bs);
        std::vector<float> absmax(static_cast<size_t>(nb));
        for (auto& a : absmax) a = std::fabs(normal(rng));
        std::memset(r, 0xA5, out_bytes);
        std::memset(v, 0x5A, out_bytes);
        ref.dequantize_8bit(bytes.data(), absmax.data(), dynamic_map_signed().data(), n, bs, r, dt, 0, nb);
        simd->dequantize_8bit(bytes.data(), absmax.data(), dynamic_map_signed().data(), n, bs, v, dt, 0, nb);
        compare("dequantize_8bit", bs);
      }
    }
}

// ---- the public API with the kernel set forced --------------------------------------------------

class PublicApiAvx2VsRef : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cpu::avx2_kernels() == nullptr) GTEST_SKIP() << "AVX2 kernels are not compiled into this build";
    if (!cpu_has_avx2()) GTEST_SKIP() << "this CPU lacks AVX2/FMA/F16C";
  }
  void TearDown() override { set_cpu_isa("auto"); }
};

TEST_F(PublicApiAvx2VsRef, QuantizeDequantizeMatch) {
  SCOPED_TRACE(test::seed_note());
  std::mt19937_64 rng(test::test_seed() ^ 0xa91);
  for (int64_t n : {int64_t{100003}, int64_t{(1 << 20) + 17}})
    for (DType dt : test::kFloatTypes) {
      const Buf x = to_buf(dt, make_values(n, rng, 3));
      const TensorView xv(x.bytes.data(), dt, {n});
      for (QuantType qt : {QuantType::NF4, QuantType::FP4})
        for (int64_t bs : {int64_t{64}, int64_t{4096}}) {
          const int64_t nb = num_blocks(n, bs), nnb = num_blocks(nb, kNestedBlocksize);
          std::vector<uint8_t> packed[2];
          std::vector<float> absmax[2];
          Buf out[2] = {Buf(dt, n), Buf(dt, n)};
          Buf out_nested[2] = {Buf(dt, n), Buf(dt, n)};
          for (int k = 0; k < 2; ++k) {
            set_cpu_isa(k == 0 ? "ref" : "avx2");
            packed[k].assign(static_cast<size_t>(packed_4bit_bytes(n)), 0);
            absmax[k].assign(static_cast<size_t>(nb), 0.0f);
            const TensorView pv(packed[k].data(), DType::U8, {static_cast<int64_t>(packed[k].size())});
            const TensorView av(absmax[k].data(), DType::F32, {nb});
            quantize_4bit(xv, pv, av, bs, qt);
            dequantize_4bit(pv, BlockScales{av, std::nullopt}, bs, qt, TensorView(out[k].bytes.data(), dt, {n}));
            std::vector<uint8_t> qabs(static_cast<size_t>(nb));
            std::vector<float> nested(static_cast<size_t>(nnb));
            std::vector<float> clean(absmax[k]);  // non-finite absmax would poison the mean
            for (auto& a : clean)
              if (!std::isfinite(a)) a = 1.0f;
            const TensorView cv(clean.data(), DType::F32, {nb});
            const float offset = absmax_mean(cv);
            quantize_absmax_nested(cv, offset, TensorView(qabs.data(), DType::U8, {nb}),
                                   TensorView(nested.data(), DType::F32, {nnb}));
            const BlockScales ns{TensorView(qabs.data(), DType::U8, {nb}),
                                 NestedAbsmax{TensorView(nested.data(), DType::F32, {nnb}),
                                              TensorView(dynamic_map_signed().data(), DType::F32, {256}), offset,
                                              kNestedBlocksize}};
            dequantize_4bit(pv, ns, bs, qt, TensorView(out_nested[k].bytes.data(), dt, {n}));
          }
          SCOPED_TRACE(std::string(dtype_name(dt)) + " " + std::string(quant_type_name(qt)) + " n=" + std::to_string(n) +
                       " bs=" + std::to_string(bs));
          EXPECT_TRUE(same_bytes(packed[0], packed[1]));
          EXPECT_TRUE(same_bytes(absmax[0], absmax[1]));
          EXPECT_TRUE(same_bytes(out[0].bytes, out[1].bytes));
          EXPECT_TRUE(same_bytes(out_nested[0].bytes, out_nested[1].bytes));
        }
      for (int64_t bs : {int64_t{1}, int64_t{100}, int64_t{4096}}) {
        const int64_t nb = num_blocks(n, bs);
        std::vector<uint8_t> q[2];
        std::vector<float> absmax[2];
        Buf out[2] = {Buf(dt, n), Buf(dt, n)};
        const TensorView code(dynamic_map_signed().data(), DType::F32, {256});
        for (int k = 0; k < 2; ++k) {
          set_cpu_isa(k == 0 ? "ref" : "avx2");
          q[k].assign(static_cast<size_t>(n), 0);
          absmax[k].assign(static_cast<size_t>(nb), 0.0f);
          const TensorView qv(q[k].data(), DType::U8, {n});
          const TensorView av(absmax[k].data(), DType::F32, {nb});
          quantize_blockwise(xv, code, qv, av, bs);
          dequantize_blockwise(qv, av, code, bs, TensorView(out[k].bytes.data(), dt, {n}));
        }
        SCOPED_TRACE(std::string(dtype_name(dt)) + " 8-bit n=" + std::to_string(n) + " bs=" + std::to_string(bs));
        EXPECT_TRUE(same_bytes(q[0], q[1]));
        EXPECT_TRUE(same_bytes(absmax[0], absmax[1]));
        EXPECT_TRUE(same_bytes(out[0].bytes, out[1].bytes));
      }
    }
}

}  // namespace
}  // namespace nybble
