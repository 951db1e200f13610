#include "server/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include <fmt/format.h>

#include "core/error.h"
#include "generate/kv_file.h"
#include "synth/synthetic_model.h"

namespace ds4::server {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

// The pieces after byte `offset` of the rendered text, or nothing when the offset falls inside
// a structural token (then the text prefix is not a token boundary of the prompt).
std::optional<chat::Pieces> pieces_after(const chat::Pieces& pieces, size_t offset) {
  chat::Pieces out;
  size_t at = 0;
  for (const chat::Piece& p : pieces) {
    const size_t end = at + p.text.size();
    if (end <= offset) {
      at = end;
      continue;
    }
    if (at < offset) {
      if (p.special) return std::nullopt;
      out.push_back({p.text.substr(offset - at), false});
    } else {
      out.push_back(p);
    }
    at = end;
  }
  return out;
}

}  // namespace

Engine::Engine(const ServerOptions& opt, Metrics& metrics, Trace& trace)
    : opt_(opt), metrics_(metrics), trace_(trace),
      model_(model::Model::load(opt.model_path, {.threads = opt.threads})) {
  tok_ = std::make_unique<tok::Tokenizer>(tok::load_tokenizer(opt.model_path));
  if (tok_->vocab_size() > model_.hparams().n_vocab)
    fail("{}: tokenizer has {} tokens, the model only {} logits", opt.model_path, tok_->vocab_size(),
         model_.hparams().n_vocab);
  if (const auto* v = model_.file().find(synth::kSyntheticKey)) synthetic_note_ = v->as_string();
  backend_ = runtime::open_engine(model_, runtime::parse_backend(opt_.backend == "auto" ? "cpu" : opt_.backend));
  if (opt_.prefill_chunk < 0) fail("prefill_chunk must not be negative, got {}", opt_.prefill_chunk);
  if (opt_.prefill_chunk == 0) opt_.prefill_chunk = backend_->prefill_chunk();
  if (!opt_.kv_disk_dir.empty()) {
    disk_ = std::make_unique<KvDiskCache>(opt_.kv_disk_dir, static_cast<uint64_t>(opt_.kv_disk_space_mb) << 20,
                                          gen::model_identity(model_), opt_.ctx,
                                          [this](const std::string& s) { log(s); });
  }
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() { shutdown(); }

void Engine::log(const std::string& line) {
  std::fprintf(stderr, "ds4-server: %s\n", line.c_str());
  trace_.log("engine", "log", line);
}

void Engine::submit(std::shared_ptr<GenJob> job) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(job));
    metrics_.queue_depth = static_cast<int64_t>(queue_.size());
  }
  cv_.notify_one();
}

void Engine::shutdown() {
  {
    std::lock_guard lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (auto& job : queue_) {
    job->result.finish = "cancelled";
    if (job->on_done) job->on_done(job->result);
  }
  queue_.clear();
}

void Engine::loop() {
  for (;;) {
    std::shared_ptr<GenJob> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      metrics_.queue_depth = static_cast<int64_t>(queue_.size());
    }
    metrics_.running = 1;
    active_ = nullptr;
    try {
      if (job->cancelled) job->result.finish = "cancelled";
      else run(*job);
    } catch (const std::exception& e) {
      if (active_) {  // a failed eval leaves the session undefined: start it over
        active_->session->reset();
        active_->logits_valid = false;
      }
      job->result.finish = "error";
      job->result.error = e.what();
      log(fmt::format("request {} failed: {}", job->id, e.what()));
    }
    metrics_.running = 0;
    if (job->result.finish == "cancelled") ++metrics_.cancelled;
    metrics_.prompt_tokens += static_cast<uint64_t>(job->result.prompt_tokens);
    metrics_.cached_tokens += static_cast<uint64_t>(job->result.cached_tokens);
    metrics_.completion_tokens += static_cast<uint64_t>(job->result.completion_tokens);
    if (job->on_done) job->on_done(job->result);
  }
}

