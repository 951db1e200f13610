#include <gtest/gtest.h>

#include "tokenizer/byte_level.h"
#include "tokenizer/stream_decoder.h"

using namespace ds4::tok;

TEST(ByteLevel, Gpt2AlphabetRoundTripsEveryByte) {
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  std::string bl = bytes_to_byte_level(all);
  EXPECT_TRUE(is_valid_utf8(bl));
  EXPECT_EQ(byte_level_to_bytes(bl), all);
  EXPECT_EQ(bytes_to_byte_level(" "), "Ġ");
  EXPECT_EQ(bytes_to_byte_level("\n"), "Ċ");
  EXPECT_EQ(bytes_to_byte_level("a!~"), "a!~");
  EXPECT_FALSE(byte_level_to_bytes("你").has_value());
  EXPECT_FALSE(byte_level_to_bytes("\xff").has_value());
}

TEST(ByteLevel, Utf8Validation) {
  EXPECT_TRUE(is_valid_utf8("héllo 你好 😀"));
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xe4\xbd"));          // truncated
  EXPECT_FALSE(is_valid_utf8("\x80"));
  EXPECT_EQ(utf8_sequence_length("😀x"), 4u);
}

TEST(ByteLevel, SanitizeReplacesMaximalSubparts) {
  EXPECT_EQ(sanitize_utf8("ok"), "ok");
  EXPECT_EQ(sanitize_utf8("a\xe4\xbd" "b"), "a\xEF\xBF\xBD" "b");  // one U+FFFD for E4 BD
  EXPECT_EQ(sanitize_utf8("\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(sanitize_utf8("\xf0\x9f\x98"), "\xEF\xBF\xBD");
}
