// optim_test.cpp — the optimizer steps on the CPU (nybble/optim.hpp).
//
// - The AVX2 kernels against the scalar oracle, through the public API: p, states, codes, absmax
//   and unorm_vec must be bit-identical for every optimizer, dtype, awkward size (1, 255, 256,
//   257, 4097, 65537), with NaN/inf/zero gradients, skip_zeros, weight decay, first and later
//   steps, clipping, and for the multi-tensor form.
// - The oracle's semantics against independent scalar formulas written here from spec §4.3, and
//   its special rules: NaN/inf gradients in 8-bit, skip_zeros, the sign rule, all-zero blocks,
//   AdEMAMix's [2, nblocks] absmax layout, update-norm clipping in 32-bit and 8-bit.
// - Argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "optim_test_util.hpp"

namespace nybble {
namespace {

using namespace optim_test;

class OptimAvx2VsRef : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")))
      GTEST_SKIP() << "this CPU lacks AVX2/FMA/F16C: no AVX2 kernels to compare with the oracle";
    try {
      set_cpu_isa("avx2");
    } catch (const Error& e) {
      GTEST_SKIP() << e.what();
    }
  }
  void TearDown() override { set_cpu_isa("auto"); }
  std::mt19937_64 rng_{test::test_seed()};
};

TEST_F(OptimAvx2VsRef, EveryOptimizerDtypeAndSize) {
  SCOPED_TRACE(test::seed_note());
  int variant = 0;
  for (bool eight : {false, true})
    for (Optimizer o : kAll)
      for (DType dt : test::kFloatTypes)
        for (int64_t n : kSizes) {
          ++variant;
          SCOPED_TRACE(name_of(o, dt, n, eight, variant));
          const OptimizerConfig c = config_for(o, variant);
          Param ref(o, dt, n, eight, rng_, variant % 2 == 0);
          Param simd = ref;
          set_cpu_isa("ref");
          step(c, ref);
          set_cpu_isa("avx2");
          step(c, simd);
          ASSERT_TRUE(same_bits(ref, simd));
        }
}

TEST_F(OptimAvx2VsRef, MultiTensorEqualsSingleCalls) {
  SCOPED_TRACE(test::seed_note());
  for (bool eight : {false, true})
    for (Optimizer o : {Optimizer::Adam, Optimizer::AdEMAMix, Optimizer::LARS, Optimizer::Lion}) {
      SCOPED_TRACE(std::string(optimizer_name(o)) + (eight ? " 8-bit" : " 32-bit"));
      OptimizerConfig c = config_for(o, 5);
      std::vector<Param> single, multi;
      int k = 0;
      for (int64_t n : {int64_t{300}, int64_t{0}, int64_t{65536}, int64_t{1}, int64_t{4097}})
        single.emplace_back(o, test::kFloatTypes[k++ % 3], n, eight, rng_, true);
      multi = single;
      for (const char* isa : {"ref", "avx2"}) {
        set_cpu_isa(isa);
        std::vector<Param> one = single, many = multi;
        for (const Param& prm : one) step(c, prm);
        if (eight) {
          std::vector<OptimizerState8bit> views;
          for (const Param& prm : many) views.push_back(prm.view8());
          optimizer_update_8bit_blockwise_multi(c, kQmap1, two_states(o) ? std::optional(kQmap2) : std::nullopt, views);
        } else {
          std::vector<OptimizerState32> views;
          for (const Param& prm : many) views.push_back(prm.view32());
          optimizer_update_32bit_multi(c, views);
        }
        for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(same_bits(one[i], many[i])) << isa << " param " << i;
      }
    }
}

TEST_F(OptimAvx2VsRef, ThreadCountDoesNotChangeResults) {
  SCOPED_TRACE(test::seed_note());
  const int threads = get_num_threads();
  for (bool eight : {false, true}) {
    OptimizerConfig c = config_for(Optimizer::LAMB, 1);
    Param a(Optimizer::LAMB, DType::BF16, (int64_t{1} << 18) + 3, eight, rng_, true);
    Param b = a;
    set_num_threads(1);
    step(c, a);
    set_num_threads(std::max(4, threads));
    step(c, b);
    EXPECT_TRUE(same_bits(a, b));
  }
  set_num_threads(threads);
}

// ---- the oracle's semantics ----------------------------------------------------------------------

class OptimOracle : public ::testing::Test {
 protected:
  void SetUp() override { set_cpu_isa("ref"); }
  void TearDown() override { set_cpu_isa("auto"); }
  std::mt19937_64 rng_{test::test_seed()};
};

