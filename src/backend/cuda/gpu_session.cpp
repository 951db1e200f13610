#include "backend/cuda/gpu_session.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <span>

#include "backend/cuda/check.h"
#include "backend/cuda/decision_log.h"
#include "backend/cuda/forward_kernels.h"
#include "backend/cuda/matvec.h"
#include "backend/cuda/session_internal.h"
#include "core/error.h"

namespace ds4::cuda {

using model::HParams;
using model::LogitsMode;
using model::Numerics;
using model::SessionState;

namespace {

cudaStream_t cs(void* s) { return static_cast<cudaStream_t>(s); }

// Products that read the same x: with one type and width they run as one launch on one
// quantization of x (matvec_parts_q) instead of a quantize + product pair each.
struct ProductOfX {
  const DTensor& w;
  float* y;
};
// act_ready: x already quantized for w0's type (the HC pre's Q8_0 blocks), used when one launch serves.
void products_of_x(std::span<const ProductOfX> ps, const float* x, void* act_scratch, void* s,
                   const void* act_ready = nullptr) {
  const DTensor& w0 = ps.front().w;
  MatvecPart parts[kMaxMatvecParts];
  int n = 0;
  bool one_launch = ps.size() > 1 && ps.size() <= size_t(kMaxMatvecParts);
  for (const ProductOfX& p : ps) {
    one_launch = one_launch && p.w.type == w0.type && p.w.cols == w0.cols;
    if (n < kMaxMatvecParts) parts[n++] = MatvecPart{p.w.d, p.w.rows, p.y};
  }
  if (!one_launch) {
    for (const ProductOfX& p : ps) matvec(p.w.type, p.w.d, p.w.rows, p.w.cols, x, p.y, act_scratch, s);
    return;
  }
  const void* act = x;
  if (act_ready) {
    act = act_ready;
  } else if (activation_bytes(w0.type, w0.cols) > 0) {
    quantize_activation(w0.type, x, act_scratch, w0.cols, s);
    act = act_scratch;
  }
  matvec_parts_q(w0.type, w0.cols, parts, n, act, s);
}
void products_of_x(std::initializer_list<ProductOfX> ps, const float* x, void* act_scratch, void* s,
                   const void* act_ready = nullptr) {
  products_of_x(std::span(ps.begin(), ps.size()), x, act_scratch, s, act_ready);
}

}  // namespace

struct GpuSession::Prof {
  std::vector<cudaEvent_t> events;  // events[0] = start; events[i + 1] ends phase i
  std::vector<PhaseTime> phases;
};

void GpuSession::mark(const char* phase, double bytes, void* s) {
  if (!prof_) return;
  cudaEvent_t e = nullptr;
  DS4_CUDA_CHECK(cudaEventCreate(&e));
  DS4_CUDA_CHECK(cudaEventRecord(e, cs(s)));
  prof_->events.push_back(e);
  prof_->phases.push_back({phase, 0.0, bytes});
}

GpuSession::GpuSession(const GpuModel& model, const model::SessionOptions& opts, const GpuSessionOptions& g)
    : model_(&model), opts_(opts), gopts_(g) {
  if (opts_.max_ctx <= 0) fail("session: max_ctx must be positive, got {}", opts_.max_ctx);
  if (opts_.retain < 0) fail("session: retain must be >= 0, got {}", opts_.retain);
  if (opts_.max_batch <= 0) fail("session: max_batch must be positive, got {}", opts_.max_batch);
  const HParams& hp = model.hparams();
  const int64_t E = hp.n_embd, NC = hp.n_hc, D = hp.head_dim, NH = hp.n_head;
  if (NC > 8) fail("cuda session: {} hyper-connection streams (at most 8 supported)", NC);
  if (hp.n_expert_used > 16) fail("cuda session: {} experts per token (at most 16 supported)", hp.n_expert_used);
  if (hp.idx_dim > 0 && (hp.idx_dim & (hp.idx_dim - 1)) != 0)
    fail("cuda session: indexer head dim {} is not a power of two", hp.idx_dim);

  // History ring: covers what the CPU trimming rule may keep (window or two compressor
  // windows, retain, the trimming slack) plus one prefill chunk written before the next trim.
  int64_t max_ratio = 0;
  for (const DLayer& L : model.layers()) max_ratio = std::max<int64_t>(max_ratio, L.ratio);
  const int64_t slack = std::max<int64_t>(64, opts_.retain / 2 + 1);
  keep_max_ = opts_.retain + std::max(hp.window, 2 * max_ratio) + slack;
  cap_ = keep_max_ + opts_.max_batch + 1;
  if (cap_ > opts_.max_ctx) {
    cap_ = opts_.max_ctx + 1;  // never wraps
    keep_max_ = cap_;
  }

  sc_ = std::make_unique<Scratch>();
  Arena& A = sc_->arena;
  const int64_t K = hp.n_expert_used, F = hp.n_ff_exp;
  for (const DLayer& L : model.layers()) {
    auto S = std::make_unique<LayerBufs>();
    S->raw = A.get<float>(cap_ * D);
    if (L.ratio > 0) {
      S->comp_w = L.comp.c * D;
      S->comp_kv = A.get<float>(cap_ * S->comp_w);
      S->comp_sc = A.get<float>(cap_ * S->comp_w);
      S->comp = A.get<float>((opts_.max_ctx / L.ratio + 1) * D);
      sc_->max_rows = std::max(sc_->max_rows, hp.window + (L.has_indexer ? hp.idx_topk : opts_.max_ctx / L.ratio + 1));
    } else {
      sc_->max_rows = std::max(sc_->max_rows, hp.window);
    }
    if (L.has_indexer) {
      S->idx_w = 2 * hp.idx_dim;
      S->idx_kv = A.get<float>(cap_ * S->idx_w);
      S->idx_sc = A.get<float>(cap_ * S->idx_w);
      S->icomp = A.get<float>((opts_.max_ctx / L.ratio + 1) * hp.idx_dim);
    }
    layers_.push_back(std::move(S));
  }
  Scratch& s = *sc_;
  s.ctl = A.get<fwd::StepCtl>(1);
  s.tokens = A.get<int32_t>(opts_.max_batch);
  s.H = A.get<float>(NC * E);
  s.H2 = A.get<float>(NC * E);
  s.a = A.get<float>(E);
  s.x = A.get<float>(E);
  s.y = A.get<float>(E);
  s.y2 = A.get<float>(E);
  s.mix = A.get<float>((2 + NC) * NC);
  s.post = A.get<float>(NC);
  s.comb = A.get<float>(NC * NC);
  s.qa = A.get<float>(hp.q_lora);
  s.qr = A.get<float>(hp.q_lora);
  s.q = A.get<float>(NH * D);
  s.kv = A.get<float>(D);
  s.o = A.get<float>(NH * D);
  s.low = A.get<float>(hp.o_groups * hp.o_lora);
  s.ckv = A.get<float>(2 * std::max(D, hp.idx_dim));
  s.csc = A.get<float>(2 * std::max(D, hp.idx_dim));
  s.ickv = A.get<float>(2 * hp.idx_dim);
  s.icsc = A.get<float>(2 * hp.idx_dim);
  s.iq = A.get<float>(std::max<int64_t>(1, hp.idx_head * hp.idx_dim));
  s.iw = A.get<float>(std::max<int64_t>(1, hp.idx_head));
  s.scores = A.get<float>(opts_.max_ctx + 1);
  s.sel = A.get<int32_t>(std::max<int64_t>(1, hp.idx_topk));
  s.n_sel = A.get<int32_t>(1);
  s.rlog = A.get<float>(hp.n_expert);
  s.ids = A.get<int32_t>(K);
  s.rw = A.get<float>(K);
  s.ids0 = A.get<int32_t>(1);
  s.w1 = A.get<float>(1);
  const float one = 1.0f;
  DS4_CUDA_CHECK(cudaMemcpy(s.w1, &one, sizeof(float), cudaMemcpyHostToDevice));
  s.hbuf = A.get<float>(K * F);
  // Workspaces sized for the largest product of the model.
  size_t ws = 0, act = 0;
  auto need_act = [&](const DTensor& t, int64_t cols) {
    if (t.present()) act = std::max(act, activation_bytes(t.type, cols));
  };
  need_act(model.hc_head().fn, model.hc_head().fn.cols);
  need_act(model.output(), model.output().cols);
  for (const DLayer& L : model.layers()) {
    for (const DTensor* t : {&L.hc_attn.fn, &L.hc_ffn.fn, &L.q_a, &L.q_b, &L.kv, &L.out_a, &L.out_b, &L.comp.kv,
                             &L.comp.gate, &L.idx_comp.kv, &L.idx_comp.gate, &L.idx_q_b, &L.idx_proj, &L.router})
      need_act(*t, t->cols);
    if (L.gate_exps.present() && !is_float_type(L.gate_exps.type)) {
      MoeShape m{L.gate_exps.type, L.down_exps.type, E, F, static_cast<int>(K), 1.0f};
      ws = std::max(ws, moe_workspace_bytes(m));
    }
    if (L.gate_shexp.present() && !is_float_type(L.gate_shexp.type)) {
      MoeShape m{L.gate_shexp.type, L.down_shexp.type, E, L.gate_shexp.rows, 1, 1.0f};
      ws = std::max(ws, moe_workspace_bytes(m));
    }
    if (L.gate_exps.present() && !is_float_type(L.gate_exps.type)) {
      const SharedExpert sh{GgmlType::Q8_0, nullptr, nullptr, nullptr, L.gate_shexp.rows, 1.0f};
      MoeShape m{L.gate_exps.type, L.down_exps.type, E, F, static_cast<int>(K), 1.0f};
      ws = std::max(ws, moe_fused_workspace_bytes(m, L.gate_shexp.present() ? &sh : nullptr));
    }
  }
  s.moe_ws = A.get<uint8_t>(static_cast<int64_t>(ws));
  s.act = A.get<uint8_t>(static_cast<int64_t>(act));
  s.act_branch = A.get<uint8_t>(static_cast<int64_t>(act));
  s.max_rows = std::max<int64_t>(s.max_rows, 1);
  {
    const fwd::AttnShape as{NH, D, hp.n_rope, hp.window, cap_, 0, s.max_rows};
    s.attn_f = A.get<float>(static_cast<int64_t>(fwd::attention_scratch_floats(as)));
    s.router_arrivals = A.get<uint32_t>(1);  // zero-filled
    const fwd::HcShape hs{static_cast<int>(NC), E, hp.rms_eps, hp.hc_eps, static_cast<int>(hp.hc_sinkhorn_iters)};
    s.hc_scr = A.get<uint8_t>(static_cast<int64_t>(fwd::hc_fused_scratch_bytes(hs)));
  }
  size_t act_o = 0;
  for (const DLayer& L : model.layers())
    if (L.out_a.present()) act_o = std::max(act_o, activation_bytes(L.out_a.type, NH * D));
  s.act_o = A.get<uint8_t>(static_cast<int64_t>(act_o));
  s.logits = A.get<float>(hp.n_vocab);
  state_bytes_ = A.bytes;
  reset();
}

GpuSession::~GpuSession() = default;

std::vector<GpuSession::PhaseTime> GpuSession::profile_step(int32_t token) {
  if (token < 0 || token >= model_->hparams().n_vocab) fail("profile_step: token {} outside the vocabulary", token);
  if (n_past_ + 1 > opts_.max_ctx) fail("profile_step: the session is full ({} positions)", n_past_);
  void* s = stream_.handle();
  stream_.synchronize();
  DS4_CUDA_CHECK(cudaMemcpy(sc_->tokens, &token, sizeof(token), cudaMemcpyHostToDevice));
  fwd::StepCtl ctl;
  ctl.pos = n_past_;
  DS4_CUDA_CHECK(cudaMemcpy(sc_->ctl, &ctl, sizeof(ctl), cudaMemcpyHostToDevice));
  start_profile();
  record_step(s, true);
  std::vector<PhaseTime> out = collect_phases();
  collect_log(1);
  n_past_ += 1;
  tokens_.push_back(token);
  trim_history();
  return out;
}

void GpuSession::start_profile() {
  prof_ = std::make_unique<Prof>();
  cudaEvent_t start = nullptr;
  DS4_CUDA_CHECK(cudaEventCreate(&start));
  DS4_CUDA_CHECK(cudaEventRecord(start, cs(stream_.handle())));
  prof_->events.push_back(start);
}

std::vector<GpuSession::PhaseTime> GpuSession::collect_phases() {
  stream_.synchronize();
  std::vector<PhaseTime> out;
  for (size_t i = 0; i < prof_->phases.size(); ++i) {
    float ms = 0;
    DS4_CUDA_CHECK(cudaEventElapsedTime(&ms, prof_->events[i], prof_->events[i + 1]));
    auto it = std::find_if(out.begin(), out.end(), [&](const PhaseTime& p) { return p.name == prof_->phases[i].name; });
    if (it == out.end()) it = out.insert(out.end(), {prof_->phases[i].name, 0.0, 0.0});
    it->ms += ms;
    it->bytes += prof_->phases[i].bytes;
  }
  for (cudaEvent_t e : prof_->events) cudaEventDestroy(e);
  prof_.reset();
  return out;
}

void GpuSession::reset() {
  n_past_ = 0;
  tokens_.clear();
  hist_begin_.assign(static_cast<size_t>(model_->hparams().n_layers), 0);
  if (log_dev_) set_decision_log(true);
}

// ---- decision log (tests) ----

void GpuSession::set_decision_log(bool on) {
  const HParams& hp = model_->hparams();
  stream_.synchronize();
  graph_[0].reset();  // the captured steps contain (or lack) the log copies
  graph_[1].reset();
  log_ = {};
  log_dev_.reset();
  if (!on) return;
  log_layer_w_ = hp.n_expert_used + hp.idx_topk + 1;
  log_dev_ = std::make_unique<DeviceBuffer>(static_cast<size_t>(opts_.max_batch * hp.n_layers * log_layer_w_) *
                                            sizeof(int32_t));
  log_dev_->fill_bytes(0);  // layers without an indexer keep a row count of 0
  log_.n_layers = hp.n_layers;
  log_.n_expert_used = hp.n_expert_used;
  log_.idx_topk = hp.idx_topk;
  log_.pos0 = n_past_;
}

void GpuSession::log_choices(const int32_t* d_src, int64_t n, int64_t il, int64_t offset, void* s) {
  if (!log_dev_) return;
  fwd::copy_to_step_slot(d_src, n, log_dev_->as<int32_t>() + il * log_layer_w_ + offset,
                         model_->hparams().n_layers * log_layer_w_, sc_->ctl, s);
}

void GpuSession::log_batch(const int32_t* d_src, int64_t n, int64_t T, int64_t il, int64_t offset, void* s) {
  if (!log_dev_) return;
  const size_t pitch = static_cast<size_t>(model_->hparams().n_layers * log_layer_w_) * sizeof(int32_t);
  DS4_CUDA_CHECK(cudaMemcpy2DAsync(log_dev_->as<int32_t>() + il * log_layer_w_ + offset, pitch, d_src,
                                   static_cast<size_t>(n) * sizeof(int32_t), static_cast<size_t>(n) * sizeof(int32_t),
                                   static_cast<size_t>(T), cudaMemcpyDeviceToDevice, cs(s)));
}

void GpuSession::collect_log(int64_t T) {
  if (!log_dev_) return;
  const int64_t NL = log_.n_layers, K = log_.n_expert_used, TK = log_.idx_topk;
  std::vector<int32_t> h(static_cast<size_t>(T * NL * log_layer_w_));
  stream_.synchronize();
  log_dev_->download(h.data(), h.size() * sizeof(int32_t));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t il = 0; il < NL; ++il) {
      const int32_t* e = h.data() + (t * NL + il) * log_layer_w_;
      log_.experts.insert(log_.experts.end(), e, e + K);
      log_.rows.insert(log_.rows.end(), e + K, e + K + TK);
      log_.row_count.push_back(e[K + TK]);
    }
  log_.n_tokens += T;
}

