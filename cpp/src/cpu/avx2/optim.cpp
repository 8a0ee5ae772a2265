// cpu/avx2/optim.cpp — AVX2 optimizer steps, bit-identical to the oracle (cpu/ref/optim.cpp):
// optim_rules.hpp's element rules run unchanged on F8, eight fp32 lanes with the same IEEE
// operations (vsqrtps, vdivps; no FMA contraction), so every lane rounds as the oracle does.
//
// 32-bit: 8 elements at a time, states read and written in place.
// 8-bit: chunks of up to kChunkBlocks blocks go through three passes over L2-resident buffers:
//   dequantize_8bit (this kernel set's) into fp32 states, the element rules in vectors, then
//   quantize_8bit (this set's: absmax and nearest codes, as the oracle's requantization) and the
//   sign rule. dequantize_8bit and quantize_8bit are bit-identical to the oracle's, so the chunk
//   is too.
// Full blocks only: a tensor's partial last block runs the oracle's per-block code.
// The norm pass keeps Note [Update norm]'s eight lanes in two vectors of doubles (lanes 0-3,
// 4-7), each lane summing its elements in order, and combines them as the oracle does.
//
// Bytes moved per element (the count a benchmark divides by): 32-bit: g and p (sizeof(T) read,
// sizeof(T) written) + 4 or 8 bytes of states read and written (12 with AdEMAMix); 8-bit: g, p as
// above + 1 or 2 state bytes read and written (3 with AdEMAMix) + 8 bytes of absmax per block and
// state. The norm pass reads everything once more and writes nothing.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "cpu/avx2/avx2.hpp"
#include "cpu/avx2/vec.hpp"
#include "cpu/elem.hpp"
#include "cpu/ref/optim_rules.hpp"
#include "cpu/ref/ref.hpp"

