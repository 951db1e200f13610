// GPU sampling (backend/cuda/sampling.h + gen::Sampler::sample_reduced) against the CPU sampler
// on random logits of the Flash vocabulary: the same tokens for every parameter combination
// and seed over several steps (so the random streams stay aligned), logprobs within 1e-5, and
// the cases the device declines (invalid logits, too many candidates) declined. Then a GPU
// session decoding the dsv4-tiny-a fixture with gen::sample_step, logits kept on the device vs
// copied back: the same tokens and logprobs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "backend/cuda/buffer.h"
#include "backend/cuda/device.h"
#include "backend/cuda/gpu_model.h"
#include "backend/cuda/gpu_session.h"
#include "backend/cuda/sampling.h"
#include "e2e/e2e_util.h"
#include "generate/generator.h"
#include "generate/logprobs.h"
#include "generate/sampler.h"

namespace {

using ds4::cuda::DeviceBuffer;
using ds4::gen::Sampler;
using ds4::gen::SamplingParams;
using ds4::gen::TokenId;

#define DS4_REQUIRE_GPU()                                                                      \
  do {                                                                                         \
    if (ds4::cuda::list_devices().empty()) GTEST_SKIP() << "no CUDA GPU: GPU sampling test not run"; \
  } while (0)

constexpr int64_t kVocab = 129280;  // Flash
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

std::vector<float> random_logits(std::mt19937& g, bool coarse) {
  std::normal_distribution<float> d(0.0f, 2.5f);
  std::vector<float> v(kVocab);
  for (float& x : v) x = coarse ? std::round(d(g) * 8.0f) / 8.0f : d(g);
  return v;
}

TEST(CudaSampling, SameTokensAndLogprobsAsCpuSampler) {
  DS4_REQUIRE_GPU();
  ds4::cuda::DeviceSampler dev(kVocab);
  DeviceBuffer dl(kVocab * sizeof(float));
  std::mt19937 g(99);
  int served = 0, declined = 0, steps = 0;
  for (float temp : {0.0f, 0.6f, 1.0f, 1.5f})
    for (int top_k : {0, 40, 1500, 3000})
      for (float top_p : {1.0f, 0.92f})
        for (float min_p : {0.05f, 0.0f})
          for (int pen = 0; pen < 2; ++pen)
            for (uint64_t seed : {uint64_t{1}, uint64_t{77}}) {
              SamplingParams p;
              p.temperature = temp;
              p.top_k = top_k;
              p.top_p = top_p;
              p.min_p = min_p;
              if (pen) {
                p.repetition_penalty = 1.25f;
                p.presence_penalty = 0.4f;
                p.frequency_penalty = 0.15f;
                p.penalty_last_n = 32;
                p.logit_bias = {{5, kNegInf}, {17, 3.0f}, {kVocab - 1, -0.5f}};
              }
              p.seed = seed;
              Sampler cpu(p), gpu(p);
              std::vector<TokenId> history = {5, 17, 100, 100, 2000};
              for (int step = 0; step < 3; ++step) {
                const auto logits = random_logits(g, (step + pen) % 2 == 1);
                dl.upload(logits.data(), logits.size() * sizeof(float));
                const int n_top = step == 0 ? 5 : -1;
                ds4::model::LogitsReduction red;
                const bool ok = dev.reduce(dl.as<float>(), gpu.reduce_request(history, kVocab, n_top), red, nullptr);
                const TokenId want = cpu.sample(logits, history);
                TokenId got = 0;
                if (ok) {
                  got = gpu.sample_reduced(red);
                  ++served;
                } else {
                  // Declined only where the candidate set is too large: top-p or min-p 0 without
                  // a top-k the device can select.
                  EXPECT_TRUE((top_p < 1.0f || min_p == 0.0f) && !(top_k > 0 && top_k <= 2048) && temp > 0.0f)
                      << "declined: T " << temp << " top_k " << top_k << " top_p " << top_p << " min_p " << min_p;
                  got = gpu.sample(logits, history);  // what the generator falls back to
                  ++declined;
                }
                ASSERT_EQ(got, want) << "T " << temp << " top_k " << top_k << " top_p " << top_p << " min_p "
                                     << min_p << " penalties " << pen << " seed " << seed << " step " << step;
                if (ok && n_top >= 0) {
                  const auto a = ds4::gen::compute_logprobs(logits, want, n_top);
                  const auto b = ds4::gen::logprobs_from_reduction(red, got, logits[static_cast<size_t>(got)]);
                  EXPECT_NEAR(a.chosen.logprob, b.chosen.logprob, 1e-5);
                  ASSERT_EQ(a.top.size(), b.top.size());
                  for (size_t i = 0; i < a.top.size(); ++i) {
                    EXPECT_EQ(a.top[i].token, b.top[i].token);
                    EXPECT_NEAR(a.top[i].logprob, b.top[i].logprob, 1e-5);
                  }
                }
                history.push_back(want);
                ++steps;
              }
            }
  std::printf("[sampling] %d steps: %d served on the GPU, %d declined (candidate set too large)\n", steps, served,
              declined);
  EXPECT_GT(served, steps / 2);
}

TEST(CudaSampling, DeclinesInvalidLogits) {
  DS4_REQUIRE_GPU();
  ds4::cuda::DeviceSampler dev(kVocab);
  DeviceBuffer dl(kVocab * sizeof(float));
  SamplingParams p;
  p.seed = 3;
  Sampler s(p);
  std::mt19937 g(5);
  for (int kind = 0; kind < 3; ++kind) {
    auto logits = random_logits(g, false);
    if (kind == 0) logits[1234] = std::nanf("");
    if (kind == 1) logits[77] = std::numeric_limits<float>::infinity();
    if (kind == 2) std::fill(logits.begin(), logits.end(), kNegInf);
    dl.upload(logits.data(), logits.size() * sizeof(float));
    ds4::model::LogitsReduction red;
    EXPECT_FALSE(dev.reduce(dl.as<float>(), s.reduce_request({}, kVocab), red, nullptr)) << "kind " << kind;
    EXPECT_THROW(s.sample(logits), std::exception) << "kind " << kind;
  }
}

TEST(CudaSampling, SessionDecodeSamplesLikeTheHost) {
  DS4_REQUIRE_GPU();
  const auto gm = ds4::cuda::GpuModel::upload(e2e::model("dsv4-tiny-a-bf16", "bf16"), {.progress = false});
  const int64_t V = gm->hparams().n_vocab;
  std::vector<TokenId> tokens[2];
  std::vector<ds4::gen::StepLogprobs> lps[2];
  for (int device = 0; device < 2; ++device) {
    ds4::cuda::GpuSession s(*gm, {.max_ctx = 64, .numerics = ds4::model::Numerics::Exact});
    std::vector<TokenId> history = {5, 17, 9, 100};
    std::vector<float> logits(static_cast<size_t>(V));
    s.eval(history, ds4::model::LogitsMode::Last, logits.data());
    SamplingParams p;
    p.temperature = 1.3f;  // tiny-a's logits are flat: keep many candidates
    p.min_p = 0.01f;
    p.repetition_penalty = 1.1f;
    p.seed = 42;
    Sampler sampler(p);
    bool on_device = false;
    for (int i = 0; i < 24; ++i) {
      ds4::gen::StepLogprobs lp;
      const TokenId t = ds4::gen::sample_step(s, sampler, on_device, logits, history, 4, &lp);
      tokens[device].push_back(t);
      lps[device].push_back(lp);
      history.push_back(t);
      on_device = device == 1 && s.eval_keeping_logits(std::span(&t, 1));
      EXPECT_EQ(on_device, device == 1);
      if (!on_device) s.eval(std::span(&t, 1), ds4::model::LogitsMode::Last, logits.data());
    }
  }
  EXPECT_EQ(tokens[0], tokens[1]);
  for (size_t i = 0; i < lps[0].size(); ++i) {
    EXPECT_NEAR(lps[0][i].chosen.logprob, lps[1][i].chosen.logprob, 1e-5) << "step " << i;
    ASSERT_EQ(lps[0][i].top.size(), lps[1][i].top.size());
    for (size_t j = 0; j < lps[0][i].top.size(); ++j) EXPECT_EQ(lps[0][i].top[j].token, lps[1][i].top[j].token);
  }
}

}  // namespace
