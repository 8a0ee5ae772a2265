// io/safetensors.hpp — a bounds-checked safetensors reader.
//
// File layout: u64 little-endian header length H, H bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data; offsets are relative to the data's start. Nothing in the header is trusted:
// every offset, size and shape is checked against the file before it is used.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "nybble/dtype.hpp"

namespace nybble::io {

struct SafetensorsTensor {
  std::string dtype;            // as written: "F32", "BF16", "U8", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range within the data section
};

class SafetensorsFile {
 public:
  // Reads and validates the whole file; throws nybble::Error naming the file and the problem.
  static SafetensorsFile read(const std::string& path);
  static SafetensorsFile parse(std::vector<uint8_t> bytes, const std::string& origin);

  const std::map<std::string, SafetensorsTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  const SafetensorsTensor& info(const std::string& name) const;
  const uint8_t* data(const std::string& name) const;

  // Copies a tensor's data, checking the dtype (e.g. "F32") and element size.
  template <class T>
  std::vector<T> as(const std::string& name, const std::string& dtype) const {
    const auto& t = check_dtype(name, dtype, sizeof(T));
    std::vector<T> v((t.end - t.begin) / sizeof(T));
    if (!v.empty()) std::memcpy(v.data(), data(name), t.end - t.begin);
    return v;
  }

 private:
  const SafetensorsTensor& check_dtype(const std::string& name, const std::string& dtype, size_t size) const;

  std::string origin_;
  std::vector<uint8_t> bytes_;
  uint64_t data_start_ = 0;
  std::map<std::string, SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Element size of a safetensors dtype name, or 0 when unknown.
int64_t safetensors_dtype_size(const std::string& dtype);

}  // namespace nybble::io
