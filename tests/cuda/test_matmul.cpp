// GPU prefill GEMMs (backend/cuda/matmul.h) against cpu::matmul, and the grouped routed
// experts against a CPU composition of the same steps (model/moe.cpp's loop). Skips visibly
// without a GPU.
//
// Tolerances: as for the matvec kernels, the GPU sums exact int32 (sub-)block sums with one
// float multiply per block, in a different order than the CPU, and the activations are the
// CPU's bytes (the quantizers are bit-identical, test_matvec.cpp), so the difference is float
// summation order: max |gpu - cpu| <= 1e-4 * max|cpu|, ||gpu - cpu|| / ||cpu|| <= 1e-5.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cuda/buffer.h"
#include "cuda_test_util.h"
#include "backend/cuda/device.h"
#include "backend/cuda/matmul.h"
#include "backend/cuda/matvec.h"
#include "core/thread_pool.h"
#include "quant/blocks.h"

namespace ds4::cuda::test_mm {
namespace {

#define DS4_REQUIRE_GPU()                                                                  \
  do {                                                                                     \
    if (list_devices().empty()) GTEST_SKIP() << "no CUDA GPU: GPU prefill test not run"; \
  } while (0)

using test_util::compare;
using test_util::download;
using test_util::Err;
using test_util::expect_close;
using test_util::gaussian;
using test_util::pool;
using test_util::upload;

struct Case {
  GgmlType type;
  int64_t nrows, ncols;
};

// Flash shapes (architecture.md 2.2/2.3, docs/cuda.md) and odd ones: rows not a multiple of
// the 128-row tile, K not a multiple of the 256-element stage, rows not 16-byte aligned.
std::vector<Case> flash_cases() {
  using T = GgmlType;
  return {
      {T::Q8_0, 1024, 4096},     // attn_q_a
      {T::Q8_0, 32768, 1024},    // attn_q_b
      {T::Q8_0, 512, 4096},      // attn_kv
      {T::Q8_0, 8192, 4096},     // attn_output_a
      {T::Q8_0, 4096, 8192},     // attn_output_b
      {T::Q8_0, 2048, 4096},     // shared expert gate/up
      {T::Q8_0, 4096, 2048},     // shared expert down
      {T::IQ2_XXS, 2048, 4096},  // q2 expert gate/up
      {T::Q2_K, 4096, 2048},     // q2 expert down
      {T::Q4_K, 2048, 4096},     // q4 expert
      {T::Q4_K, 4096, 2048},
      {T::MXFP4, 2048, 4096},
      {T::MXFP4, 4096, 2048},
      {T::F16, 256, 4096},       // router
      {T::F16, 1024, 4096},
      {T::BF16, 1024, 4096},
      {T::F32, 512, 4096},
  };
}

std::vector<Case> odd_cases() {
  using T = GgmlType;
  return {
      {T::Q8_0, 37, 96},     {T::Q8_0, 200, 800},  {T::MXFP4, 37, 96},  {T::MXFP4, 130, 288},
      {T::IQ2_XXS, 37, 768}, {T::Q2_K, 37, 768},   {T::Q4_K, 131, 512}, {T::F16, 37, 40},
      {T::BF16, 70, 24},     {T::F32, 37, 36},
  };
}

// One product on the GPU against cpu::matmul (which quantizes X with the CPU quantizer, whose
// bytes the GPU quantizer reproduces).
void check_matmul(const Case& c, int64_t T, uint64_t seed, bool use_wrapper = false) {
  const std::string what = std::string(type_name(c.type)) + " " + std::to_string(c.nrows) + "x" +
                           std::to_string(c.ncols) + " T=" + std::to_string(T);
  const size_t wbytes = row_bytes(c.type, c.ncols) * size_t(c.nrows);
  DeviceBuffer dw(wbytes);
  fill_random_weights(c.type, dw.data(), c.nrows, c.ncols, seed);
  const auto w = download<uint8_t>(dw, wbytes);
  const auto x = gaussian(T * c.ncols, 1.0f, uint32_t(seed * 7 + 1));
  std::vector<float> ref(size_t(T * c.nrows));
  cpu::matmul(c.type, w.data(), c.nrows, c.ncols, x.data(), T, ref.data(), &pool());

  DeviceBuffer dx = upload(x);
  DeviceBuffer dy(ref.size() * sizeof(float));
  dy.fill_bytes(0xFF);  // NaN poison: every element must be written
  const size_t ab = activation_bytes(c.type, c.ncols);
  DeviceBuffer act(std::max<size_t>(ab * size_t(T), 16));
  if (use_wrapper) {
    matmul(c.type, dw.data(), c.nrows, c.ncols, dx.as<float>(), T, dy.as<float>(), act.data());
  } else {
    const void* a = dx.data();
    if (ab > 0) {
      quantize_activation(c.type, dx.as<float>(), act.data(), T * c.ncols);
      a = act.data();
    }
    matmul_q(c.type, dw.data(), c.nrows, c.ncols, a, T, dy.as<float>());
  }
  check_last_error(what.c_str());
  device_synchronize();
  expect_close(download<float>(dy, ref.size()), ref, what);
}

class CudaMatmulT : public ::testing::TestWithParam<int64_t> {};

TEST_P(CudaMatmulT, MatchesCpuMatmulAtFlashShapes) {
  DS4_REQUIRE_GPU();
  uint64_t seed = 100 + uint64_t(GetParam());
  for (const Case& c : flash_cases()) check_matmul(c, GetParam(), seed++);
}

INSTANTIATE_TEST_SUITE_P(Tokens, CudaMatmulT, ::testing::Values(1, 7, 64, 512, 2048));

TEST(CudaMatmul, OddShapes) {
  DS4_REQUIRE_GPU();
  uint64_t seed = 7000;
  for (const Case& c : odd_cases())
    for (int64_t T : {1, 3, 65, 130}) check_matmul(c, T, seed++);
  // The quantize + product wrapper.
  check_matmul({GgmlType::Q4_K, 300, 1024}, 77, seed++, true);
  check_matmul({GgmlType::F16, 300, 1024}, 77, seed++, true);
}

// ---------------------------------------------------------------------------------------
// Skinny float GEMM (at most 32 weight rows: the HC mixing logits, 24 x 16384).
// ---------------------------------------------------------------------------------------
constexpr int64_t kHcRows = 24, kHcCols = 16384;  // Flash: (2 + hc) * hc = 24 rows, hc * n_embd columns

// Sets (or clears) DS4_CUDA_NO_SKINNY_GEMM for one scope; skinny_float_gemm_serves reads it
// on every call.
class NoSkinnyGemm {
 public:
  NoSkinnyGemm() { setenv("DS4_CUDA_NO_SKINNY_GEMM", "1", 1); }
  ~NoSkinnyGemm() { unsetenv("DS4_CUDA_NO_SKINNY_GEMM"); }
  NoSkinnyGemm(const NoSkinnyGemm&) = delete;
  NoSkinnyGemm& operator=(const NoSkinnyGemm&) = delete;
};

TEST(CudaSkinnyGemm, ServesFewFloatRowsOnly) {
  DS4_REQUIRE_GPU();
  DeviceBuffer b(1 << 16);
  const uint8_t* p = static_cast<const uint8_t*>(b.data());
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16}) {
    EXPECT_TRUE(skinny_float_gemm_serves(t, kHcRows, kHcCols, p, p)) << type_name(t);
    EXPECT_TRUE(skinny_float_gemm_serves(t, 32, 1000, p, p)) << type_name(t);
    EXPECT_FALSE(skinny_float_gemm_serves(t, 33, kHcCols, p, p)) << type_name(t);
    EXPECT_FALSE(skinny_float_gemm_serves(t, 5, 1001, p, p)) << type_name(t);  // no float4 columns
    EXPECT_FALSE(skinny_float_gemm_serves(t, 5, 1000, p, p + 4)) << type_name(t);  // x not 16-byte aligned
    EXPECT_FALSE(skinny_float_gemm_serves(t, 5, 1000, p + 2, p)) << type_name(t);  // w not 8-byte aligned
  }
  EXPECT_FALSE(skinny_float_gemm_serves(GgmlType::F32, 5, 1000, p + 8, p));  // f32 rows need 16 bytes
  EXPECT_TRUE(skinny_float_gemm_serves(GgmlType::F16, 5, 1000, p + 8, p));
  EXPECT_FALSE(skinny_float_gemm_serves(GgmlType::Q8_0, 5, 1024, p, p));
  NoSkinnyGemm off;
  EXPECT_FALSE(skinny_float_gemm_serves(GgmlType::F16, kHcRows, kHcCols, p, p));
}

