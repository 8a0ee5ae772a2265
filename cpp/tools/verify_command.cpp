// tools/verify_command.cpp — `nybble verify`: exit status 0 when the checkpoint is consistent,
// 1 with one line per problem otherwise.
#include "args.hpp"
#include "cli.hpp"
#include "io/checkpoint_verify.hpp"

namespace nybble::cli {
namespace {

constexpr const char* kHelp =
    "usage: nybble verify PATH\n"
    "\n"
    "Checks that PATH (a .safetensors file or a model folder) is a consistent quantized checkpoint:\n"
    "safetensors headers in bounds, every 4-bit weight with its absmax, quant_map, nested tensors\n"
    "and quant_state JSON of matching dtypes and sizes, every int8 weight with its SCB, code tables\n"
    "as bitsandbytes writes them, finite non-negative scales, and a config.json quantization_config\n"
    "that agrees. Prints each problem (file, tensor, rule); exit status 0 when there is none, 1\n"
    "otherwise.\n";

}  // namespace

int verify_command(const std::vector<std::string>& argv, std::ostream& out, std::ostream& err) {
  return report_errors("verify", err, [&] {
    const Args args(argv, {{"help", 'h'}});
    if (args.has("help")) {
      out << kHelp;
      return 0;
    }
    if (args.positional().size() != 1) throw UsageError("expects one PATH (a .safetensors file or a model folder)");
    const std::string path = args.positional()[0];
    const auto report = io::verify_checkpoint(io::Checkpoint::open(path));
    for (const auto& p : report.problems) out << "problem: " << p << '\n';
    out << "verify '" << path << "': " << (report.ok() ? "OK" : std::to_string(report.problems.size()) + " problem(s)") << " ("
        << report.weights_4bit << " 4-bit weights, " << report.nested_4bit << " of them double-quantized; " << report.layers_8bit
        << " int8 layers; " << report.plain << " plain tensors)\n";
    return report.ok() ? 0 : 1;
  });
}

}  // namespace nybble::cli
