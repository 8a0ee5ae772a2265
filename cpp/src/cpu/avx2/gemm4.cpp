// cpu/avx2/gemm4.cpp — AVX2 4-bit matmul: out[m, n] = sum_k A[m, k] * W[n, k] (+ bias[n]) for
// the output columns [n0, n1), W[n, k] = code[nibble(n*K + k)] * scale((n*K + k) / blocksize).
// Reads the N*K/2 packed bytes of W (plus scales), does 2*M*N*K flops; accumulates in fp32 (FMA:
// the oracle's sum up to reassociation). The dequantized weight is never materialized.
//
// Decoding (see "decoding" below): 32 weights (16 bytes) at a time with vpshufb byte tables, or 8
// at a time with two _mm256_permutevar8x32_ps on a 16-entry table + a blend on nibble bit 3. Rows
// are walked in segments (the part of a row inside one block, one scale), so blocks and bytes
// that straddle rows (K % blocksize != 0, odd K) cost only a scalar element at an odd segment
// start and a segment's tail of < 8 elements.
//
// Paths:
//  * M <= 3, K % 8 == 0 (memory-bound GEMV): each W row is streamed once (software-prefetched
//    ahead), decoded in registers and dotted with all M rows of A; a block's scale multiplies
//    the block's partial dot product once (rows with an Inf/NaN scale are redone with every
//    weight scaled first, the oracle's NaN behaviour).
//  * otherwise (compute-bound for M >= 4): W is decoded a tile at a time (kTileN rows x kChunkK k
//    in fp32, 24 KiB, stays in L1; the next tile's bytes are prefetched) and reused by every row
//    of an M-block of A (up to kBlockM rows x kChunkK in fp32, in L2). Micro-kernel: an inner
//    product over k of 4 rows of A x 3 rows of W, 12 ymm accumulators of 8 partial sums each
//    (12 FMAs per 7 loads per 8 k), reduced horizontally once per k-chunk into an fp32 tile
//    C [kBlockM x kPanelN]. Both operands stay k-contiguous (no transposition), in paired order
//    when K % 8 == 0. W is decoded once per M-block (once in all when M <= kBlockM); A is
//    converted once per panel of kPanelN output columns.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/avx2/avx2.hpp"
#include "cpu/avx2/vec.hpp"
#include "cpu/elem.hpp"
#include "cpu/ref/ref.hpp"

