// Internal to the CUDA backend: launchers defined in matvec.cu, called by matvec.cpp after it
// has validated the arguments (error messages are built there: .cu files cannot use fmt).
#pragma once

#include <cstdint>

#include <cstddef>

#include "backend/cuda/matvec.h"
#include "core/ggml_type.h"

namespace ds4::cuda::detail {

// Warps per row of a decode product of nrows rows of ngroups aligned 16-byte groups (every
// path: register pipeline and bulk copies): the fused router (forward_kernels.cu) splits its
// rows the same way, so its logits have the product's bits.
int product_row_split(int64_t nrows, int64_t ngroups);
void launch_quantize_q8_0_act(const float* x, void* act, int64_t nblocks, void* stream);
void launch_quantize_q8_k(const float* x, void* act, int64_t nblocks, void* stream);
void launch_matvec(GgmlType type, const void* w, int64_t nrows, int64_t ncols, const void* act,
                   float* y, void* stream);
void launch_matvec_grouped(GgmlType type, const void* w, int64_t nrows, int64_t ncols, int64_t n_groups,
                           const void* act, size_t act_stride, float* y, void* stream);
void launch_matvec_parts(GgmlType type, int64_t ncols, const MatvecPart* parts, int n_parts, const void* act,
                         void* stream);
void launch_moe_gate_up(GgmlType type, const void* gate, const void* up, int64_t n_embd,
                        int64_t n_ff, const int32_t* ids, const float* route_w, int n_used,
                        float limit, const void* act, float* h, void* stream);
void launch_moe_down(GgmlType type, const void* down, int64_t n_embd, int64_t n_ff,
                     const int32_t* ids, int n_used, const void* act_h, float* y, void* stream);
// moe_fused (matvec.h), arguments checked: h [n_used * n_ff], parts [4 * shared n_ff] and
// act_pre (the quantized down inputs: routed h, then the shared hidden state 16-byte aligned)
// are the workspace's regions.
struct FusedMoe {
  MoeShape s;
  const void* gate = nullptr;
  const void* up = nullptr;
  const void* down = nullptr;
  const int32_t* ids = nullptr;
  const float* route_w = nullptr;
  SharedExpert shared;
  bool has_shared = false;
  const float* x = nullptr;
  float* y = nullptr;
  float* h = nullptr;
  float* parts = nullptr;
  uint8_t* act_pre = nullptr;
  bool x_early = false;  // moe_fused's x_early
};
// Whether the fused kernels take this shape (whole 256-value spans, aligned rows, shared
// memory within the device's limit); the types must be quantized expert types.
bool moe_fused_fits(const MoeShape& s, bool has_shared, int64_t shared_ff);
void launch_moe_fused(const FusedMoe& m, void* stream);
void launch_fill_random(GgmlType type, void* w, int64_t nrows, int64_t ncols, uint64_t seed,
                        void* stream);

}  // namespace ds4::cuda::detail
