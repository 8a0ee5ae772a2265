// cpu_vs_ref_matmul_test.cpp — the AVX2 matmul-family kernels (gemm_4bit, int8_quant_rows,
// int8_matmul, int8_mm_dequant) against the scalar oracle, called through the kernel tables on
// fresh random inputs of awkward sizes; then the public API under ISA and thread-count changes.
//
// gemm_4bit may differ from the oracle by fp32 reassociation only:
//   |got - ref| <= 1e-5 * sum_k |A[m,k] * W[n,k]| + tiny (+ one output rounding for f16/bf16).
// The int8 kernels must match bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "cpu/kernels.hpp"
#include "test_util.hpp"

namespace nybble {
namespace {

using test::FloatBuffer;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// The AVX2 table, or null (with the reason in *why) when it cannot run here.
const cpu::Kernels* avx2_or_null(std::string* why) {
  const cpu::Kernels* k = cpu::avx2_kernels();
  if (!k) {
    *why = "the AVX2 kernel set is not compiled into this build";
    return nullptr;
  }
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c")) {
    *why = "this CPU lacks avx2/fma/f16c";
    return nullptr;
  }
  return k;
}

#define NYBBLE_REQUIRE_AVX2(k)                   \
  std::string why_;                              \
  const cpu::Kernels* k = avx2_or_null(&why_);   \
  if (!k) GTEST_SKIP() << why_;                  \
  SCOPED_TRACE(test::seed_note())

// ---- gemm_4bit ------------------------------------------------------------------------------------

struct Gemm4Case {
  int64_t M, N, K, bs;
  QuantType qt;
  bool nested, bias;
  DType dt;
};

std::string describe(const Gemm4Case& c) {
  return "M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) +
         " bs=" + std::to_string(c.bs) + " " + std::string(quant_type_name(c.qt)) +
         (c.nested ? " nested" : " plain") + (c.bias ? " bias " : " no-bias ") + std::string(dtype_name(c.dt));
}

// Random inputs of one case, kept alive together.
struct Gemm4Inputs {
  FloatBuffer A, bias;
  std::vector<uint8_t> packed, qabsmax;
  std::vector<float> absmax, nested_absmax;
  cpu::Scales scales;

  Gemm4Inputs(const Gemm4Case& c, uint64_t seed)
      : A(test::randn(c.dt, c.M * c.K, seed)), bias(test::randn(c.dt, c.N, seed + 1)) {
    std::mt19937_64 rng(seed + 2);
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> pos(0.05f, 2.0f);
    const int64_t n = c.N * c.K, nb = num_blocks(n, c.bs);
    packed.resize(static_cast<size_t>(packed_4bit_bytes(n)));
    for (auto& b : packed) b = static_cast<uint8_t>(byte(rng));
    if (c.nested) {
      qabsmax.resize(static_cast<size_t>(nb));
      for (auto& q : qabsmax) q = static_cast<uint8_t>(byte(rng));
      nested_absmax.resize(static_cast<size_t>(num_blocks(nb, kNestedBlocksize)));
      for (auto& v : nested_absmax) v = pos(rng);
      scales.qabsmax = qabsmax.data();
      scales.nested_absmax = nested_absmax.data();
      scales.nested_code = dynamic_map_signed().data();
      scales.offset = std::uniform_real_distribution<float>(-0.5f, 1.5f)(rng);
    } else {
      absmax.resize(static_cast<size_t>(nb));
      for (auto& v : absmax) v = pos(rng);
      scales.absmax = absmax.data();
    }
  }

  cpu::Gemm4Args args(const Gemm4Case& c, void* out) const {
    return cpu::Gemm4Args{A.bytes.data(), c.dt, c.M, c.N, c.K, packed.data(), scales, c.bs, c.qt,
                          c.bias ? bias.bytes.data() : nullptr, out};
  }

