// F16-weight GEMM of the prefill on the tensor cores: Y = X W^T for W in F16 (the q2 / q4 /
// mxfp4 recipes' router, compressor kv / gate, indexer q_b / proj and HC fn), X in f32. Plain
// C++ (no CUDA types), like matmul.h; matmul_q dispatches here (the hook in matmul.cpp) for
// the shapes f16_tensor_core_gemm_serves accepts, after the skinny kernel has taken the
// products of at most 32 weight rows; the batched prefill calls it directly for the HC fn
// product (gpu_prefill.cpp).
//
// Numerics: an F16 weight is exact in an f16 MMA operand. An activation x (f32) is split into
// two f16 values, x * 2^e = hi + lo with hi = f16(x * 2^e), lo = f16(x * 2^e - hi) (the
// difference is exact in f32), so that hi + lo keeps ~22 significant bits of x. Each product
// is two mma.sync m16n8k16 (W hi, W lo) accumulated in f32 over one stage of columns; the
// stage sums are added in ordinary f32 (one tensor-core accumulator over a long K drifts:
// 7.4e-6 relative at K = 4096 on an H100, over 1e-5 at 16384), and the result is scaled back by
// 2^-e. e = 0 unless the token's row has max |x| outside [2^-3, 2^15) (f16 would overflow, or
// lo would fall into f16's subnormals): then that row is recomputed with the power of two e
// that takes its max into [2^14, 2^15). So the result equals the f32 product (cpu::matmul)
// up to ~2^-22 relative per term and the summation order (measured 2e-7 .. 6e-7 relative L2
// against cpu::matmul on an H200, tests/cuda/test_prefill_gemm.cpp).
// Determinism: fixed output tiles (64 tokens x 64 rows; 16 x 32 for at most 32 rows, whose
// warps split each stage and add their sums in warp order), the whole K in one CTA in
// ascending order (no split-K across CTAs), and e depends only on the token's own row: a
// token's output row is bit-identical whatever T is and whichever tokens share the launch
// (the batched prefill's chunkings need this), as long as the same kernel serves it (the
// choice depends on the row and column counts only, never on T).
#pragma once

#include <cstdint>

#include "core/ggml_type.h"

namespace ds4::cuda {

// Whether the tensor-core kernel serves this product: F16 weights, ncols a positive multiple
// of 64, W and x 16-byte aligned, and DS4_CUDA_NO_F16_TC_GEMM not set in the environment (an
// A/B switch back to the f32 CUDA-core kernel, read on every call so that tests can flip it).
// Independent of T and of the row count.
bool f16_tensor_core_gemm_serves(GgmlType type, int64_t ncols, const void* d_w, const void* d_x);

// d_y[t * nrows + r] = W[r, :] . x_t for t < T, r < nrows (W: nrows x ncols F16, row-major;
// x: T x ncols f32). Asynchronous on `stream`; the caller (matmul_q, the prefill's HC pre)
// checks the arguments and f16_tensor_core_gemm_serves.
void f16_tensor_core_gemm(const void* d_w, int64_t nrows, int64_t ncols, const float* d_x, int64_t T, float* d_y,
                          void* stream);

}  // namespace ds4::cuda