namespace nybble::cpu::avx2 {
namespace {

constexpr int64_t kChunkK = 512;  // k-chunk of the tiled path (multiple of 8)
constexpr int64_t kTileN = 12;    // W rows decoded per tile: 4 micro-kernel column triples
constexpr int64_t kBlockM = 128;  // rows of A per block
constexpr int64_t kPanelN = 384;  // output columns per C tile (multiple of kTileN)
constexpr int kNR = 3;            // micro-kernel: W rows (output columns)
constexpr int kMR = 4;            // micro-kernel: A rows
// Bytes ahead of the decoder to prefetch W: the hardware prefetcher alone leaves a single stream
// at well under the DRAM bandwidth when each line takes this long to consume.
constexpr int64_t kPrefetchBytes = 2048;

// ---- loads -----------------------------------------------------------------------------------


// ---- decoding ---------------------------------------------------------------------------------
//
// Paired order: where K % 8 == 0, the buffers of A and of decoded W hold each aligned group of 8
// k as [k0, k2, k4, k6, k1, k3, k5, k7] (even elements, then odd ones). Even and odd elements are
// the high and low nibbles of the same bytes, so this is the order in which they come out of the
// byte-wise decoder below without any lane-crossing shuffle; A is permuted once to match.

// A block's 16 weights (or the bare codes): codes 0-7 in lo, 8-15 in hi.
struct Lut {
  __m256 lo, hi;
};

inline Lut scaled(const Lut& code, float s) {
  const __m256 v = _mm256_set1_ps(s);
  return {_mm256_mul_ps(code.lo, v), _mm256_mul_ps(code.hi, v)};
}

// 8 weights from 4 packed bytes (one broadcast load). Element 2j is the high nibble of byte j; in
// the little-endian 32-bit word, element e sits at bits [s_e, s_e + 4). A variable shift brings
// each lane's nibble to bits 0-3 (the permutes read only bits 0-2) and a second one moves nibble
// bit 3 (bit s_e + 3) into the sign bit that selects the upper half of the table.
template <bool Paired>
inline __m256 decode8(const uint8_t* p, const Lut& lut) {
  uint32_t word;
  std::memcpy(&word, p, 4);
  const __m256i x = _mm256_set1_epi32(static_cast<int>(word));
  const __m256i right = Paired ? _mm256_setr_epi32(4, 12, 20, 28, 0, 8, 16, 24)
                               : _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
  const __m256i left = Paired ? _mm256_setr_epi32(24, 16, 8, 0, 28, 20, 12, 4)
                              : _mm256_setr_epi32(24, 28, 16, 20, 8, 12, 0, 4);  // 28 - right
  const __m256i idx = _mm256_srlv_epi32(x, right);
  const __m256 lo = _mm256_permutevar8x32_ps(lut.lo, idx);
  const __m256 hi = _mm256_permutevar8x32_ps(lut.hi, idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_sllv_epi32(x, left)));
}

// Byte k of each of the 16 codes, as a vpshufb table (repeated in both 128-bit lanes).
struct ByteTables {
  __m256i t[4];
};

ByteTables byte_tables(const float* code) {
  alignas(32) uint8_t b[4][32];
  for (int j = 0; j < 16; ++j) {
    const uint32_t u = float_bits(code[j]);
    for (int k = 0; k < 4; ++k) b[k][j] = b[k][j + 16] = static_cast<uint8_t>(u >> (8 * k));
  }
  ByteTables t;
  for (int k = 0; k < 4; ++k) t.t[k] = _mm256_load_si256(reinterpret_cast<const __m256i*>(b[k]));
  return t;
}

// 32 codes (16 packed bytes) in paired order, 4 groups of 8, as fp32 (not scaled). Each of the
// 4 bytes of every float is looked up with vpshufb (16-entry byte table: 32 lookups per
// instruction) and the bytes are interleaved back into floats with in-lane unpacks: 15 shuffle /
// logic uops per 32 weights instead of 4 x 6 for decode8.
inline void decode32(const uint8_t* p, const ByteTables& t, __m256 f[4]) {
  const __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  // Low lane: high nibbles (elements 0, 2, .., 30); high lane: low nibbles (1, 3, .., 31).
  const __m256i nib = _mm256_and_si256(_mm256_blend_epi32(_mm256_srli_epi16(x, 4), x, 0xF0), _mm256_set1_epi8(0x0F));
  const __m256i b0 = _mm256_shuffle_epi8(t.t[0], nib);
  const __m256i b1 = _mm256_shuffle_epi8(t.t[1], nib);
  const __m256i b2 = _mm256_shuffle_epi8(t.t[2], nib);
  const __m256i b3 = _mm256_shuffle_epi8(t.t[3], nib);
  const __m256i l01 = _mm256_unpacklo_epi8(b0, b1), h01 = _mm256_unpackhi_epi8(b0, b1);
  const __m256i l23 = _mm256_unpacklo_epi8(b2, b3), h23 = _mm256_unpackhi_epi8(b2, b3);
  // f[g]: low lane elements 8g + 0, 2, 4, 6; high lane 8g + 1, 3, 5, 7.
  f[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(l01, l23));
  f[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(l01, l23));
  f[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(h01, h23));
  f[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(h01, h23));
}

// decode32 of the bytes at p, prefetching further along the weight stream; with Exact every
// weight is also multiplied by its block scale vs (the oracle's order, for non-finite scales).
template <bool Exact>
inline void stream_decode32(const uint8_t* p, const ByteTables& t, __m256 vs, __m256 f[4]) {
  _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
  decode32(p, t, f);
  if constexpr (Exact)
    for (int g = 0; g < 4; ++g) f[g] = _mm256_mul_ps(f[g], vs);
}

// dst[0, n) = fp32 of src[0, n) (paired order when Paired), dst[n, padded) = 0.
template <DType T, bool Paired>
void to_f32(const typename Elem<T>::storage* src, int64_t n, int64_t padded, float* dst) {
  const __m256i pair = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 v = load8<T>(src + j);
    _mm256_storeu_ps(dst + j, Paired ? _mm256_permutevar8x32_ps(v, pair) : v);
  }
  if constexpr (Paired) {
    if (j < n) {  // last partial group: natural order, zero-padded, then paired
      alignas(32) float tmp[8] = {};
      for (int64_t t = j; t < n; ++t) tmp[t - j] = Elem<T>::load(src, t);
      _mm256_storeu_ps(dst + j, _mm256_permutevar8x32_ps(_mm256_load_ps(tmp), pair));
      j += 8;
    }
  }
  for (; j < n; ++j) dst[j] = Elem<T>::load(src, j);
  for (; j < padded; ++j) dst[j] = 0.0f;
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// The 4 horizontal sums of a, b, c, d.
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// A per-thread scratch buffer of n elements, 64-byte aligned (no split loads or stores).
template <class E>
E* scratch(std::vector<E>& v, int64_t n) {
  v.resize(static_cast<size_t>(n) + 64 / sizeof(E));
  const auto p = reinterpret_cast<uintptr_t>(v.data());
  return reinterpret_cast<E*>((p + 63) & ~uintptr_t{63});
}

struct Ctx {
  const Gemm4Args& a;
  const float* code;  // 16 entries
  Lut code_lut;
  ByteTables bytes;
  int lg;         // log2(blocksize)
  int nested_lg;  // log2(nested_blocksize) when it is a power of two, else -1

