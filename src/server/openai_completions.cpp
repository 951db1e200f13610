// POST /v1/completions: raw text completion. Unlike the peer, the prompt is used as is (no chat
// wrapping); the client owns the whole prompt, control tokens included, and BOS is added when
// missing.
#include <httplib.h>

#include "server/errors.h"
#include "server/generation.h"
#include "server/ids.h"
#include "server/protocols.h"
#include "server/request.h"
#include "server/server_context.h"
#include "tokenizer/stream_decoder.h"

namespace ds4::server {

namespace {

ApiRequest parse_completion(const json& j, ServerContext& ctx) {
  ApiRequest r;
  parse_common(j, r, ctx);
  r.raw = true;
  r.thinking = chat::Thinking::Off;
  auto it = j.find("prompt");
  if (it == j.end() || it->is_null()) bad_request("prompt", "'prompt' is required");
  if (it->is_string()) {
    r.raw_prompt = it->get<std::string>();
  } else if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) {
    r.raw_prompt = (*it)[0].get<std::string>();
  } else {
    bad_request("prompt", "'prompt' must be a string (or an array of one string)");
  }
  if (auto mt = opt_int(j, "max_tokens")) {
    if (*mt < 1) bad_request("max_tokens", "'max_tokens' must be at least 1");
    r.max_tokens = *mt;
  } else {
    r.max_tokens = 16;  // the OpenAI default for this endpoint
  }
  if (j.contains("stop")) r.sampling.stop_strings = parse_stop(j["stop"], "stop");
  if (const json* so = opt_field(j, "stream_options", json::value_t::object, "an object"))
    r.include_usage = opt_bool(*so, "include_usage").value_or(false);
  if (auto lp = opt_int(j, "logprobs")) {
    if (*lp < 0 || *lp > 20) bad_request("logprobs", "'logprobs' must be in [0, 20]");
    r.top_logprobs = static_cast<int>(*lp);
  }
  return r;
}

class CompletionProtocol : public Protocol {
 public:
  CompletionProtocol(ServerContext& ctx, ApiRequest r)
      : ctx_(ctx), req_(std::move(r)), id_(random_id("cmpl-")), created_(unix_now()) {}
  std::string stream_begin(const GenResult&) override { return ""; }
  std::string stream_event(const OutEvent& e, const Collected&) override {
    if (e.text.empty()) return "";
    return sse_data(chunk(e.text, json(), e.logprobs));
  }
  std::string stream_end(const Collected&, const GenResult& r) override {
    std::string out = sse_data(chunk("", finish(r), {}));
    if (req_.include_usage) {
      json u = base();
      u["choices"] = json::array();
      u["usage"] = openai_usage(r);
      out += sse_data(u);
    }
    return out + "data: [DONE]\n\n";
  }
  std::string stream_error(const std::string& message) override {
    return sse_data({{"error", {{"message", message}, {"type", "server_error"}}}}) + "data: [DONE]\n\n";
  }
  json response(const Collected& c, const GenResult& r) override {
    json out = base();
    out["choices"] = json::array({choice(c.content, finish(r), c.logprobs)});
    out["usage"] = openai_usage(r);
    return out;
  }

 private:
  static json finish(const GenResult& r) { return r.finish == "length" ? "length" : "stop"; }
  json base() const {
    return {{"id", id_}, {"object", "text_completion"}, {"created", created_}, {"model", req_.model}};
  }
  // Legacy logprobs shape: parallel arrays.
  json logprobs(const std::vector<gen::StepLogprobs>& lps) const {
    if (req_.top_logprobs < 0) return nullptr;
    const tok::Tokenizer& tok = ctx_.engine.tokenizer();
    json tokens = json::array(), lp = json::array(), top = json::array();
    for (const auto& s : lps) {
      tokens.push_back(tok::sanitize_utf8(tok.token_bytes(s.chosen.token)));
      lp.push_back(s.chosen.logprob);
      json t = json::object();
      for (const auto& x : s.top) t[tok::sanitize_utf8(tok.token_bytes(x.token))] = x.logprob;
      top.push_back(t);
    }
    return {{"tokens", tokens}, {"token_logprobs", lp}, {"top_logprobs", top}};
  }
  json choice(const std::string& text, const json& finish_reason, const std::vector<gen::StepLogprobs>& lps) const {
    return {{"text", text}, {"index", 0}, {"logprobs", logprobs(lps)}, {"finish_reason", finish_reason}};
  }
  json chunk(const std::string& text, const json& finish_reason, const std::vector<gen::StepLogprobs>& lps) const {
    json c = base();
    c["choices"] = json::array({choice(text, finish_reason, lps)});
    return c;
  }

  ServerContext& ctx_;
  ApiRequest req_;
  std::string id_;
  int64_t created_;
};

}  // namespace

void handle_completions(ServerContext& ctx, const httplib::Request& req, httplib::Response& res) {
  ApiRequest r = parse_completion(parse_body(req.body), ctx);
  auto job = make_job(r, ctx);
  const bool stream = r.stream;
  std::vector<std::string> stops = r.sampling.stop_strings;
  serve_generation(ctx, res, job, std::make_shared<CompletionProtocol>(ctx, std::move(r)), stream,
                   /*parse_dsml=*/false, std::move(stops), "completions");
}

}  // namespace ds4::server
