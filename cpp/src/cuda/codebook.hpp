// cuda/codebook.hpp — the nearest-code rules of formats.hpp in the form the CUDA kernels run them:
// branch-free walks down an implicit search tree kept in shared memory, bucket tables (4-bit and
// 8-bit), and LLM.int8's row code with one division per row instead of one per element.
//
// Plain C++17 with no CUDA types (except the CTA-wide build of the 8-bit tables at the end, behind
// __CUDACC__), so the host tests (cuda_codebook_test.cpp) check every rule here against
// formats.hpp (the int8 rule against cpu/ref) on machines without a GPU. The tables are
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

// Note [8-bit bucket tables]: the 8-bit quantize and optimizer kernels decide a code with two
// shared-memory reads instead of the tree's nine, for every map that passes the checks below (the
// signed and unsigned dynamic maps and a linear map do; cuda_codebook_test); a CTA whose map fails
// them uses the tree (Note [Search trees]).
//
// The rule as a count. For a map that is strictly ascending, formats.hpp's binary search lands on
// the even index p with code[p-1] < x <= code[p+1], and the midpoint test then picks p - 1, p or
// p + 1; a value exactly on a midpoint goes to the even index of the two. So the code of a non-NaN
// x is the number of thresholds t_i (i = 0..254) that x exceeds (x > t_i), where m_i =
// (code[i] + code[i+1]) * 0.5f (formats.hpp's fp32 midpoint), t_i = m_i for even i and t_i = the
// float below m_i for odd i (x >= m_i steps up to the even i + 1). This holds when, for every i:
// (a) code[i] < code[i+1]; (b) -C <= t_i < C, C = 2 - 2^-23 (so every entry and midpoint is
// finite); (c) m_i > code[i] for odd i (a midpoint rounded onto its lower entry would count x =
// code[i] above threshold i). The t_i are then non-decreasing. NaN gets 0 in formats.hpp, as does
// -inf.
//
// The lookup. y = min(max(x, -C), C), max first: NaN becomes -C, whose code is 0; by (b) no
// threshold lies beyond +-C, so clamping changes no code. y's bucket is its fp16 bit pattern
// rounded toward zero (cvt.rz, two at a time with the f16x2 form) shifted right by 3: sign, five
// exponent bits and seven mantissa bits, i.e. 128 buckets per binade from 2^-14 up to 2 and 128
// buckets 2^-21 wide below 2^-14 (the fp16 subnormals), 2048 per sign. Each bucket is an interval
// of values. Its byte is base, the number of thresholds below its smallest value, and the code of
// y is base + (y > thr[base]), with thr[0..254] = t_i and thr[255] = +inf: exact when the bucket
// holds at most one threshold (then it is thr[base]; with none, thr[base] is at or above all of
// the bucket). Near 1 the dynamic maps' closest thresholds lie 0.0053 apart (unsigned map) and
// buckets are 2^-8 wide; below 2^-14 the unsigned map's two smallest (1.6e-7, 5.5e-7) lie only
// 0.8 bucket widths apart and fall in neighbouring buckets: the checks, not a margin, decide.
// Per element: two FMNMX, half a conversion, a shift and a mask, LDS.U8, a shift, LDS, FSETP and
// an add.
//
// Layout of Code8Table (6 KiB): bytes 0..2047 the buckets of y >= +0 (byte h >> 3 of the fp16
// bits h), 2048 code[256] (the map, for dequantization), 3072 thr[256], 4096..6143 the buckets of
// y <= -0 (h >> 3 with h's sign bit 0x8000 lands at 4096): the index needs no mask. A CTA whose map
// fails the checks keeps its tree in the bytes of the positive buckets.
//
// The build, per CTA (code8_build in the device section below): threads 0..254 compute t_i and
// check (a)-(c) (one barrier ANDs them); then each of 256 chunks of 16 buckets takes one binary
// search for its lowest bucket and a merge walk over the rest, checks that each holds at most one
// threshold and stores its 16 bytes at once (a second barrier ANDs the checks). Every CTA of a
// launch sees the same map, so all of them take the same path.
inline constexpr float kCode8Clamp = 0x1.fffffep0f;  // C: the largest float below 2
inline constexpr int kCode8Chunks = 256;             // of 16 buckets: 128 per sign
inline constexpr uint32_t kCode8Negative = 0x1000;   // byte offset of the buckets of y <= -0

