// errors_test.cpp — bad input gets nybble::Error naming the argument, the value and the rule,
// and no output is touched.
#include <gtest/gtest.h>

#include <functional>

#include "test_util.hpp"

namespace nybble {
namespace {

// Runs f, expects nybble::Error of `kind` whose message contains every fragment.
void expect_error(const std::function<void()>& f, ErrorKind kind, std::initializer_list<std::string> fragments) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(kind)) << e.what();
    for (const auto& s : fragments) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << "'" << s << "' not in: " << e.what();
  }
}

struct Fixture4 {
  int64_t n = 1000, bs = 64, nb = num_blocks(1000, 64);
  std::vector<float> x = std::vector<float>(1000, 1.5f);
  std::vector<uint8_t> packed = std::vector<uint8_t>(500, 0xAB);
  std::vector<float> absmax = std::vector<float>(16, -7.0f);
  TensorView X() { return TensorView(x.data(), DType::F32, {n}); }
  TensorView P() { return TensorView(packed.data(), DType::U8, {500}); }
  TensorView M() { return TensorView(absmax.data(), DType::F32, {nb}); }
  bool untouched() const {
    for (uint8_t b : packed) if (b != 0xAB) return false;
    for (float a : absmax) if (a != -7.0f) return false;
    return true;
  }
};

TEST(Errors, Quantize4bit) {
  Fixture4 f;
  expect_error([&] { quantize_4bit(f.X(), f.P(), f.M(), 48, QuantType::NF4); }, ErrorKind::Value,
               {"quantize_4bit", "blocksize = 48", "must be one of 32, 64"});
  std::vector<int32_t> xi(1000);
  expect_error([&] { quantize_4bit(TensorView(xi.data(), DType::I32, {1000}), f.P(), f.M(), 64, QuantType::NF4); },
               ErrorKind::Type, {"A.dtype = int32", "float32, float16, bfloat16"});
  expect_error([&] { quantize_4bit(f.X(), TensorView(f.packed.data(), DType::U8, {499}), f.M(), 64, QuantType::NF4); },
               ErrorKind::Value, {"packed", "499 bytes", "(n + 1) / 2 = 500"});
  expect_error([&] { quantize_4bit(f.X(), f.P(), TensorView(f.absmax.data(), DType::F32, {15}), 64, QuantType::NF4); },
               ErrorKind::Value, {"absmax", "15 elements", "must have 16", "one per block"});
  expect_error([&] { quantize_4bit(TensorView(nullptr, DType::F32, {1000}), f.P(), f.M(), 64, QuantType::NF4); },
               ErrorKind::Value, {"A = float32 [1000]", "null data pointer"});
  TensorView strided = f.X();
  strided.shape[0] = 500;
  strided.strides[0] = 2;
  expect_error([&] { quantize_4bit(strided, TensorView(f.packed.data(), DType::U8, {250}), TensorView(f.absmax.data(), DType::F32, {8}), 64, QuantType::NF4); },
               ErrorKind::Value, {"A", "contiguous"});
  TensorView misaligned(reinterpret_cast<uint8_t*>(f.x.data()) + 2, DType::F32, {999});
  expect_error([&] { quantize_4bit(misaligned, f.P(), f.M(), 64, QuantType::NF4); }, ErrorKind::Value,
               {"A", "misaligned", "multiple of 4 bytes"});
  // quant_storage views: packed as float32 needs a byte count divisible by 4 that equals (n+1)/2.
  expect_error([&] { quantize_4bit(f.X(), TensorView(f.packed.data(), DType::F32, {124}), f.M(), 64, QuantType::NF4); },
               ErrorKind::Value, {"packed = float32 [124]", "496 bytes"});
  TensorView on_gpu = f.X();
  on_gpu.device = Device::CUDA;
  if (cuda_built())  // the other tensors are on the CPU
    expect_error([&] { quantize_4bit(on_gpu, f.P(), f.M(), 64, QuantType::NF4); }, ErrorKind::Value,
                 {"packed = uint8 [500] on cpu", "must be on the same device as A = float32 [1000] on cuda:0"});
  else
    expect_error([&] { quantize_4bit(on_gpu, f.P(), f.M(), 64, QuantType::NF4); }, ErrorKind::Runtime,
                 {"A = float32 [1000] on cuda", "no CUDA backend"});
  EXPECT_TRUE(f.untouched());
  // A float32 view of the packed bytes (quant_storage=float32) is accepted when sizes agree.
  std::vector<float> storage(125);
  EXPECT_NO_THROW(quantize_4bit(f.X(), TensorView(storage.data(), DType::F32, {125}), f.M(), 64, QuantType::NF4));
}

