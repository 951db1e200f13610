// Incremental detokenization for streaming output: a byte-level token can end in the middle
// of a UTF-8 character (emoji and CJK are often split over 2-3 tokens), so the bytes of an
// incomplete character are held back until the token that completes it arrives. What comes
// out is always valid UTF-8: bytes that can never form a character become U+FFFD.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ds4::tok {

class Tokenizer;

class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(&tok) {}

  // Returns the text that became complete with this token (possibly empty).
  std::string push(int32_t id);
  // Same for raw bytes (used by push; also useful for pieces not coming from token ids).
  std::string push_bytes(std::string_view bytes);
  // End of stream: the held-back bytes, each incomplete character as one U+FFFD.
  std::string flush();
  // Bytes currently held back (0..3).
  size_t pending() const { return pending_.size(); }

 private:
  const Tokenizer* tok_;
  std::string pending_;
};

// Replaces every invalid or incomplete UTF-8 sequence in `s` with U+FFFD.
std::string sanitize_utf8(std::string_view s);

}  // namespace ds4::tok