// ---- one step: the forward of one token through every layer (architecture.md 3) ----

void GpuSession::mv(const DTensor& W, const float* x, float* y, void* s, int64_t row0, int64_t nrows) {
  if (nrows < 0) nrows = W.rows - row0;
  matvec(W.type, W.row(row0), nrows, W.cols, x, y, sc_->act, s);
}

namespace {
fwd::HcShape hc_shape(const HParams& hp) {
  return {static_cast<int>(hp.n_hc), hp.n_embd, hp.rms_eps, hp.hc_eps, static_cast<int>(hp.hc_sinkhorn_iters)};
}
// DS4_CUDA_NO_HC_FUSION set in the environment runs every hc_post as its own launch again (the
// same results, bit for bit): an A/B switch for measurements, like DS4_CUDA_NO_PDL.
bool hc_post_fusion() {
  static const bool on = std::getenv("DS4_CUDA_NO_HC_FUSION") == nullptr;
  return on;
}
// The router's product and routing run as one launch (fwd::fused_router, the same bits);
// DS4_CUDA_NO_FUSED_ROUTER=1 runs a product launch and a route launch instead. H200, full Flash
// q2, one call: decode 134.0 vs 133.4 / 133.0 tok/s, router phase 0.518 vs 0.566 ms per step,
// 7.28 vs 7.85 us per layer in a graph. Read per call, so that one process can compare both (a
// captured graph keeps the path of its capture).
bool fused_router() { return std::getenv("DS4_CUDA_NO_FUSED_ROUTER") == nullptr; }
// Only the next hc_post reads comb, so an HC pre may leave comb's Sinkhorn (one warp, ~3 us of
// serial shuffles and divisions at the end of the launch) to a one-warp launch beside the
// sublayer that reads x (same bits). Opt-in, DS4_CUDA_COMB_BRANCH_MODE (default 0: every HC pre
// runs its Sinkhorn itself):
//   1: after every HC pre, on a third stream, joined before the next reader of comb;
//   2: after the attention HC pre of the layers with a compressor branch, on a third stream,
//      joined before attention (which already waits for the branch);
//   3: 2, plus the FFN HC pre as in 1;
//   4: as 2, but at the end of the compressor branch (no new graph edges).
// Not the default: no mode was faster in the step. H200, full Flash q2 2K, one call, ms/step
// back to back: mode 0 7.732 / 7.709, mode 2 7.812 / 7.777, mode 4 7.758 / 7.743, mode 1 7.831,
// mode 3 7.677 (one run), although the HC pre launch itself is ~1 us shorter without it.
int comb_mode() {
  const char* m = std::getenv("DS4_CUDA_COMB_BRANCH_MODE");
  const int v = m ? std::atoi(m) : 0;
  return v >= 0 && v <= 4 ? v : 0;
}
// The comb Sinkhorn of every HC pre deferred into the next launch on the main stream that
// can carry it as one extra block (fwd::CombJob): the attention's into the q/kv finish
// (rows_finish_jobs), the FFN's into the fused router. It then neither holds up the HC pre's
// end (its one-warp Sinkhorn was the launch's longest path) nor adds a launch or a graph edge,
// which is what made the other placements (comb_mode 1-4) no faster. Same bits.
// DS4_CUDA_NO_COMB_IN_LAUNCH=1: each HC pre runs its Sinkhorn itself (read per call).
bool comb_in_launches() { return std::getenv("DS4_CUDA_NO_COMB_IN_LAUNCH") == nullptr; }
// The attention's HC pre also writes x as the Q8_0 activation of wq_a / wkv (instead of a
// quantize launch on the critical path). DS4_CUDA_NO_HC_X_Q8=1: the quantize launch. Same bits.
// With the next one, H200 full Flash q2 2K: 7.721 vs 8.128 ms/step (medians of 2, one call).
bool hc_x_q8() { return std::getenv("DS4_CUDA_NO_HC_X_Q8") == nullptr; }
// The attention merge also writes o as the Q8_0 activation of wo_a (instead of a quantize
// launch between attention and wo_a). DS4_CUDA_NO_ATTN_O_Q8=1: the quantize launch. Same bits.
bool attn_o_q8() { return std::getenv("DS4_CUDA_NO_ATTN_O_Q8") == nullptr; }
}  // namespace

