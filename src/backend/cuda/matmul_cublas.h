// Q8_0 weight products of the prefill through cuBLAS half-precision GEMMs (the int8 kernels
// of matmul.h reach only ~7% of the int8 tensor peak on an H200: the per-32-block float
// scaling and the weight-tile decode dominate). Plain C++ (no CUDA types), like matmul.h.
//
// One product Y = X W^T of T activation rows with a Q8_0 weight (nrows x ncols):
//  1. the activations are quantized exactly as quantize_activation(Q8_0) does (the same
//     BlockQ8_0Act codes q and scales d, bit-identical to the CPU's) and each value written
//     as f16(q * d * 2^e_t), where e_t is a power of two per token row: 0 while the row's
//     max |x| lies in [2^-6, 2^15), else the one that brings it into [2^14, 2^15). f16 then
//     never overflows and no nonzero code falls into f16's subnormals;
//  2. the weight rows are expanded to f16(q * d) (a Q8_0 weight scale d is itself f16: the
//     product is exact where it is subnormal and rounded to 11 bits otherwise; it overflows
//     only for |d| > 515, which q8_0_weights_fit_f16 rules out once per tensor);
//  3. one cublasLt GEMM, f16 inputs, f32 accumulation and output;
//  4. the rows with e_t != 0 are multiplied by 2^-e_t (exact).
// A product of two f16 values is exact in f32, and a power of two scales every step exactly,
// so the result does not depend on e_t. It differs from cpu::matmul (exact int32 block sums,
// one float term per block) by the f16 rounding of q * d (2^-11 relative at most per factor)
// and the summation order: ~1e-4 relative, far below the Q8_0 rounding of the activations
// that both make (tests/cuda/test_matmul_cublas.cpp measures it).
//
// Determinism: the algorithm (tile shape, no split-K, no reduction across CTAs) is chosen
// once per (rows, cols, output alignment) from cuBLAS's heuristic at a fixed token count and
// then used for every T, so a token's output row does not depend on T or on the tokens that
// share the call (the batched prefill's chunkings need this; tested bit for bit).
//
// Switches (read on every call of cublas_gemm_enabled): DS4_CUDA_NO_CUBLAS_GEMM set keeps the
// int8 kernels; the path is on by default (kCublasGemmByDefault in matmul_cublas.cu, measured
// faster on an H200); DS4_CUDA_CUBLAS_GEMM set turns it on where the default is off.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/ggml_type.h"

namespace ds4::cuda {

// Whether the cuBLAS path is switched on (see above) and serves weights of `type` (Q8_0 only).
bool cublas_gemm_enabled(GgmlType type);

// Whether every block scale of the Q8_0 weight (nrows x ncols) satisfies |d| <= 512, so that
// 127 * d stays inside f16's range. Synchronizes the stream: call once per tensor.
bool q8_0_weights_fit_f16(const void* d_w, int64_t nrows, int64_t ncols, void* stream = nullptr);
// The same for many tensors with one synchronization: fits[i] for (w[i], rows[i], cols[i]).
void q8_0_weights_fit_f16_many(const void* const* d_w, const int64_t* rows, const int64_t* cols, int n, bool* fits,
                               void* stream = nullptr);

// Device scratch of the cuBLAS path, sized by the caller once (never allocated per call):
//   w16:  f16 weights, nrows * ncols halves (the shared expert: 2 * n_ff * n_embd);
//   x16:  f16 activations, T * ncols halves;
//   exps: int32 per activation row (T);
//   f32:  the shared expert's gate / up products, T * 2 * n_ff floats (other products: none).
// Every pointer 256-byte aligned.
struct F16GemmScratch {
  void* w16 = nullptr;
  size_t w16_bytes = 0;
  void* x16 = nullptr;
  size_t x16_bytes = 0;
  int32_t* exps = nullptr;
  int64_t exps_rows = 0;
  float* f32 = nullptr;
  size_t f32_bytes = 0;
};

// Expands the Q8_0 weight rows into scratch.w16 (row-major, nrows x ncols halves).
void q8_0_weights_to_f16(const void* d_w, int64_t nrows, int64_t ncols, const F16GemmScratch& scratch,
                         void* stream = nullptr);

// Quantizes T rows of d_x (ncols floats each) to Q8_0 codes and writes them as scaled f16
// into scratch.x16 (exponents in scratch.exps), as described above.
void q8_0_act_to_f16(const float* d_x, int64_t T, int64_t ncols, const F16GemmScratch& scratch,
                     void* stream = nullptr);

// d_y[t * nrows + r] = sum_k x16[t][k] * w16[w_row0 + r][k] * 2^-exps[t]: the GEMM on the
// expanded operands already in the scratch (w16 rows w_row0 .. w_row0 + nrows).
void f16_scratch_gemm(const F16GemmScratch& scratch, int64_t w_row0, int64_t nrows, int64_t ncols, int64_t T,
                      float* d_y, void* stream = nullptr);

// All three steps: Y = X W^T for a Q8_0 weight that fits f16 (q8_0_weights_fit_f16).
void cublas_q8_0_gemm(const void* d_w, int64_t nrows, int64_t ncols, const float* d_x, int64_t T, float* d_y,
                      const F16GemmScratch& scratch, void* stream = nullptr);

// The shared expert of one layer (architecture.md 3.5.3) for T tokens, Q8_0 gate / up
// (n_ff x n_embd) and down (n_embd x n_ff):
//   h_t = silu(min(G x_t, limit)) * clamp(U x_t, -limit, limit),   y_t = D h_t
// gate and up as one GEMM (their rows side by side in w16), the SwiGLU with the clamps in a
// kernel that also quantizes h_t to Q8_0 codes for the down product (the arithmetic of
// moe_experts_batch's epilogue, weight 1), then the down GEMM.
void cublas_q8_0_shared_expert(const void* d_gate, const void* d_up, const void* d_down, int64_t n_embd,
                               int64_t n_ff, float limit, const float* d_x, int64_t T, float* d_y,
                               const F16GemmScratch& scratch, void* stream = nullptr);

}  // namespace ds4::cuda
