// cpu/ref/quantize.cpp — scalar oracle for blockwise 4-bit (NF4/FP4) and 8-bit quantization.
//
// Layout (spec §1.4–1.5): block b covers flat elements [b*bs, min((b+1)*bs, n)); absmax[b] is the
// largest |x| in it (NaN ignored); each element is normalized as x * (1.0f / absmax[b])
// (Note [Normalized value] in formats.hpp) and mapped to its nearest code. 4-bit codes are packed
// two per byte, the even index in the high nibble; an odd tail is padded with the code of 0.0.
#include <algorithm>

#include "cpu/elem.hpp"
#include "cpu/ref/ref.hpp"

namespace nybble::cpu::ref {
namespace {

// Runs emit(x, begin, end, r) for each block in [b0, b1) after storing its absmax; r is the
// block's reciprocal scale 1.0f / absmax.
template <class Emit>
void for_each_block(const void* xv, DType dt, int64_t n, int64_t blocksize, float* absmax,
                    int64_t b0, int64_t b1, Emit&& emit) {
  dispatch_float(dt, [&]<DType T>() {
    const auto* x = static_cast<const typename Elem<T>::storage*>(xv);
    auto at = [x](int64_t i) { return Elem<T>::load(x, i); };
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * blocksize, end = std::min(n, begin + blocksize);
      float m = 0.0f;
      for (int64_t i = begin; i < end; ++i) m = absmax_step(m, at(i));
      absmax[b] = m;
      emit(at, begin, end, 1.0f / m);
    }
  });
}

}  // namespace

void quantize_4bit(const void* x, DType dt, int64_t n, int64_t blocksize, QuantType qt,
                   uint8_t* packed, float* absmax, int64_t b0, int64_t b1) {
  for_each_block(x, dt, n, blocksize, absmax, b0, b1, [&](auto at, int64_t begin, int64_t end, float r) {
    for (int64_t i = begin; i < end; i += 2) {  // begin is even: 4-bit blocksizes are even
      const uint8_t hi = quantize_4bit_value(qt, at(i) * r);
      const uint8_t lo = i + 1 < end ? quantize_4bit_value(qt, at(i + 1) * r) : zero_code(qt);
      packed[i >> 1] = pack_nibbles(hi, lo);
    }
  });
}

void dequantize_4bit(const uint8_t* packed, const Scales& s, int64_t n, int64_t blocksize,
                     QuantType qt, void* outv, DType dt, int64_t b0, int64_t b1) {
  const auto& code = code_table(qt);
  dispatch_float(dt, [&]<DType T>() {
    auto* out = static_cast<typename Elem<T>::storage*>(outv);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * blocksize, end = std::min(n, begin + blocksize);
      const float scale = s(b);
      for (int64_t i = begin; i < end; ++i) Elem<T>::store(out, i, code[nibble_at(packed, i)] * scale);
    }
  });
}

void quantize_8bit(const void* x, DType dt, int64_t n, int64_t blocksize, const float* code,
                   uint8_t* q, float* absmax, int64_t b0, int64_t b1) {
  for_each_block(x, dt, n, blocksize, absmax, b0, b1, [&](auto at, int64_t begin, int64_t end, float r) {
    for (int64_t i = begin; i < end; ++i) q[i] = quantize_8bit_value(code, at(i) * r);
  });
}

void dequantize_8bit(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                     int64_t blocksize, void* outv, DType dt, int64_t b0, int64_t b1) {
  dispatch_float(dt, [&]<DType T>() {
    auto* out = static_cast<typename Elem<T>::storage*>(outv);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * blocksize, end = std::min(n, begin + blocksize);
      for (int64_t i = begin; i < end; ++i) Elem<T>::store(out, i, code[q[i]] * absmax[b]);
    }
  });
}

}  // namespace nybble::cpu::ref