TEST(Errors, Dequantize4bitScales) {
  Fixture4 f;
  std::vector<float> out(1000, 3.0f);
  const TensorView O(out.data(), DType::F32, {1000});
  std::vector<uint8_t> q(16);
  std::vector<float> nested(1), code(256);
  expect_error([&] { dequantize_4bit(f.P(), BlockScales{TensorView(q.data(), DType::U8, {16}), std::nullopt}, 64, QuantType::NF4, O); },
               ErrorKind::Type, {"absmax.dtype = uint8", "must be float32"});
  expect_error([&] {
    dequantize_4bit(f.P(), BlockScales{f.M(), NestedAbsmax{TensorView(nested.data(), DType::F32, {1}), TensorView(code.data(), DType::F32, {256}), 0.f, 256}}, 64, QuantType::NF4, O);
  }, ErrorKind::Type, {"absmax.dtype = float32", "must be uint8"});
  expect_error([&] {
    dequantize_4bit(f.P(), BlockScales{TensorView(q.data(), DType::U8, {16}), NestedAbsmax{TensorView(nested.data(), DType::F32, {1}), TensorView(code.data(), DType::F32, {255}), 0.f, 256}}, 64, QuantType::NF4, O);
  }, ErrorKind::Value, {"nested_code", "255 elements", "must have 256"});
  expect_error([&] {
    dequantize_4bit(f.P(), BlockScales{TensorView(q.data(), DType::U8, {16}), NestedAbsmax{TensorView(nested.data(), DType::F32, {1}), TensorView(code.data(), DType::F32, {256}), 0.f, 0}}, 64, QuantType::NF4, O);
  }, ErrorKind::Value, {"nested_blocksize = 0", "must be positive"});
  for (float v : out) ASSERT_EQ(v, 3.0f);
}

TEST(Errors, Gemm4bitShapes) {
  std::vector<float> A(3 * 10), out(3 * 4), bias(5);
  std::vector<uint8_t> packed(20);
  std::vector<float> absmax(2);
  const BlockScales s{TensorView(absmax.data(), DType::F32, {2}), std::nullopt};
  expect_error([&] { gemm_4bit(TensorView(A.data(), DType::F32, {30}), TensorView(packed.data(), DType::U8, {20}), s, 32, QuantType::NF4, std::nullopt, TensorView(out.data(), DType::F32, {3, 4})); },
               ErrorKind::Value, {"gemm_4bit", "A = float32 [30]", "2 dimensions"});
  expect_error([&] { gemm_4bit(TensorView(A.data(), DType::F32, {3, 10}), TensorView(packed.data(), DType::U8, {20}), s, 32, QuantType::NF4, std::nullopt, TensorView(out.data(), DType::F32, {2, 6})); },
               ErrorKind::Value, {"out = float32 [2, 6]", "as many rows as A"});
  std::vector<uint16_t> out16(12);
  expect_error([&] { gemm_4bit(TensorView(A.data(), DType::F32, {3, 10}), TensorView(packed.data(), DType::U8, {20}), s, 32, QuantType::NF4, std::nullopt, TensorView(out16.data(), DType::BF16, {3, 4})); },
               ErrorKind::Type, {"out.dtype = bfloat16", "must be float32"});
  expect_error([&] { gemm_4bit(TensorView(A.data(), DType::F32, {3, 10}), TensorView(packed.data(), DType::U8, {20}), s, 32, QuantType::NF4, TensorView(bias.data(), DType::F32, {5}), TensorView(out.data(), DType::F32, {3, 4})); },
               ErrorKind::Value, {"bias", "must have 4", "one per output column"});
}

