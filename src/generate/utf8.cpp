#include "generate/utf8.h"

namespace ds4::gen {

size_t utf8_sequence_length(unsigned char b) {
  if (b < 0x80) return 1;
  if (b < 0xC0) return 0;  // continuation byte
  if (b < 0xE0) return 2;
  if (b < 0xF0) return 3;
  if (b < 0xF8) return 4;
  return 0;
}

size_t utf8_complete_prefix(std::string_view s) {
  const size_t n = s.size();
  // The last lead byte can be at most 3 bytes from the end for its character to be incomplete.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto b = static_cast<unsigned char>(s[n - back]);
    if ((b & 0xC0) == 0x80) continue;  // continuation: keep looking for the lead byte
    const size_t need = utf8_sequence_length(b);
    // A lead whose sequence needs more bytes than are present is an incomplete character; any
    // other byte (ASCII, a complete sequence, an invalid byte) ends the prefix cleanly.
    return need > back ? n - back : n;
  }
  return n;  // no lead byte in the last 3 bytes: nothing completable is pending
}

}  // namespace ds4::gen
