// Hand-built blocks, byte by byte from the layouts of formats.md section 2, decoded through
// dequantize_row: these pin the byte layout, independently of the quantizers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "quant/quant.h"

namespace ds4::quant {
namespace {

void put_u16(std::vector<uint8_t>& b, size_t off, uint16_t v) {
  b[off] = static_cast<uint8_t>(v & 0xFF);
  b[off + 1] = static_cast<uint8_t>(v >> 8);
}
void put_u32(std::vector<uint8_t>& b, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[off + i] = static_cast<uint8_t>(v >> 8 * i);
}

std::vector<float> decode(GgmlType t, const std::vector<uint8_t>& bytes, int64_t n) {
  // Copy into 8-byte aligned storage: blocks are read through their structs.
  std::vector<uint64_t> aligned((bytes.size() + 7) / 8);
  std::memcpy(aligned.data(), bytes.data(), bytes.size());
  std::vector<float> y(static_cast<size_t>(n));
  dequantize_row(t, aligned.data(), y.data(), n);
  return y;
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> b(n);
  for (auto& v : b) v = static_cast<uint8_t>(rng() & 0xFF);
  return b;
}

// f16 values used for d: ordinary, negative, and the smallest subnormal (formats.md 2.1).
constexpr uint16_t kHalfHalf = 0x3800;      // 0.5
constexpr uint16_t kHalfQuarter = 0x3400;   // 0.25
constexpr uint16_t kHalfMinusTwo = 0xC000;  // -2
constexpr uint16_t kHalfSubnormal = 0x0001; // 2^-24
constexpr uint16_t kHalfSubnormal2 = 0x03FF; // largest subnormal, 1023 * 2^-24

TEST(Layout, Q8_0) {
  for (uint16_t d : {kHalfHalf, kHalfMinusTwo, kHalfSubnormal, kHalfSubnormal2}) {
    std::vector<uint8_t> b(2 * 34);
    for (int blk = 0; blk < 2; ++blk) {
      put_u16(b, 34 * blk, blk ? kHalfQuarter : d);
      for (int j = 0; j < 32; ++j) b[34 * blk + 2 + j] = static_cast<uint8_t>(int8_t(4 * j - 128));
    }
    const auto y = decode(GgmlType::Q8_0, b, 64);
    for (int j = 0; j < 32; ++j) {
      EXPECT_EQ(y[j], fp16_to_f32(d) * float(4 * j - 128)) << j;
      EXPECT_EQ(y[32 + j], 0.25f * float(4 * j - 128)) << j;
    }
  }
  EXPECT_EQ(fp16_to_f32(kHalfSubnormal), std::ldexp(1.0f, -24));
}

// formats.md 2.3, element e: s = e/16, byte qs[32(e/128) + e%32], shift 2((e%128)/32).
TEST(Layout, Q2_K) {
  for (uint16_t d : {kHalfHalf, kHalfSubnormal, kHalfSubnormal2}) {
    auto b = random_bytes(84, 7);
    put_u16(b, 80, d);
    put_u16(b, 82, kHalfQuarter);
    const auto y = decode(GgmlType::Q2_K, b, 256);
    for (int e = 0; e < 256; ++e) {
      const uint8_t sc_byte = b[e / 16];
      const int q = (b[16 + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
      const float w = fp16_to_f32(d) * float(sc_byte & 0xF) * float(q) - 0.25f * float(sc_byte >> 4);
      EXPECT_EQ(y[e], w) << e;
    }
  }
  // Known values: scale code 15, min code 2 in sub-block 0; element 0 has q=3, element 32
  // (same byte, shift 2) q=1, element 16 (sub-block 1, byte 16) q=2.
  std::vector<uint8_t> b(84, 0);
  b[0] = 0x2F;
  b[1] = 0x01;  // sub-block 1: scale 1, min 0
  b[16 + 0] = 0x3 | (0x1 << 2);
  b[16 + 16] = 0x2;
  put_u16(b, 80, kHalfHalf);
  put_u16(b, 82, kHalfQuarter);
  const auto y = decode(GgmlType::Q2_K, b, 256);
  EXPECT_EQ(y[0], 0.5f * 15 * 3 - 0.25f * 2);
  EXPECT_EQ(y[1], -0.5f);
  EXPECT_EQ(y[16], 0.5f * 1 * 2);
  EXPECT_EQ(y[32], 0.0f);  // sub-block 2 has scale code 0 and min code 0
  EXPECT_EQ(y[255], 0.0f);
}

// Packs eight 6-bit scales/mins exactly as the prose of formats.md 2.4 describes.
std::vector<uint8_t> pack_q4k_scales(const int* sc, const int* m) {
  std::vector<uint8_t> s(12);
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    s[j + 4] = static_cast<uint8_t>((m[j] & 63) | ((m[j + 4] >> 4) << 6));
    s[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
  }
  return s;
}

TEST(Layout, Q4_K) {
  const int sc[8] = {1, 17, 63, 32, 5, 48, 63, 21};
  const int m[8] = {0, 63, 9, 33, 62, 16, 1, 40};
  const auto s = pack_q4k_scales(sc, m);
  for (uint16_t d : {kHalfHalf, kHalfSubnormal, kHalfSubnormal2}) {
    auto b = random_bytes(144, 11);
    put_u16(b, 0, d);
    put_u16(b, 2, kHalfQuarter);
    std::memcpy(b.data() + 4, s.data(), 12);
    const auto y = decode(GgmlType::Q4_K, b, 256);
    for (int e = 0; e < 256; ++e) {
      const int j = e / 32;
      const uint8_t byte = b[16 + 32 * (e / 64) + e % 32];
      const int q = (e % 64) < 32 ? (byte & 0xF) : (byte >> 4);
      const float w = fp16_to_f32(d) * float(sc[j]) * float(q) - 0.25f * float(m[j]);
      EXPECT_EQ(y[e], w) << e;
    }
  }
}

TEST(Layout, IQ2_XXS) {
  const uint64_t* grid = iq2xxs_grid();
  const uint8_t* ksigns = ksigns_iq2xs();
  for (uint16_t d : {kHalfHalf, kHalfSubnormal2}) {
    auto b = random_bytes(66, 13);
    put_u16(b, 0, d);
    const auto y = decode(GgmlType::IQ2_XXS, b, 256);
    for (int i = 0; i < 256; ++i) {
      const int g = i / 32, k = (i % 32) / 8, j = i % 8;
      const size_t base = 2 + 8 * size_t(g);
      const uint32_t aux = b[base + 4] | (b[base + 5] << 8) | (b[base + 6] << 16) |
                           (uint32_t(b[base + 7]) << 24);
      const float db = fp16_to_f32(d) * (0.5f + float(aux >> 28)) * 0.25f;
      const float G = float((grid[b[base + k]] >> 8 * j) & 0xFF);
      const uint8_t S = ksigns[(aux >> 7 * k) & 127];
      EXPECT_EQ(y[i], db * G * ((S >> j) & 1 ? -1.0f : 1.0f)) << i;
    }
  }
  // Known values, d = 1: group 0 uses grid 0 (all 0x08) with sign index 1 (ksigns 129: bits
  // 0 and 7) and sub-scale 15 -> db = 15.5/4; group 1 uses grid 255 (0x2b2b2b1908081908).
  std::vector<uint8_t> b(66, 0);
  put_u16(b, 0, 0x3C00);
  put_u32(b, 2 + 4, 1u | (15u << 28));
  b[2 + 8] = 255;
  const auto y = decode(GgmlType::IQ2_XXS, b, 256);
  EXPECT_EQ(y[0], -31.0f);
  for (int j = 1; j < 7; ++j) EXPECT_EQ(y[j], 31.0f);
  EXPECT_EQ(y[7], -31.0f);
  EXPECT_EQ(y[8], 31.0f);           // sign index 0 for sub-group 1
  EXPECT_EQ(y[32], 0.125f * 8);     // sub-scale 0: db = 1/8; element 0 of grid 255 = 0x08
  EXPECT_EQ(y[32 + 7], 0.125f * 43);
  EXPECT_EQ(y[32 + 1], 0.125f * 25);
  EXPECT_EQ(y[32 + 3], 0.125f * 8);
}

TEST(Layout, MXFP4) {
  const float kv[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  for (uint8_t e : {uint8_t(128), uint8_t(120), uint8_t(0), uint8_t(1), uint8_t(254)}) {
    std::vector<uint8_t> b(17);
    b[0] = e;
    for (int j = 0; j < 16; ++j) b[1 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
    const auto y = decode(GgmlType::MXFP4, b, 32);
    const float scale = e == 0 ? std::ldexp(1.0f, -128) : std::ldexp(1.0f, e - 128);
    for (int j = 0; j < 16; ++j) {
      EXPECT_EQ(y[j], kv[j] * scale) << j;
      EXPECT_EQ(y[j + 16], kv[15 - j] * scale) << j;
    }
  }
}

TEST(Layout, Q8_K) {
  std::vector<uint8_t> b(292, 0);
  const float d = -0.375f;
  std::memcpy(b.data(), &d, 4);
  for (int i = 0; i < 256; ++i) b[4 + i] = static_cast<uint8_t>(int8_t(i - 128));
  const auto y = decode(GgmlType::Q8_K, b, 256);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(y[i], d * float(i - 128)) << i;
}

TEST(Layout, ScalarTypes) {
  std::vector<uint8_t> b(8);
  put_u16(b, 0, 0x3C00);
  put_u16(b, 2, 0x0001);
  put_u16(b, 4, 0xFC00);
  put_u16(b, 6, 0x8000);
  auto y = decode(GgmlType::F16, b, 4);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(y[2]) && y[2] < 0);
  EXPECT_TRUE(std::signbit(y[3]));
  put_u16(b, 0, 0x3F80);
  put_u16(b, 2, 0xC040);
  y = decode(GgmlType::BF16, b, 2);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -3.0f);
  put_u32(b, 0, uint32_t(-7));
  put_u32(b, 4, 129279);
  y = decode(GgmlType::I32, b, 2);
  EXPECT_EQ(y[0], -7.0f);
  EXPECT_EQ(y[1], 129279.0f);
  const float f[2] = {1.5f, -2.25f};
  std::memcpy(b.data(), f, 8);
  y = decode(GgmlType::F32, b, 2);
  EXPECT_EQ(y[0], 1.5f);
  EXPECT_EQ(y[1], -2.25f);
}

TEST(Layout, AllZeroBlocksDecodeToZero) {
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q4_K, GgmlType::Q8_K,
                     GgmlType::IQ2_XXS}) {
    std::vector<uint8_t> b(row_bytes(t, 512), 0);
    for (float v : decode(t, b, 512)) EXPECT_EQ(v, 0.0f) << type_name(t);
  }
  // MXFP4 with all-zero nibbles is zero whatever the exponent.
  std::vector<uint8_t> b(17, 0);
  b[0] = 200;
  for (float v : decode(GgmlType::MXFP4, b, 32)) EXPECT_EQ(v, 0.0f);
}

TEST(Layout, RejectsPartialBlocks) {
  std::vector<uint8_t> b(1024);
  std::vector<float> y(300);
  EXPECT_THROW(dequantize_row(GgmlType::Q2_K, b.data(), y.data(), 255), Error);
  EXPECT_THROW(dequantize_row(GgmlType::Q8_0, b.data(), y.data(), 33), Error);
  EXPECT_THROW(quantize_row(GgmlType::Q4_K, y.data(), b.data(), 100), Error);
  EXPECT_THROW(quantize_row(GgmlType::I32, y.data(), b.data(), 4), Error);
  std::vector<float> bad(256, 1.0f);
  bad[17] = std::nanf("");
  EXPECT_THROW(quantize_row(GgmlType::Q2_K, bad.data(), b.data(), 256), Error);
  bad[17] = INFINITY;
  EXPECT_THROW(quantize_row(GgmlType::Q8_0, bad.data(), b.data(), 256), Error);
  EXPECT_NO_THROW(quantize_row(GgmlType::F16, bad.data(), b.data(), 256));  // inf is an f16
  EXPECT_FALSE(can_quantize(GgmlType::I32));
  EXPECT_TRUE(can_quantize(GgmlType::IQ2_XXS));
}

}  // namespace
}  // namespace ds4::quant
