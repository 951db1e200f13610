// GPT-2 byte-level alphabet and UTF-8 helpers (architecture.md 7.1).
// Byte-level BPE vocabularies store every token as a string of printable code points, one per
// byte, through the `bytes_to_unicode` table; DwarfStar keeps tokens as raw bytes internally
// and converts only at the file boundary (tokenizer.json, GGUF).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ds4::tok {

// Raw bytes -> GPT-2 byte-level string ("\n" -> "Ċ", " " -> "Ġ").
std::string bytes_to_byte_level(std::string_view bytes);
// Inverse; nullopt when a code point is not in the byte-level alphabet or the input is not
// valid UTF-8.
std::optional<std::string> byte_level_to_bytes(std::string_view text);

// Length in bytes of the complete, valid UTF-8 sequence starting at s[0], or 0 when s does not
// start with one (invalid lead, bad continuation, overlong, surrogate, > U+10FFFF, truncated).
size_t utf8_sequence_length(std::string_view s);
// Bytes a sequence with lead byte `b` would need (1..4), or 0 for a byte that cannot lead.
size_t utf8_expected_length(uint8_t b);
bool is_valid_utf8(std::string_view s);
// Appends the UTF-8 encoding of code point cp (must be a valid scalar value).
void append_utf8(std::string& out, uint32_t cp);

}  // namespace ds4::tok
