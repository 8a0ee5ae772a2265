// cpu/avx2/int8.cpp — AVX2 LLM.int8 kernels (spec §2.1), bit-exact with cpu/ref/int8.cpp:
//  * int8_quant_rows: per row, absmax ignoring NaN and outliers (|x| >= threshold), then
//    round_half_even((x * 127) / row_stat) with an IEEE division; 2 reads of the row, 1 byte out
//    per element.
//  * int8_matmul: out[m, n] = sum_k A[m, k] * B[n, k] in int32. Operands are widened to int16
//    once per tile (A: up to kBlockM rows x kChunkK, B: kTileN rows x kChunkK, both k-contiguous)
//    and multiplied with _mm256_madd_epi16 (pairwise int16 products summed in int32; exact, as
//    |a*b + c*d| <= 2 * 128 * 128). The micro-kernel is a 4 x 2 inner product with 8 int32
//    accumulators (8 madd + 8 add per 16 k for 6 loads); integer sums are exact in any order,
//    and wrap modulo 2^32 like the oracle's int32 sum.
//  * int8_mm_dequant: ((float(acc) * row_stat) * col_stat) * (1 / 127^2) (+ bias), each product
//    rounded to fp32 in that order (no FMA), stored with round-to-nearest-even.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/avx2/avx2.hpp"
#include "cpu/avx2/vec.hpp"
#include "cpu/elem.hpp"
#include "cpu/ref/ref.hpp"

namespace nybble::cpu::avx2 {
namespace {


inline __m256 load8_any(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F16: return load8<DType::F16>(static_cast<const uint16_t*>(p) + i);
    case DType::BF16: return load8<DType::BF16>(static_cast<const uint16_t*>(p) + i);
    default: return load8<DType::F32>(static_cast<const float*>(p) + i);
  }
}

// Stores 8 fp32 values as T, rounding exactly like float_to_half / float_to_bf16.
template <DType T>
inline void store8(typename Elem<T>::storage* p, __m256 v) {
  if constexpr (T == DType::F32) {
    _mm256_storeu_ps(p, v);
  } else if constexpr (T == DType::F16) {
    // F16C rounds to nearest even with subnormals, overflow to inf, and NaN -> quiet NaN with the
    // top 10 mantissa bits: the same bits as float_to_half.
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  } else {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF));
    const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F800000));
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded =
        _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd), 16);
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    const __m256i h = _mm256_blendv_epi8(rounded, quiet, nan);  // all lanes in [0, 0xFFFF]
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0b1000);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
}

// ---- int8_quant_rows --------------------------------------------------------------------------

template <DType T>
void quant_rows(const typename Elem<T>::storage* A, int64_t cols, float threshold, int8_t* CA,
                float* row_stats, uint8_t* outlier_mask, int64_t r0, int64_t r1) {
  const bool split = threshold > 0.0f;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 thr = _mm256_set1_ps(threshold);
  const __m256 c127 = _mm256_set1_ps(127.0f);
  for (int64_t r = r0; r < r1; ++r) {
    const auto* x = A + r * cols;
    // Pass 1: absmax. _mm256_max_ps(a, m) is a > m ? a : m, so NaN never wins (absmax_step).
    __m256 vm = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
      __m256 a = _mm256_andnot_ps(sign, load8<T>(x + j));
      if (split) {
        const __m256 out = _mm256_cmp_ps(a, thr, _CMP_GE_OQ);  // NaN is not an outlier
        if (int bits = _mm256_movemask_ps(out)) {
          for (; bits != 0; bits &= bits - 1) outlier_mask[j + __builtin_ctz(static_cast<unsigned>(bits))] = 1;
          a = _mm256_andnot_ps(out, a);
        }
      }
      vm = _mm256_max_ps(a, vm);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    float m = _mm_cvtss_f32(h);
    for (; j < cols; ++j) {
      const float v = Elem<T>::load(x, j);
      if (split && std::fabs(v) >= threshold) {
        outlier_mask[j] = 1;
        continue;
      }
      m = absmax_step(m, v);
    }
    row_stats[r] = m;
    // Pass 2: codes.
    const __m256 vstat = _mm256_set1_ps(m);
    int8_t* q = CA + r * cols;
    j = 0;
    for (; j + 8 <= cols; j += 8) {
      const __m256 xv = load8<T>(x + j);
      // Clamped to [-127, 127] as in the oracle (v can exceed 127 by an ulp); NaN -> 0 (max/min
      // return their second operand for NaN, so clamp with v first and mask NaN separately).
      const __m256 raw = _mm256_div_ps(_mm256_mul_ps(xv, c127), vstat);
      __m256 keep = _mm256_cmp_ps(raw, raw, _CMP_ORD_Q);
      const __m256 v = _mm256_min_ps(_mm256_max_ps(raw, _mm256_sub_ps(_mm256_setzero_ps(), c127)), c127);
      if (split) keep = _mm256_andnot_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, xv), thr, _CMP_GE_OQ), keep);
      const __m256 rv = _mm256_and_ps(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), keep);
      const __m256i i32 = _mm256_cvtps_epi32(rv);  // integral values in [-127, 127]: exact
      const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q + j), _mm_packs_epi16(i16, i16));
    }
    for (; j < cols; ++j) {
      const float v = Elem<T>::load(x, j);
      q[j] = (split && std::fabs(v) >= threshold) ? 0 : ref::int8_quantize_value(v, m);
    }
  }
}

