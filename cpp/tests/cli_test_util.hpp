// cli_test_util.hpp — what the tests of the nybble command and its I/O share: safetensors files
// built by hand (independently of io/safetensors_writer), scratch folders, running a subcommand.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli.hpp"
#include "io/safetensors.hpp"
#include "test_util.hpp"

namespace nybble::test {

namespace fs = std::filesystem;

struct RawTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

inline RawTensor raw(const FloatBuffer& b, std::vector<int64_t> shape) {
  return {io::safetensors_dtype_name(b.dtype), std::move(shape), b.bytes};
}

template <class T>
RawTensor raw_values(const std::string& dtype, std::vector<int64_t> shape, const std::vector<T>& values) {
  RawTensor t{dtype, std::move(shape), std::vector<uint8_t>(values.size() * sizeof(T))};
  if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

// The bytes of a safetensors file holding these tensors, in name order (as the format's writers do).
inline std::vector<uint8_t> safetensors_bytes(const std::map<std::string, RawTensor>& tensors,
                                              const std::map<std::string, std::string>& metadata = {{"format", "pt"}}) {
  nlohmann::json h = nlohmann::json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const auto& [name, t] : tensors) {
    h[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
    off += t.bytes.size();
  }
  std::string header = h.dump();
  header.resize((header.size() + 7) / 8 * 8, ' ');
  std::vector<uint8_t> out(8 + header.size() + off);
  for (size_t i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(header.size() >> (8 * i));
  std::memcpy(out.data() + 8, header.data(), header.size());
  size_t at = 8 + header.size();
  for (const auto& [name, t] : tensors) {
    if (!t.bytes.empty()) std::memcpy(out.data() + at, t.bytes.data(), t.bytes.size());
    at += t.bytes.size();
  }
  return out;
}

inline void write_file(const fs::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}
inline void write_file(const fs::path& p, const std::string& text) { write_file(p, std::vector<uint8_t>(text.begin(), text.end())); }

inline std::vector<uint8_t> read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

// A fresh folder under the test temp dir, removed with everything in it at the end of the test.
struct ScratchDir {
  fs::path path;
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = fs::path(::testing::TempDir()) / ("nybble_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" +
                                             std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~ScratchDir() { fs::remove_all(path); }
  fs::path operator/(const std::string& s) const { return path / s; }
};

struct CliResult {
  int status;
  std::string out, err;
};

// `nybble args...`, in-process.
inline CliResult run_cli(const std::vector<std::string>& args) {
  std::ostringstream out, err;
  const int status = cli::run(args, out, err);
  return {status, out.str(), err.str()};
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace nybble::test
