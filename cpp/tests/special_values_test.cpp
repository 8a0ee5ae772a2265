// special_values_test.cpp — what NaN, ±Inf, -0.0 and all-zero blocks produce (docs/formats.md,
// "Non-finite input"), for every CPU kernel set.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "test_util.hpp"

namespace nybble {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

class SpecialValues : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    try {
      set_cpu_isa(GetParam());
    } catch (const Error& e) {
      GTEST_SKIP() << "kernel set " << GetParam() << " not runnable here: " << e.what();
    }
  }
  void TearDown() override { set_cpu_isa("auto"); }
};

// Quantizes one 4-bit block of 64 fp32 values and returns codes and absmax.
std::pair<std::vector<uint8_t>, float> quantize_block(const std::vector<float>& x, QuantType qt) {
  std::vector<uint8_t> packed(32);
  float absmax = -1;
  quantize_4bit(TensorView(x.data(), DType::F32, {64}), TensorView(packed.data(), DType::U8, {32}),
                TensorView(&absmax, DType::F32, {1}), 64, qt);
  std::vector<uint8_t> codes(64);
  for (int64_t i = 0; i < 64; ++i) codes[static_cast<size_t>(i)] = nibble_at(packed.data(), i);
  return {codes, absmax};
}

TEST_P(SpecialValues, FourBitNaNIsIgnoredByAbsmaxAndGetsCodeZero) {
  for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
    std::vector<float> x(64, 0.5f);
    x[3] = kNaN;
    x[10] = -2.0f;
    auto [codes, absmax] = quantize_block(x, qt);
    EXPECT_EQ(absmax, 2.0f);
    EXPECT_EQ(codes[3], 0) << quant_type_name(qt);
    EXPECT_EQ(codes[0], quantize_4bit_value(qt, 0.25f));
  }
}

TEST_P(SpecialValues, FourBitAllZeroBlockDequantizesToZero) {
  for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
    std::vector<float> x(64, 0.0f);
    x[7] = -0.0f;
    auto [codes, absmax] = quantize_block(x, qt);
    EXPECT_EQ(absmax, 0.0f);
    for (uint8_t c : codes) EXPECT_EQ(c, 0);  // normalized 0 * inf = NaN -> lowest code, as the reference
    std::vector<uint8_t> packed(32, 0);
    std::vector<float> out(64, 1.0f);
    dequantize_4bit(TensorView(packed.data(), DType::U8, {32}), BlockScales{TensorView(&absmax, DType::F32, {1}), std::nullopt},
                    64, qt, TensorView(out.data(), DType::F32, {64}));
    for (float v : out) EXPECT_EQ(v, 0.0f);
  }
}

TEST_P(SpecialValues, FourBitInfBlockBecomesNonFinite) {
  std::vector<float> x(64, 0.5f);
  x[5] = kInf;
  auto [codes, absmax] = quantize_block(x, QuantType::NF4);
  EXPECT_EQ(absmax, kInf);
  EXPECT_EQ(codes[5], 0);                      // inf * (1/inf) = NaN -> code 0
  EXPECT_EQ(codes[0], zero_code(QuantType::NF4));  // 0.5 * 0 = 0 -> the code of 0.0
  std::vector<uint8_t> packed(32);
  for (int i = 0; i < 32; ++i) packed[static_cast<size_t>(i)] = pack_nibbles(codes[2 * i], codes[2 * i + 1]);
  std::vector<float> out(64);
  dequantize_4bit(TensorView(packed.data(), DType::U8, {32}), BlockScales{TensorView(&absmax, DType::F32, {1}), std::nullopt}, 64,
                  QuantType::NF4, TensorView(out.data(), DType::F32, {64}));
  EXPECT_TRUE(std::isnan(out[0]));  // 0.0 * inf
  EXPECT_EQ(out[5], -kInf);         // -1.0 * inf
}

TEST_P(SpecialValues, FourBitNegativeZeroAndSignRule) {
  std::vector<float> x(64, 0.0f);
  x[0] = 1.0f;
  x[1] = -0.0f;
  x[2] = -1e-30f;  // tiny negative: FP4 keeps the sign bit on the zero magnitude
  auto [codes, absmax] = quantize_block(x, QuantType::FP4);
  EXPECT_EQ(codes[1], 0b0000);
  EXPECT_EQ(codes[2], 0b1000);
  auto nf = quantize_block(x, QuantType::NF4);
  EXPECT_EQ(nf.first[1], 7);
  EXPECT_EQ(nf.first[2], 7);
}

