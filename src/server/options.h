// Configuration of ds4-server, filled from the command line (apps/ds4-server.cpp) or by tests.
// Every behaviour switch is here; nothing is read from the environment.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds4::server {

struct ServerOptions {
  std::string model_path = "ds4flash.gguf";
  std::string model_id = "deepseek-v4-flash";  // served id; also accepted: aliases below
  std::vector<std::string> model_aliases;       // extra ids clients may send (e.g. claude-*)
  std::string host = "127.0.0.1";               // loopback unless the operator opts in
  int port = 8000;                              // 0: any free port (tests)
  int64_t ctx = 32768;                          // positions per session
  std::string backend = "cpu";
  int threads = 0;                              // 0: all cores
  std::string api_key;                          // empty: no auth
  size_t max_body_bytes = 64u << 20;
  std::string cors_origin;                      // empty: no CORS headers
  std::string kv_disk_dir;                      // empty: no disk KV cache
  int64_t kv_disk_space_mb = 4096;
  int64_t kv_disk_min_tokens = 512;             // shorter prompts are not worth a file
  std::string trace_path;
  int64_t default_max_tokens = 4096;            // when the client sends no limit
  int64_t prefill_chunk = 0;                    // tokens per eval call and batched layer pass (the
                                                // cancellation granularity); 0: the backend's
                                                // (runtime::Engine::prefill_chunk)
  int64_t session_retain = 512;                 // tokens a session can rewind in place
  int max_sessions = 4;                         // resident sessions (LRU)
  int64_t session_memory_mb = 8192;             // budget for resident sessions
  int keepalive_ms = 5000;                      // SSE comment / JSON whitespace while waiting
  size_t tool_memory_max_ids = 100000;
  size_t tool_memory_max_bytes = 512u << 20;
  int http_threads = 64;                        // connections served concurrently
};

}  // namespace ds4::server
