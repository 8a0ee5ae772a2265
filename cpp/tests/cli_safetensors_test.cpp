// cli_safetensors_test.cpp — the safetensors reader's rules against truncated and malicious files,
// and the writer: any write order, aligned layout, byte tensors of late length, read back intact.
#include <gtest/gtest.h>

#include "cli_test_util.hpp"
#include "io/safetensors.hpp"
#include "io/safetensors_writer.hpp"

namespace nybble {
namespace {

using namespace test;

// Parses bytes whose header is `header` (JSON text) followed by `data_size` zero bytes.
io::SafetensorsFile parse_header(const std::string& header, size_t data_size) {
  std::vector<uint8_t> b(8 + header.size() + data_size);
  for (size_t i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(header.size() >> (8 * i));
  std::memcpy(b.data() + 8, header.data(), header.size());
  return io::SafetensorsFile::parse(std::move(b), "x.safetensors");
}

void expect_rejected(const std::string& header, size_t data_size, std::initializer_list<std::string> fragments) {
  try {
    parse_header(header, data_size);
    ADD_FAILURE() << "accepted: " << header;
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "'x.safetensors'")) << e.what();
    for (const auto& f : fragments) EXPECT_TRUE(contains(e.what(), f)) << "'" << f << "' not in: " << e.what();
  }
}

TEST(CliSafetensors, RejectsMalformedHeaders) {
  const std::string t = R"("a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";
  EXPECT_NO_THROW(parse_header("{" + t + "}", 8));
  expect_rejected("{" + t + "}", 12, {"4 bytes after the last tensor"});
  expect_rejected("{" + t + "}", 4, {"tensor 'a'", "[0, 8]", "outside the data section of 4 bytes"});
  expect_rejected("[1, 2]", 0, {"not a JSON object"});
  expect_rejected("{\"a\": ", 0, {"not valid JSON"});
  expect_rejected(R"({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}})", 8, {"tensor 'a'", "dtype 'F33' is unknown"});
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8, {"not a non-negative integer"});
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8, {"holds 8 bytes", "need 12"});
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [0, 4611686018427387904], "data_offsets": [0, 0]}})", 0, {"shape is too large"});
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8, {"outside the data section"});
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                  12, {"tensor 'b'", "overlaps tensor 'a'"});
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", 8, {"gap of 4 bytes before tensor 'a'"});
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [2]}})", 8, {"lacks dtype, shape or data_offsets"});
  expect_rejected(R"({"__metadata__": {"format": 1}})", 0, {"__metadata__['format'] is not a string"});
}

TEST(CliSafetensors, RejectsTruncatedFiles) {
  ScratchDir dir;
  const auto bytes = safetensors_bytes({{"w", raw_values<float>("F32", {4}, {1, 2, 3, 4})}});
  for (size_t keep : {size_t{0}, size_t{5}, size_t{20}, bytes.size() - 1}) {
    const auto path = dir / ("cut" + std::to_string(keep) + ".safetensors");
    write_file(path, std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(keep)));
    try {
      io::SafetensorsFile::read(path.string());
      ADD_FAILURE() << "a file cut to " << keep << " bytes was accepted";
    } catch (const Error& e) {
      EXPECT_TRUE(contains(e.what(), path.string())) << e.what();
    }
  }
  EXPECT_THROW(io::SafetensorsFile::read((dir / "missing.safetensors").string()), Error);
  EXPECT_THROW(io::SafetensorsFile::read(dir.path.string()), Error);  // a folder
}

TEST(CliSafetensors, ReadsMappedFile) {
  ScratchDir dir;
  const auto path = dir / "m.safetensors";
  write_file(path, safetensors_bytes({{"b", raw_values<int8_t>("I8", {3}, {1, -2, 3})}, {"a", raw_values<float>("F32", {2}, {0.5f, -1.5f})}}));
  const auto f = io::SafetensorsFile::read(path.string());
  EXPECT_EQ(f.as<float>("a", "F32"), (std::vector<float>{0.5f, -1.5f}));
  EXPECT_EQ(f.as<int8_t>("b", "I8"), (std::vector<int8_t>{1, -2, 3}));
  EXPECT_EQ(f.names_by_offset(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  f.release("a");  // the pages are read again from the file when touched
  EXPECT_EQ(f.as<float>("a", "F32"), (std::vector<float>{0.5f, -1.5f}));
}

TEST(CliSafetensors, WriterLaysOutAlignedAndReadsBack) {
  ScratchDir dir;
  const auto path = (dir / "w.safetensors").string();
  std::vector<uint8_t> u8(7, 0xAB);
  std::vector<float> f32 = {1.0f, 2.0f, 3.0f};
  std::vector<int64_t> i64 = {-5, 6};
  const std::string json = "{\"x\": 1}";
  {
    io::SafetensorsWriter w(path, {{"format", "pt"}});
    w.add("bytes", "U8", {7, 1});
    w.add("floats", "F32", {3});
    w.add_bytes("late", 64);
    w.add("longs", "I64", {2});
    w.add("scalar", "U8", {});
    w.write("late", json.data(), json.size());  // any order
    w.write("floats", f32.data(), 12);
    w.write("bytes", u8.data(), 7);
    const uint8_t zero = 0;
    w.write("scalar", &zero, 1);
    w.write("longs", i64.data(), 16);
    w.finish();
  }
  const auto f = io::SafetensorsFile::read(path);
  EXPECT_EQ(f.as<uint8_t>("bytes", "U8"), u8);
  EXPECT_EQ(f.as<float>("floats", "F32"), f32);
  EXPECT_EQ(f.as<int64_t>("longs", "I64"), i64);
  EXPECT_EQ(f.info("late").shape, (std::vector<int64_t>{static_cast<int64_t>(json.size())}));
  EXPECT_EQ(f.info("scalar").shape, (std::vector<int64_t>{}));
  const auto late = f.as<uint8_t>("late", "U8");
  EXPECT_EQ(std::string(late.begin(), late.end()), json);
  // Every tensor starts at a multiple of its element size, in the file as in the data section.
  for (const auto& [name, t] : f.tensors()) {
    const auto esize = static_cast<uint64_t>(io::safetensors_dtype_size(t.dtype));
    EXPECT_EQ(t.begin % esize, 0u) << name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(f.data(name)) % esize, 0u) << name;
  }
}

TEST(CliSafetensors, WriterRefusesMisuse) {
  ScratchDir dir;
  const auto path = (dir / "w.safetensors").string();
  io::SafetensorsWriter w(path, {});
  w.add("a", "F32", {2});
  EXPECT_THROW(w.add("a", "F32", {2}), Error);
  EXPECT_THROW(w.add("b", "X9", {2}), Error);
  const float v[3] = {1, 2, 3};
  EXPECT_THROW(w.write("a", v, 12), Error);  // 3 floats for 2
  EXPECT_THROW(w.write("zzz", v, 8), Error);
  EXPECT_THROW(w.finish(), Error);  // "a" not written
  EXPECT_THROW(io::SafetensorsWriter(path, {}), Error);  // exists
}

}  // namespace
}  // namespace nybble
