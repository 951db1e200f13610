// Shared helpers of the ds4-quality tests: the fixtures converted once per test binary build
// (the tests/e2e approach, in a cache of its own), models loaded once per process.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "convert/convert.h"
#include "model/model.h"
#include "quality/windows.h"

namespace qt {

namespace fs = std::filesystem;

using testfix::fixture_dir;

inline std::string converted(const std::string& name, const std::string& recipe) {
  return testfix::converted(name, recipe, "quality-cache");
}

inline const ds4::model::Model& model(const std::string& name, const std::string& recipe) {
  return testfix::loaded(name, recipe, "quality-cache");
}

// A deterministic stream of n ids below `vocab` (a fixed LCG: the same on every platform).
inline std::vector<int32_t> token_stream(size_t n, int32_t vocab, uint32_t seed = 1) {
  std::vector<int32_t> t(n);
  uint32_t s = seed;
  for (auto& x : t) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<int32_t>((s >> 8) % static_cast<uint32_t>(vocab));
  }
  return t;
}

// A LogitsSource whose logits depend on the last few tokens and the position only, so tests
// can recompute any row by hand: row(p) = f(tokens[p-1], tokens[p], p - window start).
class MockLogits final : public ds4::quality::LogitsSource {
 public:
  explicit MockLogits(int64_t vocab) : vocab_(vocab) {}
  int64_t n_vocab() const override { return vocab_; }
  void reset() override { hist_.clear(); }
  void eval(std::span<const int32_t> tokens, float* out) override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      hist_.push_back(tokens[i]);
      if (out) row(hist_, out + static_cast<int64_t>(i) * vocab_);
    }
  }
  // Logits after the sequence `h` (the last element is the current token).
  void row(const std::vector<int32_t>& h, float* o) const {
    const int32_t a = h.back(), b = h.size() > 1 ? h[h.size() - 2] : 7;
    const auto pos = static_cast<int32_t>(h.size());
    for (int64_t v = 0; v < vocab_; ++v)
      o[v] = static_cast<float>(((a * 31 + b * 17 + pos * 13 + v * 7) % 29) / 4.0);
  }
  int64_t vocab_;
  std::vector<int32_t> hist_;
};

}  // namespace qt