void GpuSession::hc_post_now(const float* H_in, float* H_out, void* s) {
  join_comb(s);
  fwd::hc_post(hc_shape(model_->hparams()), sc_->y, H_in, sc_->post, sc_->comb, H_out, s);
  mark("hc post", 0, s);
}

bool GpuSession::hc_fusable(const DHc& hc) const {
  return is_float_type(hc.fn.type) && model_->hparams().n_embd % 4 == 0;  // every DS4 recipe and model
}

void GpuSession::join_comb(void* s) {
  if (!comb_pending_) return;
  comb_done_.record(comb_stream_.handle());
  comb_done_.wait_in(s);
  comb_pending_ = false;
}

void GpuSession::fork_comb(void* s) {
  comb_fork_.record(s);
  comb_fork_.wait_in(comb_stream_.handle());
  fwd::hc_comb_sinkhorn(hc_shape(model_->hparams()), sc_->comb, comb_stream_.handle());
  comb_pending_ = true;
}

GpuSession::HcPreDone GpuSession::hc_pre_norm(const DHc& hc, const float* post_from, float* H, const float* norm,
                                              void* s, void* x_q8, bool defer_sinkhorn) {
  const HParams& hp = model_->hparams();
  const fwd::HcShape sh = hc_shape(hp);
  const bool fused = hc_fusable(hc);
  join_comb(s);  // the hc_post below reads comb
  fwd::HcPreExtras ex;
  ex.x_q8 = x_q8;
  ex.defer_sinkhorn = defer_sinkhorn;
  bool one_launch = false;
  if (post_from && !(fused && hc_post_fusion())) {  // the pending hc_post as its own launch
    hc_post_now(post_from, H, s);
    post_from = nullptr;
  }
  if (fused) {  // the fn product fused, two wide launches; a pending hc_post inside the first
    // The hc_post (3.3) of the previous sublayer: its output y, the post / comb of its HC pre.
    if (post_from)
      one_launch = fwd::hc_post_pre_fused(sh, {sc_->y, post_from, sc_->post, sc_->comb}, H, hc.fn.type, hc.fn.d,
                                          hc.base, hc.scale, norm, sc_->a, sc_->x, sc_->post, sc_->comb, sc_->hc_scr,
                                          s, ex);
    else
      one_launch = fwd::hc_pre_fused(sh, hc.fn.type, hc.fn.d, H, hc.base, hc.scale, norm, sc_->a, sc_->x, sc_->post,
                                     sc_->comb, sc_->hc_scr, s, ex);
  } else {
    mv(hc.fn, H, sc_->mix, s);
    fwd::hc_pre(sh, sc_->mix, H, hc.base, hc.scale, sc_->a, sc_->post, sc_->comb, s);
    fwd::rmsnorm(sc_->a, norm, sc_->x, hp.n_embd, 1, hp.rms_eps, s);
  }
  mark("hc pre + norm", static_cast<double>(hc.fn.bytes()), s);
  return {one_launch && x_q8 != nullptr, one_launch && defer_sinkhorn};
}

