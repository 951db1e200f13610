// Sampler: greedy, reproducibility, the distribution of each filter against a brute-force
// reference, penalties and bias exactly as specified, and validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "core/error.h"
#include "generate/sampler.h"

namespace ds4::gen {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr size_t kVocab = 129280;  // V4's vocabulary (architecture.md 7.1)

std::vector<float> random_logits(size_t n, uint64_t seed, float scale = 3.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

SamplingParams plain(float temperature) {
  SamplingParams p;
  p.temperature = temperature;
  p.min_p = 0.0f;
  p.seed = 1234;
  return p;
}

std::vector<double> softmax(const std::vector<float>& l, double t = 1.0) {
  double m = -std::numeric_limits<double>::infinity();
  for (float x : l) m = std::max(m, static_cast<double>(x));
  std::vector<double> p(l.size());
  double s = 0.0;
  for (size_t i = 0; i < l.size(); ++i) s += p[i] = std::exp((l[i] - m) / t);
  for (double& x : p) x /= s;
  return p;
}

// Brute force steps 4-6 with a full sort: the kept token ids, ascending.
std::vector<TokenId> reference_kept(const std::vector<float>& l, const SamplingParams& sp) {
  std::vector<TokenId> order(l.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](TokenId a, TokenId b) { return l[a] > l[b]; });
  while (!order.empty() && l[order.back()] == -kInf) order.pop_back();
  if (sp.top_k > 0 && order.size() > static_cast<size_t>(sp.top_k)) order.resize(sp.top_k);
  const double m = l[order[0]];
  std::vector<double> w(order.size());
  double total = 0.0;
  for (size_t i = 0; i < order.size(); ++i)
    total += w[i] = std::exp((l[order[i]] - m) / sp.temperature);
  size_t keep = order.size();
  if (sp.top_p < 1.0f) {
    double acc = 0.0;
    for (size_t i = 0; i < order.size(); ++i) {
      acc += w[i];
      if (acc >= sp.top_p * total) {
        keep = i + 1;
        break;
      }
    }
  }
  size_t keep_min_p = 0;
  while (keep_min_p < order.size() && w[keep_min_p] >= sp.min_p) ++keep_min_p;
  order.resize(std::min(keep, keep_min_p));
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<TokenId> kept_ids(Sampler& s, const std::vector<float>& l) {
  std::vector<TokenId> ids;
  for (const auto& tp : s.distribution(l)) ids.push_back(tp.token);
  return ids;
}

// |observed - expected| within 5 standard deviations of a binomial proportion (plus a hair).
void expect_frequencies(const std::vector<int>& counts, const std::vector<double>& p, int draws) {
  ASSERT_EQ(counts.size(), p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    const double f = static_cast<double>(counts[i]) / draws;
    const double sd = std::sqrt(p[i] * (1.0 - p[i]) / draws);
    EXPECT_NEAR(f, p[i], 5.0 * sd + 1e-4) << "token " << i;
  }
}

TEST(Sampler, GreedyIsArgmaxWithLowestIdOnTies) {
  Sampler s(plain(0.0f));
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const auto l = random_logits(1000, seed);
    const auto it = std::max_element(l.begin(), l.end());  // first maximum
    EXPECT_EQ(s.sample(l), it - l.begin());
  }
  const std::vector<float> ties = {1.0f, 5.0f, 2.0f, 5.0f, 5.0f};
  EXPECT_EQ(s.sample(ties), 1);
  const std::vector<float> with_banned = {-kInf, 3.0f, -kInf, 3.0f};
  EXPECT_EQ(s.sample(with_banned), 1);
  EXPECT_EQ(s.distribution(ties).size(), 1u);
}

TEST(Sampler, TopKOfOneIsGreedyEvenWithTemperature) {
  SamplingParams p = plain(1.5f);
  p.top_k = 1;
  Sampler s(p);
  const std::vector<float> ties = {1.0f, 5.0f, 2.0f, 5.0f};
  for (int i = 0; i < 100; ++i) EXPECT_EQ(s.sample(ties), 1);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedsDiffer) {
  const auto l = random_logits(20000, 7, 1.0f);
  auto run = [&](uint64_t seed) {
    SamplingParams p = plain(1.0f);
    p.seed = seed;
    Sampler s(p);
    std::vector<TokenId> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.sample(l));
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));

  SamplingParams p = plain(1.0f);
  p.seed = 42;
  Sampler s(p);
  const TokenId first = s.sample(l);
  s.sample(l);
  s.reseed(42);
  EXPECT_EQ(s.sample(l), first);
}