  // sum_k |A[m, k] * W[n, k]| + |bias[n]|, the scale of the reassociation error.
  double magnitude(const Gemm4Case& c, int64_t m, int64_t nn) const {
    const auto& code = code_table(c.qt);
    double s = c.bias ? std::fabs(static_cast<double>(bias.get(nn))) : 0.0;
    for (int64_t k = 0; k < c.K; ++k) {
      const int64_t i = nn * c.K + k;
      const float w = code[nibble_at(packed.data(), i)] * scales(i / c.bs);
      s += std::fabs(static_cast<double>(A.get(m * c.K + k)) * w);
    }
    return s;
  }
};

double output_eps(DType dt) {
  switch (dt) {
    case DType::BF16: return 1.0 / 128;   // one bf16 ulp, relative
    case DType::F16: return 1.0 / 1024;   // one f16 ulp, relative
    default: return 0.0;
  }
}

// Runs one case through both tables (the AVX2 one split over [n0, n1) chunks when `split`);
// returns the number of mismatches (and records the first few as failures).
// `tweak` may edit the inputs first (e.g. plant non-finite scales).
int check_gemm4(const cpu::Kernels& avx2, const Gemm4Case& c, uint64_t seed, bool split = false,
                const std::function<void(Gemm4Inputs&)>& tweak = {}) {
  Gemm4Inputs in(c, seed);
  if (tweak) tweak(in);
  FloatBuffer ref(c.dt, c.M * c.N), got(c.dt, c.M * c.N);
  cpu::ref_kernels().gemm_4bit(in.args(c, ref.bytes.data()), 0, c.N);
  if (split) {
    std::mt19937_64 rng(seed + 9);
    int64_t n0 = 0;
    while (n0 < c.N) {
      const int64_t n1 = std::min<int64_t>(c.N, n0 + 1 + static_cast<int64_t>(rng() % 40));
      avx2.gemm_4bit(in.args(c, got.bytes.data()), n0, n1);
      n0 = n1;
    }
  } else {
    avx2.gemm_4bit(in.args(c, got.bytes.data()), 0, c.N);
  }
  const double eps = output_eps(c.dt);
  int bad = 0;
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t n = 0; n < c.N; ++n) {
      const double r = ref.get(m * c.N + n), g = got.get(m * c.N + n);
      if (!std::isfinite(r)) {  // NaN stays NaN, +-Inf the same Inf
        if (!((std::isnan(r) && std::isnan(g)) || r == g) && ++bad <= 3)
          ADD_FAILURE() << describe(c) << ": out[" << m << ", " << n << "] = " << g << ", oracle " << r;
        continue;
      }
      const double mag = in.magnitude(c, m, n);
      const double tol = 1e-5 * mag * (1 + eps) + eps * std::fabs(r) + 1e-7;
      if (!(std::fabs(g - r) <= tol)) {
        if (++bad <= 3)
          ADD_FAILURE() << describe(c) << ": out[" << m << ", " << n << "] = " << g << ", oracle " << r
                        << ", tolerance " << tol;
      }
    }
  return bad;
}

// Every M x N x K of the awkward grid; blocksize, format, scales, bias and dtype cycle over the
// cases so that each value meets many shapes.
TEST(CpuVsRefMatmul, Gemm4bitAwkwardShapes) {
  NYBBLE_REQUIRE_AVX2(k);
  const int64_t Ms[] = {1, 2, 3, 5, 16, 17, 33};
  const int64_t Ns[] = {1, 3, 8, 31, 64, 65};
  const int64_t Ks[] = {1, 2, 3, 31, 32, 63, 64, 65, 127, 255, 256, 257, 1000, 4097};
  uint64_t idx = 0;
  int cases = 0;
  for (int64_t M : Ms)
    for (int64_t N : Ns)
      for (int64_t K : Ks) {
        ++idx;
        const Gemm4Case c{M, N, K, k4bitBlocksizes[(idx * 5) % k4bitBlocksizes.size()],
                          (idx / 3) % 2 ? QuantType::FP4 : QuantType::NF4, (idx / 6) % 2 == 1,
                          (idx / 12) % 2 == 1, test::kFloatTypes[idx % 3]};
        ASSERT_EQ(check_gemm4(*k, c, test::test_seed() + idx * 101), 0) << describe(c);
        ++cases;
      }
  EXPECT_EQ(cases, 7 * 6 * 14);
}

