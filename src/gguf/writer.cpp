// Streaming GGUF writer (formats.md 1.1): the header is built in memory, tensor payloads go
// straight to disk in declaration order, each padded with zeros to the alignment.
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unordered_set>

#include "core/error.h"
#include "gguf/gguf.h"
#include "gguf/parsed.h"

namespace ds4::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF"
constexpr uint32_t kDefaultAlignment = 32;

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// Appends little-endian fields to a byte buffer (x86-64 and aarch64 are little-endian).
class Bytes {
 public:
  std::vector<uint8_t> buf;

  template <typename T>
  void put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    buf.insert(buf.end(), p, p + sizeof(T));
  }
  void put_string(std::string_view s) {
    put<uint64_t>(s.size());
    buf.insert(buf.end(), s.begin(), s.end());
  }
  // The payload of a value, without its type tag (arrays carry their element type inside).
  void put_value(const Value& v) {
    switch (v.type()) {
      case ValueType::U8:
      case ValueType::BOOL: put(static_cast<uint8_t>(v.raw_bits())); break;
      case ValueType::U16: put(static_cast<uint16_t>(v.raw_bits())); break;
      case ValueType::U32:
      case ValueType::F32: put(static_cast<uint32_t>(v.raw_bits())); break;
      case ValueType::U64:
      case ValueType::F64: put(v.raw_bits()); break;
      case ValueType::I8: put(static_cast<int8_t>(v.as_i64())); break;
      case ValueType::I16: put(static_cast<int16_t>(v.as_i64())); break;
      case ValueType::I32: put(static_cast<int32_t>(v.as_i64())); break;
      case ValueType::I64: put(v.as_i64()); break;
      case ValueType::STRING: put_string(v.as_string()); break;
      case ValueType::ARRAY: {
        const auto& items = v.as_array();
        put(static_cast<uint32_t>(v.array_elem_type()));
        put<uint64_t>(items.size());
        for (const Value& it : items) put_value(it);
        break;
      }
    }
  }
};

int array_depth(const Value& v) {
  if (v.type() != ValueType::ARRAY) return 0;
  int d = 0;
  for (const Value& it : v.as_array()) d = std::max(d, array_depth(it));
  return d + 1;
}

struct Decl {
  std::string name;
  GgmlType type;
  std::vector<int64_t> ne;
  uint64_t offset;
  uint64_t nbytes;
};

}  // namespace

struct Writer::Impl {
  std::string path;
  std::string tmp;
  uint32_t alignment;
  uint32_t version;
  std::vector<KeyValue> kv;
  std::unordered_set<std::string> keys;
  std::vector<Decl> tensors;
  std::unordered_set<std::string> names;
  uint64_t data_bytes = 0;  // padded size of the data section
  std::FILE* f = nullptr;
  bool begun = false;
  bool finished = false;
  size_t cur = 0;        // tensor being written
  uint64_t cur_done = 0; // bytes of it written so far

  void write(const void* p, size_t n) {
    if (n == 0) return;
    if (std::fwrite(p, 1, n, f) != n) fail("cannot write {}: {}", tmp, std::strerror(errno));
  }
  void pad(uint64_t n) {
    static constexpr uint8_t kZeros[4096] = {};
    while (n > 0) {
      const size_t k = static_cast<size_t>(std::min<uint64_t>(n, sizeof(kZeros)));
      write(kZeros, k);
      n -= k;
    }
  }

  // general.alignment is how readers learn a non-default alignment (formats.md 1.1).
  void settle_alignment_key() {
    for (const auto& e : kv) {
      if (e.key != "general.alignment") continue;
      if (e.value.type() != ValueType::U32 || e.value.raw_bits() != alignment)
        fail("{}: metadata key general.alignment must be UINT32 {} to match the writer's "
             "alignment",
             path, alignment);
      return;
    }
    if (alignment != kDefaultAlignment) {
      kv.push_back({"general.alignment", Value::u32(alignment)});
      keys.insert("general.alignment");
    }
  }

  Bytes header() const {
    Bytes b;
    b.put(kMagic);
    b.put(version);
    b.put<uint64_t>(tensors.size());
    b.put<uint64_t>(kv.size());
    for (const auto& e : kv) {
      b.put_string(e.key);
      b.put(static_cast<uint32_t>(e.value.type()));
      b.put_value(e.value);
    }
    for (const auto& t : tensors) {
      b.put_string(t.name);
      b.put(static_cast<uint32_t>(t.ne.size()));
      for (int64_t d : t.ne) b.put(static_cast<uint64_t>(d));
      b.put(static_cast<uint32_t>(t.type));
      b.put(t.offset);
    }
    return b;
  }

  void check_not_begun(std::string_view what) const {
    if (begun) fail("{}: cannot {} after begin_data()", path, what);
  }

  void finish_tensor_if_done() {
    if (cur < tensors.size() && cur_done == tensors[cur].nbytes) {
      pad(align_up(cur_done, alignment) - cur_done);
      ++cur;
      cur_done = 0;
    }
  }
};

Writer::Writer(std::string path, uint32_t alignment, uint32_t version)
    : impl_(std::make_unique<Impl>()) {
  if (alignment == 0 || !std::has_single_bit(alignment))
    fail("{}: alignment {} is not a power of two", path, alignment);
  if (version != 2 && version != 3)
    fail("{}: cannot write GGUF version {} (only 2 and 3)", path, version);
  impl_->tmp = path + ".tmp";
  impl_->path = std::move(path);
  impl_->alignment = alignment;
  impl_->version = version;
}

