// Helpers shared by the GPU session's decode (gpu_session.cpp) and batched prefill
// (gpu_prefill.cpp) code. Host code only (no CUDA types).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cuda/buffer.h"
#include "backend/cuda/forward_kernels.h"
#include "backend/cuda/gpu_session.h"
#include "core/ggml_type.h"

namespace ds4::cuda {

// Session memory: one zero-filled device allocation per array (so stale slots are finite),
// with a running byte count for state_bytes().
struct Arena {
  std::vector<DeviceBuffer> bufs;
  size_t bytes = 0;
  template <class T>
  T* get(int64_t n) {
    if (n <= 0) return nullptr;
    bufs.emplace_back(static_cast<size_t>(n) * sizeof(T));
    bufs.back().fill_bytes(0);
    bytes += static_cast<size_t>(n) * sizeof(T);
    return bufs.back().as<T>();
  }
};

// Weights the float kernels take (f32 activations) rather than the quantized ones.
inline bool is_float_type(GgmlType t) { return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16; }
// Weights whose products take Q8_0 activation blocks (BlockQ8_0Act), which rows_finish_jobs
// and attention can write beside their float output, saving a quantize launch.
inline bool takes_q8_0_act(GgmlType t) { return cpu::activation_type(t) == GgmlType::Q8_0; }

// How rows_finish / comp_emit finish the layer's rows (architecture.md 3.4), one definition for
// the decode and prefill paths: the query heads (per-head unweighted RMSNorm, RoPE); the shared
// KV row (weighted norm, RoPE, FP8 round trip of the nope dims in official numerics); a
// compressor's pooled row (its norm, RoPE, the simulation `sim` of n_nope dims).
inline fwd::RowFinish query_finish(const model::HParams& hp) {
  fwd::RowFinish f;
  f.d = hp.head_dim;
  f.n_rope = hp.n_rope;
  f.eps = hp.rms_eps;
  return f;
}
// RMSNorm(wq_a x) with the weight q_a_norm (3.4.1): a row finish without RoPE (rmsnorm's
// arithmetic).
inline fwd::RowFinish q_a_norm_finish(const model::HParams& hp, const DLayer& L) {
  fwd::RowFinish f;
  f.d = hp.q_lora;
  f.norm = L.q_a_norm;
  f.eps = hp.rms_eps;
  return f;
}
inline fwd::RowFinish kv_finish(const model::HParams& hp, const DLayer& L, bool official) {
  fwd::RowFinish f = query_finish(hp);
  f.norm = L.kv_norm;
  f.n_nope = hp.n_nope();
  f.sim = official ? fwd::Sim::Fp8Nope : fwd::Sim::None;
  return f;
}
inline fwd::RowFinish compressor_finish(const model::HParams& hp, const DCompressor& C, int sim, int64_t n_nope) {
  fwd::RowFinish f;
  f.d = C.d;
  f.n_rope = hp.n_rope;
  f.n_nope = n_nope;
  f.norm = C.norm;
  f.eps = hp.rms_eps;
  f.sim = static_cast<fwd::Sim>(sim);
  return f;
}

// The session's per-layer state and one-token scratch (definitions shared by both files).
struct GpuSession::LayerBufs {
  float* raw = nullptr;              // ring [cap][D]
  float* comp_kv = nullptr;          // ring [cap][c * D]
  float* comp_sc = nullptr;
  float* idx_kv = nullptr;           // ring [cap][2 * DI]
  float* idx_sc = nullptr;
  float* comp = nullptr;             // [max_ctx / ratio + 1][D]
  float* icomp = nullptr;            // [max_ctx / ratio + 1][DI]
  int64_t comp_w = 0, idx_w = 0;     // ring row widths
};

struct GpuSession::Scratch {
  Arena arena;
  fwd::StepCtl* ctl = nullptr;
  int32_t* tokens = nullptr;         // [max_batch]
  float *H = nullptr, *H2 = nullptr, *a = nullptr, *x = nullptr, *y = nullptr, *y2 = nullptr;
  float *mix = nullptr, *post = nullptr, *comb = nullptr;
  float *qa = nullptr, *qr = nullptr, *q = nullptr, *kv = nullptr, *o = nullptr, *low = nullptr;
  float *ckv = nullptr, *csc = nullptr, *iq = nullptr, *iw = nullptr, *scores = nullptr;
  float *ickv = nullptr, *icsc = nullptr;  // the indexer compressor's projections (decode)
  int32_t *sel = nullptr, *n_sel = nullptr;
  float* rlog = nullptr;             // router logits
  int32_t* ids = nullptr;
  float* rw = nullptr;
  int32_t* ids0 = nullptr;           // {0}: the shared expert through the routed-expert path
  float* w1 = nullptr;               // {1}
  float* hbuf = nullptr;             // float-expert hidden [K][F]
  void* moe_ws = nullptr;
  void* act = nullptr;               // quantized activation of one product
  void* act_branch = nullptr;        // the same for compressor_branch, which runs beside it
  void* act_o = nullptr;             // quantized attention output, all o_a groups at once
  void* hc_scr = nullptr;            // hc_pre_fused partials and counters
  float* attn_f = nullptr;           // attention chunk partials
  uint32_t* router_arrivals = nullptr;  // the fused router's counter
  float* logits = nullptr;
  int64_t max_rows = 0;
};

}  // namespace ds4::cuda
