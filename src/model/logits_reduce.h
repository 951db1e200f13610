// Sampling without the whole vocabulary: what a backend that keeps the logits in device
// memory (the CUDA session) computes on the device so that only a few numbers come back.
// gen::Sampler defines the meaning (sampler.h, steps 1-3 and the candidate set of its filter);
// it builds the request (Sampler::reduce_request) and finishes the step on the host
// (Sampler::sample_reduced) with its own code, so a seed gives the same tokens as sampling
// the full logits on the CPU.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

namespace ds4::model {

struct LogitsReduceRequest {
  // Steps 1-2 on a copy of the logits. Penalties, per distinct history token t:
  //   l = l > 0 ? l / repetition_penalty : l * repetition_penalty;  l -= penalty_sub[i]
  // then the biases: l = bias == -inf ? -inf : l + bias. Tokens are distinct within each list.
  float repetition_penalty = 1.0f;
  std::vector<int32_t> penalty_tokens;
  std::vector<float> penalty_sub;
  std::vector<int32_t> bias_tokens;
  std::vector<float> bias;
  // Step 3: only the argmax is needed.
  bool greedy = false;
  // Candidates: adjusted logits l > -inf with l >= floor, where floor = float(max + floor_offset)
  // (-inf below float's range; floor_offset = -inf: no floor), max the adjusted maximum.
  double floor_offset = -std::numeric_limits<double>::infinity();
  // At most this many candidates come back, in id order; with more, the top_k best (by logit
  // desc, id asc) when 0 < top_k <= max_candidates, else the request fails (the caller reads
  // the full logits instead).
  int64_t max_candidates = 4096;
  int64_t top_k = 0;
  // Logprobs of the raw logits (logprobs.h): log-sum-exp parts and the best `logprobs_top`
  // tokens. < 0: none.
  int logprobs_top = -1;
};

struct LogitsReduction {
  float max = 0.0f;     // of the adjusted logits
  int32_t argmax = 0;   // lowest id on ties
  bool all_candidates = true;  // cand_* hold every candidate in id order (else the top_k best)
  std::vector<float> cand_logit;
  std::vector<int32_t> cand_id;
  // Raw logits' log-sum-exp = lse_max + lse_log_sum, and the best tokens, best first.
  double lse_max = 0.0, lse_log_sum = 0.0;
  std::vector<int32_t> top_id;
  std::vector<float> top_logit;
};

}  // namespace ds4::model
