// CPU weight x activation products for every weight type, used by the model's forward pass.
// Weights are rows of `ncols` elements of `type` (GGUF layout, ne[0] = ncols); activations
// are float32. Each call picks the best kernel the CPU supports (scalar, AVX2, AVX-512) at
// run time, quantizing the activations to the weight type's partner format first:
//   Q8_0 and MXFP4 -> BlockQ8_0Act (f32 scale per 32; MXFP4 blocks are 32 wide too),
//   Q2_K/Q4_K/IQ2_XXS -> Q8_K, float types -> f32.
// Integer paths are exact per block; SIMD and scalar results differ only in the order of the
// float accumulation (docs/perf.md). Shapes are checked: ncols must be a positive multiple
// of the weight type's block size, else ds4::Error.
#pragma once

#include <cstdint>

#include "core/ggml_type.h"

namespace ds4 {
class ThreadPool;
}

namespace ds4::cpu {

// Avx512Vbmi = Avx512 plus AVX-512 VBMI (byte permutes) and GFNI, used by the IQ2_XXS kernel.
enum class Isa { Scalar, Avx2, Avx512, Avx512Vbmi };
Isa detected_isa();                 // best ISA of this CPU
const char* isa_name(Isa isa);
// Forces a lower ISA (tests compare each path with the scalar reference); clamps to what
// the CPU supports. Not thread-safe; for tests and benchmarks.
void set_isa(Isa isa);
Isa active_isa();

// y[r] = sum_c W[r, c] * x[c] for r in [0, nrows).
void matvec(GgmlType type, const void* W, int64_t nrows, int64_t ncols, const float* x,
            float* y, ThreadPool* pool = nullptr);

// matvec with the activation already in the partner format of `type` (quantize_activation;
// float* for float types), for callers that multiply one input by several matrices (the
// routed experts' gate/up, parallel projections): the quantization is done once.
void matvec_act(GgmlType type, const void* W, int64_t nrows, int64_t ncols, const void* act,
                float* y, ThreadPool* pool = nullptr);

// Y[b, r] = sum_c W[r, c] * X[b, c] for nb activation rows (prefill): each weight row is
// read once for the whole batch.
void matmul(GgmlType type, const void* W, int64_t nrows, int64_t ncols, const float* X,
            int64_t nb, float* Y, ThreadPool* pool = nullptr);

// Dot product of one weight row with pre-quantized activations (`act` in the partner
// format of `type`, see above; for float types `act` is float*). The building block of
// matvec, exposed for tests and for the MoE path that reuses one quantized input.
float vec_dot(GgmlType type, const void* w_row, const void* act, int64_t ncols);

// Partner activation format for a weight type and its byte size for ncols elements.
GgmlType activation_type(GgmlType weight_type);   // Q8_0 (meaning BlockQ8_0Act), Q8_K or F32
size_t activation_bytes(GgmlType weight_type, int64_t ncols);
void quantize_activation(GgmlType weight_type, const float* x, void* act, int64_t ncols);

}  // namespace ds4::cpu