// Every blocksize x format x scale kind x dtype, on shapes where blocks straddle rows (K not a
// multiple of the blocksize, odd K), on aligned shapes, and on both kernel paths (M <= 3, M >= 4).
TEST(CpuVsRefMatmul, Gemm4bitEveryBlocksizeFormatAndDtype) {
  NYBBLE_REQUIRE_AVX2(k);
  uint64_t idx = 0;
  for (int64_t bs : k4bitBlocksizes)
    for (QuantType qt : {QuantType::NF4, QuantType::FP4})
      for (bool nested : {false, true})
        for (DType dt : test::kFloatTypes) {
          const int64_t shapes[][3] = {{1, 65, 4097}, {17, 31, 1000}, {4, 8, 3 * bs}, {2, 3, 2 * bs + 1},
                                       {6, 5, bs / 2 + 6}};
          for (const auto& s : shapes) {
            ++idx;
            const Gemm4Case c{s[0], s[1], s[2], bs, qt, nested, idx % 2 == 0, dt};
            ASSERT_EQ(check_gemm4(*k, c, test::test_seed() + 7777 + idx * 31), 0) << describe(c);
          }
        }
}

// Several M-blocks, N-panels and k-chunks at once, and the kernel called over uneven [n0, n1).
TEST(CpuVsRefMatmul, Gemm4bitLargeTilesAndSplitColumns) {
  NYBBLE_REQUIRE_AVX2(k);
  const Gemm4Case cases[] = {
      {130, 400, 600, 64, QuantType::NF4, false, true, DType::F32},
      {129, 390, 515, 128, QuantType::FP4, true, true, DType::BF16},
      {3, 777, 1030, 32, QuantType::NF4, true, false, DType::F16},
      {40, 100, 1537, 256, QuantType::NF4, false, true, DType::BF16},
  };
  uint64_t idx = 0;
  for (const auto& c : cases) {
    ++idx;
    EXPECT_EQ(check_gemm4(*k, c, test::test_seed() + 555 * idx, false), 0) << describe(c);
    EXPECT_EQ(check_gemm4(*k, c, test::test_seed() + 555 * idx, true), 0) << describe(c) << " (split)";
  }
}

// Blocks whose scale is Inf, NaN or 0: the oracle's weights code * scale are then NaN (code 0.0 *
// Inf), +-Inf or 0, and every kernel path must give the same NaN / Inf outputs.
TEST(CpuVsRefMatmul, Gemm4bitNonFiniteAndZeroScales) {
  NYBBLE_REQUIRE_AVX2(k);
  uint64_t idx = 0;
  for (int64_t M : {1, 2, 5})
    for (int64_t K : {64, 72, 65, 512})
      for (bool nested : {false, true}) {
        ++idx;
        const Gemm4Case c{M, 9, K, 32, idx % 2 ? QuantType::FP4 : QuantType::NF4, nested, true, DType::F32};
        const auto tweak = [&](Gemm4Inputs& in) {
          if (!nested) {
            for (size_t b = 0; b < in.absmax.size(); ++b)
              in.absmax[b] = b % 5 == 1 ? kInf : b % 5 == 2 ? kNaN : b % 5 == 3 ? 0.0f : in.absmax[b];
          } else {
            in.nested_absmax[0] = kInf;  // every block of nested block 0: +-Inf or NaN
          }
        };
        ASSERT_EQ(check_gemm4(*k, c, test::test_seed() + 4242 + idx, false, tweak), 0) << describe(c);
        // All products positive except one code 0.0 per 32 weights: a kernel that scaled a sum of
        // A * code by Inf would give +Inf where the oracle's 0.0 * Inf makes the output NaN.
        const auto positive = [&](Gemm4Inputs& in) {
          for (int64_t i = 0; i < in.A.size(); ++i) in.A.set(i, 1.0f);
          const uint8_t one = c.qt == QuantType::NF4 ? 15 : 3, zero = zero_code(c.qt);
          for (int64_t i = 0; i < c.N * c.K; ++i) {
            const uint8_t v = i % 32 == 5 ? zero : one;
            uint8_t& byte = in.packed[static_cast<size_t>(i / 2)];
            byte = static_cast<uint8_t>(i % 2 ? (byte & 0xF0) | v : (byte & 0x0F) | (v << 4));
          }
          if (!nested)
            for (size_t b = 0; b < in.absmax.size(); ++b) in.absmax[b] = b % 3 == 1 ? kInf : 1.0f;
          else
            in.nested_absmax[0] = kInf;
        };
        ASSERT_EQ(check_gemm4(*k, c, test::test_seed() + 4343 + idx, false, positive), 0) << describe(c) << " (positive)";
      }
}

