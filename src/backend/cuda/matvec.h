// Batch-1 decode products on the GPU: y = W x for every weight type of the DS4 recipes, the
// activation quantizers they pair with, and the fused routed-expert FFN. Plain C++ (no CUDA
// types): device pointers are void*/float*, a stream is its cudaStream_t as void* (nullptr =
// default stream). All calls are asynchronous on that stream and check their arguments on the
// host (ds4::Error). Numerics follow src/backend/cpu/matmul.h: the activations are quantized
// to the same partner format, bit-exact with the CPU quantizers, and each block's integer sum
// is exact, so results equal cpu::matvec up to float summation order.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/ggml_type.h"

namespace ds4::cuda {

// Whether `type` has a GPU matvec kernel (F32, F16, BF16, Q8_0, Q2_K, Q4_K, IQ2_XXS, MXFP4).
bool matvec_supported(GgmlType type);

// Bytes of the quantized activation for `ncols` columns of `weight_type`'s partner format
// (as cpu::activation_bytes: BlockQ8_0Act, BlockQ8_K, or 0 for float types, which read x).
size_t activation_bytes(GgmlType weight_type, int64_t ncols);

// d_act = quantize(d_x) in the partner format of weight_type, bit-identical to
// cpu::quantize_activation. n must be a multiple of the weight block size. Rows of a matrix
// may be quantized in one call: blocks never straddle rows when each row is a whole number
// of blocks. No-op for float weight types.
void quantize_activation(GgmlType weight_type, const float* d_x, void* d_act, int64_t n,
                         void* stream = nullptr);

// y[r] = W[r, :] . act for r < nrows, with act already in the partner format (for float types,
// act is the f32 vector). W rows are row_bytes(type, ncols) apart.
void matvec_q(GgmlType type, const void* d_w, int64_t nrows, int64_t ncols, const void* d_act,
              float* d_y, void* stream = nullptr);

// The grouped product of architecture.md 3.4.9 in one launch: the nrows rows form n_groups
// equal groups and y[r] = W[r, :] . act_g with g = r / (nrows / n_groups), where act_g is the
// g-th of n_groups activations of ncols columns stored back to back (what quantize_activation
// of all n_groups * ncols values makes: activation_bytes(type, ncols) bytes apart; for float
// types, the f32 vector slices ncols floats apart). nrows must be a multiple of n_groups.
void matvec_grouped_q(GgmlType type, const void* d_w, int64_t nrows, int64_t ncols, int64_t n_groups,
                      const void* d_act, float* d_y, void* stream = nullptr);

// One launch for up to kMaxMatvecParts products of one weight type and width that read the
// same activation (q_a and kv; the compressor and indexer products of x):
// parts[i].d_y[r] = W_i[r, :] . act for r < parts[i].nrows.
struct MatvecPart {
  const void* d_w = nullptr;
  int64_t nrows = 0;
  float* d_y = nullptr;
};
inline constexpr int kMaxMatvecParts = 6;
void matvec_parts_q(GgmlType type, int64_t ncols, const MatvecPart* parts, int n_parts, const void* d_act,
                    void* stream = nullptr);

// Quantizes x into d_scratch (activation_bytes(type, ncols) bytes; may be nullptr for float
// types) and runs matvec_q.
void matvec(GgmlType type, const void* d_w, int64_t nrows, int64_t ncols, const float* d_x,
            float* d_y, void* d_scratch, void* stream = nullptr);

// Routed experts of one MoE layer (architecture.md 3.5.2) for one token:
//   h_k = w_k * silu(min(G_e x, limit)) * clamp(U_e x, -limit, limit),  e = ids[k]
//   y   = sum_{k < n_used} D_e h_k       (summed in k order, no atomics)
// gate/up: [n_expert][n_ff rows][n_embd cols] of gate_up_type; down: [n_expert][n_embd rows]
// [n_ff cols] of down_type (GGUF stacked layout). ids (int32) and route_w (f32) are device
// arrays of n_used. Four launches: quantize x, gate+up+SwiGLU for all experts, quantize h,
// down summed over experts. d_workspace holds moe_workspace_bytes(...) bytes.
struct MoeShape {
  GgmlType gate_up_type = GgmlType::IQ2_XXS;
  GgmlType down_type = GgmlType::Q2_K;
  int64_t n_embd = 4096;
  int64_t n_ff = 2048;
  int n_used = 6;  // at most kMaxExpertsUsed
  float limit = 10.0f;
};
inline constexpr int kMaxExpertsUsed = 16;
size_t moe_workspace_bytes(const MoeShape& s);
void moe_experts(const MoeShape& s, const void* d_gate, const void* d_up, const void* d_down,
                 const int32_t* d_ids, const float* d_route_w, const float* d_x, float* d_y,
                 void* d_workspace, void* stream = nullptr);
// The f32 h_k rows ([n_used][n_ff]) of the last moe_experts call on this workspace, for tests.
const float* moe_hidden(const MoeShape& s, const void* d_workspace);

// The routed experts and the shared expert of one MoE layer for one token in two launches
// (architecture.md 3.5.2-3.5.3):
//   y = sum_{k < n_used} D_e h_k  +  D_s h_s,   h_s = silu(min(G_s x, limit)) * clamp(U_s x, +-limit)
// with the routed h_k as in moe_experts. Launch 1 quantizes x in each block and streams the
// routed gate/up rows and the shared expert's gate/up rows (each cut in two halves); launch 2
// quantizes h_k and h_s in each block and streams every output row's routed down product, then
// adds its shared down product. (With the v2 kernels a small launch between the two quantizes
// h_k and h_s once for the layer instead, unless DS4_CUDA_NO_MOE_DOWN_PREQ=1.) The float summation
// order is fixed (no atomics): y[r] is the
// routed sum exactly as moe_experts computes it plus the shared row exactly as moe_experts
// with n_used = 1 computes it where that splits the gate/up rows in two (GPUs of 86-170 SMs,
// e.g. H100/H200), so the result equals the separate calls plus an add bit for bit there.
// `shared` may be nullptr (routed experts only). Only where moe_fused_supported; otherwise
// use moe_experts. d_workspace holds moe_fused_workspace_bytes(...) bytes.
struct SharedExpert {
  GgmlType type = GgmlType::Q8_0;  // only Q8_0 (every quantized recipe's shared expert)
  const void* gate = nullptr;      // [n_ff rows][n_embd cols]
  const void* up = nullptr;
  const void* down = nullptr;      // [n_embd rows][n_ff cols]
  int64_t n_ff = 2048;
  float limit = 10.0f;
};
bool moe_fused_supported(const MoeShape& s, const SharedExpert* shared);
size_t moe_fused_workspace_bytes(const MoeShape& s, const SharedExpert* shared);
// x_early: d_x was written before the launch that precedes this call in the stream (the
// decode step's router sits between the FFN HC pre and the experts), so the gate/up blocks
// may quantize it before they wait for their predecessor (pdl.h).
void moe_fused(const MoeShape& s, const void* d_gate, const void* d_up, const void* d_down, const int32_t* d_ids,
               const float* d_route_w, const SharedExpert* shared, const float* d_x, float* d_y, void* d_workspace,
               void* stream = nullptr, bool x_early = false);
// For tests: where the last moe_fused call on this workspace left the routed h quantized in
// down_type's partner format (activation_bytes(down_type, n_used * n_ff) bytes), when its
// down inputs were quantized once for the layer (the v2 down kernel without
// DS4_CUDA_NO_MOE_DOWN_PREQ=1). The f32 h it was made from is the workspace's start.
const void* moe_fused_quantized_hidden(const MoeShape& s, const SharedExpert* shared, const void* d_workspace);

// Fills nrows x ncols of `type` at d_w with valid pseudo-random blocks (finite, non-zero
// scales of realistic size) derived from seed, on the device: benchmarks need gigabytes of
// weights without a host round trip.
void fill_random_weights(GgmlType type, void* d_w, int64_t nrows, int64_t ncols, uint64_t seed,
                         void* stream = nullptr);

}  // namespace ds4::cuda