  // Scale of block b, the same fp32 value as Scales::operator() (a shift instead of the
  // division by the nested blocksize: 256 unless the caller chose otherwise).
  float scale(int64_t b) const {
    const Scales& s = a.scales;
    if (s.qabsmax == nullptr) return s.absmax[b];
    const int64_t nb = nested_lg >= 0 ? b >> nested_lg : b / s.nested_blocksize;
    const float v = s.nested_code[s.qabsmax[b]] * s.nested_absmax[nb];
    return v + s.offset;
  }
};

// Decodes W[n, k0:k1) (weights code * scale) into dst, then zero-pads dst up to `padded`.
// Paired (K % 8 == 0, k0 % 8 == 0): every segment is whole groups of 8, written in paired order.
// Natural: any K; an odd segment start and a segment's last < 8 elements are decoded one by one.
template <bool Paired>
void decode_row(const Ctx& c, int64_t n, int64_t k0, int64_t k1, int64_t padded, float* dst) {
  const uint8_t* packed = c.a.packed;
  const int64_t base = n * c.a.K;
  int64_t i = base + k0;
  const int64_t e = base + k1;
  float* d = dst;
  if (Paired && ((i | e) & 31) == 0) {
    // Whole groups of 32 aligned in the flat index: each lies inside one block (blocksizes are
    // multiples of 32), so the scale only changes where a group starts a block.
    const int64_t mask = (int64_t{1} << c.lg) - 1;
    __m256 vs = _mm256_set1_ps(c.scale(i >> c.lg));
    for (; i < e; i += 32, d += 32) {
      if ((i & mask) == 0) vs = _mm256_set1_ps(c.scale(i >> c.lg));
      __m256 f[4];
      decode32(packed + (i >> 1), c.bytes, f);
      for (int g = 0; g < 4; ++g) _mm256_storeu_ps(d + 8 * g, _mm256_mul_ps(f[g], vs));
    }
  }
  while (i < e) {
    const int64_t b = i >> c.lg;
    const int64_t seg_end = std::min(e, (b + 1) << c.lg);
    const float s = c.scale(b);
    if constexpr (Paired) {
      const __m256 vs = _mm256_set1_ps(s);
      for (; i + 32 <= seg_end; i += 32, d += 32) {
        __m256 f[4];
        decode32(packed + (i >> 1), c.bytes, f);
        for (int g = 0; g < 4; ++g) _mm256_storeu_ps(d + 8 * g, _mm256_mul_ps(f[g], vs));
      }
      if (i < seg_end) {
        const Lut lut = scaled(c.code_lut, s);
        for (; i < seg_end; i += 8, d += 8) _mm256_storeu_ps(d, decode8<true>(packed + (i >> 1), lut));
      }
    } else {
      if ((i & 1) != 0) *d++ = c.code[nibble_at(packed, i++)] * s;  // odd start: low nibble alone
      if (i + 8 <= seg_end) {
        const Lut lut = scaled(c.code_lut, s);
        for (; i + 8 <= seg_end; i += 8, d += 8) _mm256_storeu_ps(d, decode8<false>(packed + (i >> 1), lut));
      }
      for (; i < seg_end; ++i) *d++ = c.code[nibble_at(packed, i)] * s;
    }
  }
  for (int64_t j = k1 - k0; j < padded; ++j) dst[j] = 0.0f;
}

template <DType T>
void store_out(const Gemm4Args& a, int64_t m, int64_t n, float acc) {
  using S = typename Elem<T>::storage;
  if (a.bias) acc += Elem<T>::load(static_cast<const S*>(a.bias), n);  // after the sum, as the oracle
  Elem<T>::store(static_cast<S*>(a.out), m * a.N + n, acc);
}

// ---- M <= 3 and K % 8 == 0: streaming GEMV ----------------------------------------------------


// One W row n dotted with MV rows of Ap (fp32, paired order, row stride K) into acc[MV].
// Factored (Exact = false): a block's scale multiplies the block's sum of A * code once
// (acc += scale * sum A * code: the oracle's terms A * (code * scale), reassociated); returns
// false if a scale was Inf or NaN, where factoring differs from the oracle (code 0.0 * Inf is NaN
// there) and the row must be redone with Exact = true, which scales every weight first.
template <int MV, bool Exact>
bool gemv_row(const Ctx& c, const float* Ap, int64_t n, __m256* out) {
  __m256 acc[MV];  // local: stores through `out` would make the compiler reload c's tables
  constexpr int P = MV == 1 ? 2 : 1;  // partial chains per row (FMA latency)
  const Gemm4Args& a = c.a;
  const uint8_t* packed = a.packed;
  const int64_t K = a.K, base = n * K, e = base + K;
  const __m256 one = _mm256_set1_ps(1.0f);
  bool finite = true;
  for (int m = 0; m < MV; ++m) acc[m] = _mm256_setzero_ps();
  int64_t i = base;
  if (K % 32 == 0) {
    // Every group of 32 lies inside one block; the scale is re-read only where a group starts one.
    const int64_t mask = (int64_t{1} << c.lg) - 1;
    float s = c.scale(i >> c.lg);
    uint32_t nonfinite = (float_bits(s) & 0x7F800000u) == 0x7F800000u;
    __m256 vs = _mm256_set1_ps(s);
    for (; i < e; i += 32) {
      if ((i & mask) == 0) {
        s = c.scale(i >> c.lg);
        nonfinite |= (float_bits(s) & 0x7F800000u) == 0x7F800000u;  // Inf or NaN
        vs = _mm256_set1_ps(s);
      }
      __m256 f[4];
      stream_decode32<Exact>(packed + (i >> 1), c.bytes, vs, f);
      const float* ak = Ap + (i - base);
      for (int m = 0; m < MV; ++m) {
        __m256 part = _mm256_mul_ps(_mm256_loadu_ps(ak + m * K), f[0]);
        for (int g = 1; g < 4; ++g) part = _mm256_fmadd_ps(_mm256_loadu_ps(ak + m * K + 8 * g), f[g], part);
        acc[m] = Exact ? _mm256_add_ps(acc[m], part) : _mm256_fmadd_ps(part, vs, acc[m]);
      }
    }
    for (int m = 0; m < MV; ++m) out[m] = acc[m];
    return nonfinite == 0;
  }
  // K % 8 == 0: segments of whole groups of 8.
  while (i < e) {
    const int64_t b = i >> c.lg;
    const int64_t seg_end = std::min(e, (b + 1) << c.lg);
    const float s = c.scale(b);
    finite &= std::isfinite(s);
    const __m256 vs = _mm256_set1_ps(s);
    const Lut lut = Exact ? scaled(c.code_lut, s) : c.code_lut;
    __m256 part[MV][P];
    for (int m = 0; m < MV; ++m)
      for (int q = 0; q < P; ++q) part[m][q] = _mm256_setzero_ps();
    for (; i + 32 <= seg_end; i += 32) {
      __m256 f[4];
      stream_decode32<Exact>(packed + (i >> 1), c.bytes, vs, f);
      const float* ak = Ap + (i - base);
      for (int g = 0; g < 4; ++g)
        for (int m = 0; m < MV; ++m)
          part[m][g % P] = _mm256_fmadd_ps(_mm256_loadu_ps(ak + m * K + 8 * g), f[g], part[m][g % P]);
    }
    for (; i < seg_end; i += 8) {
      const __m256 w = decode8<true>(packed + (i >> 1), lut);
      for (int m = 0; m < MV; ++m)
        part[m][0] = _mm256_fmadd_ps(_mm256_loadu_ps(Ap + m * K + (i - base)), w, part[m][0]);
    }
    for (int m = 0; m < MV; ++m) {
      __m256 v = part[m][0];
      if constexpr (P == 2) v = _mm256_add_ps(v, part[m][1]);
      acc[m] = _mm256_fmadd_ps(v, Exact ? one : vs, acc[m]);
    }
  }
  for (int m = 0; m < MV; ++m) out[m] = acc[m];
  return finite;
}

template <DType T, int MV>
void gemv(const Ctx& c, const float* Ap, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    __m256 acc[MV];
    if (!gemv_row<MV, false>(c, Ap, n, acc)) gemv_row<MV, true>(c, Ap, n, acc);
    for (int m = 0; m < MV; ++m) store_out<T>(c.a, m, n, hsum(acc[m]));
  }
}

