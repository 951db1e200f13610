// Simulations of DeepSeek's trained low-precision activations (architecture.md 3.4.4, 3.4.7,
// 6; formats.md 2.11). The `official` numerics mode applies them: the FP8 E4M3 round trip of
// the KV non-RoPE dims and the Hadamard + FP4 E2M1 round trip of indexer queries and keys.
// The `exact` mode (what the HF fixtures compute) skips them.
#pragma once

#include <cstdint>

namespace ds4::model {

// Nearest E4M3FN value (ties to the even code) of v, |v| <= 448.
float e4m3_round(float v);
// Nearest E2M1 value {0, .5, 1, 1.5, 2, 3, 4, 6} (ties to the even code) of v, |v| <= 6.
float e2m1_round(float v);

// In-place FP8 round trip in blocks of `block` values: scale 2^ceil(log2(amax / 448)) with
// amax floored at 1e-4 (3.4.4). A last partial block (heads whose non-RoPE part is not a multiple of 64,
// as in the tiny fixtures) is scaled on its own.
void fp8_roundtrip(float* x, int64_t n, int64_t block);
// In-place FP4 round trip in blocks of `block` values: scale 2^ceil(log2(amax / 6)) with
// amax floored at 6 * 2^-126 (3.4.7).
void fp4_roundtrip(float* x, int64_t n, int64_t block);
// In-place natural-order fast Walsh-Hadamard transform scaled by 1/sqrt(n); n a power of 2.
void hadamard(float* x, int64_t n);

}  // namespace ds4::model
