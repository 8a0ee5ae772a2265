// cpu/avx2/quantize.cpp — AVX2 blockwise 4-bit (NF4/FP4) and 8-bit quantization and
// dequantization, bit-identical to the scalar oracle (cpu/ref/quantize.cpp).
//
// Layout (spec §1.4–1.5): block b covers flat elements [b*bs, min((b+1)*bs, n)); absmax[b] is
// its largest |x| (NaN ignored) and each element is coded as x * (1.0f / absmax[b]). 4-bit codes
// are packed two per byte, even index in the high nibble; 8-bit codes are one byte each.
//
// Bytes moved per element: quantize reads x from memory once (a group of blocks is scanned for
// absmax, then coded while it is still cached, the next group being prefetched meanwhile) and
// writes 1/2 (4-bit) or 1 (8-bit) byte plus 4 bytes of absmax per block; dequantize reads 1/2 or
// 1 byte (plus the block's scale) and writes one fp32/fp16/bf16 value, with non-temporal stores
// when the output is larger than caches. Vector bodies cover whole runs of 8, 16 or 32 elements;
// what is left of a block runs the oracle's scalar expressions.
//
// Exactness: every fp32 operation is the oracle's (one multiply x * r, one multiply code * scale,
// the 8-bit midpoints (a + b) * 0.5f) and the conversions to fp16/bf16 round as dtype.hpp does;
// decisions are reorganized (binary searches instead of counts, precomputed compare bounds) only
// where the notes below show the answer is the same.
//
// 8-bit codes come from the bucket table of Note [8-bit bucket tables] (cuda/codebook.hpp, the
// rule the CUDA kernels use, checked against formats.hpp by cuda_codebook_test) for every map
// that passes its checks (the dynamic maps do): two gathers per 8 elements. quantize_blockwise
// bs 256 on 512 Mi bf16 elements, 2 cores: 313 ms with the search of Note [8-bit search by
// answer bits], 168 ms with the buckets. Other maps keep that search.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "cpu/avx2/avx2.hpp"
#include "cpu/avx2/vec.hpp"
#include "cpu/elem.hpp"
#include "cuda/codebook.hpp"  // Note [8-bit bucket tables]: plain C++, shared with the CUDA kernels

namespace nybble::cpu::avx2 {
namespace {

template <DType T>
using Storage = typename Elem<T>::storage;

// ---- 8-lane stores of a float dtype (loads: vec.hpp) ------------------------------------------

// float_to_bf16 (dtype.hpp) on 8 lanes: round to nearest even, NaN kept and made quiet.
inline __m128i float_to_bf16x8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)),
                                            _mm256_set1_epi32(0x7F800000));
  const __m256i hi = _mm256_srli_epi32(u, 16);
  const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
  const __m256i rne = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i nan = _mm256_or_si256(hi, _mm256_set1_epi32(0x0040));
  const __m256i r = _mm256_blendv_epi8(rne, nan, is_nan);
  // Every lane is < 2^16, so the saturating pack is a plain narrowing.
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

// 8 floats -> 8 fp16/bf16 bit patterns, rounded as float_to_half / float_to_bf16.
template <DType T>
__m128i to_half8(__m256 v) {
  if constexpr (T == DType::F16)
    return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);  // F16C: RNE, subnormals kept
  else
    return float_to_bf16x8(v);
}

// Stream = non-temporal stores (the address is then aligned to the store's width).
template <bool Stream>
void put32(void* p, __m256i v) {
  if constexpr (Stream)
    _mm256_stream_si256(static_cast<__m256i*>(p), v);
  else
    _mm256_storeu_si256(static_cast<__m256i*>(p), v);
}
template <bool Stream>
void put16(void* p, __m128i v) {
  if constexpr (Stream)
    _mm_stream_si128(static_cast<__m128i*>(p), v);
  else
    _mm_storeu_si128(static_cast<__m128i*>(p), v);
}

template <DType T, bool Stream = false>
void store8(Storage<T>* p, __m256 v) {
  if constexpr (T == DType::F32)
    put32<Stream>(p, _mm256_castps_si256(v));
  else
    put16<Stream>(p, to_half8<T>(v));
}