template <DType T>
void gemv_path(const Ctx& c, int64_t n0, int64_t n1) {
  const Gemm4Args& a = c.a;
  const auto* A = static_cast<const typename Elem<T>::storage*>(a.A);
  thread_local std::vector<float> abuf;
  float* Ap = scratch(abuf, a.M * a.K);
  for (int64_t m = 0; m < a.M; ++m) to_f32<T, true>(A + m * a.K, a.K, a.K, Ap + m * a.K);
  switch (a.M) {
    case 1: gemv<T, 1>(c, Ap, n0, n1); break;
    case 2: gemv<T, 2>(c, Ap, n0, n1); break;
    default: gemv<T, 3>(c, Ap, n0, n1); break;
  }
}

// ---- tiled GEMM (M >= 4, or K % 8 != 0) ---------------------------------------------------------

// C[r, j] += sum_k A[r, k] * W[j, k] for r < MR, j < 3, over kl (a multiple of 8) k.
template <int MR>
inline void micro(const float* Ab, const float* Wb, int64_t ld, int64_t kl, float* C, int64_t ldc) {
  __m256 acc[kMR * kNR];
  for (int t = 0; t < kMR * kNR; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kl; k += 8) {
    const __m256 w0 = _mm256_loadu_ps(Wb + k);
    const __m256 w1 = _mm256_loadu_ps(Wb + ld + k);
    const __m256 w2 = _mm256_loadu_ps(Wb + 2 * ld + k);
    for (int r = 0; r < MR; ++r) {
      const __m256 x = _mm256_loadu_ps(Ab + r * ld + k);
      acc[r * kNR + 0] = _mm256_fmadd_ps(x, w0, acc[r * kNR + 0]);
      acc[r * kNR + 1] = _mm256_fmadd_ps(x, w1, acc[r * kNR + 1]);
      acc[r * kNR + 2] = _mm256_fmadd_ps(x, w2, acc[r * kNR + 2]);
    }
  }
  alignas(16) float sums[kMR * kNR];
  for (int t = 0; t < MR * kNR; t += 4) {
    // MR * 3 is a multiple of 4 only for MR = 4; unused accumulators are zero.
    _mm_store_ps(sums + t, hsum4(acc[t], acc[t + 1], acc[t + 2], acc[t + 3]));
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < kNR; ++j) C[r * ldc + j] += sums[r * kNR + j];
}