size_t Engine::slot_bytes(const Slot& s) const {
  size_t n = s.logits.capacity() * sizeof(float);
  return n + runtime::session_bytes(*s.session);
}

void Engine::evict_for_new_slot() {
  const size_t budget = static_cast<size_t>(opt_.session_memory_mb) << 20;
  for (;;) {
    size_t total = 0;
    for (const auto& s : slots_) total += slot_bytes(*s);
    if (slots_.empty() || (static_cast<int>(slots_.size()) < opt_.max_sessions && total < budget)) return;
    auto lru = std::min_element(slots_.begin(), slots_.end(),
                                [](const auto& a, const auto& b) { return a->last_used < b->last_used; });
    const auto& toks = (*lru)->session->tokens();
    if (disk_ && static_cast<int64_t>(toks.size()) >= opt_.kv_disk_min_tokens) {
      // Evicted sessions go to disk so their client can come back without a cold prefill.
      if (disk_->save(tok_->decode(toks), (*lru)->session->snapshot())) ++metrics_.disk_writes;
    }
    trace_.log("engine", "evict", fmt::format("resident session of {} tokens", toks.size()));
    slots_.erase(lru);
  }
}

Engine::Slot& Engine::prepare(GenJob& job, int64_t& reused) {
  std::vector<int32_t>& prompt = job.prompt;
  std::string why;
  // Rung 1: exact token prefix over all resident sessions.
  Slot* best = nullptr;
  size_t best_n = 0;
  for (auto& s : slots_) {
    const size_t n = common_prefix(s->session->tokens(), prompt);
    if (!best || n > best_n) best = s.get(), best_n = n;
  }
  std::string source = best_n > 0 ? "memory-token" : "none";
  // Rung 2: rendered-text prefix (keeps the sampled tokens of a previous answer).
  const std::string prompt_text = job.pieces.empty() ? tok_->decode(prompt) : chat::pieces_to_text(job.pieces);
  if (!job.pieces.empty()) {
    for (auto& s : slots_) {
      const auto& toks = s->session->tokens();
      if (toks.size() <= best_n || toks.size() >= prompt.size() + 4096) continue;
      const std::string text = tok_->decode(toks);
      if (text.empty() || prompt_text.compare(0, text.size(), text) != 0) continue;
      auto rest = pieces_after(job.pieces, text.size());
      if (!rest) continue;
      std::vector<int32_t> np = toks;
      const std::vector<int32_t> suffix = chat::pieces_to_tokens(*rest, *tok_);
      np.insert(np.end(), suffix.begin(), suffix.end());
      if (static_cast<int64_t>(np.size()) > opt_.ctx) continue;
      prompt = std::move(np);
      best = s.get();
      best_n = toks.size();
      source = "memory-text";
    }
  }
  // Keep at least one token to evaluate: its logits give the first sampled token.
  const size_t usable = std::min(best_n, prompt.size() - 1);
  Slot* slot = nullptr;
  if (best && usable > 0 && usable >= static_cast<size_t>(best->session->min_truncate())) {
    slot = best;
    if (static_cast<int64_t>(usable) < slot->session->n_past()) {
      slot->session->truncate(static_cast<int64_t>(usable));
      slot->logits_valid = false;
    }
    reused = static_cast<int64_t>(usable);
  } else {
    if (best && usable > 0) why = fmt::format("prefix {} is beyond the rewind window", usable);
    evict_for_new_slot();
    auto s = std::make_unique<Slot>();
    s->session = backend_->new_session(
        model::SessionOptions{.max_ctx = opt_.ctx, .retain = opt_.session_retain, .max_batch = opt_.prefill_chunk});
    slots_.push_back(std::move(s));
    slot = slots_.back().get();
    reused = 0;
    source = "none";
  }
  // Rung 3: a disk snapshot covering more than the resident sessions.
  if (disk_) {
    const size_t have = static_cast<size_t>(reused) == 0 ? 0 : tok_->decode(std::span(prompt).first(static_cast<size_t>(reused))).size();
    if (auto hit = disk_->lookup(prompt_text, have)) {
      auto rest = job.pieces.empty() ? std::optional<chat::Pieces>() : pieces_after(job.pieces, hit->text_bytes);
      std::vector<int32_t> np = hit->state.tokens;
      bool ok = true;
      if (rest) {
        const std::vector<int32_t> suffix = chat::pieces_to_tokens(*rest, *tok_);
        np.insert(np.end(), suffix.begin(), suffix.end());
      } else if (job.pieces.empty() && common_prefix(np, prompt) == np.size()) {
        np = prompt;
      } else {
        ok = false;
      }
      if (ok && np.size() >= hit->state.tokens.size() && static_cast<int64_t>(np.size()) <= opt_.ctx) {
        try {
          slot->session->restore(std::move(hit->state));
          // Keep one prompt token to evaluate: its logits give the first sampled token.
          if (slot->session->n_past() >= static_cast<int64_t>(np.size()))
            slot->session->truncate(static_cast<int64_t>(np.size()) - 1);
          slot->logits_valid = false;
          prompt = std::move(np);
          reused = slot->session->n_past();
          source = "disk";
          trace_.log(job.id, "cache", "loaded " + hit->file);
        } catch (const std::exception& e) {
          log(fmt::format("kv-disk: cannot use {}: {}", hit->file, e.what()));
          ++metrics_.disk_rejected;
          slot->session->reset();
          reused = 0;
          source = "none";
        }
      }
    }
  }
  if (source == "none" || reused == 0) ++metrics_.cache_misses;
  else if (source == "disk") ++metrics_.cache_hits_disk;
  else ++metrics_.cache_hits_memory;
  job.result.cache_source = reused > 0 ? source : "none";
  slot->last_used = ++clock_;
  trace_.log(job.id, "cache decision",
             fmt::format("source={} reused={} prompt={} resident_sessions={}{}", job.result.cache_source, reused,
                         prompt.size(), slots_.size(), why.empty() ? "" : " miss: " + why));
  return *slot;
}