// gemm_4bit_grad (the oracle, which the AVX2 table shares): out[m, k] = sum_n G[m, n] W[n, k] with
// the fp32 weights, against the exact (double) sum, through the public call (columns split over
// threads), on awkward shapes: odd K (rows start mid-byte), blocks straddling rows, N of one.
TEST(CpuVsRefMatmul, Gemm4bitGradIsTheTransposedProduct) {
  SCOPED_TRACE(test::seed_note());
  const int64_t shapes[][3] = {{1, 1, 1}, {3, 5, 77}, {17, 64, 130}, {2, 300, 257}, {33, 31, 1000}};
  uint64_t idx = 0;
  for (const auto& sh : shapes)
    for (DType dt : test::kFloatTypes) {
      ++idx;
      const int64_t M = sh[0], N = sh[1], K = sh[2];
      const Gemm4Case c{M, N, K, k4bitBlocksizes[idx % k4bitBlocksizes.size()], idx % 2 ? QuantType::FP4 : QuantType::NF4,
                        idx % 3 == 0, false, dt};
      SCOPED_TRACE(describe(c));
      const Gemm4Inputs in(c, test::test_seed() + idx * 13);
      const FloatBuffer G = test::randn(dt, M * N, test::test_seed() + idx * 17);
      FloatBuffer out(dt, M * K);
      const BlockScales scales =
          c.nested ? BlockScales{TensorView(in.qabsmax.data(), DType::U8, {static_cast<int64_t>(in.qabsmax.size())}),
                                 NestedAbsmax{TensorView(in.nested_absmax.data(), DType::F32,
                                                         {static_cast<int64_t>(in.nested_absmax.size())}),
                                              TensorView(dynamic_map_signed().data(), DType::F32, {256}),
                                              in.scales.offset, kNestedBlocksize}}
                   : BlockScales{TensorView(in.absmax.data(), DType::F32, {static_cast<int64_t>(in.absmax.size())}),
                                 std::nullopt};
      gemm_4bit_grad(G.view({M, N}), TensorView(in.packed.data(), DType::U8, {static_cast<int64_t>(in.packed.size())}),
                     scales, c.bs, c.qt, out.view({M, K}));
      const auto& code = code_table(c.qt);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < K; ++k) {
          double ref = 0.0, mag = 0.0;
          for (int64_t n = 0; n < N; ++n) {
            const int64_t i = n * K + k;
            const double p = static_cast<double>(G.get(m * N + n)) * (code[nibble_at(in.packed.data(), i)] * in.scales(i / c.bs));
            ref += p;
            mag += std::fabs(p);
          }
          ASSERT_NEAR(out.get(m * K + k), ref, 1e-5 * mag + output_eps(dt) * std::fabs(ref) + 1e-30)
              << "out[" << m << ", " << k << "]";
        }
    }
}

// The kernel's result for a column does not depend on the [n0, n1) split: identical bytes.
TEST(CpuVsRefMatmul, Gemm4bitSplitGivesIdenticalBytes) {
  NYBBLE_REQUIRE_AVX2(k);
  for (int64_t M : {1, 3, 4, 17}) {
    const Gemm4Case c{M, 97, 333, 64, QuantType::NF4, true, true, DType::F32};
    const Gemm4Inputs in(c, test::test_seed() + static_cast<uint64_t>(M));
    FloatBuffer whole(c.dt, c.M * c.N), parts(c.dt, c.M * c.N);
    k->gemm_4bit(in.args(c, whole.bytes.data()), 0, c.N);
    for (int64_t n0 = 0; n0 < c.N; n0 += 10) k->gemm_4bit(in.args(c, parts.bytes.data()), n0, std::min<int64_t>(c.N, n0 + 10));
    EXPECT_EQ(whole.bytes, parts.bytes) << describe(c);
  }
}

