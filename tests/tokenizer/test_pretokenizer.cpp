// The three joyai-llm passes (architecture.md 7.1), checked on the effects the spec names.
#include <gtest/gtest.h>

#include "tokenizer/pretokenizer.h"

using ds4::tok::PreTokenizer;
using V = std::vector<std::string>;

namespace {
V split(std::string_view s) {
  static const PreTokenizer pre;
  V out;
  pre.split(s, [&](std::string_view p) { out.emplace_back(p); });
  return out;
}
}  // namespace

TEST(PreTokenizer, SpecExamples) {
  EXPECT_EQ(split("    int"), (V{"   ", " int"}));
  EXPECT_EQ(split(">;\n"), (V{">;\n"}));
  EXPECT_EQ(split("a.foo _bar"), (V{"a", ".foo", " _", "bar"}));  // a space breaks the glue
  EXPECT_EQ(split("_bar.baz"), (V{"_bar", ".baz"}));
  EXPECT_EQ(split("1234567"), (V{"123", "456", "7"}));
  EXPECT_EQ(split("hello world"), (V{"hello", " world"}));
}

TEST(PreTokenizer, PassesAreOrderedNotOneAlternation) {
  // A leading space never joins a CJK run (pass 2 isolates the run first).
  EXPECT_EQ(split("a 你好"), (V{"a", " ", "你好"}));
  // Katakana middle dot is punctuation: pass 3 splits the CJK run from pass 2.
  EXPECT_EQ(split("カタ・カナ"), (V{"カタ", "・", "カナ"}));
  EXPECT_EQ(split("x12y"), (V{"x", "12", "y"}));
}

TEST(PreTokenizer, WhitespaceRuns) {
  EXPECT_EQ(split("a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(split("a \n\n b"), (V{"a", " \n\n", " b"}));
  EXPECT_EQ(split("end   "), (V{"end", "   "}));
}

TEST(PreTokenizer, PiecesTileTheInputEvenWhenInvalidUtf8) {
  for (std::string s : {std::string("ok\xff\xfe bad \xe4\xbd"), std::string("\x80"), std::string("a\0b", 3),
                        std::string("é\xc3")}) {
    std::string joined;
    for (const auto& p : split(s)) {
      EXPECT_FALSE(p.empty());
      joined += p;
    }
    EXPECT_EQ(joined, s);
  }
}
