// io/safetensors.cpp — mapping, parsing and validating a safetensors file (format in
// safetensors.hpp).
#include "io/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <nlohmann/json.hpp>

#include "nybble/error.hpp"

namespace nybble::io {
namespace {

// A header larger than this is refused rather than parsed (the format's own limit is 100 MB).
constexpr uint64_t kMaxHeader = 100ull << 20;
// Bound on every dimension and on the element count, so that shapes, element counts and byte
// counts (up to 8 bytes an element) computed from them fit in int64.
constexpr uint64_t kMaxElements = 1ull << 60;

[[noreturn]] void bad(const std::string& origin, const std::string& what) {
  throw Error(ErrorKind::Value, "safetensors file '" + origin + "': " + what);
}

[[noreturn]] void os_error(const std::string& path, const std::string& what) {
  throw Error(ErrorKind::Runtime, "safetensors file '" + path + "': " + what + " (" + std::strerror(errno) + ")");
}

}  // namespace

int64_t SafetensorsTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t safetensors_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "U8" || d == "I8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

std::optional<DType> dtype_from_safetensors(const std::string& d) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::U8, DType::I8, DType::I32, DType::I64})
    if (safetensors_dtype_name(t) == d) return t;
  return std::nullopt;
}

std::string safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::U8: return "U8";
    case DType::I8: return "I8";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}

SafetensorsFile SafetensorsFile::read(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) os_error(path, "cannot be opened");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    errno = err;
    os_error(path, "cannot be read");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    bad(path, "is not a regular file");
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    bad(path, "is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file
  if (p == MAP_FAILED) {
    errno = err;
    os_error(path, "cannot be mapped");
  }
  ::madvise(p, size, MADV_SEQUENTIAL);
  std::shared_ptr<const uint8_t> bytes(static_cast<const uint8_t*>(p), [size](const uint8_t* q) {
    ::munmap(const_cast<uint8_t*>(q), size);
  });
  SafetensorsFile f = parse_mapped(std::move(bytes), size, path);
  f.mapped_ = true;
  return f;
}

SafetensorsFile SafetensorsFile::parse(std::vector<uint8_t> bytes, const std::string& origin) {
  auto owned = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  const uint64_t size = owned->size();
  return parse_mapped(std::shared_ptr<const uint8_t>(owned, owned->data()), size, origin);
}

SafetensorsFile SafetensorsFile::parse_mapped(std::shared_ptr<const uint8_t> bytes, uint64_t size,
                                              const std::string& origin) {
  SafetensorsFile f;
  f.origin_ = origin;
  f.bytes_ = std::move(bytes);
  f.size_ = size;
  const uint8_t* p = f.bytes_.get();
  if (size < 8) bad(origin, "is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | p[i];
  if (hlen > kMaxHeader) bad(origin, "header length " + std::to_string(hlen) + " exceeds the 100 MB limit");
  if (hlen > size - 8) bad(origin, "header length " + std::to_string(hlen) + " runs past the end of the file (" + std::to_string(size) + " bytes)");
  f.data_start_ = 8 + hlen;
  const uint64_t data_size = size - f.data_start_;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(p + 8, p + f.data_start_);
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
    uint64_t numel = 1, nonzero = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) bad(origin, where + ": shape holds a value that is not a non-negative integer");
      const uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && nonzero > kMaxElements / dim) bad(origin, where + ": shape is too large (2^60 elements or more)");
      if (dim != 0) nonzero *= dim;
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
  // The tensors tile the data section, as the safetensors library requires.
  uint64_t cursor = 0;
  std::string previous;
  for (const auto& name : f.names_by_offset()) {
    const auto& t = f.tensors_.at(name);
    if (t.begin < cursor)
      bad(origin, "tensor '" + name + "' (bytes " + std::to_string(t.begin) + ".." + std::to_string(t.end) +
                      ") overlaps tensor '" + previous + "'");
    if (t.begin > cursor)
      bad(origin, "the data section has a gap of " + std::to_string(t.begin - cursor) + " bytes before tensor '" + name + "'");
    cursor = t.end;
    previous = name;
  }
  if (cursor != data_size)
    bad(origin, "the data section holds " + std::to_string(data_size - cursor) + " bytes after the last tensor");
  return f;
}

std::vector<std::string> SafetensorsFile::names_by_offset() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) names.push_back(name);
  std::stable_sort(names.begin(), names.end(), [this](const std::string& a, const std::string& b) {
    const auto& x = tensors_.at(a);
    const auto& y = tensors_.at(b);
    return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
  });
  return names;
}

const SafetensorsTensor& SafetensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(ErrorKind::Value, "safetensors file '" + origin_ + "': no tensor named '" + name + "'");
  return it->second;
}

const uint8_t* SafetensorsFile::data(const std::string& name) const {
  return bytes_.get() + data_start_ + info(name).begin;
}

void SafetensorsFile::release(const std::string& name) const {
  const auto& t = info(name);
  const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  // Whole pages inside the tensor only: a page shared with a neighbour may still be read.
  const uint64_t first = (data_start_ + t.begin + page - 1) / page * page;
  const uint64_t last = (data_start_ + t.end) / page * page;
  // Only for a mapping of the file: on owned memory MADV_DONTNEED would zero the bytes.
  if (mapped_ && last > first)
    ::madvise(const_cast<uint8_t*>(bytes_.get()) + first, last - first, MADV_DONTNEED);
}

const SafetensorsTensor& SafetensorsFile::check_dtype(const std::string& name, const std::string& dtype, size_t size) const {
  const auto& t = info(name);
  if (t.dtype != dtype || static_cast<size_t>(safetensors_dtype_size(dtype)) != size)
    throw Error(ErrorKind::Type, "safetensors file '" + origin_ + "': tensor '" + name + "' has dtype " + t.dtype +
                                     ", asked for " + dtype);
  return t;
}

}  // namespace nybble::io
