// cuda_vs_ref_test.cpp — every op of the CUDA backend against the CPU oracle (NYBBLE_CPU_ISA=ref),
// on fresh random inputs of awkward sizes (empty, one element, odd, not a multiple of the block,
// over 2^20, and one run past 2^31 elements), with special values, on a non-default stream, with
// aligned and misaligned buffers (vectorized and scalar paths). Codes, absmax and elementwise
// outputs must be identical (NaN matches any NaN: the GPU's NaN payload is not the CPU's); gemm
// outputs must lie within fp32 accumulation error of the exact sum. Device outputs are poisoned
// (0xFF) before each run. Every GPU test skips when no GPU is visible.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/backend.hpp"
#include "cuda_test_util.hpp"
#include "test_util.hpp"

namespace nybble {
namespace {

using Bytes = std::vector<uint8_t>;
using test::cuda_check, test::DeviceBuffer, test::download, test::upload;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

template <class T>
Bytes as_bytes(const std::vector<T>& v) {
  Bytes b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

bool is_nan_bits(DType t, const uint8_t* p) {
  if (t == DType::F32) {
    float f;
    std::memcpy(&f, p, 4);
    return std::isnan(f);
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return t == DType::F16 ? (h & 0x7C00) == 0x7C00 && (h & 0x3FF) : (h & 0x7F80) == 0x7F80 && (h & 0x7F);
}

// Same bytes, element by element of dtype t; for float dtypes any NaN matches any NaN.
::testing::AssertionResult same(DType t, const Bytes& ref, const Bytes& got) {
  if (ref.size() != got.size()) return ::testing::AssertionFailure() << "sizes " << ref.size() << " vs " << got.size();
  const size_t es = static_cast<size_t>(dtype_size(t));
  for (size_t i = 0; i < ref.size(); i += es) {
    if (std::memcmp(&ref[i], &got[i], es) == 0) continue;
    if (is_float_dtype(t) && is_nan_bits(t, &ref[i]) && is_nan_bits(t, &got[i])) continue;
    auto fail = ::testing::AssertionFailure();
    fail << "element " << i / es << " of " << ref.size() / es << " differs: cpu ";
    if (is_float_dtype(t)) fail << load_as_float(ref.data(), t, static_cast<int64_t>(i / es)) << " vs cuda "
                                << load_as_float(got.data(), t, static_cast<int64_t>(i / es));
    else fail << int{ref[i]} << " vs cuda " << int{got[i]};
    return fail;
  }
  return ::testing::AssertionSuccess();
}

// n values of dtype t: normal with the given scale (0: a random power of two in 2^-8..2^8); with
// specials, also zero runs, -0.0, NaN, ±Inf.
test::FloatBuffer make_input(DType t, int64_t n, std::mt19937_64& rng, bool specials, float scale = 0.0f) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  if (scale == 0.0f) scale = std::exp2(static_cast<float>(static_cast<int>(rng() % 17) - 8));
  test::FloatBuffer b(t, n);
  for (int64_t i = 0; i < n; ++i) b.set(i, normal(rng) * scale);
  if (specials && n > 0) {
    for (int64_t i = 0; i < n;) {  // zero runs, some long enough to zero whole blocks
      const int64_t len = static_cast<int64_t>(rng() % 200) + 1;
      if (rng() % 4 == 0)
        for (int64_t k = i; k < std::min(n, i + len); ++k) b.set(k, (rng() & 1) ? 0.0f : -0.0f);
      i += len;
    }
    const float specials_list[] = {kNaN, kInf, -kInf, -0.0f};
    for (int s = 0; s < 1 + static_cast<int>(n / 5000); ++s) b.set(static_cast<int64_t>(rng() % static_cast<uint64_t>(n)), specials_list[rng() % 4]);
  }
  return b;
}

Bytes random_bytes(size_t n, std::mt19937_64& rng) {
  Bytes b(n);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  return b;
}

std::vector<float> random_positive(int64_t n, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(0.01f, 3.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = u(rng);
  return v;
}

constexpr int64_t kSizes[] = {0, 1, 2, 3, 7, 31, 33, 63, 64, 65, 255, 257, 4095, 4097, 12291, 100003};
constexpr int64_t kLarge = (int64_t{1} << 20) + 5;

class CudaVsRef : public test::CudaStreamTest {
 protected:
  std::mt19937_64 rng_{test::test_seed()};
};

// ---- 4-bit -------------------------------------------------------------------------------------

TEST_F(CudaVsRef, Quantize4bit) {
  SCOPED_TRACE(test::seed_note());
  for (DType dt : test::kFloatTypes)
    for (QuantType qt : {QuantType::NF4, QuantType::FP4})
      for (int64_t bs : k4bitBlocksizes)
        for (int64_t n : kSizes) {
          for (size_t shift : {0, 1}) {
            if (shift && n % 7 != 0 && n != 4097) continue;  // the scalar paths on a few sizes
            SCOPED_TRACE(std::string(dtype_name(dt)) + " " + std::string(quant_type_name(qt)) + " bs " +
                         std::to_string(bs) + " n " + std::to_string(n) + " shift " + std::to_string(shift));
            const auto x = make_input(dt, n, rng_, (n + bs) % 3 != 0);
            const int64_t nb = num_blocks(n, bs), nbytes = packed_4bit_bytes(n);
            Bytes rp(static_cast<size_t>(nbytes), 0xFF), ra(static_cast<size_t>(nb) * 4, 0xFF);
            quantize_4bit(x.view(), TensorView(rp.data(), DType::U8, {nbytes}), TensorView(ra.data(), DType::F32, {nb}), bs, qt);
            const size_t es = static_cast<size_t>(dtype_size(dt));
            DeviceBuffer dx(x.bytes.size()), dp(rp.size()), da(ra.size());
            upload(dx, shift * es, x.bytes.data(), x.bytes.size());
            dp.poison();
            da.poison();
            quantize_4bit(gpu(dx, shift * es, dt, {n}), gpu(dp, shift, DType::U8, {nbytes}), gpu(da, shift * 4, DType::F32, {nb}), bs, qt);
            sync();
            ASSERT_TRUE(same(DType::U8, rp, download(dp, shift, rp.size())));
            ASSERT_TRUE(same(DType::F32, ra, download(da, shift * 4, ra.size())));
          }
        }
  for (DType dt : test::kFloatTypes) {  // one large run per dtype
    const auto x = make_input(dt, kLarge, rng_, true);
    const int64_t bs = 64, nb = num_blocks(kLarge, bs), nbytes = packed_4bit_bytes(kLarge);
    Bytes rp(static_cast<size_t>(nbytes)), ra(static_cast<size_t>(nb) * 4);
    quantize_4bit(x.view(), TensorView(rp.data(), DType::U8, {nbytes}), TensorView(ra.data(), DType::F32, {nb}), bs, QuantType::NF4);
    DeviceBuffer dx(x.bytes.size()), dp(rp.size()), da(ra.size());
    upload(dx, 0, x.bytes.data(), x.bytes.size());
    dp.poison();
    da.poison();
    quantize_4bit(gpu(dx, 0, dt, {kLarge}), gpu(dp, 0, DType::U8, {nbytes}), gpu(da, 0, DType::F32, {nb}), bs, QuantType::NF4);
    sync();
    EXPECT_TRUE(same(DType::U8, rp, download(dp, 0, rp.size())));
    EXPECT_TRUE(same(DType::F32, ra, download(da, 0, ra.size())));
  }
}

// Plain or nested scales for nb blocks, on the host and mirrored on the device.
struct Scales4 {
  bool nested;
  int64_t nested_bs = kNestedBlocksize;
  bool offset_on_device = false;
  Bytes absmax;  // f32 [nb] or u8 [nb]
  std::vector<float> nested_absmax;
  float offset = 0.0f;
  std::unique_ptr<DeviceBuffer> d_absmax, d_nested, d_code, d_offset;

  Scales4(int64_t nb, bool nest, int variant, std::mt19937_64& rng) : nested(nest) {
    if (!nested) {
      std::vector<float> a = random_positive(nb, rng);
      if (nb > 2) a[static_cast<size_t>(rng() % static_cast<uint64_t>(nb))] = 0.0f;  // an all-zero block
      absmax = as_bytes(a);
    } else {
      absmax = random_bytes(static_cast<size_t>(nb), rng);
      nested_bs = variant % 2 ? 100 : kNestedBlocksize;  // any positive nested blocksize is allowed
      nested_absmax = random_positive(num_blocks(nb, nested_bs), rng);
      offset = std::uniform_real_distribution<float>(-0.5f, 1.5f)(rng);
      offset_on_device = variant % 3 == 2;
    }
    d_absmax = std::make_unique<DeviceBuffer>(absmax.size());
    upload(*d_absmax, 0, absmax.data(), absmax.size());
    if (nested) {
      d_nested = std::make_unique<DeviceBuffer>(nested_absmax.size() * 4);
      upload(*d_nested, 0, nested_absmax.data(), nested_absmax.size() * 4);
      d_code = std::make_unique<DeviceBuffer>(1024);
      upload(*d_code, 0, dynamic_map_signed().data(), 1024);
      d_offset = std::make_unique<DeviceBuffer>(4);
      upload(*d_offset, 0, &offset, 4);
    }
  }
  BlockScales cpu(int64_t nb) const {
    if (!nested) return {TensorView(absmax.data(), DType::F32, {nb}), std::nullopt};
    return {TensorView(absmax.data(), DType::U8, {nb}),
            NestedAbsmax{TensorView(nested_absmax.data(), DType::F32, {static_cast<int64_t>(nested_absmax.size())}),
                         TensorView(dynamic_map_signed().data(), DType::F32, {256}), offset, nested_bs}};
  }
  BlockScales device(int64_t nb, const std::function<TensorView(const DeviceBuffer&, DType, std::initializer_list<int64_t>)>& view) const {
    if (!nested) return {view(*d_absmax, DType::F32, {nb}), std::nullopt};
    NestedAbsmax n{view(*d_nested, DType::F32, {static_cast<int64_t>(nested_absmax.size())}), view(*d_code, DType::F32, {256}),
                   offset_on_device ? 123.0f : offset, nested_bs};  // 123: must be ignored for offset_tensor
    if (offset_on_device) n.offset_tensor = view(*d_offset, DType::F32, {1});
    return {view(*d_absmax, DType::U8, {nb}), n};
  }
};

TEST_F(CudaVsRef, Dequantize4bit) {
  SCOPED_TRACE(test::seed_note());
  const auto view = [this](const DeviceBuffer& b, DType t, std::initializer_list<int64_t> s) { return gpu(b, 0, t, s); };
  int variant = 0;
  for (DType dt : test::kFloatTypes)
    for (QuantType qt : {QuantType::NF4, QuantType::FP4})
      for (int64_t bs : k4bitBlocksizes)
        for (int64_t n : kSizes)
          for (bool nested : {false, true}) {
            ++variant;
            const size_t shift = variant % 5 == 0 ? 1 : 0;
            SCOPED_TRACE(std::string(dtype_name(dt)) + " " + std::string(quant_type_name(qt)) + " bs " + std::to_string(bs) +
                         " n " + std::to_string(n) + (nested ? " nested" : "") + " shift " + std::to_string(shift));
            const int64_t nb = num_blocks(n, bs), nbytes = packed_4bit_bytes(n);
            const Bytes packed = random_bytes(static_cast<size_t>(nbytes), rng_);
            const Scales4 sc(nb, nested, variant, rng_);
            const size_t es = static_cast<size_t>(dtype_size(dt));
            Bytes ro(static_cast<size_t>(n) * es, 0xFF);
            dequantize_4bit(TensorView(packed.data(), DType::U8, {nbytes}), sc.cpu(nb), bs, qt, TensorView(ro.data(), dt, {n}));
            DeviceBuffer dp(packed.size()), dout(ro.size());
            upload(dp, shift, packed.data(), packed.size());
            dout.poison();
            dequantize_4bit(gpu(dp, shift, DType::U8, {nbytes}), sc.device(nb, view), bs, qt, gpu(dout, shift * es, dt, {n}));
            sync();
            ASSERT_TRUE(same(dt, ro, download(dout, shift * es, ro.size())));
          }
}

// ---- 8-bit blockwise ---------------------------------------------------------------------------

// The maps quantize_blockwise is tested with: both dynamic maps, a random ascending map, and a
// random unsorted map with repeats (the rule is defined for any map).
std::vector<Code8> test_maps(std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 0.5f);
  Code8 sorted, unsorted;
  for (auto& v : sorted) v = normal(rng);
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < 256; ++i) unsorted[i] = std::round(normal(rng) * 8.0f) / 8.0f;
  return {dynamic_map_signed(), dynamic_map_unsigned(), sorted, unsorted};
}

TEST_F(CudaVsRef, Blockwise8bit) {
  SCOPED_TRACE(test::seed_note());
  const auto maps = test_maps(rng_);
  int variant = 0;
  for (DType dt : test::kFloatTypes)
    for (int64_t bs : {1, 3, 7, 8, 16, 64, 100, 256, 1000, 4096, 5000})
      for (int64_t n : kSizes) {
        ++variant;
        const Code8& map = maps[static_cast<size_t>(variant) % maps.size()];
        const size_t shift = variant % 3 == 0 ? 1 : 0, es = static_cast<size_t>(dtype_size(dt));
        SCOPED_TRACE(std::string(dtype_name(dt)) + " bs " + std::to_string(bs) + " n " + std::to_string(n) + " map " +
                     std::to_string(variant % maps.size()) + " shift " + std::to_string(shift));
        const auto x = make_input(dt, n, rng_, variant % 2 == 0);
        const int64_t nb = num_blocks(n, bs);
        Bytes rq(static_cast<size_t>(n), 0xFF), ra(static_cast<size_t>(nb) * 4, 0xFF), ro(static_cast<size_t>(n) * es, 0xFF);
        const TensorView code_cpu(map.data(), DType::F32, {256});
        quantize_blockwise(x.view(), code_cpu, TensorView(rq.data(), DType::U8, {n}), TensorView(ra.data(), DType::F32, {nb}), bs);
        dequantize_blockwise(TensorView(rq.data(), DType::U8, {n}), TensorView(ra.data(), DType::F32, {nb}), code_cpu, bs,
                             TensorView(ro.data(), dt, {n}));
        DeviceBuffer dx(x.bytes.size()), dq(rq.size()), da(ra.size()), dcode(1024), dout(ro.size());
        upload(dx, shift * es, x.bytes.data(), x.bytes.size());
        upload(dcode, 0, map.data(), 1024);
        dq.poison();
        da.poison();
        dout.poison();
        const TensorView code_gpu = gpu(dcode, 0, DType::F32, {256});
        quantize_blockwise(gpu(dx, shift * es, dt, {n}), code_gpu, gpu(dq, shift, DType::U8, {n}), gpu(da, shift * 4, DType::F32, {nb}), bs);
        sync();
        ASSERT_TRUE(same(DType::U8, rq, download(dq, shift, rq.size())));
        ASSERT_TRUE(same(DType::F32, ra, download(da, shift * 4, ra.size())));
        // Dequantize the CPU's codes (identical, as just checked) on the GPU.
        dequantize_blockwise(gpu(dq, shift, DType::U8, {n}), gpu(da, shift * 4, DType::F32, {nb}), code_gpu, bs,
                             gpu(dout, shift * es, dt, {n}));
        sync();
        ASSERT_TRUE(same(dt, ro, download(dout, shift * es, ro.size())));
      }
  for (int64_t bs : {256, 4096, 5000}) {  // large runs
    const auto x = make_input(DType::BF16, kLarge, rng_, true);
    const int64_t nb = num_blocks(kLarge, bs);
    Bytes rq(static_cast<size_t>(kLarge)), ra(static_cast<size_t>(nb) * 4);
    quantize_blockwise(x.view(), TensorView(maps[0].data(), DType::F32, {256}), TensorView(rq.data(), DType::U8, {kLarge}),
                       TensorView(ra.data(), DType::F32, {nb}), bs);
    DeviceBuffer dx(x.bytes.size()), dq(rq.size()), da(ra.size()), dcode(1024);
    upload(dx, 0, x.bytes.data(), x.bytes.size());
    upload(dcode, 0, maps[0].data(), 1024);
    dq.poison();
    da.poison();
    quantize_blockwise(gpu(dx, 0, DType::BF16, {kLarge}), gpu(dcode, 0, DType::F32, {256}), gpu(dq, 0, DType::U8, {kLarge}),
                       gpu(da, 0, DType::F32, {nb}), bs);
    sync();
    EXPECT_TRUE(same(DType::U8, rq, download(dq, 0, rq.size()))) << "bs " << bs;
    EXPECT_TRUE(same(DType::F32, ra, download(da, 0, ra.size()))) << "bs " << bs;
  }
}

// ---- double quantization -----------------------------------------------------------------------

TEST_F(CudaVsRef, AbsmaxMeanAndNested) {
  SCOPED_TRACE(test::seed_note());
  const auto view = [this](const DeviceBuffer& b, DType t, std::initializer_list<int64_t> s) { return gpu(b, 0, t, s); };
  for (int64_t n : {int64_t{1}, int64_t{2}, int64_t{255}, int64_t{256}, int64_t{1023}, int64_t{1024}, int64_t{1025},
                    int64_t{4097}, int64_t{100003}, (int64_t{1} << 22) + 3}) {
    SCOPED_TRACE("n " + std::to_string(n));
    std::vector<float> a = random_positive(n, rng_);
    for (size_t i = 0; i < a.size(); i += 97) a[i] *= std::exp2(static_cast<float>(static_cast<int>(rng_() % 40) - 20));
    const TensorView ha(a.data(), DType::F32, {n});
    const float ref = absmax_mean(ha);
    DeviceBuffer da(a.size() * 4), dmean(4);
    upload(da, 0, a.data(), a.size() * 4);
    dmean.poison();
    const TensorView ga = gpu(da, 0, DType::F32, {n});
    EXPECT_EQ(float_bits(absmax_mean(ga)), float_bits(ref));  // the synchronizing form
    absmax_mean(ga, gpu(dmean, 0, DType::F32, {1}));
    sync();
    EXPECT_TRUE(same(DType::F32, as_bytes(std::vector<float>{ref}), download(dmean, 0, 4)));

    // Nested quantization with the offset as a float and as a device tensor.
    const int64_t nnb = num_blocks(n, kNestedBlocksize);
    Bytes rq(static_cast<size_t>(n), 0xFF), rn(static_cast<size_t>(nnb) * 4, 0xFF);
    quantize_absmax_nested(ha, ref, TensorView(rq.data(), DType::U8, {n}), TensorView(rn.data(), DType::F32, {nnb}));
    for (bool offset_tensor : {false, true}) {
      DeviceBuffer dq(rq.size()), dn(rn.size());
      dq.poison();
      dn.poison();
      if (offset_tensor)
        quantize_absmax_nested(ga, gpu(dmean, 0, DType::F32, {1}), gpu(dq, 0, DType::U8, {n}), gpu(dn, 0, DType::F32, {nnb}));
      else
        quantize_absmax_nested(ga, ref, gpu(dq, 0, DType::U8, {n}), gpu(dn, 0, DType::F32, {nnb}));
      sync();
      ASSERT_TRUE(same(DType::U8, rq, download(dq, 0, rq.size()))) << "offset tensor " << offset_tensor;
      ASSERT_TRUE(same(DType::F32, rn, download(dn, 0, rn.size()))) << "offset tensor " << offset_tensor;
    }
    // Decoding arbitrary nested scales.
    for (int variant : {0, 1, 2}) {
      Scales4 sc(n, true, variant, rng_);
      Bytes ro(static_cast<size_t>(n) * 4, 0xFF);
      const BlockScales cs = sc.cpu(n);
      dequantize_absmax_nested(cs.absmax, *cs.nested, TensorView(ro.data(), DType::F32, {n}));
      DeviceBuffer dout(ro.size());
      dout.poison();
      const BlockScales gs = sc.device(n, view);
      dequantize_absmax_nested(gs.absmax, *gs.nested, gpu(dout, 0, DType::F32, {n}));
      sync();
      ASSERT_TRUE(same(DType::F32, ro, download(dout, 0, ro.size()))) << "variant " << variant;
    }
  }
}

// ---- gemm_4bit ----------------------------------------------------------------------------------

// Relative precision of dtype t (2^-mantissa bits).
double precision(DType t) { return t == DType::F32 ? std::exp2(-23) : t == DType::F16 ? std::exp2(-10) : std::exp2(-7); }

struct GemmCase {
  DType dt;
  QuantType qt;
  int64_t M, N, K, bs;
  bool nested, bias;
  size_t shift;  // elements by which A is moved off 16-byte alignment
};

void run_gemm(const GemmCase& c, std::mt19937_64& rng,
              const std::function<TensorView(const DeviceBuffer&, size_t, DType, std::initializer_list<int64_t>)>& gpu,
              const std::function<void()>& sync) {
  SCOPED_TRACE(std::string(dtype_name(c.dt)) + " " + std::string(quant_type_name(c.qt)) + " M " + std::to_string(c.M) +
               " N " + std::to_string(c.N) + " K " + std::to_string(c.K) + " bs " + std::to_string(c.bs) +
               (c.nested ? " nested" : "") + (c.bias ? " bias" : "") + " shift " + std::to_string(c.shift));
  const int64_t n = c.N * c.K, nb = num_blocks(n, c.bs), nbytes = packed_4bit_bytes(n);
  const auto A = make_input(c.dt, c.M * c.K, rng, false, 1.0f);
  const auto bias = make_input(c.dt, c.N, rng, false, 1.0f);
  const Bytes packed = random_bytes(static_cast<size_t>(nbytes), rng);
  const Scales4 sc(nb, c.nested, static_cast<int>(rng() % 6), rng);
  const size_t es = static_cast<size_t>(dtype_size(c.dt));
  // The oracle, and the weight it multiplies by (w = code * scale in fp32) for the exact sum.
  Bytes ro(static_cast<size_t>(c.M * c.N) * es, 0xFF);
  const std::optional<TensorView> hb = c.bias ? std::optional<TensorView>(bias.view()) : std::nullopt;
  gemm_4bit(A.view({c.M, c.K}), TensorView(packed.data(), DType::U8, {nbytes}), sc.cpu(nb), c.bs, c.qt, hb,
            TensorView(ro.data(), c.dt, {c.M, c.N}));
  std::vector<float> W(static_cast<size_t>(n));
  dequantize_4bit(TensorView(packed.data(), DType::U8, {nbytes}), sc.cpu(nb), c.bs, c.qt, TensorView(W.data(), DType::F32, {n}));

  DeviceBuffer dA(A.bytes.size()), dp(packed.size()), dbias(bias.bytes.size()), dout(ro.size());
  upload(dA, c.shift * es, A.bytes.data(), A.bytes.size());
  upload(dp, 0, packed.data(), packed.size());
  upload(dbias, 0, bias.bytes.data(), bias.bytes.size());
  dout.poison();
  const auto view = [&](const DeviceBuffer& b, DType d, std::initializer_list<int64_t> s) { return gpu(b, 0, d, s); };
  const std::optional<TensorView> gb = c.bias ? std::optional<TensorView>(gpu(dbias, 0, c.dt, {c.N})) : std::nullopt;
  const TensorView gA = gpu(dA, c.shift * es, c.dt, {c.M, c.K}), gp = gpu(dp, 0, DType::U8, {nbytes});
  const BlockScales gsc = sc.device(nb, view);
  gemm_4bit(gA, gp, gsc, c.bs, c.qt, gb, gpu(dout, 0, c.dt, {c.M, c.N}));
  sync();
  const Bytes got = download(dout, 0, ro.size());
  // fp32 sums in any order lie within (depth + slack) * 2^-24 * sum|a w| of the exact sum; the
  // GPU's depth is 32 per chunk + one add per chunk of a lane + 5 shuffles. Then one rounding to T.
  // The skinny kernel (bf16/fp16 on aligned shapes, cuda/gemm4_skinny.cu) rounds each weight's code
  // to T: up to precision(T) / 2 of every product more (cuda_gemm4_mma_test.cpp tests it closely).
  const double depth_gpu = 32 + static_cast<double>(c.K) / 1024 + 16, depth_cpu = static_cast<double>(c.K) + 16;
  const double w_round = cuda::gemm4_skinny_applies(gA, gp, gsc, c.bs, c.N) ? precision(c.dt) / 2 : 0.0;
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t j = 0; j < c.N; ++j) {
      double exact = 0.0, mag = 0.0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double p = static_cast<double>(A.get(m * c.K + k)) * W[static_cast<size_t>(j * c.K + k)];
        exact += p;
        mag += std::fabs(p);
      }
      if (c.bias) {
        exact += bias.get(j);
        mag += std::fabs(bias.get(j));
      }
      const double g = load_as_float(got.data(), c.dt, m * c.N + j), r = load_as_float(ro.data(), c.dt, m * c.N + j);
      const double round_t = precision(c.dt) * std::fabs(exact) + 1e-7;
      ASSERT_LE(std::fabs(g - exact), (depth_gpu * std::exp2(-24) + w_round) * mag + round_t) << "out[" << m << ", " << j << "] cuda " << g << " exact " << exact;
      ASSERT_LE(std::fabs(g - r), ((depth_gpu + depth_cpu) * std::exp2(-24) + w_round) * mag + 2 * round_t) << "out[" << m << ", " << j << "] cuda " << g << " cpu " << r;
    }
}