// Dequantized outputs at least this large go out with non-temporal stores: they are bigger than
// common last-level caches, so caching them only evicts other data, and skipping the
// read-for-ownership of each line roughly doubles the write rate (8 -> 24 GB/s on one core of the
// development machine). Smaller outputs are likely read again soon and stay cached.
constexpr int64_t kStreamMinBytes = int64_t{32} << 20;

// Non-temporal stores need addresses aligned to their width. Vector stores of N elements land at
// multiples of N elements from a block's start (N = 8; 32 for the 16-bit 4-bit path, whose
// blocks are multiples of 32), so a 32-byte aligned output with blocks of a multiple of 8
// elements keeps all of them aligned.
bool use_streaming_stores(const void* out, int64_t n, DType dt, int64_t bs) {
  return n * dtype_size(dt) >= kStreamMinBytes && bs % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 32 == 0;
}

// Hint to fetch the line `ahead` bytes past p into L2 (measured better than into L1: fewer
// line-fill buffers held); never faults, so it may point past the data.
inline void prefetch_ahead(const void* p, int64_t ahead) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(ahead)), _MM_HINT_T1);
}

// vgatherdps merges into its destination register. GCC compiles the all-ones-mask intrinsic to
// a gather into whatever register it likes, often the one holding the previous iteration's
// result, and every gather then waits for that (3x slower loops). Gathering over a zero the
// compiler cannot see through makes it copy a fresh source into the destination each time.
inline __m256 gather8(const float* base, __m256i idx) {
  __m256 src = _mm256_setzero_ps(), mask = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  __asm__("" : "+x"(src), "+x"(mask));
  return _mm256_mask_i32gather_ps(src, base, idx, mask, 4);
}

// Pairs (table[c], table[c + 1]) for 8 even indices c, split into firsts and seconds. Two 4-lane
// 64-bit gathers take lanes 0,1,4,5 and 2,3,6,7, so that vshufps' in-lane interleave of their
// halves comes out in lane order.
inline void gather_lu(const float* table, __m256i c, __m256& first, __m256& second) {
  const __m256i order = _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
  __m256d src = _mm256_setzero_pd(), mask = _mm256_castsi256_pd(_mm256_set1_epi32(-1));
  __asm__("" : "+x"(src), "+x"(mask));  // see gather8
  const auto* base = reinterpret_cast<const double*>(table);
  const __m256 a = _mm256_castpd_ps(_mm256_mask_i32gather_pd(src, base, _mm256_castsi256_si128(order), mask, 4));
  const __m256 b = _mm256_castpd_ps(_mm256_mask_i32gather_pd(src, base, _mm256_extracti128_si256(order, 1), mask, 4));
  first = _mm256_shuffle_ps(a, b, 0x88);
  second = _mm256_shuffle_ps(a, b, 0xDD);
}

// ---- absmax --------------------------------------------------------------------------------------

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// Largest |x| over [begin, end), NaN ignored: vmaxps returns its second operand when either is
// NaN, so the new value goes first and a NaN leaves the accumulator alone. The accumulators only
// ever hold +0 or positive values, so the lane order of the final reduction cannot matter.
template <DType T>
float block_absmax(const Storage<T>* x, int64_t begin, int64_t end) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  auto absv = [&](int64_t i) { return _mm256_andnot_ps(sign, load8<T>(x + i)); };
  // Four chains: vmaxps has a 4-cycle latency.
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = begin;
  for (; i + 32 <= end; i += 32) {
    a0 = _mm256_max_ps(absv(i), a0);
    a1 = _mm256_max_ps(absv(i + 8), a1);
    a2 = _mm256_max_ps(absv(i + 16), a2);
    a3 = _mm256_max_ps(absv(i + 24), a3);
  }
  for (; i + 8 <= end; i += 8) a0 = _mm256_max_ps(absv(i), a0);
  float m = hmax(_mm256_max_ps(_mm256_max_ps(a0, a1), _mm256_max_ps(a2, a3)));
  for (; i < end; ++i) m = absmax_step(m, Elem<T>::load(x, i));
  return m;
}

// Runs code(begin, end, r, ahead) for every block of [b0, b1), r = 1.0f / absmax. Blocks go in
// groups of about kGroupElems elements: first every absmax of the group (independent dependency
// chains, and the reciprocals leave the critical path), then the coding pass, which re-reads the
// group from L1. The absmax pass waits on memory and the coding pass on arithmetic, so the coding
// pass prefetches the next group: `ahead` is the byte distance from an element to the one at the
// same place in the next group.
constexpr int64_t kGroupElems = 4096;
constexpr int64_t kMaxGroupBlocks = 128;

