// Arithmetic that the decode products (matvec.cu) share with kernels outside matvec.cu that
// must reproduce a product's bits (the fused router, forward_kernels.cu).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace ds4::cuda {

// Eight consecutive f16 (or bf16 with kBf16) weights packed in 16 bytes against eight f32
// activations: one fused multiply-add chain in element order, from 0.
template <bool kBf16>
__device__ __forceinline__ float half8_dot(uint4 v, float4 x0, float4 x1) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
  const float xs[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float lo, hi;
    if constexpr (kBf16) {
      lo = __uint_as_float(words[i] << 16);
      hi = __uint_as_float(words[i] & 0xFFFF0000u);
    } else {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
      lo = f.x;
      hi = f.y;
    }
    s = fmaf(lo, xs[2 * i], s);
    s = fmaf(hi, xs[2 * i + 1], s);
  }
  return s;
}

// The sum of v over the 32 lanes of a warp (xor butterfly, offsets 16 .. 1), in every lane.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace ds4::cuda
