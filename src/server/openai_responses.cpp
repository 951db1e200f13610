// POST /v1/responses (OpenAI Responses API, as Codex CLI uses it). Stateless: the client sends
// the whole transcript in `input`; previous_response_id is refused (400) rather than guessed.
// Reasoning is returned as a reasoning item with reasoning_text content, or, when the request
// asks `reasoning: {summary}`, as the item's summary (DeepSeek writes no separate summary: the
// summary is the reasoning text itself). Every streamed event carries a sequence_number.
// Tools: function tools; `custom` tools (free-form text input) are offered to the model as a
// function with one string parameter `input` and come back as custom_tool_call items;
// `namespace` groups are flattened to "namespace.name" and split again on output.
#include <httplib.h>

#include <map>

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

constexpr const char* kCustomInput = "input";  // the one parameter a custom tool gets

// What the Responses protocol needs beyond the shared request.
struct ResponsesExtras {
  std::string summary;  // reasoning.summary requested ("auto" | "concise" | "detailed"), else empty
  std::string effort;
  struct ToolName {
    std::string ns, name;
    bool custom = false;
  };
  std::map<std::string, ToolName> tools;  // flattened DSML name -> how the client named it
};

std::string flat_name(const std::string& ns, const std::string& name) { return ns.empty() ? name : ns + "." + name; }

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
      c.name = flat_name(opt_string(item, "namespace").value_or(""), c.name);
      chat::Message& m = assistant_turn(r.conv, true);
      m.tool_calls.push_back(std::move(c));
    } else if (type == "custom_tool_call") {
      chat::ToolCall c;
      c.id = opt_string(item, "call_id").value_or("");
      c.name = flat_name(opt_string(item, "namespace").value_or(""), opt_string(item, "name").value_or(""));
      c.arguments = json{{kCustomInput, opt_string(item, "input").value_or("")}}.dump();
      if (c.name.empty()) bad_request("input", "a custom_tool_call item needs a name");
      chat::Message& m = assistant_turn(r.conv, true);
      m.tool_calls.push_back(std::move(c));
    } else if (type == "function_call_output" || type == "custom_tool_call_output") {
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

// One client tool (function or custom, possibly inside a namespace) as a DSML function.
void add_tool(const json& t, const std::string& ns, ApiRequest& r, ResponsesExtras& x) {
  const std::string type = t.value("type", "");
  if (type != "function" && type != "custom") return;  // hosted tools: none here
  const auto name = opt_string(t, "name");
  if (!name || name->empty()) bad_request("tools", fmt::format("a {} tool needs a name", type));
  const std::string flat = flat_name(ns, *name);
  chat::Json fn = {{"name", flat}};
  if (type == "function") {
    if (t.contains("description") && !t["description"].is_null()) fn["description"] = t["description"];
    if (t.contains("parameters") && !t["parameters"].is_null()) fn["parameters"] = t["parameters"];
  } else {
    std::string desc = opt_string(t, "description").value_or("");
    std::string input_desc = "The tool's input as free-form text.";
    if (const json* f = opt_field(t, "format", json::value_t::object, "an object")) {
      if (f->value("type", "text") == "grammar")
        input_desc = fmt::format("The tool's input; it must follow this {} grammar:\n{}", f->value("syntax", "lark"),
                                 f->value("definition", ""));
    }
    if (!desc.empty()) fn["description"] = desc;
    fn["parameters"] = {{"type", "object"},
                        {"properties", {{kCustomInput, {{"type", "string"}, {"description", input_desc}}}}},
                        {"required", json::array({kCustomInput})}};
  }
  x.tools[flat] = {ns, *name, type == "custom"};
  r.conv.tools.push_back(std::move(fn));
}

ApiRequest parse_responses(const json& j, ServerContext& ctx, ResponsesExtras& x) {
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
      if (!t.is_object()) bad_request("tools", "'tools' entries must be objects");
      if (t.value("type", "") == "namespace") {
        const auto ns = opt_string(t, "name");
        if (!ns || ns->empty()) bad_request("tools", "a namespace tool needs a name");
        if (const json* inner = opt_field(t, "tools", json::value_t::array, "an array"))
          for (const json& it : *inner)
            if (it.is_object()) add_tool(it, *ns, r, x);
        continue;
      }
      add_tool(t, "", r, x);
    }
  }
  if (auto it = j.find("tool_choice"); it != j.end() && !it->is_null()) {
    if (it->is_string() && *it == "auto") r.tool_choice = ToolChoice::Auto;
    else if (it->is_string() && *it == "none") r.tool_choice = ToolChoice::None;
    else if (it->is_string() && *it == "required") r.tool_choice = ToolChoice::Required;
    else if (it->is_object() && (it->value("type", "") == "function" || it->value("type", "") == "custom") &&
             opt_string(*it, "name")) {
      r.tool_choice = ToolChoice::Named;
      r.tool_name = flat_name(opt_string(*it, "namespace").value_or(""), *opt_string(*it, "name"));
    } else {
      bad_request("tool_choice", "'tool_choice' must be auto, none, required, {type: function, name} or {type: custom, name}");
    }
  }
  if (auto mt = opt_int(j, "max_output_tokens")) {
    if (*mt < 1) bad_request("max_output_tokens", "'max_output_tokens' must be at least 1");
    r.max_tokens = *mt;
  }
  if (const json* re = opt_field(j, "reasoning", json::value_t::object, "an object")) {
    if (auto e = opt_string(*re, "effort")) {
      r.thinking = thinking_from_effort(*e, ctx.opt.ctx, "reasoning.effort");
      x.effort = *e;
    }
    // generate_summary is the deprecated spelling of summary.
    for (const char* key : {"summary", "generate_summary"}) {
      if (auto sm = opt_string(*re, key)) {
        if (*sm != "auto" && *sm != "concise" && *sm != "detailed")
          bad_request(fmt::format("reasoning.{}", key), fmt::format("'reasoning.{}' must be auto, concise or detailed", key));
        x.summary = *sm;
      }
    }
  }
  return r;
}