template <DType T, class Code>
void for_each_block_grouped(const Storage<T>* x, int64_t n, int64_t bs, float* absmax, int64_t b0, int64_t b1,
                            Code&& code) {
  const int64_t per_group = std::clamp<int64_t>(kGroupElems / bs, 1, kMaxGroupBlocks);
  float r[kMaxGroupBlocks];
  for (int64_t g0 = b0; g0 < b1; g0 += per_group) {
    const int64_t g1 = std::min(b1, g0 + per_group);
    for (int64_t b = g0; b < g1; ++b) {
      const float m = block_absmax<T>(x, b * bs, std::min(n, b * bs + bs));
      absmax[b] = m;
      r[b - g0] = 1.0f / m;
    }
    const int64_t ahead = (g1 - g0) * bs * static_cast<int64_t>(sizeof(Storage<T>));
    for (int64_t b = g0; b < g1; ++b) code(b * bs, std::min(n, b * bs + bs), r[b - g0], ahead);
  }
}

template <DType T, int K>
void load_scaled(const Storage<T>* x, __m256 r, __m256 (&v)[K]) {
  for (int k = 0; k < K; ++k) v[k] = _mm256_mul_ps(load8<T>(x + 8 * k), r);
}

// ---- 4-bit quantizers ----------------------------------------------------------------------------

inline __m256i gt_mask(__m256 x, __m256 t) { return _mm256_castps_si256(_mm256_cmp_ps(x, t, _CMP_GT_OQ)); }

// One step of a branchless binary search: j holds the answers so far as bits; table[j] is the
// next threshold (vpermps reads the low 3 bits of j); the mask of x > t is -1, so 2j - mask
// appends the new bit.
inline __m256i search_step(__m256 x, __m256 table, __m256i j) {
  const __m256i m = gt_mask(x, _mm256_permutevar8x32_ps(table, j));
  return _mm256_sub_epi32(_mm256_add_epi32(j, j), m);
}

// The quantizers take K vectors at once and run each search level over all of them before the
// next: one vector's levels form a long dependency chain, K independent chains hide it.

// NF4: the code is the number of thresholds t with x > t. The thresholds ascend strictly, so a
// 4-level binary search finds that count; NaN fails every compare and gets 0 either way.
struct Nf4Quantizer {
  __m256 t7, l2, l3, l4;
  Nf4Quantizer() {
    const auto& t = kNF4Threshold;
    t7 = _mm256_set1_ps(t[7]);
    l2 = _mm256_setr_ps(t[3], t[11], 0, 0, 0, 0, 0, 0);
    l3 = _mm256_setr_ps(t[1], t[5], t[9], t[13], 0, 0, 0, 0);
    l4 = _mm256_setr_ps(t[0], t[2], t[4], t[6], t[8], t[10], t[12], t[14]);
  }
  template <int K>
  void operator()(const __m256 (&x)[K], __m256i (&j)[K]) const {
    for (int k = 0; k < K; ++k) j[k] = _mm256_sub_epi32(_mm256_setzero_si256(), gt_mask(x[k], t7));
    for (int k = 0; k < K; ++k) j[k] = search_step(x[k], l2, j[k]);
    for (int k = 0; k < K; ++k) j[k] = search_step(x[k], l3, j[k]);
    for (int k = 0; k < K; ++k) j[k] = search_step(x[k], l4, j[k]);
  }
};

