// io/safetensors.cpp — parsing and validating a safetensors file (format in safetensors.hpp).
#include "io/safetensors.hpp"

#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "nybble/error.hpp"

namespace nybble::io {
namespace {

// A header larger than this is refused rather than parsed (the format's own limit is 100 MB).
constexpr uint64_t kMaxHeader = 100ull << 20;

[[noreturn]] void bad(const std::string& origin, const std::string& what) {
  throw Error(ErrorKind::Value, "safetensors file '" + origin + "': " + what);
}

}  // namespace

int64_t safetensors_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "U8" || d == "I8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

SafetensorsFile SafetensorsFile::read(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw Error(ErrorKind::Runtime, "safetensors file '" + path + "': cannot be opened");
  const std::streamoff size = in.tellg();
  if (size < 0) throw Error(ErrorKind::Runtime, "safetensors file '" + path + "': cannot be read");
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.seekg(0);
  if (size > 0 && !in.read(reinterpret_cast<char*>(bytes.data()), size))
    throw Error(ErrorKind::Runtime, "safetensors file '" + path + "': read failed");
  return parse(std::move(bytes), path);
}

SafetensorsFile SafetensorsFile::parse(std::vector<uint8_t> bytes, const std::string& origin) {
  SafetensorsFile f;
  f.origin_ = origin;
  f.bytes_ = std::move(bytes);
  const uint64_t size = f.bytes_.size();
  if (size < 8) bad(origin, "is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | f.bytes_[static_cast<size_t>(i)];
  if (hlen > kMaxHeader) bad(origin, "header length " + std::to_string(hlen) + " exceeds the 100 MB limit");
  if (hlen > size - 8) bad(origin, "header length " + std::to_string(hlen) + " runs past the end of the file (" + std::to_string(size) + " bytes)");
  f.data_start_ = 8 + hlen;
  const uint64_t data_size = size - f.data_start_;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(f.bytes_.begin() + 8, f.bytes_.begin() + static_cast<std::ptrdiff_t>(f.data_start_));
  } catch (const nlohmann::json::exception& e) {
    bad(origin, std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!header.is_object()) bad(origin, "header is not a JSON object");
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) bad(origin, "__metadata__ is not an object");
      for (const auto& [k, mv] : v.items()) {
        if (!mv.is_string()) bad(origin, "__metadata__['" + k + "'] is not a string");
        f.metadata_[k] = mv.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      bad(origin, where + " lacks dtype, shape or data_offsets");
    SafetensorsTensor t;
    if (!v["dtype"].is_string()) bad(origin, where + ": dtype is not a string");
    t.dtype = v["dtype"].get<std::string>();
    const int64_t esize = safetensors_dtype_size(t.dtype);
    if (esize == 0) bad(origin, where + ": dtype '" + t.dtype + "' is unknown");
    if (!v["shape"].is_array()) bad(origin, where + ": shape is not an array");
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) bad(origin, where + ": shape holds a value that is not a non-negative integer");
      const uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / dim / 8) bad(origin, where + ": shape is too large");
      numel *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      bad(origin, where + ": data_offsets must be two non-negative integers");
    t.begin = off[0].get<uint64_t>();
    t.end = off[1].get<uint64_t>();
    if (t.begin > t.end || t.end > data_size)
      bad(origin, where + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                      "] fall outside the data section of " + std::to_string(data_size) + " bytes");
    if (t.end - t.begin != numel * static_cast<uint64_t>(esize))
      bad(origin, where + ": holds " + std::to_string(t.end - t.begin) + " bytes, its dtype and shape need " +
                      std::to_string(numel * static_cast<uint64_t>(esize)));
    f.tensors_.emplace(name, std::move(t));
  }
  return f;
}

const SafetensorsTensor& SafetensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(ErrorKind::Value, "safetensors file '" + origin_ + "': no tensor named '" + name + "'");
  return it->second;
}

const uint8_t* SafetensorsFile::data(const std::string& name) const {
  return bytes_.data() + data_start_ + info(name).begin;
}

const SafetensorsTensor& SafetensorsFile::check_dtype(const std::string& name, const std::string& dtype, size_t size) const {
  const auto& t = info(name);
  if (t.dtype != dtype || static_cast<size_t>(safetensors_dtype_size(dtype)) != size)
    throw Error(ErrorKind::Type, "safetensors file '" + origin_ + "': tensor '" + name + "' has dtype " + t.dtype +
                                     ", asked for " + dtype);
  return t;
}

}  // namespace nybble::io
