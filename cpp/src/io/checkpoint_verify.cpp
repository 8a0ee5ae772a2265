// io/checkpoint_verify.cpp — the checks listed in checkpoint_verify.hpp.
#include "io/checkpoint_verify.hpp"

#include <cmath>
#include <cstring>
#include <optional>
#include <set>

#include "io/bnb_layout.hpp"
#include "io/quant_state_json.hpp"
#include "nybble/error.hpp"

namespace nybble::io {
namespace {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string float_str(float v) {
  return std::isfinite(v) ? python_float_repr(static_cast<double>(v)) : std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf";
}

class Checker {
 public:
  explicit Checker(const Checkpoint& c) : c_(c), parts_(classify_tensors(c.names())) {}

  VerifyReport run() {
    std::set<std::string> weights4, modules8;
    for (const auto& [name, p] : parts_) {
      if (p.part == Part::Plain) ++report_.plain;
      else if (p.part == Part::SCB) modules8.insert(p.owner);
      else if (p.part == Part::QuantState) weights4.insert(p.owner);
    }
    for (const auto& w : weights4) check_4bit(w);
    for (const auto& m : modules8) check_8bit(m);
    if (c_.config()) check_config(*c_.config());
    return std::move(report_);
  }

 private:
  // A missing tensor is reported in the file of the layer's key tensor (`anchor_`).
  void problem(const std::string& tensor, const std::string& what) {
    const std::string& where = c_.file_of(c_.contains(tensor) ? tensor : anchor_).origin();
    report_.problems.push_back("'" + where + "': tensor '" + tensor + "': " + what);
  }

  // The tensor if it is there with this dtype and shape; a problem otherwise.
  bool expect(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape, const std::string& why) {
    if (!c_.contains(name)) {
      problem(name, "is missing (" + why + ")");
      return false;
    }
    const auto& t = c_.info(name);
    if (t.dtype != dtype || t.shape != shape) {
      problem(name, "is " + t.dtype + " " + shape_str(t.shape) + ", must be " + dtype + " " + shape_str(shape) + " (" + why + ")");
      return false;
    }
    return true;
  }

  std::vector<float> floats(const std::string& name) {
    const auto& t = c_.info(name);
    std::vector<float> v(t.nbytes() / 4);
    if (!v.empty()) std::memcpy(v.data(), c_.data(name), v.size() * 4);
    return v;
  }

  void check_scales(const std::string& name) {
    const auto v = floats(name);
    for (size_t i = 0; i < v.size(); ++i)
      if (!std::isfinite(v[i]) || v[i] < 0.0f) {
        problem(name, "value " + float_str(v[i]) + " at index " + std::to_string(i) + " is not finite and non-negative");
        return;
      }
  }

  void check_table(const std::string& name, const float* want, size_t n, const std::string& table) {
    const auto v = floats(name);
    for (size_t i = 0; i < n; ++i)
      if (!(v[i] == want[i])) {
        problem(name, "differs from the " + table + " at index " + std::to_string(i) + " (" + float_str(v[i]) + ", must be " + float_str(want[i]) + ")");
        return;
      }
  }