TEST_F(CudaVsRef, Gemm4bit) {
  SCOPED_TRACE(test::seed_note());
  const auto gpu_view = [this](const DeviceBuffer& b, size_t off, DType t, std::initializer_list<int64_t> s) { return gpu(b, off, t, s); };
  const auto do_sync = [this] { sync(); };
  // Every row count the streaming kernel instantiates (and past them in fp32, which it keeps; bf16
  // and fp16 above 8 rows go to the tensor-core kernel, which rounds the weights to the activation
  // type: cuda_gemm4_mma_test.cpp).
  for (DType dt : test::kFloatTypes)
    for (int64_t M : {1, 2, 3, 4, 5, 6, 7, 8, 9, 17})
      if (M <= 8 || dt == DType::F32) run_gemm({dt, QuantType::NF4, M, 37, 99, 32, M % 2 == 1, M % 3 == 0, 0}, rng_, gpu_view, do_sync);
  // Shapes: K below a chunk, odd K (rows start mid-byte), K % 32 != 0, K = blocksize, large K.
  const int64_t shapes[][2] = {{1, 1}, {3, 31}, {5, 33}, {7, 64}, {16, 127}, {33, 200}, {9, 1024}, {64, 4096}, {20, 4133}};
  int variant = 0;
  for (DType dt : test::kFloatTypes)
    for (QuantType qt : {QuantType::NF4, QuantType::FP4})
      for (const auto& s : shapes)
        for (int64_t bs : {32, 64, 256, 4096}) {
          ++variant;
          const int64_t M = 1 + variant % 4;
          run_gemm({dt, qt, M, s[0], s[1], bs, variant % 3 == 0, variant % 2 == 0, variant % 5 == 0 ? size_t{1} : 0},
                   rng_, gpu_view, do_sync);
        }
  run_gemm({DType::BF16, QuantType::NF4, 1, 4096, 4096, 64, true, true, 0}, rng_, gpu_view, do_sync);
  run_gemm({DType::F16, QuantType::NF4, 8, 1024, 4096, 64, true, false, 0}, rng_, gpu_view, do_sync);
  run_gemm({DType::F32, QuantType::FP4, 3, 11, 0, 64, false, true, 0}, rng_, gpu_view, do_sync);  // K = 0: bias only
}

