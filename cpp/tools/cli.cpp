// tools/cli.cpp — choosing the subcommand, usage, version, and error reporting.
#include "cli.hpp"

#include "args.hpp"
#include "nybble/ops.hpp"

namespace nybble::cli {
namespace {

constexpr const char* kUsage =
    "usage: nybble <command> [options]\n"
    "\n"
    "commands:\n"
    "  quantize IN -o OUT --type nf4|fp4|int8   quantize a safetensors file or model folder\n"
    "  inspect PATH                             list tensors, their formats and the footprint\n"
    "  verify PATH                              check a quantized checkpoint's consistency\n"
    "\n"
    "'nybble <command> --help' describes a command's options; 'nybble --version' the build.\n";

}  // namespace

int report_errors(const std::string& command, std::ostream& err, const std::function<int()>& body) {
  try {
    return body();
  } catch (const UsageError& e) {
    err << "nybble " << command << ": " << e.what() << "\nTry 'nybble " << command << " --help'.\n";
    return 2;
  } catch (const std::exception& e) {
    err << "nybble " << command << ": error: " << e.what() << '\n';
    return 1;
  }
}

int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  if (args.empty()) {
    err << kUsage;
    return 2;
  }
  const std::string& command = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (command == "quantize") return quantize_command(rest, out, err);
  if (command == "inspect") return inspect_command(rest, out, err);
  if (command == "verify") return verify_command(rest, out, err);
  if (command == "-h" || command == "--help" || command == "help") {
    out << kUsage;
    return 0;
  }
  if (command == "--version") {
    out << "nybble " << version() << " (CPU kernels: " << cpu_isa() << (cuda_built() ? ", CUDA built" : "") << ")\n";
    return 0;
  }
  err << "nybble: unknown command '" << command << "'\n\n" << kUsage;
  return 2;
}

}  // namespace nybble::cli
