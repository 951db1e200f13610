#include "server/generation.h"

#include <httplib.h>

#include "server/ids.h"
#include "tokenizer/stream_decoder.h"
#include "server/server_context.h"

namespace ds4::server {

OutputProcessor::OutputProcessor(const tok::Tokenizer& tok, bool thinking, bool parse_dsml,
                                 std::vector<std::string> stops)
    : tok_(&tok), parse_dsml_(parse_dsml), stop_(std::move(stops)), parser_(thinking),
      think_end_(tok.require("</think>")), in_answer_(!thinking) {}

void OutputProcessor::feed(const std::string& text, std::vector<OutEvent>& out) {
  if (text.empty()) return;
  auto add = [&](OutEvent::Kind k, std::string t, int index = -1, std::string name = {}) {
    // Consecutive deltas of one kind merge (fewer SSE events for one token's text).
    if (!out.empty() && out.back().kind == k && (k == OutEvent::Kind::Text || k == OutEvent::Kind::Reasoning ||
                                                 (k == OutEvent::Kind::CallArgs && out.back().index == index))) {
      out.back().text += t;
      return;
    }
    OutEvent e;
    e.kind = k;
    e.text = std::move(t);
    e.index = index;
    e.name = std::move(name);
    out.push_back(std::move(e));
  };
  if (!parse_dsml_) {
    add(OutEvent::Kind::Text, text);
    return;
  }
  for (chat::DsmlEvent& e : parser_.feed(text)) {
    switch (e.kind) {
      case chat::DsmlEvent::Kind::Reasoning: add(OutEvent::Kind::Reasoning, std::move(e.text)); break;
      case chat::DsmlEvent::Kind::Text: add(OutEvent::Kind::Text, std::move(e.text)); break;
      case chat::DsmlEvent::Kind::CallStart: add(OutEvent::Kind::CallStart, {}, e.index, e.name); break;
      case chat::DsmlEvent::Kind::CallArgs: add(OutEvent::Kind::CallArgs, std::move(e.text), e.index); break;
      case chat::DsmlEvent::Kind::CallEnd: add(OutEvent::Kind::CallEnd, std::move(e.text), e.index, e.name); break;
      case chat::DsmlEvent::Kind::Error: {
        // A malformed block comes back as plain text so the agent can see and recover from it.
        parse_errors.push_back(e.text);
        OutEvent o;
        o.text = std::move(e.raw);
        o.revoke_from = e.first_call;
        o.error = e.text;
        if (!o.text.empty() || o.revoke_from >= 0) out.push_back(std::move(o));
        break;
      }
    }
  }
}

std::vector<OutEvent> OutputProcessor::push(const TokenOut& t) {
  std::vector<OutEvent> out;
  if (in_answer_) answer_raw_ += *t.bytes;
  if (t.id == think_end_) in_answer_ = true;
  if (t.logprobs) pending_lp_.push_back(*t.logprobs);
  const gen::StopResult r = stop_.push(*t.bytes);
  if (r.stopped) stop_hit_ = stop_.stops()[r.stop_index];
  // Invalid bytes (a random or confused model) become U+FFFD: JSON needs valid UTF-8.
  feed(tok::sanitize_utf8(r.text), out);
  if (!pending_lp_.empty()) {
    for (auto it = out.rbegin(); it != out.rend(); ++it)
      if (it->kind == OutEvent::Kind::Text || it->kind == OutEvent::Kind::Reasoning) {
        it->logprobs = std::move(pending_lp_);
        pending_lp_.clear();
        break;
      }
  }
  return out;
}

std::optional<std::string> OutputProcessor::stop_sequence() const {
  if (!stop_.stopped()) return std::nullopt;
  return stop_hit_;
}

std::vector<OutEvent> OutputProcessor::finish() {
  std::vector<OutEvent> out;
  if (!stop_.stopped()) feed(tok::sanitize_utf8(stop_.flush()), out);
  if (parse_dsml_) {
    for (chat::DsmlEvent& e : parser_.finish()) {
      if (e.kind == chat::DsmlEvent::Kind::Error) {
        parse_errors.push_back(e.text);
        OutEvent o;
        o.text = std::move(e.raw);
        o.revoke_from = e.first_call;
        o.error = e.text;
        if (!o.text.empty() || o.revoke_from >= 0) out.push_back(std::move(o));
      } else if (e.kind == chat::DsmlEvent::Kind::Text || e.kind == chat::DsmlEvent::Kind::Reasoning) {
        OutEvent o;
        o.kind = e.kind == chat::DsmlEvent::Kind::Text ? OutEvent::Kind::Text : OutEvent::Kind::Reasoning;
        o.text = std::move(e.text);
        if (!o.text.empty()) out.push_back(std::move(o));
      }
    }
  }
  if (!pending_lp_.empty()) {
    OutEvent o;
    o.logprobs = std::move(pending_lp_);
    out.push_back(std::move(o));
  }
  return out;
}

namespace {

// Engine thread -> HTTP thread.
class Channel {
 public:
  void push(std::vector<OutEvent> evs) {
    if (evs.empty()) return;
    {
      std::lock_guard lock(mu_);
      for (auto& e : evs) q_.push_back(std::move(e));
    }
    cv_.notify_one();
  }
  void close(const GenResult& r) {
    {
      std::lock_guard lock(mu_);
      result_ = r;
      done_ = true;
    }
    cv_.notify_one();
  }
  // Waits for events or the end; returns true when the job is finished and drained.
  bool wait(std::vector<OutEvent>& out, GenResult& r, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return done_ || !q_.empty(); });
    while (!q_.empty()) {
      out.push_back(std::move(q_.front()));
      q_.pop_front();
    }
    if (done_) r = result_;
    return done_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<OutEvent> q_;
  bool done_ = false;
  GenResult result_;
};

void collect(const OutEvent& e, Collected& c, const Protocol& proto) {
  if (e.revoke_from >= 0 && c.calls.size() > static_cast<size_t>(e.revoke_from))
    c.calls.resize(static_cast<size_t>(e.revoke_from));
  switch (e.kind) {
    case OutEvent::Kind::Reasoning: c.reasoning += e.text; break;
    case OutEvent::Kind::Text: c.content += e.text; break;
    case OutEvent::Kind::CallStart: c.calls.push_back({random_id(proto.call_id_prefix()), e.name, ""}); break;
    case OutEvent::Kind::CallArgs:
      if (!c.calls.empty()) c.calls.back().arguments += e.text;
      break;
    case OutEvent::Kind::CallEnd:
      if (!c.calls.empty()) c.calls.back().arguments = e.text;
      break;
  }
  if (e.kind == OutEvent::Kind::Text)
    c.logprobs.insert(c.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
}

}  // namespace

nlohmann::ordered_json openai_logprobs(const tok::Tokenizer& tok, const std::vector<gen::StepLogprobs>& lps) {
  auto entry = [&](const gen::TokenLogprob& t) {
    const std::string& b = tok.token_bytes(t.token);
    nlohmann::ordered_json bytes = nlohmann::ordered_json::array();
    for (unsigned char ch : b) bytes.push_back(ch);
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    j["token"] = tok::sanitize_utf8(b);
    j["logprob"] = t.logprob;
    j["bytes"] = std::move(bytes);
    return j;
  };
  nlohmann::ordered_json arr = nlohmann::ordered_json::array();
  for (const auto& s : lps) {
    nlohmann::ordered_json j = entry(s.chosen);
    j["top_logprobs"] = nlohmann::ordered_json::array();
    for (const auto& t : s.top) j["top_logprobs"].push_back(entry(t));
    arr.push_back(std::move(j));
  }
  return arr;
}

template <typename J>
std::string dump(const J& j) {
  return j.dump(-1, ' ', false, J::error_handler_t::replace);
}

void serve_generation(ServerContext& ctx, httplib::Response& res, std::shared_ptr<GenJob> job,
                      std::shared_ptr<Protocol> proto, bool stream, bool parse_dsml,
                      std::vector<std::string> stops, const std::string& endpoint) {
  auto ch = std::make_shared<Channel>();
  auto proc = std::make_shared<OutputProcessor>(ctx.engine.tokenizer(), job->thinking, parse_dsml, std::move(stops));
  job->on_token = [ch, proc](const TokenOut& t) {
    ch->push(proc->push(t));
    return !proc->stopped();
  };
  job->on_done = [ch, proc](const GenResult& r) {
    ch->push(proc->finish());
    ch->close(r);
  };
  ServerContext* c = &ctx;
  const char* type = stream ? "text/event-stream" : "application/json";
  if (stream) res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(type, [c, ch, proc, job, proto, stream, endpoint](size_t, httplib::DataSink& sink) {
   try {
    c->engine.submit(job);
    Collected col;
    GenResult r;
    auto write = [&](const std::string& s) {
      if (s.empty()) return true;
      if (!sink.write(s.data(), s.size())) {
        job->cancelled = true;  // the client is gone: free the engine
        return false;
      }
      return true;
    };
    if (stream) {
      if (!write(proto->stream_begin(r))) return false;
    }
    const auto keepalive = std::chrono::milliseconds(c->opt.keepalive_ms);
    for (;;) {
      std::vector<OutEvent> evs;
      const bool done = ch->wait(evs, r, keepalive);
      for (const OutEvent& e : evs) {
        if (stream && e.revoke_from >= 0 && col.calls.size() > static_cast<size_t>(e.revoke_from)) {
          // The client already holds the start of a call whose block then broke: it cannot be
          // taken back, so the stream ends with the API's error event instead of a broken call.
          job->cancelled = true;
          c->trace->log(job->id, "tool parser error", e.error + " (after the call was streamed)");
          c->metrics.count_request(endpoint, 500);
          write(proto->stream_error("the model wrote a malformed tool call: " + e.error));
          sink.done();
          return true;
        }
        collect(e, col, *proto);
        if (stream && !write(proto->stream_event(e, col))) return false;
      }
      if (done) break;
      // Keep-alive while the engine is busy (queue, long prefill): SSE comment, or JSON
      // whitespace (valid before a JSON value). Writing is also how a vanished client is noticed.
      if (evs.empty() && !write(stream ? std::string(": keep-alive\n\n") : std::string(" "))) return false;
    }
    if (!col.calls.empty() && r.finish != "error" && !proc->stopped()) {
      std::vector<std::string> ids;
      for (const auto& call : col.calls) ids.push_back(call.id);
      c->tool_memory.put(ids, proc->sampled_answer());
    }
    col.stop_sequence = proc->stop_sequence();
    if (c->trace->enabled()) {
      std::string t = "reasoning: " + col.reasoning + "\ncontent: " + col.content;
      for (const auto& call : col.calls) t += "\ntool call " + call.id + " " + call.name + " " + call.arguments;
      for (const auto& e : proc->parse_errors) t += "\ntool parser error: " + e;
      c->trace->log(job->id, "generated", t);
    }
    c->metrics.count_request(endpoint, r.finish == "error" ? 500 : 200);
    if (r.finish == "error") {
      const ApiError err(500, proto->style() == ApiStyle::Anthropic ? "api_error" : "server_error",
                         "generation failed: " + r.error);
      write(stream ? proto->stream_error(err.what()) : dump(error_body(proto->style(), err)));
    } else if (stream) {
      if (!write(proto->stream_end(col, r))) return false;
    } else {
      if (!write(dump(proto->response(col, r)))) return false;
    }
    sink.done();
    return true;
   } catch (const std::exception& e) {
    // Never let an exception escape into httplib's thread: drop the connection instead.
    job->cancelled = true;
    c->trace->log(job->id, "error", e.what());
    return false;
   }
  });
}

}  // namespace ds4::server