// ---- LLM.int8 -----------------------------------------------------------------------------------

TEST_F(CudaVsRef, Int8VectorwiseQuant) {
  SCOPED_TRACE(test::seed_note());
  const int64_t shapes[][2] = {{1, 1}, {1, 7}, {3, 5}, {4, 64}, {5, 1000}, {17, 4096}, {2, 28673}, {300, 33}, {1, 4096}, {64, 8}};
  int variant = 0;
  for (DType dt : test::kFloatTypes)
    for (const auto& s : shapes)
      for (float threshold : {0.0f, 2.5f}) {
        ++variant;
        const int64_t rows = s[0], cols = s[1], n = rows * cols;
        const size_t shift = variant % 4 == 0 ? 1 : 0, es = static_cast<size_t>(dtype_size(dt));
        SCOPED_TRACE(std::string(dtype_name(dt)) + " [" + std::to_string(rows) + ", " + std::to_string(cols) + "] threshold " +
                     std::to_string(threshold) + " shift " + std::to_string(shift));
        auto A = make_input(dt, n, rng_, variant % 3 == 0, 0.5f);
        for (int o = 0; o < 3; ++o) A.set(static_cast<int64_t>(rng_() % static_cast<uint64_t>(n)), 4.0f * ((rng_() & 1) ? 1.0f : -1.0f));
        Bytes rca(static_cast<size_t>(n), 0xFF), rst(static_cast<size_t>(rows) * 4, 0xFF), rout(static_cast<size_t>(cols), 0xFF);
        const TensorView hv = A.view({rows, cols});
        int8_vectorwise_quant(hv, threshold, TensorView(rca.data(), DType::I8, {rows, cols}), TensorView(rst.data(), DType::F32, {rows}),
                              TensorView(rout.data(), DType::U8, {cols}));
        DeviceBuffer dA(A.bytes.size()), dca(rca.size()), dst(rst.size()), dout(rout.size());
        upload(dA, shift * es, A.bytes.data(), A.bytes.size());
        dca.poison();
        dst.poison();
        dout.poison();
        int8_vectorwise_quant(gpu(dA, shift * es, dt, {rows, cols}), threshold, gpu(dca, shift, DType::I8, {rows, cols}),
                              gpu(dst, 0, DType::F32, {rows}), gpu(dout, 0, DType::U8, {cols}));
        sync();
        ASSERT_TRUE(same(DType::I8, rca, download(dca, shift, rca.size())));
        ASSERT_TRUE(same(DType::F32, rst, download(dst, 0, rst.size())));
        ASSERT_TRUE(same(DType::U8, rout, download(dout, 0, rout.size())));
        if (threshold == 0.0f) {  // outlier_cols may be left out without a threshold
          dca.poison();
          int8_vectorwise_quant(gpu(dA, shift * es, dt, {rows, cols}), threshold, gpu(dca, shift, DType::I8, {rows, cols}),
                                gpu(dst, 0, DType::F32, {rows}));
          sync();
          ASSERT_TRUE(same(DType::I8, rca, download(dca, shift, rca.size())));
        }
      }
}

