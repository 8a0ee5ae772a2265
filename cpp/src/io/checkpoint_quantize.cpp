// io/checkpoint_quantize.cpp — planning and streaming the quantization of a checkpoint (see
// checkpoint_quantize.hpp).
#include "io/checkpoint_quantize.hpp"

#include <fnmatch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "io/bnb_layout.hpp"
#include "io/checkpoint.hpp"
#include "io/quant_state_json.hpp"
#include "io/safetensors_writer.hpp"
#include "io/staging_dir.hpp"
#include "nybble/error.hpp"
#include "nybble/ops.hpp"

namespace nybble::io {
namespace fs = std::filesystem;

namespace {

// Models whose linear layers are transformers' Conv1D ([in, out] weights, transposed before
// quantization): a checkpoint alone does not say which 2-D weights those are.
const char* const kConv1DModelTypes[] = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"};
// Files that hold weights in another format: left out of the output (they would be stale copies).
const char* const kWeightFileSuffixes[] = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx"};

[[noreturn]] void bad(const std::string& where, const std::string& what) {
  throw Error(ErrorKind::Value, "'" + where + "': " + what);
}

std::string last_part(const std::string& module) {
  const size_t dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(dot + 1);
}

bool is_lm_head(const std::string& module) { return last_part(module) == "lm_head"; }

bool is_embedding(const std::string& module) {
  std::string last = last_part(module);
  std::transform(last.begin(), last.end(), last.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  return last.find("embed") != std::string::npos || last == "wte" || last == "wpe" || last == "shared";
}

bool glob_match(const std::string& pattern, const std::string& s) { return ::fnmatch(pattern.c_str(), s.c_str(), 0) == 0; }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The quantization_config transformers writes for BitsAndBytesConfig (its to_dict() fields).
nlohmann::json quantization_config(const QuantizeOptions& o, const std::vector<std::string>& skip_modules) {
  const bool four = o.quant_type.has_value();
  return {
      {"quant_method", "bitsandbytes"},
      {"_load_in_4bit", four},
      {"_load_in_8bit", !four},
      {"load_in_4bit", four},
      {"load_in_8bit", !four},
      {"llm_int8_threshold", 6.0},
      {"llm_int8_skip_modules", skip_modules},
      {"llm_int8_enable_fp32_cpu_offload", false},
      {"llm_int8_has_fp16_weight", false},
      {"bnb_4bit_quant_type", four ? std::string(quant_type_name(*o.quant_type)) : "fp4"},
      {"bnb_4bit_use_double_quant", four && o.double_quant},
      {"bnb_4bit_compute_dtype", torch_dtype_name(four ? o.compute_dtype : DType::F32)},
      {"bnb_4bit_quant_storage", "uint8"},
  };
}

// A tensor's data as a TensorView, copied to `copy` when the file does not align it for its dtype.
TensorView input_view(const Checkpoint& in, const std::string& name, DType dtype, std::vector<uint8_t>& copy) {
  const auto& t = in.info(name);
  const uint8_t* p = in.data(name);
  if (reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(dtype_size(dtype)) != 0) {
    copy.assign(p, p + t.nbytes());
    p = copy.data();
  }
  return TensorView(p, dtype, {t.shape[0], t.shape[1]});
}

class Quantizer {
 public:
  Quantizer(const Checkpoint& in, const QuantizeOptions& o) : in_(in), o_(o) {}

  void check_input() {
    const std::string where = in_.is_folder() ? in_.folder().string() : in_.files()[0].origin();
    for (const auto& [name, part] : classify_tensors(in_.names()))
      if (part.part != Part::Plain) bad(in_.file_of(name).origin(), "tensor '" + name + "' shows the checkpoint is quantized already");
    if (!in_.config()) return;
    const auto& config = *in_.config();
    if (config.contains("quantization_config"))
      bad(where + "/" + kConfigFile, "has a quantization_config: the model is quantized already");
    const auto type = config.value("model_type", nlohmann::json());
    for (const char* t : kConv1DModelTypes)
      if (type == t)
        bad(where + "/" + kConfigFile, "model_type \"" + std::string(t) +
                                           "\" uses Conv1D layers (weights stored [in, out]), which nybble quantize does not support");
    if (o_.quantize_lm_head && config.value("tie_word_embeddings", nlohmann::json(false)) == true)
      bad(where + "/" + kConfigFile, "ties lm_head to the input embeddings (tie_word_embeddings), so lm_head cannot be quantized");
  }

  // Decides, for every tensor, whether it is quantized.
  void plan() {
    bool lm_head_quantized = false;
    std::set<std::string> kept;
    for (const auto& name : in_.names()) {
      const auto& t = in_.info(name);
      if (!ends_with(name, kWeight) || t.shape.size() != 2) continue;
      const std::string module = module_of(name);
      bool skip = is_embedding(module) || (is_lm_head(module) && !o_.quantize_lm_head) || t.numel() == 0;
      for (const auto& g : o_.skip) skip = skip || glob_match(g, module) || glob_match(g, name);
      const auto dtype = dtype_from_safetensors(t.dtype);
      if (!skip && !(dtype && is_float_dtype(*dtype)))
        bad(in_.file_of(name).origin(), "tensor '" + name + "' is " + t.dtype + " " + shape_str(t.shape) +
                                            ": only F32, F16 and BF16 weights can be quantized (--skip it to copy it as it is)");
      if (skip) {
        kept.insert(module);
        continue;
      }
      quantize_.insert(name);
      lm_head_quantized = lm_head_quantized || is_lm_head(module);
    }
    // A tied lm_head has no tensor of its own; from_pretrained must still leave it unquantized.
    if (!lm_head_quantized) kept.insert("lm_head");
    skip_modules_.assign(kept.begin(), kept.end());
    for (const auto& name : quantize_)
      for (const auto& entry : skip_modules_)
        if (skip_entry_matches(entry, module_of(name)))
          bad(in_.file_of(name).origin(), "tensor '" + name + "' would be quantized, but its module's name ends like the kept module '" +
                                              entry + "', so from_pretrained would not load it as quantized; --skip it too");
  }

  // Declares the output tensors of input file k; returns their names.
  std::vector<std::string> declare(size_t k, SafetensorsWriter& w) {
    declared_.clear();
    for (const auto& [name, t] : in_.files()[k].tensors()) {
      if (!quantize_.count(name)) {
        add(w, name, t.dtype, t.shape);
        continue;
      }
      if (o_.quant_type) {
        const QuantStateJson qs = state_of(name);
        const int64_t nb = num_blocks(qs.numel(), qs.blocksize);
        add(w, name, "U8", {packed_4bit_bytes(qs.numel()), 1});
        add(w, name + kAbsmax, qs.nested ? "U8" : "F32", {nb});
        add(w, name + kQuantMap, "F32", {16});
        if (qs.nested) {
          add(w, name + kNestedAbsmax, "F32", {num_blocks(nb, kNestedBlocksize)});
          add(w, name + kNestedQuantMap, "F32", {256});
        }
        const std::string key = quant_state_tensor(name, *o_.quant_type);
        claim(key);
        w.add_bytes(key, max_quant_state_json_size(qs));
      } else {
        const std::string module = module_of(name);
        add(w, name, "I8", t.shape);
        add(w, module + kSCB, "F32", {t.shape[0]});
        add(w, module + kWeightFormat, "U8", {});
      }
    }
    return declared_;
  }

  // Streams input file k into w.
  void write(size_t k, SafetensorsWriter& w, const ProgressFn& progress, QuantizeProgress& p, QuantizeSummary& s) {
    const auto& file = in_.files()[k];
    for (const auto& name : file.names_by_offset()) {
      const auto& t = file.info(name);
      if (quantize_.count(name)) {
        if (o_.quant_type) write_4bit(w, name);
        else write_int8(w, name);
        ++s.quantized;
      } else {
        w.write(name, file.data(name), t.nbytes());
        ++s.copied;
      }
      file.release(name);
      p.bytes_done += t.nbytes();
      ++p.tensors_done;
      p.tensor = name;
      if (progress) progress(p);
    }
  }

  const std::vector<std::string>& skip_modules() const { return skip_modules_; }

 private:
  void claim(const std::string& name) {
    if (!outputs_.insert(name).second)
      throw Error(ErrorKind::Value, "output tensor '" + name + "' would be written twice (an input tensor already has that name)");
    declared_.push_back(name);
  }
  void add(SafetensorsWriter& w, const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape) {
    claim(name);
    w.add(name, dtype, shape);
  }

  QuantStateJson state_of(const std::string& name) const {
    const auto& t = in_.info(name);
    QuantStateJson qs;
    qs.quant_type = *o_.quant_type;
    qs.blocksize = o_.blocksize;
    qs.dtype = *dtype_from_safetensors(t.dtype);
    qs.shape = t.shape;
    if (o_.double_quant) qs.nested = QuantStateJson::Nested{};
    return qs;
  }

  void check_scales(const std::string& name, const std::vector<float>& scales, const char* unit) const {
    for (size_t i = 0; i < scales.size(); ++i)
      if (!std::isfinite(scales[i]))
        bad(in_.file_of(name).origin(), "tensor '" + name + "' holds an infinite value (in " + unit + " " + std::to_string(i) +
                                            "): its quantization scale would be unusable");
  }

  void write_4bit(SafetensorsWriter& w, const std::string& name) {
    QuantStateJson qs = state_of(name);
    std::vector<uint8_t> copy;
    const TensorView A = input_view(in_, name, qs.dtype, copy);
    const int64_t n = qs.numel(), nb = num_blocks(n, qs.blocksize);
    std::vector<uint8_t> packed(static_cast<size_t>(packed_4bit_bytes(n)));
    std::vector<float> absmax(static_cast<size_t>(nb));
    const TensorView absmax_view(absmax.data(), DType::F32, {nb});
    quantize_4bit(A, TensorView(packed.data(), DType::U8, {static_cast<int64_t>(packed.size())}), absmax_view, qs.blocksize, qs.quant_type);
    check_scales(name, absmax, "block");
    w.write(name, packed.data(), packed.size());
    w.write(name + kQuantMap, quant_map(qs.quant_type).data(), 16 * sizeof(float));
    if (qs.nested) {
      const float offset = absmax_mean(absmax_view);
      std::vector<uint8_t> qabsmax(static_cast<size_t>(nb));
      std::vector<float> nested(static_cast<size_t>(num_blocks(nb, kNestedBlocksize)));
      quantize_absmax_nested(absmax_view, offset, TensorView(qabsmax.data(), DType::U8, {nb}),
                             TensorView(nested.data(), DType::F32, {static_cast<int64_t>(nested.size())}));
      qs.nested->offset = static_cast<double>(offset);
      w.write(name + kAbsmax, qabsmax.data(), qabsmax.size());
      w.write(name + kNestedAbsmax, nested.data(), nested.size() * sizeof(float));
      w.write(name + kNestedQuantMap, dynamic_map_signed().data(), 256 * sizeof(float));
    } else {
      w.write(name + kAbsmax, absmax.data(), absmax.size() * sizeof(float));
    }
    const std::string json = format_quant_state_json(qs);
    w.write(quant_state_tensor(name, qs.quant_type), json.data(), json.size());
  }

  // As nybble's Int8Params quantizes a weight: rows of the weight in its own dtype, no threshold.
  void write_int8(SafetensorsWriter& w, const std::string& name) {
    const auto& t = in_.info(name);
    std::vector<uint8_t> copy;
    const TensorView A = input_view(in_, name, *dtype_from_safetensors(t.dtype), copy);
    const int64_t rows = t.shape[0], cols = t.shape[1];
    std::vector<int8_t> codes(static_cast<size_t>(rows * cols));
    std::vector<float> scb(static_cast<size_t>(rows));
    int8_vectorwise_quant(A, 0.0f, TensorView(codes.data(), DType::I8, {rows, cols}), TensorView(scb.data(), DType::F32, {rows}));
    check_scales(name, scb, "row");
    const std::string module = module_of(name);
    const uint8_t row_format = 0;  // "row", the only layout there is (§2.5)
    w.write(name, codes.data(), codes.size());
    w.write(module + kSCB, scb.data(), scb.size() * sizeof(float));
    w.write(module + kWeightFormat, &row_format, 1);
  }

  const Checkpoint& in_;
  const QuantizeOptions& o_;
  std::set<std::string> quantize_, outputs_;
  std::vector<std::string> skip_modules_, declared_;
};

void check_options(const QuantizeOptions& o) {
  if (o.quant_type && !is_valid_4bit_blocksize(o.blocksize))
    throw Error(ErrorKind::Value, "blocksize = " + std::to_string(o.blocksize) + " is not a 4-bit blocksize (32, 64, 128, ..., 4096)");
  if (!o.quant_type && o.double_quant) throw Error(ErrorKind::Value, "double quantization is for 4-bit types (nf4, fp4), not int8");
  if (!is_float_dtype(o.compute_dtype)) throw Error(ErrorKind::Value, "compute dtype must be float32, float16 or bfloat16");
}

}  // namespace

QuantizeSummary quantize_checkpoint(const std::string& input, const std::string& output, const QuantizeOptions& options,
                                    const ProgressFn& progress) {
  check_options(options);
  const Checkpoint in = Checkpoint::open(input);
  std::error_code ec;
  if (fs::exists(output, ec) && fs::equivalent(input, output, ec))
    throw Error(ErrorKind::Value, "output '" + output + "' is the input; write the quantized model elsewhere");
  Quantizer q(in, options);
  q.check_input();
  q.plan();
  StagingDir out(output, options.replace);

  QuantizeSummary summary;
  QuantizeProgress p;
  p.bytes_total = summary.bytes_in = in.tensor_bytes();
  p.tensors_total = in.names().size();
  if (progress) progress(p);

  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t k = 0; k < in.files().size(); ++k) {
    const std::string file_name = in.is_folder() ? in.file_names()[k] : kSingleFile;
    auto metadata = in.files()[k].metadata();
    metadata.emplace("format", "pt");  // transformers refuses safetensors files without it
    SafetensorsWriter w((out.path() / file_name).string(), metadata);
    for (const auto& name : q.declare(k, w)) weight_map[name] = file_name;
    q.write(k, w, progress, p, summary);
    w.finish();
    summary.bytes_out += w.data_bytes();
  }

