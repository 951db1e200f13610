// Token sampling over one step's logits (a float per vocabulary entry, ~129,280 for V4).
//
// Order of operations, as in llama.cpp's sampler chain (and HF/vLLM for temperature placement):
//   1. penalties   repetition / presence / frequency over the last `penalty_last_n` tokens
//   2. logit bias  added per token; -inf bans a token
//   3. greedy      temperature 0 returns the argmax here (ties: lowest id); 4-6 are skipped
//   4. top-k       keep the k highest logits
//   5. temperature divide logits by T, softmax over what is left
//   6. top-p       keep the smallest set of most likely tokens whose probability reaches top_p
//      min-p       keep tokens with p >= min_p * p_max
//   7. sample      draw one token from the kept set, renormalised
// Every filter keeps a prefix of one total order, "higher logit first, lower id on ties", so
// their results are unique and ties never depend on the selection algorithm. Top-p and min-p both
// look at the distribution after top-k and temperature. As in llama.cpp, min-p comes after top-p;
// being relative to the top token, which top-p's renormalisation leaves on top, it then keeps the
// shorter of the two prefixes, so both are computed on the same distribution.
//
// Reproducibility: the draw uses std::mt19937_64 (fully specified by the standard) and our own
// uniform conversion and selection code, so a seed gives the same tokens on every platform.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "model/logits_reduce.h"

namespace ds4::gen {

using TokenId = int32_t;

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.05f;       // 0: off

  // Penalties (llama.cpp / OpenAI semantics). For each distinct token t seen c times in the window:
  //   logit = logit > 0 ? logit / repetition_penalty : logit * repetition_penalty
  //   logit -= presence_penalty + c * frequency_penalty
  float repetition_penalty = 1.0f;  // 1: off
  float presence_penalty = 0.0f;    // 0: off
  float frequency_penalty = 0.0f;   // 0: off
  int penalty_last_n = 64;          // window of previous tokens; 0: none, -1: all given

  // Added to the token's logit after the penalties; -inf bans the token.
  std::map<TokenId, float> logit_bias;

  // Unset: a fresh seed from std::random_device (the CLI's "time-based" default).
  std::optional<uint64_t> seed;

  // Generation limits, applied by the generation loop rather than by the sampler.
  int max_tokens = -1;                    // -1: until a stop or the context is full
  std::vector<TokenId> stop_tokens;       // e.g. EOS (architecture.md 7.2); not emitted
  std::vector<std::string> stop_strings;  // see StopMatcher

  // The official API's settings (peer-ds4.md 2.6/2.7): temperature 1, top_p 1, min_p 0.05, no
  // top_k, no penalties. The peer uses the same defaults without thinking, where (unlike in
  // thinking mode) a client's own knobs are then honoured; see thinking_overrides().
  static SamplingParams defaults_for(bool thinking);

  // In thinking mode the official API ignores client sampling knobs; this resets temperature,
  // top_k, top_p, min_p and penalties to defaults_for(true), keeping seed, bias and limits.
  void apply_thinking_overrides();

  bool is_stop_token(TokenId t) const;
  bool greedy() const { return temperature <= 0.0f; }

  // Throws ds4::Error naming the offending field.
  void validate() const;
};

// One per generation stream: it owns the random stream and scratch buffers, so it is not
// thread-safe and must not be shared between concurrent requests.
class Sampler {
 public:
  // Validates params. The vocabulary size is taken from the logits on each call.
  explicit Sampler(SamplingParams params);

  // Picks the next token. `history` is the tokens before this step, oldest first (the caller
  // decides whether the prompt is included); only the last penalty_last_n of them count.
  // Throws ds4::Error if a logit is NaN or +inf, a bias names a token outside the vocabulary, or
  // every token is banned.
  TokenId sample(std::span<const float> logits, std::span<const TokenId> history = {});

