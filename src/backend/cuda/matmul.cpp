// Host side of matmul.h: argument checks (with messages; fmt is unusable in .cu files), the
// grouped-MoE workspace layout and the sequencing of the launches in matmul_launch.h.
#include "backend/cuda/matmul.h"

#include <cuda_runtime_api.h>

#include <cstdlib>

#include "backend/cpu/matmul.h"
#include "backend/cuda/check.h"
#include "backend/cuda/matmul_f16.h"
#include "backend/cuda/matmul_launch.h"
#include "backend/cuda/matvec.h"
#include "backend/cuda/moe_f16.h"
#include "core/error.h"
#include "quant/blocks.h"

namespace ds4::cuda {
namespace {

bool is_float(GgmlType t) { return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16; }

void check_type(GgmlType type, const char* what) {
  if (!matmul_supported(type)) fail("cuda {}: weight type {} has no GPU prefill kernel", what, type_name(type));
}

void check_cols(GgmlType type, int64_t ncols, const char* what) {
  const int64_t block = type_traits(type).block_elems;
  if (ncols <= 0 || ncols % block != 0)
    fail("cuda {}: {} rows of {} columns: columns must be a positive multiple of {}", what, type_name(type), ncols,
         block);
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// Bytes of one activation row in the partner format (f32 row for float types).
size_t act_row_bytes(GgmlType type, int64_t ncols) {
  return is_float(type) ? size_t(ncols) * sizeof(float) : cpu::activation_bytes(type, ncols);
}

// Workspace layout of moe_experts_batch, each part 256-aligned:
// [act_x][ctrl: 64 ints][tiles][slot_token][slot_w][slot_of][h][act_h][z][f16: the f16 path's
// part (moe_f16.h), empty where it cannot serve]
struct Layout {
  size_t act_x, ctrl, tiles, slot_token, slot_w, slot_of, h, act_h, z, f16, total;
  int max_tiles;
};

Layout layout(const MoeBatchShape& s, int64_t T) {
  const size_t nk = size_t(T) * size_t(s.n_used);
  Layout l{};
  l.max_tiles = int(nk / size_t(detail::kMmTokens)) + s.n_expert;
  size_t o = 0;
  auto take = [&](size_t bytes) {
    const size_t at = o;
    o += align256(bytes);
    return at;
  };
  l.act_x = take(size_t(T) * act_row_bytes(s.gate_up_type, s.n_embd));
  l.ctrl = take(64 * sizeof(int32_t));
  l.tiles = take(size_t(l.max_tiles) * 4 * sizeof(int32_t));
  l.slot_token = take(nk * sizeof(int32_t));
  l.slot_w = take(nk * sizeof(float));
  l.slot_of = take(nk * sizeof(int32_t));
  l.h = take(nk * size_t(s.n_ff) * sizeof(float));
  l.act_h = take(nk * act_row_bytes(s.down_type, s.n_ff));
  l.z = take(nk * size_t(s.n_embd) * sizeof(float));
  l.f16 = take(moe_f16_workspace_bytes(s, T));
  l.total = o;
  return l;
}

detail::MoeBatchWs pointers(const Layout& l, void* ws) {
  uint8_t* b = static_cast<uint8_t*>(ws);
  return detail::MoeBatchWs{b + l.act_x,
                            reinterpret_cast<int32_t*>(b + l.ctrl),
                            reinterpret_cast<int32_t*>(b + l.tiles),
                            reinterpret_cast<int32_t*>(b + l.slot_token),
                            reinterpret_cast<float*>(b + l.slot_w),
                            reinterpret_cast<int32_t*>(b + l.slot_of),
                            reinterpret_cast<float*>(b + l.h),
                            b + l.act_h,
                            reinterpret_cast<float*>(b + l.z),
                            l.max_tiles};
}

void check_moe(const MoeBatchShape& s, int64_t T) {
  for (GgmlType t : {s.gate_up_type, s.down_type})
    if (is_float(t) || !matmul_supported(t))
      fail("cuda moe_experts_batch: expert weights of type {} are not supported (quantized types only)", type_name(t));
  check_cols(s.gate_up_type, s.n_embd, "moe_experts_batch gate/up");
  check_cols(s.down_type, s.n_ff, "moe_experts_batch down");
  if (s.n_expert <= 0 || s.n_expert > 8192)
    fail("cuda moe_experts_batch: {} experts (1..8192 supported)", s.n_expert);
  if (s.n_used <= 0 || s.n_used > 32 || s.n_used > s.n_expert)
    fail("cuda moe_experts_batch: {} experts per token (1..min(32, n_expert) supported)", s.n_used);
  if (T < 0) fail("cuda moe_experts_batch: negative token count {}", T);
  // Slots and tile indices are int32 and the tile count is a grid dimension.
  if (T * s.n_used > (int64_t(1) << 30) || layout(s, T).max_tiles > 65535)
    fail("cuda moe_experts_batch: {} tokens x {} experts is too many for one call; split the batch", T, s.n_used);
}

}  // namespace

bool matmul_supported(GgmlType type) { return matvec_supported(type); }

bool skinny_float_gemm_serves(GgmlType type, int64_t nrows, int64_t ncols, const void* d_w, const void* d_x) {
  if (!is_float(type) || nrows > detail::kSkinnyMaxRows || ncols % 4 != 0) return false;
  const uintptr_t w_align = type == GgmlType::F32 ? 16 : 8;
  if (reinterpret_cast<uintptr_t>(d_w) % w_align != 0 || reinterpret_cast<uintptr_t>(d_x) % 16 != 0) return false;
  return std::getenv("DS4_CUDA_NO_SKINNY_GEMM") == nullptr;
}

void matmul_q(GgmlType type, const void* d_w, int64_t nrows, int64_t ncols, const void* d_act, int64_t T,
              float* d_y, void* stream) {
  check_type(type, "matmul");
  check_cols(type, ncols, "matmul");
  if (nrows < 0 || T < 0) fail("cuda matmul: negative shape ({} rows, {} tokens)", nrows, T);
  // Grid dimensions: tokens / 64 in x (2^31-1), rows / 128 in y (65535).
  if ((nrows + detail::kMmRows - 1) / detail::kMmRows > 65535)
    fail("cuda matmul: {} rows exceed one launch ({} max)", nrows, int64_t(65535) * detail::kMmRows);
  if (is_float(type) && (nrows + 63) / 64 > 65535)
    fail("cuda matmul: {} rows exceed one launch ({} max)", nrows, int64_t(65535) * 64);
  if (nrows == 0 || T == 0) return;
  if (d_w == nullptr || d_act == nullptr || d_y == nullptr) fail("cuda matmul: null device pointer");
  if (skinny_float_gemm_serves(type, nrows, ncols, d_w, d_act))
    return detail::launch_skinny_float_mm(type, d_w, nrows, ncols, static_cast<const float*>(d_act), T, d_y, stream);
  if (f16_tensor_core_gemm_serves(type, ncols, d_w, d_act))  // F16 weights on the tensor cores (matmul_f16.h)
    return f16_tensor_core_gemm(d_w, nrows, ncols, static_cast<const float*>(d_act), T, d_y, stream);
  detail::launch_matmul(type, d_w, nrows, ncols, d_act, T, d_y, stream);
}

void matmul(GgmlType type, const void* d_w, int64_t nrows, int64_t ncols, const float* d_x, int64_t T, float* d_y,
            void* d_scratch, void* stream) {
  check_type(type, "matmul");
  check_cols(type, ncols, "matmul");
  if (T < 0) fail("cuda matmul: negative token count {}", T);
  if (is_float(type)) return matmul_q(type, d_w, nrows, ncols, d_x, T, d_y, stream);
  if (d_scratch == nullptr) fail("cuda matmul: {} weights need an activation scratch buffer", type_name(type));
  if (T > 0) quantize_activation(type, d_x, d_scratch, T * ncols, stream);
  matmul_q(type, d_w, nrows, ncols, d_scratch, T, d_y, stream);
}

size_t moe_batch_workspace_bytes(const MoeBatchShape& s, int64_t T) {
  check_moe(s, T);
  return layout(s, T).total;
}

void moe_experts_batch(const MoeBatchShape& s, const void* d_gate, const void* d_up, const void* d_down,
                       const int32_t* d_ids, const float* d_route_w, const float* d_x, int64_t T, float* d_y,
                       void* d_workspace, void* stream) {
  check_moe(s, T);
  if (T == 0) return;
  if (!d_gate || !d_up || !d_down || !d_ids || !d_route_w || !d_x || !d_y || !d_workspace)
    fail("cuda moe_experts_batch: null device pointer");
  const Layout l = layout(s, T);
  const detail::MoeBatchWs ws = pointers(l, d_workspace);
  const int64_t nk = T * s.n_used;
  quantize_activation(s.gate_up_type, d_x, ws.act_x, T * s.n_embd, stream);
  detail::launch_moe_route(d_ids, d_route_w, T, s.n_used, s.n_expert, ws, stream);
  if (moe_f16_serves(s, T, stream)) {
    // Many tokens: f16 tensor-core products through cuBLAS (moe_f16.h).
    moe_f16_experts(s, d_gate, d_up, d_down, d_ids, T, ws, static_cast<uint8_t*>(d_workspace) + l.f16, stream);
  } else {
    detail::launch_moe_gate_up_batch(s.gate_up_type, d_gate, d_up, s.n_embd, s.n_ff, s.limit, ws, stream);
    // Every slot row of h is a whole number of blocks; rows past the valid slots (skipped ids)
    // are quantized too but never read.
    quantize_activation(s.down_type, ws.h, ws.act_h, nk * s.n_ff, stream);
    detail::launch_moe_down_batch(s.down_type, d_down, s.n_embd, s.n_ff, ws, stream);
  }
  detail::launch_moe_combine(d_ids, T, s.n_used, s.n_embd, ws, d_y, stream);
}

int64_t moe_batch_invalid_ids(const MoeBatchShape& s, int64_t T, const void* d_workspace, void* stream) {
  check_moe(s, T);
  if (T == 0) return 0;
  const Layout l = layout(s, T);
  int32_t ctrl[2] = {0, 0};
  DS4_CUDA_CHECK(cudaMemcpyAsync(ctrl, static_cast<const uint8_t*>(d_workspace) + l.ctrl, sizeof(ctrl),
                                 cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)));
  DS4_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  return ctrl[1];
}

MoeBatchDebug moe_batch_debug(const MoeBatchShape& s, int64_t T, const void* d_workspace) {
  check_moe(s, T);
  const Layout l = layout(s, T);
  const uint8_t* b = static_cast<const uint8_t*>(d_workspace);
  return MoeBatchDebug{reinterpret_cast<const int32_t*>(b + l.slot_of), reinterpret_cast<const float*>(b + l.h)};
}

}  // namespace ds4::cuda
