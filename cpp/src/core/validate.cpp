// core/validate.cpp — argument checks with messages that name argument, value and rule.
#include "core/validate.hpp"

#include <cstdint>

#include "nybble/formats.hpp"

namespace nybble::core {

std::string describe(const TensorView& t) {
  std::string s(dtype_name(t.dtype));
  s += " [";
  for (int i = 0; i < t.ndim; ++i) {
    if (i) s += ", ";
    s += std::to_string(t.shape[static_cast<size_t>(i)]);
  }
  s += t.device == Device::CPU ? "] on cpu" : "] on cuda:" + std::to_string(t.device_index);
  return s;
}

void fail(ErrorKind kind, const char* op, const std::string& what, const std::string& rule) {
  throw Error(kind, std::string(op) + ": " + what + " " + rule);
}

void check_tensor(const char* op, const char* arg, const TensorView& t) {
  const std::string what = std::string(arg) + " = " + describe(t);
  if (t.ndim < 0 || t.ndim > kMaxDims) fail(ErrorKind::Value, op, what, "has an invalid number of dimensions");
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[static_cast<size_t>(i)] < 0) fail(ErrorKind::Value, op, what, "has a negative dimension");
  if (t.device != Device::CPU && cuda::backend() == nullptr)
    fail(ErrorKind::Runtime, op, what, "is not on the CPU, and this build of nybble has no CUDA backend");
  if (t.numel() > 0 && t.data == nullptr) fail(ErrorKind::Value, op, what, "has a null data pointer");
  if (!t.is_contiguous()) fail(ErrorKind::Value, op, what, "must be contiguous (row-major)");
  if (reinterpret_cast<uintptr_t>(t.data) % static_cast<uintptr_t>(dtype_size(t.dtype)) != 0)
    fail(ErrorKind::Value, op, what,
         "is misaligned: its address must be a multiple of " + std::to_string(dtype_size(t.dtype)) + " bytes");
}

void check_dtype(const char* op, const char* arg, const TensorView& t, std::initializer_list<DType> allowed) {
  std::string list;
  for (DType d : allowed) {
    if (d == t.dtype) return;
    if (!list.empty()) list += ", ";
    list += dtype_name(d);
  }
  fail(ErrorKind::Type, op, std::string(arg) + ".dtype = " + std::string(dtype_name(t.dtype)), "is not supported (must be " + list + ")");
}

void check_float(const char* op, const char* arg, const TensorView& t) {
  check_dtype(op, arg, t, {DType::F32, DType::F16, DType::BF16});
}

void check_numel(const char* op, const char* arg, const TensorView& t, int64_t expected, const std::string& why) {
  if (t.numel() != expected)
    fail(ErrorKind::Value, op, std::string(arg) + " = " + describe(t),
         "has " + std::to_string(t.numel()) + " elements, must have " + std::to_string(expected) + " (" + why + ")");
}

void check_ndim(const char* op, const char* arg, const TensorView& t, int ndim) {
  if (t.ndim != ndim)
    fail(ErrorKind::Value, op, std::string(arg) + " = " + describe(t), "must have " + std::to_string(ndim) + " dimensions");
}

void check_4bit_blocksize(const char* op, int64_t blocksize) {
  if (!is_valid_4bit_blocksize(blocksize))
    fail(ErrorKind::Value, op, "blocksize = " + std::to_string(blocksize),
         "is not allowed (must be one of 32, 64, 128, 256, 512, 1024, 2048, 4096)");
}

void check_positive_blocksize(const char* op, int64_t blocksize) {
  if (blocksize <= 0) fail(ErrorKind::Value, op, "blocksize = " + std::to_string(blocksize), "must be positive");
}

const cuda::Backend* backend_for(const char* op, std::initializer_list<Arg> args) {
  const Arg* first = nullptr;
  for (const Arg& a : args) {
    if (a.view == nullptr) continue;
    if (first == nullptr) {
      first = &a;
      continue;
    }
    const TensorView &t = *a.view, &f = *first->view;
    const bool gpu = t.device == Device::CUDA;
    if (t.device != f.device || (gpu && t.device_index != f.device_index))
      fail(ErrorKind::Value, op, std::string(a.name) + " = " + describe(t),
           "must be on the same device as " + std::string(first->name) + " = " + describe(f));
    if (gpu && t.stream != f.stream)
      fail(ErrorKind::Value, op, std::string(a.name) + " = " + describe(t),
           "carries another stream than " + std::string(first->name) + " (all tensors of one call run on one stream)");
  }
  return first != nullptr && first->view->device == Device::CUDA ? cuda::backend() : nullptr;
}

}  // namespace nybble::core