  void check_4bit(const std::string& w) {
    ++report_.weights_4bit;
    const bool has_nf4 = c_.contains(quant_state_tensor(w, QuantType::NF4));
    anchor_ = quant_state_tensor(w, has_nf4 ? QuantType::NF4 : QuantType::FP4);
    if (has_nf4 && c_.contains(quant_state_tensor(w, QuantType::FP4))) {
      problem(w, "has both " + quant_state_key(QuantType::NF4) + " and " + quant_state_key(QuantType::FP4) + " (one quant_state per weight)");
      return;
    }
    const QuantType type = has_nf4 ? QuantType::NF4 : QuantType::FP4;
    const std::string qs_name = quant_state_tensor(w, type);
    const auto& qt = c_.info(qs_name);
    if (qt.dtype != "U8" || qt.shape.size() != 1) {
      problem(qs_name, "is " + qt.dtype + " " + shape_str(qt.shape) + ", must be 1-D U8 (the JSON's bytes)");
      return;
    }
    QuantStateJson qs;
    try {
      const std::string& file = c_.file_of(qs_name).origin();
      qs = parse_quant_state_json(c_.data(qs_name), qt.nbytes(), "'" + file + "': tensor '" + qs_name + "'");
    } catch (const Error& e) {
      report_.problems.push_back(e.what());
      return;
    }
    const std::string type_name(quant_type_name(type));
    if (qs.quant_type != type)
      problem(qs_name, "holds quant_type \"" + std::string(quant_type_name(qs.quant_type)) + "\", its key says " + type_name);
    if (qs.nested) ++report_.nested_4bit;
    formats_4bit_.insert(std::string(quant_type_name(qs.quant_type)) + (qs.nested ? "+dq" : ""));

    const int64_t n = qs.numel();
    const int64_t nblocks = num_blocks(n, qs.blocksize);
    const std::string state = "quant_state: " + type_name + " " + shape_str(qs.shape) + ", blocksize " + std::to_string(qs.blocksize);
    if (!c_.contains(w)) {
      problem(w, "is missing (the packed codes of " + state + ")");
    } else {
      const auto& t = c_.info(w);
      const auto storage = dtype_from_safetensors(t.dtype);
      const auto packed = static_cast<uint64_t>(packed_4bit_bytes(n));
      if (!storage || !(*storage == DType::U8 || is_float_dtype(*storage))) {
        problem(w, "dtype " + t.dtype + " cannot hold packed codes (U8, F16, BF16 or F32)");
      } else {
        storages_.insert(torch_dtype_name(*storage));
        const int64_t item = dtype_size(*storage);
        if (t.nbytes() != packed || t.shape != std::vector<int64_t>{static_cast<int64_t>(packed) / item, 1})
          problem(w, "is " + t.dtype + " " + shape_str(t.shape) + " (" + std::to_string(t.nbytes()) + " bytes); the " +
                         std::to_string(n) + " elements of " + shape_str(qs.shape) + " pack into " + std::to_string(packed) +
                         " bytes, shape [" + std::to_string(static_cast<int64_t>(packed) / item) + ", 1]");
      }
    }
    const std::string absmax_dtype = qs.nested ? "U8" : "F32";
    if (expect(w + kAbsmax, absmax_dtype, {nblocks}, "one scale per block of " + std::to_string(qs.blocksize) + " of " + state) &&
        !qs.nested)
      check_scales(w + kAbsmax);
    if (expect(w + kQuantMap, "F32", {16}, "the " + type_name + " code table"))
      check_table(w + kQuantMap, quant_map(type).data(), 16, type_name + " table");
    if (qs.nested) {
      const int64_t nested_blocks = num_blocks(nblocks, qs.nested->blocksize);
      if (expect(w + kNestedAbsmax, "F32", {nested_blocks},
                 "one per nested block of " + std::to_string(qs.nested->blocksize) + " of the " + std::to_string(nblocks) + " absmax codes"))
        check_scales(w + kNestedAbsmax);
      if (expect(w + kNestedQuantMap, "F32", {256}, "the map of the absmax codes"))
        check_table(w + kNestedQuantMap, dynamic_map_signed().data(), 256, "signed dynamic map");
    } else {
      for (const char* s : {kNestedAbsmax, kNestedQuantMap})
        if (c_.contains(w + s)) problem(w + s, "is present but the quant_state has no nested_ fields (no double quantization)");
    }
  }

  void check_8bit(const std::string& m) {
    ++report_.layers_8bit;
    const std::string scb = m + kSCB, weight = m + kWeight, format = m + kWeightFormat;
    anchor_ = scb;
    if (!c_.contains(weight)) {
      problem(scb, "has no int8 weight '" + weight + "'");
      return;
    }
    const auto& t = c_.info(weight);
    if (t.dtype != "I8" || t.shape.size() != 2) {
      problem(weight, "is " + t.dtype + " " + shape_str(t.shape) + ", must be I8 [out, in] (its layer has " + std::string(kSCB + 1) + ")");
      return;
    }
    if (expect(scb, "F32", {t.shape[0]}, "one scale per row of the int8 weight")) check_scales(scb);
    if (c_.contains(format)) {
      const auto& f = c_.info(format);
      if (f.dtype != "U8" || f.nbytes() != 1)
        problem(format, "is " + f.dtype + " " + shape_str(f.shape) + ", must be one U8 (0 = \"row\")");
      else if (*c_.data(format) != 0)
        problem(format, "= " + std::to_string(*c_.data(format)) + ": only 0 (\"row\") loads");
    }
  }

