#include <gtest/gtest.h>
#include <immintrin.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "core/fp16.h"
#include "core/ggml_type.h"
#include "core/thread_pool.h"

namespace ds4 {
namespace {

// Reference conversion through the compiler's _Float16 (IEEE RNE), independent of our bit code.
uint16_t ref_f32_to_f16(float f) {
  _Float16 h = static_cast<_Float16>(f);
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}

TEST(Fp16, EveryHalfRoundTripsExactly) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_f32(static_cast<uint16_t>(h));
    _Float16 r;
    const uint16_t hh = static_cast<uint16_t>(h);
    std::memcpy(&r, &hh, 2);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(static_cast<float>(r)));
      continue;
    }
    ASSERT_EQ(f32_to_bits(f), f32_to_bits(static_cast<float>(r))) << "half " << h;
    ASSERT_EQ(f32_to_fp16(f), h) << "half " << h;
  }
}

TEST(Fp16, RandomFloatsRoundToNearestEven) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 2000000; ++i) {
    const float f = bits_to_f32(bits(rng));
    if (std::isnan(f)) {
      EXPECT_EQ(f32_to_fp16(f) & 0x7E00, 0x7E00);
      continue;
    }
    ASSERT_EQ(f32_to_fp16(f), ref_f32_to_f16(f)) << f;
  }
}

TEST(Bf16, RoundsToNearestEvenAndQuietsNaN) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3F808000u)), 0x3F80);  // tie -> even
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3F818000u)), 0x3F82);  // tie -> even (up)
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3F808001u)), 0x3F81);
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x7F800001u)), 0x7FC0);
  EXPECT_EQ(bf16_to_f32(0x4049), bits_to_f32(0x40490000u));
}

TEST(GgmlType, TableMatchesGgml) {
  EXPECT_EQ(type_traits(GgmlType::Q8_0).block_bytes, 34);
  EXPECT_EQ(type_traits(GgmlType::Q2_K).block_bytes, 84);
  EXPECT_EQ(type_traits(GgmlType::Q4_K).block_bytes, 144);
  EXPECT_EQ(type_traits(GgmlType::IQ2_XXS).block_bytes, 66);
  EXPECT_EQ(type_traits(GgmlType::Q8_K).block_bytes, 292);
  EXPECT_EQ(type_traits(GgmlType::MXFP4).block_bytes, 17);
  EXPECT_EQ(type_traits(7u), nullptr);
  EXPECT_EQ(row_bytes(GgmlType::IQ2_XXS, 4096), 1056u);
  EXPECT_EQ(row_bytes(GgmlType::Q2_K, 2048), 672u);
  EXPECT_EQ(type_from_name("iq2_xxs"), GgmlType::IQ2_XXS);
  EXPECT_FALSE(type_from_name("q5_k").has_value());
  EXPECT_THROW(type_traits(static_cast<GgmlType>(77)), Error);
}

TEST(ThreadPool, CoversEveryIndexOnceAndPropagatesErrors) {
  ThreadPool pool(4);
  for (int64_t n : {1, 7, 1000, 100003}) {
    std::vector<std::atomic<int>> hits(n);
    pool.parallel_for(n, 1, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) hits[i]++;
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1);
  }
  EXPECT_THROW(pool.parallel_for(100, 1, [](int64_t b, int64_t, int) {
    if (b == 0) fail("boom");
  }), Error);
  // still usable after an error
  std::atomic<int64_t> sum{0};
  pool.parallel_for(10, 1, [&](int64_t b, int64_t e, int) { for (auto i = b; i < e; ++i) sum += i; });
  EXPECT_EQ(sum.load(), 45);
}

}  // namespace
}  // namespace ds4
