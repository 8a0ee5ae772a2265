// core/validate.hpp — argument checks shared by every entry point. Each throws nybble::Error
// whose message reads "<op>: <argument> = <value> <rule>".
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "nybble/error.hpp"
#include "nybble/tensor_view.hpp"

namespace nybble::core {

std::string describe(const TensorView& t);  // "float16 [4, 8] on cpu"

[[noreturn]] void fail(ErrorKind kind, const char* op, const std::string& what, const std::string& rule);

// The checks every tensor argument gets: not null when non-empty, contiguous, aligned for its
// dtype, on the CPU (the only backend of this build).
void check_tensor(const char* op, const char* arg, const TensorView& t);
void check_dtype(const char* op, const char* arg, const TensorView& t, std::initializer_list<DType> allowed);
void check_float(const char* op, const char* arg, const TensorView& t);
void check_numel(const char* op, const char* arg, const TensorView& t, int64_t expected, const std::string& why);
void check_ndim(const char* op, const char* arg, const TensorView& t, int ndim);
void check_4bit_blocksize(const char* op, int64_t blocksize);
void check_positive_blocksize(const char* op, int64_t blocksize);

}  // namespace nybble::core
