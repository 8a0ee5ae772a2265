// cpu/ref/optim.cpp — scalar oracle of the optimizer steps (nybble/optim.hpp): the definition the
// AVX2 and CUDA kernels are tested against. The per-element math is optim_rules.hpp's.
//
// 32-bit: p, state1 (and state2; AdEMAMix's slow EMA at state1[n + i]) element by element.
// 8-bit (§4.3 "8-bit blockwise"), per block of kOptimizerBlocksize elements:
//   1. dequantize the old states: s = qmap[q] * absmax[b] (AdEMAMix's slow EMA: qmap1 and
//      absmax1[nb + b], the [2, nb] layout);
//   2. update every element in fp32 (update_element, a NaN/inf gradient zeroing the states);
//   3. requantize each new state exactly as quantize_blockwise would (blocksize 256): absmax =
//      the block's largest |s| (NaN ignored), code = the nearest entry to s * (1 / absmax)
//      (Note [Normalized value] in formats.hpp); then Note [Sign rule] for the signed states.
// The norm pass (unorm non-null) runs steps 1-2 and sums u^2 as Note [Update norm] says.
#include <algorithm>

#include "cpu/elem.hpp"
#include "cpu/ref/optim_rules.hpp"
#include "cpu/ref/ref.hpp"

namespace nybble::cpu::ref {
namespace {

constexpr int64_t kBs = kOptimizerBlocksize;

template <DType T, Optimizer K>
void optimizer_32bit_blocks(const optim::Step& c, const Optim32Args& a, double* unorm, int64_t b0, int64_t b1) {
  using S = typename Elem<T>::storage;
  const auto* g = static_cast<const S*>(a.g);
  auto* p = static_cast<S*>(a.p);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * kBs, end = std::min(a.n, begin + kBs);
    double lanes[optim::kUnormLanes] = {};
    for (int64_t i = begin; i < end; ++i) {
      float pv = Elem<T>::load(p, i), s1 = a.state1[i], u = 0.0f;
      float s2 = optim::has_state2(K) ? a.state2[i] : 0.0f;
      float s3 = optim::has_slow_ema(K) ? a.state1[a.n + i] : 0.0f;
      optim::update_element<K, false>(c, a.update_scale, Elem<T>::load(g, i), pv, s1, s2, s3, u);
      if (unorm != nullptr) {
        lanes[(i - begin) % optim::kUnormLanes] += static_cast<double>(u) * static_cast<double>(u);
        continue;
      }
      Elem<T>::store(p, i, pv);
      a.state1[i] = s1;
      if (optim::has_state2(K)) a.state2[i] = s2;
      if (optim::has_slow_ema(K)) a.state1[a.n + i] = s3;
    }
    if (unorm != nullptr) unorm[b - b0] = optim::combine_unorm_lanes(lanes);
  }
}

// Step 3 for one block of len <= kBs new values s: codes q, *absmax.
void requantize(const float* code, const float* s, int64_t len, bool sign_rule, uint8_t* q, float* absmax) {
  quantize_8bit(s, DType::F32, len, kBs, code, q, absmax, 0, 1);
  if (sign_rule)
    for (int64_t j = 0; j < len; ++j) q[j] = optim::apply_sign_rule(code, q[j], s[j]);
}

template <DType T, Optimizer K>
void optimizer_8bit_blocks(const optim::Step& c, const Optim8Args& a, double* unorm, int64_t b0, int64_t b1) {
  using S = typename Elem<T>::storage;
  const auto* g = static_cast<const S*>(a.g);
  auto* p = static_cast<S*>(a.p);
  const int64_t nb = num_blocks(a.n, kBs);
  uint8_t* slow = a.state1 + a.n;  // AdEMAMix's slow EMA: codes, and its scales at absmax1[nb + b]
  float n1[kBs], n2[kBs], n3[kBs];
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * kBs, end = std::min(a.n, begin + kBs), len = end - begin;
    const float a1 = a.absmax1[b];
    const float a2 = optim::has_state2(K) ? a.absmax2[b] : 0.0f;
    const float a3 = optim::has_slow_ema(K) ? a.absmax1[nb + b] : 0.0f;
    double lanes[optim::kUnormLanes] = {};
    for (int64_t i = begin; i < end; ++i) {
      float pv = Elem<T>::load(p, i), s1 = a.qmap1[a.state1[i]] * a1, u = 0.0f;
      float s2 = optim::has_state2(K) ? a.qmap2[a.state2[i]] * a2 : 0.0f;
      float s3 = optim::has_slow_ema(K) ? a.qmap1[slow[i]] * a3 : 0.0f;
      optim::update_element<K, true>(c, a.update_scale, Elem<T>::load(g, i), pv, s1, s2, s3, u);
      if (unorm != nullptr) {
        lanes[(i - begin) % optim::kUnormLanes] += static_cast<double>(u) * static_cast<double>(u);
        continue;
      }
      Elem<T>::store(p, i, pv);
      n1[i - begin] = s1, n2[i - begin] = s2, n3[i - begin] = s3;
    }
    if (unorm != nullptr) {
      unorm[b - b0] = optim::combine_unorm_lanes(lanes);
      continue;
    }
    requantize(a.qmap1, n1, len, true, a.state1 + begin, a.absmax1 + b);
    if (optim::has_state2(K)) requantize(a.qmap2, n2, len, false, a.state2 + begin, a.absmax2 + b);
    if (optim::has_slow_ema(K)) requantize(a.qmap1, n3, len, true, slow + begin, a.absmax1 + nb + b);
  }
}

}  // namespace

void optimizer_32bit(const optim::Step& s, const Optim32Args& a, double* unorm, int64_t b0, int64_t b1) {
  dispatch_float(a.dt, [&]<DType T>() {
    optim::dispatch_kind(s.kind, [&](auto k) { optimizer_32bit_blocks<T, decltype(k)::value>(s, a, unorm, b0, b1); });
  });
}

void optimizer_8bit(const optim::Step& s, const Optim8Args& a, double* unorm, int64_t b0, int64_t b1) {
  dispatch_float(a.dt, [&]<DType T>() {
    optim::dispatch_kind(s.kind, [&](auto k) { optimizer_8bit_blocks<T, decltype(k)::value>(s, a, unorm, b0, b1); });
  });
}

}  // namespace nybble::cpu::ref