void Engine::run(GenJob& job) {
  if (job.prompt.empty()) fail("empty prompt");
  if (static_cast<int64_t>(job.prompt.size()) >= opt_.ctx)
    fail("prompt of {} tokens does not fit the context of {}", job.prompt.size(), opt_.ctx);
  int64_t reused = 0;
  Slot& slot = prepare(job, reused);
  active_ = &slot;
  metrics_.resident_sessions = static_cast<int64_t>(slots_.size());
  model::EvalSession& s = *slot.session;
  const std::vector<int32_t>& prompt = job.prompt;
  const size_t V = static_cast<size_t>(model_.hparams().n_vocab);
  slot.logits.resize(V);
  job.result.prompt_tokens = static_cast<int64_t>(prompt.size());
  job.result.cached_tokens = reused;

  // Prefill in chunks so that cancellation is noticed within one chunk.
  const auto t0 = Clock::now();
  int64_t pos = s.n_past();
  while (pos < static_cast<int64_t>(prompt.size())) {
    if (job.cancelled) {
      job.result.finish = "cancelled";
      slot.logits_valid = false;
      return;
    }
    const int64_t n = std::min<int64_t>(opt_.prefill_chunk, static_cast<int64_t>(prompt.size()) - pos);
    const bool last = pos + n == static_cast<int64_t>(prompt.size());
    s.eval(std::span(prompt).subspan(static_cast<size_t>(pos), static_cast<size_t>(n)),
           last ? model::LogitsMode::Last : model::LogitsMode::None, last ? slot.logits.data() : nullptr);
    pos += n;
  }
  slot.logits_valid = true;
  job.result.prefill_s = seconds_since(t0);
  const int64_t prefilled = static_cast<int64_t>(prompt.size()) - reused;
  metrics_.prefill_tokens += static_cast<uint64_t>(prefilled);
  metrics_.prefill_ns += static_cast<uint64_t>(job.result.prefill_s * 1e9);
  if (prefilled > 0 && job.result.prefill_s > 0) metrics_.last_prefill_tps = static_cast<double>(prefilled) / job.result.prefill_s;
  if (disk_ && prefilled >= opt_.kv_disk_min_tokens) {
    // A long new prefix is worth a file: the next process (or an evicted client) starts here.
    if (disk_->save(tok_->decode(prompt), s.snapshot())) {
      ++metrics_.disk_writes;
      trace_.log(job.id, "cache", fmt::format("saved a disk snapshot of {} tokens", prompt.size()));
    }
  }

  // Decode.
  const auto t1 = Clock::now();
  gen::Sampler sampler(job.sampling);
  CallGuide guide(*tok_, job.thinking, job.reasoning_budget, job.forced, job.sampling.max_tokens,
                  job.param_kinds.get());
  std::vector<float> masked;
  std::deque<std::pair<int32_t, bool>> pending;  // (token, forced)
  gen::StepLogprobs lp;
  const int64_t max_tokens = job.sampling.max_tokens < 0 ? opt_.ctx : job.sampling.max_tokens;
  int64_t generated = 0;
  std::string finish = "length";
  for (;;) {
    if (job.cancelled) {
      finish = "cancelled";
      break;
    }
    if (pending.empty()) {
      if (guide.done()) {
        finish = "stop";
        break;
      }
      if (generated >= max_tokens || s.n_past() >= opt_.ctx) {
        if (!guide.in_forced_call() || s.n_past() >= opt_.ctx) break;
        for (int32_t t : guide.close_now()) pending.emplace_back(t, true);  // forced calls stay well-formed
        if (pending.empty()) break;
      }
    }
    if (pending.empty()) {
      for (int32_t t : guide.next_forced(slot.logits, generated)) pending.emplace_back(t, true);
    }
    int32_t token;
    bool forced;
    if (!pending.empty()) {
      std::tie(token, forced) = pending.front();
      pending.pop_front();
    } else {
      token = sampler.sample(slot.logits, s.tokens());
      forced = false;
      if (!guide.allows(token)) {
        // Inside a JSON value the token would break it: sample again among those that keep it
        // valid (the full mask is only built when the model strays).
        masked = slot.logits;
        guide.mask(masked);
        token = sampler.sample(masked, s.tokens());
      }
      const std::vector<int32_t> repl = guide.intercept(token, generated);
      if (!repl.empty()) {
        for (int32_t t : repl) pending.emplace_back(t, true);
        continue;
      }
      if (job.sampling.is_stop_token(token)) {
        finish = "stop";
        break;
      }
    }
    guide.observe(token);
    TokenOut out{token, &tok_->token_bytes(token), forced, nullptr};
    if (job.top_logprobs >= 0) {
      lp = gen::compute_logprobs(slot.logits, token, job.top_logprobs);
      out.logprobs = &lp;
    }
    ++generated;
    if (!job.on_token(out)) {
      finish = "stop";
      break;
    }
    if (s.n_past() >= opt_.ctx) break;
    slot.logits_valid = false;
    s.eval(std::span(&token, 1), model::LogitsMode::Last, slot.logits.data());
    slot.logits_valid = true;
  }
  job.result.finish = finish;
  job.result.completion_tokens = generated;
  job.result.decode_s = seconds_since(t1);
  metrics_.decode_ns += static_cast<uint64_t>(job.result.decode_s * 1e9);
  if (generated > 1 && job.result.decode_s > 0) metrics_.last_decode_tps = static_cast<double>(generated) / job.result.decode_s;
  trace_.log(job.id, "finish",
             fmt::format("finish={} prompt={} cached={} generated={} prefill={:.3f}s decode={:.3f}s", finish,
                         prompt.size(), reused, generated, job.result.prefill_s, job.result.decode_s));
}

}  // namespace ds4::server
