// Batched (layer-major) prefill of the GPU session: a chunk of T > 1 prompt tokens runs layer
// by layer over all T tokens, as model::Session's eval_chunk does on the CPU (forward.cpp):
//
//  - every weight product is one GEMM over the T rows (matmul.h: activations of all T rows
//    quantized in one call, bit-identical to the CPU's; F16 weights on the tensor cores with
//    x split into f16 hi + lo, matmul_f16.h, the HC fn product included; other float weights
//    through the f32 path), the routed experts one grouped call (moe_experts_batch), the
//    shared expert the same call with one expert;
//  - the position-dependent per-token work uses the kernels of forward_kernels.h with a
//    StepCtl per token (`Batch::ctls[t]` = {p0 + t, token t, t}). The cheap, numerous ones
//    take a token dimension and run as one launch per chunk (the same per-token arithmetic):
//    embedding, HC pre (after the batched fn product) and HC post (for Flash-sized streams
//    the prefill's own pre::hc_pre_norm / pre::hc_post, prefill_kernels.h), head norm + RoPE,
//    KV norm + RoPE + FP8 + ring write, compressor ring store, routing, the indexer's query RoPE +
//    simulation. The attention (each query its own causal visible rows) runs on the tensor
//    cores in one launch for the chunk where the shape allows (prefill_attention.h: 512-dim
//    heads, heads a multiple of 16, i.e. Flash and Pro). The indexer's scores and top-k, and
//    the CUDA-core attention of the other shapes, also take a token dimension, but their
//    per-token scratch is large (Flash: 2.6 MB of attention partials a token), so they run
//    in groups of Batch::group tokens whose scratch fits
//    GpuSessionOptions::prefill_group_bytes.
//    Window pooling is one launch per chunk too (a block per token; those that complete a
//    window pool it), and the indexer's scores are computed as (queries x rows) tiles
//    (prefill_indexer.h);
//  - the output head only where logits are wanted (the last token, or every token for
//    LogitsMode::All), through the decode path's head on that token's streams.
//
// The ring holds a whole chunk (GpuSession's ring_cap covers retain + window + max_batch), so
// all T KV / compressor rows are written before any query of the chunk reads them, and a
// query never reads a row past its own position (the kernels bound the rows by ctl->pos).
// GEMM results per row do not depend on T (no split-K, fixed summation order per row), so a
// prompt gives the same logits whatever its chunking into batched chunks.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <set>
#include <vector>

#include "backend/cuda/check.h"
#include "backend/cuda/forward_kernels.h"
#include "backend/cuda/gpu_session.h"
#include "backend/cuda/matmul.h"
#include "backend/cuda/matmul_cublas.h"
#include "backend/cuda/matmul_f16.h"
#include "backend/cuda/matvec.h"
#include "backend/cuda/prefill_attention.h"
#include "backend/cuda/prefill_indexer.h"
#include "backend/cuda/prefill_kernels.h"
#include "backend/cuda/session_internal.h"
#include "core/error.h"

