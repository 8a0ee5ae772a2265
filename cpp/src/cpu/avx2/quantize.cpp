// cpu/avx2/quantize.cpp — AVX2 blockwise 4-bit and 8-bit quantization (placeholder: forwards to
// the oracle until the vector kernels land).
#include "cpu/avx2/avx2.hpp"
#include "cpu/ref/ref.hpp"

namespace nybble::cpu::avx2 {

void quantize_4bit(const void* x, DType dt, int64_t n, int64_t blocksize, QuantType qt,
                   uint8_t* packed, float* absmax, int64_t b0, int64_t b1) {
  ref::quantize_4bit(x, dt, n, blocksize, qt, packed, absmax, b0, b1);
}
void dequantize_4bit(const uint8_t* packed, const Scales& s, int64_t n, int64_t blocksize,
                     QuantType qt, void* out, DType dt, int64_t b0, int64_t b1) {
  ref::dequantize_4bit(packed, s, n, blocksize, qt, out, dt, b0, b1);
}
void quantize_8bit(const void* x, DType dt, int64_t n, int64_t blocksize, const float* code,
                   uint8_t* q, float* absmax, int64_t b0, int64_t b1) {
  ref::quantize_8bit(x, dt, n, blocksize, code, q, absmax, b0, b1);
}
void dequantize_8bit(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                     int64_t blocksize, void* out, DType dt, int64_t b0, int64_t b1) {
  ref::dequantize_8bit(q, absmax, code, n, blocksize, out, dt, b0, b1);
}

}  // namespace nybble::cpu::avx2