void GpuSession::layer(const DLayer& L, LayerBufs& S, bool post_pending, void* s) {
  Scratch& b = *sc_;
  // Attention half: collapse the streams, normalize, attend (3.2-3.4). When the previous
  // layer's FFN hc_post (H2 -> H) is pending, this HC pre runs it first.
  // wq_a and wkv (one launch on one quantization of x) may take x's Q8_0 blocks from the HC pre.
  const HParams& hp = model_->hparams();
  const bool q8_from_hc = hc_x_q8() && takes_q8_0_act(L.q_a.type) && L.kv.type == L.q_a.type &&
                          L.q_a.cols == hp.n_embd && L.kv.cols == hp.n_embd && hp.n_embd % 128 == 0;
  // comb's Sinkhorn beside the sublayer (comb_mode); never on one stream (nothing to gain).
  const int mode = comb_stream(s) != s ? comb_mode() : 0;
  const bool branch_layer = L.ratio > 0 && branch_stream(s) != s;
  const bool in_launch = mode == 0 && comb_in_launches();
  const bool defer_attn = mode == 1 || (mode >= 2 && branch_layer) || in_launch;
  const bool defer_ffn = mode == 1 || mode == 3 || (in_launch && router_fused(L));
  const HcPreDone attn = hc_pre_norm(L.hc_attn, post_pending ? b.H2 : nullptr, b.H, L.attn_norm, s,
                                     q8_from_hc ? static_cast<void*>(b.act) : nullptr, defer_attn);
  comb_at_ = CombAt::None;
  if (attn.deferred) {
    if (mode == 1) fork_comb(s);
    else if (in_launch) comb_at_ = CombAt::RowsFinish;
    else comb_at_ = mode == 4 ? CombAt::BranchEnd : CombAt::Attention;
  }
  attention_sublayer(L, S, attn.x_act, s);
  // FFN half (3.5), after the attention hc_post (H -> H2), which its HC pre runs.
  comb_at_ = CombAt::None;
  if (hc_pre_norm(L.hc_ffn, b.H, b.H2, L.ffn_norm, s, nullptr, defer_ffn).deferred) {
    if (in_launch) comb_at_ = CombAt::Router;
    else fork_comb(s);
  }
  moe(L, s);
  comb_at_ = CombAt::None;
  // The FFN hc_post (H2 -> H) is left pending: the next layer's HC pre or the head runs it.
}

namespace {
// DS4_CUDA_ONE_STREAM set in the environment keeps the compressor / indexer branch on the main
// stream (same launches, program order): an A/B switch for measurements, like DS4_CUDA_NO_PDL.
bool branch_on_own_stream() {
  static const bool on = std::getenv("DS4_CUDA_ONE_STREAM") == nullptr;
  return on;
}
}  // namespace

void* GpuSession::branch_stream(void* s) const {
  return prof_ || !branch_on_own_stream() ? s : branch_stream_.handle();
}

void* GpuSession::comb_stream(void* s) const {
  return prof_ || !branch_on_own_stream() ? s : comb_stream_.handle();
}

