// llama.cpp's legacy binary imatrix (.dat) reader and the per-expert lookup of ds4's
// quantizer (formats.md 5.1, 5.3). Values are stored divided by ncall (llama.cpp writes
// mean * ncall; ds4 writes ncall = 1).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace ds4::convert {

class Imatrix {
 public:
  struct Entry {
    int32_t ncall = 0;
    std::vector<float> values;  // already divided by ncall when ncall > 0
  };

  static Imatrix load(const std::string& path);
  // `what` names the source in error messages.
  static Imatrix parse(std::span<const uint8_t> bytes, const std::string& what);

  const std::map<std::string, Entry>& entries() const { return entries_; }
  int32_t chunks() const { return chunks_; }
  const std::string& dataset() const { return dataset_; }

  // Importance vector (n_cols floats) of routed expert `expert` of GGUF tensor `gguf_name`,
  // whose official name is `hf_name` (formats.md 5.3): "<name>.expert.<X>", then
  // "<name>.expert_<X>" for both names, then the plain names, sliced at X * n_cols when they
  // hold all experts. nullptr when no entry matches; throws on an entry of the wrong size.
  const float* find_expert(const std::string& gguf_name, const std::string& hf_name,
                           int64_t expert, int64_t n_cols, int64_t n_experts) const;

 private:
  std::map<std::string, Entry> entries_;
  int32_t chunks_ = 0;
  std::string dataset_;
  std::string what_;
};

}  // namespace ds4::convert
