// bench_common.cpp — buffers, random fills, cache size and the shared large inputs.
#include "bench_common.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <random>
#include <thread>
#include <vector>

namespace nybble::bench {

// ---- Buffer ------------------------------------------------------------------------------------

namespace {
constexpr size_t kAlign = 4096;
}

Buffer::Buffer(size_t bytes) : n_(bytes) {
  const size_t rounded = std::max<size_t>(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  p_ = std::aligned_alloc(kAlign, rounded);
  if (!p_) throw std::bad_alloc();
}
Buffer::~Buffer() { std::free(p_); }
Buffer::Buffer(Buffer&& o) noexcept : p_(o.p_), n_(o.n_) {
  o.p_ = nullptr;
  o.n_ = 0;
}
Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    std::free(p_);
    p_ = o.p_;
    n_ = o.n_;
    o.p_ = nullptr;
    o.n_ = 0;
  }
  return *this;
}

// ---- threads and fills -------------------------------------------------------------------------

void split_threads(int64_t n, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  threads = std::max(1, threads);
  const int64_t per = (n + threads - 1) / threads;
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads));
  for (int t = 1; t < threads; ++t) {
    const int64_t b = std::min(n, per * t), e = std::min(n, per * (t + 1));
    if (b < e) pool.emplace_back(fn, b, e);
  }
  fn(0, std::min(n, per));
  for (auto& th : pool) th.join();
}

namespace {

uint64_t run_seed() {
  static const uint64_t seed = [] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }();
  return seed;
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Irwin-Hall sum of four 16-bit uniforms, rescaled to mean 0 and variance 1.
float approx_normal(uint64_t r) {
  float s = 0.0f;
  for (int k = 0; k < 4; ++k) s += static_cast<float>((r >> (16 * k)) & 0xFFFF) + 0.5f;
  return (s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

std::atomic<uint64_t> g_fill_counter{0};

}  // namespace

void fill_randn(const Buffer& b, DType t, int64_t n, float scale) {
  const uint64_t base = run_seed() ^ (g_fill_counter.fetch_add(1) * 0xD1B54A32D192ED03ull);
  split_threads(n, [&](int64_t b0, int64_t b1) {
    uint64_t s = base ^ (static_cast<uint64_t>(b0) * 0x2545F4914F6CDD1Dull);
    for (int64_t i = b0; i < b1; ++i) {
      const float v = approx_normal(splitmix64(s)) * scale;
      switch (t) {
        case DType::F32: b.as<float>()[i] = v; break;
        case DType::F16: b.as<uint16_t>()[i] = float_to_half(v); break;
        case DType::BF16: b.as<uint16_t>()[i] = float_to_bf16(v); break;
        default: std::abort();
      }
    }
  });
}

void fill_random_bytes(const Buffer& b) {
  const uint64_t base = run_seed() ^ (g_fill_counter.fetch_add(1) * 0xD1B54A32D192ED03ull);
  const auto words = static_cast<int64_t>(b.size() / 8);
  split_threads(words, [&](int64_t b0, int64_t b1) {
    uint64_t s = base ^ (static_cast<uint64_t>(b0) * 0x2545F4914F6CDD1Dull);
    for (int64_t i = b0; i < b1; ++i) b.as<uint64_t>()[i] = splitmix64(s);
  });
  for (size_t i = static_cast<size_t>(words) * 8; i < b.size(); ++i)
    b.as<uint8_t>()[i] = static_cast<uint8_t>(i * 131u + 7u);
}

void prefault(const Buffer& b) {
  split_threads(static_cast<int64_t>(b.size()), [&](int64_t b0, int64_t b1) {
    std::memset(b.as<uint8_t>() + b0, 0x5A, static_cast<size_t>(b1 - b0));
  });
}

// ---- sizes -------------------------------------------------------------------------------------

int64_t l3_bytes() {
  static const int64_t l3 = [] {
    int64_t v = 0;
#ifdef _SC_LEVEL3_CACHE_SIZE
    v = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    if (v <= 0) {
      std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index3/size");
      std::string s;
      if (f >> s && !s.empty()) {
        v = std::atoll(s.c_str());
        if (s.back() == 'K') v <<= 10;
        if (s.back() == 'M') v <<= 20;
      }
    }
    return v > 0 ? v : int64_t{32} << 20;
  }();
  return l3;
}

int64_t mem_elems() {
  static const int64_t n = [] {
    if (const char* e = std::getenv("NYBBLE_BENCH_ELEMS")) {
      const int64_t v = std::atoll(e);
      if (v >= 4096) return v / 4096 * 4096;
    }
    int64_t v = int64_t{64} << 20;
    while (2 * v < 2 * l3_bytes()) v *= 2;
    return v;
  }();
  return n;
}

int64_t rotation_copies(int64_t bytes) {
  return std::max<int64_t>(1, (2 * l3_bytes() + bytes - 1) / bytes);
}

std::string human_count(int64_t n) {
  if (n >= (int64_t{1} << 30) && n % (int64_t{1} << 30) == 0) return std::to_string(n >> 30) + "Gi";
  if (n >= (int64_t{1} << 20) && n % (int64_t{1} << 20) == 0) return std::to_string(n >> 20) + "Mi";
  return std::to_string(n);
}

TensorView signed_map_view() {
  return TensorView(dynamic_map_signed().data(), DType::F32, {256});
}

// ---- the shared inputs -------------------------------------------------------------------------

Store& store() {
  static Store s = [] {
    Store st;
    const int64_t n = mem_elems();
    st.n = n;
    st.src_bf16 = Buffer(static_cast<size_t>(n) * 2);
    fill_randn(st.src_bf16, DType::BF16, n);
    st.dst_bf16 = Buffer(static_cast<size_t>(n) * 2);
    prefault(st.dst_bf16);

    const int64_t nb4 = num_blocks(n, k4bitBlock), nb8 = num_blocks(n, k8bitBlock);
    const int64_t nnested = num_blocks(nb4, kNestedBlocksize);
    st.packed = Buffer(static_cast<size_t>(packed_4bit_bytes(n)));
    st.absmax = Buffer(static_cast<size_t>(nb4) * 4);
    st.qabsmax = Buffer(static_cast<size_t>(nb4));
    st.nested_absmax = Buffer(static_cast<size_t>(nnested) * 4);
    st.codes8 = Buffer(static_cast<size_t>(n));
    st.absmax8 = Buffer(static_cast<size_t>(nb8) * 4);
    for (const Buffer* b : {&st.packed, &st.absmax, &st.qabsmax, &st.nested_absmax, &st.codes8, &st.absmax8})
      prefault(*b);

    const TensorView A(st.src_bf16.data(), DType::BF16, {n});
    const TensorView absmax(st.absmax.data(), DType::F32, {nb4});
    quantize_4bit(A, TensorView(st.packed.data(), DType::U8, {packed_4bit_bytes(n)}), absmax, k4bitBlock,
                  QuantType::NF4);
    st.offset = absmax_mean(absmax);
    quantize_absmax_nested(absmax, st.offset, TensorView(st.qabsmax.data(), DType::U8, {nb4}),
                           TensorView(st.nested_absmax.data(), DType::F32, {nnested}));
    quantize_blockwise(A, signed_map_view(), TensorView(st.codes8.data(), DType::U8, {n}),
                       TensorView(st.absmax8.data(), DType::F32, {nb8}), k8bitBlock);
    return st;
  }();
  return s;
}

}  // namespace nybble::bench
