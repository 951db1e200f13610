#include "model/model.h"

#include <algorithm>

#include "core/error.h"
#include "core/thread_pool.h"
#include "gguf/gguf.h"
#include "model/forward.h"
#include "model/rope.h"

namespace ds4::model {

Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::string& path, const ModelOptions& opts) {
  Model m;
  m.file_ = std::make_unique<gguf::File>(gguf::File::open(path));
  m.hp_ = HParams::from_gguf(*m.file_);
  m.w_ = ModelWeights::bind(*m.file_, m.hp_);
  m.pool_ = std::make_unique<ThreadPool>(opts.threads);
  return m;
}

Session::Session(const Model& model, const SessionOptions& opts) : model_(&model), opts_(opts) {
  if (opts_.max_ctx <= 0) fail("session: max_ctx must be positive, got {}", opts_.max_ctx);
  if (opts_.retain < 0) fail("session: retain must be >= 0, got {}", opts_.retain);
  if (opts_.max_batch <= 0) fail("session: max_batch must be positive, got {}", opts_.max_batch);
  reset();
}

void Session::reset() {
  st_ = SessionState{};
  st_.fingerprint = model_->hparams().fingerprint();
  st_.numerics = opts_.numerics;
  st_.retain = opts_.retain;
  st_.layers.resize(static_cast<size_t>(model_->hparams().n_layers));
}

void Session::eval(std::span<const int32_t> tokens, LogitsMode mode, float* out) {
  const HParams& hp = model_->hparams();
  if (tokens.empty()) fail("eval: no tokens");
  if (mode != LogitsMode::None && out == nullptr) fail("eval: logits requested but no output buffer");
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= hp.n_vocab)
      fail("eval: token {} at index {} is outside the vocabulary [0, {})", tokens[i], i, hp.n_vocab);
  if (st_.n_past + static_cast<int64_t>(tokens.size()) > opts_.max_ctx)
    fail("eval: {} + {} tokens exceed the session's max_ctx of {}", st_.n_past, tokens.size(),
         opts_.max_ctx);
  const int64_t V = hp.n_vocab;
  for (size_t i = 0; i < tokens.size(); i += static_cast<size_t>(opts_.max_batch)) {
    const size_t n = std::min(tokens.size() - i, static_cast<size_t>(opts_.max_batch));
    const bool last_chunk = i + n == tokens.size();
    LogitsMode m = mode;
    float* o = out;
    if (mode == LogitsMode::All) o = out + static_cast<int64_t>(i) * V;
    if (mode == LogitsMode::Last && !last_chunk) m = LogitsMode::None;
    eval_chunk(tokens.subspan(i, n), m, o);
  }
}

void Session::eval_chunk(std::span<const int32_t> tokens, LogitsMode mode, float* out) {
  const HParams& hp = model_->hparams();
  const ModelWeights& w = model_->weights();
  ThreadPool* pool = model_->pool();
  const int64_t T = static_cast<int64_t>(tokens.size()), p0 = st_.n_past;
  const int64_t row = hp.n_hc * hp.n_embd;
  std::vector<float> H(static_cast<size_t>(T * row));
  // The decision hook is visible to this chunk's forward pass only (decisions.h).
  struct ScopeGuard {
    detail::DecisionScope saved = detail::decision_scope();
    ~ScopeGuard() { detail::decision_scope() = saved; }
  } guard;
  const bool hooked = decisions_.experts || decisions_.rows;
  detail::decision_scope() = {hooked ? &decisions_ : nullptr, p0};
  embed(hp, w, tokens.data(), T, H.data());
  for (int64_t il = 0; il < hp.n_layers; ++il) {
    const LayerWeights& L = w.layers[static_cast<size_t>(il)];
    const Rope rope = Rope::for_layer(hp, il);
    layer_forward(hp, L, rope, st_.numerics, st_.layers[static_cast<size_t>(il)], tokens.data(),
                  T, p0, H.data(), pool);
    if (hook_) hook_(il, p0, T, H.data());
  }
  st_.n_past += T;
  st_.tokens.insert(st_.tokens.end(), tokens.begin(), tokens.end());
  trim_history();
  if (mode == LogitsMode::All) output_head(hp, w, H.data(), T, out, pool);
  if (mode == LogitsMode::Last) output_head(hp, w, H.data() + (T - 1) * row, 1, out, pool);
}