namespace ds4::cuda {

using model::HParams;
using model::LogitsMode;
using model::Numerics;

// Working arrays for max_batch tokens, allocated by the first batched chunk (a session that
// only decodes never pays for them).
struct GpuSession::Batch {
  Arena arena;
  int64_t group = 1;                         // tokens per attention / indexer launch
  float* attn_part = nullptr;                // [group][attention_scratch_floats]; null with tensor-core attention
  float* scores = nullptr;                   // [group][scores_stride]: indexer scores
  int64_t scores_stride = 1;                 // the most rows a token's indexer scores
  fwd::StepCtl* ctls = nullptr;  // [T]: position, token and index of each token
  float *H = nullptr, *H2 = nullptr;                 // [T][n_hc][E]
  float *a = nullptr, *x = nullptr, *y = nullptr, *y2 = nullptr;  // [T][E]
  float *mix = nullptr, *post = nullptr, *comb = nullptr;
  float *qa = nullptr, *qr = nullptr;                // [T][q_lora]
  float *q = nullptr, *o = nullptr;                  // [T][NH * D]; q is reused for the o_a groups
  float* kv = nullptr;                               // [T][D]
  float *lowg = nullptr, *low = nullptr;             // [G][T][R], [T][G * R]
  float *ckv = nullptr, *csc = nullptr;              // [T][compressor width]
  float *iq = nullptr, *iw = nullptr;                // [T][NI * DI], [T][NI]
  int32_t *sel = nullptr, *n_sel = nullptr;          // [T][idx_topk], [T]
  // The integer forms of the indexer's queries ([T][NI] rows) and compressed rows (max_ctx /
  // ratio), for its scores on the tensor cores (empty on the other paths).
  pre::IdxCodes iq_codes, icomp_codes;
  float* rlog = nullptr;                             // [T][n_expert]
  int32_t* ids = nullptr;                            // [T][K]
  float* rw = nullptr;                               // [T][K]
  int32_t* zeros = nullptr;                          // [T]: the shared expert's id
  float* ones = nullptr;                             // [T]: its route weight
  void* act = nullptr;                               // quantized activations of one GEMM
  void* moe_ws = nullptr;
  // The Q8_0 products through cuBLAS f16 GEMMs (matmul_cublas.h): their scratch (empty when
  // DS4_CUDA_NO_CUBLAS_GEMM was set as the batch was allocated) and the Q8_0 tensors whose
  // scales fit f16 (by data pointer; checked once, as the batch is allocated).
  F16GemmScratch f16;
  std::set<const void*> f16_fits;
};

void GpuSession::BatchFree::operator()(Batch* b) const { delete b; }

namespace {
// Whether the Q8_0 product of W runs as an f16 cuBLAS GEMM (matmul_cublas.h) rather than the
// int8 kernels: switched on (DS4_CUDA_NO_CUBLAS_GEMM unset), scratch allocated, and W's scales
// within f16's range. Independent of T: a token's row is the same whatever the chunking.
bool f16_gemm_serves(const DTensor& W, const F16GemmScratch& scratch, const std::set<const void*>& fits) {
  return scratch.w16 != nullptr && cublas_gemm_enabled(W.type) && fits.count(W.d) != 0;
}
}  // namespace

void GpuSession::gemm(const DTensor& W, const float* x, int64_t T, float* y, void* s, int64_t row0, int64_t nrows) {
  if (nrows < 0) nrows = W.rows - row0;
  if (f16_gemm_serves(W, batch_->f16, batch_->f16_fits)) return cublas_q8_0_gemm(W.row(row0), nrows, W.cols, x, T, y, batch_->f16, s);
  matmul(W.type, W.row(row0), nrows, W.cols, x, T, y, batch_->act, s);
}

namespace {
// DS4_CUDA_PREFILL_SUBPHASES set in the environment splits the profiled prefill phases into
// their launches (the HC pre's fn product / hc_pre / RMSNorm, the compressor's and indexer's
// products / pooling / scores, the router's product / routing): a measurement aid that adds
// events, no change to the computation.
bool split_phases() {
  static const bool on = std::getenv("DS4_CUDA_PREFILL_SUBPHASES") != nullptr;
  return on;
}

// The HC fn product (24 x 16384 F16 in the q2 / q4 / mxfp4 recipes) on the tensor cores
// (matmul_f16.h: 16-token tiles) instead of matmul_q's skinny CUDA-core kernel (8 tokens a
// block, one block per SM, 457 us a product at T = 2048 on an H100: latency bound).
// DS4_CUDA_NO_TC_HC_FN set in the environment keeps the skinny kernel: an A/B switch (the
// two differ in rounding; both stay within the float GEMM tests' bounds).
bool tensor_core_hc_fn(const DTensor& fn, const float* H) {
  static const bool on = std::getenv("DS4_CUDA_NO_TC_HC_FN") == nullptr;
  return on && f16_tensor_core_gemm_serves(fn.type, fn.cols, fn.d, H);
}

// DS4_CUDA_NO_PREFILL_HC_PRE set in the environment runs the prefill's HC pre after the fn
// product as fwd::hc_pre + fwd::rmsnorm with a token dimension (a 1024-thread block per token
// whose warps wait for one warp's Sinkhorn, then a second pass over `a`) instead of
// pre::hc_pre_norm (H read once into registers, RMSNorm in the same block, Sinkhorn a thread
// per token in a second launch): an A/B switch; both give the same bits.
bool prefill_hc_pre_norm(const fwd::HcShape& sh) {
  static const bool on = std::getenv("DS4_CUDA_NO_PREFILL_HC_PRE") == nullptr;
  return on && pre::hc_pre_norm_supported(sh);
}

// DS4_CUDA_NO_PREFILL_HC_POST set in the environment runs the HC post of the prefill on the
// decode kernel with a token dimension (a thread per output) instead of pre::hc_post (a
// thread per four columns and all streams): an A/B switch; both give the same bits.
bool prefill_hc_post(const fwd::HcShape& sh) {
  static const bool on = std::getenv("DS4_CUDA_NO_PREFILL_HC_POST") == nullptr;
  return on && pre::hc_post_supported(sh);
}
}  // namespace

void GpuSession::prefill_hc_pre(const DHc& hc, const float* H, const float* norm, int64_t T, void* s) {
  const HParams& hp = model_->hparams();
  Batch& b = *batch_;
  const int64_t E = hp.n_embd, NC = hp.n_hc;
  const fwd::HcShape sh{static_cast<int>(NC), E, hp.rms_eps, hp.hc_eps, static_cast<int>(hp.hc_sinkhorn_iters)};
  // 3.2: the mixing logits of all T tokens in one product; the RMS factor, sigmoids,
  // Sinkhorn and the collapse per token (hyper_connection.cpp hc_pre); then RMSNorm.
  if (tensor_core_hc_fn(hc.fn, H))
    f16_tensor_core_gemm(hc.fn.d, hc.fn.rows, hc.fn.cols, H, T, b.mix, s);
  else
    gemm(hc.fn, H, T, b.mix, s);
  if (split_phases()) mark("hc pre: fn product", 0, s);
  if (prefill_hc_pre_norm(sh)) {
    pre::hc_pre_norm(sh, b.mix, H, hc.base, hc.scale, norm, b.x, b.post, b.comb, T, s);
  } else {
    fwd::hc_pre(sh, b.mix, H, hc.base, hc.scale, b.a, b.post, b.comb, s, T);
    if (split_phases()) mark("hc pre: mix + collapse", 0, s);
    fwd::rmsnorm(b.a, norm, b.x, E, T, hp.rms_eps, s);
  }
  mark(split_phases() ? "hc pre: rest (+ rmsnorm)" : "hc pre + norm", static_cast<double>(hc.fn.bytes()), s);
}

void GpuSession::prefill_compressor(const DLayer& L, const DCompressor& C, int sim, int64_t n_nope, float* ring_kv,
                                    float* ring_sc, float* rows, int64_t T, void* s) {
  const HParams& hp = model_->hparams();
  Batch& b = *batch_;
  const int64_t width = C.c * C.d;
  // 3.4.5: project all T tokens into the ring, then pool each window completed in the chunk,
  // in position order (compressor_advance).
  gemm(C.kv, b.x, T, b.ckv, s);
  gemm(C.gate, b.x, T, b.csc, s);
  if (split_phases()) mark("compressor: kv + gate products", 0, s);
  fwd::comp_store(b.ckv, b.csc, C.ape, width, L.ratio, ring_kv, ring_sc, cap_, b.ctls, s, T);
  // Every window reads only ring rows (stored above) and writes its own row: one launch for
  // the chunk, a block per token (those that complete no window return at once).
  fwd::comp_emit(compressor_finish(hp, C, sim, n_nope), L.omega, ring_kv, ring_sc, cap_, L.ratio, C.c, rows, b.ctls, s,
                 T);
  if (split_phases()) mark("compressor: store + pool", 0, s);
}

namespace {
// DS4_CUDA_NO_TC_ATTENTION set in the environment runs the prefill attention on the CUDA-core
// kernel for every shape (the path of the other shapes): an A/B switch for measurements, like
// DS4_CUDA_NO_PDL.
bool tensor_core_attention(const fwd::AttnShape& as) {
  static const bool on = std::getenv("DS4_CUDA_NO_TC_ATTENTION") == nullptr;
  return on && fwd::prefill_attention_supported(as);
}

// The indexer's scores on the tensor cores (prefill_indexer.h: exact int8 products of the
// FP4-simulated q and keys, so official numerics only); DS4_CUDA_NO_TC_INDEXER set in the
// environment keeps the CUDA-core tiles (A/B switch).
bool tensor_core_indexer(const HParams& hp, Numerics numerics) {
  static const bool on = std::getenv("DS4_CUDA_NO_TC_INDEXER") == nullptr;
  return on && numerics == Numerics::Official && hp.idx_head > 0 &&
         pre::idx_scores_tc_supported(hp.idx_head, hp.idx_dim);
}
}  // namespace

void GpuSession::prefill_attention(const DLayer& L, LayerBufs& S, int64_t T, int64_t p0, void* s) {
  const HParams& hp = model_->hparams();
  Batch& b = *batch_;
  const int64_t D = hp.head_dim, NH = hp.n_head, HD = NH * D;
  const bool official = opts_.numerics == Numerics::Official;

  // 3.4.1 Query for all T tokens; per-head norm and RoPE at each token's position.
  gemm(L.q_a, b.x, T, b.qa, s);
  fwd::rmsnorm(b.qa, L.q_a_norm, b.qr, hp.q_lora, T, hp.rms_eps, s);
  gemm(L.q_b, b.qr, T, b.q, s);
  fwd::rows_finish(query_finish(hp), L.omega, b.q, b.q, NH, D, 0, b.ctls, s, T);

  // 3.4.2 KV rows of all T positions into the raw ring.
  gemm(L.kv, b.x, T, b.kv, s);
  fwd::rows_finish(kv_finish(hp, L, official), L.omega, b.kv, S.raw, 1, D, cap_, b.ctls, s, T);
  mark("q/kv projections", static_cast<double>(L.q_a.bytes() + L.q_b.bytes() + L.kv.bytes()), s);

  // 3.4.5 / 3.4.7 Compressors (all windows completed in the chunk) and the indexer.
  const int32_t* sel = nullptr;
  if (L.ratio > 0) {
    prefill_compressor(L, L.comp, static_cast<int>(official ? fwd::Sim::Fp8Nope : fwd::Sim::None), hp.n_nope(),
                       S.comp_kv, S.comp_sc, S.comp, T, s);
    if (L.has_indexer) {
      prefill_compressor(L, L.idx_comp, static_cast<int>(official ? fwd::Sim::HadamardFp4 : fwd::Sim::None), 0,
                         S.idx_kv, S.idx_sc, S.icomp, T, s);
      const int64_t NI = hp.idx_head, DI = hp.idx_dim, K = hp.idx_topk;
      // Queries and head weights only matter to tokens that see more than k rows
      // (indexer.cpp): those at positions >= (K + 1) * ratio - 1, the tokens from t0 on.
      const int64_t t0 = std::max<int64_t>(0, (K + 1) * L.ratio - 1 - p0);
      const bool tc = b.iq_codes.code != nullptr;  // tensor_core_indexer
      if (t0 < T) {
        // Only those tokens' products (every token's row is its own: the same bits either way).
        gemm(L.idx_q_b, b.qr + t0 * hp.q_lora, T - t0, b.iq + t0 * NI * DI, s);
        gemm(L.idx_proj, b.x + t0 * hp.n_embd, T - t0, b.iw + t0 * NI, s);
        fwd::idx_prep_q(b.iq + t0 * NI * DI, NI, DI, hp.n_rope, L.omega, official, b.ctls + t0, s, T - t0);
        if (tc) {
          pre::idx_codes(b.iq + t0 * NI * DI, (T - t0) * NI, b.iq_codes.from_row(t0 * NI), s);
          pre::idx_codes(S.icomp, (p0 + T) / L.ratio, b.icomp_codes, s);  // every row the chunk sees
        }
      }
      if (split_phases()) mark(tc ? "indexer: q_b + proj products, query prep, integer forms"
                                  : "indexer: q_b + proj products, query prep",
                               0, s);
      const float wscale = 1.0f / std::sqrt(static_cast<float>(DI * NI));
      const bool tiled = pre::idx_scores_tiled_supported(NI, DI);
      for (int64_t g0 = 0; g0 < T; g0 += b.group) {
        const int64_t n = std::min(b.group, T - g0);
        const float* q = b.iq + g0 * NI * DI;
        const float* w = b.iw + g0 * NI;
        if (tc) {
          // The same scores from exact int8 tensor-core products (prefill_indexer.h).
          const int64_t max_rows = (p0 + g0 + n) / L.ratio;
          pre::idx_scores_tc(b.iq_codes.from_row(g0 * NI), q, w, wscale, NI, b.icomp_codes, S.icomp, L.ratio, K,
                             max_rows, b.scores, b.scores_stride, b.ctls + g0, n, s);
          if (split_phases()) mark("indexer: scores (tensor cores)", 0, s);
          fwd::idx_topk(b.scores, b.scores_stride, L.ratio, K, b.sel + g0 * K, b.n_sel + g0, b.ctls + g0, s, n);
          if (split_phases()) mark("indexer: top-k", 0, s);
        } else if (tiled) {
          // The group's queries against their visible rows as tiles (prefill_indexer.h: the
          // scores of idx_select, bit for bit), then the top-k of each query.
          const int64_t max_rows = (p0 + g0 + n) / L.ratio;  // n_vis of the group's last token
          pre::idx_scores_tiled(q, w, wscale, NI, DI, S.icomp, L.ratio, K, max_rows, b.scores, b.scores_stride,
                                b.ctls + g0, n, s);
          fwd::idx_topk(b.scores, b.scores_stride, L.ratio, K, b.sel + g0 * K, b.n_sel + g0, b.ctls + g0, s, n);
        } else {
          fwd::idx_select(q, w, wscale, NI, DI, S.icomp, L.ratio, K, b.scores, b.sel + g0 * K, b.n_sel + g0,
                          b.ctls + g0, s, n, b.scores_stride);
        }
      }
      sel = b.sel;
      if (split_phases()) mark("indexer: scores + top-k", 0, s);
      log_batch(b.sel, K, T, L.il, hp.n_expert_used, s);
      log_batch(b.n_sel, 1, T, L.il, hp.n_expert_used + K, s);
    }
  }
  mark("compressor + indexer",
       static_cast<double>(L.comp.kv.bytes() + L.comp.gate.bytes() + L.idx_comp.kv.bytes() + L.idx_comp.gate.bytes() +
                           L.idx_q_b.bytes() + L.idx_proj.bytes()),
       s);

  // 3.4.8 Attention of each query over its own visible rows, de-rotated at its position: on
  // the tensor cores in one launch where the shape allows (Flash, Pro: 512-dim heads, heads
  // a multiple of 16), else the CUDA-core kernel in groups whose partials fit the scratch.
  const fwd::AttnShape as{NH, D, hp.n_rope, hp.window, cap_, L.ratio, sc_->max_rows};
  if (tensor_core_attention(as)) {
    fwd::prefill_attention(as, b.q, S.raw, S.comp, sel, b.n_sel, hp.idx_topk, L.sinks, L.omega, b.o, b.ctls, T, s);
  } else {
    for (int64_t g0 = 0; g0 < T; g0 += b.group) {
      const int64_t n = std::min(b.group, T - g0);
      fwd::attention(as, b.q + g0 * HD, S.raw, S.comp, sel ? sel + g0 * hp.idx_topk : nullptr, b.n_sel + g0, L.sinks,
                     L.omega, b.attn_part, b.o + g0 * HD, b.ctls + g0, s, n, hp.idx_topk);
    }
  }
  mark("attention core", 0, s);

  // 3.4.9 Grouped output projection: group g's heads of all T tokens as one GEMM on rows
  // g*R.. of wo_a (the tokens' group slices gathered into contiguous rows first).
  const int64_t G = hp.o_groups, R = hp.o_lora, per_group = HD / G;
  pre::swap_outer(b.o, b.q, T, G, per_group, s);
  for (int64_t g = 0; g < G; ++g) gemm(L.out_a, b.q + g * T * per_group, T, b.lowg + g * T * R, s, g * R, R);
  pre::swap_outer(b.lowg, b.low, G, T, R, s);
  gemm(L.out_b, b.low, T, b.y, s);
  mark("attention output", static_cast<double>(L.out_a.bytes() + L.out_b.bytes()), s);
}

void GpuSession::prefill_moe(const DLayer& L, int64_t T, void* s) {
  const HParams& hp = model_->hparams();
  Batch& b = *batch_;
  const int64_t E = hp.n_embd, K = hp.n_expert_used, F = hp.n_ff_exp, NE = hp.n_expert;
  // 3.5.1 Router logits of all T tokens; routing per token (hash layers read its token id).
  gemm(L.router, b.x, T, b.rlog, s);
  if (split_phases()) mark("router: product", 0, s);
  const bool hash = hp.is_hash_layer(L.il);
  fwd::route(b.rlog, NE, K, hash ? nullptr : L.router_bias, hash ? static_cast<const int32_t*>(L.tid2eid.d) : nullptr,
             hp.expert_weights_norm, hp.expert_weights_scale, b.ctls, b.ids, b.rw, s, T);
  log_batch(b.ids, K, T, L.il, 0, s);
  mark("router", static_cast<double>(L.router.bytes()), s);
  // 3.5.2 routed experts, 3.5.3 the shared expert (one expert, weight 1) into y2.
  auto experts = [&](const DTensor& gate, const DTensor& up, const DTensor& down, int n_expert, const int32_t* ids,
                     const float* w, int n_used, int64_t ff, float limit, float* y) {
    if (is_float_type(gate.type) && is_float_type(down.type)) {
      if (gate.type != up.type || gate.type != down.type)
        fail("cuda session: layer {}: float experts of mixed types are not supported", L.il);
      // Float experts (the bf16 / f32 recipes) have no grouped kernel: per token.
      for (int64_t t = 0; t < T; ++t)
        fwd::moe_float(gate.type, gate.d, up.d, down.d, E, ff, ids + t * n_used, w + t * n_used, n_used, limit,
                       b.x + t * E, sc_->hbuf, y + t * E, s);
    } else if (!is_float_type(gate.type) && !is_float_type(down.type)) {
      const MoeBatchShape m{gate.type, down.type, E, ff, n_expert, n_used, limit};
      moe_experts_batch(m, gate.d, up.d, down.d, ids, w, b.x, T, y, b.moe_ws, s);
    } else {
      fail("cuda session: layer {}: experts mixing float and quantized types are not supported", L.il);
    }
  };
  experts(L.gate_exps, L.up_exps, L.down_exps, static_cast<int>(NE), b.ids, b.rw, static_cast<int>(K), F,
          hp.swiglu_limit[static_cast<size_t>(L.il)], b.y);
  mark("routed experts",
       static_cast<double>(L.gate_exps.bytes() + L.up_exps.bytes() + L.down_exps.bytes()), s);
  if (hp.n_expert_shared > 0) {
    const float limit = hp.swiglu_limit_shared[static_cast<size_t>(L.il)];
    if (f16_gemm_serves(L.gate_shexp, b.f16, b.f16_fits) && f16_gemm_serves(L.up_shexp, b.f16, b.f16_fits) &&
        f16_gemm_serves(L.down_shexp, b.f16, b.f16_fits))
      // Gate / up as one f16 GEMM, the SwiGLU kernel, the down GEMM (matmul_cublas.h).
      cublas_q8_0_shared_expert(L.gate_shexp.d, L.up_shexp.d, L.down_shexp.d, E, L.gate_shexp.rows, limit, b.x, T,
                                b.y2, b.f16, s);
    else
      experts(L.gate_shexp, L.up_shexp, L.down_shexp, 1, b.zeros, b.ones, 1, L.gate_shexp.rows, limit, b.y2);
    fwd::add(b.y, b.y2, b.y, T * E, s);
    mark("shared expert", static_cast<double>(L.gate_shexp.bytes() + L.up_shexp.bytes() + L.down_shexp.bytes()), s);
  }
}

void GpuSession::prefill_layer(const DLayer& L, LayerBufs& S, int64_t T, int64_t p0, void* s) {
  const HParams& hp = model_->hparams();
  Batch& b = *batch_;
  const int64_t E = hp.n_embd, NC = hp.n_hc;
  const fwd::HcShape sh{static_cast<int>(NC), E, hp.rms_eps, hp.hc_eps, static_cast<int>(hp.hc_sinkhorn_iters)};
  auto hc_post = [&](const float* H_in, float* H_out) {
    if (prefill_hc_post(sh))
      pre::hc_post(sh, b.y, H_in, b.post, b.comb, H_out, T, s);
    else
      fwd::hc_post(sh, b.y, H_in, b.post, b.comb, H_out, s, T);
    mark("hc post", 0, s);
  };
  // Attention half (3.2-3.4), then the FFN half (3.5), as layer_forward.
  prefill_hc_pre(L.hc_attn, b.H, L.attn_norm, T, s);
  prefill_attention(L, S, T, p0, s);
  hc_post(b.H, b.H2);
  prefill_hc_pre(L.hc_ffn, b.H2, L.ffn_norm, T, s);
  prefill_moe(L, T, s);
  hc_post(b.H2, b.H);
}

namespace {

// Working-array sizes of a batched chunk of T tokens.
size_t max_act_bytes(const GpuModel& m) {
  size_t act = 0;
  auto need = [&](const DTensor& t, int64_t cols) {
    if (t.present()) act = std::max(act, activation_bytes(t.type, cols));
  };
  const HParams& hp = m.hparams();
  for (const DLayer& L : m.layers()) {
    for (const DTensor* t : {&L.hc_attn.fn, &L.hc_ffn.fn, &L.q_a, &L.q_b, &L.kv, &L.out_b, &L.comp.kv, &L.comp.gate,
                             &L.idx_comp.kv, &L.idx_comp.gate, &L.idx_q_b, &L.idx_proj, &L.router})
      need(*t, t->cols);
    need(L.out_a, hp.n_head * hp.head_dim / hp.o_groups);
  }
  return act;
}

// The scratch of the f16 cuBLAS GEMMs for every Q8_0 product of the prefill (the largest
// weight, the widest activation rows of Tm tokens, the shared expert's gate | up products),
// and which Q8_0 tensors fit f16 (one synchronization for all). Nothing when no Q8_0 tensor.
void allocate_f16_gemm(const GpuModel& m, int64_t Tm, Arena& A, F16GemmScratch& f16, std::set<const void*>& f16_fits,
                       void* s) {
  std::vector<const DTensor*> q8;
  int64_t w_elems = 0, cols = 0, f32_elems = 0;
  for (const DLayer& L : m.layers()) {
    for (const DTensor* t : {&L.q_a, &L.q_b, &L.kv, &L.out_a, &L.out_b, &L.comp.kv, &L.comp.gate, &L.idx_comp.kv,
                             &L.idx_comp.gate, &L.idx_q_b, &L.idx_proj, &L.router, &L.gate_shexp, &L.up_shexp,
                             &L.down_shexp}) {
      if (!t->present() || t->type != GgmlType::Q8_0) continue;
      q8.push_back(t);
      w_elems = std::max(w_elems, t->rows * t->cols);
      cols = std::max(cols, t->cols);
    }
    if (L.gate_shexp.present() && L.gate_shexp.type == GgmlType::Q8_0) {
      w_elems = std::max(w_elems, 2 * L.gate_shexp.rows * L.gate_shexp.cols);
      f32_elems = std::max(f32_elems, Tm * 2 * L.gate_shexp.rows);
    }
  }
  if (q8.empty()) return;
  std::vector<const void*> ptrs;
  std::vector<int64_t> rows, ncols;
  for (const DTensor* t : q8) {
    ptrs.push_back(t->d);
    rows.push_back(t->rows);
    ncols.push_back(t->cols);
  }
  std::unique_ptr<bool[]> fits(new bool[q8.size()]);
  q8_0_weights_fit_f16_many(ptrs.data(), rows.data(), ncols.data(), static_cast<int>(q8.size()), fits.get(), s);
  for (size_t i = 0; i < q8.size(); ++i)
    if (fits[i]) f16_fits.insert(ptrs[i]);
  f16.w16_bytes = static_cast<size_t>(w_elems) * 2;
  f16.w16 = A.get<uint8_t>(w_elems * 2);
  f16.x16_bytes = static_cast<size_t>(Tm * cols) * 2;
  f16.x16 = A.get<uint8_t>(Tm * cols * 2);
  f16.exps_rows = Tm;
  f16.exps = A.get<int32_t>(Tm);
  f16.f32_bytes = static_cast<size_t>(f32_elems) * sizeof(float);
  f16.f32 = A.get<float>(f32_elems);
}

}  // namespace

void GpuSession::prefill_chunk(std::span<const int32_t> tokens, LogitsMode mode, float* out, bool copy_last) {
  const HParams& hp = model_->hparams();
  const int64_t T = static_cast<int64_t>(tokens.size()), V = hp.n_vocab, p0 = n_past_;
  const int64_t E = hp.n_embd, NC = hp.n_hc, NH = hp.n_head, D = hp.head_dim, K = hp.n_expert_used;
  void* s = stream_.handle();
  if (!batch_) {
    const int64_t Tm = opts_.max_batch;
    batch_.reset(new Batch);
    Batch& b = *batch_;
    Arena& A = b.arena;
    int64_t comp_w = 1;
    for (const DLayer& L : model_->layers()) {
      if (L.ratio > 0) comp_w = std::max<int64_t>(comp_w, L.comp.c * L.comp.d);
      if (L.has_indexer) comp_w = std::max<int64_t>(comp_w, L.idx_comp.c * L.idx_comp.d);
    }
    b.ctls = A.get<fwd::StepCtl>(Tm);
    b.H = A.get<float>(Tm * NC * E);
    b.H2 = A.get<float>(Tm * NC * E);
    b.a = A.get<float>(Tm * E);
    b.x = A.get<float>(Tm * E);
    b.y = A.get<float>(Tm * E);
    b.y2 = A.get<float>(Tm * E);
    b.mix = A.get<float>(Tm * (2 + NC) * NC);
    b.post = A.get<float>(Tm * NC);
    b.comb = A.get<float>(Tm * NC * NC);
    b.qa = A.get<float>(Tm * hp.q_lora);
    b.qr = A.get<float>(Tm * hp.q_lora);
    b.q = A.get<float>(Tm * NH * D);
    b.o = A.get<float>(Tm * NH * D);
    b.kv = A.get<float>(Tm * D);
    b.lowg = A.get<float>(Tm * hp.o_groups * hp.o_lora);
    b.low = A.get<float>(Tm * hp.o_groups * hp.o_lora);
    b.ckv = A.get<float>(Tm * comp_w);
    b.csc = A.get<float>(Tm * comp_w);
    b.iq = A.get<float>(std::max<int64_t>(1, Tm * hp.idx_head * hp.idx_dim));
    b.iw = A.get<float>(std::max<int64_t>(1, Tm * hp.idx_head));
    b.sel = A.get<int32_t>(std::max<int64_t>(1, Tm * hp.idx_topk));
    b.n_sel = A.get<int32_t>(Tm);
    if (tensor_core_indexer(hp, opts_.numerics)) {
      const int64_t q_rows = Tm * hp.idx_head;
      int64_t k_rows = 1;  // the most compressed rows of an indexer layer
      for (const DLayer& L : model_->layers())
        if (L.has_indexer) k_rows = std::max<int64_t>(k_rows, opts_.max_ctx / L.ratio + 1);
      b.iq_codes = pre::idx_codes_view(A.get<uint8_t>(pre::idx_codes_bytes(q_rows, hp.idx_dim)), q_rows, hp.idx_dim);
      b.icomp_codes =
          pre::idx_codes_view(A.get<uint8_t>(pre::idx_codes_bytes(k_rows, hp.idx_dim)), k_rows, hp.idx_dim);
    }
    b.rlog = A.get<float>(Tm * hp.n_expert);
    b.ids = A.get<int32_t>(Tm * K);
    b.rw = A.get<float>(Tm * K);
    b.zeros = A.get<int32_t>(Tm);
    b.ones = A.get<float>(Tm);
    const std::vector<float> ones(static_cast<size_t>(Tm), 1.0f);
    DS4_CUDA_CHECK(cudaMemcpy(b.ones, ones.data(), ones.size() * sizeof(float), cudaMemcpyHostToDevice));
    b.act = A.get<uint8_t>(Tm * static_cast<int64_t>(max_act_bytes(*model_)));
    size_t ws = 0;
    for (const DLayer& L : model_->layers()) {
      if (L.gate_exps.present() && !is_float_type(L.gate_exps.type))
        ws = std::max(ws, moe_batch_workspace_bytes({L.gate_exps.type, L.down_exps.type, E, hp.n_ff_exp,
                                                     static_cast<int>(hp.n_expert), static_cast<int>(K), 1.0f},
                                                    Tm));
      if (L.gate_shexp.present() && !is_float_type(L.gate_shexp.type))
        ws = std::max(ws, moe_batch_workspace_bytes(
                              {L.gate_shexp.type, L.down_shexp.type, E, L.gate_shexp.rows, 1, 1, 1.0f}, Tm));
    }
    b.moe_ws = A.get<uint8_t>(static_cast<int64_t>(ws));
    if (cublas_gemm_enabled(GgmlType::Q8_0)) allocate_f16_gemm(*model_, Tm, A, b.f16, b.f16_fits, s);
    // A token's indexer scores: its visible compressed rows, at most max_ctx / ratio.
    for (const DLayer& L : model_->layers())
      if (L.has_indexer) b.scores_stride = std::max<int64_t>(b.scores_stride, opts_.max_ctx / L.ratio + 1);
    const fwd::AttnShape as{NH, D, hp.n_rope, hp.window, cap_, 0, sc_->max_rows};
    // The tensor-core attention needs no partials; the CUDA-core kernel's are 2.6 MB a token
    // at Flash sizes.
    const int64_t attn_floats =
        tensor_core_attention(as) ? 0 : static_cast<int64_t>(fwd::attention_scratch_floats(as));
    const auto per_token = static_cast<size_t>(attn_floats + b.scores_stride) * sizeof(float);
    // Scratch of one group of attention / indexer launches: tokens * per-token scratch.
    b.group = std::clamp<int64_t>(static_cast<int64_t>(gopts_.prefill_group_bytes / per_token), 1, Tm);
    b.attn_part = A.get<float>(b.group * attn_floats);
    b.scores = A.get<float>(b.group * b.scores_stride);
    state_bytes_ += A.bytes;
  }
  Batch& b = *batch_;

  stream_.synchronize();  // the previous chunk has read the per-token controls
  std::vector<fwd::StepCtl> ctl(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    ctl[static_cast<size_t>(t)].pos = p0 + t;
    ctl[static_cast<size_t>(t)].token = tokens[static_cast<size_t>(t)];
    ctl[static_cast<size_t>(t)].index = static_cast<int32_t>(t);
  }
  DS4_CUDA_CHECK(cudaMemcpy(b.ctls, ctl.data(), ctl.size() * sizeof(fwd::StepCtl), cudaMemcpyHostToDevice));

  // 3.1 Embedding of every token into all n_hc streams.
  const DTensor& te = model_->tok_embd();
  fwd::embed(te.type, te.d, te.row_bytes, E, static_cast<int>(NC), b.ctls, b.H, s, T);
  mark("embed", static_cast<double>(te.row_bytes) * static_cast<double>(T), s);
  for (size_t il = 0; il < model_->layers().size(); ++il) {
    prefill_layer(model_->layers()[il], *layers_[il], T, p0, s);
    if (hook_) {
      std::vector<float> H(static_cast<size_t>(T * NC * E));
      stream_.synchronize();
      DS4_CUDA_CHECK(cudaMemcpy(H.data(), b.H, H.size() * sizeof(float), cudaMemcpyDeviceToHost));
      hook_(static_cast<int64_t>(il), p0, T, H.data());
    }
  }

  // Output head on the tokens whose logits are wanted: the decode path's head on a copy of
  // that token's streams.
  auto head_of = [&](int64_t t) {
    fwd::copy(b.H + t * NC * E, sc_->H, NC * E, s);
    head(s);
  };
  if (mode == LogitsMode::All) {
    for (int64_t t = 0; t < T; ++t) {
      head_of(t);
      copy_logits(out + t * V, s);
    }
  } else if (mode == LogitsMode::Last) {
    head_of(T - 1);
    if (copy_last) copy_logits(out, s);
  }
  finish_chunk(tokens, "the batched prefill");
}

std::vector<GpuSession::PhaseTime> GpuSession::profile_prefill(std::span<const int32_t> tokens) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  if (T < 2 || T > opts_.max_batch) fail("profile_prefill: {} tokens (2 .. max_batch = {})", T, opts_.max_batch);
  if (n_past_ + T > opts_.max_ctx) fail("profile_prefill: {} + {} tokens exceed max_ctx {}", n_past_, T, opts_.max_ctx);
  for (int32_t t : tokens)
    if (t < 0 || t >= model_->hparams().n_vocab) fail("profile_prefill: token {} outside the vocabulary", t);
  stream_.synchronize();
  start_profile();
  prefill_chunk(tokens, LogitsMode::Last, nullptr, false);
  return collect_phases();
}

}  // namespace ds4::cuda
