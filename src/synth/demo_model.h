// The demo model: synth::preset("demo") with weights drawn from a seed (Fill::Floats, so a seed
// gives the same model in every recipe) and the complete DeepSeek V4 tokenizer, labelled as a
// demo in its metadata. It makes the README's main command (scripts/run.sh) work end to end on
// any machine without the real 80 GB weights: the text it writes is gibberish, but every stage
// (tokenizer, chat template, prefill, decode, sampling, streaming, KV snapshots) runs for real.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "convert/model_config.h"
#include "convert/recipe.h"
#include "synth/synthetic_model.h"
#include "tokenizer/tokenizer.h"

namespace ds4::synth {

struct DemoOptions {
  convert::Recipe recipe = convert::Recipe::Q2;
  uint64_t seed = 1;
  int threads = 0;  // 0 = all cores
  std::function<void(uint64_t, uint64_t)> progress;  // (bytes written, total)
};

// The demo preset with the real V4 tokenizer built from a V3 tokenizer.json (completed to V4's
// 129,280 ids; see tokenizer/v4_tokens.h). Writes atomically. Throws ds4::Error naming the file
// when the tokenizer cannot be read.
void write_demo_model(const std::string& path, const std::string& tokenizer_json_path,
                      const DemoOptions& opts = {});

// Any shape and tokenizer, labelled the same way (tests use a tiny shape and byte_tokenizer()).
// cfg.vocab is set to the tokenizer's size.
void write_demo_model(const std::string& path, convert::ModelConfig cfg, const tok::Tokenizer& tok,
                      const DemoOptions& opts = {});

// Appends the tokenizer's metadata to `w.extra_kv`, except the keys the model metadata of cfg
// already has (BOS/EOS). Throws ds4::Error when the tokenizer's size is not cfg.vocab.
void add_tokenizer(WriteOptions& w, const convert::ModelConfig& cfg, const tok::Tokenizer& tok);

// A minimal tokenizer with V4's special-token ids where they matter: BOS 0, EOS 1, pad 2, then
// the 256 single bytes (no merges: text is encoded byte by byte), then the structural tokens of
// the chat format (<｜User｜>, <｜Assistant｜>, <think>, </think>, ｜DSML｜, ...). Small enough
// for models that run in milliseconds in tests.
tok::Tokenizer byte_tokenizer();

}  // namespace ds4::synth
