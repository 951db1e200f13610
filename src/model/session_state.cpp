#include "model/session_state.h"

#include <openssl/evp.h>

#include <cstring>

#include "core/error.h"
#include "model/hparams.h"

namespace ds4::model {
namespace {

constexpr char kMagic[8] = {'D', 'S', '4', 'S', 'T', 'A', 'T', 'E'};
constexpr uint32_t kVersion = 1;
constexpr size_t kDigest = 32;

void sha256(const uint8_t* data, size_t n, uint8_t out[kDigest]) {
  unsigned int len = 0;
  if (EVP_Digest(data, n, out, &len, EVP_sha256(), nullptr) != 1 || len != kDigest)
    fail("session state: SHA-256 computation failed");
}

class Writer {
 public:
  template <typename T>
  void pod(T v) {
    const size_t o = buf.size();
    buf.resize(o + sizeof(T));
    std::memcpy(buf.data() + o, &v, sizeof(T));
  }
  void bytes(const void* p, size_t n) {
    const size_t o = buf.size();
    buf.resize(o + n);
    if (n) std::memcpy(buf.data() + o, p, n);
  }
  void floats(const std::vector<float>& v) {
    pod<uint64_t>(v.size());
    bytes(v.data(), v.size() * sizeof(float));
  }
  std::vector<uint8_t> buf;
};

class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  template <typename T>
  T pod(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + o_, sizeof(T));
    o_ += sizeof(T);
    return v;
  }
  void bytes(void* dst, size_t n, const char* what) {
    need(n, what);
    if (n) std::memcpy(dst, p_ + o_, n);
    o_ += n;
  }
  std::vector<float> floats(const char* what) {
    const uint64_t count = pod<uint64_t>(what);
    if (count > (n_ - o_) / sizeof(float))
      fail("session state: {} claims {} values, more than the snapshot holds", what, count);
    std::vector<float> v(static_cast<size_t>(count));
    bytes(v.data(), v.size() * sizeof(float), what);
    return v;
  }
  bool done() const { return o_ == n_; }

 private:
  void need(size_t n, const char* what) {
    if (n > n_ - o_) fail("session state: truncated while reading {}", what);
  }
  const uint8_t* p_;
  size_t n_;
  size_t o_ = 0;
};

}  // namespace

const char* numerics_name(Numerics n) { return n == Numerics::Exact ? "exact" : "official"; }

Numerics numerics_from_name(const std::string& s) {
  if (s == "exact") return Numerics::Exact;
  if (s == "official") return Numerics::Official;
  fail("unknown numerics mode \"{}\" (expected exact or official)", s);
}

std::vector<uint8_t> SessionState::serialize() const {
  Writer w;
  w.bytes(kMagic, sizeof(kMagic));
  w.pod<uint32_t>(kVersion);
  w.pod<uint32_t>(static_cast<uint32_t>(numerics));
  w.pod<uint64_t>(fingerprint.size());
  w.bytes(fingerprint.data(), fingerprint.size());
  w.pod<uint64_t>(static_cast<uint64_t>(n_past));
  w.pod<uint64_t>(static_cast<uint64_t>(retain));
  w.pod<uint64_t>(tokens.size());
  w.bytes(tokens.data(), tokens.size() * sizeof(int32_t));
  w.pod<uint64_t>(layers.size());
  for (const LayerState& L : layers) {
    w.pod<int64_t>(L.hist_begin);
    for (const auto* v : {&L.raw, &L.comp_kv, &L.comp_sc, &L.idx_kv, &L.idx_sc, &L.comp, &L.icomp})
      w.floats(*v);
  }
  uint8_t digest[kDigest];
  sha256(w.buf.data(), w.buf.size(), digest);
  w.bytes(digest, kDigest);
  return std::move(w.buf);
}

