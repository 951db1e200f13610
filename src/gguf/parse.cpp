// GGUF header parser (formats.md 1.1). Every count, length, offset and size read from the
// bytes is checked before it is used, so a hostile or truncated file ends in ds4::Error.
#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <unordered_set>

#include "core/error.h"
#include "gguf/parsed.h"

namespace ds4::gguf::detail {
namespace {

static_assert(std::endian::native == std::endian::little,
              "GGUF is little-endian and the reader copies fields as they are");

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint64_t kNone = std::numeric_limits<uint64_t>::max();

// What is being read, for messages; formatted only when something fails, because the
// tokenizer arrays alone hold a few hundred thousand values.
struct Where {
  std::string_view kind;
  std::string_view name;
  uint64_t index = kNone;
};

std::string describe(const Where& w) {
  std::string s(w.kind);
  if (!w.name.empty()) s += fmt::format(" {}", w.name);
  if (w.index != kNone) s += fmt::format(" {}", w.index);
  return s;
}

class Cursor {
 public:
  Cursor(const std::string& path, std::span<const uint8_t> bytes) : path_(path), bytes_(bytes) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }
  const std::string& path() const { return path_; }

  void need(uint64_t n, const Where& w) const {
    if (n > remaining())
      fail("{}: truncated file: {} needs {} bytes at offset {}, but the file has {} bytes", path_,
           describe(w), n, pos_, bytes_.size());
  }

  template <typename T>
  T read(const Where& w) {
    need(sizeof(T), w);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  // GGUF string: u64 length, then the bytes without a terminator.
  std::string_view string(const Where& w, uint64_t max_bytes) {
    const uint64_t len = read<uint64_t>(w);
    if (len > max_bytes)
      fail("{}: {}: string of {} bytes exceeds the limit of {} bytes", path_, describe(w), len,
           max_bytes);
    need(len, w);
    std::string_view s(reinterpret_cast<const char*>(bytes_.data() + pos_), len);
    pos_ += len;
    return s;
  }

 private:
  const std::string& path_;
  std::span<const uint8_t> bytes_;
  uint64_t pos_ = 0;
};

// Smallest encoding of one value of type t, to reject counts the remaining bytes cannot hold
// before anything is allocated for them.
uint64_t min_encoded_size(ValueType t) {
  switch (t) {
    case ValueType::U8:
    case ValueType::I8:
    case ValueType::BOOL: return 1;
    case ValueType::U16:
    case ValueType::I16: return 2;
    case ValueType::U32:
    case ValueType::I32:
    case ValueType::F32: return 4;
    case ValueType::U64:
    case ValueType::I64:
    case ValueType::F64:
    case ValueType::STRING: return 8;
    case ValueType::ARRAY: return 12;
  }
  return 1;
}

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::F64); }

class Parser {
 public:
  Parser(const std::string& path, std::span<const uint8_t> bytes, const ReadLimits& limits)
      : c_(path, bytes), limits_(limits), size_(bytes.size()) {}

  Parsed run() {
    Parsed out;
    read_header(out);
    read_metadata(out);
    out.alignment = alignment_of(out.metadata);
    read_tensor_infos(out);
    // data_start = align_up(end of tensor infos, ALIGNMENT) (formats.md 1.1).
    out.data_offset = (c_.pos() + out.alignment - 1) / out.alignment * out.alignment;
    check_placement(out);
    return out;
  }

 private:
  const std::string& path() const { return c_.path(); }

  void read_header(Parsed& out) {
    const Where w{"header", {}, kNone};
    c_.need(4, w);
    const uint32_t magic = c_.read<uint32_t>(w);
    if (magic != kMagic)
      fail("{}: not a GGUF file (the first bytes are {:02x} {:02x} {:02x} {:02x}, expected "
           "47 47 55 46 \"GGUF\")",
           path(), magic & 0xff, (magic >> 8) & 0xff, (magic >> 16) & 0xff, magic >> 24);
    out.version = c_.read<uint32_t>(w);
    const uint32_t swapped = __builtin_bswap32(out.version);
    if (swapped == 2 || swapped == 3)
      fail("{}: big-endian GGUF files are not supported (version {} in big-endian order)", path(),
           swapped);
    if (out.version == 1)
      fail("{}: GGUF version 1 is not supported (it uses 32-bit counts); only versions 2 and 3 are",
           path());
    // v2 has the same layout as v3 for little-endian files; v3 only added big-endian variants.
    if (out.version != 2 && out.version != 3)
      fail("{}: unsupported GGUF version {} (only versions 2 and 3 are supported)", path(),
           out.version);
    n_tensors_ = c_.read<uint64_t>(w);
    n_kv_ = c_.read<uint64_t>(w);
    if (n_tensors_ > limits_.max_tensors)
      fail("{}: tensor count {} exceeds the limit of {}", path(), n_tensors_, limits_.max_tensors);
    if (n_kv_ > limits_.max_kv)
      fail("{}: metadata count {} exceeds the limit of {}", path(), n_kv_, limits_.max_kv);
    // A record is at least 13 bytes (key length, value type, one byte of value) and a tensor
    // info at least 32; counts the file cannot hold are truncation, caught before allocating.
    const uint64_t left = c_.remaining();
    const bool fits = n_kv_ <= left / 13 && n_tensors_ <= left / 32 &&
                      n_kv_ * 13 + n_tensors_ * 32 <= left;
    if (!fits)
      fail("{}: truncated file: the header declares {} metadata records and {} tensors, more "
           "than the {} bytes that follow can hold",
           path(), n_kv_, n_tensors_, left);
  }

