// POST /v1/chat/completions (OpenAI Chat Completions), streaming and not.
#include <httplib.h>

#include <chrono>

#include <fmt/format.h>

#include "chat/dsml_format.h"
#include "server/errors.h"
#include "server/generation.h"
#include "server/ids.h"
#include "server/protocols.h"
#include "server/request.h"
#include "server/server_context.h"

namespace ds4::server {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}
// error_handler_t::replace: a stray invalid byte becomes U+FFFD instead of an exception.
std::string sse_data(const json& j) { return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n"; }
std::string sse_event(const std::string& name, const json& j) {
  return "event: " + name + "\ndata: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

json openai_usage(const GenResult& r) {
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", r.completion_tokens},
          {"total_tokens", r.prompt_tokens + r.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", r.cached_tokens}}}};
}

namespace {

chat::Role role_of(const std::string& role) {
  if (role == "system") return chat::Role::System;
  if (role == "developer") return chat::Role::System;  // merged into the system area, as the peer
  if (role == "user") return chat::Role::User;
  if (role == "assistant") return chat::Role::Assistant;
  if (role == "tool" || role == "function") return chat::Role::Tool;
  bad_request("messages", fmt::format("unknown message role '{}'", role));
}

void parse_tools(const json& j, ApiRequest& r) {
  const json* tools = opt_field(j, "tools", json::value_t::array, "an array");
  if (!tools) return;
  for (const json& t : *tools) {
    if (!t.is_object()) bad_request("tools", "'tools' entries must be objects");
    const json* fn = opt_field(t, "function", json::value_t::object, "an object");
    if (t.value("type", "function") != "function" || !fn) bad_request("tools", "only function tools are supported");
    if (!opt_string(*fn, "name")) bad_request("tools", "a function tool needs a name");
    r.conv.tools.push_back(*fn);
  }
}

void parse_tool_choice(const json& j, ApiRequest& r) {
  auto it = j.find("tool_choice");
  if (it == j.end() || it->is_null()) return;
  if (it->is_string()) {
    const std::string s = it->get<std::string>();
    if (s == "auto") r.tool_choice = ToolChoice::Auto;
    else if (s == "none") r.tool_choice = ToolChoice::None;
    else if (s == "required") r.tool_choice = ToolChoice::Required;
    else bad_request("tool_choice", fmt::format("unknown tool_choice '{}'", s));
    return;
  }
  if (it->is_object()) {
    const json* fn = opt_field(*it, "function", json::value_t::object, "an object");
    if (fn && opt_string(*fn, "name")) {
      r.tool_choice = ToolChoice::Named;
      r.tool_name = *opt_string(*fn, "name");
      return;
    }
  }
  bad_request("tool_choice", "'tool_choice' must be auto, none, required or {type: function, function: {name}}");
}

// Thinking controls of the chat API family: reasoning_effort, thinking {type}, think.
void parse_thinking(const json& j, ApiRequest& r, int64_t ctx) {
  if (auto e = opt_string(j, "reasoning_effort")) r.thinking = thinking_from_effort(*e, ctx, "reasoning_effort");
  if (const json* t = opt_field(j, "thinking", json::value_t::object, "an object")) {
    const std::string type = t->value("type", "enabled");
    if (type == "disabled") r.thinking = chat::Thinking::Off;
    else if (type == "enabled") r.thinking = r.thinking == chat::Thinking::Off ? chat::Thinking::High : r.thinking;
    else bad_request("thinking", "'thinking.type' must be enabled or disabled");
  }
  if (auto b = opt_bool(j, "think")) r.thinking = *b ? chat::Thinking::High : chat::Thinking::Off;
}

ApiRequest parse_chat(const json& j, ServerContext& ctx) {
  ApiRequest r;
  parse_common(j, r, ctx);
  parse_thinking(j, r, ctx.opt.ctx);
  const json* msgs = opt_field(j, "messages", json::value_t::array, "an array");
  if (!msgs || msgs->empty()) bad_request("messages", "'messages' must be a non-empty array");
  for (const json& m : *msgs) {
    if (!m.is_object()) bad_request("messages", "each message must be an object");
    const auto role = opt_string(m, "role");
    if (!role) bad_request("messages", "each message needs a 'role'");
    chat::Message msg;
    msg.role = role_of(*role);
    msg.content = content_text(m.contains("content") ? m["content"] : json(), "messages.content");
    if (msg.role == chat::Role::Assistant) {
      msg.reasoning = opt_string(m, "reasoning_content").value_or("");
      if (const json* calls = opt_field(m, "tool_calls", json::value_t::array, "an array")) {
        for (const json& c : *calls) {
          try {
            msg.tool_calls.push_back(chat::tool_call_from_openai(c));
          } catch (const std::exception& e) {
            bad_request("messages.tool_calls", e.what());
          }
        }
      }
    }
    if (msg.role == chat::Role::Tool) msg.tool_call_id = opt_string(m, "tool_call_id").value_or("");
    r.conv.messages.push_back(std::move(msg));
  }
  parse_tools(j, r);
  parse_tool_choice(j, r);
  auto mt = opt_int(j, "max_completion_tokens");
  if (!mt) mt = opt_int(j, "max_tokens");
  if (mt) {
    if (*mt < 1) bad_request("max_tokens", "'max_tokens' must be at least 1");
    r.max_tokens = *mt;
  }
  if (j.contains("stop")) r.sampling.stop_strings = parse_stop(j["stop"], "stop");
  if (const json* so = opt_field(j, "stream_options", json::value_t::object, "an object"))
    r.include_usage = opt_bool(*so, "include_usage").value_or(false);
  if (opt_bool(j, "logprobs").value_or(false)) {
    r.top_logprobs = static_cast<int>(opt_int(j, "top_logprobs").value_or(0));
    if (r.top_logprobs < 0 || r.top_logprobs > 20) bad_request("top_logprobs", "'top_logprobs' must be in [0, 20]");
  }
  return r;
}

class ChatProtocol : public Protocol {
 public:
  ChatProtocol(ServerContext& ctx, ApiRequest r)
      : ctx_(ctx), req_(std::move(r)), id_(random_id("chatcmpl-")), created_(unix_now()) {}

  std::string stream_begin(const GenResult&) override {
    return sse_data(chunk({{"role", "assistant"}, {"content", ""}}, nullptr));
  }
  std::string stream_event(const OutEvent& e, const Collected& c) override {
    switch (e.kind) {
      case OutEvent::Kind::Reasoning:
        return e.text.empty() ? "" : sse_data(chunk({{"reasoning_content", e.text}}, nullptr));
      case OutEvent::Kind::Text: {
        if (e.text.empty()) return "";
        json ch = chunk({{"content", e.text}}, nullptr);
        if (req_.top_logprobs >= 0)
          ch["choices"][0]["logprobs"] = {{"content", openai_logprobs(ctx_.engine.tokenizer(), e.logprobs)}};
        return sse_data(ch);
      }
      case OutEvent::Kind::CallStart:
        return sse_data(chunk({{"tool_calls", json::array({{{"index", e.index},
                                                               {"id", c.calls.back().id},
                                                               {"type", "function"},
                                                               {"function", {{"name", e.name}, {"arguments", ""}}}}})}},
                              nullptr));
      case OutEvent::Kind::CallArgs:
        return e.text.empty() ? ""
                              : sse_data(chunk({{"tool_calls", json::array({{{"index", e.index},
                                                                                {"function", {{"arguments", e.text}}}}})}},
                                               nullptr));
      case OutEvent::Kind::CallEnd: return "";
    }
    return "";
  }
  std::string stream_end(const Collected& c, const GenResult& r) override {
    std::string out = sse_data(chunk(json::object(), finish(c, r)));
    if (req_.include_usage) {
      json u = base("chat.completion.chunk");
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
    json msg = {{"role", "assistant"}, {"content", c.content.empty() && !c.calls.empty() ? json() : json(c.content)}};
    if (!c.reasoning.empty()) msg["reasoning_content"] = c.reasoning;
    if (!c.calls.empty()) {
      msg["tool_calls"] = json::array();
      for (const auto& call : c.calls)
        msg["tool_calls"].push_back(
            {{"id", call.id}, {"type", "function"}, {"function", {{"name", call.name}, {"arguments", call.arguments}}}});
    }
    json out = base("chat.completion");
    json choice = {{"index", 0}, {"message", msg}, {"logprobs", nullptr}, {"finish_reason", finish(c, r)}};
    if (req_.top_logprobs >= 0)
      choice["logprobs"] = {{"content", openai_logprobs(ctx_.engine.tokenizer(), c.logprobs)}};
    out["choices"] = json::array({choice});
    out["usage"] = openai_usage(r);
    return out;
  }

 private:
  static std::string finish(const Collected& c, const GenResult& r) {
    if (!c.calls.empty()) return "tool_calls";
    return r.finish == "length" ? "length" : "stop";
  }
  json base(const char* object) const {
    return {{"id", id_}, {"object", object}, {"created", created_}, {"model", req_.model}, {"system_fingerprint", nullptr}};
  }
  json chunk(json delta, const json& finish_reason) const {
    json c = base("chat.completion.chunk");
    c["choices"] = json::array({{{"index", 0}, {"delta", std::move(delta)}, {"logprobs", nullptr},
                                 {"finish_reason", finish_reason}}});
    return c;
  }
  json chunk(json delta, std::nullptr_t) const { return chunk(std::move(delta), json()); }

  ServerContext& ctx_;
  ApiRequest req_;
  std::string id_;
  int64_t created_;
};

}  // namespace

void handle_chat_completions(ServerContext& ctx, const httplib::Request& req, httplib::Response& res) {
  ApiRequest r = parse_chat(parse_body(req.body), ctx);
  auto job = make_job(r, ctx);
  const bool stream = r.stream;
  std::vector<std::string> stops = r.sampling.stop_strings;
  serve_generation(ctx, res, job, std::make_shared<ChatProtocol>(ctx, std::move(r)), stream, true, std::move(stops),
                   "chat.completions");
}

}  // namespace ds4::server
