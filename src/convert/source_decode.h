// Exact decoding of checkpoint tensors to float32 (formats.md 4.2-4.4): BF16/F16/F32 widen,
// FP8 E4M3 weights times their 128x128 E8M0 block scales, FP4 E2M1 experts (two codes per
// byte, element 2j in the low nibble) times one E8M0 scale per 32 inputs. Every product is
// exact in f32. Also the lossless FP4 -> MXFP4 repack and the I64 -> I32 tid2eid narrowing.
#pragma once

#include <cstdint>

#include "convert/safetensors.h"

namespace ds4::convert {

// Logical [rows, cols] view of a weight: a 1-D tensor is one row; FP4 (I8) has two elements
// per stored byte.
int64_t logical_rows(const StTensor& w);
int64_t logical_cols(const StTensor& w);

// out[(r - r0) * cols + c] = W[r, c] for r in [r0, r1). `scale` is the companion of FP8 and
// FP4 weights and nullptr otherwise (validated beforehand by validate_checkpoint).
void decode_rows(const StTensor& w, const StTensor* scale, int64_t r0, int64_t r1, float* out);

// Repacks an FP4 expert matrix [rows, cols] (I8 codes + E8M0 per-32 scales) into MXFP4 blocks
// (formats.md 2.8) bit-exactly: the exponent byte is kept (MXFP4's values are twice E2M1 and
// its scale 2^(e-128), the same product), nibbles reordered from (2j low, 2j+1 high) to
// (j low, j+16 high). dst holds rows * cols / 32 blocks of 17 bytes.
void repack_fp4_to_mxfp4(const StTensor& w, const StTensor& scale, uint8_t* dst);

// tid2eid (I64 or I32 [vocab, k]) -> int32, each id checked to be in [0, n_experts).
void decode_tid2eid(const StTensor& t, uint32_t n_experts, int32_t* out);

}  // namespace ds4::convert
