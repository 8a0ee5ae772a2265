// nybble/formats.hpp — every quantized format nybble reads or writes, declared once.
//
// The host oracle, the SIMD kernels, the CUDA kernels, the Python layer and the tests all read
// these definitions. Depends on nothing but the standard library.
//
// Facts here come from bitsandbytes 0.50 (spec/bitsandbytes-reference.md §1); each constant
// names the section it comes from.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>

namespace nybble {

// ----------------------------------------------------------------------------------------------
// 4-bit types
// ----------------------------------------------------------------------------------------------

enum class QuantType : uint8_t { NF4 = 0, FP4 = 1 };

constexpr std::string_view quant_type_name(QuantType t) { return t == QuantType::NF4 ? "nf4" : "fp4"; }

// NF4 (§1.1): value of each 4-bit code; already ascending.
inline constexpr std::array<float, 16> kNF4Code = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

// NF4 decision thresholds (§1.1), as fp32 literals exactly as the reference compares them. A
// normalized value goes to code i+1 only when it is strictly greater than kNF4Threshold[i]:
// values exactly on a threshold go to the lower code.
inline constexpr std::array<float, 15> kNF4Threshold = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,  0.2035212516784668f,  0.2920137718319893f,  0.3893125355243683f,
    0.5016634166240692f,  0.6427869200706482f,  0.8614784181118011f,
};

// FP4 (§1.2): bit 3 is the sign; bits 2..0 hold 2 exponent bits and 1 mantissa bit (bias 2, not
// IEEE). Table in bit-pattern order, magnitudes divided by 12 (the largest).
inline constexpr std::array<float, 16> kFP4Code = {
    0.0f,  0.0625f / 12,  8.0f / 12,  12.0f / 12,  4.0f / 12,  6.0f / 12,  2.0f / 12,  3.0f / 12,
    -0.0f, -0.0625f / 12, -8.0f / 12, -12.0f / 12, -4.0f / 12, -6.0f / 12, -2.0f / 12, -3.0f / 12,
};

// FP4 magnitude thresholds on |x| (§1.2), ascending, strict '>' as for NF4. kFP4ByRank[r] is the
// 3-bit magnitude code of the r-th smallest magnitude (0, 0.0625, 2, 3, 4, 6, 8, 12).
inline constexpr std::array<float, 7> kFP4Threshold = {
    0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f,
};
inline constexpr std::array<uint8_t, 8> kFP4ByRank = {0b000, 0b001, 0b110, 0b111,
                                                      0b100, 0b101, 0b010, 0b011};

// The table as the reference's QuantState.code holds it and checkpoints store it under
// "weight.quant_map": identical to the kernels' table except FP4 code 0b1000, which is +0.0 there
// (the reference builds it from the Python integer -0) and -0.0 in the kernels.
inline constexpr std::array<float, 16> kFP4QuantMap = {
    0.0f, 0.0625f / 12, 8.0f / 12,  12.0f / 12,  4.0f / 12,  6.0f / 12,  2.0f / 12,  3.0f / 12,
    0.0f, -0.0625f / 12, -8.0f / 12, -12.0f / 12, -4.0f / 12, -6.0f / 12, -2.0f / 12, -3.0f / 12,
};

constexpr const std::array<float, 16>& quant_map(QuantType t) {
  return t == QuantType::NF4 ? kNF4Code : kFP4QuantMap;
}

constexpr const std::array<float, 16>& code_table(QuantType t) {
  return t == QuantType::NF4 ? kNF4Code : kFP4Code;
}

// Code of 0.0: pads the low nibble of an odd-length tensor's last byte (§1.5).
constexpr uint8_t zero_code(QuantType t) { return t == QuantType::NF4 ? 0b0111 : 0b0000; }

// Note [Normalized value]: a block's elements are scaled by the fp32 reciprocal of its absmax,
// x * (1.0f / absmax), as the reference's CUDA kernels do. nybble takes the IEEE reciprocal on
// every device. The reference's CUDA build uses a fast-math approximate reciprocal, so its code
// can differ from nybble's when x * (1/absmax) lies within one ulp of a decision threshold.
// An all-zero block has absmax 0, reciprocal +inf and normalized value 0 * inf = NaN; NaN goes
// to the lowest code of each rule below (NF4 0b0000, FP4 0b0000, 8-bit index 0), and the block
// dequantizes to code * 0 = ±0. These are the reference's codes for such blocks.

// Nearest NF4 code of a normalized value (ties and NaN to the lower code).
inline uint8_t quantize_nf4(float x) {
  uint8_t q = 0;
  for (float t : kNF4Threshold) q += static_cast<uint8_t>(x > t);
  return q;
}

// Nearest FP4 code: sign bit set iff x < 0 (so -0.0 and NaN get sign 0), magnitude by rank.
inline uint8_t quantize_fp4(float x) {
  const float a = std::fabs(x);
  uint8_t rank = 0;
  for (float t : kFP4Threshold) rank += static_cast<uint8_t>(a > t);
  return static_cast<uint8_t>(kFP4ByRank[rank] | (x < 0.0f ? 0b1000 : 0));
}

