// Scalar reference dot products: the executable specification the SIMD paths are tested
// against. The quantized ones use the integer decompositions of formats.md 2.10: an exact
// int32 sum per block (or sub-block), then one float multiply-add per block in block order.
#include <cmath>
#include <cstring>

#include "backend/cpu/kernels.h"
#include "core/fp16.h"
#include "quant/blocks.h"
#include "quant/quant.h"

namespace ds4::cpu::detail {
namespace {

float dot_f32(const void* w_row, const void* act, int64_t n) {
  const float* w = static_cast<const float*>(w_row);
  const float* x = static_cast<const float*>(act);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += w[i] * x[i];
  return sum;
}

float dot_f16(const void* w_row, const void* act, int64_t n) {
  const uint16_t* w = static_cast<const uint16_t*>(w_row);
  const float* x = static_cast<const float*>(act);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += fp16_to_f32(w[i]) * x[i];
  return sum;
}

float dot_bf16(const void* w_row, const void* act, int64_t n) {
  const uint16_t* w = static_cast<const uint16_t*>(w_row);
  const float* x = static_cast<const float*>(act);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += bf16_to_f32(w[i]) * x[i];
  return sum;
}

// y = sum_b fp16(d_w) * d_x * sum_j q_w * q_x   (formats.md 2.10, Q8_0)
float dot_q8_0(const void* w_row, const void* act, int64_t n) {
  const BlockQ8_0* w = static_cast<const BlockQ8_0*>(w_row);
  const BlockQ8_0Act* x = static_cast<const BlockQ8_0Act*>(act);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / QK8_0; ++b) {
    int32_t isum = 0;
    for (int j = 0; j < QK8_0; ++j) isum += int32_t(w[b].qs[j]) * int32_t(x[b].qs[j]);
    sum += fp16_to_f32(w[b].d) * x[b].d * static_cast<float>(isum);
  }
  return sum;
}

// d_x*d*sum_s sc_s*(sum_i q2*q8) - d_x*dmin*sum_s m_s*bsums_s   (formats.md 2.10, Q2_K)
float dot_q2_k(const void* w_row, const void* act, int64_t n) {
  const BlockQ2_K* w = static_cast<const BlockQ2_K*>(w_row);
  const BlockQ8_K* x = static_cast<const BlockQ8_K*>(act);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    int32_t isum = 0, msum = 0;
    for (int s = 0; s < 16; ++s) {
      int32_t sub = 0;
      for (int i = 0; i < 16; ++i) {
        const int e = 16 * s + i;
        const int q = (w[b].qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        sub += q * int32_t(x[b].qs[e]);
      }
      isum += (w[b].scales[s] & 0xF) * sub;
      msum += (w[b].scales[s] >> 4) * int32_t(x[b].bsums[s]);
    }
    const float dall = x[b].d * fp16_to_f32(w[b].d);
    const float dmin = x[b].d * fp16_to_f32(w[b].dmin);
    sum += dall * static_cast<float>(isum) - dmin * static_cast<float>(msum);
  }
  return sum;
}

// Unpacks the eight 6-bit scales and mins of a Q4_K block (formats.md 2.4).
void q4_k_scales(const uint8_t* S, uint8_t sc[8], uint8_t m[8]) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      sc[j] = S[j] & 63;
      m[j] = S[j + 4] & 63;
    } else {
      sc[j] = static_cast<uint8_t>((S[j + 4] & 0xF) | ((S[j - 4] >> 6) << 4));
      m[j] = static_cast<uint8_t>((S[j + 4] >> 4) | ((S[j] >> 6) << 4));
    }
  }
}

