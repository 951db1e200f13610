// Tiny demo models for the generation and CLI tests: the demo shape cut down to 4 layers, a
// short sliding window (so that truncation limits show up within a few dozen tokens), and the
// byte tokenizer (272 ids), so a forward pass takes well under a millisecond.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>

#include "model/model.h"
#include "synth/demo_model.h"
#include "synth/presets.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/tokenizer.h"

namespace clitest {

namespace fs = std::filesystem;

inline fs::path temp_dir() {
  static const fs::path d = [] {
    fs::path p = fs::temp_directory_path() / ("ds4-cli-test-" + std::to_string(::getpid()));
    fs::create_directories(p);
    return p;
  }();
  return d;
}

inline ds4::convert::ModelConfig tiny_config() {
  auto cfg = ds4::synth::preset("demo");
  cfg.n_layers = 4;
  cfg.compress_ratios = {0, 0, 4, 4};
  cfg.sliding_window = 8;
  cfg.n_experts = 2;
  cfg.n_experts_used = 2;
  return cfg;
}

// The tiny model of `seed`, written once per process.
inline std::string tiny_model(uint64_t seed = 1) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  const fs::path p = temp_dir() / ("tiny-" + std::to_string(seed) + ".gguf");
  if (!fs::exists(p)) {
    ds4::synth::DemoOptions o;
    o.recipe = ds4::convert::Recipe::Q8;
    o.seed = seed;
    o.threads = 2;
    ds4::synth::write_demo_model(p.string(), tiny_config(), ds4::synth::byte_tokenizer(), o);
  }
  return p.string();
}

struct Loaded {
  ds4::model::Model model;
  ds4::tok::Tokenizer tok;
};

inline const Loaded& tiny(uint64_t seed = 1) {
  static std::mutex mu;
  static std::unique_ptr<Loaded> a, b;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = seed == 1 ? a : b;
  if (!slot) {
    auto m = ds4::model::Model::load(tiny_model(seed), {.threads = 2});
    auto t = ds4::tok::tokenizer_from_gguf(m.file());
    slot = std::make_unique<Loaded>(Loaded{std::move(m), std::move(t)});
  }
  return *slot;
}

}  // namespace clitest
