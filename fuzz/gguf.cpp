// libFuzzer target for the GGUF reader: any input must parse or raise ds4::Error, and
// everything a parsed file hands out (values, tensor views) must be safe to read.
// The seeds in fuzz/corpus/gguf were written once by gguf::Writer (the sample of
// tests/gguf/sample_file.h plus three smaller files); test_gguf checks that they stay valid.
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/error.h"
#include "gguf/gguf.h"

namespace {

using ds4::gguf::File;
using ds4::gguf::Value;
using ds4::gguf::ValueType;

volatile uint64_t g_sink;

// Calls every typed accessor; type mismatches are expected to throw ds4::Error.
template <typename F>
void attempt(F&& f) {
  try {
    f();
  } catch (const ds4::Error&) {
  }
}

void touch_value(const Value& v, int depth) {
  attempt([&] { g_sink = g_sink + v.as_u64(); });
  attempt([&] { g_sink = g_sink + static_cast<uint64_t>(v.as_i64()); });
  attempt([&] { g_sink = g_sink + v.as_u32(); });
  attempt([&] { g_sink = g_sink + static_cast<uint64_t>(v.as_f64() != 0); });
  attempt([&] { g_sink = g_sink + v.as_bool(); });
  attempt([&] { g_sink = g_sink + v.as_string().size(); });
  attempt([&] {
    for (const Value& it : v.as_array()) touch_value(it, depth + 1);
  });
  g_sink = g_sink + v.raw_bits() + v.is_integer() + v.is_float() +
           ds4::gguf::value_type_name(v.type()).size() + (v == v);
}

void touch_file(const File& f) {
  g_sink = g_sink + f.version() + f.alignment() + f.data_offset() + f.bytes().size();
  for (const auto& kv : f.metadata()) {
    touch_value(kv.value, 0);
    const std::string& k = kv.key;
    if (f.find(k) != &kv.value) __builtin_trap();  // keys are unique, so lookup finds this one
    attempt([&] { g_sink = g_sink + f.get_u32(k); });
    attempt([&] { g_sink = g_sink + f.get_u64(k); });
    attempt([&] { g_sink = g_sink + static_cast<uint64_t>(f.get_f64(k) != 0); });
    attempt([&] { g_sink = g_sink + f.get_bool(k); });
    attempt([&] { g_sink = g_sink + f.get_string(k).size(); });
    attempt([&] { g_sink = g_sink + f.get_u32_array(k).size(); });
    attempt([&] { g_sink = g_sink + f.get_f32_array(k).size(); });
    attempt([&] { g_sink = g_sink + f.get_string_array(k).size(); });
    attempt([&] { g_sink = g_sink + f.get_u32_or(k).value_or(0); });
  }
  attempt([&] { g_sink = g_sink + f.get("no.such.key").raw_bits(); });
  for (const auto& t : f.tensors()) {
    if (&f.tensor(t.name) != &t) __builtin_trap();
    g_sink = g_sink + static_cast<uint64_t>(t.n_elements() + t.n_rows()) + t.shape_string().size();
    // The first and last byte of each tensor must lie inside the buffer (ASan checks).
    const uint8_t* p = f.tensor_data(t);
    g_sink = g_sink + p[0] + p[t.nbytes - 1];
  }
  attempt([&] { g_sink = g_sink + f.tensor("no.such.tensor").nbytes; });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const File f = File::parse(std::span<const uint8_t>(data, size));
    touch_file(f);
  } catch (const ds4::Error&) {
  }
  return 0;
}
