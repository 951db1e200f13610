// Prefill products on the GPU (T tokens at once, compute bound): Y = X W^T for every weight
// type of the DS4 recipes, and the grouped routed-expert FFN of one MoE layer. Plain C++ (no
// CUDA types), like matvec.h: device pointers are void*/float*, a stream is its cudaStream_t
// as void* (nullptr = default stream); every call is asynchronous on that stream and checks
// its arguments on the host (ds4::Error).
//
// Numerics follow src/backend/cpu/matmul.h exactly per block: the activations are the same
// partner-format rows cpu::quantize_activation makes (cuda::quantize_activation produces
// them bit-identically, T rows in one call), weight tiles are decoded to int8 and multiplied
// on the tensor cores (mma.sync m16n8k32 s8 -> exact int32 per 32-element chunk), the
// integer sub-block scales are applied in int32, and each block then adds one float term, as
// the CPU's vec_dot does. The Q2_K/Q4_K min terms (sum_s m_s * bsums_s) are exact too (an
// f16 MMA over small integers, f32 accumulation below 2^24). So results equal cpu::matmul
// up to float summation order. F32/F16/BF16 weights use f32 FMA kernels on the CUDA cores
// (the CPU's f32 products; tensor-core f16 would round the f32 activations): a skinny kernel
// for at most 32 weight rows (the HC mixing logits, 24 x 16384; see skinny_float_gemm_serves)
// and 64 x 64 tiles otherwise. Either way a token's output row is bit-identical whatever T
// is and whichever tokens share the call.
//
// Use (prefill of T tokens, x = T rows of ncols floats, row-major):
//   size_t ab = cuda::activation_bytes(type, ncols);            // matvec.h, per row
//   cuda::quantize_activation(type, d_x, d_act, T * ncols, s);  // T rows, one call
//   cuda::matmul_q(type, d_w, nrows, ncols, d_act, T, d_y, s);  // d_y: T rows of nrows
// or cuda::matmul(...) which does both with a scratch of T * ab bytes.
//
// Routed experts of one layer for T tokens: cuda::moe_experts_batch (below). It builds the
// token -> expert lists on the GPU (no host sync), runs gate+up with SwiGLU, the asymmetric
// clamp and the route weight fused into the GEMM epilogue, then down, and sums each token's
// expert outputs in ascending expert id (the order of model/moe.cpp's CPU loop), with no
// float atomics: results are deterministic. The shared expert is the same call with
// n_expert = 1, n_used = 1, ids all 0 and route weights 1. For many tokens (T >= 4096 by
// default) the gate/up and down products run instead on the f16 tensor cores through cuBLAS,
// with the experts' weights expanded to f16 (moe_f16.h: its numerics, switches and the one host
// sync it costs); the SwiGLU, clamp, route weight and ordered sum are the same.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/ggml_type.h"

namespace ds4::cuda {

// Whether `type` has a GPU prefill kernel (F32, F16, BF16, Q8_0, Q2_K, Q4_K, IQ2_XXS, MXFP4).
bool matmul_supported(GgmlType type);

// Y[t * nrows + r] = W[r, :] . act_t for t < T, r < nrows. d_act holds T rows of
// activation_bytes(type, ncols) bytes (the partner format; for float types T rows of ncols
// f32). W rows are row_bytes(type, ncols) apart. T = 0 or nrows = 0 is a no-op.
void matmul_q(GgmlType type, const void* d_w, int64_t nrows, int64_t ncols, const void* d_act,
              int64_t T, float* d_y, void* stream = nullptr);

// Whether matmul_q / matmul run the skinny float kernel for these arguments: F32/F16/BF16
// weights of at most 32 rows, ncols a multiple of 4, d_x 16-byte aligned, d_w 16-byte (F32)
// or 8-byte aligned, and DS4_CUDA_NO_SKINNY_GEMM not set in the environment (an A/B switch
// back to the tiled kernel, read on every call). Independent of T, so that a token's result
// does not depend on how a batch is split.
bool skinny_float_gemm_serves(GgmlType type, int64_t nrows, int64_t ncols, const void* d_w, const void* d_x);

// Quantizes the T rows of d_x into d_scratch (T * activation_bytes(type, ncols) bytes; may be
// nullptr for float types) and runs matmul_q.
void matmul(GgmlType type, const void* d_w, int64_t nrows, int64_t ncols, const float* d_x,
            int64_t T, float* d_y, void* d_scratch, void* stream = nullptr);

// Routed experts of one MoE layer for T tokens (architecture.md 3.5.2):
//   h_{t,k} = w_{t,k} * silu(min(G_e x_t, limit)) * clamp(U_e x_t, -limit, limit),  e = ids[t][k]
//   y_t     = sum over k, in ascending e, of D_e h_{t,k}
// gate/up: [n_expert][n_ff rows][n_embd cols] of gate_up_type; down: [n_expert][n_embd rows]
// [n_ff cols] of down_type (GGUF stacked layout). ids (int32) and route_w (f32) are device
// arrays [T][n_used]; x and y are [T][n_embd] f32. An id outside [0, n_expert) cannot be
// checked on the host without a sync: that entry is skipped (contributes nothing) and counted,
// see moe_batch_invalid_ids. d_workspace holds moe_batch_workspace_bytes(s, T) bytes (about
// T * n_used * (n_embd + n_ff) * 5 bytes: the per-(token, expert) outputs are kept so that
// the final sum runs in a fixed order; plus the f16 path's part for T >= 128, see
// moe_f16_workspace_bytes).
struct MoeBatchShape {
  GgmlType gate_up_type = GgmlType::IQ2_XXS;
  GgmlType down_type = GgmlType::Q2_K;
  int64_t n_embd = 4096;
  int64_t n_ff = 2048;
  int n_expert = 256;
  int n_used = 6;
  float limit = 10.0f;
};
size_t moe_batch_workspace_bytes(const MoeBatchShape& s, int64_t T);
void moe_experts_batch(const MoeBatchShape& s, const void* d_gate, const void* d_up,
                       const void* d_down, const int32_t* d_ids, const float* d_route_w,
                       const float* d_x, int64_t T, float* d_y, void* d_workspace,
                       void* stream = nullptr);

// Number of (token, k) entries the last moe_experts_batch on this workspace skipped for an
// out-of-range expert id. Synchronizes the stream.
int64_t moe_batch_invalid_ids(const MoeBatchShape& s, int64_t T, const void* d_workspace,
                              void* stream = nullptr);

// For tests: device pointers into the workspace of the last call. slot[t * n_used + k] is the
// row of h (f32, n_ff wide) that entry (t, k) used (-1 if skipped). After a call that took the
// f16 path (moe_f16.h) h holds f16 rows instead and is not meaningful as f32.
struct MoeBatchDebug {
  const int32_t* slot;
  const float* h;
};
MoeBatchDebug moe_batch_debug(const MoeBatchShape& s, int64_t T, const void* d_workspace);

}  // namespace ds4::cuda