namespace nybble::cpu::avx2 {
namespace {

constexpr int64_t kBs = kOptimizerBlocksize;
constexpr int64_t kChunkBlocks = 32;  // 8192 elements: three fp32 state buffers of 32 KiB stay in L2

// Eight fp32 lanes as optim_rules.hpp's value type V.
struct F8 {
  __m256 v;
  F8() = default;
  F8(float x) : v(_mm256_set1_ps(x)) {}  // implicit: the rules write V(c.beta1)
  explicit F8(__m256 x) : v(x) {}
};
struct M8 {
  __m256 m;  // all ones where true
};

inline F8 operator+(F8 a, F8 b) { return F8(_mm256_add_ps(a.v, b.v)); }
inline F8 operator-(F8 a, F8 b) { return F8(_mm256_sub_ps(a.v, b.v)); }
inline F8 operator*(F8 a, F8 b) { return F8(_mm256_mul_ps(a.v, b.v)); }
inline F8 operator/(F8 a, F8 b) { return F8(_mm256_div_ps(a.v, b.v)); }
inline F8 sqrt_of(F8 a) { return F8(_mm256_sqrt_ps(a.v)); }
// 1, -1 or +0 (NaN: +0), as the scalar sign_of.
inline F8 sign_of(F8 a) {
  const __m256 z = _mm256_setzero_ps();
  const __m256 pos = _mm256_and_ps(_mm256_cmp_ps(a.v, z, _CMP_GT_OQ), _mm256_set1_ps(1.0f));
  const __m256 neg = _mm256_and_ps(_mm256_cmp_ps(a.v, z, _CMP_LT_OQ), _mm256_set1_ps(-1.0f));
  return F8(_mm256_or_ps(pos, neg));
}
inline M8 finite_of(F8 a) {
  const __m256i e = _mm256_and_si256(_mm256_castps_si256(a.v), _mm256_set1_epi32(0x7F800000));
  const __m256i inf_or_nan = _mm256_cmpeq_epi32(e, _mm256_set1_epi32(0x7F800000));
  return {_mm256_castsi256_ps(_mm256_xor_si256(inf_or_nan, _mm256_set1_epi32(-1)))};
}
inline M8 keep_of(F8 g, bool skip_zeros, bool need_finite) {
  __m256 keep = need_finite ? finite_of(g).m : _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  if (skip_zeros) keep = _mm256_andnot_ps(_mm256_cmp_ps(g.v, _mm256_setzero_ps(), _CMP_EQ_OQ), keep);
  return {keep};
}
inline F8 select(M8 m, F8 a, F8 b) { return F8(_mm256_blendv_ps(b.v, a.v, m.m)); }

// Note [Update norm]'s lanes: lo holds lanes 0-3, hi lanes 4-7.
struct UnormLanes {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  void add(F8 u) {
    const __m256d a = _mm256_cvtps_pd(_mm256_castps256_ps128(u.v)), b = _mm256_cvtps_pd(_mm256_extractf128_ps(u.v, 1));
    lo = _mm256_add_pd(lo, _mm256_mul_pd(a, a));
    hi = _mm256_add_pd(hi, _mm256_mul_pd(b, b));
  }
  double sum() const {
    alignas(32) double l[optim::kUnormLanes];
    _mm256_store_pd(l, lo);
    _mm256_store_pd(l + 4, hi);
    return optim::combine_unorm_lanes(l);
  }
};

template <DType T>
using Storage = typename Elem<T>::storage;

template <DType T, Optimizer K>
void optimizer_32bit_blocks(const optim::Step& c, const Optim32Args& a, double* unorm, int64_t b0, int64_t b1) {
  const auto* g = static_cast<const Storage<T>*>(a.g);
  auto* p = static_cast<Storage<T>*>(a.p);
  float* slow = a.state1 + a.n;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * kBs;
    if (begin + kBs > a.n) {  // the partial last block
      ref::optimizer_32bit(c, a, unorm != nullptr ? unorm + (b - b0) : nullptr, b, b + 1);
      continue;
    }
    UnormLanes lanes;
    for (int64_t i = begin; i < begin + kBs; i += 8) {
      F8 pv(load8<T>(p + i)), s1(_mm256_loadu_ps(a.state1 + i)), s2(0.0f), s3(0.0f), u(0.0f);
      if (optim::has_state2(K)) s2 = F8(_mm256_loadu_ps(a.state2 + i));
      if (optim::has_slow_ema(K)) s3 = F8(_mm256_loadu_ps(slow + i));
      optim::update_element<K, false>(c, a.update_scale, F8(load8<T>(g + i)), pv, s1, s2, s3, u);
      if (unorm != nullptr) {
        lanes.add(u);
        continue;
      }
      store8_float<T>(p + i, pv.v);
      _mm256_storeu_ps(a.state1 + i, s1.v);
      if (optim::has_state2(K)) _mm256_storeu_ps(a.state2 + i, s2.v);
      if (optim::has_slow_ema(K)) _mm256_storeu_ps(slow + i, s3.v);
    }
    if (unorm != nullptr) unorm[b - b0] = lanes.sum();
  }
}

// Note [Sign rule] over len requantized codes q of the values s: where code[q] and s differ in
// sign bit, q moves by +1 (s > 0) or -1, wrapping as a byte.
void sign_rule(const float* code, const float* s, int64_t len, uint8_t* q) {
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + j)));
    const __m256i v = _mm256_castps_si256(_mm256_i32gather_ps(code, c, 4));
    const __m256 x = _mm256_loadu_ps(s + j);
    const __m256i differ = _mm256_srai_epi32(_mm256_xor_si256(v, _mm256_castps_si256(x)), 31);  // -1 where the signs differ
    const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ));  // -1 where s > 0
    const __m256i step = _mm256_or_si256(_mm256_and_si256(up, _mm256_set1_epi32(1)), _mm256_andnot_si256(up, _mm256_set1_epi32(-1)));
    const __m256i moved = _mm256_and_si256(_mm256_add_epi32(c, _mm256_and_si256(differ, step)), _mm256_set1_epi32(0xFF));
    const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(moved), _mm256_extracti128_si256(moved, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + j), _mm_packus_epi16(h, h));
  }
  for (; j < len; ++j) q[j] = optim::apply_sign_rule(code, q[j], s[j]);
}