namespace {

// First position the history must keep so that any n >= n_past - retain can be continued:
// the raw window before n and the compressor windows n still needs (session_state.h).
int64_t needed_begin(const HParams& hp, const LayerWeights& L, int64_t n_past, int64_t retain) {
  const int64_t n = std::max<int64_t>(0, n_past - retain);
  int64_t begin = n - (hp.window - 1);
  if (L.ratio > 0) {
    const int64_t r = L.ratio;
    const int64_t win = n / r - (L.comp.c == 2 ? 1 : 0);
    begin = std::min(begin, win * r);
  }
  return std::max<int64_t>(0, begin);
}

void drop_front(std::vector<float>& v, int64_t rows, int64_t width) {
  if (rows > 0 && width > 0) v.erase(v.begin(), v.begin() + rows * width);
}

}  // namespace

void Session::trim_history() {
  const HParams& hp = model_->hparams();
  const ModelWeights& w = model_->weights();
  for (int64_t il = 0; il < hp.n_layers; ++il) {
    const LayerWeights& L = w.layers[static_cast<size_t>(il)];
    LayerState& s = st_.layers[static_cast<size_t>(il)];
    const int64_t begin = needed_begin(hp, L, st_.n_past, st_.retain);
    const int64_t drop = begin - s.hist_begin;
    // Drop in batches, so the cost of moving the kept rows is amortized over many tokens.
    if (drop <= 0 || drop < std::max<int64_t>(64, st_.retain / 2 + 1)) continue;
    drop_front(s.raw, drop, hp.head_dim);
    if (L.ratio > 0) {
      drop_front(s.comp_kv, drop, L.comp.c * hp.head_dim);
      drop_front(s.comp_sc, drop, L.comp.c * hp.head_dim);
    }
    if (L.has_indexer) {
      drop_front(s.idx_kv, drop, 2 * hp.idx_dim);
      drop_front(s.idx_sc, drop, 2 * hp.idx_dim);
    }
    s.hist_begin = begin;
  }
}

int64_t Session::min_truncate() const {
  const HParams& hp = model_->hparams();
  const ModelWeights& w = model_->weights();
  int64_t lo = 0;
  for (int64_t il = 0; il < hp.n_layers; ++il) {
    const LayerWeights& L = w.layers[static_cast<size_t>(il)];
    const int64_t hb = st_.layers[static_cast<size_t>(il)].hist_begin;
    // Smallest n whose needs (with retain 0) start at or after hb.
    int64_t n = std::max<int64_t>(0, hb + hp.window - 1);
    if (L.ratio > 0) {
      const int64_t r = L.ratio;
      const int64_t extra = L.comp.c == 2 ? 1 : 0;
      // need (n / r - extra) * r >= hb  <=>  n >= (ceil(hb / r) + extra) * r
      n = std::max(n, ((hb + r - 1) / r + extra) * r);
    }
    if (hb == 0) n = 0;
    lo = std::max(lo, n);
  }
  return std::min(lo, st_.n_past);
}

void Session::truncate(int64_t n) {
  if (n < 0 || n > st_.n_past) fail("truncate: position {} outside [0, {}]", n, st_.n_past);
  if (n == st_.n_past) return;
  const int64_t lo = min_truncate();
  if (n < lo)
    fail("truncate: cannot go back to {} tokens; the retained history allows {} .. {} "
         "(SessionOptions::retain = {})", n, lo, st_.n_past, st_.retain);
  const HParams& hp = model_->hparams();
  const ModelWeights& w = model_->weights();
  for (int64_t il = 0; il < hp.n_layers; ++il) {
    const LayerWeights& L = w.layers[static_cast<size_t>(il)];
    LayerState& s = st_.layers[static_cast<size_t>(il)];
    const int64_t keep = n - s.hist_begin;
    s.raw.resize(static_cast<size_t>(keep * hp.head_dim));
    if (L.ratio > 0) {
      s.comp_kv.resize(static_cast<size_t>(keep * L.comp.c * hp.head_dim));
      s.comp_sc.resize(static_cast<size_t>(keep * L.comp.c * hp.head_dim));
      s.comp.resize(static_cast<size_t>((n / L.ratio) * hp.head_dim));
    }
    if (L.has_indexer) {
      s.idx_kv.resize(static_cast<size_t>(keep * 2 * hp.idx_dim));
      s.idx_sc.resize(static_cast<size_t>(keep * 2 * hp.idx_dim));
      s.icomp.resize(static_cast<size_t>((n / L.ratio) * hp.idx_dim));
    }
  }
  st_.n_past = n;
  st_.tokens.resize(static_cast<size_t>(n));
}

void Session::restore(SessionState s) {
  std::vector<LayerStateShape> shapes;
  for (const LayerWeights& L : model_->weights().layers) shapes.push_back({L.ratio, L.comp.c, L.has_indexer});
  check_restorable(s, model_->hparams(), shapes, opts_.numerics, opts_.max_ctx);
  s.retain = opts_.retain;
  st_ = std::move(s);
}

}  // namespace ds4::model
