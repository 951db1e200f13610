// A small GGUF exercising every metadata value type (nested arrays included) and every
// storable tensor type, written with gguf::Writer; shared by the round-trip, truncation and
// inspector tests.
#pragma once

#include <bit>
#include <limits>
#include <random>

#include "gguf/gguf_test_util.h"

namespace ds4::gguf::ggtest {

struct SampleTensor {
  std::string name;
  GgmlType type;
  std::vector<int64_t> ne;
  std::vector<uint8_t> data;
};

struct Sample {
  std::vector<KeyValue> metadata;
  std::vector<SampleTensor> tensors;
};

inline Sample make_sample(uint32_t seed = 7) {
  Sample s;
  auto kv = [&](std::string k, Value v) { s.metadata.push_back({std::move(k), std::move(v)}); };
  kv("general.architecture", Value::string("deepseek4"));
  kv("general.name", Value::string("tiny \xe2\x96\x81 test"));  // UTF-8 survives as bytes
  kv("t.empty_string", Value::string(""));
  kv("t.u8", Value::u8(255));
  kv("t.i8", Value::i8(-128));
  kv("t.u16", Value::u16(65535));
  kv("t.i16", Value::i16(-32768));
  kv("t.u32", Value::u32(4294967295u));
  kv("t.i32", Value::i32(-2147483647 - 1));
  kv("t.u64", Value::u64(std::numeric_limits<uint64_t>::max()));
  kv("t.i64", Value::i64(std::numeric_limits<int64_t>::min()));
  kv("t.f32", Value::f32(std::bit_cast<float>(0x7fa00001u)));  // a signalling NaN, kept bit-exact
  kv("t.f32_neg_zero", Value::f32(-0.0f));
  kv("t.f32_denorm", Value::f32(std::numeric_limits<float>::denorm_min()));
  kv("t.f64", Value::f64(-1e-300));
  kv("t.f64_inf", Value::f64(std::numeric_limits<double>::infinity()));
  kv("t.bool_true", Value::boolean(true));
  kv("t.bool_false", Value::boolean(false));
  kv("t.tokens", Value::string_array({"<｜begin▁of▁sentence｜>", "a", "", "hello world"}));
  kv("t.u32_array", Value::u32_array({0, 4, 128, 4294967295u}));
  kv("t.i32_array", Value::i32_array({-1, 0, 1}));
  kv("t.f32_array", Value::f32_array({10.0f, -0.5f, 1e-6f}));
  kv("t.empty_array", Value::array(ValueType::F64, {}));
  kv("t.u8_array", Value::array(ValueType::U8, {Value::u8(1), Value::u8(2)}));
  kv("t.i8_array", Value::array(ValueType::I8, {Value::i8(-1)}));
  kv("t.u16_array", Value::array(ValueType::U16, {Value::u16(9)}));
  kv("t.i16_array", Value::array(ValueType::I16, {Value::i16(-9)}));
  kv("t.u64_array", Value::array(ValueType::U64, {Value::u64(1ull << 40)}));
  kv("t.i64_array", Value::array(ValueType::I64, {Value::i64(-(1ll << 40))}));
  kv("t.f64_array", Value::array(ValueType::F64, {Value::f64(3.25), Value::f64(-0.0)}));
  kv("t.bool_array", Value::array(ValueType::BOOL, {Value::boolean(true), Value::boolean(false)}));
  kv("t.nested", Value::array(ValueType::ARRAY,
                              {Value::u32_array({1, 2}), Value::string_array({"x", "yz"}),
                               Value::array(ValueType::ARRAY, {Value::f32_array({0.25f})})}));

  std::mt19937 rng(seed);
  auto tensor = [&](std::string name, GgmlType type, std::vector<int64_t> ne) {
    SampleTensor t{std::move(name), type, std::move(ne), {}};
    size_t rows = 1;
    for (size_t i = 1; i < t.ne.size(); ++i) rows *= static_cast<size_t>(t.ne[i]);
    t.data.resize(row_bytes(type, t.ne[0]) * rows);
    for (auto& b : t.data) b = static_cast<uint8_t>(rng());
    s.tensors.push_back(std::move(t));
  };
  tensor("output_norm.weight", GgmlType::F32, {3});
  tensor("token_embd.weight", GgmlType::F16, {5, 3});
  tensor("blk.0.attn_q_a.weight", GgmlType::Q8_0, {64, 2});
  tensor("blk.0.ffn_down_exps.weight", GgmlType::Q2_K, {256, 1, 2});
  tensor("blk.0.ffn_gate_exps.weight", GgmlType::IQ2_XXS, {256, 1, 1});
  tensor("mtp.0.q4k.weight", GgmlType::Q4_K, {256});
  tensor("blk.0.ffn_gate_tid2eid.weight", GgmlType::I32, {6, 1});
  tensor("t.bf16", GgmlType::BF16, {7});
  tensor("t.mxfp4", GgmlType::MXFP4, {32, 1, 1, 1, 1, 1, 1, 1});
  return s;
}

// Writes the sample; pieces > 0 streams each tensor in chunks of at most that many bytes.
inline void write_sample(const Sample& s, const std::string& path, uint32_t alignment = 32,
                         uint32_t version = 3, size_t pieces = 0) {
  Writer w(path, alignment, version);
  for (const auto& kv : s.metadata) w.add_kv(kv.key, kv.value);
  for (const auto& t : s.tensors) w.add_tensor(t.name, t.type, t.ne);
  w.begin_data();
  for (const auto& t : s.tensors) {
    if (pieces == 0) {
      w.write_tensor_data(t.data.data(), t.data.size());
      continue;
    }
    for (size_t at = 0; at < t.data.size(); at += pieces)
      w.write_tensor_data(t.data.data() + at, std::min(pieces, t.data.size() - at));
  }
  w.finish();
}

}  // namespace ds4::gguf::ggtest
