// Identities written into a reference dump (reference.h), so a comparison can refuse a
// reference that was computed on another text or with another tokenizer: SHA-256 of the
// model's GGUF header and tensor table, of its token strings, and of the token ids scored.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ds4::gguf {
class File;
}

namespace ds4::quality {

using Digest = std::array<uint8_t, 32>;

Digest sha256(std::span<const uint8_t> bytes);
std::string hex(const Digest& d);
bool is_zero(const Digest& d);

// SHA-256 of bytes [0, data_offset) of the GGUF: metadata and tensor table, i.e. everything
// that names the model and its types, without reading the (possibly 80 GB of) weights.
Digest model_digest(const gguf::File& f);

// SHA-256 of the token strings (tokenizer.ggml.tokens, each as u32 length + bytes, in id
// order), or all zeros when the file carries no tokenizer (printed as "none").
Digest tokenizer_digest(const gguf::File& f);
std::string tokenizer_name(const Digest& d);  // hex, or "none" for the zero digest

// SHA-256 of the token ids as little-endian int32.
Digest tokens_digest(std::span<const int32_t> tokens);

}  // namespace ds4::quality
