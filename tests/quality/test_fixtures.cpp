// ds4-quality on the converted fixture models: perplexity against a direct computation, a
// model compared with itself, the recipes ordered by what they cost (q8 < q4 < q2 on
// dsv4-tiny-k, whose expert width admits every recipe), the top-K bound, the per-tensor error
// against the checkpoint, and the program itself.
#include <gtest/gtest.h>
#include <gmock/gmock.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "gguf/gguf.h"
#include "quality/compare.h"
#include "quality/digest.h"
#include "quality/distribution.h"
#include "quality/reference.h"
#include "quality/tensor_error.h"
#include "quality/windows.h"
#include "quality_util.h"

namespace q = ds4::quality;
using ds4::model::LogitsMode;
using ds4::model::Numerics;

namespace {

constexpr const char* kTinyK = "dsv4-tiny-k-bf16";
// The stated tolerance of the top-64 KL on tiny-k: at least 0.4 of the full KL. Measured 0.45
// (q8) and 0.51 (q2): the random fixtures' distributions are flat (the top 64 of 512 ids hold
// 45 % of the mass, printed below), so the rest bucket hides about half of the KL; the gap
// shrinks with the reference's mass outside the top K (docs/quality.md).
constexpr double kTopKTolerance = 0.4;

// The first n tokens of the fixture's long reference case.
std::vector<int32_t> fixture_tokens(size_t n) {
  std::ifstream in(qt::fixture_dir(kTinyK) + "/reference.json");
  const auto j = nlohmann::json::parse(in);
  std::vector<int32_t> t;
  for (const auto& x : j.at("cases").at(0).at("tokens")) t.push_back(x.get<int32_t>());
  t.resize(std::min(n, t.size()));
  return t;
}

// Sum of -log p(target) over a window plan, each window a fresh Session fed in one call,
// log-softmax computed here in double.
double direct_nll(const ds4::model::Model& m, const std::vector<int32_t>& tokens,
                  const q::WindowOptions& opt, int64_t& n) {
  const int64_t V = m.hparams().n_vocab;
  double nll = 0;
  n = 0;
  for (const auto& w : q::plan_windows(static_cast<int64_t>(tokens.size()), opt)) {
    ds4::model::Session s(m, {.max_ctx = opt.ctx, .numerics = Numerics::Official});
    const std::span<const int32_t> win(tokens.data() + w.begin, static_cast<size_t>(w.end - w.begin));
    std::vector<float> logits(win.size() * static_cast<size_t>(V));
    s.eval(win, LogitsMode::All, logits.data());
    for (int64_t t = w.first_target; t < w.end; ++t) {
      const float* row = logits.data() + (t - 1 - w.begin) * V;
      double mx = row[0];
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, static_cast<double>(row[v]));
      double z = 0;
      for (int64_t v = 0; v < V; ++v) z += std::exp(row[v] - mx);
      nll -= row[tokens[static_cast<size_t>(t)]] - mx - std::log(z);
      ++n;
    }
  }
  return nll;
}

TEST(QualityFixture, PerplexityMatchesDirectComputation) {
  const auto& m = qt::model(kTinyK, "bf16");
  const auto tokens = fixture_tokens(48);
  for (const q::WindowOptions opt : {q::WindowOptions{.ctx = 64, .stride = 32}, q::WindowOptions{.ctx = 16, .stride = 6}}) {
    int64_t n = 0;
    const double nll = direct_nll(m, tokens, opt, n);
    auto src = q::model_logits(m, opt.ctx, false);
    const q::Perplexity p = q::perplexity(*src, tokens, opt);
    EXPECT_EQ(p.n_scored, n);
    EXPECT_EQ(p.n_scored, 47) << "every token but the first is scored once";
    EXPECT_NEAR(p.nll_sum, nll, 1e-6 * nll) << "ctx " << opt.ctx;
    EXPECT_GT(p.ppl(), 1.0);
  }
}

struct Refs {
  q::Reference full, top64;
};

const Refs& bf16_refs() {
  static const Refs r = [] {
    const auto& m = qt::model(kTinyK, "bf16");
    const auto tokens = fixture_tokens(128);
    const q::WindowOptions opt{.ctx = 64, .stride = 32};
    const auto md = q::model_digest(m.file()), td = q::tokenizer_digest(m.file());
    auto src = q::model_logits(m, opt.ctx, false);
    Refs out;
    out.full = q::deserialize(q::serialize(q::make_reference(*src, tokens, opt, 0, md, td)), "full");
    out.top64 = q::deserialize(q::serialize(q::make_reference(*src, tokens, opt, 64, md, td)), "top64");
    return out;
  }();
  return r;
}

q::CompareResult compare_recipe(const std::string& recipe, const q::Reference& ref) {
  const auto& m = qt::model(kTinyK, recipe);
  auto src = q::model_logits(m, ref.windows.ctx, false);
  return q::compare(*src, ref);
}

