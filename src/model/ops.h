// Small element-wise operations of the forward pass (llm.c style: explicit sizes).
#pragma once

#include <cstdint>

namespace ds4::model {

// out = x * rsqrt(mean(x^2) + eps) * w (w may be null: unweighted). Statistics in double.
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps);

// softplus(t) = ln(1 + e^t), computed without overflow.
double softplus(double t);

inline float silu(float x) { return x / (1.0f + __builtin_expf(-x)); }

}  // namespace ds4::model
