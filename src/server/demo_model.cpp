#include "server/demo_model.h"

#include <set>

#include "convert/model_config.h"
#include "synth/demo_model.h"
#include "synth/presets.h"
#include "synth/synthetic_model.h"
#include "tokenizer/gguf_vocab.h"

namespace ds4::server {

void write_demo_model(const std::string& path, const std::string& tokenizer_json) {
  convert::ModelConfig cfg = synth::preset("demo");
  tok::Tokenizer tok = tokenizer_json.empty() ? synth::byte_tokenizer() : tok::Tokenizer::from_tokenizer_json(tokenizer_json);
  if (tokenizer_json.empty()) {
    cfg.n_layers = 4;
    cfg.compress_ratios = {0, 0, 4, 4};
    cfg.sliding_window = 8;
    cfg.n_experts = 2;
    cfg.n_experts_used = 2;
  }
  cfg.vocab = static_cast<uint32_t>(tok.vocab_size());
  synth::WriteOptions w;
  w.name = "DeepSeek-V4 demo (random weights)";
  w.recipe = convert::Recipe::Q8;
  w.fill = synth::Fill::Floats;
  w.threads = 2;
  w.extra_kv.push_back({synth::kSyntheticKey,
                        gguf::Value::string("demo model for ds4-server: random weights, its text is gibberish")});
  // The model metadata may already carry the BOS/EOS ids: the tokenizer must not repeat them.
  std::set<std::string> have;
  for (const auto& kv : convert::model_metadata(cfg, w.name)) have.insert(kv.key);
  for (auto& kv : tok::tokenizer_kv(tok))
    if (!have.count(kv.key)) w.extra_kv.push_back(std::move(kv));
  synth::write_gguf(path, cfg, w);
}

}  // namespace ds4::server
