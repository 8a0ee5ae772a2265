// large_tensor_test.cpp — tensors of more than 2^31 elements are indexed correctly (64-bit
// indexing): a 4-bit dequantize into a 4 GiB bf16 buffer and its re-quantization.
#include <gtest/gtest.h>

#include <cstdlib>

#include "test_util.hpp"

namespace nybble {
namespace {

TEST(LargeTensor, FourBitBeyond2To31Elements) {
  const int64_t n = (int64_t{1} << 31) + 97;  // odd: exercises the padded tail past 2^31
  const int64_t bs = 4096, nb = num_blocks(n, bs), bytes = packed_4bit_bytes(n);
  std::vector<uint8_t> packed(static_cast<size_t>(bytes));
  std::vector<float> absmax(static_cast<size_t>(nb));
  // A code pattern that depends on the 64-bit index; each block starts with code 15 (+1.0) so
  // its absmax survives the round trip exactly.
  for (int64_t i = 0; i < bytes; ++i) packed[static_cast<size_t>(i)] = static_cast<uint8_t>((i * 2654435761u) >> 13);
  for (int64_t b = 0; b < nb; ++b) {
    packed[static_cast<size_t>(b * bs / 2)] = static_cast<uint8_t>(0xF0 | (packed[static_cast<size_t>(b * bs / 2)] & 0x0F));
    absmax[static_cast<size_t>(b)] = static_cast<float>(1 + b % 7);  // exact in bf16
  }
  packed.back() = static_cast<uint8_t>((packed.back() & 0xF0) | zero_code(QuantType::NF4));
  std::vector<uint16_t> out(static_cast<size_t>(n));
  dequantize_4bit(TensorView(packed.data(), DType::U8, {bytes}), BlockScales{TensorView(absmax.data(), DType::F32, {nb}), std::nullopt},
                  bs, QuantType::NF4, TensorView(out.data(), DType::BF16, {n}));
  for (int64_t i : {int64_t{0}, (int64_t{1} << 31) - 1, int64_t{1} << 31, (int64_t{1} << 31) + 1, n - 1}) {
    const float want = float_to_bf16(kNF4Code[nibble_at(packed.data(), i)] * absmax[static_cast<size_t>(i / bs)]);
    EXPECT_EQ(out[static_cast<size_t>(i)], want) << "element " << i;
  }
  std::vector<uint8_t> packed2(static_cast<size_t>(bytes));
  std::vector<float> absmax2(static_cast<size_t>(nb));
  quantize_4bit(TensorView(out.data(), DType::BF16, {n}), TensorView(packed2.data(), DType::U8, {bytes}),
                TensorView(absmax2.data(), DType::F32, {nb}), bs, QuantType::NF4);
  EXPECT_TRUE(absmax2 == absmax);
  EXPECT_TRUE(packed2 == packed);
}

}  // namespace
}  // namespace nybble
