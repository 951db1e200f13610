// ds4-server: OpenAI- and Anthropic-compatible HTTP API over DwarfStar (docs/server.md).
//
//   ds4-server -m ds4flash.gguf [--host 127.0.0.1] [--port 8000] [--ctx 32768] [--api-key KEY]
//
// Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions, /v1/completions,
// /v1/responses, /v1/messages, /v1/messages/count_tokens, GET /health, GET /metrics.
// --write-demo-model PATH writes a small synthetic model (random weights) for tests and demos.
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <string>

#include "server/demo_model.h"
#include "server/http_server.h"
#include "server/options.h"

namespace {

ds4::server::HttpServer* g_server = nullptr;

void on_signal(int) {
  // httplib's stop() only flips flags and shuts the listening socket down: safe enough here.
  if (g_server) g_server->stop();
}

std::string read_key_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read --api-key-file " + path);
  std::string key;
  std::getline(in, key);
  while (!key.empty() && (key.back() == '\r' || key.back() == ' ')) key.pop_back();
  if (key.empty()) throw std::runtime_error("--api-key-file " + path + " is empty");
  return key;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ds4-server: OpenAI- and Anthropic-compatible API for DeepSeek V4 (DwarfStar)"};
  app.footer(
      "Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions, POST /v1/completions (raw\n"
      "prompt), POST /v1/responses, POST /v1/messages, POST /v1/messages/count_tokens, GET /health,\n"
      "GET /metrics (Prometheus).\n"
      "Thinking: chat/responses default to thinking (high); reasoning_effort none / thinking {type: disabled}\n"
      "/ model deepseek-chat turn it off; effort max = think-max when --ctx >= 393216. Anthropic: off unless\n"
      "thinking {type: enabled}; budget_tokens closes reasoning when spent. In thinking mode sampling knobs\n"
      "are ignored (official API behaviour). tool_choice none removes tools from the prompt; required or a\n"
      "named tool makes the server write the DSML call structure (the model fills the values).\n"
      "Auth: with --api-key every route but /health needs 'Authorization: Bearer KEY' or 'x-api-key: KEY'.");
  ds4::server::ServerOptions o;
  std::string key_file, demo_out, demo_tokenizer;
  app.add_option("-m,--model", o.model_path, "DeepSeek V4 GGUF (default ./ds4flash.gguf)");
  app.add_option("--model-id", o.model_id, "model id served and accepted (default deepseek-v4-flash)");
  app.add_option("--alias", o.model_aliases, "extra model id clients may send (repeatable)");
  app.add_option("--host", o.host, "bind address (default 127.0.0.1: loopback only)");
  app.add_option("--port", o.port, "TCP port (default 8000; 0 = any free port)");
  app.add_option("-c,--ctx", o.ctx, "context size per session in tokens (default 32768)");
  app.add_option("--backend", o.backend, "compute backend: cpu (default) or cuda");
  app.add_option("-t,--threads", o.threads, "CPU threads (default all cores)");
  app.add_option("--api-key", o.api_key, "require this API key on every route but /health");
  app.add_option("--api-key-file", key_file, "read the API key from the first line of FILE");
  app.add_option("--max-body-bytes", o.max_body_bytes, "largest request body accepted (default 64 MiB)");
  app.add_option("--cors", o.cors_origin, "send CORS headers allowing ORIGIN (off by default)");
  app.add_option("--kv-disk-dir", o.kv_disk_dir, "persist KV snapshots in DIR (survive restarts)");
  app.add_option("--kv-disk-space-mb", o.kv_disk_space_mb, "disk budget of the KV cache (default 4096)");
  app.add_option("--kv-disk-min-tokens", o.kv_disk_min_tokens, "smallest new prefix worth a snapshot (512)");
  app.add_option("--sessions", o.max_sessions, "resident KV sessions (default 4)");
  app.add_option("--session-memory-mb", o.session_memory_mb, "memory budget of resident sessions (8192)");
  app.add_option("--max-tokens", o.default_max_tokens, "output limit when the client sends none (4096)");
  app.add_option("--trace", o.trace_path, "append a human-readable trace of every request to FILE");
  app.add_option("--write-demo-model", demo_out, "write a small synthetic demo model to PATH and exit");
  app.add_option("--tokenizer-json", demo_tokenizer, "with --write-demo-model: real V4 tokenizer.json");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "ds4-server: %s\n", e.what());
    return 2;
  }
  try {
    if (!demo_out.empty()) {
      ds4::server::write_demo_model(demo_out, demo_tokenizer);
      return 0;
    }
    if (o.backend != "cpu" && o.backend != "cuda" && o.backend != "auto")
      throw std::runtime_error("--backend " + o.backend + " is unknown (cpu, cuda; auto = cpu)");
    if (!key_file.empty()) o.api_key = read_key_file(key_file);
    ds4::server::HttpServer server(o);
    g_server = &server;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    const int port = server.bind();
    std::fprintf(stderr, "ds4-server: listening on http://%s:%d (model %s%s)\n", o.host.c_str(), port,
                 o.model_path.c_str(), o.api_key.empty() ? "" : ", API key required");
    server.listen();
    g_server = nullptr;
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ds4-server: %s\n", e.what());
    return 1;
  }
}
