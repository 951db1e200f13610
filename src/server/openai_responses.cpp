// POST /v1/responses (OpenAI Responses API, as Codex CLI uses it). Stateless: the client sends
// the whole transcript in `input`; previous_response_id is refused (400) rather than guessed.
// Reasoning is returned as a reasoning item with reasoning_text content; every streamed event
// carries a sequence_number.
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

// Consecutive reasoning, assistant message and function_call items form one assistant turn:
// calls join the turn before them; text joins a turn that has only reasoning so far.
chat::Message& assistant_turn(chat::Conversation& conv, bool for_call) {
  const bool open = !conv.messages.empty() && conv.messages.back().role == chat::Role::Assistant &&
                    (for_call || (conv.messages.back().content.empty() && conv.messages.back().tool_calls.empty()));
  if (!open)
    conv.messages.push_back(chat::make_message(chat::Role::Assistant, ""));
  return conv.messages.back();
}

void parse_input(const json& j, ApiRequest& r) {
  auto it = j.find("input");
  if (it == j.end() || it->is_null()) bad_request("input", "'input' is required");
  if (it->is_string()) {
    r.conv.messages.push_back(chat::make_message(chat::Role::User, it->get<std::string>()));
    return;
  }
  if (!it->is_array()) bad_request("input", "'input' must be a string or an array of items");
  for (const json& item : *it) {
    if (!item.is_object()) bad_request("input", "'input' items must be objects");
    const std::string type = item.value("type", item.contains("role") ? "message" : "");
    if (type == "message") {
      const std::string role = opt_string(item, "role").value_or("user");
      const std::string text = content_text(item.contains("content") ? item["content"] : json(), "input.content");
      if (role == "assistant") {
        chat::Message& m = assistant_turn(r.conv, false);
        m.content += text;
      } else if (role == "user") {
        r.conv.messages.push_back(chat::make_message(chat::Role::User, text));
      } else if (role == "system" || role == "developer") {
        r.conv.messages.push_back(chat::make_message(chat::Role::System, text));
      } else {
        bad_request("input", fmt::format("unknown role '{}'", role));
      }
    } else if (type == "function_call") {
      chat::ToolCall c;
      c.id = opt_string(item, "call_id").value_or("");
      c.name = opt_string(item, "name").value_or("");
      c.arguments = opt_string(item, "arguments").value_or("{}");
      if (c.name.empty()) bad_request("input", "a function_call item needs a name");
      chat::Message& m = assistant_turn(r.conv, true);
      m.tool_calls.push_back(std::move(c));
    } else if (type == "function_call_output") {
      const auto& out = item.contains("output") ? item["output"] : json();
      r.conv.messages.push_back(chat::tool_message(opt_string(item, "call_id").value_or(""),
                                                   out.is_string() ? out.get<std::string>() : content_text(out, "output")));
    } else if (type == "reasoning") {
      std::string text;
      if (const json* c = opt_field(item, "content", json::value_t::array, "an array"))
        for (const json& p : *c) text += p.value("text", "");
      if (text.empty())
        if (const json* s = opt_field(item, "summary", json::value_t::array, "an array"))
          for (const json& p : *s) text += p.value("text", "");
      if (!r.conv.messages.empty() && r.conv.messages.back().role == chat::Role::Assistant &&
          r.conv.messages.back().content.empty() && r.conv.messages.back().tool_calls.empty())
        r.conv.messages.back().reasoning += text;
      else
        r.conv.messages.push_back(chat::assistant_message("", text));
    }
    // Other item types (web search, compaction, ...) have no DeepSeek rendering: skipped.
  }
}

