// cuda/codebook.hpp — the nearest-code rules of formats.hpp in the form the CUDA kernels run them:
// branch-free walks down an implicit search tree kept in shared memory.
//
// Plain C++17 with no CUDA types, so the host tests (cuda_codebook_test.cpp) check every rule here
// against formats.hpp on machines without a GPU. The tables are built at compile time from the
// constants of formats.hpp; nothing is retyped.
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

// What a 4-bit kernel needs of its quant type, passed to kernels by value (128 bytes of kernel
// parameters; no device globals to initialize, so the first call may happen inside a CUDA graph
// capture). code: the kernels' decode table (formats.hpp code_table). tree: the NF4 thresholds in
// heap order (depth 4), or the FP4 magnitude thresholds in heap order (depth 3, entries 8..15 0).
// zero_code: the code of 0.0, which pads an odd tail.
// thresholds: formats.hpp's sorted thresholds (nthresholds of them), for the bucket tables.
struct Code4Tables {
  float code[16];
  float tree[16];
  float thresholds[15];
  int nthresholds;
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
    t.nthresholds = static_cast<int>(kNF4Threshold.size());
  } else {
    const auto tree = heap_order(kFP4Threshold);
    for (size_t i = 0; i < tree.size(); ++i) t.tree[i] = tree[i];
    for (size_t i = 0; i < kFP4Threshold.size(); ++i) t.thresholds[i] = kFP4Threshold[i];
    t.nthresholds = static_cast<int>(kFP4Threshold.size());
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

// Note [Bucket tables]: the 4-bit quantize kernels decide a code with one table read and one
// comparison. A float's top 12 bits (sign, exponent, 3 mantissa bits) name its bucket: a run of
// 2^20 consecutive floats. Within one bucket the count of thresholds below x (formats.hpp's strict
// '>' rule) is base + (x > thr), where base counts the thresholds below the bucket's lowest value
// and thr is the one threshold inside the bucket (+inf when none): a bucket is never wider than an
// eighth of its values' magnitude (0.0625 just below 1) and neighbouring NF4/FP4 thresholds
// are further apart, so no bucket holds two (cuda_codebook_test checks every bucket). Buckets of
// exponent 255 other than the infinities hold only NaNs: base 0, thr +inf, as NaN compares false
// everywhere. The infinities share their bucket with signalling NaNs of small payload; the
// kernels only look up products x * (1 / absmax), and a product is never a signalling NaN.
struct Bucket {
  float thr;
  uint32_t base;
};
inline constexpr int kBucketShift = 20;  // bucket = float bits >> 20
inline constexpr int kBuckets = 4096;

NYBBLE_HD float float_of_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// Bucket k over the n ascending thresholds t.
NYBBLE_HD Bucket make_bucket(const float* t, int n, uint32_t k) {
  const uint32_t first = k << kBucketShift, last = first | ((1u << kBucketShift) - 1);
  if (((k >> 3) & 0xFFu) == 0xFFu && (k & 7u) != 0) return {float_of_bits(0x7F800000u), 0};  // NaNs only
  const bool negative = (k >> 11) != 0;
  const float lo = float_of_bits(negative ? last : first), hi = float_of_bits(negative ? first : last);
  Bucket b{float_of_bits(0x7F800000u), 0};
  for (int i = 0; i < n; ++i) {
    if (t[i] < lo) ++b.base;
    else if (t[i] <= hi) b.thr = t[i];
  }
  return b;
}

NYBBLE_HD uint32_t bucket_index(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  return u >> kBucketShift;
}

// formats.hpp's quantize_nf4 / quantize_fp4 for a product x (never a signalling NaN) through the
// bucket tables of kNF4Threshold (all 4096 buckets) / kFP4Threshold (the 2048 of non-negative
// floats: FP4 compares |x|).
NYBBLE_HD uint8_t quantize_nf4_bucket(const Bucket* table, float x) {
  const Bucket b = table[bucket_index(x)];
  return static_cast<uint8_t>(b.base + (x > b.thr ? 1u : 0u));
}
NYBBLE_HD uint8_t quantize_fp4_bucket(const Bucket* table, float x) {
  const float a = fabsf(x);
  const Bucket b = table[bucket_index(a)];
  const uint32_t rank = b.base + (a > b.thr ? 1u : 0u);
  return static_cast<uint8_t>(((kFP4ByRankPacked >> (4 * rank)) & 0x7u) | (x < 0.0f ? 0x8u : 0u));
}
template <QuantType QT>
NYBBLE_HD uint8_t quantize_4bit_bucket(const Bucket* table, float x) {
  if constexpr (QT == QuantType::NF4) return quantize_nf4_bucket(table, x);
  else return quantize_fp4_bucket(table, x);
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