TEST(Sampler, TemperatureOneMatchesSoftmax) {
  const std::vector<float> l = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f, -1.0f, 1.5f, -2.5f};
  for (float t : {1.0f, 0.5f, 2.0f}) {
    Sampler s(plain(t));
    const int draws = 20000;
    std::vector<int> counts(l.size());
    for (int i = 0; i < draws; ++i) ++counts[s.sample(l)];
    expect_frequencies(counts, softmax(l, t), draws);
    // The exact distribution too.
    const auto d = s.distribution(l);
    const auto ref = softmax(l, t);
    ASSERT_EQ(d.size(), l.size());
    for (size_t i = 0; i < d.size(); ++i) EXPECT_NEAR(d[i].prob, ref[i], 1e-6);
  }
}

TEST(Sampler, LargeKeptSetDrawMatchesSoftmax) {
  // 5,000 kept tokens go through the dense id-ordered draw; bucket them by id range.
  const size_t n = 5000;
  const auto l = random_logits(n, 3, 0.5f);
  Sampler s(plain(1.0f));
  ASSERT_EQ(s.distribution(l).size(), n);
  const auto p = softmax(l);
  const int buckets = 10, draws = 4000;
  std::vector<int> counts(buckets);
  std::vector<double> pb(buckets);
  for (size_t i = 0; i < n; ++i) pb[i * buckets / n] += p[i];
  for (int i = 0; i < draws; ++i) ++counts[static_cast<size_t>(s.sample(l)) * buckets / n];
  expect_frequencies(counts, pb, draws);
}

TEST(Sampler, TopKNeverLeavesTheTopK) {
  const auto l = random_logits(500, 11);
  SamplingParams p = plain(1.0f);
  p.top_k = 5;
  Sampler s(p);
  std::vector<TokenId> order(l.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](TokenId a, TokenId b) { return l[a] > l[b]; });
  const std::set<TokenId> top(order.begin(), order.begin() + 5);
  std::set<TokenId> seen;
  for (int i = 0; i < 5000; ++i) {
    const TokenId t = s.sample(l);
    EXPECT_TRUE(top.count(t)) << t;
    seen.insert(t);
  }
  EXPECT_EQ(seen, top);
}

