// Acceptance: the quantized recipes against the float64 reference, in exact numerics (so the
// only difference is the weight quantization). q8 is checked on both tiny fixtures; the
// routed-expert recipes need K-quant-friendly widths, so they run on dsv4-tiny-k.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <tuple>
#include <vector>

#include "e2e_util.h"

using ds4::model::Numerics;

namespace {

// Why the bounds are loose (tests/ablation decomposes the q8 error; docs/quality.md, "Where
// the q8 error comes from"): about two thirds of it are changed discrete choices — q8 changes the
// routed experts of 25 % / 11 % of the tokens and the indexer top-k of 44 % of the scored queries,
// and pinning them to the float model's choices leaves 0.076 / 0.072 — and the rest is the random
// model's gain of ~10 from relative weight error to logits (Q8_0 weights with float activations
// and pinned choices: 0.057 / 0.051). The fixtures guarantee their choices only to 5e-6 relative
// margin, so the "q8 within 2e-2" is not reachable on them by any Q8_0 engine; the tests
// assert the measured values with margin instead:
//   q8    tiny-a: rel 0.234, KL 0.026, top-1 0.73   tiny-k: rel 0.202, KL 0.020, top-1 0.77
//   q4    tiny-k: rel 0.371, KL 0.069, top-1 0.50
//   mxfp4 tiny-k: rel 0.485, KL 0.119, top-1 0.41
//   q2    tiny-k: rel 0.900, KL 0.415, top-1 0.10
struct Measured {
  double rel = 0, kl = 0, top1 = 0;
};

Measured measure(const std::string& fixture, const std::string& recipe) {
  const auto& m = e2e::model(fixture, recipe);
  Measured r;
  const auto cases = e2e::load_cases(fixture);
  double n = 0;
  for (const auto& c : cases) {
    const auto out = e2e::run(m, c.tokens, Numerics::Exact);
    const auto a = e2e::agreement(out, c.logits, m.hparams().n_vocab);
    r.rel = std::max(r.rel, e2e::rel_err(out, c.logits));
    r.kl += a.kl * static_cast<double>(c.tokens.size());
    r.top1 += a.top1 * static_cast<double>(c.tokens.size());
    n += static_cast<double>(c.tokens.size());
  }
  r.kl /= n;
  r.top1 /= n;
  std::printf("%s %s: max rel err %.3e, mean KL %.3e, top-1 agreement %.4f\n", fixture.c_str(),
              recipe.c_str(), r.rel, r.kl, r.top1);
  ::testing::Test::RecordProperty(recipe + "_rel_err", std::to_string(r.rel));
  ::testing::Test::RecordProperty(recipe + "_kl", std::to_string(r.kl));
  ::testing::Test::RecordProperty(recipe + "_top1", std::to_string(r.top1));
  return r;
}

TEST(Quantized, Q8Bounds) {
  for (const char* f : {"dsv4-tiny-a-bf16", "dsv4-tiny-k-bf16"}) {
    const Measured q8 = measure(f, "q8");
    EXPECT_LT(q8.rel, 0.3) << f;
    EXPECT_LT(q8.kl, 0.04) << f;
    EXPECT_GT(q8.top1, 0.65) << f;
  }
}

// The decomposition on the issue's own criterion: with every discrete choice (routed experts,
// indexer top-k) pinned to the bf16 model's through the decision hook, q8 is 0.076 / 0.072 —
// a third of the unpinned error, still above 2e-2 (the rest is the model's gain on the Q8_0
// rounding; tests/ablation takes it apart further).
TEST(Quantized, Q8WithPinnedDecisions) {
  for (const char* f : {"dsv4-tiny-a-bf16", "dsv4-tiny-k-bf16"}) {
    using Key = std::tuple<int, int64_t, int64_t>;  // (case, layer, position)
    std::map<Key, std::vector<int32_t>> experts, rows;
    const auto cases = e2e::load_cases(f);
    auto run = [&](const ds4::model::Model& m, bool record, int64_t* changed) {
      double rel = 0;
      for (size_t ci = 0; ci < cases.size(); ++ci) {
        auto hook = [&, ci](std::map<Key, std::vector<int32_t>>& seen) {
          return [&, ci](int64_t il, int64_t pos, const float*, int64_t, int32_t* ids, int64_t k) {
            std::vector<int32_t>& ref = seen[Key{static_cast<int>(ci), il, pos}];
            std::vector<int32_t> got(ids, ids + k);
            std::sort(got.begin(), got.end());
            if (record) {
              ref = got;
              return;
            }
            ASSERT_EQ(ref.size(), got.size()) << "no bf16 choice for layer " << il << " position " << pos;
            if (got != ref) ++*changed;
            std::copy(ref.begin(), ref.end(), ids);
          };
        };
        ds4::model::Session s(m, {.max_ctx = 4096, .numerics = Numerics::Exact});
        s.set_decision_hook({.experts = hook(experts), .rows = hook(rows)});
        std::vector<float> out(cases[ci].logits.size());
        s.eval(cases[ci].tokens, ds4::model::LogitsMode::All, out.data());
        rel = std::max(rel, e2e::rel_err(out, cases[ci].logits));
      }
      return rel;
    };
    int64_t changed = 0;
    EXPECT_LT(run(e2e::model(f, "bf16"), true, &changed), 1e-4) << f;
    const double pinned = run(e2e::model(f, "q8"), false, &changed);
    const double free = measure(f, "q8").rel;
    std::printf("%s q8 with bf16 decisions pinned: max rel err %.3e (%lld choices pinned back)\n",
                f, pinned, static_cast<long long>(changed));
    EXPECT_GT(changed, 100) << f;
    EXPECT_GT(pinned, 0.04) << f;
    EXPECT_LT(pinned, 0.10) << f;
    EXPECT_LT(pinned, 0.45 * free) << f;
  }
}

TEST(Quantized, Q2AndQ4Bounds) {
  const Measured q4 = measure("dsv4-tiny-k-bf16", "q4");
  const Measured q2 = measure("dsv4-tiny-k-bf16", "q2");
  EXPECT_LT(q4.rel, 0.45);
  EXPECT_LT(q4.kl, 0.1);
  EXPECT_GT(q4.top1, 0.4);
  EXPECT_LT(q2.rel, 1.1);
  EXPECT_LT(q2.kl, 0.6);
  EXPECT_GT(q2.top1, 0.05);
  EXPECT_LT(q4.rel, q2.rel) << "q4 should be closer to the reference than q2";
  EXPECT_LT(q4.kl, q2.kl);
}

TEST(Quantized, Mxfp4) {
  const Measured mx = measure("dsv4-tiny-k-bf16", "mxfp4");
  EXPECT_LT(mx.rel, 0.6);
  EXPECT_LT(mx.kl, 0.16);
  EXPECT_GT(mx.top1, 0.3);
}

}  // namespace
