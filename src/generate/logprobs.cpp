#include "generate/logprobs.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace ds4::gen {

namespace {

// log-sum-exp as max + log(sum): kept apart because with logits of ~1e38 the sum's log is below
// max's resolution, and logit - lse would then lose it (log_softmax = (logit - max) - log_sum).
struct Lse {
  double max;
  double log_sum;
};

Lse lse_parts(std::span<const float> logits) {
  if (logits.empty()) fail("logprobs: empty logits");
  float max = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < logits.size(); ++i) {
    const float v = logits[i];
    if (std::isnan(v)) fail("logprobs: logit of token {} is NaN", i);
    if (v == std::numeric_limits<float>::infinity()) fail("logprobs: logit of token {} is +inf", i);
    max = std::max(max, v);
  }
  if (max == -std::numeric_limits<float>::infinity())
    fail("logprobs: every logit is -inf, the distribution is empty");
  // Shifting by the max keeps every exp in (0, 1] (no overflow, whatever the logits' scale) and
  // the largest term exactly 1, so the sum is >= 1 and its log never underflows.
  const double m = max;
  double sum = 0.0;
  for (const float v : logits) sum += std::exp(static_cast<double>(v) - m);
  return {m, std::log(sum)};
}

float to_float(double x) {
  // Converting a double beyond float's range is undefined behaviour, not -inf.
  constexpr double lo = -std::numeric_limits<float>::max();
  return x < lo ? -std::numeric_limits<float>::infinity() : static_cast<float>(x);
}

TokenLogprob logprob_entry(const Lse& lse, TokenId token, float logit) {
  return TokenLogprob{token, logit, to_float((static_cast<double>(logit) - lse.max) - lse.log_sum)};
}

}  // namespace

double log_sum_exp(std::span<const float> logits) {
  const Lse p = lse_parts(logits);
  return p.max + p.log_sum;
}

StepLogprobs logprobs_from_reduction(const model::LogitsReduction& r, TokenId chosen, float chosen_logit) {
  const Lse lse{r.lse_max, r.lse_log_sum};
  StepLogprobs out;
  out.chosen = logprob_entry(lse, chosen, chosen_logit);
  out.top.reserve(r.top_id.size());
  for (size_t i = 0; i < r.top_id.size(); ++i) out.top.push_back(logprob_entry(lse, r.top_id[i], r.top_logit[i]));
  return out;
}

StepLogprobs compute_logprobs(std::span<const float> logits, TokenId chosen, int top_k) {
  if (top_k < 0) fail("logprobs: top_k must be >= 0, got {}", top_k);
  if (chosen < 0 || static_cast<size_t>(chosen) >= logits.size())
    fail("logprobs: chosen token {} is outside the vocabulary of {} tokens", chosen, logits.size());
  const Lse lse = lse_parts(logits);
  auto entry = [&](size_t i) { return logprob_entry(lse, static_cast<TokenId>(i), logits[i]); };

  StepLogprobs out;
  out.chosen = entry(static_cast<size_t>(chosen));

  // Top k by a bounded min-heap: O(n log k) with k ~ 20, no copy of the vocabulary.
  const size_t k = std::min(static_cast<size_t>(top_k), logits.size());
  if (k == 0) return out;
  struct Item {
    float logit;
    TokenId id;
  };
  // "a before b" in the heap's order = a is better; std heaps keep the worst (last) on top.
  auto better = [](const Item& a, const Item& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  std::vector<Item> heap;
  heap.reserve(k);
  for (size_t i = 0; i < logits.size(); ++i) {
    const Item it{logits[i], static_cast<TokenId>(i)};
    if (heap.size() < k) {
      heap.push_back(it);
      std::push_heap(heap.begin(), heap.end(), better);
    } else if (better(it, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), better);
      heap.back() = it;
      std::push_heap(heap.begin(), heap.end(), better);
    }
  }
  std::sort(heap.begin(), heap.end(), better);
  out.top.reserve(k);
  for (const Item& it : heap) out.top.push_back(entry(static_cast<size_t>(it.id)));
  return out;
}

}  // namespace ds4::gen
