// Q8_0 weights (formats.md 2.2, 3.2) and the f32-scaled Q8_0 activation blocks that the
// Q8_0 matvec kernels pair them with (formats.md 2.10).
#include <algorithm>
#include <cmath>

#include "core/fp16.h"
#include "quant/block_codecs.h"
#include "quant/quant.h"

namespace ds4::quant {

void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / QK8_0; ++b) {
    const float d = fp16_to_f32(x[b].d);
    for (int j = 0; j < QK8_0; ++j) y[b * QK8_0 + j] = d * static_cast<float>(x[b].qs[j]);
  }
}

void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n) {
  for (int64_t b = 0; b < n / QK8_0; ++b) {
    const float* xb = x + b * QK8_0;
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f32_to_fp16(d);
    // roundf (ties away from zero) on x*(1/d), as ggml's reference does (formats.md 3.2).
    // |x*id| <= 127 up to rounding, so the cast cannot overflow.
    for (int j = 0; j < QK8_0; ++j)
      y[b].qs[j] = static_cast<int8_t>(std::roundf(xb[j] * id));
  }
}

void quantize_row_q8_0_act(const float* x, BlockQ8_0Act* y, int64_t n) {
  for (int64_t b = 0; b < n / QK8_0; ++b) {
    const float* xb = x + b * QK8_0;
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(xb[j]));
    // d stays f32 (ds4 does not round it to f16); codes use rint, ties to even
    // (formats.md 2.10). Multiplying by 1/d mirrors the weight quantizer.
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = d;
    for (int j = 0; j < QK8_0; ++j) {
      // fmax/fmin (not std::clamp) so that a NaN activation still gives a defined code.
      const float q = std::fmin(std::fmax(std::rint(xb[j] * id), -128.0f), 127.0f);
      y[b].qs[j] = static_cast<int8_t>(q);
    }
  }
}

void dequantize_row_q8_0_act(const BlockQ8_0Act* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / QK8_0; ++b)
    for (int j = 0; j < QK8_0; ++j) y[b * QK8_0 + j] = x[b].d * static_cast<float>(x[b].qs[j]);
}

}  // namespace ds4::quant