// FP4: magnitude rank by a 3-level search over |x| (same argument as NF4), mapped through
// kFP4ByRank, sign bit iff x < 0 (false for -0.0 and NaN).
struct Fp4Quantizer {
  __m256 t3, l2, l3;
  __m256i by_rank;
  Fp4Quantizer() {
    const auto& t = kFP4Threshold;
    const auto& r = kFP4ByRank;
    t3 = _mm256_set1_ps(t[3]);
    l2 = _mm256_setr_ps(t[1], t[5], 0, 0, 0, 0, 0, 0);
    l3 = _mm256_setr_ps(t[0], t[2], t[4], t[6], 0, 0, 0, 0);
    by_rank = _mm256_setr_epi32(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
  }
  template <int K>
  void operator()(const __m256 (&x)[K], __m256i (&j)[K]) const {
    __m256 a[K];
    for (int k = 0; k < K; ++k) a[k] = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x[k]);
    for (int k = 0; k < K; ++k) j[k] = _mm256_sub_epi32(_mm256_setzero_si256(), gt_mask(a[k], t3));
    for (int k = 0; k < K; ++k) j[k] = search_step(a[k], l2, j[k]);
    for (int k = 0; k < K; ++k) j[k] = search_step(a[k], l3, j[k]);
    for (int k = 0; k < K; ++k) {
      const __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(x[k], _mm256_setzero_ps(), _CMP_LT_OQ));
      j[k] = _mm256_or_si256(_mm256_permutevar8x32_epi32(by_rank, j[k]), _mm256_and_si256(neg, _mm256_set1_epi32(8)));
    }
  }
};

// Codes (0..15, one per int32 lane, element order c[0], c[1], ...) -> packed bytes, even element
// in the high nibble. packs + madd by (16, 1) form one byte value per pair of elements in int32
// lanes, in the in-lane order vpackssdw leaves: c0(0,1) c0(2,3) c1(0,1) c1(2,3) | c0(4,5) ...
inline __m256i pair_bytes(__m256i c0, __m256i c1) {
  return _mm256_madd_epi16(_mm256_packs_epi32(c0, c1), _mm256_set1_epi32(0x00010010));
}

// 16 codes -> 8 bytes.
inline void store_packed16(uint8_t* dst, const __m256i (&c)[2]) {
  const __m256i d = _mm256_permutevar8x32_epi32(pair_bytes(c[0], c[1]), _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
  const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_packus_epi16(h, h));
}

// 32 codes -> 16 bytes. After the two narrowing packs the low 128 bits hold the byte pairs of
// elements 0..3 of each c[k] and the high 128 bits those of elements 4..7: interleaving the two
// halves by 16 bits restores element order.
inline void store_packed32(uint8_t* dst, const __m256i (&c)[4]) {
  const __m256i p = _mm256_packus_epi32(pair_bytes(c[0], c[1]), pair_bytes(c[2], c[3]));
  const __m128i lo = _mm256_castsi256_si128(p), hi = _mm256_extracti128_si256(p, 1);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_unpacklo_epi16(_mm_packus_epi16(lo, lo), _mm_packus_epi16(hi, hi)));
}

template <DType T, class Q>
void quantize_4bit_blocks(const Storage<T>* x, int64_t n, int64_t bs, QuantType qt, const Q& quant,
                          uint8_t* packed, float* absmax, int64_t b0, int64_t b1) {
  for_each_block_grouped<T>(x, n, bs, absmax, b0, b1, [&](int64_t begin, int64_t end, float r, int64_t ahead) {
    const __m256 rv = _mm256_set1_ps(r);
    int64_t i = begin;  // even: 4-bit blocksizes are even
    for (; i + 32 <= end; i += 32) {
      prefetch_ahead(x + i, ahead);
      if constexpr (T == DType::F32) prefetch_ahead(x + i + 16, ahead);  // 128 bytes: two lines
      __m256 v[4];
      __m256i c[4];
      load_scaled<T>(x + i, rv, v);
      quant(v, c);
      store_packed32(packed + (i >> 1), c);
    }
    if (i + 16 <= end) {
      __m256 v[2];
      __m256i c[2];
      load_scaled<T>(x + i, rv, v);
      quant(v, c);
      store_packed16(packed + (i >> 1), c);
      i += 16;
    }
    for (; i < end; i += 2) {
      const uint8_t hi = quantize_4bit_value(qt, Elem<T>::load(x, i) * r);
      const uint8_t lo = i + 1 < end ? quantize_4bit_value(qt, Elem<T>::load(x, i + 1) * r) : zero_code(qt);
      packed[i >> 1] = pack_nibbles(hi, lo);
    }
  });
}

// ---- 8-bit quantizer -----------------------------------------------------------------------------

