// optim_test_util.hpp — what the optimizer tests share: a parameter with its gradient and states
// (32-bit or 8-bit) in host buffers, the hyperparameters of each test case, and a bit-for-bit
// comparison of two parameters after a step.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace nybble::optim_test {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kSizes[] = {1, 255, 256, 257, 4097, 65537};
constexpr Optimizer kAll[] = {Optimizer::Adam,    Optimizer::AdEMAMix, Optimizer::Momentum, Optimizer::RMSprop,
                              Optimizer::Adagrad, Optimizer::Lion,     Optimizer::LAMB,     Optimizer::LARS};

inline bool clips(Optimizer o) {
  return o == Optimizer::Adam || o == Optimizer::LAMB || o == Optimizer::Momentum || o == Optimizer::LARS ||
         o == Optimizer::RMSprop;
}
inline bool two_states(Optimizer o) { return optimizer_has_state2(o); }

template <class T>
TensorView vec_view(const std::vector<T>& v, DType t) {
  return TensorView(v.data(), t, {static_cast<int64_t>(v.size())});
}

// One parameter with its gradient and states (32-bit or 8-bit), owning its buffers.
struct Param {
  Optimizer o;
  DType dt;
  int64_t n;
  bool eight;
  test::FloatBuffer g, p;
  std::vector<float> f1, f2;     // 32-bit states
  std::vector<uint8_t> q1, q2;   // 8-bit codes
  std::vector<float> a1, a2;     // 8-bit absmax
  std::vector<float> unorm{-1.0f};
  float param_norm = 0.0f;

  Param(Optimizer opt, DType t, int64_t count, bool eight_bit, std::mt19937_64& rng, bool specials)
      : o(opt), dt(t), n(count), eight(eight_bit), g(t, count), p(t, count) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> uni(0.0f, 1.0f);
    for (int64_t i = 0; i < n; ++i) {
      p.set(i, 0.1f * normal(rng));
      g.set(i, 0.01f * normal(rng));
    }
    if (specials) {
      // A block of zero gradients: with momentum at step 1 an all-zero block of states.
      for (int64_t i = 256; i < std::min<int64_t>(n, 512); ++i) g.set(i, 0.0f);
      for (int64_t i = 0; i < n; ++i) {
        const auto r = rng() % 64;
        if (r == 0) g.set(i, kNaN);
        else if (r == 1) g.set(i, kInf);
        else if (r == 2) g.set(i, -kInf);
        else if (r < 6) g.set(i, 0.0f);
        else if (r == 6) g.set(i, -0.0f);
      }
    }
    const int64_t ns1 = o == Optimizer::AdEMAMix ? 2 * n : n, nb = num_blocks(n, kOptimizerBlocksize);
    if (!eight) {
      f1.resize(static_cast<size_t>(ns1));
      for (auto& x : f1) x = 0.01f * normal(rng);
      if (o == Optimizer::Adagrad || o == Optimizer::RMSprop)
        for (auto& x : f1) x = 1e-4f * uni(rng);
      if (two_states(o)) {
        f2.resize(static_cast<size_t>(n));
        for (auto& x : f2) x = 1e-4f * uni(rng);
      }
    } else {
      q1.resize(static_cast<size_t>(ns1));
      for (auto& x : q1) x = static_cast<uint8_t>(rng());
      a1.resize(static_cast<size_t>(o == Optimizer::AdEMAMix ? 2 * nb : nb));
      for (auto& x : a1) x = 0.01f * uni(rng);
      if (o == Optimizer::Adagrad || o == Optimizer::RMSprop)  // positive states: codes of the upper half
        for (auto& x : q1) x = static_cast<uint8_t>(x | 0x80);
      if (two_states(o)) {
        q2.resize(static_cast<size_t>(n));
        for (auto& x : q2) x = static_cast<uint8_t>(rng());
        a2.resize(static_cast<size_t>(nb));
        for (auto& x : a2) x = 1e-4f * uni(rng);
      }
    }
    double pn = 0.0;
    for (int64_t i = 0; i < n; ++i) pn += static_cast<double>(p.get(i)) * p.get(i);
    param_norm = static_cast<float>(std::sqrt(pn));
  }

  OptimizerState32 view32() const {
    OptimizerState32 s{g.view(), p.view(), vec_view(f1, DType::F32), std::nullopt, vec_view(unorm, DType::F32), param_norm};
    if (two_states(o)) s.state2 = vec_view(f2, DType::F32);
    return s;
  }
  OptimizerState8bit view8() const {
    OptimizerState8bit s{g.view(), p.view(), vec_view(q1, DType::U8), vec_view(a1, DType::F32),
                         std::nullopt, std::nullopt, vec_view(unorm, DType::F32), param_norm};
    if (two_states(o)) {
      s.state2 = vec_view(q2, DType::U8);
      s.absmax2 = vec_view(a2, DType::F32);
    }
    return s;
  }
};

