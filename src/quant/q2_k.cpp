// Q2_K: 16 sub-blocks of 16 weights, 2-bit codes, 4-bit scale and min codes
// (formats.md 2.3 layout, 3.3 quantizer, 3.5 requantization).
#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "quant/block_codecs.h"
#include "quant/kquant_search.h"

namespace ds4::quant {
namespace {

using detail::nearest_int;

// Requantize against the stored f16 d/dmin and pack (formats.md 3.5). Sub-blocks whose scale
// decodes to 0 keep the L of the search, which matters for byte equality with ds4.
void requantize_and_pack(const float* x, BlockQ2_K& y, uint8_t* L) {
  const float dm = fp16_to_f32(y.d);
  const float mm = fp16_to_f32(y.dmin);
  for (int j = 0; j < QK_K / 16; ++j) {
    const float d = dm * (y.scales[j] & 0xF);
    if (d == 0.0f) continue;
    const float m = mm * (y.scales[j] >> 4);
    for (int ii = 0; ii < 16; ++ii) {
      int l = nearest_int((x[16 * j + ii] + m) / d);
      l = l < 0 ? 0 : (l > 3 ? 3 : l);
      L[16 * j + ii] = static_cast<uint8_t>(l);
    }
  }
  for (int j = 0; j < QK_K; j += 128)
    for (int l = 0; l < 32; ++l)
      y.qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) |
                                             (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

// Reference path, no importance (formats.md 3.3): the legacy Q2 down experts.
void quantize_block_ref(const float* x, BlockQ2_K& y) {
  uint8_t L[QK_K];
  uint8_t laux[16];
  float weights[16];
  float mins[QK_K / 16];
  float scales[QK_K / 16];
  const float q4scale = 15.f;
  float max_scale = 0;  // mins are subtracted, so scales are never negative
  float max_min = 0;
  for (int j = 0; j < QK_K / 16; ++j) {
    for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
    scales[j] = detail::make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], laux,
                                         -0.5f, 0.1f, 15, true);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  if (max_scale > 0) {
    const float iscale = q4scale / max_scale;
    for (int j = 0; j < QK_K / 16; ++j)
      y.scales[j] = static_cast<uint8_t>(nearest_int(iscale * scales[j]));
    y.d = f32_to_fp16(max_scale / q4scale);
  } else {
    for (int j = 0; j < QK_K / 16; ++j) y.scales[j] = 0;
    y.d = f32_to_fp16(0.f);
  }
  if (max_min > 0) {
    const float iscale = q4scale / max_min;
    for (int j = 0; j < QK_K / 16; ++j)
      y.scales[j] = static_cast<uint8_t>(y.scales[j] | (nearest_int(iscale * mins[j]) << 4));
    y.dmin = f32_to_fp16(max_min / q4scale);
  } else {
    y.dmin = f32_to_fp16(0.f);
  }
  requantize_and_pack(x, y, L);
}

// Importance-weighted path (formats.md 3.3): w = qw*sqrt(sigma^2 + x^2), sigma^2 = sum x^2/256.
void quantize_block_weighted(const float* x, BlockQ2_K& y, const float* qw) {
  uint8_t L[QK_K];
  uint8_t laux[16];
  float mins[QK_K / 16];
  float scales[QK_K / 16];
  float sw[QK_K / 16] = {};
  float weight[16];
  uint8_t Ls[QK_K / 16], Lm[QK_K / 16];
  float sumx2 = 0;
  for (int j = 0; j < QK_K; ++j) sumx2 += x[j] * x[j];
  const float sigma2 = sumx2 / QK_K;
  for (int j = 0; j < QK_K / 16; ++j) {
    for (int l = 0; l < 16; ++l)
      weight[l] = qw[16 * j + l] * std::sqrt(sigma2 + x[16 * j + l] * x[16 * j + l]);
    for (int l = 0; l < 16; ++l) sw[j] += weight[l];
    scales[j] = detail::make_qkx3_quants(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], laux,
                                         -0.9f, 0.05f, 36, false);
  }
  const float dm = detail::make_qp_quants(QK_K / 16, 15, scales, Ls, sw);
  const float mm = detail::make_qp_quants(QK_K / 16, 15, mins, Lm, sw);
  y.d = f32_to_fp16(dm);
  y.dmin = f32_to_fp16(mm);
  for (int j = 0; j < QK_K / 16; ++j) y.scales[j] = static_cast<uint8_t>(Ls[j] | (Lm[j] << 4));
  requantize_and_pack(x, y, L);  // re-reads d and dmin as f16
}

}  // namespace

void dequantize_row_q2_k(const BlockQ2_K* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const float d = fp16_to_f32(x[b].d);
    const float dmin = fp16_to_f32(x[b].dmin);
    // Element order of formats.md 2.3: per 128-half h, shift 2k picks elements 32k..32k+31 of
    // the half from bytes qs[32h .. 32h+31]; each 16 of them has its own scale byte.
    const uint8_t* q = x[b].qs;
    int is = 0;
    for (int h = 0; h < QK_K; h += 128) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int half = 0; half < 2; ++half) {
          const uint8_t sc = x[b].scales[is++];
          const float dl = d * (sc & 0xF);
          const float ml = dmin * (sc >> 4);
          for (int l = 0; l < 16; ++l) *y++ = dl * ((q[16 * half + l] >> shift) & 3) - ml;
        }
      }
      q += 32;
    }
  }
}

void quantize_row_q2_k(const float* x, BlockQ2_K* y, int64_t n, const float* importance) {
  for (int64_t b = 0; b < n / QK_K; ++b) {
    if (importance)
      quantize_block_weighted(x + b * QK_K, y[b], importance + b * QK_K);
    else
      quantize_block_ref(x + b * QK_K, y[b]);
  }
}

}  // namespace ds4::quant