TEST(CudaSkinnyGemm, MatchesCpuMatmul) {
  DS4_REQUIRE_GPU();
  uint64_t seed = 9100;
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16}) {
    for (int64_t T : {1, 7, 64, 2048}) check_matmul({t, kHcRows, kHcCols}, T, seed++);
    // Rows not a multiple of 8, columns not a multiple of the 512 a token group covers per step.
    for (int64_t T : {1, 3, 9, 130}) check_matmul({t, 5, 1000}, T, seed++);
    check_matmul({t, 17, 4104}, 11, seed++);  // fill_random_weights needs F16 columns % 8 == 0
    check_matmul({t, 32, 4096}, 33, seed++, true);
  }
}

// The A/B switch keeps the tiled kernel, which still matches; and shapes the skinny kernel
// does not take (more than 32 rows) go to the tiled kernel. (Columns not a multiple of 4, the
// other unserved case, are checked by ServesFewFloatRowsOnly: fill_random_weights cannot make
// such float rows.)
TEST(CudaSkinnyGemm, SwitchedOffAndUnservedShapesUseTiledKernel) {
  DS4_REQUIRE_GPU();
  uint64_t seed = 9300;
  ASSERT_FALSE(skinny_float_gemm_serves(GgmlType::F32, 33, 1000, nullptr, nullptr));
  check_matmul({GgmlType::F32, 33, 1000}, 9, seed++);
  check_matmul({GgmlType::BF16, 40, 1000}, 9, seed++);
  NoSkinnyGemm off;
  check_matmul({GgmlType::F16, kHcRows, kHcCols}, 64, seed++);
}

