// Log-probabilities for the API's `logprobs` / `top_logprobs` and the CLI's --dump-logprobs.
//
// They are computed from the raw model distribution: log_softmax of the logits exactly as the
// model produced them, before penalties, logit bias, temperature and the top-k/top-p/min-p
// filters. That is what the official API reports and what the reference logprob fixtures hold,
// and it keeps the numbers comparable across sampling settings. (A caller who wants the adjusted
// distribution can pass Sampler::adjust_logits' output instead.)
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "generate/sampler.h"

namespace ds4::gen {

struct TokenLogprob {
  TokenId token = 0;
  float logit = 0.0f;    // raw model logit
  float logprob = 0.0f;  // log_softmax, <= 0; -inf for a token with logit -inf
};

struct StepLogprobs {
  TokenLogprob chosen;
  std::vector<TokenLogprob> top;  // best first; ties by lower id
};

// Numerically stable log-sum-exp of the logits (max-shifted, accumulated in double). Throws
// ds4::Error on empty input, NaN, +inf, or when every logit is -inf.
double log_sum_exp(std::span<const float> logits);

// The chosen token's logprob and the `top_k` most likely tokens (fewer if the vocabulary is
// smaller). top_k may be 0. Throws ds4::Error if `chosen` is outside the vocabulary or top_k < 0.
StepLogprobs compute_logprobs(std::span<const float> logits, TokenId chosen, int top_k);

// The same from a backend's reduction of the logits (model/logits_reduce.h: the log-sum-exp
// parts and the best tokens, requested with logprobs_top = top_k) and the chosen token's raw
// logit.
StepLogprobs logprobs_from_reduction(const model::LogitsReduction& r, TokenId chosen, float chosen_logit);

}  // namespace ds4::gen
