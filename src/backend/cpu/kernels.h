// Internal to the CPU backend: the per-ISA tables of row x activation dot products that
// matmul.cpp dispatches to. One table per ISA, each defined in its own translation unit so
// that only that file is compiled with the ISA's flags (src/CMakeLists.txt).
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/ggml_type.h"

namespace ds4::cpu::detail {

// Dot product of one weight row with the activation row in the weight type's partner
// format (matmul.h). ncols is a positive multiple of the weight type's block size.
using VecDotFn = float (*)(const void* w_row, const void* act, int64_t ncols);

// A register-blocked tile of dot products for prefill: for r < nr and t < nt,
//   y[t * ldy + r] = VecDotFn(w + r * w_stride, act + t * act_stride, ncols)
// bit for bit (same per-block integer sums, same float operations in the same order per
// output), but each weight block is decoded once for several activation rows.
using TileFn = void (*)(const void* w, size_t w_stride, int64_t nr, const void* act,
                        size_t act_stride, int64_t nt, int64_t ncols, float* y, size_t ldy);

// Activation quantizer (matmul.h quantize_activation) writing exactly the bytes of the
// scalar one in src/quant (quantize_row_q8_k / quantize_row_q8_0_act); n is a positive
// multiple of the block size.
using QuantizeFn = void (*)(const float* x, void* act, int64_t n);

struct KernelTable {
  VecDotFn f32 = nullptr;
  VecDotFn f16 = nullptr;
  VecDotFn bf16 = nullptr;
  VecDotFn q8_0 = nullptr;
  VecDotFn q2_k = nullptr;
  VecDotFn q4_k = nullptr;
  VecDotFn iq2_xxs = nullptr;
  VecDotFn mxfp4 = nullptr;
  // Optional tiles (nullptr: matmul loops over vec_dot).
  TileFn q8_0_tile = nullptr;
  TileFn q2_k_tile = nullptr;
  TileFn iq2_xxs_tile = nullptr;
  // Optional SIMD activation quantizers (nullptr: the scalar ones of src/quant).
  QuantizeFn quantize_q8_k = nullptr;
  QuantizeFn quantize_q8_0_act = nullptr;
};

const KernelTable& scalar_kernels();
const KernelTable& avx2_kernels();
const KernelTable& avx512_kernels();
const KernelTable& avx512vbmi_kernels();  // avx512 plus the VBMI/GFNI IQ2_XXS and Q2_K kernels
// The two IQ2_XXS kernels of the avx512vbmi tier: group-major (default) or the previous one
// (DS4_CPU_NO_IQ2_GROUPED=1). Both give exact integer block sums; their float accumulation
// differs in rounding only. Exposed so that tests can compare them.
struct Iq2XxsKernels {
  VecDotFn dot;
  TileFn tile;
};
Iq2XxsKernels iq2_xxs_vbmi_kernels(bool grouped);
// Puts the GFNI Q2_K kernels (q2_k_gfni_avx512.cpp) into an avx512vbmi table.
void use_gfni_q2_k(KernelTable& table);

// 2^(e-128), the MXFP4 block scale with ggml's kvalues (which are twice E2M1), including
// the denormal results for e = 0 and 1 (formats.md 2.8).
inline float mxfp4_scale(uint8_t e) {
  const uint32_t bits = e < 2 ? (0x00200000u << e) : (static_cast<uint32_t>(e) - 1u) << 23;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

// kvalues_mxfp4 (formats.md 2.8): twice the E2M1 values, so they are integers.
inline constexpr int8_t kMxfp4Values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

}  // namespace ds4::cpu::detail