template <DType T, bool Paired>
void gemm_path(const Ctx& c, int64_t n0, int64_t n1) {
  const Gemm4Args& a = c.a;
  const auto* A = static_cast<const typename Elem<T>::storage*>(a.A);
  const int64_t M = a.M, K = a.K;
  const int64_t ld = std::min(kChunkK, (K + 7) / 8 * 8);  // row stride of Ab and Wb
  const int64_t mb_max = std::min(kBlockM, M);
  thread_local std::vector<float> a_buf, w_buf, c_buf;
  float* Ab = scratch(a_buf, mb_max * ld);
  float* Wb = scratch(w_buf, kTileN * ld);
  float* C = scratch(c_buf, mb_max * kPanelN);
  for (int64_t np0 = n0; np0 < n1; np0 += kPanelN) {
    const int64_t np1 = std::min(n1, np0 + kPanelN);
    for (int64_t mb0 = 0; mb0 < M; mb0 += kBlockM) {
      const int64_t mb = std::min(kBlockM, M - mb0);
      std::fill(C, C + mb_max * kPanelN, 0.0f);
      for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
        const int64_t k1 = std::min(K, k0 + kChunkK);
        const int64_t kl = (k1 - k0 + 7) / 8 * 8;
        for (int64_t r = 0; r < mb; ++r) to_f32<T, Paired>(A + (mb0 + r) * K + k0, k1 - k0, kl, Ab + r * ld);
        for (int64_t nt0 = np0; nt0 < np1; nt0 += kTileN) {
          const int64_t nt = std::min(kTileN, np1 - nt0);
          const int64_t triples = (nt + kNR - 1) / kNR;
          // The next tile's rows are 4 KiB-strided short runs that the hardware prefetcher does
          // not foresee: fetch them while this tile is multiplied.
          for (int64_t j = nt0 + kTileN; j < std::min(np1, nt0 + 2 * kTileN); ++j) {
            const uint8_t* p = a.packed + ((j * K + k0) >> 1);
            for (int64_t off = 0; off < (k1 - k0 + 1) / 2 + 1; off += 64)
              _mm_prefetch(reinterpret_cast<const char*>(p) + off, _MM_HINT_T0);
          }
          for (int64_t j = 0; j < triples * kNR; ++j) {
            float* row = Wb + j * ld;
            if (j < nt) decode_row<Paired>(c, nt0 + j, k0, k1, kl, row);
            else std::fill(row, row + kl, 0.0f);  // pad rows: their sums are discarded
          }
          tile_rows<kNR>([&](auto R, const float* ar, const float* wr, float* cc) { micro<decltype(R)::value>(ar, wr, ld, kl, cc, kPanelN); },
                         Ab, Wb, ld, mb, triples, C + (nt0 - np0), kPanelN);
        }
      }
      for (int64_t r = 0; r < mb; ++r)
        for (int64_t n = np0; n < np1; ++n) store_out<T>(a, mb0 + r, n, C[r * kPanelN + (n - np0)]);
    }
  }
}

}  // namespace

