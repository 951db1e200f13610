// Row-level conversion between float32 and every supported tensor type.
// Dequantization follows formats.md section 2 exactly; quantization follows the ggml
// reference searches of formats.md section 3 (bit-exact with ds4's quantizer).
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/ggml_type.h"
#include "quant/blocks.h"

namespace ds4 {
class ThreadPool;
}

namespace ds4::quant {

// dst[0..n) = value of the n elements at src. n must be a multiple of the block size.
// Supports F32, F16, BF16, Q8_0, Q2_K, Q4_K, IQ2_XXS, MXFP4, Q8_K; I32 is converted to float.
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

// Whether quantize_row supports `type` as a target.
bool can_quantize(GgmlType type);

// Encodes n floats into `type` at dst (row_bytes(type, n) bytes).
// `importance` (n per-column weights, or nullptr) drives the weighted searches of
// Q2_K, Q4_K and IQ2_XXS (formats.md 3.3-3.7); IQ2_XXS without importance uses this row's
// x^2 (the one-row case of quantize_rows' per-matrix weight-energy fallback). Other types
// ignore it. Block types throw ds4::Error on non-finite input. Output is byte-identical to
// ggml's reference quantizers (tests/quant/test_golden.cpp).
void quantize_row(GgmlType type, const float* src, void* dst, int64_t n,
                  const float* importance = nullptr);

// Quantizes a [nrows, ncols] row-major matrix, in parallel over rows when `pool` is given.
// For IQ2_XXS with importance == nullptr the weight-energy fallback of formats.md 3.7 is
// used: qw[c] = sum over rows of x[r,c]^2.
void quantize_rows(GgmlType type, const float* src, void* dst, int64_t nrows, int64_t ncols,
                   const float* importance = nullptr, ThreadPool* pool = nullptr);

// Activation quantizers used by the kernels (formats.md 2.6 and 2.10).
void quantize_row_q8_k(const float* x, BlockQ8_K* dst, int64_t n);
void quantize_row_q8_0_act(const float* x, BlockQ8_0Act* dst, int64_t n);

// Small scalar formats used by the official checkpoint and the runtime simulations.
float e4m3fn_to_f32(uint8_t v);   // 0x7F/0xFF (NaN) decode to 0, as ds4 does
float e8m0_to_f32(uint8_t e);     // 2^(e-127); e=0 -> 2^-127
float e2m1_to_f32(uint8_t nib);   // {0,.5,1,1.5,2,3,4,6}, bit 3 = sign

// IQ2_XXS tables (formats.md Appendix A), verified by SHA-256 in the tests.
const uint64_t* iq2xxs_grid();    // 256 entries
const uint8_t* ksigns_iq2xs();    // 128 entries
const uint16_t* kgrid_2bit_256(); // 256 entries

}  // namespace ds4::quant
