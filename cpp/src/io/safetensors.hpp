// io/safetensors.hpp — a bounds-checked safetensors reader.
//
// File layout: u64 little-endian header length H, H bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data; offsets are relative to the data's start. Nothing in the header is trusted:
// every offset, size and shape is checked against the file before it is used, and the tensors
// must tile the data section exactly (sorted by offset, no overlap, no gap, nothing after the
// last), the rule of the safetensors library itself.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nybble/dtype.hpp"

namespace nybble::io {

struct SafetensorsTensor {
  std::string dtype;            // as written: "F32", "BF16", "U8", ...
  std::vector<int64_t> shape;   // every dimension and their product are below 2^60
  uint64_t begin = 0, end = 0;  // byte range within the data section
  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps the file read-only and validates its header. Tensor data is paged in when first read,
  // so opening a large checkpoint reads only its header. Throws nybble::Error naming the file
  // and the problem.
  static SafetensorsFile read(const std::string& path);
  static SafetensorsFile parse(std::vector<uint8_t> bytes, const std::string& origin);

  const std::string& origin() const { return origin_; }
  uint64_t file_size() const { return size_; }
  const std::map<std::string, SafetensorsTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  const SafetensorsTensor& info(const std::string& name) const;
  const uint8_t* data(const std::string& name) const;
  // Tensor names in the order of their data (the order that reads the file front to back).
  std::vector<std::string> names_by_offset() const;
  // Tells the OS that a tensor's pages will not be read again: they leave this process's memory
  // (a mapped file's pages stay in the page cache). Streaming a model through keeps it small.
  void release(const std::string& name) const;

  // Copies a tensor's data, checking the dtype (e.g. "F32") and element size.
  template <class T>
  std::vector<T> as(const std::string& name, const std::string& dtype) const {
    const auto& t = check_dtype(name, dtype, sizeof(T));
    std::vector<T> v(t.nbytes() / sizeof(T));
    if (!v.empty()) std::memcpy(v.data(), data(name), t.nbytes());
    return v;
  }

 private:
  static SafetensorsFile parse_mapped(std::shared_ptr<const uint8_t> bytes, uint64_t size, const std::string& origin);
  const SafetensorsTensor& check_dtype(const std::string& name, const std::string& dtype, size_t size) const;

  std::string origin_;
  std::shared_ptr<const uint8_t> bytes_;  // a read-only mapping of the file, or owned bytes
  bool mapped_ = false;
  uint64_t size_ = 0;
  uint64_t data_start_ = 0;
  std::map<std::string, SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Element size of a safetensors dtype name, or 0 when unknown.
int64_t safetensors_dtype_size(const std::string& dtype);
// The nybble dtype of a safetensors dtype name (F32, F16, BF16, U8, I8, I32, I64), if any, and
// back.
std::optional<DType> dtype_from_safetensors(const std::string& dtype);
std::string safetensors_dtype_name(DType t);

}  // namespace nybble::io