const int32_t* GpuSession::compressor_branch(const DLayer& L, LayerBufs& S, void* s, void* br) {
  const HParams& hp = model_->hparams();
  Scratch& b = *sc_;
  const bool official = opts_.numerics == Numerics::Official, indexer = L.has_indexer;
  // 3.4.5: project the token into the rings (both compressors' kv and gate and the indexer's
  // head weights are products of x: one launch when their types and widths agree), then pool
  // the window it completes, if any (both compressors in one launch).
  const ProductOfX of_x[] = {{L.comp.kv, b.ckv},
                             {L.comp.gate, b.csc},
                             {L.idx_comp.kv, b.ickv},
                             {L.idx_comp.gate, b.icsc},
                             {L.idx_proj, b.iw}};
  products_of_x(std::span(of_x, indexer ? 5 : 2), b.x, b.act_branch, br);
  auto job = [&](const DCompressor& C, fwd::Sim sim, int64_t n_nope, const float* kv, const float* sc,
                 float* ring_kv, float* ring_sc, float* rows) {
    fwd::CompJob j;
    j.f = compressor_finish(hp, C, static_cast<int>(sim), n_nope);
    j.c = C.c;
    j.kv = kv;
    j.sc = sc;
    j.ape = C.ape;
    j.ring_kv = ring_kv;
    j.ring_sc = ring_sc;
    j.rows = rows;
    return j;
  };
  const fwd::CompJob jobs[] = {
      job(L.comp, official ? fwd::Sim::Fp8Nope : fwd::Sim::None, hp.n_nope(), b.ckv, b.csc, S.comp_kv, S.comp_sc,
          S.comp),
      job(L.idx_comp, official ? fwd::Sim::HadamardFp4 : fwd::Sim::None, 0, b.ickv, b.icsc, S.idx_kv, S.idx_sc,
          S.icomp)};
  fwd::comp_store_emit(jobs, indexer ? 2 : 1, L.omega, cap_, L.ratio, b.ctl, br);
  // comb's Sinkhorn last on the branch (CombAt::BranchEnd): the branch's join covers it.
  auto comb_last = [&] {
    if (comb_at_ == CombAt::BranchEnd) fwd::hc_comb_sinkhorn(hc_shape(hp), b.comb, br);
  };
  if (!indexer) {
    comb_last();
    return nullptr;
  }

  // 3.4.7 Lightning indexer: its query is a product of qr, which the main stream makes.
  if (br != s) qr_ready_.wait_in(br);
  products_of_x({{L.idx_q_b, b.iq}}, b.qr, b.act_branch, br);
  fwd::idx_prep_q(b.iq, hp.idx_head, hp.idx_dim, hp.n_rope, L.omega, official, b.ctl, br);
  const float wscale = 1.0f / std::sqrt(static_cast<float>(hp.idx_dim * hp.idx_head));
  fwd::idx_select(b.iq, b.iw, wscale, hp.idx_head, hp.idx_dim, S.icomp, L.ratio, hp.idx_topk, b.scores, b.sel,
                  b.n_sel, b.ctl, br);
  log_choices(b.sel, hp.idx_topk, L.il, hp.n_expert_used, br);
  log_choices(b.n_sel, 1, L.il, hp.n_expert_used + hp.idx_topk, br);
  comb_last();
  return b.sel;
}

void GpuSession::attention_sublayer(const DLayer& L, LayerBufs& S, bool x_act, void* s) {
  const HParams& hp = model_->hparams();
  Scratch& b = *sc_;
  const int64_t D = hp.head_dim, NH = hp.n_head;
  const bool official = opts_.numerics == Numerics::Official;

  // The compressors and the indexer (3.4.5-3.4.7) run on a second stream from here (x is
  // ready) until attention, which alone reads what they make.
  void* br = branch_stream(s);
  const bool branch = L.ratio > 0, fork = branch && br != s;
  if (fork) {
    x_ready_.record(s);
    x_ready_.wait_in(br);
  }
  if (comb_at_ == CombAt::Attention) fork_comb(s);  // joined with the branch, before attention

  // 3.4.1 Query: qr = RMSNorm(wq_a x), q = wq_b qr, per-head unweighted RMSNorm and RoPE.
  // 3.4.2 KV: one shared K = V row, normed, rotated, FP8 round trip (official) -> raw ring.
  // wq_a x and wkv x read the same x: one launch; the norm of qr (with its Q8_0 activation
  // for wq_b when that is wq_b's input format) and the KV row's finish: one launch.
  products_of_x({{L.q_a, b.qa}, {L.kv, b.kv}}, b.x, b.act, s, x_act ? b.act : nullptr);
  const bool qr_q8 = takes_q8_0_act(L.q_b.type);
  const fwd::RowsJob qr_kv[] = {{q_a_norm_finish(hp, L), b.qa, b.qr, 1, hp.q_lora, 0, qr_q8 ? b.act : nullptr},
                                {kv_finish(hp, L, official), b.kv, S.raw, 1, D, cap_, nullptr}};
  const fwd::CombJob comb_job{hc_shape(hp), b.comb};
  fwd::rows_finish_jobs(qr_kv, 2, L.omega, b.ctl, s, 1, comb_at_ == CombAt::RowsFinish ? &comb_job : nullptr);
  if (fork && L.has_indexer) qr_ready_.record(s);  // the indexer's query reads qr
  if (qr_q8)
    matvec_q(L.q_b.type, L.q_b.d, L.q_b.rows, L.q_b.cols, b.act, b.q, s);
  else
    mv(L.q_b, b.qr, b.q, s);
  fwd::rows_finish(query_finish(hp), L.omega, b.q, b.q, NH, D, 0, b.ctl, s);
  mark("q/kv projections", static_cast<double>(L.q_a.bytes() + L.q_b.bytes() + L.kv.bytes()), s);

  // 3.4.5 / 3.4.7 Compressors and the lightning indexer, joined back before attention.
  const int32_t* sel = branch ? compressor_branch(L, S, s, br) : nullptr;
  if (fork) {
    branch_done_.record(br);
    branch_done_.wait_in(s);
  }
  if (comb_at_ == CombAt::Attention) join_comb(s);
  mark("compressor + indexer",
       static_cast<double>(L.comp.kv.bytes() + L.comp.gate.bytes() + L.idx_comp.kv.bytes() + L.idx_comp.gate.bytes() +
                           L.idx_q_b.bytes() + L.idx_proj.bytes()),
       s);

  // 3.4.8 Attention with sinks over the raw window and the compressed rows, de-rotated.
  fwd::AttnShape as{NH, D, hp.n_rope, hp.window, cap_, L.ratio, b.max_rows};
  const bool o_q8 = attn_o_q8() && takes_q8_0_act(L.out_a.type) && D % 32 == 0;
  fwd::attention(as, b.q, S.raw, S.comp, sel, b.n_sel, L.sinks, L.omega, b.attn_f, b.o, b.ctl, s, 1, 0,
                 o_q8 ? b.act_o : nullptr, /*early_rows=*/true);
  mark("attention core", 0, s);

  // 3.4.9 Grouped output projection: group g uses rows g*R.. of wo_a on its heads. All groups
  // are quantized in one launch (each group's width is a whole number of activation blocks,
  // so group g's activation is the g-th slice) and multiplied in one grouped launch.
  const int64_t G = hp.o_groups, R = hp.o_lora;
  const void* act_o = b.o;
  if (!is_float_type(L.out_a.type)) {
    if (!o_q8) quantize_activation(L.out_a.type, b.o, b.act_o, NH * D, s);
    act_o = b.act_o;
  }
  matvec_grouped_q(L.out_a.type, L.out_a.d, G * R, L.out_a.cols, G, act_o, b.low, s);
  mv(L.out_b, b.low, b.y, s);
  mark("attention output", static_cast<double>(L.out_a.bytes() + L.out_b.bytes()), s);
}

bool GpuSession::router_fused(const DLayer& L) const {
  const HParams& hp = model_->hparams();
  return fused_router() && L.router.rows == hp.n_expert &&
         L.router.row_bytes == static_cast<size_t>(L.router.cols) * 2 &&
         fwd::fused_router_fits(L.router.type, L.router.d, hp.n_expert, L.router.cols, hp.n_expert_used);
}