TEST_P(SpecialValues, EightBitNaNInfAndZeroBlocks) {
  const Code8& map = dynamic_map_signed();
  std::vector<float> x(256, 0.25f);
  x[1] = kNaN;
  for (int i = 128; i < 192; ++i) x[static_cast<size_t>(i)] = 0.0f;  // an all-zero block of 64
  x[200] = -kInf;
  std::vector<uint8_t> q(256);
  std::vector<float> absmax(4);
  quantize_blockwise(TensorView(x.data(), DType::F32, {256}), TensorView(map.data(), DType::F32, {256}),
                     TensorView(q.data(), DType::U8, {256}), TensorView(absmax.data(), DType::F32, {4}), 64);
  EXPECT_EQ(absmax[0], 0.25f);
  EXPECT_EQ(q[1], 0);
  EXPECT_EQ(map[q[0]], 1.0f);
  EXPECT_EQ(absmax[2], 0.0f);
  for (int i = 128; i < 192; ++i) EXPECT_EQ(q[static_cast<size_t>(i)], 0);
  EXPECT_EQ(absmax[3], kInf);
  EXPECT_EQ(q[200], 0);
  EXPECT_EQ(q[201], 127);  // 0.25 * 0 = 0 -> index of 0.0
  std::vector<float> out(256);
  dequantize_blockwise(TensorView(q.data(), DType::U8, {256}), TensorView(absmax.data(), DType::F32, {4}),
                       TensorView(map.data(), DType::F32, {256}), 64, TensorView(out.data(), DType::F32, {256}));
  for (int i = 128; i < 192; ++i) EXPECT_EQ(out[static_cast<size_t>(i)], 0.0f);
  EXPECT_TRUE(std::isnan(out[201]));
}

TEST_P(SpecialValues, Int8RowsWithNaNAndInf) {
  // Row 0: a NaN (ignored by the row max, code 0). Row 1: +inf (row max inf, every code 0).
  // Row 2 with threshold: inf is an outlier and leaves the row max alone.
  std::vector<float> A = {1.0f, kNaN, -0.5f, 0.25f, 1.0f, kInf, -0.5f, 0.25f};
  std::vector<int8_t> CA(8);
  std::vector<float> stats(2);
  int8_vectorwise_quant(TensorView(A.data(), DType::F32, {2, 4}), 0.0f, TensorView(CA.data(), DType::I8, {2, 4}),
                        TensorView(stats.data(), DType::F32, {2}));
  EXPECT_EQ(stats[0], 1.0f);
  EXPECT_EQ(CA[0], 127);
  EXPECT_EQ(CA[1], 0);
  EXPECT_EQ(CA[2], -64);  // -63.5 rounds half to even
  EXPECT_EQ(stats[1], kInf);
  for (int j = 4; j < 8; ++j) EXPECT_EQ(CA[static_cast<size_t>(j)], 0);
  std::vector<uint8_t> outliers(4);
  int8_vectorwise_quant(TensorView(A.data(), DType::F32, {2, 4}), 6.0f, TensorView(CA.data(), DType::I8, {2, 4}),
                        TensorView(stats.data(), DType::F32, {2}), TensorView(outliers.data(), DType::U8, {4}));
  EXPECT_EQ(stats[1], 1.0f);
  EXPECT_EQ(outliers, (std::vector<uint8_t>{0, 1, 0, 0}));
  EXPECT_EQ(CA[1], 0);  // the whole outlier column is zeroed
  EXPECT_EQ(CA[5], 0);
  EXPECT_EQ(CA[4], 127);
}

TEST_P(SpecialValues, Int8RowMaxIsFullScaleWhenTheQuotientRoundsAbove127) {
  // For these fp32 values (x * 127) / x rounds to 127.0000076: the row's largest element must
  // still get +-127 (in the vector body, column 2, and in the scalar tail, column 9).
  const float a = 0.6404226422309875f, b = -0.6651946902275085f;
  std::vector<float> A(2 * 10, 0.125f);
  A[2] = a;
  A[10 + 9] = b;
  std::vector<int8_t> CA(A.size());
  std::vector<float> stats(2);
  int8_vectorwise_quant(TensorView(A.data(), DType::F32, {2, 10}), 0.0f, TensorView(CA.data(), DType::I8, {2, 10}),
                        TensorView(stats.data(), DType::F32, {2}));
  EXPECT_EQ(stats[0], a);
  EXPECT_EQ(CA[2], 127);
  EXPECT_EQ(stats[1], -b);
  EXPECT_EQ(CA[10 + 9], -127);
}

TEST_P(SpecialValues, Gemm4bitPropagatesNaNFromA) {
  const int64_t K = 64, N = 2;
  std::vector<float> W(static_cast<size_t>(N * K), 0.5f);
  std::vector<uint8_t> packed(static_cast<size_t>(N * K / 2));
  std::vector<float> absmax(2);
  quantize_4bit(TensorView(W.data(), DType::F32, {N * K}), TensorView(packed.data(), DType::U8, {N * K / 2}),
                TensorView(absmax.data(), DType::F32, {2}), 64, QuantType::NF4);
  std::vector<float> A(2 * K, 1.0f), out(4);
  A[3] = kNaN;
  gemm_4bit(TensorView(A.data(), DType::F32, {2, K}), TensorView(packed.data(), DType::U8, {N * K / 2}),
            BlockScales{TensorView(absmax.data(), DType::F32, {2}), std::nullopt}, 64, QuantType::NF4, std::nullopt,
            TensorView(out.data(), DType::F32, {2, N}));
  EXPECT_TRUE(std::isnan(out[0]));
  EXPECT_TRUE(std::isnan(out[1]));
  EXPECT_FLOAT_EQ(out[2], 32.0f);
}

INSTANTIATE_TEST_SUITE_P(KernelSets, SpecialValues, ::testing::Values("ref", "avx2", "avx512"));

}  // namespace
}  // namespace nybble
