#include "server/metrics.h"

#include <fmt/format.h>

namespace ds4::server {

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard lock(mu_);
  ++requests_[{endpoint, status}];
}

std::string Metrics::render() const {
  std::string out;
  auto counter = [&](const char* name, const char* help, uint64_t v) {
    out += fmt::format("# HELP {0} {1}\n# TYPE {0} counter\n{0} {2}\n", name, help, v);
  };
  auto gauge = [&](const char* name, const char* help, double v) {
    out += fmt::format("# HELP {0} {1}\n# TYPE {0} gauge\n{0} {2}\n", name, help, v);
  };
  out += "# HELP ds4_requests_total HTTP requests by endpoint and status.\n# TYPE ds4_requests_total counter\n";
  {
    std::lock_guard lock(mu_);
    for (const auto& [key, n] : requests_)
      out += fmt::format("ds4_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", key.first, key.second, n);
  }
  counter("ds4_prompt_tokens_total", "Prompt tokens of finished generations.", prompt_tokens.load());
  counter("ds4_cached_prompt_tokens_total", "Prompt tokens reused from resident or disk KV.", cached_tokens.load());
  counter("ds4_prefill_tokens_total", "Prompt tokens evaluated (not reused).", prefill_tokens.load());
  counter("ds4_completion_tokens_total", "Generated tokens.", completion_tokens.load());
  counter("ds4_cache_hits_memory_total", "Requests that reused a resident session's KV.", cache_hits_memory.load());
  counter("ds4_cache_hits_disk_total", "Requests that loaded a disk KV snapshot.", cache_hits_disk.load());
  counter("ds4_cache_misses_total", "Requests prefilled from scratch.", cache_misses.load());
  counter("ds4_kv_disk_writes_total", "Disk KV snapshots written.", disk_writes.load());
  counter("ds4_kv_disk_rejected_total", "Disk KV files ignored as damaged or incompatible.", disk_rejected.load());
  counter("ds4_cancelled_total", "Generations cancelled because the client went away.", cancelled.load());
  gauge("ds4_queue_depth", "Requests waiting for the inference thread.", static_cast<double>(queue_depth.load()));
  gauge("ds4_running", "Requests being generated now.", static_cast<double>(running.load()));
  gauge("ds4_resident_sessions", "KV sessions held in memory.", static_cast<double>(resident_sessions.load()));
  counter("ds4_prefill_seconds_total", "Time spent in prefill (ns resolution).", prefill_ns.load() / 1000000000);
  counter("ds4_decode_seconds_total", "Time spent decoding.", decode_ns.load() / 1000000000);
  gauge("ds4_prefill_tokens_per_second", "Prefill speed of the last request.", last_prefill_tps.load());
  gauge("ds4_decode_tokens_per_second", "Decode speed of the last request.", last_decode_tps.load());
  return out;
}

}  // namespace ds4::server
