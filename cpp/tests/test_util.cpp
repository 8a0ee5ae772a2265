#include "test_util.hpp"

namespace nybble::test {

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