// ---- int8_matmul ----------------------------------------------------------------------------------

std::vector<int8_t> random_i8(int64_t n, std::mt19937_64& rng, int mode) {
  std::vector<int8_t> v(static_cast<size_t>(n));
  std::uniform_int_distribution<int> d(-128, 127);
  for (auto& x : v) {
    if (mode == 1) x = -128;                           // largest products, all positive
    else if (mode == 2) x = (rng() & 1) ? int8_t{127} : int8_t{-128};  // extremes
    else x = static_cast<int8_t>(d(rng));
  }
  return v;
}

void check_int8_matmul(const cpu::Kernels& avx2, int64_t M, int64_t N, int64_t K, uint64_t seed, int mode = 0) {
  std::mt19937_64 rng(seed);
  const auto A = random_i8(M * K, rng, mode), B = random_i8(N * K, rng, mode);
  std::vector<int32_t> ref(static_cast<size_t>(M * N), -1), got(static_cast<size_t>(M * N), -2);
  cpu::ref_kernels().int8_matmul(A.data(), B.data(), ref.data(), M, N, K, 0, N);
  // Uneven column chunks, as the thread pool may hand them out.
  for (int64_t n0 = 0; n0 < N;) {
    const int64_t n1 = std::min<int64_t>(N, n0 + 1 + static_cast<int64_t>(rng() % 50));
    avx2.int8_matmul(A.data(), B.data(), got.data(), M, N, K, n0, n1);
    n0 = n1;
  }
  ASSERT_EQ(ref, got) << "M=" << M << " N=" << N << " K=" << K << " mode=" << mode;
}

TEST(CpuVsRefMatmul, Int8MatmulAwkwardShapesBitExact) {
  NYBBLE_REQUIRE_AVX2(k);
  const int64_t Ms[] = {1, 2, 3, 5, 16, 17, 33};
  const int64_t Ns[] = {1, 3, 8, 31, 64, 65};
  const int64_t Ks[] = {1, 2, 3, 15, 16, 17, 31, 32, 33, 63, 100, 255, 1023, 1024, 1025, 3000};
  uint64_t idx = 0;
  for (int64_t M : Ms)
    for (int64_t N : Ns)
      for (int64_t K : Ks) check_int8_matmul(*k, M, N, K, test::test_seed() + ++idx);
}

TEST(CpuVsRefMatmul, Int8MatmulLargeTilesAndExtremesBitExact) {
  NYBBLE_REQUIRE_AVX2(k);
  check_int8_matmul(*k, 130, 400, 1100, test::test_seed() + 1);
  check_int8_matmul(*k, 7, 13, 4099, test::test_seed() + 2, 1);  // -128 * -128 everywhere
  check_int8_matmul(*k, 9, 29, 2049, test::test_seed() + 3, 2);  // only -128 and 127
  check_int8_matmul(*k, 1, 1000, 77, test::test_seed() + 4);
}

// ---- int8_quant_rows ------------------------------------------------------------------------------