// ---- int8_matmul -------------------------------------------------------------------------------

constexpr int64_t kChunkK = 1024;  // k-chunk (multiple of 16)
constexpr int64_t kTileN = 12;     // B rows widened per tile: 6 column pairs
constexpr int64_t kBlockM = 128;   // A rows per block
constexpr int64_t kPanelN = 384;   // output columns per C tile (multiple of kTileN)
// 4 x 2 register tile: 8 accumulators + 2 B rows + A + madd temporaries fit the 16 ymm registers
// (4 x 3 would spill accumulators, since each madd needs a temporary before its add).
constexpr int kNR = 2, kMR = 4;

// A per-thread scratch buffer of n elements, 64-byte aligned (no split loads or stores).
template <class E>
E* scratch(std::vector<E>& v, int64_t n) {
  v.resize(static_cast<size_t>(n) + 64 / sizeof(E));
  const auto p = reinterpret_cast<uintptr_t>(v.data());
  return reinterpret_cast<E*>((p + 63) & ~uintptr_t{63});
}

// dst[0, n) = int16 of src[0, n), zero up to padded.
void widen(const int8_t* src, int64_t n, int64_t padded, int16_t* dst) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j),
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
  for (; j < n; ++j) dst[j] = src[j];
  for (; j < padded; ++j) dst[j] = 0;
}

// The 4 horizontal int32 sums of a, b, c, d.
inline __m128i hsum4(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
  return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

template <int MR>
inline void micro(const int16_t* Ab, const int16_t* Bb, int64_t ld, int64_t kl, int32_t* C, int64_t ldc) {
  __m256i acc[kMR * kNR];
  for (int t = 0; t < kMR * kNR; ++t) acc[t] = _mm256_setzero_si256();
  for (int64_t k = 0; k < kl; k += 16) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(Bb + k));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(Bb + ld + k));
    for (int r = 0; r < MR; ++r) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(Ab + r * ld + k));
      acc[r * kNR + 0] = _mm256_add_epi32(acc[r * kNR + 0], _mm256_madd_epi16(x, b0));
      acc[r * kNR + 1] = _mm256_add_epi32(acc[r * kNR + 1], _mm256_madd_epi16(x, b1));
    }
  }
  alignas(16) int32_t sums[kMR * kNR];
  for (int t = 0; t < MR * kNR; t += 4)
    _mm_store_si128(reinterpret_cast<__m128i*>(sums + t), hsum4(acc[t], acc[t + 1], acc[t + 2], acc[t + 3]));
  // Unsigned adds: wraps like the int32 hardware sum instead of being undefined on overflow.
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < kNR; ++j)
      C[r * ldc + j] = static_cast<int32_t>(static_cast<uint32_t>(C[r * ldc + j]) + static_cast<uint32_t>(sums[r * kNR + j]));
}


}  // namespace

void int8_quant_rows(const void* A, DType dt, int64_t cols, float threshold, int8_t* CA,
                     float* row_stats, uint8_t* outlier_mask, int64_t r0, int64_t r1) {
  dispatch_float(dt, [&]<DType T>() {
    quant_rows<T>(static_cast<const typename Elem<T>::storage*>(A), cols, threshold, CA, row_stats,
                  outlier_mask, r0, r1);
  });
}

