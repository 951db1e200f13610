// f32 values as pairs of f16 values x = hi + lo for f16 tensor-core products at ~22 bits
// (hi = f16(x), lo = f16(x - hi); x - hi is exact in f32): shared by the prefill attention
// (prefill_attention.cu) and the F16-weight GEMM (matmul_f16.cu). Internal to the CUDA
// backend; include from .cu files only.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ds4::cuda {

__device__ __forceinline__ uint32_t half2_bits(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }

// x = hi + lo for a pair of floats, as two packed half2 registers.
__device__ __forceinline__ void split2(float x, float y, uint32_t& hi, uint32_t& lo) {
  const __half2 h = __floats2half2_rn(x, y);
  const float2 f = __half22float2(h);
  hi = half2_bits(h);
  lo = half2_bits(__floats2half2_rn(x - f.x, y - f.y));
}

// Four floats as hi / lo halves at hi[0..3], lo[0..3] (8-byte aligned).
__device__ __forceinline__ void split_store(float4 v, __half* hi, __half* lo) {
  uint2 h, l;
  split2(v.x, v.y, h.x, l.x);
  split2(v.z, v.w, h.y, l.y);
  *reinterpret_cast<uint2*>(hi) = h;
  *reinterpret_cast<uint2*>(lo) = l;
}

}  // namespace ds4::cuda
