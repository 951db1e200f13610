// The generation loop over one model::Session: prefill a prompt (reusing whatever prefix of it
// the session already holds), then decode token by token, sampling (sampler.h), streaming
// UTF-8-safe text, honouring stop tokens, stop strings (stop_matcher.h), a token limit, the
// context size and cancellation from another thread.
//
//   Generator g(model, tokenizer, {.max_ctx = 8192});
//   GenerateOptions o;
//   o.sampling.seed = 42;
//   o.on_token = [](const TokenEvent& e) { fputs(e.text.c_str(), stdout); };
//   GenerateResult r = g.generate(prompt_tokens, o);
//
// KV prefix reuse inside a process. A chat turn's prompt usually extends the previous one, so
// the session is kept between calls and a new prompt continues from the longest prefix it shares
// with either
//   - the live session (the previous prompt plus the tokens generated after it), or
//   - a snapshot of the state at the end of the previous prompt. It matters in thinking mode:
//     the next turn re-renders the previous answer without its reasoning (architecture.md 7.3),
//     so the shared prefix ends at the previous prompt, usually further back than truncate() can
//     go from the end of a long answer.
// A prefix is usable when Session::truncate() can go back to it exactly (Session::min_truncate);
// otherwise the session is reset and the prompt prefilled from scratch.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "generate/logprobs.h"
#include "generate/sampler.h"
#include "model/model.h"

namespace ds4::tok {
class Tokenizer;
}

namespace ds4::gen {

// Marks the last TokenEvent of a generation when it carries only held-back text (see on_token).
inline constexpr TokenId kNoToken = -1;

struct PrefillProgress {
  int64_t done = 0;      // prompt tokens in the session so far (reused ones included)
  int64_t total = 0;     // prompt length
  int64_t reused = 0;    // tokens taken over from the previous state
  double tokens_per_s = 0;  // prefill speed of this call so far (reused tokens excluded)
};

struct TokenEvent {
  TokenId token = kNoToken;
  // Text that became safe to show with this token: whole UTF-8 characters, never part of a stop
  // string. May be empty (a character or a possible stop string is still incomplete).
  std::string text;
  const StepLogprobs* logprobs = nullptr;  // set when GenerateOptions::logprobs_top_k >= 0
};

enum class FinishReason {
  StopToken,   // EOS or another stop token (not part of the output)
  StopString,  // a stop string completed (it and anything after it are not part of the output)
  MaxTokens,
  ContextFull,
  Cancelled,
};
const char* finish_reason_name(FinishReason r);

struct GenerateOptions {
  SamplingParams sampling;  // also holds max_tokens, stop tokens and stop strings
  int logprobs_top_k = -1;  // < 0: no logprobs; else per step the chosen token and the top k
  // Prompt tokens per prefill call: the granularity of progress reports and cancellation.
  // 0: the session's max_batch (one batched layer pass per call).
  int64_t prefill_chunk = 0;
  // Keep a snapshot of the state at the prompt's end for the next call's prefix reuse. Costs one
  // copy of the state per call.
  bool keep_prompt_snapshot = true;
  // Decode steps keep the logits on the session's device and sample there when the backend
  // can (EvalSession::reduce_logits, the CUDA session): the same tokens, without copying the
  // vocabulary back every step. false: always sample from logits copied to the host.
  bool sample_on_device = true;

  std::function<void(const PrefillProgress&)> on_prefill;  // after every prefill chunk
  // Once per generated token (stop tokens excluded), in order. If text was still held back when
  // generation ended without a stop string, one more event with token kNoToken carries it.
  std::function<void(const TokenEvent&)> on_token;
  // Polled between prefill chunks and before every decode step: setting it from another thread
  // (or a signal handler) ends the call within one forward pass.
  const std::atomic<bool>* cancel = nullptr;
};

struct GenerateResult {
  std::vector<TokenId> tokens;  // generated tokens, stop token excluded
  std::string text;             // everything emitted through on_token
  FinishReason finish = FinishReason::MaxTokens;
  std::optional<size_t> stop_index;  // which stop string, for FinishReason::StopString
  std::vector<StepLogprobs> logprobs;  // per generated token, when requested
  int64_t prompt_tokens = 0;
  int64_t reused_tokens = 0;    // prompt tokens not evaluated again thanks to prefix reuse
  double prefill_seconds = 0;   // evaluating the prompt's new tokens
  double decode_seconds = 0;    // sampling and evaluating the generated tokens
  double prefill_tokens_per_s() const;
  double decode_tokens_per_s() const;
};

class Generator {
 public:
  // The model and tokenizer must outlive the generator.
  Generator(const model::Model& model, const tok::Tokenizer& tokenizer, model::SessionOptions opts);
  // With a session of any backend (runtime::Engine::new_session); it must belong to `model`.
  Generator(const model::Model& model, const tok::Tokenizer& tokenizer,
            std::unique_ptr<model::EvalSession> session);

  // Prefills `prompt` (with prefix reuse) and generates. Throws ds4::Error when the prompt is
  // empty or does not fit the context, or when the model or sampler fail; the session is then
  // reset so that the next call starts clean.
  GenerateResult generate(std::span<const TokenId> prompt, const GenerateOptions& opts);

  // Only the prefill part of generate(): afterwards the session holds `prompt` and last_logits()
  // the distribution of the next token. Returns the number of reused tokens, or -1 when
  // cancelled (the session then holds a prefix of the prompt).
  int64_t prefill(std::span<const TokenId> prompt, const GenerateOptions& opts);

  // The live session: what was evaluated so far (prompt and generated tokens).
  model::EvalSession& session() { return *session_; }
  const model::EvalSession& session() const { return *session_; }
  const std::vector<float>& last_logits() const { return logits_; }
  // Forgets the live state and the prompt snapshot.
  void reset();
  // Replaces the live state (e.g. one read from disk); the prompt snapshot is dropped.
  void restore(model::SessionState state);

  const model::Model& model() const { return *model_; }
  const tok::Tokenizer& tokenizer() const { return *tok_; }

 private:
  // Positions the session at the longest usable prefix of `prompt`, returns its length.
  int64_t reuse_prefix(std::span<const TokenId> prompt);

  const model::Model* model_;
  const tok::Tokenizer* tok_;
  std::unique_ptr<model::EvalSession> session_;
  std::vector<float> logits_;  // after the last evaluated token; empty when unknown
  std::optional<model::SessionState> prompt_snapshot_;
  int64_t prompt_snapshot_min_ = 0;  // min_truncate() of the snapshot
};

// One sampling step from the logits of the session's last eval: reduced on the session's
// device when `on_device` (the session kept them: EvalSession::eval_keeping_logits), else from
// `host_logits`. When the device cannot serve the request it reads the logits into
// host_logits and clears on_device. Fills *logprobs (chosen token and the best
// logprobs_top_k) when logprobs_top_k >= 0.
TokenId sample_step(model::EvalSession& s, Sampler& sampler, bool& on_device, std::vector<float>& host_logits,
                    std::span<const TokenId> history, int logprobs_top_k, StepLogprobs* logprobs);

// Length of the common prefix of two token sequences.
size_t common_prefix(std::span<const TokenId> a, std::span<const TokenId> b);

}  // namespace ds4::gen