ApiRequest parse_responses(const json& j, ServerContext& ctx) {
  ApiRequest r;
  parse_common(j, r, ctx);
  if (j.contains("previous_response_id") && !j["previous_response_id"].is_null())
    bad_request("previous_response_id", "this server is stateless: replay the full input instead of previous_response_id");
  if (j.contains("conversation") && !j["conversation"].is_null())
    bad_request("conversation", "this server is stateless: replay the full input instead of a conversation id");
  if (auto ins = opt_string(j, "instructions")) r.conv.messages.push_back(chat::make_message(chat::Role::System, *ins));
  parse_input(j, r);
  if (const json* tools = opt_field(j, "tools", json::value_t::array, "an array")) {
    for (const json& t : *tools) {
      if (!t.is_object() || t.value("type", "") != "function") continue;  // hosted tools: none here
      if (!opt_string(t, "name")) bad_request("tools", "a function tool needs a name");
      chat::Json fn = {{"name", t["name"]}};
      if (t.contains("description")) fn["description"] = t["description"];
      if (t.contains("parameters")) fn["parameters"] = t["parameters"];
      r.conv.tools.push_back(std::move(fn));
    }
  }
  if (auto it = j.find("tool_choice"); it != j.end() && !it->is_null()) {
    if (it->is_string() && *it == "auto") r.tool_choice = ToolChoice::Auto;
    else if (it->is_string() && *it == "none") r.tool_choice = ToolChoice::None;
    else if (it->is_string() && *it == "required") r.tool_choice = ToolChoice::Required;
    else if (it->is_object() && it->value("type", "") == "function" && opt_string(*it, "name")) {
      r.tool_choice = ToolChoice::Named;
      r.tool_name = *opt_string(*it, "name");
    } else {
      bad_request("tool_choice", "'tool_choice' must be auto, none, required or {type: function, name}");
    }
  }
  if (auto mt = opt_int(j, "max_output_tokens")) {
    if (*mt < 1) bad_request("max_output_tokens", "'max_output_tokens' must be at least 1");
    r.max_tokens = *mt;
  }
  if (const json* re = opt_field(j, "reasoning", json::value_t::object, "an object"))
    if (auto e = opt_string(*re, "effort")) r.thinking = thinking_from_effort(*e, ctx.opt.ctx, "reasoning.effort");
  return r;
}

class ResponsesProtocol : public Protocol {
 public:
  ResponsesProtocol(ServerContext& ctx, ApiRequest r, int64_t prompt_tokens)
      : req_(std::move(r)), id_(random_id("resp_")), created_(unix_now()), prompt_tokens_(prompt_tokens) {
    (void)ctx;
  }

  std::string stream_begin(const GenResult&) override {
    json resp = response_object(Collected{}, nullptr, "in_progress");
    std::string out = ev("response.created", {{"response", resp}});  // sequence numbers in order
    out += ev("response.in_progress", {{"response", resp}});
    return out;
  }
  std::string stream_event(const OutEvent& e, const Collected& c) override {
    std::string out;
    switch (e.kind) {
      case OutEvent::Kind::Reasoning:
        if (e.text.empty()) break;
        if (open_ != Open::Reasoning) {
          out += close_item(c);
          open_ = Open::Reasoning;
          index_ = next_index_++;
          out += ev("response.output_item.added", {{"output_index", index_}, {"item", reasoning_item("", "in_progress")}});
          out += ev("response.content_part.added", {{"item_id", rs_id_}, {"output_index", index_}, {"content_index", 0},
                                                     {"part", {{"type", "reasoning_text"}, {"text", ""}}}});
        }
        out += ev("response.reasoning_text.delta",
                  {{"item_id", rs_id_}, {"output_index", index_}, {"content_index", 0}, {"delta", e.text}});
        break;
      case OutEvent::Kind::Text:
        if (e.text.empty()) break;
        if (open_ != Open::Message) {
          out += close_item(c);
          open_ = Open::Message;
          index_ = next_index_++;
          out += ev("response.output_item.added", {{"output_index", index_}, {"item", message_item("", "in_progress")}});
          out += ev("response.content_part.added", {{"item_id", msg_id_}, {"output_index", index_}, {"content_index", 0},
                                                     {"part", text_part("")}});
        }
        out += ev("response.output_text.delta", {{"item_id", msg_id_}, {"output_index", index_}, {"content_index", 0},
                                                  {"delta", e.text}, {"logprobs", json::array()}});
        break;
      case OutEvent::Kind::CallStart:
        out += close_item(c);
        open_ = Open::Call;
        index_ = next_index_++;
        fc_ids_.push_back(random_id("fc_"));
        out += ev("response.output_item.added",
                  {{"output_index", index_}, {"item", call_item(c.calls.back(), fc_ids_.back(), "", "in_progress")}});
        break;
      case OutEvent::Kind::CallArgs:
        if (!e.text.empty())
          out += ev("response.function_call_arguments.delta",
                    {{"item_id", fc_ids_.back()}, {"output_index", index_}, {"delta", e.text}});
        break;
      case OutEvent::Kind::CallEnd: out += close_item(c); break;
    }
    return out;
  }
  std::string stream_end(const Collected& c, const GenResult& r) override {
    std::string out = close_item(c);
    const bool incomplete = r.finish == "length" && c.calls.empty();
    json resp = response_object(c, &r, incomplete ? "incomplete" : "completed");
    return out + ev(incomplete ? "response.incomplete" : "response.completed", {{"response", resp}});
  }
  std::string stream_error(const std::string& message) override {
    json resp = response_object(Collected{}, nullptr, "failed");
    resp["error"] = {{"code", "server_error"}, {"message", message}};
    return ev("response.failed", {{"response", resp}});
  }
  json response(const Collected& c, const GenResult& r) override {
    const bool incomplete = r.finish == "length" && c.calls.empty();
    return response_object(c, &r, incomplete ? "incomplete" : "completed");
  }

