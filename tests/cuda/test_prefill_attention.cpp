// Prefill attention on the tensor cores (prefill_attention.h) against the CPU attention
// (model::attention_core followed by the de-rotation, as forward.cpp) and the CUDA-core
// kernel (fwd::attention), on fresh random inputs at Flash shapes: 64 heads of 512, window
// 128, the raw ring wrapped, compressed rows selected by an indexer (ratio 4, queries that
// see fewer rows than top-k and more), all compressed rows (ratio 128), none (ratio 0, from
// position 0: tiles of 1 .. 40 rows); also 16, 32 and 128 heads (the three CTA sizes and two
// head groups). Every case also checks that a query's result does not depend on the other
// queries of its launch (a sub-batch gives the same bits). Skips visibly without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cuda/device.h"
#include "backend/cuda/forward_kernels.h"
#include "backend/cuda/prefill_attention.h"
#include "cuda/cuda_test_util.h"
#include "model/attention.h"
#include "model/rope.h"

namespace {

namespace fwd = ds4::cuda::fwd;
namespace tu = ds4::cuda::test_util;
using ds4::cuda::DeviceBuffer;

#define REQUIRE_GPU()                                                                            \
  do {                                                                                           \
    if (ds4::cuda::list_devices().empty()) GTEST_SKIP() << "no CUDA GPU on this machine: skipped"; \
  } while (0)

constexpr int64_t kD = 512, kRope = 64, kWindow = 128;

struct AttnCase {
  const char* name;
  int64_t NH;
  int64_t ratio;   // 0: window only
  bool select;     // indexer selection (else all compressed rows)
  int64_t topk;
  int64_t p0, T;   // positions p0 .. p0 + T - 1
  int64_t cap;     // raw ring rows
  float q_sigma;   // scores ~ N(0, q_sigma^2) for unit rows
};

// Worst |a - ref| over max |ref|.
double max_rel(const std::vector<float>& a, const std::vector<float>& ref) {
  const tu::Err e = tu::compare(a, ref);
  return e.max_abs / std::max(e.max_ref, 1e-30);
}

void run_case(const AttnCase& c) {
  const int64_t NH = c.NH, D = kD, T = c.T, pmax = c.p0 + T - 1;
  const int64_t hist_begin = std::max<int64_t>(0, c.p0 - kWindow + 1);
  ASSERT_GE(c.cap, pmax - hist_begin + 1) << "the ring must hold every visible raw row";
  uint32_t seed = static_cast<uint32_t>(NH * 1000003 + c.ratio * 7919 + c.p0 * 31 + T);
  const auto rope = ds4::model::Rope::plain(kRope, 10000.0f);

  // Raw rows of positions hist_begin .. pmax, stored in a ring of random other rows.
  const auto raw = tu::gaussian((pmax - hist_begin + 1) * D, 1.0f, ++seed);
  auto ring = tu::gaussian(c.cap * D, 1.0f, ++seed);
  for (int64_t p = hist_begin; p <= pmax; ++p)
    std::copy_n(raw.data() + (p - hist_begin) * D, D, ring.data() + (p % c.cap) * D);
  const int64_t n_comp = c.ratio > 0 ? (pmax + 1) / c.ratio : 0;
  const auto comp = tu::gaussian(std::max<int64_t>(n_comp, 1) * D, 1.0f, ++seed);
  const auto q = tu::gaussian(T * NH * D, c.q_sigma, ++seed);
  const auto sinks = tu::gaussian(NH, 1.0f, ++seed);

  // The indexer's selection: all visible rows up to top-k, else top-k distinct ones in
  // random order.
  const int64_t K = std::max<int64_t>(c.topk, 1);
  std::vector<int32_t> sel(static_cast<size_t>(T * K), 0), n_sel(static_cast<size_t>(T), 0);
  std::mt19937 rng(++seed);
  int64_t fewer = 0, more = 0;
  for (int64_t t = 0; t < T && c.select; ++t) {
    const int64_t n_vis = (c.p0 + t + 1) / c.ratio;
    std::vector<int32_t> rows(static_cast<size_t>(n_vis));
    std::iota(rows.begin(), rows.end(), 0);
    if (n_vis > K) std::shuffle(rows.begin(), rows.end(), rng);
    n_sel[static_cast<size_t>(t)] = static_cast<int32_t>(std::min(n_vis, K));
    std::copy_n(rows.begin(), n_sel[static_cast<size_t>(t)], sel.begin() + t * K);
    (n_vis > K ? more : fewer) += 1;
  }

  // CPU: attention_core, then the de-rotation of each head at its query's position.
  ds4::model::HParams hp;
  hp.head_dim = D;
  hp.n_head = NH;
  hp.window = kWindow;
  hp.n_rope = kRope;
  ds4::model::AttentionInputs in;
  in.q = q.data();
  in.T = T;
  in.p0 = c.p0;
  in.raw = raw.data();
  in.hist_begin = hist_begin;
  in.comp = comp.data();
  in.ratio = static_cast<uint32_t>(c.ratio);
  if (c.select) {
    in.sel = sel.data();
    in.n_sel = n_sel.data();
    in.sel_stride = K;
  }
  std::vector<float> ref(static_cast<size_t>(T * NH * D));
  ds4::model::attention_core(hp, sinks.data(), in, ref.data(), &tu::pool());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < NH; ++h) rope.apply(ref.data() + (t * NH + h) * D, D, c.p0 + t, true);