// Note [8-bit search by answer bits]: quantize_8bit_value compares x with code[pivot] at pivots
// 127, then 63 or 191, then 31/95/159/223, ...: at step k the pivot is c + 2^(8-k) - 1, where c
// holds the answers so far (1 = x > code[pivot]) as its high bits, exactly the probes of a
// lower-bound search. After seven answers the landing pivot is p = c (even, 0..254); which
// neighbours the oracle holds then is a function of those answers alone (checked for all 128
// paths): up_i = p + 1 and lo_i = p - 1 (index 0 itself when p = 0). So, with
// mid(a, b) = (code[a] + code[b]) * 0.5f, the oracle's last steps are
//   x > code[p]:  p + 1 if x > mid(p+1, p), else p
//   otherwise:    p - 1 if x < mid(p-1, p), else p        (p = 0: 0)
// i.e. result = p + [x > U[p]] - [x <= L[p]] with two bounds per landing pivot:
//   U[p] = max(code[p], mid(p+1, p))      (mid NaN: +inf; code[p] NaN: NaN, never greater)
//   L[p] = min(code[p], the float below mid(p-1, p))
//                                         (mid NaN or -inf, or p = 0: NaN, never true)
// x > U is x > code[p] and x > mid at once, x <= L is "not x > code[p]" and x < mid at once
// (for non-NaN x; NaN x fails every compare, its code is 0 as in the oracle). Nothing here
// assumes the map is sorted or free of NaN: the same entries are compared in the same order,
// the bounds only merge the last two compares. L and U sit side by side, one 64-bit gather.
struct Q8Tables {
  alignas(32) float lu[256];  // lu[p] = L[p], lu[p + 1] = U[p] for even p
  __m256 t1, t2, t3, t4, t5lo, t5hi;
  const float* code;
};

void build_q8_tables(const float* code, Q8Tables& t) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  t.code = code;
  for (int p = 0; p < 256; p += 2) {
    const float c = code[p];
    const float up = (code[p + 1] + c) * 0.5f;
    const float below = p == 0 ? kNaN : (code[p - 1] + c) * 0.5f;
    // below is NaN whenever c is, so L needs no case of its own for a NaN entry.
    t.lu[p] = (std::isnan(below) || below == -kInf) ? kNaN : std::min(c, std::nextafter(below, -kInf));
    t.lu[p + 1] = std::isnan(c) ? kNaN : std::max(c, std::isnan(up) ? kInf : up);
  }
  // Level k probes code[c + step - 1], c = j * 2 * step holding the answers so far.
  t.t1 = _mm256_set1_ps(code[127]);
  t.t2 = _mm256_setr_ps(code[63], code[191], 0, 0, 0, 0, 0, 0);
  t.t3 = _mm256_setr_ps(code[31], code[95], code[159], code[223], 0, 0, 0, 0);
  alignas(32) float l[16];
  for (int j = 0; j < 8; ++j) l[j] = code[32 * j + 15];
  t.t4 = _mm256_load_ps(l);
  for (int j = 0; j < 16; ++j) l[j] = code[16 * j + 7];
  t.t5lo = _mm256_load_ps(l);
  t.t5hi = _mm256_load_ps(l + 8);
}

// Levels 1-5 of the search (pivots held in registers): returns the probe base c = 8j, j the
// five answers.
inline __m256i q8_first_levels(const Q8Tables& t, __m256 x) {
  __m256i j = _mm256_sub_epi32(_mm256_setzero_si256(), gt_mask(x, t.t1));
  j = search_step(x, t.t2, j);
  j = search_step(x, t.t3, j);
  j = search_step(x, t.t4, j);
  // 16 entries: two halves, picked by bit 3 of j (moved to the sign bit for blendv).
  const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(j, 28));
  const __m256 th = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.t5lo, j), _mm256_permutevar8x32_ps(t.t5hi, j), sel);
  j = _mm256_sub_epi32(_mm256_add_epi32(j, j), gt_mask(x, th));
  return _mm256_slli_epi32(j, 3);
}

// 8 codes (0..255 in int32 lanes) -> 8 bytes.
inline void store_bytes8(uint8_t* dst, __m256i c) {
  const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_packus_epi16(h, h));
}

// The last levels are gathers, and one vector's gathers depend on each other (~25 cycles each):
// done vector by vector the loop waits on them. So a run of up to kStage elements goes through
// the search level by level, keeping normalized values and probe bases in L1 buffers; within a
// level the vectors are independent and the gathers overlap.
constexpr int64_t kStage = 256;