template <DType T, Optimizer K>
void optimizer_8bit_blocks(const optim::Step& c, const Optim8Args& a, double* unorm, int64_t b0, int64_t b1) {
  const auto* g = static_cast<const Storage<T>*>(a.g);
  auto* p = static_cast<Storage<T>*>(a.p);
  const int64_t nb = num_blocks(a.n, kBs), full = a.n / kBs;  // blocks [0, full) are whole
  uint8_t* slow = a.state1 + a.n;  // AdEMAMix's slow EMA codes; its scales: absmax1 + nb
  std::vector<float> buffers(static_cast<size_t>(3 * kChunkBlocks * kBs));
  float* const buf[3] = {buffers.data(), buffers.data() + kChunkBlocks * kBs, buffers.data() + 2 * kChunkBlocks * kBs};
  for (int64_t cb = b0; cb < std::min(b1, full); cb += kChunkBlocks) {
    const int64_t nblk = std::min({b1, full, cb + kChunkBlocks}) - cb, begin = cb * kBs, len = nblk * kBs;
    dequantize_8bit(a.state1 + begin, a.absmax1 + cb, a.qmap1, len, kBs, buf[0], DType::F32, 0, nblk);
    if (optim::has_state2(K)) dequantize_8bit(a.state2 + begin, a.absmax2 + cb, a.qmap2, len, kBs, buf[1], DType::F32, 0, nblk);
    if (optim::has_slow_ema(K)) dequantize_8bit(slow + begin, a.absmax1 + nb + cb, a.qmap1, len, kBs, buf[2], DType::F32, 0, nblk);
    for (int64_t k = 0; k < nblk; ++k) {
      UnormLanes lanes;
      for (int64_t j = k * kBs; j < (k + 1) * kBs; j += 8) {
        const int64_t i = begin + j;
        F8 pv(load8<T>(p + i)), s1(_mm256_loadu_ps(buf[0] + j)), s2(0.0f), s3(0.0f), u(0.0f);
        if (optim::has_state2(K)) s2 = F8(_mm256_loadu_ps(buf[1] + j));
        if (optim::has_slow_ema(K)) s3 = F8(_mm256_loadu_ps(buf[2] + j));
        optim::update_element<K, true>(c, a.update_scale, F8(load8<T>(g + i)), pv, s1, s2, s3, u);
        if (unorm != nullptr) {
          lanes.add(u);
          continue;
        }
        store8_float<T>(p + i, pv.v);
        _mm256_storeu_ps(buf[0] + j, s1.v);
        if (optim::has_state2(K)) _mm256_storeu_ps(buf[1] + j, s2.v);
        if (optim::has_slow_ema(K)) _mm256_storeu_ps(buf[2] + j, s3.v);
      }
      if (unorm != nullptr) unorm[cb + k - b0] = lanes.sum();
    }
    if (unorm != nullptr) continue;
    quantize_8bit(buf[0], DType::F32, len, kBs, a.qmap1, a.state1 + begin, a.absmax1 + cb, 0, nblk);
    sign_rule(a.qmap1, buf[0], len, a.state1 + begin);
    if (optim::has_state2(K)) quantize_8bit(buf[1], DType::F32, len, kBs, a.qmap2, a.state2 + begin, a.absmax2 + cb, 0, nblk);
    if (optim::has_slow_ema(K)) {
      quantize_8bit(buf[2], DType::F32, len, kBs, a.qmap1, slow + begin, a.absmax1 + nb + cb, 0, nblk);
      sign_rule(a.qmap1, buf[2], len, slow + begin);
    }
  }
  for (int64_t b = std::max(b0, full); b < b1; ++b)  // the partial last block
    ref::optimizer_8bit(c, a, unorm != nullptr ? unorm + (b - b0) : nullptr, b, b + 1);
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

}  // namespace nybble::cpu::avx2
