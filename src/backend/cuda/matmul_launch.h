// Internal to the CUDA backend: prefill launchers defined in matmul.cu, called by matmul.cpp
// after it has validated the arguments (messages are built there: .cu files cannot use fmt).
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/ggml_type.h"

namespace ds4::cuda::detail {

// Tile sizes of the tensor-core GEMM (matmul.cu): rows of W per CTA, tokens per CTA.
inline constexpr int kMmRows = 128;
inline constexpr int kMmTokens = 64;

// Y[t][r] = W[r] . act[t]: quantized types (tensor cores) and float types (f32 FMA).
void launch_matmul(GgmlType type, const void* w, int64_t nrows, int64_t ncols, const void* act,
                   int64_t T, float* y, void* stream);

// Skinny float GEMM (F32/F16/BF16 weights of at most kSkinnyMaxRows rows, ncols a multiple
// of 4, x 16-byte aligned, W 16-byte (F32) or 8-byte (F16/BF16) aligned; matmul.cpp checks):
// Y[t][r] = W[r] . x[t] with a summation order fixed per output (matmul.cu).
inline constexpr int64_t kSkinnyMaxRows = 32;
void launch_skinny_float_mm(GgmlType type, const void* w, int64_t nrows, int64_t ncols, const float* x,
                            int64_t T, float* y, void* stream);

// Workspace pointers of one grouped MoE call (matmul.cpp lays them out).
struct MoeBatchWs {
  void* act_x;           // T rows, partner format of gate_up_type
  int32_t* ctrl;         // [0] tile count, [1] skipped entries
  int32_t* tiles;        // max_tiles x {expert, first slot, count, 0}
  int32_t* slot_token;   // [T * n_used]
  float* slot_w;         // [T * n_used]
  int32_t* slot_of;      // [T * n_used] (t, k) -> slot or -1
  float* h;              // [T * n_used][n_ff]
  void* act_h;           // T * n_used rows, partner format of down_type
  float* z;              // [T * n_used][n_embd]
  int max_tiles;
};

// Builds the expert lists and tile table from ids/route_w (one block, no host sync).
void launch_moe_route(const int32_t* ids, const float* route_w, int64_t T, int n_used, int n_expert,
                      const MoeBatchWs& ws, void* stream);
// h[slot] = w_slot * SwiGLU(gate_e act_x[token], up_e act_x[token]) for every slot.
void launch_moe_gate_up_batch(GgmlType type, const void* gate, const void* up, int64_t n_embd,
                              int64_t n_ff, float limit, const MoeBatchWs& ws, void* stream);
// z[slot] = down_e act_h[slot].
void launch_moe_down_batch(GgmlType type, const void* down, int64_t n_embd, int64_t n_ff,
                           const MoeBatchWs& ws, void* stream);
// y[t] = sum over k (ascending expert id) of z[slot_of[t][k]].
void launch_moe_combine(const int32_t* ids, int64_t T, int n_used, int64_t n_embd,
                        const MoeBatchWs& ws, float* y, void* stream);

}  // namespace ds4::cuda::detail
