#include "generate/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace ds4::gen {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Kept sets up to this size are sorted by id for the draw; larger ones go through a dense
// per-vocabulary array. Both visit tokens in id order, so they give the same token.
constexpr size_t kSortedDrawMax = 4096;

// Below this size a range is finished with insertion sort.
constexpr size_t kSmallRange = 16;

// Histogram for select_prefix: kBuckets buckets of 1/kBucketsPerNat nat each.
constexpr uint32_t kBuckets = 1024;
constexpr float kBucketsPerNat = 16.0f;

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

// --- SamplingParams ---------------------------------------------------------------------------

SamplingParams SamplingParams::defaults_for(bool thinking) {
  // Both modes start from the official API's values (peer-ds4.md 2.7); they differ only in
  // whether client overrides are honoured (apply_thinking_overrides).
  (void)thinking;
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.05f;
  return p;
}

void SamplingParams::apply_thinking_overrides() {
  const SamplingParams d = defaults_for(true);
  temperature = d.temperature;
  top_k = d.top_k;
  top_p = d.top_p;
  min_p = d.min_p;
  repetition_penalty = d.repetition_penalty;
  presence_penalty = d.presence_penalty;
  frequency_penalty = d.frequency_penalty;
}

bool SamplingParams::is_stop_token(TokenId t) const {
  return std::find(stop_tokens.begin(), stop_tokens.end(), t) != stop_tokens.end();
}

void SamplingParams::validate() const {
  if (!(std::isfinite(temperature) && temperature >= 0.0f))
    fail("sampling: temperature must be a finite number >= 0, got {}", temperature);
  if (top_k < 0) fail("sampling: top_k must be >= 0 (0 disables it), got {}", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f))
    fail("sampling: top_p must be in (0, 1] (1 disables it), got {}", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f))
    fail("sampling: min_p must be in [0, 1] (0 disables it), got {}", min_p);
  if (!(std::isfinite(repetition_penalty) && repetition_penalty > 0.0f))
    fail("sampling: repetition_penalty must be a finite number > 0 (1 disables it), got {}",
         repetition_penalty);
  if (!std::isfinite(presence_penalty))
    fail("sampling: presence_penalty must be finite, got {}", presence_penalty);
  if (!std::isfinite(frequency_penalty))
    fail("sampling: frequency_penalty must be finite, got {}", frequency_penalty);
  if (penalty_last_n < -1)
    fail("sampling: penalty_last_n must be >= -1 (-1: all tokens), got {}", penalty_last_n);
  for (const auto& [tok, bias] : logit_bias) {
    if (tok < 0) fail("sampling: logit_bias names negative token id {}", tok);
    // +inf would turn the softmax into inf/inf = NaN; forcing a token is not a bias.
    if (std::isnan(bias) || bias == std::numeric_limits<float>::infinity())
      fail("sampling: logit_bias for token {} must be finite or -inf, got {}", tok, bias);
  }
  if (max_tokens < -1)
    fail("sampling: max_tokens must be >= -1 (-1: no limit), got {}", max_tokens);
  for (size_t i = 0; i < stop_strings.size(); ++i)
    if (stop_strings[i].empty()) fail("sampling: stop string {} is empty", i);
}

// --- Sampler ----------------------------------------------------------------------------------

