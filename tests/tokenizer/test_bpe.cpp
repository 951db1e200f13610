// BPE mechanics on a toy vocabulary (no external files).
#include <gtest/gtest.h>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

using namespace ds4::tok;

namespace {

// 256 byte tokens, then the merged tokens listed, then two added tokens.
Tokenizer toy(const std::vector<std::pair<std::string, std::string>>& merges) {
  std::vector<TokenInfo> toks;
  for (int b = 0; b < 256; ++b) toks.push_back({std::string(1, static_cast<char>(b)), TokenType::Normal});
  std::vector<std::pair<int32_t, int32_t>> mp;
  auto id_of = [&](const std::string& s) {
    for (size_t i = 0; i < toks.size(); ++i)
      if (toks[i].bytes == s && !toks[i].is_added()) return static_cast<int32_t>(i);
    toks.push_back({s, TokenType::Normal});
    return static_cast<int32_t>(toks.size() - 1);
  };
  for (const auto& [a, b] : merges) {
    int32_t ia = id_of(a), ib = id_of(b);
    id_of(a + b);
    mp.emplace_back(ia, ib);
  }
  toks.push_back({"<｜User｜>", TokenType::UserDefined});
  toks.push_back({"<｜User｜>x", TokenType::Control});
  return Tokenizer(std::move(toks), mp);
}

std::vector<std::string> pieces(const Tokenizer& t, std::string_view s, bool special = false) {
  std::vector<std::string> out;
  for (int32_t id : t.encode(s, special)) out.push_back(t.token_bytes(id));
  return out;
}

using V = std::vector<std::string>;

}  // namespace

TEST(Bpe, MergesByRankNotByPosition) {
  // "bc" has a better rank than "ab": abc -> a + bc, then no merge for (a, bc).
  Tokenizer t = toy({{"b", "c"}, {"a", "b"}});
  EXPECT_EQ(pieces(t, "abc"), (V{"a", "bc"}));
  Tokenizer u = toy({{"a", "b"}, {"b", "c"}});
  EXPECT_EQ(pieces(u, "abc"), (V{"ab", "c"}));
}

TEST(Bpe, TiesGoToTheLeftmostPair) {
  Tokenizer t = toy({{"a", "a"}});
  EXPECT_EQ(pieces(t, "aaa"), (V{"aa", "a"}));
  EXPECT_EQ(pieces(t, "aaaa"), (V{"aa", "aa"}));
  Tokenizer u = toy({{"a", "a"}, {"aa", "aa"}});
  EXPECT_EQ(pieces(u, "aaaaa"), (V{"aaaa", "a"}));
}

TEST(Bpe, ChainsOfMergesAndLongWords) {
  Tokenizer t = toy({{"l", "o"}, {"lo", "w"}, {"e", "r"}, {"low", "er"}});
  EXPECT_EQ(pieces(t, "lower"), (V{"lower"}));
  EXPECT_EQ(pieces(t, "lowest"), (V{"low", "e", "s", "t"}));
  // A 100,000-letter word stays fast and exact (the heap makes it O(n log n)).
  std::string big(100000, 'a');
  Tokenizer u = toy({{"a", "a"}, {"aa", "aa"}, {"aaaa", "aaaa"}});
  auto ids = u.encode(big, false);
  EXPECT_EQ(ids.size(), 100000u / 8);
  EXPECT_EQ(u.decode(ids), big);
}

TEST(Bpe, AddedTokensAreAtomicLongestFirstAndOptional) {
  Tokenizer t = toy({});
  EXPECT_EQ(pieces(t, "a<｜User｜>b", true), (V{"a", "<｜User｜>", "b"}));
  EXPECT_EQ(pieces(t, "<｜User｜>xy", true), (V{"<｜User｜>x", "y"}));  // longest match wins
  auto plain = t.encode("<｜User｜>", false);
  EXPECT_GT(plain.size(), 1u);
  EXPECT_EQ(t.decode(plain), "<｜User｜>");
  EXPECT_EQ(t.find("<｜User｜>"), 256);
}

TEST(Bpe, BadInputsThrow) {
  std::vector<TokenInfo> toks{{"a", TokenType::Normal}, {"b", TokenType::Normal}};
  EXPECT_THROW(Tokenizer(toks, {{0, 1}}), ds4::Error);  // "ab" missing from the vocabulary
  Tokenizer t(toks, {});
  EXPECT_THROW(t.encode("c", false), ds4::Error);       // no token for byte 'c'
  EXPECT_THROW(t.token_bytes(5), ds4::Error);
  EXPECT_THROW(t.require("zz"), ds4::Error);
}
