// io/safetensors_writer.hpp — writes a safetensors file tensor by tensor, in any order.
//
// All tensors are declared first, so that each has its place in the file before any data is
// written; then each is written once, straight to its place (no tensor is held back but the
// small ones of unknown length). Layout: tensors sorted by element size, largest first, so every
// tensor starts at a multiple of its element size (the data section starts at a multiple of 8, as
// the safetensors library writes it), then the byte tensors whose length is only known when they
// are written (a QuantState's JSON). The header is written last, into the space reserved for it
// when its longest form was known, padded with spaces (valid JSON whitespace).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace nybble::io {

class SafetensorsWriter {
 public:
  // Creates `path` (which must not exist). metadata: the header's "__metadata__" (omitted if empty).
  SafetensorsWriter(std::string path, std::map<std::string, std::string> metadata);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Declares a tensor of a safetensors dtype ("F32", "U8", ...) and shape.
  void add(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape);
  // Declares a 1-D U8 tensor whose length (at most max_bytes) is known only when it is written.
  void add_bytes(const std::string& name, uint64_t max_bytes);

  // Writes a declared tensor's data (after the last declaration); nbytes must be its size.
  void write(const std::string& name, const void* data, uint64_t nbytes);
  // Writes the header and the byte tensors, flushes the file to disk and closes it. Every
  // declared tensor must have been written.
  void finish();

  // Bytes of tensor data (known after the last declaration).
  uint64_t data_bytes() const;

 private:
  struct Entry {
    std::string dtype;
    std::vector<int64_t> shape;
    uint64_t nbytes = 0;  // for a byte tensor: its maximum until written
    uint64_t begin = 0;
    bool late = false, written = false;
    std::vector<uint8_t> late_data;
  };
  void lay_out();
  std::string header(bool reserve) const;
  void pwrite_all(const void* data, uint64_t nbytes, uint64_t offset);
  [[noreturn]] void fail(const std::string& what) const;

  std::string path_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, Entry> entries_;
  std::vector<std::string> order_;  // declaration order
  int fd_ = -1;
  bool laid_out_ = false, finished_ = false;
  uint64_t header_bytes_ = 0, fixed_bytes_ = 0;
};

}  // namespace nybble::io
