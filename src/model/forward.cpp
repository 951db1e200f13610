#include "model/forward.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "model/attention.h"
#include "model/compressor.h"
#include "model/hyper_connection.h"
#include "model/indexer.h"
#include "model/moe.h"
#include "model/numerics_sim.h"
#include "model/ops.h"
#include "quant/quant.h"

namespace ds4::model {
namespace {

using Buf = std::vector<float>;
Buf buf(int64_t n) { return Buf(static_cast<size_t>(n)); }

// Attention sublayer (3.4) for T tokens: x [T][E] normed input -> out [T][E].
void attention_sublayer(const HParams& hp, const LayerWeights& L, const Rope& rope,
                        Numerics num, LayerState& st, const float* x, int64_t T, int64_t p0,
                        float* out, ThreadPool* pool) {
  const int64_t D = hp.head_dim, NH = hp.n_head, NOPE = hp.n_nope();
  const float eps = hp.rms_eps;
  std::vector<float> cs(static_cast<size_t>(hp.n_rope));

  // 3.4.1 Query: qr = RMSNorm(wq_a x; q_norm), q = wq_b qr, per-head unweighted RMSNorm, RoPE.
  Buf qa = buf(T * hp.q_lora), qr = buf(T * hp.q_lora), q = buf(T * NH * D);
  linear(L.q_a, x, T, qa.data(), pool);
  for (int64_t t = 0; t < T; ++t)
    rmsnorm(qr.data() + t * hp.q_lora, qa.data() + t * hp.q_lora, L.q_a_norm.data(), hp.q_lora, eps);
  linear(L.q_b, qr.data(), T, q.data(), pool);
  for (int64_t t = 0; t < T; ++t) {
    rope.angles(p0 + t, cs.data());
    for (int64_t h = 0; h < NH; ++h) {
      float* qh = q.data() + (t * NH + h) * D;
      rmsnorm(qh, qh, nullptr, D, eps);
      rope.rotate(qh, D, cs.data());
    }
  }

  // 3.4.2 KV: one shared K = V row per token, RoPE, FP8 round trip of the nope dims
  // (official numerics, 3.4.4); appended to the raw history.
  Buf kv = buf(T * D);
  linear(L.kv, x, T, kv.data(), pool);
  for (int64_t t = 0; t < T; ++t) {
    float* r = kv.data() + t * D;
    rmsnorm(r, r, L.kv_norm.data(), D, eps);
    rope.apply(r, D, p0 + t);
    if (num == Numerics::Official) fp8_roundtrip(r, NOPE, 64);
  }
  if (static_cast<int64_t>(st.raw.size()) != (p0 - st.hist_begin) * D)
    fail("layer {}: session history is inconsistent with position {}", L.il, p0);
  st.raw.insert(st.raw.end(), kv.begin(), kv.end());

  // 3.4.5 Compressors: project every token, emit the windows completed in this chunk.
  AttentionInputs in;
  IndexerSelection sel;
  if (L.ratio > 0) {
    const int64_t cw = L.comp.c * D;
    Buf ckv = buf(T * cw), csc = buf(T * cw);
    compressor_project(L.comp, L.ratio, x, T, p0, ckv.data(), csc.data(), pool);
    compressor_advance(L.comp, L.ratio, rope, NOPE,
                       num == Numerics::Official ? RowSim::Fp8Nope : RowSim::None, eps,
                       ckv.data(), csc.data(), T, p0, st.comp_kv, st.comp_sc, st.hist_begin, st.comp);
    if (L.has_indexer) {
      // 3.4.7 Lightning indexer: its own compressor over the same windows, then top-k.
      const int64_t iw = 2 * hp.idx_dim;
      Buf ikv = buf(T * iw), isc = buf(T * iw);
      compressor_project(L.idx_comp, L.ratio, x, T, p0, ikv.data(), isc.data(), pool);
      compressor_advance(L.idx_comp, L.ratio, rope, 0,
                         num == Numerics::Official ? RowSim::HadamardFp4 : RowSim::None, eps,
                         ikv.data(), isc.data(), T, p0, st.idx_kv, st.idx_sc, st.hist_begin, st.icomp);
      sel = indexer_select(hp, L, rope, num, qr.data(), x, T, p0, st.icomp.data(), pool);
      in.sel = sel.rows.data();
      in.n_sel = sel.count.data();
      in.sel_stride = sel.stride;
    }
  }

  // 3.4.8 Core attention with sinks over the visible rows.
  Buf o = buf(T * NH * D);
  in.q = q.data();
  in.T = T;
  in.p0 = p0;
  in.raw = st.raw.data();
  in.hist_begin = st.hist_begin;
  in.comp = st.comp.data();
  in.ratio = L.ratio;
  attention_core(hp, L.sinks.data(), in, o.data(), pool);

  // 3.4.9 De-rotate (V carries rotated tail dims) at the query position, then project.
  for (int64_t t = 0; t < T; ++t) {
    rope.angles(p0 + t, cs.data());
    for (int64_t h = 0; h < NH; ++h) rope.rotate(o.data() + (t * NH + h) * D, D, cs.data(), true);
  }
  attention_output(hp, L, o.data(), T, out, pool);
}

}  // namespace

void embed(const HParams& hp, const ModelWeights& w, const int32_t* tokens, int64_t T, float* H) {
  const int64_t E = hp.n_embd, NC = hp.n_hc;
  for (int64_t t = 0; t < T; ++t) {
    float* h = H + t * NC * E;
    quant::dequantize_row(w.tok_embd.type, w.tok_embd.row(tokens[t]), h, E);
    for (int64_t s = 1; s < NC; ++s) std::copy_n(h, E, h + s * E);
  }
}

void layer_forward(const HParams& hp, const LayerWeights& L, const Rope& rope, Numerics num,
                   LayerState& st, const int32_t* tokens, int64_t T, int64_t p0, float* H,
                   ThreadPool* pool) {
  const int64_t E = hp.n_embd, NC = hp.n_hc, n_mix = (2 + NC) * NC;
  Buf a = buf(T * E), x = buf(T * E), y = buf(T * E), H2 = buf(T * NC * E);
  Buf post = buf(T * NC), comb = buf(T * NC * NC), mix = buf(T * n_mix);

  // Attention half: collapse the streams, normalize, attend, expand and mix back (3.2, 3.3).
  hc_pre(hp, L.hc_attn, H, T, a.data(), post.data(), comb.data(), mix.data(), pool);
  for (int64_t t = 0; t < T; ++t)
    rmsnorm(x.data() + t * E, a.data() + t * E, L.attn_norm.data(), E, hp.rms_eps);
  attention_sublayer(hp, L, rope, num, st, x.data(), T, p0, y.data(), pool);
  hc_post(hp, y.data(), H, post.data(), comb.data(), T, H2.data());

  // FFN half (3.5).
  hc_pre(hp, L.hc_ffn, H2.data(), T, a.data(), post.data(), comb.data(), mix.data(), pool);
  for (int64_t t = 0; t < T; ++t)
    rmsnorm(x.data() + t * E, a.data() + t * E, L.ffn_norm.data(), E, hp.rms_eps);
  moe_forward(hp, L, x.data(), tokens, T, y.data(), pool);
  hc_post(hp, y.data(), H2.data(), post.data(), comb.data(), T, H);
}

void output_head(const HParams& hp, const ModelWeights& w, const float* H, int64_t n,
                 float* logits, ThreadPool* pool) {
  const int64_t E = hp.n_embd;
  Buf x = buf(n * E), mix = buf(n * hp.n_hc);
  hc_head(hp, w.hc_head, H, n, x.data(), mix.data(), pool);
  for (int64_t t = 0; t < n; ++t)
    rmsnorm(x.data() + t * E, x.data() + t * E, w.output_norm.data(), E, hp.rms_eps);
  linear(w.output, x.data(), n, logits, pool);
}

}  // namespace ds4::model
