// cuda/codebook.hpp — the nearest-code rules of formats.hpp in the form the CUDA kernels run them:
// branch-free walks down an implicit search tree kept in shared memory, bucket tables (4-bit), and
// LLM.int8's row code with one division per row instead of one per element.
//
// Plain C++17 with no CUDA types, so the host tests (cuda_codebook_test.cpp) check every rule here
// against formats.hpp (the int8 rule against cpu/ref) on machines without a GPU. The tables are
// built from the constants of formats.hpp; nothing is retyped.
//
// Note [Search trees]: a sorted list of 2^D - 1 thresholds is stored in heap order: entry k
// (1-based) at depth d (k in [2^d, 2^(d+1))) holds sorted element (2j + 1) * 2^(D-1-d) - 1, with
// j = k - 2^d. A search walks k -> 2k + (x > t[k]) D times and lands on k = 2^D + rank, rank = the
// number of thresholds that x exceeds: exactly the strict '>' count of formats.hpp. Compared with
// a plain binary search over the sorted list, the entries one step of a warp reads are contiguous
// (depth d reads from [2^d, 2^(d+1))), so up to depth 5 they sit in distinct shared-memory banks,
// where a sorted list puts every pivot of one depth in the same bank (they differ by multiples of
// 32). NaN compares false everywhere and lands on rank 0, as in formats.hpp.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "nybble/formats.hpp"

#if defined(__CUDACC__)
#define NYBBLE_HD __host__ __device__ __forceinline__
#else
#define NYBBLE_HD inline
#endif
#if defined(__CUDA_ARCH__)  // the device pass; host compilers warn about the pragma
#define NYBBLE_UNROLL _Pragma("unroll")
#else
#define NYBBLE_UNROLL
#endif