  // GPU, both kernels.
  std::vector<fwd::StepCtl> ctls(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    ctls[static_cast<size_t>(t)].pos = c.p0 + t;
    ctls[static_cast<size_t>(t)].index = static_cast<int32_t>(t);
  }
  auto dq = tu::upload(q), dring = tu::upload(ring), dcomp = tu::upload(comp), dsinks = tu::upload(sinks);
  auto dom = tu::upload(rope.omega()), dsel = tu::upload(sel), dnsel = tu::upload(n_sel), dctl = tu::upload(ctls);
  const int64_t max_rows = kWindow + std::max(K, n_comp) + 1;
  const fwd::AttnShape shape{NH, D, kRope, kWindow, c.cap, c.ratio, max_rows};
  ASSERT_TRUE(fwd::prefill_attention_supported(shape));
  const int32_t* dsel_or_null = c.select ? dsel.as<int32_t>() : nullptr;
  const size_t out_bytes = static_cast<size_t>(T * NH * D) * sizeof(float);
  DeviceBuffer dnew(out_bytes), dold(out_bytes), dsub(out_bytes);
  fwd::prefill_attention(shape, dq.as<float>(), dring.as<float>(), dcomp.as<float>(), dsel_or_null,
                         dnsel.as<int32_t>(), K, dsinks.as<float>(), dom.as<float>(), dnew.as<float>(),
                         dctl.as<fwd::StepCtl>(), T, nullptr);
  DeviceBuffer scratch(static_cast<size_t>(T) * fwd::attention_scratch_floats(shape) * sizeof(float));
  scratch.fill_bytes(0);
  fwd::attention(shape, dq.as<float>(), dring.as<float>(), dcomp.as<float>(), dsel_or_null, dnsel.as<int32_t>(),
                 dsinks.as<float>(), dom.as<float>(), scratch.as<float>(), dold.as<float>(), dctl.as<fwd::StepCtl>(),
                 nullptr, T, K);
  // Queries t0 .. t0 + n - 1 alone.
  const int64_t t0 = T / 3, n = std::max<int64_t>(1, T / 4);
  fwd::prefill_attention(shape, dq.as<float>() + t0 * NH * D, dring.as<float>(), dcomp.as<float>(),
                         c.select ? dsel.as<int32_t>() + t0 * K : nullptr, dnsel.as<int32_t>() + t0, K,
                         dsinks.as<float>(), dom.as<float>(), dsub.as<float>(), dctl.as<fwd::StepCtl>() + t0, n,
                         nullptr);
  ds4::cuda::device_synchronize();
  const auto got = tu::download<float>(dnew, static_cast<size_t>(T * NH * D));
  const auto old = tu::download<float>(dold, static_cast<size_t>(T * NH * D));
  const auto sub = tu::download<float>(dsub, static_cast<size_t>(n * NH * D));

