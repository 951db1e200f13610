// UTF-8 boundaries for streamed text. Tokens are byte-level BPE pieces (architecture.md 7.1),
// so one character can arrive split over several tokens; a stream must never hand a client half a
// character (clients substitute U+FFFD and later replay the corrupted text, breaking prefix
// caching: peer-ds4.md 2.4).
#pragma once

#include <cstddef>
#include <string_view>

namespace ds4::gen {

// Length in bytes of the sequence introduced by lead byte `b`: 1..4, or 0 when `b` cannot start a
// character (a continuation byte 10xxxxxx, or 0xF8..0xFF).
size_t utf8_sequence_length(unsigned char b);

// Length of the longest prefix of `s` that does not end inside a character that could still be
// completed by bytes yet to come. Only a truncated but so-far well-formed tail is cut: invalid
// bytes are passed through (holding them would stall the stream forever, since no later byte can
// repair them). s.size() - result is therefore 0..3.
size_t utf8_complete_prefix(std::string_view s);

}  // namespace ds4::gen
