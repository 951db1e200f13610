// POST /v1/messages and /v1/messages/count_tokens (Anthropic Messages API, as Claude Code uses
// it). Thinking follows the API: off unless `thinking: {type: enabled}`; budget_tokens is a real
// reasoning budget (the server closes </think> when it is spent).
#include <httplib.h>

#include <fmt/format.h>

#include "chat/dsml_format.h"
#include "server/errors.h"
#include "server/generation.h"
#include "server/ids.h"
#include "server/protocols.h"
#include "server/request.h"
#include "server/server_context.h"

namespace ds4::server {

namespace {

std::string block_text(const json& content, const char* field) {
  if (content.is_string()) return content.get<std::string>();
  std::string out;
  if (!content.is_array()) bad_request(field, fmt::format("'{}' must be a string or an array of blocks", field));
  for (const json& b : content) {
    if (!b.is_object()) bad_request(field, "content blocks must be objects");
    const std::string type = b.value("type", "");
    if (type == "text") out += opt_string(b, "text").value_or("");
    else bad_request(field, fmt::format("content block type '{}' is not supported here", type));
  }
  return out;
}

ApiRequest parse_messages(const json& j, ServerContext& ctx, bool count_only) {
  ApiRequest r;
  r.thinking = chat::Thinking::Off;
  parse_common(j, r, ctx);
  if (auto mt = opt_int(j, "max_tokens")) {
    if (*mt < 1) bad_request("max_tokens", "max_tokens: must be at least 1");
    r.max_tokens = *mt;
  } else if (!count_only) {
    bad_request("max_tokens", "max_tokens: Field required");
  }
  if (j.contains("system") && !j["system"].is_null())
    r.conv.messages.push_back(chat::make_message(chat::Role::System, block_text(j["system"], "system")));
  const json* msgs = opt_field(j, "messages", json::value_t::array, "an array");
  if (!msgs || msgs->empty()) bad_request("messages", "messages: must be a non-empty array");
  for (const json& m : *msgs) {
    if (!m.is_object()) bad_request("messages", "each message must be an object");
    const std::string role = opt_string(m, "role").value_or("");
    if (role != "user" && role != "assistant") bad_request("messages", fmt::format("unknown role '{}'", role));
    const json content = m.contains("content") ? m["content"] : json();
    if (role == "user") {
      if (content.is_string()) {
        r.conv.messages.push_back(chat::make_message(chat::Role::User, content.get<std::string>()));
        continue;
      }
      if (!content.is_array()) bad_request("messages", "content must be a string or an array of blocks");
      std::string text;
      for (const json& b : content) {
        if (!b.is_object()) bad_request("messages", "content blocks must be objects");
        const std::string type = b.value("type", "");
        if (type == "text") {
          text += opt_string(b, "text").value_or("");
        } else if (type == "tool_result") {
          const json& c = b.contains("content") ? b["content"] : json("");
          r.conv.messages.push_back(chat::tool_message(opt_string(b, "tool_use_id").value_or(""),
                                                       c.is_null() ? std::string() : block_text(c, "tool_result.content")));
        } else {
          bad_request("messages", fmt::format("content block type '{}' is not supported (text only)", type));
        }
      }
      if (!text.empty()) r.conv.messages.push_back(chat::make_message(chat::Role::User, text));
    } else {
      chat::Message a = chat::make_message(chat::Role::Assistant, "");
      if (content.is_string()) {
        a.content = content.get<std::string>();
      } else if (content.is_array()) {
        for (const json& b : content) {
          const std::string type = b.is_object() ? b.value("type", "") : "";
          if (type == "text") a.content += opt_string(b, "text").value_or("");
          else if (type == "thinking") a.reasoning += opt_string(b, "thinking").value_or("");
          else if (type == "redacted_thinking") continue;
          else if (type == "tool_use") {
            try {
              a.tool_calls.push_back(chat::tool_call_from_anthropic(b));
            } catch (const std::exception& e) {
              bad_request("messages", e.what());
            }
          } else {
            bad_request("messages", fmt::format("content block type '{}' is not supported", type));
          }
        }
      }
      r.conv.messages.push_back(std::move(a));
    }
  }
  if (const json* tools = opt_field(j, "tools", json::value_t::array, "an array")) {
    for (const json& t : *tools) {
      if (!t.is_object() || !opt_string(t, "name")) bad_request("tools", "each tool needs a name");
      if (t.contains("type") && t["type"] != "custom") continue;  // server tools: none here
      chat::Json fn = {{"name", t["name"]}};
      if (t.contains("description")) fn["description"] = t["description"];
      fn["parameters"] = t.contains("input_schema") ? t["input_schema"] : chat::Json::object();
      r.conv.tools.push_back(std::move(fn));
    }
  }
  if (const json* tc = opt_field(j, "tool_choice", json::value_t::object, "an object")) {
    const std::string type = tc->value("type", "auto");
    if (type == "auto") r.tool_choice = ToolChoice::Auto;
    else if (type == "none") r.tool_choice = ToolChoice::None;
    else if (type == "any") r.tool_choice = ToolChoice::Required;
    else if (type == "tool" && opt_string(*tc, "name")) {
      r.tool_choice = ToolChoice::Named;
      r.tool_name = *opt_string(*tc, "name");
    } else {
      bad_request("tool_choice", "tool_choice.type must be auto, any, tool (with name) or none");
    }
  }
  if (const json* th = opt_field(j, "thinking", json::value_t::object, "an object")) {
    const std::string type = th->value("type", "");
    if (type == "enabled" || type == "adaptive") {
      r.thinking = chat::Thinking::High;
      if (auto b = opt_int(*th, "budget_tokens")) r.reasoning_budget = std::max<int64_t>(0, *b);
    } else if (type != "disabled") {
      bad_request("thinking", "thinking.type must be enabled or disabled");
    }
  }
  if (const json* oc = opt_field(j, "output_config", json::value_t::object, "an object"))
    if (auto e = opt_string(*oc, "effort")) r.thinking = thinking_from_effort(*e, ctx.opt.ctx, "output_config.effort");
  if (j.contains("stop_sequences")) r.sampling.stop_strings = parse_stop(j["stop_sequences"], "stop_sequences");
  return r;
}

class MessagesProtocol : public Protocol {
 public:
  MessagesProtocol(ApiRequest r, int64_t prompt_tokens)
      : req_(std::move(r)), id_(random_id("msg_")), prompt_tokens_(prompt_tokens) {}
  ApiStyle style() const override { return ApiStyle::Anthropic; }
  std::string call_id_prefix() const override { return "toolu_"; }

