#include "cli/chat_session.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "chat/render.h"
#include "cli/display.h"
#include "core/error.h"
#include "generate/kv_file.h"
#include "gguf/gguf.h"
#include "synth/synthetic_model.h"
#include "tokenizer/gguf_vocab.h"

namespace ds4::cli {
namespace fs = std::filesystem;

namespace {

// architecture.md 7.3: DS4 downgrades max to high below the model card's 384K recommendation.
constexpr int64_t kThinkMaxMinCtx = 393216;

const char* thinking_name(chat::Thinking t) {
  switch (t) {
    case chat::Thinking::Off: return "off";
    case chat::Thinking::High: return "high";
    case chat::Thinking::Max: return "max";
  }
  return "high";
}

uint64_t physical_memory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

}  // namespace

std::unique_ptr<LoadedModel> load_model(const CliOptions& o, bool progress) {
  const std::string& path = o.model;
  std::error_code ec;
  if (!fs::exists(path, ec))
    fail("model file {} not found; convert DeepSeek V4 weights with ds4-quantize, or build the demo "
         "model (random weights, real tokenizer) with `ds4 --write-demo demo.gguf` or "
         "scripts/run.sh, and pass it with -m",
         path);
  if (fs::is_directory(path, ec)) fail("{} is a directory, not a GGUF model file", path);
  {
    std::ifstream in(path, std::ios::binary);
    char magic[4] = {};
    if (!in || !in.read(magic, 4))
      fail("cannot read the model file {}: {}", path, in ? "it is shorter than a GGUF header" : std::strerror(errno));
    if (std::memcmp(magic, "GGUF", 4) != 0)
      fail("{} is not a GGUF file; ds4 runs DeepSeek V4 GGUF models (convert weights with ds4-quantize)", path);
  }
  const auto t0 = std::chrono::steady_clock::now();
  if (progress) {
    fmt::print(stderr, "loading {} ({})...", path, human_bytes(static_cast<double>(fs::file_size(path, ec))));
    std::fflush(stderr);
  }
  std::unique_ptr<LoadedModel> m;
  try {
    auto model = model::Model::load(path, {.threads = o.threads});
    tok::Tokenizer t = [&] {
      try {
        return tok::tokenizer_from_gguf(model.file());
      } catch (const Error& e) {
        fail("{} has no usable tokenizer ({}); re-convert it with ds4-quantize", path, e.what());
      }
    }();
    m = std::make_unique<LoadedModel>(LoadedModel{std::move(model), std::move(t), {}, nullptr});
  } catch (const Error& e) {
    if (progress) fmt::print(stderr, "\n");
    const std::string what = e.what();
    if (what.find("tokenizer") != std::string::npos && what.find(path) == 0) throw;
    fail("{} is not a DeepSeek V4 GGUF model ds4 can run: {}", path, what);
  }
  if (const gguf::Value* v = m->model.file().find(synth::kSyntheticKey);
      v != nullptr && v->type() == gguf::ValueType::STRING)
    m->synthetic = v->as_string();
  else if (v != nullptr)
    m->synthetic = "synthetic";
  if (progress) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print(stderr, "\r\x1b[Kloaded {} in {:.1f}s\n", path, s);
  }
  return m;
}

void check_context(const model::Model& m, int64_t ctx) {
  if (ctx < 16) fail("--ctx {} is too small; give at least 16 tokens", ctx);
  const model::HParams& hp = m.hparams();
  // The state grows per token by the compressed rows of every compressed layer (raw rows are
  // bounded by the window, session_state.h); attention scores add about one float per head
  // and compressed row. A rough upper bound is enough to refuse hopeless sizes up front.
  double per_token = 4.0 + static_cast<double>(hp.n_head) * 4.0;
  for (int64_t il = 0; il < hp.n_layers; ++il) {
    const auto& L = m.weights().layers[static_cast<size_t>(il)];
    if (L.ratio == 0) continue;
    per_token += static_cast<double>(hp.head_dim) * 4.0 / L.ratio;
    if (L.has_indexer) per_token += static_cast<double>(hp.idx_dim) * 4.0 / L.ratio;
  }
  const double need = per_token * static_cast<double>(ctx);
  const uint64_t have = physical_memory();
  if (have > 0 && need > static_cast<double>(have))
    fail("a context of {} tokens needs about {} of memory, more than this machine's {}; use a "
         "smaller --ctx",
         ctx, human_bytes(need), human_bytes(static_cast<double>(have)));
  if (hp.context_length > 0 && static_cast<uint64_t>(ctx) > hp.context_length)
    fail("--ctx {} is more than the {} positions this model supports", ctx, hp.context_length);
}