// The bucket table of a map (Note [8-bit bucket tables]), or null when the map fails its checks.
// Built once per map and thread, not per call: the optimizers requantize chunk by chunk with the
// same two maps, and a build costs about as much as quantizing a chunk of 8 Ki elements.
struct BucketEntry {
  float map[256];
  cuda::Code8Table table;
  uint8_t slack[4];  // bucket bytes are gathered 4 at a time: the last one reads 3 bytes past the table
  bool ok = false, used = false;
};

const cuda::Code8Table* bucket_table(const float* code) {
  thread_local BucketEntry cache[2];
  thread_local int next = 0;
  for (const BucketEntry& e : cache)
    if (e.used && std::memcmp(e.map, code, sizeof e.map) == 0) return e.ok ? &e.table : nullptr;
  BucketEntry& e = cache[next];
  next ^= 1;
  std::memcpy(e.map, code, sizeof e.map);
  e.ok = cuda::code8_build_serial(code, e.table);
  e.used = true;
  return e.ok ? &e.table : nullptr;
}

// 8 codes by the bucket rule: y = clamp(x) (vmaxps returns its second operand for a NaN x: -C,
// as the rule wants), y's fp16 bits rounded toward zero (vcvtps2ph), the bucket byte (a 4-byte
// gather at byte offset h >> 3, masked) and one threshold gather.
inline __m256i bucket_codes8(const cuda::Code8Table& t, __m256 x) {
  const __m256 y = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-cuda::kCode8Clamp)), _mm256_set1_ps(cuda::kCode8Clamp));
  const __m256i h = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
  __m256i src = _mm256_setzero_si256(), mask = _mm256_set1_epi32(-1);
  __asm__("" : "+x"(src), "+x"(mask));  // see gather8
  const __m256i word = _mm256_mask_i32gather_epi32(src, reinterpret_cast<const int*>(&t), _mm256_srli_epi32(h, 3), mask, 1);
  const __m256i base = _mm256_and_si256(word, _mm256_set1_epi32(0xFF));
  return _mm256_sub_epi32(base, gt_mask(y, gather8(t.thr, base)));
}

template <DType T>
void quantize_8bit_buckets(const Storage<T>* x, int64_t n, int64_t bs, const cuda::Code8Table& t, uint8_t* q,
                           float* absmax, int64_t b0, int64_t b1) {
  for_each_block_grouped<T>(x, n, bs, absmax, b0, b1, [&](int64_t begin, int64_t end, float r, int64_t ahead) {
    const __m256 rv = _mm256_set1_ps(r);
    int64_t i = begin;
    for (; i + 8 <= end; i += 8) {
      prefetch_ahead(x + i, ahead);
      store_bytes8(q + i, bucket_codes8(t, _mm256_mul_ps(load8<T>(x + i), rv)));
    }
    for (; i < end; ++i) q[i] = quantize_8bit_value(t.code, Elem<T>::load(x, i) * r);
  });
}

template <DType T>
void quantize_8bit_blocks(const Storage<T>* x, int64_t n, int64_t bs, const Q8Tables& t, uint8_t* q,
                          float* absmax, int64_t b0, int64_t b1) {
  alignas(32) float xs[kStage];
  alignas(32) int32_t cs[kStage];
  auto xv = [&](int64_t k) { return _mm256_load_ps(xs + k); };
  auto cv = [&](int64_t k) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(cs + k)); };
  auto set_c = [&](int64_t k, __m256i c) { _mm256_store_si256(reinterpret_cast<__m256i*>(cs + k), c); };
  for_each_block_grouped<T>(x, n, bs, absmax, b0, b1, [&](int64_t begin, int64_t end, float r, int64_t ahead) {
    const __m256 rv = _mm256_set1_ps(r);
    const int64_t vend = begin + ((end - begin) & ~int64_t{7});
    for (int64_t i = begin; i < vend; i += kStage) {
      const int64_t len = std::min(kStage, vend - i);  // a multiple of 8
      for (int64_t k = 0; k < len; k += 8) {
        prefetch_ahead(x + i + k, ahead);
        const __m256 v = _mm256_mul_ps(load8<T>(x + i + k), rv);
        _mm256_store_ps(xs + k, v);
        set_c(k, q8_first_levels(t, v));
      }
      // Steps 4 and 2 probe code[c + 3] and code[c + 1] and add the step on "greater".
      for (int step = 4; step > 1; step >>= 1)
        for (int64_t k = 0; k < len; k += 8) {
          const __m256i m = gt_mask(xv(k), gather8(t.code + step - 1, cv(k)));
          set_c(k, _mm256_add_epi32(cv(k), _mm256_and_si256(m, _mm256_set1_epi32(step))));
        }
      for (int64_t k = 0; k < len; k += 8) {
        const __m256i c = cv(k);
        __m256 l, u;
        gather_lu(t.lu, c, l, u);
        const __m256i gt = gt_mask(xv(k), u);
        const __m256i le = _mm256_castps_si256(_mm256_cmp_ps(xv(k), l, _CMP_LE_OQ));
        store_bytes8(q + i + k, _mm256_add_epi32(_mm256_sub_epi32(c, gt), le));
      }
    }
    for (int64_t i = vend; i < end; ++i) q[i] = quantize_8bit_value(t.code, Elem<T>::load(x, i) * r);
  });
}

