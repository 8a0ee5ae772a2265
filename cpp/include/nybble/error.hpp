// nybble/error.hpp — the one exception type nybble throws.
#pragma once

#include <stdexcept>
#include <string>

namespace nybble {

// What kind of rule was broken; the Python binding maps Type to TypeError, Value to ValueError
// and Runtime to RuntimeError.
enum class ErrorKind { Value, Type, Runtime };

// Every message names the argument, the value it had and the rule it broke, e.g.
//   "quantize_4bit: blocksize = 48 is not allowed (must be one of 32, 64, ..., 4096)".
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace nybble
