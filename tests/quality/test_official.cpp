// Official-continuation scoring (formats.md section 6): the parser on the real recorded
// vectors, and the teacher-forced scoring on a hand-made case with a tokenizer built here (the
// fixtures have none) and a mock logits source, so every expected number is computed by hand.
#include <gtest/gtest.h>
#include <gmock/gmock.h>

#include <cmath>

#include "chat/render.h"
#include "core/error.h"
#include "quality/distribution.h"
#include "quality/official.h"
#include "quality_util.h"
#include "tokenizer/tokenizer.h"

namespace q = ds4::quality;
using ds4::tok::TokenInfo;
using ds4::tok::TokenType;

namespace qt {

// Specials at 0..5 (BOS 0 and EOS 1, as the fixtures' config), bytes at 6..261, then "Ad" and
// "Ada" by merges: small enough for a 512-id fixture model.
inline ds4::tok::Tokenizer tiny_tokenizer() {
  std::vector<TokenInfo> t = {{"<｜begin▁of▁sentence｜>", TokenType::Control},
                              {"<｜end▁of▁sentence｜>", TokenType::Control},
                              {"<｜User｜>", TokenType::UserDefined},
                              {"<｜Assistant｜>", TokenType::UserDefined},
                              {"</think>", TokenType::UserDefined},
                              {"<think>", TokenType::UserDefined}};
  for (int b = 0; b < 256; ++b) t.push_back({std::string(1, static_cast<char>(b)), TokenType::Normal});
  t.push_back({"Ad", TokenType::Normal});
  t.push_back({"Ada", TokenType::Normal});
  const int32_t A = 6 + 'A', d = 6 + 'd', a = 6 + 'a';
  return ds4::tok::Tokenizer(std::move(t), {{A, d}, {262, a}});
}

}  // namespace qt

namespace {

const char* kCase = R"({"schema": "ds4-official-logprobs-v1", "id": "hand", "prompt": "Who?",
  "usage": {"prompt_tokens": 9},
  "steps": [{"token": {"text": "Ada", "bytes": [65, 100, 97]}, "logprob": 0.0},
            {"token": {"text": " ", "bytes": [32]}, "logprob": -0.5},
            {"token": {"text": "L", "bytes": [76]}, "logprob": -1.0}]})";

TEST(QualityOfficial, ParsesTheRecordedVectors) {
  const auto cases = q::load_official_dir(std::string(DS4_SHARED_DIR) + "/test-vectors");
  ASSERT_EQ(cases.size(), 5u);
  const auto it = std::find_if(cases.begin(), cases.end(), [](const auto& c) { return c.id == "short_italian_fact"; });
  ASSERT_NE(it, cases.end());
  EXPECT_EQ(it->prompt, "Rispondi in italiano con una frase: chi era Ada Lovelace?");
  EXPECT_EQ(it->api_prompt_tokens, 21);
  ASSERT_EQ(it->steps.size(), 4u);
  EXPECT_EQ(it->steps[0].bytes, "Ada");
  EXPECT_EQ(it->steps[1].bytes, " Lov");
}

TEST(QualityOfficial, RejectsBadJson) {
  EXPECT_THROW(q::parse_official_json("{", "x"), ds4::Error);
  EXPECT_THROW(q::parse_official_json(R"({"schema": "other"})", "x"), ds4::Error);
  EXPECT_THROW(q::parse_official_json(R"({"schema": "ds4-official-logprobs-v1", "id": "a", "prompt": "p", "steps": []})", "x"),
               ds4::Error);
  EXPECT_THROW(q::parse_official_json(R"({"schema": "ds4-official-logprobs-v1", "id": "a", "prompt": "p",
      "steps": [{"token": {"bytes": [300]}, "logprob": 0}]})", "x"), ds4::Error);
}