TEST(Sampler, TopPKeepsTheMinimalNucleus) {
  // p = 0.5, 0.3, 0.15, 0.05 (shuffled ids).
  const std::vector<float> l = {std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
  auto kept = [&](float top_p) {
    SamplingParams p = plain(1.0f);
    p.top_p = top_p;
    Sampler s(p);
    return kept_ids(s, l);
  };
  EXPECT_EQ(kept(0.4f), (std::vector<TokenId>{1}));
  EXPECT_EQ(kept(0.75f), (std::vector<TokenId>{1, 3}));
  EXPECT_EQ(kept(0.85f), (std::vector<TokenId>{0, 1, 3}));
  EXPECT_EQ(kept(0.99f), (std::vector<TokenId>{0, 1, 2, 3}));

  // Draws respect it, renormalised: 0.5 / 0.8 and 0.3 / 0.8.
  SamplingParams p = plain(1.0f);
  p.top_p = 0.75f;
  Sampler s(p);
  const int draws = 20000;
  std::vector<int> counts(4);
  for (int i = 0; i < draws; ++i) ++counts[s.sample(l)];
  expect_frequencies(counts, {0.0, 0.625, 0.0, 0.375}, draws);
}

TEST(Sampler, MinPKeepsTokensAboveTheRelativeFloor) {
  // p = 0.6, 0.2, 0.1, 0.05, 0.05; min_p 0.25 -> floor 0.15 keeps {0.6, 0.2}.
  const std::vector<float> l = {std::log(0.05f), std::log(0.6f), std::log(0.1f), std::log(0.2f),
                                std::log(0.05f)};
  SamplingParams p = plain(1.0f);
  p.min_p = 0.25f;
  Sampler s(p);
  EXPECT_EQ(kept_ids(s, l), (std::vector<TokenId>{1, 3}));
  p.min_p = 0.1f;  // floor 0.06 also keeps 0.1
  Sampler s2(p);
  EXPECT_EQ(kept_ids(s2, l), (std::vector<TokenId>{1, 2, 3}));
  // Temperature is applied first: at T = 2 the ratios are square roots, 0.05 -> sqrt(1/12) > 0.25.
  p.min_p = 0.25f;
  p.temperature = 2.0f;
  Sampler s3(p);
  EXPECT_EQ(kept_ids(s3, l), (std::vector<TokenId>{0, 1, 2, 3, 4}));
}

TEST(Sampler, FiltersMatchBruteForceOnTheFullVocabulary) {
  struct Case {
    float t, top_p, min_p;
    int top_k;
  };
  const Case cases[] = {{1.0f, 1.0f, 0.05f, 0},  {1.0f, 0.9f, 0.0f, 0},   {0.7f, 0.95f, 0.0f, 40},
                        {1.3f, 0.5f, 0.02f, 0},  {1.0f, 1.0f, 0.0f, 1000}, {0.6f, 0.99f, 0.001f, 0},
                        {2.0f, 0.3f, 0.0f, 0},   {1.0f, 0.97f, 0.01f, 5000}};
  uint64_t seed = 100;
  for (const Case& c : cases) {
    const auto l = random_logits(kVocab, ++seed, 1.5f);
    SamplingParams p = plain(c.t);
    p.top_p = c.top_p;
    p.min_p = c.min_p;
    p.top_k = c.top_k;
    Sampler s(p);
    const auto got = kept_ids(s, l);
    EXPECT_EQ(got, reference_kept(l, p)) << "T " << c.t << " top_p " << c.top_p << " min_p "
                                         << c.min_p << " top_k " << c.top_k;
    const TokenId t = s.sample(l);
    EXPECT_TRUE(std::binary_search(got.begin(), got.end(), t));
  }
}

TEST(Sampler, TiedLogitsAreCutByTokenId) {
  // Ten equal logits: top-k 3 keeps the three lowest ids, and so does a 0.25 nucleus.
  std::vector<float> l(10, 1.0f);
  SamplingParams p = plain(1.0f);
  p.top_k = 3;
  Sampler s(p);
  EXPECT_EQ(kept_ids(s, l), (std::vector<TokenId>{0, 1, 2}));
  p.top_k = 0;
  p.top_p = 0.25f;
  Sampler s2(p);
  EXPECT_EQ(kept_ids(s2, l), (std::vector<TokenId>{0, 1, 2}));
}

TEST(Sampler, PenaltiesFollowTheDocumentedFormula) {
  const std::vector<float> base = {2.0f, -2.0f, 1.0f, 0.5f, 3.0f};
  const std::vector<TokenId> history = {4, 0, 1, 0, 3};
  auto adjusted = [&](SamplingParams p) {
    Sampler s(p);
    std::vector<float> l = base;
    s.adjust_logits(l, history);
    return l;
  };
  SamplingParams p = plain(1.0f);
  p.penalty_last_n = -1;

  p.repetition_penalty = 2.0f;  // positive divided, negative multiplied, unseen (2) untouched
  EXPECT_EQ(adjusted(p), (std::vector<float>{1.0f, -4.0f, 1.0f, 0.25f, 1.5f}));

  p.repetition_penalty = 1.0f;
  p.presence_penalty = 0.5f;  // once per distinct token
  EXPECT_EQ(adjusted(p), (std::vector<float>{1.5f, -2.5f, 1.0f, 0.0f, 2.5f}));

  p.presence_penalty = 0.0f;
  p.frequency_penalty = 0.25f;  // count * penalty: token 0 seen twice
  EXPECT_EQ(adjusted(p), (std::vector<float>{1.5f, -2.25f, 1.0f, 0.25f, 2.75f}));

  p.repetition_penalty = 2.0f;  // all three: repetition first, then the subtractions
  p.presence_penalty = 0.5f;
  EXPECT_EQ(adjusted(p), (std::vector<float>{0.0f, -4.75f, 1.0f, -0.5f, 0.75f}));

  p.penalty_last_n = 2;  // only {0, 3}
  EXPECT_EQ(adjusted(p), (std::vector<float>{0.25f, -2.0f, 1.0f, -0.5f, 3.0f}));

  p.penalty_last_n = 0;  // off
  EXPECT_EQ(adjusted(p), base);
}

TEST(Sampler, PenaltiesChangeTheGreedyChoice) {
  const std::vector<float> l = {5.0f, 4.0f, 1.0f};
  const std::vector<TokenId> history = {0};
  SamplingParams p = plain(0.0f);
  p.repetition_penalty = 1.5f;  // 5 / 1.5 < 4
  Sampler s(p);
  EXPECT_EQ(s.sample(l), 0);
  EXPECT_EQ(s.sample(l, history), 1);
  std::vector<TokenId> bad = {7};
  EXPECT_THROW(s.sample(l, bad), Error);
}

TEST(Sampler, LogitBiasShiftsAndMinusInfinityBans) {
  const std::vector<float> l = {5.0f, 4.0f, 1.0f, 0.0f};
  SamplingParams p = plain(1.0f);
  p.logit_bias = {{0, -kInf}, {2, 2.5f}};
  Sampler s(p);
  std::vector<float> adj = l;
  s.adjust_logits(adj, {});
  EXPECT_EQ(adj, (std::vector<float>{-kInf, 4.0f, 3.5f, 0.0f}));
  for (int i = 0; i < 5000; ++i) EXPECT_NE(s.sample(l), 0);

  p.temperature = 0.0f;
  Sampler g(p);
  EXPECT_EQ(g.sample(l), 1);

  p.logit_bias = {{0, -kInf}, {1, -kInf}, {2, -kInf}, {3, -kInf}};
  Sampler all_banned(p);
  EXPECT_THROW(all_banned.sample(l), Error);

  p.logit_bias = {{4, 1.0f}};  // outside the vocabulary of 4
  Sampler outside(p);
  EXPECT_THROW(outside.sample(l), Error);
}

TEST(Sampler, RejectsBadLogits) {
  Sampler s(plain(1.0f));
  EXPECT_THROW(s.sample(std::vector<float>{}), Error);
  EXPECT_THROW(s.sample(std::vector<float>{1.0f, std::nanf(""), 0.0f}), Error);
  EXPECT_THROW(s.sample(std::vector<float>{1.0f, kInf}), Error);
  // Huge but finite logits are fine.
  const std::vector<float> huge = {3e38f, -3e38f, 3e38f};
  const TokenId t = s.sample(huge);
  EXPECT_TRUE(t == 0 || t == 2);
}

TEST(Sampler, ValidationNamesTheField) {
  auto bad = [](auto mutate) {
    SamplingParams p;
    mutate(p);
    EXPECT_THROW(Sampler{p}, Error);
  };
  bad([](SamplingParams& p) { p.temperature = -1.0f; });
  bad([](SamplingParams& p) { p.temperature = std::nanf(""); });
  bad([](SamplingParams& p) { p.top_p = 0.0f; });
  bad([](SamplingParams& p) { p.top_p = 1.5f; });
  bad([](SamplingParams& p) { p.min_p = -0.1f; });
  bad([](SamplingParams& p) { p.top_k = -1; });
  bad([](SamplingParams& p) { p.repetition_penalty = 0.0f; });
  bad([](SamplingParams& p) { p.penalty_last_n = -2; });
  bad([](SamplingParams& p) { p.logit_bias[3] = kInf; });
  bad([](SamplingParams& p) { p.logit_bias[-1] = 1.0f; });
  bad([](SamplingParams& p) { p.max_tokens = -5; });
  bad([](SamplingParams& p) { p.stop_strings = {"ok", ""}; });
  try {
    SamplingParams p;
    p.top_p = 2.0f;
    p.validate();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("top_p"), std::string::npos);
  }
}

