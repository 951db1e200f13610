// Logprobs: normalisation, agreement with a direct softmax, ordering, stability, errors.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/error.h"
#include "generate/logprobs.h"

namespace ds4::gen {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> random_logits(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 4.0f);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

TEST(Logprobs, NormalisedAndEqualToSoftmax) {
  const auto l = random_logits(129280, 1);
  const int n = static_cast<int>(l.size());
  const StepLogprobs all = compute_logprobs(l, 17, n);
  ASSERT_EQ(all.top.size(), l.size());
  double sum = 0.0;
  for (const auto& e : all.top) sum += std::exp(static_cast<double>(e.logprob));
  EXPECT_NEAR(sum, 1.0, 1e-5);

  // Direct softmax in long double as the reference.
  long double z = 0.0L;
  for (float x : l) z += std::exp(static_cast<long double>(x));
  for (TokenId t : {0, 17, 5000, 129279}) {
    const StepLogprobs s = compute_logprobs(l, t, 0);
    EXPECT_TRUE(s.top.empty());
    EXPECT_EQ(s.chosen.token, t);
    EXPECT_EQ(s.chosen.logit, l[t]);
    EXPECT_NEAR(s.chosen.logprob, static_cast<double>(l[t] - std::log(z)), 1e-4);
  }
}

TEST(Logprobs, TopKIsSortedBestFirstWithTiesByLowerId) {
  const std::vector<float> l = {1.0f, 3.0f, 2.0f, 3.0f, -kInf, 0.5f};
  const StepLogprobs s = compute_logprobs(l, 4, 4);
  ASSERT_EQ(s.top.size(), 4u);
  const TokenId expect[] = {1, 3, 2, 0};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(s.top[i].token, expect[i]);
    EXPECT_EQ(s.top[i].logit, l[static_cast<size_t>(expect[i])]);
  }
  EXPECT_EQ(s.top[0].logprob, s.top[1].logprob);
  EXPECT_GT(s.top[1].logprob, s.top[2].logprob);
  EXPECT_EQ(s.chosen.logprob, -kInf);  // a banned / impossible token

  // Asking for more than the vocabulary returns all of it.
  EXPECT_EQ(compute_logprobs(l, 0, 100).top.size(), l.size());

  // Matches a brute-force selection on a big vector.
  const auto big = random_logits(50000, 2);
  const StepLogprobs b = compute_logprobs(big, 0, 20);
  std::vector<float> sorted = big;
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  for (size_t i = 0; i < 20; ++i) EXPECT_EQ(b.top[i].logit, sorted[i]);
}

TEST(Logprobs, StableForHugeAndTinyLogits) {
  // exp would overflow or underflow without the max shift.
  const std::vector<float> huge = {3e38f, 3e38f, -3e38f};
  const StepLogprobs h = compute_logprobs(huge, 0, 3);
  EXPECT_NEAR(h.chosen.logprob, -std::log(2.0f), 1e-6);
  EXPECT_EQ(h.top[2].logprob, -kInf);  // -3e38 - 3e38 - log 2 rounds to -inf in float

  const std::vector<float> tiny = {-1e30f, -1e30f, -1e30f, -1e30f};
  EXPECT_NEAR(compute_logprobs(tiny, 2, 0).chosen.logprob, -std::log(4.0f), 1e-6);

  const std::vector<float> spread = {1000.0f, 999.0f, -1000.0f};
  const StepLogprobs s = compute_logprobs(spread, 1, 3);
  const double lse = 1000.0 + std::log1p(std::exp(-1.0));
  EXPECT_NEAR(s.chosen.logprob, 999.0 - lse, 1e-5);
  EXPECT_NEAR(s.top[0].logprob, 1000.0 - lse, 1e-5);
  EXPECT_NEAR(s.top[2].logprob, -1000.0 - lse, 1e-2);
  for (const auto& e : s.top) EXPECT_LE(e.logprob, 0.0f);
  EXPECT_NEAR(log_sum_exp(spread), lse, 1e-4);
}

TEST(Logprobs, RejectsBadInput) {
  const std::vector<float> ok = {0.0f, 1.0f};
  EXPECT_THROW(compute_logprobs(ok, 2, 1), Error);
  EXPECT_THROW(compute_logprobs(ok, -1, 1), Error);
  EXPECT_THROW(compute_logprobs(ok, 0, -1), Error);
  EXPECT_THROW(compute_logprobs(std::vector<float>{}, 0, 0), Error);
  EXPECT_THROW(compute_logprobs(std::vector<float>{0.0f, std::nanf("")}, 0, 1), Error);
  EXPECT_THROW(compute_logprobs(std::vector<float>{0.0f, kInf}, 0, 1), Error);
  EXPECT_THROW(compute_logprobs(std::vector<float>{-kInf, -kInf}, 0, 1), Error);
}

}  // namespace
}  // namespace ds4::gen