TEST(QualityOfficial, ScoreArithmetic) {
  // Three steps; the argmax is the target at steps 0 and 2 but not 1: first match, LCP 1.
  const std::vector<std::vector<float>> rows = {{0, 2, 0}, {3, 0, 0}, {0, 0, 1}};
  const std::vector<int32_t> targets = {1, 2, 2};
  q::CaseScore s;
  q::score_targets(rows, targets, s);
  auto lp = [](const std::vector<float>& r, int i) {
    double z = 0;
    for (float x : r) z += std::exp(static_cast<double>(x));
    return static_cast<double>(r[static_cast<size_t>(i)]) - std::log(z);
  };
  EXPECT_NEAR(s.nll, -(lp(rows[0], 1) + lp(rows[1], 2) + lp(rows[2], 2)), 1e-12);
  EXPECT_TRUE(s.first_match);
  EXPECT_EQ(s.greedy_lcp, 1);
  EXPECT_NEAR(s.avg_nll(), s.nll / 3, 1e-15);
  const auto sum = q::summarize({s, s});
  EXPECT_EQ(sum.tokens, 6);
  EXPECT_EQ(sum.first_matches, 2);
  EXPECT_NEAR(sum.avg_nll(), s.avg_nll(), 1e-15);
  EXPECT_THAT(q::to_tsv({s}), ::testing::HasSubstr("\t3\t"));
}

TEST(QualityOfficial, TeacherForcedCaseWithMockLogits) {
  const auto tok = qt::tiny_tokenizer();
  const q::OfficialCase c = q::parse_official_json(kCase, "hand");
  qt::MockLogits src(512);
  const q::CaseScore s = q::score_case(src, tok, c);
  // BOS <｜User｜> W h o ? <｜Assistant｜> </think>
  EXPECT_EQ(s.prompt_tokens, 8);
  EXPECT_EQ(s.api_prompt_tokens, 9);
  EXPECT_EQ(s.target_tokens, 3);
  // By hand: the sequence fed and each target's row.
  std::vector<int32_t> seq = ds4::chat::render_single_turn(tok, "", "Who?", ds4::chat::Thinking::Off);
  ASSERT_EQ(seq.size(), 8u);
  EXPECT_EQ(seq.front(), 0);
  EXPECT_EQ(seq.back(), 4);
  const std::vector<int32_t> targets = {263, 6 + ' ', 6 + 'L'};
  double nll = 0;
  int64_t lcp = 0;
  bool prefix = true;
  std::vector<float> row(512);
  std::vector<double> lp(512);
  for (size_t i = 0; i < targets.size(); ++i) {
    src.row(seq, row.data());
    q::log_softmax(row, lp);
    nll -= lp[static_cast<size_t>(targets[i])];
    prefix = prefix && q::argmax(lp) == targets[i];
    lcp += prefix ? 1 : 0;
    seq.push_back(targets[i]);
  }
  EXPECT_NEAR(s.nll, nll, 1e-9);
  EXPECT_EQ(s.greedy_lcp, lcp);

  q::OfficialCase bad = c;
  bad.steps[1].bytes = "\xff\xfe";  // not a token of this vocabulary
  EXPECT_THROW(q::score_case(src, tok, bad), ds4::Error);
}

}  // namespace

namespace {

// The same scoring through the real engine on the fixture model (its ids 0..263 are the tiny
// tokenizer's), against a direct Session evaluation with log-softmax computed here.
TEST(QualityOfficial, TeacherForcedOnFixtureModel) {
  const auto tok = qt::tiny_tokenizer();
  const q::OfficialCase c = q::parse_official_json(kCase, "hand");
  const auto& m = qt::model("dsv4-tiny-k-bf16", "bf16");
  auto src = q::model_logits(m, 64, false);
  const q::CaseScore s = q::score_case(*src, tok, c);

  std::vector<int32_t> seq = ds4::chat::render_single_turn(tok, "", "Who?", ds4::chat::Thinking::Off);
  const std::vector<int32_t> targets = {263, 6 + ' ', 6 + 'L'};
  const size_t P = seq.size();
  seq.insert(seq.end(), targets.begin(), targets.end() - 1);
  ds4::model::Session sess(m, {.max_ctx = 64});
  const auto V = static_cast<size_t>(m.hparams().n_vocab);
  std::vector<float> logits(seq.size() * V);
  sess.eval(seq, ds4::model::LogitsMode::All, logits.data());
  double nll = 0;
  std::vector<double> lp(V);
  for (size_t i = 0; i < targets.size(); ++i) {
    q::log_softmax(std::span<const float>(logits).subspan((P - 1 + i) * V, V), lp);
    nll -= lp[static_cast<size_t>(targets[i])];
  }
  EXPECT_EQ(s.prompt_tokens, static_cast<int64_t>(P));
  EXPECT_NEAR(s.nll, nll, 1e-6 * nll);
  EXPECT_GT(s.nll, 0);
}

}  // namespace
