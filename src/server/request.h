// The parts of a generation request that every API shares, after protocol translation: the
// conversation, thinking mode, sampling, limits, tool choice. Plus strict JSON field readers
// that turn a wrong type into a 400 naming the field (in the API's own error shape).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/conversation.h"
#include "generate/sampler.h"
#include "server/engine.h"

namespace ds4::server {

class ServerContext;
using json = nlohmann::ordered_json;

enum class ToolChoice { Auto, None, Required, Named };

struct ApiRequest {
  std::string model;
  chat::Conversation conv;
  chat::Thinking thinking = chat::Thinking::High;
  gen::SamplingParams sampling;
  int64_t max_tokens = -1;  // -1: server default
  bool stream = false;
  bool include_usage = false;
  ToolChoice tool_choice = ToolChoice::Auto;
  std::string tool_name;    // ToolChoice::Named
  int top_logprobs = -1;    // < 0: no logprobs
  int64_t reasoning_budget = -1;
  bool raw = false;         // /v1/completions: `raw_prompt` is the whole prompt
  std::string raw_prompt;
};

// Field readers: absent or null -> nullopt; wrong type -> 400 naming `key`.
std::optional<std::string> opt_string(const json& j, const char* key);
std::optional<double> opt_number(const json& j, const char* key);
std::optional<int64_t> opt_int(const json& j, const char* key);
std::optional<bool> opt_bool(const json& j, const char* key);
const json* opt_field(const json& j, const char* key, json::value_t type, const char* type_name);
// Parses a request body; malformed JSON or a non-object -> 400.
json parse_body(const std::string& body);
// Text of OpenAI/Anthropic content: a string, or an array of {type: text, text} parts.
std::string content_text(const json& content, const char* field);

// Shared fields: model, temperature, top_p, top_k, min_p, seed, stream, logprobs knobs.
void parse_common(const json& j, ApiRequest& r, ServerContext& ctx);
// "none" | "minimal" | "low" | "medium" | "high" | "xhigh" | "max" -> thinking mode.
chat::Thinking thinking_from_effort(const std::string& effort, int64_t ctx, const char* field);
// stop: a string or an array of strings.
std::vector<std::string> parse_stop(const json& v, const char* field);

// Renders, tokenizes and checks the request; builds the engine job (400 on a context overflow,
// unknown tool in tool_choice, ...). Applies exact tool-call replay from the tool memory.
std::shared_ptr<GenJob> make_job(ApiRequest& r, ServerContext& ctx);

// Count of prompt tokens a request renders to (Anthropic count_tokens).
int64_t count_prompt_tokens(ApiRequest& r, ServerContext& ctx);

}  // namespace ds4::server