struct alignas(16) Code8Table {  // 16: code8_fill stores 16 bytes at once
  union {
    uint8_t pos[2048];  // buckets of y >= +0
    float tree[256];    // the tree of a map that fails the checks (entry 0 unused)
  };
  float code[256];
  float thr[256];
  uint8_t neg[2048];  // buckets of y <= -0
};
static_assert(sizeof(Code8Table) == 6144 && offsetof(Code8Table, code) == 2048 && offsetof(Code8Table, thr) == 3072 &&
                  offsetof(Code8Table, neg) == kCode8Negative,
              "Note [8-bit bucket tables]: the bucket index h >> 3 addresses the table's bytes directly");

// The next float towards -inf of a finite m (-0.0 and +0.0 both give -denorm_min).
NYBBLE_HD float float_below(float m) {
  const uint32_t u = bits_of_float(m);
  if ((u & 0x7FFFFFFFu) == 0) return float_of_bits(0x80000001u);
  return float_of_bits((u >> 31) != 0 ? u + 1 : u - 1);
}

// t_i of the map entries a = code[i], b = code[i+1], i in [0, 255); ok &= conditions (a)-(c).
NYBBLE_HD float code8_threshold(float a, float b, int i, bool& ok) {
  const float m = (a + b) * 0.5f;
  const bool odd = (i & 1) != 0;
  const float t = odd ? float_below(m) : m;
  ok = ok & (a < b) & (t >= -kCode8Clamp) & (t < kCode8Clamp) & (!odd | (m > a));
  return t;
}

// y = min(max(x, -C), C): NaN (signalling ones too) becomes -C. Two FMNMX on the GPU (PTX max
// returns the other operand of any NaN); the host spells it out, as glibc's fmaxf turns a
// signalling NaN into a quiet one.
NYBBLE_HD float code8_clamp(float x) {
#if defined(__CUDA_ARCH__)
  return fminf(fmaxf(x, -kCode8Clamp), kCode8Clamp);
#else
  const float y = x > -kCode8Clamp ? x : -kCode8Clamp;
  return y < kCode8Clamp ? y : kCode8Clamp;
#endif
}

// fp16 bits of y rounded toward zero (cvt.rz.f16.f32), for |y| < 65536.
NYBBLE_HD uint32_t half_rz_bits(float y) {
#if defined(__CUDA_ARCH__)
  unsigned short h;
  asm("cvt.rz.f16.f32 %0, %1;" : "=h"(h) : "f"(y));
  return h;
#else
  const uint32_t u = bits_of_float(y), a = u & 0x7FFFFFFFu, e = a >> 23;
  uint32_t h = 0;
  if (e >= 113) h = (a - (112u << 23)) >> 13;                        // normal: rebias, truncate
  else if (e >= 103) h = ((a & 0x7FFFFFu) | 0x800000u) >> (126 - e);  // subnormal: floor(|y| * 2^24)
  return ((u >> 16) & 0x8000u) | h;
#endif
}

// Both conversions at once: y0's bits in the low half, y1's in the high half.
NYBBLE_HD uint32_t half2_rz_bits(float y0, float y1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t h;
  asm("cvt.rz.f16x2.f32 %0, %1, %2;" : "=r"(h) : "f"(y1), "f"(y0));
  return h;
#else
  return half_rz_bits(y0) | (half_rz_bits(y1) << 16);
#endif
}

