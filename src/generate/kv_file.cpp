#include "generate/kv_file.h"

#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "generate/generator.h"
#include "gguf/gguf.h"

namespace ds4::gen {
namespace {

constexpr char kMagic[8] = {'D', 'S', '4', 'K', 'V', 'S', 'N', 'P'};
constexpr uint32_t kVersion = 1;
constexpr size_t kDigest = 32;

void sha256(const uint8_t* data, size_t n, uint8_t* out) {
  unsigned int len = 0;
  if (EVP_Digest(data, n, out, &len, EVP_sha256(), nullptr) != 1 || len != kDigest)
    fail("SHA-256 computation failed");
}

void put(std::vector<uint8_t>& b, const void* p, size_t n) {
  const auto* c = static_cast<const uint8_t*>(p);
  b.insert(b.end(), c, c + n);
}
template <typename T>
void put_pod(std::vector<uint8_t>& b, T v) {
  put(b, &v, sizeof v);
}

// Bounds-checked reader; every short read names the file and what was missing.
class Reader {
 public:
  Reader(const std::string& path, std::span<const uint8_t> b) : path_(path), b_(b) {}
  void bytes(void* out, size_t n, const char* what) {
    if (n > b_.size() - pos_)
      fail("{} is truncated or not a DwarfStar KV snapshot (it ends inside the {})", path_, what);
    std::memcpy(out, b_.data() + pos_, n);
    pos_ += n;
  }
  template <typename T>
  T pod(const char* what) {
    T v;
    bytes(&v, sizeof v, what);
    return v;
  }
  // A length field, checked against what is left so that a corrupt value cannot allocate much.
  size_t length(size_t elem, const char* what) {
    const auto n = pod<uint64_t>(what);
    if (n > (b_.size() - pos_) / elem)
      fail("{} is truncated or corrupt (its {} claims more bytes than the file holds)", path_, what);
    return static_cast<size_t>(n);
  }
  size_t pos() const { return pos_; }

 private:
  const std::string& path_;
  std::span<const uint8_t> b_;
  size_t pos_ = 0;
};

}  // namespace

ModelIdentity model_identity(const model::Model& model) {
  const gguf::File& f = model.file();
  const auto head = f.bytes().first(static_cast<size_t>(f.data_offset()));
  ModelIdentity id{};
  sha256(head.data(), head.size(), id.data());
  return id;
}

std::string identity_hex(const ModelIdentity& id) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (uint8_t b : id) {
    s += hex[b >> 4];
    s += hex[b & 15];
  }
  return s;
}

void write_kv_file(const std::string& path, const KvFile& f) {
  std::vector<uint8_t> b;
  b.reserve(f.state.size() + f.tokens.size() * 4 + f.note.size() + 128);
  put(b, kMagic, sizeof kMagic);
  put_pod<uint32_t>(b, kVersion);
  put_pod<uint32_t>(b, 0);
  put(b, f.model.data(), f.model.size());
  put_pod<uint64_t>(b, static_cast<uint64_t>(f.ctx));
  put_pod<uint64_t>(b, f.tokens.size());
  put(b, f.tokens.data(), f.tokens.size() * sizeof(int32_t));
  put_pod<uint64_t>(b, f.note.size());
  put(b, f.note.data(), f.note.size());
  put_pod<uint64_t>(b, f.state.size());
  put(b, f.state.data(), f.state.size());
  uint8_t digest[kDigest];
  sha256(b.data(), b.size(), digest);
  put(b, digest, kDigest);

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* out = std::fopen(tmp.c_str(), "wb");
  if (!out) fail("cannot create the KV snapshot {}: {}", path, std::strerror(errno));
  const bool ok = std::fwrite(b.data(), 1, b.size(), out) == b.size();
  const int err = errno;
  if (std::fclose(out) != 0 || !ok) {
    std::remove(tmp.c_str());
    fail("cannot write the KV snapshot {}: {}", path, std::strerror(ok ? errno : err));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    fail("cannot write the KV snapshot {}: {}", path, ec.message());
  }
}

KvFile read_kv_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open the KV snapshot {}: {}", path, std::strerror(errno));
  std::vector<uint8_t> b((std::istreambuf_iterator<char>(in)), {});
  if (b.size() < sizeof kMagic || std::memcmp(b.data(), kMagic, sizeof kMagic) != 0)
    fail("{} is not a DwarfStar KV snapshot (bad magic)", path);
  if (b.size() < sizeof kMagic + 8 + kDigest)
    fail("{} is truncated or not a DwarfStar KV snapshot (only {} bytes)", path, b.size());
  const size_t body = b.size() - kDigest;
  uint8_t digest[kDigest];
  sha256(b.data(), body, digest);
  // The version is checked before the checksum so that a file of a newer format gets the
  // more useful message.
  uint32_t version = 0;
  std::memcpy(&version, b.data() + sizeof kMagic, sizeof version);
  if (version != kVersion)
    fail("{} is a KV snapshot of format version {}, this build reads version {}", path, version, kVersion);
  if (std::memcmp(digest, b.data() + body, kDigest) != 0)
    fail("{} is corrupted or truncated (checksum mismatch)", path);

  Reader r(path, std::span(b).first(body));
  KvFile f;
  char magic[8];
  r.bytes(magic, sizeof magic, "magic");
  r.pod<uint32_t>("version");
  r.pod<uint32_t>("reserved field");
  r.bytes(f.model.data(), f.model.size(), "model identity");
  f.ctx = static_cast<int64_t>(r.pod<uint64_t>("context size"));
  f.tokens.resize(r.length(sizeof(int32_t), "token count"));
  r.bytes(f.tokens.data(), f.tokens.size() * sizeof(int32_t), "token ids");
  f.note.resize(r.length(1, "note length"));
  r.bytes(f.note.data(), f.note.size(), "note");
  f.state.resize(r.length(1, "state length"));
  r.bytes(f.state.data(), f.state.size(), "session state");
  if (r.pos() != body) fail("{} is corrupt ({} unexpected bytes before its checksum)", path, body - r.pos());
  return f;
}

void save_session(const std::string& path, const Generator& g, const std::string& note) {
  const model::EvalSession& s = g.session();
  KvFile f;
  f.model = model_identity(g.model());
  f.ctx = s.options().max_ctx;
  f.tokens = s.tokens();
  f.note = note;
  f.state = s.serialize();
  write_kv_file(path, f);
}

std::string load_session(const std::string& path, Generator& g) {
  KvFile f = read_kv_file(path);
  const ModelIdentity mine = model_identity(g.model());
  if (f.model != mine)
    fail("{} was saved with another model (identity {}...), not with {} ({}...)", path,
         identity_hex(f.model).substr(0, 12), g.model().file().path(), identity_hex(mine).substr(0, 12));
  model::SessionState st;
  try {
    st = model::SessionState::deserialize(f.state);
  } catch (const Error& e) {
    fail("{} holds an unreadable session state: {}", path, e.what());
  }
  if (st.tokens != f.tokens) fail("{} is inconsistent (its token list differs from its state's)", path);
  const int64_t ctx = g.session().options().max_ctx;
  if (st.n_past >= ctx)
    fail("{} holds {} tokens, which do not fit the context of {} tokens; use a larger --ctx", path,
         st.n_past, ctx);
  g.restore(std::move(st));
  return f.note;
}

}  // namespace ds4::gen