// gemm_4bit_grad: out [M, K] = G [M, N] @ W, W [N, K] packed; G [3, 4], out [3, 10] fit the 40-element weight.
TEST(Errors, Gemm4bitGradShapes) {
  std::vector<float> G(3 * 4), out(3 * 10, 7.0f);
  std::vector<uint8_t> packed(20);
  std::vector<float> absmax(2);
  const BlockScales s{TensorView(absmax.data(), DType::F32, {2}), std::nullopt};
  const TensorView P(packed.data(), DType::U8, {20});
  expect_error([&] { gemm_4bit_grad(TensorView(G.data(), DType::F32, {12}), P, s, 32, QuantType::NF4, TensorView(out.data(), DType::F32, {3, 10})); },
               ErrorKind::Value, {"gemm_4bit_grad", "G = float32 [12]", "2 dimensions"});
  expect_error([&] { gemm_4bit_grad(TensorView(G.data(), DType::F32, {3, 4}), P, s, 32, QuantType::NF4, TensorView(out.data(), DType::F32, {2, 10})); },
               ErrorKind::Value, {"out = float32 [2, 10]", "as many rows as G"});
  expect_error([&] { gemm_4bit_grad(TensorView(G.data(), DType::F32, {3, 4}), P, s, 32, QuantType::NF4, TensorView(out.data(), DType::F32, {3, 11})); },
               ErrorKind::Value, {"packed"});  // 44 weights need 22 bytes
  std::vector<uint16_t> out16(30);
  expect_error([&] { gemm_4bit_grad(TensorView(G.data(), DType::F32, {3, 4}), P, s, 32, QuantType::NF4, TensorView(out16.data(), DType::BF16, {3, 10})); },
               ErrorKind::Type, {"out.dtype = bfloat16", "must be float32"});
  expect_error([&] { gemm_4bit_grad(TensorView(G.data(), DType::F32, {3, 4}), P, s, 48, QuantType::NF4, TensorView(out.data(), DType::F32, {3, 10})); },
               ErrorKind::Value, {"blocksize = 48"});
  for (float v : out) ASSERT_EQ(v, 7.0f);  // nothing written
}

TEST(Errors, Blockwise8bitAndInt8) {
  std::vector<float> x(100), absmax(2), code(256);
  std::vector<uint8_t> q(100);
  expect_error([&] { quantize_blockwise(TensorView(x.data(), DType::F32, {100}), TensorView(code.data(), DType::F32, {256}), TensorView(q.data(), DType::U8, {100}), TensorView(absmax.data(), DType::F32, {2}), 0); },
               ErrorKind::Value, {"quantize_blockwise", "blocksize = 0", "must be positive"});
  expect_error([&] { quantize_blockwise(TensorView(x.data(), DType::F32, {100}), TensorView(code.data(), DType::F32, {16}), TensorView(q.data(), DType::U8, {100}), TensorView(absmax.data(), DType::F32, {2}), 64); },
               ErrorKind::Value, {"code", "16 elements", "must have 256"});
  expect_error([&] { dequantize_blockwise(TensorView(q.data(), DType::U8, {99}), TensorView(absmax.data(), DType::F32, {2}), TensorView(code.data(), DType::F32, {256}), 64, TensorView(x.data(), DType::F32, {100})); },
               ErrorKind::Value, {"codes", "99 elements", "must have 100"});
  std::vector<int8_t> ca(100);
  std::vector<float> stats(10);
  expect_error([&] { int8_vectorwise_quant(TensorView(x.data(), DType::F32, {10, 10}), -1.0f, TensorView(ca.data(), DType::I8, {10, 10}), TensorView(stats.data(), DType::F32, {10})); },
               ErrorKind::Value, {"threshold = -1", "must be >= 0"});
  std::vector<int32_t> acc(100);
  expect_error([&] { int8_linear_matmul(TensorView(ca.data(), DType::I8, {10, 10}), TensorView(ca.data(), DType::I8, {20, 5}), TensorView(acc.data(), DType::I32, {10, 20})); },
               ErrorKind::Value, {"B = int8 [20, 5]", "K = 10"});
  expect_error([&] { int8_mm_dequant(TensorView(acc.data(), DType::I32, {10, 10}), TensorView(stats.data(), DType::F32, {9}), TensorView(stats.data(), DType::F32, {10}), std::nullopt, TensorView(x.data(), DType::F32, {10, 10})); },
               ErrorKind::Value, {"row_stats", "9 elements", "one per row"});
  expect_error([&] { absmax_mean(TensorView(x.data(), DType::F32, {0})); }, ErrorKind::Value, {"absmax", "must not be empty"});
}

TEST(Errors, RuntimeSettings) {
  expect_error([] { set_num_threads(0); }, ErrorKind::Value, {"n = 0", ">= 1"});
  expect_error([] { set_cpu_isa("sse9"); }, ErrorKind::Value, {"'sse9'", "must be ref, avx2, avx512 or auto"});
  EXPECT_EQ(set_cpu_isa("ref"), "ref");
  EXPECT_EQ(cpu_isa(), "ref");
  set_cpu_isa("auto");
}

}  // namespace
}  // namespace nybble
