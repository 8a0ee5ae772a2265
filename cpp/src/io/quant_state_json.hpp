// io/quant_state_json.hpp — the packed QuantState of a 4-bit weight (spec §1.7, §1.8).
//
// A checkpoint stores a 4-bit weight's plain (non-tensor) QuantState fields as the UTF-8 bytes of
// Python's json.dumps, in a 1-D uint8 tensor named "<weight>.quant_state.bitsandbytes__<type>":
//   {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [4096, 4096],
//    "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.0123}
// (the three nested_ fields only with double quantization). The writer reproduces json.dumps
// byte for byte (key order, ", " and ": " separators, Python's float repr); the parser trusts
// nothing and names the field and the rule it broke.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nybble/dtype.hpp"
#include "nybble/formats.hpp"

namespace nybble::io {

struct QuantStateJson {
  struct Nested {
    int64_t blocksize = kNestedBlocksize;
    double offset = 0.0;  // the mean subtracted before the absmax was quantized (an fp32 value)
  };
  QuantType quant_type = QuantType::NF4;
  int64_t blocksize = 64;
  DType dtype = DType::F32;    // of the weight before quantization: F32, F16 or BF16
  std::vector<int64_t> shape;  // of the weight; its element count is below 2^60
  std::optional<Nested> nested;  // nested_dtype is float32, the only one there is

  int64_t numel() const;
};

// The tensor name suffix: "quant_state.bitsandbytes__nf4" or "...__fp4".
std::string quant_state_key(QuantType t);

// The bytes Python's json.dumps writes for these fields (as QuantState.as_dict(packed=True)).
std::string format_quant_state_json(const QuantStateJson& qs);
// Upper bound of format_quant_state_json(qs).size() over every value of qs.nested->offset.
size_t max_quant_state_json_size(const QuantStateJson& qs);

// Parses and validates the packed bytes. Throws nybble::Error (ErrorKind::Value) whose message
// starts with `origin` and names the field and the rule.
QuantStateJson parse_quant_state_json(const uint8_t* data, size_t size, const std::string& origin);

// repr() of a Python float: the shortest digits that read back to v, in fixed notation for
// decimal exponents -5 < e < 16 ("0.0123", "1.0") and in exponent notation otherwise ("1e-05",
// "1.5e+16"). v must be finite.
std::string python_float_repr(double v);
// The longest python_float_repr of a finite double ("-2.2250738585072014e-308").
inline constexpr size_t kMaxPythonFloatRepr = 24;

// Python's name of a float dtype ("float32", "float16", "bfloat16"), and back.
std::string torch_dtype_name(DType t);
std::optional<DType> float_dtype_from_torch_name(const std::string& name);

}  // namespace nybble::io
