// Activation quantizers: Q8_K (formats.md 2.6) and f32-scaled Q8_0 (formats.md 2.10).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "quant/block_codecs.h"
#include "quant/quant.h"
#include "quant_test_util.h"

namespace ds4::quant {
namespace {

using testing::Dist;
using testing::make_data;

TEST(Q8K, ScaleSignCodesAndBsums) {
  for (Dist dist : {Dist::Gaussian, Dist::Uniform, Dist::GaussianOutliers, Dist::Tiny}) {
    const auto x = make_data(dist, 4 * 256, 21);
    std::vector<BlockQ8_K> q(4);
    quantize_row_q8_k(x.data(), q.data(), 1024);
    for (int b = 0; b < 4; ++b) {
      const float* xb = x.data() + 256 * b;
      int imax = 0;
      for (int j = 1; j < 256; ++j)
        if (std::fabs(xb[j]) > std::fabs(xb[imax])) imax = j;
      // The signed absmax maps to -127 and d = 1/iscale carries its sign (formats.md 2.6).
      EXPECT_EQ(q[b].qs[imax], -127);
      EXPECT_EQ(q[b].d, 1.0f / (-127.0f / xb[imax]));
      EXPECT_EQ(std::signbit(q[b].d), !std::signbit(xb[imax]));
      const float iscale = -127.0f / xb[imax];
      for (int j = 0; j < 256; ++j) {
        EXPECT_EQ(q[b].qs[j], static_cast<int8_t>(std::rint(iscale * xb[j]))) << j;
        EXPECT_LE(std::fabs(q[b].d * q[b].qs[j] - xb[j]), std::fabs(q[b].d) * 0.5f * 1.0001f);
      }
      for (int t = 0; t < 16; ++t) {
        int s = 0;
        for (int j = 0; j < 16; ++j) s += q[b].qs[16 * t + j];
        EXPECT_EQ(q[b].bsums[t], s) << t;
      }
    }
  }
}

TEST(Q8K, ZeroBlockAndTiesToEven) {
  std::vector<float> x(512, 0.0f);
  // Block 1: max +127 so iscale = -1 and d = -1; 2.5 and 3.5 become exact ties.
  x[256] = 127.0f;
  x[257] = 2.5f;
  x[258] = 3.5f;
  x[259] = -0.5f;
  std::vector<BlockQ8_K> q(2);
  quantize_row_q8_k(x.data(), q.data(), 512);
  EXPECT_EQ(q[0].d, 0.0f);
  for (int j = 0; j < 256; ++j) EXPECT_EQ(q[0].qs[j], 0);
  for (int t = 0; t < 16; ++t) EXPECT_EQ(q[0].bsums[t], 0);
  EXPECT_EQ(q[1].d, -1.0f);
  EXPECT_EQ(q[1].qs[0], -127);
  EXPECT_EQ(q[1].qs[1], -2);  // -2.5 -> -2 (even)
  EXPECT_EQ(q[1].qs[2], -4);  // -3.5 -> -4 (even)
  EXPECT_EQ(q[1].qs[3], 0);   // 0.5 -> 0 (even)
  std::vector<float> y(512);
  dequantize_row(GgmlType::Q8_K, q.data(), y.data(), 512);
  EXPECT_EQ(y[256], 127.0f);
}

TEST(Q8_0Act, F32ScaleAndNearestEven) {
  const auto x = make_data(Dist::GaussianOutliers, 8 * 32, 5);
  std::vector<BlockQ8_0Act> q(8);
  quantize_row_q8_0_act(x.data(), q.data(), 256);
  for (int b = 0; b < 8; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * b + j]));
    EXPECT_EQ(q[b].d, amax / 127.0f);  // kept in f32, not rounded to f16
    for (int j = 0; j < 32; ++j) {
      const float r = std::rint(x[32 * b + j] * (1.0f / q[b].d));
      EXPECT_EQ(q[b].qs[j], static_cast<int8_t>(r));
      EXPECT_LE(std::abs(q[b].qs[j]), 127);
    }
  }
  // Ties: amax 127 gives d = 1, so 0.5 -> 0, 1.5 -> 2, -2.5 -> -2.
  std::vector<float> t(32, 0.0f);
  t[0] = 127.0f;
  t[1] = 0.5f;
  t[2] = 1.5f;
  t[3] = -2.5f;
  BlockQ8_0Act a;
  quantize_row_q8_0_act(t.data(), &a, 32);
  EXPECT_EQ(a.d, 1.0f);
  EXPECT_EQ(a.qs[0], 127);
  EXPECT_EQ(a.qs[1], 0);
  EXPECT_EQ(a.qs[2], 2);
  EXPECT_EQ(a.qs[3], -2);
  // All-zero block.
  std::vector<float> z(32, 0.0f);
  quantize_row_q8_0_act(z.data(), &a, 32);
  EXPECT_EQ(a.d, 0.0f);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(a.qs[j], 0);
}

TEST(Q8_0Act, RoundTripError) {
  const auto x = make_data(Dist::Gaussian, 64 * 32, 9);
  std::vector<BlockQ8_0Act> q(64);
  quantize_row_q8_0_act(x.data(), q.data(), 2048);
  std::vector<float> y(2048);
  dequantize_row_q8_0_act(q.data(), y.data(), 2048);
  EXPECT_LT(testing::rel_rmse(x, y), 0.01);
}

}  // namespace
}  // namespace ds4::quant
