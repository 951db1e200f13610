// Radix top-k (backend/cuda/topk.h, topk_block.h) against the CPU selection
// model::topk_lower_index: same indices in the same order, with many exact ties, -0/+0 and
// -inf, for n up to 256K rows (1M context at ratio 4). Also through the indexer's launch
// (fwd::idx_select, row count read from device memory), and the select time at the sizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "backend/cuda/buffer.h"
#include "backend/cuda/device.h"
#include "backend/cuda/forward_kernels.h"
#include "backend/cuda/topk.h"
#include "model/indexer.h"

namespace {

using ds4::cuda::DeviceBuffer;

#define DS4_REQUIRE_GPU()                                                                  \
  do {                                                                                     \
    if (ds4::cuda::list_devices().empty()) GTEST_SKIP() << "no CUDA GPU: GPU top-k test not run"; \
  } while (0)

// Kinds of inputs: distinct values, few distinct values (most entries tied), all equal, and
// values with -0/+0, -inf and huge magnitudes mixed in.
enum class Data { Gaussian, FewLevels, AllEqual, Specials };

std::vector<float> make(Data kind, int64_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) {
    switch (kind) {
      case Data::Gaussian: x = d(g); break;
      case Data::FewLevels: x = std::round(d(g) * 2.0f) / 2.0f; break;  // ~13 levels
      case Data::AllEqual: x = 0.25f; break;
      case Data::Specials: {
        const uint32_t r = g() % 8;
        x = r == 0 ? 0.0f : r == 1 ? -0.0f : r == 2 ? -std::numeric_limits<float>::infinity()
            : r == 3 ? 3.0e38f : r == 4 ? -3.0e38f : d(g);
        break;
      }
    }
  }
  return v;
}

std::vector<int32_t> cpu_topk(const std::vector<float>& v, int64_t k) {
  std::vector<int32_t> out(static_cast<size_t>(std::min<int64_t>(k, static_cast<int64_t>(v.size()))));
  ds4::model::topk_lower_index(v.data(), static_cast<int64_t>(v.size()), k, out.data());
  return out;
}

std::vector<int32_t> gpu_topk(const std::vector<float>& v, int64_t k) {
  const int64_t n = static_cast<int64_t>(v.size());
  const int64_t m = std::min(k, n);
  DeviceBuffer dv(std::max<size_t>(v.size() * 4, 16)), ds(std::max<size_t>(static_cast<size_t>(m) * 4, 16));
  dv.upload(v.data(), v.size() * 4);
  ds4::cuda::topk_select(dv.as<float>(), n, k, ds.as<int32_t>(), nullptr);
  std::vector<int32_t> out(static_cast<size_t>(m));
  ds.download(out.data(), out.size() * 4);
  return out;
}

TEST(CudaTopk, SameSelectionAndOrderAsCpu) {
  DS4_REQUIRE_GPU();
  const int64_t sizes[] = {1, 5, 513, 2048, 2049, 16384, 65536, 262144};
  const int64_t ks[] = {1, 7, 512, 1024, 2048};
  uint32_t seed = 1;
  int cases = 0;
  for (Data kind : {Data::Gaussian, Data::FewLevels, Data::AllEqual, Data::Specials}) {
    for (int64_t n : sizes) {
      for (int64_t k : ks) {
        if (k > n && n > 8) continue;  // k >= n: only on the small sizes (everything, sorted)
        const auto v = make(kind, n, seed++);
        ASSERT_EQ(gpu_topk(v, k), cpu_topk(v, k)) << "kind " << static_cast<int>(kind) << " n " << n << " k " << k;
        ++cases;
      }
    }
  }
  EXPECT_GT(cases, 100);
}

TEST(CudaTopk, RejectsTooLargeK) {
  DS4_REQUIRE_GPU();
  DeviceBuffer dv(16), ds(16);
  EXPECT_ANY_THROW(ds4::cuda::topk_select(dv.as<float>(), 4, ds4::cuda::kTopkMaxK + 1, ds.as<int32_t>(), nullptr));
}

