#include "quality/windows.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/error.h"
#include "model/model.h"
#include "quality/distribution.h"

namespace ds4::quality {

std::vector<Window> plan_windows(int64_t n, const WindowOptions& opt) {
  const int64_t ctx = opt.ctx;
  const int64_t stride = opt.stride == 0 ? ctx / 2 : opt.stride;
  if (ctx < 2) fail("--ctx must be at least 2 (got {})", ctx);
  if (stride < 1 || stride > ctx) fail("--stride must be in [1, ctx = {}] (got {})", ctx, stride);
  if (n < 2) fail("need at least 2 tokens to score (got {})", n);
  std::vector<Window> out;
  int64_t scored_end = 1;  // token 0 is never a target
  for (int64_t b = 0;; b += stride) {
    const int64_t e = std::min(b + ctx, n);
    const int64_t first = std::max(b + 1, scored_end);
    if (first < e) out.push_back({b, e, first});
    scored_end = std::max(scored_end, e);
    if (e == n) break;
  }
  return out;
}

double Perplexity::ppl() const { return std::exp(mean_nll()); }

namespace {

class SessionLogits final : public LogitsSource {
 public:
  explicit SessionLogits(std::unique_ptr<model::EvalSession> s) : s_(std::move(s)) {
    if (!s_) fail("session_logits: no session");
  }
  int64_t n_vocab() const override { return s_->hparams().n_vocab; }
  void reset() override { s_->reset(); }
  void eval(std::span<const int32_t> tokens, float* out) override {
    s_->eval(tokens, out ? model::LogitsMode::All : model::LogitsMode::None, out);
  }

 private:
  std::unique_ptr<model::EvalSession> s_;
};

}  // namespace

std::unique_ptr<LogitsSource> model_logits(const model::Model& m, int64_t max_ctx, bool exact) {
  return session_logits(std::make_unique<model::Session>(
      m, model::SessionOptions{.max_ctx = max_ctx,
                               .numerics = exact ? model::Numerics::Exact : model::Numerics::Official}));
}

std::unique_ptr<LogitsSource> session_logits(std::unique_ptr<model::EvalSession> session) {
  return std::make_unique<SessionLogits>(std::move(session));
}

void score_windows(LogitsSource& src, std::span<const int32_t> tokens, const WindowOptions& opt,
                   const TargetFn& fn, int64_t chunk) {
  const int64_t V = src.n_vocab();
  for (int32_t t : tokens)
    if (t < 0 || t >= V) fail("token id {} is outside the model's vocabulary ({})", t, V);
  const auto windows = plan_windows(static_cast<int64_t>(tokens.size()), opt);
  chunk = std::max<int64_t>(1, chunk);
  std::vector<float> buf;
  for (const Window& w : windows) {
    src.reset();
    // Row p predicts token p + 1, so logits are needed from position first_target - 1 on.
    const int64_t need = w.first_target - 1;
    for (int64_t p = w.begin; p < w.end - 1;) {
      int64_t q = std::min(p + chunk, w.end - 1);
      if (p < need) q = std::min(q, need);  // a logit-free prefix piece
      const auto piece = tokens.subspan(static_cast<size_t>(p), static_cast<size_t>(q - p));
      if (q <= need) {
        src.eval(piece, nullptr);
      } else {
        buf.resize(static_cast<size_t>((q - p) * V));
        src.eval(piece, buf.data());
        for (int64_t r = std::max(p, need); r < q; ++r)
          fn(r + 1, std::span<const float>(buf).subspan(static_cast<size_t>((r - p) * V),
                                                        static_cast<size_t>(V)));
      }
      p = q;
    }
  }
}

Perplexity perplexity(LogitsSource& src, std::span<const int32_t> tokens, const WindowOptions& opt) {
  Perplexity r;
  r.n_windows = static_cast<int64_t>(plan_windows(static_cast<int64_t>(tokens.size()), opt).size());
  std::vector<double> lp(static_cast<size_t>(src.n_vocab()));
  score_windows(src, tokens, opt, [&](int64_t target, std::span<const float> logits) {
    log_softmax(logits, lp);
    r.nll_sum -= lp[static_cast<size_t>(tokens[static_cast<size_t>(target)])];
    ++r.n_scored;
  });
  return r;
}

}  // namespace ds4::quality
