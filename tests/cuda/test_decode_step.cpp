// The decode step's shorter critical path: the HC pre's extras (forward_kernels.h HcPreExtras:
// comb's Sinkhorn deferred to hc_comb_sinkhorn, which the session can run on another stream
// (opt-in), and x also written as Q8_0 activation blocks for wq_a / wkv) and the attention merge's Q8_0 blocks
// of o for wo_a. Each must give the same bits as the old launches (the HC pre that does it all,
// quantize_activation), at Flash's shapes and run-time-nc shapes; the session's decode logits
// must equal those of the old path (the A/B switches) bit for bit.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "backend/cuda/buffer.h"
#include "backend/cuda/check.h"
#include "backend/cuda/forward_kernels.h"
#include "backend/cuda/gpu_model.h"
#include "backend/cuda/gpu_session.h"
#include "backend/cuda/matvec.h"
#include "core/fp16.h"
#include "cuda_test_util.h"
#include "e2e/e2e_util.h"

namespace {

namespace fwd = ds4::cuda::fwd;
using ds4::cuda::DeviceBuffer;
using ds4::cuda::test_util::download;
using ds4::cuda::test_util::gaussian;
using ds4::cuda::test_util::upload;

bool same_bytes(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
}
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

std::vector<uint16_t> as_f16(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = ds4::f32_to_fp16(v[i]);
  return h;
}

// Inputs of one decode HC pre with its pending hc_post (as the session calls it): F16 fn (the
// q2 recipe's hc_*_fn), random post / comb of a previous HC pre.
struct HcInputs {
  fwd::HcShape s;
  int64_t n_mix;
  DeviceBuffer fn, H_in, f, base, scale, norm, post0, comb0;
  HcInputs(int nc, int64_t E, uint32_t seed)
      : s{nc, E, 1e-6f, 1e-6f, 20},
        n_mix((2 + nc) * nc),
        fn(upload(as_f16(gaussian(n_mix * nc * E, 0.02f, seed)))),
        H_in(upload(gaussian(nc * E, 1.0f, seed + 1))),
        f(upload(gaussian(E, 1.0f, seed + 2))),
        base(upload(gaussian(n_mix, 0.5f, seed + 3))),
        scale(upload(std::vector<float>{0.7f, 1.3f, 0.9f})),
        norm(upload(gaussian(E, 0.3f, seed + 4))),
        post0(upload(gaussian(nc, 0.5f, seed + 5))),
        comb0(upload(gaussian(nc * nc, 0.2f, seed + 6))) {}
};

struct HcOut {
  std::vector<float> H, a, x, post, comb;
  std::vector<uint8_t> xq;  // Q8_0 activation of x
  bool one_launch = false;
};

// with_post: hc_post_pre_fused (else hc_pre_fused on H_in); extras: defer the Sinkhorn to
// hc_comb_sinkhorn and write x's Q8_0 blocks from the kernel, else quantize_activation(x).
HcOut run_hc(HcInputs& in, bool with_post, bool extras) {
  const int nc = in.s.nc;
  const int64_t E = in.s.E;
  const size_t act_bytes = ds4::cuda::activation_bytes(ds4::GgmlType::Q8_0, E);
  DeviceBuffer H(nc * E * 4), a(E * 4), x(E * 4), xq(act_bytes), scr(fwd::hc_fused_scratch_bytes(in.s));
  scr.fill_bytes(0);
  xq.fill_bytes(0xa5);
  H.fill_bytes(0);
  // post / comb are the hc_post's inputs and the HC pre's outputs, as in the session.
  DeviceBuffer post(nc * 4), comb(nc * nc * 4);
  DS4_CUDA_CHECK(cudaMemcpy(post.data(), in.post0.data(), nc * 4, cudaMemcpyDeviceToDevice));
  DS4_CUDA_CHECK(cudaMemcpy(comb.data(), in.comb0.data(), nc * nc * 4, cudaMemcpyDeviceToDevice));
  fwd::HcPreExtras ex;
  if (extras) {
    ex.x_q8 = xq.data();
    ex.defer_sinkhorn = true;
  }
  HcOut o;
  if (with_post) {
    const fwd::HcPostIn p{in.f.as<float>(), in.H_in.as<float>(), post.as<float>(), comb.as<float>()};
    o.one_launch = fwd::hc_post_pre_fused(in.s, p, H.as<float>(), ds4::GgmlType::F16, in.fn.data(), in.base.as<float>(),
                                          in.scale.as<float>(), in.norm.as<float>(), a.as<float>(), x.as<float>(),
                                          post.as<float>(), comb.as<float>(), scr.data(), nullptr, ex);
  } else {
    o.one_launch = fwd::hc_pre_fused(in.s, ds4::GgmlType::F16, in.fn.data(), in.H_in.as<float>(), in.base.as<float>(),
                                     in.scale.as<float>(), in.norm.as<float>(), a.as<float>(), x.as<float>(),
                                     post.as<float>(), comb.as<float>(), scr.data(), nullptr, ex);
  }
  if (extras)
    fwd::hc_comb_sinkhorn(in.s, comb.as<float>(), nullptr);
  else
    ds4::cuda::quantize_activation(ds4::GgmlType::Q8_0, x.as<float>(), xq.data(), E, nullptr);
  DS4_CUDA_CHECK(cudaDeviceSynchronize());
  o.H = download<float>(H, nc * E);
  o.a = download<float>(a, E);
  o.x = download<float>(x, E);
  o.post = download<float>(post, nc);
  o.comb = download<float>(comb, nc * nc);
  o.xq = download<uint8_t>(xq, act_bytes);
  EXPECT_EQ(download<uint32_t>(scr, 1)[0], 0u) << "arrival counter back at zero";
  return o;
}

struct HcExtrasCase {
  int nc;
  int64_t E;
};
class DecodeHcExtras : public ::testing::TestWithParam<HcExtrasCase> {};

TEST_P(DecodeHcExtras, EqualTheHcPreThatDoesItAll) {
  DS4_CUDA_REQUIRE_GPU();
  const auto [nc, E] = GetParam();
  HcInputs in(nc, E, 500 + static_cast<uint32_t>(nc));
  for (bool with_post : {true, false}) {
    const HcOut old_path = run_hc(in, with_post, false), new_path = run_hc(in, with_post, true);
    const char* what = with_post ? "hc_post_pre_fused" : "hc_pre_fused";
    ASSERT_TRUE(new_path.one_launch) << what << ": the extras need the one-launch kernel";
    EXPECT_TRUE(same_bits(old_path.H, new_path.H)) << what;
    EXPECT_TRUE(same_bits(old_path.a, new_path.a)) << what;
    EXPECT_TRUE(same_bits(old_path.x, new_path.x)) << what;
    EXPECT_TRUE(same_bits(old_path.post, new_path.post)) << what;
    EXPECT_TRUE(same_bits(old_path.comb, new_path.comb)) << what << ": deferred Sinkhorn";
    EXPECT_TRUE(same_bytes(old_path.xq, new_path.xq)) << what << ": Q8_0 blocks of x from the kernel";
    // A real Sinkhorn ran: columns of comb sum to ~1.
    for (int k = 0; k < nc; ++k) {
      float t = 0.0f;
      for (int j = 0; j < nc; ++j) t += new_path.comb[j * nc + k];
      EXPECT_NEAR(t, 1.0f, 1e-3f) << what << " column " << k;
    }
  }
}
INSTANTIATE_TEST_SUITE_P(ForwardKernels, DecodeHcExtras,
                         ::testing::Values(HcExtrasCase{4, 4096}, HcExtrasCase{3, 1024}, HcExtrasCase{6, 512}),
                         [](const ::testing::TestParamInfo<HcExtrasCase>& i) {
                           return std::to_string(i.param.nc) + "x" + std::to_string(i.param.E);
                         });

// Flash shape in a graph: the HC pre that runs the Sinkhorn, then a quantize launch for wq_a /
// wkv (the old critical path) vs the HC pre with both extras (the deferred Sinkhorn is not on
// the main stream, so it is not timed here).
TEST(ForwardKernels, PrintsDecodeHcExtrasTimes) {
  DS4_CUDA_REQUIRE_GPU();
  ds4::cuda::Stream stream;
  void* st = stream.handle();
  HcInputs in(4, 4096, 900);
  const int64_t E = in.s.E;
  DeviceBuffer H(4 * E * 4), a(E * 4), x(E * 4), xq(ds4::cuda::activation_bytes(ds4::GgmlType::Q8_0, E));
  DeviceBuffer post(16), comb(64), scr(fwd::hc_fused_scratch_bytes(in.s));
  scr.fill_bytes(0);
  auto hc = [&](void* s, const fwd::HcPreExtras& ex) {
    fwd::hc_post_pre_fused(in.s, {in.f.as<float>(), in.H_in.as<float>(), in.post0.as<float>(), in.comb0.as<float>()},
                           H.as<float>(), ds4::GgmlType::F16, in.fn.data(), in.base.as<float>(), in.scale.as<float>(),
                           in.norm.as<float>(), a.as<float>(), x.as<float>(), post.as<float>(), comb.as<float>(),
                           scr.data(), s, ex);
  };
  fwd::HcPreExtras both;
  both.x_q8 = xq.data();
  both.defer_sinkhorn = true;
  float t[2][2];
  for (int r = 0; r < 2; ++r) {
    t[r][0] = ds4::cuda::test_util::graph_us_per_call(st, [&](void* s) {
      hc(s, {});
      ds4::cuda::quantize_activation(ds4::GgmlType::Q8_0, x.as<float>(), xq.data(), E, s);
    });
    t[r][1] = ds4::cuda::test_util::graph_us_per_call(st, [&](void* s) { hc(s, both); });
  }
  std::printf(
      "[decode HC extras, us per call in a graph] hc_post_pre_fused + quantize x %.2f / %.2f; "
      "with the deferred Sinkhorn and x's Q8_0 blocks %.2f / %.2f; Sinkhorn alone %.2f\n",
      t[0][0], t[1][0], t[0][1], t[1][1],
      ds4::cuda::test_util::graph_us_per_call(st, [&](void* s) { fwd::hc_comb_sinkhorn(in.s, comb.as<float>(), s); }));
}

// The attention merge's Q8_0 blocks of o (for wo_a) equal quantize_activation of its o, at
// Flash's 64 heads x 512 with a wrapped window, compressed rows, a selection, and two tokens.
TEST(ForwardKernels, AttentionQ8OutputEqualsQuantizeActivation) {
  DS4_CUDA_REQUIRE_GPU();
  const int64_t NH = 64, D = 512, n_rope = 64, window = 128, ratio = 4, cap = 300, K = 64, pos = 1000, T = 2;
  const int64_t max_rows = window + (pos + T) / ratio + 1;  // every compressed row without the selection
  const fwd::AttnShape shape{NH, D, n_rope, window, cap, ratio, max_rows};
  auto dq = upload(gaussian(T * NH * D, 0.05f, 60)), dring = upload(gaussian(cap * D, 1.0f, 61));
  auto dcomp = upload(gaussian((pos / ratio + 2) * D, 1.0f, 62)), dsinks = upload(gaussian(NH, 1.0f, 63));
  std::vector<float> omega(n_rope / 2);
  for (int64_t i = 0; i < n_rope / 2; ++i) omega[i] = std::pow(10000.0f, -2.0f * static_cast<float>(i) / n_rope);
  auto dom = upload(omega);
  std::vector<int32_t> sel(T * K);
  std::mt19937 g(64);
  for (auto& v : sel) v = static_cast<int32_t>(g() % ((pos + 1) / ratio));
  auto dsel = upload(sel), dn = upload(std::vector<int32_t>{static_cast<int32_t>(K), static_cast<int32_t>(K - 9)});
  std::vector<fwd::StepCtl> c(T);
  for (int64_t t = 0; t < T; ++t) c[t].pos = pos + t;
  auto dctl = upload(c);
  const size_t act = ds4::cuda::activation_bytes(ds4::GgmlType::Q8_0, NH * D);
  DeviceBuffer sf(T * fwd::attention_scratch_floats(shape) * 4), o1(T * NH * D * 4), o2(T * NH * D * 4);
  DeviceBuffer q1(T * act), q2(T * act);
  q2.fill_bytes(0x5a);
  for (int with_sel = 0; with_sel < 2; ++with_sel) {
    const int32_t* sp = with_sel ? dsel.as<int32_t>() : nullptr;
    fwd::attention(shape, dq.as<float>(), dring.as<float>(), dcomp.as<float>(), sp, dn.as<int32_t>(),
                   dsinks.as<float>(), dom.as<float>(), sf.as<float>(), o1.as<float>(), dctl.as<fwd::StepCtl>(),
                   nullptr, T, K);
    for (int64_t t = 0; t < T; ++t)
      ds4::cuda::quantize_activation(ds4::GgmlType::Q8_0, o1.as<float>() + t * NH * D, q1.as<uint8_t>() + t * act,
                                     NH * D, nullptr);
    fwd::attention(shape, dq.as<float>(), dring.as<float>(), dcomp.as<float>(), sp, dn.as<int32_t>(),
                   dsinks.as<float>(), dom.as<float>(), sf.as<float>(), o2.as<float>(), dctl.as<fwd::StepCtl>(),
                   nullptr, T, K, q2.data());
    DS4_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(same_bits(download<float>(o1, T * NH * D), download<float>(o2, T * NH * D)))
        << "selection " << with_sel;
    EXPECT_TRUE(same_bytes(download<uint8_t>(q1, T * act), download<uint8_t>(q2, T * act))) << "selection " << with_sel;
  }
}

// ---------------------------------------------------------------- the session

const ds4::cuda::GpuModel& gpu_model(const std::string& fixture, const std::string& recipe) {
  static std::map<std::string, std::unique_ptr<ds4::cuda::GpuModel>> cache;
  auto& g = cache[fixture + "/" + recipe];
  if (!g) g = ds4::cuda::GpuModel::upload(e2e::model(fixture, recipe), {.progress = false});
  return *g;
}

// Logits of a prompt (one batched chunk) then decode steps, one token each.
std::vector<float> decode_logits(const ds4::cuda::GpuModel& gm, const std::vector<int32_t>& tokens, size_t n_prompt,
                                 bool graph) {
  const ds4::model::SessionOptions o{.max_ctx = 256, .numerics = ds4::model::Numerics::Official};
  ds4::cuda::GpuSession s(gm, o, {.use_graph = graph});
  const int64_t V = gm.hparams().n_vocab;
  s.eval(std::span(tokens).first(n_prompt), ds4::model::LogitsMode::None, nullptr);
  std::vector<float> out((tokens.size() - n_prompt) * static_cast<size_t>(V));
  for (size_t i = n_prompt; i < tokens.size(); ++i)
    s.eval(std::span(tokens).subspan(i, 1), ds4::model::LogitsMode::Last, out.data() + (i - n_prompt) * V);
  return out;
}

// Decode steps through a graph and with plain launches, the compressor layers' windows
// completing: x's Q8_0 blocks from the HC pre and o's from the attention merge (default), also
// with the opt-in deferred comb Sinkhorn in each of its places (DS4_CUDA_COMB_BRANCH_MODE 1-4),
// give the logits of DS4_CUDA_NO_HC_X_Q8=1 DS4_CUDA_NO_ATTN_O_Q8=1 DS4_CUDA_NO_COMB_IN_LAUNCH=1
// DS4_CUDA_NO_ATTN_EARLY_ROWS=1 bit for bit. q8 recipe: wq_a / wkv / wo_a are
// Q8_0, so the kernels write their activations; bf16: only the comb is deferred.
TEST(CudaSession, DeferredCombAndHcActivationEqualOldPath) {
  DS4_CUDA_REQUIRE_GPU();
  for (const char* recipe : {"q8", "bf16"}) {
    const auto& gm = gpu_model("dsv4-tiny-a-bf16", recipe);
    const int64_t V = gm.hparams().n_vocab;
    std::mt19937 g(321);
    std::vector<int32_t> tokens(44);
    for (auto& t : tokens) t = static_cast<int32_t>(g() % static_cast<uint32_t>(V));
    std::printf("[%s] wq_a type %s, n_embd %lld\n", recipe,
                std::string(ds4::type_name(gm.layers()[0].q_a.type)).c_str(),
                static_cast<long long>(gm.hparams().n_embd));
    for (bool graph : {true, false}) {
      std::vector<float> old_path;
      {
        const ds4::cuda::test_util::ScopedSwitchOff b("DS4_CUDA_NO_HC_X_Q8"), c("DS4_CUDA_NO_ATTN_O_Q8"),
            d("DS4_CUDA_NO_COMB_IN_LAUNCH"), e("DS4_CUDA_NO_ATTN_EARLY_ROWS");
        old_path = decode_logits(gm, tokens, 30, graph);
      }
      bool finite = true;
      for (float v : old_path) finite = finite && std::isfinite(v);
      EXPECT_TRUE(finite) << recipe;
      // "" = the default (the Sinkhorn as an extra block of the q/kv finish and of the fused
      // router); 1-4: the opt-in places (gpu_session.cpp comb_mode).
      for (const char* mode : {"", "1", "2", "3", "4"}) {
        const ds4::cuda::test_util::ScopedEnv m("DS4_CUDA_COMB_BRANCH_MODE", mode);
        const auto fresh = decode_logits(gm, tokens, 30, graph);
        ASSERT_EQ(fresh.size(), old_path.size());
        EXPECT_EQ(std::memcmp(fresh.data(), old_path.data(), fresh.size() * 4), 0)
            << recipe << (graph ? " (graph)" : " (plain launches)") << ", comb mode '" << mode << "'";
      }
    }
  }
}

}  // namespace
