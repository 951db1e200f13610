#include "quality/reference.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace ds4::quality {

namespace {

constexpr char kMagic[8] = {'D', 'S', '4', 'Q', 'R', 'E', 'F', '\0'};

class Out {
 public:
  template <typename T>
  void put(T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));  // the file is little-endian, as is every host we build for
    buf.insert(buf.end(), b, b + sizeof(T));
  }
  void put(const Digest& d) { buf.insert(buf.end(), d.begin(), d.end()); }
  std::vector<uint8_t> buf;
};

class In {
 public:
  In(const std::vector<uint8_t>& b, size_t end, const std::string& what) : b_(b), end_(end), what_(what) {}
  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  Digest digest() {
    need(32);
    Digest d;
    std::memcpy(d.data(), b_.data() + pos_, 32);
    pos_ += 32;
    return d;
  }
  void need(size_t n) const {
    if (n > end_ - pos_) fail("{}: truncated reference file (record past the end of the data)", what_);
  }
  size_t pos() const { return pos_; }

 private:
  const std::vector<uint8_t>& b_;
  size_t end_, pos_ = 0;
  const std::string& what_;
};

}  // namespace

Reference make_reference(LogitsSource& src, const std::vector<int32_t>& tokens,
                         const WindowOptions& opt, uint32_t k, const Digest& model,
                         const Digest& tokenizer) {
  Reference r;
  r.full = k == 0;
  r.k = k;
  r.n_vocab = static_cast<uint32_t>(src.n_vocab());
  if (k > r.n_vocab) fail("--top-k {} is larger than the vocabulary ({})", k, r.n_vocab);
  r.windows = opt;
  if (r.windows.stride == 0) r.windows.stride = r.windows.ctx / 2;
  r.model = model;
  r.tokenizer = tokenizer;
  r.tokens = tokens;
  r.tokens_sha = tokens_digest(tokens);
  std::vector<double> lp(r.n_vocab);
  score_windows(src, tokens, r.windows, [&](int64_t target, std::span<const float> logits) {
    log_softmax(logits, lp);
    RefPosition p;
    p.target = target;
    p.target_lp = static_cast<float>(lp[static_cast<size_t>(tokens[static_cast<size_t>(target)])]);
    if (r.full)
      p.full.assign(lp.begin(), lp.end());
    else
      p.top = top_k(lp, static_cast<int32_t>(k));
    r.positions.push_back(std::move(p));
  });
  return r;
}

std::vector<uint8_t> serialize(const Reference& r) {
  Out o;
  o.buf.insert(o.buf.end(), kMagic, kMagic + 8);
  o.put<uint32_t>(kRefVersion);
  o.put<uint32_t>(r.full ? 0 : 1);
  o.put<uint32_t>(r.k);
  o.put<uint32_t>(r.n_vocab);
  o.put<int64_t>(r.windows.ctx);
  o.put<int64_t>(r.windows.stride);
  o.put<uint64_t>(r.tokens.size());
  o.put<uint64_t>(r.positions.size());
  o.put(r.model);
  o.put(r.tokenizer);
  o.put(r.tokens_sha);
  for (int32_t t : r.tokens) o.put<int32_t>(t);
  for (const RefPosition& p : r.positions) {
    o.put<int64_t>(p.target);
    o.put<float>(p.target_lp);
    if (r.full) {
      if (p.full.size() != r.n_vocab) fail("reference position {}: {} log-probs, vocabulary {}", p.target, p.full.size(), r.n_vocab);
      for (float v : p.full) o.put<float>(v);
    } else {
      if (p.top.ids.size() != r.k) fail("reference position {}: {} ids, K = {}", p.target, p.top.ids.size(), r.k);
      for (uint32_t j = 0; j < r.k; ++j) {
        o.put<int32_t>(p.top.ids[j]);
        o.put<float>(p.top.lp[j]);
      }
      o.put<float>(p.top.rest_lp);
    }
  }
  o.put(sha256(o.buf));
  return std::move(o.buf);
}

