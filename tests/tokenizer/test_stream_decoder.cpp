#include <gtest/gtest.h>

#include "tokenizer/byte_level.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"

using namespace ds4::tok;

namespace {
Tokenizer bytes_only() {
  std::vector<TokenInfo> toks;
  for (int b = 0; b < 256; ++b) toks.push_back({std::string(1, static_cast<char>(b)), TokenType::Normal});
  return Tokenizer(std::move(toks), {});
}
}  // namespace

TEST(StreamDecoder, HoldsBackIncompleteCharacters) {
  Tokenizer t = bytes_only();
  StreamDecoder d(t);
  std::string text = "a😀b你c";
  std::string out;
  for (unsigned char c : text) {
    std::string piece = d.push(c);
    EXPECT_TRUE(is_valid_utf8(piece));
    out += piece;
  }
  out += d.flush();
  EXPECT_EQ(out, text);
  // Nothing comes out while the emoji is incomplete.
  StreamDecoder e(t);
  EXPECT_EQ(e.push(0xF0), "");
  EXPECT_EQ(e.push(0x9F), "");
  EXPECT_EQ(e.push(0x98), "");
  EXPECT_EQ(e.pending(), 3u);
  EXPECT_EQ(e.push(0x80), "😀");
}

TEST(StreamDecoder, NeverEmitsBrokenUtf8) {
  Tokenizer t = bytes_only();
  StreamDecoder d(t);
  std::string out;
  for (int b : {0xE4, 0x41, 0xFF, 0x80, 0xF0, 0x9F}) out += d.push(b);
  out += d.flush();
  EXPECT_TRUE(is_valid_utf8(out));
  EXPECT_EQ(out, "\xEF\xBF\xBD" "A\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(StreamDecoder, RandomByteStreamsStayValid) {
  Tokenizer t = bytes_only();
  uint32_t x = 12345;
  for (int round = 0; round < 200; ++round) {
    StreamDecoder d(t);
    std::string all, out;
    for (int i = 0; i < 64; ++i) {
      x = x * 1664525u + 1013904223u;
      // Bias towards UTF-8-looking bytes so that valid characters do occur.
      int b = (x >> 24) % 4 == 0 ? static_cast<int>(x >> 16) & 0xff : 0x80 | ((x >> 8) & 0x3f);
      if ((x >> 4) % 7 == 0) b = 0xE4;
      all += static_cast<char>(b);
      std::string p = d.push(b);
      ASSERT_TRUE(is_valid_utf8(p));
      out += p;
    }
    out += d.flush();
    ASSERT_TRUE(is_valid_utf8(out));
    if (is_valid_utf8(all)) {
      EXPECT_EQ(out, all);
    }
    // Valid input passes unchanged; otherwise streaming equals one-shot sanitizing.
    EXPECT_EQ(out, sanitize_utf8(all));
  }
}
