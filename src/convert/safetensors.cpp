#include "convert/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"

namespace ds4::convert {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A header larger than this is not a real checkpoint (Flash shards have ~50 KB headers).
constexpr uint64_t kMaxHeaderBytes = 256ull << 20;

struct DtypeInfo {
  StDtype dtype;
  std::string_view name;
  size_t size;
};
constexpr DtypeInfo kDtypes[] = {
    {StDtype::F32, "F32", 4},         {StDtype::BF16, "BF16", 2}, {StDtype::F16, "F16", 2},
    {StDtype::F8_E4M3, "F8_E4M3", 1}, {StDtype::F8_E8M0, "F8_E8M0", 1},
    {StDtype::I8, "I8", 1},           {StDtype::I64, "I64", 8},   {StDtype::I32, "I32", 4},
    {StDtype::U8, "U8", 1},
};

const DtypeInfo* find_dtype(std::string_view s) {
  for (const auto& d : kDtypes)
    if (d.name == s) return &d;
  return nullptr;
}

std::string read_text_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("cannot open {}: {}", p.string(), std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string_view dtype_name(StDtype d) {
  for (const auto& x : kDtypes)
    if (x.dtype == d) return x.name;
  return "?";
}

size_t dtype_size(StDtype d) {
  for (const auto& x : kDtypes)
    if (x.dtype == d) return x.size;
  return 0;
}

int64_t StTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string StTensor::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string StTensor::describe() const {
  return std::string(dtype_name(dtype)) + " " + shape_string();
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd_ < 0) fail("cannot open shard {}: {}", path, std::strerror(errno));
  struct stat st {};
  if (fstat(f->fd_, &st) != 0) fail("cannot stat shard {}: {}", path, std::strerror(errno));
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ < 8)
    fail("shard {} is {} bytes long, too short for the 8-byte safetensors header length", path,
         f->size_);
  void* m = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, f->fd_, 0);
  if (m == MAP_FAILED) fail("cannot map shard {}: {}", path, std::strerror(errno));
  f->map_ = static_cast<uint8_t*>(m);

  uint64_t hlen = 0;
  std::memcpy(&hlen, f->map_, 8);  // little-endian host (x86-64, arm64)
  if (hlen > kMaxHeaderBytes || hlen > f->size_ - 8)
    fail("shard {}: header length {} does not fit in the {}-byte file (truncated or not a "
         "safetensors file)",
         path, hlen, f->size_);
  const char* hbeg = reinterpret_cast<const char*>(f->map_ + 8);
  json h;
  try {
    h = json::parse(hbeg, hbeg + hlen);
  } catch (const json::exception& e) {
    fail("shard {}: the header is not valid JSON ({})", path, e.what());
  }
  if (!h.is_object()) fail("shard {}: the header JSON is not an object", path);

  const uint8_t* data = f->map_ + 8 + hlen;
  const uint64_t data_size = f->size_ - 8 - hlen;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string& name = it.key();
    const json& e = it.value();
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
        !e.contains("data_offsets"))
      fail("shard {}: tensor {} lacks dtype, shape or data_offsets in the header", path, name);
    if (!e["dtype"].is_string())
      fail("shard {}: tensor {} has a non-string dtype", path, name);
    const DtypeInfo* di = find_dtype(e["dtype"].get<std::string>());
    if (!di)
      fail("shard {}: tensor {} has dtype {}, which the converter does not handle (expected "
           "F32, BF16, F16, F8_E4M3, F8_E8M0, I8, I32 or I64)",
           path, name, e["dtype"].get<std::string>());
    StTensor t;
    t.name = name;
    t.dtype = di->dtype;
    t.shard = fs::path(path).filename().string();
    const json& sh = e["shape"];
    if (!sh.is_array() || sh.size() > 8)
      fail("shard {}: tensor {} has a malformed shape", path, name);
    uint64_t numel = 1;
    for (const json& d : sh) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > (1ull << 40))
        fail("shard {}: tensor {} has a malformed shape entry {}", path, name, d.dump());
      const uint64_t v = d.get<uint64_t>();
      if (v != 0 && numel > (1ull << 48) / v)
        fail("shard {}: tensor {} has too many elements", path, name);
      numel *= v;
      t.shape.push_back(static_cast<int64_t>(v));
    }
    const json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      fail("shard {}: tensor {} has malformed data_offsets", path, name);
    const uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    if (b > en || en > data_size)
      fail("shard {}: tensor {} data [{}, {}) lies outside the {}-byte data section (truncated "
           "shard?)",
           path, name, b, en, data_size);
    if (en - b != numel * di->size)
      fail("shard {}: tensor {} ({} {}) needs {} bytes but its data_offsets span {}", path, name,
           di->name, t.shape_string(), numel * di->size, en - b);
    t.data = data + b;
    t.nbytes = static_cast<size_t>(en - b);
    if (en > b) ranges.emplace_back(b, en);
    f->tensors_.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second)
      fail("shard {}: two tensors overlap at data offset {}", path, ranges[i].first);
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, size_);
  if (fd_ >= 0) ::close(fd_);
}

