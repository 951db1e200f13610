// run(): checks, model loading, and the one-shot mode; the interactive loop is in repl.cpp.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "chat/render.h"
#include "cli/cli.h"
#include "cli/display.h"
#include "cli/modes.h"
#include "convert/recipe.h"
#include "core/error.h"
#include "synth/demo_model.h"
#include "tokenizer/stream_decoder.h"

#ifdef DS4_HAVE_CUDA
#include "backend/cuda/device.h"
#endif

namespace ds4::cli {
namespace {

std::atomic<bool> g_interrupt{false};

extern "C" void on_sigint(int) { g_interrupt.store(true, std::memory_order_relaxed); }

void check_backend(const std::string& backend) {
  if (backend == "cpu") return;
#ifdef DS4_HAVE_CUDA
  cuda::require_device();  // before loading the model: no GPU is a quick, clear error
#else
  fail("this build has no CUDA backend; rebuild with -DDS4_CUDA=ON or use --backend cpu");
#endif
}

std::string read_prompt_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read the prompt file {}: {}", path, std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("cannot read the prompt file {}: {}", path, std::strerror(errno));
  return ss.str();
}

nlohmann::json token_json(const tok::Tokenizer& t, int32_t id) {
  const std::string& bytes = t.token_bytes(id);
  nlohmann::json j = {{"id", id}, {"text", tok::sanitize_utf8(bytes)}};
  if (tok::sanitize_utf8(bytes) != bytes) {
    nlohmann::json b = nlohmann::json::array();
    for (unsigned char c : bytes) b.push_back(c);
    j["bytes"] = std::move(b);
  }
  return j;
}

void write_logprobs(const std::string& path, const tok::Tokenizer& t,
                    const std::vector<gen::StepLogprobs>& steps) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : steps) {
    nlohmann::json e = token_json(t, s.chosen.token);
    e["logit"] = s.chosen.logit;
    e["logprob"] = s.chosen.logprob;
    nlohmann::json top = nlohmann::json::array();
    for (const auto& a : s.top) {
      nlohmann::json x = token_json(t, a.token);
      x["logit"] = a.logit;
      x["logprob"] = a.logprob;
      top.push_back(std::move(x));
    }
    e["top"] = std::move(top);
    out.push_back(std::move(e));
  }
  std::ofstream f(path);
  if (!f) fail("cannot create the logprobs file {}: {}", path, std::strerror(errno));
  f << nlohmann::json{{"tokens", out}}.dump(1) << "\n";
  if (!f) fail("cannot write the logprobs file {}", path);
}

int run_one_shot(const LoadedModel& m, const CliOptions& o, ChatSession& chat, const std::string& prompt) {
  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  const bool raw = prompt.starts_with(chat::tokens::kBos);
  TurnOutput t = raw ? chat.raw_prompt(prompt, stdout, tty, &interrupt_flag())
                     : chat.user_turn(prompt, stdout, tty, &interrupt_flag());
  print_speed(t.result);
  if (!o.dump_logprobs.empty()) write_logprobs(o.dump_logprobs, m.tokenizer, chat.logprobs());
  if (!o.kv_save.empty()) chat.save(o.kv_save);
  if (t.result.finish == gen::FinishReason::Cancelled) {
    fmt::print(stderr, "ds4: interrupted\n");
    return kExitInterrupted;
  }
  return 0;
}

int write_demo(const CliOptions& o) {
  synth::DemoOptions d;
  d.recipe = convert::parse_recipe(o.demo_recipe);
  d.seed = o.demo_seed;
  d.threads = o.threads;
  const bool tty = ::isatty(STDERR_FILENO) != 0;
  ProgressLine bar(stderr, tty);
  d.progress = [&](uint64_t done, uint64_t total) {
    bar.update("writing demo model", static_cast<int64_t>(done >> 20), static_cast<int64_t>(total >> 20), 0, "MiB");
  };
  synth::write_demo_model(o.write_demo, o.tokenizer_json, d);
  bar.clear();
  fmt::print(stderr, "ds4: wrote the demo model {} (random weights: its text is gibberish)\n", o.write_demo);
  return 0;
}

int run_checked(const CliOptions& o) {
  if (!o.write_demo.empty()) return write_demo(o);
  check_backend(o.backend);
  if (o.prompt && !o.prompt_file.empty()) fail("give either -p or --prompt-file, not both");
  std::optional<std::string> prompt = o.prompt;
  if (!o.prompt_file.empty()) prompt = read_prompt_file(o.prompt_file);
  if ((o.dump_tokens || o.dump_prompt) && !prompt)
    fail("--dump-tokens and --dump-prompt need a prompt (-p or --prompt-file)");
  if (o.dump_tokens || o.dump_prompt) {
    // The tokenizer contract: --vocab needs no model; otherwise the model file's tokenizer.
    std::unique_ptr<LoadedModel> lm;
    std::optional<tok::Tokenizer> vocab;
    if (!o.vocab.empty()) vocab.emplace(tok::load_tokenizer(o.vocab));
    else lm = load_model(o, false);
    const tok::Tokenizer& t = vocab ? *vocab : lm->tokenizer;
    const std::vector<int32_t> ids =
        o.dump_tokens ? t.encode(*prompt, /*allow_special=*/true)
                      : chat::render_single_turn(t, o.system, *prompt, o.thinking);
    fmt::print("{}\n", nlohmann::json(ids).dump());
    return 0;
  }
  if (o.max_tokens < 0) fail("-n must be 0 or more, got {}", o.max_tokens);
  if (o.logprobs_top_k < 0) fail("--logprobs-top-k must be 0 or more, got {}", o.logprobs_top_k);

  const bool err_tty = ::isatty(STDERR_FILENO) != 0;
  auto m = load_model(o, err_tty);
  m->engine = runtime::open_engine(m->model, runtime::parse_backend(o.backend));
  fmt::print(stderr, "{}\n", banner(*m, o.model, o.ctx));
  if (m->engine->kind() != runtime::BackendKind::Cpu) fmt::print(stderr, "ds4: {}\n", m->engine->describe());
  ChatSession chat(*m, o);
  if (!o.kv_load.empty()) {
    chat.load(o.kv_load);
    fmt::print(stderr, "ds4: continuing the session in {} ({} tokens)\n", o.kv_load,
               chat.generator().session().n_past());
  }
  install_interrupt_handler();
  if (prompt) return run_one_shot(*m, o, chat, *prompt);
  return run_interactive(*m, o, chat);
}

}  // namespace

std::atomic<bool>& interrupt_flag() { return g_interrupt; }

void install_interrupt_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: an interrupted line read returns
  ::sigaction(SIGINT, &sa, nullptr);
}

void print_speed(const gen::GenerateResult& r) {
  fmt::print(stderr, "ds4: prompt {} tokens ({} reused) at {:.1f} tok/s, generated {} tokens at {:.1f} tok/s ({})\n",
             r.prompt_tokens, r.reused_tokens, r.prefill_tokens_per_s(), r.tokens.size(),
             r.decode_tokens_per_s(), gen::finish_reason_name(r.finish));
}

int run(const CliOptions& o) {
  try {
    return run_checked(o);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "ds4: {}\n", e.what());
    return kExitError;
  }
}

}  // namespace ds4::cli
