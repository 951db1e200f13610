// Counters and gauges for GET /metrics (Prometheus text format 0.0.4). Lock-free atomics on the
// hot path; the per-endpoint request counts take a mutex (one increment per request).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace ds4::server {

struct Metrics {
  std::atomic<uint64_t> prompt_tokens{0};      // prompt tokens of finished requests
  std::atomic<uint64_t> cached_tokens{0};      // of those, reused from a cache
  std::atomic<uint64_t> prefill_tokens{0};     // actually evaluated prompt tokens
  std::atomic<uint64_t> completion_tokens{0};
  std::atomic<uint64_t> cache_hits_memory{0};  // requests that reused resident KV
  std::atomic<uint64_t> cache_hits_disk{0};    // requests that loaded a disk snapshot
  std::atomic<uint64_t> cache_misses{0};
  std::atomic<uint64_t> disk_writes{0};
  std::atomic<uint64_t> disk_rejected{0};      // damaged or incompatible files ignored
  std::atomic<uint64_t> cancelled{0};          // generations stopped by a client disconnect
  std::atomic<int64_t> queue_depth{0};         // jobs waiting for the inference thread
  std::atomic<int64_t> running{0};             // 0 or 1
  std::atomic<int64_t> resident_sessions{0};
  std::atomic<uint64_t> prefill_ns{0};
  std::atomic<uint64_t> decode_ns{0};
  std::atomic<double> last_prefill_tps{0};
  std::atomic<double> last_decode_tps{0};

  void count_request(const std::string& endpoint, int status);
  std::string render() const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
};

}  // namespace ds4::server
