// cli_quantize_test.cpp — `nybble quantize` on synthetic checkpoints: the tensors it writes equal
// the library's ops on the same weights byte for byte, the folder is what from_pretrained reads
// (config, index, copied files), inspect and verify accept it, and a failing run leaves nothing.
#include <gtest/gtest.h>

#include <cmath>

#include "cli_test_util.hpp"
#include "io/checkpoint.hpp"
#include "io/quant_state_json.hpp"

namespace nybble {
namespace {

using namespace test;

// A Llama-shaped layer with awkward sizes (odd element counts, blocks straddling rows) in every
// float dtype, plus the tensors that must be copied unchanged.
std::map<std::string, RawTensor> small_model(uint64_t seed) {
  return {
      {"model.embed_tokens.weight", raw(randn(DType::F32, 32 * 16, seed + 1), {32, 16})},
      {"model.layers.0.self_attn.q_proj.weight", raw(randn(DType::BF16, 16 * 16, seed + 2), {16, 16})},
      {"model.layers.0.mlp.up_proj.weight", raw(randn(DType::F16, 40 * 16, seed + 3), {40, 16})},
      {"model.layers.0.mlp.up_proj.bias", raw(randn(DType::F32, 40, seed + 4), {40})},
      {"model.layers.0.mlp.down_proj.weight", raw(randn(DType::F32, 7 * 37, seed + 5, 0.02f), {7, 37})},
      {"model.layers.0.input_layernorm.weight", raw(randn(DType::F32, 16, seed + 6), {16})},
      {"lm_head.weight", raw(randn(DType::F32, 32 * 16, seed + 7), {32, 16})},
  };
}

const char* const kLinears[] = {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight",
                                "model.layers.0.mlp.down_proj.weight"};
const char* const kCopied[] = {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.bias",
                               "model.layers.0.input_layernorm.weight", "lm_head.weight"};

DType dtype_of(const RawTensor& t) { return *io::dtype_from_safetensors(t.dtype); }

template <class T>
std::vector<uint8_t> as_bytes(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::vector<uint8_t> raw_data(const io::SafetensorsFile& f, const std::string& name) {
  const uint8_t* p = f.data(name);
  return std::vector<uint8_t>(p, p + f.info(name).nbytes());
}

struct Config4 {
  const char* type;
  QuantType qt;
  bool dq;
  int64_t blocksize;
};

TEST(CliQuantize, FourBitEqualsLibraryOps) {
  SCOPED_TRACE(seed_note());
  ScratchDir dir;
  const auto model = small_model(test_seed());
  write_file(dir / "in.safetensors", safetensors_bytes(model));
  for (const Config4 c : {Config4{"nf4", QuantType::NF4, false, 64}, Config4{"nf4", QuantType::NF4, true, 64},
                          Config4{"fp4", QuantType::FP4, true, 128}, Config4{"fp4", QuantType::FP4, false, 32}}) {
    SCOPED_TRACE(std::string(c.type) + (c.dq ? " dq" : "") + " bs " + std::to_string(c.blocksize));
    const std::string out = (dir / (std::string("out-") + c.type + (c.dq ? "-dq" : "") + std::to_string(c.blocksize))).string();
    std::vector<std::string> args = {"quantize", (dir / "in.safetensors").string(), "-o", out, "--type", c.type,
                                     "--blocksize", std::to_string(c.blocksize), "-q"};
    if (c.dq) args.push_back("--double-quant");
    const auto r = run_cli(args);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_TRUE(contains(r.out, "3 weights quantized")) << r.out;
    const auto f = io::SafetensorsFile::read(out + "/model.safetensors");
    EXPECT_EQ(f.metadata().at("format"), "pt");
    for (const char* name : kCopied) {
      EXPECT_EQ(f.info(name).dtype, model.at(name).dtype) << name;
      EXPECT_EQ(f.info(name).shape, model.at(name).shape) << name;
      EXPECT_EQ(raw_data(f, name), model.at(name).bytes) << name;
    }
    for (const std::string w : kLinears) {
      SCOPED_TRACE(w);
      const auto& in = model.at(w);
      const int64_t n = in.shape[0] * in.shape[1], nb = num_blocks(n, c.blocksize);
      std::vector<uint8_t> packed(static_cast<size_t>(packed_4bit_bytes(n)));
      std::vector<float> absmax(static_cast<size_t>(nb));
      const TensorView absmax_view(absmax.data(), DType::F32, {nb});
      quantize_4bit(TensorView(in.bytes.data(), dtype_of(in), {n}), TensorView(packed.data(), DType::U8, {static_cast<int64_t>(packed.size())}),
                    absmax_view, c.blocksize, c.qt);
      EXPECT_EQ(f.info(w).shape, (std::vector<int64_t>{static_cast<int64_t>(packed.size()), 1}));
      EXPECT_EQ(raw_data(f, w), packed);
      EXPECT_EQ(raw_data(f, w + ".quant_map"), as_bytes(std::vector<float>(quant_map(c.qt).begin(), quant_map(c.qt).end())));
      io::QuantStateJson qs{c.qt, c.blocksize, dtype_of(in), in.shape, std::nullopt};
      if (c.dq) {
        const float offset = absmax_mean(absmax_view);
        std::vector<uint8_t> q(static_cast<size_t>(nb));
        std::vector<float> nested(static_cast<size_t>(num_blocks(nb, 256)));
        quantize_absmax_nested(absmax_view, offset, TensorView(q.data(), DType::U8, {nb}),
                               TensorView(nested.data(), DType::F32, {static_cast<int64_t>(nested.size())}));
        EXPECT_EQ(f.info(w + ".absmax").dtype, "U8");
        EXPECT_EQ(raw_data(f, w + ".absmax"), q);
        EXPECT_EQ(raw_data(f, w + ".nested_absmax"), as_bytes(nested));
        EXPECT_EQ(raw_data(f, w + ".nested_quant_map"), as_bytes(std::vector<float>(dynamic_map_signed().begin(), dynamic_map_signed().end())));
        qs.nested = io::QuantStateJson::Nested{256, static_cast<double>(offset)};
      } else {
        EXPECT_EQ(raw_data(f, w + ".absmax"), as_bytes(absmax));
        EXPECT_FALSE(f.contains(w + ".nested_absmax"));
      }
      const auto json = raw_data(f, w + ".quant_state.bitsandbytes__" + c.type);
      EXPECT_EQ(std::string(json.begin(), json.end()), io::format_quant_state_json(qs));
    }
    EXPECT_EQ(f.tensors().size(), 4u + 3u * (c.dq ? 6u : 4u));
    const auto v = run_cli({"verify", out});
    EXPECT_EQ(v.status, 0) << v.out << v.err;
    const auto i = run_cli({"inspect", out});
    ASSERT_EQ(i.status, 0) << i.err;
    EXPECT_TRUE(contains(i.out, std::string(c.type) + ", blocksize " + std::to_string(c.blocksize) + (c.dq ? ", double quant" : "") +
                                    ": float32 [7, 37]"))
        << i.out;
    EXPECT_TRUE(contains(i.out, "total: " + std::to_string(f.tensors().size()) + " tensors in 1 file")) << i.out;
  }
}

TEST(CliQuantize, Int8EqualsLibraryOps) {
  SCOPED_TRACE(seed_note());
  ScratchDir dir;
  const auto model = small_model(test_seed());
  write_file(dir / "in.safetensors", safetensors_bytes(model));
  const std::string out = (dir / "out").string();
  const int threads = get_num_threads();
  const auto r = run_cli({"quantize", (dir / "in.safetensors").string(), "-o", out, "-t", "int8", "-q", "-j", "1"});
  set_num_threads(threads);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto f = io::SafetensorsFile::read(out + "/model.safetensors");
  for (const std::string w : kLinears) {
    SCOPED_TRACE(w);
    const auto& in = model.at(w);
    const int64_t rows = in.shape[0], cols = in.shape[1];
    std::vector<int8_t> codes(static_cast<size_t>(rows * cols));
    std::vector<float> scb(static_cast<size_t>(rows));
    int8_vectorwise_quant(TensorView(in.bytes.data(), dtype_of(in), {rows, cols}), 0.0f, TensorView(codes.data(), DType::I8, {rows, cols}),
                          TensorView(scb.data(), DType::F32, {rows}));
    const std::string m = w.substr(0, w.size() - 7);
    EXPECT_EQ(f.info(w).dtype, "I8");
    EXPECT_EQ(f.info(w).shape, in.shape);
    EXPECT_EQ(raw_data(f, w), as_bytes(codes));
    EXPECT_EQ(raw_data(f, m + ".SCB"), as_bytes(scb));
    EXPECT_EQ(f.info(m + ".weight_format").shape, std::vector<int64_t>{});
    EXPECT_EQ(raw_data(f, m + ".weight_format"), std::vector<uint8_t>{0});
  }
  EXPECT_EQ(run_cli({"verify", out}).status, 0);
}

// A Hugging Face folder: config, tokenizer and generation config, a subfolder and a stale weight
// file; the model in two shards with their index.
void make_model_folder(const fs::path& dir, const std::map<std::string, RawTensor>& model) {
  fs::create_directories(dir / "onnx");
  std::map<std::string, RawTensor> a, b;
  nlohmann::json weight_map;
  for (const auto& [name, t] : model) {
    const bool first = name.find("mlp") == std::string::npos;
    (first ? a : b)[name] = t;
    weight_map[name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_file(dir / "model-00001-of-00002.safetensors", safetensors_bytes(a));
  write_file(dir / "model-00002-of-00002.safetensors", safetensors_bytes(b));
  write_file(dir / "model.safetensors.index.json", nlohmann::json{{"metadata", {{"total_size", 1}}}, {"weight_map", weight_map}}.dump());
  write_file(dir / "config.json", nlohmann::json{{"model_type", "llama"}, {"hidden_size", 16}, {"rms_norm_eps", 1e-06}, {"tie_word_embeddings", false}}.dump());
  write_file(dir / "tokenizer.json", std::string("{\"tokens\": [\"a\", \"b\"]}"));
  write_file(dir / "generation_config.json", std::string("{\"do_sample\": false}"));
  write_file(dir / "pytorch_model.bin", std::string("stale"));
}

TEST(CliQuantize, ShardedFolder) {
  SCOPED_TRACE(seed_note());
  ScratchDir dir;
  const auto model = small_model(test_seed());
  make_model_folder(dir / "in", model);
  const std::string out = (dir / "out").string();
  const auto r = run_cli({"quantize", (dir / "in").string(), "-o", out, "--type", "nf4", "--double-quant", "--compute-dtype", "bf16"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(contains(r.err, "quantize: 100%")) << r.err;  // plain progress lines (not a terminal)
  EXPECT_TRUE(contains(r.err, "'pytorch_model.bin' holds weights in another file: not copied")) << r.err;
  EXPECT_TRUE(contains(r.err, "'onnx' is not a file: not copied")) << r.err;
  EXPECT_EQ(read_file(dir / "out" / "tokenizer.json"), read_file(dir / "in" / "tokenizer.json"));
  EXPECT_EQ(read_file(dir / "out" / "generation_config.json"), read_file(dir / "in" / "generation_config.json"));
  EXPECT_FALSE(fs::exists(dir / "out" / "pytorch_model.bin"));

  const auto config = io::read_json_file(dir / "out" / "config.json");
  EXPECT_EQ(config["model_type"], "llama");
  EXPECT_EQ(config["rms_norm_eps"], 1e-06);
  const nlohmann::json want = {
      {"quant_method", "bitsandbytes"},     {"_load_in_4bit", true},
      {"_load_in_8bit", false},             {"load_in_4bit", true},
      {"load_in_8bit", false},              {"llm_int8_threshold", 6.0},
      {"llm_int8_skip_modules", {"lm_head", "model.embed_tokens"}},
      {"llm_int8_enable_fp32_cpu_offload", false},
      {"llm_int8_has_fp16_weight", false},  {"bnb_4bit_quant_type", "nf4"},
      {"bnb_4bit_use_double_quant", true},  {"bnb_4bit_compute_dtype", "bfloat16"},
      {"bnb_4bit_quant_storage", "uint8"}};
  EXPECT_EQ(config["quantization_config"], want) << config["quantization_config"].dump();

  // The index maps every output tensor to the shard that holds it; total_size counts their bytes.
  const auto c = io::Checkpoint::open(out);
  ASSERT_EQ(c.file_names(), (std::vector<std::string>{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}));
  EXPECT_EQ(c.index()->at("metadata").at("total_size"), c.tensor_bytes());
  EXPECT_EQ(c.index()->at("weight_map").size(), c.names().size());
  EXPECT_EQ(c.file_of("model.layers.0.mlp.up_proj.weight.absmax").origin(), out + "/model-00002-of-00002.safetensors");
  EXPECT_EQ(run_cli({"verify", out}).status, 0);
}

TEST(CliQuantize, SkipGlobsAndLmHead) {
  ScratchDir dir;
  const auto model = small_model(test_seed());
  make_model_folder(dir / "in", model);
  const auto r = run_cli({"quantize", (dir / "in").string(), "-o", (dir / "a").string(), "-t", "fp4", "--skip", "*.mlp.up_proj",
                          "--skip=*q_proj.weight", "-q"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto a = io::Checkpoint::open((dir / "a").string());
  EXPECT_EQ(a.info("model.layers.0.mlp.up_proj.weight").dtype, "F16");
  EXPECT_EQ(a.info("model.layers.0.self_attn.q_proj.weight").dtype, "BF16");
  EXPECT_EQ(a.info("model.layers.0.mlp.down_proj.weight").dtype, "U8");
  EXPECT_EQ(a.config()->at("quantization_config").at("llm_int8_skip_modules"),
            (nlohmann::json{"lm_head", "model.embed_tokens", "model.layers.0.mlp.up_proj", "model.layers.0.self_attn.q_proj"}));
  EXPECT_EQ(run_cli({"verify", (dir / "a").string()}).status, 0);

  ASSERT_EQ(run_cli({"quantize", (dir / "in").string(), "-o", (dir / "b").string(), "-t", "int8", "--quantize-lm-head", "-q"}).status, 0);
  const auto b = io::Checkpoint::open((dir / "b").string());
  EXPECT_EQ(b.info("lm_head.weight").dtype, "I8");
  EXPECT_TRUE(b.contains("lm_head.SCB"));
  EXPECT_EQ(b.info("model.embed_tokens.weight").dtype, "F32");
  EXPECT_EQ(b.config()->at("quantization_config").at("llm_int8_skip_modules"), (nlohmann::json{"model.embed_tokens"}));
}

TEST(CliQuantize, RefusesLayersThatTheSkipListWouldAlsoKeep) {
  // transformers keeps every module whose name ends like an llm_int8_skip_modules entry ("lm_head").
  ScratchDir dir;
  auto model = small_model(test_seed());
  model["model.extra_lm_head.weight"] = raw(randn(DType::F32, 16 * 16, 9), {16, 16});
  write_file(dir / "in.safetensors", safetensors_bytes(model));
  auto r = run_cli({"quantize", (dir / "in.safetensors").string(), "-o", (dir / "out").string(), "-t", "nf4", "-q"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.err, "tensor 'model.extra_lm_head.weight' would be quantized, but its module's name ends like the kept module 'lm_head'"))
      << r.err;
  r = run_cli({"quantize", (dir / "in.safetensors").string(), "-o", (dir / "out").string(), "-t", "nf4", "-q", "--skip", "*extra*"});
  EXPECT_EQ(r.status, 0) << r.err;
}

// Nothing but the input is left in `dir` (no output, no temporary folder).
void expect_only_input(const ScratchDir& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir.path)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"in"});
}

TEST(CliQuantize, FailingRunLeavesNothing) {
  ScratchDir dir;
  auto model = small_model(test_seed());
  // An infinite value in the last shard's weight: the error comes after the first shard is written.
  std::vector<float> bad(7 * 37, 0.5f);
  bad[100] = INFINITY;
  model["model.layers.0.mlp.down_proj.weight"] = raw_values("F32", {7, 37}, bad);
  make_model_folder(dir / "in", model);
  const auto out = (dir / "out").string();
  for (const char* type : {"nf4", "int8"}) {
    const auto r = run_cli({"quantize", (dir / "in").string(), "-o", out, "-t", type, "-q"});
    EXPECT_EQ(r.status, 1);
    EXPECT_TRUE(contains(r.err, "model-00002-of-00002.safetensors")) << r.err;
    EXPECT_TRUE(contains(r.err, "tensor 'model.layers.0.mlp.down_proj.weight' holds an infinite value")) << r.err;
    expect_only_input(dir);
  }

  model["model.layers.0.mlp.down_proj.weight"] = raw_values("F64", {2, 2}, std::vector<double>{1, 2, 3, 4});
  fs::remove_all(dir / "in");
  make_model_folder(dir / "in", model);
  auto r = run_cli({"quantize", (dir / "in").string(), "-o", out, "-t", "nf4", "-q"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.err, "tensor 'model.layers.0.mlp.down_proj.weight' is F64 [2, 2]: only F32, F16 and BF16")) << r.err;
  expect_only_input(dir);
  // --skip keeps it as it is.
  r = run_cli({"quantize", (dir / "in").string(), "-o", out, "-t", "nf4", "-q", "--skip", "*down_proj"});
  EXPECT_EQ(r.status, 0) << r.err;
}

TEST(CliQuantize, RefusesExistingOutputAndQuantizedInput) {
  ScratchDir dir;
  write_file(dir / "in.safetensors", safetensors_bytes(small_model(test_seed())));
  const auto in = (dir / "in.safetensors").string(), out = (dir / "out").string();
  ASSERT_EQ(run_cli({"quantize", in, "-o", out, "-t", "nf4", "-q"}).status, 0);
  auto r = run_cli({"quantize", in, "-o", out, "-t", "fp4", "-q"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.err, "output '" + out + "' exists")) << r.err;
  r = run_cli({"quantize", in, "-o", out, "-t", "fp4", "-q", "--force"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(io::Checkpoint::open(out).contains("model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__fp4"));
  r = run_cli({"quantize", out, "-o", (dir / "again").string(), "-t", "nf4", "-q"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.err, "shows the checkpoint is quantized already")) << r.err;
  r = run_cli({"quantize", out, "-o", out, "-t", "nf4", "-q", "--force"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.err, "is the input")) << r.err;
}

TEST(CliQuantize, CommandLineMistakes) {
  const std::pair<std::vector<std::string>, std::string> cases[] = {
      {{}, "usage: nybble <command>"},
      {{"frobnicate"}, "unknown command 'frobnicate'"},
      {{"quantize", "in", "-o", "out"}, "needs --type"},
      {{"quantize", "in", "--type", "nf4"}, "needs -o OUT"},
      {{"quantize", "-o", "out", "--type", "nf4"}, "expects one input"},
      {{"quantize", "in", "-o", "out", "--type", "nf3"}, "--type nf3: must be nf4, fp4 or int8"},
      {{"quantize", "in", "-o", "out", "--type", "int8", "--double-quant"}, "--double-quant is for 4-bit types"},
      {{"quantize", "in", "-o", "out", "--type", "nf4", "--bogus"}, "unknown option '--bogus'"},
      {{"quantize", "in", "-o", "out", "--type", "nf4", "--threads", "0"}, "--threads 0: must be an integer from 1"},
      {{"quantize", "in", "-o", "out", "--type", "nf4", "--compute-dtype", "fp8"}, "--compute-dtype fp8"},
      {{"quantize", "in", "-o", "out", "-o", "out2", "--type", "nf4"}, "option --output given twice"},
      {{"inspect"}, "expects one PATH"},
      {{"verify", "a", "b"}, "expects one PATH"},
  };
  for (const auto& [args, message] : cases) {
    const auto r = run_cli(args);
    EXPECT_EQ(r.status, 2) << r.err;
    EXPECT_TRUE(contains(r.err, message)) << "'" << message << "' not in: " << r.err;
  }
  auto r = run_cli({"quantize", "in", "-o", "out", "--type", "nf4", "--blocksize", "48"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.err, "blocksize = 48 is not a 4-bit blocksize")) << r.err;
  r = run_cli({"quantize", "/nonexistent/in", "-o", "out", "--type", "nf4"});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.err, "'/nonexistent/in': no such file or folder")) << r.err;
  for (const char* command : {"quantize", "inspect", "verify"}) {
    r = run_cli({command, "--help"});
    EXPECT_EQ(r.status, 0);
    EXPECT_TRUE(contains(r.out, std::string("usage: nybble ") + command)) << r.out;
  }
}

}  // namespace
}  // namespace nybble