  void read_metadata(Parsed& out) {
    out.metadata.reserve(n_kv_);
    std::unordered_set<std::string_view> seen;
    for (uint64_t i = 0; i < n_kv_; ++i) {
      const std::string_view key =
          c_.string(Where{"key of metadata record", {}, i}, limits_.max_string_bytes);
      if (!seen.insert(key).second) fail("{}: duplicate metadata key {}", path(), key);
      const Where w{"metadata key", key, kNone};
      const uint32_t type = c_.read<uint32_t>(w);
      if (!known_value_type(type))
        fail("{}: metadata key {}: unknown value type {}", path(), key, type);
      out.metadata.push_back({std::string(key), read_value(static_cast<ValueType>(type), key, 0)});
    }
  }

  Value read_value(ValueType t, std::string_view key, int depth) {
    const Where w{"metadata key", key, kNone};
    switch (t) {
      case ValueType::U8: return Value::u8(c_.read<uint8_t>(w));
      case ValueType::I8: return Value::i8(c_.read<int8_t>(w));
      case ValueType::U16: return Value::u16(c_.read<uint16_t>(w));
      case ValueType::I16: return Value::i16(c_.read<int16_t>(w));
      case ValueType::U32: return Value::u32(c_.read<uint32_t>(w));
      case ValueType::I32: return Value::i32(c_.read<int32_t>(w));
      case ValueType::U64: return Value::u64(c_.read<uint64_t>(w));
      case ValueType::I64: return Value::i64(c_.read<int64_t>(w));
      case ValueType::F32: return Value::f32(std::bit_cast<float>(c_.read<uint32_t>(w)));
      case ValueType::F64: return Value::f64(std::bit_cast<double>(c_.read<uint64_t>(w)));
      case ValueType::BOOL: {
        const uint8_t b = c_.read<uint8_t>(w);
        if (b > 1) fail("{}: metadata key {}: BOOL value {} is neither 0 nor 1", path(), key, b);
        return Value::boolean(b != 0);
      }
      case ValueType::STRING: return Value::string(std::string(c_.string(w, limits_.max_string_bytes)));
      case ValueType::ARRAY: return read_array(key, depth);
    }
    fail("{}: metadata key {}: unknown value type {}", path(), key, static_cast<uint32_t>(t));
  }

  Value read_array(std::string_view key, int depth) {
    const Where w{"metadata key", key, kNone};
    // ds4's skipper recurses up to depth 8 (formats.md 1.1); the limit also bounds the stack.
    if (depth + 1 > limits_.max_array_depth)
      fail("{}: metadata key {}: arrays are nested more than {} levels deep", path(), key,
           limits_.max_array_depth);
    const uint32_t et = c_.read<uint32_t>(w);
    if (!known_value_type(et))
      fail("{}: metadata key {}: unknown array element type {}", path(), key, et);
    const auto elem = static_cast<ValueType>(et);
    const uint64_t n = c_.read<uint64_t>(w);
    if (n > limits_.max_array_elems)
      fail("{}: metadata key {}: array of {} items exceeds the limit of {}", path(), key, n,
           limits_.max_array_elems);
    if (n > limits_.max_total_array_elems - total_array_elems_)
      fail("{}: metadata key {}: array of {} items brings the file's array items past the limit "
           "of {}",
           path(), key, n, limits_.max_total_array_elems);
    total_array_elems_ += n;
    if (n > c_.remaining() / min_encoded_size(elem))
      fail("{}: truncated file: metadata key {} declares an array of {} {} items, more than the "
           "{} bytes left in the file can hold",
           path(), key, n, value_type_name(elem), c_.remaining());
    std::vector<Value> items;
    items.reserve(n);
    for (uint64_t i = 0; i < n; ++i) items.push_back(read_value(elem, key, depth + 1));
    return Value::array(elem, std::move(items));
  }

  // general.alignment counts only as UINT32 and non-zero, else 32 (formats.md 1.1).
  uint64_t alignment_of(const std::vector<KeyValue>& md) const {
    for (const auto& kv : md) {
      if (kv.key != "general.alignment" || kv.value.type() != ValueType::U32) continue;
      const uint64_t a = kv.value.raw_bits();
      if (a == 0) return kDefaultAlignment;
      if (!std::has_single_bit(a))
        fail("{}: metadata key general.alignment: {} is not a power of two", path(), a);
      return a;
    }
    return kDefaultAlignment;
  }

