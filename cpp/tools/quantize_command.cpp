// tools/quantize_command.cpp — `nybble quantize`: options, progress, Ctrl-C, the summary.
#include <unistd.h>

#include <csignal>
#include <iostream>

#include "args.hpp"
#include "cli.hpp"
#include "io/checkpoint_quantize.hpp"
#include "nybble/error.hpp"
#include "nybble/ops.hpp"
#include "progress.hpp"

namespace nybble::cli {
namespace {

constexpr const char* kHelp =
    "usage: nybble quantize IN -o OUT --type nf4|fp4|int8 [options]\n"
    "\n"
    "Quantizes the linear layers' weights of IN (a .safetensors file, or a Hugging Face model folder:\n"
    "config.json with model.safetensors or sharded model-*-of-*.safetensors and their index) into the\n"
    "folder OUT, which transformers' from_pretrained loads with bitsandbytes (the reference or\n"
    "nybble's drop-in) as it is. Embeddings, lm_head, norms and biases are copied unchanged.\n"
    "\n"
    "options:\n"
    "  -o, --output OUT         the folder to write (must not exist, unless --force)\n"
    "  -t, --type TYPE          nf4 | fp4 (4-bit) | int8 (LLM.int8 rows)\n"
    "      --double-quant       4-bit: quantize the absmax too (bnb_4bit_use_double_quant)\n"
    "      --blocksize N        4-bit: elements per scale, 32..4096, a power of two (default 64)\n"
    "      --compute-dtype D    4-bit: bnb_4bit_compute_dtype in config.json: bf16 | fp16 | fp32 (default fp32)\n"
    "      --skip GLOB          keep matching modules or tensors as they are (repeatable), e.g. '*.mlp.down_proj'\n"
    "      --quantize-lm-head   quantize lm_head too\n"
    "  -j, --threads N          worker threads (default: all cores)\n"
    "      --force              replace OUT if it exists\n"
    "  -q, --quiet              no progress on stderr\n"
    "  -h, --help               this text\n";

volatile std::sig_atomic_t g_interrupted = 0;

extern "C" void on_signal(int) { g_interrupted = 1; }

// SIGINT/SIGTERM set a flag (checked between tensors) while it lives, so an interrupted run
// unwinds and removes its partial output.
class InterruptGuard {
 public:
  InterruptGuard() {
    g_interrupted = 0;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
  }
  ~InterruptGuard() {
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
  }
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

DType parse_compute_dtype(const std::string& s) {
  if (s == "bf16" || s == "bfloat16") return DType::BF16;
  if (s == "fp16" || s == "float16") return DType::F16;
  if (s == "fp32" || s == "float32") return DType::F32;
  throw UsageError("--compute-dtype " + s + ": must be bf16, fp16 or fp32");
}

}  // namespace

int quantize_command(const std::vector<std::string>& argv, std::ostream& out, std::ostream& err) {
  return report_errors("quantize", err, [&] {
    const Args args(argv, {{"output", 'o', true},
                           {"type", 't', true},
                           {"double-quant"},
                           {"blocksize", 0, true},
                           {"compute-dtype", 0, true},
                           {"skip", 0, true, true},
                           {"quantize-lm-head"},
                           {"threads", 'j', true},
                           {"force"},
                           {"quiet", 'q'},
                           {"help", 'h'}});
    if (args.has("help")) {
      out << kHelp;
      return 0;
    }
    if (args.positional().size() != 1) throw UsageError("expects one input (a .safetensors file or a model folder), got " + std::to_string(args.positional().size()));
    if (!args.has("output")) throw UsageError("needs -o OUT, the folder to write");
    if (!args.has("type")) throw UsageError("needs --type nf4, fp4 or int8");

    io::QuantizeOptions o;
    const std::string type = args.get("type");
    if (type == "nf4") o.quant_type = QuantType::NF4;
    else if (type == "fp4") o.quant_type = QuantType::FP4;
    else if (type != "int8") throw UsageError("--type " + type + ": must be nf4, fp4 or int8");
    if (!o.quant_type) {
      for (const char* only4 : {"double-quant", "blocksize", "compute-dtype"})
        if (args.has(only4)) throw UsageError(std::string("--") + only4 + " is for 4-bit types (nf4, fp4), not int8");
    }
    o.double_quant = args.has("double-quant");
    o.blocksize = args.get_int("blocksize", 64, 1, 1 << 30);  // the rule itself is checked with the other options
    o.compute_dtype = parse_compute_dtype(args.get("compute-dtype", "fp32"));
    o.skip = args.all("skip");
    o.quantize_lm_head = args.has("quantize-lm-head");
    o.replace = args.has("force");
    if (args.has("threads")) set_num_threads(static_cast<int>(args.get_int("threads", 0, 1, 4096)));

    const std::string in = args.positional()[0], dest = args.get("output");
    const bool quiet = args.has("quiet");
    Progress bar(err, "quantize", &err == &std::cerr && ::isatty(STDERR_FILENO));
    InterruptGuard guard;
    const auto summary = io::quantize_checkpoint(in, dest, o, [&](const io::QuantizeProgress& p) {
      if (g_interrupted) throw Error(ErrorKind::Runtime, "interrupted; nothing was written");
      if (!quiet) bar.update(p.bytes_done, p.bytes_total, p.tensors_done, p.tensors_total, p.tensor);
    });
    if (!quiet) bar.finish();
    for (const auto& note : summary.notes) err << "nybble quantize: note: " << note << '\n';
    std::string what = o.quant_type ? std::string(quant_type_name(*o.quant_type)) + ", blocksize " + std::to_string(o.blocksize) +
                                          (o.double_quant ? ", double quant" : "")
                                    : "int8";
    out << "wrote '" << dest << "': " << summary.quantized << " weights quantized (" << what << "), " << summary.copied
        << " tensors copied, " << summary.files_copied << " other files; tensor data " << human_bytes(summary.bytes_in) << " -> "
        << human_bytes(summary.bytes_out) << '\n';
    return 0;
  });
}

}  // namespace nybble::cli