// Runs both tables over rows [0, rows) (the AVX2 one in two parts) and compares all outputs bitwise.
void check_quant_rows(const cpu::Kernels& avx2, const FloatBuffer& A, int64_t rows, int64_t cols, float threshold,
                      const std::string& what) {
  std::vector<int8_t> ca_ref(static_cast<size_t>(rows * cols), 99), ca_got(static_cast<size_t>(rows * cols), 98);
  std::vector<float> rs_ref(static_cast<size_t>(rows), -1.0f), rs_got(static_cast<size_t>(rows), -2.0f);
  std::vector<uint8_t> mask_ref(static_cast<size_t>(cols), 0), mask_got(static_cast<size_t>(cols), 0);
  uint8_t* mref = threshold > 0 ? mask_ref.data() : nullptr;
  uint8_t* mgot = threshold > 0 ? mask_got.data() : nullptr;
  cpu::ref_kernels().int8_quant_rows(A.bytes.data(), A.dtype, cols, threshold, ca_ref.data(), rs_ref.data(), mref, 0, rows);
  const int64_t half = rows / 2;
  avx2.int8_quant_rows(A.bytes.data(), A.dtype, cols, threshold, ca_got.data(), rs_got.data(), mgot, 0, half);
  avx2.int8_quant_rows(A.bytes.data(), A.dtype, cols, threshold, ca_got.data(), rs_got.data(), mgot, half, rows);
  const std::string where = what + " rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) +
                            " threshold=" + std::to_string(threshold) + " " + std::string(dtype_name(A.dtype));
  EXPECT_EQ(ca_ref, ca_got) << where;
  EXPECT_EQ(0, std::memcmp(rs_ref.data(), rs_got.data(), rs_ref.size() * 4)) << where;
  EXPECT_EQ(mask_ref, mask_got) << where;
}

TEST(CpuVsRefMatmul, Int8QuantRowsRandomBitExact) {
  NYBBLE_REQUIRE_AVX2(k);
  uint64_t idx = 0;
  for (DType dt : test::kFloatTypes)
    for (int64_t rows : {1, 3, 17})
      for (int64_t cols : {1, 7, 8, 9, 31, 64, 100, 1000, 4097})
        for (float threshold : {0.0f, 1.5f, 3.0f}) {
          const FloatBuffer A = test::randn(dt, rows * cols, test::test_seed() + ++idx);
          check_quant_rows(*k, A, rows, cols, threshold, "randn");
        }
}

TEST(CpuVsRefMatmul, Int8QuantRowsSpecialValuesAndTiesBitExact) {
  NYBBLE_REQUIRE_AVX2(k);
  std::mt19937_64 rng(test::test_seed());
  for (DType dt : test::kFloatTypes)
    for (int64_t cols : {5, 8, 16, 37, 64}) {
      const int64_t rows = 8;
      FloatBuffer A(dt, rows * cols);
      // Row 0: max 127, so x * 127 / 127 = x exactly and the k + 0.5 values are ties.
      // Row 1: max 254: odd integers give exact halves (2k+1) * 127 / 254 = k + 0.5.
      // Row 2: NaN and -0.0 mixed with values; Row 3: +-Inf; Row 4: all zero (stat 0 -> codes 0);
      // Row 5: every element an outlier at threshold 1; Rows 6, 7: random with NaN sprinkled.
      const float ties[] = {0.5f, -0.5f, 1.5f, -1.5f, 2.5f, -2.5f, 126.5f, -125.5f, 63.5f, 3.5f};
      for (int64_t j = 0; j < cols; ++j) {
        const auto J = static_cast<size_t>(j);
        A.set(0 * cols + j, j == cols - 1 ? 127.0f : ties[J % 10]);
        A.set(1 * cols + j, j == 0 ? -254.0f : static_cast<float>(2 * static_cast<int>(rng() % 127) + 1));
        A.set(2 * cols + j, j % 3 == 0 ? kNaN : (j % 3 == 1 ? -0.0f : static_cast<float>(j) * 0.37f - 3.0f));
        A.set(3 * cols + j, j % 4 == 0 ? kInf : (j % 4 == 1 ? -kInf : static_cast<float>(j)));
        A.set(4 * cols + j, 0.0f);
        A.set(5 * cols + j, j % 2 ? 5.0f : -7.0f);
        A.set(6 * cols + j, (rng() % 7 == 0) ? kNaN : std::normal_distribution<float>(0.0f, 2.0f)(rng));
        A.set(7 * cols + j, (rng() % 5 == 0) ? -kNaN : std::normal_distribution<float>(0.0f, 1.0f)(rng));
      }
      for (float threshold : {0.0f, 1.0f, 2.5f, 6.0f, 200.0f}) check_quant_rows(*k, A, rows, cols, threshold, "special");
    }
}

// ---- int8_mm_dequant ------------------------------------------------------------------------------

