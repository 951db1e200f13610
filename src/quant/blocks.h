// Byte layouts of the block formats (formats.md section 2), bit-compatible with ggml.
// All multi-byte fields are little-endian; f16 fields are raw IEEE binary16 bits.
#pragma once

#include <cstdint>

namespace ds4 {

constexpr int QK8_0 = 32;
constexpr int QK_K = 256;
constexpr int QK_MXFP4 = 32;

struct BlockQ8_0 {  // 34 bytes / 32 weights: w = d * qs
  uint16_t d;
  int8_t qs[QK8_0];
};
static_assert(sizeof(BlockQ8_0) == 34);

struct BlockQ2_K {  // 84 bytes / 256 weights: w = d*sc*q - dmin*m  (d comes last)
  uint8_t scales[QK_K / 16];  // low nibble scale code, high nibble min code, per 16 weights
  uint8_t qs[QK_K / 4];       // 2-bit codes
  uint16_t d;
  uint16_t dmin;
};
static_assert(sizeof(BlockQ2_K) == 84);

struct BlockQ4_K {  // 144 bytes / 256 weights
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];  // 8 six-bit scales and 8 six-bit mins, packed (formats.md 2.4)
  uint8_t qs[QK_K / 2];
};
static_assert(sizeof(BlockQ4_K) == 144);

struct BlockIQ2_XXS {  // 66 bytes / 256 weights
  uint16_t d;
  uint16_t qs[QK_K / 8];  // 8 groups of {4 grid bytes, u32 signs+scale}
};
static_assert(sizeof(BlockIQ2_XXS) == 66);

struct BlockQ8_K {  // 292 bytes / 256 activations (never in files)
  float d;
  int8_t qs[QK_K];
  int16_t bsums[QK_K / 16];
};
static_assert(sizeof(BlockQ8_K) == 292);

struct BlockMXFP4 {  // 17 bytes / 32 weights: w = kvalues[nib] * 2^(e-128)
  uint8_t e;
  uint8_t qs[QK_MXFP4 / 2];  // element j low nibble of qs[j], element j+16 high nibble
};
static_assert(sizeof(BlockMXFP4) == 17);

// Activation block for Q8_0 weights (formats.md 2.10): like Q8_0 but the scale stays f32,
// as ds4 keeps it; never stored in files.
struct BlockQ8_0Act {
  float d;
  int8_t qs[QK8_0];
};
static_assert(sizeof(BlockQ8_0Act) == 36);

}  // namespace ds4