// A token's row must not depend on T or on which tokens share the launch: the batched
// prefill's chunking tests require bit-identical logits for every chunk split.
TEST(CudaSkinnyGemm, TokenRowsBitIdenticalAcrossLaunches) {
  DS4_REQUIRE_GPU();
  constexpr int64_t T = 2048;
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16}) {
    const size_t wbytes = row_bytes(type, kHcCols) * size_t(kHcRows);
    DeviceBuffer dw(wbytes);
    fill_random_weights(type, dw.data(), kHcRows, kHcCols, 9400 + uint64_t(type));
    DeviceBuffer dx = upload(gaussian(T * kHcCols, 1.0f, 9401));
    ASSERT_TRUE(skinny_float_gemm_serves(type, kHcRows, kHcCols, dw.data(), dx.data()));
    DeviceBuffer dy(size_t(T * kHcRows) * sizeof(float));
    matmul_q(type, dw.data(), kHcRows, kHcCols, dx.data(), T, dy.as<float>());
    device_synchronize();
    const auto full = download<float>(dy, size_t(T * kHcRows));
    struct Range {
      int64_t t0, n;
    };
    for (const Range r : {Range{0, 1}, Range{5, 1}, Range{2047, 1}, Range{3, 7}, Range{1000, 64}, Range{1, 2047}}) {
      DeviceBuffer dsub(size_t(r.n * kHcRows) * sizeof(float));
      dsub.fill_bytes(0xFF);
      matmul_q(type, dw.data(), kHcRows, kHcCols, dx.as<float>() + r.t0 * kHcCols, r.n, dsub.as<float>());
      device_synchronize();
      const auto sub = download<float>(dsub, size_t(r.n * kHcRows));
      EXPECT_EQ(std::memcmp(sub.data(), full.data() + r.t0 * kHcRows, sub.size() * sizeof(float)), 0)
          << type_name(type) << ": tokens " << r.t0 << ".." << r.t0 + r.n - 1 << " differ from the T = 2048 launch";
    }
  }
}

