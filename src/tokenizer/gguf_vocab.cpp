#include "tokenizer/gguf_vocab.h"

#include <fstream>

#include "core/error.h"
#include "tokenizer/byte_level.h"

namespace ds4::tok {

Tokenizer tokenizer_from_gguf(const gguf::File& file) {
  const std::string& model = file.get_string("tokenizer.ggml.model");
  if (model != "gpt2") fail("{}: tokenizer.ggml.model is '{}', expected 'gpt2' (byte-level BPE)", file.path(), model);
  if (const gguf::Value* pre = file.find("tokenizer.ggml.pre")) {
    const std::string& p = pre->as_string("tokenizer.ggml.pre");
    // DeepSeek V3 GGUFs say "deepseek-v3"; both use the same three passes.
    if (p != "joyai-llm" && p != "deepseek-v3")
      fail("{}: tokenizer.ggml.pre is '{}', only DeepSeek's 'joyai-llm' pre-tokenizer is implemented", file.path(), p);
  }
  std::vector<std::string> texts = file.get_string_array("tokenizer.ggml.tokens");
  std::vector<TokenType> types(texts.size(), TokenType::Normal);
  if (const gguf::Value* tt = file.find("tokenizer.ggml.token_type")) {
    const auto& arr = tt->as_array("tokenizer.ggml.token_type");
    if (arr.size() != texts.size())
      fail("{}: tokenizer.ggml.token_type has {} entries for {} tokens", file.path(), arr.size(), texts.size());
    for (size_t i = 0; i < arr.size(); ++i) {
      int64_t v = arr[i].as_i64("tokenizer.ggml.token_type");
      if (v < 1 || v > 6) fail("{}: token {} has unknown type {}", file.path(), i, v);
      types[i] = static_cast<TokenType>(v);
    }
  }
  std::vector<TokenInfo> tokens(texts.size());
  std::unordered_map<std::string, int32_t> by_text;
  by_text.reserve(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    TokenType ty = types[i];
    if (ty == TokenType::Normal || ty == TokenType::Byte) {
      auto b = byte_level_to_bytes(texts[i]);
      if (!b) fail("{}: token {} '{}' is not in the byte-level alphabet", file.path(), i, texts[i]);
      tokens[i] = TokenInfo{std::move(*b), ty};
      by_text.emplace(texts[i], static_cast<int32_t>(i));
    } else {
      tokens[i] = TokenInfo{texts[i], ty};
    }
  }
  std::vector<std::pair<int32_t, int32_t>> merges;
  if (file.has("tokenizer.ggml.merges")) {
    std::vector<std::string> ms = file.get_string_array("tokenizer.ggml.merges");
    merges.reserve(ms.size());
    for (size_t r = 0; r < ms.size(); ++r) {
      const std::string& s = ms[r];
      size_t sp = s.find(' ');
      auto a = sp == std::string::npos ? by_text.end() : by_text.find(s.substr(0, sp));
      auto b = sp == std::string::npos ? by_text.end() : by_text.find(s.substr(sp + 1));
      if (a == by_text.end() || b == by_text.end())
        fail("{}: tokenizer.ggml.merges[{}] '{}' does not name two tokens", file.path(), r, s);
      merges.emplace_back(a->second, b->second);
    }
  }
  return Tokenizer(std::move(tokens), merges);
}

std::vector<gguf::KeyValue> tokenizer_kv(const Tokenizer& t) {
  std::vector<std::string> texts;
  std::vector<int32_t> types;
  texts.reserve(t.vocab_size());
  types.reserve(t.vocab_size());
  for (int32_t id = 0; id < t.vocab_size(); ++id) {
    const TokenInfo& ti = t.token(id);
    bool byte_level = ti.type == TokenType::Normal || ti.type == TokenType::Byte;
    texts.push_back(byte_level ? bytes_to_byte_level(ti.bytes) : ti.bytes);
    types.push_back(static_cast<int32_t>(ti.type));
  }
  std::vector<std::string> merges;
  auto pairs = t.merge_pairs();
  merges.reserve(pairs.size());
  for (auto [a, b] : pairs)
    merges.push_back(bytes_to_byte_level(t.token_bytes(a)) + " " + bytes_to_byte_level(t.token_bytes(b)));

  std::vector<gguf::KeyValue> kv;
  kv.push_back({"tokenizer.ggml.model", gguf::Value::string("gpt2")});
  kv.push_back({"tokenizer.ggml.pre", gguf::Value::string("joyai-llm")});
  kv.push_back({"tokenizer.ggml.tokens", gguf::Value::string_array(texts)});
  kv.push_back({"tokenizer.ggml.token_type", gguf::Value::i32_array(types)});
  kv.push_back({"tokenizer.ggml.merges", gguf::Value::string_array(merges)});
  kv.push_back({"tokenizer.ggml.bos_token_id", gguf::Value::u32(static_cast<uint32_t>(t.bos_id()))});
  kv.push_back({"tokenizer.ggml.eos_token_id", gguf::Value::u32(static_cast<uint32_t>(t.eos_id()))});
  if (auto pad = t.find("<｜▁pad▁｜>"))
    kv.push_back({"tokenizer.ggml.padding_token_id", gguf::Value::u32(static_cast<uint32_t>(*pad))});
  kv.push_back({"tokenizer.ggml.add_bos_token", gguf::Value::boolean(true)});
  kv.push_back({"tokenizer.ggml.add_eos_token", gguf::Value::boolean(false)});
  return kv;
}

Tokenizer load_tokenizer(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open tokenizer file {}", path);
  char magic[4] = {};
  f.read(magic, 4);
  if (f.gcount() == 4 && std::string_view(magic, 4) == "GGUF") {
    f.close();
    return tokenizer_from_gguf(gguf::File::open(path));
  }
  f.close();
  return Tokenizer::from_tokenizer_json(path);
}

}  // namespace ds4::tok
