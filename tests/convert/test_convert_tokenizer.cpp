// A checkpoint with a tokenizer.json gets the tokenizer.ggml.* keys (through the tokenizer
// module); a vocabulary that does not match config.json is refused.
#include <gtest/gtest.h>

#include <string>

#include "convert/convert.h"
#include "convert_test_util.h"
#include "core/error.h"
#include "gguf/gguf.h"

namespace ds4::convert {
namespace {

using namespace testing;
using nlohmann::json;

// GPT-2's byte-level alphabet: printable Latin-1 bytes map to themselves, the rest to U+0100+n.
std::vector<std::string> byte_level_alphabet() {
  std::vector<std::string> out(256);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    const int cp = printable ? b : 256 + n++;
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    out[static_cast<size_t>(b)] = s;
  }
  return out;
}

// BOS 0, EOS 1, 256 byte tokens, then `n_merges` two-letter tokens.
json tiny_tokenizer(int n_merges) {
  json vocab = json::object();
  const auto bytes = byte_level_alphabet();
  for (int b = 0; b < 256; ++b) vocab[bytes[static_cast<size_t>(b)]] = 2 + b;
  json merges = json::array();
  for (int i = 0; i < n_merges; ++i) {
    const std::string l(1, static_cast<char>('a' + i / 26)), r(1, static_cast<char>('a' + i % 26));
    vocab[l + r] = 258 + i;
    merges.push_back(l + " " + r);
  }
  auto split = [](const char* re) -> json {
    return json{{"type", "Split"}, {"pattern", {{"Regex", re}}}, {"behavior", "Isolated"},
                {"invert", false}};
  };
  return json{
      {"added_tokens",
       json::array({json{{"id", 0}, {"content", "<｜begin▁of▁sentence｜>"}, {"special", true}},
                    json{{"id", 1}, {"content", "<｜end▁of▁sentence｜>"}, {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array({split("\\p{N}{1,3}"), split("[一-龥]+"), split("\\s+"),
                      json{{"type", "ByteLevel"}, {"add_prefix_space", false},
                           {"trim_offsets", true}, {"use_regex", false}}})}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
}

std::string with_tokenizer(const TempDir& tmp, int n_merges) {
  const EditableCheckpoint c = EditableCheckpoint::load(fixture("dsv4-tiny-a-bf16"));
  const std::string d = tmp.file("tok" + std::to_string(n_merges));
  c.write(d);
  std::ofstream(d + "/tokenizer.json") << tiny_tokenizer(n_merges).dump();
  return d;
}

TEST(ConvertTokenizer, AddsTokenizerKeys) {
  TempDir tmp;
  ConvertOptions o;
  o.input_dir = with_tokenizer(tmp, 254);  // 2 + 256 + 254 = vocab 512
  o.output_path = tmp.file("t.gguf");
  o.recipe = "bf16";
  convert_checkpoint(o);
  const gguf::File f = gguf::File::open(o.output_path);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), "joyai-llm");
  const auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 512u);
  EXPECT_EQ(tokens[0], "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.merges").size(), 254u);
  EXPECT_EQ(f.get_u32("tokenizer.ggml.bos_token_id"), 0u);
  EXPECT_EQ(f.get_u32("tokenizer.ggml.eos_token_id"), 1u);
}

TEST(ConvertTokenizer, RefusesVocabularyOfOtherSize) {
  TempDir tmp;
  ConvertOptions o;
  o.input_dir = with_tokenizer(tmp, 10);
  o.output_path = tmp.file("t.gguf");
  o.recipe = "f32";
  try {
    convert_checkpoint(o);
    FAIL() << "accepted a 268-token tokenizer for a 512-token model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("268"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("512"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(o.output_path));
}

}  // namespace
}  // namespace ds4::convert
