// Token-exact agreement with the independent JavaScript implementation (@lenml/tokenizers) of
// the DeepSeek V3 tokenizer on a corpus of hard strings (tests/js/gen_tokenizer_corpus.js):
// a checked-in subset always, the full corpus when scripts/test-npm.sh has generated it.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "tokenizer/byte_level.h"
#include "vocab_fixture.h"

namespace {

struct Case {
  std::string text;
  std::vector<int32_t> ids;
};

std::vector<Case> read_cases(const std::string& path) {
  std::vector<Case> cases;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    cases.push_back({j["text"].get<std::string>(), j["ids"].get<std::vector<int32_t>>()});
  }
  return cases;
}

void check_agreement(const std::vector<Case>& cases) {
  const auto& t = ds4::test::v3_tokenizer();
  int mismatches = 0;
  for (const Case& c : cases) {
    auto ids = t.encode(c.text, true);
    if (ids != c.ids && ++mismatches <= 10) {
      ADD_FAILURE() << "mismatch for " << nlohmann::json(c.text).dump() << "\n  ours: " << nlohmann::json(ids).dump()
                    << "\n  js:   " << nlohmann::json(c.ids).dump();
    }
    // Lossless: decoding gives back the text (every corpus string is valid UTF-8).
    if (t.decode(ids) != c.text && ++mismatches <= 10) ADD_FAILURE() << "decode(encode(x)) != x for " << c.text;
  }
  EXPECT_EQ(mismatches, 0) << "of " << cases.size() << " strings";
}

}  // namespace

TEST(JsAgreement, CheckedInSubset) {
  DS4_REQUIRE_TOKENIZER_JSON();
  auto cases = read_cases(std::string(DS4_SOURCE_DIR) + "/tests/tokenizer/data/js_expected_small.jsonl");
  ASSERT_GE(cases.size(), 300u);
  check_agreement(cases);
}

TEST(JsAgreement, FullGeneratedCorpus) {
  DS4_REQUIRE_TOKENIZER_JSON();
  std::string path = std::string(DS4_SOURCE_DIR) + "/tests/js/out/tokenizer_expected.jsonl";
  if (!std::filesystem::exists(path))
    GTEST_SKIP() << path << " missing: run scripts/test-npm.sh (node + npm) to generate it";
  auto cases = read_cases(path);
  ASSERT_GE(cases.size(), 2000u);
  check_agreement(cases);
}

TEST(RealVocab, AppendixCVectors) {
  DS4_REQUIRE_TOKENIZER_JSON();
  const auto& v4 = ds4::test::v4_tokenizer();
  EXPECT_EQ(v4.vocab_size(), 129280);
  EXPECT_EQ(v4.encode("The capital of France is", true), (std::vector<int32_t>{671, 6102, 294, 8760, 344}));
  EXPECT_EQ(v4.encode("<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>", true),
            (std::vector<int32_t>{128803, 30594, 128804, 128821, 36101, 128822, 7624, 1}));
  EXPECT_EQ(v4.bos_id(), 0);
  EXPECT_EQ(v4.eos_id(), 1);
  EXPECT_EQ(v4.require("｜DSML｜"), 128825);
  EXPECT_EQ(v4.require("<｜latest_reminder｜>"), 128828);
  EXPECT_EQ(v4.require("<｜read_url｜>"), 128845);
  EXPECT_EQ(v4.require("<｜place▁holder▁no▁1279｜>"), 129279);
  EXPECT_EQ(v4.require("<｜tool▁sep｜>"), 128814);  // kept from V3
  // Special matching off: the same text is plain characters, and still round-trips.
  auto plain = v4.encode("<｜User｜><think>", false);
  for (int32_t id : plain) EXPECT_LT(id, 128000);
  EXPECT_EQ(v4.decode(plain), "<｜User｜><think>");
}

TEST(RealVocab, InvalidUtf8RoundTripsThroughByteTokens) {
  DS4_REQUIRE_TOKENIZER_JSON();
  const auto& t = ds4::test::v4_tokenizer();
  for (std::string s : {std::string("a\xff\xfe b"), std::string("\xe4\xbd"), std::string("x\0y", 3),
                        std::string("\xc0\xaf<｜User｜>\x80")}) {
    EXPECT_EQ(t.decode(t.encode(s, true)), s);
    EXPECT_EQ(t.decode(t.encode(s, false)), s);
  }
}