Sampler::Sampler(SamplingParams params) : params_(std::move(params)) {
  params_.validate();
  uint64_t seed = 0;
  if (params_.seed) {
    seed = *params_.seed;
  } else {
    std::random_device rd;
    seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  rng_.seed(seed);
}

bool Sampler::has_penalties() const {
  return params_.penalty_last_n != 0 &&
         (params_.repetition_penalty != 1.0f || params_.presence_penalty != 0.0f ||
          params_.frequency_penalty != 0.0f);
}

void Sampler::penalty_window(std::span<const TokenId> history, size_t n_vocab) {
  size_t n = history.size();
  if (params_.penalty_last_n >= 0) n = std::min(n, static_cast<size_t>(params_.penalty_last_n));
  window_.assign(history.end() - static_cast<std::ptrdiff_t>(n), history.end());
  std::sort(window_.begin(), window_.end());
  pen_tokens_.clear();
  pen_counts_.clear();
  for (size_t i = 0; i < window_.size();) {
    const TokenId t = window_[i];
    size_t j = i;
    while (j < window_.size() && window_[j] == t) ++j;
    if (t < 0 || static_cast<size_t>(t) >= n_vocab)
      fail("sampling: history token {} is outside the vocabulary of {} tokens", t, n_vocab);
    pen_tokens_.push_back(t);
    pen_counts_.push_back(static_cast<float>(j - i));
    i = j;
  }
}

void Sampler::adjust_logits(std::span<float> logits, std::span<const TokenId> history) {
  const size_t n_vocab = logits.size();
  if (has_penalties() && !history.empty()) {
    penalty_window(history, n_vocab);
    for (size_t i = 0; i < pen_tokens_.size(); ++i) {
      float& l = logits[static_cast<size_t>(pen_tokens_[i])];
      // Dividing positive and multiplying negative logits both make the token less likely
      // (llama.cpp's rule; dividing a negative logit would raise it).
      l = l > 0.0f ? l / params_.repetition_penalty : l * params_.repetition_penalty;
      l -= params_.presence_penalty + pen_counts_[i] * params_.frequency_penalty;
    }
  }
  for (const auto& [t, bias] : params_.logit_bias) {
    if (static_cast<size_t>(t) >= n_vocab)
      fail("sampling: logit_bias names token {}, outside the vocabulary of {} tokens", t, n_vocab);
    float& l = logits[static_cast<size_t>(t)];
    l = bias == kNegInf ? kNegInf : l + bias;
  }
}

model::LogitsReduceRequest Sampler::reduce_request(std::span<const TokenId> history, int64_t n_vocab,
                                                   int logprobs_top) {
  model::LogitsReduceRequest q;
  const auto V = static_cast<size_t>(n_vocab);
  if (has_penalties() && !history.empty()) {
    penalty_window(history, V);
    q.repetition_penalty = params_.repetition_penalty;
    q.penalty_tokens.assign(pen_tokens_.begin(), pen_tokens_.end());
    for (const float count : pen_counts_)  // the subtrahend of adjust_logits, same expression
      q.penalty_sub.push_back(params_.presence_penalty + count * params_.frequency_penalty);
  }
  for (const auto& [t, bias] : params_.logit_bias) {
    if (static_cast<size_t>(t) >= V)
      fail("sampling: logit_bias names token {}, outside the vocabulary of {} tokens", t, V);
    q.bias_tokens.push_back(t);
    q.bias.push_back(bias);
  }
  q.greedy = params_.greedy() || !std::isfinite(1.0f / params_.temperature);
  // With top-p on, min-p waits until after top-p's normaliser (filter), so no prefilter.
  if (params_.top_p >= 1.0f && params_.min_p > 0.0f) q.floor_offset = min_p_offset();
  q.top_k = params_.top_k;
  q.logprobs_top = logprobs_top;
  return q;
}

TokenId Sampler::sample_reduced(const model::LogitsReduction& r) {
  if (params_.greedy() || !std::isfinite(1.0f / params_.temperature)) return r.argmax;
  if (r.cand_id.size() != r.cand_logit.size() || r.cand_id.empty())
    fail("sampling: the backend's reduction has no candidates");
  pivot_state_ = 0;
  cand_.clear();
  for (size_t i = 0; i < r.cand_id.size(); ++i) cand_.push_back({r.cand_logit[i], r.cand_id[i], 0.0f, 0});
  const size_t n = finish_filter(cand_.size(), r.max, min_p_floor(r.max), r.all_candidates);
  return draw(n);
}

double Sampler::min_p_offset() const {
  return static_cast<double>(params_.temperature) * std::log(double{params_.min_p});
}

float Sampler::min_p_floor(float max) const {
  // min-p in logit space: p_i >= min_p * p_max  <=>  l_i >= l_max + T * log(min_p).
  if (params_.min_p <= 0.0f) return kNegInf;
  const double f = max + min_p_offset();
  // Out-of-range double -> float conversion is undefined behaviour; below range means no floor.
  return f < -std::numeric_limits<float>::max() ? kNegInf : static_cast<float>(f);
}

TokenId Sampler::sample(std::span<const float> logits, std::span<const TokenId> history) {
  TokenId greedy_token = 0;
  const size_t n = filter(logits, history, greedy_token);
  return n == 0 ? greedy_token : draw(n);
}

std::vector<Sampler::TokenProb> Sampler::distribution(std::span<const float> logits,
                                                      std::span<const TokenId> history) {
  TokenId greedy_token = 0;
  const size_t n = filter(logits, history, greedy_token);
  if (n == 0) return {{greedy_token, 1.0}};
  std::sort(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(n),
            [](const Candidate& a, const Candidate& b) { return a.id < b.id; });
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) total += cand_[i].weight;
  std::vector<TokenProb> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = {cand_[i].id, cand_[i].weight / total};
  return out;
}

