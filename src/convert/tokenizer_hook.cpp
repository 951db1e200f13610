#include "convert/tokenizer_hook.h"

#include "core/error.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer.h"

namespace ds4::convert {

std::vector<gguf::KeyValue> tokenizer_metadata(const std::string& tokenizer_json_path,
                                               uint32_t vocab_size) {
  // The tokenizer module owns the tokenizer.json parsing and the GGUF vocabulary layout; the
  // converter only forwards its keys. DeepSeek V4 ships V3's tokenizer.json, which the module
  // completes to V4's added tokens; a model whose vocabulary is the file's own (a small test
  // model) takes the file as it is.
  tok::Tokenizer t = tok::Tokenizer::from_tokenizer_json(tokenizer_json_path);
  if (static_cast<uint32_t>(t.vocab_size()) != vocab_size)
    t = tok::Tokenizer::from_tokenizer_json(tokenizer_json_path, {.complete_v4_vocab = false});
  if (static_cast<uint32_t>(t.vocab_size()) != vocab_size)
    fail("{} defines {} tokens but config.json's vocab_size is {}", tokenizer_json_path,
         t.vocab_size(), vocab_size);
  return tok::tokenizer_kv(t);
}

}  // namespace ds4::convert
