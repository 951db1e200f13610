// Q8_K activation blocks for the K-quant and IQ2_XXS kernels (formats.md 2.6): f32 scale,
// int8 codes and per-16 sums that carry the min correction of Q2_K/Q4_K (formats.md 2.10).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/block_codecs.h"
#include "quant/kquant_search.h"
#include "quant/quant.h"

namespace ds4::quant {

void quantize_row_q8_k(const float* x, BlockQ8_K* y, int64_t n) {
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const float* xb = x + b * QK_K;
    BlockQ8_K& out = y[b];
    // The signed element of largest magnitude (first one on ties) sets the scale, so that it
    // maps to exactly -127 and d may be negative (formats.md 2.6).
    float max = 0.0f, amax = 0.0f;
    for (int j = 0; j < QK_K; ++j) {
      const float ax = std::fabs(xb[j]);
      if (ax > amax) {
        amax = ax;
        max = xb[j];
      }
    }
    if (amax == 0.0f) {
      std::memset(&out, 0, sizeof(out));
      continue;
    }
    const float iscale = -127.0f / max;
    for (int j = 0; j < QK_K; ++j) {
      const int v = detail::nearest_int(iscale * xb[j]);
      out.qs[j] = static_cast<int8_t>(std::clamp(v, -128, 127));
    }
    for (int t = 0; t < QK_K / 16; ++t) {
      int sum = 0;
      for (int j = 0; j < 16; ++j) sum += out.qs[16 * t + j];
      out.bsums[t] = static_cast<int16_t>(sum);
    }
    out.d = 1.0f / iscale;
  }
}

void dequantize_row_q8_k(const BlockQ8_K* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / QK_K; ++b)
    for (int j = 0; j < QK_K; ++j) y[b * QK_K + j] = x[b].d * static_cast<float>(x[b].qs[j]);
}

}  // namespace ds4::quant