 private:
  enum class Open { None, Reasoning, Message, Call };

  std::string ev(const char* type, json body) {
    json e = {{"type", type}, {"sequence_number", seq_++}};
    for (auto it = body.begin(); it != body.end(); ++it) e[it.key()] = it.value();
    return sse_event(type, e);
  }
  json reasoning_item(const std::string& text, const char* status) {
    if (rs_id_.empty()) rs_id_ = random_id("rs_");
    json content = json::array();
    if (std::string(status) != "in_progress") content.push_back({{"type", "reasoning_text"}, {"text", text}});
    return {{"id", rs_id_}, {"type", "reasoning"}, {"status", status}, {"summary", json::array()}, {"content", content}};
  }
  static json text_part(const std::string& text) {
    return {{"type", "output_text"}, {"text", text}, {"annotations", json::array()}, {"logprobs", json::array()}};
  }
  json message_item(const std::string& text, const char* status) {
    if (msg_id_.empty()) msg_id_ = random_id("msg_");
    json content = json::array();
    if (std::string(status) != "in_progress") content.push_back(text_part(text));
    return {{"id", msg_id_}, {"type", "message"}, {"status", status}, {"role", "assistant"}, {"content", content}};
  }
  static json call_item(const CollectedCall& call, const std::string& id, const std::string& args, const char* status) {
    return {{"id", id}, {"type", "function_call"}, {"status", status}, {"call_id", call.id}, {"name", call.name},
            {"arguments", args}};
  }
  std::string close_item(const Collected& c) {
    std::string out;
    switch (open_) {
      case Open::None: break;
      case Open::Reasoning:
        out += ev("response.reasoning_text.done",
                  {{"item_id", rs_id_}, {"output_index", index_}, {"content_index", 0}, {"text", c.reasoning}});
        out += ev("response.content_part.done", {{"item_id", rs_id_}, {"output_index", index_}, {"content_index", 0},
                                                  {"part", {{"type", "reasoning_text"}, {"text", c.reasoning}}}});
        out += ev("response.output_item.done", {{"output_index", index_}, {"item", reasoning_item(c.reasoning, "completed")}});
        break;
      case Open::Message:
        out += ev("response.output_text.done", {{"item_id", msg_id_}, {"output_index", index_}, {"content_index", 0},
                                                 {"text", c.content}, {"logprobs", json::array()}});
        out += ev("response.content_part.done",
                  {{"item_id", msg_id_}, {"output_index", index_}, {"content_index", 0}, {"part", text_part(c.content)}});
        out += ev("response.output_item.done", {{"output_index", index_}, {"item", message_item(c.content, "completed")}});
        break;
      case Open::Call: {
        const CollectedCall& call = c.calls.back();
        out += ev("response.function_call_arguments.done",
                  {{"item_id", fc_ids_.back()}, {"output_index", index_}, {"arguments", call.arguments}});
        out += ev("response.output_item.done",
                  {{"output_index", index_}, {"item", call_item(call, fc_ids_.back(), call.arguments, "completed")}});
        break;
      }
    }
    open_ = Open::None;
    return out;
  }
  json response_object(const Collected& c, const GenResult* r, const char* status) {
    json output = json::array();
    if (r) {
      if (!c.reasoning.empty()) output.push_back(reasoning_item(c.reasoning, "completed"));
      if (!c.content.empty() || c.calls.empty()) output.push_back(message_item(c.content, "completed"));
      for (size_t i = 0; i < c.calls.size(); ++i) {
        while (fc_ids_.size() <= i) fc_ids_.push_back(random_id("fc_"));
        output.push_back(call_item(c.calls[i], fc_ids_[i], c.calls[i].arguments, "completed"));
      }
    }
    json usage = nullptr;
    if (r) {
      usage = {{"input_tokens", r->prompt_tokens},
               {"input_tokens_details", {{"cached_tokens", r->cached_tokens}}},
               {"output_tokens", r->completion_tokens},
               {"output_tokens_details", {{"reasoning_tokens", 0}}},
               {"total_tokens", r->prompt_tokens + r->completion_tokens}};
    }
    json tools = json::array();
    for (const auto& t : req_.conv.tools) {
      json fn = {{"type", "function"}, {"name", t.value("name", "")}, {"strict", false}};
      if (t.contains("description")) fn["description"] = t["description"];
      fn["parameters"] = t.contains("parameters") ? t["parameters"] : json::object();
      tools.push_back(std::move(fn));
    }
    const bool incomplete = std::string(status) == "incomplete";
    (void)prompt_tokens_;
    return {{"id", id_},
            {"object", "response"},
            {"created_at", created_},
            {"status", status},
            {"error", nullptr},
            {"incomplete_details", incomplete ? json{{"reason", "max_output_tokens"}} : json()},
            {"instructions", nullptr},
            {"max_output_tokens", req_.max_tokens < 0 ? json() : json(req_.max_tokens)},
            {"model", req_.model},
            {"output", output},
            {"parallel_tool_calls", true},
            {"previous_response_id", nullptr},
            {"reasoning", {{"effort", nullptr}, {"summary", nullptr}}},
            {"store", false},
            {"temperature", req_.sampling.temperature},
            {"text", {{"format", {{"type", "text"}}}}},
            {"tool_choice", req_.tool_choice == ToolChoice::None       ? json("none")
                            : req_.tool_choice == ToolChoice::Required ? json("required")
                            : req_.tool_choice == ToolChoice::Named    ? json{{"type", "function"}, {"name", req_.tool_name}}
                                                                       : json("auto")},
            {"tools", tools},
            {"top_p", req_.sampling.top_p},
            {"truncation", "disabled"},
            {"usage", usage},
            {"metadata", json::object()}};
  }

  ApiRequest req_;
  std::string id_;
  int64_t created_;
  int64_t prompt_tokens_;
  int64_t seq_ = 0;
  Open open_ = Open::None;
  int index_ = -1, next_index_ = 0;
  std::string rs_id_, msg_id_;
  std::vector<std::string> fc_ids_;
};

}  // namespace

void handle_responses(ServerContext& ctx, const httplib::Request& req, httplib::Response& res) {
  ApiRequest r = parse_responses(parse_body(req.body), ctx);
  auto job = make_job(r, ctx);
  const bool stream = r.stream;
  const int64_t n = static_cast<int64_t>(job->prompt.size());
  serve_generation(ctx, res, job, std::make_shared<ResponsesProtocol>(ctx, std::move(r), n), stream, true, {},
                   "responses");
}

}  // namespace ds4::server
