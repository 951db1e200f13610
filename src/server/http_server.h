// ds4-server's HTTP front: routes, API-key check, body limit, CORS, models/health/metrics, and
// error bodies in each API's shape. Generation endpoints are in the protocol files.
//
//   HttpServer s(opts);          // loads the model, starts the engine thread
//   int port = s.bind();         // opts.port, or any free port when 0
//   s.listen();                  // blocks until stop() (from another thread or a signal)
#pragma once

#include <memory>
#include <string>

#include "server/options.h"

namespace httplib {
class Server;
}

namespace ds4::server {

class ServerContext;

class HttpServer {
 public:
  explicit HttpServer(const ServerOptions& opt);
  ~HttpServer();
  int bind();
  void listen();
  void stop();
  ServerContext& context() { return *ctx_; }

 private:
  void routes();
  std::unique_ptr<ServerContext> ctx_;
  std::unique_ptr<httplib::Server> http_;
};

}  // namespace ds4::server
