// Disk KV cache (--kv-disk-dir): session snapshots that survive restarts, keyed by the SHA-256
// of the rendered text of the cached prefix (peer-ds4.md 2.9). A snapshot is usable for a new
// prompt when its text is a byte prefix of the prompt's rendered text; the stored token ids are
// then authoritative and only the remaining text is tokenized.
//
// Files are generate/kv_file.h snapshots (versioned, SHA-256 checksummed, model identity,
// written atomically) whose note is the rendered text; the name <sha256(text)>-<text bytes>.kv
// lets start-up index the directory without reading the files. A file that fails any check
// (checksum, identity, parse) is logged, deleted and ignored: the directory is a cache.
// Eviction: least recently used first (file mtime, touched on every hit) once the directory
// holds more than the byte budget; the file just written is kept.
//
// Not thread-safe: the inference thread is its only user.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "generate/kv_file.h"
#include "model/session_state.h"

namespace ds4::server {

class KvDiskCache {
 public:
  using Logger = std::function<void(const std::string&)>;
  KvDiskCache(std::string dir, uint64_t budget_bytes, gen::ModelIdentity model, int64_t ctx, Logger log);

  struct Hit {
    model::SessionState state;
    size_t text_bytes = 0;  // length of the prefix it covers
    std::string file;
  };
  // Longest usable snapshot whose text is a prefix of `text` and covers more than `min_bytes`.
  std::optional<Hit> lookup(std::string_view text, size_t min_bytes);
  // Saves `state` as the snapshot of `text` (no-op if that exact prefix is already stored).
  bool save(std::string_view text, const model::SessionState& state);
  bool contains(std::string_view text) const;

  size_t files() const { return entries_.size(); }
  uint64_t bytes() const;
  uint64_t rejected() const { return rejected_; }

 private:
  struct Entry {
    std::string key;   // sha256 hex of the text
    uint64_t text_bytes = 0;
    uint64_t file_bytes = 0;
    int64_t last_used = 0;  // monotonic counter seeded from mtimes
  };
  void scan();
  void evict(const std::string& keep);
  void reject(const std::string& key, const std::string& why);
  std::string path_of(const std::string& key) const;

  std::string dir_;
  uint64_t budget_;
  gen::ModelIdentity model_;
  int64_t ctx_;
  Logger log_;
  std::vector<Entry> entries_;
  int64_t clock_ = 0;
  uint64_t rejected_ = 0;
};

std::string sha256_hex(std::string_view bytes);

}  // namespace ds4::server
