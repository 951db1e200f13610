#include "server/http_server.h"

#include <httplib.h>
#include <openssl/crypto.h>

#include <fmt/format.h>

#include "server/errors.h"
#include "server/protocols.h"
#include "server/request.h"
#include "server/server_context.h"

namespace ds4::server {

namespace {

void send_error(httplib::Response& res, const std::string& path, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_body(style_for_path(path), e).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                  "application/json");
}

bool key_matches(const std::string& got, const std::string& want) {
  // Constant time, so the key cannot be guessed byte by byte from response timing.
  return got.size() == want.size() && CRYPTO_memcmp(got.data(), want.data(), want.size()) == 0;
}

std::string endpoint_name(const std::string& path) {
  if (path.rfind("/v1/models", 0) == 0) return "models";
  return path;
}

}  // namespace

HttpServer::HttpServer(const ServerOptions& opt)
    : ctx_(std::make_unique<ServerContext>(opt)), http_(std::make_unique<httplib::Server>()) {
  routes();
}

HttpServer::~HttpServer() {
  stop();
  ctx_->engine.shutdown();
}

int HttpServer::bind() {
  const auto& o = ctx_->opt;
  const int port = o.port == 0 ? http_->bind_to_any_port(o.host) : (http_->bind_to_port(o.host, o.port) ? o.port : -1);
  if (port < 0) throw std::runtime_error(fmt::format("cannot listen on {}:{}", o.host, o.port));
  return port;
}

void HttpServer::listen() { http_->listen_after_bind(); }
void HttpServer::stop() {
  if (http_) http_->stop();
}

void HttpServer::routes() {
  ServerContext& ctx = *ctx_;
  httplib::Server& h = *http_;
  const int threads = ctx.opt.http_threads;
  h.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  h.set_payload_max_length(ctx.opt.max_body_bytes);
  h.set_read_timeout(30, 0);
  h.set_write_timeout(30, 0);

  h.set_pre_routing_handler([&ctx](const httplib::Request& req, httplib::Response& res) {
    if (!ctx.opt.cors_origin.empty()) {
      res.set_header("Access-Control-Allow-Origin", ctx.opt.cors_origin);
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type, x-api-key, anthropic-version");
    }
    if (req.method == "OPTIONS") {
      res.status = 204;
      return httplib::Server::HandlerResponse::Handled;
    }
    if (ctx.opt.api_key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    std::string got = req.get_header_value("x-api-key");
    const std::string auth = req.get_header_value("Authorization");
    if (got.empty() && auth.rfind("Bearer ", 0) == 0) got = auth.substr(7);
    if (!key_matches(got, ctx.opt.api_key)) {
      const ApiStyle style = style_for_path(req.path);
      send_error(res, req.path,
                 ApiError(401, style == ApiStyle::Anthropic ? "authentication_error" : "invalid_request_error",
                          "invalid or missing API key (Authorization: Bearer KEY or x-api-key: KEY)", "",
                          "invalid_api_key"));
      ctx.metrics.count_request(endpoint_name(req.path), 401);
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  // Errors that httplib produces itself (unknown route, body too large) get our JSON shape.
  h.set_error_handler(httplib::Server::HandlerWithResponse([&ctx](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    if (res.status == 413) {
      send_error(res, req.path, ApiError(413, "request_too_large",
                                         fmt::format("request body exceeds {} bytes", ctx.opt.max_body_bytes)));
    } else if (res.status == 404) {
      send_error(res, req.path, ApiError(404, "not_found_error", fmt::format("unknown endpoint {} {}", req.method, req.path)));
    } else {
      send_error(res, req.path, ApiError(res.status, "invalid_request_error", "bad request"));
    }
    ctx.metrics.count_request(endpoint_name(req.path), res.status);
    return httplib::Server::HandlerResponse::Handled;
  }));

  auto wrap = [&ctx](const char* name, void (*fn)(ServerContext&, const httplib::Request&, httplib::Response&)) {
    return [&ctx, name, fn](const httplib::Request& req, httplib::Response& res) {
      try {
        fn(ctx, req, res);
      } catch (const ApiError& e) {
        send_error(res, req.path, e);
        ctx.metrics.count_request(name, e.status);
      } catch (const nlohmann::json::exception& e) {
        // A request field of an unexpected JSON type that a reader accessed without checking
        // (e.g. a non-string "type"): the client's mistake, not the server's.
        send_error(res, req.path, ApiError(400, "invalid_request_error", std::string("invalid request: ") + e.what()));
        ctx.metrics.count_request(name, 400);
      } catch (const std::exception& e) {
        send_error(res, req.path, ApiError(500, "server_error", e.what()));
        ctx.metrics.count_request(name, 500);
      }
    };
  };

  h.Post("/v1/chat/completions", wrap("chat.completions", handle_chat_completions));
  h.Post("/v1/completions", wrap("completions", handle_completions));
  h.Post("/v1/responses", wrap("responses", handle_responses));
  h.Post("/v1/messages", wrap("messages", handle_messages));
  h.Post("/v1/messages/count_tokens", wrap("messages.count_tokens", handle_count_tokens));

  auto model_object = [&ctx](const std::string& id) {
    json m = {{"id", id},
              {"object", "model"},
              {"created", 1745000000},
              {"owned_by", "dwarfstar"},
              {"context_length", ctx.opt.ctx},
              {"synthetic", ctx.engine.synthetic()}};
    if (ctx.engine.synthetic())
      m["description"] = "SYNTHETIC model (random weights, output is gibberish): " + ctx.engine.synthetic_note();
    return m;
  };
  h.Get("/v1/models", [&ctx, model_object](const httplib::Request&, httplib::Response& res) {
    res.set_content(json{{"object", "list"}, {"data", json::array({model_object(ctx.opt.model_id)})}}.dump(),
                    "application/json");
    ctx.metrics.count_request("models", 200);
  });
  h.Get(R"(/v1/models/(.+))", [&ctx, model_object](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    bool known = id == ctx.opt.model_id;
    for (const auto& a : ctx.opt.model_aliases) known = known || id == a;
    if (!known) {
      send_error(res, req.path, ApiError(404, "not_found_error", fmt::format("model '{}' does not exist", id), "model",
                                         "model_not_found"));
      ctx.metrics.count_request("models", 404);
      return;
    }
    res.set_content(model_object(id).dump(), "application/json");
    ctx.metrics.count_request("models", 200);
  });
  h.Get("/health", [&ctx](const httplib::Request&, httplib::Response& res) {
    res.set_content(json{{"status", "ok"},
                         {"model", ctx.opt.model_id},
                         {"synthetic", ctx.engine.synthetic()},
                         {"queue_depth", ctx.metrics.queue_depth.load()}}
                        .dump(),
                    "application/json");
  });
  h.Get("/metrics", [&ctx](const httplib::Request&, httplib::Response& res) {
    res.set_content(ctx.metrics.render(), "text/plain; version=0.0.4");
  });
}

}  // namespace ds4::server
