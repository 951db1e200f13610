// gguf::File: the read-only mapping of a GGUF file and typed access to what parse() found.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <unordered_map>

#include "core/error.h"
#include "gguf/gguf.h"
#include "gguf/parsed.h"

namespace ds4::gguf {

struct File::Impl {
  std::string path;
  void* map = nullptr;  // owned mapping (File::open), or null for a caller's buffer
  size_t map_len = 0;
  std::span<const uint8_t> bytes;
  detail::Parsed parsed;
  // Views into parsed.metadata / parsed.tensors, built after those vectors stop moving.
  std::unordered_map<std::string_view, size_t> kv_index;
  std::unordered_map<std::string_view, size_t> tensor_index;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (map) ::munmap(map, map_len);
  }

  void load(const ReadLimits& limits) {
    parsed = detail::parse(path, bytes, limits);
    kv_index.reserve(parsed.metadata.size());
    for (size_t i = 0; i < parsed.metadata.size(); ++i) kv_index.emplace(parsed.metadata[i].key, i);
    tensor_index.reserve(parsed.tensors.size());
    for (size_t i = 0; i < parsed.tensors.size(); ++i)
      tensor_index.emplace(parsed.tensors[i].name, i);
  }

  // Re-raises an accessor's error with the file name in front.
  template <typename F>
  auto named(F&& f) const -> decltype(f()) {
    try {
      return f();
    } catch (const Error& e) {
      fail("{}: {}", path, e.what());
    }
  }
};

File::File(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;
File::~File() = default;

File File::open(const std::string& path, const ReadLimits& limits) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open {}: {}", path, std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail("cannot stat {}: {}", path, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{} is not a regular file", path);
  }
  const auto size = static_cast<size_t>(st.st_size);
  // mmap refuses length 0; an empty file is simply a truncated one for the parser.
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      fail("cannot map {} ({} bytes): {}", path, size, std::strerror(err));
    }
    impl->map = p;
    impl->map_len = size;
    impl->bytes = {static_cast<const uint8_t*>(p), size};
  }
  ::close(fd);  // the mapping keeps the file referenced
  impl->load(limits);
  return File(std::move(impl));
}

File File::parse(std::span<const uint8_t> bytes, const ReadLimits& limits) {
  auto impl = std::make_unique<Impl>();
  impl->path = "<buffer>";
  impl->bytes = bytes;
  impl->load(limits);
  return File(std::move(impl));
}

const std::string& File::path() const { return impl_->path; }
uint32_t File::version() const { return impl_->parsed.version; }
uint64_t File::alignment() const { return impl_->parsed.alignment; }
uint64_t File::data_offset() const { return impl_->parsed.data_offset; }
std::span<const uint8_t> File::bytes() const { return impl_->bytes; }

const std::vector<KeyValue>& File::metadata() const { return impl_->parsed.metadata; }

const Value* File::find(std::string_view key) const {
  const auto it = impl_->kv_index.find(key);
  return it == impl_->kv_index.end() ? nullptr : &impl_->parsed.metadata[it->second].value;
}

const Value& File::get(std::string_view key) const {
  const Value* v = find(key);
  if (!v) fail("{}: missing metadata key {}", impl_->path, key);
  return *v;
}

uint32_t File::get_u32(std::string_view key) const {
  const Value& v = get(key);
  return impl_->named([&] { return v.as_u32(key); });
}

uint64_t File::get_u64(std::string_view key) const {
  const Value& v = get(key);
  return impl_->named([&] { return v.as_u64(key); });
}

double File::get_f64(std::string_view key) const {
  const Value& v = get(key);
  return impl_->named([&] { return v.as_f64(key); });
}

bool File::get_bool(std::string_view key) const {
  const Value& v = get(key);
  return impl_->named([&] { return v.as_bool(key); });
}

const std::string& File::get_string(std::string_view key) const {
  const Value& v = get(key);
  return impl_->named([&]() -> const std::string& { return v.as_string(key); });
}