void GpuSession::moe(const DLayer& L, void* s) {
  const HParams& hp = model_->hparams();
  Scratch& b = *sc_;
  const int64_t E = hp.n_embd, K = hp.n_expert_used, F = hp.n_ff_exp;
  // 3.5.1 Routing: sqrt-softplus scores, biased top-k or the hash table.
  const bool hash = hp.is_hash_layer(L.il);
  fwd::RouteArgs ra;
  ra.NE = hp.n_expert;
  ra.K = K;
  ra.bias = hash ? nullptr : L.router_bias;
  ra.tid2eid = hash ? static_cast<const int32_t*>(L.tid2eid.d) : nullptr;
  ra.norm = hp.expert_weights_norm;
  ra.scale = hp.expert_weights_scale;
  ra.ids = b.ids;
  ra.weights = b.rw;
  if (router_fused(L)) {
    const fwd::CombJob comb_job{hc_shape(hp), b.comb};
    fwd::fused_router(L.router.type, L.router.d, L.router.cols, b.x, b.rlog, b.router_arrivals, ra, b.ctl, s,
                      comb_at_ == CombAt::Router ? &comb_job : nullptr);
  } else {
    mv(L.router, b.x, b.rlog, s);
    fwd::route(b.rlog, ra.NE, K, ra.bias, ra.tid2eid, ra.norm, ra.scale, b.ctl, b.ids, b.rw, s);
  }
  log_choices(b.ids, K, L.il, 0, s);
  mark("router", static_cast<double>(L.router.bytes()), s);
  // 3.5.2 Routed experts and 3.5.3 shared expert (same clamps, weight 1) in two launches where
  // the types and shapes allow (every quantized recipe); otherwise each as its own product
  // chain, summed by an add.
  const MoeShape routed{L.gate_exps.type, L.down_exps.type, E, F, static_cast<int>(K),
                        hp.swiglu_limit[static_cast<size_t>(L.il)]};
  const bool has_shared = hp.n_expert_shared > 0;
  SharedExpert shared;
  if (has_shared)
    shared = SharedExpert{L.gate_shexp.type, L.gate_shexp.d, L.up_shexp.d, L.down_shexp.d, L.gate_shexp.rows,
                          hp.swiglu_limit_shared[static_cast<size_t>(L.il)]};
  const bool shared_one_type = !has_shared || (L.up_shexp.type == shared.type && L.down_shexp.type == shared.type);
  if (shared_one_type && moe_fused_supported(routed, has_shared ? &shared : nullptr)) {
    // x_early: the router's launch(es) above sit between the FFN HC pre, which wrote b.x, and these.
    moe_fused(routed, L.gate_exps.d, L.up_exps.d, L.down_exps.d, b.ids, b.rw, has_shared ? &shared : nullptr, b.x,
              b.y, b.moe_ws, s, /*x_early=*/true);
    mark("routed + shared experts",
         static_cast<double>(L.gate_exps.bytes() + L.up_exps.bytes() + L.down_exps.bytes()) * static_cast<double>(K) /
                 static_cast<double>(hp.n_expert) +
             (has_shared ? static_cast<double>(L.gate_shexp.bytes() + L.up_shexp.bytes() + L.down_shexp.bytes()) : 0.0),
         s);
    return;
  }
  auto experts = [&](const DTensor& gate, const DTensor& up, const DTensor& down, const int32_t* ids,
                     const float* w, int n_used, int64_t ff, float limit, float* y) {
    if (is_float_type(gate.type) && is_float_type(down.type)) {
      if (gate.type != up.type || gate.type != down.type)
        fail("cuda session: layer {}: float experts of mixed types are not supported", L.il);
      fwd::moe_float(gate.type, gate.d, up.d, down.d, E, ff, ids, w, n_used, limit, b.x, b.hbuf, y, s);
    } else if (!is_float_type(gate.type) && !is_float_type(down.type)) {
      MoeShape m{gate.type, down.type, E, ff, n_used, limit};
      moe_experts(m, gate.d, up.d, down.d, ids, w, b.x, y, b.moe_ws, s);
    } else {
      fail("cuda session: layer {}: experts mixing float and quantized types are not supported", L.il);
    }
  };
  experts(L.gate_exps, L.up_exps, L.down_exps, b.ids, b.rw, static_cast<int>(K), F,
          hp.swiglu_limit[static_cast<size_t>(L.il)], b.y);
  mark("routed experts",
       static_cast<double>(L.gate_exps.bytes() + L.up_exps.bytes() + L.down_exps.bytes()) * static_cast<double>(K) /
           static_cast<double>(hp.n_expert),
       s);
  if (hp.n_expert_shared > 0) {
    experts(L.gate_shexp, L.up_shexp, L.down_shexp, b.ids0, b.w1, 1, L.gate_shexp.rows,
            hp.swiglu_limit_shared[static_cast<size_t>(L.il)], b.y2);
    fwd::add(b.y, b.y2, b.y, E, s);
    mark("shared expert", static_cast<double>(L.gate_shexp.bytes() + L.up_shexp.bytes() + L.down_shexp.bytes()), s);
  }
}

void GpuSession::head(void* s, bool post_pending) {
  const HParams& hp = model_->hparams();
  Scratch& b = *sc_;
  const DHc& hc = model_->hc_head();
  const bool fused = hc_fusable(hc);
  join_comb(s);  // the pending hc_post reads comb
  if (post_pending && !(fused && hc_post_fusion())) {  // the pending hc_post as its own launch
    hc_post_now(b.H2, b.H, s);
    post_pending = false;
  }
  if (fused) {  // hc_head and the output norm in two launches, a pending hc_post inside the first
    const fwd::HcPostIn p{b.y, b.H2, b.post, b.comb};
    fwd::hc_head_fused(hc_shape(hp), post_pending ? &p : nullptr, b.H, hc.fn.type, hc.fn.d, hc.base, hc.scale,
                       model_->output_norm(), b.x, b.hc_scr, s);
  } else {
    mv(hc.fn, b.H, b.mix, s);
    fwd::hc_head(hc_shape(hp), b.mix, b.H, hc.base, hc.scale, b.x, s);
    fwd::rmsnorm(b.x, model_->output_norm(), b.x, hp.n_embd, 1, hp.rms_eps, s);
  }
  mv(model_->output(), b.x, b.logits, s);
  mark("output head", static_cast<double>(model_->output().bytes() + hc.fn.bytes()), s);
}

