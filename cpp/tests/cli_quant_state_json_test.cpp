// cli_quant_state_json_test.cpp — the packed QuantState JSON: Python's json.dumps bytes (float
// repr included), and a parser that names the field and rule of every malformed input.
#include <gtest/gtest.h>

#include <cmath>

#include "cli_test_util.hpp"
#include "io/quant_state_json.hpp"

namespace nybble {
namespace {

using test::contains;

TEST(CliQuantStateJson, PythonFloatRepr) {
  // repr() of each value as CPython prints it.
  const std::pair<double, const char*> cases[] = {
      {0.0, "0.0"},
      {-0.0, "-0.0"},
      {1.0, "1.0"},
      {-2.5, "-2.5"},
      {100.0, "100.0"},
      {0.1, "0.1"},
      {12345.678, "12345.678"},
      {0.05164919048547745, "0.05164919048547745"},
      {static_cast<double>(0.3f), "0.30000001192092896"},
      {static_cast<double>(0.123456789f), "0.12345679104328156"},
      {0.0001, "0.0001"},
      {1e-05, "1e-05"},
      {1.5e-07, "1.5e-07"},
      {1234567890123456.0, "1234567890123456.0"},
      {1e16, "1e+16"},
      {123456789012345678.0, "1.2345678901234568e+17"},
      {1e22, "1e+22"},
      {3.4028234663852886e+38, "3.4028234663852886e+38"},
      {1.401298464324817e-45, "1.401298464324817e-45"},
      {-2.2250738585072014e-308, "-2.2250738585072014e-308"},
  };
  for (const auto& [v, want] : cases) EXPECT_EQ(io::python_float_repr(v), want);
  EXPECT_EQ(io::python_float_repr(-2.2250738585072014e-308).size(), io::kMaxPythonFloatRepr);
}

TEST(CliQuantStateJson, FormatIsJsonDumps) {
  io::QuantStateJson qs;
  qs.quant_type = QuantType::NF4;
  qs.blocksize = 64;
  qs.dtype = DType::BF16;
  qs.shape = {4096, 4096};
  EXPECT_EQ(io::format_quant_state_json(qs), R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 4096]})");
  qs.quant_type = QuantType::FP4;
  qs.dtype = DType::F32;
  qs.shape = {64, 128};
  qs.nested = io::QuantStateJson::Nested{256, static_cast<double>(0.05164919f)};
  const std::string want =
      R"({"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [64, 128], "nested_blocksize": 256, )"
      R"("nested_dtype": "float32", "nested_offset": 0.05164919048547745})";
  EXPECT_EQ(io::format_quant_state_json(qs), want);
  EXPECT_GE(io::max_quant_state_json_size(qs), want.size());
  qs.nested->offset = -2.2250738585072014e-308;
  EXPECT_EQ(io::max_quant_state_json_size(qs), io::format_quant_state_json(qs).size());
  qs.shape = {};
  EXPECT_TRUE(contains(io::format_quant_state_json(qs), R"("shape": [])"));
}

io::QuantStateJson parse(const std::string& s) {
  return io::parse_quant_state_json(reinterpret_cast<const uint8_t*>(s.data()), s.size(), "w.quant_state");
}

TEST(CliQuantStateJson, ParsesWhatItWrites) {
  io::QuantStateJson qs;
  qs.quant_type = QuantType::FP4;
  qs.blocksize = 128;
  qs.dtype = DType::F16;
  qs.shape = {3, 5, 7};
  qs.nested = io::QuantStateJson::Nested{256, 0.01171875};
  const auto back = parse(io::format_quant_state_json(qs));
  EXPECT_EQ(back.quant_type, qs.quant_type);
  EXPECT_EQ(back.blocksize, qs.blocksize);
  EXPECT_EQ(back.dtype, qs.dtype);
  EXPECT_EQ(back.shape, qs.shape);
  ASSERT_TRUE(back.nested);
  EXPECT_EQ(back.nested->blocksize, 256);
  EXPECT_EQ(back.nested->offset, 0.01171875);
  EXPECT_EQ(back.numel(), 105);
  // Python also writes an integral offset as an int; it reads as a number.
  EXPECT_EQ(parse(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [2], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0})")
                .nested->offset,
            0.0);
}

TEST(CliQuantStateJson, RejectsMalformed) {
  const std::string base = R"("quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [4, 4])";
  auto rejected = [&](const std::string& text, std::initializer_list<std::string> fragments) {
    try {
      parse(text);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_TRUE(contains(e.what(), "w.quant_state: quant_state JSON")) << e.what();
      for (const auto& f : fragments) EXPECT_TRUE(contains(e.what(), f)) << "'" << f << "' not in: " << e.what();
    }
  };
  EXPECT_NO_THROW(parse("{" + base + "}"));
  rejected("", {"not valid JSON"});
  rejected("{\"quant_type\": \"nf4\"", {"not valid JSON"});
  rejected("{\"quant_type\": \"\xff\"}", {"not valid JSON"});
  rejected("[1]", {"not a JSON object"});
  rejected(R"({"blocksize": 64, "dtype": "float32", "shape": [4, 4]})", {"lacks 'quant_type'"});
  rejected("{" + base + R"(, "absmax": [1, 2]})", {"unexpected key 'absmax'"});
  rejected(R"({"quant_type": "int4", "blocksize": 64, "dtype": "float32", "shape": [4]})", {"'quant_type' = \"int4\""});
  rejected(R"({"quant_type": "nf4", "blocksize": 48, "dtype": "float32", "shape": [4]})", {"'blocksize' = 48", "not a 4-bit blocksize"});
  rejected(R"({"quant_type": "nf4", "blocksize": 64.0, "dtype": "float32", "shape": [4]})", {"'blocksize' = 64.0", "positive integer"});
  rejected(R"({"quant_type": "nf4", "blocksize": -64, "dtype": "float32", "shape": [4]})", {"positive integer"});
  rejected(R"({"quant_type": "nf4", "blocksize": 0, "dtype": "float32", "shape": [4]})", {"positive integer"});
  // Found by the fuzzer (cpp/fuzz/corpus/safetensors/regression_huge_nested_blocksize.safetensors): a
  // block count computed from this overflowed int64.
  rejected("{" + base + R"(, "nested_blocksize": 9223372036854775807, "nested_dtype": "float32", "nested_offset": 0.1})",
           {"'nested_blocksize' = 9223372036854775807 is not a positive integer up to 2^60"});
  rejected(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [4]})", {"'dtype' = \"int8\""});
  rejected(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": null})", {"'shape' = null"});
  rejected(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [4, -1]})", {"non-negative integers"});
  rejected(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [1073741824, 1073741824, 4]})", {"2^60 elements or more"});
  rejected("{" + base + R"(, "nested_blocksize": 256})", {"lacks 'nested_dtype'"});
  rejected("{" + base + R"(, "nested_blocksize": 256, "nested_dtype": "float16", "nested_offset": 0.1})", {"'nested_dtype' = \"float16\""});
  rejected("{" + base + R"(, "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": "0.1"})", {"'nested_offset'", "finite number"});
  rejected("{" + base + R"(, "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 1e999})", {"not valid JSON", "number overflow"});
}

}  // namespace
}  // namespace nybble