namespace {

const std::vector<Value>& array_of(const std::string& path, const Value& v, std::string_view key,
                                   bool (*accepts)(ValueType), std::string_view expected) {
  if (v.type() != ValueType::ARRAY)
    fail("{}: metadata key {}: expected an array of {}, found {}", path, key, expected,
         value_type_name(v.type()));
  if (!accepts(v.array_elem_type()))
    fail("{}: metadata key {}: expected an array of {}, found an array of {}", path, key,
         expected, value_type_name(v.array_elem_type()));
  return v.as_array(key);
}

bool is_int_type(ValueType t) {
  switch (t) {
    case ValueType::U8:
    case ValueType::I8:
    case ValueType::U16:
    case ValueType::I16:
    case ValueType::U32:
    case ValueType::I32:
    case ValueType::U64:
    case ValueType::I64: return true;
    default: return false;
  }
}

}  // namespace

std::vector<uint32_t> File::get_u32_array(std::string_view key) const {
  const auto& items = array_of(impl_->path, get(key), key, is_int_type, "integers");
  std::vector<uint32_t> out;
  out.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const Value& it = items[i];
    constexpr int64_t kMax = std::numeric_limits<uint32_t>::max();
    const bool is_signed = it.type() == ValueType::I8 || it.type() == ValueType::I16 ||
                           it.type() == ValueType::I32 || it.type() == ValueType::I64;
    if (is_signed) {
      const int64_t s = it.as_i64();
      if (s < 0 || s > kMax)
        fail("{}: metadata key {}: item {} ({}) does not fit in UINT32", impl_->path, key, i, s);
      out.push_back(static_cast<uint32_t>(s));
    } else {
      const uint64_t u = it.raw_bits();
      if (u > static_cast<uint64_t>(kMax))
        fail("{}: metadata key {}: item {} ({}) does not fit in UINT32", impl_->path, key, i, u);
      out.push_back(static_cast<uint32_t>(u));
    }
  }
  return out;
}

std::vector<float> File::get_f32_array(std::string_view key) const {
  const auto& items = array_of(
      impl_->path, get(key), key,
      [](ValueType t) { return t == ValueType::F32 || t == ValueType::F64; },
      "FLOAT32 or FLOAT64");
  std::vector<float> out;
  out.reserve(items.size());
  for (const Value& it : items) {
    // F32 items keep their exact bits; F64 items round to nearest.
    out.push_back(it.type() == ValueType::F32
                      ? std::bit_cast<float>(static_cast<uint32_t>(it.raw_bits()))
                      : static_cast<float>(it.as_f64()));
  }
  return out;
}

std::vector<std::string> File::get_string_array(std::string_view key) const {
  const auto& items = array_of(
      impl_->path, get(key), key, [](ValueType t) { return t == ValueType::STRING; }, "STRING");
  std::vector<std::string> out;
  out.reserve(items.size());
  for (const Value& it : items) out.push_back(it.as_string());
  return out;
}

std::optional<uint32_t> File::get_u32_or(std::string_view key) const {
  if (!has(key)) return std::nullopt;
  return get_u32(key);
}

const std::vector<TensorInfo>& File::tensors() const { return impl_->parsed.tensors; }

const TensorInfo* File::find_tensor(std::string_view name) const {
  const auto it = impl_->tensor_index.find(name);
  return it == impl_->tensor_index.end() ? nullptr : &impl_->parsed.tensors[it->second];
}

const TensorInfo& File::tensor(std::string_view name) const {
  const TensorInfo* t = find_tensor(name);
  if (!t) fail("{}: missing tensor {}", impl_->path, name);
  return *t;
}

const uint8_t* File::tensor_data(const TensorInfo& t) const {
  // parse() proved data_offset + offset + nbytes <= file size for every tensor of this file.
  return impl_->bytes.data() + impl_->parsed.data_offset + t.offset;
}

int64_t TensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

int64_t TensorInfo::n_rows() const {
  int64_t n = 1;
  for (size_t i = 1; i < ne.size(); ++i) n *= ne[i];
  return n;
}

std::string TensorInfo::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += fmt::format("{}{}", i ? ", " : "", ne[i]);
  return s + "]";
}

}  // namespace ds4::gguf
