// The API server layer: one handler per endpoint, each translating its protocol's request into
// an ApiRequest (request.h) and the engine's output back into that protocol's responses.
#pragma once

#include <nlohmann/json.hpp>

#include "server/engine.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace ds4::server {

class ServerContext;

void handle_chat_completions(ServerContext& ctx, const httplib::Request& req, httplib::Response& res);
void handle_completions(ServerContext& ctx, const httplib::Request& req, httplib::Response& res);
void handle_responses(ServerContext& ctx, const httplib::Request& req, httplib::Response& res);
void handle_messages(ServerContext& ctx, const httplib::Request& req, httplib::Response& res);
void handle_count_tokens(ServerContext& ctx, const httplib::Request& req, httplib::Response& res);

// OpenAI chat/completions usage object, with the cached-token split.
nlohmann::ordered_json openai_usage(const GenResult& r);
// "data: JSON\n\n"
std::string sse_data(const nlohmann::ordered_json& j);
// "event: NAME\ndata: JSON\n\n"
std::string sse_event(const std::string& name, const nlohmann::ordered_json& j);
int64_t unix_now();

}  // namespace ds4::server