  const tu::Err e_cpu = tu::compare(got, ref);
  const double r_cpu = max_rel(got, ref), r_old = max_rel(got, old), r_old_cpu = max_rel(old, ref);
  std::printf("%s: %lld queries x %lld heads (%lld see fewer compressed rows than top-k, %lld more): "
              "tensor cores vs CPU max rel %.3e (rel l2 %.3e), vs CUDA-core kernel %.3e; "
              "CUDA-core kernel vs CPU %.3e\n",
              c.name, static_cast<long long>(T), static_cast<long long>(NH), static_cast<long long>(fewer),
              static_cast<long long>(more), r_cpu, e_cpu.rel_l2, r_old, r_old_cpu);
  EXPECT_TRUE(e_cpu.finite) << c.name;
  EXPECT_LT(r_cpu, 1e-5) << c.name;
  EXPECT_LT(e_cpu.rel_l2, 1e-5) << c.name;
  EXPECT_LT(r_old, 1e-5) << c.name;
  EXPECT_EQ(0, std::memcmp(sub.data(), got.data() + t0 * NH * D, sub.size() * sizeof(float)))
      << c.name << ": a query's result depends on the other queries of its launch";
}

TEST(PrefillAttention, SupportsFlashAndProShapesOnly) {
  REQUIRE_GPU();
  auto shape = [](int64_t NH, int64_t D, int64_t n_rope) { return fwd::AttnShape{NH, D, n_rope, 128, 300, 4, 700}; };
  EXPECT_TRUE(fwd::prefill_attention_supported(shape(64, 512, 64)));   // Flash
  EXPECT_TRUE(fwd::prefill_attention_supported(shape(128, 512, 64)));  // Pro
  EXPECT_TRUE(fwd::prefill_attention_supported(shape(16, 512, 64)));
  EXPECT_FALSE(fwd::prefill_attention_supported(shape(12, 512, 64)));  // heads not a multiple of 16
  EXPECT_FALSE(fwd::prefill_attention_supported(shape(8, 128, 32)));   // demo model
  EXPECT_FALSE(fwd::prefill_attention_supported(shape(4, 64, 16)));    // tiny fixtures
  EXPECT_FALSE(fwd::prefill_attention_supported(shape(64, 512, 63)));  // odd rope dims
}

TEST(PrefillAttention, SelectedRowsMatchCpu) {
  REQUIRE_GPU();
  // Positions 2030 .. 2053: 507 .. 513 visible compressed rows around top-k 512; ring wrapped.
  run_case({"ratio 4, selection", 64, 4, true, 512, 2030, 24, 300, 1.0f});
  // Peaked softmax (scores ~ N(0, 16)): the running max moves, the rescaling matters.
  run_case({"ratio 4, selection, peaked", 64, 4, true, 512, 2040, 8, 300, 4.0f});
}

TEST(PrefillAttention, AllCompressedRowsMatchCpu) {
  REQUIRE_GPU();
  run_case({"ratio 128, all rows", 64, 128, false, 0, 5000, 16, 300, 1.0f});
}

TEST(PrefillAttention, WindowOnlyMatchesCpu) {
  REQUIRE_GPU();
  run_case({"ratio 0, from position 0", 64, 0, false, 0, 0, 40, 300, 1.0f});
  run_case({"ratio 0, ring wrapped", 64, 0, false, 0, 1000, 8, 200, 1.0f});
}

TEST(PrefillAttention, OtherHeadCountsMatchCpu) {
  REQUIRE_GPU();
  run_case({"16 heads, ratio 128", 16, 128, false, 0, 700, 4, 200, 1.0f});
  run_case({"32 heads, ratio 4, selection", 32, 4, true, 64, 300, 8, 200, 1.0f});
  run_case({"128 heads, ratio 4, selection", 128, 4, true, 16, 100, 4, 200, 1.0f});
}

}  // namespace