// §4.3 written out in double for 32-bit states and fp32 params, against which the oracle must
// agree to fp32 rounding.
TEST_F(OptimOracle, ThirtyTwoBitMatchesTheFormulas) {
  SCOPED_TRACE(test::seed_note());
  for (Optimizer o : kAll)
    for (int variant : {0, 1, 2, 3}) {
      OptimizerConfig c = config_for(o, variant);
      c.skip_zeros = false;
      c.max_unorm = 0.0f;
      c.gnorm_scale = 1.0f;
      SCOPED_TRACE(name_of(o, DType::F32, 1000, false, variant));
      Param prm(o, DType::F32, 1000, false, rng_, false);
      const Param before = prm;
      step(c, prm);
      const double b1 = c.beta1, b2 = c.beta2, b3 = c.beta3, lr = c.lr, wd = c.weight_decay, eps = c.eps;
      const double t = static_cast<double>(c.step);
      const double c1 = 1 - std::pow(b1, t), c2 = std::sqrt(1 - std::pow(b2, t));
      // The kernels take beta^t rounded to fp32, and 1 - beta^t magnifies that rounding: the
      // bias-corrected step's relative error from it.
      const auto ulp = [](double x) { return double(std::nextafter(float(x), 2.0f)) - float(x); };
      const double bias_error = ulp(std::pow(b1, t)) / c1 + ulp(std::pow(b2, t)) / (2 * c2 * c2);
      for (int64_t i = 0; i < prm.n; ++i) {
        const auto k = static_cast<size_t>(i);
        double g = before.g.get(i), p = before.p.get(i), m = before.f1[k];
        double v = two_states(o) ? before.f2[k] : 0.0, m2 = o == Optimizer::AdEMAMix ? before.f1[k + 1000] : 0.0;
        // Beside each value, the magnitude of the terms it sums (fp32 rounds relative to those).
        double mp = std::abs(p), mm = 0, mv = 0, mm2 = 0;
        bool check_p = true;
        switch (o) {
          case Optimizer::Adam:
          case Optimizer::LAMB:
          case Optimizer::AdEMAMix: {
            mm = std::abs(b1 * m) + std::abs((1 - b1) * g), m = b1 * m + (1 - b1) * g;
            mm2 = std::abs(b3 * m2) + std::abs((1 - b3) * g), m2 = b3 * m2 + (1 - b3) * g;
            v = b2 * v + (1 - b2) * g * g, mv = v;
            const double den = std::sqrt(v) / c2 + eps;
            const bool mix = o == Optimizer::AdEMAMix;
            const double step = lr * (m / c1 + (mix ? c.alpha * m2 : 0)) / den;
            mp = (mp + lr * (mm / c1 + (mix ? c.alpha * mm2 : 0)) / den * (1 + bias_error / 1e-6)) * (1 - lr * wd);
            p = (p - step) * (1 - lr * wd);
            break;
          }
          case Optimizer::Momentum:
          case Optimizer::LARS: {
            const double mg = std::abs(g) + std::abs(wd * p);
            g += wd * p;
            mm = c.step == 1 ? mg : std::abs(b1 * m) + mg;
            m = c.step == 1 ? g : b1 * m + g;
            mp += lr * mm, p -= lr * m;
            break;
          }
          case Optimizer::RMSprop:
          case Optimizer::Adagrad: {
            const double mg = std::abs(g) + std::abs(wd * p);
            g += wd * p;
            const double keep = o == Optimizer::RMSprop ? b1 : 1.0, add = o == Optimizer::RMSprop ? 1 - b1 : 1.0;
            mm = keep * m + add * mg * mg, m = keep * m + add * g * g;
            mp += lr * mg / (std::sqrt(m) + eps), p -= lr * g / (std::sqrt(m) + eps);
            break;
          }
          case Optimizer::Lion: {
            p *= 1 - lr * wd;
            const double d = b1 * m + (1 - b1) * g;
            check_p = std::abs(d) > 1e-6 * (std::abs(b1 * m) + std::abs((1 - b1) * g));  // else its sign is rounding
            mp = std::abs(p) + lr, p -= lr * (d > 0 ? 1 : d < 0 ? -1 : 0);
            mm = std::abs(b2 * m) + std::abs((1 - b2) * g), m = b2 * m + (1 - b2) * g;
            break;
          }
        }
        const auto near = [](double want, float got, double magnitude) { return std::abs(want - got) <= 1e-6 * magnitude + 1e-12; };
        if (check_p) {
          ASSERT_TRUE(near(p, prm.p.get(i), mp)) << "p[" << i << "] " << prm.p.get(i) << " vs " << p;
        }
        ASSERT_TRUE(near(m, prm.f1[k], mm)) << "state1[" << i << "]";
        if (two_states(o)) {
          ASSERT_TRUE(near(v, prm.f2[k], mv)) << "state2[" << i << "]";
        }
        if (o == Optimizer::AdEMAMix) {
          ASSERT_TRUE(near(m2, prm.f1[k + 1000], mm2)) << "slow EMA[" << i << "]";
        }
      }
    }
}