namespace nybble::cuda {

// Heap order (Note [Search trees]) of N = 2^D - 1 sorted values; entry 0 is left 0.
template <size_t N>
constexpr std::array<float, N + 1> heap_order(const std::array<float, N>& sorted) {
  size_t depth = 0;
  while ((size_t{1} << depth) - 1 < N) ++depth;
  std::array<float, N + 1> t{};
  for (size_t k = 1; k <= N; ++k) {
    size_t d = 0;
    while ((k >> (d + 1)) != 0) ++d;
    const size_t j = k - (size_t{1} << d);
    t[k] = sorted[(2 * j + 1) * (size_t{1} << (depth - 1 - d)) - 1];
  }
  return t;
}

// kFP4ByRank packed four bits per rank (rank r in bits 4r..4r+3), so the kernels read it from a
// register instead of an indexed array.
constexpr uint32_t fp4_by_rank_packed() {
  uint32_t p = 0;
  for (size_t r = 0; r < kFP4ByRank.size(); ++r) p |= static_cast<uint32_t>(kFP4ByRank[r]) << (4 * r);
  return p;
}
inline constexpr uint32_t kFP4ByRankPacked = fp4_by_rank_packed();

// What a 4-bit kernel needs of its quant type, passed to kernels by value (192 bytes of kernel
// parameters; no device globals to initialize, so the first call may happen inside a CUDA graph
// capture). code: the kernels' decode table (formats.hpp code_table). tree: the NF4 thresholds in
// heap order (depth 4), or the FP4 magnitude thresholds in heap order (depth 3, entries 8..15 0).
// zero_code: the code of 0.0, which pads an odd tail.
// thresholds: formats.hpp's sorted thresholds (15 for NF4, 7 for FP4), for the bucket tables.
struct Code4Tables {
  float code[16];
  float tree[16];
  float thresholds[15];
  uint32_t zero_code;
};

constexpr Code4Tables code4_tables(QuantType qt) {
  Code4Tables t{};
  const auto& code = code_table(qt);
  for (size_t i = 0; i < 16; ++i) t.code[i] = code[i];
  t.zero_code = zero_code(qt);
  if (qt == QuantType::NF4) {
    const auto tree = heap_order(kNF4Threshold);
    for (size_t i = 0; i < tree.size(); ++i) t.tree[i] = tree[i];
    for (size_t i = 0; i < kNF4Threshold.size(); ++i) t.thresholds[i] = kNF4Threshold[i];
  } else {
    const auto tree = heap_order(kFP4Threshold);
    for (size_t i = 0; i < tree.size(); ++i) t.tree[i] = tree[i];
    for (size_t i = 0; i < kFP4Threshold.size(); ++i) t.thresholds[i] = kFP4Threshold[i];
  }
  return t;
}

// formats.hpp quantize_nf4 over the depth-4 tree.
NYBBLE_HD uint8_t quantize_nf4_tree(const float* tree, float x) {
  unsigned k = 1;
NYBBLE_UNROLL
  for (int d = 0; d < 4; ++d) k = 2 * k + (x > tree[k] ? 1u : 0u);
  return static_cast<uint8_t>(k - 16);
}

// formats.hpp quantize_fp4 over the depth-3 tree of magnitude thresholds.
NYBBLE_HD uint8_t quantize_fp4_tree(const float* tree, float x) {
  const float a = fabsf(x);
  unsigned k = 1;
NYBBLE_UNROLL
  for (int d = 0; d < 3; ++d) k = 2 * k + (a > tree[k] ? 1u : 0u);
  const unsigned magnitude = (kFP4ByRankPacked >> (4 * (k - 8))) & 0x7u;
  return static_cast<uint8_t>(magnitude | (x < 0.0f ? 0x8u : 0u));
}

template <QuantType QT>
NYBBLE_HD uint8_t quantize_4bit_tree(const float* tree, float x) {
  if constexpr (QT == QuantType::NF4) return quantize_nf4_tree(tree, x);
  else return quantize_fp4_tree(tree, x);
}

// Note [Bucket tables]: the 4-bit quantize kernels decide a code with one 32-bit table read and one
// integer comparison. A float's top 12 bits (sign, exponent, 3 mantissa bits) name its bucket: a
// run of 2^20 consecutive floats. Within one bucket formats.hpp's code of x is a step function of
// x's low 20 bits with at most one step: a bucket is never wider than an eighth of its values'
// magnitude (0.0625 just below 1) and neighbouring NF4/FP4 thresholds are further apart, so no
// bucket holds two thresholds (cuda_codebook_test checks every bucket), and as the low bits grow
// x grows (positive buckets) or shrinks (negative ones), while FP4's |x| grows in both. A bucket's
// word holds the step:
//   bits 12..31  T: the code is c1 when x's low 20 bits exceed T, else c0 (compared as
//                (bits << 12) > word: the code bits below do not change the outcome);
//   bits  0..3   c0;
//   bits  4..7   c1; the kernel rotates the one it takes to its nibble of the packed word;
//   bits  8..11  0.
// Per element: a shift and a LOP3 (the index), the read, a shift and an ISETP (the comparison),
// and a SEL, a funnel shift and a LOP3 to place the code.
// With the threshold thr in the bucket, a positive bucket has T = thr's low bits, c0 the count of
// thresholds below the bucket (base) and c1 = base + 1; a negative one has x > thr for low bits
// below thr's, so T = thr's low bits - 1, c0 = base + 1, c1 = base. A bucket without a step (no
// threshold, or thr at its end) has T = all ones, which no low bits exceed. FP4 ranks |x| and sets
// the sign bit for x < 0: a negative bucket steps as its positive twin with the sign bit in both
// codes, except 0x800 (-0.0 and the negative subnormals): T = 0, c0 = 0 (-0.0), c1 = 0b1000.
// Buckets of exponent 255 other than the infinities hold only NaNs: code 0, no step (NaN compares
// false everywhere). The infinities share their bucket with signalling NaNs of small payload; the
// kernels only look up products x * (1 / absmax), never a signalling NaN.
inline constexpr int kBucketShift = 20;  // bucket = float bits >> 20
inline constexpr int kBuckets = 4096;
inline constexpr uint32_t kBucketLow = (1u << kBucketShift) - 1;  // the bits a bucket's floats differ in

NYBBLE_HD float float_of_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
NYBBLE_HD uint32_t bits_of_float(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

// w rotated right by r bits, r in [0, 32): one funnel shift on the GPU (the compiler does not
// always see the rotation in the portable form).
NYBBLE_HD uint32_t rotate_right(uint32_t w, uint32_t r) {
#if defined(__CUDA_ARCH__)
  return __funnelshift_r(w, w, r);
#else
  return (w >> r) | (w << ((32 - r) % 32));
#endif
}

NYBBLE_HD uint32_t bucket_word(uint32_t step, uint32_t c0, uint32_t c1) {
  return (step << (32 - kBucketShift)) | c0 | (c1 << 4);
}

// Bucket word k of QT's table over its ascending thresholds t (15 for NF4, 7 for FP4).
template <QuantType QT>
NYBBLE_HD uint32_t make_bucket(const float* t, uint32_t k) {
  constexpr int n = QT == QuantType::NF4 ? 15 : 7;
  if (((k >> 3) & 0xFFu) == 0xFFu && (k & 7u) != 0) return bucket_word(kBucketLow, 0, 0);  // NaNs only
  uint32_t sign = 0;
  if constexpr (QT == QuantType::FP4) {
    if (k == 0x800u) return bucket_word(0, 0, 0x8u);
    sign = (k >> 11) << 3;
    k &= (kBuckets / 2) - 1;  // the bucket of |x|
  }
  const uint32_t first = k << kBucketShift, last = first | kBucketLow;
  const bool negative = (k >> 11) != 0;
  const float lo = float_of_bits(negative ? last : first), hi = float_of_bits(negative ? first : last);
  uint32_t base = 0, inside = 0, low = 0;
  for (int i = 0; i < n; ++i) {
    if (t[i] < lo) {
      ++base;
    } else if (t[i] <= hi) {
      inside = 1;
      low = bits_of_float(t[i]) & kBucketLow;
    }
  }
  const auto code = [sign](uint32_t rank) {
    return (QT == QuantType::NF4 ? rank : (kFP4ByRankPacked >> (4 * rank)) & 0x7u) | sign;
  };
  if (inside && !negative) return bucket_word(low, code(base), code(base + 1));
  if (inside && low != 0) return bucket_word(low - 1, code(base + 1), code(base));
  return bucket_word(kBucketLow, code(base), code(base));
}

// formats.hpp's quantize_nf4 / quantize_fp4 of a product x (never a signalling NaN) through the
// quant type's bucket table (make_bucket for all 4096 buckets), placed at bits s..s+3 (s a
// multiple of 4, the other bits 0): what a kernel ORs into a packed word.
NYBBLE_HD uint32_t quantize_4bit_bucket_at(const uint32_t* table, float x, int s) {
  const uint32_t u = bits_of_float(x), w = table[u >> kBucketShift];
  const bool above = (u << (32 - kBucketShift)) > w;
  // Both rotations are constants when s is: one SEL, one SHF.R.W.
  return rotate_right(w, static_cast<uint32_t>((above ? 4 + 32 - s : 32 - s) % 32)) & (0xFu << s);
}
NYBBLE_HD uint8_t quantize_4bit_bucket(const uint32_t* table, float x) {
  return static_cast<uint8_t>(quantize_4bit_bucket_at(table, x, 0));
}

// Note [Int8 codes]: LLM.int8's code of x in a row of statistic m (cpu::ref::int8_quantize_value)
// is clamp(round_half_even(RN(p / m)), -127, 127) with p = RN(x * 127), NaN -> 0: the IEEE
// quotient matters only through the integer it rounds to. With y = RN(1 / m), taken once per row,
// a = RN(p * y) lies within ulp(a) / 2 + 2^-22 |t| of t = p / m (y's relative error is 2^-24, or
// 2^-22 where 1 / m is subnormal) and RN(t) within ulp(t) / 2 of t; for |a| < 127.25 that puts
// RN(t) within 2^-14.5 of a. So where a lies more than 2^-12 from every half-integer, RN(t)
// rounds to the integer a rounds to, and neither is a tie; elsewhere (about 1 element in 2000,
// and the infinities, NaNs, y = inf) the division decides. The rounding to an integer adds
// 1.5 * 2^23, where the floats are the integers: the FADD rounds half to even and the sum's low
// byte is the code in two's complement. A division per element costs a dozen instructions and a
// reciprocal on the quarter-rate MUFU pipe; a float-to-int conversion runs at 1/8 of FADD's rate.
inline constexpr float kInt8Round = 12582912.0f;  // 1.5 * 2^23

// The code of x without the division (y = RN(1 / m)); ok &= whether that decides it.
NYBBLE_HD uint32_t int8_code_fast(float x, float y, bool& ok) {
  const float a = x * 127.0f * y, s = a + kInt8Round;
  const float d = a - (s - kInt8Round);  // a - round_half_even(a), exact
  ok = ok & (fabsf(a) < 127.25f) & (fabsf(d) <= 0.5f - 0x1p-12f);  // no branches: predicates ANDed
  return bits_of_float(s) & 0xFFu;
}
// The code of x through the IEEE division: the oracle's steps.
NYBBLE_HD uint32_t int8_code_exact(float x, float m) {
#if defined(__CUDA_ARCH__)
  const float v = __fdiv_rn(x * 127.0f, m);
#else
  const float v = x * 127.0f / m;
#endif
  if (v != v) return 0;  // NaN
  return bits_of_float(fminf(fmaxf(v, -127.0f), 127.0f) + kInt8Round) & 0xFFu;
}
NYBBLE_HD uint32_t int8_code(float x, float m, float y) {
  bool ok = true;
  const uint32_t code = int8_code_fast(x, y, ok);
  return ok ? code : int8_code_exact(x, m);
}

// The 8-bit map's search tree: entry 0 is unused, entries 1..255 hold code[0..254] in heap order
// (depth 8). Its internal entries 1..127 are exactly the pivots that formats.hpp's binary search
// visits (127, then 127 -/+ 64, ...), and its leaves 128..255 the even indices where it lands.
// Returns which code index tree entry k (1..255) holds.
NYBBLE_HD int code8_tree_index(int k) {
  int d = 0;
  while ((k >> (d + 1)) != 0) ++d;
  return (2 * (k - (1 << d)) + 1) * (1 << (7 - d)) - 1;
}

// formats.hpp quantize_8bit_value, with the same result for every map (ascending or not): the
// seven pivot comparisons are the walk over tree entries 1..127; it lands on leaf k, i.e. index
// p = 2 * (k - 128). The last pivot passed below x (lo_i) and above it (up_i) are the in-order
// neighbours of that leaf in the tree, p - 1 and p + 1 (lo_i = 0 when the walk never went right,
// up_i = 255 when it never went left: the starting values of formats.hpp), so the final midpoint
// test reads them from the sorted code instead of carrying them through the walk.
NYBBLE_HD uint8_t quantize_8bit_tree(const float* tree, const float* code, float x) {
  unsigned k = 1;
NYBBLE_UNROLL
  for (int d = 0; d < 7; ++d) k = 2 * k + (x > tree[k] ? 1u : 0u);
  const int p = 2 * static_cast<int>(k - 128);
  const float v = code[p];
  if (x > v) return static_cast<uint8_t>(x > (code[p + 1] + v) * 0.5f ? p + 1 : p);
  const int lo = p > 0 ? p - 1 : 0;
  return static_cast<uint8_t>(x < (code[lo] + v) * 0.5f ? lo : p);
}

}  // namespace nybble::cuda
