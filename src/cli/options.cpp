#include <CLI/CLI.hpp>

#include <cstring>

#include "cli/cli.h"

namespace ds4::cli {

void add_flags(CLI::App& app, CliOptions& o) {
  // A repeated flag takes its last value, as in the peer tool (scripts append overrides).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.footer(
      "Without -p or --prompt-file, ds4 starts an interactive chat (commands: /help).\n"
      "No model yet? Convert DeepSeek's weights with ds4-quantize, or build the small demo model\n"
      "(random weights, real tokenizer) with scripts/run.sh.");
  app.add_option("-m,--model", o.model, "DeepSeek V4 GGUF file")->capture_default_str();
  app.add_option("-p,--prompt", o.prompt, "prompt for a single answer (one-shot mode)");
  app.add_option("--prompt-file", o.prompt_file, "read the one-shot prompt from FILE");
  app.add_option("--system", o.system,
                 "system prompt (also -sys; default none). A prompt that starts with "
                 "<｜begin▁of▁sentence｜> is used as a rendered transcript instead");
  app.add_option("-n,--max-tokens", o.max_tokens, "max generated tokens (clamped to the free context)")
      ->capture_default_str();
  app.add_option("-c,--ctx", o.ctx, "context size in tokens")->capture_default_str();
  app.add_option("--temp", o.temperature, "temperature (0 = greedy)")->capture_default_str();
  app.add_option("--top-p", o.top_p, "nucleus sampling threshold (1 = off)")->capture_default_str();
  app.add_option("--top-k", o.top_k, "keep the K most likely tokens (0 = off)")->capture_default_str();
  app.add_option("--min-p", o.min_p, "drop tokens below MIN_P x the top probability (0 = off)")
      ->capture_default_str();
  app.add_option("--seed", o.seed, "random seed (default: time-based)");
  app.add_option("--stop", o.stop, "stop generating at this text (repeatable; not printed)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_flag("--ignore-eos", o.ignore_eos, "do not stop at the end-of-sentence token (benchmarks)");
  app.add_flag_callback("--think", [&o] { o.thinking = chat::Thinking::High; },
                        "thinking mode (default)");
  app.add_flag_callback("--think-max", [&o] { o.thinking = chat::Thinking::Max; },
                        "maximum reasoning effort (needs --ctx >= 393216, else --think)");
  app.add_flag_callback("--nothink", [&o] { o.thinking = chat::Thinking::Off; },
                        "answer directly, without a thinking section");
  app.add_option("-t,--threads", o.threads, "CPU threads (default: all cores)");
  app.add_option("--backend", o.backend, "cpu | cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--numerics", o.numerics, "exact | official")
      ->check(CLI::IsMember({"exact", "official"}))
      ->capture_default_str();
  app.add_option("--dump-logprobs", o.dump_logprobs,
                 "write the generated tokens with their top-k alternatives as JSON to FILE "
                 "(use --temp 0 for the greedy continuation)");
  app.add_option("--logprobs-top-k", o.logprobs_top_k, "alternatives per token in --dump-logprobs")
      ->capture_default_str();
  app.add_flag("--dump-tokens", o.dump_tokens,
               "print the prompt's token ids as a JSON array, exactly as written (special tokens "
               "recognised), and exit");
  app.add_flag("--dump-prompt", o.dump_prompt,
               "print the token ids of the rendered single-turn chat prompt (-sys, -p and the "
               "thinking mode) as a JSON array and exit");
  app.add_option("--vocab", o.vocab,
                 "tokenizer for --dump-tokens / --dump-prompt: a GGUF or a DeepSeek V3/V4 "
                 "tokenizer.json (no model needed)");
  app.add_option("--kv-save", o.kv_save, "save the session (KV state and conversation) to FILE at the end");
  app.add_option("--kv-load", o.kv_load, "continue the session saved in FILE");
  auto* demo = app.add_option("--write-demo", o.write_demo,
                              "write the demo model (random weights, the real V4 tokenizer) to FILE and exit");
  app.add_option("--tokenizer-json", o.tokenizer_json, "DeepSeek tokenizer.json for --write-demo")
      ->needs(demo)
      ->capture_default_str();
  app.add_option("--demo-recipe", o.demo_recipe, "quantization recipe for --write-demo")
      ->needs(demo)
      ->capture_default_str();
  app.add_option("--demo-seed", o.demo_seed, "weights seed for --write-demo")->needs(demo)->capture_default_str();
}

void parse(CLI::App& app, int argc, char** argv) {
  // CLI11 has no multi-letter single-dash options; the peer tool spells --system "-sys".
  std::vector<std::string> args;
  for (int i = argc - 1; i >= 1; --i) {
    if (std::strcmp(argv[i], "-sys") == 0) {
      args.emplace_back("--system");
    } else {
      args.emplace_back(argv[i]);
    }
  }
  app.parse(std::move(args));  // CLI11 takes the arguments in reverse order
}

}  // namespace ds4::cli
