// io/quant_state_json.cpp — writing and parsing the packed QuantState JSON.
#include "io/quant_state_json.hpp"

#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>

#include "nybble/error.hpp"

namespace nybble::io {
namespace {

constexpr const char* kPrefix = "quant_state.bitsandbytes__";
constexpr int64_t kMaxElements = int64_t{1} << 60;

const char* const kKeys[] = {"quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"};

}  // namespace

int64_t QuantStateJson::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string quant_state_key(QuantType t) { return kPrefix + std::string(quant_type_name(t)); }

std::string torch_dtype_name(DType t) { return std::string(dtype_name(t)); }

std::optional<DType> float_dtype_from_torch_name(const std::string& name) {
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    if (dtype_name(t) == name) return t;
  return std::nullopt;
}

std::string python_float_repr(double v) {
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  // Shortest round-trip digits, as Python's repr chooses them (both are the shortest string that
  // reads back to v, the closest to v among those).
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  const std::string sci(buf, res.ptr);  // "-d.ddde-05"
  const size_t e = sci.find('e');
  std::string digits;
  bool negative = false;
  for (size_t i = 0; i < e; ++i) {
    if (sci[i] == '-') negative = true;
    else if (sci[i] != '.') digits += sci[i];
  }
  const int exp10 = std::stoi(sci.substr(e + 1));
  const int decpt = exp10 + 1;  // v = 0.d1d2... * 10^decpt
  std::string out = negative ? "-" : "";
  const int n = static_cast<int>(digits.size());
  if (decpt <= -4 || decpt > 16) {  // Python's float_repr_style 'short' rule
    out += digits[0];
    if (n > 1) out.append(".").append(digits, 1);
    const int a = std::abs(exp10);
    out += std::string("e") + (exp10 < 0 ? "-" : "+") + (a < 10 ? "0" : "") + std::to_string(a);
  } else if (decpt <= 0) {
    out += "0." + std::string(static_cast<size_t>(-decpt), '0') + digits;
  } else if (decpt >= n) {
    out += digits + std::string(static_cast<size_t>(decpt - n), '0') + ".0";
  } else {
    out += digits.substr(0, static_cast<size_t>(decpt)) + "." + digits.substr(static_cast<size_t>(decpt));
  }
  return out;
}

static std::string format_with_offset(const QuantStateJson& qs, const std::string& offset) {
  std::string s = "{\"quant_type\": \"" + std::string(quant_type_name(qs.quant_type)) + "\", \"blocksize\": " +
                  std::to_string(qs.blocksize) + ", \"dtype\": \"" + torch_dtype_name(qs.dtype) + "\", \"shape\": [";
  for (size_t i = 0; i < qs.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(qs.shape[i]);
  s += "]";
  if (qs.nested)
    s += ", \"nested_blocksize\": " + std::to_string(qs.nested->blocksize) +
         ", \"nested_dtype\": \"float32\", \"nested_offset\": " + offset;
  return s + "}";
}

std::string format_quant_state_json(const QuantStateJson& qs) {
  return format_with_offset(qs, qs.nested ? python_float_repr(qs.nested->offset) : "");
}

size_t max_quant_state_json_size(const QuantStateJson& qs) {
  return format_with_offset(qs, std::string(kMaxPythonFloatRepr, '0')).size();
}

QuantStateJson parse_quant_state_json(const uint8_t* data, size_t size, const std::string& origin) {
  auto bad = [&](const std::string& what) { throw Error(ErrorKind::Value, origin + ": quant_state JSON " + what); };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception& e) {
    bad(std::string("is not valid JSON (") + e.what() + ")");
  }
  if (!j.is_object()) bad("is not a JSON object");
  for (const auto& [key, value] : j.items()) {
    bool known = false;
    for (const char* k : kKeys) known = known || key == k;
    if (!known) bad("has the unexpected key '" + key + "' (allowed: quant_type, blocksize, dtype, shape, nested_blocksize, nested_dtype, nested_offset)");
  }
  auto need = [&](const char* key) -> const nlohmann::json& {
    if (!j.contains(key)) bad(std::string("lacks '") + key + "'");
    return j.at(key);
  };
  // Bounded like the element count, so that block counts computed from it cannot overflow.
  auto positive_int = [&](const char* key) {
    const auto& v = need(key);
    if (!v.is_number_unsigned() || v.get<uint64_t>() < 1 || v.get<uint64_t>() > uint64_t{kMaxElements})
      bad(std::string("'") + key + "' = " + v.dump() + " is not a positive integer up to 2^60");
    return v.get<int64_t>();
  };

  QuantStateJson qs;
  const auto& qt = need("quant_type");
  if (qt == "nf4") qs.quant_type = QuantType::NF4;
  else if (qt == "fp4") qs.quant_type = QuantType::FP4;
  else bad("'quant_type' = " + qt.dump() + " is not \"nf4\" or \"fp4\"");

  qs.blocksize = positive_int("blocksize");
  if (!is_valid_4bit_blocksize(qs.blocksize))
    bad("'blocksize' = " + std::to_string(qs.blocksize) + " is not a 4-bit blocksize (32, 64, 128, ..., 4096)");

  const auto& dt = need("dtype");
  const auto dtype = dt.is_string() ? float_dtype_from_torch_name(dt.get<std::string>()) : std::nullopt;
  if (!dtype) bad("'dtype' = " + dt.dump() + " is not \"float32\", \"float16\" or \"bfloat16\"");
  qs.dtype = *dtype;

  const auto& shape = need("shape");
  if (!shape.is_array()) bad("'shape' = " + shape.dump() + " is not a list of non-negative integers");
  int64_t nonzero = 1;
  for (const auto& d : shape) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t{kMaxElements})
      bad("'shape' = " + shape.dump() + " is not a list of non-negative integers below 2^60");
    const auto dim = d.get<int64_t>();
    if (dim != 0 && nonzero > kMaxElements / dim) bad("'shape' = " + shape.dump() + " has 2^60 elements or more");
    if (dim != 0) nonzero *= dim;
    qs.shape.push_back(dim);
  }

  const bool any_nested = j.contains("nested_blocksize") || j.contains("nested_dtype") || j.contains("nested_offset");
  if (any_nested) {
    QuantStateJson::Nested nested;
    nested.blocksize = positive_int("nested_blocksize");
    const auto& ndt = need("nested_dtype");
    if (ndt != "float32") bad("'nested_dtype' = " + ndt.dump() + " is not \"float32\"");
    const auto& off = need("nested_offset");
    if (!off.is_number() || !std::isfinite(off.get<double>()))
      bad("'nested_offset' = " + off.dump() + " is not a finite number");
    nested.offset = off.get<double>();
    qs.nested = nested;
  }
  return qs;
}

}  // namespace nybble::io