// 8-bit: the new states are the 32-bit rules applied to the dequantized old states, requantized
// to the nearest code of their block's new absmax, with the sign rule.
TEST_F(OptimOracle, EightBitIsTheThirtyTwoBitStepRequantized) {
  SCOPED_TRACE(test::seed_note());
  for (Optimizer o : kAll)
    for (int64_t n : {int64_t{700}, int64_t{512}}) {
      SCOPED_TRACE(std::string(optimizer_name(o)) + " n " + std::to_string(n));
      const OptimizerConfig c = config_for(o, 3);
      Param q(o, DType::F32, n, true, rng_, false);
      const int64_t nb = num_blocks(n, kOptimizerBlocksize);
      // The same step on the dequantized states in 32-bit.
      Param f = q;
      f.eight = false;
      f.f1.resize(q.q1.size());
      for (size_t i = 0; i < q.q1.size(); ++i) {  // AdEMAMix's slow EMA: row 1 of the [2, nb] absmax
        const size_t row = i / size_t(n), col = (i % size_t(n)) / kOptimizerBlocksize;
        f.f1[i] = dynamic_map_signed()[q.q1[i]] * q.a1[row * size_t(nb) + col];
      }
      if (two_states(o)) {
        f.f2.resize(q.q2.size());
        for (size_t i = 0; i < q.q2.size(); ++i) f.f2[i] = dynamic_map_unsigned()[q.q2[i]] * q.a2[i / kOptimizerBlocksize];
      }
      step(c, q);
      step(c, f);
      EXPECT_EQ(q.p.bytes, f.p.bytes) << "p does not depend on how the states are stored";
      // Requantize the 32-bit result as quantize_blockwise would, then the sign rule.
      auto check = [&](const std::vector<float>& s, const std::vector<uint8_t>& codes, const float* absmax,
                       const Code8& map, bool sign_rule, const char* what) {
        for (int64_t b = 0; b < nb; ++b) {
          const int64_t begin = b * kOptimizerBlocksize, end = std::min(n, begin + kOptimizerBlocksize);
          float m = 0.0f;
          for (int64_t i = begin; i < end; ++i) m = std::max(m, std::abs(s[size_t(i)]));
          ASSERT_EQ(m, absmax[b]) << what << " absmax of block " << b;
          for (int64_t i = begin; i < end; ++i) {
            const float x = s[size_t(i)];
            uint8_t want = quantize_8bit_value(map.data(), x * (1.0f / m));
            if (sign_rule && std::signbit(map[want]) != std::signbit(x)) want = static_cast<uint8_t>(x > 0 ? want + 1 : want - 1);
            ASSERT_EQ(int(want), int(codes[size_t(i)])) << what << " element " << i << " value " << x;
          }
        }
      };
      check(f.f1, q.q1, q.a1.data(), dynamic_map_signed(), true, "state1");
      if (o == Optimizer::AdEMAMix)
        check(std::vector<float>(f.f1.begin() + n, f.f1.end()), std::vector<uint8_t>(q.q1.begin() + n, q.q1.end()),
              q.a1.data() + nb, dynamic_map_signed(), true, "slow EMA");
      if (two_states(o)) check(f.f2, q.q2, q.a2.data(), dynamic_map_unsigned(), false, "state2");
    }
}

TEST_F(OptimOracle, NonFiniteGradientsZeroEightBitStatesAndKeepP) {
  for (Optimizer o : kAll) {
    SCOPED_TRACE(optimizer_name(o));
    Param prm(o, DType::F32, 300, true, rng_, false);
    for (int64_t i : {0, 5, 299}) prm.g.set(i, i == 5 ? kNaN : (i == 0 ? kInf : -kInf));
    const Param before = prm;
    OptimizerConfig c = config_for(o, 2);
    step(c, prm);
    for (int64_t i : {0, 5, 299}) {
      EXPECT_EQ(before.p.get(i), prm.p.get(i)) << "p[" << i << "] kept";
      const size_t k = static_cast<size_t>(i);
      EXPECT_EQ(0.0f, dynamic_map_signed()[prm.q1[k]] * prm.a1[k / 256]) << "state1[" << i << "] zeroed";
      if (two_states(o)) {
        EXPECT_EQ(0.0f, dynamic_map_unsigned()[prm.q2[k]] * prm.a2[k / 256]);
      }
    }
    int changed = 0;
    for (int64_t i = 1; i < 299; ++i) changed += i != 5 && before.p.get(i) != prm.p.get(i);
    EXPECT_GT(changed, 250) << "the other elements are updated";
  }
}

