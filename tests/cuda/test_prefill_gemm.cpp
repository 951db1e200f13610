// The F16-weight GEMM on the tensor cores (backend/cuda/matmul_f16.h), reached as the batched
// prefill reaches it (through matmul_q, and directly for the HC fn product): against
// cpu::matmul at the prefill's F16 shapes (router, compressor kv / gate, indexer q_b / proj,
// HC fn) and odd ones, with activation rows far
// outside f16's range, and a token's row bit-identical across launches (the chunk-split
// tests of test_prefill.cpp rely on it). Skips visibly without a GPU.
//
// Tolerances: those of the other float GEMMs (test_matmul.cpp): max |gpu - cpu| <= 1e-4
// max|cpu|, ||gpu - cpu|| / ||cpu|| <= 1e-5. The kernel keeps ~22 bits of each activation
// (f16 hi + lo) and sums in f32 in another order. One tensor-core accumulator over all of K
// measured 7.4e-6 relative at K = 4096 and failed at K = 16384 (H100), so each stage's sums
// are added in ordinary f32 (expected ~1e-6 at any K).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cuda/buffer.h"
#include "backend/cuda/device.h"
#include "backend/cuda/matmul.h"
#include "backend/cuda/matmul_f16.h"
#include "backend/cuda/matvec.h"
#include "cuda/cuda_test_util.h"
#include "quant/blocks.h"