SessionState SessionState::deserialize(std::span<const uint8_t> bytes) {
  if (bytes.size() < sizeof(kMagic) + kDigest || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0)
    fail("session state: not a DwarfStar session snapshot (bad magic)");
  const size_t body = bytes.size() - kDigest;
  uint8_t digest[kDigest];
  sha256(bytes.data(), body, digest);
  if (std::memcmp(digest, bytes.data() + body, kDigest) != 0)
    fail("session state: checksum mismatch, the snapshot is corrupted");
  Reader r(bytes.data() + sizeof(kMagic), body - sizeof(kMagic));
  const uint32_t version = r.pod<uint32_t>("version");
  if (version != kVersion)
    fail("session state: format version {} is not supported (expected {})", version, kVersion);
  SessionState s;
  const uint32_t num = r.pod<uint32_t>("numerics");
  if (num > 1) fail("session state: unknown numerics mode {}", num);
  s.numerics = static_cast<Numerics>(num);
  const uint64_t flen = r.pod<uint64_t>("fingerprint length");
  if (flen > 4096) fail("session state: fingerprint of {} bytes is implausible", flen);
  s.fingerprint.resize(static_cast<size_t>(flen));
  r.bytes(s.fingerprint.data(), s.fingerprint.size(), "fingerprint");
  s.n_past = static_cast<int64_t>(r.pod<uint64_t>("n_past"));
  s.retain = static_cast<int64_t>(r.pod<uint64_t>("retain"));
  const uint64_t nt = r.pod<uint64_t>("token count");
  if (nt != static_cast<uint64_t>(s.n_past) || nt > body / sizeof(int32_t))
    fail("session state: {} tokens recorded for {} positions", nt, s.n_past);
  s.tokens.resize(static_cast<size_t>(nt));
  r.bytes(s.tokens.data(), s.tokens.size() * sizeof(int32_t), "tokens");
  const uint64_t nl = r.pod<uint64_t>("layer count");
  if (nl > 4096) fail("session state: {} layers is implausible", nl);
  s.layers.resize(static_cast<size_t>(nl));
  for (LayerState& L : s.layers) {
    L.hist_begin = r.pod<int64_t>("history start");
    if (L.hist_begin < 0 || L.hist_begin > s.n_past)
      fail("session state: history start {} outside [0, {}]", L.hist_begin, s.n_past);
    L.raw = r.floats("raw KV rows");
    L.comp_kv = r.floats("compressor values");
    L.comp_sc = r.floats("compressor scores");
    L.idx_kv = r.floats("indexer compressor values");
    L.idx_sc = r.floats("indexer compressor scores");
    L.comp = r.floats("compressed rows");
    L.icomp = r.floats("indexer rows");
  }
  if (!r.done()) fail("session state: trailing bytes after the last layer");
  return s;
}

void check_restorable(const SessionState& s, const HParams& hp, std::span<const LayerStateShape> layers,
                      Numerics numerics, int64_t max_ctx) {
  if (s.fingerprint != hp.fingerprint())
    fail("session state belongs to another model ({}), not this one ({})", s.fingerprint, hp.fingerprint());
  if (s.numerics != numerics)
    fail("session state was made with {} numerics, this session uses {}", numerics_name(s.numerics),
         numerics_name(numerics));
  if (s.n_past > max_ctx) fail("session state holds {} positions, more than max_ctx {}", s.n_past, max_ctx);
  if (s.layers.size() != layers.size())
    fail("session state has {} layers, the model {}", s.layers.size(), layers.size());
  for (size_t il = 0; il < layers.size(); ++il) {
    const LayerStateShape& L = layers[il];
    const LayerState& ls = s.layers[il];
    const int64_t nh = s.n_past - ls.hist_begin;
    const int64_t nc = L.ratio > 0 ? s.n_past / L.ratio : 0;
    const int64_t cw = L.ratio > 0 ? L.comp_c * hp.head_dim : 0;
    const int64_t iw = L.has_indexer ? 2 * hp.idx_dim : 0;
    const bool ok = nh >= 0 && static_cast<int64_t>(ls.raw.size()) == nh * hp.head_dim &&
                    static_cast<int64_t>(ls.comp_kv.size()) == nh * cw &&
                    static_cast<int64_t>(ls.comp_sc.size()) == nh * cw &&
                    static_cast<int64_t>(ls.idx_kv.size()) == nh * iw &&
                    static_cast<int64_t>(ls.idx_sc.size()) == nh * iw &&
                    static_cast<int64_t>(ls.comp.size()) == nc * hp.head_dim &&
                    static_cast<int64_t>(ls.icomp.size()) == (L.has_indexer ? nc * hp.idx_dim : 0);
    if (!ok) fail("session state: layer {} arrays do not match {} positions", il, s.n_past);
  }
}

}  // namespace ds4::model