TEST(CpuVsRefMatmul, Int8MmDequantBitExact) {
  NYBBLE_REQUIRE_AVX2(k);
  std::mt19937_64 rng(test::test_seed());
  std::uniform_int_distribution<int32_t> acc_dist(std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max());
  std::uniform_int_distribution<int32_t> small(-300000, 300000);
  std::uniform_real_distribution<float> stat(0.0f, 40.0f);
  for (int64_t rows : {1, 3, 17})
    for (int64_t N : {1, 7, 8, 9, 65, 300}) {
      std::vector<int32_t> acc(static_cast<size_t>(rows * N));
      for (size_t i = 0; i < acc.size(); ++i) acc[i] = i % 3 == 0 ? acc_dist(rng) : (i % 7 == 0 ? 0 : small(rng));
      std::vector<float> rs(static_cast<size_t>(rows)), cs(static_cast<size_t>(N));
      for (auto& v : rs) v = stat(rng);
      for (auto& v : cs) v = stat(rng);
      rs[0] = rows > 1 ? 1e-30f : rs[0];  // tiny products: f16 subnormals and underflow
      if (N > 2) {
        cs[1] = kInf;  // Inf * 0 -> NaN when acc is 0, else +-Inf
        cs[2] = 0.0f;
      }
      for (DType out_dt : test::kFloatTypes)
        for (int bias_kind = 0; bias_kind < 4; ++bias_kind) {
          const bool has_bias = bias_kind > 0;
          const DType bias_dt = has_bias ? test::kFloatTypes[bias_kind - 1] : DType::F32;
          const FloatBuffer bias = test::randn(bias_dt, N, rng(), 3.0f);
          FloatBuffer ref(out_dt, rows * N), got(out_dt, rows * N);
          const void* b = has_bias ? bias.bytes.data() : nullptr;
          cpu::ref_kernels().int8_mm_dequant(acc.data(), rs.data(), cs.data(), b, bias_dt, ref.bytes.data(), out_dt, N, 0, rows);
          k->int8_mm_dequant(acc.data(), rs.data(), cs.data(), b, bias_dt, got.bytes.data(), out_dt, N, 0, rows / 2);
          k->int8_mm_dequant(acc.data(), rs.data(), cs.data(), b, bias_dt, got.bytes.data(), out_dt, N, rows / 2, rows);
          EXPECT_EQ(ref.bytes, got.bytes) << "rows=" << rows << " N=" << N << " out " << dtype_name(out_dt)
                                          << " bias " << (has_bias ? dtype_name(bias_dt) : "none");
        }
    }
}

// ---- public API -----------------------------------------------------------------------------------

// Outputs of gemm_4bit (two shapes), int8_vectorwise_quant, int8_linear_matmul and int8_mm_dequant
// through the public API, with the kernel set and thread count in effect.
struct ApiOutputs {
  std::vector<FloatBuffer> gemm;
  std::vector<uint8_t> ca, cols;
  std::vector<float> rs;
  std::vector<int32_t> acc;
  FloatBuffer deq{DType::BF16, 0};
};

