// golden_optim_test.cpp — the optimizer oracle against bitsandbytes 0.50.2's three-step traces
// (tests/data/golden: optim.{adam8,adamw8,lion8,ademamix8,adam32}.*, a [64, 256] fp32 parameter,
// produced by the reference's CUDA kernels on an H200).
//
// Each step starts from the reference's parameter and states after the previous step (zeros
// before the first), so a difference never carries over into the next step. What must hold:
// - 8-bit codes are identical (all 3 x 4 x 16384 state1 codes and 3 x 3 x 16384 state2 codes).
// - absmax and 32-bit states agree within kUlps ulps of their largest term: the reference's CUDA
//   build contracts products and sums into FMAs where nybble rounds each operation.
// - p agrees within kUlps ulps of max(|p_old|, |p_new|), once the reference's bias correction is
//   allowed for: Note [Golden bias correction].
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "io/safetensors.hpp"
#include "test_util.hpp"

namespace nybble {
namespace {

const io::SafetensorsFile& golden() {
  static const io::SafetensorsFile f = io::SafetensorsFile::read(NYBBLE_GOLDEN_FILE);
  return f;
}

constexpr double kUlps = 4;

struct Case {
  const char* key;
  OptimizerConfig config;
  bool eight;
};

OptimizerConfig make(Optimizer o, float lr, float b1, float b2, float wd) {
  OptimizerConfig c;
  c.optimizer = o, c.lr = lr, c.beta1 = b1, c.beta2 = b2, c.weight_decay = wd;
  return c;
}

// The reference's constructor arguments and defaults for each trace (golden_index.json).
const Case kCases[] = {
    {"adam8", make(Optimizer::Adam, 1e-3f, 0.9f, 0.999f, 0.0f), true},
    {"adamw8", make(Optimizer::Adam, 1e-3f, 0.9f, 0.999f, 0.01f), true},
    {"lion8", make(Optimizer::Lion, 1e-4f, 0.9f, 0.99f, 0.0f), true},
    {"ademamix8", make(Optimizer::AdEMAMix, 1e-3f, 0.9f, 0.999f, 0.01f), true},
    {"adam32", make(Optimizer::Adam, 1e-3f, 0.9f, 0.999f, 0.0f), false},
};

double ulp_of(double x) {
  const auto f = static_cast<float>(std::abs(x));
  return double(std::nextafter(f, INFINITY)) - f;
}

// Note [Golden bias correction]: the reference computes beta^t on the GPU with powf (32-bit) or
// the approximate __powf (8-bit), which are not correctly rounded, and 1 - beta^t cancels: an
// error of e ulps in beta2^t moves c2 = sqrt(1 - beta2^t) by e * ulp(beta2^t) / (2 (1 - beta2^t))
// relative (3e-5 per ulp at t = 1), and the whole step p_new - p_old with it; likewise c1 for
// beta1. Fitting the traces, the reference's powers are off by up to 3 ulps (0.999^3 in the
// 3rd step; 0.999^1 is one ulp high). This is the relative error of the step for 4 ulps in each
// power; Lion has no bias correction, and there p agrees to the bit.
constexpr double kPowerUlps = 4;
double bias_correction_tolerance(const OptimizerConfig& c) {
  if (c.optimizer == Optimizer::Lion) return 0.0;
  const double t = double(c.step);
  const double p1 = double(float(std::pow(double(c.beta1), t))), p2 = double(float(std::pow(double(c.beta2), t)));
  return kPowerUlps * (ulp_of(p1) / (1 - p1) + ulp_of(p2) / (2 * (1 - p2)));
}

// How many ulps of `scale` apart a and b are.
double ulps_apart(double a, double b, double scale) { return std::abs(a - b) / ulp_of(scale); }

class GoldenOptim : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { set_cpu_isa("ref"); }
  void TearDown() override { set_cpu_isa("auto"); }
};

TEST_P(GoldenOptim, ThreeSteps) {
  const Case& cs = GetParam();
  const auto& g = golden();
  const std::string k = std::string("optim.") + cs.key + ".";
  const bool ademamix = cs.config.optimizer == Optimizer::AdEMAMix, two = optimizer_has_state2(cs.config.optimizer);
  const int64_t n = 64 * 256, nb = n / kOptimizerBlocksize, n1 = ademamix ? 2 * n : n;
  const Code8& map1 = dynamic_map_signed();
  const Code8& map2 = dynamic_map_unsigned();
  for (int s = 1; s <= 3; ++s) {
    SCOPED_TRACE(std::string(cs.key) + " step " + std::to_string(s));
    const std::string prev = k + "s" + std::to_string(s - 1) + ".", now = k + "s" + std::to_string(s) + ".";
    const auto p_old = g.as<float>(k + "p" + std::to_string(s - 1), "F32");
    const auto grad = g.as<float>(k + "g" + std::to_string(s - 1), "F32");
    const auto p_ref = g.as<float>(k + "p" + std::to_string(s), "F32");
    auto p = p_old;
    OptimizerConfig c = cs.config;
    c.step = s;
    const TensorView gv(grad.data(), DType::F32, {n}), pv(p.data(), DType::F32, {n});
    double state_ulps = 0;
    if (!cs.eight) {
      std::vector<float> s1(size_t(n1), 0.0f), s2(size_t(n), 0.0f);
      if (s > 1) s1 = g.as<float>(prev + "state1", "F32"), s2 = g.as<float>(prev + "state2", "F32");
      const auto m_old = s1, v_old = s2;
      optimizer_update_32bit(c, {.g = gv, .p = pv, .state1 = TensorView(s1.data(), DType::F32, {n1}),
                                 .state2 = TensorView(s2.data(), DType::F32, {n})});
      const auto s1_ref = g.as<float>(now + "state1", "F32"), s2_ref = g.as<float>(now + "state2", "F32");
      for (size_t i = 0; i < size_t(n); ++i) {
        const double gi = grad[i];
        const double m_scale = std::max(std::abs(double(c.beta1) * m_old[i]), std::abs((1 - double(c.beta1)) * gi));
        const double v_scale = std::max(double(c.beta2) * v_old[i], (1 - double(c.beta2)) * gi * gi);
        state_ulps = std::max({state_ulps, ulps_apart(s1[i], s1_ref[i], m_scale), ulps_apart(s2[i], s2_ref[i], v_scale)});
      }
    } else {
      std::vector<uint8_t> q1(size_t(n1), 0), q2(two ? size_t(n) : 0, 0);
      std::vector<float> a1(size_t(ademamix ? 2 * nb : nb), 0.0f), a2(two ? size_t(nb) : 0, 0.0f);
      if (s > 1) {
        q1 = g.as<uint8_t>(prev + "state1", "U8");
        a1 = g.as<float>(prev + "absmax1", "F32");
        if (two) q2 = g.as<uint8_t>(prev + "state2", "U8"), a2 = g.as<float>(prev + "absmax2", "F32");
      }
      OptimizerState8bit st{.g = gv, .p = pv, .state1 = TensorView(q1.data(), DType::U8, {n1}),
                            .absmax1 = TensorView(a1.data(), DType::F32, {int64_t(a1.size())})};
      if (two) st.state2 = TensorView(q2.data(), DType::U8, {n}), st.absmax2 = TensorView(a2.data(), DType::F32, {nb});
      optimizer_update_8bit_blockwise(c, TensorView(map1.data(), DType::F32, {256}),
                                      two ? std::optional(TensorView(map2.data(), DType::F32, {256})) : std::nullopt, st);
      EXPECT_EQ(q1, g.as<uint8_t>(now + "state1", "U8")) << "state1 codes";
      const auto a1_ref = g.as<float>(now + "absmax1", "F32");
      for (size_t b = 0; b < a1.size(); ++b) state_ulps = std::max(state_ulps, ulps_apart(a1[b], a1_ref[b], a1_ref[b]));
      if (two) {
        EXPECT_EQ(q2, g.as<uint8_t>(now + "state2", "U8")) << "state2 codes";
        const auto a2_ref = g.as<float>(now + "absmax2", "F32");
        for (size_t b = 0; b < a2.size(); ++b) state_ulps = std::max(state_ulps, ulps_apart(a2[b], a2_ref[b], a2_ref[b]));
      }
    }
    EXPECT_LE(state_ulps, kUlps) << (cs.eight ? "absmax" : "states");
    const double rel = bias_correction_tolerance(c);
    double p_ulps = 0;
    for (size_t i = 0; i < size_t(n); ++i) {
      const double step_ref = double(p_ref[i]) - p_old[i];
      const double off = std::max(0.0, std::abs(double(p[i]) - p_ref[i]) - rel * std::abs(step_ref));
      p_ulps = std::max(p_ulps, off / ulp_of(std::max(std::abs(p_old[i]), std::abs(p_ref[i]))));
    }
    EXPECT_LE(p_ulps, kUlps) << "p";
    std::printf("[ golden   ] %s step %d: codes identical; p within %.1f ulps (beyond the bias correction's %.1e of the step), "
                "%s within %.1f ulps\n",
                cs.key, s, p_ulps, rel, cs.eight ? "absmax" : "states", state_ulps);
  }
}

INSTANTIATE_TEST_SUITE_P(Traces, GoldenOptim, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& c) { return std::string(c.param.key); });

}  // namespace
}  // namespace nybble
