#include "convert/tokenizer_hook.h"

#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer.h"

namespace ds4::convert {

std::vector<gguf::KeyValue> tokenizer_metadata(const std::string& tokenizer_json_path) {
  // The tokenizer module owns the tokenizer.json parsing and the GGUF vocabulary layout; the
  // converter only forwards its keys.
  const tok::Tokenizer t = tok::Tokenizer::from_tokenizer_json(tokenizer_json_path);
  return tok::tokenizer_kv(t);
}

}  // namespace ds4::convert