void GpuSession::record_step(void* s, bool with_head) {
  const HParams& hp = model_->hparams();
  Scratch& b = *sc_;
  fwd::step_begin(b.ctl, b.tokens, s);
  const DTensor& te = model_->tok_embd();
  fwd::embed(te.type, te.d, te.row_bytes, hp.n_embd, static_cast<int>(hp.n_hc), b.ctl, b.H, s);
  mark("embed", static_cast<double>(te.row_bytes), s);
  bool post_pending = false;  // the last layer's FFN hc_post (H2 -> H), not run yet
  for (size_t il = 0; il < model_->layers().size(); ++il) {
    layer(model_->layers()[il], *layers_[il], post_pending, s);
    post_pending = true;
    if (hook_) {  // the hook reads every layer's output state: run the post now
      hc_post_now(b.H2, b.H, s);
      post_pending = false;
      std::vector<float> H(static_cast<size_t>(hp.n_hc * hp.n_embd));
      fwd::StepCtl c;
      stream_.synchronize();
      DS4_CUDA_CHECK(cudaMemcpy(H.data(), b.H, H.size() * sizeof(float), cudaMemcpyDeviceToHost));
      DS4_CUDA_CHECK(cudaMemcpy(&c, b.ctl, sizeof(c), cudaMemcpyDeviceToHost));
      hook_(static_cast<int64_t>(il), c.pos, 1, H.data());
    }
  }
  // Without the head the last post is dead work: only the head reads the final state (the
  // next step starts from a fresh embedding; prefill's head copies its own state into H).
  if (with_head) head(s, post_pending);
  join_comb(s);  // a Sinkhorn nobody read (no head): the capture must end joined
  fwd::step_end(b.ctl, s);
}

void GpuSession::launch_step(bool with_head) {
  void* s = stream_.handle();
  if (!gopts_.use_graph || !warmed_ || hook_) {
    record_step(s, with_head);
    warmed_ = true;
    return;
  }
  auto& g = graph_[with_head ? 1 : 0];
  if (!g) g = std::make_unique<Graph>(s, [&](void* st) { record_step(st, with_head); });
  g->launch(s);
}

// ---- eval ----

void GpuSession::run_chunk(std::span<const int32_t> tokens, LogitsMode mode, float* out, bool copy_last) {
  const HParams& hp = model_->hparams();
  const int64_t T = static_cast<int64_t>(tokens.size()), V = hp.n_vocab;
  if (T > 1 && gopts_.batched_prefill) {
    prefill_chunk(tokens, mode, out, copy_last);
    return;
  }
  void* s = stream_.handle();
  stream_.synchronize();  // the previous chunk's steps have read the token array
  DS4_CUDA_CHECK(cudaMemcpy(sc_->tokens, tokens.data(), tokens.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  fwd::StepCtl ctl;
  ctl.pos = n_past_;
  DS4_CUDA_CHECK(cudaMemcpy(sc_->ctl, &ctl, sizeof(ctl), cudaMemcpyHostToDevice));
  for (int64_t t = 0; t < T; ++t) {
    const bool want = mode == LogitsMode::All || (mode == LogitsMode::Last && t == T - 1);
    launch_step(want);
    if (mode == LogitsMode::All) copy_logits(out + t * V, s);
  }
  if (mode == LogitsMode::Last && copy_last) copy_logits(out, s);
  finish_chunk(tokens, "the forward step");
}

void GpuSession::copy_logits(float* dst, void* s) const {
  const size_t bytes = static_cast<size_t>(model_->hparams().n_vocab) * sizeof(float);
  DS4_CUDA_CHECK(cudaMemcpyAsync(dst, sc_->logits, bytes, cudaMemcpyDeviceToHost, cs(s)));
}

void GpuSession::finish_chunk(std::span<const int32_t> tokens, const char* what) {
  stream_.synchronize();
  check_last_error(what);
  collect_log(static_cast<int64_t>(tokens.size()));
  n_past_ += static_cast<int64_t>(tokens.size());
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  trim_history();
}

void GpuSession::check_eval(std::span<const int32_t> tokens) const {
  const HParams& hp = model_->hparams();
  if (tokens.empty()) fail("eval: no tokens");
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= hp.n_vocab)
      fail("eval: token {} at index {} is outside the vocabulary [0, {})", tokens[i], i, hp.n_vocab);
  if (n_past_ + static_cast<int64_t>(tokens.size()) > opts_.max_ctx)
    fail("eval: {} + {} tokens exceed the session's max_ctx of {}", n_past_, tokens.size(), opts_.max_ctx);
}

void GpuSession::eval_chunks(std::span<const int32_t> tokens, LogitsMode mode, float* out, bool copy_last) {
  const int64_t V = model_->hparams().n_vocab;
  for (size_t i = 0; i < tokens.size(); i += static_cast<size_t>(opts_.max_batch)) {
    const size_t n = std::min(tokens.size() - i, static_cast<size_t>(opts_.max_batch));
    const bool last_chunk = i + n == tokens.size();
    LogitsMode m = mode;
    float* o = out;
    if (mode == LogitsMode::All) o = out + static_cast<int64_t>(i) * V;
    if (mode == LogitsMode::Last && !last_chunk) m = LogitsMode::None;
    run_chunk(tokens.subspan(i, n), m, o, copy_last);
  }
}

void GpuSession::eval(std::span<const int32_t> tokens, LogitsMode mode, float* out) {
  if (mode != LogitsMode::None && out == nullptr && !tokens.empty())
    fail("eval: logits requested but no output buffer");
  check_eval(tokens);
  eval_chunks(tokens, mode, out, true);
}

void GpuSession::eval_device(std::span<const int32_t> tokens) {
  check_eval(tokens);
  eval_chunks(tokens, LogitsMode::Last, nullptr, false);  // the last token's logits stay on the device
}

void GpuSession::eval_device_steps(std::span<const int32_t> tokens) {
  const bool batched = gopts_.batched_prefill;
  gopts_.batched_prefill = false;
  try {
    eval_device(tokens);
  } catch (...) {
    gopts_.batched_prefill = batched;
    throw;
  }
  gopts_.batched_prefill = batched;
}

const float* GpuSession::device_logits() const { return sc_->logits; }

bool GpuSession::eval_keeping_logits(std::span<const int32_t> tokens) {
  eval_device(tokens);
  return true;
}

bool GpuSession::reduce_logits(const model::LogitsReduceRequest& req, model::LogitsReduction& out) {
  if (!sampler_) sampler_ = std::make_unique<DeviceSampler>(model_->hparams().n_vocab);
  return sampler_->reduce(sc_->logits, req, out, stream_.handle());
}

void GpuSession::read_logits(int64_t first, int64_t count, float* out) {
  if (first < 0 || count < 0 || first + count > model_->hparams().n_vocab)
    fail("read_logits: range [{}, {}) outside the vocabulary", first, first + count);
  DS4_CUDA_CHECK(cudaMemcpyAsync(out, sc_->logits + first, static_cast<size_t>(count) * sizeof(float),
                                 cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream_.handle())));
  stream_.synchronize();
}

// ---- history bookkeeping: the CPU session's rules (model.cpp), on logical positions ----

namespace {

int64_t needed_begin(const HParams& hp, const DLayer& L, int64_t n_past, int64_t retain) {
  const int64_t n = std::max<int64_t>(0, n_past - retain);
  int64_t begin = n - (hp.window - 1);
  if (L.ratio > 0) {
    const int64_t r = L.ratio;
    const int64_t win = n / r - (L.comp.c == 2 ? 1 : 0);
    begin = std::min(begin, win * r);
  }
  return std::max<int64_t>(0, begin);
}

}  // namespace

