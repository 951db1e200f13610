// GGUF v2/v3 container: a validating reader over an mmapped file and a streaming writer.
// Layout: formats.md section 1. Every size, offset and count read from a file is checked
// before use; a malformed file raises ds4::Error naming the problem, never crashes.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/ggml_type.h"

namespace ds4::gguf {

enum class ValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
std::string_view value_type_name(ValueType t);

// One metadata value. Scalars are stored widened (integers as int64/uint64, floats as
// double) together with their on-disk type, so they round-trip exactly through the writer.
class Value {
 public:
  Value() = default;
  static Value u8(uint8_t v);
  static Value i8(int8_t v);
  static Value u16(uint16_t v);
  static Value i16(int16_t v);
  static Value u32(uint32_t v);
  static Value i32(int32_t v);
  static Value u64(uint64_t v);
  static Value i64(int64_t v);
  static Value f32(float v);
  static Value f64(double v);
  static Value boolean(bool v);
  static Value string(std::string v);
  // An array of `elem_type` values (all items must have that type; nested arrays allowed).
  static Value array(ValueType elem_type, std::vector<Value> items);
  static Value string_array(const std::vector<std::string>& items);
  static Value u32_array(const std::vector<uint32_t>& items);
  static Value i32_array(const std::vector<int32_t>& items);
  static Value f32_array(const std::vector<float>& items);

  ValueType type() const { return type_; }
  bool is_integer() const;  // any of the 8 integer types
  bool is_float() const;    // F32 or F64

  // Typed access; throws ds4::Error when the value does not have a compatible type or does
  // not fit. `key` is only used to name the value in the message.
  uint64_t as_u64(std::string_view key = {}) const;  // any non-negative integer
  int64_t as_i64(std::string_view key = {}) const;   // any integer that fits
  uint32_t as_u32(std::string_view key = {}) const;
  double as_f64(std::string_view key = {}) const;    // F32, F64 or any integer
  bool as_bool(std::string_view key = {}) const;
  const std::string& as_string(std::string_view key = {}) const;
  ValueType array_elem_type() const { return elem_type_; }
  const std::vector<Value>& as_array(std::string_view key = {}) const;

  // The stored bits of an unsigned integer, BOOL (0/1) or float (its IEEE bit pattern, so
  // NaN payloads round-trip); used by the writer.
  uint64_t raw_bits() const;

  bool operator==(const Value& o) const;

 private:
  Value with_type(ValueType t) const;

  ValueType type_ = ValueType::U8;
  ValueType elem_type_ = ValueType::U8;  // for arrays
  uint64_t u_ = 0;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::vector<Value> arr_;
};

struct KeyValue {
  std::string key;
  Value value;
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ne[0] is the contiguous dimension (formats.md 1.2)
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;      // relative to the data section
  uint64_t nbytes = 0;      // row_bytes(ne[0]) * prod(ne[1..])
  int64_t n_elements() const;
  int64_t n_rows() const;   // prod(ne[1..])
  std::string shape_string() const;  // "[4096, 1024]"
};

// Limits applied while parsing, so a hostile header cannot make the reader allocate
// without bound. The defaults accept every real DeepSeek V4 file with a wide margin.
struct ReadLimits {
  uint64_t max_tensors = 1u << 20;
  uint64_t max_kv = 1u << 16;
  uint64_t max_string_bytes = 1u << 26;
  uint64_t max_array_elems = 1u << 26;
  int max_array_depth = 8;
  int max_dims = 8;
  // Array items across the whole file: each costs a Value (~100 bytes) however small it is
  // on disk, so this bounds memory. Real files hold about 400k (tokens, merges, types).
  uint64_t max_total_array_elems = 1u << 26;
};

// A GGUF file opened read-only and memory-mapped. Tensor data are used in place.
class File {
 public:
  static File open(const std::string& path, const ReadLimits& limits = {});
  // Parse from a caller-owned buffer (fuzzing, tests); `bytes` must outlive the File.
  static File parse(std::span<const uint8_t> bytes, const ReadLimits& limits = {});

  File(File&&) noexcept;
  File& operator=(File&&) noexcept;
  ~File();

  const std::string& path() const;
  uint32_t version() const;
  uint64_t alignment() const;
  uint64_t data_offset() const;          // absolute file offset of the data section
  std::span<const uint8_t> bytes() const;  // the whole file

  // Metadata, in file order.
  const std::vector<KeyValue>& metadata() const;
  const Value* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }
  // Throws "missing metadata key KEY" if absent, or a type error naming KEY.
  const Value& get(std::string_view key) const;
  uint32_t get_u32(std::string_view key) const;
  uint64_t get_u64(std::string_view key) const;
  double get_f64(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  const std::string& get_string(std::string_view key) const;
  std::vector<uint32_t> get_u32_array(std::string_view key) const;
  std::vector<float> get_f32_array(std::string_view key) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::optional<uint32_t> get_u32_or(std::string_view key) const;  // nullopt if absent

  // Tensors, in file order.
  const std::vector<TensorInfo>& tensors() const;
  const TensorInfo* find_tensor(std::string_view name) const;
  const TensorInfo& tensor(std::string_view name) const;  // throws "missing tensor NAME"
  const uint8_t* tensor_data(const TensorInfo& t) const;  // pointer into the mapping

 private:
  struct Impl;
  explicit File(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Streaming writer: metadata and tensor infos are declared first, then tensor payloads are
// written in declaration order (each may be streamed in pieces), with zero padding to the
// alignment. Writes to PATH.tmp and renames on finish(), so a crash never leaves a
// truncated file under the final name.
class Writer {
 public:
  explicit Writer(std::string path, uint32_t alignment = 32, uint32_t version = 3);
  ~Writer();  // removes the temp file if finish() was not reached
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  void add_kv(std::string key, Value v);
  // Declares a tensor; its byte size follows from type and shape.
  void add_tensor(std::string name, GgmlType type, std::vector<int64_t> ne);

  // After all declarations: writes the header. Then call write_tensor_data for each tensor
  // in order, possibly several times per tensor until its nbytes are written.
  void begin_data();
  void write_tensor_data(const void* data, size_t n);
  void finish();

  uint64_t total_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds4::gguf