  // The distribution step 7 draws from: the kept tokens in id order with their renormalised
  // probabilities (one token with probability 1 when greedy). Consumes no randomness.
  struct TokenProb {
    TokenId token;
    double prob;
  };
  std::vector<TokenProb> distribution(std::span<const float> logits,
                                      std::span<const TokenId> history = {});

  // Sampling from a backend that keeps the logits on its device (model/logits_reduce.h):
  // reduce_request describes steps 1-3 and the candidate set for the backend (`n_vocab` logits,
  // `history` as for sample()); sample_reduced finishes the step from the reduction with the
  // same code and random stream as sample(), so both give the same token for the same logits.
  // reduce_request throws like sample() on a history token outside the vocabulary.
  model::LogitsReduceRequest reduce_request(std::span<const TokenId> history, int64_t n_vocab,
                                            int logprobs_top = -1);
  TokenId sample_reduced(const model::LogitsReduction& r);

  // Restarts the random stream: the same seed gives the same draws.
  void reseed(uint64_t seed) { rng_.seed(seed); }

  const SamplingParams& params() const { return params_; }

  // The logits after steps 1-2 (penalties and bias), for tests and for the logprob dump of what
  // the sampler actually saw.
  void adjust_logits(std::span<float> logits, std::span<const TokenId> history);

 private:
  struct Candidate {
    float logit;
    TokenId id;
    float weight;     // exp((logit - max) / T), filled from step 5 on
    uint32_t bucket;  // scratch of select_prefix
  };

  bool has_penalties() const;
  // Steps 1-6: leaves the kept set in cand_[0, n) with weights and returns n, or returns 0 and
  // sets `greedy_token` when the choice is deterministic.
  size_t filter(std::span<const float> logits, std::span<const TokenId> history,
                TokenId& greedy_token);
  // The distinct window tokens with their counts, oldest-independent (sorted by id).
  void penalty_window(std::span<const TokenId> history, size_t n_vocab);
  // min-p's logit floor for the adjusted maximum `max` (-inf: none): float(max + offset).
  float min_p_floor(float max) const;
  double min_p_offset() const;
  // Steps 4-6 on cand_[0, n) (the candidates above the prefilter), with max_logit_ and
  // inv_temp_ set; `floor` is min_p_floor(max). all_candidates: cand_ holds every candidate
  // (else already exactly the top-k). Returns the kept count.
  size_t finish_filter(size_t n, float max, float floor, bool all_candidates);
  // Reorders cand_[0, n) so that its shortest best-first prefix holding `need` comes first and
  // returns that prefix's length; `need` counts candidates (top-k) or, with by_weight, weight
  // (top-p). A histogram over (max - logit) / T narrows the cut to one bucket in two linear passes,
  // and only that bucket is searched exactly.
  size_t select_prefix(size_t n, double need, bool by_weight);
  uint32_t bucket_of(float logit) const;
  // Exact searches inside [lo, hi): quickselect, and its weighted form. Return the prefix length.
  size_t select_count(size_t lo, size_t hi, size_t k);
  size_t select_weight(size_t lo, size_t hi, double need);
  // Partitions cand_[lo, hi) around a pivot; returns its final index p: [lo, p) are better.
  size_t partition(size_t lo, size_t hi);
  // Draws from cand_[0, n) proportionally to weight, visiting tokens in id order.
  TokenId draw(size_t n);
  double uniform01();

  SamplingParams params_;
  std::mt19937_64 rng_;
  // Scratch reused across steps so a step allocates nothing after the first.
  std::vector<float> work_;
  std::vector<Candidate> cand_;
  std::vector<float> dense_;  // per-vocab weights of a large kept set, all zero between steps
  std::vector<TokenId> window_;
  std::vector<TokenId> pen_tokens_;  // distinct tokens of the penalty window, by id
  std::vector<float> pen_counts_;    // their counts
  std::vector<double> hist_;
  float max_logit_ = 0.0f;  // of the current step, for bucket_of
  float inv_temp_ = 1.0f;
  uint64_t pivot_state_ = 0;  // pivot choice only; independent of the sampling stream
};

}  // namespace ds4::gen
