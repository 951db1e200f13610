// ds4-gguf: prints what a GGUF file holds (header, metadata, tensor table, totals per type).
// A malformed file ends with the reader's one-line error and exit status 1.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <bit>
#include <cstdio>
#include <map>
#include <string>

#include "core/error.h"
#include "gguf/gguf.h"

namespace {

using ds4::gguf::Value;
using ds4::gguf::ValueType;

constexpr size_t kMaxStringBytes = 80;

// Quoted, with control bytes escaped and long strings cut at a UTF-8 character boundary.
std::string quote(const std::string& s) {
  size_t n = s.size();
  if (n > kMaxStringBytes) {
    n = kMaxStringBytes;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  }
  std::string out = "\"";
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
  if (n < s.size()) out += fmt::format("... ({} bytes)", s.size());
  return out;
}

std::string type_string(const Value& v) {
  if (v.type() != ValueType::ARRAY) return std::string(ds4::gguf::value_type_name(v.type()));
  return fmt::format("ARRAY[{}]", ds4::gguf::value_type_name(v.array_elem_type()));
}

std::string value_string(const Value& v, size_t max_items) {
  switch (v.type()) {
    case ValueType::STRING: return quote(v.as_string());
    case ValueType::BOOL: return v.as_bool() ? "true" : "false";
    // FLOAT32 printed as a float, so 1e-6f reads "1e-06" rather than its double widening.
    case ValueType::F32: return fmt::format("{}", std::bit_cast<float>(static_cast<uint32_t>(v.raw_bits())));
    case ValueType::F64: return fmt::format("{}", v.as_f64());
    case ValueType::I8:
    case ValueType::I16:
    case ValueType::I32:
    case ValueType::I64: return fmt::format("{}", v.as_i64());
    case ValueType::ARRAY: {
      const auto& items = v.as_array();
      std::string out = "[";
      for (size_t i = 0; i < items.size() && i < max_items; ++i)
        out += (i ? ", " : "") + value_string(items[i], max_items);
      if (items.size() > max_items)
        out += fmt::format("{}... {} more", max_items ? ", " : "", items.size() - max_items);
      return out + "]";
    }
    default: return fmt::format("{}", v.as_u64());
  }
}

std::string human_bytes(uint64_t n) {
  if (n >= (1ull << 30)) return fmt::format("{:.2f} GiB", static_cast<double>(n) / (1ull << 30));
  if (n >= (1ull << 20)) return fmt::format("{:.2f} MiB", static_cast<double>(n) / (1ull << 20));
  if (n >= (1ull << 10)) return fmt::format("{:.2f} KiB", static_cast<double>(n) / (1ull << 10));
  return fmt::format("{} B", n);
}

void inspect(const std::string& path, bool show_tensors, size_t max_items) {
  const auto f = ds4::gguf::File::open(path);
  fmt::print("{}: GGUF version {}, alignment {}, data offset {}, {} bytes ({})\n", path,
             f.version(), f.alignment(), f.data_offset(), f.bytes().size(),
             human_bytes(f.bytes().size()));

  fmt::print("\nmetadata: {} keys\n", f.metadata().size());
  size_t key_width = 0;
  for (const auto& kv : f.metadata()) key_width = std::max(key_width, kv.key.size());
  for (const auto& kv : f.metadata()) {
    const Value& v = kv.value;
    std::string count;
    if (v.type() == ValueType::ARRAY) count = fmt::format(" ({} items)", v.as_array().size());
    fmt::print("  {:<{}}  {}{} = {}\n", kv.key, key_width, type_string(v), count,
               value_string(v, max_items));
  }

  const auto& tensors = f.tensors();
  std::map<std::string, std::pair<uint64_t, uint64_t>> per_type;  // name -> (count, bytes)
  uint64_t total = 0;
  for (const auto& t : tensors) {
    auto& e = per_type[std::string(ds4::type_name(t.type))];
    ++e.first;
    e.second += t.nbytes;
    total += t.nbytes;
  }

  fmt::print("\ntensors: {}\n", tensors.size());
  if (show_tensors && !tensors.empty()) {
    size_t name_width = 4;
    for (const auto& t : tensors) name_width = std::max(name_width, t.name.size());
    fmt::print("  {:>5}  {:<{}}  {:<7}  {:<22}  {:>14}  {:>14}\n", "index", "name", name_width,
               "type", "shape", "file offset", "bytes");
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      fmt::print("  {:>5}  {:<{}}  {:<7}  {:<22}  {:>14}  {:>14}\n", i, t.name, name_width,
                 ds4::type_name(t.type), t.shape_string(), f.data_offset() + t.offset, t.nbytes);
    }
  }

  fmt::print("\ntotals by type:\n");
  for (const auto& [name, e] : per_type)
    fmt::print("  {:<7}  {:>6} tensors  {:>16} bytes  ({})\n", name, e.first, e.second,
               human_bytes(e.second));
  fmt::print("  {:<7}  {:>6} tensors  {:>16} bytes  ({})\n", "all", tensors.size(), total,
             human_bytes(total));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Print the header, metadata and tensor table of a GGUF file."};
  std::string path;
  bool no_tensors = false;
  size_t max_items = 8;
  app.add_option("file", path, "GGUF file to inspect")->required();
  app.add_flag("--no-tensors", no_tensors, "Omit the per-tensor table (totals are still printed)");
  app.add_option("--max-array", max_items, "Array items to print before eliding the rest")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    inspect(path, !no_tensors, max_items);
  } catch (const ds4::Error& e) {
    std::fflush(stdout);
    fmt::print(stderr, "ds4-gguf: {}\n", e.what());
    return 1;
  }
  return 0;
}
