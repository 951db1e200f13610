#include "model/numerics_sim.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace ds4::model {
namespace {

// 2^ceil(log2(r)) for r > 0, exact (frexp avoids log2 rounding at powers of two).
float pow2_ceil(float r) {
  int e = 0;
  const float m = std::frexp(r, &e);  // r = m * 2^e, m in [0.5, 1)
  return std::ldexp(1.0f, m == 0.5f ? e - 1 : e);
}

constexpr float kE2M1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

}  // namespace

float e4m3_round(float v) {
  const float a = std::fabs(v);
  // Step of the E4M3 grid at |v|: 3 mantissa bits in normal binades (exponent >= -6),
  // subnormal step 2^-9 below 2^-6.
  float step = std::ldexp(1.0f, -9);
  if (a >= std::ldexp(1.0f, -6)) {
    int e = 0;
    std::frexp(a, &e);  // a in [2^(e-1), 2^e)
    step = std::ldexp(1.0f, e - 1 - 3);
  }
  float q = std::nearbyint(a / step) * step;  // round-half-even on the mantissa = even code
  q = std::min(q, 448.0f);
  return std::copysign(q, v);
}

float e2m1_round(float v) {
  const float a = std::min(std::fabs(v), 6.0f);
  int best = 0;
  for (int c = 1; c < 8; ++c) {
    const float dc = std::fabs(a - kE2M1[c]), db = std::fabs(a - kE2M1[best]);
    if (dc < db || (dc == db && (c % 2 == 0) && (best % 2 != 0))) best = c;
  }
  return std::copysign(kE2M1[best], v);
}

void fp8_roundtrip(float* x, int64_t n, int64_t block) {
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t b1 = std::min(n, b0 + block);
    float amax = 0.0f;
    for (int64_t i = b0; i < b1; ++i) amax = std::max(amax, std::fabs(x[i]));
    amax = std::max(amax, 1e-4f);
    const float s = pow2_ceil(amax / 448.0f);
    for (int64_t i = b0; i < b1; ++i)
      x[i] = s * e4m3_round(std::clamp(x[i] / s, -448.0f, 448.0f));
  }
}

void fp4_roundtrip(float* x, int64_t n, int64_t block) {
  const float floor_amax = 6.0f * std::ldexp(1.0f, -126);
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t b1 = std::min(n, b0 + block);
    float amax = 0.0f;
    for (int64_t i = b0; i < b1; ++i) amax = std::max(amax, std::fabs(x[i]));
    amax = std::max(amax, floor_amax);
    const float s = pow2_ceil(amax / 6.0f);
    for (int64_t i = b0; i < b1; ++i)
      x[i] = s * e2m1_round(std::clamp(x[i] / s, -6.0f, 6.0f));
  }
}

void hadamard(float* x, int64_t n) {
  if (n <= 0 || (n & (n - 1)) != 0) fail("Hadamard transform needs a power-of-two size, got {}", n);
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  const float scale = 1.0f / std::sqrt(static_cast<float>(n));
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

}  // namespace ds4::model