TEST(QualityFixture, ModelAgainstItself) {
  const auto& ref = bf16_refs().full;
  EXPECT_EQ(q::tokenizer_name(ref.tokenizer), "none");
  const auto r = compare_recipe("bf16", ref);
  EXPECT_EQ(r.positions.size(), 127u);
  EXPECT_LT(r.mean_kl, 1e-6) << "only the f32 storage of the reference's log-probs differs";
  EXPECT_LT(r.max_kl, 1e-5);
  EXPECT_EQ(r.top1_agreement, 1.0);
  EXPECT_EQ(r.same_top_p, 1.0);
  EXPECT_EQ(r.top_p_jaccard, 1.0);
  EXPECT_NEAR(r.ppl_ratio, 1.0, 1e-5);
  EXPECT_LT(r.max_abs_delta_top_lp, 1e-5);
}

TEST(QualityFixture, RecipesOrderedByCost) {
  const auto& ref = bf16_refs().full;
  const auto q8 = compare_recipe("q8", ref), q4 = compare_recipe("q4", ref), q2 = compare_recipe("q2", ref);
  for (const auto* r : {&q8, &q4, &q2})
    std::printf("mean KL %.4g p99 %.4g top-1 %.3f same-top-p %.3f jaccard %.3f ppl ratio %.4f\n",
                r->mean_kl, r->p99_kl, r->top1_agreement, r->same_top_p, r->top_p_jaccard, r->ppl_ratio);
  EXPECT_GT(q8.mean_kl, 1e-4);
  EXPECT_LT(q8.mean_kl, q4.mean_kl);
  EXPECT_LT(q4.mean_kl, q2.mean_kl);
  EXPECT_LT(q8.p99_kl, q2.p99_kl);
  EXPECT_GT(q8.top1_agreement, q2.top1_agreement);
  EXPECT_GT(q8.top_p_jaccard, q2.top_p_jaccard);
  EXPECT_LT(std::abs(q8.ppl_ratio - 1), std::abs(q2.ppl_ratio - 1));
  EXPECT_LT(q8.mean_abs_delta_top_lp, q2.mean_abs_delta_top_lp);
}

TEST(QualityFixture, TopKBoundOnFixture) {
  // Bucketed KL <= full KL at every position (log-sum inequality), and close to it in the mean.
  for (const char* recipe : {"q8", "q2"}) {
    const auto full = compare_recipe(recipe, bf16_refs().full);
    const auto top = compare_recipe(recipe, bf16_refs().top64);
    ASSERT_EQ(full.positions.size(), top.positions.size());
    for (size_t i = 0; i < full.positions.size(); ++i)
      EXPECT_LE(top.positions[i].kl, full.positions[i].kl + 1e-6) << recipe << " position " << i;
    double rest = 0;
    for (const auto& p : bf16_refs().top64.positions) rest += std::exp(static_cast<double>(p.top.rest_lp));
    rest /= static_cast<double>(bf16_refs().top64.positions.size());
    std::printf("%s: full KL %.5g, top-64 KL %.5g (ratio %.3f), mean reference mass outside the top 64: %.3f\n",
                recipe, full.mean_kl, top.mean_kl, top.mean_kl / full.mean_kl, rest);
    EXPECT_GE(top.mean_kl, kTopKTolerance * full.mean_kl) << recipe;
    EXPECT_EQ(top.top1_agreement, full.top1_agreement);
    EXPECT_NEAR(top.ppl_ratio, full.ppl_ratio, 1e-5);
  }
}

TEST(QualityFixture, TensorErrorAgainstCheckpoint) {
  const auto dir = qt::fixture_dir(kTinyK);
  auto report = [&](const char* recipe) {
    const auto f = ds4::gguf::File::open(qt::converted(kTinyK, recipe));
    return q::tensor_errors(f, dir, 2);
  };
  auto role = [](const q::TensorReport& r, const std::string& k) {
    for (const auto& [name, e] : r.by_role)
      if (name == k) return e;
    ADD_FAILURE() << "no role " << k;
    return q::ErrorSums{};
  };
  const auto bf16 = report("bf16");
  for (const auto& t : bf16.tensors) EXPECT_EQ(t.err.max_abs, 0.0) << t.name << " (bf16 is lossless)";
  const auto q8 = report("q8"), q4 = report("q4"), q2 = report("q2");
  const double e8 = role(q8, "expert_gate").rel_rms(), e4 = role(q4, "expert_gate").rel_rms(),
               e2 = role(q2, "expert_gate").rel_rms();
  std::printf("expert_gate rel RMS: q8 %.4g q4 %.4g q2 %.4g\n", e8, e4, e2);
  EXPECT_GT(e8, 0);
  EXPECT_LT(e8, 0.01);
  EXPECT_LT(e8, e4);
  EXPECT_LT(e4, e2);
  EXPECT_EQ(role(q2, "vector").max_abs, 0.0) << "vectors stay F32 in every recipe";
  EXPECT_EQ(q2.by_layer.front().first, -1);
  EXPECT_EQ(q2.tensors.size(), bf16.tensors.size());
  EXPECT_THAT(q::to_csv(q2), ::testing::HasSubstr("blk.0.ffn_gate_exps.weight,expert_gate,IQ2_XXS,0,"));
}

}  // namespace
