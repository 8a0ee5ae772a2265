// threads_test.cpp — results do not depend on the number of worker threads.
#include <gtest/gtest.h>

#include "test_util.hpp"

namespace nybble {
namespace {

using test::FloatBuffer;

// Runs every op once and returns all output bytes concatenated.
std::vector<uint8_t> run_all_ops(uint64_t seed) {
  std::vector<uint8_t> all;
  auto append = [&](const void* p, size_t n) { all.insert(all.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n); };
  const int64_t n = 300007, bs = 64, nb = num_blocks(n, bs);
  const FloatBuffer x = test::randn(DType::BF16, n, seed);
  std::vector<uint8_t> packed(static_cast<size_t>(packed_4bit_bytes(n)));
  std::vector<float> absmax(static_cast<size_t>(nb));
  quantize_4bit(x.view(), TensorView(packed.data(), DType::U8, {static_cast<int64_t>(packed.size())}), TensorView(absmax.data(), DType::F32, {nb}), bs, QuantType::NF4);
  append(packed.data(), packed.size());
  append(absmax.data(), absmax.size() * 4);
  FloatBuffer deq(DType::BF16, n);
  dequantize_4bit(TensorView(packed.data(), DType::U8, {static_cast<int64_t>(packed.size())}), BlockScales{TensorView(absmax.data(), DType::F32, {nb}), std::nullopt}, bs, QuantType::NF4, deq.view());
  append(deq.bytes.data(), deq.bytes.size());
  std::vector<uint8_t> q8(static_cast<size_t>(n));
  std::vector<float> am8(static_cast<size_t>(num_blocks(n, 256)));
  quantize_blockwise(x.view(), TensorView(dynamic_map_signed().data(), DType::F32, {256}), TensorView(q8.data(), DType::U8, {n}), TensorView(am8.data(), DType::F32, {static_cast<int64_t>(am8.size())}), 256);
  append(q8.data(), q8.size());
  // gemm_4bit: W = the first N*K elements' codes, A random.
  const int64_t M = 5, K = 1000, N = 150;
  const FloatBuffer A = test::randn(DType::F32, M * K, seed + 1);
  std::vector<float> out(static_cast<size_t>(M * N));
  gemm_4bit(A.view({M, K}), TensorView(packed.data(), DType::U8, {N * K / 2}), BlockScales{TensorView(absmax.data(), DType::F32, {num_blocks(N * K, bs)}), std::nullopt}, bs, QuantType::NF4, std::nullopt, TensorView(out.data(), DType::F32, {M, N}));
  append(out.data(), out.size() * 4);
  std::vector<int8_t> CA(static_cast<size_t>(M * K));
  std::vector<float> rs(static_cast<size_t>(M));
  std::vector<uint8_t> cols(static_cast<size_t>(K));
  int8_vectorwise_quant(A.view({M, K}), 1.5f, TensorView(CA.data(), DType::I8, {M, K}), TensorView(rs.data(), DType::F32, {M}), TensorView(cols.data(), DType::U8, {K}));
  append(CA.data(), CA.size());
  append(cols.data(), cols.size());
  std::vector<int32_t> acc(static_cast<size_t>(M * M));
  int8_linear_matmul(TensorView(CA.data(), DType::I8, {M, K}), TensorView(CA.data(), DType::I8, {M, K}), TensorView(acc.data(), DType::I32, {M, M}));
  append(acc.data(), acc.size() * 4);
  return all;
}

TEST(Threads, OneThreadAndManyGiveIdenticalBytes) {
  SCOPED_TRACE(test::seed_note());
  const int original = get_num_threads();
  set_num_threads(1);
  const auto one = run_all_ops(test::test_seed());
  set_num_threads(original);
  const auto all_cores = run_all_ops(test::test_seed());
  set_num_threads(7);  // more threads than cores: uneven chunks
  const auto seven = run_all_ops(test::test_seed());
  set_num_threads(original);
  EXPECT_EQ(one, all_cores);
  EXPECT_EQ(one, seven);
}

}  // namespace
}  // namespace nybble