  void config_problem(const std::string& what) {
    const std::string config = (c_.folder() / kConfigFile).string();
    report_.problems.push_back("'" + config + "': " + what);
  }

  void check_config(const nlohmann::json& config) {
    const bool quantized = report_.weights_4bit + report_.layers_8bit > 0;
    if (report_.weights_4bit > 0 && report_.layers_8bit > 0) config_problem("the checkpoint mixes 4-bit weights and 8-bit layers");
    if (!config.contains("quantization_config")) {
      if (quantized) config_problem("has no quantization_config: from_pretrained would not rebuild the quantized layers");
      return;
    }
    const auto& q = config["quantization_config"];
    if (!q.is_object()) return config_problem("quantization_config is not an object");
    if (q.value("quant_method", nlohmann::json()) != "bitsandbytes")
      return config_problem("quantization_config.quant_method is " + q.value("quant_method", nlohmann::json()).dump() + ", not \"bitsandbytes\"");
    auto flag = [&](const char* key) {
      const auto v = q.value(key, nlohmann::json(false));
      if (!v.is_boolean()) config_problem(std::string("quantization_config.") + key + " = " + v.dump() + " is not a boolean");
      return v.is_boolean() && v.get<bool>();
    };
    const bool in4 = flag("load_in_4bit"), in8 = flag("load_in_8bit");
    if (in4 && in8) config_problem("quantization_config sets both load_in_4bit and load_in_8bit");
    if (in4 != (report_.weights_4bit > 0))
      config_problem("quantization_config.load_in_4bit is " + std::string(in4 ? "true" : "false") + " but the checkpoint holds " +
                     std::to_string(report_.weights_4bit) + " 4-bit weights");
    if (in8 != (report_.layers_8bit > 0))
      config_problem("quantization_config.load_in_8bit is " + std::string(in8 ? "true" : "false") + " but the checkpoint holds " +
                     std::to_string(report_.layers_8bit) + " 8-bit layers");
    if (in4) {
      const auto type = q.value("bnb_4bit_quant_type", nlohmann::json("fp4"));
      const auto dq = q.value("bnb_4bit_use_double_quant", nlohmann::json(false));
      const auto storage = q.value("bnb_4bit_quant_storage", nlohmann::json("uint8"));
      for (const auto& f : formats_4bit_) {
        const std::string t = f.substr(0, 3);
        const bool nested = f.size() > 3;
        if (type != t) config_problem("quantization_config.bnb_4bit_quant_type = " + type.dump() + " but weights are " + t);
        if (dq != nested)
          config_problem("quantization_config.bnb_4bit_use_double_quant = " + dq.dump() + " but weights are " +
                         (nested ? "" : "not ") + "double-quantized");
      }
      for (const auto& s : storages_)
        if (storage != s) config_problem("quantization_config.bnb_4bit_quant_storage = " + storage.dump() + " but packed weights are " + s);
    }
    check_skip_modules(q.value("llm_int8_skip_modules", nlohmann::json()));
  }

  void check_skip_modules(const nlohmann::json& skip) {
    if (skip.is_null()) return;
    if (!skip.is_array()) return config_problem("quantization_config.llm_int8_skip_modules is not a list or null");
    for (const auto& [name, p] : parts_) {
      if (p.part != Part::Packed4 && p.part != Part::Int8Weight) continue;
      const std::string m = p.part == Part::Packed4 ? module_of(p.owner) : p.owner;
      for (const auto& pattern : skip) {
        if (!pattern.is_string()) continue;
        const auto s = pattern.get<std::string>();
        if (skip_entry_matches(s, m))
          config_problem("quantization_config.llm_int8_skip_modules lists \"" + s + "\", which names the quantized layer '" + m +
                         "': from_pretrained would build a plain layer for it");
      }
    }
  }

  const Checkpoint& c_;
  std::map<std::string, TensorPart> parts_;
  std::set<std::string> formats_4bit_, storages_;
  std::string anchor_;
  VerifyReport report_;
};

}  // namespace

VerifyReport verify_checkpoint(const Checkpoint& checkpoint) { return Checker(checkpoint).run(); }

}  // namespace nybble::io
