// io/bnb_layout.cpp — recognizing the parts of quantized layers by their keys.
#include "io/bnb_layout.hpp"

#include <set>

#include "io/quant_state_json.hpp"

namespace nybble::io {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool skip_entry_matches(const std::string& entry, const std::string& module) {
  return module == entry || module.rfind(entry + ".", 0) == 0 || ends_with(module, entry);
}

std::string quant_state_tensor(const std::string& weight, QuantType t) { return weight + "." + quant_state_key(t); }

std::string module_of(const std::string& weight) {
  return ends_with(weight, kWeight) ? weight.substr(0, weight.size() - std::string(kWeight).size()) : weight;
}

std::map<std::string, TensorPart> classify_tensors(const std::vector<std::string>& names) {
  const std::set<std::string> present(names.begin(), names.end());
  std::map<std::string, TensorPart> parts;
  for (const auto& n : names) parts[n] = TensorPart{};
  auto mark = [&](const std::string& name, Part part, const std::string& owner, QuantType t) {
    if (present.count(name)) parts[name] = TensorPart{part, owner, t};
  };
  for (const auto& n : names) {
    for (QuantType t : {QuantType::NF4, QuantType::FP4}) {
      const std::string suffix = quant_state_tensor("", t);
      if (!ends_with(n, suffix)) continue;
      const std::string w = n.substr(0, n.size() - suffix.size());
      mark(n, Part::QuantState, w, t);
      mark(w, Part::Packed4, w, t);
      mark(w + kAbsmax, Part::Absmax, w, t);
      mark(w + kQuantMap, Part::QuantMap, w, t);
      mark(w + kNestedAbsmax, Part::NestedAbsmax, w, t);
      mark(w + kNestedQuantMap, Part::NestedQuantMap, w, t);
    }
    if (ends_with(n, kSCB)) {
      const std::string m = n.substr(0, n.size() - std::string(kSCB).size());
      mark(n, Part::SCB, m, QuantType::NF4);
      mark(m + kWeight, Part::Int8Weight, m, QuantType::NF4);
      mark(m + kWeightFormat, Part::WeightFormat, m, QuantType::NF4);
    }
  }
  return parts;
}

}  // namespace nybble::io
