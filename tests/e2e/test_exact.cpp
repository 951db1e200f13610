// Acceptance: `exact` numerics reproduce the float64 reference logits of the tiny V4 fixtures
// (converted losslessly to bf16), for full prefill, token-by-token decode and chunked prefill.
#include <gtest/gtest.h>

#include "e2e_util.h"

using ds4::model::Numerics;

namespace {

constexpr double kTol = 1e-4;  // fixtures/README.md: float32 engines land well under this

TEST(Exact, LayerOutputsCase0) {
  const auto& m = e2e::model("dsv4-tiny-a-bf16", "bf16");
  const auto cases = e2e::load_cases("dsv4-tiny-a-bf16");
  const auto& c = cases.at(0);
  ASSERT_FALSE(c.layer_out.empty());
  const auto& hp = m.hparams();
  const int64_t T = static_cast<int64_t>(c.tokens.size()), row = hp.n_hc * hp.n_embd;
  std::vector<float> got(static_cast<size_t>(hp.n_layers * T * row));
  ds4::model::Session s(m, {.max_ctx = 4096, .numerics = Numerics::Exact});
  s.set_layer_hook([&](int64_t il, int64_t p0, int64_t n, const float* H) {
    std::copy_n(H, n * row, got.data() + (il * T + p0) * row);
  });
  std::vector<float> logits(static_cast<size_t>(T * hp.n_vocab));
  s.eval(c.tokens, ds4::model::LogitsMode::All, logits.data());
  for (int64_t il = 0; il < hp.n_layers; ++il) {
    const double e = e2e::rel_err(got.data() + il * T * row, c.layer_out.data() + il * T * row,
                                  static_cast<size_t>(T * row));
    RecordProperty("layer_" + std::to_string(il) + "_rel_err", std::to_string(e));
    std::printf("layer %lld: rel err %.3e\n", static_cast<long long>(il), e);
    EXPECT_LT(e, kTol) << "layer " << il << " output differs from the reference";
  }
}

struct ExactParam {
  const char* fixture;
  size_t batch;  // 0 = whole sequence in one eval
};

class ExactLogits : public ::testing::TestWithParam<ExactParam> {};

TEST_P(ExactLogits, MatchReference) {
  const auto p = GetParam();
  const auto& m = e2e::model(p.fixture, "bf16");
  const auto cases = e2e::load_cases(p.fixture);
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto out = e2e::run(m, cases[i].tokens, Numerics::Exact, p.batch);
    const double e = e2e::rel_err(out, cases[i].logits);
    std::printf("%s case %zu batch %zu: rel err %.3e\n", p.fixture, i, p.batch, e);
    EXPECT_LT(e, kTol) << p.fixture << " case " << i << " batch " << p.batch;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, ExactLogits,
    ::testing::Values(ExactParam{"dsv4-tiny-a-bf16", 0}, ExactParam{"dsv4-tiny-a-bf16", 1},
                      ExactParam{"dsv4-tiny-a-bf16", 7}, ExactParam{"dsv4-tiny-a-fp8", 0},
                      ExactParam{"dsv4-tiny-a-fp8", 1}, ExactParam{"dsv4-tiny-a-fp8", 7},
                      ExactParam{"dsv4-tiny-k-bf16", 0}),
    [](const ::testing::TestParamInfo<ExactParam>& pi) {
      std::string n = pi.param.fixture;
      for (char& ch : n)
        if (ch == '-') ch = '_';
      return n + "_batch" + std::to_string(pi.param.batch);
    });

}  // namespace