TEST(Sampler, ModeDefaultsAndOverrides) {
  for (bool thinking : {true, false}) {
    const SamplingParams d = SamplingParams::defaults_for(thinking);
    EXPECT_EQ(d.temperature, 1.0f);
    EXPECT_EQ(d.top_p, 1.0f);
    EXPECT_EQ(d.min_p, 0.05f);
    EXPECT_EQ(d.top_k, 0);
    EXPECT_EQ(d.repetition_penalty, 1.0f);
    EXPECT_NO_THROW(d.validate());
  }
  SamplingParams p;
  p.temperature = 0.2f;
  p.top_k = 7;
  p.frequency_penalty = 1.0f;
  p.seed = 9;
  p.max_tokens = 100;
  p.stop_tokens = {1};
  p.apply_thinking_overrides();
  EXPECT_EQ(p.temperature, 1.0f);
  EXPECT_EQ(p.top_k, 0);
  EXPECT_EQ(p.frequency_penalty, 0.0f);
  EXPECT_EQ(p.seed, 9u);
  EXPECT_EQ(p.max_tokens, 100);
  EXPECT_TRUE(p.is_stop_token(1));
  EXPECT_FALSE(p.is_stop_token(2));
}

// Timing over the real vocabulary. The bounds are loose enough for sanitizer builds on a shared
// machine; the printed numbers are the interesting part (-O2: ~0.06 ms greedy, ~0.12 ms
// defaults, ~1.9 ms top-p 0.95 with penalties, ~1.1 ms with nothing filtered).
TEST(Sampler, StepCostOverTheFullVocabulary) {
  const auto l = random_logits(kVocab, 5, 2.0f);
  std::vector<TokenId> history(256);
  for (size_t i = 0; i < history.size(); ++i) history[i] = static_cast<TokenId>(i * 37 % kVocab);
  auto time_ms = [&](SamplingParams p) {
    Sampler s(p);
    s.sample(l, history);  // warm the scratch buffers
    const int steps = 20;
    // CPU time rather than wall time: the test machine is shared.
    const std::clock_t t0 = std::clock();
    for (int i = 0; i < steps; ++i) s.sample(l, history);
    return 1000.0 * static_cast<double>(std::clock() - t0) / CLOCKS_PER_SEC / steps;
  };
  SamplingParams greedy = plain(0.0f);
  SamplingParams defaults = SamplingParams::defaults_for(true);
  defaults.seed = 1;
  SamplingParams top_p = plain(1.0f);
  top_p.top_p = 0.95f;
  top_p.repetition_penalty = 1.1f;
  top_p.frequency_penalty = 0.1f;
  SamplingParams everything = plain(1.0f);  // nothing filters: all 129,280 tokens kept
  const double g = time_ms(greedy), d = time_ms(defaults), t = time_ms(top_p),
               e = time_ms(everything);
  std::printf("sampler step over %zu tokens: greedy %.3f ms, defaults %.3f ms, top-p 0.95 + "
              "penalties %.3f ms, unfiltered %.3f ms\n",
              kVocab, g, d, t, e);
  EXPECT_LT(g, 20.0);
  EXPECT_LT(d, 50.0);
  EXPECT_LT(t, 100.0);
  EXPECT_LT(e, 100.0);
}

}  // namespace
}  // namespace ds4::gen

