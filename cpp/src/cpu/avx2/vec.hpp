// cpu/avx2/vec.hpp — vector helpers shared by the AVX2 kernels (compiled with -mavx2 -mfma -mf16c).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "cpu/elem.hpp"

namespace nybble::cpu::avx2 {

// 8 consecutive elements of a float buffer of dtype T as fp32 (exact: F16C / bf16 shift).
template <DType T>
inline __m256 load8(const typename Elem<T>::storage* p) {
  if constexpr (T == DType::F32) {
    return _mm256_loadu_ps(p);
  } else if constexpr (T == DType::F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
}

// Stores 8 fp32 values as dtype T, rounded as dtype.hpp's store_from_float does (nearest even;
// NaN stays a quiet NaN).
template <DType T>
inline void store8_float(typename Elem<T>::storage* p, __m256 v) {
  if constexpr (T == DType::F32) {
    _mm256_storeu_ps(p, v);
  } else if constexpr (T == DType::F16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)), _mm256_set1_epi32(0x7F800000));
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rne = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd), 16);
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x0040));
    const __m256i h = _mm256_blendv_epi8(rne, quiet, nan);  // every lane < 2^16: the pack only narrows
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
  }
}

// Drives a register-tiled micro-kernel over `rows` rows of a k-contiguous A block and `groups`
// groups of NR rows of a k-contiguous B block: micro(std::integral_constant<int, R>{}, a, b, c)
// computes R (1..4) rows x NR columns into c. Full groups of 4 rows first, then the 1-3 left.
template <int NR, class TA, class TB, class TC, class Micro>
inline void tile_rows(const Micro& micro, const TA* Ab, const TB* Bb, int64_t ld, int64_t rows,
                      int64_t groups, TC* C, int64_t ldc) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4)
    for (int64_t t = 0; t < groups; ++t)
      micro(std::integral_constant<int, 4>{}, Ab + r * ld, Bb + t * NR * ld, C + r * ldc + t * NR);
  const int64_t left = rows - r;
  for (int64_t t = 0; t < groups && left > 0; ++t) {
    TC* Ct = C + r * ldc + t * NR;
    const TB* Bt = Bb + t * NR * ld;
    if (left == 1) micro(std::integral_constant<int, 1>{}, Ab + r * ld, Bt, Ct);
    else if (left == 2) micro(std::integral_constant<int, 2>{}, Ab + r * ld, Bt, Ct);
    else micro(std::integral_constant<int, 3>{}, Ab + r * ld, Bt, Ct);
  }
}

}  // namespace nybble::cpu::avx2
