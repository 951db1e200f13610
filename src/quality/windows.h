// Scoring a long token stream in windows (perplexity and reference dumps): windows of `ctx`
// tokens start every `stride` tokens; each window scores only the targets that no earlier
// window scored, except that the first window scores every token but the first (which has no
// context). With stride < ctx every target after the first window is predicted with at least
// ctx - stride tokens of context; stride = ctx gives disjoint windows (each window's first
// token is then never a target, as in llama.cpp's perplexity).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

namespace ds4::model {
class Model;
class EvalSession;
}

namespace ds4::quality {

struct WindowOptions {
  int64_t ctx = 512;
  int64_t stride = 256;  // 0 = ctx / 2
};

struct Window {
  int64_t begin = 0, end = 0;  // tokens [begin, end) are evaluated
  int64_t first_target = 0;    // targets [first_target, end) are scored
};

// The windows over n tokens; throws on ctx < 2, stride outside [1, ctx] or n < 2.
std::vector<Window> plan_windows(int64_t n_tokens, const WindowOptions& opt);

// Something that turns tokens into next-token logits: the model (ModelLogits) or, in tests, a
// deterministic function.
class LogitsSource {
 public:
  virtual ~LogitsSource() = default;
  virtual int64_t n_vocab() const = 0;
  // Starts a new sequence (positions from 0).
  virtual void reset() = 0;
  // Appends `tokens`; when `out` is not null, writes [tokens.size()][n_vocab] logits, row i
  // being the distribution of the token that follows tokens[i].
  virtual void eval(std::span<const int32_t> tokens, float* out) = 0;
};

// A CPU Session of `model` (exact or official numerics) as a LogitsSource.
std::unique_ptr<LogitsSource> model_logits(const model::Model& m, int64_t max_ctx, bool exact);

// Any backend's session (runtime::Engine::new_session: cpu or cuda) as a LogitsSource; the
// session's max_ctx bounds the windows and pieces it can take. The engine that made the session
// must outlive the source.
std::unique_ptr<LogitsSource> session_logits(std::unique_ptr<model::EvalSession> session);

// Called once per scored target, in increasing order: `target` is the position of the token
// being predicted and `logits` the source's row for position target - 1.
using TargetFn = std::function<void(int64_t target, std::span<const float> logits)>;

// Runs every window over `tokens`, evaluating in pieces of at most `chunk` tokens so memory
// stays at chunk x n_vocab floats (prefix pieces without targets get no logits at all).
void score_windows(LogitsSource& src, std::span<const int32_t> tokens, const WindowOptions& opt,
                   const TargetFn& fn, int64_t chunk = 256);

struct Perplexity {
  double nll_sum = 0;   // sum of -log p(target)
  int64_t n_scored = 0;
  int64_t n_windows = 0;
  double mean_nll() const { return n_scored ? nll_sum / static_cast<double>(n_scored) : 0; }
  double ppl() const;
};

Perplexity perplexity(LogitsSource& src, std::span<const int32_t> tokens, const WindowOptions& opt);

}  // namespace ds4::quality
