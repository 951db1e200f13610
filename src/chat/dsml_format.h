// The DSML tool-call markup (architecture.md 7.4) in the rendering direction: the tools block
// of the system prompt and assistant tool calls, plus conversions between tool calls and the
// OpenAI / Anthropic JSON shapes. Parsing model output is dsml_parser.h.
#pragma once

#include <string>
#include <vector>

#include "chat/conversation.h"
#include "chat/render.h"

namespace ds4::chat {

// "## Tools ... ### Available Tool Schemas ... You MUST strictly follow ..." with one
// py_dumps(schema) line per tool (official wording and order).
void append_tools_block(Pieces& out, const std::vector<Json>& tools);

// "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=...>...</｜DSML｜tool_calls>" for an assistant
// turn. Arguments that are not a JSON object are rendered as one parameter named "arguments".
void append_tool_calls(Pieces& out, const std::vector<ToolCall>& calls);

// The same as plain text (｜DSML｜ spelled out), e.g. for logs and tests.
std::string tool_calls_text(const std::vector<ToolCall>& calls);

// OpenAI: {"id", "type": "function", "function": {"name", "arguments"}}.
Json to_openai(const ToolCall& c);
ToolCall tool_call_from_openai(const Json& j);  // throws ds4::Error on a malformed object
// Anthropic: {"type": "tool_use", "id", "name", "input": {...}} (input parsed from arguments).
Json to_anthropic(const ToolCall& c);
ToolCall tool_call_from_anthropic(const Json& j);

}  // namespace ds4::chat
