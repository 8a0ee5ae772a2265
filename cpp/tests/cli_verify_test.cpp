// cli_verify_test.cpp — `nybble verify` finds each kind of damage to a quantized checkpoint and
// names the file, the tensor and the rule; `inspect` and `verify` reject truncated and malicious
// folders with a clear error (exit status 1), never a crash.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "cli_test_util.hpp"
#include "io/safetensors.hpp"

namespace nybble {
namespace {

using namespace test;
using Tensors = std::map<std::string, RawTensor>;

const std::string kW = "model.layers.0.mlp.up_proj.weight";  // F16 [40, 16]: 640 elements, 10 blocks of 64
const std::string kM = "model.layers.0.mlp.up_proj";

Tensors model() {
  const uint64_t s = test_seed();
  return {
      {"model.embed_tokens.weight", raw(randn(DType::F32, 8 * 16, s + 1), {8, 16})},
      {kW, raw(randn(DType::F16, 40 * 16, s + 2), {40, 16})},
      {"model.layers.0.mlp.down_proj.weight", raw(randn(DType::BF16, 16 * 40, s + 3), {16, 40})},
  };
}

// The tensors of `type` quantization of model() (with `flags`), as written by nybble quantize.
Tensors quantized(const ScratchDir& dir, const std::string& type, const std::vector<std::string>& flags = {}) {
  write_file(dir / "in.safetensors", safetensors_bytes(model()));
  const auto out = dir / ("q-" + type);
  std::vector<std::string> args = {"quantize", (dir / "in.safetensors").string(), "-o", out.string(), "-t", type, "-q"};
  args.insert(args.end(), flags.begin(), flags.end());
  const auto r = run_cli(args);
  EXPECT_EQ(r.status, 0) << r.err;
  const auto f = io::SafetensorsFile::read((out / "model.safetensors").string());
  Tensors t;
  for (const auto& [name, info] : f.tensors()) t[name] = {info.dtype, info.shape, {f.data(name), f.data(name) + info.nbytes()}};
  return t;
}

nlohmann::json config_for(const std::string& type, bool dq) {
  const bool four = type != "int8";
  return {{"model_type", "llama"},
          {"quantization_config",
           {{"quant_method", "bitsandbytes"},
            {"load_in_4bit", four},
            {"load_in_8bit", !four},
            {"bnb_4bit_quant_type", four ? type : "fp4"},
            {"bnb_4bit_use_double_quant", dq},
            {"bnb_4bit_quant_storage", "uint8"},
            {"llm_int8_skip_modules", {"lm_head", "model.embed_tokens"}}}}};
}

// Writes the tensors (and a config, unless null) to a fresh folder and runs verify on it.
CliResult verify(const ScratchDir& dir, const Tensors& t, const nlohmann::json& config) {
  static int k = 0;
  const auto folder = dir / ("case" + std::to_string(k++));
  fs::create_directories(folder);
  write_file(folder / "model.safetensors", safetensors_bytes(t));
  if (!config.is_null()) write_file(folder / "config.json", config.dump());
  return run_cli({"verify", folder.string()});
}

void expect_problem(const CliResult& r, std::initializer_list<std::string> fragments) {
  EXPECT_EQ(r.status, 1) << r.out << r.err;
  for (const auto& f : fragments) EXPECT_TRUE(contains(r.out, f)) << "'" << f << "' not in:\n" << r.out;
}

void set_f32(RawTensor& t, size_t i, float v) { std::memcpy(t.bytes.data() + 4 * i, &v, 4); }

TEST(CliVerify, FourBitDamage) {
  ScratchDir dir;
  const Tensors good = quantized(dir, "nf4", {"--double-quant"});
  const auto config = config_for("nf4", true);
  ASSERT_EQ(verify(dir, good, config).status, 0) << verify(dir, good, config).out;
  const std::string qs = kW + ".quant_state.bitsandbytes__nf4";
  const std::vector<std::pair<std::function<void(Tensors&)>, std::vector<std::string>>> cases = {
      {[&](Tensors& t) { t.erase(kW + ".absmax"); }, {"tensor '" + kW + ".absmax': is missing (one scale per block of 64"}},
      {[&](Tensors& t) { t.erase(kW); }, {"tensor '" + kW + "': is missing (the packed codes of quant_state: nf4 [40, 16]"}},
      {[&](Tensors& t) {
         t[kW + ".absmax"].shape = {9};
         t[kW + ".absmax"].bytes.resize(9);
       },
       {"'" + kW + ".absmax': is U8 [9], must be U8 [10]"}},
      {[&](Tensors& t) { set_f32(t[kW + ".nested_absmax"], 0, NAN); }, {kW + ".nested_absmax': value nan at index 0 is not finite"}},
      {[&](Tensors& t) { set_f32(t[kW + ".quant_map"], 3, 0.5f); }, {kW + ".quant_map': differs from the nf4 table at index 3 (0.5, must be"}},
      {[&](Tensors& t) { set_f32(t[kW + ".nested_quant_map"], 200, 0.5f); }, {"differs from the signed dynamic map at index 200"}},
      {[&](Tensors& t) {
         t[kW].shape = {319, 1};
         t[kW].bytes.resize(319);
       },
       {"'" + kW + "': is U8 [319, 1] (319 bytes); the 640 elements of [40, 16] pack into 320 bytes, shape [320, 1]"}},
      {[&](Tensors& t) { t[qs] = raw_values<char>("U8", {9}, {'{', 'n', 'o', 't', ' ', 'j', 's', 'o', 'n'}); },
       {"tensor '" + qs + "': quant_state JSON is not valid JSON"}},
      {[&](Tensors& t) {
         const std::string j = R"({"quant_type": "fp4", "blocksize": 64, "dtype": "float16", "shape": [40, 16], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5})";
         t[qs] = raw_values<char>("U8", {static_cast<int64_t>(j.size())}, std::vector<char>(j.begin(), j.end()));
       },
       {"holds quant_type \"fp4\", its key says nf4"}},
      {[&](Tensors& t) {
         const std::string j = R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [40, 16]})";
         t[qs] = raw_values<char>("U8", {static_cast<int64_t>(j.size())}, std::vector<char>(j.begin(), j.end()));
       },
       {"'" + kW + ".absmax': is U8 [10], must be F32 [10]", kW + ".nested_absmax': is present but the quant_state has no nested_ fields"}},
      {[&](Tensors& t) { t[kW + ".quant_state.bitsandbytes__fp4"] = t[qs]; }, {"has both quant_state.bitsandbytes__nf4 and quant_state.bitsandbytes__fp4"}},
  };
  for (const auto& [damage, fragments] : cases) {
    Tensors t = good;
    damage(t);
    const auto r = verify(dir, t, config);
    EXPECT_EQ(r.status, 1) << r.out;
    for (const auto& f : fragments) EXPECT_TRUE(contains(r.out, f)) << "'" << f << "' not in:\n" << r.out;
    EXPECT_TRUE(contains(r.out, "model.safetensors")) << r.out;  // the file is named
  }

