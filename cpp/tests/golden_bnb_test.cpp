// golden_bnb_test.cpp — nybble's CPU oracle against the outputs of bitsandbytes 0.50.2 (its CUDA
// build on an H200) stored in tests/data/golden: the compatibility contract.
//
// Codes must be identical. The one admitted difference is Note [Normalized value]: the
// reference's CUDA build scales by an approximate reciprocal, so where x * (1/absmax) lies within
// two ulps of a decision threshold its code may differ; every such mismatch is checked to be
// exactly that case (nudging the normalized value by one or two ulps gives the reference's code).
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

#include "io/safetensors.hpp"
#include "test_util.hpp"

namespace nybble {
namespace {

using test::FloatBuffer;

const io::SafetensorsFile& golden() {
  static const io::SafetensorsFile f = io::SafetensorsFile::read(NYBBLE_GOLDEN_FILE);
  return f;
}

struct GoldenInput {
  DType dtype;
  std::vector<uint8_t> bytes;
  int64_t n;
  float at(int64_t i) const { return load_as_float(bytes.data(), dtype, i); }
  TensorView view() const { return TensorView(bytes.data(), dtype, {n}); }
};

GoldenInput input(const std::string& dt) {
  const auto& g = golden();
  const std::string name = "input.x_" + dt;
  GoldenInput in{dt == "float32" ? DType::F32 : dt == "float16" ? DType::F16 : DType::BF16, {}, 0};
  const auto& t = g.info(name);
  in.bytes.assign(g.data(name), g.data(name) + (t.end - t.begin));
  in.n = t.shape[0];
  return in;
}

bool same_bits(float a, float b) { return float_bits(a) == float_bits(b); }

// True when nudging s by one or two ulps either way yields `want` under `rule`: the reference's
// reciprocal is off by up to one ulp, and the product with x rounds once more.
template <class Rule>
bool ulps_from(float s, uint8_t want, Rule rule) {
  for (float dir : {INFINITY, -INFINITY}) {
    float v = s;
    for (int k = 0; k < 2; ++k) {
      v = std::nextafter(v, dir);
      if (rule(v) == want) return true;
    }
  }
  return false;
}

TEST(GoldenBnb, DynamicMapsAreBitIdentical) {
  const auto sgn = golden().as<float>("map.dynamic_signed", "F32");
  const auto uns = golden().as<float>("map.dynamic_unsigned", "F32");
  for (int i = 0; i < 256; ++i) {
    EXPECT_TRUE(same_bits(dynamic_map_signed()[i], sgn[i])) << "signed[" << i << "]";
    EXPECT_TRUE(same_bits(dynamic_map_unsigned()[i], uns[i])) << "unsigned[" << i << "]";
  }
  // Anchors of §1.3.
  EXPECT_EQ(dynamic_map_signed()[127], 0.0f);
  EXPECT_EQ(dynamic_map_signed()[255], 1.0f);
  EXPECT_EQ(dynamic_map_unsigned()[0], 0.0f);
}

TEST(GoldenBnb, FourBitTablesAreBitIdentical) {
  for (QuantType qt : {QuantType::NF4, QuantType::FP4}) {
    const std::string q(quant_type_name(qt));
    const auto m = golden().as<float>("q4." + q + ".bs64.dq0.float32.qs.quant_map", "F32");
    ASSERT_EQ(m.size(), 16u);
    for (size_t i = 0; i < 16; ++i) {
      EXPECT_TRUE(same_bits(quant_map(qt)[i], m[i])) << q << " quant_map " << i;
      EXPECT_EQ(code_table(qt)[i], m[i]) << q << " code " << i;  // -0.0 == +0.0 for FP4 code 8
    }
  }
}

class GoldenFourBit : public ::testing::TestWithParam<std::tuple<QuantType, int64_t, std::string>> {};

TEST_P(GoldenFourBit, QuantizeDequantizeAndDoubleQuant) {
  const auto [qt, bs, dt] = GetParam();
  const auto& g = golden();
  const std::string key = "q4." + std::string(quant_type_name(qt)) + ".bs" + std::to_string(bs);
  const GoldenInput x = input(dt);
  const int64_t n = x.n, nb = num_blocks(n, bs);

  std::vector<uint8_t> packed(static_cast<size_t>(packed_4bit_bytes(n)));
  std::vector<float> absmax(static_cast<size_t>(nb));
  quantize_4bit(x.view(), TensorView(packed.data(), DType::U8, {static_cast<int64_t>(packed.size())}),
                TensorView(absmax.data(), DType::F32, {nb}), bs, qt);

  const auto gpacked = g.as<uint8_t>(key + ".dq0." + dt + ".packed", "U8");
  const auto gabsmax = g.as<float>(key + ".dq0." + dt + ".qs.absmax", "F32");
  ASSERT_EQ(gpacked.size(), packed.size());
  for (int64_t b = 0; b < nb; ++b) ASSERT_TRUE(same_bits(absmax[b], gabsmax[b])) << "absmax block " << b;
  int ulp_cases = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t mine = nibble_at(packed.data(), i), want = nibble_at(gpacked.data(), i);
    if (mine == want) continue;
    const float s = x.at(i) * (1.0f / absmax[i / bs]);
    EXPECT_TRUE(ulps_from(s, want, [qt = qt](float v) { return quantize_4bit_value(qt, v); }))
        << "element " << i << ": code " << int(mine) << " vs reference " << int(want) << " (normalized " << s << ")";
    ++ulp_cases;
  }
  EXPECT_LE(ulp_cases, 4) << "more reciprocal-rounding cases than the golden input is known to hold";
  if (n % 2) {
    EXPECT_EQ(packed.back() & 0x0F, zero_code(qt)) << "odd tail padded with the code of 0.0";
  }

