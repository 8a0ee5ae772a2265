// io/checkpoint_quantize.hpp — quantizing a checkpoint into one that from_pretrained loads as it is.
//
// Input: a safetensors file or a Hugging Face model folder (io/checkpoint.hpp). Output: a folder
// with the same shards (model.safetensors, or the input's shard names and a new index), where every
// weight of a linear layer is replaced by the tensors a bitsandbytes-quantized layer saves
// (io/bnb_layout.hpp) and everything else is copied as it is; config.json gains the
// quantization_config that transformers writes for the matching BitsAndBytesConfig; the folder's
// other files (tokenizer, generation_config.json, ...) are copied.
//
// Which tensors are quantized: 2-D "*.weight" tensors in F32/F16/BF16, except embeddings (a
// module whose last name part contains "embed", or is wte, wpe or shared), lm_head (unless
// quantize_lm_head) and what a --skip glob matches (fnmatch on the module or the tensor name).
// The modules left as they are go into llm_int8_skip_modules, so that from_pretrained builds a
// quantized layer exactly where the checkpoint holds one.
//
// Streaming: one tensor at a time is read (mapped, then released), quantized by the library's
// kernels on all cores, and written to its place in the output file. Output is all or nothing
// (io/staging_dir.hpp).
//
// Bytes: the packed codes, absmax, quant_map, int8 codes and SCB equal what nybble.functional
// (and the reference) computes from the same tensor. The one value that can differ is the
// double-quantization offset: nybble's fixed-order mean (Note [Offset] in formats.hpp) where
// the Python layer takes torch's fp32 mean, whose summation order (threads, torch version) no
// other program reproduces. The two are within an ulp or two; the nested codes follow each one's
// own offset, so a code on a boundary can differ by one step (see docs/cli.md).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nybble/dtype.hpp"
#include "nybble/formats.hpp"

namespace nybble::io {

struct QuantizeOptions {
  std::optional<QuantType> quant_type;  // 4-bit NF4/FP4; none: LLM.int8
  bool double_quant = false;            // 4-bit only
  int64_t blocksize = 64;               // 4-bit only
  DType compute_dtype = DType::F32;     // bnb_4bit_compute_dtype in config.json
  std::vector<std::string> skip;        // globs of modules or tensors to keep as they are
  bool quantize_lm_head = false;
  bool replace = false;                 // replace an existing output
};

struct QuantizeProgress {
  uint64_t bytes_done = 0, bytes_total = 0;  // of input tensor data
  size_t tensors_done = 0, tensors_total = 0;
  std::string_view tensor;  // the tensor just finished (empty at the start)
};
// Called at the start and after each tensor; an exception thrown here aborts the run (and the
// output is not written).
using ProgressFn = std::function<void(const QuantizeProgress&)>;

struct QuantizeSummary {
  size_t quantized = 0, copied = 0, files_copied = 0;
  uint64_t bytes_in = 0, bytes_out = 0;  // tensor data
  std::vector<std::string> notes;        // files left out and why
};

QuantizeSummary quantize_checkpoint(const std::string& input, const std::string& output, const QuantizeOptions& options,
                                    const ProgressFn& progress);

}  // namespace nybble::io
