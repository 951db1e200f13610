// What every request handler shares: options, the engine, metrics, trace and the tool-replay map.
#pragma once

#include <memory>

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
        engine(o, metrics, *trace), tool_memory(o.tool_memory_max_ids, o.tool_memory_max_bytes) {}

  ServerOptions opt;
  Metrics metrics;
  std::unique_ptr<Trace> trace;
  Engine engine;
  ToolMemory tool_memory;
};

}  // namespace ds4::server
