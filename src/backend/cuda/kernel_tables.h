// Internal to the CUDA backend: the host-side forms of the lookup tables the quantized kernels
// (matvec.cu, matmul.cu) upload once to their own device symbols. Built from the quant module's
// tables, never copied as literals.
#pragma once

#include <cstdint>

#include "quant/block_codecs.h"
#include "quant/quant.h"

namespace ds4::cuda::detail {

// IQ2_XXS: for each of the 128 7-bit sign indices, a byte mask with 0xFF where the weight is
// negative (8 weights per 64-bit mask).
inline void iq2xxs_sign_masks(uint64_t masks[128]) {
  const uint8_t* signs = quant::ksigns_iq2xs();
  for (int i = 0; i < 128; ++i) {
    uint64_t m = 0;
    for (int j = 0; j < 8; ++j)
      if ((signs[i] >> j) & 1) m |= uint64_t(0xFF) << (8 * j);
    masks[i] = m;
  }
}

// MXFP4 element values (quant::kValuesMxfp4), 16 int8 packed in 4 words for __byte_perm.
inline void mxfp4_values_packed(uint32_t mx[4]) {
  for (int i = 0; i < 4; ++i) {
    mx[i] = 0;
    for (int j = 0; j < 4; ++j) mx[i] |= uint32_t(uint8_t(quant::kValuesMxfp4[4 * i + j])) << (8 * j);
  }
}

}  // namespace ds4::cuda::detail
