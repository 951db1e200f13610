#include "server/tool_memory.h"

#include <cstdint>
#include <string_view>

namespace ds4::server {

namespace {

size_t cost(const std::string& id, const std::string& sampled) { return id.size() + sampled.size() + 64; }

constexpr char kMagic[8] = {'D', 'S', '4', 'T', 'O', 'O', 'L', '1'};
constexpr uint32_t kMaxField = 1u << 30;

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}
void put_u64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

// Record: u32 payload bytes, payload, u64 fnv1a(payload); payload: u32 id count, then per id
// u32 length + bytes, then u32 length + the sampled bytes. Little-endian.
std::string encode_record(const std::vector<std::string>& ids, const std::string& sampled) {
  std::string p;
  put_u32(p, static_cast<uint32_t>(ids.size()));
  for (const auto& id : ids) {
    put_u32(p, static_cast<uint32_t>(id.size()));
    p += id;
  }
  put_u32(p, static_cast<uint32_t>(sampled.size()));
  p += sampled;
  std::string r;
  put_u32(r, static_cast<uint32_t>(p.size()));
  r += p;
  put_u64(r, fnv1a(p));
  return r;
}

class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  bool u32(uint32_t& v) {
    if (s_.size() - at_ < 4) return false;
    v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<unsigned char>(s_[at_ + i])) << (8 * i);
    at_ += 4;
    return true;
  }
  bool u64(uint64_t& v) {
    uint32_t lo = 0, hi = 0;
    if (!u32(lo) || !u32(hi)) return false;
    v = lo | (static_cast<uint64_t>(hi) << 32);
    return true;
  }
  bool bytes(uint32_t n, std::string_view& out) {
    if (n > kMaxField || s_.size() - at_ < n) return false;
    out = s_.substr(at_, n);
    at_ += n;
    return true;
  }
  size_t at() const { return at_; }
  bool done() const { return at_ == s_.size(); }

 private:
  std::string_view s_;
  size_t at_ = 0;
};

}  // namespace

ToolMemory::~ToolMemory() {
  if (journal_) std::fclose(journal_);
}

size_t ToolMemory::attach(const std::string& path, const std::function<void(const std::string&)>& log) {
  std::lock_guard lock(mu_);
  path_ = path;
  log_ = log;
  std::string data;
  if (std::FILE* f = std::fopen(path.c_str(), "rb")) {
    char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) data.append(buf, n);
    std::fclose(f);
  }
  size_t loaded = 0;
  bool damaged = false;
  if (!data.empty()) {
    if (data.size() < sizeof kMagic || data.compare(0, sizeof kMagic, kMagic, sizeof kMagic) != 0) {
      damaged = true;
    } else {
      Reader r(std::string_view(data).substr(sizeof kMagic));
      while (!r.done()) {
        uint32_t len = 0, n_ids = 0, l = 0;
        uint64_t sum = 0;
        std::string_view payload, b;
        if (!r.u32(len) || !r.bytes(len, payload) || !r.u64(sum) || fnv1a(payload) != sum) {
          damaged = true;
          break;
        }
        Reader p(payload);
        auto turn = std::make_shared<Turn>();
        bool ok = p.u32(n_ids) && n_ids > 0 && n_ids <= 4096;
        for (uint32_t i = 0; ok && i < n_ids; ++i) {
          ok = p.u32(l) && p.bytes(l, b);
          if (ok) turn->ids.emplace_back(b);
        }
        ok = ok && p.u32(l) && p.bytes(l, b) && p.done();
        if (!ok) {
          damaged = true;
          break;
        }
        turn->sampled = std::string(b);
        put_locked(std::move(turn));
        ++loaded;
      }
    }
  }
  if (damaged && log_) log_("tool memory: " + path + " is damaged; kept the " + std::to_string(loaded) + " turns before the damage");
  // Start from a compact, intact file either way.
  if (!rewrite_locked() && log_) log_("tool memory: cannot write " + path + "; replay memory stays in RAM only");
  return loaded;
}

bool ToolMemory::rewrite_locked() {
  if (journal_) std::fclose(journal_);
  journal_ = nullptr;
  // Oldest first, so a replay rebuilds the same LRU order; a turn is written once.
  std::string out(kMagic, sizeof kMagic);
  std::vector<const Turn*> seen;
  for (auto it = lru_.rbegin(); it != lru_.rend(); ++it) {
    const Turn* t = it->second.get();
    if (t->ids.back() != it->first) continue;  // written with the turn's last id
    out += encode_record(t->ids, t->sampled);
  }
  const std::string tmp = path_ + ".tmp.rewrite";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return false;
  const bool ok = std::fwrite(out.data(), 1, out.size(), f) == out.size() && std::fflush(f) == 0;
  std::fclose(f);
  if (!ok || std::rename(tmp.c_str(), path_.c_str()) != 0) {
    std::remove(tmp.c_str());
    return false;
  }
  journal_ = std::fopen(path_.c_str(), "ab");
  journal_bytes_ = out.size();
  return journal_ != nullptr;
}

void ToolMemory::put(const std::vector<std::string>& ids, std::string sampled) {
  if (ids.empty() || max_ids_ == 0) return;
  auto turn = std::make_shared<Turn>(Turn{ids, std::move(sampled)});
  std::lock_guard lock(mu_);
  if (journal_) {
    const std::string rec = encode_record(turn->ids, turn->sampled);
    if (std::fwrite(rec.data(), 1, rec.size(), journal_) != rec.size() || std::fflush(journal_) != 0) {
      if (log_) log_("tool memory: cannot append to " + path_ + "; replay memory stays in RAM only");
      std::fclose(journal_);
      journal_ = nullptr;
    }
    journal_bytes_ += rec.size();
  }
  put_locked(std::move(turn));
  if (journal_ && journal_bytes_ > 2 * bytes_ + (1u << 20)) rewrite_locked();
}

void ToolMemory::put_locked(std::shared_ptr<Turn> turn) {
  for (const std::string& id : turn->ids) {
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
