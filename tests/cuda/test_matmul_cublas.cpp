// The Q8_0 products through cuBLAS f16 GEMMs (backend/cuda/matmul_cublas.h): against
// cpu::matmul at the Flash prefill shapes (q_a, q_b, kv, o_a groups, o_b, shared expert) and
// odd ones, the per-row power of two for activation rows outside f16's comfortable range,
// token rows bit-identical whatever T and offset (the batched prefill's chunkings rely on
// it), the shared-expert composition against a CPU composition and against
// moe_experts_batch, the q8 fixture's chunkings through the session, and a timing table
// (int8 kernels vs cuBLAS, same process, alternated). Skips visibly without a GPU.
//
// Tolerances (GPU vs cpu::matmul): the f16 path rounds each weight value q * d and each
// activation value q * d to 11 significant bits (2^-11 relative at most per factor), which
// cpu::matmul does not; the error of a dot product is then ~2^-11 / sqrt(3) * sqrt(2) ~ 4e-4
// relative rms. Bounds: rel L2 <= 1e-3, max |d| <= 5e-3 * max |ref| (measured values are
// printed; see the notes of this change for the H200 numbers).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cuda/buffer.h"
#include "backend/cuda/device.h"
#include "backend/cuda/gpu_model.h"
#include "backend/cuda/gpu_session.h"
#include "backend/cuda/matmul.h"
#include "backend/cuda/matmul_cublas.h"
#include "backend/cuda/matvec.h"
#include "cuda/cuda_test_util.h"
#include "e2e/e2e_util.h"
#include "model/ops.h"

