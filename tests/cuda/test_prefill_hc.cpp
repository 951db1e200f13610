// The batched prefill's HC kernels (prefill_kernels.h: pre::hc_pre_norm, pre::hc_post)
// against the decode kernels with a token dimension (fwd::hc_pre + fwd::rmsnorm, fwd::hc_post)
// on random inputs: the same bits, so that the switches DS4_CUDA_NO_PREFILL_HC_PRE /
// DS4_CUDA_NO_PREFILL_HC_POST change no result. Skips visibly without a GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/buffer.h"
#include "backend/cuda/device.h"
#include "backend/cuda/forward_kernels.h"
#include "backend/cuda/prefill_kernels.h"
#include "cuda/cuda_test_util.h"

namespace ds4::cuda {
namespace {

using namespace test_util;  // random inputs, upload / download

TEST(PrefillHc, PostEqualsTokenDimensionDecodeKernel) {
  DS4_CUDA_REQUIRE_GPU();
  struct Shape {
    int nc;
    int64_t E, T;
  };
  uint32_t seed = 13000;
  for (const Shape c : {Shape{4, 4096, 37}, Shape{1, 64, 3}, Shape{8, 128, 5}, Shape{4, 4096, 1}}) {
    const fwd::HcShape sh{c.nc, c.E, 1e-6f, 1e-6f, 20};
    ASSERT_TRUE(pre::hc_post_supported(sh));
    const int64_t nH = c.T * c.nc * c.E;
    const DeviceBuffer f = upload(gaussian(c.T * c.E, 1.0f, seed++));
    const DeviceBuffer H = upload(gaussian(nH, 1.0f, seed++));
    const DeviceBuffer post = upload(gaussian(c.T * c.nc, 1.0f, seed++));
    const DeviceBuffer comb = upload(gaussian(c.T * c.nc * c.nc, 0.5f, seed++));
    DeviceBuffer want(size_t(nH) * sizeof(float)), got(size_t(nH) * sizeof(float));
    got.fill_bytes(0xFF);
    fwd::hc_post(sh, f.as<float>(), H.as<float>(), post.as<float>(), comb.as<float>(), want.as<float>(), nullptr, c.T);
    pre::hc_post(sh, f.as<float>(), H.as<float>(), post.as<float>(), comb.as<float>(), got.as<float>(), c.T, nullptr);
    device_synchronize();
    const auto w = download<float>(want, size_t(nH)), g = download<float>(got, size_t(nH));
    EXPECT_EQ(std::memcmp(w.data(), g.data(), w.size() * sizeof(float)), 0)
        << "nc " << c.nc << " E " << c.E << " T " << c.T;
  }
  EXPECT_FALSE(pre::hc_post_supported(fwd::HcShape{4, 4098, 1e-6f, 1e-6f, 20}));
  EXPECT_FALSE(pre::hc_post_supported(fwd::HcShape{9, 4096, 1e-6f, 1e-6f, 20}));
}

TEST(PrefillHc, PreNormEqualsTokenDimensionDecodeKernels) {
  DS4_CUDA_REQUIRE_GPU();
  struct Shape {
    int nc;
    int64_t E, T;
  };
  uint32_t seed = 13100;
  for (const Shape c :
       {Shape{4, 4096, 37}, Shape{4, 1024, 5}, Shape{2, 2048, 3}, Shape{8, 2048, 2}, Shape{1, 4096, 1}}) {
    const fwd::HcShape sh{c.nc, c.E, 1e-6f, 1e-6f, 20};
    ASSERT_TRUE(pre::hc_pre_norm_supported(sh)) << c.nc << " x " << c.E;
    const int64_t n_mix = (2 + c.nc) * c.nc;
    const DeviceBuffer H = upload(gaussian(c.T * c.nc * c.E, 1.0f, seed++));
    const auto mix_host = gaussian(c.T * n_mix, 3.0f, seed++);
    const DeviceBuffer base = upload(gaussian(n_mix, 0.5f, seed++));
    const DeviceBuffer scale = upload(gaussian(3, 1.0f, seed++));
    const DeviceBuffer norm = upload(gaussian(c.E, 1.0f, seed++));
    const DeviceBuffer mix_old = upload(mix_host), mix_new = upload(mix_host);
    DeviceBuffer a(size_t(c.T * c.E) * sizeof(float));
    struct Out {
      DeviceBuffer x, post, comb;
    };
    auto outs = [&] {
      Out o{DeviceBuffer(size_t(c.T * c.E) * sizeof(float)), DeviceBuffer(size_t(c.T * c.nc) * sizeof(float)),
            DeviceBuffer(size_t(c.T * c.nc * c.nc) * sizeof(float))};
      o.x.fill_bytes(0xFF);
      o.post.fill_bytes(0xFF);
      o.comb.fill_bytes(0xFF);
      return o;
    };
    Out want = outs(), got = outs();
    fwd::hc_pre(sh, mix_old.as<float>(), H.as<float>(), base.as<float>(), scale.as<float>(), a.as<float>(),
                want.post.as<float>(), want.comb.as<float>(), nullptr, c.T);
    fwd::rmsnorm(a.as<float>(), norm.as<float>(), want.x.as<float>(), c.E, c.T, sh.rms_eps, nullptr);
    pre::hc_pre_norm(sh, mix_new.as<float>(), H.as<float>(), base.as<float>(), scale.as<float>(), norm.as<float>(),
                     got.x.as<float>(), got.post.as<float>(), got.comb.as<float>(), c.T, nullptr);
    device_synchronize();
    const std::string what = "nc " + std::to_string(c.nc) + " E " + std::to_string(c.E) + " T " + std::to_string(c.T);
    for (auto [w, g, n, name] : {std::tuple{&want.x, &got.x, c.T * c.E, "x"},
                                 std::tuple{&want.post, &got.post, c.T * c.nc, "post"},
                                 std::tuple{&want.comb, &got.comb, c.T * c.nc * c.nc, "comb"}}) {
      const auto wv = download<float>(*w, size_t(n)), gv = download<float>(*g, size_t(n));
      EXPECT_EQ(std::memcmp(wv.data(), gv.data(), wv.size() * sizeof(float)), 0) << what << ": " << name;
    }
  }
  EXPECT_FALSE(pre::hc_pre_norm_supported(fwd::HcShape{4, 7168, 1e-6f, 1e-6f, 20}));  // Pro
  EXPECT_FALSE(pre::hc_pre_norm_supported(fwd::HcShape{4, 64, 1e-6f, 1e-6f, 20}));    // the test fixtures
  EXPECT_FALSE(pre::hc_pre_norm_supported(fwd::HcShape{8, 4096, 1e-6f, 1e-6f, 20}));  // H beyond the registers
}

}  // namespace
}  // namespace ds4::cuda
