// The arithmetic of ds4-quality on hand-made inputs: log-softmax, KL (full and top-K
// buckets), nucleus, percentiles, the window plan and perplexity through a mock source.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "quality/distribution.h"
#include "quality/windows.h"
#include "quality_util.h"

namespace q = ds4::quality;

namespace {

std::vector<double> random_lp(std::mt19937& g, size_t n, double scale) {
  std::normal_distribution<float> d(0, static_cast<float>(scale));
  std::vector<float> x(n);
  for (auto& v : x) v = d(g);
  std::vector<double> lp(n);
  q::log_softmax(x, lp);
  return lp;
}

TEST(QualityMath, LogSoftmaxNormalizes) {
  const std::vector<float> x = {1, 2, 3, -1000};
  std::vector<double> lp(4);
  q::log_softmax(x, lp);
  double s = 0;
  for (double v : lp) s += std::exp(v);
  EXPECT_NEAR(s, 1.0, 1e-15);
  EXPECT_NEAR(lp[2] - lp[1], 1.0, 1e-15);
  EXPECT_EQ(q::argmax(lp), 2);
}

TEST(QualityMath, KlOfItselfIsZeroAndKnownCase) {
  std::mt19937 g(3);
  const auto p = random_lp(g, 1000, 2);
  EXPECT_EQ(q::kl_full(p, p), 0.0);
  // Two-point distributions: KL((1/2,1/2) || (1/4,3/4)) = 1/2 log 2 + 1/2 log(2/3).
  const std::vector<double> a = {std::log(0.5), std::log(0.5)}, b = {std::log(0.25), std::log(0.75)};
  EXPECT_NEAR(q::kl_full(a, b), 0.5 * std::log(2.0) + 0.5 * std::log(2.0 / 3.0), 1e-15);
}

TEST(QualityMath, TopKBucketsAreALowerBound) {
  std::mt19937 g(5);
  for (int trial = 0; trial < 50; ++trial) {
    const auto p = random_lp(g, 512, 1 + trial % 4), m = random_lp(g, 512, 1 + trial % 3);
    const double full = q::kl_full(p, m);
    for (int k : {1, 8, 64, 511}) {
      const q::TopK t = q::top_k(p, k);
      ASSERT_EQ(t.ids.size(), static_cast<size_t>(k));
      for (int j = 1; j < k; ++j) ASSERT_GE(t.lp[j - 1], t.lp[j]);
      double mass = std::exp(static_cast<double>(t.rest_lp));
      for (float v : t.lp) mass += std::exp(static_cast<double>(v));
      EXPECT_NEAR(mass, 1.0, 1e-5);
      // float storage of the log-probs allows a few 1e-7 of slack on the inequality.
      EXPECT_LE(q::kl_topk(t, m), full + 1e-6) << "trial " << trial << " K " << k;
    }
    // K = V - 1 leaves one id in the rest bucket: the bucketing is then exact.
    EXPECT_NEAR(q::kl_topk(q::top_k(p, 511), m), full, 1e-5);
  }
}

TEST(QualityMath, NucleusAndPercentile) {
  const std::vector<double> lp = {std::log(0.5), std::log(0.3), std::log(0.15), std::log(0.05)};
  EXPECT_EQ(q::nucleus(lp, 0.9), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(q::nucleus(lp, 0.5), (std::vector<int32_t>{0}));
  const q::TopK t = q::top_k(lp, 2);
  EXPECT_TRUE(q::nucleus(t, 0.9).empty()) << "two ids hold 0.8 < 0.9: undefined";
  EXPECT_EQ(q::nucleus(t, 0.8 - 1e-6), (std::vector<int32_t>{0, 1}));
  std::vector<double> v;
  for (int i = 0; i <= 100; ++i) v.push_back(i);
  EXPECT_DOUBLE_EQ(q::percentile(v, 0.9), 90.0);
  EXPECT_DOUBLE_EQ(q::percentile(v, 0.999), 99.9);
  EXPECT_DOUBLE_EQ(q::percentile({1.0, 3.0}, 0.5), 2.0);
}

TEST(QualityWindows, EveryTargetScoredOnce) {
  for (int64_t n : {2, 3, 17, 100, 257}) {
    for (auto [ctx, stride] : std::vector<std::pair<int64_t, int64_t>>{{2, 1}, {8, 4}, {8, 8}, {16, 5}, {512, 256}}) {
      const auto ws = q::plan_windows(n, {.ctx = ctx, .stride = stride});
      std::vector<int> seen(static_cast<size_t>(n), 0);
      for (const auto& w : ws) {
        ASSERT_LE(w.end - w.begin, ctx);
        ASSERT_GT(w.first_target, w.begin);
        for (int64_t t = w.first_target; t < w.end; ++t) ++seen[static_cast<size_t>(t)];
      }
      EXPECT_EQ(seen[0], 0);
      EXPECT_EQ(ws.front().first_target, 1) << "the first window scores all but token 0";
      for (int64_t t = 1; t < n; ++t) {
        // With disjoint windows (stride = ctx) a window's first token has no context: skipped.
        const bool window_start = stride == ctx && t % ctx == 0;
        EXPECT_EQ(seen[static_cast<size_t>(t)], window_start ? 0 : 1) << n << " " << ctx << " " << stride << " t " << t;
      }
    }
  }
  EXPECT_THROW(q::plan_windows(10, {.ctx = 1, .stride = 1}), ds4::Error);
  EXPECT_THROW(q::plan_windows(10, {.ctx = 8, .stride = 9}), ds4::Error);
  EXPECT_THROW(q::plan_windows(1, {.ctx = 8, .stride = 4}), ds4::Error);
}

TEST(QualityWindows, PerplexityMatchesHandComputation) {
  qt::MockLogits src(37);
  const auto tokens = qt::token_stream(90, 37);
  const q::WindowOptions opt{.ctx = 20, .stride = 7};
  // By hand: each target's row comes from its window's history only.
  double nll = 0;
  int64_t n = 0;
  std::vector<float> row(37);
  std::vector<double> lp(37);
  for (const auto& w : q::plan_windows(90, opt))
    for (int64_t t = w.first_target; t < w.end; ++t) {
      const std::vector<int32_t> h(tokens.begin() + w.begin, tokens.begin() + t);
      src.row(h, row.data());
      q::log_softmax(row, lp);
      nll -= lp[static_cast<size_t>(tokens[static_cast<size_t>(t)])];
      ++n;
    }
  for (int64_t chunk : {1, 3, 256}) {
    double got = 0;
    int64_t cnt = 0;
    q::score_windows(src, tokens, opt, [&](int64_t t, std::span<const float> logits) {
      q::log_softmax(logits, lp);
      got -= lp[static_cast<size_t>(tokens[static_cast<size_t>(t)])];
      ++cnt;
    }, chunk);
    EXPECT_EQ(cnt, n);
    EXPECT_NEAR(got, nll, 1e-9) << "chunk " << chunk;
  }
  const q::Perplexity p = q::perplexity(src, tokens, opt);
  EXPECT_EQ(p.n_scored, 89);
  EXPECT_NEAR(p.ppl(), std::exp(nll / static_cast<double>(n)), 1e-9);
}

}  // namespace
