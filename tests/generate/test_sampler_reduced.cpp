// Sampler::reduce_request / sample_reduced (model/logits_reduce.h) on the host: a reduction
// computed here the way the GPU computes it (adjusted logits, argmax, the min-p candidates in id
// order or the top-k) must give the same tokens and the same random stream as sample() on the
// full logits, and logprobs_from_reduction the same numbers as compute_logprobs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "generate/logprobs.h"
#include "generate/sampler.h"

namespace ds4::gen {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// What DeviceSampler computes (backend/cuda/sampling.cu), written plainly.
model::LogitsReduction reduce_like_the_gpu(const std::vector<float>& raw, const model::LogitsReduceRequest& q) {
  std::vector<float> l = raw;
  for (size_t i = 0; i < q.penalty_tokens.size(); ++i) {
    float& v = l[static_cast<size_t>(q.penalty_tokens[i])];
    v = v > 0.0f ? v / q.repetition_penalty : v * q.repetition_penalty;
    v -= q.penalty_sub[i];
  }
  for (size_t i = 0; i < q.bias_tokens.size(); ++i) {
    float& v = l[static_cast<size_t>(q.bias_tokens[i])];
    v = q.bias[i] == kNegInf ? kNegInf : v + q.bias[i];
  }
  model::LogitsReduction r;
  r.argmax = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
  r.max = l[static_cast<size_t>(r.argmax)];
  if (!q.greedy) {
    float floor = kNegInf;
    if (q.floor_offset != -std::numeric_limits<double>::infinity()) {
      const double f = r.max + q.floor_offset;
      floor = f < -std::numeric_limits<float>::max() ? kNegInf : static_cast<float>(f);
    }
    for (size_t i = 0; i < l.size(); ++i)
      if (l[i] > kNegInf && l[i] >= floor) {
        r.cand_logit.push_back(l[i]);
        r.cand_id.push_back(static_cast<int32_t>(i));
      }
    if (static_cast<int64_t>(r.cand_id.size()) > q.max_candidates) {
      EXPECT_GT(q.top_k, 0);
      std::vector<int32_t> idx(r.cand_id);
      std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
      idx.resize(static_cast<size_t>(q.top_k));
      r.cand_id = idx;
      r.cand_logit.clear();
      for (const int32_t i : idx) r.cand_logit.push_back(l[static_cast<size_t>(i)]);
      r.all_candidates = false;
    }
  }
  if (q.logprobs_top >= 0) {
    const double m = *std::max_element(raw.begin(), raw.end());
    double sum = 0.0;
    for (const float v : raw) sum += std::exp(static_cast<double>(v) - m);
    r.lse_max = m;
    r.lse_log_sum = std::log(sum);
    std::vector<int32_t> idx(raw.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return raw[a] > raw[b]; });
    for (int i = 0; i < q.logprobs_top; ++i) {
      r.top_id.push_back(idx[static_cast<size_t>(i)]);
      r.top_logit.push_back(raw[static_cast<size_t>(idx[static_cast<size_t>(i)])]);
    }
  }
  return r;
}

TEST(SamplerReduced, SameTokensAndStreamAsFullLogits) {
  const size_t V = 5000;
  std::mt19937 g(7);
  std::normal_distribution<float> d(0.0f, 3.0f);
  int checked = 0;
  for (float temp : {0.0f, 0.7f, 1.0f, 1.6f})
    for (int top_k : {0, 40})
      for (float top_p : {1.0f, 0.9f})
        for (float min_p : {0.05f, 0.0f})
          for (bool pen : {false, true}) {
            SamplingParams p;
            p.temperature = temp;
            p.top_k = top_k;
            p.top_p = top_p;
            p.min_p = min_p;
            if (pen) {
              p.repetition_penalty = 1.3f;
              p.presence_penalty = 0.5f;
              p.frequency_penalty = 0.2f;
              p.logit_bias = {{3, kNegInf}, {17, 2.5f}};
            }
            p.seed = 1234;
            Sampler full(p), reduced(p);
            std::vector<TokenId> history;
            for (int step = 0; step < 6; ++step) {
              std::vector<float> logits(V);
              for (float& x : logits) x = std::round(d(g) * 4.0f) / 4.0f;  // many ties
              auto q = reduced.reduce_request(history, static_cast<int64_t>(V), 5);
              q.max_candidates = static_cast<int64_t>(V);  // the host reference keeps any number
              const auto r = reduce_like_the_gpu(logits, q);
              const TokenId a = full.sample(logits, history);
              const TokenId b = reduced.sample_reduced(r);
              ASSERT_EQ(a, b) << "T " << temp << " top_k " << top_k << " top_p " << top_p << " min_p " << min_p
                              << " penalties " << pen << " step " << step;
              const auto la = compute_logprobs(logits, a, 5);
              const auto lb = logprobs_from_reduction(r, b, logits[static_cast<size_t>(b)]);
              EXPECT_NEAR(la.chosen.logprob, lb.chosen.logprob, 1e-6);
              ASSERT_EQ(la.top.size(), lb.top.size());
              for (size_t i = 0; i < la.top.size(); ++i) {
                EXPECT_EQ(la.top[i].token, lb.top[i].token);
                EXPECT_NEAR(la.top[i].logprob, lb.top[i].logprob, 1e-6);
              }
              history.push_back(a);
              ++checked;
            }
          }
  EXPECT_EQ(checked, 4 * 2 * 2 * 2 * 2 * 6);
}

TEST(SamplerReduced, RequestCarriesPenaltiesBiasAndFloor) {
  SamplingParams p;
  p.temperature = 0.5f;
  p.min_p = 0.1f;
  p.repetition_penalty = 1.5f;
  p.presence_penalty = 0.25f;
  p.frequency_penalty = 0.5f;
  p.penalty_last_n = 3;
  p.logit_bias = {{9, -1.0f}};
  p.seed = 1;
  Sampler s(p);
  const std::vector<TokenId> history = {1, 7, 7, 2};  // window: 7, 7, 2
  const auto q = s.reduce_request(history, 10);
  EXPECT_EQ(q.penalty_tokens, (std::vector<int32_t>{2, 7}));
  EXPECT_EQ(q.penalty_sub, (std::vector<float>{0.25f + 1.0f * 0.5f, 0.25f + 2.0f * 0.5f}));
  EXPECT_EQ(q.bias_tokens, (std::vector<int32_t>{9}));
  EXPECT_FALSE(q.greedy);
  EXPECT_DOUBLE_EQ(q.floor_offset, 0.5 * std::log(double{0.1f}));
  p.top_p = 0.5f;  // top-p needs every candidate: no floor
  Sampler s2(p);
  EXPECT_EQ(s2.reduce_request(history, 10).floor_offset, -std::numeric_limits<double>::infinity());
  EXPECT_THROW(s2.reduce_request(std::vector<TokenId>{11}, 10), std::exception);
}

}  // namespace
}  // namespace ds4::gen
