// Prefill attention v2 (prefill_attention.cu: the lo halves of the rows skipped per tile and
// block of 64 dims where they are all zero, the products interleaved over the accumulators)
// and its tuning variants (DS4_CUDA_PREFILL_ATTN_VAR) against the first kernel (DS4_CUDA_NO_PREFILL_ATTN_V2=1) and the CPU, on fresh
// random inputs at Flash shapes (64 heads of 512, window 128, RoPE 64):
//  - rows as the official numerics store them (the 448 non-RoPE dims through the FP8 round
//    trip, E4M3 values times powers of two: exact in fp16, lo = 0) take the 4-MMA products
//    there; Gaussian rows keep all three; a mix (FP8 compressed rows, Gaussian raw window)
//    gives tiles of both kinds. Since hi * 0 adds exact zeros, v2 must give the first
//    kernel's bits (memcmp), and the CPU bound of test_prefill_attention.cpp (1e-5);
//  - PrintsChunkTimes: the kernel time of one layer of an 8192-token chunk from position 0
//    (window-only, ratio 4 with a top-512 selection, ratio 128), both kernels alternated.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cuda/buffer.h"
#include "backend/cuda/device.h"
#include "backend/cuda/forward_kernels.h"
#include "backend/cuda/prefill_attention.h"
#include "cuda/cuda_test_util.h"
#include "model/attention.h"
#include "model/numerics_sim.h"
#include "model/rope.h"

