// core/validate.hpp — argument checks shared by every entry point. Each throws nybble::Error
// whose message reads "<op>: <argument> = <value> <rule>".
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "cuda/backend.hpp"
#include "nybble/error.hpp"
#include "nybble/tensor_view.hpp"

namespace nybble::core {

std::string describe(const TensorView& t);  // "float16 [4, 8] on cpu"

[[noreturn]] void fail(ErrorKind kind, const char* op, const std::string& what, const std::string& rule);

// The checks every tensor argument gets: not null when non-empty, contiguous, aligned for its
// dtype, on the CPU or (in a build with the CUDA backend) on a GPU.
void check_tensor(const char* op, const char* arg, const TensorView& t);
void check_dtype(const char* op, const char* arg, const TensorView& t, std::initializer_list<DType> allowed);
void check_float(const char* op, const char* arg, const TensorView& t);
void check_numel(const char* op, const char* arg, const TensorView& t, int64_t expected, const std::string& why);
void check_ndim(const char* op, const char* arg, const TensorView& t, int ndim);
void check_4bit_blocksize(const char* op, int64_t blocksize);
void check_positive_blocksize(const char* op, int64_t blocksize);

// A tensor argument by name; view is null for an optional argument that was not given.
struct Arg {
  const char* name;
  const TensorView* view;
};
// Where a call runs: all its tensors must be on one device (and, on a GPU, carry one stream).
// Returns the CUDA backend for GPU tensors and nullptr for CPU tensors. Call after check_tensor.
const cuda::Backend* backend_for(const char* op, std::initializer_list<Arg> args);

}  // namespace nybble::core