class ResponsesProtocol : public Protocol {
 public:
  ResponsesProtocol(ServerContext& ctx, ApiRequest r, ResponsesExtras x)
      : req_(std::move(r)), x_(std::move(x)), id_(random_id("resp_")), created_(unix_now()) {
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
          if (summary())
            out += ev("response.reasoning_summary_part.added", {{"item_id", rs_id_}, {"output_index", index_}, {"summary_index", 0},
                                                                 {"part", {{"type", "summary_text"}, {"text", ""}}}});
          else
            out += ev("response.content_part.added", {{"item_id", rs_id_}, {"output_index", index_}, {"content_index", 0},
                                                       {"part", {{"type", "reasoning_text"}, {"text", ""}}}});
        }
        if (summary())
          out += ev("response.reasoning_summary_text.delta",
                    {{"item_id", rs_id_}, {"output_index", index_}, {"summary_index", 0}, {"delta", e.text}});
        else
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
        // A custom tool's input is plain text, not JSON: it goes out whole when the call ends.
        if (!e.text.empty() && !is_custom(c.calls.back()))
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
  bool summary() const { return !x_.summary.empty(); }
  json named_choice() const {
    const auto it = x_.tools.find(req_.tool_name);
    if (it == x_.tools.end()) return {{"type", "function"}, {"name", req_.tool_name}};
    json c = {{"type", it->second.custom ? "custom" : "function"}, {"name", it->second.name}};
    if (!it->second.ns.empty()) c["namespace"] = it->second.ns;
    return c;
  }
  const ResponsesExtras::ToolName* tool_of(const CollectedCall& call) const {
    auto it = x_.tools.find(call.name);
    return it == x_.tools.end() ? nullptr : &it->second;
  }
  bool is_custom(const CollectedCall& call) const {
    const auto* t = tool_of(call);
    return t && t->custom;
  }
  // A custom tool's input: the `input` string of the DSML call's arguments.
  static std::string custom_input(const std::string& args) {
    const json a = json::parse(args, nullptr, false);
    if (a.is_object() && a.contains(kCustomInput))
      return a[kCustomInput].is_string() ? a[kCustomInput].get<std::string>() : a[kCustomInput].dump();
    return a.is_discarded() ? args : a.dump();
  }
  json reasoning_item(const std::string& text, const char* status) {
    if (rs_id_.empty()) rs_id_ = random_id("rs_");
    const bool done = std::string(status) != "in_progress";
    json item = {{"id", rs_id_}, {"type", "reasoning"}, {"status", status}, {"summary", json::array()}};
    if (summary()) {
      if (done) item["summary"].push_back({{"type", "summary_text"}, {"text", text}});
    } else {
      item["content"] = json::array();
      if (done) item["content"].push_back({{"type", "reasoning_text"}, {"text", text}});
    }
    return item;
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
  json call_item(const CollectedCall& call, const std::string& id, const std::string& args, const char* status) const {
    const auto* t = tool_of(call);
    json item;
    if (t && t->custom) {
      item = {{"id", id}, {"type", "custom_tool_call"}, {"status", status}, {"call_id", call.id}, {"name", t->name},
              {"input", args.empty() ? std::string() : custom_input(args)}};
    } else {
      item = {{"id", id}, {"type", "function_call"}, {"status", status}, {"call_id", call.id},
              {"name", t ? t->name : call.name}, {"arguments", args}};
    }
    if (t && !t->ns.empty()) item["namespace"] = t->ns;
    return item;
  }
  std::string close_item(const Collected& c) {
    std::string out;
    switch (open_) {
      case Open::None: break;
      case Open::Reasoning:
        if (summary()) {
          out += ev("response.reasoning_summary_text.done",
                    {{"item_id", rs_id_}, {"output_index", index_}, {"summary_index", 0}, {"text", c.reasoning}});
          out += ev("response.reasoning_summary_part.done", {{"item_id", rs_id_}, {"output_index", index_}, {"summary_index", 0},
                                                              {"part", {{"type", "summary_text"}, {"text", c.reasoning}}}});
        } else {
          out += ev("response.reasoning_text.done",
                    {{"item_id", rs_id_}, {"output_index", index_}, {"content_index", 0}, {"text", c.reasoning}});
          out += ev("response.content_part.done", {{"item_id", rs_id_}, {"output_index", index_}, {"content_index", 0},
                                                    {"part", {{"type", "reasoning_text"}, {"text", c.reasoning}}}});
        }
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
        if (c.calls.empty()) break;  // voided by a malformed block (the stream ends with an error)
        const CollectedCall& call = c.calls.back();
        if (is_custom(call)) {
          const std::string input = custom_input(call.arguments);
          out += ev("response.custom_tool_call_input.delta",
                    {{"item_id", fc_ids_.back()}, {"output_index", index_}, {"delta", input}});
          out += ev("response.custom_tool_call_input.done",
                    {{"item_id", fc_ids_.back()}, {"output_index", index_}, {"input", input}});
        } else {
          out += ev("response.function_call_arguments.done",
                    {{"item_id", fc_ids_.back()}, {"output_index", index_}, {"arguments", call.arguments}});
        }
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
      const auto it = x_.tools.find(t.value("name", ""));
      json fn;
      if (it != x_.tools.end() && it->second.custom) {
        fn = {{"type", "custom"}, {"name", it->second.name}};
      } else {
        fn = {{"type", "function"}, {"name", it != x_.tools.end() ? it->second.name : t.value("name", "")}, {"strict", false}};
        fn["parameters"] = t.contains("parameters") ? t["parameters"] : json::object();
      }
      if (t.contains("description")) fn["description"] = t["description"];
      tools.push_back(std::move(fn));
    }
    const bool incomplete = std::string(status) == "incomplete";
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
            {"reasoning", {{"effort", x_.effort.empty() ? json() : json(x_.effort)},
                           {"summary", summary() ? json(x_.summary) : json()}}},
            {"store", false},
            {"temperature", req_.sampling.temperature},
            {"text", {{"format", {{"type", "text"}}}}},
            {"tool_choice", req_.tool_choice == ToolChoice::None       ? json("none")
                            : req_.tool_choice == ToolChoice::Required ? json("required")
                            : req_.tool_choice == ToolChoice::Named    ? named_choice()
                                                                       : json("auto")},
            {"tools", tools},
            {"top_p", req_.sampling.top_p},
            {"truncation", "disabled"},
            {"usage", usage},
            {"metadata", json::object()}};
  }

  ApiRequest req_;
  ResponsesExtras x_;
  std::string id_;
  int64_t created_;
  int64_t seq_ = 0;
  Open open_ = Open::None;
  int index_ = -1, next_index_ = 0;
  std::string rs_id_, msg_id_;
  std::vector<std::string> fc_ids_;
};

}  // namespace

void handle_responses(ServerContext& ctx, const httplib::Request& req, httplib::Response& res) {
  ResponsesExtras x;
  ApiRequest r = parse_responses(parse_body(req.body), ctx, x);
  auto job = make_job(r, ctx);
  const bool stream = r.stream;
  serve_generation(ctx, res, job, std::make_shared<ResponsesProtocol>(ctx, std::move(r), std::move(x)), stream, true, {},
                   "responses");
}

}  // namespace ds4::server