void int8_matmul(const int8_t* A, const int8_t* B, int32_t* out, int64_t M, int64_t N, int64_t K,
                 int64_t n0, int64_t n1) {
  if (M <= 0 || n1 <= n0) return;
  if (K <= 0) {
    for (int64_t m = 0; m < M; ++m) std::fill(out + m * N + n0, out + m * N + n1, 0);
    return;
  }
  const int64_t ld = std::min(kChunkK, (K + 15) / 16 * 16);
  const int64_t mb_max = std::min(kBlockM, M);
  thread_local std::vector<int16_t> a_buf, b_buf;
  thread_local std::vector<int32_t> c_buf;
  int16_t* Ab = scratch(a_buf, mb_max * ld);
  int16_t* Bb = scratch(b_buf, kTileN * ld);
  int32_t* C = scratch(c_buf, mb_max * kPanelN);
  for (int64_t np0 = n0; np0 < n1; np0 += kPanelN) {
    const int64_t np1 = std::min(n1, np0 + kPanelN);
    for (int64_t mb0 = 0; mb0 < M; mb0 += kBlockM) {
      const int64_t mb = std::min(kBlockM, M - mb0);
      std::fill(C, C + mb_max * kPanelN, 0);
      for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
        const int64_t k1 = std::min(K, k0 + kChunkK);
        const int64_t kl = (k1 - k0 + 15) / 16 * 16;
        for (int64_t r = 0; r < mb; ++r) widen(A + (mb0 + r) * K + k0, k1 - k0, kl, Ab + r * ld);
        for (int64_t nt0 = np0; nt0 < np1; nt0 += kTileN) {
          const int64_t nt = std::min(kTileN, np1 - nt0);
          const int64_t groups = (nt + kNR - 1) / kNR;
          // The next tile's rows (K-strided short runs the hardware prefetcher does not foresee).
          for (int64_t j = nt0 + kTileN; j < std::min(np1, nt0 + 2 * kTileN); ++j)
            for (int64_t off = 0; off < k1 - k0; off += 64)
              _mm_prefetch(reinterpret_cast<const char*>(B + j * K + k0 + off), _MM_HINT_T0);
          for (int64_t j = 0; j < groups * kNR; ++j) {
            int16_t* row = Bb + j * ld;
            if (j < nt) widen(B + (nt0 + j) * K + k0, k1 - k0, kl, row);
            else std::fill(row, row + kl, int16_t{0});
          }
          tile_rows<kNR>([&](auto R, const int16_t* ar, const int16_t* br, int32_t* cc) { micro<decltype(R)::value>(ar, br, ld, kl, cc, kPanelN); },
                         Ab, Bb, ld, mb, groups, C + (nt0 - np0), kPanelN);
        }
      }
      for (int64_t r = 0; r < mb; ++r)
        std::copy_n(C + r * kPanelN, np1 - np0, out + (mb0 + r) * N + np0);
    }
  }
}

void int8_mm_dequant(const int32_t* acc, const float* row_stats, const float* col_stats,
                     const void* bias, DType bias_dt, void* outv, DType out_dt, int64_t N, int64_t r0,
                     int64_t r1) {
  dispatch_float(out_dt, [&]<DType T>() {
    auto* out = static_cast<typename Elem<T>::storage*>(outv);
    const __m256 scale = _mm256_set1_ps(kInt8MmDequantScale);
    for (int64_t r = r0; r < r1; ++r) {
      const __m256 rs = _mm256_set1_ps(row_stats[r]);
      const int32_t* a = acc + r * N;
      int64_t c = 0;
      for (; c + 8 <= N; c += 8) {
        __m256 v = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + c)));
        v = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(v, rs), _mm256_loadu_ps(col_stats + c)), scale);
        if (bias) v = _mm256_add_ps(v, load8_any(bias, bias_dt, c));
        store8<T>(out + r * N + c, v);
      }
      for (; c < N; ++c) {
        float v = static_cast<float>(a[c]) * row_stats[r] * col_stats[c] * kInt8MmDequantScale;
        if (bias) v += load_as_float(bias, bias_dt, c);
        Elem<T>::store(out, r * N + c, v);
      }
    }
  });
}

}  // namespace nybble::cpu::avx2
