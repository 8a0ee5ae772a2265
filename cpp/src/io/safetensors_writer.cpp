// io/safetensors_writer.cpp — the layout and the writes (see safetensors_writer.hpp).
#include "io/safetensors_writer.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "io/safetensors.hpp"
#include "nybble/error.hpp"

namespace nybble::io {

SafetensorsWriter::SafetensorsWriter(std::string path, std::map<std::string, std::string> metadata)
    : path_(std::move(path)), metadata_(std::move(metadata)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(std::string("cannot be created (") + std::strerror(errno) + ")");
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void SafetensorsWriter::fail(const std::string& what) const {
  throw Error(ErrorKind::Runtime, "writing '" + path_ + "': " + what);
}

void SafetensorsWriter::add(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape) {
  if (laid_out_) fail("tensor '" + name + "' declared after data was written");
  const int64_t esize = safetensors_dtype_size(dtype);
  if (esize == 0) fail("tensor '" + name + "': dtype '" + dtype + "' is unknown");
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  Entry e;
  e.dtype = dtype;
  e.shape = shape;
  e.nbytes = n * static_cast<uint64_t>(esize);
  if (!entries_.emplace(name, std::move(e)).second) fail("tensor '" + name + "' declared twice");
  order_.push_back(name);
}

void SafetensorsWriter::add_bytes(const std::string& name, uint64_t max_bytes) {
  if (laid_out_) fail("tensor '" + name + "' declared after data was written");
  Entry e;
  e.dtype = "U8";
  e.shape = {static_cast<int64_t>(max_bytes)};
  e.nbytes = max_bytes;
  e.late = true;
  if (!entries_.emplace(name, std::move(e)).second) fail("tensor '" + name + "' declared twice");
  order_.push_back(name);
}

std::string SafetensorsWriter::header(bool reserve) const {
  nlohmann::json h = nlohmann::json::object();
  if (!metadata_.empty()) h["__metadata__"] = metadata_;
  for (const auto& [name, e] : entries_) {
    const uint64_t n = e.late && !reserve ? e.late_data.size() : e.nbytes;
    h[name] = {{"dtype", e.dtype},
               {"shape", e.late ? std::vector<int64_t>{static_cast<int64_t>(n)} : e.shape},
               {"data_offsets", {e.begin, e.begin + n}}};
  }
  return h.dump();
}

void SafetensorsWriter::lay_out() {
  std::vector<std::string> fixed, late;
  for (const auto& name : order_) (entries_.at(name).late ? late : fixed).push_back(name);
  std::stable_sort(fixed.begin(), fixed.end(), [this](const std::string& a, const std::string& b) {
    return safetensors_dtype_size(entries_.at(a).dtype) > safetensors_dtype_size(entries_.at(b).dtype);
  });
  uint64_t offset = 0;
  for (const auto& name : fixed) {
    entries_.at(name).begin = offset;
    offset += entries_.at(name).nbytes;
  }
  fixed_bytes_ = offset;
  // Byte tensors at their maximum length: the longest header there can be.
  for (const auto& name : late) {
    entries_.at(name).begin = offset;
    offset += entries_.at(name).nbytes;
  }
  header_bytes_ = (header(true).size() + 7) / 8 * 8;
  laid_out_ = true;
}

uint64_t SafetensorsWriter::data_bytes() const {
  uint64_t n = fixed_bytes_;
  for (const auto& [name, e] : entries_)
    if (e.late) n += e.written ? e.late_data.size() : e.nbytes;
  return n;
}

void SafetensorsWriter::pwrite_all(const void* data, uint64_t nbytes, uint64_t offset) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (nbytes > 0) {
    const ssize_t k = ::pwrite(fd_, p, std::min<uint64_t>(nbytes, 1ull << 30), static_cast<off_t>(offset));
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) fail(std::string("write failed (") + std::strerror(errno) + ")");
    p += k;
    offset += static_cast<uint64_t>(k);
    nbytes -= static_cast<uint64_t>(k);
  }
}

void SafetensorsWriter::write(const std::string& name, const void* data, uint64_t nbytes) {
  if (!laid_out_) lay_out();
  auto it = entries_.find(name);
  if (it == entries_.end()) fail("tensor '" + name + "' was not declared");
  Entry& e = it->second;
  if (e.written) fail("tensor '" + name + "' written twice");
  if (e.late) {
    if (nbytes > e.nbytes) fail("tensor '" + name + "': " + std::to_string(nbytes) + " bytes, declared at most " + std::to_string(e.nbytes));
    const auto* p = static_cast<const uint8_t*>(data);
    e.late_data.assign(p, p + nbytes);
  } else {
    if (nbytes != e.nbytes) fail("tensor '" + name + "': " + std::to_string(nbytes) + " bytes, declared " + std::to_string(e.nbytes));
    pwrite_all(data, nbytes, 8 + header_bytes_ + e.begin);
  }
  e.written = true;
}

void SafetensorsWriter::finish() {
  if (finished_) fail("finished twice");
  if (!laid_out_) lay_out();
  for (const auto& [name, e] : entries_)
    if (!e.written) fail("tensor '" + name + "' was declared but not written");
  uint64_t offset = fixed_bytes_;
  for (const auto& name : order_) {
    Entry& e = entries_.at(name);
    if (!e.late) continue;
    e.begin = offset;
    pwrite_all(e.late_data.data(), e.late_data.size(), 8 + header_bytes_ + offset);
    offset += e.late_data.size();
  }
  std::string h = header(false);
  if (h.size() > header_bytes_) fail("header of " + std::to_string(h.size()) + " bytes exceeds the " + std::to_string(header_bytes_) + " reserved");
  h.resize(header_bytes_, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(header_bytes_ >> (8 * i));
  pwrite_all(len, 8, 0);
  pwrite_all(h.data(), h.size(), 8);
  if (::ftruncate(fd_, static_cast<off_t>(8 + header_bytes_ + offset)) != 0)
    fail(std::string("cannot set the file size (") + std::strerror(errno) + ")");
  if (::fsync(fd_) != 0) fail(std::string("cannot be flushed to disk (") + std::strerror(errno) + ")");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail(std::string("cannot be closed (") + std::strerror(errno) + ")");
  finished_ = true;
}

}  // namespace nybble::io