  std::string stream_begin(const GenResult&) override {
    json msg = message(json::array(), nullptr, nullptr);
    msg["usage"] = {{"input_tokens", prompt_tokens_}, {"output_tokens", 0}, {"cache_read_input_tokens", 0},
                    {"cache_creation_input_tokens", 0}};
    return sse_event("message_start", {{"type", "message_start"}, {"message", msg}});
  }
  std::string stream_event(const OutEvent& e, const Collected& c) override {
    std::string out;
    switch (e.kind) {
      case OutEvent::Kind::Reasoning:
        if (e.text.empty()) break;
        out += open(Open::Thinking, {{"type", "thinking"}, {"thinking", ""}, {"signature", ""}});
        out += delta({{"type", "thinking_delta"}, {"thinking", e.text}});
        break;
      case OutEvent::Kind::Text:
        if (e.text.empty()) break;
        out += open(Open::Text, {{"type", "text"}, {"text", ""}});
        out += delta({{"type", "text_delta"}, {"text", e.text}});
        break;
      case OutEvent::Kind::CallStart:
        out += close();
        out += open(Open::Tool, {{"type", "tool_use"}, {"id", c.calls.back().id}, {"name", e.name}, {"input", json::object()}});
        break;
      case OutEvent::Kind::CallArgs:
        if (!e.text.empty()) out += delta({{"type", "input_json_delta"}, {"partial_json", e.text}});
        break;
      case OutEvent::Kind::CallEnd: out += close(); break;
    }
    return out;
  }
  std::string stream_end(const Collected& c, const GenResult& r) override {
    std::string out = close();
    out += sse_event("message_delta", {{"type", "message_delta"},
                                       {"delta", {{"stop_reason", stop_reason(c, r)}, {"stop_sequence", stop_seq(c)}}},
                                       {"usage", usage(r)}});
    return out + sse_event("message_stop", {{"type", "message_stop"}});
  }
  std::string stream_error(const std::string& message) override {
    return sse_event("error", {{"type", "error"}, {"error", {{"type", "api_error"}, {"message", message}}}});
  }
  json response(const Collected& c, const GenResult& r) override {
    json content = json::array();
    if (!c.reasoning.empty())
      content.push_back({{"type", "thinking"}, {"thinking", c.reasoning}, {"signature", signature()}});
    if (!c.content.empty() || c.calls.empty()) content.push_back({{"type", "text"}, {"text", c.content}});
    for (const auto& call : c.calls) {
      json input = json::parse(call.arguments, nullptr, false);
      if (input.is_discarded() || !input.is_object()) input = json::object();
      content.push_back({{"type", "tool_use"}, {"id", call.id}, {"name", call.name}, {"input", input}});
    }
    json msg = message(content, stop_reason(c, r), stop_seq(c));
    msg["usage"] = usage(r);
    return msg;
  }

