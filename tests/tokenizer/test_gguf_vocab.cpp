// Tokenizer <-> GGUF metadata: what ds4-quantize embeds must load back as the same tokenizer.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "core/error.h"
#include "tokenizer/gguf_vocab.h"
#include "vocab_fixture.h"

using namespace ds4::tok;

namespace {

std::string temp_path(const char* name) {
  return (std::filesystem::temp_directory_path() / (std::string(name) + "-" + std::to_string(::getpid()) + ".gguf")).string();
}

void write_gguf(const std::string& path, const Tokenizer& t) {
  ds4::gguf::Writer w(path);
  w.add_kv("general.architecture", ds4::gguf::Value::string("deepseek4"));
  add_tokenizer_kv(w, t);
  w.begin_data();
  w.finish();
}

Tokenizer toy() {
  std::vector<TokenInfo> toks;
  for (int b = 0; b < 256; ++b) toks.push_back({std::string(1, static_cast<char>(b)), TokenType::Normal});
  toks.push_back({"he", TokenType::Normal});
  toks.push_back({"hell", TokenType::Normal});
  toks.push_back({"ll", TokenType::Normal});
  toks.push_back({"<｜begin▁of▁sentence｜>", TokenType::Control});
  toks.push_back({"<｜User｜>", TokenType::UserDefined});
  toks.push_back({"", TokenType::Unused});
  return Tokenizer(std::move(toks), {{'h', 'e'}, {'l', 'l'}, {256, 258}});
}

}  // namespace

TEST(GgufVocab, KeysFollowLlamaCppConventions) {
  Tokenizer t = toy();
  auto kv = tokenizer_kv(t);
  auto get = [&](std::string_view k) -> const ds4::gguf::Value& {
    for (const auto& e : kv)
      if (e.key == k) return e.value;
    throw ds4::Error("missing " + std::string(k));
  };
  EXPECT_EQ(get("tokenizer.ggml.model").as_string(), "gpt2");
  EXPECT_EQ(get("tokenizer.ggml.pre").as_string(), "joyai-llm");
  const auto& tokens = get("tokenizer.ggml.tokens").as_array();
  ASSERT_EQ(tokens.size(), 262u);
  EXPECT_EQ(tokens[' '].as_string(), "Ġ");  // byte-level alphabet for BPE tokens
  EXPECT_EQ(tokens[260].as_string(), "<｜User｜>");  // added tokens as text
  const auto& types = get("tokenizer.ggml.token_type").as_array();
  EXPECT_EQ(types[259].as_i64(), 3);
  EXPECT_EQ(types[260].as_i64(), 4);
  EXPECT_EQ(types[261].as_i64(), 5);
  const auto& merges = get("tokenizer.ggml.merges").as_array();
  ASSERT_EQ(merges.size(), 3u);
  EXPECT_EQ(merges[2].as_string(), "he ll");
  EXPECT_EQ(get("tokenizer.ggml.bos_token_id").as_u64(), 259u);
}

TEST(GgufVocab, WriteReadRoundTripAndSniffing) {
  Tokenizer t = toy();
  std::string path = temp_path("ds4-tok-toy");
  write_gguf(path, t);
  Tokenizer back = load_tokenizer(path);  // sniffs the GGUF magic
  std::filesystem::remove(path);
  EXPECT_EQ(back.vocab_size(), t.vocab_size());
  for (std::string s : {"hello", "<｜User｜>hell", "\xff\x01 x"}) EXPECT_EQ(back.encode(s, true), t.encode(s, true)) << s;
  EXPECT_EQ(back.encode("hello", false), (std::vector<int32_t>{257, 'o'}));
  EXPECT_EQ(back.merge_pairs(), t.merge_pairs());
  EXPECT_EQ(back.token_type(261), TokenType::Unused);
  EXPECT_THROW(load_tokenizer(path + ".missing"), ds4::Error);
}

TEST(GgufVocab, RealVocabularyRoundTrip) {
  DS4_REQUIRE_TOKENIZER_JSON();
  const Tokenizer& t = ds4::test::v4_tokenizer();
  std::string path = temp_path("ds4-tok-v4");
  write_gguf(path, t);
  Tokenizer back = load_tokenizer(path);
  std::filesystem::remove(path);
  ASSERT_EQ(back.vocab_size(), 129280);
  for (int32_t id : {0, 1, 2, 100, 127999, 128803, 128821, 128825, 129279}) {
    EXPECT_EQ(back.token_bytes(id), t.token_bytes(id)) << id;
    EXPECT_EQ(back.token_type(id), t.token_type(id)) << id;
  }
  std::string s = "<｜User｜>你好 world\n\tint x = 12345; 😀<think>";
  EXPECT_EQ(back.encode(s, true), t.encode(s, true));
  EXPECT_EQ(back.encode(s, false), t.encode(s, false));
}

TEST(GgufVocab, RejectsOtherTokenizers) {
  std::string path = temp_path("ds4-tok-bad");
  {
    ds4::gguf::Writer w(path);
    w.add_kv("tokenizer.ggml.model", ds4::gguf::Value::string("llama"));
    w.add_kv("tokenizer.ggml.tokens", ds4::gguf::Value::string_array({"a"}));
    w.begin_data();
    w.finish();
  }
  EXPECT_THROW(load_tokenizer(path), ds4::Error);
  std::filesystem::remove(path);
  std::ofstream(path) << "{not json";
  EXPECT_THROW(load_tokenizer(path), ds4::Error);
  std::filesystem::remove(path);
}
