// What every request handler shares: options, the engine, metrics, trace and the tool-replay map.
#pragma once

#include <cstdio>
#include <memory>
#include <string>

#include "server/engine.h"
#include "server/metrics.h"
#include "server/options.h"
#include "server/tool_memory.h"
#include "server/trace.h"

namespace ds4::server {

class ServerContext {
 public:
  explicit ServerContext(const ServerOptions& o)
      : opt(o), trace(o.trace_path.empty() ? std::make_unique<Trace>() : std::make_unique<Trace>(o.trace_path)),
        engine(o, metrics, *trace), tool_memory(o.tool_memory_max_ids, o.tool_memory_max_bytes) {
    // The replay map lives next to the disk snapshots whose text it reproduces.
    if (!o.kv_disk_dir.empty()) {
      Trace* t = trace.get();
      tool_memory.attach(o.kv_disk_dir + "/tool-memory.bin", [t](const std::string& line) {
        std::fprintf(stderr, "ds4-server: %s\n", line.c_str());
        t->log("server", "log", line);
      });
    }
  }

  ServerOptions opt;
  Metrics metrics;
  std::unique_ptr<Trace> trace;
  Engine engine;
  ToolMemory tool_memory;
};

}  // namespace ds4::server