  // Dequantizing the reference's bytes gives the reference's values bit for bit.
  FloatBuffer out(x.dtype, n);
  dequantize_4bit(TensorView(gpacked.data(), DType::U8, {static_cast<int64_t>(gpacked.size())}),
                  BlockScales{TensorView(gabsmax.data(), DType::F32, {nb}), std::nullopt}, bs, qt, out.view());
  const std::string gname = key + ".dq0." + dt + ".dequant";
  const uint8_t* gdeq = g.data(gname);
  EXPECT_EQ(0, std::memcmp(out.bytes.data(), gdeq, out.bytes.size())) << gname;

  // Double quantization: offset, nested codes and nested absmax.
  const std::string dq = key + ".dq1." + dt + ".qs.";
  const auto qsbytes = g.as<uint8_t>(dq + "quant_state.bitsandbytes__" + std::string(quant_type_name(qt)), "U8");
  const auto js = nlohmann::json::parse(qsbytes.begin(), qsbytes.end());
  const float goffset = js["nested_offset"].get<float>();
  const float offset = absmax_mean(TensorView(absmax.data(), DType::F32, {nb}));
  EXPECT_LE(std::abs(static_cast<int64_t>(float_bits(offset)) - static_cast<int64_t>(float_bits(goffset))), 1)
      << "offset " << offset << " vs reference " << goffset << " (Note [Offset])";
  const int64_t nnb = num_blocks(nb, kNestedBlocksize);
  std::vector<uint8_t> qabsmax(static_cast<size_t>(nb));
  std::vector<float> nested(static_cast<size_t>(nnb));
  quantize_absmax_nested(TensorView(absmax.data(), DType::F32, {nb}), goffset, TensorView(qabsmax.data(), DType::U8, {nb}),
                         TensorView(nested.data(), DType::F32, {nnb}));
  EXPECT_EQ(qabsmax, g.as<uint8_t>(dq + "absmax", "U8"));
  const auto gnested = g.as<float>(dq + "nested_absmax", "F32");
  for (int64_t b = 0; b < nnb; ++b) EXPECT_TRUE(same_bits(nested[b], gnested[b]));
  const auto gnmap = g.as<float>(dq + "nested_quant_map", "F32");
  EXPECT_EQ(0, std::memcmp(gnmap.data(), dynamic_map_signed().data(), 1024));
  EXPECT_EQ(js["blocksize"].get<int64_t>(), bs);
  EXPECT_EQ(js["nested_blocksize"].get<int64_t>(), kNestedBlocksize);