namespace ds4::cuda::test_cublas {
namespace {

using namespace test_util;

constexpr double kMaxRel = 5e-3, kRelL2 = 1e-3;

struct Weights {
  int64_t nrows, ncols;
  DeviceBuffer d;
  std::vector<uint8_t> host;
  Weights(int64_t r, int64_t c, uint64_t seed) : nrows(r), ncols(c), d(row_bytes(GgmlType::Q8_0, c) * size_t(r)) {
    fill_random_weights(GgmlType::Q8_0, d.data(), r, c, seed);
    host = download<uint8_t>(d, row_bytes(GgmlType::Q8_0, c) * size_t(r));
  }
  const void* row(int64_t r) const { return static_cast<const uint8_t*>(d.data()) + row_bytes(GgmlType::Q8_0, ncols) * size_t(r); }
  const uint8_t* host_row(int64_t r) const { return host.data() + row_bytes(GgmlType::Q8_0, ncols) * size_t(r); }
};

// Scratch for products of up to `rows` weight rows, `T` tokens of `cols` columns (and a
// shared expert of n_ff = rows / 2).
struct Scratch {
  DeviceBuffer w16, x16, exps, f32;
  F16GemmScratch s;
  Scratch(int64_t rows, int64_t cols, int64_t T)
      : w16(size_t(rows * cols) * 2), x16(size_t(T * cols) * 2), exps(size_t(T) * 4 + 16), f32(size_t(T * rows) * 4 + 16) {
    s.w16 = w16.data();
    s.w16_bytes = size_t(rows * cols) * 2;
    s.x16 = x16.data();
    s.x16_bytes = size_t(T * cols) * 2;
    s.exps = exps.as<int32_t>();
    s.exps_rows = T;
    s.f32 = f32.as<float>();
    s.f32_bytes = size_t(T * rows) * 4;
  }
};

std::vector<float> cpu_product(const Weights& w, int64_t row0, int64_t nrows, const std::vector<float>& x, int64_t T) {
  std::vector<float> ref(size_t(T * nrows));
  cpu::matmul(GgmlType::Q8_0, w.host_row(row0), nrows, w.ncols, x.data(), T, ref.data(), &pool());
  return ref;
}

std::vector<float> cublas_product(const Weights& w, int64_t row0, int64_t nrows, const float* dx, int64_t T,
                                  size_t y_offset_floats = 0) {
  Scratch sc(nrows, w.ncols, T);
  DeviceBuffer dy(std::max<size_t>((size_t(T * nrows) + y_offset_floats) * sizeof(float), 16));
  dy.fill_bytes(0xFF);
  EXPECT_TRUE(q8_0_weights_fit_f16(w.row(row0), nrows, w.ncols));
  cublas_q8_0_gemm(w.row(row0), nrows, w.ncols, dx, T, dy.as<float>() + y_offset_floats, sc.s);
  check_last_error("cublas gemm");
  device_synchronize();
  return download<float>(dy, size_t(T * nrows), y_offset_floats * sizeof(float));
}

std::string shape(int64_t r, int64_t c, int64_t T) {
  return "Q8_0 " + std::to_string(r) + "x" + std::to_string(c) + " T=" + std::to_string(T);
}

void check_against_cpu(int64_t nrows, int64_t ncols, int64_t T, uint64_t seed, int64_t row0 = 0,
                       int64_t w_rows = -1, size_t y_offset = 0) {
  if (w_rows < 0) w_rows = nrows;
  const Weights w(w_rows, ncols, seed);
  const auto x = gaussian(T * ncols, 1.0f, uint32_t(seed * 7 + 1));
  const DeviceBuffer dx = upload(x);
  const auto got = cublas_product(w, row0, nrows, dx.as<float>(), T, y_offset);
  const auto ref = cpu_product(w, row0, nrows, x, T);
  const Err e = compare(got, ref);
  std::printf("%s rows %lld..: max |d| / max |ref| %.3e, rel L2 %.3e\n", shape(nrows, ncols, T).c_str(),
              static_cast<long long>(row0), e.max_abs / e.max_ref, e.rel_l2);
  expect_close(got, ref, shape(nrows, ncols, T), kMaxRel, kRelL2);
}

#define REQUIRE_GPU() DS4_CUDA_REQUIRE_GPU()

class CublasGemmT : public ::testing::TestWithParam<int64_t> {};

TEST_P(CublasGemmT, MatchesCpuMatmulAtFlashShapes) {
  REQUIRE_GPU();
  const int64_t T = GetParam();
  check_against_cpu(1024, 4096, T, 1);    // q_a
  check_against_cpu(32768, 1024, T, 2);   // q_b
  check_against_cpu(512, 4096, T, 3);     // kv
  check_against_cpu(1024, 4096, T, 4, 3 * 1024, 8192);  // o_a, group 3 of 8
  check_against_cpu(4096, 8192, T, 5);    // o_b
  check_against_cpu(2048, 4096, T, 6);    // shared expert gate / up
  check_against_cpu(4096, 2048, T, 7);    // shared expert down
}
INSTANTIATE_TEST_SUITE_P(Tokens, CublasGemmT, ::testing::Values(1, 7, 130, 1024));

TEST(CublasGemm, OddShapes) {
  REQUIRE_GPU();
  // The tiny fixtures' shapes: 64- and 128-column rows, few and odd row counts, outputs at
  // 4- and 8-byte aligned addresses.
  check_against_cpu(136, 64, 5, 11);
  check_against_cpu(8, 128, 33, 12);
  check_against_cpu(3, 64, 2, 13, 0, -1, 1);
  check_against_cpu(257, 96, 17, 14, 0, -1, 2);
  check_against_cpu(1, 32, 1, 15);
  check_against_cpu(33, 160, 70, 16, 5, 64, 1);
}

// A row whose values lie far outside [2^-6, 2^15) is written with a power of two and scaled
// back: its result is exactly 2^k times that of the same row at the normal scale (the Q8_0
// codes are the same, every f16 value and every f32 step scaled exactly).
TEST(CublasGemm, RowExponentsDoNotChangeResults) {
  REQUIRE_GPU();
  const int64_t N = 512, K = 1024, T = 6;
  const Weights w(N, K, 21);
  auto x = gaussian(T * K, 1.0f, 22);
  const int ks[T] = {0, 30, -30, 18, -12, 60};
  for (int64_t t = 1; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) x[size_t(t * K + k)] = x[size_t(k)] * std::ldexp(1.0f, ks[t]);
  const DeviceBuffer dx = upload(x);
  const auto y = cublas_product(w, 0, N, dx.as<float>(), T);
  for (int64_t t = 1; t < T; ++t)
    for (int64_t r = 0; r < N; ++r)
      ASSERT_EQ(y[size_t(t * N + r)], std::ldexp(y[size_t(r)], ks[t])) << "token " << t << " row " << r;
  const auto ref = cpu_product(w, 0, N, x, T);
  for (int64_t t = 0; t < T; ++t) {
    const std::vector<float> a(y.begin() + t * N, y.begin() + (t + 1) * N), b(ref.begin() + t * N, ref.begin() + (t + 1) * N);
    expect_close(a, b, "scaled row " + std::to_string(t), kMaxRel, kRelL2);
  }
}

// A token's output row is the same bits whatever T is and wherever the token sits in the call:
// the algorithm is fixed per shape (no split-K), so the batched prefill's chunkings agree.
TEST(CublasGemm, TokenRowsBitIdenticalAcrossT) {
  REQUIRE_GPU();
  struct S {
    int64_t n, k;
  };
  for (const S s : {S{1024, 4096}, S{32768, 1024}, S{512, 4096}, S{4096, 8192}, S{2048, 4096}, S{4096, 2048},
                    S{136, 64}}) {
    const int64_t Tall = 2100;
    const Weights w(s.n, s.k, 31);
    const auto x = gaussian(Tall * s.k, 1.0f, 32);
    const DeviceBuffer dx = upload(x);
    const auto all = cublas_product(w, 0, s.n, dx.as<float>(), Tall);
    struct Part {
      int64_t t0, T;
    };
    for (const Part p : {Part{0, 1}, Part{5, 2}, Part{100, 37}, Part{64, 128}, Part{1000, 513}, Part{7, 2048}}) {
      const auto part = cublas_product(w, 0, s.n, dx.as<float>() + p.t0 * s.k, p.T);
      const bool same = std::memcmp(part.data(), all.data() + p.t0 * s.n, part.size() * sizeof(float)) == 0;
      EXPECT_TRUE(same) << shape(s.n, s.k, p.T) << " at token " << p.t0 << " differs from T=" << Tall
                        << ": rel err " << compare(part, std::vector<float>(all.begin() + p.t0 * s.n,
                                                                          all.begin() + (p.t0 + p.T) * s.n)).rel_l2;
    }
  }
}

// The shared expert: cublas_q8_0_shared_expert vs the CPU composition (cpu::matmul gate and
// up, the clamped SwiGLU of model/moe.cpp, cpu::matmul down) and vs moe_experts_batch with one
// expert (the int8 path it replaces).
TEST(CublasGemm, SharedExpertMatchesCpuComposition) {
  REQUIRE_GPU();
  const int64_t E = 4096, F = 2048;
  for (int64_t T : {int64_t{3}, int64_t{300}}) {
    const Weights gate(F, E, 41), up(F, E, 42), down(E, F, 43);
    const auto x = gaussian(T * E, 1.0f, 44 + uint32_t(T));
    std::vector<float> g(size_t(T * F)), u(size_t(T * F)), h(size_t(T * F)), ref(size_t(T * E));
    cpu::matmul(GgmlType::Q8_0, gate.host.data(), F, E, x.data(), T, g.data(), &pool());
    cpu::matmul(GgmlType::Q8_0, up.host.data(), F, E, x.data(), T, u.data(), &pool());
    // A limit that clamps some gates and some ups: the median |g|.
    std::vector<float> ag(g.size());
    for (size_t i = 0; i < g.size(); ++i) ag[i] = std::fabs(g[i]);
    std::nth_element(ag.begin(), ag.begin() + ag.size() / 2, ag.end());
    const float limit = ag[ag.size() / 2];
    for (size_t i = 0; i < h.size(); ++i) {
      const float gi = std::min(g[i], limit), ui = std::clamp(u[i], -limit, limit);
      h[i] = model::silu(gi) * ui * 1.0f;
    }
    cpu::matmul(GgmlType::Q8_0, down.host.data(), E, F, h.data(), T, ref.data(), &pool());

    const DeviceBuffer dx = upload(x);
    Scratch sc(2 * F, E, T);
    DeviceBuffer dy(size_t(T * E) * 4);
    dy.fill_bytes(0xFF);
    cublas_q8_0_shared_expert(gate.d.data(), up.d.data(), down.d.data(), E, F, limit, dx.as<float>(), T,
                              dy.as<float>(), sc.s);
    check_last_error("shared expert");
    device_synchronize();
    const auto got = download<float>(dy, size_t(T * E));
    const Err e = compare(got, ref);
    std::printf("shared expert T=%lld limit %.3g: vs CPU composition max |d| / max |ref| %.3e, rel L2 %.3e\n",
                static_cast<long long>(T), limit, e.max_abs / e.max_ref, e.rel_l2);
    // h is re-quantized to Q8_0 for the down product: an h value that moved across a rounding
    // boundary (1e-4 relative) changes its code by one, as between any two summation orders.
    expect_close(got, ref, "shared expert vs CPU", 2e-2, 5e-3);

    // The int8 path (moe_experts_batch, one expert, weight 1).
    const MoeBatchShape m{GgmlType::Q8_0, GgmlType::Q8_0, E, F, 1, 1, limit};
    DeviceBuffer ws(moe_batch_workspace_bytes(m, T));
    const DeviceBuffer ids = upload(std::vector<int32_t>(size_t(T), 0)), wts = upload(std::vector<float>(size_t(T), 1.0f));
    DeviceBuffer dy_old(size_t(T * E) * 4);
    moe_experts_batch(m, gate.d.data(), up.d.data(), down.d.data(), ids.as<int32_t>(), wts.as<float>(), dx.as<float>(), T,
                      dy_old.as<float>(), ws.data());
    device_synchronize();
    const auto old = download<float>(dy_old, size_t(T * E));
    const Err eo = compare(old, ref);
    std::printf("shared expert T=%lld: int8 path vs CPU composition max |d| / max |ref| %.3e, rel L2 %.3e\n",
                static_cast<long long>(T), eo.max_abs / eo.max_ref, eo.rel_l2);
  }
}

// The q8 fixture (tiny-k: every attention / shared-expert product Q8_0) through the session:
// chunkings of a prompt give the same logits with the cuBLAS path (and, printed, how far the
// cuBLAS path is from the int8 kernels).
TEST(CublasGemm, Q8FixtureChunkingDoesNotChangeLogits) {
  REQUIRE_GPU();
  const ScopedEnv on("DS4_CUDA_CUBLAS_GEMM", "1");  // whatever the default
  const auto gm = GpuModel::upload(e2e::model("dsv4-tiny-k-bf16", "q8"), {.progress = false});
  const int64_t V = gm->hparams().n_vocab;
  std::mt19937 rng(5);
  std::vector<int32_t> tokens(150);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % uint32_t(V));
  auto logits = [&](size_t chunk) {
    const model::SessionOptions o{.max_ctx = 512, .numerics = model::Numerics::Exact};
    GpuSession s(*gm, o, {.batched_prefill = true});
    std::vector<float> out(tokens.size() * size_t(V));
    if (chunk == 0) chunk = tokens.size();
    for (size_t i = 0; i < tokens.size(); i += chunk) {
      const size_t n = std::min(chunk, tokens.size() - i);
      s.eval(std::span(tokens).subspan(i, n), model::LogitsMode::All, out.data() + i * size_t(V));
    }
    return out;
  };
  const auto one = logits(0);
  for (size_t chunk : {size_t{2}, size_t{5}, size_t{37}, size_t{64}}) {
    const auto part = logits(chunk);
    const bool identical = std::memcmp(one.data(), part.data(), one.size() * sizeof(float)) == 0;
    std::printf("q8 cuBLAS chunk %zu vs one chunk: rel err %.3e (%s)\n", chunk, e2e::rel_err(part, one),
                identical ? "bit-identical" : "differs");
    EXPECT_TRUE(identical) << "chunk " << chunk;
  }
  std::vector<float> old;
  {
    ScopedSwitchOff off("DS4_CUDA_NO_CUBLAS_GEMM");
    old = logits(0);
  }
  std::printf("q8 one chunk: cuBLAS vs int8 kernels rel err %.3e, argmax agreement %.3f\n", e2e::rel_err(one, old),
              e2e::agreement(one, old, V).top1);
}

// Timing table (not a check): int8 kernels (matmul / moe_experts_batch) vs the cuBLAS path at
// the Flash prefill shapes, alternated in one process, medians of 5 (ms). Set
// DS4_CUBLAS_GEMM_TIMES to run it.
TEST(CublasGemm, PrintsTimes) {
  REQUIRE_GPU();
  if (std::getenv("DS4_CUBLAS_GEMM_TIMES") == nullptr) GTEST_SKIP() << "set DS4_CUBLAS_GEMM_TIMES to time";
  struct S {
    const char* name;
    int64_t n, k, groups;
  };
  const S shapes[] = {{"q_a", 1024, 4096, 1},  {"q_b", 32768, 1024, 1}, {"kv", 512, 4096, 1},
                      {"o_a x8", 1024, 4096, 8}, {"o_b", 4096, 8192, 1},  {"shexp", 2048, 4096, 0}};
  for (int64_t T : {int64_t{2048}, int64_t{8192}}) {
    for (const S& s : shapes) {
      const int64_t G = std::max<int64_t>(s.groups, 1);
      const bool shexp = s.groups == 0;
      const Weights w(s.n * G, s.k, 51), w2(shexp ? s.n : 1, s.k, 52), w3(shexp ? s.k : 1, shexp ? s.n : 32, 53);
      const DeviceBuffer dx = upload(gaussian(T * s.k * G, 1.0f, 54));
      DeviceBuffer dy(size_t(T * std::max(s.n, s.k) * G) * 4), act(size_t(T * G) * activation_bytes(GgmlType::Q8_0, s.k));
      Scratch sc(shexp ? 2 * s.n : s.n, s.k, T);
      const MoeBatchShape m{GgmlType::Q8_0, GgmlType::Q8_0, s.k, s.n, 1, 1, 10.0f};
      DeviceBuffer ws(shexp ? moe_batch_workspace_bytes(m, T) : 16);
      const DeviceBuffer ids = upload(std::vector<int32_t>(size_t(T), 0)), wts = upload(std::vector<float>(size_t(T), 1.0f));
      auto run = [&](bool cublas) {
        for (int64_t g = 0; g < G; ++g) {
          const float* x = dx.as<float>() + g * T * s.k;
          float* y = dy.as<float>() + g * T * s.n;
          if (shexp && cublas)
            cublas_q8_0_shared_expert(w.d.data(), w2.d.data(), w3.d.data(), s.k, s.n, 10.0f, x, T, y, sc.s);
          else if (shexp)
            moe_experts_batch(m, w.d.data(), w2.d.data(), w3.d.data(), ids.as<int32_t>(), wts.as<float>(), x, T, y,
                              ws.data());
          else if (cublas)
            cublas_q8_0_gemm(w.row(g * s.n), s.n, s.k, x, T, y, sc.s);
          else
            matmul(GgmlType::Q8_0, w.row(g * s.n), s.n, s.k, x, T, y, act.data());
        }
      };
      std::vector<float> t_old, t_new;
      run(false);
      run(true);
      for (int rep = 0; rep < 5; ++rep)
        for (bool cublas : {false, true}) {
          EventTimer ev;
          ev.start(nullptr);
          run(cublas);
          ev.stop(nullptr);
          (cublas ? t_new : t_old).push_back(ev.elapsed_ms());
        }
      std::sort(t_old.begin(), t_old.end());
      std::sort(t_new.begin(), t_new.end());
      const double flop = 2.0 * double(T) * double(s.n) * double(s.k) * double(G) * (shexp ? 3.0 : 1.0);
      std::printf("TIME %-7s %5lldx%-5lld T=%5lld  int8 %8.3f ms  cublas %8.3f ms  (%.0f TFLOP/s)  %.2fx\n", s.name,
                  static_cast<long long>(s.n), static_cast<long long>(s.k), static_cast<long long>(T), t_old[2],
                  t_new[2], flop / (t_new[2] * 1e-3) / 1e12, t_old[2] / t_new[2]);
    }
  }
}

}  // namespace
}  // namespace ds4::cuda::test_cublas