namespace ds4::cuda::test_f16 {
namespace {

using namespace test_util;  // random inputs, upload / download, the CPU comparison

// Random F16 weights on the device and their bytes on the host.
struct Weights {
  int64_t nrows, ncols;
  DeviceBuffer d;
  std::vector<uint8_t> host;
  Weights(int64_t r, int64_t c, uint64_t seed)
      : nrows(r), ncols(c), d(row_bytes(GgmlType::F16, c) * size_t(r)) {
    fill_random_weights(GgmlType::F16, d.data(), r, c, seed);
    host = download<uint8_t>(d, row_bytes(GgmlType::F16, c) * size_t(r));
  }
};

std::vector<float> cpu_product(const Weights& w, const std::vector<float>& x, int64_t T) {
  std::vector<float> ref(size_t(T * w.nrows));
  cpu::matmul(GgmlType::F16, w.host.data(), w.nrows, w.ncols, x.data(), T, ref.data(), &pool());
  return ref;
}

// How a product is launched: matmul_q (as the prefill's gemm: products of at most 32 rows go
// to the skinny CUDA-core kernel) or f16_tensor_core_gemm itself (as the HC fn product).
enum class Via { MatmulQ, TensorCores };

// The product on the GPU (every output poisoned with NaN first: all must be written).
std::vector<float> gpu_product(const Weights& w, const DeviceBuffer& dx, int64_t T, int64_t t0 = 0,
                               Via via = Via::MatmulQ) {
  DeviceBuffer dy(std::max<size_t>(size_t(T * w.nrows) * sizeof(float), 16));
  dy.fill_bytes(0xFF);
  const float* x = dx.as<float>() + t0 * w.ncols;
  if (via == Via::MatmulQ)
    matmul_q(GgmlType::F16, w.d.data(), w.nrows, w.ncols, x, T, dy.as<float>());
  else
    f16_tensor_core_gemm(w.d.data(), w.nrows, w.ncols, x, T, dy.as<float>(), nullptr);
  check_last_error("f16 gemm");
  device_synchronize();
  return download<float>(dy, size_t(T * w.nrows));
}

std::string shape(const Weights& w, int64_t T) {
  return "F16 " + std::to_string(w.nrows) + "x" + std::to_string(w.ncols) + " T=" + std::to_string(T);
}

void check_against_cpu(int64_t nrows, int64_t ncols, int64_t T, uint64_t seed, Via via = Via::MatmulQ) {
  const Weights w(nrows, ncols, seed);
  const auto x = gaussian(T * ncols, 1.0f, uint32_t(seed * 7 + 1));
  const DeviceBuffer dx = upload(x);
  ASSERT_TRUE(f16_tensor_core_gemm_serves(GgmlType::F16, ncols, w.d.data(), dx.data())) << shape(w, T);
  const auto ref = cpu_product(w, x, T);
  const auto got = gpu_product(w, dx, T, 0, via);
  const Err e = compare(got, ref);
  std::printf("  %-24s max |d| / max |ref| %.2e, rel l2 %.2e\n", shape(w, T).c_str(), e.max_abs / e.max_ref,
              e.rel_l2);
  expect_close(got, ref, shape(w, T));
}

TEST(CudaF16TensorCoreGemm, ServesF16WeightsOnly) {
  DS4_CUDA_REQUIRE_GPU();
  DeviceBuffer b(1 << 16);
  const uint8_t* p = static_cast<const uint8_t*>(b.data());
  EXPECT_TRUE(f16_tensor_core_gemm_serves(GgmlType::F16, 4096, p, p));
  EXPECT_TRUE(f16_tensor_core_gemm_serves(GgmlType::F16, 64, p, p));
  EXPECT_FALSE(f16_tensor_core_gemm_serves(GgmlType::F16, 40, p, p));      // columns not a multiple of 64
  EXPECT_FALSE(f16_tensor_core_gemm_serves(GgmlType::F16, 4096, p + 8, p));  // W not 16-byte aligned
  EXPECT_FALSE(f16_tensor_core_gemm_serves(GgmlType::F16, 4096, p, p + 4));  // x not 16-byte aligned
  for (GgmlType t : {GgmlType::F32, GgmlType::BF16, GgmlType::Q8_0})
    EXPECT_FALSE(f16_tensor_core_gemm_serves(t, 4096, p, p)) << type_name(t);
  ScopedSwitchOff off("DS4_CUDA_NO_F16_TC_GEMM");
  EXPECT_FALSE(f16_tensor_core_gemm_serves(GgmlType::F16, 4096, p, p));
}

TEST(CudaF16TensorCoreGemm, MatchesCpuMatmulAtPrefillShapes) {
  DS4_CUDA_REQUIRE_GPU();
  uint64_t seed = 12000;
  for (int64_t T : {1, 7, 64, 130, 2048}) check_against_cpu(256, 4096, T, seed++);  // router
  check_against_cpu(1024, 4096, 300, seed++);  // CSA compressor kv / gate (2 x 512)
  check_against_cpu(512, 4096, 77, seed++);    // HCA compressor
  check_against_cpu(8192, 1024, 65, seed++);   // indexer q_b (64 heads x 128)
  check_against_cpu(64, 4096, 33, seed++);     // indexer head weights
  // Odd shapes: rows not a multiple of the 64-row tile (33: just past the skinny kernel's 32),
  // one 64-column stage, tokens not a multiple of 64.
  check_against_cpu(33, 64, 5, seed++);
  check_against_cpu(100, 192, 129, seed++);
  check_against_cpu(300, 1024, 1, seed++);
  // The long K of the HC fn product through the wide tiles (all of K in f32 adds of stage sums).
  check_against_cpu(64, 16384, 40, seed++);
}

// At most 32 rows (the HC fn product, which the prefill sends here directly): 16-token tiles
// with the stage split over the warps; columns not a multiple of 256 take the wide tiles.
TEST(CudaF16TensorCoreGemm, FewRowsMatchCpuMatmul) {
  DS4_CUDA_REQUIRE_GPU();
  uint64_t seed = 12050;
  for (int64_t T : {1, 7, 2048}) check_against_cpu(24, 16384, T, seed++, Via::TensorCores);
  check_against_cpu(17, 4096, 33, seed++, Via::TensorCores);
  check_against_cpu(32, 256, 100, seed++, Via::TensorCores);
  check_against_cpu(24, 1088, 19, seed++, Via::TensorCores);
}

// Rows of very different magnitudes in one tile: beyond f16's range (1e6: hi would
// overflow), small (1e-3, 1e-30: lo would fall into f16's subnormals), all zero, and normal
// ones beside them. Each row is compared with its own CPU row (the tolerance is relative).
TEST(CudaF16TensorCoreGemm, RowsOutsideF16RangeKeepTheirPrecision) {
  DS4_CUDA_REQUIRE_GPU();
  constexpr int64_t T = 70, K = 1024;
  const float mags[] = {1.0f, 1e6f, 1e-3f, 1e-30f, 0.0f, 3e4f, 0.2f};
  auto x = gaussian(T * K, 1.0f, 12101);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) x[size_t(t * K + k)] *= mags[t % 7];
  for (const int64_t rows : {96, 24}) {  // the wide and the few-rows tiles
    const Weights w(rows, K, 12100 + uint64_t(rows));
    const auto ref = cpu_product(w, x, T);
    const auto got = gpu_product(w, upload(x), T, 0, Via::TensorCores);
    for (int64_t t = 0; t < T; ++t) {
      const std::vector<float> g(got.begin() + t * w.nrows, got.begin() + (t + 1) * w.nrows);
      const std::vector<float> r(ref.begin() + t * w.nrows, ref.begin() + (t + 1) * w.nrows);
      const std::string what =
          shape(w, T) + " token " + std::to_string(t) + " (|x| ~ " + std::to_string(mags[t % 7]) + ")";
      if (mags[t % 7] == 0.0f) {
        for (float v : g) EXPECT_EQ(v, 0.0f) << what;
      } else {
        expect_close(g, r, what);
      }
    }
  }
}

// A token's row must not depend on T or on which tokens share the launch (rows that take the
// rescaled second pass included), for both tile shapes.
TEST(CudaF16TensorCoreGemm, TokenRowsBitIdenticalAcrossLaunches) {
  DS4_CUDA_REQUIRE_GPU();
  struct Shape {
    int64_t nrows, K;
  };
  for (const Shape sh : {Shape{256, 4096}, Shape{24, 16384}}) {
    constexpr int64_t T = 2048;
    const Weights w(sh.nrows, sh.K, 12200 + uint64_t(sh.nrows));
    auto x = gaussian(T * sh.K, 1.0f, 12201);
    for (int64_t t = 0; t < T; t += 97)
      for (int64_t k = 0; k < sh.K; ++k) x[size_t(t * sh.K + k)] *= 1e5f;
    const DeviceBuffer dx = upload(x);
    const auto full = gpu_product(w, dx, T, 0, Via::TensorCores);
    struct Range {
      int64_t t0, n;
    };
    for (const Range r : {Range{0, 1}, Range{5, 1}, Range{2047, 1}, Range{3, 7}, Range{1000, 64}, Range{1, 2047},
                          Range{97, 97}}) {
      const auto sub = gpu_product(w, dx, r.n, r.t0, Via::TensorCores);
      EXPECT_EQ(std::memcmp(sub.data(), full.data() + r.t0 * w.nrows, sub.size() * sizeof(float)), 0)
          << shape(w, T) << ": tokens " << r.t0 << ".." << r.t0 + r.n - 1 << " differ from the T = 2048 launch";
    }
  }
}

// With the switch set, the same products run on the f32 CUDA-core kernel, which matches the
// CPU too.
TEST(CudaF16TensorCoreGemm, SwitchedOffStillMatchesCpu) {
  DS4_CUDA_REQUIRE_GPU();
  ScopedSwitchOff off("DS4_CUDA_NO_F16_TC_GEMM");
  const Weights w(256, 4096, 12300);
  const auto x = gaussian(64 * 4096, 1.0f, 12301);
  expect_close(gpu_product(w, upload(x), 64), cpu_product(w, x, 64), "switched off");
}

}  // namespace
}  // namespace ds4::cuda::test_f16
