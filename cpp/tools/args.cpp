// tools/args.cpp — parsing a subcommand's arguments (see args.hpp).
#include "args.hpp"

#include <charconv>

namespace nybble::cli {

Args::Args(const std::vector<std::string>& args, const std::vector<OptionSpec>& specs) {
  bool options_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (options_done || a.size() < 2 || a[0] != '-') {
      positional_.push_back(a);
      continue;
    }
    if (a == "--") {
      options_done = true;
      continue;
    }
    std::string name, value;
    bool inline_value = false;
    const OptionSpec* spec = nullptr;
    if (a[1] == '-') {
      const size_t eq = a.find('=');
      name = a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
      if (eq != std::string::npos) {
        value = a.substr(eq + 1);
        inline_value = true;
      }
      for (const auto& s : specs)
        if (s.name == name) spec = &s;
    } else if (a.size() == 2) {
      for (const auto& s : specs)
        if (s.alias == a[1]) spec = &s;
      if (spec) name = spec->name;
    }
    if (!spec) throw UsageError("unknown option '" + a + "'");
    if (spec->takes_value && !inline_value) {
      if (i + 1 >= args.size()) throw UsageError("option --" + name + " needs a value");
      value = args[++i];
    } else if (!spec->takes_value && inline_value) {
      throw UsageError("option --" + name + " takes no value");
    }
    auto& v = values_[name];
    if (!v.empty() && !spec->repeatable) throw UsageError("option --" + name + " given twice");
    v.push_back(value);
  }
}

std::string Args::get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.front();
}

const std::vector<std::string>& Args::all(const std::string& name) const {
  static const std::vector<std::string> none;
  auto it = values_.find(name);
  return it == values_.end() ? none : it->second;
}

long long Args::get_int(const std::string& name, long long fallback, long long lo, long long hi) const {
  if (!has(name)) return fallback;
  const std::string s = get(name);
  long long v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < lo || v > hi)
    throw UsageError("--" + name + " " + s + ": must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
  return v;
}

}  // namespace nybble::cli