// Success when a and b hold the same p, states, codes, absmax and unorm_vec, bit for bit; else
// names the first difference.
inline ::testing::AssertionResult same_bits(const Param& a, const Param& b) {
  auto first_diff = [](const void* x, const void* y, size_t count, size_t size) -> int64_t {
    for (size_t i = 0; i < count; ++i)
      if (std::memcmp(static_cast<const uint8_t*>(x) + i * size, static_cast<const uint8_t*>(y) + i * size, size) != 0)
        return static_cast<int64_t>(i);
    return -1;
  };
  // Any NaN equals any NaN: the sign and payload of a NaN depend on operand order, which the
  // compiler may swap in commutative operations.
  for (int64_t i = 0; i < a.n; ++i) {
    const float x = a.p.get(i), y = b.p.get(i);
    if (!(std::isnan(x) && std::isnan(y)) &&
        std::memcmp(&a.p.bytes[size_t(i * dtype_size(a.dt))], &b.p.bytes[size_t(i * dtype_size(a.dt))], size_t(dtype_size(a.dt))) != 0)
      return ::testing::AssertionFailure() << "p[" << i << "]: " << x << " vs " << y;
  }
  auto floats = [&](const char* what, const std::vector<float>& x, const std::vector<float>& y) {
    for (size_t i = 0; i < x.size(); ++i)
      if (!(std::isnan(x[i]) && std::isnan(y[i])) && std::memcmp(&x[i], &y[i], 4) != 0)
        return ::testing::AssertionFailure() << what << "[" << i << "]: " << x[i] << " vs " << y[i];
    return ::testing::AssertionSuccess();
  };
  auto codes = [&](const char* what, const std::vector<uint8_t>& x, const std::vector<uint8_t>& y) {
    const int64_t i = first_diff(x.data(), y.data(), x.size(), 1);
    if (i < 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << what << "[" << i << "]: " << int(x[size_t(i)]) << " vs " << int(y[size_t(i)]);
  };
  for (auto r : {floats("state1", a.f1, b.f1), floats("state2", a.f2, b.f2), codes("state1 code", a.q1, b.q1),
                 codes("state2 code", a.q2, b.q2), floats("absmax1", a.a1, b.a1), floats("absmax2", a.a2, b.a2),
                 floats("unorm_vec", a.unorm, b.unorm)})
    if (!r) return r;
  return ::testing::AssertionSuccess();
}

inline const TensorView kQmap1(dynamic_map_signed().data(), DType::F32, {256});
inline const TensorView kQmap2(dynamic_map_unsigned().data(), DType::F32, {256});

inline void step(const OptimizerConfig& c, const Param& prm) {
  if (prm.eight)
    optimizer_update_8bit_blockwise(c, kQmap1, two_states(c.optimizer) ? std::optional(kQmap2) : std::nullopt, prm.view8());
  else
    optimizer_update_32bit(c, prm.view32());
}

// The hyperparameters of case `variant` of optimizer o: weight decay, skip_zeros, a first and a
// later step and clipping (tight, so it applies, or loose) take turns.
inline OptimizerConfig config_for(Optimizer o, int variant) {
  OptimizerConfig c;
  c.optimizer = o;
  c.lr = o == Optimizer::Lion ? 1e-4f : 1e-3f;
  if (o == Optimizer::Lion) c.beta2 = 0.99f;
  if (o == Optimizer::RMSprop) c.beta1 = 0.99f;
  c.weight_decay = variant % 2 ? 0.01f : 0.0f;
  c.skip_zeros = variant % 3 == 1;
  c.step = variant % 4 < 2 ? 1 : 7;
  if (clips(o)) c.max_unorm = variant % 3 == 0 ? 0.0f : (variant % 3 == 1 ? 1e-3f : 100.0f);
  if (o == Optimizer::LAMB || o == Optimizer::LARS) c.max_unorm = variant % 2 ? 1e-3f : 1.0f;
  c.gnorm_scale = variant % 5 == 4 ? 0.5f : 1.0f;
  return c;
}

inline std::string name_of(Optimizer o, DType dt, int64_t n, bool eight, int variant) {
  return std::string(optimizer_name(o)) + (eight ? " 8-bit " : " 32-bit ") + std::string(dtype_name(dt)) + " n " +
         std::to_string(n) + " variant " + std::to_string(variant);
}

}  // namespace nybble::optim_test
