#include "server/errors.h"

namespace ds4::server {

void bad_request(const std::string& param, const std::string& message) {
  throw ApiError(400, "invalid_request_error", message, param);
}

nlohmann::json error_body(ApiStyle style, const ApiError& e) {
  if (style == ApiStyle::Anthropic) {
    // Anthropic names its types after the status (authentication_error, not_found_error, ...).
    return {{"type", "error"}, {"error", {{"type", e.type}, {"message", e.what()}}}};
  }
  // OpenAI has no not-found type: a bad model id is an invalid request with code model_not_found.
  const std::string type = e.type == "not_found_error" ? "invalid_request_error" : e.type;
  nlohmann::json err = {{"message", e.what()}, {"type", type},
                        {"param", e.param.empty() ? nlohmann::json() : nlohmann::json(e.param)},
                        {"code", e.code.empty() ? nlohmann::json() : nlohmann::json(e.code)}};
  for (auto it = e.extra.begin(); it != e.extra.end(); ++it) err[it.key()] = it.value();
  return {{"error", err}};
}

ApiStyle style_for_path(const std::string& path) {
  return path.rfind("/v1/messages", 0) == 0 ? ApiStyle::Anthropic : ApiStyle::OpenAI;
}

}  // namespace ds4::server