inline uint8_t quantize_4bit_value(QuantType t, float x) {
  return t == QuantType::NF4 ? quantize_nf4(x) : quantize_fp4(x);
}

// Blocksizes (§1.4): 4-bit accepts these on every device. k8bitCudaBlocksizes are the 8-bit
// blocksizes the reference's CUDA build accepts; nybble takes any positive 8-bit blocksize on
// every device.
inline constexpr std::array<int64_t, 8> k4bitBlocksizes = {32, 64, 128, 256, 512, 1024, 2048, 4096};
inline constexpr std::array<int64_t, 7> k8bitCudaBlocksizes = {64, 128, 256, 512, 1024, 2048, 4096};

constexpr bool is_valid_4bit_blocksize(int64_t bs) {
  for (int64_t v : k4bitBlocksizes)
    if (v == bs) return true;
  return false;
}

// Double quantization (§1.6): the 4-bit absmax minus its mean is quantized blockwise with the
// signed dynamic map in blocks of this size.
inline constexpr int64_t kNestedBlocksize = 256;

// Note [Offset]: the offset (mean of absmax) is summed in double in one fixed order on every
// device, so the CPU and the GPU store the same offset bit for bit: lane l of kMeanLanes sums
// elements l, l + kMeanLanes, l + 2 * kMeanLanes, ... in ascending order; lane sums are then
// added pairwise (lane l += lane l + h for h = kMeanLanes / 2, ..., 1); lane 0's total is rounded
// once to fp32 and multiplied by 1.0f / n (as torch.mean scales). torch's CUDA mean sums in fp32
// in its own order, so the reference's offset can be one ulp away (1 of 24 golden cases).
inline constexpr int64_t kMeanLanes = 1024;

constexpr int64_t num_blocks(int64_t n, int64_t blocksize) { return (n + blocksize - 1) / blocksize; }

// Packed 4-bit layout (§1.5): two codes per byte, the even flat index in the HIGH nibble.
constexpr int64_t packed_4bit_bytes(int64_t n) { return (n + 1) / 2; }
constexpr uint8_t pack_nibbles(uint8_t even, uint8_t odd) { return static_cast<uint8_t>((even << 4) | odd); }
constexpr uint8_t nibble_at(const uint8_t* packed, int64_t i) {
  return (i & 1) ? (packed[i >> 1] & 0x0F) : (packed[i >> 1] >> 4);
}

// ----------------------------------------------------------------------------------------------
// 8-bit dynamic maps (§1.3)
// ----------------------------------------------------------------------------------------------

using Code8 = std::array<float, 256>;

// create_dynamic_map(signed, max_exponent_bits=7, total_bits=8), bit-identical to the
// reference's table. Signed: 127 negatives, 0 at index 127, 127 positives, 1.0 at index 255.
// Unsigned: 0, 254 positives, 1.0.
const Code8& dynamic_map_signed();
const Code8& dynamic_map_unsigned();
Code8 create_dynamic_map(bool is_signed);

// Index of the nearest entry of an ascending 256-entry map, decided exactly as the reference's
// CUDA quantizer does (§1.3), so that any map (also one with repeated entries) gives the same
// codes: a 7-step binary search from index 127 (steps 64..1) keeps the last entries passed below
// (lo) and above (up); then x is compared with the fp32 midpoint (a + b) * 0.5f between the
// landing entry and its neighbour on x's side. For a strictly ascending map this is the nearest
// entry, a value exactly on a midpoint going to the even index of the two; NaN goes to index 0.
inline uint8_t quantize_8bit_value(const float* code, float x) {
  int pivot = 127, lo_i = 0, up_i = 255;
  float lo = code[0], up = code[255];
  for (int step = 64; step > 0; step >>= 1) {
    const float v = code[pivot];
    if (x > v) {
      lo_i = pivot;
      lo = v;
      pivot += step;
    } else {
      up_i = pivot;
      up = v;
      pivot -= step;
    }
  }
  const float v = code[pivot];
  if (x > v) return static_cast<uint8_t>(x > (up + v) * 0.5f ? up_i : pivot);
  return static_cast<uint8_t>(x < (lo + v) * 0.5f ? lo_i : pivot);
}

// ----------------------------------------------------------------------------------------------
// LLM.int8 (§2.1)
// ----------------------------------------------------------------------------------------------

// int8_mm_dequant: out = acc * row_stat * col_stat * (1 / (127 * 127)). nybble uses the exact
// constant (the reference's 6.200012e-05f / 6.200124e-05 are slightly off).
inline constexpr float kInt8MmDequantScale = 1.0f / (127.0f * 127.0f);
// int8_vectorwise_dequant: codes * stats / 127.
inline constexpr float kInt8DequantScale = 1.0f / 127.0f;

}  // namespace nybble