TEST_F(OptimOracle, SkipZerosKeepsPAndStates) {
  for (bool eight : {false, true})
    for (Optimizer o : kAll) {
      SCOPED_TRACE(std::string(optimizer_name(o)) + (eight ? " 8-bit" : " 32-bit"));
      Param prm(o, DType::F32, 256, eight, rng_, false);
      for (int64_t i = 0; i < 256; i += 3) prm.g.set(i, i % 2 ? 0.0f : -0.0f);
      const Param before = prm;
      OptimizerConfig c = config_for(o, 1);
      c.skip_zeros = true;
      c.max_unorm = 0.0f;
      step(c, prm);
      int updated = 0;
      for (int64_t i = 0; i < 256; ++i) {
        const size_t k = static_cast<size_t>(i);
        if (i % 3 != 0) {
          updated += before.p.get(i) != prm.p.get(i);
          continue;
        }
        EXPECT_EQ(before.p.get(i), prm.p.get(i)) << "p[" << i << "]";
        if (!eight) {
          EXPECT_EQ(before.f1[k], prm.f1[k]);
          continue;
        }
        // An 8-bit state keeps its value, requantized with the block's new absmax.
        const float old = dynamic_map_signed()[before.q1[k]] * before.a1[0];
        const float now = dynamic_map_signed()[prm.q1[k]] * prm.a1[0];
        EXPECT_NEAR(old, now, 0.02f * prm.a1[0]) << "state1[" << i << "]";
      }
      EXPECT_GT(updated, 160) << "of the 170 elements with a gradient (a step below half an ulp of p leaves it)";
    }
}

TEST_F(OptimOracle, SignRuleAndAllZeroBlocks) {
  // Momentum at step 1 sets m = g: a block of zero gradients is an all-zero block (codes as the
  // reference: state1 255 by the sign rule's wrap, absmax 0), and a tiny negative gradient next to
  // large ones keeps a negative code (the nearest code would be 0.0).
  Param prm(Optimizer::Momentum, DType::F32, 512, true, rng_, false);
  for (int64_t i = 0; i < 256; ++i) prm.g.set(i, 0.0f);
  prm.g.set(300, 1.0f);
  prm.g.set(301, -1e-9f);
  prm.g.set(302, 1e-9f);
  OptimizerConfig c = config_for(Optimizer::Momentum, 0);
  c.step = 1;
  step(c, prm);
  EXPECT_EQ(prm.a1[0], 0.0f);
  for (int64_t i = 0; i < 256; ++i) ASSERT_EQ(prm.q1[size_t(i)], 255) << i;
  EXPECT_EQ(prm.a1[1], 1.0f);
  EXPECT_TRUE(std::signbit(dynamic_map_signed()[prm.q1[301]])) << "code " << int(prm.q1[301]);
  EXPECT_EQ(dynamic_map_signed()[prm.q1[302]], 0.0f);
}

TEST_F(OptimOracle, AdemamixSlowEmaUsesRowOneOfAbsmax) {
  // n % 256 != 0: the slow EMA's scales are absmax1[nb + b] (the reference's flat indexing would
  // read absmax1[(n + i) / 256] instead).
  Param prm(Optimizer::AdEMAMix, DType::F32, 300, true, rng_, false);
  const int64_t nb = 2;
  for (auto& x : prm.a1) x = 0.0f;
  prm.a1[nb + 1] = 0.5f;  // slow EMA, block 1
  for (size_t i = 0; i < prm.q1.size(); ++i) prm.q1[i] = 255;  // 1.0 * absmax
  for (auto& x : prm.q2) x = 0;
  for (int64_t i = 0; i < 300; ++i) prm.g.set(i, 0.0f);
  OptimizerConfig c = config_for(Optimizer::AdEMAMix, 0);
  step(c, prm);
  const float slow = 0.5f * c.beta3;  // beta3 * m2 + (1 - beta3) * 0
  EXPECT_EQ(prm.a1[nb + 1], slow);
  EXPECT_EQ(prm.a1[nb], 0.0f);
  EXPECT_EQ(prm.a1[0], 0.0f);
  EXPECT_EQ(prm.a1[1], 0.0f);
}

