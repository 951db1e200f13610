// The tokenizer in GGUF metadata (llama.cpp's tokenizer.ggml.* keys, formats.md): reading it
// from a model file and writing it when ds4-quantize builds one. BPE tokens are stored in the
// byte-level alphabet, added tokens as their text, merges as "left right" byte-level strings.
#pragma once

#include <vector>

#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace ds4::tok {

// Builds the tokenizer from tokenizer.ggml.{model, tokens, token_type, merges}; throws
// ds4::Error naming the key when one is missing or malformed.
Tokenizer tokenizer_from_gguf(const gguf::File& file);

// The metadata describing `t`: tokenizer.ggml.model = "gpt2", .pre = "joyai-llm", .tokens,
// .token_type, .merges, .bos_token_id, .eos_token_id, .padding_token_id, .add_bos_token,
// .add_eos_token.
std::vector<gguf::KeyValue> tokenizer_kv(const Tokenizer& t);

// Adds tokenizer_kv(t) to a GGUF being written (header-only so that readers of this file do
// not need the writer).
inline void add_tokenizer_kv(gguf::Writer& w, const Tokenizer& t) {
  for (auto& kv : tokenizer_kv(t)) w.add_kv(std::move(kv.key), std::move(kv.value));
}

}  // namespace ds4::tok