ApiOutputs run_api(uint64_t seed) {
  ApiOutputs o;
  const int64_t N = 203, K = 520, bs = 64, n = N * K, nb = num_blocks(n, bs);
  const FloatBuffer W = test::randn(DType::F32, n, seed);
  std::vector<uint8_t> packed(static_cast<size_t>(packed_4bit_bytes(n)));
  std::vector<float> absmax(static_cast<size_t>(nb));
  const TensorView pv(packed.data(), DType::U8, {static_cast<int64_t>(packed.size())});
  quantize_4bit(W.view(), pv, TensorView(absmax.data(), DType::F32, {nb}), bs, QuantType::NF4);
  const FloatBuffer bias = test::randn(DType::BF16, N, seed + 1);
  for (int64_t M : {1, 16, 37}) {
    const FloatBuffer A = test::randn(DType::BF16, M * K, seed + 2 + static_cast<uint64_t>(M));
    FloatBuffer out(DType::BF16, M * N);
    gemm_4bit(A.view({M, K}), pv, BlockScales{TensorView(absmax.data(), DType::F32, {nb}), std::nullopt}, bs,
              QuantType::NF4, bias.view({N}), out.view({M, N}));
    o.gemm.push_back(out);
  }
  const int64_t M = 21;
  const FloatBuffer A = test::randn(DType::F16, M * K, seed + 3);
  o.ca.resize(static_cast<size_t>(M * K));
  o.rs.resize(static_cast<size_t>(M));
  o.cols.resize(static_cast<size_t>(K));
  int8_vectorwise_quant(A.view({M, K}), 2.0f, TensorView(o.ca.data(), DType::I8, {M, K}), TensorView(o.rs.data(), DType::F32, {M}),
                        TensorView(o.cols.data(), DType::U8, {K}));
  const FloatBuffer Bf = test::randn(DType::F32, N * K, seed + 4);
  std::vector<int8_t> CB(static_cast<size_t>(N * K));
  std::vector<float> cs(static_cast<size_t>(N));
  int8_vectorwise_quant(Bf.view({N, K}), 0.0f, TensorView(CB.data(), DType::I8, {N, K}), TensorView(cs.data(), DType::F32, {N}));
  o.acc.resize(static_cast<size_t>(M * N));
  int8_linear_matmul(TensorView(o.ca.data(), DType::I8, {M, K}), TensorView(CB.data(), DType::I8, {N, K}),
                     TensorView(o.acc.data(), DType::I32, {M, N}));
  o.deq = FloatBuffer(DType::BF16, M * N);
  int8_mm_dequant(TensorView(o.acc.data(), DType::I32, {M, N}), TensorView(o.rs.data(), DType::F32, {M}),
                  TensorView(cs.data(), DType::F32, {N}), bias.view({N}), o.deq.view({M, N}));
  return o;
}

TEST(CpuVsRefMatmul, PublicApiRefAndAvx2Agree) {
  NYBBLE_REQUIRE_AVX2(k);
  (void)k;
  set_cpu_isa("ref");
  const ApiOutputs ref = run_api(test::test_seed());
  ASSERT_EQ(set_cpu_isa("avx2"), "avx2");
  const ApiOutputs got = run_api(test::test_seed());
  set_cpu_isa("auto");
  EXPECT_EQ(ref.ca, got.ca);
  EXPECT_EQ(ref.cols, got.cols);
  EXPECT_EQ(0, std::memcmp(ref.rs.data(), got.rs.data(), ref.rs.size() * 4));
  EXPECT_EQ(ref.acc, got.acc);
  EXPECT_EQ(ref.deq.bytes, got.deq.bytes);
  // gemm_4bit: bf16 outputs of the same fp32 sums up to reassociation; K = 520 values of size ~1
  // give sums whose reassociation error is far below one bf16 ulp of the larger of the two.
  for (size_t g = 0; g < ref.gemm.size(); ++g)
    for (int64_t i = 0; i < ref.gemm[g].size(); ++i) {
      const float r = ref.gemm[g].get(i), v = got.gemm[g].get(i);
      EXPECT_LE(std::fabs(r - v), std::max(std::fabs(r), 1.0f) / 64) << "gemm " << g << " element " << i;
    }
}

TEST(CpuVsRefMatmul, PublicApiOneThreadAndDefaultGiveIdenticalBytes) {
  NYBBLE_REQUIRE_AVX2(k);
  (void)k;
  const int original = get_num_threads();
  set_cpu_isa("avx2");
  set_num_threads(1);
  const ApiOutputs one = run_api(test::test_seed());
  set_num_threads(original);
  const ApiOutputs many = run_api(test::test_seed());
  set_cpu_isa("auto");
  for (size_t g = 0; g < one.gemm.size(); ++g) EXPECT_EQ(one.gemm[g].bytes, many.gemm[g].bytes) << "gemm " << g;
  EXPECT_EQ(one.ca, many.ca);
  EXPECT_EQ(one.acc, many.acc);
  EXPECT_EQ(one.deq.bytes, many.deq.bytes);
}

}  // namespace
}  // namespace nybble