// ---------------------------------------------------------------------------------------
// The warp-specialized GEMM (opt-in, DS4_CUDA_GEMM_WS=1; persistent grid, and one CTA per tile
// with DS4_CUDA_NO_GEMM_PERSISTENT=1) against the default kernel: their MMA warps run the same
// products in the same order, so every output must be the same bits (the default matches the
// CPU: the tests above).
// ---------------------------------------------------------------------------------------
std::vector<float> run_matmul_q(const Case& c, int64_t T, const DeviceBuffer& dw, const DeviceBuffer& act) {
  DeviceBuffer dy(size_t(T * c.nrows) * sizeof(float));
  dy.fill_bytes(0xFF);
  matmul_q(c.type, dw.data(), c.nrows, c.ncols, act.data(), T, dy.as<float>());
  check_last_error("matmul_q");
  device_synchronize();
  return download<float>(dy, size_t(T * c.nrows));
}

// Calls compare(c, T, weights, activations, default_result) on random data for the quantized
// GEMM cases (Flash shapes up to 8192 x 2048, the odd ones, then `extra`) at the token counts
// Ts (default T = 1, 37, 130, 2048), where default_result is the default path's output;
// compare runs a variant and checks it.
template <class F>
void for_each_gemm_variant_case(uint64_t seed, F&& compare,
                                std::initializer_list<int64_t> Ts = {1, 37, 130, 2048},
                                std::vector<Case> extra = {}) {
  std::vector<Case> cases = std::move(extra);
  for (const Case& c : flash_cases())
    if (activation_bytes(c.type, c.ncols) > 0 && c.nrows * c.ncols <= 8192 * 4096 / 2) cases.push_back(c);
  for (const Case& c : odd_cases())
    if (activation_bytes(c.type, c.ncols) > 0) cases.push_back(c);
  for (const Case& c : cases) {
    for (int64_t T : Ts) {
      const size_t wbytes = row_bytes(c.type, c.ncols) * size_t(c.nrows);
      DeviceBuffer dw(wbytes);
      fill_random_weights(c.type, dw.data(), c.nrows, c.ncols, seed++);
      DeviceBuffer dx = upload(gaussian(T * c.ncols, 1.0f, uint32_t(seed++)));
      DeviceBuffer act(activation_bytes(c.type, c.ncols) * size_t(T));
      quantize_activation(c.type, dx.as<float>(), act.data(), T * c.ncols);
      const auto base = run_matmul_q(c, T, dw, act);
      compare(c, T, dw, act, base);
    }
  }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(CudaMatmulWs, BitIdenticalToDefaultKernel) {
  DS4_REQUIRE_GPU();
  for_each_gemm_variant_case(9600, [](const Case& c, int64_t T, const DeviceBuffer& dw, const DeviceBuffer& act,
                                      const std::vector<float>& base) {
    test_util::ScopedSwitchOff ws_kernel("DS4_CUDA_GEMM_WS");  // sets it to 1: the opt-in kernel
    EXPECT_TRUE(same_bits(base, run_matmul_q(c, T, dw, act)))
        << type_name(c.type) << " " << c.nrows << "x" << c.ncols << " T=" << T;
    test_util::ScopedSwitchOff per_tile("DS4_CUDA_NO_GEMM_PERSISTENT");
    EXPECT_TRUE(same_bits(base, run_matmul_q(c, T, dw, act)))
        << type_name(c.type) << " " << c.nrows << "x" << c.ncols << " T=" << T << " (one CTA per tile)";
  });
}

// mm_kernel built with an int thread index for the copy helpers (DS4_CUDA_NO_GEMM_UNSIGNED_TID;
// the default is unsigned for Q8_0 / MXFP4): other code, the same values, so the same bits.
TEST(CudaMatmul, IntTidBuildBitIdentical) {
  DS4_REQUIRE_GPU();
  for_each_gemm_variant_case(9700, [](const Case& c, int64_t T, const DeviceBuffer& dw, const DeviceBuffer& act,
                                      const std::vector<float>& base) {
    test_util::ScopedSwitchOff int_tid("DS4_CUDA_NO_GEMM_UNSIGNED_TID");
    EXPECT_TRUE(same_bits(base, run_matmul_q(c, T, dw, act)))
        << type_name(c.type) << " " << c.nrows << "x" << c.ncols << " T=" << T;
  });
}

// Plain Q8_0 / MXFP4 products of >= 512 tokens with enough tiles run in a 128 x 128 CTA tile:
// the same operations per output as the 128 x 64 tile (DS4_CUDA_NO_WIDE_GEMM), so the same
// bits. T = 777 leaves a partial 128-token tile and the odd shapes partial row tiles; the
// products with few tiles, the other types and T < 512 take the 128 x 64 tile either way
// (they compare trivially).
TEST(CudaMatmul, WideTileBitIdentical) {
  DS4_REQUIRE_GPU();
  for_each_gemm_variant_case(
      9800,
      [](const Case& c, int64_t T, const DeviceBuffer& dw, const DeviceBuffer& act, const std::vector<float>& base) {
        test_util::ScopedSwitchOff narrow("DS4_CUDA_NO_WIDE_GEMM");
        EXPECT_TRUE(same_bits(base, run_matmul_q(c, T, dw, act)))
            << type_name(c.type) << " " << c.nrows << "x" << c.ncols << " T=" << T << " (128 x 64)";
      },
      {512, 777, 2048},
      // Enough 128 x 128 tiles for the wide path with a partial row tile and a partial K stage.
      {{GgmlType::Q8_0, 1900, 800}, {GgmlType::MXFP4, 1900, 288}});
}

TEST(CudaMatmul, RejectsBadArguments) {
  DS4_REQUIRE_GPU();
  DeviceBuffer b(1 << 16);
  EXPECT_THROW(matmul_q(GgmlType::Q8_K, b.data(), 1, 256, b.data(), 1, b.as<float>()), std::exception);
  EXPECT_THROW(matmul_q(GgmlType::Q8_0, b.data(), 1, 33, b.data(), 1, b.as<float>()), std::exception);
  EXPECT_THROW(matmul_q(GgmlType::Q8_0, b.data(), 1, 32, b.data(), -1, b.as<float>()), std::exception);
  EXPECT_THROW(matmul_q(GgmlType::Q8_0, nullptr, 1, 32, b.data(), 1, b.as<float>()), std::exception);
  EXPECT_THROW(matmul(GgmlType::Q8_0, b.data(), 1, 32, b.as<float>(), 1, b.as<float>(), nullptr), std::exception);
  MoeBatchShape s;
  s.n_used = 33;
  EXPECT_THROW(moe_batch_workspace_bytes(s, 8), std::exception);
  s.n_used = 6;
  s.gate_up_type = GgmlType::F16;
  EXPECT_THROW(moe_batch_workspace_bytes(s, 8), std::exception);
  // T = 0 is a no-op, not an error.
  EXPECT_NO_THROW(matmul_q(GgmlType::Q8_0, b.data(), 4, 32, b.data(), 0, b.as<float>()));
}

// ---------------------------------------------------------------------------------------
// Grouped routed experts.
// ---------------------------------------------------------------------------------------
float swiglu(float g, float u, float limit, float w) {
  g = std::min(g, limit);
  u = std::clamp(u, -limit, limit);
  return g / (1.0f + std::exp(-g)) * u * w;
}

struct MoeCase {
  MoeBatchShape s;
  int64_t T;
  std::vector<int32_t> ids;
  std::vector<float> rw;
  std::vector<float> x;
  std::vector<uint8_t> g, u, d;
  DeviceBuffer dg, du, dd;
  size_t gu_rb, gu_slab, dn_rb, dn_slab;
};

MoeCase make_case(GgmlType gu, GgmlType dn, int n_expert, int n_used, int64_t T, uint32_t seed) {
  MoeCase c;
  c.s.gate_up_type = gu;
  c.s.down_type = dn;
  c.s.n_expert = n_expert;
  c.s.n_used = n_used;
  c.T = T;
  c.gu_rb = row_bytes(gu, c.s.n_embd);
  c.gu_slab = c.gu_rb * size_t(c.s.n_ff);
  c.dn_rb = row_bytes(dn, c.s.n_ff);
  c.dn_slab = c.dn_rb * size_t(c.s.n_embd);
  c.dg = DeviceBuffer(c.gu_slab * size_t(n_expert));
  c.du = DeviceBuffer(c.gu_slab * size_t(n_expert));
  c.dd = DeviceBuffer(c.dn_slab * size_t(n_expert));
  fill_random_weights(gu, c.dg.data(), c.s.n_ff * n_expert, c.s.n_embd, seed);
  fill_random_weights(gu, c.du.data(), c.s.n_ff * n_expert, c.s.n_embd, seed + 1);
  fill_random_weights(dn, c.dd.data(), c.s.n_embd * n_expert, c.s.n_ff, seed + 2);
  c.g = download<uint8_t>(c.dg, c.dg.size());
  c.u = download<uint8_t>(c.du, c.du.size());
  c.d = download<uint8_t>(c.dd, c.dd.size());
  // Distinct experts per token, skewed so some experts get more than one 64-token tile and
  // some get none; route weights in (0.05, 0.5).
  std::mt19937 rng(seed);
  std::vector<int32_t> all(static_cast<size_t>(n_expert));
  std::iota(all.begin(), all.end(), 0);
  std::uniform_real_distribution<float> wd(0.05f, 0.5f);
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> pick(all.begin(), all.begin() + n_used);
    if (n_expert > n_used && t % 3 == 0 && std::find(pick.begin(), pick.end(), 0) == pick.end()) pick[0] = 0;
    for (int k = 0; k < n_used; ++k) {
      c.ids.push_back(pick[size_t(k)]);
      c.rw.push_back(wd(rng));
    }
  }
  // sigma 3 puts a good share of gate/up values past the clamp limit of 10.
  c.x = gaussian(T * c.s.n_embd, 3.0f, seed + 5);
  return c;
}

