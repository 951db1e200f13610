// Helpers for the GGUF tests: hand-built byte images (to reach each validation error) and a
// scratch directory for files written by gguf::Writer.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "gguf/gguf.h"

namespace ds4::gguf::ggtest {

// Little-endian GGUF fields appended one by one, so a test can write exactly the bytes a
// malformed file would contain.
class Raw {
 public:
  std::vector<uint8_t> b;

  Raw& u8(uint8_t v) { return put(v); }
  Raw& u32(uint32_t v) { return put(v); }
  Raw& u64(uint64_t v) { return put(v); }
  Raw& str(std::string_view s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Raw& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    u32(0x46554747);
    u32(version);
    u64(n_tensors);
    return u64(n_kv);
  }
  Raw& kv_u32(std::string_view key, uint32_t v) {
    str(key);
    u32(static_cast<uint32_t>(ValueType::U32));
    return u32(v);
  }
  Raw& kv_string(std::string_view key, std::string_view v) {
    str(key);
    u32(static_cast<uint32_t>(ValueType::STRING));
    return str(v);
  }
  Raw& tensor(std::string_view name, const std::vector<uint64_t>& ne, uint32_t type,
              uint64_t offset) {
    str(name);
    u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) u64(d);
    u32(type);
    return u64(offset);
  }
  Raw& pad(size_t align) {
    while (b.size() % align) b.push_back(0);
    return *this;
  }
  Raw& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }

 private:
  template <typename T>
  Raw& put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
    return *this;
  }
};

inline File parse(const std::vector<uint8_t>& bytes, const ReadLimits& limits = {}) {
  return File::parse(bytes, limits);
}

// The message of the ds4::Error that f throws; fails the test if it throws nothing.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a ds4::Error";
  return {};
}

inline std::string parse_error(const std::vector<uint8_t>& bytes, const ReadLimits& limits = {}) {
  return error_of([&] { parse(bytes, limits); });
}

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ds4-gguf-test-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(std::string_view name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace ds4::gguf::ggtest