// The smallest positive float whose fp16 rounded toward zero is h (0 <= h <= 0x7BFF).
NYBBLE_HD float half_floor_value(uint32_t h) {
  return h >= 0x400u ? float_of_bits((h << 13) + (112u << 23)) : static_cast<float>(h) * 0x1p-24f;
}

// The number of thr[0..255] (ascending, thr[255] = +inf) below v: 0..255.
NYBBLE_HD uint32_t code8_rank_below(const float* thr, float v) {
  uint32_t r = 0;
NYBBLE_UNROLL
  for (uint32_t s = 128; s > 0; s >>= 1) r += thr[r + s - 1] < v ? s : 0u;
  return r;
}

NYBBLE_HD uint32_t byte_swap(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(v, 0, 0x0123);
#else
  return (v >> 24) | ((v >> 8) & 0xFF00u) | ((v << 8) & 0xFF0000u) | (v << 24);
#endif
}

// The 16 bytes of chunk c (0..255) of the bucket table of thresholds thr (Note [8-bit bucket
// tables]), four to a word in index order: chunk c < 128 covers the buckets of y >= +0 with
// magnitude index 16c..16c+15, chunk 128 + c those of y <= -0. Returns whether every bucket holds
// at most one threshold.
NYBBLE_HD bool code8_chunk(const float* thr, uint32_t c, uint32_t (&w)[4]) {
  const bool negative = c >= kCode8Chunks / 2;
  const uint32_t first = 16 * (c % (kCode8Chunks / 2));
  bool ok = true;
  uint32_t r = 0, v[4] = {0, 0, 0, 0};  // the bytes in ascending order of value
NYBBLE_UNROLL
  for (uint32_t s = 0; s < 16; ++s) {  // buckets in ascending order of value
    const uint32_t k = first + (negative ? 15 - s : s);
    const float low = half_floor_value(k << 3);                                           // |y| from
    const float high = float_of_bits(bits_of_float(half_floor_value((k + 1) << 3)) - 1);  // to
    const float lo = negative ? -high : low, hi = negative ? -low : high;
    if (s == 0) r = code8_rank_below(thr, lo);
    while (thr[r] < lo) ++r;  // stops at thr[255] = +inf
    ok = ok & !(thr[r < 255 ? r + 1 : 255] < hi);
    v[s / 4] |= r << (8 * (s % 4));
  }
  for (int q = 0; q < 4; ++q) w[q] = negative ? byte_swap(v[3 - q]) : v[q];  // negative: index order reverses
  return ok;
}

// The code of an element from its clamped value y and y's fp16 bits h (Note [8-bit bucket tables]).
NYBBLE_HD uint32_t code8_bucket_code(const Code8Table& t, float y, uint32_t h) {
  const uint32_t base = reinterpret_cast<const uint8_t*>(&t)[h >> 3];
  return base + (y > t.thr[base] ? 1u : 0u);
}

// formats.hpp quantize_8bit_value through a built table (every bucket passing the checks).
NYBBLE_HD uint32_t quantize_8bit_bucket(const Code8Table& t, float x) {
  const float y = code8_clamp(x);
  return code8_bucket_code(t, y, half_rz_bits(y));
}
// Two at once (one conversion).
NYBBLE_HD void quantize_8bit_bucket2(const Code8Table& t, float x0, float x1, uint32_t& q0, uint32_t& q1) {
  const float y0 = code8_clamp(x0), y1 = code8_clamp(x1);
  const uint32_t h = half2_rz_bits(y0, y1);
  q0 = code8_bucket_code(t, y0, h & 0xFFFFu);
  q1 = code8_bucket_code(t, y1, h >> 16);
}