 private:
  enum class Open { None, Thinking, Text, Tool };
  // Not a cryptographic signature: DeepSeek has none. Clients only echo it back.
  std::string signature() const { return "ds4-" + id_; }
  static json stop_reason(const Collected& c, const GenResult& r) {
    if (!c.calls.empty()) return "tool_use";
    if (c.stop_sequence) return "stop_sequence";
    return r.finish == "length" ? "max_tokens" : "end_turn";
  }
  static json stop_seq(const Collected& c) { return c.stop_sequence ? json(*c.stop_sequence) : json(); }
  static json usage(const GenResult& r) {
    // Anthropic counts cached input apart: input_tokens is the uncached part.
    return {{"input_tokens", r.prompt_tokens - r.cached_tokens},
            {"output_tokens", r.completion_tokens},
            {"cache_read_input_tokens", r.cached_tokens},
            {"cache_creation_input_tokens", 0}};
  }
  json message(json content, json stop_reason, json stop_sequence) const {
    return {{"id", id_}, {"type", "message"}, {"role", "assistant"}, {"model", req_.model}, {"content", std::move(content)},
            {"stop_reason", std::move(stop_reason)}, {"stop_sequence", std::move(stop_sequence)}};
  }
  std::string open(Open kind, json block) {
    if (open_ == kind) return "";
    std::string out = close();
    open_ = kind;
    ++index_;
    return out + sse_event("content_block_start",
                           {{"type", "content_block_start"}, {"index", index_}, {"content_block", std::move(block)}});
  }
  std::string delta(json d) {
    return sse_event("content_block_delta", {{"type", "content_block_delta"}, {"index", index_}, {"delta", std::move(d)}});
  }
  std::string close() {
    if (open_ == Open::None) return "";
    std::string out;
    if (open_ == Open::Thinking) out += delta({{"type", "signature_delta"}, {"signature", signature()}});
    open_ = Open::None;
    return out + sse_event("content_block_stop", {{"type", "content_block_stop"}, {"index", index_}});
  }

  ApiRequest req_;
  std::string id_;
  int64_t prompt_tokens_;
  Open open_ = Open::None;
  int index_ = -1;
};

}  // namespace

void handle_messages(ServerContext& ctx, const httplib::Request& req, httplib::Response& res) {
  ApiRequest r = parse_messages(parse_body(req.body), ctx, false);
  auto job = make_job(r, ctx);
  const bool stream = r.stream;
  const int64_t n = static_cast<int64_t>(job->prompt.size());
  std::vector<std::string> stops = r.sampling.stop_strings;
  serve_generation(ctx, res, job, std::make_shared<MessagesProtocol>(std::move(r), n), stream, true, std::move(stops),
                   "messages");
}

void handle_count_tokens(ServerContext& ctx, const httplib::Request& req, httplib::Response& res) {
  ApiRequest r = parse_messages(parse_body(req.body), ctx, true);
  const int64_t n = count_prompt_tokens(r, ctx);
  res.set_content(json{{"input_tokens", n}}.dump(), "application/json");
  ctx.metrics.count_request("messages.count_tokens", 200);
}

}  // namespace ds4::server
