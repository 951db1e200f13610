// Helpers shared by the GPU kernel tests (test_matvec.cpp, test_matmul.cpp): random inputs,
// device upload/download, and the GPU-vs-CPU comparison with its two tolerances.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/buffer.h"
#include "backend/cuda/device.h"
#include "core/thread_pool.h"

// Skips the calling test, visibly, on a machine without a CUDA GPU.
#define DS4_CUDA_REQUIRE_GPU()                                                                     \
  do {                                                                                             \
    if (::ds4::cuda::list_devices().empty()) GTEST_SKIP() << "no CUDA GPU on this machine: skipped"; \
  } while (0)

namespace ds4::cuda::test_util {

inline ThreadPool& pool() {
  static ThreadPool p;
  return p;
}

inline std::vector<float> gaussian(int64_t n, float sigma, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = dist(rng);
  return v;
}

// At least 16 bytes, so an empty input still gets a valid device pointer.
inline DeviceBuffer upload(const void* p, size_t bytes) {
  DeviceBuffer b(std::max<size_t>(bytes, 16));
  b.upload(p, bytes);
  return b;
}

template <class T>
DeviceBuffer upload(const std::vector<T>& v) {
  return upload(v.data(), v.size() * sizeof(T));
}

template <class T>
std::vector<T> download(const DeviceBuffer& b, size_t n, size_t offset = 0) {
  std::vector<T> v(n);
  b.download(v.data(), n * sizeof(T), offset);
  return v;
}

// Sets an environment variable for one scope (the launchers read their A/B switches and
// tuning variables on every call) and unsets it after; an empty value leaves it unset.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (!value.empty()) setenv(name_, value.c_str(), 1);
  }
  ~ScopedEnv() { unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

// Sets an A/B switch (DS4_CUDA_NO_...) to 1 for one scope.
class ScopedSwitchOff : public ScopedEnv {
 public:
  explicit ScopedSwitchOff(const char* name) : ScopedEnv(name, "1") {}
};

struct Err {
  double max_abs = 0, max_ref = 0, rel_l2 = 0;
  bool finite = true;
};

inline Err compare(const std::vector<float>& got, const std::vector<float>& ref) {
  Err e;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) e.finite = false;
    const double d = double(got[i]) - double(ref[i]);
    e.max_abs = std::max(e.max_abs, std::fabs(d));
    e.max_ref = std::max(e.max_ref, std::fabs(double(ref[i])));
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
  }
  e.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return e;
}

// GPU result vs CPU reference: max |d| <= max_rel * max |ref| and ||d|| / ||ref|| <= l2.
inline void expect_close(const std::vector<float>& got, const std::vector<float>& ref, const std::string& what,
                         double max_rel = 1e-4, double l2 = 1e-5) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  const Err e = compare(got, ref);
  EXPECT_TRUE(e.finite) << what << ": non-finite output (unwritten element?)";
  EXPECT_GT(e.max_ref, 0.0) << what << ": reference is all zero";
  EXPECT_LE(e.max_abs, max_rel * e.max_ref) << what << " max_abs " << e.max_abs << " max_ref " << e.max_ref;
  EXPECT_LE(e.rel_l2, l2) << what << " rel_l2 " << e.rel_l2;
}

// Microseconds per call of `call` in a CUDA graph of `calls` back-to-back calls (as in the decode
// step: PDL edges, no host launch gaps), median of 9 graph launches. The first call runs
// outside the capture (first-use setup such as a shared-memory opt-in).
inline float graph_us_per_call(void* stream, const std::function<void(void*)>& call, int calls = 32) {
  call(stream);
  Graph g(stream, [&](void* s) {
    for (int i = 0; i < calls; ++i) call(s);
  });
  std::vector<float> t;
  for (int r = 0; r < 9; ++r) {
    EventTimer ev;
    ev.start(stream);
    g.launch(stream);
    ev.stop(stream);
    t.push_back(ev.elapsed_ms() * 1000.0f / static_cast<float>(calls));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace ds4::cuda::test_util
