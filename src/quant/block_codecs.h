// Per-type block encoders and decoders behind quant.h's type dispatch. Kernels and tests that
// already know the type may call these directly. n is the number of weights (a multiple of the
// block size); the block pointers must be aligned for their block struct.
#pragma once

#include <cstdint>

#include "quant/blocks.h"

namespace ds4::quant {

void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n);
void dequantize_row_q2_k(const BlockQ2_K* x, float* y, int64_t n);
void dequantize_row_q4_k(const BlockQ4_K* x, float* y, int64_t n);
void dequantize_row_iq2_xxs(const BlockIQ2_XXS* x, float* y, int64_t n);
void dequantize_row_mxfp4(const BlockMXFP4* x, float* y, int64_t n);
void dequantize_row_q8_k(const BlockQ8_K* x, float* y, int64_t n);
void dequantize_row_q8_0_act(const BlockQ8_0Act* x, float* y, int64_t n);

void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n);
// importance == nullptr selects the reference (unweighted) path of formats.md 3.3 / 3.4.
void quantize_row_q2_k(const float* x, BlockQ2_K* y, int64_t n, const float* importance);
void quantize_row_q4_k(const float* x, BlockQ4_K* y, int64_t n, const float* importance);
// importance is mandatory (formats.md 3.6); throws ds4::Error when it is nullptr.
void quantize_row_iq2_xxs(const float* x, BlockIQ2_XXS* y, int64_t n, const float* importance);
void quantize_row_mxfp4(const float* x, BlockMXFP4* y, int64_t n);

// Shared 6-bit scale/min unpacking of Q4_K (formats.md 2.4), sub-block j in 0..7.
inline void q4_k_scale_min(int j, const uint8_t* s, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// ggml's E8M0 "half" decode used by MXFP4 (formats.md 2.8): 2^(e-128), with e=0 and e=1
// giving the f32 denormals 2^-128 and 2^-127.
float e8m0_to_f32_half(uint8_t e);

// MXFP4 element values, twice E2M1 (formats.md 2.8).
extern const int8_t kValuesMxfp4[16];

}  // namespace ds4::quant