// model/moe.cpp's composition on the CPU: per expert (ascending), the tokens that chose it,
// gate/up products, clamped SwiGLU times the route weight, down, added to y. Returns y and
// fills h_ref[(t * n_used + k) * n_ff ...]. `h_override` (if given) replaces the hidden state
// before down, to isolate the down GEMM.
std::vector<float> cpu_moe(const MoeCase& c, std::vector<float>* h_ref, const std::vector<float>* h_override,
                           int* clamped = nullptr) {
  const MoeBatchShape& s = c.s;
  const int64_t E = s.n_embd, F = s.n_ff, K = s.n_used;
  std::vector<float> y(size_t(c.T * E), 0.0f);
  if (h_ref) h_ref->assign(size_t(c.T * K * F), 0.0f);
  for (int e = 0; e < s.n_expert; ++e) {
    std::vector<std::pair<int64_t, int64_t>> users;  // (t, k)
    for (int64_t t = 0; t < c.T; ++t)
      for (int64_t k = 0; k < K; ++k)
        if (c.ids[size_t(t * K + k)] == e) users.emplace_back(t, k);
    const int64_t n = int64_t(users.size());
    if (n == 0) continue;
    std::vector<float> X(size_t(n * E)), G(size_t(n * F)), U(size_t(n * F)), M(size_t(n * F)), D(size_t(n * E));
    for (int64_t i = 0; i < n; ++i) std::copy_n(c.x.data() + users[size_t(i)].first * E, E, X.data() + i * E);
    cpu::matmul(s.gate_up_type, c.g.data() + size_t(e) * c.gu_slab, F, E, X.data(), n, G.data(), &pool());
    cpu::matmul(s.gate_up_type, c.u.data() + size_t(e) * c.gu_slab, F, E, X.data(), n, U.data(), &pool());
    for (int64_t i = 0; i < n; ++i) {
      const auto [t, k] = users[size_t(i)];
      for (int64_t r = 0; r < F; ++r) {
        if (clamped) *clamped += (G[size_t(i * F + r)] > s.limit) + (std::fabs(U[size_t(i * F + r)]) > s.limit);
        float v = swiglu(G[size_t(i * F + r)], U[size_t(i * F + r)], s.limit, c.rw[size_t(t * K + k)]);
        if (h_ref) (*h_ref)[size_t((t * K + k) * F + r)] = v;
        if (h_override) v = (*h_override)[size_t((t * K + k) * F + r)];
        M[size_t(i * F + r)] = v;
      }
    }
    cpu::matmul(s.down_type, c.d.data() + size_t(e) * c.dn_slab, E, F, M.data(), n, D.data(), &pool());
    for (int64_t i = 0; i < n; ++i) {
      float* yt = y.data() + users[size_t(i)].first * E;
      for (int64_t j = 0; j < E; ++j) yt[j] += D[size_t(i * E + j)];
    }
  }
  return y;
}

