// DeepSeek V4 tokenizer: byte-level BPE with the joyai-llm pre-tokenizer and atomically matched
// added tokens (architecture.md 7.1-7.2). Tokens are held as raw bytes; added tokens as their
// UTF-8 content. Loadable from a GGUF (tokenizer.ggml.*) or a Hugging Face tokenizer.json, and
// exportable into GGUF metadata (gguf_vocab.h).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/pretokenizer.h"

namespace ds4::tok {

// GGUF token types (llama.cpp's numbering, stored in tokenizer.ggml.token_type).
enum class TokenType : int32_t {
  Normal = 1,
  Unknown = 2,
  Control = 3,      // special added token (BOS, EOS, placeholders)
  UserDefined = 4,  // added token not flagged special (<｜User｜>, <think>, ｜DSML｜ ...)
  Unused = 5,
  Byte = 6,
};

struct TokenInfo {
  std::string bytes;  // raw bytes of a BPE token, or the UTF-8 content of an added token
  TokenType type = TokenType::Normal;
  bool is_added() const { return type == TokenType::Control || type == TokenType::UserDefined; }
};

// Options for building the vocabulary from a V3-style tokenizer.json.
struct JsonLoadOptions {
  // Complete the vocabulary to DeepSeek V4's 129,280 ids with V4's added tokens (<think>,
  // ｜DSML｜, ...) and placeholders where the V4 table is unknown (v4_tokens.h). Ids that the
  // file already defines are kept. Off: the file's vocabulary exactly (e.g. to compare with
  // another implementation of the V3 tokenizer).
  bool complete_v4_vocab = true;
};

class Tokenizer {
 public:
  // `tokens[id]`; merges as pairs of token ids in rank order (the merged token must exist).
  Tokenizer(std::vector<TokenInfo> tokens, const std::vector<std::pair<int32_t, int32_t>>& merges);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  static Tokenizer from_tokenizer_json(const std::string& path, const JsonLoadOptions& opt = {});
  static Tokenizer from_tokenizer_json_text(std::string_view json, const JsonLoadOptions& opt = {});

  // Text -> ids. With `allow_special`, added tokens written in the text become their ids
  // (leftmost-longest, before BPE, all added tokens, as Hugging Face does); without it the
  // text is tokenized as plain characters, so user text can never forge a control token.
  std::vector<int32_t> encode(std::string_view text, bool allow_special) const;
  void encode_append(std::string_view text, bool allow_special, std::vector<int32_t>& out) const;

  // Ids -> bytes (not necessarily valid UTF-8 when cut mid-character; see StreamDecoder).
  // Throws on an id outside the vocabulary.
  std::string decode(std::span<const int32_t> ids) const;
  const std::string& token_bytes(int32_t id) const;

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  TokenType token_type(int32_t id) const;
  const TokenInfo& token(int32_t id) const;
  // Exact lookup of a token by its raw bytes / content (added tokens first).
  std::optional<int32_t> find(std::string_view bytes) const;
  // As find(), but throws "tokenizer has no token NAME".
  int32_t require(std::string_view bytes) const;

  // Merges in rank order as (left, right) token ids.
  std::vector<std::pair<int32_t, int32_t>> merge_pairs() const;

  // Drops the memo of already-encoded words (benchmarks of cold encoding; memory).
  void clear_cache() const;

  int32_t bos_id() const { return bos_; }
  int32_t eos_id() const { return eos_; }

 private:
  struct Impl;
  std::vector<TokenInfo> tokens_;
  std::unique_ptr<Impl> impl_;
  int32_t bos_ = 0;
  int32_t eos_ = 1;
};

// Loads a tokenizer from a GGUF model file or a tokenizer.json, deciding by the file's first
// bytes ("GGUF" magic vs. JSON). Defined in gguf_vocab.cpp.
Tokenizer load_tokenizer(const std::string& path);

}  // namespace ds4::tok
