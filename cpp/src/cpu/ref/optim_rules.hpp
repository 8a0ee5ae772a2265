// cpu/ref/optim_rules.hpp — the oracle's per-element optimizer rules (spec §4.3), written once
// for every backend: cpu/ref/optim.cpp runs them on floats, cpu/avx2/optim.cpp on 8-lane vectors
// and cuda/optim.cu in device threads, so all three round every fp32 operation at the same
// place (nybble builds with -ffp-contract=off and nvcc -fmad=false; IEEE division and sqrt).
//
// Plain C++17 (nvcc compiles it); a value type V needs +, -, *, /, V(float), and the overloads
// sqrt_of, sign_of, finite_of, keep_of and select that are given here for float.
//
// Note [Optimizer math]: the reference's CUDA kernels define the math; where its CPU backend
// differs (weight decay before the Adam update) nybble follows CUDA. Each kind, for g already
// multiplied by gnorm_scale; "scale" is the update-norm clipping factor (1 without max_unorm):
//   adam:     m = b1 m + (1-b1) g;  v = b2 v + ((1-b2) g) g;  r = m / (sqrt(v) + eps c2)
//             p += (step_size scale) r;  then p *= 1 - lr wd if wd > 0     (decoupled, after)
//             step_size = -lr c2 / c1, c1 = 1 - b1^t, c2 = sqrt(1 - b2^t); u = r c2 / c1
//   ademamix: m1 = b1 m1 + (1-b1) g;  m2 = b3 m2 + (1-b3) g;  v = b2 v + ((1-b2) g) g
//             p -= lr ((m1 / c1 + alpha m2) / (sqrt(v) / c2 + eps));  then p *= 1 - lr wd
//   momentum: g += wd p (wd > 0);  m = g at t = 1, else b1 m + g;  p -= (lr scale) m;  u = m
//   rmsprop:  g += wd p;  s = b1 s + ((1-b1) g) g;  r = g / (sqrt(s) + eps);  p -= (lr scale) r
//   adagrad:  g += wd p;  s = s + g g;  p -= lr (g / (sqrt(s) + eps))
//   lion:     p *= 1 - lr wd (wd > 0, before);  p -= lr sign(b1 m + (1-b1) g);  m = b2 m + (1-b2) g
// p is held in fp32 for the whole step and rounded to its dtype once (the reference's CUDA
// kernels round a 16-bit p after the update and again after the decay). An element whose
// gradient is 0 with skip_zeros keeps p and its states; in 8-bit, a NaN/inf gradient zeroes the
// element's states and keeps p (32-bit lets NaN through to p and the states, as the reference
// and torch do).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "nybble/optim.hpp"

#ifndef NYBBLE_HD
#if defined(__CUDACC__)
#define NYBBLE_HD __host__ __device__ __forceinline__
#else
#define NYBBLE_HD inline
#endif
#endif