void gemm_4bit(const Gemm4Args& a, int64_t n0, int64_t n1) {
  // Segments need a power-of-two blocksize of at least 32 (every valid 4-bit blocksize is one).
  if (a.blocksize < 32 || (a.blocksize & (a.blocksize - 1)) != 0 || a.K <= 0 || a.M <= 0) {
    ref::gemm_4bit(a, n0, n1);
    return;
  }
  const auto& code = code_table(a.qt);
  const Ctx c{a, code.data(), {_mm256_loadu_ps(code.data()), _mm256_loadu_ps(code.data() + 8)},
              byte_tables(code.data()), __builtin_ctzll(static_cast<unsigned long long>(a.blocksize)),
              a.scales.nested_blocksize > 0 && (a.scales.nested_blocksize & (a.scales.nested_blocksize - 1)) == 0
                  ? __builtin_ctzll(static_cast<unsigned long long>(a.scales.nested_blocksize))
                  : -1};
  // K % 8 == 0 (blocksizes are multiples of 8, so every block segment is whole aligned groups of
  // 8): the paired-order paths. Otherwise the natural-order tiled path, for any M.
  const bool paired = a.K % 8 == 0;
  dispatch_float(a.dt, [&]<DType T>() {
    if (paired && a.M < kMR) gemv_path<T>(c, n0, n1);
    else if (paired) gemm_path<T, true>(c, n0, n1);
    else gemm_path<T, false>(c, n0, n1);
  });
}

// No AVX2 version: the Python layer's CPU backward is dequantize + torch's matmul (oneDNN/MKL),
// so this op runs on the CPU only when called directly; it is the oracle's.
void gemm_4bit_grad(const Gemm4Args& a, int64_t k0, int64_t k1) { ref::gemm_4bit_grad(a, k0, k1); }

}  // namespace nybble::cpu::avx2