Reference deserialize(const std::vector<uint8_t>& bytes, const std::string& what) {
  constexpr size_t kFixed = 8 + 4 * 4 + 8 * 4 + 32 * 3;
  if (bytes.size() < 8 || std::memcmp(bytes.data(), kMagic, 8) != 0)
    fail("{}: not a ds4-quality reference file (bad magic)", what);
  if (bytes.size() >= 12) {
    uint32_t v;
    std::memcpy(&v, bytes.data() + 8, 4);
    if (v != kRefVersion)
      fail("{}: reference format version {}, this build reads version {}; re-run ds4-quality dump",
           what, v, kRefVersion);
  }
  if (bytes.size() < kFixed + 32) fail("{}: truncated reference file ({} bytes)", what, bytes.size());
  const size_t body = bytes.size() - 32;
  Digest stored;
  std::memcpy(stored.data(), bytes.data() + body, 32);
  if (sha256(std::span(bytes).first(body)) != stored)
    fail("{}: checksum mismatch: the reference file is truncated or corrupted", what);

  In in(bytes, body, what);
  (void)in.get<uint64_t>();  // magic
  (void)in.get<uint32_t>();  // version
  Reference r;
  const uint32_t mode = in.get<uint32_t>();
  if (mode > 1) fail("{}: unknown mode {}", what, mode);
  r.full = mode == 0;
  r.k = in.get<uint32_t>();
  r.n_vocab = in.get<uint32_t>();
  r.windows.ctx = in.get<int64_t>();
  r.windows.stride = in.get<int64_t>();
  const uint64_t n_tokens = in.get<uint64_t>();
  const uint64_t n_pos = in.get<uint64_t>();
  r.model = in.digest();
  r.tokenizer = in.digest();
  r.tokens_sha = in.digest();
  if (r.n_vocab == 0 || (!r.full && (r.k == 0 || r.k > r.n_vocab)) || (r.full && r.k != 0))
    fail("{}: inconsistent header (mode {}, K {}, vocabulary {})", what, mode, r.k, r.n_vocab);
  const uint64_t rec = 12 + (r.full ? 4ull * r.n_vocab : 8ull * r.k + 4);
  if (n_tokens > body / 4 || n_pos > body / rec || n_tokens * 4 + n_pos * rec != body - in.pos())
    fail("{}: truncated or oversized reference file: header says {} tokens and {} positions",
         what, n_tokens, n_pos);
  r.tokens.resize(n_tokens);
  for (auto& t : r.tokens) {
    t = in.get<int32_t>();
    if (t < 0 || static_cast<uint32_t>(t) >= r.n_vocab) fail("{}: token id {} outside the vocabulary", what, t);
  }
  if (tokens_digest(r.tokens) != r.tokens_sha) fail("{}: token ids do not match their SHA-256", what);
  int64_t last = 0;
  r.positions.resize(n_pos);
  for (RefPosition& p : r.positions) {
    p.target = in.get<int64_t>();
    if (p.target <= last || p.target >= static_cast<int64_t>(n_tokens))
      fail("{}: position {} out of order or outside the {} tokens", what, p.target, n_tokens);
    last = p.target;
    p.target_lp = in.get<float>();
    if (r.full) {
      p.full.resize(r.n_vocab);
      for (float& v : p.full) v = in.get<float>();
    } else {
      p.top.ids.resize(r.k);
      p.top.lp.resize(r.k);
      for (uint32_t j = 0; j < r.k; ++j) {
        p.top.ids[j] = in.get<int32_t>();
        p.top.lp[j] = in.get<float>();
        if (p.top.ids[j] < 0 || static_cast<uint32_t>(p.top.ids[j]) >= r.n_vocab)
          fail("{}: position {}: token id {} outside the vocabulary", what, p.target, p.top.ids[j]);
      }
      p.top.rest_lp = in.get<float>();
    }
  }
  return r;
}

void save_reference(const Reference& r, const std::string& path) {
  const auto bytes = serialize(r);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) fail("cannot write {}", tmp);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!f) fail("write to {} failed", tmp);
  }
  std::filesystem::rename(tmp, path);
}

Reference load_reference(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open reference {}", path);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return deserialize(bytes, path);
}

}  // namespace ds4::quality