void SafetensorsFile::release(const StTensor& t) const {
  if (!t.data || t.nbytes == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t b = reinterpret_cast<uintptr_t>(t.data) & ~(page - 1);
  const uintptr_t e = reinterpret_cast<uintptr_t>(t.data) + t.nbytes;
  // Advisory only: failure just means the pages stay cached.
  (void)madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

Checkpoint::Checkpoint(const std::string& dir) : dir_(dir) {
  const fs::path d(dir);
  const fs::path index = d / "model.safetensors.index.json";
  std::map<std::string, std::string> weight_map;
  std::vector<std::string> shard_names;
  if (fs::exists(index)) {
    json j;
    try {
      j = json::parse(read_text_file(index));
    } catch (const json::exception& e) {
      fail("{} is not valid JSON ({})", index.string(), e.what());
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail("{} has no \"weight_map\" object", index.string());
    std::set<std::string> seen;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string())
        fail("{}: the shard of tensor {} is not a string", index.string(), it.key());
      const std::string shard = it.value().get<std::string>();
      // Shards live next to the index; refuse paths that would leave the directory.
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
        fail("{}: tensor {} names an invalid shard file \"{}\"", index.string(), it.key(), shard);
      weight_map[it.key()] = shard;
      if (seen.insert(shard).second) shard_names.push_back(shard);
    }
  } else if (fs::exists(d / "model.safetensors")) {
    shard_names.push_back("model.safetensors");
  } else {
    fail("{} has neither model.safetensors.index.json nor model.safetensors", dir);
  }
  std::sort(shard_names.begin(), shard_names.end());

  for (const std::string& sn : shard_names) {
    shards_.push_back(SafetensorsFile::open((d / sn).string()));
    const SafetensorsFile* sf = shards_.back().get();
    for (const auto& [name, t] : sf->tensors()) {
      if (all_.count(name))
        fail("tensor {} appears in two shards ({} and {})", name, all_[name]->shard, sn);
      if (!weight_map.empty()) {
        auto it = weight_map.find(name);
        if (it == weight_map.end())
          fail("shard {} holds tensor {}, which model.safetensors.index.json does not list", sn,
               name);
        if (it->second != sn)
          fail("tensor {} is in shard {} but the index places it in {}", name, sn, it->second);
      }
      all_[name] = &t;
      owner_[&t] = sf;
    }
  }
  for (const auto& [name, shard] : weight_map)
    if (!all_.count(name))
      fail("model.safetensors.index.json lists tensor {} in shard {}, but that shard does not "
           "contain it",
           name, shard);
}

Checkpoint::~Checkpoint() = default;

const StTensor* Checkpoint::find(std::string_view name) const {
  auto it = all_.find(std::string(name));
  return it == all_.end() ? nullptr : it->second;
}

const StTensor& Checkpoint::get(std::string_view name) const {
  const StTensor* t = find(name);
  if (!t) fail("checkpoint {}: missing tensor {}", dir_, name);
  return *t;
}

void Checkpoint::release(const StTensor& t) const {
  auto it = owner_.find(&t);
  if (it != owner_.end()) it->second->release(t);
}

}  // namespace ds4::convert