Writer::~Writer() {
  if (impl_->f) std::fclose(impl_->f);
  if (impl_->begun && !impl_->finished) ::unlink(impl_->tmp.c_str());
}

void Writer::add_kv(std::string key, Value v) {
  impl_->check_not_begun("add metadata");
  if (impl_->keys.count(key)) fail("{}: duplicate metadata key {}", impl_->path, key);
  // Deeper nesting would be refused by the reader's default limits (ds4 skips up to 8).
  const int depth = array_depth(v);
  if (depth > ReadLimits{}.max_array_depth)
    fail("{}: metadata key {}: arrays are nested {} levels deep, more than the {} readers accept",
         impl_->path, key, depth, ReadLimits{}.max_array_depth);
  impl_->keys.insert(key);
  impl_->kv.push_back({std::move(key), std::move(v)});
}

void Writer::add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne) {
  impl_->check_not_begun("add tensors");
  const std::string what = fmt::format("{}: tensor {}", impl_->path, name);
  if (name.empty()) fail("{}: tensor {}: empty tensor name", impl_->path, impl_->tensors.size());
  if (impl_->names.count(name)) fail("{}: duplicate tensor name {}", impl_->path, name);
  const int max_dims = ReadLimits{}.max_dims;
  if (ne.empty() || ne.size() > static_cast<size_t>(max_dims))
    fail("{}: n_dims {} is out of range (1 to {})", what, ne.size(), max_dims);
  const TypeTraits* tr = type_traits(static_cast<uint32_t>(type));
  if (!tr) fail("{}: unknown tensor type id {}", what, static_cast<uint32_t>(type));
  if (!tr->storable) fail("{}: type {} cannot be stored in a file", what, tr->name);
  const uint64_t nbytes = detail::tensor_nbytes(what, type, ne);
  // Offsets are the running sum of padded sizes (formats.md 1.1, "Writers").
  const uint64_t offset = impl_->data_bytes;
  impl_->data_bytes += align_up(nbytes, impl_->alignment);
  impl_->names.insert(name);
  impl_->tensors.push_back({std::move(name), type, std::move(ne), offset, nbytes});
}

void Writer::begin_data() {
  Impl& m = *impl_;
  m.check_not_begun("call begin_data() twice, or");
  m.settle_alignment_key();
  const Bytes h = m.header();
  m.f = std::fopen(m.tmp.c_str(), "wb");
  if (!m.f) fail("cannot create {}: {}", m.tmp, std::strerror(errno));
  m.begun = true;
  m.write(h.buf.data(), h.buf.size());
  m.pad(align_up(h.buf.size(), m.alignment) - h.buf.size());
}

void Writer::write_tensor_data(const void* data, size_t n) {
  Impl& m = *impl_;
  if (!m.begun) fail("{}: write_tensor_data() called before begin_data()", m.path);
  if (m.finished) fail("{}: write_tensor_data() called after finish()", m.path);
  if (n == 0) return;
  if (m.cur >= m.tensors.size())
    fail("{}: {} bytes of tensor data written after the last tensor was complete", m.path, n);
  const Decl& t = m.tensors[m.cur];
  const uint64_t left = t.nbytes - m.cur_done;
  if (n > left)
    fail("{}: tensor {}: a write of {} bytes exceeds the {} bytes left of its {} bytes", m.path,
         t.name, n, left, t.nbytes);
  m.write(data, n);
  m.cur_done += n;
  m.finish_tensor_if_done();
}

void Writer::finish() {
  Impl& m = *impl_;
  if (m.finished) fail("{}: finish() called twice", m.path);
  if (!m.begun) begin_data();
  if (m.cur < m.tensors.size())
    fail("{}: tensor {}: only {} of its {} bytes were written", m.path, m.tensors[m.cur].name,
         m.cur_done, m.tensors[m.cur].nbytes);
  // Flush to stable storage before the rename, so the final name never shows a torn file.
  if (std::fflush(m.f) != 0 || ::fsync(::fileno(m.f)) != 0)
    fail("cannot write {}: {}", m.tmp, std::strerror(errno));
  const int rc = std::fclose(m.f);
  m.f = nullptr;
  if (rc != 0) fail("cannot write {}: {}", m.tmp, std::strerror(errno));
  if (std::rename(m.tmp.c_str(), m.path.c_str()) != 0)
    fail("cannot rename {} to {}: {}", m.tmp, m.path, std::strerror(errno));
  m.finished = true;
}

uint64_t Writer::total_bytes() const {
  const Impl& m = *impl_;
  // Before begin_data() a non-default alignment still lacks its general.alignment record;
  // count it so the answer does not change once the header is written.
  uint64_t extra = 0;
  if (!m.begun && m.alignment != kDefaultAlignment && !m.keys.count("general.alignment")) {
    Bytes b;
    b.put_string("general.alignment");
    b.put(static_cast<uint32_t>(ValueType::U32));
    b.put(m.alignment);
    extra = b.buf.size();
  }
  return align_up(m.header().buf.size() + extra, m.alignment) + m.data_bytes;
}

}  // namespace ds4::gguf