size_t Sampler::filter(std::span<const float> logits, std::span<const TokenId> history,
                       TokenId& greedy_token) {
  const size_t n_vocab = logits.size();
  if (n_vocab == 0) fail("sampling: empty logits");
  if (n_vocab > static_cast<size_t>(std::numeric_limits<TokenId>::max()))
    fail("sampling: {} logits exceed the token id range", n_vocab);
  pivot_state_ = 0;

  std::span<const float> l = logits;
  if (!params_.logit_bias.empty() || (has_penalties() && !history.empty())) {
    work_.assign(logits.begin(), logits.end());
    adjust_logits(work_, history);
    l = work_;
  }

  // One pass: validity, the maximum (first index wins ties, so greedy picks the lowest id).
  size_t best = n_vocab;
  float max = kNegInf;
  for (size_t i = 0; i < n_vocab; ++i) {
    const float v = l[i];
    if (v > max) {
      max = v;
      best = i;
    } else if (std::isnan(v)) {
      fail("sampling: logit of token {} is NaN", i);
    }
  }
  if (best == n_vocab) fail("sampling: every token is banned (all logits are -inf)");
  if (max == std::numeric_limits<float>::infinity())
    fail("sampling: logit of token {} is +inf", best);
  greedy_token = static_cast<TokenId>(best);
  if (params_.greedy()) return 0;
  if (!std::isfinite(1.0f / params_.temperature)) return 0;  // T so small that it is greedy

  const bool use_top_p = params_.top_p < 1.0f;
  // Filtering by min-p here, before any exp, makes the common case (min_p 0.05, top_p 1) touch
  // only a few tokens. With top-p on, every top-k survivor is needed for top-p's normaliser,
  // so min-p waits.
  const float floor = min_p_floor(max);
  const float prefilter = use_top_p ? kNegInf : floor;

  cand_.clear();
  for (size_t i = 0; i < n_vocab; ++i)
    if (l[i] > kNegInf && l[i] >= prefilter)
      cand_.push_back({l[i], static_cast<TokenId>(i), 0.0f, 0});
  return finish_filter(cand_.size(), max, floor, true);
}

