#include "server/tool_memory.h"

namespace ds4::server {

namespace {
size_t cost(const std::string& id, const std::string& sampled) { return id.size() + sampled.size() + 64; }
}  // namespace

void ToolMemory::put(const std::vector<std::string>& ids, std::string sampled) {
  if (ids.empty() || max_ids_ == 0) return;
  auto turn = std::make_shared<Turn>(Turn{ids, std::move(sampled)});
  std::lock_guard lock(mu_);
  for (const std::string& id : ids) {
    if (auto it = index_.find(id); it != index_.end()) {
      bytes_ -= cost(id, it->second->second->sampled);
      lru_.erase(it->second);
      index_.erase(it);
    }
    lru_.emplace_front(id, turn);
    index_[id] = lru_.begin();
    bytes_ += cost(id, turn->sampled);
  }
  evict_locked();
}

std::optional<std::string> ToolMemory::get(const std::vector<std::string>& ids) {
  if (ids.empty()) return std::nullopt;
  std::lock_guard lock(mu_);
  auto it = index_.find(ids.front());
  if (it == index_.end()) return std::nullopt;
  const std::shared_ptr<Turn> turn = it->second->second;
  if (turn->ids != ids) return std::nullopt;
  for (const std::string& id : ids) {
    auto jt = index_.find(id);
    if (jt == index_.end()) return std::nullopt;
    lru_.splice(lru_.begin(), lru_, jt->second);  // touch
  }
  return turn->sampled;
}

void ToolMemory::evict_locked() {
  while (!lru_.empty() && (lru_.size() > max_ids_ || bytes_ > max_bytes_)) {
    auto& [id, turn] = lru_.back();
    bytes_ -= cost(id, turn->sampled);
    index_.erase(id);
    lru_.pop_back();
  }
}

size_t ToolMemory::size() const {
  std::lock_guard lock(mu_);
  return lru_.size();
}
size_t ToolMemory::bytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
}

}  // namespace ds4::server
