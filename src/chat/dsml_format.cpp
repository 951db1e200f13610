#include "chat/dsml_format.h"

#include "chat/py_json.h"
#include "core/error.h"

namespace ds4::chat {
namespace {

void text(Pieces& out, std::string_view s) {
  if (s.empty()) return;
  if (!out.empty() && !out.back().special) out.back().text += s;
  else out.push_back({std::string(s), false});
}
void special(Pieces& out, std::string_view s) { out.push_back({std::string(s), true}); }

// "<｜DSML｜NAME": only ｜DSML｜ is a token; "<", "/" and the tag name are text.
void tag(Pieces& out, bool close, std::string_view name) {
  text(out, close ? "</" : "<");
  special(out, tokens::kDsml);
  text(out, name);
}

// Parses OFF's way: json.loads(arguments), falling back to {"arguments": raw text}.
Json arguments_object(const std::string& args) {
  Json parsed = Json::parse(args, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_object()) return parsed;
  Json obj = Json::object();
  obj["arguments"] = args;
  return obj;
}

}  // namespace

void append_tools_block(Pieces& out, const std::vector<Json>& tools) {
  text(out,
       "## Tools\n\nYou have access to a set of tools to help answer the user's question. You can "
       "invoke tools by writing a \"");
  tag(out, false, "tool_calls>");
  text(out, "\" block like the following:\n\n");
  tag(out, false, "tool_calls>\n");
  tag(out, false, "invoke name=\"$TOOL_NAME\">\n");
  tag(out, false, "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE");
  tag(out, true, "parameter>\n...\n");
  tag(out, true, "invoke>\n");
  tag(out, false, "invoke name=\"$TOOL_NAME2\">\n...\n");
  tag(out, true, "invoke>\n");
  tag(out, true, "tool_calls>\n\n");
  text(out,
       "String parameters should be specified as is and set `string=\"true\"`. For all other types "
       "(numbers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`."
       "\n\nIf thinking_mode is enabled (triggered by ");
  special(out, tokens::kThink);
  text(out, "), you MUST output your complete reasoning inside ");
  special(out, tokens::kThink);
  text(out, "...");
  special(out, tokens::kThinkEnd);
  text(out, " BEFORE any tool calls or final response.\n\nOtherwise, output directly after ");
  special(out, tokens::kThinkEnd);
  text(out, " with tool calls or final response.\n\n### Available Tool Schemas\n\n");
  for (size_t i = 0; i < tools.size(); ++i) {
    if (i) text(out, "\n");
    text(out, py_dumps(tools[i]));
  }
  text(out, "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n");
}

void append_tool_calls(Pieces& out, const std::vector<ToolCall>& calls) {
  text(out, "\n\n");
  tag(out, false, "tool_calls>\n");
  for (size_t i = 0; i < calls.size(); ++i) {
    if (i) text(out, "\n");
    tag(out, false, "invoke name=\"" + calls[i].name + "\">\n");
    Json args = arguments_object(calls[i].arguments);
    bool first = true;
    for (auto it = args.begin(); it != args.end(); ++it) {
      if (!first) text(out, "\n");
      first = false;
      bool is_str = it.value().is_string();
      tag(out, false, "parameter name=\"" + it.key() + "\" string=\"" + (is_str ? "true" : "false") + "\">");
      text(out, is_str ? it.value().get_ref<const std::string&>() : py_dumps(it.value()));
      tag(out, true, "parameter>");
    }
    text(out, "\n");
    tag(out, true, "invoke>");
  }
  text(out, "\n");
  tag(out, true, "tool_calls>");
}

std::string tool_calls_text(const std::vector<ToolCall>& calls) {
  Pieces p;
  append_tool_calls(p, calls);
  return pieces_to_text(p);
}

Json to_openai(const ToolCall& c) {
  Json j;
  j["id"] = c.id;
  j["type"] = "function";
  j["function"]["name"] = c.name;
  j["function"]["arguments"] = c.arguments;
  return j;
}

ToolCall tool_call_from_openai(const Json& j) {
  if (!j.is_object() || !j.contains("function") || !j["function"].is_object())
    fail("OpenAI tool call must be an object with a \"function\" object");
  const Json& f = j["function"];
  if (!f.contains("name") || !f["name"].is_string()) fail("OpenAI tool call has no function name");
  ToolCall c;
  c.id = j.value("id", "");
  c.name = f["name"].get<std::string>();
  if (f.contains("arguments")) {
    // Clients send a JSON string; some send the object itself.
    c.arguments = f["arguments"].is_string() ? f["arguments"].get<std::string>() : py_dumps(f["arguments"]);
  } else {
    c.arguments = "{}";
  }
  return c;
}

Json to_anthropic(const ToolCall& c) {
  Json j;
  j["type"] = "tool_use";
  j["id"] = c.id;
  j["name"] = c.name;
  j["input"] = arguments_object(c.arguments);
  return j;
}

ToolCall tool_call_from_anthropic(const Json& j) {
  if (!j.is_object() || j.value("type", "") != "tool_use") fail("Anthropic block is not a tool_use");
  if (!j.contains("name") || !j["name"].is_string()) fail("Anthropic tool_use has no name");
  ToolCall c;
  c.id = j.value("id", "");
  c.name = j["name"].get<std::string>();
  c.arguments = py_dumps(j.contains("input") ? j["input"] : Json::object());
  return c;
}

}  // namespace ds4::chat
