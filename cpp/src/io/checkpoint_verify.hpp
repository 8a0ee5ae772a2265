// io/checkpoint_verify.hpp — the consistency of a quantized checkpoint, checked without loading
// it: what from_pretrained (nybble's or the reference's) needs to rebuild every quantized layer.
//
// Per 4-bit weight: its packed quant_state parses (io/quant_state_json.hpp) and names the type of
// its key; the packed codes, absmax, quant_map and (double quantization) nested tensors are all
// there with the dtypes and sizes the state's shape and blocksizes call for; the code maps are
// the NF4/FP4 table and the signed dynamic map; absmax values are finite and non-negative. Per
// 8-bit layer: int8 weight [out, in], SCB fp32 [out] finite and non-negative, weight_format 0
// ("row"). Against config.json: a bitsandbytes quantization_config whose load_in_4bit /
// load_in_8bit, bnb_4bit_quant_type, bnb_4bit_use_double_quant and bnb_4bit_quant_storage agree
// with the tensors, and whose llm_int8_skip_modules names no quantized layer.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "io/checkpoint.hpp"

namespace nybble::io {

struct VerifyReport {
  std::vector<std::string> problems;  // each names the file, the tensor and the rule broken
  size_t weights_4bit = 0, nested_4bit = 0, layers_8bit = 0, plain = 0;
  bool ok() const { return problems.empty(); }
};

VerifyReport verify_checkpoint(const Checkpoint& checkpoint);

}  // namespace nybble::io
