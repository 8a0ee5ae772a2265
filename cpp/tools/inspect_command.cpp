// tools/inspect_command.cpp — `nybble inspect`: every tensor's name, dtype, shape and format, and
// the footprint of each format.
#include <algorithm>
#include <cstdio>
#include <map>
#include <optional>

#include "args.hpp"
#include "cli.hpp"
#include "io/bnb_layout.hpp"
#include "io/checkpoint.hpp"
#include "io/quant_state_json.hpp"
#include "nybble/error.hpp"
#include "progress.hpp"

namespace nybble::cli {
namespace {

constexpr const char* kHelp =
    "usage: nybble inspect PATH\n"
    "\n"
    "Lists every tensor of PATH (a .safetensors file or a model folder) with its dtype, shape and\n"
    "format (plain; nf4/fp4 with blocksize and double quantization, and the weight it stands for;\n"
    "int8), then the bytes each format takes and the bits per parameter of quantized weights.\n";

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string state_label(const io::QuantStateJson& qs) {
  return std::string(quant_type_name(qs.quant_type)) + ", blocksize " + std::to_string(qs.blocksize) +
         (qs.nested ? ", double quant" : "");
}

struct Group {
  size_t weights = 0, tensors = 0;
  uint64_t bytes = 0;
  int64_t params = 0;
};

}  // namespace

int inspect_command(const std::vector<std::string>& argv, std::ostream& out, std::ostream& err) {
  return report_errors("inspect", err, [&] {
    const Args args(argv, {{"help", 'h'}});
    if (args.has("help")) {
      out << kHelp;
      return 0;
    }
    if (args.positional().size() != 1) throw UsageError("expects one PATH (a .safetensors file or a model folder)");
    const auto c = io::Checkpoint::open(args.positional()[0]);
    const auto names = c.names();
    const auto parts = io::classify_tensors(names);

    std::map<std::string, std::optional<io::QuantStateJson>> states;  // 4-bit weight -> its state, if readable
    for (const auto& [name, p] : parts) {
      if (p.part != io::Part::QuantState) continue;
      try {
        states[p.owner] = io::parse_quant_state_json(c.data(name), c.info(name).nbytes(), name);
      } catch (const Error&) {
        states[p.owner] = std::nullopt;
      }
    }

    struct Row {
      std::string name, dtype, shape, format, group;
    };
    std::vector<Row> rows;
    std::map<std::string, Group> groups;
    for (const auto& name : names) {
      const auto& t = c.info(name);
      const auto& p = parts.at(name);
      const std::string type(quant_type_name(p.quant_type));
      const auto& qs = states.count(p.owner) ? states.at(p.owner) : std::nullopt;
      std::string format, group = "plain";
      switch (p.part) {
        case io::Part::Plain: format = "plain"; break;
        case io::Part::Packed4:
          format = qs ? state_label(*qs) + ": " + io::torch_dtype_name(qs->dtype) + " " + shape_str(qs->shape)
                      : type + " (quant_state unreadable; see nybble verify)";
          break;
        case io::Part::Absmax: format = type + " absmax" + (qs && qs->nested ? " (8-bit codes)" : ""); break;
        case io::Part::QuantMap: format = type + " code table"; break;
        case io::Part::NestedAbsmax: format = type + " nested absmax"; break;
        case io::Part::NestedQuantMap: format = type + " nested code table"; break;
        case io::Part::QuantState: format = type + " quant_state (JSON)"; break;
        case io::Part::Int8Weight: format = "int8 rows"; break;
        case io::Part::SCB: format = "int8 row scales"; break;
        case io::Part::WeightFormat: format = "int8 layout (0 = row)"; break;
      }
      if (p.part == io::Part::Int8Weight || p.part == io::Part::SCB || p.part == io::Part::WeightFormat) group = "int8";
      else if (p.part != io::Part::Plain) group = qs ? state_label(*qs) : type + " (quant_state unreadable)";
      Group& g = groups[group];
      ++g.tensors;
      g.bytes += t.nbytes();
      if (p.part == io::Part::Packed4 || p.part == io::Part::Int8Weight) {
        ++g.weights;
        g.params += p.part == io::Part::Int8Weight ? t.numel() : qs ? qs->numel() : 0;
      }
      rows.push_back({name, t.dtype, shape_str(t.shape), format, group});
    }

    size_t wn = 4, wd = 5, ws = 5;
    for (const auto& r : rows) {
      wn = std::max(wn, r.name.size());
      wd = std::max(wd, r.dtype.size());
      ws = std::max(ws, r.shape.size());
    }
    auto pad = [](const std::string& s, size_t w) { return s + std::string(w - s.size() + 2, ' '); };
    out << pad("name", wn) << pad("dtype", wd) << pad("shape", ws) << "format\n";
    for (const auto& r : rows) out << pad(r.name, wn) << pad(r.dtype, wd) << pad(r.shape, ws) << r.format << '\n';

    const size_t nfiles = c.files().size();
    out << "\ntotal: " << names.size() << " tensors in " << nfiles << (nfiles == 1 ? " file" : " files") << ", "
        << human_bytes(c.tensor_bytes()) << " of tensor data (" << c.tensor_bytes() << " bytes)\n";
    for (const auto& [label, g] : groups) {
      if (label == "plain") continue;
      out << "  " << label << ": " << g.weights << " weights, " << g.params << " parameters in " << g.tensors << " tensors, "
          << human_bytes(g.bytes);
      if (g.params > 0) {
        char bits[32];
        std::snprintf(bits, sizeof(bits), "%.2f", static_cast<double>(g.bytes) * 8.0 / static_cast<double>(g.params));
        out << " (" << bits << " bits per parameter)";
      }
      out << '\n';
    }
    if (groups.count("plain")) out << "  plain: " << groups["plain"].tensors << " tensors, " << human_bytes(groups["plain"].bytes) << '\n';
    return 0;
  });
}

}  // namespace nybble::cli
