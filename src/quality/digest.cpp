#include "quality/digest.h"

#include <openssl/evp.h>

#include <algorithm>

#include "core/error.h"
#include "gguf/gguf.h"

namespace ds4::quality {

Digest sha256(std::span<const uint8_t> bytes) {
  Digest d{};
  unsigned len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), d.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != d.size())
    fail("OpenSSL SHA-256 failed");
  return d;
}

std::string hex(const Digest& d) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(64);
  for (uint8_t b : d) {
    s.push_back(kHex[b >> 4]);
    s.push_back(kHex[b & 15]);
  }
  return s;
}

bool is_zero(const Digest& d) {
  return std::all_of(d.begin(), d.end(), [](uint8_t b) { return b == 0; });
}

Digest model_digest(const gguf::File& f) {
  const auto bytes = f.bytes();
  if (f.data_offset() > bytes.size()) fail("{}: data offset past the end of the file", f.path());
  return sha256(bytes.first(static_cast<size_t>(f.data_offset())));
}

Digest tokenizer_digest(const gguf::File& f) {
  if (!f.has("tokenizer.ggml.tokens")) return Digest{};
  std::vector<uint8_t> buf;
  for (const std::string& t : f.get_string_array("tokenizer.ggml.tokens")) {
    const auto n = static_cast<uint32_t>(t.size());
    for (int i = 0; i < 4; ++i) buf.push_back(static_cast<uint8_t>(n >> (8 * i)));
    buf.insert(buf.end(), t.begin(), t.end());
  }
  return sha256(buf);
}

std::string tokenizer_name(const Digest& d) { return is_zero(d) ? "none" : hex(d); }

Digest tokens_digest(std::span<const int32_t> tokens) {
  std::vector<uint8_t> buf;
  buf.reserve(tokens.size() * 4);
  for (int32_t t : tokens) {
    const auto u = static_cast<uint32_t>(t);
    for (int i = 0; i < 4; ++i) buf.push_back(static_cast<uint8_t>(u >> (8 * i)));
  }
  return sha256(buf);
}

}  // namespace ds4::quality
