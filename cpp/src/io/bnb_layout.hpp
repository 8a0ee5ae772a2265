// io/bnb_layout.hpp — the state-dict keys of bitsandbytes-quantized layers (spec §1.8, §2.5), as
// transformers' save_pretrained writes them and from_pretrained reads them.
//
// A 4-bit weight W (e.g. "model.layers.0.mlp.up_proj.weight", n elements, nblocks = ceil(n/bs)):
//   W                                  packed codes: uint8 [(n+1)/2, 1] (or the quant_storage dtype)
//   W.absmax                           fp32 [nblocks]; uint8 [nblocks] with double quantization
//   W.quant_map                        fp32 [16], the NF4 or FP4 table
//   W.nested_absmax                    fp32 [ceil(nblocks/256)]   (double quantization)
//   W.nested_quant_map                 fp32 [256], the signed dynamic map (double quantization)
//   W.quant_state.bitsandbytes__nf4    uint8 [len]: the JSON of io/quant_state_json.hpp (or __fp4)
// An 8-bit layer M (e.g. "model.layers.0.mlp.up_proj"):
//   M.weight int8 [out, in]; M.SCB fp32 [out]; M.weight_format uint8 [] = 0 ("row")
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "nybble/formats.hpp"

namespace nybble::io {

enum class Part : uint8_t {
  Plain,
  Packed4, Absmax, QuantMap, NestedAbsmax, NestedQuantMap, QuantState,  // a 4-bit weight's tensors
  Int8Weight, SCB, WeightFormat,                                          // an 8-bit layer's tensors
};

struct TensorPart {
  Part part = Part::Plain;
  std::string owner;                      // 4-bit: the weight W; 8-bit: the module M
  QuantType quant_type = QuantType::NF4;  // of a 4-bit weight (from its quant_state key)
};

// Suffixes after W (4-bit) and M (8-bit).
inline constexpr const char* kAbsmax = ".absmax";
inline constexpr const char* kQuantMap = ".quant_map";
inline constexpr const char* kNestedAbsmax = ".nested_absmax";
inline constexpr const char* kNestedQuantMap = ".nested_quant_map";
inline constexpr const char* kSCB = ".SCB";
inline constexpr const char* kWeight = ".weight";
inline constexpr const char* kWeightFormat = ".weight_format";

// Assigns every tensor its part, from the names alone: a 4-bit weight is recognized by its
// quant_state key, an 8-bit layer by its SCB key; everything else is Plain.
std::map<std::string, TensorPart> classify_tensors(const std::vector<std::string>& names);

// The name of weight's packed QuantState tensor: weight + ".quant_state.bitsandbytes__nf4".
std::string quant_state_tensor(const std::string& weight, QuantType t);

// The module a weight belongs to ("a.b.weight" -> "a.b"); a name without ".weight" is its own.
std::string module_of(const std::string& weight);

bool ends_with(const std::string& s, const std::string& suffix);

// Whether an entry of llm_int8_skip_modules keeps `module` unquantized in from_pretrained:
// transformers' should_convert_module skips a module that the entry names, or a module above it,
// or a suffix of its name (entries are compared as plain names here, not as regular expressions).
bool skip_entry_matches(const std::string& entry, const std::string& module);

}  // namespace nybble::io
