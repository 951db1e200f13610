// Shared helpers for the quant tests: seeded data generators and error metrics.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/ggml_type.h"
#include "quant/quant.h"

namespace ds4::quant::testing {

enum class Dist { Gaussian, Uniform, GaussianOutliers, Tiny, ZeroBlocks };

inline const char* dist_name(Dist d) {
  switch (d) {
    case Dist::Gaussian: return "gaussian";
    case Dist::Uniform: return "uniform";
    case Dist::GaussianOutliers: return "gaussian+outliers";
    case Dist::Tiny: return "tiny";
    case Dist::ZeroBlocks: return "zero-blocks";
  }
  return "?";
}

// n values from `d` with a fixed seed. GaussianOutliers: N(0,1) with 0.2% of values times 8
// (sparse outliers, as in the [N] measurement set of formats.md). Tiny: N(0,1) * 1e-5. ZeroBlocks: N(0,1) with every
// other 256-element block zeroed.
inline std::vector<float> make_data(Dist d, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_real_distribution<float> p(0.0f, 1.0f);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) {
    switch (d) {
      case Dist::Gaussian: x[i] = g(rng); break;
      case Dist::Uniform: x[i] = u(rng); break;
      case Dist::GaussianOutliers: x[i] = g(rng) * (p(rng) < 0.002f ? 8.0f : 1.0f); break;
      case Dist::Tiny: x[i] = g(rng) * 1e-5f; break;
      case Dist::ZeroBlocks: x[i] = (i / 256) % 2 ? 0.0f : g(rng); break;
    }
  }
  return x;
}

// A positive log-normal importance vector, exp(spread * N(0,1)), like imatrix columns.
inline std::vector<float> make_importance(size_t n, uint32_t seed, float spread = 0.5f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> w(n);
  for (auto& v : w) v = std::exp(spread * g(rng));
  return w;
}

// sqrt(sum (x-y)^2 / sum x^2), optionally weighted per column (period = ncols).
inline double rel_rmse(const std::vector<float>& x, const std::vector<float>& y,
                       const std::vector<float>* w = nullptr) {
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double wi = w ? (*w)[i % w->size()] : 1.0;
    num += wi * (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
    den += wi * double(x[i]) * x[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Quantizes [nrows, ncols] with quantize_rows and decodes it back.
inline std::vector<float> round_trip(GgmlType t, const std::vector<float>& x, int64_t ncols,
                                     const float* importance, std::vector<uint8_t>* bytes = nullptr) {
  const int64_t nrows = static_cast<int64_t>(x.size()) / ncols;
  std::vector<uint8_t> q(row_bytes(t, ncols) * static_cast<size_t>(nrows) + 16);
  quantize_rows(t, x.data(), q.data(), nrows, ncols, importance);
  std::vector<float> y(x.size());
  for (int64_t r = 0; r < nrows; ++r)
    dequantize_row(t, q.data() + r * row_bytes(t, ncols), y.data() + r * ncols, ncols);
  if (bytes) {
    q.resize(row_bytes(t, ncols) * static_cast<size_t>(nrows));
    *bytes = std::move(q);
  }
  return y;
}

}  // namespace ds4::quant::testing

namespace ds4::quant::testing {

// Bit-reproducible test data from integer arithmetic only (no libm, no std distributions,
// whose algorithms differ between standard libraries), for golden-hash tests.
// Values: approximately N(0,1) (Irwin-Hall sum of 4 uniforms), 1 in 256 scaled by 8.
inline std::vector<float> portable_data(size_t n, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  auto next = [&s]() {  // splitmix64
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  std::vector<float> x(n);
  for (auto& v : x) {
    const uint64_t r = next();
    float sum = 0.0f;
    for (int k = 0; k < 4; ++k) sum += static_cast<float>((r >> (16 * k)) & 0xFFFF) * (1.0f / 65536.0f);
    v = (sum - 2.0f) * 1.7320508f;  // variance 4/12 -> 1
    if ((next() & 0xFF) == 0) v *= 8.0f;
  }
  return x;
}

// Positive importance, 0.05 + |portable_data|, bit-reproducible.
inline std::vector<float> portable_importance(size_t n, uint64_t seed) {
  std::vector<float> u = portable_data(n, seed);
  for (auto& v : u) v = 0.05f + (v < 0 ? -v : v);
  return u;
}

}  // namespace ds4::quant::testing
