#include "model/ops.h"

#include <cmath>

namespace ds4::model {

void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  if (w) {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * r * w[i];
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * r;
  }
}

double softplus(double t) {
  if (t > 20.0) return t;
  return std::log1p(std::exp(t));
}

}  // namespace ds4::model
