// Exact replay of sampled tool calls (peer-ds4.md 2.5 point 5). When the model calls tools, the
// bytes it sampled after </think> (answer text and the DSML block) are remembered under every
// call id of that turn. A later request that replays the turn (same ids, same order) renders
// those bytes instead of re-serialising the client's JSON arguments, so key order, whitespace or
// number formatting changes by the client cannot break the KV prefix.
//
// Bounded: least recently used entries go first once either the id count or the byte budget is
// exceeded. Thread-safe (request threads read, the generation path writes).
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace ds4::server {

class ToolMemory {
 public:
  ToolMemory(size_t max_ids, size_t max_bytes) : max_ids_(max_ids), max_bytes_(max_bytes) {}

  // Remembers `sampled` for the turn whose calls have these ids (in call order).
  void put(const std::vector<std::string>& ids, std::string sampled);
  // The sampled text if `ids` are exactly the ids of one remembered turn.
  std::optional<std::string> get(const std::vector<std::string>& ids);

  size_t size() const;
  size_t bytes() const;

 private:
  struct Turn {
    std::vector<std::string> ids;
    std::string sampled;
  };
  using Lru = std::list<std::pair<std::string, std::shared_ptr<Turn>>>;
  void evict_locked();

  size_t max_ids_, max_bytes_;
  mutable std::mutex mu_;
  Lru lru_;  // front = most recent
  std::unordered_map<std::string, Lru::iterator> index_;
  size_t bytes_ = 0;
};

}  // namespace ds4::server