void GpuSession::trim_history() {
  const HParams& hp = model_->hparams();
  for (size_t il = 0; il < model_->layers().size(); ++il) {
    const int64_t begin = needed_begin(hp, model_->layers()[il], n_past_, opts_.retain);
    const int64_t drop = begin - hist_begin_[il];
    if (drop <= 0 || drop < std::max<int64_t>(64, opts_.retain / 2 + 1)) continue;
    hist_begin_[il] = begin;
  }
}

int64_t GpuSession::min_truncate() const {
  const HParams& hp = model_->hparams();
  int64_t lo = 0;
  for (size_t il = 0; il < model_->layers().size(); ++il) {
    const DLayer& L = model_->layers()[il];
    const int64_t hb = hist_begin_[il];
    int64_t n = std::max<int64_t>(0, hb + hp.window - 1);
    if (L.ratio > 0) {
      const int64_t r = L.ratio;
      const int64_t extra = L.comp.c == 2 ? 1 : 0;
      n = std::max(n, ((hb + r - 1) / r + extra) * r);
    }
    if (hb == 0) n = 0;
    lo = std::max(lo, n);
  }
  return std::min(lo, n_past_);
}

void GpuSession::truncate(int64_t n) {
  if (n < 0 || n > n_past_) fail("truncate: position {} outside [0, {}]", n, n_past_);
  if (n == n_past_) return;
  const int64_t lo = min_truncate();
  if (n < lo)
    fail("truncate: cannot go back to {} tokens; the retained history allows {} .. {} "
         "(SessionOptions::retain = {})", n, lo, n_past_, opts_.retain);
  // Rows past n stay in the rings and arrays and are overwritten by the next evals.
  n_past_ = n;
  tokens_.resize(static_cast<size_t>(n));
  log_.keep_before(n);
}

// ---- snapshots in the CPU SessionState layout ----

namespace {

// Rows [begin, begin + n) of a ring of `cap` rows of `width` floats.
std::vector<float> ring_download(const float* ring, int64_t cap, int64_t width, int64_t begin, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n * width));
  int64_t done = 0;
  while (done < n) {
    const int64_t slot = (begin + done) % cap;
    const int64_t len = std::min(n - done, cap - slot);
    DS4_CUDA_CHECK(cudaMemcpy(v.data() + done * width, ring + slot * width,
                              static_cast<size_t>(len * width) * sizeof(float), cudaMemcpyDeviceToHost));
    done += len;
  }
  return v;
}

void ring_upload(float* ring, int64_t cap, int64_t width, int64_t begin, const float* src, int64_t n) {
  int64_t done = 0;
  while (done < n) {
    const int64_t slot = (begin + done) % cap;
    const int64_t len = std::min(n - done, cap - slot);
    DS4_CUDA_CHECK(cudaMemcpy(ring + slot * width, src + done * width, static_cast<size_t>(len * width) * sizeof(float),
                              cudaMemcpyHostToDevice));
    done += len;
  }
}

std::vector<float> download(const float* d, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  if (n > 0) DS4_CUDA_CHECK(cudaMemcpy(v.data(), d, static_cast<size_t>(n) * sizeof(float), cudaMemcpyDeviceToHost));
  return v;
}

}  // namespace

SessionState GpuSession::snapshot() const {
  const HParams& hp = model_->hparams();
  stream_.synchronize();
  SessionState st;
  st.fingerprint = hp.fingerprint();
  st.numerics = opts_.numerics;
  st.n_past = n_past_;
  st.retain = opts_.retain;
  st.tokens = tokens_;
  st.layers.resize(model_->layers().size());
  for (size_t il = 0; il < model_->layers().size(); ++il) {
    const DLayer& L = model_->layers()[il];
    const LayerBufs& S = *layers_[il];
    model::LayerState& ls = st.layers[il];
    ls.hist_begin = hist_begin_[il];
    const int64_t nh = n_past_ - ls.hist_begin;
    ls.raw = ring_download(S.raw, cap_, hp.head_dim, ls.hist_begin, nh);
    if (L.ratio > 0) {
      ls.comp_kv = ring_download(S.comp_kv, cap_, S.comp_w, ls.hist_begin, nh);
      ls.comp_sc = ring_download(S.comp_sc, cap_, S.comp_w, ls.hist_begin, nh);
      ls.comp = download(S.comp, (n_past_ / L.ratio) * hp.head_dim);
    }
    if (L.has_indexer) {
      ls.idx_kv = ring_download(S.idx_kv, cap_, S.idx_w, ls.hist_begin, nh);
      ls.idx_sc = ring_download(S.idx_sc, cap_, S.idx_w, ls.hist_begin, nh);
      ls.icomp = download(S.icomp, (n_past_ / L.ratio) * hp.idx_dim);
    }
  }
  return st;
}

void GpuSession::restore(SessionState s) {
  const HParams& hp = model_->hparams();
  std::vector<model::LayerStateShape> shapes;
  for (const DLayer& L : model_->layers()) shapes.push_back({L.ratio, L.comp.c, L.has_indexer});
  model::check_restorable(s, hp, shapes, opts_.numerics, opts_.max_ctx);
  stream_.synchronize();
  for (size_t il = 0; il < model_->layers().size(); ++il) {
    const DLayer& L = model_->layers()[il];
    const LayerBufs& S = *layers_[il];
    const model::LayerState& ls = s.layers[il];
    // A longer history than the ring holds keeps its most recent rows (all the session needs).
    const int64_t hb = std::max(ls.hist_begin, s.n_past - keep_max_);
    const int64_t skip = hb - ls.hist_begin, nh = s.n_past - hb;
    ring_upload(S.raw, cap_, hp.head_dim, hb, ls.raw.data() + skip * hp.head_dim, nh);
    if (L.ratio > 0) {
      ring_upload(S.comp_kv, cap_, S.comp_w, hb, ls.comp_kv.data() + skip * S.comp_w, nh);
      ring_upload(S.comp_sc, cap_, S.comp_w, hb, ls.comp_sc.data() + skip * S.comp_w, nh);
      if (!ls.comp.empty())
        DS4_CUDA_CHECK(cudaMemcpy(S.comp, ls.comp.data(), ls.comp.size() * sizeof(float), cudaMemcpyHostToDevice));
    }
    if (L.has_indexer) {
      ring_upload(S.idx_kv, cap_, S.idx_w, hb, ls.idx_kv.data() + skip * S.idx_w, nh);
      ring_upload(S.idx_sc, cap_, S.idx_w, hb, ls.idx_sc.data() + skip * S.idx_w, nh);
      if (!ls.icomp.empty())
        DS4_CUDA_CHECK(cudaMemcpy(S.icomp, ls.icomp.data(), ls.icomp.size() * sizeof(float), cudaMemcpyHostToDevice));
    }
    hist_begin_[il] = hb;
  }
  n_past_ = s.n_past;
  tokens_ = std::move(s.tokens);
  if (log_dev_) set_decision_log(true);  // the record restarts at the restored position
}

}  // namespace ds4::cuda