namespace nybble::optim {

// The kernel that runs an optimizer: LAMB is Adam's and LARS momentum's (with max_unorm).
NYBBLE_HD constexpr Optimizer kernel_kind(Optimizer o) {
  return o == Optimizer::LAMB ? Optimizer::Adam : o == Optimizer::LARS ? Optimizer::Momentum : o;
}

// Calls f(std::integral_constant<Optimizer, K>{}) for kernel kind k.
template <class F>
void dispatch_kind(Optimizer k, F&& f) {
  switch (k) {
    case Optimizer::AdEMAMix: f(std::integral_constant<Optimizer, Optimizer::AdEMAMix>{}); break;
    case Optimizer::Momentum: f(std::integral_constant<Optimizer, Optimizer::Momentum>{}); break;
    case Optimizer::RMSprop: f(std::integral_constant<Optimizer, Optimizer::RMSprop>{}); break;
    case Optimizer::Adagrad: f(std::integral_constant<Optimizer, Optimizer::Adagrad>{}); break;
    case Optimizer::Lion: f(std::integral_constant<Optimizer, Optimizer::Lion>{}); break;
    default: f(std::integral_constant<Optimizer, Optimizer::Adam>{}); break;
  }
}

// The states a kernel kind keeps besides state1: state2, and AdEMAMix's slow EMA (in state1).
NYBBLE_HD constexpr bool has_state2(Optimizer kind) { return kind == Optimizer::Adam || kind == Optimizer::AdEMAMix; }
NYBBLE_HD constexpr bool has_slow_ema(Optimizer kind) { return kind == Optimizer::AdEMAMix; }

// Whether a kernel kind supports max_unorm (the reference applies it in these only).
NYBBLE_HD constexpr bool clips_update(Optimizer kind) {
  return kind == Optimizer::Adam || kind == Optimizer::Momentum || kind == Optimizer::RMSprop;
}

// One step's scalars, derived once per call (core/optim.cpp; with step and lr tensors, by
// at_step where the step runs, Note [Device scalars] in nybble/optim.hpp) so that every backend
// computes with the same fp32 values. Trivially copyable: CUDA kernels take it by value.
struct Step {
  Optimizer kind;  // a kernel kind (kernel_kind)
  float beta1, beta2, beta3, alpha, eps, lr, gnorm_scale, weight_decay;
  float one_minus_beta1, one_minus_beta2, one_minus_beta3;
  float c1, c2;       // 1 - beta1^t, sqrt(1 - beta2^t)
  float step_size;    // (-lr * c2) / c1
  float eps_c2;       // eps * c2
  float norm_ratio;   // c2 / c1: Adam's u = r * norm_ratio, the bias-corrected update
  float decay;        // 1 - lr * weight_decay
  bool first_step;    // t == 1
  bool skip_zeros;
  float max_unorm;
  double t;           // the step count the fields above are for
};

// Step s for step count t and learning rate lr: the fields that depend on them, from the others.
// Host and device evaluate the same expressions (beta^t in double, rounded once to fp32: the
// reference evaluates powf on the GPU), so a step count read on the GPU gives the host's values.
NYBBLE_HD Step at_step(Step s, double t, float lr) {
  const auto pow_t = [t](float beta) { return static_cast<float>(::pow(static_cast<double>(beta), t)); };
  s.t = t;
  s.lr = lr;
  s.c1 = 1.0f - pow_t(s.beta1);
  s.c2 = sqrtf(1.0f - pow_t(s.beta2));
  s.step_size = (-lr * s.c2) / s.c1;
  s.eps_c2 = s.eps * s.c2;
  s.norm_ratio = s.c2 / s.c1;
  s.decay = 1.0f - lr * s.weight_decay;
  s.first_step = t == 1.0;
  return s;
}

// ---- float primitives (V = float) -------------------------------------------------------------

NYBBLE_HD float sqrt_of(float x) { return sqrtf(x); }
NYBBLE_HD float sign_of(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }
NYBBLE_HD uint32_t bits_of(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u;
}
NYBBLE_HD bool finite_of(float x) { return (bits_of(x) & 0x7F800000u) != 0x7F800000u; }
// Whether an element with gradient g is updated.
NYBBLE_HD bool keep_of(float g, bool skip_zeros, bool need_finite) {
  return (!need_finite || finite_of(g)) && !(skip_zeros && g == 0.0f);
}
NYBBLE_HD float select(bool m, float a, float b) { return m ? a : b; }

// ---- the rules ----------------------------------------------------------------------------------

// New p and states of one element (Note [Optimizer math]), and its update u for the norm pass
// (Adam: the bias-corrected step direction; momentum: m; RMSprop: r; 0 for the others). States
// a kind does not have are left alone.
template <Optimizer K, class V>
NYBBLE_HD void step_element(const Step& c, float scale, V g, V& p, V& s1, V& s2, V& s3, V& u) {
  g = g * V(c.gnorm_scale);
  if constexpr (K == Optimizer::Adam) {
    s1 = s1 * V(c.beta1) + V(c.one_minus_beta1) * g;
    s2 = s2 * V(c.beta2) + (V(c.one_minus_beta2) * g) * g;
    const V r = s1 / (sqrt_of(s2) + V(c.eps_c2));
    u = r * V(c.norm_ratio);
    p = p + V(c.step_size * scale) * r;
    if (c.weight_decay > 0.0f) p = p * V(c.decay);
  } else if constexpr (K == Optimizer::AdEMAMix) {
    s1 = s1 * V(c.beta1) + V(c.one_minus_beta1) * g;
    s3 = s3 * V(c.beta3) + V(c.one_minus_beta3) * g;
    s2 = s2 * V(c.beta2) + (V(c.one_minus_beta2) * g) * g;
    p = p - V(c.lr) * ((s1 / V(c.c1) + V(c.alpha) * s3) / (sqrt_of(s2) / V(c.c2) + V(c.eps)));
    if (c.weight_decay > 0.0f) p = p * V(c.decay);
    u = V(0.0f);
  } else if constexpr (K == Optimizer::Lion) {
    if (c.weight_decay > 0.0f) p = p * V(c.decay);
    const V d = sign_of(s1 * V(c.beta1) + V(c.one_minus_beta1) * g);
    s1 = s1 * V(c.beta2) + V(c.one_minus_beta2) * g;
    p = p - V(c.lr) * d;
    u = V(0.0f);
  } else {  // momentum, rmsprop, adagrad: L2 weight decay on the gradient
    if (c.weight_decay > 0.0f) g = g + p * V(c.weight_decay);
    if constexpr (K == Optimizer::Momentum) {
      s1 = c.first_step ? g : s1 * V(c.beta1) + g;
      u = s1;
      p = p - V(c.lr * scale) * s1;
    } else if constexpr (K == Optimizer::RMSprop) {
      s1 = s1 * V(c.beta1) + (V(c.one_minus_beta1) * g) * g;
      u = g / (sqrt_of(s1) + V(c.eps));
      p = p - V(c.lr * scale) * u;
    } else {
      static_assert(K == Optimizer::Adagrad, "a kernel kind (kernel_kind)");
      s1 = s1 + g * g;
      p = p - V(c.lr) * (g / (sqrt_of(s1) + V(c.eps)));
      u = V(0.0f);
    }
  }
}

// step_element where the element is updated (keep_of), else p and the states stay, u = 0.
// kZeroNonFinite (8-bit): a NaN/inf gradient zeroes the element's states.
template <Optimizer K, bool kZeroNonFinite, class V>
NYBBLE_HD void update_element(const Step& c, float scale, V g, V& p, V& s1, V& s2, V& s3, V& u) {
  V np = p, n1 = s1, n2 = s2, n3 = s3;
  step_element<K>(c, scale, g, np, n1, n2, n3, u);
  const auto keep = keep_of(g, c.skip_zeros, kZeroNonFinite);
  if constexpr (kZeroNonFinite) {
    const auto finite = finite_of(g);
    s1 = select(finite, s1, V(0.0f));
    s2 = select(finite, s2, V(0.0f));
    s3 = select(finite, s3, V(0.0f));
  }
  p = select(keep, np, p);
  s1 = select(keep, n1, s1);
  s2 = select(keep, n2, s2);
  s3 = select(keep, n3, s3);
  u = select(keep, u, V(0.0f));
}

// Note [Update norm]: max_unorm needs sum(u^2) over the whole tensor before any element is
// updated, so a clipped step makes two passes: the norm pass computes every element's new states
// and u without writing anything, the update pass recomputes them (the same inputs, so the same
// values) and applies scale = trust_scale(sum). The oracle sums per block of kOptimizerBlocksize
// elements: element i of the block adds double(u) * double(u) (exact) to lane i % 8, in order;
// the lanes are combined as combine_unorm_lanes does; the CPU adds the block sums in block order
// in double and rounds once to fp32. (The AVX2 kernels keep the lanes in two vectors of doubles,
// so they give the same bits; the CUDA kernels add fp32 block sums atomically: the same value
// within fp32 rounding, not bit for bit.)
inline constexpr int kUnormLanes = 8;
NYBBLE_HD double combine_unorm_lanes(const double* l) {
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

// The clipping factor from sum(u^2) (reference semantics): min(1, limit / ||u||) with
// limit = max_unorm * param_norm, plus eps for the 1-state optimizers.
NYBBLE_HD float trust_scale(const Step& c, float unorm, float param_norm) {
  if (!(c.max_unorm > 0.0f)) return 1.0f;
  const float norm = sqrtf(unorm);
  float limit = c.max_unorm * param_norm;
  if (c.kind != Optimizer::Adam) limit = limit + c.eps;
  return norm > limit ? limit / norm : 1.0f;
}

// Note [Sign rule]: after a signed state (state1, AdEMAMix's slow EMA) is requantized to its
// nearest code, a code whose sign bit differs from the value's moves one index toward the
// value's sign (the reference's rule, which keeps tiny negative momenta negative). The index
// wraps as the reference's uint8 does: only an all-zero block, whose normalized values are
// 0 * inf = NaN and land on index 0 (Note [Normalized value] in formats.hpp), reaches it, and it
// gets index 255 there, as in the reference (code 1.0 times absmax 0: still 0).
NYBBLE_HD uint8_t apply_sign_rule(const float* code, uint8_t q, float s) {
  if ((bits_of(code[q]) >> 31) == (bits_of(s) >> 31)) return q;
  return static_cast<uint8_t>(s > 0.0f ? q + 1 : q - 1);
}

}  // namespace nybble::optim