std::string banner(const LoadedModel& m, const std::string& path, int64_t ctx) {
  const model::HParams& hp = m.model.hparams();
  std::string s = fmt::format("ds4: {} ({}), {} layers, vocabulary {}, context {}",
                              hp.name.empty() ? "DeepSeek V4" : hp.name, path, hp.n_layers, hp.n_vocab, ctx);
  if (!m.synthetic.empty())
    s = fmt::format("*** DEMO MODEL (synthetic weights) ***\n{}\n*** {} ***", s, m.synthetic);
  return s;
}

chat::Thinking effective_thinking(chat::Thinking t, int64_t ctx) {
  if (t == chat::Thinking::Max && ctx < kThinkMaxMinCtx) {
    fmt::print(stderr, "ds4: --think-max needs --ctx >= {}; using --think\n", kThinkMaxMinCtx);
    return chat::Thinking::High;
  }
  return t;
}

ChatSession::ChatSession(const LoadedModel& m, const CliOptions& o)
    : m_(&m), o_(&o), ctx_(o.ctx), thinking_(o.thinking) {
  if (!o.system.empty()) conv_.messages.push_back(chat::make_message(chat::Role::System, o.system));
  set_ctx(o.ctx);
}

void ChatSession::set_thinking(chat::Thinking t) { thinking_ = effective_thinking(t, ctx_); }

void ChatSession::set_ctx(int64_t ctx) {
  check_context(m_->model, ctx);
  ctx_ = ctx;
  model::SessionOptions so{.max_ctx = ctx, .numerics = model::numerics_from_name(o_->numerics)};
  if (m_->engine) so.max_batch = m_->engine->prefill_chunk();
  gen_ = m_->engine ? std::make_unique<gen::Generator>(m_->model, m_->tokenizer, m_->engine->new_session(so))
                    : std::make_unique<gen::Generator>(m_->model, m_->tokenizer, so);
  thinking_ = effective_thinking(thinking_, ctx_);
}

void ChatSession::clear() {
  conv_.messages.clear();
  if (!o_->system.empty()) conv_.messages.push_back(chat::make_message(chat::Role::System, o_->system));
  gen_->reset();
}

TurnOutput ChatSession::user_turn(const std::string& text, std::FILE* out, bool out_is_terminal,
                                  const std::atomic<bool>* cancel) {
  conv_.messages.push_back(chat::make_message(chat::Role::User, text));
  const auto prompt = chat::render_tokens(conv_, m_->tokenizer, {.thinking = thinking_});
  TurnOutput t = generate(prompt, out, out_is_terminal, thinking_ != chat::Thinking::Off, cancel);
  if (t.result.finish == gen::FinishReason::Cancelled && t.result.tokens.empty()) {
    conv_.messages.pop_back();  // nothing answered: as if the turn never happened
  } else {
    conv_.messages.push_back(chat::assistant_message(t.content, t.reasoning));
  }
  return t;
}

TurnOutput ChatSession::raw_prompt(const std::string& text, std::FILE* out, bool out_is_terminal,
                                   const std::atomic<bool>* cancel) {
  const auto prompt = m_->tokenizer.encode(text, /*allow_special=*/true);
  // Thinking when the transcript ends with <think>, as the chat template opens it.
  const auto think = m_->tokenizer.find("<think>");
  const bool thinking = think && !prompt.empty() && prompt.back() == *think;
  return generate(prompt, out, out_is_terminal, thinking, cancel);
}