void check_moe(MoeCase& c, const std::string& what, int64_t expect_invalid = 0) {
  const MoeBatchShape& s = c.s;
  DeviceBuffer dids = upload(c.ids), drw = upload(c.rw), dx = upload(c.x);
  DeviceBuffer ws(moe_batch_workspace_bytes(s, c.T));
  ws.fill_bytes(0xFF);
  DeviceBuffer dy(size_t(c.T * s.n_embd) * sizeof(float));
  dy.fill_bytes(0xFF);
  moe_experts_batch(s, c.dg.data(), c.du.data(), c.dd.data(), dids.as<int32_t>(), drw.as<float>(), dx.as<float>(), c.T,
                    dy.as<float>(), ws.data());
  check_last_error(what.c_str());
  device_synchronize();
  EXPECT_EQ(moe_batch_invalid_ids(s, c.T, ws.data()), expect_invalid) << what;
  const auto y = download<float>(dy, size_t(c.T * s.n_embd));

  // GPU hidden rows in (t, k) order through the slot map.
  const MoeBatchDebug dbg = moe_batch_debug(s, c.T, ws.data());
  const size_t nk = size_t(c.T * s.n_used);
  std::vector<int32_t> slot(nk);
  {
    const size_t off = size_t(reinterpret_cast<const uint8_t*>(dbg.slot) - static_cast<const uint8_t*>(ws.data()));
    ws.download(slot.data(), nk * sizeof(int32_t), off);
  }
  const size_t h_off = size_t(reinterpret_cast<const uint8_t*>(dbg.h) - static_cast<const uint8_t*>(ws.data()));
  std::vector<float> h_gpu(nk * size_t(s.n_ff), 0.0f);
  std::vector<bool> seen(nk, false);
  for (size_t i = 0; i < nk; ++i) {
    const bool valid = c.ids[i] >= 0 && c.ids[i] < s.n_expert;
    ASSERT_EQ(slot[i] >= 0, valid) << what << " entry " << i;
    if (!valid) continue;
    ASSERT_LT(size_t(slot[i]), nk) << what;
    ASSERT_FALSE(seen[size_t(slot[i])]) << what << ": slot used twice";
    seen[size_t(slot[i])] = true;
    ws.download(h_gpu.data() + i * size_t(s.n_ff), size_t(s.n_ff) * sizeof(float),
                h_off + size_t(slot[i]) * size_t(s.n_ff) * sizeof(float));
  }

  std::vector<float> h_ref;
  int clamped = 0;
  const std::vector<float> y_ref = cpu_moe(c, &h_ref, nullptr, &clamped);
  EXPECT_GT(clamped, 0) << what << ": test input never reaches the clamp";
  // Gate/up: float summation order only, then the same SwiGLU (expf vs std::exp: ulps).
  expect_close(h_gpu, h_ref, what + " hidden");
  // Down on the GPU's own hidden state: summation order only.
  expect_close(y, cpu_moe(c, nullptr, &h_gpu), what + " down(h_gpu)");
  // End to end: a hidden value on a rounding boundary may quantize one code apart.
  expect_close(y, y_ref, what + " end to end", 1e-2, 2e-3);
}

