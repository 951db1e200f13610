// A chat conversation as DeepSeek V4's prompt format sees it (architecture.md 7.3-7.4): the
// roles of the official encoder (encoding_dsv4.py), tool calls with JSON arguments, tool
// results, and tool schemas. Protocol adapters (OpenAI, Anthropic) build one of these.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ds4::chat {

// Insertion-ordered JSON: tool schemas and arguments keep the client's key order, which the
// rendered prompt must reproduce (the official encoder uses Python dicts).
using Json = nlohmann::ordered_json;

enum class Role {
  System,          // raw text after BOS, no role token
  Developer,       // rendered as a user turn (<｜User｜>); dropped before the last user turn
  User,
  Assistant,
  Tool,            // a tool result; merged into a user turn as <tool_result>...</tool_result>
  LatestReminder,  // <｜latest_reminder｜> + content
};

struct ToolCall {
  std::string id;         // client-side id (tool results refer to it); not rendered
  std::string name;
  std::string arguments;  // a JSON object as text (OpenAI's "arguments")
};

struct Message {
  Role role = Role::User;
  std::string content;
  std::string reasoning;              // assistant: thinking text (without <think> tags)
  std::vector<ToolCall> tool_calls;   // assistant
  std::string tool_call_id;           // tool: the call this result answers
  std::optional<std::string> task;    // internal quick-instruction task: action, query,
                                      // authority, domain, title, read_url
  bool no_eos = false;                // assistant: an unfinished turn to continue (prefill)
};

// Shorthands for building conversations in code and tests.
inline Message make_message(Role role, std::string content) {
  Message m;
  m.role = role;
  m.content = std::move(content);
  return m;
}
inline Message assistant_message(std::string content, std::string reasoning = {}, std::vector<ToolCall> calls = {}) {
  Message m = make_message(Role::Assistant, std::move(content));
  m.reasoning = std::move(reasoning);
  m.tool_calls = std::move(calls);
  return m;
}
inline Message tool_message(std::string tool_call_id, std::string content) {
  Message m = make_message(Role::Tool, std::move(content));
  m.tool_call_id = std::move(tool_call_id);
  return m;
}

enum class Thinking { Off, High, Max };  // --nothink, --think, --think-max

struct Conversation {
  std::vector<Message> messages;
  // OpenAI tool definitions' inner "function" objects ({name, description, parameters}),
  // rendered after the first system message's content (OFF order; one is inserted if absent).
  std::vector<Json> tools;
  std::optional<Json> response_format;  // rendered after the tools, like OFF
};

const char* role_name(Role r);

}  // namespace ds4::chat
