// Exact replay of sampled tool calls (peer-ds4.md 2.5 point 5). When the model calls tools, the
// bytes it sampled after </think> (answer text and the DSML block) are remembered under every
// call id of that turn. A later request that replays the turn (same ids, same order) renders
// those bytes instead of re-serialising the client's JSON arguments, so key order, whitespace or
// number formatting changes by the client cannot break the KV prefix.
//
// Bounded: least recently used entries go first once either the id count or the byte budget is
// exceeded. Thread-safe (request threads read, the generation path writes).
//
// Persistence (with --kv-disk-dir): every put is appended to a journal file, replayed at start-up,
// so a restarted server still renders replayed tool-call turns byte-for-byte and its disk
// snapshots (whose text contains those bytes) keep matching. Records are length-prefixed and
// checksummed (FNV-1a 64); a damaged or torn record ends the replay (logged, the file is
// rewritten from what was read). The journal is compacted (rewritten atomically from memory)
// when it grows past twice the live entries.
#pragma once

#include <cstddef>
#include <cstdio>
#include <functional>
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

  // Loads the journal at `path` (if any) and appends every later put to it. Returns the number
  // of turns loaded. I/O problems are reported through `log` and leave the memory in RAM only.
  size_t attach(const std::string& path, const std::function<void(const std::string&)>& log);
  ~ToolMemory();

 private:
  struct Turn {
    std::vector<std::string> ids;
    std::string sampled;
  };
  using Lru = std::list<std::pair<std::string, std::shared_ptr<Turn>>>;
  void evict_locked();
  void put_locked(std::shared_ptr<Turn> turn);
  bool rewrite_locked();  // compaction: the journal from memory, atomically

  size_t max_ids_, max_bytes_;
  mutable std::mutex mu_;
  Lru lru_;  // front = most recent
  std::unordered_map<std::string, Lru::iterator> index_;
  size_t bytes_ = 0;
  std::string path_;
  std::FILE* journal_ = nullptr;
  size_t journal_bytes_ = 0;
  std::function<void(const std::string&)> log_;
};

}  // namespace ds4::server
