// MXFP4 (formats.md 2.8): 32 E2M1 values sharing one E8M0 exponent. Not used by ds4 GGUFs;
// it is the lossless container for the official FP4 experts.
#include <algorithm>
#include <cmath>

#include "quant/block_codecs.h"

namespace ds4::quant {
namespace {

// Nearest kValuesMxfp4[i]*d to x; a strict '<' keeps the first minimum, and since the table
// lists magnitudes in increasing order, ties round toward zero (ggml's best_index_mxfp4).
int best_index(float x, float d) {
  int best = 0;
  float best_err = std::fabs(kValuesMxfp4[0] * d - x);
  for (int i = 1; i < 16; ++i) {
    const float err = std::fabs(kValuesMxfp4[i] * d - x);
    if (err < best_err) {
      best = i;
      best_err = err;
    }
  }
  return best;
}

}  // namespace

void dequantize_row_mxfp4(const BlockMXFP4* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / QK_MXFP4; ++b) {
    const float d = e8m0_to_f32_half(x[b].e);
    for (int j = 0; j < QK_MXFP4 / 2; ++j) {
      y[b * QK_MXFP4 + j] = kValuesMxfp4[x[b].qs[j] & 0x0F] * d;
      y[b * QK_MXFP4 + j + QK_MXFP4 / 2] = kValuesMxfp4[x[b].qs[j] >> 4] * d;
    }
  }
}

void quantize_row_mxfp4(const float* x, BlockMXFP4* y, int64_t n) {
  for (int64_t b = 0; b < n / QK_MXFP4; ++b) {
    const float* xb = x + b * QK_MXFP4;
    float amax = 0.0f;
    for (int j = 0; j < QK_MXFP4; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
    // Shared exponent from the absmax, as ggml does: the largest element lands in [4, 8) in
    // units of 2^(e-127), i.e. near E2M1's top value 6 (values in (6, 8) clamp to 6). Block
    // values already on an E2M1 * 2^k grid (the official FP4 experts) come back exactly.
    // floor(log2(amax)) is taken exactly from frexp (ggml's floorf(log2f()) can round up just
    // below a power of two); the exponent is clamped to the representable range.
    int e = 0;
    if (!std::isfinite(amax)) {
      e = 254;
    } else if (amax > 0.0f) {
      int exp2 = 0;
      std::frexp(amax, &exp2);  // amax = m * 2^exp2, m in [0.5, 1)
      e = std::clamp(exp2 - 1 - 2 + 127, 0, 254);
    }
    const float d = e8m0_to_f32_half(static_cast<uint8_t>(e));
    y[b].e = static_cast<uint8_t>(e);
    for (int j = 0; j < QK_MXFP4 / 2; ++j) {
      const int lo = best_index(xb[j], d);
      const int hi = best_index(xb[j + QK_MXFP4 / 2], d);
      y[b].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

}  // namespace ds4::quant