TEST_F(CudaVsRef, Int8Dequant) {
  SCOPED_TRACE(test::seed_note());
  const int64_t shapes[][2] = {{1, 1}, {3, 5}, {4, 64}, {17, 1000}, {300, 33}, {2, 4097}, {1, 1 << 20}};
  int variant = 0;
  for (DType dt : test::kFloatTypes)
    for (const auto& s : shapes) {
      ++variant;
      const int64_t rows = s[0], cols = s[1], n = rows * cols;
      const size_t es = static_cast<size_t>(dtype_size(dt)), shift = variant % 3 == 0 ? 1 : 0;
      SCOPED_TRACE(std::string(dtype_name(dt)) + " [" + std::to_string(rows) + ", " + std::to_string(cols) + "] shift " + std::to_string(shift));
      // int8_vectorwise_dequant
      const Bytes ca = random_bytes(static_cast<size_t>(n), rng_);
      const std::vector<float> stats = random_positive(rows, rng_);
      Bytes ro(static_cast<size_t>(n) * es, 0xFF);
      int8_vectorwise_dequant(TensorView(ca.data(), DType::I8, {rows, cols}), TensorView(stats.data(), DType::F32, {rows}),
                              TensorView(ro.data(), dt, {rows, cols}));
      DeviceBuffer dca(ca.size()), dstats(stats.size() * 4), dout(ro.size());
      upload(dca, shift, ca.data(), ca.size());
      upload(dstats, 0, stats.data(), stats.size() * 4);
      dout.poison();
      int8_vectorwise_dequant(gpu(dca, shift, DType::I8, {rows, cols}), gpu(dstats, 0, DType::F32, {rows}), gpu(dout, shift * es, dt, {rows, cols}));
      sync();
      ASSERT_TRUE(same(dt, ro, download(dout, shift * es, ro.size())));
      // int8_mm_dequant, with and without a bias of every float dtype
      std::vector<int32_t> acc(static_cast<size_t>(n));
      for (auto& v : acc) v = static_cast<int32_t>(rng_() % 2000001) - 1000000;
      const std::vector<float> col_stats = random_positive(cols, rng_);
      DeviceBuffer dacc(acc.size() * 4), dcol(col_stats.size() * 4);
      upload(dacc, shift * 4, acc.data(), acc.size() * 4);
      upload(dcol, 0, col_stats.data(), col_stats.size() * 4);
      for (int b = 0; b < 4; ++b) {
        const DType bias_dt = b == 0 ? DType::F32 : test::kFloatTypes[b - 1];
        const auto bias = make_input(bias_dt, cols, rng_, false);
        DeviceBuffer dbias(bias.bytes.size());
        upload(dbias, 0, bias.bytes.data(), bias.bytes.size());
        const std::optional<TensorView> hb = b ? std::optional<TensorView>(bias.view()) : std::nullopt;
        const std::optional<TensorView> gb = b ? std::optional<TensorView>(gpu(dbias, 0, bias_dt, {cols})) : std::nullopt;
        Bytes rm(static_cast<size_t>(n) * es, 0xFF);
        int8_mm_dequant(TensorView(acc.data(), DType::I32, {rows, cols}), TensorView(stats.data(), DType::F32, {rows}),
                        TensorView(col_stats.data(), DType::F32, {cols}), hb, TensorView(rm.data(), dt, {rows, cols}));
        dout.poison();
        int8_mm_dequant(gpu(dacc, shift * 4, DType::I32, {rows, cols}), gpu(dstats, 0, DType::F32, {rows}),
                        gpu(dcol, 0, DType::F32, {cols}), gb, gpu(dout, shift * es, dt, {rows, cols}));
        sync();
        ASSERT_TRUE(same(dt, rm, download(dout, shift * es, rm.size()))) << "bias " << b;
      }
    }
}