namespace {

namespace fwd = ds4::cuda::fwd;
namespace tu = ds4::cuda::test_util;
using ds4::cuda::DeviceBuffer;

constexpr int64_t kD = 512, kRope = 64, kWindow = 128, kNope = kD - kRope;
constexpr const char* kSwitch = "DS4_CUDA_NO_PREFILL_ATTN_V2";

// How the rows are made: Gaussian, or Gaussian through the FP8 round trip of the official
// numerics in their non-RoPE dims (rows_finish / the compressor's Fp8Nope).
enum class Rows { Gaussian, Fp8, Fp8Compressed };

void fp8_rows(std::vector<float>& v) {
  for (size_t r = 0; r < v.size() / kD; ++r) ds4::model::fp8_roundtrip(v.data() + r * kD, kNope, 64);
}

struct Case {
  const char* name;
  int64_t NH, ratio;
  bool select;
  int64_t topk, p0, T, cap;
  Rows rows;
};

void run_case(const Case& c) {
  const int64_t NH = c.NH, D = kD, T = c.T, pmax = c.p0 + T - 1;
  const int64_t hist_begin = std::max<int64_t>(0, c.p0 - kWindow + 1);
  ASSERT_GE(c.cap, pmax - hist_begin + 1);
  uint32_t seed = static_cast<uint32_t>(NH * 7 + c.ratio * 131 + c.p0 * 17 + T + static_cast<int>(c.rows) * 1000);
  const auto rope = ds4::model::Rope::plain(kRope, 10000.0f);

  auto raw = tu::gaussian((pmax - hist_begin + 1) * D, 1.0f, ++seed);
  if (c.rows == Rows::Fp8) fp8_rows(raw);
  auto ring = tu::gaussian(c.cap * D, 1.0f, ++seed);
  for (int64_t p = hist_begin; p <= pmax; ++p)
    std::copy_n(raw.data() + (p - hist_begin) * D, D, ring.data() + (p % c.cap) * D);
  const int64_t n_comp = c.ratio > 0 ? (pmax + 1) / c.ratio : 0;
  auto comp = tu::gaussian(std::max<int64_t>(n_comp, 1) * D, 1.0f, ++seed);
  if (c.rows != Rows::Gaussian) fp8_rows(comp);
  const auto q = tu::gaussian(T * NH * D, 1.0f, ++seed);
  const auto sinks = tu::gaussian(NH, 1.0f, ++seed);

  const int64_t K = std::max<int64_t>(c.topk, 1);
  std::vector<int32_t> sel(static_cast<size_t>(T * K), 0), n_sel(static_cast<size_t>(T), 0);
  std::mt19937 rng(++seed);
  for (int64_t t = 0; t < T && c.select; ++t) {
    const int64_t n_vis = (c.p0 + t + 1) / c.ratio;
    std::vector<int32_t> rows(static_cast<size_t>(n_vis));
    std::iota(rows.begin(), rows.end(), 0);
    if (n_vis > K) std::shuffle(rows.begin(), rows.end(), rng);
    n_sel[static_cast<size_t>(t)] = static_cast<int32_t>(std::min(n_vis, K));
    std::copy_n(rows.begin(), n_sel[static_cast<size_t>(t)], sel.begin() + t * K);
  }

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

  std::vector<fwd::StepCtl> ctls(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    ctls[static_cast<size_t>(t)].pos = c.p0 + t;
    ctls[static_cast<size_t>(t)].index = static_cast<int32_t>(t);
  }
  auto dq = tu::upload(q), dring = tu::upload(ring), dcomp = tu::upload(comp), dsinks = tu::upload(sinks);
  auto dom = tu::upload(rope.omega()), dsel = tu::upload(sel), dnsel = tu::upload(n_sel), dctl = tu::upload(ctls);
  const fwd::AttnShape shape{NH, D, kRope, kWindow, c.cap, c.ratio, kWindow + std::max(K, n_comp) + 1};
  ASSERT_TRUE(fwd::prefill_attention_supported(shape));
  const size_t n_out = static_cast<size_t>(T * NH * D);
  DeviceBuffer dv2(n_out * sizeof(float)), dv1(n_out * sizeof(float));
  auto launch = [&](DeviceBuffer& out) {
    fwd::prefill_attention(shape, dq.as<float>(), dring.as<float>(), dcomp.as<float>(),
                           c.select ? dsel.as<int32_t>() : nullptr, dnsel.as<int32_t>(), K, dsinks.as<float>(),
                           dom.as<float>(), out.as<float>(), dctl.as<fwd::StepCtl>(), T, nullptr);
  };
  launch(dv2);
  {
    tu::ScopedSwitchOff off(kSwitch);
    launch(dv1);
  }
  ds4::cuda::device_synchronize();
  const auto v2 = tu::download<float>(dv2, n_out);
  const auto v1 = tu::download<float>(dv1, n_out);
  const tu::Err e = tu::compare(v2, ref);
  const double rel = e.max_abs / std::max(e.max_ref, 1e-30);
  std::printf("%s: %lld queries x %lld heads: v2 vs CPU max rel %.3e (rel l2 %.3e), v2 == v1 bits: %s\n", c.name,
              static_cast<long long>(T), static_cast<long long>(NH), rel, e.rel_l2,
              std::memcmp(v2.data(), v1.data(), n_out * sizeof(float)) == 0 ? "yes" : "NO");
  EXPECT_TRUE(e.finite) << c.name;
  EXPECT_LT(rel, 1e-5) << c.name;
  EXPECT_LT(e.rel_l2, 1e-5) << c.name;
  EXPECT_EQ(0, std::memcmp(v2.data(), v1.data(), n_out * sizeof(float))) << c.name << ": v2 and v1 differ";
  // The tuning variants of v2 (DS4_CUDA_PREFILL_ATTN_VAR): the same bits too.
  for (const char* var : {"2", "3"}) {
    tu::ScopedEnv env("DS4_CUDA_PREFILL_ATTN_VAR", var);
    launch(dv2);
    ds4::cuda::device_synchronize();
    const auto vv = tu::download<float>(dv2, n_out);
    EXPECT_EQ(0, std::memcmp(vv.data(), v1.data(), n_out * sizeof(float))) << c.name << ": variant " << var;
  }
}

TEST(PrefillAttentionV2, Fp8RowsMatchFirstKernelAndCpu) {
  DS4_CUDA_REQUIRE_GPU();
  run_case({"FP8 rows, ratio 4, selection", 64, 4, true, 512, 2030, 24, 300, Rows::Fp8});
  run_case({"FP8 rows, ratio 128, all rows", 64, 128, false, 0, 5000, 16, 300, Rows::Fp8});
  run_case({"FP8 rows, ratio 0 from position 0", 64, 0, false, 0, 0, 40, 300, Rows::Fp8});
  run_case({"FP8 rows, 16 heads, ratio 4", 16, 4, true, 64, 300, 8, 200, Rows::Fp8});
  run_case({"FP8 rows, 32 heads, ratio 128", 32, 128, false, 0, 700, 4, 200, Rows::Fp8});
}

TEST(PrefillAttentionV2, GaussianAndMixedRowsMatchFirstKernelAndCpu) {
  DS4_CUDA_REQUIRE_GPU();
  run_case({"Gaussian rows, ratio 4, selection", 64, 4, true, 512, 2040, 8, 300, Rows::Gaussian});
  run_case({"Gaussian window + FP8 compressed, ratio 4", 64, 4, true, 512, 2030, 24, 300, Rows::Fp8Compressed});
  run_case({"Gaussian window + FP8 compressed, ratio 128, ring wrapped", 64, 128, false, 0, 5000, 16, 200,
            Rows::Fp8Compressed});
  run_case({"Gaussian rows, 128 heads, ratio 4", 128, 4, true, 16, 100, 4, 200, Rows::Gaussian});
}

// Kernel time of one layer of an 8192-token chunk from position 0 (Flash: 2 window-only
// layers, 21 ratio-4 layers with top-512 selections, 20 ratio-128 layers), the variants
// alternated, median of 5 each; the chunk's attention estimate = the layers' sum.
TEST(PrefillAttentionV2, PrintsChunkTimes) {
  DS4_CUDA_REQUIRE_GPU();
  constexpr int64_t NH = 64, T = 8192, K = 512, cap = T + kWindow;
  const auto rope = ds4::model::Rope::plain(kRope, 10000.0f);
  auto dq = tu::upload(tu::gaussian(T * NH * kD, 1.0f, 13));
  for (const Rows kind : {Rows::Fp8, Rows::Gaussian}) {
    auto ring = tu::gaussian(cap * kD, 1.0f, 11);
    auto comp = tu::gaussian((T / 4) * kD, 1.0f, 12);
    if (kind == Rows::Fp8) {
      fp8_rows(ring);
      fp8_rows(comp);
    }
    const auto sinks = tu::gaussian(NH, 1.0f, 14);
    std::vector<int32_t> sel(static_cast<size_t>(T * K)), n_sel(static_cast<size_t>(T));
    std::mt19937 rng(15);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n_vis = (t + 1) / 4, ns = std::min(n_vis, K);
      n_sel[static_cast<size_t>(t)] = static_cast<int32_t>(ns);
      for (int64_t i = 0; i < ns; ++i)
        sel[static_cast<size_t>(t * K + i)] =
            static_cast<int32_t>(n_vis > K ? std::uniform_int_distribution<int64_t>(0, n_vis - 1)(rng) : i);
    }
    std::vector<fwd::StepCtl> ctls(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      ctls[static_cast<size_t>(t)].pos = t;
      ctls[static_cast<size_t>(t)].index = static_cast<int32_t>(t);
    }
    auto dring = tu::upload(ring), dcomp = tu::upload(comp), dsinks = tu::upload(sinks);
    auto dom = tu::upload(rope.omega()), dsel = tu::upload(sel), dnsel = tu::upload(n_sel), dctl = tu::upload(ctls);
    DeviceBuffer dout(static_cast<size_t>(T * NH * kD) * sizeof(float));
    ds4::cuda::Stream stream;
    struct Layer {
      const char* name;
      int64_t ratio;
      bool select;
      int count;
    };
    const Layer layers[] = {{"window only", 0, false, 2}, {"ratio 4, top 512", 4, true, 21}, {"ratio 128", 128, false, 20}};
    // v1 (the switch set), then DS4_CUDA_PREFILL_ATTN_VAR = 1 (the default), 2, 3.
    constexpr int kVariants = 4;
    const char* names[kVariants] = {"v1", "var 1", "var 2", "var 3"};
    const char* vars[kVariants] = {"", "1", "2", "3"};
    double chunk[kVariants] = {0.0, 0.0, 0.0, 0.0};
    for (const Layer& l : layers) {
      const fwd::AttnShape shape{NH, kD, kRope, kWindow, cap, l.ratio, kWindow + T + 1};
      auto launch = [&] {
        fwd::prefill_attention(shape, dq.as<float>(), dring.as<float>(), dcomp.as<float>(),
                               l.select ? dsel.as<int32_t>() : nullptr, dnsel.as<int32_t>(), K, dsinks.as<float>(),
                               dom.as<float>(), dout.as<float>(), dctl.as<fwd::StepCtl>(), T, stream.handle());
      };
      std::vector<float> ms[kVariants];
      for (int rep = 0; rep < 6; ++rep) {
        for (int v = 0; v < kVariants; ++v) {
          tu::ScopedEnv env(kSwitch, v == 0 ? "1" : "");
          tu::ScopedEnv var("DS4_CUDA_PREFILL_ATTN_VAR", vars[v]);
          ds4::cuda::EventTimer ev;
          ev.start(stream.handle());
          launch();
          ev.stop(stream.handle());
          if (rep > 0) ms[v].push_back(ev.elapsed_ms());  // the first: opt-in, warm-up
        }
      }
      std::printf("%s rows, %s, ms per layer (x %d layers):", kind == Rows::Fp8 ? "FP8" : "Gaussian", l.name,
                  l.count);
      for (int v = 0; v < kVariants; ++v) {
        std::sort(ms[v].begin(), ms[v].end());
        chunk[v] += ms[v][ms[v].size() / 2] * l.count;
        std::printf(" %s %.3f (%.3f .. %.3f)", names[v], ms[v][ms[v].size() / 2], ms[v].front(), ms[v].back());
      }
      std::printf("\n");
    }
    std::printf("%s rows, 8192-token chunk, 43 layers, ms:", kind == Rows::Fp8 ? "FP8" : "Gaussian");
    for (int v = 0; v < kVariants; ++v) std::printf(" %s %.1f", names[v], chunk[v]);
    std::printf("\n");
  }
}

}  // namespace