  void read_tensor_infos(Parsed& out) {
    out.tensors.reserve(n_tensors_);
    std::unordered_set<std::string_view> seen;
    for (uint64_t i = 0; i < n_tensors_; ++i) {
      const std::string_view name =
          c_.string(Where{"name of tensor info", {}, i}, limits_.max_string_bytes);
      if (name.empty()) fail("{}: tensor info {} has an empty name", path(), i);
      if (!seen.insert(name).second) fail("{}: duplicate tensor name {}", path(), name);
      const Where w{"tensor", name, kNone};
      const uint32_t n_dims = c_.read<uint32_t>(w);
      if (n_dims == 0 || n_dims > static_cast<uint32_t>(std::max(limits_.max_dims, 0)))
        fail("{}: tensor {}: n_dims {} is out of range (1 to {})", path(), name, n_dims,
             limits_.max_dims);
      TensorInfo t;
      t.name = std::string(name);
      for (uint32_t d = 0; d < n_dims; ++d)
        t.ne.push_back(static_cast<int64_t>(c_.read<uint64_t>(w)));
      const uint32_t type = c_.read<uint32_t>(w);
      t.offset = c_.read<uint64_t>(w);
      const TypeTraits* tr = type_traits(type);
      if (!tr) fail("{}: tensor {}: unknown tensor type id {}", path(), name, type);
      if (!tr->storable)
        fail("{}: tensor {}: type {} cannot be stored in a file", path(), name, tr->name);
      t.type = tr->type;
      const std::string what = fmt::format("{}: tensor {}", path(), name);
      t.nbytes = tensor_nbytes(what, t.type, t.ne);
      if (t.offset % out.alignment != 0)
        fail("{}: offset {} is not a multiple of the alignment {}", what, t.offset, out.alignment);
      out.tensors.push_back(std::move(t));
    }
  }

  // Every tensor lies inside the file and no two share bytes.
  void check_placement(const Parsed& out) const {
    const uint64_t start = out.data_offset;
    for (const auto& t : out.tensors) {
      const bool fits = start <= size_ && t.offset <= size_ - start &&
                        t.nbytes <= size_ - start - t.offset;
      if (!fits) {
        const uint64_t at = t.offset <= kNone - start ? start + t.offset : t.offset;
        fail("{}: tensor {}: data [offset {}, size {}] runs past the end of the file ({} bytes)",
             path(), t.name, at, t.nbytes, size_);
      }
    }
    std::vector<const TensorInfo*> order;
    order.reserve(out.tensors.size());
    for (const auto& t : out.tensors) order.push_back(&t);
    std::sort(order.begin(), order.end(),
              [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < order.size(); ++i) {
      const TensorInfo& a = *order[i - 1];
      const TensorInfo& b = *order[i];
      if (a.offset + a.nbytes > b.offset)
        fail("{}: tensors {} and {} overlap (data [offset {}, size {}] and [offset {}, size {}])",
             path(), a.name, b.name, start + a.offset, a.nbytes, start + b.offset, b.nbytes);
    }
  }

  Cursor c_;
  const ReadLimits& limits_;
  uint64_t size_;
  uint64_t n_tensors_ = 0;
  uint64_t n_kv_ = 0;
  uint64_t total_array_elems_ = 0;
};

}  // namespace

uint64_t tensor_nbytes(std::string_view what, GgmlType type, std::span<const int64_t> ne) {
  const TypeTraits& tr = type_traits(type);
  for (size_t d = 0; d < ne.size(); ++d)
    if (ne[d] <= 0) fail("{}: dimension {} is {}, expected a positive size", what, d, ne[d]);
  if (ne.empty()) fail("{}: has no dimensions", what);
  // Quantization blocks run along ne[0] (formats.md 1.2).
  if (ne[0] % tr.block_elems != 0)
    fail("{}: ne[0] = {} is not a multiple of the {} block size {}", what, ne[0], tr.name,
         tr.block_elems);
  int64_t elems = 1;
  uint64_t bytes = static_cast<uint64_t>(ne[0] / tr.block_elems) * static_cast<uint64_t>(tr.block_bytes);
  bool overflow = __builtin_mul_overflow(static_cast<uint64_t>(ne[0] / tr.block_elems),
                                         static_cast<uint64_t>(tr.block_bytes), &bytes);
  for (size_t d = 0; d < ne.size(); ++d) {
    overflow |= __builtin_mul_overflow(elems, ne[d], &elems);
    if (d > 0) overflow |= __builtin_mul_overflow(bytes, static_cast<uint64_t>(ne[d]), &bytes);
  }
  // Sizes stay below 2^63 so that offset arithmetic in callers cannot wrap either.
  if (overflow || bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    std::string shape;
    for (size_t d = 0; d < ne.size(); ++d) shape += fmt::format("{}{}", d ? ", " : "", ne[d]);
    fail("{}: shape [{}] overflows 64-bit element or byte counts", what, shape);
  }
  return bytes;
}

Parsed parse(const std::string& path, std::span<const uint8_t> bytes, const ReadLimits& limits) {
  return Parser(path, bytes, limits).run();
}

}  // namespace ds4::gguf::detail
