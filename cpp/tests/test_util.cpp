#include "test_util.hpp"

#include <cstdlib>

namespace nybble::test {

uint64_t test_seed() {
  static const uint64_t seed = [] {
    if (const char* env = std::getenv("NYBBLE_TEST_SEED")) return static_cast<uint64_t>(std::strtoull(env, nullptr, 10));
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }();
  return seed;
}

std::string seed_note() { return "replay with NYBBLE_TEST_SEED=" + std::to_string(test_seed()); }

FloatBuffer randn(DType t, int64_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  FloatBuffer b(t, n);
  for (int64_t i = 0; i < n; ++i) b.set(i, dist(rng));
  return b;
}

FloatBuffer rand01(DType t, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(0.0f, 1.0f);
  FloatBuffer b(t, n);
  for (int64_t i = 0; i < n; ++i) b.set(i, dist(rng));
  return b;
}

}  // namespace nybble::test