// The optimizers' sign rule (optim_rules.hpp apply_sign_rule) without reading code[q], for a map
// that passed the checks: its entries with the sign bit set are a prefix of the map (it is
// strictly ascending, so -0.0 and +0.0 are not both in it), of length `negatives`
// (code8_negatives).
NYBBLE_HD uint32_t sign_rule_by_split(uint32_t q, uint32_t negatives, float s) {
  if ((q < negatives) == ((bits_of_float(s) >> 31) != 0)) return q;
  return (s > 0.0f ? q + 1 : q - 1) & 0xFFu;
}
// The length of that prefix, from entry i's view: i when entry i is the first without the sign bit,
// 256 from entry 255 when all have it, else nothing (returns false).
NYBBLE_HD bool code8_negatives_at(const float* code, int i, uint32_t& negatives) {
  const bool here = (bits_of_float(code[i]) >> 31) != 0, before = i == 0 || (bits_of_float(code[i - 1]) >> 31) != 0;
  if (!here && before) negatives = static_cast<uint32_t>(i);
  else if (here && i == 255) negatives = 256;
  else return false;
  return true;
}

// The table of a map on one thread (the AVX2 quantizer, cpu/avx2/quantize.cpp, and the host
// tests); returns whether the buckets apply (else t.tree holds the tree).
inline bool code8_build_serial(const float* code, Code8Table& t) {
  bool ok = true;
  for (int i = 0; i < 256; ++i) {
    t.code[i] = code[i];
    t.thr[i] = i < 255 ? code8_threshold(code[i], code[i + 1], i, ok) : INFINITY;
  }
  for (uint32_t c = 0; ok && c < static_cast<uint32_t>(kCode8Chunks); ++c) {
    uint32_t w[4];
    ok = code8_chunk(t.thr, c, w);
    memcpy(reinterpret_cast<uint8_t*>(&t) + (c < kCode8Chunks / 2 ? 0 : kCode8Negative) + 16 * (c % (kCode8Chunks / 2)), w, 16);
  }
  if (!ok)
    for (int k = 0; k < 256; ++k) t.tree[k] = k == 0 ? 0.0f : t.code[code8_tree_index(k)];
  return ok;
}

#if defined(__CUDACC__)
// Device side of Note [8-bit bucket tables]: the phases of a CTA's build, so that a kernel with
// two maps shares the barriers. Every thread of the CTA calls each phase.

// Phase 1: the map and its thresholds; returns this thread's part of checks (a)-(c).
template <class Code>
__device__ bool code8_load(Code8Table& t, const Code& code) {
  bool ok = true;
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    const float a = code[i];
    t.code[i] = a;
    t.thr[i] = i < 255 ? code8_threshold(a, code[i + 1], i, ok) : INFINITY;
  }
  return ok;
}

// Phase 2 (after a barrier, when phase 1 passed everywhere): the buckets; returns this thread's
// part of the one-threshold check.
__device__ inline bool code8_fill(Code8Table& t) {
  bool ok = true;
  for (uint32_t c = threadIdx.x; c < static_cast<uint32_t>(kCode8Chunks); c += blockDim.x) {
    uint32_t w[4];
    ok = ok & code8_chunk(t.thr, c, w);
    auto* dst = reinterpret_cast<unsigned char*>(&t) + (c < kCode8Chunks / 2 ? 0 : kCode8Negative) + 16 * (c % (kCode8Chunks / 2));
    *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
  }
  return ok;
}

// The fallback (after a barrier): the tree in place of the positive buckets.
__device__ inline void code8_tree(Code8Table& t) {
  for (int k = threadIdx.x; k < 256; k += blockDim.x) t.tree[k] = k == 0 ? 0.0f : t.code[code8_tree_index(k)];
}

// The whole build of one table, barriers included; returns whether the CTA uses the buckets.
template <class Code>
__device__ bool code8_build(Code8Table& t, const Code& code) {
  const bool ok = __syncthreads_and(code8_load(t, code));
  const bool fast = __syncthreads_and(ok && code8_fill(t));
  if (!fast) {
    code8_tree(t);
    __syncthreads();
  }
  return fast;
}
#endif

}  // namespace nybble::cuda