  if (in.index()) {
    nlohmann::json index = *in.index();
    if (!index.contains("metadata") || !index["metadata"].is_object()) index["metadata"] = nlohmann::json::object();
    index["metadata"]["total_size"] = summary.bytes_out;
    index["weight_map"] = weight_map;
    write_text_file(out.path() / kIndexFile, index.dump(2) + "\n");
  }
  if (in.config()) {
    nlohmann::json config = *in.config();
    config["quantization_config"] = quantization_config(options, q.skip_modules());
    write_text_file(out.path() / kConfigFile, config.dump(2) + "\n");
  }
  if (in.is_folder()) {
    std::set<std::string> handled(in.file_names().begin(), in.file_names().end());
    handled.insert({kConfigFile, kIndexFile});
    for (const auto& entry : fs::directory_iterator(in.folder())) {
      const std::string name = entry.path().filename().string();
      if (handled.count(name)) continue;
      if (!entry.is_regular_file()) {
        summary.notes.push_back("'" + name + "' is not a file: not copied");
        continue;
      }
      bool weights = false;
      for (const char* suffix : kWeightFileSuffixes) weights = weights || ends_with(name, suffix);
      if (weights) {
        summary.notes.push_back("'" + name + "' holds weights in another file: not copied");
        continue;
      }
      fs::copy_file(entry.path(), out.path() / name);
      ++summary.files_copied;
    }
  }
  out.commit();
  return summary;
}

}  // namespace nybble::io
