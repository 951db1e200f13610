// Metadata values (formats.md 1.1, value types 0-12) and their typed accessors.
#include <bit>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "gguf/gguf.h"

namespace ds4::gguf {
namespace {

// "metadata key K" when the caller named the value, so errors point at the file's key.
std::string subject(std::string_view key) {
  if (key.empty()) return "metadata value";
  return fmt::format("metadata key {}", key);
}

bool is_signed_int(ValueType t) {
  return t == ValueType::I8 || t == ValueType::I16 || t == ValueType::I32 || t == ValueType::I64;
}

bool is_unsigned_int(ValueType t) {
  return t == ValueType::U8 || t == ValueType::U16 || t == ValueType::U32 || t == ValueType::U64;
}

}  // namespace

std::string_view value_type_name(ValueType t) {
  // Names as in the GGUF spec table (formats.md 1.1).
  switch (t) {
    case ValueType::U8: return "UINT8";
    case ValueType::I8: return "INT8";
    case ValueType::U16: return "UINT16";
    case ValueType::I16: return "INT16";
    case ValueType::U32: return "UINT32";
    case ValueType::I32: return "INT32";
    case ValueType::F32: return "FLOAT32";
    case ValueType::BOOL: return "BOOL";
    case ValueType::STRING: return "STRING";
    case ValueType::ARRAY: return "ARRAY";
    case ValueType::U64: return "UINT64";
    case ValueType::I64: return "INT64";
    case ValueType::F64: return "FLOAT64";
  }
  return "UNKNOWN";
}

Value Value::with_type(ValueType t) const {
  Value v = *this;
  v.type_ = t;
  return v;
}

Value Value::u8(uint8_t v) { return u64(v).with_type(ValueType::U8); }
Value Value::u16(uint16_t v) { return u64(v).with_type(ValueType::U16); }
Value Value::u32(uint32_t v) { return u64(v).with_type(ValueType::U32); }
Value Value::u64(uint64_t v) {
  Value out;
  out.type_ = ValueType::U64;
  out.u_ = v;
  return out;
}

Value Value::i8(int8_t v) { return i64(v).with_type(ValueType::I8); }
Value Value::i16(int16_t v) { return i64(v).with_type(ValueType::I16); }
Value Value::i32(int32_t v) { return i64(v).with_type(ValueType::I32); }
Value Value::i64(int64_t v) {
  Value out;
  out.type_ = ValueType::I64;
  out.i_ = v;
  return out;
}

// Floats keep their raw bits in u_ so that every bit pattern (NaN payloads, signalling NaNs)
// survives a read-write round trip; f_ holds the widened value for arithmetic use.
Value Value::f32(float v) {
  Value out;
  out.type_ = ValueType::F32;
  out.u_ = std::bit_cast<uint32_t>(v);
  out.f_ = static_cast<double>(v);
  return out;
}

Value Value::f64(double v) {
  Value out;
  out.type_ = ValueType::F64;
  out.u_ = std::bit_cast<uint64_t>(v);
  out.f_ = v;
  return out;
}

Value Value::boolean(bool v) {
  Value out;
  out.type_ = ValueType::BOOL;
  out.u_ = v ? 1 : 0;
  return out;
}

Value Value::string(std::string v) {
  Value out;
  out.type_ = ValueType::STRING;
  out.s_ = std::move(v);
  return out;
}

Value Value::array(ValueType elem_type, std::vector<Value> items) {
  if (static_cast<uint32_t>(elem_type) > static_cast<uint32_t>(ValueType::F64))
    fail("metadata array: unknown element type {}", static_cast<uint32_t>(elem_type));
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].type() != elem_type)
      fail("metadata array of {}: item {} has type {}", value_type_name(elem_type), i,
           value_type_name(items[i].type()));
  }
  Value out;
  out.type_ = ValueType::ARRAY;
  out.elem_type_ = elem_type;
  out.arr_ = std::move(items);
  return out;
}

Value Value::string_array(const std::vector<std::string>& items) {
  std::vector<Value> v;
  v.reserve(items.size());
  for (const auto& s : items) v.push_back(string(s));
  return array(ValueType::STRING, std::move(v));
}

Value Value::u32_array(const std::vector<uint32_t>& items) {
  std::vector<Value> v;
  v.reserve(items.size());
  for (uint32_t x : items) v.push_back(u32(x));
  return array(ValueType::U32, std::move(v));
}

Value Value::i32_array(const std::vector<int32_t>& items) {
  std::vector<Value> v;
  v.reserve(items.size());
  for (int32_t x : items) v.push_back(i32(x));
  return array(ValueType::I32, std::move(v));
}

Value Value::f32_array(const std::vector<float>& items) {
  std::vector<Value> v;
  v.reserve(items.size());
  for (float x : items) v.push_back(f32(x));
  return array(ValueType::F32, std::move(v));
}

bool Value::is_integer() const { return is_signed_int(type_) || is_unsigned_int(type_); }
bool Value::is_float() const { return type_ == ValueType::F32 || type_ == ValueType::F64; }

uint64_t Value::as_u64(std::string_view key) const {
  if (is_unsigned_int(type_)) return u_;
  if (is_signed_int(type_)) {
    if (i_ < 0) fail("{}: value {} is negative, expected a non-negative integer", subject(key), i_);
    return static_cast<uint64_t>(i_);
  }
  fail("{}: expected an integer, found {}", subject(key), value_type_name(type_));
}

int64_t Value::as_i64(std::string_view key) const {
  if (is_signed_int(type_)) return i_;
  if (is_unsigned_int(type_)) {
    if (u_ > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail("{}: value {} does not fit in INT64", subject(key), u_);
    return static_cast<int64_t>(u_);
  }
  fail("{}: expected an integer, found {}", subject(key), value_type_name(type_));
}

uint32_t Value::as_u32(std::string_view key) const {
  const uint64_t v = as_u64(key);
  if (v > std::numeric_limits<uint32_t>::max())
    fail("{}: value {} does not fit in UINT32", subject(key), v);
  return static_cast<uint32_t>(v);
}

double Value::as_f64(std::string_view key) const {
  if (is_float()) return f_;
  if (is_unsigned_int(type_)) return static_cast<double>(u_);
  if (is_signed_int(type_)) return static_cast<double>(i_);
  fail("{}: expected a number, found {}", subject(key), value_type_name(type_));
}

bool Value::as_bool(std::string_view key) const {
  if (type_ != ValueType::BOOL)
    fail("{}: expected BOOL, found {}", subject(key), value_type_name(type_));
  return u_ != 0;
}

const std::string& Value::as_string(std::string_view key) const {
  if (type_ != ValueType::STRING)
    fail("{}: expected STRING, found {}", subject(key), value_type_name(type_));
  return s_;
}

const std::vector<Value>& Value::as_array(std::string_view key) const {
  if (type_ != ValueType::ARRAY)
    fail("{}: expected ARRAY, found {}", subject(key), value_type_name(type_));
  return arr_;
}

uint64_t Value::raw_bits() const { return u_; }

bool Value::operator==(const Value& o) const {
  if (type_ != o.type_) return false;
  if (is_signed_int(type_)) return i_ == o.i_;
  if (type_ == ValueType::STRING) return s_ == o.s_;
  if (type_ == ValueType::ARRAY) return elem_type_ == o.elem_type_ && arr_ == o.arr_;
  // Unsigned, BOOL and floats compare their stored bits: a NaN equals the same NaN.
  return u_ == o.u_;
}

}  // namespace ds4::gguf