// ---- dequantize ----------------------------------------------------------------------------------

// Per block the 16 products code[c] * scale are formed once (the oracle's multiply, so the same
// bits). fp32 output looks them up in two 8-entry halves: each lane's nibble is shifted out of a
// broadcast of 4 packed bytes, right for the low 3 bits (vpermps ignores the rest), left to put
// bit 3 in the sign bit that blendv reads. fp16/bf16 output converts the 16 products once and
// looks up the low and the high bytes of the results with vpshufb, 32 elements at a time.
template <DType T, bool Stream>
void dequantize_4bit_blocks(const uint8_t* packed, const Scales& s, int64_t n, int64_t bs, const float* code,
                            Storage<T>* out, int64_t b0, int64_t b1) {
  const __m256i shr = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
  const __m256i shl = _mm256_setr_epi32(24, 28, 16, 20, 8, 12, 0, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256 lo_code = _mm256_loadu_ps(code), hi_code = _mm256_loadu_ps(code + 8);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * bs, end = std::min(n, begin + bs);
    const float scale = s(b);
    const __m256 sv = _mm256_set1_ps(scale);
    const __m256 lo = _mm256_mul_ps(lo_code, sv), hi = _mm256_mul_ps(hi_code, sv);
    int64_t i = begin;
    if constexpr (T != DType::F32) {
      const __m128i h0 = to_half8<T>(lo), h1 = to_half8<T>(hi);  // the 16 results, 16 bits each
      const __m128i byte = _mm_set1_epi16(0x00FF);
      const __m256i tlo = _mm256_broadcastsi128_si256(_mm_packus_epi16(_mm_and_si128(h0, byte), _mm_and_si128(h1, byte)));
      const __m256i thi = _mm256_broadcastsi128_si256(_mm_packus_epi16(_mm_srli_epi16(h0, 8), _mm_srli_epi16(h1, 8)));
      for (; i + 32 <= end; i += 32) {
        // 16 packed bytes in both lanes -> nibble indices, elements 0..15 in the low lane and
        // 16..31 in the high lane.
        const __m256i p = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + (i >> 1))));
        const __m256i e = _mm256_and_si256(_mm256_srli_epi16(p, 4), low4), o = _mm256_and_si256(p, low4);
        const __m256i idx = _mm256_blend_epi32(_mm256_unpacklo_epi8(e, o), _mm256_unpackhi_epi8(e, o), 0xF0);
        const __m256i bl = _mm256_shuffle_epi8(tlo, idx), bh = _mm256_shuffle_epi8(thi, idx);
        const __m256i w0 = _mm256_unpacklo_epi8(bl, bh);  // elements 0..7 | 16..23
        const __m256i w1 = _mm256_unpackhi_epi8(bl, bh);  // elements 8..15 | 24..31
        put32<Stream>(out + i, _mm256_permute2x128_si256(w0, w1, 0x20));
        put32<Stream>(out + i + 16, _mm256_permute2x128_si256(w0, w1, 0x31));
      }
    }
    for (; i + 8 <= end; i += 8) {
      uint32_t w;
      std::memcpy(&w, packed + (i >> 1), 4);
      const __m256i v = _mm256_set1_epi32(static_cast<int>(w));
      const __m256i idx = _mm256_srlv_epi32(v, shr);
      const __m256 bit3 = _mm256_castsi256_ps(_mm256_sllv_epi32(v, shl));
      store8<T, Stream>(out + i, _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), bit3));
    }
    for (; i < end; ++i) Elem<T>::store(out, i, code[nibble_at(packed, i)] * scale);
  }
}

