#include "server/kv_disk.h"

#include <openssl/evp.h>

#include <algorithm>
#include <filesystem>

#include <fmt/format.h>

#include "core/error.h"

namespace ds4::server {

namespace fs = std::filesystem;

std::string sha256_hex(std::string_view bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), md, &n, EVP_sha256(), nullptr) != 1) fail("OpenSSL SHA-256 failed");
  std::string out;
  for (unsigned int i = 0; i < n; ++i) out += fmt::format("{:02x}", md[i]);
  return out;
}

KvDiskCache::KvDiskCache(std::string dir, uint64_t budget_bytes, gen::ModelIdentity model, int64_t ctx, Logger log)
    : dir_(std::move(dir)), budget_(budget_bytes), model_(model), ctx_(ctx), log_(std::move(log)) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) fail("cannot create KV cache directory {}: {}", dir_, ec.message());
  scan();
}

std::string KvDiskCache::path_of(const std::string& key) const { return dir_ + "/" + key + ".kv"; }

void KvDiskCache::scan() {
  // Names only: checksums are verified when a file is used, so a large cache starts fast.
  std::vector<std::pair<fs::file_time_type, Entry>> found;
  for (const auto& de : fs::directory_iterator(dir_)) {
    const std::string name = de.path().filename().string();
    if (name.find(".tmp.") != std::string::npos) {  // a write that never finished
      std::error_code ec;
      fs::remove(de.path(), ec);
      continue;
    }
    if (de.path().extension() != ".kv" || !de.is_regular_file()) continue;
    const std::string key = de.path().stem().string();
    const size_t dash = key.find('-');
    uint64_t text_bytes = 0;
    if (dash != 64 || key.find_first_not_of("0123456789abcdef") != 64 ||
        std::sscanf(key.c_str() + 65, "%lu", &text_bytes) != 1) {
      continue;  // not ours
    }
    found.emplace_back(de.last_write_time(), Entry{key, text_bytes, de.file_size(), 0});
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [t, e] : found) {
    e.last_used = ++clock_;
    entries_.push_back(e);
  }
  if (!entries_.empty()) log_(fmt::format("kv-disk: {} snapshots in {} ({} bytes)", entries_.size(), dir_, bytes()));
}

uint64_t KvDiskCache::bytes() const {
  uint64_t n = 0;
  for (const Entry& e : entries_) n += e.file_bytes;
  return n;
}

void KvDiskCache::reject(const std::string& key, const std::string& why) {
  ++rejected_;
  log_(fmt::format("kv-disk: ignoring and deleting snapshot {}: {}", path_of(key), why));
  std::error_code ec;
  fs::remove(path_of(key), ec);
  std::erase_if(entries_, [&](const Entry& e) { return e.key == key; });
}

namespace {
std::string key_of(std::string_view text) { return fmt::format("{}-{}", sha256_hex(text), text.size()); }
}  // namespace

bool KvDiskCache::contains(std::string_view text) const {
  const std::string key = key_of(text);
  return std::any_of(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.key == key; });
}

std::optional<KvDiskCache::Hit> KvDiskCache::lookup(std::string_view text, size_t min_bytes) {
  std::vector<Entry> cands;
  for (const Entry& e : entries_)
    if (e.text_bytes > min_bytes && e.text_bytes <= text.size()) cands.push_back(e);
  std::sort(cands.begin(), cands.end(), [](const Entry& a, const Entry& b) { return a.text_bytes > b.text_bytes; });
  for (const Entry& e : cands) {
    if (key_of(text.substr(0, e.text_bytes)) != e.key) continue;
    Hit hit;
    try {
      gen::KvFile f = gen::read_kv_file(path_of(e.key));
      if (f.model != model_) fail("saved with another model");
      if (f.note != text.substr(0, e.text_bytes)) fail("its text does not match its name");
      hit.state = model::SessionState::deserialize(f.state);
      if (hit.state.n_past > ctx_) fail("holds {} tokens, more than the context {}", hit.state.n_past, ctx_);
    } catch (const std::exception& ex) {
      reject(e.key, ex.what());
      continue;
    }
    hit.text_bytes = e.text_bytes;
    hit.file = path_of(e.key);
    for (Entry& x : entries_)
      if (x.key == e.key) x.last_used = ++clock_;
    std::error_code ec;
    fs::last_write_time(hit.file, fs::file_time_type::clock::now(), ec);  // LRU across restarts
    return hit;
  }
  return std::nullopt;
}

bool KvDiskCache::save(std::string_view text, const model::SessionState& state) {
  if (contains(text)) return false;
  const std::string key = key_of(text);
  gen::KvFile f;
  f.model = model_;
  f.ctx = ctx_;
  f.tokens = state.tokens;
  f.note = std::string(text);
  f.state = state.serialize();
  const uint64_t size = f.state.size() + f.note.size() + f.tokens.size() * 4 + 128;
  if (size > budget_) return false;  // could never fit: writing it would only thrash the cache
  try {
    gen::write_kv_file(path_of(key), f);
  } catch (const std::exception& ex) {
    log_(fmt::format("kv-disk: {}", ex.what()));
    return false;
  }
  std::error_code ec;
  const uint64_t real = fs::file_size(path_of(key), ec);
  entries_.push_back(Entry{key, text.size(), ec ? size : real, ++clock_});
  evict(key);
  return true;
}

void KvDiskCache::evict(const std::string& keep) {
  while (bytes() > budget_ && entries_.size() > 1) {
    auto victim = entries_.end();
    for (auto it = entries_.begin(); it != entries_.end(); ++it)
      if (it->key != keep && (victim == entries_.end() || it->last_used < victim->last_used)) victim = it;
    if (victim == entries_.end()) break;
    std::error_code ec;
    fs::remove(path_of(victim->key), ec);
    log_(fmt::format("kv-disk: evicted {} ({} bytes)", victim->key, victim->file_bytes));
    entries_.erase(victim);
  }
}

}  // namespace ds4::server