// The clipped update has norm max_unorm * param_norm (plus eps for the 1-state optimizers), in
// 32-bit and 8-bit alike, and unorm_vec receives the unclipped sum of squares.
TEST_F(OptimOracle, UpdateNormClipping) {
  for (bool eight : {false, true})
    for (Optimizer o : {Optimizer::LAMB, Optimizer::LARS, Optimizer::RMSprop}) {
      SCOPED_TRACE(std::string(optimizer_name(o)) + (eight ? " 8-bit" : " 32-bit"));
      const Param start(o, DType::F32, 5000, eight, rng_, false);
      Param clipped = start, free = start;
      OptimizerConfig c = config_for(o, 0);
      c.weight_decay = 0.0f;
      c.lr = 0.1f;  // steps far above p's rounding
      c.max_unorm = 1e-3f;
      step(c, clipped);
      OptimizerConfig loose = c;
      loose.max_unorm = 1e30f;
      step(loose, free);
      EXPECT_EQ(clipped.unorm[0], free.unorm[0]) << "the sum of u^2 does not depend on the limit";
      EXPECT_EQ(clipped.q1, free.q1) << "clipping scales p's step only";
      EXPECT_EQ(clipped.f1, free.f1);
      double moved = 0.0, moved_free = 0.0;
      for (int64_t i = 0; i < 5000; ++i) {
        moved += std::pow(double(clipped.p.get(i)) - start.p.get(i), 2);
        moved_free += std::pow(double(free.p.get(i)) - start.p.get(i), 2);
      }
      const double limit = double(c.max_unorm) * start.param_norm + (o == Optimizer::LAMB ? 0.0 : c.eps);
      ASSERT_GT(std::sqrt(double(free.unorm[0])), 2 * limit) << "the case must clip";
      EXPECT_NEAR(std::sqrt(moved_free), c.lr * std::sqrt(double(free.unorm[0])), 1e-4 * std::sqrt(moved_free));
      EXPECT_NEAR(std::sqrt(moved), c.lr * limit, 1e-3 * c.lr * limit);
    }
}

// ---- errors ---------------------------------------------------------------------------------------

TEST(OptimErrors, NamesAndArguments) {
  EXPECT_EQ(optimizer_from_name("lamb"), Optimizer::LAMB);
  EXPECT_EQ(optimizer_name(Optimizer::AdEMAMix), "ademamix");
  EXPECT_THROW(optimizer_from_name("adamw"), Error);
  std::mt19937_64 rng(1);
  auto expect_error = [](auto&& f, const std::string& part) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one mentioning '" << part << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  Param adam(Optimizer::Adam, DType::F32, 10, false, rng, false);
  OptimizerConfig c;
  OptimizerState32 s = adam.view32();
  s.state2 = std::nullopt;
  expect_error([&] { optimizer_update_32bit(c, s); }, "state2 = None must be given for adam");
  c.step = 0;
  expect_error([&] { optimizer_update_32bit(c, adam.view32()); }, "step = 0");
  c = OptimizerConfig{};
  c.optimizer = Optimizer::Lion;
  c.max_unorm = 1.0f;
  Param lion(Optimizer::Lion, DType::F32, 10, true, rng, false);
  expect_error([&] { optimizer_update_8bit_blockwise(c, kQmap1, std::nullopt, lion.view8()); }, "max_unorm");
  c.max_unorm = 0.0f;
  expect_error([&] { optimizer_update_8bit_blockwise(c, kQmap1, kQmap2, lion.view8()); }, "qmap2");
  OptimizerState8bit l8 = lion.view8();
  l8.absmax1 = TensorView(lion.a1.data(), DType::F32, {0});
  expect_error([&] { optimizer_update_8bit_blockwise(c, kQmap1, std::nullopt, l8); }, "absmax1");
  c.optimizer = Optimizer::LAMB;
  c.max_unorm = 1.0f;
  OptimizerState32 lamb = adam.view32();
  lamb.unorm_vec = std::nullopt;
  expect_error([&] { optimizer_update_32bit(c, lamb); }, "unorm_vec = None");
  c.max_unorm = 0.0f;
  Param bf(Optimizer::Adam, DType::BF16, 10, false, rng, false);
  OptimizerState32 mixed = adam.view32();
  mixed.p = bf.p.view();
  expect_error([&] { optimizer_update_32bit(c, mixed); }, "p.dtype = bfloat16");
  std::vector<OptimizerState32> list{adam.view32(), mixed};
  expect_error([&] { optimizer_update_32bit_multi(c, list); }, "optimizer_update_32bit_multi (params[1])");
}

}  // namespace
}  // namespace nybble