TEST_F(CudaVsRef, Int8LinearMatmul) {
  SCOPED_TRACE(test::seed_note());
  // cuBLASLt shapes (K, N multiples of 4) and fallback shapes (anything else, or misaligned).
  const int64_t shapes[][3] = {{1, 1, 1},   {1, 4, 4},    {3, 5, 7},     {16, 64, 64},    {17, 100, 36}, {1, 4096, 4096},
                               {33, 256, 4096}, {64, 1024, 4096}, {5, 13, 4099}, {70, 130, 66}, {0, 4, 4}};
  int variant = 0;
  for (const auto& s : shapes) {
    ++variant;
    const int64_t M = s[0], N = s[1], K = s[2];
    const size_t shift = variant % 4 == 3 ? 1 : 0;
    SCOPED_TRACE("M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K) + " shift " + std::to_string(shift));
    const Bytes a = random_bytes(static_cast<size_t>(M * K), rng_), b = random_bytes(static_cast<size_t>(N * K), rng_);
    Bytes ro(static_cast<size_t>(M * N) * 4, 0xFF);
    int8_linear_matmul(TensorView(a.data(), DType::I8, {M, K}), TensorView(b.data(), DType::I8, {N, K}), TensorView(ro.data(), DType::I32, {M, N}));
    DeviceBuffer da(a.size()), db(b.size()), dout(ro.size());
    upload(da, shift, a.data(), a.size());
    upload(db, 0, b.data(), b.size());
    dout.poison();
    int8_linear_matmul(gpu(da, shift, DType::I8, {M, K}), gpu(db, 0, DType::I8, {N, K}), gpu(dout, 0, DType::I32, {M, N}));
    sync();
    ASSERT_TRUE(same(DType::I32, ro, download(dout, 0, ro.size())));
  }
}

// ---- past 2^31 elements ------------------------------------------------------------------------

// 8-bit and 4-bit dequantization into a 4 GiB bf16 buffer of 2^31 + 97 elements, then 8-bit and
// 4-bit quantization of it: samples around 2^31 and at the end against the oracle, block by block.
TEST_F(CudaVsRef, Beyond2To31Elements) {
  const int64_t n = (int64_t{1} << 31) + 97, bs = 4096, nb = num_blocks(n, bs);
  size_t free_bytes = 0, total = 0;
  cuda_check(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo");
  if (free_bytes < (size_t{10} << 30)) GTEST_SKIP() << "needs 10 GiB of free GPU memory";
  Bytes codes(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) codes[static_cast<size_t>(i)] = static_cast<uint8_t>((static_cast<uint64_t>(i) * 2654435761u) >> 13);
  std::vector<float> absmax(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) absmax[static_cast<size_t>(b)] = static_cast<float>(1 + b % 7);
  const Code8& map = dynamic_map_signed();
  DeviceBuffer dcodes(codes.size()), dabs(absmax.size() * 4), dcode(1024), dout(static_cast<size_t>(n) * 2);
  upload(dcodes, 0, codes.data(), codes.size());
  upload(dabs, 0, absmax.data(), absmax.size() * 4);
  upload(dcode, 0, map.data(), 1024);
  dout.poison();
  const TensorView gout = gpu(dout, 0, DType::BF16, {n});
  dequantize_blockwise(gpu(dcodes, 0, DType::U8, {n}), gpu(dabs, 0, DType::F32, {nb}), gpu(dcode, 0, DType::F32, {256}), bs, gout);
  sync();
  const int64_t samples[] = {0, (int64_t{1} << 31) - 1, int64_t{1} << 31, (int64_t{1} << 31) + 1, n - 1};
  for (int64_t i : samples) {
    const Bytes got = download(dout, static_cast<size_t>(i) * 2, 2);
    uint16_t g;
    std::memcpy(&g, got.data(), 2);
    EXPECT_EQ(g, float_to_bf16(map[codes[static_cast<size_t>(i)]] * absmax[static_cast<size_t>(i / bs)])) << "element " << i;
  }
  // Re-quantize (8-bit) on the GPU; each sampled block against the oracle on that block alone.
  DeviceBuffer dq(static_cast<size_t>(n)), dabs2(absmax.size() * 4);
  quantize_blockwise(gout, gpu(dcode, 0, DType::F32, {256}), gpu(dq, 0, DType::U8, {n}), gpu(dabs2, 0, DType::F32, {nb}), bs);
  sync();
  const auto check_block_8bit = [&](int64_t b) {
    const int64_t begin = b * bs, len = std::min(bs, n - begin);
    const Bytes x = download(dout, static_cast<size_t>(begin) * 2, static_cast<size_t>(len) * 2);
    Bytes rq(static_cast<size_t>(len));
    float ra = 0.0f;
    quantize_blockwise(TensorView(x.data(), DType::BF16, {len}), TensorView(map.data(), DType::F32, {256}),
                       TensorView(rq.data(), DType::U8, {len}), TensorView(&ra, DType::F32, {1}), bs);
    EXPECT_TRUE(same(DType::U8, rq, download(dq, static_cast<size_t>(begin), rq.size()))) << "block " << b;
    EXPECT_TRUE(same(DType::F32, as_bytes(std::vector<float>{ra}), download(dabs2, static_cast<size_t>(b) * 4, 4))) << "block " << b;
  };
  for (int64_t i : samples) check_block_8bit(i / bs);
  // 4-bit: dequantize the first n/2 code bytes as packed NF4 into the same buffer, quantize back.
  const int64_t nbytes4 = packed_4bit_bytes(n);
  dequantize_4bit(gpu(dcodes, 0, DType::U8, {nbytes4}), BlockScales{gpu(dabs, 0, DType::F32, {nb}), std::nullopt}, bs,
                  QuantType::NF4, gout);
  sync();
  for (int64_t i : samples) {
    const Bytes got = download(dout, static_cast<size_t>(i) * 2, 2);
    uint16_t g;
    std::memcpy(&g, got.data(), 2);
    EXPECT_EQ(g, float_to_bf16(kNF4Code[nibble_at(codes.data(), i)] * absmax[static_cast<size_t>(i / bs)])) << "4-bit element " << i;
  }
  quantize_4bit(gout, gpu(dq, 0, DType::U8, {nbytes4}), gpu(dabs2, 0, DType::F32, {nb}), bs, QuantType::NF4);
  sync();
  for (int64_t i : samples) {
    const int64_t b = i / bs, begin = b * bs, len = std::min(bs, n - begin);
    const Bytes x = download(dout, static_cast<size_t>(begin) * 2, static_cast<size_t>(len) * 2);
    Bytes rp(static_cast<size_t>(packed_4bit_bytes(len)));
    float ra = 0.0f;
    quantize_4bit(TensorView(x.data(), DType::BF16, {len}), TensorView(rp.data(), DType::U8, {static_cast<int64_t>(rp.size())}),
                  TensorView(&ra, DType::F32, {1}), bs, QuantType::NF4);
    EXPECT_TRUE(same(DType::U8, rp, download(dq, static_cast<size_t>(begin / 2), rp.size()))) << "4-bit block " << b;
    EXPECT_TRUE(same(DType::F32, as_bytes(std::vector<float>{ra}), download(dabs2, static_cast<size_t>(b) * 4, 4))) << "4-bit block " << b;
  }
}

// gemm_4bit with N * K > 2^31 weight elements: a few output columns against a double-precision sum.
TEST_F(CudaVsRef, Gemm4bitBeyond2To31Weights) {
  const int64_t N = 65536, K = 32769, n = N * K, bs = 64, nb = num_blocks(n, bs), nbytes = packed_4bit_bytes(n);
  size_t free_bytes = 0, total = 0;
  cuda_check(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo");
  if (free_bytes < (size_t{4} << 30)) GTEST_SKIP() << "needs 4 GiB of free GPU memory";
  const Bytes packed = random_bytes(static_cast<size_t>(nbytes), rng_);
  const std::vector<float> absmax = random_positive(nb, rng_);
  const auto A = make_input(DType::BF16, K, rng_, false, 1.0f);
  DeviceBuffer dA(A.bytes.size()), dp(packed.size()), dabs(absmax.size() * 4), dout(static_cast<size_t>(N) * 2);
  upload(dA, 0, A.bytes.data(), A.bytes.size());
  upload(dp, 0, packed.data(), packed.size());
  upload(dabs, 0, absmax.data(), absmax.size() * 4);
  dout.poison();
  gemm_4bit(gpu(dA, 0, DType::BF16, {1, K}), gpu(dp, 0, DType::U8, {nbytes}), BlockScales{gpu(dabs, 0, DType::F32, {nb}), std::nullopt},
            bs, QuantType::NF4, std::nullopt, gpu(dout, 0, DType::BF16, {1, N}));
  sync();
  const Bytes got = download(dout, 0, static_cast<size_t>(N) * 2);
  for (int64_t j : {int64_t{0}, int64_t{1}, N / 2 + 1, N - 2, N - 1}) {
    double exact = 0.0, mag = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t i = j * K + k;
      const double p = static_cast<double>(A.get(k)) * (kNF4Code[nibble_at(packed.data(), i)] * absmax[static_cast<size_t>(i / bs)]);
      exact += p;
      mag += std::fabs(p);
    }
    const double g = load_as_float(got.data(), DType::BF16, j);
    EXPECT_LE(std::fabs(g - exact), 96 * std::exp2(-24) * mag + precision(DType::BF16) * std::fabs(exact)) << "column " << j;
  }
}

// ---- argument rules of GPU calls (no GPU needed: core rejects these before any CUDA call) --------

TEST(CudaArguments, OneDeviceAndOneStreamPerCall) {
  std::vector<float> x(64), absmax(1);
  std::vector<uint8_t> packed(32);
  TensorView gx(x.data(), DType::F32, {64}, Device::CUDA), gp(packed.data(), DType::U8, {32}, Device::CUDA),
      ga(absmax.data(), DType::F32, {1}, Device::CUDA);
  const auto expect = [](const std::function<void()>& f, std::initializer_list<std::string> fragments) {
    try {
      f();
      ADD_FAILURE() << "no error thrown";
    } catch (const Error& e) {
      for (const auto& s : fragments) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << "'" << s << "' not in: " << e.what();
    }
  };
  expect([&] { quantize_4bit(gx, TensorView(packed.data(), DType::U8, {32}), ga, 64, QuantType::NF4); },
         {"quantize_4bit", "packed = uint8 [32] on cpu", "same device as A = float32 [64] on cuda:0"});
  TensorView other = ga;
  other.device_index = 1;
  expect([&] { quantize_4bit(gx, gp, other, 64, QuantType::NF4); }, {"absmax = float32 [1] on cuda:1", "same device as A"});
  TensorView streamed = gp;
  streamed.stream = reinterpret_cast<void*>(uintptr_t{0x10});
  expect([&] { quantize_4bit(gx, streamed, ga, 64, QuantType::NF4); }, {"packed", "another stream than A"});
  std::vector<int8_t> ca(64);
  std::vector<float> stats(8);
  expect([&] {
    int8_vectorwise_quant(TensorView(x.data(), DType::F32, {8, 8}, Device::CUDA), 6.0f, TensorView(ca.data(), DType::I8, {8, 8}, Device::CUDA),
                          TensorView(stats.data(), DType::F32, {8}, Device::CUDA));
  }, {"int8_vectorwise_quant", "outlier_cols", "must be given for GPU tensors"});
}

}  // namespace
}  // namespace nybble
