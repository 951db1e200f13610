#include "convert/imatrix.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>

#include "core/error.h"

namespace ds4::convert {

namespace {

class Cursor {
 public:
  Cursor(std::span<const uint8_t> b, const std::string& what) : b_(b), what_(what) {}
  size_t remaining() const { return b_.size() - pos_; }
  int32_t i32(const char* field) {
    need(4, field);
    int32_t v;
    std::memcpy(&v, b_.data() + pos_, 4);
    pos_ += 4;
    return v;
  }
  const uint8_t* take(size_t n, const char* field) {
    need(n, field);
    const uint8_t* p = b_.data() + pos_;
    pos_ += n;
    return p;
  }

 private:
  void need(size_t n, const char* field) {
    if (remaining() < n)
      fail("imatrix {}: truncated at byte {} while reading {} ({} bytes needed, {} left)", what_,
           pos_, field, n, remaining());
  }
  std::span<const uint8_t> b_;
  const std::string& what_;
  size_t pos_ = 0;
};

constexpr int32_t kMaxNameLen = 4096;           // formats.md 5.1
constexpr int32_t kMaxDatasetLen = 1 << 20;

}  // namespace

Imatrix Imatrix::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open imatrix {}: {}", path, std::strerror(errno));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse(bytes, path);
}

Imatrix Imatrix::parse(std::span<const uint8_t> bytes, const std::string& what) {
  Imatrix m;
  m.what_ = what;
  Cursor c(bytes, what);
  const int32_t n = c.i32("the entry count");
  if (n < 0) fail("imatrix {}: negative entry count {}", what, n);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t len = c.i32("a name length");
    if (len <= 0 || len > kMaxNameLen)
      fail("imatrix {}: entry {} has name length {}, expected 1..{}", what, i, len, kMaxNameLen);
    const uint8_t* p = c.take(static_cast<size_t>(len), "a name");
    std::string name(reinterpret_cast<const char*>(p), static_cast<size_t>(len));
    Entry e;
    e.ncall = c.i32("ncall");
    const int32_t nval = c.i32("nval");
    if (nval < 1) fail("imatrix {}: entry {} has nval {}, expected at least 1", what, name, nval);
    if (static_cast<size_t>(nval) > c.remaining() / 4)
      fail("imatrix {}: truncated inside the {} values of entry {}", what, nval, name);
    const uint8_t* v = c.take(4 * static_cast<size_t>(nval), "values");
    e.values.resize(static_cast<size_t>(nval));
    std::memcpy(e.values.data(), v, 4 * static_cast<size_t>(nval));
    for (int32_t k = 0; k < nval; ++k) {
      if (!std::isfinite(e.values[k]))
        fail("imatrix {}: entry {} value {} is not finite", what, name, k);
      if (e.ncall > 0) e.values[k] /= static_cast<float>(e.ncall);
    }
    if (m.entries_.count(name)) fail("imatrix {}: entry {} appears twice", what, name);
    m.entries_.emplace(std::move(name), std::move(e));
  }
  // Optional trailer: chunk count, then the dataset name (formats.md 5.1).
  if (c.remaining() >= 4) {
    m.chunks_ = c.i32("the chunk count");
    if (c.remaining() >= 4) {
      const int32_t dl = c.i32("the dataset name length");
      if (dl > 0 && dl < kMaxDatasetLen && static_cast<size_t>(dl) <= c.remaining()) {
        const uint8_t* p = c.take(static_cast<size_t>(dl), "the dataset name");
        m.dataset_.assign(reinterpret_cast<const char*>(p), static_cast<size_t>(dl));
      }
    }
  }
  return m;
}

const float* Imatrix::find_expert(const std::string& gguf_name, const std::string& hf_name,
                                  int64_t expert, int64_t n_cols, int64_t n_experts) const {
  const std::string names[2] = {gguf_name, hf_name};
  for (const std::string& nm : names) {
    for (const std::string& key : {nm + ".expert." + std::to_string(expert),
                                   nm + ".expert_" + std::to_string(expert)}) {
      auto it = entries_.find(key);
      if (it == entries_.end()) continue;
      if (static_cast<int64_t>(it->second.values.size()) != n_cols)
        fail("imatrix {}: entry {} has {} values, expected {} (one per input column)", what_, key,
             it->second.values.size(), n_cols);
      return it->second.values.data();
    }
  }
  for (const std::string& nm : names) {
    auto it = entries_.find(nm);
    if (it == entries_.end()) continue;
    const int64_t nv = static_cast<int64_t>(it->second.values.size());
    if (nv == n_cols) return it->second.values.data();
    if (nv == n_cols * n_experts) return it->second.values.data() + expert * n_cols;
    fail("imatrix {}: entry {} has {} values, expected {} (one expert) or {} ({} experts x {} "
         "columns)",
         what_, nm, nv, n_cols, n_cols * n_experts, n_experts, n_cols);
  }
  return nullptr;
}

}  // namespace ds4::convert