TurnOutput ChatSession::generate(const std::vector<int32_t>& prompt, std::FILE* out,
                                 bool out_is_terminal, bool thinking, const std::atomic<bool>* cancel) {
  const CliOptions& o = *o_;
  gen::GenerateOptions g;
  g.sampling.temperature = o.temperature;
  g.sampling.top_p = o.top_p;
  g.sampling.top_k = o.top_k;
  g.sampling.min_p = o.min_p;
  // One stream per turn; a fixed --seed makes every turn of a run reproducible.
  g.sampling.seed = o.seed ? *o.seed + static_cast<uint64_t>(turns_) : std::random_device{}();
  ++turns_;
  const int64_t room = ctx_ - static_cast<int64_t>(prompt.size());
  g.sampling.max_tokens = static_cast<int>(std::clamp<int64_t>(o.max_tokens, 0, std::max<int64_t>(room, 0)));
  if (!o.ignore_eos) {
    g.sampling.stop_tokens = {m_->tokenizer.eos_id()};
    // A model that starts the next user turn itself has finished its answer.
    if (auto u = m_->tokenizer.find("<｜User｜>")) g.sampling.stop_tokens.push_back(*u);
  }
  g.sampling.stop_strings = o.stop;
  g.logprobs_top_k = o.dump_logprobs.empty() ? -1 : o.logprobs_top_k;
  g.cancel = cancel;

  const bool err_tty = ::isatty(STDERR_FILENO) != 0;
  ProgressLine bar(stderr, err_tty);
  g.on_prefill = [&](const gen::PrefillProgress& p) {
    // Short additions finish before a bar would be readable.
    if (p.total - p.reused >= 256) bar.update("prefill", p.done, p.total, p.tokens_per_s, "tokens");
  };
  AnswerPrinter printer(out, out_is_terminal, thinking);
  bool first = true;
  g.on_token = [&](const gen::TokenEvent& e) {
    if (first) {
      bar.clear();
      first = false;
    }
    printer.push(e.text);
  };
  TurnOutput t;
  if (room <= 0)
    fail("the prompt has {} tokens and fills the whole context of {} tokens; use a larger --ctx",
         prompt.size(), ctx_);
  t.result = gen_->generate(prompt, g);
  bar.clear();
  printer.finish();
  t.reasoning = printer.reasoning();
  t.content = printer.content();
  logprobs_.insert(logprobs_.end(), t.result.logprobs.begin(), t.result.logprobs.end());
  generated_.insert(generated_.end(), t.result.tokens.begin(), t.result.tokens.end());
  return t;
}

void ChatSession::save(const std::string& path) const {
  gen::save_session(path, *gen_, conversation_to_json(conv_, thinking_));
}

void ChatSession::load(const std::string& path) {
  const std::string note = gen::load_session(path, *gen_);
  chat::Thinking t = thinking_;
  conv_ = conversation_from_json(note, t);
  thinking_ = effective_thinking(t, ctx_);
}

std::string conversation_to_json(const chat::Conversation& c, chat::Thinking t) {
  nlohmann::json j;
  j["thinking"] = thinking_name(t);
  j["messages"] = nlohmann::json::array();
  for (const auto& m : c.messages) {
    nlohmann::json e = {{"role", chat::role_name(m.role)}, {"content", m.content}};
    if (!m.reasoning.empty()) e["reasoning"] = m.reasoning;
    j["messages"].push_back(std::move(e));
  }
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

chat::Conversation conversation_from_json(const std::string& text, chat::Thinking& t) {
  chat::Conversation c;
  if (text.empty()) return c;  // a snapshot written by another program: no conversation
  try {
    const auto j = nlohmann::json::parse(text);
    const std::string th = j.value("thinking", "high");
    t = th == "off" ? chat::Thinking::Off : th == "max" ? chat::Thinking::Max : chat::Thinking::High;
    for (const auto& e : j.at("messages")) {
      const std::string role = e.at("role").get<std::string>();
      chat::Message m;
      if (role == "system") m.role = chat::Role::System;
      else if (role == "user") m.role = chat::Role::User;
      else if (role == "assistant") m.role = chat::Role::Assistant;
      else fail("unknown role {}", role);
      m.content = e.at("content").get<std::string>();
      m.reasoning = e.value("reasoning", "");
      c.messages.push_back(std::move(m));
    }
  } catch (const std::exception& e) {
    fail("the snapshot's conversation is unreadable: {}", e.what());
  }
  return c;
}

}  // namespace ds4::cli