namespace ds4::gen {
namespace {

// Pins the seed -> tokens mapping. The RNG (mt19937_64), the uniform conversion, the selection
// and the id-ordered draw are all specified by this code, so these values hold on every platform
// (short of a libm whose expf differs in the last bit right at a draw boundary); if a deliberate
// change alters them, update the numbers and say so in the commit.
TEST(Sampler, SeedToTokensIsPinned) {
  std::vector<float> l(1000);
  for (size_t i = 0; i < l.size(); ++i) l[i] = static_cast<float>((i * 7919) % 1000) / 200.0f;
  SamplingParams p = SamplingParams::defaults_for(true);
  p.seed = 20260101;
  Sampler s(p);
  std::vector<TokenId> got;
  for (int i = 0; i < 8; ++i) got.push_back(s.sample(l));
  EXPECT_EQ(got, (std::vector<TokenId>{187, 334, 819, 754, 100, 593, 273, 965}));
}

TEST(Sampler, DistributionConsumesNoRandomness) {
  const std::vector<float> l = {0.1f, 0.7f, 0.3f, 0.2f, 0.9f, 0.4f};
  SamplingParams p = plain(1.0f);
  Sampler a(p), b(p);
  for (int i = 0; i < 20; ++i) {
    b.distribution(l);
    EXPECT_EQ(a.sample(l), b.sample(l));
  }
}

}  // namespace
}  // namespace ds4::gen
