// Helpers for the converter tests: temporary directories, an in-memory editable copy of a
// checkpoint written back as safetensors (to build broken inputs), and independent reference
// decoders for the official FP8/FP4 formats (written from formats.md 4.2-4.3, not shared with
// the library, so the tests check the library against the spec).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <unistd.h>
#include <random>
#include <string>
#include <vector>

#include "convert/safetensors.h"

namespace ds4::convert::testing {

namespace fs = std::filesystem;

inline std::string fixture(const std::string& name) {
  return std::string(DS4_FIXTURES_DIR) + "/" + name;
}
inline std::string tiny_k() { return std::string(DS4_SOURCE_DIR) + "/tests/data/fixtures/dsv4-tiny-k-bf16"; }

// A fresh directory under the system temp dir, removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() /
            ("ds4-convert-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

struct RawTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// An editable copy of a checkpoint: config.json as JSON, tensors in memory (fixtures are small).
struct EditableCheckpoint {
  nlohmann::json config;
  std::map<std::string, RawTensor> tensors;

  static EditableCheckpoint load(const std::string& dir) {
    EditableCheckpoint c;
    std::ifstream in(dir + "/config.json");
    c.config = nlohmann::json::parse(in);
    Checkpoint ck(dir);
    for (const auto& [name, t] : ck.tensors()) {
      RawTensor r;
      r.dtype = std::string(dtype_name(t->dtype));
      r.shape = t->shape;
      r.bytes.assign(t->data, t->data + t->nbytes);
      c.tensors[name] = std::move(r);
    }
    return c;
  }

  // Writes config.json, one shard and the index into `dir`.
  void write(const std::string& dir, bool with_index = true) const {
    fs::create_directories(dir);
    std::ofstream(dir + "/config.json") << config.dump(1);
    const std::string shard = with_index ? "model-00001-of-00001.safetensors" : "model.safetensors";
    nlohmann::json h = nlohmann::json::object();
    nlohmann::json wm = nlohmann::json::object();
    uint64_t off = 0;
    for (const auto& [name, t] : tensors) {
      h[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
      off += t.bytes.size();
      wm[name] = shard;
    }
    h["__metadata__"] = {{"format", "pt"}};
    const std::string hs = h.dump();
    std::ofstream out(dir + "/" + shard, std::ios::binary);
    const uint64_t n = hs.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out.write(hs.data(), static_cast<std::streamsize>(hs.size()));
    for (const auto& [name, t] : tensors)
      out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
    if (with_index)
      std::ofstream(dir + "/model.safetensors.index.json") << nlohmann::json{{"weight_map", wm}}.dump(1);
  }
};

// formats.md 4.2: E4M3FN, bias 7, subnormals man * 2^-9, 0x7F/0xFF NaN (decoded as 0).
inline float ref_e4m3(uint8_t v) {
  const int s = v >> 7, e = (v >> 3) & 15, m = v & 7;
  if ((v & 0x7F) == 0x7F) return 0.0f;
  const double mag = e == 0 ? std::ldexp(m, -9) : std::ldexp(1.0 + m / 8.0, e - 7);
  return static_cast<float>(s ? -mag : mag);
}
inline float ref_e8m0(uint8_t e) { return static_cast<float>(std::ldexp(1.0, int(e) - 127)); }
inline float ref_e2m1(uint8_t n) {
  static const float kMag[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  return (n & 8) ? -kMag[n & 7] : kMag[n & 7];
}

inline float bf16_bits_to_f32(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace ds4::convert::testing
