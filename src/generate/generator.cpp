#include "generate/generator.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "generate/stop_matcher.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"

namespace ds4::gen {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

bool cancelled(const GenerateOptions& o) {
  return o.cancel != nullptr && o.cancel->load(std::memory_order_relaxed);
}

}  // namespace

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::StopToken: return "stop token";
    case FinishReason::StopString: return "stop string";
    case FinishReason::MaxTokens: return "max tokens";
    case FinishReason::ContextFull: return "context full";
    case FinishReason::Cancelled: return "cancelled";
  }
  return "?";
}

double GenerateResult::prefill_tokens_per_s() const {
  const double n = static_cast<double>(prompt_tokens - reused_tokens);
  return prefill_seconds > 0 ? n / prefill_seconds : 0.0;
}

double GenerateResult::decode_tokens_per_s() const {
  return decode_seconds > 0 ? static_cast<double>(tokens.size()) / decode_seconds : 0.0;
}

TokenId sample_step(model::EvalSession& s, Sampler& sampler, bool& on_device, std::vector<float>& host_logits,
                    std::span<const TokenId> history, int logprobs_top_k, StepLogprobs* logprobs) {
  if (on_device) {
    const int64_t V = s.hparams().n_vocab;
    model::LogitsReduction red;
    if (s.reduce_logits(sampler.reduce_request(history, V, logprobs_top_k), red)) {
      const TokenId t = sampler.sample_reduced(red);
      if (logprobs_top_k >= 0) {
        float raw = 0.0f;
        s.read_logits(t, 1, &raw);
        *logprobs = logprobs_from_reduction(red, t, raw);
      }
      return t;
    }
    // Not served (invalid logits, too many candidates): the host path, which reports errors.
    host_logits.resize(static_cast<size_t>(V));
    s.read_logits(0, V, host_logits.data());
    on_device = false;
  }
  const TokenId t = sampler.sample(host_logits, history);
  if (logprobs_top_k >= 0) *logprobs = compute_logprobs(host_logits, t, logprobs_top_k);
  return t;
}

