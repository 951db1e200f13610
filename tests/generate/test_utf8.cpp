#include <gtest/gtest.h>

#include <string>

#include "generate/utf8.h"

namespace ds4::gen {
namespace {

TEST(Utf8, SequenceLength) {
  EXPECT_EQ(utf8_sequence_length('a'), 1u);
  EXPECT_EQ(utf8_sequence_length(0xC3), 2u);
  EXPECT_EQ(utf8_sequence_length(0xE4), 3u);
  EXPECT_EQ(utf8_sequence_length(0xF0), 4u);
  EXPECT_EQ(utf8_sequence_length(0x80), 0u);
  EXPECT_EQ(utf8_sequence_length(0xFF), 0u);
}

TEST(Utf8, CompletePrefixCutsOnlyACompletableTail) {
  const std::string e_acute = "\xC3\xA9";          // é
  const std::string han = "\xE4\xB8\xAD";          // 中
  const std::string smile = "\xF0\x9F\x98\x80";    // 😀
  for (const std::string& ch : {e_acute, han, smile}) {
    const std::string s = "ab" + ch;
    EXPECT_EQ(utf8_complete_prefix(s), s.size());
    for (size_t cut = 1; cut < ch.size(); ++cut)
      EXPECT_EQ(utf8_complete_prefix(s.substr(0, 2 + cut)), 2u) << ch << " cut " << cut;
  }
  EXPECT_EQ(utf8_complete_prefix(""), 0u);
  EXPECT_EQ(utf8_complete_prefix("\xF0"), 0u);
  // Invalid bytes pass through: nothing later could complete them.
  EXPECT_EQ(utf8_complete_prefix("a\x80"), 2u);
  EXPECT_EQ(utf8_complete_prefix("a\xC3z"), 3u);
  EXPECT_EQ(utf8_complete_prefix("\xFF"), 1u);
  EXPECT_EQ(utf8_complete_prefix("\x80\x80\x80\x80"), 4u);
}

}  // namespace
}  // namespace ds4::gen
