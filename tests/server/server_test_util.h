// An in-process ds4-server on an ephemeral loopback port over the tiny demo model (byte
// tokenizer, 4 layers: a decode step takes about a millisecond), plus an httplib client.
#pragma once

#include <httplib.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "server/demo_model.h"
#include "server/http_server.h"
#include "server/options.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

inline fs::path test_dir() {
  static const fs::path d = [] {
    fs::path p = fs::temp_directory_path() / ("ds4-server-test-" + std::to_string(::getpid()));
    fs::create_directories(p);
    return p;
  }();
  return d;
}

inline std::string tiny_model_path() {
  static std::once_flag once;
  static std::string path = (test_dir() / "tiny.gguf").string();
  std::call_once(once, [] { ds4::server::write_demo_model(path); });
  return path;
}

inline ds4::server::ServerOptions tiny_options() {
  ds4::server::ServerOptions o;
  o.model_path = tiny_model_path();
  o.port = 0;
  o.ctx = 4096;
  o.threads = 2;
  o.keepalive_ms = 100;
  o.default_max_tokens = 16;
  o.kv_disk_min_tokens = 8;
  o.http_threads = 8;
  return o;
}

class TestServer {
 public:
  explicit TestServer(const ds4::server::ServerOptions& o = tiny_options())
      : server_(std::make_unique<ds4::server::HttpServer>(o)) {
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->listen(); });
  }
  ~TestServer() {
    server_->stop();
    thread_.join();
    server_.reset();
  }
  int port() const { return port_; }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(60, 0);
    return c;
  }
  ds4::server::HttpServer& server() { return *server_; }

 private:
  std::unique_ptr<ds4::server::HttpServer> server_;
  int port_ = 0;
  std::thread thread_;
};

inline json post_json(httplib::Client& c, const std::string& path, const json& body, int* status = nullptr,
                      const httplib::Headers& h = {}) {
  auto r = c.Post(path, h, body.dump(), "application/json");
  if (!r) {
    ADD_FAILURE() << "no response from " << path;
    return {};
  }
  if (status) *status = r->status;
  return json::parse(r->body);
}

// The JSON payloads of an SSE body ("data: {...}" lines), [DONE] excluded.
inline std::vector<json> sse_payloads(const std::string& body) {
  std::vector<json> out;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find('\n', at);
    const std::string d = body.substr(at + 6, end - at - 6);
    if (d != "[DONE]") out.push_back(json::parse(d));
    at = end;
  }
  return out;
}