size_t common_prefix(std::span<const TokenId> a, std::span<const TokenId> b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

Generator::Generator(const model::Model& model, const tok::Tokenizer& tokenizer,
                     model::SessionOptions opts)
    : model_(&model), tok_(&tokenizer), session_(std::make_unique<model::Session>(model, opts)) {}

Generator::Generator(const model::Model& model, const tok::Tokenizer& tokenizer,
                     std::unique_ptr<model::EvalSession> session)
    : model_(&model), tok_(&tokenizer), session_(std::move(session)) {
  if (!session_) fail("generator: no session");
  if (session_->hparams().fingerprint() != model.hparams().fingerprint())
    fail("generator: the session belongs to another model");
}

void Generator::reset() {
  session_->reset();
  logits_.clear();
  prompt_snapshot_.reset();
}

void Generator::restore(model::SessionState state) {
  session_->restore(std::move(state));
  logits_.clear();
  prompt_snapshot_.reset();
}

int64_t Generator::reuse_prefix(std::span<const TokenId> prompt) {
  // At most prompt.size() - 1: the last prompt token is always evaluated again, because its
  // logits (the first sampling step's distribution) are not part of the state.
  const auto cap = static_cast<int64_t>(prompt.size()) - 1;
  const auto live = std::min<int64_t>(cap, static_cast<int64_t>(common_prefix(session_->tokens(), prompt)));
  const bool live_ok = live > 0 && live >= session_->min_truncate();
  int64_t snap = 0;
  if (prompt_snapshot_) {
    snap = std::min<int64_t>(cap, static_cast<int64_t>(common_prefix(prompt_snapshot_->tokens, prompt)));
    if (snap < prompt_snapshot_min_) snap = 0;
  }
  if (snap > 0 && snap > (live_ok ? live : 0)) {
    session_->restore(*prompt_snapshot_);
    session_->truncate(snap);
    return snap;
  }
  if (live_ok) {
    session_->truncate(live);
    return live;
  }
  session_->reset();
  return 0;
}

int64_t Generator::prefill(std::span<const TokenId> prompt, const GenerateOptions& opts) {
  const int64_t n = static_cast<int64_t>(prompt.size());
  if (n == 0) fail("the prompt is empty");
  const int64_t ctx = session_->options().max_ctx;
  if (n >= ctx)
    fail("the prompt has {} tokens and does not fit the context of {} tokens (it needs room for "
         "at least one generated token); use a larger --ctx",
         n, ctx);
  if (opts.prefill_chunk < 0) fail("prefill_chunk must not be negative, got {}", opts.prefill_chunk);
  const int64_t chunk = opts.prefill_chunk > 0 ? opts.prefill_chunk : session_->options().max_batch;
  logits_.clear();
  const int64_t reused = reuse_prefix(prompt);
  const auto V = static_cast<size_t>(model_->hparams().n_vocab);
  const auto t0 = Clock::now();
  int64_t pos = reused;
  while (pos < n) {
    if (cancelled(opts)) return -1;
    const int64_t len = std::min(chunk, n - pos);
    const bool last = pos + len == n;
    if (last) logits_.resize(V);
    session_->eval(prompt.subspan(static_cast<size_t>(pos), static_cast<size_t>(len)),
                  last ? model::LogitsMode::Last : model::LogitsMode::None,
                  last ? logits_.data() : nullptr);
    pos += len;
    if (opts.on_prefill) {
      const double s = seconds_since(t0);
      opts.on_prefill({.done = pos,
                       .total = n,
                       .reused = reused,
                       .tokens_per_s = s > 0 ? static_cast<double>(pos - reused) / s : 0.0});
    }
  }
  if (opts.keep_prompt_snapshot) {
    prompt_snapshot_ = session_->snapshot();
    prompt_snapshot_min_ = session_->min_truncate();
  } else {
    prompt_snapshot_.reset();
  }
  return reused;
}

GenerateResult Generator::generate(std::span<const TokenId> prompt, const GenerateOptions& opts) {
  // A failure in the middle leaves a session whose tokens and logits may disagree; start over.
  try {
    GenerateResult r;
    r.prompt_tokens = static_cast<int64_t>(prompt.size());
    Sampler sampler(opts.sampling);  // validates the parameters before any work
    StopMatcher stops(opts.sampling.stop_strings);
    tok::StreamDecoder decoder(*tok_);

    const auto t_prefill = Clock::now();
    const int64_t reused = prefill(prompt, opts);
    r.prefill_seconds = seconds_since(t_prefill);
    if (reused < 0) {
      r.finish = FinishReason::Cancelled;
      r.reused_tokens = 0;
      return r;
    }
    r.reused_tokens = reused;

    const auto emit = [&](TokenId t, std::string text, const StepLogprobs* lp) {
      r.text += text;
      if (opts.on_token) opts.on_token(TokenEvent{.token = t, .text = std::move(text), .logprobs = lp});
    };
    const int64_t ctx = session_->options().max_ctx;
    const auto t_decode = Clock::now();
    std::vector<TokenId> history(prompt.begin(), prompt.end());
    const auto V = static_cast<size_t>(model_->hparams().n_vocab);
    bool on_device = false;  // the last logits are in logits_ (prefill) or on the session's device
    bool stopped_by_string = false;
    for (;;) {
      if (cancelled(opts)) {
        r.finish = FinishReason::Cancelled;
        break;
      }
      if (opts.sampling.max_tokens == 0) {
        r.finish = FinishReason::MaxTokens;
        break;
      }
      StepLogprobs step_lp;
      const TokenId t = sample_step(*session_, sampler, on_device, logits_, history, opts.logprobs_top_k, &step_lp);
      if (opts.sampling.is_stop_token(t)) {
        r.finish = FinishReason::StopToken;
        break;
      }
      const StepLogprobs* lp = nullptr;
      if (opts.logprobs_top_k >= 0) {
        r.logprobs.push_back(std::move(step_lp));
        lp = &r.logprobs.back();
      }
      r.tokens.push_back(t);
      history.push_back(t);
      StopResult s = stops.push(decoder.push(t));
      emit(t, std::move(s.text), lp);
      if (s.stopped) {
        r.finish = FinishReason::StopString;
        r.stop_index = s.stop_index;
        stopped_by_string = true;
        break;
      }
      const int64_t max = opts.sampling.max_tokens;
      if (max >= 0 && static_cast<int64_t>(r.tokens.size()) >= max) {
        r.finish = FinishReason::MaxTokens;
        break;
      }
      if (session_->n_past() + 1 > ctx) {
        r.finish = FinishReason::ContextFull;
        break;
      }
      // The token goes into the state only when another one follows: ending here saves a
      // forward pass, and the next prompt's prefix reuse evaluates it if it needs it.
      on_device = opts.sample_on_device && session_->eval_keeping_logits(std::span(&t, 1));
      if (!on_device) {
        logits_.resize(V);
        session_->eval(std::span(&t, 1), model::LogitsMode::Last, logits_.data());
      }
    }
    if (on_device) {  // last_logits() stays the distribution after the last evaluated token
      logits_.resize(V);
      session_->read_logits(0, static_cast<int64_t>(V), logits_.data());
    }
    if (!stopped_by_string) {
      StopResult tail = stops.push(decoder.flush());
      std::string rest = std::move(tail.text);
      if (tail.stopped) {
        r.finish = FinishReason::StopString;
        r.stop_index = tail.stop_index;
      } else {
        rest += stops.flush();
      }
      if (!rest.empty()) emit(kNoToken, std::move(rest), nullptr);
    }
    // The state no longer matches logits_ unless the last token was evaluated.
    if (session_->tokens().size() != prompt.size() + r.tokens.size()) logits_.clear();
    r.decode_seconds = seconds_since(t_decode);
    return r;
  } catch (...) {
    reset();
    throw;
  }
}

}  // namespace ds4::gen
