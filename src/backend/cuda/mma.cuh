// Tensor-core primitives shared by the kernels that use mma.sync (matmul.cu, the prefill
// GEMMs; prefill_attention.cu). Internal to the CUDA backend; include from .cu files only.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 / ldmatrix), with g = lane / 4 and t = lane % 4:
//  - A (16 x 16, row-major): a0 = (row g, cols 2t, 2t+1), a1 = (row g+8, the same cols),
//    a2 = (row g, cols 2t+8, 2t+9), a3 = (row g+8, cols 2t+8, 2t+9);
//  - B (16 x 8, "col"): b0 = (k 2t, 2t+1; col g), b1 = (k 2t+8, 2t+9; col g);
//  - C / D (16 x 8, f32): c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, cols 2t, 2t+1).
// ldmatrix .x4 loads four 8 x 8 b16 matrices; lanes 8i .. 8i+7 give the row addresses of
// matrix i and register i receives matrix i in the layout above (row g, cols 2t, 2t+1), or
// with .trans its transpose (rows 2t, 2t+1 of col g).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ds4::cuda {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices from shared memory (lane L gives the address of one row).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// The same, each matrix transposed: a B fragment from a tile stored k-major ([k][n]).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// d += a b, fp16 inputs, f32 accumulators.
__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d = a b, int8 inputs, s32 accumulators, m16n8k32 (exact integer products and sums). The
// same fragment layouts with 4 int8 per register: A a0 = (row g, k 4t .. 4t+3), a1 = (row
// g+8, the same k), a2 / a3 = the same rows at k + 16; B b0 = (k 4t .. 4t+3; col g), b1 =
// the same at k + 16; D as above.
__device__ __forceinline__ void mma_s8(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(0));
}

}  // namespace ds4::cuda
