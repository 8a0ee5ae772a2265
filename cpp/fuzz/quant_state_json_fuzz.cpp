// quant_state_json_fuzz.cpp — arbitrary bytes into the packed QuantState JSON parser. Errors must
// be nybble::Error. What it accepts must write back (Python's json.dumps form) within the size
// bound the writer reserves, and parse again to the same state, offset bit for bit.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "io/quant_state_json.hpp"
#include "nybble/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nybble::io;
  QuantStateJson qs;
  try {
    qs = parse_quant_state_json(data, size, "fuzz");
  } catch (const nybble::Error&) {
    return 0;
  }
  const std::string text = format_quant_state_json(qs);
  if (text.size() > max_quant_state_json_size(qs)) __builtin_trap();
  const QuantStateJson back = parse_quant_state_json(reinterpret_cast<const uint8_t*>(text.data()), text.size(), "fuzz: written back");
  if (back.quant_type != qs.quant_type || back.blocksize != qs.blocksize || back.dtype != qs.dtype || back.shape != qs.shape ||
      back.nested.has_value() != qs.nested.has_value())
    __builtin_trap();
  if (qs.nested && (back.nested->blocksize != qs.nested->blocksize ||
                    std::memcmp(&back.nested->offset, &qs.nested->offset, sizeof(double)) != 0))
    __builtin_trap();
  return 0;
}