TEST(CudaMoeBatch, GroupedExpertsMatchCpuComposition) {
  DS4_REQUIRE_GPU();
  struct Types {
    GgmlType gate_up, down;
  };
  uint32_t seed = 11;
  for (Types ty : {Types{GgmlType::IQ2_XXS, GgmlType::Q2_K}, Types{GgmlType::Q4_K, GgmlType::Q4_K},
                   Types{GgmlType::MXFP4, GgmlType::MXFP4}, Types{GgmlType::Q8_0, GgmlType::Q8_0}}) {
    // 16 experts x 6 of 16 for 150 tokens: expert 0 gets > 64 tokens (two tiles).
    MoeCase c = make_case(ty.gate_up, ty.down, 16, 6, 150, seed);
    seed += 10;
    check_moe(c, std::string(type_name(ty.gate_up)) + "/" + std::string(type_name(ty.down)));
  }
}

TEST(CudaMoeBatch, FlashRoutingShape) {
  DS4_REQUIRE_GPU();
  // 256 experts, top-6, 512 tokens: most experts hold a partial tile.
  MoeCase c = make_case(GgmlType::IQ2_XXS, GgmlType::Q2_K, 256, 6, 512, 77);
  check_moe(c, "flash 256x6 T=512");
}

// The grouped layer through both GEMM kernels: the same bits (see CudaMatmulWs). 512 tokens
// over 256 experts: most tiles hold fewer than 32 tokens, whose empty n-tiles the
// warp-specialized kernel skips.
TEST(CudaMoeBatch, WarpSpecializedKernelBitIdentical) {
  DS4_REQUIRE_GPU();
  MoeCase c = make_case(GgmlType::IQ2_XXS, GgmlType::Q2_K, 256, 6, 512, 79);
  DeviceBuffer dids = upload(c.ids), drw = upload(c.rw), dx = upload(c.x);
  DeviceBuffer ws(moe_batch_workspace_bytes(c.s, c.T));
  auto run = [&] {
    DeviceBuffer dy(size_t(c.T * c.s.n_embd) * sizeof(float));
    dy.fill_bytes(0xFF);
    moe_experts_batch(c.s, c.dg.data(), c.du.data(), c.dd.data(), dids.as<int32_t>(), drw.as<float>(),
                      dx.as<float>(), c.T, dy.as<float>(), ws.data());
    check_last_error("moe_experts_batch");
    device_synchronize();
    return download<float>(dy, size_t(c.T * c.s.n_embd));
  };
  const auto base = run();
  test_util::ScopedSwitchOff ws_kernel("DS4_CUDA_GEMM_WS");  // sets it to 1: the opt-in kernel
  const auto persistent = run();
  EXPECT_EQ(std::memcmp(base.data(), persistent.data(), base.size() * sizeof(float)), 0) << "warp-specialized";
}

TEST(CudaMoeBatch, SharedExpertAndSkippedIds) {
  DS4_REQUIRE_GPU();
  // Shared expert: one expert, weight 1.
  MoeCase sh = make_case(GgmlType::Q8_0, GgmlType::Q8_0, 1, 1, 33, 5);
  std::fill(sh.rw.begin(), sh.rw.end(), 1.0f);
  check_moe(sh, "shared expert");
  // Out-of-range ids are skipped and counted; the rest of the token still sums.
  MoeCase c = make_case(GgmlType::Q4_K, GgmlType::Q4_K, 8, 2, 9, 9);
  c.ids[3] = 8;
  c.ids[10] = -1;
  check_moe(c, "skipped ids", 2);
}

}  // namespace
}  // namespace ds4::cuda::test_mm
