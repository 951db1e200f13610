// The deep ring of the bulk-copy products (helper dmv): Q8_0 products of >= 128 MiB (the output
// head) stream through 4 shared-memory buffers per warp instead of 2 (DS4_CUDA_NO_DEEP_RING=1:
// 2). Lane l still sums units l, l + 32, ... of its row in order, whatever the buffer count, so
// the outputs must be the same bits as with 2 buffers and as the register pipeline
// (DS4_CUDA_NO_BULK_COPY=1). The CPU bound of the default path is checked by
// CudaMatvec.MatchesCpuReferenceAtFlashShapes (test_matvec.cpp), which includes the head.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/buffer.h"
#include "backend/cuda/device.h"
#include "backend/cuda/matvec.h"
#include "core/ggml_type.h"
#include "cuda_test_util.h"

namespace ds4::cuda::test {
namespace {

using test_util::download;
using test_util::gaussian;
using test_util::ScopedEnv;
using test_util::ScopedSwitchOff;
using test_util::upload;

size_t bit_differences(const std::vector<float>& a, const std::vector<float>& b) {
  size_t n = a.size() == b.size() ? 0 : std::max(a.size(), b.size());
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) n += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return n;
}

TEST(CudaDeepRing, LongQ8_0ProductsAreBitIdenticalToTwoBuffersAndRegisterPath) {
  DS4_CUDA_REQUIRE_GPU();
  if (list_devices().front().cc_major != 9) GTEST_SKIP() << "the bulk path (and its deep ring) needs sm_90";
  struct Shape {
    int64_t rows, cols;
    const char* name;
  };
  // The head (562.6 MB: deep ring), 142.6 MB (deep ring) and 71.3 MB (2 buffers either way).
  const Shape shapes[] = {{129280, 4096, "output head"}, {32768, 4096, "32768x4096"}, {16384, 4096, "16384x4096"}};
  uint64_t seed = 6100;
  for (const Shape& s : shapes) {
    DeviceBuffer w(row_bytes(GgmlType::Q8_0, s.cols) * size_t(s.rows));
    fill_random_weights(GgmlType::Q8_0, w.data(), s.rows, s.cols, seed++);
    DeviceBuffer x = upload(gaussian(s.cols, 1.0f, uint32_t(seed++)));
    DeviceBuffer act(activation_bytes(GgmlType::Q8_0, s.cols));
    quantize_activation(GgmlType::Q8_0, x.as<float>(), act.data(), s.cols);
    DeviceBuffer y(size_t(s.rows) * sizeof(float));
    // Default (deep ring where it applies), 2 buffers, register pipeline.
    const char* const switches[] = {nullptr, "DS4_CUDA_NO_DEEP_RING", "DS4_CUDA_NO_BULK_COPY"};
    std::vector<std::vector<float>> out;
    for (const char* sw : switches) {
      std::unique_ptr<ScopedSwitchOff> env;
      if (sw != nullptr) env = std::make_unique<ScopedSwitchOff>(sw);
      y.fill_bytes(0xFF);
      matvec_q(GgmlType::Q8_0, w.data(), s.rows, s.cols, act.data(), y.as<float>());
      check_last_error("deep ring product");
      device_synchronize();
      out.push_back(download<float>(y, size_t(s.rows)));
    }
    EXPECT_TRUE(std::all_of(out[0].begin(), out[0].end(), [](float v) { return std::isfinite(v); })) << s.name;
    EXPECT_EQ(bit_differences(out[0], out[1]), 0u) << s.name << ": deep ring vs 2 buffers";
    EXPECT_EQ(bit_differences(out[0], out[2]), 0u) << s.name << ": deep ring vs register pipeline";
  }
}

// Not a check: us per head product in a CUDA graph of 8 calls over 4 weight copies (2.25 GB,
// never in L2), 2 buffers (switch set) and the deep ring alternated three times, medians.
TEST(CudaDeepRing, PrintsHeadTimes) {
  DS4_CUDA_REQUIRE_GPU();
  const int64_t rows = 129280, cols = 4096;
  std::vector<DeviceBuffer> w;
  for (int c = 0; c < 4; ++c) {
    w.emplace_back(row_bytes(GgmlType::Q8_0, cols) * size_t(rows));
    fill_random_weights(GgmlType::Q8_0, w.back().data(), rows, cols, 6200 + uint64_t(c));
  }
  DeviceBuffer x = upload(gaussian(cols, 1.0f, 6210));
  DeviceBuffer act(activation_bytes(GgmlType::Q8_0, cols));
  quantize_activation(GgmlType::Q8_0, x.as<float>(), act.data(), cols);
  DeviceBuffer y(size_t(rows) * sizeof(float));
  Stream stream;
  std::vector<float> t[2];
  for (int rep = 0; rep < 3; ++rep)
    for (int off = 1; off >= 0; --off) {
      const ScopedEnv env("DS4_CUDA_NO_DEEP_RING", off ? "1" : "");
      int i = 0;
      t[off].push_back(test_util::graph_us_per_call(
          stream.handle(),
          [&](void* s) {
            matvec_q(GgmlType::Q8_0, w[size_t(i++ % 4)].data(), rows, cols, act.data(), y.as<float>(), s);
          },
          8));
    }
  for (auto& v : t) std::sort(v.begin(), v.end());
  std::printf("[ deep ring ] Q8_0 head 129280x4096 (562.6 MB): 2 buffers %.2f us, deep ring %.2f us\n", t[1][1],
              t[0][1]);
}

}  // namespace
}  // namespace ds4::cuda::test