  // Dequantizing the reference's double-quantized state gives its values bit for bit.
  const auto gq = g.as<uint8_t>(dq + "absmax", "U8");
  const auto gpacked1 = g.as<uint8_t>(key + ".dq1." + dt + ".packed", "U8");
  EXPECT_EQ(gpacked1, gpacked);
  BlockScales nested_scales{TensorView(gq.data(), DType::U8, {nb}),
                            NestedAbsmax{TensorView(gnested.data(), DType::F32, {nnb}),
                                         TensorView(gnmap.data(), DType::F32, {256}), goffset, kNestedBlocksize}};
  dequantize_4bit(TensorView(gpacked1.data(), DType::U8, {static_cast<int64_t>(gpacked1.size())}), nested_scales, bs, qt,
                  out.view());
  const std::string gname1 = key + ".dq1." + dt + ".dequant";
  EXPECT_EQ(0, std::memcmp(out.bytes.data(), g.data(gname1), out.bytes.size())) << gname1;
}

INSTANTIATE_TEST_SUITE_P(AllCases, GoldenFourBit,
                         ::testing::Combine(::testing::Values(QuantType::NF4, QuantType::FP4),
                                            ::testing::ValuesIn(k4bitBlocksizes),
                                            ::testing::Values("float32", "float16", "bfloat16")));

class GoldenEightBit : public ::testing::TestWithParam<std::tuple<int64_t, std::string>> {};

TEST_P(GoldenEightBit, QuantizeAndDequantize) {
  const auto [bs, dt] = GetParam();
  const auto& g = golden();
  const std::string key = "q8.bs" + std::to_string(bs) + "." + dt;
  const GoldenInput x = input(dt);
  const int64_t n = x.n, nb = num_blocks(n, bs);
  const Code8& map = dynamic_map_signed();
  const TensorView code(map.data(), DType::F32, {256});
  std::vector<uint8_t> q(static_cast<size_t>(n));
  std::vector<float> absmax(static_cast<size_t>(nb));
  quantize_blockwise(x.view(), code, TensorView(q.data(), DType::U8, {n}), TensorView(absmax.data(), DType::F32, {nb}), bs);
  const auto gq = g.as<uint8_t>(key + ".codes", "U8");
  const auto ga = g.as<float>(key + ".absmax", "F32");
  for (int64_t b = 0; b < nb; ++b) ASSERT_TRUE(same_bits(absmax[b], ga[b]));
  for (int64_t i = 0; i < n; ++i) {
    if (q[i] == gq[i]) continue;
    const float s = x.at(i) * (1.0f / absmax[i / bs]);
    EXPECT_TRUE(ulps_from(s, gq[i], [&](float v) { return quantize_8bit_value(map.data(), v); })) << "element " << i;
  }
  FloatBuffer out(x.dtype, n);
  dequantize_blockwise(TensorView(gq.data(), DType::U8, {n}), TensorView(ga.data(), DType::F32, {nb}), code, bs, out.view());
  EXPECT_EQ(0, std::memcmp(out.bytes.data(), g.data(key + ".dequant"), out.bytes.size()));
}

INSTANTIATE_TEST_SUITE_P(AllCases, GoldenEightBit,
                         ::testing::Combine(::testing::ValuesIn(k8bitCudaBlocksizes),
                                            ::testing::Values("float32", "float16", "bfloat16")));

// True when x * 127 / stat is within one ulp of a rounding tie (k + 0.5): the reference's CUDA
// build divides with an approximate fast-math division there.
bool near_int8_tie(float x, float stat) {
  const float v = (x * 127.0f) / stat;
  const float frac = std::fabs(v - std::trunc(v));
  return std::fabs(frac - 0.5f) <= 2.0f * std::fabs(std::nextafter(v, INFINITY) - v);
}

TEST(GoldenBnb, Int8VectorwiseQuant) {
  const auto& g = golden();
  const auto A = g.as<uint16_t>("int8.A_f16", "F16");
  const int64_t rows = 33, cols = 257;
  for (float thr : {0.0f, 6.0f}) {
    const std::string key = thr == 0.0f ? "int8.vq.thr0.0." : "int8.vq.thr6.0.";
    std::vector<int8_t> CA(static_cast<size_t>(rows * cols));
    std::vector<float> stats(rows);
    std::vector<uint8_t> mask(cols);
    int8_vectorwise_quant(TensorView(A.data(), DType::F16, {rows, cols}), thr, TensorView(CA.data(), DType::I8, {rows, cols}),
                          TensorView(stats.data(), DType::F32, {rows}), TensorView(mask.data(), DType::U8, {cols}));
    const auto gCA = g.as<int8_t>(key + "CA", "I8");
    const auto gstats = g.as<float>(key + "row_stats", "F32");
    for (int64_t r = 0; r < rows; ++r) EXPECT_TRUE(same_bits(stats[r], gstats[r])) << "row " << r;
    for (int64_t i = 0; i < rows * cols; ++i) {
      if (CA[i] == gCA[i]) continue;
      EXPECT_EQ(std::abs(CA[i] - gCA[i]), 1);
      EXPECT_TRUE(near_int8_tie(half_to_float(A[i]), stats[i / cols])) << "element " << i;
    }
    std::vector<int64_t> cols_found;
    for (int64_t j = 0; j < cols; ++j)
      if (mask[j]) cols_found.push_back(j);
    if (thr > 0) EXPECT_EQ(cols_found, g.as<int64_t>(key + "outlier_cols", "I64"));
    else EXPECT_TRUE(cols_found.empty());
  }
}

TEST(GoldenBnb, Int8MatmulAndDequant) {
  const auto& g = golden();
  const int64_t M = 33, N = 65, K = 257;
  const auto W = g.as<uint16_t>("int8.W_f16", "F16");
  const auto CA = g.as<int8_t>("int8.vq.thr0.0.CA", "I8");
  const auto row_stats = g.as<float>("int8.vq.thr0.0.row_stats", "F32");
  std::vector<int8_t> CB(static_cast<size_t>(N * K));
  std::vector<float> col_stats(N);
  int8_vectorwise_quant(TensorView(W.data(), DType::F16, {N, K}), 0.0f, TensorView(CB.data(), DType::I8, {N, K}),
                        TensorView(col_stats.data(), DType::F32, {N}));
  std::vector<int32_t> acc(static_cast<size_t>(M * N));
  int8_linear_matmul(TensorView(CA.data(), DType::I8, {M, K}), TensorView(CB.data(), DType::I8, {N, K}),
                     TensorView(acc.data(), DType::I32, {M, N}));
  const auto gacc = g.as<int32_t>("int8.mm.acc_i32", "I32");
  for (int64_t n = 0; n < N; ++n) {
    bool column_differs = false;
    for (int64_t m = 0; m < M; ++m) column_differs |= acc[m * N + n] != gacc[m * N + n];
    if (!column_differs) continue;
    // The reference's CB row differs from nybble's only at a rounding tie (see near_int8_tie).
    bool has_tie = false;
    for (int64_t k = 0; k < K; ++k) has_tie |= near_int8_tie(half_to_float(W[n * K + k]), col_stats[n]);
    EXPECT_TRUE(has_tie) << "column " << n;
  }
  // mm_dequant of the reference's accumulator: fp16 results identical.
  std::vector<uint16_t> out(static_cast<size_t>(M * N));
  int8_mm_dequant(TensorView(gacc.data(), DType::I32, {M, N}), TensorView(row_stats.data(), DType::F32, {M}),
                  TensorView(col_stats.data(), DType::F32, {N}), std::nullopt, TensorView(out.data(), DType::F16, {M, N}));
  EXPECT_EQ(out, g.as<uint16_t>("int8.mm.dequant_f16", "F16"));
}

}  // namespace
}  // namespace nybble
