// Host side of matvec.h: argument checks (with messages; fmt is unusable in .cu files) and
// the sequencing of the quantize / product launches in matvec_launch.h.
#include "backend/cuda/matvec.h"

#include "backend/cpu/matmul.h"
#include "backend/cuda/matvec_launch.h"
#include "core/error.h"
#include "quant/blocks.h"

namespace ds4::cuda {
namespace {

void check_type(GgmlType type, const char* what) {
  if (!matvec_supported(type)) fail("cuda {}: weight type {} has no GPU kernel", what, type_name(type));
}

void check_cols(GgmlType type, int64_t ncols, const char* what) {
  const int64_t block = type_traits(type).block_elems;
  // Float types are read 16 bytes at a time: 4 (F32) or 8 (F16/BF16) elements.
  const int64_t unit = type == GgmlType::F32 ? 4 : (type == GgmlType::F16 || type == GgmlType::BF16) ? 8 : block;
  if (ncols <= 0 || ncols % unit != 0)
    fail("cuda {}: {} rows of {} columns: columns must be a positive multiple of {}", what,
         type_name(type), ncols, unit);
}

bool is_float(GgmlType t) { return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16; }

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

bool matvec_supported(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q8_0:
    case GgmlType::Q2_K:
    case GgmlType::Q4_K:
    case GgmlType::IQ2_XXS:
    case GgmlType::MXFP4:
      return true;
    default:
      return false;
  }
}

size_t activation_bytes(GgmlType weight_type, int64_t ncols) {
  check_type(weight_type, "activation_bytes");
  return is_float(weight_type) ? 0 : cpu::activation_bytes(weight_type, ncols);
}

void quantize_activation(GgmlType weight_type, const float* d_x, void* d_act, int64_t n, void* stream) {
  check_type(weight_type, "quantize_activation");
  check_cols(weight_type, n, "quantize_activation");
  switch (cpu::activation_type(weight_type)) {
    case GgmlType::Q8_0: detail::launch_quantize_q8_0_act(d_x, d_act, n / QK8_0, stream); break;
    case GgmlType::Q8_K: detail::launch_quantize_q8_k(d_x, d_act, n / QK_K, stream); break;
    default: break;  // float weights read x itself
  }
}

void matvec_q(GgmlType type, const void* d_w, int64_t nrows, int64_t ncols, const void* d_act, float* d_y,
              void* stream) {
  check_type(type, "matvec");
  check_cols(type, ncols, "matvec");
  if (nrows < 0) fail("cuda matvec: negative row count {}", nrows);
  detail::launch_matvec(type, d_w, nrows, ncols, d_act, d_y, stream);
}

void matvec_grouped_q(GgmlType type, const void* d_w, int64_t nrows, int64_t ncols, int64_t n_groups,
                      const void* d_act, float* d_y, void* stream) {
  check_type(type, "matvec_grouped");
  check_cols(type, ncols, "matvec_grouped");
  if (nrows < 0 || n_groups <= 0 || nrows % n_groups != 0)
    fail("cuda matvec_grouped: {} rows do not split into {} equal groups", nrows, n_groups);
  const size_t stride = is_float(type) ? size_t(ncols) * sizeof(float) : activation_bytes(type, ncols);
  detail::launch_matvec_grouped(type, d_w, nrows, ncols, n_groups, d_act, stride, d_y, stream);
}

void matvec_parts_q(GgmlType type, int64_t ncols, const MatvecPart* parts, int n_parts, const void* d_act,
                    void* stream) {
  check_type(type, "matvec_parts");
  check_cols(type, ncols, "matvec_parts");
  if (n_parts < 1 || n_parts > kMaxMatvecParts)
    fail("cuda matvec_parts: {} products in one launch (1..{} supported)", n_parts, kMaxMatvecParts);
  for (int i = 0; i < n_parts; ++i)
    if (parts[i].nrows < 0) fail("cuda matvec_parts: product {} has a negative row count {}", i, parts[i].nrows);
  detail::launch_matvec_parts(type, ncols, parts, n_parts, d_act, stream);
}

void matvec(GgmlType type, const void* d_w, int64_t nrows, int64_t ncols, const float* d_x, float* d_y,
            void* d_scratch, void* stream) {
  check_type(type, "matvec");
  if (is_float(type)) return matvec_q(type, d_w, nrows, ncols, d_x, d_y, stream);
  if (d_scratch == nullptr) fail("cuda matvec: {} weights need an activation scratch buffer", type_name(type));
  quantize_activation(type, d_x, d_scratch, ncols, stream);
  matvec_q(type, d_w, nrows, ncols, d_scratch, d_y, stream);
}

namespace {
// The routed hidden state h (n_used x n_ff f32) as a 256-aligned workspace region.
size_t routed_h_bytes(const MoeShape& s) { return align256(size_t(s.n_used) * size_t(s.n_ff) * sizeof(float)); }
}  // namespace

// Workspace layout: [quantized x][h: n_used x n_ff f32][quantized h], each 256-aligned.
size_t moe_workspace_bytes(const MoeShape& s) {
  return align256(activation_bytes(s.gate_up_type, s.n_embd)) + routed_h_bytes(s) +
         align256(activation_bytes(s.down_type, int64_t(s.n_used) * s.n_ff));
}

const float* moe_hidden(const MoeShape& s, const void* d_workspace) {
  return reinterpret_cast<const float*>(static_cast<const uint8_t*>(d_workspace) +
                                        align256(activation_bytes(s.gate_up_type, s.n_embd)));
}

void moe_experts(const MoeShape& s, const void* d_gate, const void* d_up, const void* d_down, const int32_t* d_ids,
                 const float* d_route_w, const float* d_x, float* d_y, void* d_workspace, void* stream) {
  for (GgmlType t : {s.gate_up_type, s.down_type})
    if (is_float(t) || !matvec_supported(t))
      fail("cuda moe_experts: expert weights of type {} are not supported (quantized types only)", type_name(t));
  check_cols(s.gate_up_type, s.n_embd, "moe_experts gate/up");
  check_cols(s.down_type, s.n_ff, "moe_experts down");
  if (s.n_used <= 0 || s.n_used > kMaxExpertsUsed)
    fail("cuda moe_experts: {} experts per token (1..{} supported)", s.n_used, kMaxExpertsUsed);
  uint8_t* ws = static_cast<uint8_t*>(d_workspace);
  void* act_x = ws;
  float* h = const_cast<float*>(moe_hidden(s, d_workspace));
  void* act_h = reinterpret_cast<uint8_t*>(h) + routed_h_bytes(s);
  quantize_activation(s.gate_up_type, d_x, act_x, s.n_embd, stream);
  detail::launch_moe_gate_up(s.gate_up_type, d_gate, d_up, s.n_embd, s.n_ff, d_ids, d_route_w, s.n_used,
                             s.limit, act_x, h, stream);
  // The n_used rows of h are contiguous and each a whole number of blocks: one call.
  quantize_activation(s.down_type, h, act_h, int64_t(s.n_used) * s.n_ff, stream);
  detail::launch_moe_down(s.down_type, d_down, s.n_embd, s.n_ff, d_ids, s.n_used, act_h, d_y, stream);
}

namespace {
bool is_expert_type(GgmlType t) { return !is_float(t) && matvec_supported(t); }
}  // namespace

bool moe_fused_supported(const MoeShape& s, const SharedExpert* shared) {
  if (!is_expert_type(s.gate_up_type) || !is_expert_type(s.down_type)) return false;
  if (s.n_used <= 0 || s.n_used > kMaxExpertsUsed) return false;
  if (shared != nullptr && (shared->type != GgmlType::Q8_0 || shared->n_ff <= 0)) return false;
  return detail::moe_fused_fits(s, shared != nullptr, shared != nullptr ? shared->n_ff : 0);
}

// Workspace layout: [routed h: n_used x n_ff f32][shared half-row sums: 4 x shared n_ff f32]
// [quantized down inputs: h in down_type's partner format, then the shared hidden state in
// Q8_0's (each region rounded up to 256 bytes, which covers the kernels' 16-byte alignment)].
namespace {
size_t fused_parts_bytes(const SharedExpert* shared) {
  return shared != nullptr ? align256(4 * size_t(shared->n_ff) * sizeof(float)) : 0;
}
}  // namespace

size_t moe_fused_workspace_bytes(const MoeShape& s, const SharedExpert* shared) {
  return routed_h_bytes(s) + fused_parts_bytes(shared) +
         align256(activation_bytes(s.down_type, int64_t(s.n_used) * s.n_ff)) +
         (shared != nullptr ? align256(activation_bytes(shared->type, shared->n_ff)) : 0);
}

const void* moe_fused_quantized_hidden(const MoeShape& s, const SharedExpert* shared, const void* d_workspace) {
  return static_cast<const uint8_t*>(d_workspace) + routed_h_bytes(s) + fused_parts_bytes(shared);
}

void moe_fused(const MoeShape& s, const void* d_gate, const void* d_up, const void* d_down, const int32_t* d_ids,
               const float* d_route_w, const SharedExpert* shared, const float* d_x, float* d_y, void* d_workspace,
               void* stream, bool x_early) {
  if (!moe_fused_supported(s, shared))
    fail("cuda moe_fused: {}/{} experts x {} of {}x{} (shared expert: {}) are not supported; use moe_experts",
         type_name(s.gate_up_type), type_name(s.down_type), s.n_used, s.n_embd, s.n_ff,
         shared != nullptr ? type_name(shared->type) : "none");
  for (const void* p : {d_gate, d_up, d_down, shared ? shared->gate : d_gate, shared ? shared->up : d_gate,
                        shared ? shared->down : d_gate, static_cast<const void*>(d_x)})
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("cuda moe_fused: weights and x must be 16-byte aligned");
  detail::FusedMoe m;
  m.s = s;
  m.gate = d_gate;
  m.up = d_up;
  m.down = d_down;
  m.ids = d_ids;
  m.route_w = d_route_w;
  m.has_shared = shared != nullptr;
  if (shared != nullptr) m.shared = *shared;
  m.x = d_x;
  m.x_early = x_early;
  m.y = d_y;
  uint8_t* ws = static_cast<uint8_t*>(d_workspace);
  m.h = reinterpret_cast<float*>(ws);
  m.parts = reinterpret_cast<float*>(ws + routed_h_bytes(s));
  m.act_pre = static_cast<uint8_t*>(const_cast<void*>(moe_fused_quantized_hidden(s, shared, d_workspace)));
  detail::launch_moe_fused(m, stream);
}

void fill_random_weights(GgmlType type, void* d_w, int64_t nrows, int64_t ncols, uint64_t seed, void* stream) {
  check_type(type, "fill_random_weights");
  check_cols(type, ncols, "fill_random_weights");
  detail::launch_fill_random(type, d_w, nrows, ncols, seed, stream);
}

}  // namespace ds4::cuda
