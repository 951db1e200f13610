// The reference dump of `ds4-quality dump`: a reference model's log-probabilities at every
// scored position of a token stream, to compare other models against without re-running the
// reference (docs/quality.md has the layout). Little-endian:
//
//   "DS4QREF\0"  u32 version (1)  u32 mode (0 full, 1 top-K)  u32 K  u32 n_vocab
//   i64 ctx  i64 stride  u64 n_tokens  u64 n_positions
//   32 B model SHA-256  32 B tokenizer SHA-256 (zeros: none)  32 B token-ids SHA-256
//   n_tokens x i32 token ids
//   n_positions records: i64 target position, f32 log p(target), then
//     full:  n_vocab x f32 log-probabilities
//     top-K: K x (i32 id, f32 log-prob) in descending order, f32 log(rest mass)
//   32 B SHA-256 of every byte before it
//
// The token ids are stored (not only hashed) so `compare` needs nothing but the model and
// this file; the hashes let it refuse a model with another tokenizer or a text that differs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quality/digest.h"
#include "quality/distribution.h"
#include "quality/windows.h"

namespace ds4::quality {

inline constexpr uint32_t kRefVersion = 1;

struct RefPosition {
  int64_t target = 0;
  float target_lp = 0;
  std::vector<float> full;  // full mode: n_vocab log-probs
  TopK top;                 // top-K mode
};

struct Reference {
  bool full = false;
  uint32_t k = 0;
  uint32_t n_vocab = 0;
  WindowOptions windows;
  Digest model{}, tokenizer{}, tokens_sha{};
  std::vector<int32_t> tokens;
  std::vector<RefPosition> positions;
};

// Runs `src` over `tokens` in windows and records every scored position (k = 0: full).
Reference make_reference(LogitsSource& src, const std::vector<int32_t>& tokens,
                         const WindowOptions& opt, uint32_t k, const Digest& model,
                         const Digest& tokenizer);

std::vector<uint8_t> serialize(const Reference& r);
// Validates magic, version, sizes, checksum, the token hash and every id; throws ds4::Error
// saying what is wrong ("truncated", "checksum mismatch", "version 7, this build reads 1").
Reference deserialize(const std::vector<uint8_t>& bytes, const std::string& what);

void save_reference(const Reference& r, const std::string& path);
Reference load_reference(const std::string& path);

}  // namespace ds4::quality