size_t Sampler::finish_filter(size_t n, float max, float floor, bool all_candidates) {
  const float inv_t = 1.0f / params_.temperature;
  max_logit_ = max;
  inv_temp_ = inv_t;

  if (all_candidates && params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n)
    n = select_prefix(n, static_cast<double>(params_.top_k), false);
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    cand_[i].weight = std::exp((cand_[i].logit - max) * inv_t);
    total += cand_[i].weight;
  }

  if (params_.top_p < 1.0f) {
    // min-p prefix within the top-k set, then the nucleus inside it if it reaches the mass.
    // (A plain loop rather than std::partition, whose element order is the library's choice.)
    size_t m = 0;
    double kept = 0.0;
    for (size_t i = 0; i < n; ++i) {
      if (cand_[i].logit < floor) continue;
      kept += cand_[i].weight;
      std::swap(cand_[i], cand_[m++]);
    }
    n = m;
    const double target = static_cast<double>(params_.top_p) * total;
    if (kept >= target) n = select_prefix(n, target, true);
  }
  return n;
}

double Sampler::uniform01() {
  // 53 random bits -> [0, 1); std::uniform_real_distribution is implementation-defined.
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

TokenId Sampler::draw(size_t n) {
  // Visiting kept tokens in id order makes the drawn token depend only on the kept set and the
  // random number, not on how the filters above happened to order the candidates.
  if (n <= kSortedDrawMax) {
    std::sort(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(n),
              [](const Candidate& a, const Candidate& b) { return a.id < b.id; });
    double total = 0.0;
    for (size_t i = 0; i < n; ++i) total += cand_[i].weight;
    const double u = uniform01() * total;
    double acc = 0.0;
    TokenId last = cand_[0].id;
    for (size_t i = 0; i < n; ++i) {
      acc += cand_[i].weight;
      if (acc > u) return cand_[i].id;
      if (cand_[i].weight > 0.0f) last = cand_[i].id;
    }
    // u rounded up to the total (u = r * total with r a hair below 1): the last token it covers.
    return last;
  }

  TokenId hi = 0;
  for (size_t i = 0; i < n; ++i) hi = std::max(hi, cand_[i].id);
  if (dense_.size() <= static_cast<size_t>(hi)) dense_.resize(static_cast<size_t>(hi) + 1, 0.0f);
  for (size_t i = 0; i < n; ++i) dense_[static_cast<size_t>(cand_[i].id)] = cand_[i].weight;
  const size_t end = static_cast<size_t>(hi) + 1;
  double total = 0.0;
  for (size_t i = 0; i < end; ++i) total += dense_[i];
  const double u = uniform01() * total;
  double acc = 0.0;
  size_t pick = end, last = end;
  for (size_t i = 0; i < end; ++i) {
    acc += dense_[i];
    if (acc > u) {
      pick = i;
      break;
    }
    if (dense_[i] > 0.0f) last = i;
  }
  for (size_t i = 0; i < n; ++i) dense_[static_cast<size_t>(cand_[i].id)] = 0.0f;
  if (pick == end) pick = last;  // as above: u rounded up to the total
  return static_cast<TokenId>(pick);
}

// --- selection --------------------------------------------------------------------------------
// Hand-written rather than std::nth_element: the standard leaves the algorithm (and so the
// order of equal work) to the library, and the weighted variant has no std counterpart.

namespace {

inline bool better(float la, TokenId ia, float lb, TokenId ib) {
  return la > lb || (la == lb && ia < ib);
}

}  // namespace

size_t Sampler::partition(size_t lo, size_t hi) {
  // Median of three pseudo-random positions: expected linear time whatever the input order
  // (a model's logits are not adversarial, but sorted runs of equal logits do occur).
  const size_t len = hi - lo;
  size_t a = lo + splitmix64(pivot_state_) % len;
  size_t b = lo + splitmix64(pivot_state_) % len;
  size_t c = lo + splitmix64(pivot_state_) % len;
  auto bt = [&](size_t x, size_t y) {
    return better(cand_[x].logit, cand_[x].id, cand_[y].logit, cand_[y].id);
  };
  if (bt(b, a)) std::swap(a, b);
  if (bt(c, b)) std::swap(b, c);
  if (bt(b, a)) std::swap(a, b);
  std::swap(cand_[b], cand_[hi - 1]);
  const Candidate pivot = cand_[hi - 1];
  size_t store = lo;
  for (size_t i = lo; i + 1 < hi; ++i)
    if (better(cand_[i].logit, cand_[i].id, pivot.logit, pivot.id))
      std::swap(cand_[i], cand_[store++]);
  std::swap(cand_[store], cand_[hi - 1]);
  return store;
}

namespace {

// A template only because Candidate is private to Sampler.
template <typename C>
void insertion_sort_best_first(C* first, C* last) {
  if (first == last) return;
  for (C* i = first + 1; i < last; ++i) {
    const C x = *i;
    C* j = i;
    for (; j > first && better(x.logit, x.id, (j - 1)->logit, (j - 1)->id); --j) *j = *(j - 1);
    *j = x;
  }
}

}  // namespace

inline uint32_t Sampler::bucket_of(float logit) const {
  // Buckets of 1/16 nat: weight ratios within a bucket stay under e^(1/16). Past 64 nats
  // (weight < 1.7e-28 of the top token's) everything shares the last bucket.
  const float x = (max_logit_ - logit) * inv_temp_ * kBucketsPerNat;
  return x < static_cast<float>(kBuckets - 1) ? static_cast<uint32_t>(x) : kBuckets - 1;
}

size_t Sampler::select_prefix(size_t n, double need, bool by_weight) {
  // Bucket order agrees with the candidate order (a better candidate never lands in a later
  // bucket: float subtraction and scaling are monotone), so the cut lies in the first bucket
  // where the running total reaches `need`.
  hist_.assign(kBuckets, 0.0);
  for (size_t i = 0; i < n; ++i) {
    Candidate& c = cand_[i];
    c.bucket = bucket_of(c.logit);
    hist_[c.bucket] += by_weight ? c.weight : 1.0;
  }
  uint32_t cut = 0;
  double before = 0.0;
  for (; cut < kBuckets; ++cut) {
    if (before + hist_[cut] >= need) break;
    before += hist_[cut];
  }
  if (cut == kBuckets) return n;  // rounding kept the total a hair below `need`: keep all

  size_t front = 0;
  for (size_t i = 0; i < n; ++i)
    if (cand_[i].bucket < cut) std::swap(cand_[i], cand_[front++]);
  size_t end = front;
  for (size_t i = front; i < n; ++i)
    if (cand_[i].bucket == cut) std::swap(cand_[i], cand_[end++]);
  if (by_weight) return select_weight(front, end, need - before);
  return select_count(front, end, static_cast<size_t>(need - before));
}

size_t Sampler::select_count(size_t lo, size_t hi, size_t k) {
  const size_t want = lo + k;
  const size_t end = hi;
  while (hi - lo > kSmallRange) {
    const size_t p = partition(lo, hi);
    if (want <= p) {
      hi = p;
    } else if (want == p + 1) {
      return want;
    } else {
      lo = p + 1;
    }
  }
  insertion_sort_best_first(cand_.data() + lo, cand_.data() + hi);
  return std::min(want, end);
}

size_t Sampler::select_weight(size_t lo, size_t hi, double need) {
  // Weighted quickselect: keep the better side whole while it is short of the target.
  while (hi - lo > kSmallRange) {
    const size_t p = partition(lo, hi);
    double upper = 0.0;
    for (size_t i = lo; i < p; ++i) upper += cand_[i].weight;
    if (upper >= need) {
      hi = p;
      continue;
    }
    need -= upper + cand_[p].weight;
    if (need <= 0.0) return p + 1;
    lo = p + 1;
  }
  insertion_sort_best_first(cand_.data() + lo, cand_.data() + hi);
  for (size_t i = lo; i < hi; ++i) {
    need -= cand_[i].weight;
    if (need <= 0.0) return i + 1;
  }
  return hi;  // rounding left the target a hair above the total: keep everything
}

}  // namespace ds4::gen
