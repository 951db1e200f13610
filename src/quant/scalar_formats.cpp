// FP8 E4M3FN, E8M0 and FP4 E2M1 decoders of the official checkpoint (formats.md 4.2-4.3)
// and the MXFP4 scale decode (formats.md 2.8). All results are exact in f32.
#include <cmath>

#include "core/fp16.h"
#include "quant/block_codecs.h"
#include "quant/quant.h"

namespace ds4::quant {

const int8_t kValuesMxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

float e4m3fn_to_f32(uint8_t v) {
  const uint32_t exp = (v >> 3) & 0xF;
  const uint32_t man = v & 0x7;
  if (exp == 0xF && man == 0x7) return 0.0f;  // NaN codes 0x7F/0xFF: ds4 decodes them as 0
  const float mag = exp == 0 ? std::ldexp(static_cast<float>(man), -9)
                             : std::ldexp(1.0f + static_cast<float>(man) / 8.0f,
                                          static_cast<int>(exp) - 7);
  return (v & 0x80) ? -mag : mag;
}

float e8m0_to_f32(uint8_t e) {
  // e=0 is 2^-127, the f32 subnormal 0x00400000; e=255 gives +inf as in ds4 (formats.md 4.2).
  if (e == 0) return bits_to_f32(0x00400000u);
  return bits_to_f32(static_cast<uint32_t>(e) << 23);
}

float e8m0_to_f32_half(uint8_t e) {
  if (e < 2) return bits_to_f32(0x00200000u << e);
  return bits_to_f32(static_cast<uint32_t>(e - 1) << 23);
}

float e2m1_to_f32(uint8_t nib) {
  static constexpr float kMag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  // Code 8 (-0) decodes to +0, as ds4 does (formats.md 4.3).
  const float m = kMag[nib & 7];
  return (nib & 8) && m != 0.0f ? -m : m;
}

}  // namespace ds4::quant
