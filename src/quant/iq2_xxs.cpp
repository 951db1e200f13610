// IQ2_XXS: 2.0625 bpw, eight 32-weight groups of four 8-tuples drawn from a 256-point grid,
// with parity-completed signs and a 4-bit group scale (formats.md 2.5 layout, 3.6 quantizer).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "quant/block_codecs.h"
#include "quant/iq2_xxs_search.h"
#include "quant/kquant_search.h"
#include "quant/quant.h"

namespace ds4::quant {
namespace {

using detail::nearest_int;

// Among the neighbours of an off-grid tuple, the grid point closest to xval at `scale`,
// weighted by waux; writes its levels to L and returns its index (formats.md 3.6 step 5).
int best_neighbour(const uint16_t* nb, const detail::Iq2xxsSearchTables& t, const float* xval,
                   const float* waux, float scale, int8_t* L) {
  const int count = nb[0];
  // Each grid element is one of three levels, so every term waux_i*(scale*q - x_i)^2 takes one
  // of 3 values per position: tabulate them (the same float operations in the same order as
  // ggml, hence bit-identical sums) and only add per neighbour.
  float term[8][3];
  for (int i = 0; i < 8; ++i) {
    for (int l = 0; l < 3; ++l) {
      const float diff = scale * static_cast<float>(2 * l + 1) - xval[i];
      term[i][l] = waux[i] * diff * diff;
    }
  }
  float best_d2 = FLT_MAX;
  int grid_index = -1;
  for (int j = 1; j <= count; ++j) {
    const uint8_t* lv = t.levels[nb[j]];
    float d2 = 0;
    for (int i = 0; i < 8; ++i) d2 += term[i][lv[i]];
    if (d2 < best_d2) {
      best_d2 = d2;
      grid_index = nb[j];
    }
  }
  if (grid_index < 0) fail("IQ2_XXS quantizer: no grid neighbour found (non-finite input?)");
  for (int i = 0; i < 8; ++i) L[i] = static_cast<int8_t>((t.grid8[grid_index][i] - 1) / 2);
  return grid_index;
}

// Projects the 8 levels at L onto the grid in place when the tuple is off-grid.
void project_tuple(const detail::Iq2xxsSearchTables& t, const float* xval, const float* waux,
                   float scale, int8_t* L) {
  uint16_t u = 0;
  for (int i = 0; i < 8; ++i) u = static_cast<uint16_t>(u | (L[i] << 2 * i));
  const int32_t gi = t.map[u];
  if (gi < 0) best_neighbour(t.neighbours.data() - gi - 1, t, xval, waux, scale, L);
}

void quantize_block(const float* xbl, BlockIQ2_XXS& y, const float* qwbl,
                    const detail::Iq2xxsSearchTables& t) {
  constexpr int kMaxQ = 3;
  float scales[QK_K / 32];
  float weight[32];
  float xval[32];
  int8_t L[32];
  int8_t laux[32];
  float waux[32];
  uint8_t block_signs[4];
  uint32_t q2[2 * (QK_K / 32)] = {};

  y.d = f32_to_fp16(0.f);
  float max_scale = 0;
  float sumx2 = 0;
  for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i] * xbl[i];
  const float sigma2 = sumx2 / QK_K;

  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const float* xb = xbl + 32 * ib;
    const float* qw = qwbl + 32 * ib;
    for (int i = 0; i < 32; ++i) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
    for (int i = 0; i < 32; ++i) waux[i] = std::sqrt(weight[i]);
    // Signs (step 2): an 8-tuple must have an even number of minus signs, so with an odd
    // count the least important element (smallest w*x^2) is flipped.
    for (int k = 0; k < 4; ++k) {
      int nflip = 0;
      uint8_t s = 0;
      for (int i = 0; i < 8; ++i) {
        if (xb[8 * k + i] >= 0) {
          xval[8 * k + i] = xb[8 * k + i];
        } else {
          xval[8 * k + i] = -xb[8 * k + i];
          ++nflip;
          s = static_cast<uint8_t>(s | (1 << i));
        }
      }
      if (nflip % 2) {
        int imin = 0;
        float min = weight[8 * k] * xb[8 * k] * xb[8 * k];
        for (int i = 1; i < 8; ++i) {
          const float ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
          if (ax < min) {
            min = ax;
            imin = i;
          }
        }
        xval[8 * k + imin] = -xval[8 * k + imin];
        s = static_cast<uint8_t>(s ^ (1 << imin));
      }
      block_signs[k] = s & 127;
    }
    float max = xval[0];
    for (int i = 1; i < 32; ++i) max = std::max(max, xval[i]);
    if (max < detail::kGroupMaxEps) {
      scales[ib] = 0;
      continue;  // q2 stays zero for this group
    }
    uint8_t lq[32];
    float scale = detail::make_qp_quants(32, kMaxQ + 1, xval, lq, weight);
    for (int i = 0; i < 32; ++i) L[i] = static_cast<int8_t>(lq[i]);
    const float eff_max = scale * kMaxQ;
    if (eff_max <= 0) {
      // No usable fit (e.g. the weight sits only on zero elements): the group stays zero,
      // as in current ggml.
      scales[ib] = 0;
      continue;
    }
    float best = 0;
    // Scale sweep (step 5): levels {0,1,2} model the values scale*{1,3,5}.
    for (int is = -6; is <= 6; ++is) {
      const float id = (2 * kMaxQ - 1 + is * 0.1f) / eff_max;
      const float this_scale = 1 / id;
      for (int k = 0; k < 4; ++k) {
        for (int i = 0; i < 8; ++i) {
          const int l = nearest_int(0.5f * (id * xval[8 * k + i] - 1));
          laux[8 * k + i] = static_cast<int8_t>(std::clamp(l, 0, kMaxQ - 1));
        }
        project_tuple(t, xval + 8 * k, waux + 8 * k, this_scale, laux + 8 * k);
      }
      float sumqx = 0, sumq2 = 0;
      for (int i = 0; i < 32; ++i) {
        const float w = weight[i];
        const float q = 2 * laux[i] + 1;
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
      }
      if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
        scale = sumqx / sumq2;
        best = scale * sumqx;
        std::memcpy(L, laux, 32);
      }
    }
    // Final requantization at the chosen scale and refit (step 6).
    if (scale > 0) {
      const float id = 1 / scale;
      for (int k = 0; k < 4; ++k) {
        for (int i = 0; i < 8; ++i) {
          const int l = nearest_int(0.5f * (id * xval[8 * k + i] - 1));
          L[8 * k + i] = static_cast<int8_t>(std::clamp(l, 0, kMaxQ - 1));
        }
        project_tuple(t, xval + 8 * k, waux + 8 * k, scale, L + 8 * k);
      }
      float sumqx = 0, sumq2 = 0;
      for (int i = 0; i < 32; ++i) {
        const float w = weight[i];
        const float q = 2 * L[i] + 1;
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
      }
      if (sumq2 > 0) scale = sumqx / sumq2;
    }
    // The stored scale is unsigned: a negative fit flips every stored sign instead (step 7).
    if (scale < 0) {
      scale = -scale;
      for (int k = 0; k < 4; ++k) block_signs[k] = static_cast<uint8_t>(~block_signs[k] & 127);
    }
    for (int k = 0; k < 4; ++k) {
      uint16_t u = 0;
      for (int i = 0; i < 8; ++i) u = static_cast<uint16_t>(u | (L[8 * k + i] << 2 * i));
      const int32_t grid_index = t.map[u];
      if (grid_index < 0) fail("IQ2_XXS quantizer: tuple {:#06x} is not on the grid", u);
      q2[2 * ib + 0] |= static_cast<uint32_t>(grid_index) << 8 * k;
      q2[2 * ib + 1] |= static_cast<uint32_t>(block_signs[k]) << 7 * k;
    }
    scales[ib] = scale;
    max_scale = std::max(max_scale, scale);
  }

  if (max_scale == 0) {
    std::memset(y.qs, 0, sizeof(y.qs));
    return;
  }
  // Block finish (step 9): 1/d comes from the unrounded float d.
  const float d = max_scale / 31;
  y.d = f32_to_fp16(d);
  const float id = 1 / d;
  for (int ib = 0; ib < QK_K / 32; ++ib) {
    const int l = std::clamp(nearest_int(0.5f * (id * scales[ib] - 1)), 0, 15);
    q2[2 * ib + 1] |= static_cast<uint32_t>(l) << 28;
  }
  std::memcpy(y.qs, q2, sizeof(y.qs));
}

}  // namespace