template <DType T, bool Stream>
void dequantize_8bit_blocks(const uint8_t* q, const float* absmax, const float* code, int64_t n, int64_t bs,
                            Storage<T>* out, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * bs, end = std::min(n, begin + bs);
    const float a = absmax[b];
    const __m256 av = _mm256_set1_ps(a);
    auto value8 = [&](int64_t i) {
      const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i)));
      return _mm256_mul_ps(gather8(code, idx), av);
    };
    int64_t i = begin;
    if constexpr (T != DType::F32)  // 16 at a time: whole 32-byte stores
      for (; i + 16 <= end; i += 16) put32<Stream>(out + i, _mm256_set_m128i(to_half8<T>(value8(i + 8)), to_half8<T>(value8(i))));
    for (; i + 8 <= end; i += 8) store8<T, Stream>(out + i, value8(i));
    for (; i < end; ++i) Elem<T>::store(out, i, code[q[i]] * a);
  }
}

}  // namespace

void quantize_4bit(const void* x, DType dt, int64_t n, int64_t blocksize, QuantType qt,
                   uint8_t* packed, float* absmax, int64_t b0, int64_t b1) {
  dispatch_float(dt, [&]<DType T>() {
    const auto* xs = static_cast<const Storage<T>*>(x);
    if (qt == QuantType::NF4)
      quantize_4bit_blocks<T>(xs, n, blocksize, qt, Nf4Quantizer(), packed, absmax, b0, b1);
    else
      quantize_4bit_blocks<T>(xs, n, blocksize, qt, Fp4Quantizer(), packed, absmax, b0, b1);
  });
}

void dequantize_4bit(const uint8_t* packed, const Scales& s, int64_t n, int64_t blocksize,
                     QuantType qt, void* out, DType dt, int64_t b0, int64_t b1) {
  dispatch_float(dt, [&]<DType T>() {
    auto* o = static_cast<Storage<T>*>(out);
    if (use_streaming_stores(out, n, dt, blocksize)) {
      dequantize_4bit_blocks<T, true>(packed, s, n, blocksize, code_table(qt).data(), o, b0, b1);
      _mm_sfence();  // order the non-temporal stores before whatever signals completion
    } else {
      dequantize_4bit_blocks<T, false>(packed, s, n, blocksize, code_table(qt).data(), o, b0, b1);
    }
  });
}

void quantize_8bit(const void* x, DType dt, int64_t n, int64_t blocksize, const float* code,
                   uint8_t* q, float* absmax, int64_t b0, int64_t b1) {
  if (const cuda::Code8Table* buckets = bucket_table(code)) {
    dispatch_float(dt, [&]<DType T>() {
      quantize_8bit_buckets<T>(static_cast<const Storage<T>*>(x), n, blocksize, *buckets, q, absmax, b0, b1);
    });
    return;
  }
  Q8Tables t;
  build_q8_tables(code, t);
  dispatch_float(dt, [&]<DType T>() {
    quantize_8bit_blocks<T>(static_cast<const Storage<T>*>(x), n, blocksize, t, q, absmax, b0, b1);
  });
}

void dequantize_8bit(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                     int64_t blocksize, void* out, DType dt, int64_t b0, int64_t b1) {
  dispatch_float(dt, [&]<DType T>() {
    auto* o = static_cast<Storage<T>*>(out);
    // Not for fp16/bf16: next to the gathers, non-temporal stores measured slower than plain ones
    // there (2.5 vs 3.4 G elements/s), while fp32, with twice the bytes, gains (3.5 vs 2.0).
    if (T == DType::F32 && use_streaming_stores(out, n, dt, blocksize)) {
      dequantize_8bit_blocks<T, true>(q, absmax, code, n, blocksize, o, b0, b1);
      _mm_sfence();  // order the non-temporal stores before whatever signals completion
    } else {
      dequantize_8bit_blocks<T, false>(q, absmax, code, n, blocksize, o, b0, b1);
    }
  });
}

}  // namespace nybble::cpu::avx2