  Tensors plain = quantized(dir, "fp4");
  set_f32(plain[kW + ".absmax"], 2, -1.0f);
  expect_problem(verify(dir, plain, config_for("fp4", false)), {kW + ".absmax': value -1.0 at index 2 is not finite and non-negative"});
}

TEST(CliVerify, ConfigMustAgree) {
  ScratchDir dir;
  const Tensors t = quantized(dir, "nf4", {"--double-quant"});
  auto c = config_for("nf4", true);
  c.erase("quantization_config");
  expect_problem(verify(dir, t, c), {"config.json': has no quantization_config"});
  c = config_for("nf4", true);
  c["quantization_config"]["load_in_4bit"] = false;
  c["quantization_config"]["load_in_8bit"] = true;
  expect_problem(verify(dir, t, c), {"load_in_4bit is false but the checkpoint holds 2 4-bit weights",
                                     "load_in_8bit is true but the checkpoint holds 0 8-bit layers"});
  c = config_for("nf4", true);
  c["quantization_config"]["bnb_4bit_quant_type"] = "fp4";
  c["quantization_config"]["bnb_4bit_use_double_quant"] = false;
  expect_problem(verify(dir, t, c), {"bnb_4bit_quant_type = \"fp4\" but weights are nf4",
                                     "bnb_4bit_use_double_quant = false but weights are double-quantized"});
  c = config_for("nf4", true);
  c["quantization_config"]["bnb_4bit_quant_storage"] = "bfloat16";
  expect_problem(verify(dir, t, c), {"bnb_4bit_quant_storage = \"bfloat16\" but packed weights are uint8"});
  c = config_for("nf4", true);
  c["quantization_config"]["llm_int8_skip_modules"] = {"lm_head", "up_proj"};
  expect_problem(verify(dir, t, c), {"llm_int8_skip_modules lists \"up_proj\", which names the quantized layer '" + kM + "'"});
  c = config_for("nf4", true);
  c["quantization_config"]["quant_method"] = "gptq";
  expect_problem(verify(dir, t, c), {"quant_method is \"gptq\", not \"bitsandbytes\""});
  EXPECT_EQ(verify(dir, t, nullptr).status, 0);  // no config: only the tensors are checked
}

