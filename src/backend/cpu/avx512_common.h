// Small helpers shared by the AVX-512 kernel files (include only from *_avx512.cpp).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace ds4::cpu::detail {
namespace {

// The f16 at p as a float through vcvtph2ps with a memory operand: one vector op, where
// _cvtsh_ss costs an insert plus a two-op register conversion. Reads 16 bytes from p, so
// only for a block's scale field followed by at least 14 more bytes of the same block.
inline float f16_block_field(const uint16_t* p) {
  return _mm256_cvtss_f32(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

}  // namespace
}  // namespace ds4::cpu::detail
