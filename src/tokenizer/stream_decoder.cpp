#include "tokenizer/stream_decoder.h"

#include <algorithm>

#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer.h"

namespace ds4::tok {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the longest prefix of s (at most 3 bytes, starting at a lead byte) that could
// still become a valid character with more bytes; 0 if s[0] can never start one.
size_t incomplete_prefix(std::string_view s) {
  size_t need = utf8_expected_length(static_cast<uint8_t>(s[0]));
  if (need <= 1 || s.size() >= need) return 0;
  // Check that the bytes present are a valid beginning (same rules as a full sequence).
  std::string probe(s);
  while (probe.size() < need) probe += '\x80';
  // A padded probe fails only when a present byte is wrong, except for the second-byte
  // range check, which the padding byte 0x80 may itself fail (E0, F0 need >= A0/90).
  if (s.size() == 1) return 1;
  return utf8_sequence_length(probe) == need ? s.size() : 0;
}

}  // namespace

std::string sanitize_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t n = utf8_sequence_length(s.substr(i));
    if (n > 0) {
      out.append(s.substr(i, n));
      i += n;
      continue;
    }
    // One U+FFFD for a maximal incomplete prefix, else for the single bad byte (the
    // WHATWG / Unicode "substitution of maximal subparts" practice).
    size_t k = 1;
    for (size_t j = std::min<size_t>(3, s.size() - i); j >= 2; --j) {
      if (incomplete_prefix(s.substr(i, j)) == j) {
        k = j;
        break;
      }
    }
    out.append(kReplacement);
    i += k;
  }
  return out;
}

std::string StreamDecoder::push(int32_t id) { return push_bytes(tok_->token_bytes(id)); }

std::string StreamDecoder::push_bytes(std::string_view bytes) {
  pending_.append(bytes);
  // Hold back a trailing incomplete character (at most the last 3 bytes).
  size_t keep = 0;
  for (size_t back = 1; back <= 3 && back <= pending_.size(); ++back) {
    size_t at = pending_.size() - back;
    auto b = static_cast<uint8_t>(pending_[at]);
    if ((b & 0xc0) == 0x80) continue;  // continuation byte: keep looking for the lead
    size_t need = utf8_expected_length(b);
    if (need > back && incomplete_prefix(std::string_view(pending_).substr(at)) == back) keep = back;
    break;
  }
  std::string out = sanitize_utf8(std::string_view(pending_).substr(0, pending_.size() - keep));
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = sanitize_utf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace ds4::tok