// The indexer's launch: rows 0..n_vis-1 with n_vis = (pos + 1) / ratio from device memory.
// Scores come from the GPU (the kernel test in test_forward.cpp checks them); the selection
// must be topk_lower_index of those scores.
TEST(CudaTopk, IndexerSelectionAtLongContext) {
  DS4_REQUIRE_GPU();
  namespace fwd = ds4::cuda::fwd;
  const int64_t NI = 4, DI = 16, ratio = 4, K = 512;
  for (int64_t n_vis : {int64_t{600}, int64_t{65536}, int64_t{262144}}) {
    const int64_t pos = n_vis * ratio + ratio - 2;  // (pos + 1) / ratio = n_vis
    auto q = make(Data::Gaussian, NI * DI, 11), w = make(Data::Gaussian, NI, 12);
    auto keys = make(Data::FewLevels, n_vis * DI, 13);  // coarse keys: many tied scores
    DeviceBuffer dq(q.size() * 4), dw(w.size() * 4), dk(keys.size() * 4), dsc(n_vis * 4), dsel(K * 4), dn(4);
    dq.upload(q.data(), q.size() * 4);
    dw.upload(w.data(), w.size() * 4);
    dk.upload(keys.data(), keys.size() * 4);
    fwd::StepCtl c;
    c.pos = pos;
    DeviceBuffer dc(sizeof(c));
    dc.upload(&c, sizeof(c));
    fwd::idx_select(dq.as<float>(), dw.as<float>(), 0.125f, NI, DI, dk.as<float>(), ratio, K, dsc.as<float>(),
                    dsel.as<int32_t>(), dn.as<int32_t>(), dc.as<fwd::StepCtl>(), nullptr);
    std::vector<float> scores(static_cast<size_t>(n_vis));
    dsc.download(scores.data(), scores.size() * 4);
    std::vector<int32_t> sel(K);
    int32_t n_sel = 0;
    dsel.download(sel.data(), K * 4);
    dn.download(&n_sel, 4);
    EXPECT_EQ(n_sel, K);
    size_t ties = 0;
    for (size_t i = 1; i < scores.size(); ++i) ties += scores[i] == scores[i - 1];
    EXPECT_EQ(sel, cpu_topk(scores, K)) << "n_vis " << n_vis << " (" << ties << " adjacent ties)";
  }
}

// Select time at the row counts (context 8K .. 1M at ratio 4), median of 21 runs, and
// the whole idx_select (Flash shapes: 64 heads x 128) for scale.
TEST(CudaTopk, PrintsSelectTimes) {
  DS4_REQUIRE_GPU();
  namespace fwd = ds4::cuda::fwd;
  const int64_t NI = 64, DI = 128, ratio = 4, K = 512;
  ds4::cuda::Stream stream;
  for (int64_t n : {int64_t{2048}, int64_t{16384}, int64_t{65536}, int64_t{262144}}) {
    const auto v = make(Data::Gaussian, n, 21);
    DeviceBuffer dv(v.size() * 4), ds(K * 4);
    dv.upload(v.data(), v.size() * 4);
    auto median_us = [&](auto&& launch) {
      std::vector<float> t;
      for (int r = 0; r < 21; ++r) {
        ds4::cuda::EventTimer ev;
        ev.start(stream.handle());
        launch();
        ev.stop(stream.handle());
        t.push_back(ev.elapsed_ms() * 1000.0f);
      }
      std::sort(t.begin(), t.end());
      return t[t.size() / 2];
    };
    const float sel_us = median_us([&] { ds4::cuda::topk_select(dv.as<float>(), n, K, ds.as<int32_t>(), stream.handle()); });
    auto q = make(Data::Gaussian, NI * DI, 22), w = make(Data::Gaussian, NI, 23);
    DeviceBuffer dq(q.size() * 4), dw(w.size() * 4), dk(static_cast<size_t>(n * DI) * 4), dsc(n * 4), dn(4);
    dq.upload(q.data(), q.size() * 4);
    dw.upload(w.data(), w.size() * 4);
    dk.fill_bytes(0x3c);  // 0.0115 in every key element: the scoring cost does not depend on values
    fwd::StepCtl c;
    c.pos = n * ratio - 1;  // (pos + 1) / ratio = n rows
    DeviceBuffer dc(sizeof(c));
    dc.upload(&c, sizeof(c));
    const float idx_us = median_us([&] {
      fwd::idx_select(dq.as<float>(), dw.as<float>(), 0.01f, NI, DI, dk.as<float>(), ratio, K, dsc.as<float>(),
                      ds.as<int32_t>(), dn.as<int32_t>(), dc.as<fwd::StepCtl>(), stream.handle());
    });
    std::printf("[topk] n %7lld k %lld: radix select %8.1f us; idx_select (64x128 scores + select) %8.1f us\n",
                static_cast<long long>(n), static_cast<long long>(K), sel_us, idx_us);
    std::vector<float> scores(static_cast<size_t>(n));
    dsc.download(scores.data(), scores.size() * 4);
    std::vector<int32_t> sel(K);
    ds.download(sel.data(), K * 4);
    EXPECT_EQ(sel, cpu_topk(scores, K)) << "n " << n;  // the timed launches selected correctly
  }
}

}  // namespace