// d_x*d*sum_j sc_j*(sum_i q4*q8) - d_x*dmin*sum_j m_j*(bsums_2j + bsums_2j+1)  (2.10, Q4_K)
float dot_q4_k(const void* w_row, const void* act, int64_t n) {
  const BlockQ4_K* w = static_cast<const BlockQ4_K*>(w_row);
  const BlockQ8_K* x = static_cast<const BlockQ8_K*>(act);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    uint8_t sc[8], m[8];
    q4_k_scales(w[b].scales, sc, m);
    int32_t isum = 0, msum = 0;
    for (int j = 0; j < 8; ++j) {
      int32_t sub = 0;
      for (int i = 0; i < 32; ++i) {
        const int e = 32 * j + i;
        const uint8_t byte = w[b].qs[32 * (e / 64) + e % 32];
        const int q = (e % 64) < 32 ? (byte & 0xF) : (byte >> 4);
        sub += q * int32_t(x[b].qs[e]);
      }
      isum += sc[j] * sub;
      msum += m[j] * (int32_t(x[b].bsums[2 * j]) + int32_t(x[b].bsums[2 * j + 1]));
    }
    const float dall = x[b].d * fp16_to_f32(w[b].d);
    const float dmin = x[b].d * fp16_to_f32(w[b].dmin);
    sum += dall * static_cast<float>(isum) - dmin * static_cast<float>(msum);
  }
  return sum;
}

// (d_x*fp16(d)/8) * sum_g (2 s_g + 1) * sum_i G+-_{g,i} * q8   (formats.md 2.10, IQ2_XXS)
float dot_iq2_xxs(const void* w_row, const void* act, int64_t n) {
  const BlockIQ2_XXS* w = static_cast<const BlockIQ2_XXS*>(w_row);
  const BlockQ8_K* x = static_cast<const BlockQ8_K*>(act);
  const uint64_t* grid = quant::iq2xxs_grid();
  const uint8_t* signs = quant::ksigns_iq2xs();
  float sum = 0.0f;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* qs = reinterpret_cast<const uint8_t*>(w[b].qs);
    int32_t bsum = 0;
    for (int g = 0; g < 8; ++g) {
      uint32_t aux;
      std::memcpy(&aux, qs + 8 * g + 4, 4);
      int32_t gsum = 0;
      for (int k = 0; k < 4; ++k) {
        const uint64_t gv = grid[qs[8 * g + k]];
        const uint8_t sg = signs[(aux >> (7 * k)) & 127];
        for (int j = 0; j < 8; ++j) {
          const int32_t G = static_cast<int32_t>((gv >> (8 * j)) & 0xFF);
          const int32_t q = x[b].qs[32 * g + 8 * k + j];
          gsum += ((sg >> j) & 1) ? -G * q : G * q;
        }
      }
      bsum += static_cast<int32_t>(2 * (aux >> 28) + 1) * gsum;
    }
    // fmaf fixes the rounding so that the AVX2 path, which reduces the same exact int32
    // block sums in this order, gives bit-identical results.
    sum = std::fmaf(fp16_to_f32(w[b].d) * x[b].d * 0.125f, static_cast<float>(bsum), sum);
  }
  return sum;
}

// MXFP4 x BlockQ8_0Act: y = sum_b 2^(e-128) * d_x * sum_j kvalues[nib_j] * q_x.
// Activation blocks of 32 match the MXFP4 block, so each block has one scale product.
float dot_mxfp4(const void* w_row, const void* act, int64_t n) {
  const BlockMXFP4* w = static_cast<const BlockMXFP4*>(w_row);
  const BlockQ8_0Act* x = static_cast<const BlockQ8_0Act*>(act);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / QK_MXFP4; ++b) {
    int32_t isum = 0;
    for (int j = 0; j < QK_MXFP4 / 2; ++j) {
      isum += kMxfp4Values[w[b].qs[j] & 0xF] * int32_t(x[b].qs[j]);
      isum += kMxfp4Values[w[b].qs[j] >> 4] * int32_t(x[b].qs[j + QK_MXFP4 / 2]);
    }
    sum += mxfp4_scale(w[b].e) * x[b].d * static_cast<float>(isum);
  }
  return sum;
}

}  // namespace

const KernelTable& scalar_kernels() {
  static const KernelTable table{dot_f32,  dot_f16,     dot_bf16,  dot_q8_0,
                                 dot_q2_k, dot_q4_k, dot_iq2_xxs, dot_mxfp4};
  return table;
}

}  // namespace ds4::cpu::detail
