// Q4_K: 8 sub-blocks of 32 weights, 4-bit codes, 6-bit scales and mins packed in 12 bytes
// (formats.md 2.4 layout, 3.4 quantizer, 3.5 requantization).
#include <algorithm>
#include <cmath>

#include "core/fp16.h"
#include "quant/block_codecs.h"
#include "quant/kquant_search.h"

namespace ds4::quant {
namespace {

using detail::nearest_int;

// Packs the 6-bit codes per formats.md 2.4: bytes 0-3 scale 0-3 (+ top bits of scale 4-7),
// bytes 4-7 min 0-3 (+ top bits of min 4-7), bytes 8-11 low nibbles of scale/min 4-7.
void pack_scales(const uint8_t* ls, const uint8_t* lm, uint8_t* s) {
  for (int j = 0; j < QK_K / 32; ++j) {
    if (j < 4) {
      s[j] = ls[j];
      s[j + 4] = lm[j];
    } else {
      s[j + 4] = static_cast<uint8_t>((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      s[j - 4] = static_cast<uint8_t>(s[j - 4] | ((ls[j] >> 4) << 6));
      s[j] = static_cast<uint8_t>(s[j] | ((lm[j] >> 4) << 6));
    }
  }
}

// formats.md 3.5 with the f16-decoded d/dmin.
void requantize_and_pack(const float* x, BlockQ4_K& y, uint8_t* L) {
  const float dd = fp16_to_f32(y.d);
  const float dmn = fp16_to_f32(y.dmin);
  for (int j = 0; j < QK_K / 32; ++j) {
    uint8_t sc, m;
    q4_k_scale_min(j, y.scales, &sc, &m);
    const float d = dd * sc;
    if (d == 0.0f) continue;
    const float dm = dmn * m;
    for (int ii = 0; ii < 32; ++ii) {
      const int l = nearest_int((x[32 * j + ii] + dm) / d);
      L[32 * j + ii] = static_cast<uint8_t>(std::clamp(l, 0, 15));
    }
  }
  uint8_t* q = y.qs;
  for (int j = 0; j < QK_K; j += 64) {
    for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
    q += 32;
  }
}

void quantize_block_ref(const float* x, BlockQ4_K& y) {
  uint8_t L[QK_K];
  uint8_t laux[32];
  float weights[32];
  float mins[QK_K / 32];
  float scales[QK_K / 32];
  float max_scale = 0;
  float max_min = 0;
  for (int j = 0; j < QK_K / 32; ++j) {
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
    scales[j] = detail::make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], laux,
                                         -1.f, 0.1f, 20, false);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  uint8_t ls[QK_K / 32], lm[QK_K / 32];
  for (int j = 0; j < QK_K / 32; ++j) {
    // ggml stores nearest_int into a uint8_t before the min(63, .): keep that truncation.
    ls[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_scale * scales[j])));
    lm[j] = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_min * mins[j])));
  }
  pack_scales(ls, lm, y.scales);
  y.d = f32_to_fp16(max_scale / 63.f);
  y.dmin = f32_to_fp16(max_min / 63.f);
  requantize_and_pack(x, y, L);
}

// Weighted path: note sigma^2 = 2*sum x^2/256, a factor 2 that Q2_K does not have (3.4).
void quantize_block_weighted(const float* x, BlockQ4_K& y, const float* qw) {
  uint8_t L[QK_K];
  uint8_t laux[32];
  uint8_t ls[QK_K / 32], lm[QK_K / 32];
  float weights[32];
  float sw[QK_K / 32];
  float mins[QK_K / 32];
  float scales[QK_K / 32];
  float sum_x2 = 0;
  for (int l = 0; l < QK_K; ++l) sum_x2 += x[l] * x[l];
  const float sigma2 = 2 * sum_x2 / QK_K;
  for (int j = 0; j < QK_K / 32; ++j) {
    for (int l = 0; l < 32; ++l)
      weights[l] = qw[32 * j + l] * std::sqrt(sigma2 + x[32 * j + l] * x[32 * j + l]);
    float sumw = 0;
    for (int l = 0; l < 32; ++l) sumw += weights[l];
    sw[j] = sumw;
    scales[j] = detail::make_qkx3_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], laux,
                                         -0.9f, 0.05f, 36, false);
  }
  const float d_block = detail::make_qp_quants(QK_K / 32, 63, scales, ls, sw);
  const float m_block = detail::make_qp_quants(QK_K / 32, 63, mins, lm, sw);
  pack_scales(ls, lm, y.scales);
  y.d = f32_to_fp16(d_block);
  y.dmin = f32_to_fp16(m_block);
  requantize_and_pack(x, y, L);
}

}  // namespace

void dequantize_row_q4_k(const BlockQ4_K* x, float* y, int64_t n) {
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const float d = fp16_to_f32(x[b].d);
    const float dmin = fp16_to_f32(x[b].dmin);
    const uint8_t* q = x[b].qs;
    // Each 64 elements share 32 bytes: low nibbles are sub-block 2c, high nibbles 2c+1.
    for (int c = 0; c < 4; ++c) {
      uint8_t sc, m;
      q4_k_scale_min(2 * c, x[b].scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      q4_k_scale_min(2 * c + 1, x[b].scales, &sc, &m);
      const float d2 = d * sc, m2 = dmin * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
      q += 32;
    }
  }
}

void quantize_row_q4_k(const float* x, BlockQ4_K* y, int64_t n, const float* importance) {
  for (int64_t b = 0; b < n / QK_K; ++b) {
    if (importance)
      quantize_block_weighted(x + b * QK_K, y[b], importance + b * QK_K);
    else
      quantize_block_ref(x + b * QK_K, y[b]);
  }
}

}  // namespace ds4::quant
