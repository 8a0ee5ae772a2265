// formats.cpp — the 8-bit dynamic maps, generated exactly as the reference generates them.
//
// create_dynamic_map (§1.3) builds, for exponent i = 0..6, fraction_items = 2^i + 1 (signed) or
// 2^(i+1) + 1 (unsigned) fp32 boundaries b = torch.linspace(0.1, 1, fraction_items), their fp32
// midpoints (b[j] + b[j+1]) / 2, and the values 10^(i-6) * mid (fp32 multiply), plus their
// negatives when signed; then 0 and 1.0, sorted. torch's fp32 linspace evaluates
// start + step * j for the first half and end - step * (steps - 1 - j) for the second, each with
// a single rounding (fused multiply-add), where step = (end - start) / (steps - 1) in fp32.
// Verified bit for bit against the reference's maps in the golden file.
#include <algorithm>
#include <cmath>
#include <vector>

#include "nybble/formats.hpp"

namespace nybble {
namespace {

std::vector<float> torch_linspace_f32(float start, float end, int steps) {
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int halfway = steps / 2;
  std::vector<float> v(static_cast<size_t>(steps));
  for (int j = 0; j < steps; ++j)
    v[static_cast<size_t>(j)] = j < halfway ? std::fma(step, static_cast<float>(j), start)
                                            : std::fma(-step, static_cast<float>(steps - 1 - j), end);
  return v;
}

}  // namespace

Code8 create_dynamic_map(bool is_signed) {
  // 10^(i-6) as Python evaluates it (a correctly rounded double), then rounded to fp32 by torch.
  constexpr double kDecade[7] = {1e-06, 1e-05, 1e-04, 1e-03, 1e-02, 1e-01, 1.0};
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int items = is_signed ? (1 << i) + 1 : (1 << (i + 1)) + 1;
    const std::vector<float> b = torch_linspace_f32(0.1f, 1.0f, items);
    const float scale = static_cast<float>(kDecade[i]);
    for (size_t j = 0; j + 1 < b.size(); ++j) {
      const float mid = (b[j] + b[j + 1]) / 2.0f;
      data.push_back(scale * mid);
      if (is_signed) data.push_back(-scale * mid);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  Code8 out{};
  std::copy(data.begin(), data.end(), out.begin());  // 256 entries by construction
  return out;
}

const Code8& dynamic_map_signed() {
  static const Code8 m = create_dynamic_map(true);
  return m;
}

const Code8& dynamic_map_unsigned() {
  static const Code8 m = create_dynamic_map(false);
  return m;
}

}  // namespace nybble
