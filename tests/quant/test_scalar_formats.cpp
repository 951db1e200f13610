// FP8 E4M3FN, E8M0, E2M1 decoders (formats.md 4.2-4.3) and the MXFP4 half-scale (2.8).
#include <gtest/gtest.h>

#include <cmath>

#include "core/fp16.h"
#include "quant/block_codecs.h"
#include "quant/quant.h"

namespace ds4::quant {
namespace {

TEST(ScalarFormats, E4m3fnSpotValues) {
  EXPECT_EQ(e4m3fn_to_f32(0x00), 0.0f);
  EXPECT_EQ(e4m3fn_to_f32(0x7E), 448.0f);
  EXPECT_EQ(e4m3fn_to_f32(0xFE), -448.0f);
  EXPECT_EQ(e4m3fn_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3fn_to_f32(0x07), 7 * std::ldexp(1.0f, -9));  // largest subnormal
  EXPECT_EQ(e4m3fn_to_f32(0x08), std::ldexp(1.0f, -6));      // smallest normal
  EXPECT_EQ(e4m3fn_to_f32(0x38), 1.0f);
  EXPECT_EQ(e4m3fn_to_f32(0x3C), 1.5f);
  EXPECT_EQ(e4m3fn_to_f32(0xB8), -1.0f);
  EXPECT_EQ(e4m3fn_to_f32(0x7F), 0.0f);  // NaN decodes to 0 as in ds4
  EXPECT_EQ(e4m3fn_to_f32(0xFF), 0.0f);
  EXPECT_TRUE(std::signbit(e4m3fn_to_f32(0x80)));
}

TEST(ScalarFormats, E4m3fnAllCodesFollowTheFormula) {
  float prev = -1.0f;
  for (int v = 0; v < 127; ++v) {  // positive, non-NaN codes: strictly increasing
    const float f = e4m3fn_to_f32(static_cast<uint8_t>(v));
    EXPECT_GT(f, prev) << v;
    prev = f;
    EXPECT_EQ(e4m3fn_to_f32(static_cast<uint8_t>(v | 0x80)), -f);
    const int e = v >> 3, m = v & 7;
    const double ref = e == 0 ? m * std::ldexp(1.0, -9) : (1 + m / 8.0) * std::ldexp(1.0, e - 7);
    EXPECT_EQ(double(f), ref) << v;
  }
}

TEST(ScalarFormats, E8m0) {
  EXPECT_EQ(e8m0_to_f32(127), 1.0f);
  EXPECT_EQ(e8m0_to_f32(128), 2.0f);
  EXPECT_EQ(e8m0_to_f32(120), 1.0f / 128);
  EXPECT_EQ(f32_to_bits(e8m0_to_f32(0)), 0x00400000u);  // 2^-127
  EXPECT_EQ(e8m0_to_f32(1), std::ldexp(1.0f, -126));
  EXPECT_EQ(e8m0_to_f32(254), std::ldexp(1.0f, 127));
  EXPECT_TRUE(std::isinf(e8m0_to_f32(255)));
  for (int e = 1; e < 255; ++e)
    EXPECT_EQ(e8m0_to_f32(static_cast<uint8_t>(e)), std::ldexp(1.0f, e - 127)) << e;
}

TEST(ScalarFormats, E8m0HalfForMxfp4) {
  EXPECT_EQ(f32_to_bits(e8m0_to_f32_half(0)), 0x00200000u);  // 2^-128
  EXPECT_EQ(f32_to_bits(e8m0_to_f32_half(1)), 0x00400000u);  // 2^-127
  for (int e = 2; e < 256; ++e)
    EXPECT_EQ(e8m0_to_f32_half(static_cast<uint8_t>(e)), std::ldexp(1.0f, e - 128)) << e;
}

TEST(ScalarFormats, E2m1) {
  const float mag[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(e2m1_to_f32(static_cast<uint8_t>(i)), mag[i]);
    EXPECT_EQ(e2m1_to_f32(static_cast<uint8_t>(i | 8)), -mag[i]);
    // MXFP4's table is exactly twice E2M1 (formats.md 2.8).
    EXPECT_EQ(kValuesMxfp4[i], 2 * mag[i]);
    EXPECT_EQ(kValuesMxfp4[i | 8], -2 * mag[i]);
  }
  EXPECT_FALSE(std::signbit(e2m1_to_f32(8)));  // code 8 decodes to +0
}

}  // namespace
}  // namespace ds4::quant
