// Scale decoding shared by the GPU's block-format kernels (decode products in matvec.cu, the
// prefill's int8 GEMMs in matmul.cu, the f16 expansion of the routed experts in moe_f16.cu):
// one definition, so the three read the same bits as the CPU (formats.md).
#pragma once

#include <cstdint>

namespace ds4::cuda {

// 2^(e-128) with the f32 denormals for e = 0, 1 (formats.md 2.8), as cpu::detail::mxfp4_scale.
__device__ __forceinline__ float mxfp4_scale(uint32_t e) {
  return __uint_as_float(e < 2 ? (0x00200000u << e) : (e - 1u) << 23);
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K block from its 12 packed bytes s.
__device__ __forceinline__ void q4k_scale_min(int j, const uint8_t* s, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

}  // namespace ds4::cuda