TEST(CliVerify, Int8Damage) {
  ScratchDir dir;
  const Tensors good = quantized(dir, "int8");
  const auto config = config_for("int8", false);
  ASSERT_EQ(verify(dir, good, config).status, 0);
  Tensors t = good;
  t[kM + ".SCB"].shape = {39};
  t[kM + ".SCB"].bytes.resize(39 * 4);
  expect_problem(verify(dir, t, config), {"'" + kM + ".SCB': is F32 [39], must be F32 [40] (one scale per row of the int8 weight)"});
  t = good;
  t[kM + ".weight_format"].bytes[0] = 1;
  expect_problem(verify(dir, t, config), {kM + ".weight_format': = 1: only 0 (\"row\") loads"});
  t = good;
  set_f32(t[kM + ".SCB"], 5, -2.0f);
  expect_problem(verify(dir, t, config), {kM + ".SCB': value -2.0 at index 5"});
  t = good;
  t[kW].dtype = "U8";
  expect_problem(verify(dir, t, config), {"'" + kW + "': is U8 [40, 16], must be I8 [out, in]"});
  t = good;
  t.erase(kW);
  expect_problem(verify(dir, t, config), {"'" + kM + ".SCB': has no int8 weight"});
}

TEST(CliVerify, TruncatedAndMaliciousFolders) {
  ScratchDir dir;
  const Tensors t = quantized(dir, "nf4");
  const auto bytes = safetensors_bytes(t);
  fs::create_directories(dir / "cut");
  write_file(dir / "cut" / "model.safetensors", std::vector<uint8_t>(bytes.begin(), bytes.end() - 100));
  for (const char* command : {"verify", "inspect"}) {
    const auto r = run_cli({command, (dir / "cut").string()});
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_TRUE(contains(r.err, (dir / "cut" / "model.safetensors").string())) << r.err;
    EXPECT_TRUE(contains(r.err, "outside the data section")) << r.err;
  }
  // An index that names a file outside the folder, and one that misplaces a tensor.
  fs::create_directories(dir / "sharded");
  write_file(dir / "sharded" / "a.safetensors", bytes);
  write_file(dir / "sharded" / "model.safetensors.index.json", std::string(R"({"weight_map": {"x": "../a.safetensors"}})"));
  auto r = run_cli({"verify", (dir / "sharded").string()});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.err, "weight_map['x'] = \"../a.safetensors\" is not a file name in the folder")) << r.err;
  nlohmann::json map;
  for (const auto& [name, _] : t) map[name] = "a.safetensors";
  map["ghost"] = "a.safetensors";
  write_file(dir / "sharded" / "model.safetensors.index.json", nlohmann::json{{"weight_map", map}}.dump());
  r = run_cli({"inspect", (dir / "sharded").string()});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.err, "weight_map puts tensor 'ghost' in 'a.safetensors', which does not hold it")) << r.err;
  // A folder without a model.
  fs::create_directories(dir / "empty");
  r = run_cli({"verify", (dir / "empty").string()});
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(contains(r.err, "holds neither model.safetensors nor model.safetensors.index.json")) << r.err;
}

TEST(CliVerify, InspectShowsUnreadableState) {
  ScratchDir dir;
  Tensors t = quantized(dir, "fp4", {"--blocksize", "32"});
  const auto good = verify(dir, t, nullptr);
  EXPECT_EQ(good.status, 0);
  t[kW + ".quant_state.bitsandbytes__fp4"] = raw_values<char>("U8", {2}, {'[', ']'});
  write_file(dir / "bad.safetensors", safetensors_bytes(t));
  const auto r = run_cli({"inspect", (dir / "bad.safetensors").string()});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "fp4 (quant_state unreadable; see nybble verify)")) << r.out;
  EXPECT_TRUE(contains(r.out, "fp4, blocksize 32: bfloat16 [16, 40]")) << r.out;
}

}  // namespace
}  // namespace nybble
