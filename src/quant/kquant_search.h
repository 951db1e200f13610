// The scale searches shared by the K-quant and IQ2_XXS quantizers (formats.md 3.1), ported
// step for step from ggml's reference so that output bytes match ds4's quantizer: same
// float32 accumulation order, same ties-to-even rounding.
#pragma once

#include <cstdint>
#include <cstring>

namespace ds4::quant::detail {

// Round to nearest, ties to even, via the 1.5*2^23 magic number (formats.md 3.1). Valid for
// |f| <= 4194303; outside that range the result is meaningless but well defined.
inline int nearest_int(float f) {
  const float v = f + 12582912.f;
  int32_t i;
  std::memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// Sub-block groups whose largest magnitude is below this are treated as all-zero (ggml's
// GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

// Affine fit x ~ scale*L - m with L in [0, nmax] (formats.md 3.1). Returns scale, writes
// L[0..n) and *the_min (>= 0). laux is scratch of n bytes.
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                       float* the_min, uint8_t* laux, float rmin, float rdelta, int nstep,
                       bool use_mad);

// Same as make_qkx2_quants, but weights == nullptr means w = x^2 and it bails out when
// max <= min.
float make_qkx3_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                       float* the_min, uint8_t* laux, float rmin, float rdelta, int nstep,
                       bool use_mad);

// Scale-only fit of non-negative x with L in [0, nmax], weighted MSE, followed by coordinate
// descent (formats.md 3.1). Returns the scale (0 when max(x) < 1e-15).
float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* weights);

}  // namespace ds4::quant::detail
