// API errors as values that know their HTTP status, rendered in the error shape of the API
// the client speaks (OpenAI: {"error": {...}}, Anthropic: {"type": "error", "error": {...}}).
#pragma once

#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace ds4::server {

enum class ApiStyle { OpenAI, Anthropic };

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string type, const std::string& message, std::string param = {},
           std::string code = {})
      : std::runtime_error(message), status(status), type(std::move(type)),
        param(std::move(param)), code(std::move(code)) {}
  int status;
  std::string type;   // OpenAI/Anthropic error type, e.g. invalid_request_error
  std::string param;  // offending field (OpenAI "param")
  std::string code;   // machine-readable code (OpenAI "code"), e.g. context_length_exceeded
  nlohmann::json extra = nlohmann::json::object();  // extra fields (n_prompt_tokens, ...)
};

// 400 invalid_request_error naming the field.
[[noreturn]] void bad_request(const std::string& param, const std::string& message);

nlohmann::json error_body(ApiStyle style, const ApiError& e);
// The API style a path speaks, for errors raised before a handler runs (auth, body size).
ApiStyle style_for_path(const std::string& path);

}  // namespace ds4::server
