// tools/args.hpp — the command line of one subcommand: options (--name value, --name=value, a
// one-letter alias, flags) and positional arguments.
#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace nybble::cli {

// A mistake in the command line: reported with a pointer to --help, exit status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct OptionSpec {
  std::string name;       // "output" for --output
  char alias = 0;         // 'o' for -o
  bool takes_value = false;
  bool repeatable = false;
};

class Args {
 public:
  // Throws UsageError naming the option for unknown options, missing values and repeats.
  Args(const std::vector<std::string>& args, const std::vector<OptionSpec>& specs);

  const std::vector<std::string>& positional() const { return positional_; }
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  // The option's value, or fallback when it was not given.
  std::string get(const std::string& name, const std::string& fallback = "") const;
  const std::vector<std::string>& all(const std::string& name) const;
  // The value as an integer in [lo, hi]; UsageError otherwise.
  long long get_int(const std::string& name, long long fallback, long long lo, long long hi) const;

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::vector<std::string>> values_;
};

}  // namespace nybble::cli