void dequantize_row_iq2_xxs(const BlockIQ2_XXS* x, float* y, int64_t n) {
  const uint64_t* grid = iq2xxs_grid();
  const uint8_t* signs = ksigns_iq2xs();
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const float d = fp16_to_f32(x[b].d);
    const uint8_t* qs = reinterpret_cast<const uint8_t*>(x[b].qs);
    for (int g = 0; g < QK_K / 32; ++g) {
      const uint8_t* idx = qs + 8 * g;
      uint32_t aux;
      std::memcpy(&aux, qs + 8 * g + 4, 4);  // little-endian host
      const float db = d * (0.5f + static_cast<float>(aux >> 28)) * 0.25f;
      for (int k = 0; k < 4; ++k) {
        const uint64_t gv = grid[idx[k]];
        const uint8_t s = signs[(aux >> 7 * k) & 127];
        for (int j = 0; j < 8; ++j) {
          const float gj = static_cast<float>((gv >> 8 * j) & 0xFF);
          *y++ = db * gj * ((s >> j) & 1 ? -1.f : 1.f);
        }
      }
    }
  }
}

void quantize_row_iq2_xxs(const float* x, BlockIQ2_XXS* y, int64_t n, const float* importance) {
  if (!importance)
    fail("IQ2_XXS quantization needs an importance vector (formats.md 3.6); use quantize_rows "
         "for the weight-energy fallback");
  const detail::Iq2xxsSearchTables& t = detail::iq2xxs_search_tables();
  for (int64_t b = 0; b < n / QK_K; ++b)
    quantize_block(x + b * QK_K, y[b], importance + b * QK_K, t);
}

}  // namespace ds4::quant
