// Device code of the activation quantizers (BlockQ8_0Act and BlockQ8_K with bsums), for any
// kernel that quantizes its own input or output: bit-identical with quant::quantize_row_q8_0_act
// and quant::quantize_row_q8_k (hence with cpu::quantize_activation), including zero blocks,
// ties, NaN and inf. The _rn intrinsics keep nvcc from contracting or approximating any step.
// The output pointer may be global or shared memory. Every function is a warp-collective:
// all 32 lanes of the warp must call it together (it shuffles with a full mask).
// Internal to the CUDA backend; include from .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "quant/blocks.h"

namespace ds4::cuda {

// Q8_0 activation blocks: the warp's lanes hold the values of 32 / kPerLane blocks of 32,
// each lane kPerLane consecutive values (lane L: elements kPerLane*L .. +kPerLane-1 of the
// warp's span), so lanes [b * 32/kPerLane, (b+1) * 32/kPerLane) make block b. kPerLane = 1: one
// block per warp; kPerLane = 8: 8 blocks (256 values) per warp, as quantize_q8_k_warp reads.
// `blocks` points at the first of the warp's blocks.
template <int kPerLane>
__device__ __forceinline__ void quantize_q8_0_act_warp(const float (&v)[kPerLane], BlockQ8_0Act* blocks) {
  static_assert(kPerLane >= 1 && kPerLane <= 32 && 32 % kPerLane == 0, "a block is 32 values");
  constexpr int kLanesPerBlock = 32 / kPerLane;
  const int lane = threadIdx.x & 31;
  // fmaxf drops NaN, as std::max(amax, |x|) keeps amax when |x| is NaN.
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) amax = fmaxf(amax, fabsf(v[j]));
#pragma unroll
  for (int o = kLanesPerBlock / 2; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float d = __fdiv_rn(amax, 127.0f);
  const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
  BlockQ8_0Act& out = blocks[lane / kLanesPerBlock];
  const int first = (lane % kLanesPerBlock) * kPerLane;  // first element of this lane in its block
#pragma unroll
  for (int j = 0; j < kPerLane; ++j)
    out.qs[first + j] = static_cast<int8_t>(fminf(fmaxf(rintf(__fmul_rn(v[j], id)), -128.0f), 127.0f));
  if (lane % kLanesPerBlock == 0) out.d = d;
}

// One BlockQ8_K (256 values) per warp; lane L holds elements 8L .. 8L+7 (sub-block L/2).
__device__ __forceinline__ void quantize_q8_k_warp(const float (&v)[8], BlockQ8_K* block) {
  const int lane = threadIdx.x & 31;
  // Largest |x|, first index on ties; NaN never wins (strict >), as in the CPU loop.
  float best = 0.0f;
  int bi = INT_MAX;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float ax = fabsf(v[j]);
    if (ax > best) {
      best = ax;
      bi = 8 * lane + j;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ob > best || (ob == best && oi < bi)) {
      best = ob;
      bi = oi;
    }
  }
  BlockQ8_K& out = *block;
  if (best == 0.0f) {  // all zero (or NaN): the CPU memsets the block
    reinterpret_cast<uint32_t*>(out.qs)[2 * lane] = 0;
    reinterpret_cast<uint32_t*>(out.qs)[2 * lane + 1] = 0;
    if ((lane & 1) == 0) out.bsums[lane >> 1] = 0;
    if (lane == 0) out.d = 0.0f;
    return;
  }
  float mine = 0.0f;
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (8 * lane + j == bi) mine = v[j];
  const float xmax = __shfl_sync(0xffffffffu, mine, bi >> 3);
  const float iscale = __fdiv_rn(-127.0f, xmax);
  uint32_t packed[2] = {0, 0};
  int sum = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    // detail::nearest_int: add 1.5*2^23 and read the mantissa (round half to even).
    const float prod = __fmul_rn(iscale, v[j]);
    const int bits = __float_as_int(__fadd_rn(prod, 12582912.0f));
    int q = (bits & 0x007fffff) - 0x00400000;
    // x86 propagates a NaN operand's payload and makes 0xFFC00000 for inf*0, where the GPU
    // returns its canonical NaN; mimic the CPU so NaN activations quantize identically.
    if (isnan(prod)) q = isnan(v[j]) ? (__float_as_int(v[j]) & 0x003fffff) : 0;
    q = min(max(q, -128), 127);
    sum += q;
    packed[j / 4] |= uint32_t(uint8_t(int8_t(q))) << (8 * (j % 4));
  }
  reinterpret_cast<uint32_t*>(out.qs)[2 * lane] = packed[0];
  reinterpret_cast<uint32_t*>(out.qs)[2 * lane + 1] = packed[1];
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  if ((lane & 1) == 0) out.bsums[lane >> 1] = static_cast<int16_t>(sum);
  if (lane == 0) out.d = __fdiv_rn(1.0f, iscale);
}

// 256 values of x (8 consecutive per lane, lane L at 8L) into the warp's registers.
__device__ __forceinline__ void load_256(const float* x, float (&v)[8]) {
  const float4* p = reinterpret_cast<const float4*>(x) + 2 * (threadIdx.x & 31);
  const float4 a = p[0], b = p[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

}  // namespace ds4::cuda
