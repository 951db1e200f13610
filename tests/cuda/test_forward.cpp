// The GPU forward pass against the CPU reference: every forward kernel on fresh random inputs
// (forward_kernels.h vs the src/model function it mirrors), then whole models: the fixtures
// through the CUDA session (exact numerics vs the float64 reference logits, quantized
// recipes vs the CPU backend on the same file), chunking, truncation, graphs, long prompts
// that wrap the history ring and make the indexer select, and snapshots moving CPU <-> GPU.
// Every test skips visibly on a machine without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "backend/cpu/matmul.h"
#include "backend/cuda/buffer.h"
#include "backend/cuda/device.h"
#include "backend/cuda/forward_kernels.h"
#include "backend/cuda/gpu_model.h"
#include "backend/cuda/gpu_session.h"
#include "backend/cuda/matvec.h"
#include "core/fp16.h"
#include "cuda/pinned_divergence.h"
#include "cuda_test_util.h"
#include "e2e/e2e_util.h"
#include "model/attention.h"
#include "model/compressor.h"
#include "model/hyper_connection.h"
#include "model/indexer.h"
#include "model/moe.h"
#include "model/numerics_sim.h"
#include "model/ops.h"
#include "model/rope.h"
#include "runtime/backend.h"

namespace {

using ds4::cuda::DeviceBuffer;
using ds4::model::LogitsMode;
using ds4::model::Numerics;
namespace fwd = ds4::cuda::fwd;

#define REQUIRE_GPU()                                                        \
  do {                                                                       \
    if (ds4::cuda::list_devices().empty()) GTEST_SKIP() << "no CUDA GPU on this machine: skipped"; \
  } while (0)

std::vector<float> randv(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

template <class T>
DeviceBuffer up(const std::vector<T>& v) {
  DeviceBuffer b(std::max<size_t>(1, v.size() * sizeof(T)));
  if (!v.empty()) b.upload(v.data(), v.size() * sizeof(T));
  return b;
}
template <class T>
std::vector<T> down(const DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  ds4::cuda::device_synchronize();
  b.download(v.data(), n * sizeof(T));
  return v;
}

DeviceBuffer ctl_at(int64_t pos, int32_t token = 0) {
  fwd::StepCtl c;
  c.pos = pos;
  c.token = token;
  DeviceBuffer b(sizeof(c));
  b.upload(&c, sizeof(c));
  return b;
}
const fwd::StepCtl* ctl(const DeviceBuffer& b) { return b.as<fwd::StepCtl>(); }

double max_rel(const std::vector<float>& a, const std::vector<float>& ref) {
  double m = 0, s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::fabs(static_cast<double>(a[i]) - ref[i]));
    s = std::max(s, std::fabs(static_cast<double>(ref[i])));
  }
  return m / std::max(s, 1e-30);
}

// ---------------------------------------------------------------- kernels

TEST(ForwardKernels, RmsNormMatchesCpu) {
  REQUIRE_GPU();
  const int64_t n = 4096, rows = 3;
  auto x = randv(n * rows, 1, 3.0f), w = randv(n, 2);
  std::vector<float> ref(x.size());
  for (int64_t r = 0; r < rows; ++r) ds4::model::rmsnorm(ref.data() + r * n, x.data() + r * n, w.data(), n, 1e-6f);
  auto dx = up(x), dw = up(w);
  DeviceBuffer dy(x.size() * 4);
  fwd::rmsnorm(dx.as<float>(), dw.as<float>(), dy.as<float>(), n, rows, 1e-6f, nullptr);
  EXPECT_LT(max_rel(down<float>(dy, x.size()), ref), 1e-6);
}

TEST(ForwardKernels, Fp8AndHadamardFp4AreBitExact) {
  REQUIRE_GPU();
  // Without norm and RoPE the simulations see the CPU's exact inputs: results must be equal.
  for (int sim = 1; sim <= 2; ++sim) {
    const int64_t d = sim == 1 ? 512 : 128, rows = 64;
    auto x = randv(d * rows, 10 + sim, 2.0f);
    x[5] = 0.0f;
    x[7] = 1e-7f;  // below the FP8 amax floor's resolution
    std::vector<float> ref = x;
    for (int64_t r = 0; r < rows; ++r) {
      float* p = ref.data() + r * d;
      if (sim == 1) {
        ds4::model::fp8_roundtrip(p, 448, 64);  // 448 = 7 blocks of 64: Flash's nope dims
      } else {
        ds4::model::hadamard(p, d);
        ds4::model::fp4_roundtrip(p, d, 32);
      }
    }
    fwd::RowFinish f;
    f.d = d;
    f.do_norm = false;
    f.n_nope = 448;
    f.sim = static_cast<fwd::Sim>(sim);
    auto dx = up(x);
    auto c = ctl_at(0);
    fwd::rows_finish(f, nullptr, dx.as<float>(), dx.as<float>(), rows, d, 0, ctl(c), nullptr);
    const auto got = down<float>(dx, x.size());
    size_t diff = 0;
    for (size_t i = 0; i < got.size(); ++i) diff += std::memcmp(&got[i], &ref[i], 4) != 0;
    EXPECT_EQ(diff, 0u) << "sim " << sim;
  }
}

TEST(ForwardKernels, NormRopeRowsMatchCpu) {
  REQUIRE_GPU();
  const int64_t D = 512, NH = 8, n_rope = 64, pos = 12345;
  const auto rope = ds4::model::Rope::yarn(n_rope, 160000.0f, 16.0f, 65536.0f, 32.0f, 1.0f);
  auto q = randv(D * NH, 20, 2.0f), w = randv(D, 21);
  std::vector<float> ref = q;
  for (int64_t h = 0; h < NH; ++h) {
    ds4::model::rmsnorm(ref.data() + h * D, ref.data() + h * D, w.data(), D, 1e-6f);
    rope.apply(ref.data() + h * D, D, pos);
  }
  auto dq = up(q), dw = up(w), dom = up(rope.omega());
  DeviceBuffer ring(5 * D * 4);
  fwd::RowFinish f;
  f.d = D;
  f.n_rope = n_rope;
  f.norm = dw.as<float>();
  auto c = ctl_at(pos);
  fwd::rows_finish(f, dom.as<float>(), dq.as<float>(), dq.as<float>(), NH, D, 0, ctl(c), nullptr);
  EXPECT_LT(max_rel(down<float>(dq, q.size()), ref), 2e-6);
  // Ring mode writes the first row to slot pos % cap.
  fwd::rows_finish(f, dom.as<float>(), up(q).as<float>(), ring.as<float>(), 1, D, 5, ctl(c), nullptr);
  const auto r = down<float>(ring, 5 * D);
  std::vector<float> slot(r.begin() + (pos % 5) * D, r.begin() + (pos % 5 + 1) * D);
  EXPECT_LT(max_rel(slot, std::vector<float>(ref.begin(), ref.begin() + D)), 2e-6);
}

ds4::model::Tensor f32_tensor(const std::vector<float>& data, int64_t cols, int64_t rows) {
  ds4::model::Tensor t;
  t.name = "test";
  t.type = ds4::GgmlType::F32;
  t.ne = {cols, rows};
  t.data = reinterpret_cast<const uint8_t*>(data.data());
  t.row_bytes = static_cast<size_t>(cols) * 4;
  return t;
}

// Hyper-connection shapes: 4 streams at the Flash width (every DS4 model has 4 streams; the
// fused launches then take one output block and 64 column blocks) and 6 streams at an odd
// width, whose 36-element Sinkhorn matrix takes two values per lane of the warp with rows
// straddling the two, and whose last column block and output float4s are partial; 3 streams
// at width 1004, whose F16 fn rows (6024 bytes) are not 16-byte aligned (the one-launch path's
// element-wise fn loads).
struct HcCase {
  int64_t nc, E;
};
void PrintTo(const HcCase& c, std::ostream* os) { *os << c.nc << " streams x " << c.E; }
class HyperConnections : public ::testing::TestWithParam<HcCase> {
 protected:
  void SetUp() override {
    hp.n_hc = GetParam().nc;
    hp.n_embd = GetParam().E;
    hp.hc_sinkhorn_iters = 20;
    hp.hc_eps = 1e-6f;
    hp.rms_eps = 1e-6f;
  }
  fwd::HcShape shape() const { return {static_cast<int>(hp.n_hc), hp.n_embd, hp.rms_eps, hp.hc_eps, 20}; }
  // The CPU reference of one sublayer's hyper-connections: hc_pre of H with fn weights `fn`
  // ([n_mix][nc * E], kept alive by the caller) and random base (`seed`), then hc_post of F.
  struct CpuHc {
    ds4::model::HcWeights w;
    std::vector<float> a, post, comb, H_out;
  };
  CpuHc cpu_pre_post(const std::vector<float>& fn, uint32_t seed, const std::vector<float>& H,
                     const std::vector<float>& F) const {
    const int64_t nc = hp.n_hc, E = hp.n_embd, n_mix = (2 + nc) * nc;
    CpuHc r;
    r.w.fn = f32_tensor(fn, nc * E, n_mix);
    r.w.base = randv(n_mix, seed, 0.5f);
    r.w.scale = {0.7f, 1.3f, 0.9f};
    r.a.resize(E);
    r.post.resize(nc);
    r.comb.resize(nc * nc);
    r.H_out.resize(nc * E);
    std::vector<float> scratch(n_mix);
    ds4::model::hc_pre(hp, r.w, H.data(), 1, r.a.data(), r.post.data(), r.comb.data(), scratch.data(), nullptr);
    ds4::model::hc_post(hp, F.data(), H.data(), r.post.data(), r.comb.data(), 1, r.H_out.data());
    return r;
  }
  ds4::model::HParams hp;
};

// fn weights stored as type t (F32, F16, BF16): the bytes the GPU reads, and in `rounded` the
// floats the CPU reference sees.
std::vector<uint8_t> fn_bytes_as(ds4::GgmlType t, const std::vector<float>& fn, std::vector<float>& rounded) {
  rounded = fn;
  std::vector<uint8_t> bytes;
  if (t == ds4::GgmlType::F32) {
    bytes.resize(fn.size() * 4);
    std::memcpy(bytes.data(), fn.data(), bytes.size());
    return bytes;
  }
  bytes.resize(fn.size() * 2);
  for (size_t i = 0; i < fn.size(); ++i) {
    const uint16_t b = t == ds4::GgmlType::F16 ? ds4::f32_to_fp16(fn[i]) : ds4::f32_to_bf16(fn[i]);
    std::memcpy(bytes.data() + 2 * i, &b, 2);
    rounded[i] = t == ds4::GgmlType::F16 ? ds4::fp16_to_f32(b) : ds4::bf16_to_f32(b);
  }
  return bytes;
}

bool identical_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The decode HC pre's variants at nc 4 x E 4096 (forward_kernels.cu hc_cluster_size): the
// values of DS4_CUDA_HC_CLUSTER and DS4_CUDA_NO_HC_CLUSTER (empty: unset). Each sets them for
// its scope and names itself in failure messages.
struct HcVariant {
  const char *cluster, *no_cluster;
};
constexpr HcVariant kHcVariants[] = {{"", ""}, {"8", ""}, {"", "1"}};
class ScopedHcVariant {
 public:
  explicit ScopedHcVariant(const HcVariant& v)
      : cluster_("DS4_CUDA_HC_CLUSTER", v.cluster),
        no_cluster_("DS4_CUDA_NO_HC_CLUSTER", v.no_cluster),
        trace_(__FILE__, __LINE__,
               std::string("DS4_CUDA_HC_CLUSTER='") + v.cluster + "' DS4_CUDA_NO_HC_CLUSTER='" + v.no_cluster + "'") {}

 private:
  ds4::cuda::test_util::ScopedEnv cluster_, no_cluster_;
  ::testing::ScopedTrace trace_;
};

TEST_P(HyperConnections, MatchCpu) {
  REQUIRE_GPU();
  const int64_t nc = hp.n_hc, E = hp.n_embd, n_mix = (2 + nc) * nc;
  auto fn = randv(nc * E * n_mix, 30, 0.02f), H = randv(nc * E, 31), F = randv(E, 32);
  const CpuHc ref = cpu_pre_post(fn, 33, H, F);
  const ds4::model::HcWeights& w = ref.w;
  const std::vector<float>& a = ref.a;
  const std::vector<float>& post = ref.post;
  const std::vector<float>& comb = ref.comb;
  const std::vector<float>& Hout = ref.H_out;
  std::vector<float> scratch(n_mix);

  auto dfn = up(fn), dH = up(H), dF = up(F), dbase = up(w.base), dscale = up(w.scale);
  DeviceBuffer mix(n_mix * 4), da(E * 4), dpost(nc * 4), dcomb(nc * nc * 4), dHout(nc * E * 4);
  ds4::cuda::matvec(ds4::GgmlType::F32, dfn.data(), n_mix, nc * E, dH.as<float>(), mix.as<float>(), nullptr);
  const fwd::HcShape s = shape();
  fwd::hc_pre(s, mix.as<float>(), dH.as<float>(), dbase.as<float>(), dscale.as<float>(), da.as<float>(),
              dpost.as<float>(), dcomb.as<float>(), nullptr);
  fwd::hc_post(s, dF.as<float>(), dH.as<float>(), dpost.as<float>(), dcomb.as<float>(), dHout.as<float>(), nullptr);
  EXPECT_LT(max_rel(down<float>(da, E), a), 1e-5);
  EXPECT_LT(max_rel(down<float>(dpost, nc), post), 1e-5);
  EXPECT_LT(max_rel(down<float>(dcomb, nc * nc), comb), 1e-5);
  EXPECT_LT(max_rel(down<float>(dHout, nc * E), Hout), 1e-5);

  // The fused path (fn product, hc_pre and the RMSNorm in two launches), with f32, f16 and
  // bf16 fn weights, twice in a row, bit-identical between the two calls (every block of the
  // second launch reduces the partials itself, in one fixed order).
  std::vector<float> nw = randv(E, 34, 0.5f);
  for (float& v : nw) v += 1.0f;
  // At nc 4 x E 4096 the HC pre runs as one cluster of 16 blocks (default), of 8
  // (DS4_CUDA_HC_CLUSTER=8) or as the one-launch kernel (DS4_CUDA_NO_HC_CLUSTER=1): all three.
  for (const HcVariant& variant : kHcVariants)
  for (ds4::GgmlType t : {ds4::GgmlType::F32, ds4::GgmlType::F16, ds4::GgmlType::BF16}) {
    const ScopedHcVariant scoped(variant);
    std::vector<float> fnq;
    auto dfnq = up(fn_bytes_as(t, fn, fnq)), dnw = up(nw);
    ds4::model::HcWeights wq = w;
    wq.fn = f32_tensor(fnq, nc * E, n_mix);
    std::vector<float> aq(E), postq(nc), combq(nc * nc), xq(E);
    ds4::model::hc_pre(hp, wq, H.data(), 1, aq.data(), postq.data(), combq.data(), scratch.data(), nullptr);
    ds4::model::rmsnorm(xq.data(), aq.data(), nw.data(), E, 1e-6f);
    DeviceBuffer dx(E * 4), scr(fwd::hc_fused_scratch_bytes(s));
    scr.fill_bytes(0);
    std::vector<float> first;
    for (int rep = 0; rep < 2; ++rep) {
      fwd::hc_pre_fused(s, t, dfnq.data(), dH.as<float>(), dbase.as<float>(), dscale.as<float>(), dnw.as<float>(),
                        da.as<float>(), dx.as<float>(), dpost.as<float>(), dcomb.as<float>(), scr.data(), nullptr);
      const auto gx = down<float>(dx, E);
      EXPECT_LT(max_rel(down<float>(da, E), aq), 1e-5) << ds4::type_name(t);
      EXPECT_LT(max_rel(gx, xq), 1e-5) << ds4::type_name(t);
      EXPECT_LT(max_rel(down<float>(dpost, nc), postq), 1e-5) << ds4::type_name(t);
      EXPECT_LT(max_rel(down<float>(dcomb, nc * nc), combq), 1e-5) << ds4::type_name(t);
      if (rep == 0) first = gx;
      else EXPECT_TRUE(identical_bits(first, gx)) << ds4::type_name(t);
    }
    // The one-launch path's arrival counter (the scratch's first word) is back at zero.
    EXPECT_EQ(down<uint32_t>(scr, 1)[0], 0u) << ds4::type_name(t);
  }

  // Output head collapse.
  auto hfn = randv(nc * E * nc, 34, 0.02f);
  ds4::model::HcWeights hw;
  hw.fn = f32_tensor(hfn, nc * E, nc);
  hw.base = randv(nc, 35, 0.5f);
  hw.scale = {0.8f};
  std::vector<float> x(E), hs(nc);
  ds4::model::hc_head(hp, hw, H.data(), 1, x.data(), hs.data(), nullptr);
  auto dhfn = up(hfn), dhb = up(hw.base), dhs = up(hw.scale);
  DeviceBuffer hmix(nc * 4), dx(E * 4);
  ds4::cuda::matvec(ds4::GgmlType::F32, dhfn.data(), nc, nc * E, dH.as<float>(), hmix.as<float>(), nullptr);
  fwd::hc_head(s, hmix.as<float>(), dH.as<float>(), dhb.as<float>(), dhs.as<float>(), dx.as<float>(), nullptr);
  EXPECT_LT(max_rel(down<float>(dx, E), x), 1e-5);
}

// The decode step's fusions: a sublayer's hc_post inside the next HC pre's first launch
// (hc_post_pre_fused) and the last hc_post inside the output head's (hc_head_fused). The
// fused launches must give the same bits as hc_post followed by hc_pre_fused / the head on
// its output, and match the CPU's hc_post, hc_pre, hc_head and RMSNorm.
TEST_P(HyperConnections, PostFusedIntoNextPreAndHead) {
  REQUIRE_GPU();
  const int64_t nc = hp.n_hc, E = hp.n_embd, n_mix = (2 + nc) * nc;
  const fwd::HcShape s = shape();
  // post and comb of the previous HC pre (the CPU's, so that both sides start from the same).
  auto H = randv(nc * E, 40), F = randv(E, 41), fn0 = randv(nc * E * n_mix, 42, 0.02f);
  const CpuHc prev = cpu_pre_post(fn0, 43, H, F);
  const std::vector<float>& post = prev.post;
  const std::vector<float>& comb = prev.comb;
  const std::vector<float>& Hp = prev.H_out;  // hc_post's output: the next pre's and the head's input
  std::vector<float> scratch(n_mix);
  std::vector<float> nw = randv(E, 44, 0.5f);
  for (float& v : nw) v += 1.0f;
  auto dH = up(H), dF = up(F), dnw = up(nw);
  DeviceBuffer scr(fwd::hc_fused_scratch_bytes(s)), Hsep(nc * E * 4), Hfused(nc * E * 4);
  scr.fill_bytes(0);  // as the session's arena (the one-launch path's arrival counter)

  // The next HC pre, F32 and F16 fn weights (F16: Flash's hc_*_fn).
  auto fn = randv(nc * E * n_mix, 45, 0.02f);
  ds4::model::HcWeights w;
  w.base = randv(n_mix, 46, 0.5f);
  w.scale = {0.6f, 1.1f, 1.2f};
  auto dbase = up(w.base), dscale = up(w.scale);
  for (const HcVariant& variant : kHcVariants)
  for (ds4::GgmlType t : {ds4::GgmlType::F32, ds4::GgmlType::F16}) {
    const ScopedHcVariant scoped(variant);
    std::vector<float> fnq;
    auto dfn = up(fn_bytes_as(t, fn, fnq));
    w.fn = f32_tensor(fnq, nc * E, n_mix);
    std::vector<float> a(E), post2(nc), comb2(nc * nc), x(E);
    ds4::model::hc_pre(hp, w, Hp.data(), 1, a.data(), post2.data(), comb2.data(), scratch.data(), nullptr);
    ds4::model::rmsnorm(x.data(), a.data(), nw.data(), E, 1e-6f);
    struct Out {
      std::vector<float> H, a, x, post, comb;
    } out[2];
    for (int fused = 0; fused < 2; ++fused) {
      // As in the session, post / comb are the hc_post's inputs and the HC pre's outputs.
      auto dpost = up(post), dcomb = up(comb);
      DeviceBuffer da(E * 4), dx(E * 4);
      DeviceBuffer& dHp = fused ? Hfused : Hsep;
      dHp.fill_bytes(0);
      const fwd::HcPostIn p{dF.as<float>(), dH.as<float>(), dpost.as<float>(), dcomb.as<float>()};
      if (fused) {
        fwd::hc_post_pre_fused(s, p, dHp.as<float>(), t, dfn.data(), dbase.as<float>(), dscale.as<float>(),
                               dnw.as<float>(), da.as<float>(), dx.as<float>(), dpost.as<float>(),
                               dcomb.as<float>(), scr.data(), nullptr);
      } else {
        fwd::hc_post(s, p.f, p.H_in, p.post, p.comb, dHp.as<float>(), nullptr);
        fwd::hc_pre_fused(s, t, dfn.data(), dHp.as<float>(), dbase.as<float>(), dscale.as<float>(), dnw.as<float>(),
                          da.as<float>(), dx.as<float>(), dpost.as<float>(), dcomb.as<float>(), scr.data(), nullptr);
      }
      out[fused] = {down<float>(dHp, nc * E), down<float>(da, E), down<float>(dx, E), down<float>(dpost, nc),
                    down<float>(dcomb, nc * nc)};
    }
    const std::string tn(ds4::type_name(t));
    EXPECT_TRUE(identical_bits(out[0].H, out[1].H)) << tn;
    EXPECT_TRUE(identical_bits(out[0].a, out[1].a)) << tn;
    EXPECT_TRUE(identical_bits(out[0].x, out[1].x)) << tn;
    EXPECT_TRUE(identical_bits(out[0].post, out[1].post)) << tn;
    EXPECT_TRUE(identical_bits(out[0].comb, out[1].comb)) << tn;
    EXPECT_LT(max_rel(out[1].H, Hp), 1e-5) << tn;
    EXPECT_LT(max_rel(out[1].a, a), 1e-5) << tn;
    EXPECT_LT(max_rel(out[1].x, x), 1e-5) << tn;
    EXPECT_LT(max_rel(out[1].post, post2), 1e-5) << tn;
    EXPECT_LT(max_rel(out[1].comb, comb2), 1e-5) << tn;
  }

  // The output head: hc_head then the output RMSNorm, alone (on the separate hc_post's H) and
  // with the hc_post inside.
  auto hfn = randv(nc * E * nc, 47, 0.02f);
  ds4::model::HcWeights hw;
  hw.fn = f32_tensor(hfn, nc * E, nc);
  hw.base = randv(nc, 48, 0.5f);
  hw.scale = {0.8f};
  std::vector<float> xh(E), hs(nc), ref(E);
  ds4::model::hc_head(hp, hw, Hp.data(), 1, xh.data(), hs.data(), nullptr);
  ds4::model::rmsnorm(ref.data(), xh.data(), nw.data(), E, 1e-6f);
  auto dhfn = up(hfn), dhb = up(hw.base), dhs = up(hw.scale), dpost = up(post), dcomb = up(comb);
  DeviceBuffer dx(E * 4);
  fwd::hc_head_fused(s, nullptr, Hsep.as<float>(), ds4::GgmlType::F32, dhfn.data(), dhb.as<float>(), dhs.as<float>(),
                     dnw.as<float>(), dx.as<float>(), scr.data(), nullptr);
  const auto x_alone = down<float>(dx, E);
  EXPECT_LT(max_rel(x_alone, ref), 1e-5);
  Hfused.fill_bytes(0);
  const fwd::HcPostIn p{dF.as<float>(), dH.as<float>(), dpost.as<float>(), dcomb.as<float>()};
  fwd::hc_head_fused(s, &p, Hfused.as<float>(), ds4::GgmlType::F32, dhfn.data(), dhb.as<float>(), dhs.as<float>(),
                     dnw.as<float>(), dx.as<float>(), scr.data(), nullptr);
  EXPECT_TRUE(identical_bits(down<float>(dx, E), x_alone));
  EXPECT_TRUE(identical_bits(down<float>(Hfused, nc * E), down<float>(Hsep, nc * E)));
}
INSTANTIATE_TEST_SUITE_P(ForwardKernels, HyperConnections,
                         ::testing::Values(HcCase{4, 4096}, HcCase{6, 1000}, HcCase{3, 1004}),
                         [](const ::testing::TestParamInfo<HcCase>& i) {
                           return std::to_string(i.param.nc) + "x" + std::to_string(i.param.E);
                         });

// Attention over a wrapped raw ring plus compressed rows, all or selected, vs attention_core.
// 16 heads fill two blocks of kAttnHeads; 12 leave the second block half empty.
class AttentionHeads : public ::testing::TestWithParam<int64_t> {};

TEST_P(AttentionHeads, MatchesCpu) {
  REQUIRE_GPU();
  ds4::model::HParams hp;
  hp.head_dim = 512;
  hp.n_head = GetParam();
  hp.window = 128;
  hp.n_rope = 64;
  const int64_t D = hp.head_dim, NH = hp.n_head, pos = 1000, ratio = 4, cap = 300, K = 64;
  const auto rope = ds4::model::Rope::plain(hp.n_rope, 10000.0f);
  auto q = randv(NH * D, 40, 0.05f), raw = randv((pos + 1) * D, 41), comp = randv((pos / ratio + 1) * D, 42);
  auto sinks = randv(NH, 43);
  std::vector<float> ring(cap * D);
  for (int64_t p = pos - cap + 1; p <= pos; ++p) std::copy_n(raw.data() + p * D, D, ring.data() + (p % cap) * D);
  std::vector<int32_t> sel(K);
  std::mt19937 g(44);
  for (auto& s : sel) s = static_cast<int32_t>(g() % ((pos + 1) / ratio));
  auto dq = up(q), dring = up(ring), dcomp = up(comp), dsinks = up(sinks), dom = up(rope.omega()), dsel = up(sel);
  auto dn = up(std::vector<int32_t>{static_cast<int32_t>(K)});
  const int64_t max_rows = hp.window + (pos + 1) / ratio + 1;
  const fwd::AttnShape shape{NH, D, hp.n_rope, hp.window, cap, ratio, max_rows};
  DeviceBuffer sf(fwd::attention_scratch_floats(shape) * 4), dout(NH * D * 4);
  auto c = ctl_at(pos);
  for (int with_sel = 0; with_sel < 2; ++with_sel) {
    ds4::model::AttentionInputs in;
    in.q = q.data();
    in.T = 1;
    in.p0 = pos;
    in.raw = raw.data();
    in.comp = comp.data();
    in.ratio = ratio;
    int32_t nsel = static_cast<int32_t>(K);
    if (with_sel) {
      in.sel = sel.data();
      in.n_sel = &nsel;
      in.sel_stride = K;
    }
    std::vector<float> ref(NH * D);
    ds4::model::attention_core(hp, sinks.data(), in, ref.data(), nullptr);
    for (int64_t h = 0; h < NH; ++h) rope.apply(ref.data() + h * D, D, pos, true);
    // 378 rows without the selection, 192 with it: several chunks of kAttnChunk, the last
    // one partial, merged with the sink.
    fwd::attention(shape, dq.as<float>(), dring.as<float>(), dcomp.as<float>(), with_sel ? dsel.as<int32_t>() : nullptr,
                   dn.as<int32_t>(), dsinks.as<float>(), dom.as<float>(), sf.as<float>(), dout.as<float>(), ctl(c),
                   nullptr);
    EXPECT_LT(max_rel(down<float>(dout, NH * D), ref), 1e-5) << "selection " << with_sel;
  }
}
INSTANTIATE_TEST_SUITE_P(ForwardKernels, AttentionHeads, ::testing::Values(16, 12));

// The decode query/KV launch: RMSNorm(q_a x) (q_lora 1024) with its Q8_0 activation and the
// KV row into the ring (norm, RoPE, FP8) as two jobs of one rows_finish_jobs launch, vs
// rmsnorm + rows_finish (the same arithmetic: identical bits) and the CPU quantizer.
TEST(ForwardKernels, RowsFinishJobsEqualSeparateLaunches) {
  REQUIRE_GPU();
  const int64_t Q = 1024, D = 512, n_rope = 64, cap = 7, pos = 4321;
  const auto rope = ds4::model::Rope::yarn(n_rope, 160000.0f, 16.0f, 65536.0f, 32.0f, 1.0f);
  auto qa = up(randv(Q, 50, 3.0f)), qw = up(randv(Q, 51)), kv = up(randv(D, 52, 2.0f)), kw = up(randv(D, 53));
  auto om = up(rope.omega());
  auto c = ctl_at(pos);
  fwd::RowFinish qf;
  qf.d = Q;
  qf.norm = qw.as<float>();
  fwd::RowFinish kf;
  kf.d = D;
  kf.n_rope = n_rope;
  kf.n_nope = D - n_rope;
  kf.norm = kw.as<float>();
  kf.sim = fwd::Sim::Fp8Nope;
  const std::vector<float> zero(cap * D, 0.0f);
  DeviceBuffer qr1(Q * 4), qr2(Q * 4), act(ds4::cpu::activation_bytes(ds4::GgmlType::Q8_0, Q));
  auto ring1 = up(zero), ring2 = up(zero);
  const fwd::RowsJob jobs[] = {{qf, qa.as<float>(), qr1.as<float>(), 1, Q, 0, act.data()},
                               {kf, kv.as<float>(), ring1.as<float>(), 1, D, cap, nullptr}};
  fwd::rows_finish_jobs(jobs, 2, om.as<float>(), ctl(c), nullptr);
  fwd::rmsnorm(qa.as<float>(), qw.as<float>(), qr2.as<float>(), Q, 1, 1e-6f, nullptr);
  fwd::rows_finish(kf, om.as<float>(), kv.as<float>(), ring2.as<float>(), 1, D, cap, ctl(c), nullptr);
  const auto got_qr = down<float>(qr1, Q), want_qr = down<float>(qr2, Q);
  EXPECT_EQ(std::memcmp(got_qr.data(), want_qr.data(), Q * 4), 0) << "qr";
  const auto got_ring = down<float>(ring1, cap * D), want_ring = down<float>(ring2, cap * D);
  EXPECT_EQ(std::memcmp(got_ring.data(), want_ring.data(), cap * D * 4), 0) << "KV ring";
  EXPECT_NE(got_ring[(pos % cap) * D], 0.0f);
  std::vector<uint8_t> want(act.size());
  ds4::cpu::quantize_activation(ds4::GgmlType::Q8_0, got_qr.data(), want.data(), Q);
  EXPECT_EQ(std::memcmp(down<uint8_t>(act, act.size()).data(), want.data(), act.size()), 0) << "Q8_0 of qr";
}

TEST(ForwardKernels, CompressorWindowMatchesCpu) {
  REQUIRE_GPU();
  const int64_t d = 512, c = 2, ratio = 4, width = c * d, cap = 50, n_rope = 64, win = 37;
  const int64_t pos = (win + 1) * ratio - 1;
  const auto rope = ds4::model::Rope::plain(n_rope, 10000.0f);
  auto kv = randv((pos + 1) * width, 50), sc = randv((pos + 1) * width, 51, 2.0f);
  std::vector<float> rkv(cap * width), rsc(cap * width);
  for (int64_t p = pos - cap + 1; p <= pos; ++p) {
    std::copy_n(kv.data() + p * width, width, rkv.data() + (p % cap) * width);
    std::copy_n(sc.data() + p * width, width, rsc.data() + (p % cap) * width);
  }
  ds4::model::CompressorWeights w;
  w.norm = randv(d, 52);
  w.d = d;
  w.c = c;
  std::vector<float> ref(d);
  ds4::model::compressor_pool(ratio, c, d, kv.data() + (win - 1) * ratio * width, sc.data() + (win - 1) * ratio * width,
                              kv.data() + win * ratio * width, sc.data() + win * ratio * width, ref.data());
  ds4::model::compressor_finish(w, rope, win * ratio, d - n_rope, ds4::model::RowSim::None, 1e-6f, ref.data());
  auto drkv = up(rkv), drsc = up(rsc), dnorm = up(w.norm), dom = up(rope.omega());
  DeviceBuffer rows((win + 1) * d * 4);
  fwd::RowFinish f;
  f.d = d;
  f.n_rope = n_rope;
  f.n_nope = d - n_rope;
  f.norm = dnorm.as<float>();
  auto cc = ctl_at(pos);
  fwd::comp_emit(f, dom.as<float>(), drkv.as<float>(), drsc.as<float>(), cap, ratio, c, rows.as<float>(), ctl(cc),
                 nullptr);
  const auto all = down<float>(rows, (win + 1) * d);
  EXPECT_LT(max_rel(std::vector<float>(all.begin() + win * d, all.end()), ref), 2e-6);
}

// The decode step's fused compressor launch (both compressors of a layer: store + pool in one
// block each) against comp_store + comp_emit per compressor, on the same random rings: the
// rings and the emitted rows must agree bit for bit. Ratio 4 (overlapped, the attention
// compressor with FP8 and the indexer's with Hadamard + FP4) at a step that completes a window
// (window 0 without its A half, and a later one on a wrapped ring) and one that does not;
// ratio 128 (one compressor, c = 1).
TEST(ForwardKernels, FusedCompressorStepEqualsStoreThenEmit) {
  REQUIRE_GPU();
  const int64_t n_rope = 64;
  const auto rope = ds4::model::Rope::yarn(n_rope, 160000.0f, 16.0f, 65536.0f, 32.0f, 1.0f);
  auto om = up(rope.omega());
  struct Comp {
    int64_t d;
    int c;
    fwd::Sim sim;
    int64_t n_nope;
  };
  auto check = [&](int64_t ratio, int64_t cap, int64_t pos, std::vector<Comp> comps, uint32_t seed) {
    SCOPED_TRACE(testing::Message() << "ratio " << ratio << " pos " << pos << " compressors " << comps.size());
    const int64_t n_rows = pos / ratio + 1;
    struct Bufs {
      DeviceBuffer kv, sc, ape, norm, ring_kv[2], ring_sc[2], rows[2];
      int64_t width, d;
    };
    std::vector<Bufs> b(comps.size());
    std::vector<fwd::CompJob> fused(comps.size()), plain(comps.size());
    for (size_t i = 0; i < comps.size(); ++i) {
      const Comp& cp = comps[i];
      const int64_t w = cp.c * cp.d;
      const uint32_t sd = seed + 10 * static_cast<uint32_t>(i);
      b[i].width = w;
      b[i].d = cp.d;
      b[i].kv = up(randv(w, sd));
      b[i].sc = up(randv(w, sd + 1, 2.0f));
      b[i].ape = up(randv(ratio * w, sd + 2, 0.5f));
      b[i].norm = up(randv(cp.d, sd + 3));
      const auto rkv = randv(cap * w, sd + 4), rsc = randv(cap * w, sd + 5, 2.0f);
      const auto rows = randv(n_rows * cp.d, sd + 6);
      for (int k = 0; k < 2; ++k) {
        b[i].ring_kv[k] = up(rkv);
        b[i].ring_sc[k] = up(rsc);
        b[i].rows[k] = up(rows);
      }
      for (int k = 0; k < 2; ++k) {
        fwd::CompJob& j = k == 0 ? fused[i] : plain[i];
        j.f.d = cp.d;
        j.f.n_rope = n_rope;
        j.f.n_nope = cp.n_nope;
        j.f.norm = b[i].norm.as<float>();
        j.f.sim = cp.sim;
        j.c = cp.c;
        j.kv = b[i].kv.as<float>();
        j.sc = b[i].sc.as<float>();
        j.ape = b[i].ape.as<float>();
        j.ring_kv = b[i].ring_kv[k].as<float>();
        j.ring_sc = b[i].ring_sc[k].as<float>();
        j.rows = b[i].rows[k].as<float>();
      }
    }
    auto cc = ctl_at(pos);
    fwd::comp_store_emit(fused.data(), static_cast<int>(fused.size()), om.as<float>(), cap, ratio, ctl(cc), nullptr);
    for (const fwd::CompJob& j : plain) {
      fwd::comp_store(j.kv, j.sc, j.ape, j.c * j.f.d, ratio, j.ring_kv, j.ring_sc, cap, ctl(cc), nullptr);
      fwd::comp_emit(j.f, om.as<float>(), j.ring_kv, j.ring_sc, cap, ratio, j.c, j.rows, ctl(cc), nullptr);
    }
    auto same_bits = [](const DeviceBuffer& x, const DeviceBuffer& y, size_t n, const char* what) {
      const auto a = down<float>(x, n), r = down<float>(y, n);
      EXPECT_EQ(std::memcmp(a.data(), r.data(), n * 4), 0) << what;
    };
    for (size_t i = 0; i < comps.size(); ++i) {
      SCOPED_TRACE(testing::Message() << "compressor " << i);
      same_bits(b[i].ring_kv[0], b[i].ring_kv[1], static_cast<size_t>(cap * b[i].width), "ring kv");
      same_bits(b[i].ring_sc[0], b[i].ring_sc[1], static_cast<size_t>(cap * b[i].width), "ring score");
      same_bits(b[i].rows[0], b[i].rows[1], static_cast<size_t>(n_rows * b[i].d), "rows");
    }
    // A completed window must have changed its row (the comparison is not of untouched buffers).
    if ((pos + 1) % ratio == 0) {
      const int64_t w = (pos + 1) / ratio - 1, d = b[0].d;
      const auto before = randv(n_rows * d, seed + 6), after = down<float>(b[0].rows[0], n_rows * d);
      EXPECT_NE(std::memcmp(before.data() + w * d, after.data() + w * d, d * 4), 0);
    }
  };
  const std::vector<Comp> csa = {{512, 2, fwd::Sim::Fp8Nope, 448}, {128, 2, fwd::Sim::HadamardFp4, 0}};
  check(4, 50, 3, csa, 300);    // window 0: no A half
  check(4, 50, 151, csa, 310);  // window 37 on a wrapped ring
  check(4, 50, 149, csa, 320);  // completes nothing: store only
  check(4, 50, 151, {{128, 2, fwd::Sim::None, 0}}, 330);
  check(128, 300, 383, {{512, 1, fwd::Sim::Fp8Nope, 448}}, 340);
}

TEST(ForwardKernels, IndexerSelectionMatchesCpu) {
  REQUIRE_GPU();
  const int64_t NI = 64, DI = 128, ratio = 4, K = 512, pos = 8191, n_vis = (pos + 1) / ratio;
  auto q = randv(NI * DI, 60), wts = randv(NI, 61), keys = randv(n_vis * DI, 62);
  const float wscale = 1.0f / std::sqrt(static_cast<float>(NI * DI));
  std::vector<float> scores(n_vis);
  for (int64_t w = 0; w < n_vis; ++w) {  // indexer.cpp's scoring
    double s = 0.0;
    for (int64_t h = 0; h < NI; ++h) {
      float dd = 0.0f;
      for (int64_t i = 0; i < DI; ++i) dd += q[h * DI + i] * keys[w * DI + i];
      if (dd > 0.0f) s += static_cast<double>(wts[h] * wscale) * dd;
    }
    scores[w] = static_cast<float>(s);
  }
  std::vector<int32_t> ref(K);
  ds4::model::topk_lower_index(scores.data(), n_vis, K, ref.data());
  auto dq = up(q), dw = up(wts), dk = up(keys);
  DeviceBuffer dsc(n_vis * 4), dsel(K * 4), dn(4);
  auto c = ctl_at(pos);
  fwd::idx_select(dq.as<float>(), dw.as<float>(), wscale, NI, DI, dk.as<float>(), ratio, K, dsc.as<float>(),
                  dsel.as<int32_t>(), dn.as<int32_t>(), ctl(c), nullptr);
  EXPECT_LT(max_rel(down<float>(dsc, n_vis), scores), 1e-5);
  EXPECT_EQ(down<int32_t>(dn, 1)[0], K);
  EXPECT_EQ(down<int32_t>(dsel, K), ref);
  // Fewer rows than k: all of them, in order.
  auto c2 = ctl_at(4 * 10 + 2);
  fwd::idx_select(dq.as<float>(), dw.as<float>(), wscale, NI, DI, dk.as<float>(), ratio, K, dsc.as<float>(),
                  dsel.as<int32_t>(), dn.as<int32_t>(), ctl(c2), nullptr);
  EXPECT_EQ(down<int32_t>(dn, 1)[0], 10);
  const auto few = down<int32_t>(dsel, 10);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(few[i], i);
}

// What the decode step's latency-bound launches cost at Flash shapes, one step's worth each
// (2K context): every call repeated 32 times in a CUDA graph (as in the decode step: PDL
// edges, no host launch gaps), microseconds per call, median of 9 graph launches. Printed for
// the notes (docs/cuda.md); the A/B switches (DS4_CUDA_NO_BATCHED_LOADS, DS4_CUDA_NO_PDL) time
// the other paths in the same binary. Asserts that every output is finite.
// Microseconds per call of `call` in a CUDA graph of 32 calls on stream st (median of 9
// replays): decode launches as the session's graph runs them. The first call runs outside
// the capture (first-use setup such as a shared-memory opt-in).
float graph_us_per_call(void* st, const std::function<void(void*)>& call) {
  constexpr int kCalls = 32;
  call(st);
  ds4::cuda::Graph g(st, [&](void* s) {
    for (int i = 0; i < kCalls; ++i) call(s);
  });
  std::vector<float> t;
  for (int r = 0; r < 9; ++r) {
    ds4::cuda::EventTimer ev;
    ev.start(st);
    g.launch(st);
    ev.stop(st);
    t.push_back(ev.elapsed_ms() * 1000.0f / kCalls);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

TEST(ForwardKernels, PrintsDecodeLaunchTimes) {
  REQUIRE_GPU();
  ds4::cuda::Stream stream;
  void* st = stream.handle();
  auto per_call_us = [&](const std::function<void(void*)>& call) { return graph_us_per_call(st, call); };
  auto all_finite = [](const std::vector<float>& v) {
    return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
  };

  // HC pre + norm at nc 4 x E 4096, F16 fn (the q2 recipe), with and without the pending hc_post.
  const int nc = 4;
  const int64_t E = 4096, n_mix = (2 + nc) * nc;
  const fwd::HcShape hs{nc, E, 1e-6f, 1e-6f, 20};
  std::vector<float> rounded;
  const auto fn = fn_bytes_as(ds4::GgmlType::F16, randv(n_mix * nc * E, 70, 0.02f), rounded);
  auto dfn = up(fn), dH = up(randv(nc * E, 71)), dH2 = up(randv(nc * E, 72)), dbase = up(randv(n_mix, 73, 0.5f));
  auto dscale = up(std::vector<float>{0.7f, 1.3f, 0.9f}), dnorm = up(randv(E, 74)), df = up(randv(E, 75));
  DeviceBuffer da(E * 4), dx(E * 4), dpost(nc * 4), dcomb(nc * nc * 4), dHout(nc * E * 4);
  DeviceBuffer hscr(fwd::hc_fused_scratch_bytes(hs));
  hscr.fill_bytes(0);
  auto pre = [&](void* s) {
    fwd::hc_pre_fused(hs, ds4::GgmlType::F16, dfn.as<uint8_t>(), dH.as<float>(), dbase.as<float>(), dscale.as<float>(),
                      dnorm.as<float>(), da.as<float>(), dx.as<float>(), dpost.as<float>(), dcomb.as<float>(),
                      hscr.as<uint8_t>(), s);
  };
  const float pre_us = per_call_us(pre);
  const float post_pre_us = per_call_us([&](void* s) {
    fwd::hc_post_pre_fused(hs, {df.as<float>(), dH2.as<float>(), dpost.as<float>(), dcomb.as<float>()},
                           dHout.as<float>(), ds4::GgmlType::F16, dfn.as<uint8_t>(), dbase.as<float>(),
                           dscale.as<float>(), dnorm.as<float>(), da.as<float>(), dx.as<float>(), dpost.as<float>(),
                           dcomb.as<float>(), hscr.as<uint8_t>(), s);
  });
  const float post_us = per_call_us([&](void* s) {
    fwd::hc_post(hs, df.as<float>(), dH2.as<float>(), dpost.as<float>(), dcomb.as<float>(), dHout.as<float>(), s);
  });
  EXPECT_TRUE(all_finite(down<float>(dx, E)));

  // Attention at 2K context: 64 heads x 512, window 128 + 512 selected compressed rows.
  const int64_t NH = 64, D = 512, pos = 2047, ratio = 4, cap = 128, K = 512;
  const auto rope = ds4::model::Rope::plain(64, 10000.0f);
  auto dq = up(randv(NH * D, 76, 0.05f)), dring = up(randv(cap * D, 77)), dcomp = up(randv((pos + 1) / ratio * D, 78));
  auto dsinks = up(randv(NH, 79)), dom = up(rope.omega());
  std::vector<int32_t> sel(K);
  for (int64_t i = 0; i < K; ++i) sel[i] = static_cast<int32_t>(i);
  auto dsel = up(sel), dn = up(std::vector<int32_t>{static_cast<int32_t>(K)});
  const fwd::AttnShape as{NH, D, 64, 128, cap, ratio, 128 + K};
  DeviceBuffer sf(fwd::attention_scratch_floats(as) * 4), dout(NH * D * 4);
  auto c = ctl_at(pos);
  const float attn_us = per_call_us([&](void* s) {
    fwd::attention(as, dq.as<float>(), dring.as<float>(), dcomp.as<float>(), dsel.as<int32_t>(), dn.as<int32_t>(),
                   dsinks.as<float>(), dom.as<float>(), sf.as<float>(), dout.as<float>(), ctl(c), s);
  });
  EXPECT_TRUE(all_finite(down<float>(dout, NH * D)));

  // The q/kv finish launch: RMSNorm(q_a x) (1024) and the KV row into the ring.
  auto dqa = up(randv(1024, 80)), dkv = up(randv(D, 81)), dqn = up(randv(1024, 82));
  DeviceBuffer dqr(1024 * 4), dring2(cap * D * 4);
  fwd::RowFinish qf;
  qf.d = 1024;
  qf.norm = dqn.as<float>();
  fwd::RowFinish kf;
  kf.d = D;
  kf.n_rope = 64;
  kf.n_nope = D - 64;
  kf.sim = fwd::Sim::Fp8Nope;  // official numerics, as the benchmarks run
  const fwd::RowsJob jobs[] = {{qf, dqa.as<float>(), dqr.as<float>(), 1, 1024, 0, nullptr},
                               {kf, dkv.as<float>(), dring2.as<float>(), 1, D, cap, nullptr}};
  const float rows_us = per_call_us([&](void* s) { fwd::rows_finish_jobs(jobs, 2, dom.as<float>(), ctl(c), s); });
  EXPECT_TRUE(all_finite(down<float>(dqr, 1024)));

  // The indexer's scores and top-k at 8K context (2048 compressed rows, 64 x 128 query).
  const int64_t NI = 64, DI = 128, n_vis = 2048;
  auto diq = up(randv(NI * DI, 83)), diw = up(randv(NI, 84)), dik = up(randv(n_vis * DI, 85));
  DeviceBuffer dsc(n_vis * 4), disel(K * 4), din(4);
  auto c8 = ctl_at(n_vis * ratio - 1);
  const float idx_us = per_call_us([&](void* s) {
    fwd::idx_select(diq.as<float>(), diw.as<float>(), 0.01f, NI, DI, dik.as<float>(), ratio, K, dsc.as<float>(),
                    disel.as<int32_t>(), din.as<int32_t>(), ctl(c8), s);
  });
  EXPECT_TRUE(all_finite(down<float>(dsc, n_vis)));

  std::printf(
      "[decode launches, us per call in a graph] hc_pre_fused %.2f, hc_post_pre_fused %.2f, hc_post alone %.2f; "
      "attention (640 rows, 64 heads) %.2f; rows_finish_jobs (q_a norm + kv, FP8) %.2f; idx_select (2048 rows) %.2f\n",
      pre_us, post_pre_us, post_us, attn_us, rows_us, idx_us);
}

TEST(ForwardKernels, RoutingMatchesCpu) {
  REQUIRE_GPU();
  ds4::model::HParams hp;
  hp.n_expert = 256;
  hp.n_expert_used = 6;
  hp.n_hash_layers = 1;
  hp.expert_weights_scale = 1.5f;
  hp.expert_weights_norm = true;
  auto logits = randv(hp.n_expert, 70, 2.0f);
  logits[3] = logits[4];  // a tie
  const int32_t vocab = 10, token = 7;
  std::vector<int32_t> table(vocab * hp.n_expert_used);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>((i * 37) % hp.n_expert);
  ds4::model::LayerWeights L;
  L.router_bias = randv(hp.n_expert, 71, 0.1f);
  L.tid2eid.type = ds4::GgmlType::I32;
  L.tid2eid.ne = {hp.n_expert_used, vocab};
  L.tid2eid.data = reinterpret_cast<const uint8_t*>(table.data());
  L.tid2eid.row_bytes = hp.n_expert_used * 4;
  auto dl = up(logits), db = up(L.router_bias), dt = up(table);
  DeviceBuffer ids(6 * 4), w(6 * 4);
  auto c = ctl_at(5, token);
  for (int il = 0; il < 2; ++il) {  // layer 0 hashed, layer 1 biased top-k
    L.il = il;
    std::vector<int32_t> rids(6);
    std::vector<float> rw(6);
    ds4::model::route(hp, L, logits.data(), token, rids.data(), rw.data());
    fwd::route(dl.as<float>(), hp.n_expert, 6, il == 0 ? nullptr : db.as<float>(), il == 0 ? dt.as<int32_t>() : nullptr,
               true, 1.5f, ctl(c), ids.as<int32_t>(), w.as<float>(), nullptr);
    EXPECT_EQ(down<int32_t>(ids, 6), rids) << "layer " << il;
    EXPECT_LT(max_rel(down<float>(w, 6), rw), 1e-6) << "layer " << il;
  }
  // An exact tie between two experts that are both chosen, in different warps of the
  // block-wide argmax (100 and 200): the lower index comes first, as on the CPU.
  logits[100] = logits[200] = 9.0f;
  L.router_bias[100] = L.router_bias[200] = 0.05f;
  L.il = 1;
  auto dl2 = up(logits), db2 = up(L.router_bias);
  std::vector<int32_t> rids(6);
  std::vector<float> rw(6);
  ds4::model::route(hp, L, logits.data(), token, rids.data(), rw.data());
  ASSERT_EQ(rids[0], 100);
  ASSERT_EQ(rids[1], 200);
  fwd::route(dl2.as<float>(), hp.n_expert, 6, db2.as<float>(), nullptr, true, 1.5f, ctl(c), ids.as<int32_t>(),
             w.as<float>(), nullptr);
  EXPECT_EQ(down<int32_t>(ids, 6), rids);
  EXPECT_LT(max_rel(down<float>(w, 6), rw), 1e-6);
}

// The fused router (product + routing in one launch, the last block routing) against the
// product launch + route launch it replaces: the same logits, ids and weights bit for bit, for
// F16 and BF16 weights, 256 experts (split rows) and 16, biased top-k and hash routing, twice
// on the same counter (the last block sets it back to 0).
TEST(ForwardKernels, FusedRouterEqualsProductAndRoute) {
  REQUIRE_GPU();
  const int64_t ncols = 4096, K = 6, vocab = 10;
  const int32_t token = 7;
  for (const auto type : {ds4::GgmlType::F16, ds4::GgmlType::BF16}) {
    for (const int64_t NE : {256, 16}) {
      auto wf = randv(static_cast<size_t>(NE * ncols), 90, 0.05f);
      const auto x = randv(static_cast<size_t>(ncols), 91);
      auto bias = randv(static_cast<size_t>(NE), 92, 0.1f);
      // An exact tie among the chosen: rows 3 and NE - 4 equal, aligned with x (the largest
      // logits), the same bias: the lower index comes first.
      for (const int64_t r : {int64_t{3}, NE - 4})
        for (int64_t i = 0; i < ncols; ++i) wf[static_cast<size_t>(r * ncols + i)] = x[static_cast<size_t>(i)] >= 0 ? 0.05f : -0.05f;
      bias[static_cast<size_t>(NE - 4)] = bias[3];
      std::vector<uint16_t> wh(wf.size());
      for (size_t i = 0; i < wf.size(); ++i)
        wh[i] = type == ds4::GgmlType::F16 ? ds4::f32_to_fp16(wf[i]) : ds4::f32_to_bf16(wf[i]);
      std::vector<int32_t> table(static_cast<size_t>(vocab * K));
      for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>((i * 37) % NE);
      auto dw = up(wh), dx = up(x), dbias = up(bias);
      auto dt = up(table);
      auto c = ctl_at(5, token);
      ASSERT_TRUE(fwd::fused_router_fits(type, dw.data(), NE, ncols, K));
      DeviceBuffer logits0(NE * 4), ids0(K * 4), w0(K * 4), logits1(NE * 4), ids1(K * 4), w1(K * 4), counter(4);
      counter.fill_bytes(0);
      for (const bool hash : {false, true}) {
        fwd::RouteArgs a;
        a.NE = NE;
        a.K = K;
        a.bias = hash ? nullptr : dbias.as<float>();
        a.tid2eid = hash ? dt.as<int32_t>() : nullptr;
        a.norm = true;
        a.scale = 1.5f;
        ds4::cuda::matvec(type, dw.data(), NE, ncols, dx.as<float>(), logits0.as<float>(), nullptr);
        fwd::route(logits0.as<float>(), NE, K, a.bias, a.tid2eid, a.norm, a.scale, ctl(c), ids0.as<int32_t>(),
                   w0.as<float>(), nullptr);
        for (int launch = 0; launch < 2; ++launch) {
          logits1.fill_bytes(0xFF);
          ids1.fill_bytes(0xFF);
          w1.fill_bytes(0xFF);
          a.ids = ids1.as<int32_t>();
          a.weights = w1.as<float>();
          fwd::fused_router(type, dw.data(), ncols, dx.as<float>(), logits1.as<float>(), counter.as<uint32_t>(), a,
                            ctl(c), nullptr);
          const std::string what = std::string(ds4::type_name(type)) + " NE " + std::to_string(NE) +
                                   (hash ? " hash" : " biased") + " launch " + std::to_string(launch);
          EXPECT_TRUE(identical_bits(down<float>(logits1, NE), down<float>(logits0, NE))) << what;
          EXPECT_EQ(down<int32_t>(ids1, K), down<int32_t>(ids0, K)) << what;
          EXPECT_TRUE(identical_bits(down<float>(w1, K), down<float>(w0, K))) << what;
          if (!hash) {
            EXPECT_EQ(down<int32_t>(ids1, 2), (std::vector<int32_t>{3, static_cast<int32_t>(NE - 4)})) << what;
          }
          EXPECT_EQ(down<uint32_t>(counter, 1).at(0), 0u) << what;
        }
        if (type == ds4::GgmlType::F16 && NE == 256 && !hash) {  // Flash's router (q2 recipe)
          ds4::cuda::Stream stream;
          const float separate_us = graph_us_per_call(stream.handle(), [&](void* s) {
            ds4::cuda::matvec(type, dw.data(), NE, ncols, dx.as<float>(), logits0.as<float>(), nullptr, s);
            fwd::route(logits0.as<float>(), NE, K, a.bias, a.tid2eid, a.norm, a.scale, ctl(c), ids0.as<int32_t>(),
                       w0.as<float>(), s);
          });
          const float fused_us = graph_us_per_call(stream.handle(), [&](void* s) {
            fwd::fused_router(type, dw.data(), ncols, dx.as<float>(), logits1.as<float>(), counter.as<uint32_t>(), a,
                              ctl(c), s);
          });
          std::printf("[router 256 x 4096 F16, us per call in a graph] product + route %.2f, fused %.2f\n", separate_us,
                      fused_us);
          EXPECT_EQ(down<uint32_t>(counter, 1).at(0), 0u);
        }
      }
    }
  }
}

// The token dimension of the batched prefill (forward_kernels.h `tokens`): one launch over T
// tokens at scattered positions gives bit-identical results to T one-token launches on the
// tokens' rows, for every kernel that has it.
TEST(ForwardKernels, TokenBatchedLaunchesEqualPerTokenLaunches) {
  REQUIRE_GPU();
  const int64_t T = 3, nc = 4, E = 1024, n_mix = (2 + nc) * nc, NH = 4, D = 128, n_rope = 64, cap = 100;
  const int64_t width = 64, ratio = 4, NE = 256, K = 6, vocab = 10;
  std::vector<fwd::StepCtl> ctls(T);
  const int64_t pos[T] = {5, 9, 70};
  const int32_t tok[T] = {1, 7, 3};
  for (int64_t t = 0; t < T; ++t) {
    ctls[t].pos = pos[t];
    ctls[t].token = tok[t];
    ctls[t].index = static_cast<int32_t>(t);
  }
  auto dctl = up(ctls);
  const fwd::StepCtl* c0 = dctl.as<fwd::StepCtl>();
  // Each kernel runs once batched (buffers *b) and once per token (buffers *s); the two
  // results must agree bit for bit.
  auto same_bits = [](const DeviceBuffer& a, const DeviceBuffer& b, size_t bytes, const char* what) {
    const auto x = down<uint8_t>(a, bytes), y = down<uint8_t>(b, bytes);
    EXPECT_EQ(std::memcmp(x.data(), y.data(), bytes), 0) << what;
  };

  {  // embedding
    auto table = up(randv(vocab * E, 80));
    DeviceBuffer hb(T * nc * E * 4), hs(T * nc * E * 4);
    fwd::embed(ds4::GgmlType::F32, table.data(), E * 4, E, nc, c0, hb.as<float>(), nullptr, T);
    for (int64_t t = 0; t < T; ++t)
      fwd::embed(ds4::GgmlType::F32, table.data(), E * 4, E, nc, c0 + t, hs.as<float>() + t * nc * E, nullptr);
    same_bits(hb, hs, T * nc * E * 4, "embed");
  }
  {  // HC pre and post
    const fwd::HcShape sh{static_cast<int>(nc), E, 1e-6f, 1e-6f, 20};
    auto mix = up(randv(T * n_mix, 81, 0.5f)), H = up(randv(T * nc * E, 82)), base = up(randv(n_mix, 83, 0.5f));
    auto scale = up(std::vector<float>{0.7f, 1.3f, 0.9f}), f = up(randv(T * E, 84));
    DeviceBuffer ab(T * E * 4), as(T * E * 4), pb(T * nc * 4), ps(T * nc * 4), cb(T * nc * nc * 4),
        cs(T * nc * nc * 4), ob(T * nc * E * 4), os(T * nc * E * 4);
    fwd::hc_pre(sh, mix.as<float>(), H.as<float>(), base.as<float>(), scale.as<float>(), ab.as<float>(),
                pb.as<float>(), cb.as<float>(), nullptr, T);
    fwd::hc_post(sh, f.as<float>(), H.as<float>(), pb.as<float>(), cb.as<float>(), ob.as<float>(), nullptr, T);
    for (int64_t t = 0; t < T; ++t) {
      fwd::hc_pre(sh, mix.as<float>() + t * n_mix, H.as<float>() + t * nc * E, base.as<float>(), scale.as<float>(),
                  as.as<float>() + t * E, ps.as<float>() + t * nc, cs.as<float>() + t * nc * nc, nullptr);
      fwd::hc_post(sh, f.as<float>() + t * E, H.as<float>() + t * nc * E, ps.as<float>() + t * nc,
                   cs.as<float>() + t * nc * nc, os.as<float>() + t * nc * E, nullptr);
    }
    same_bits(ab, as, T * E * 4, "hc_pre a");
    same_bits(pb, ps, T * nc * 4, "hc_pre post");
    same_bits(cb, cs, T * nc * nc * 4, "hc_pre comb");
    same_bits(ob, os, T * nc * E * 4, "hc_post");
  }
  {  // head norm + RoPE in place, KV norm + RoPE + FP8 into the ring
    const auto rope = ds4::model::Rope::yarn(n_rope, 160000.0f, 16.0f, 65536.0f, 32.0f, 1.0f);
    const auto q = randv(T * NH * D, 85, 2.0f);
    auto om = up(rope.omega()), w = up(randv(D, 86));
    auto qb = up(q), qs = up(q);
    fwd::RowFinish rf;
    rf.d = D;
    rf.n_rope = n_rope;
    rf.norm = w.as<float>();
    fwd::rows_finish(rf, om.as<float>(), qb.as<float>(), qb.as<float>(), NH, D, 0, c0, nullptr, T);
    for (int64_t t = 0; t < T; ++t)
      fwd::rows_finish(rf, om.as<float>(), qs.as<float>() + t * NH * D, qs.as<float>() + t * NH * D, NH, D, 0, c0 + t,
                       nullptr);
    same_bits(qb, qs, T * NH * D * 4, "rows_finish heads");
    rf.n_nope = D - n_rope;
    rf.sim = fwd::Sim::Fp8Nope;
    auto kv = up(randv(T * D, 87));
    auto rb = up(std::vector<float>(cap * D, 0.0f)), rs = up(std::vector<float>(cap * D, 0.0f));
    fwd::rows_finish(rf, om.as<float>(), kv.as<float>(), rb.as<float>(), 1, D, cap, c0, nullptr, T);
    for (int64_t t = 0; t < T; ++t)
      fwd::rows_finish(rf, om.as<float>(), kv.as<float>() + t * D, rs.as<float>(), 1, D, cap, c0 + t, nullptr);
    same_bits(rb, rs, cap * D * 4, "rows_finish ring");
  }
  {  // compressor ring store
    auto kv = up(randv(T * width, 88)), sc = up(randv(T * width, 89)), ape = up(randv(ratio * width, 90));
    const std::vector<float> zero(cap * width, 0.0f);
    auto kb = up(zero), ks = up(zero), sb = up(zero), ss = up(zero);
    fwd::comp_store(kv.as<float>(), sc.as<float>(), ape.as<float>(), width, ratio, kb.as<float>(), sb.as<float>(), cap,
                    c0, nullptr, T);
    for (int64_t t = 0; t < T; ++t)
      fwd::comp_store(kv.as<float>() + t * width, sc.as<float>() + t * width, ape.as<float>(), width, ratio,
                      ks.as<float>(), ss.as<float>(), cap, c0 + t, nullptr);
    same_bits(kb, ks, cap * width * 4, "comp_store kv");
    same_bits(sb, ss, cap * width * 4, "comp_store score");
  }
  {  // routing: biased top-k and hash rows by token
    std::vector<int32_t> table(vocab * K);
    for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>((i * 37) % NE);
    auto logits = up(randv(T * NE, 91)), bias = up(randv(NE, 92, 0.1f)), tid = up(table);
    for (bool hash : {false, true}) {
      DeviceBuffer ib(T * K * 4), is(T * K * 4), wb(T * K * 4), ws(T * K * 4);
      const float* b = hash ? nullptr : bias.as<float>();
      const int32_t* t2e = hash ? tid.as<int32_t>() : nullptr;
      fwd::route(logits.as<float>(), NE, K, b, t2e, true, 1.5f, c0, ib.as<int32_t>(), wb.as<float>(), nullptr, T);
      for (int64_t t = 0; t < T; ++t)
        fwd::route(logits.as<float>() + t * NE, NE, K, b, t2e, true, 1.5f, c0 + t, is.as<int32_t>() + t * K,
                   ws.as<float>() + t * K, nullptr);
      same_bits(ib, is, T * K * 4, hash ? "route ids (hash)" : "route ids");
      same_bits(wb, ws, T * K * 4, hash ? "route weights (hash)" : "route weights");
    }
  }
  // Indexer and attention: at ratio 4 and top-k 4 the tokens see 1, 2 and 17 compressed rows
  // (the first two fewer than k: all rows in order, the last a scored top-k selection), and
  // 6, 10 and 64 window rows (the last over several attention chunks).
  const auto rope = ds4::model::Rope::yarn(n_rope, 160000.0f, 16.0f, 65536.0f, 32.0f, 1.0f);
  auto om = up(rope.omega());
  const int64_t NI = 16, DI = 64, topk = 4, n_comp = (pos[T - 1] + 1) / ratio, window = 64;
  const std::vector<int32_t> unset(T * topk, -1);
  auto selb = up(unset), sels = up(unset), nb = up(std::vector<int32_t>(T, -1)), ns = up(std::vector<int32_t>(T, -1));
  {  // indexer query RoPE + simulation, scores and top-k
    const auto q = randv(T * NI * DI, 93);
    auto iqb = up(q), iqs = up(q), wts = up(randv(T * NI, 94)), icomp = up(randv(n_comp * DI, 95));
    fwd::idx_prep_q(iqb.as<float>(), NI, DI, n_rope, om.as<float>(), true, c0, nullptr, T);
    for (int64_t t = 0; t < T; ++t)
      fwd::idx_prep_q(iqs.as<float>() + t * NI * DI, NI, DI, n_rope, om.as<float>(), true, c0 + t, nullptr);
    same_bits(iqb, iqs, T * NI * DI * 4, "idx_prep_q");
    const std::vector<float> zero(T * n_comp, 0.0f);
    auto scb = up(zero), scs = up(zero);
    fwd::idx_select(iqb.as<float>(), wts.as<float>(), 0.125f, NI, DI, icomp.as<float>(), ratio, topk, scb.as<float>(),
                    selb.as<int32_t>(), nb.as<int32_t>(), c0, nullptr, T, n_comp);
    for (int64_t t = 0; t < T; ++t)
      fwd::idx_select(iqs.as<float>() + t * NI * DI, wts.as<float>() + t * NI, 0.125f, NI, DI, icomp.as<float>(), ratio,
                      topk, scs.as<float>() + t * n_comp, sels.as<int32_t>() + t * topk, ns.as<int32_t>() + t, c0 + t,
                      nullptr);
    same_bits(scb, scs, T * n_comp * 4, "idx_select scores");
    same_bits(selb, sels, T * topk * 4, "idx_select selection");
    same_bits(nb, ns, T * 4, "idx_select counts");
    EXPECT_EQ(down<int32_t>(nb, T), (std::vector<int32_t>{1, 2, static_cast<int32_t>(topk)}));
  }
  {  // attention over all compressed rows and over the indexer's selection
    const fwd::AttnShape as{NH, D, n_rope, window, cap, ratio, window + n_comp};
    const int64_t scratch = static_cast<int64_t>(fwd::attention_scratch_floats(as));
    auto q = up(randv(T * NH * D, 96, 0.1f)), ring = up(randv(cap * D, 97)), comp = up(randv(n_comp * D, 98));
    auto sinks = up(randv(NH, 99));
    DeviceBuffer fb(T * scratch * 4), fs(scratch * 4);
    for (bool with_sel : {false, true}) {
      DeviceBuffer ob(T * NH * D * 4), os(T * NH * D * 4);
      fwd::attention(as, q.as<float>(), ring.as<float>(), comp.as<float>(), with_sel ? selb.as<int32_t>() : nullptr,
                     nb.as<int32_t>(), sinks.as<float>(), om.as<float>(), fb.as<float>(), ob.as<float>(), c0, nullptr,
                     T, topk);
      for (int64_t t = 0; t < T; ++t)
        fwd::attention(as, q.as<float>() + t * NH * D, ring.as<float>(), comp.as<float>(),
                       with_sel ? selb.as<int32_t>() + t * topk : nullptr, nb.as<int32_t>() + t, sinks.as<float>(),
                       om.as<float>(), fs.as<float>(), os.as<float>() + t * NH * D, c0 + t, nullptr);
      same_bits(ob, os, T * NH * D * 4, with_sel ? "attention (selection)" : "attention (all rows)");
    }
  }
}

// ---------------------------------------------------------------- whole models

using e2e::rel_err;

std::vector<float> gpu_run(const ds4::cuda::GpuModel& gm, const std::vector<int32_t>& tokens, Numerics num,
                           size_t batch, ds4::model::SessionOptions o = {}, bool graph = true) {
  o.numerics = num;
  ds4::cuda::GpuSession s(gm, o, {.use_graph = graph});
  const int64_t V = gm.hparams().n_vocab;
  std::vector<float> out(tokens.size() * static_cast<size_t>(V));
  if (batch == 0) batch = tokens.size();
  for (size_t i = 0; i < tokens.size(); i += batch) {
    const size_t n = std::min(batch, tokens.size() - i);
    s.eval(std::span(tokens).subspan(i, n), LogitsMode::All, out.data() + i * V);
  }
  return out;
}

const ds4::cuda::GpuModel& gpu_model(const std::string& fixture, const std::string& recipe) {
  static std::map<std::string, std::unique_ptr<ds4::cuda::GpuModel>> cache;
  auto& g = cache[fixture + "/" + recipe];
  if (!g) g = ds4::cuda::GpuModel::upload(e2e::model(fixture, recipe), {.progress = false});
  return *g;
}

struct FixParam {
  const char* fixture;
  size_t batch;
};
class CudaExact : public ::testing::TestWithParam<FixParam> {};

TEST_P(CudaExact, MatchesReferenceLogits) {
  REQUIRE_GPU();
  const auto p = GetParam();
  const auto& gm = gpu_model(p.fixture, "bf16");
  const auto cases = e2e::load_cases(p.fixture);
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto out = gpu_run(gm, cases[i].tokens, Numerics::Exact, p.batch);
    const double e = rel_err(out, cases[i].logits);
    std::printf("cuda %s case %zu batch %zu: rel err %.3e\n", p.fixture, i, p.batch, e);
    EXPECT_LT(e, 1e-4) << p.fixture << " case " << i << " batch " << p.batch;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaExact,
                         ::testing::Values(FixParam{"dsv4-tiny-a-bf16", 0}, FixParam{"dsv4-tiny-a-bf16", 1},
                                           FixParam{"dsv4-tiny-a-bf16", 7}, FixParam{"dsv4-tiny-k-bf16", 0},
                                           FixParam{"dsv4-tiny-k-bf16", 1}, FixParam{"dsv4-tiny-k-bf16", 7}),
                         [](const ::testing::TestParamInfo<FixParam>& pi) {
                           std::string n = pi.param.fixture;
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n + "_batch" + std::to_string(pi.param.batch);
                         });

// Quantized recipes: the GPU and CPU backends on the same file, both numerics modes. Every
// product is exact up to float summation order (CudaProducts), but with quantized activations
// the forward is a discontinuous function of those last bits: an activation that lands on the
// other side of a Q8 rounding boundary moves its code, and over hundreds of tokens such moves
// flip router and indexer top-k decisions, to which these tiny fixtures are very sensitive
// (docs/quality.md: a 0.03x weight perturbation already moves their logits by 3-5%). Measured
// on an H100 (docs/cuda.md): the last-layer outputs agree to 2e-7 up to the first such flip,
// then jump (e.g. 2e-7 for tokens 0-3, 0.19 at token 4); the whole sequences end 0.07-0.21
// apart with 75-100% argmax agreement. The 1e-3 against the CPU is therefore not
// reachable on these fixtures without bit-identical float order; this test guards against
// gross errors (relative error, argmax agreement) and prints where the runs part. Since the
// prefill's Q8_0 products run as f16 cuBLAS GEMMs (matmul_cublas.h: q * d rounded to f16,
// ~2e-4 relative per product against the CPU's exact block sums) the codes move earlier:
// measured on an H200, argmax agreement 0.675-1.0 (q2 official case 0: 0.675, 0.834 with
// DS4_CUDA_NO_CUBLAS_GEMM=1), relative error 0.10-0.24. The agreement bound is 0.6 (a gross
// error, e.g. a wrong product, gives agreement near 1 / n_vocab).
class CudaQuantized : public ::testing::TestWithParam<const char*> {};

double top1_agreement(const std::vector<float>& a, const std::vector<float>& b, int64_t V) {
  const int64_t rows = static_cast<int64_t>(a.size()) / V;
  int64_t same = 0;
  for (int64_t t = 0; t < rows; ++t) {
    const float* x = a.data() + t * V;
    const float* y = b.data() + t * V;
    same += (std::max_element(x, x + V) - x) == (std::max_element(y, y + V) - y);
  }
  return static_cast<double>(same) / static_cast<double>(rows);
}

TEST_P(CudaQuantized, MatchesCpuBackend) {
  REQUIRE_GPU();
  const std::string recipe = GetParam();
  const auto& m = e2e::model("dsv4-tiny-k-bf16", recipe);
  const auto& gm = gpu_model("dsv4-tiny-k-bf16", recipe);
  const auto cases = e2e::load_cases("dsv4-tiny-k-bf16");
  const int64_t V = m.hparams().n_vocab;
  for (Numerics num : {Numerics::Exact, Numerics::Official}) {
    for (size_t i = 0; i < cases.size(); ++i) {
      const auto cpu = e2e::run(m, cases[i].tokens, num);
      const auto gpu = gpu_run(gm, cases[i].tokens, num, 5);
      const double e = rel_err(gpu, cpu), top1 = top1_agreement(gpu, cpu, V);
      std::printf("cuda %s %s case %zu: %zu tokens, rel err vs cpu %.3e, argmax agreement %.3f\n", recipe.c_str(),
                  ds4::model::numerics_name(num), i, cases[i].tokens.size(), e, top1);
      EXPECT_LT(e, 0.5) << recipe << " " << ds4::model::numerics_name(num) << " case " << i;
      EXPECT_GT(top1, 0.6) << recipe << " " << ds4::model::numerics_name(num) << " case " << i;
      if (i == 0 && num == Numerics::Exact) {  // where the sequences part: layer outputs of the first tokens
        const auto& hp = m.hparams();
        const int64_t row = hp.n_hc * hp.n_embd;
        std::vector<float> lc, lg;
        ds4::model::Session cs(m, {.max_ctx = 4096, .numerics = num});
        cs.set_layer_hook([&](int64_t, int64_t, int64_t n, const float* H) { lc.insert(lc.end(), H, H + n * row); });
        ds4::cuda::GpuSession gs(gm, {.max_ctx = 4096, .numerics = num});
        gs.set_layer_hook([&](int64_t, int64_t, int64_t, const float* H) { lg.insert(lg.end(), H, H + row); });
        for (size_t t = 0; t < 24; ++t) {
          cs.eval(std::span(cases[i].tokens).subspan(t, 1), LogitsMode::None, nullptr);
          gs.eval(std::span(cases[i].tokens).subspan(t, 1), LogitsMode::None, nullptr);
        }
        std::printf("  last-layer output rel err by token:");
        for (size_t t = 0; t < 24; ++t) {
          const size_t j = t * hp.n_layers + hp.n_layers - 1;
          std::printf(" %.1e", rel_err(lg.data() + j * row, lc.data() + j * row, row));
        }
        std::printf("\n");
      }
    }
  }
}

// Prefill of all tokens but the last `n_decode` (chunked by the session's max_batch), then
// decode steps of one token; the logits of every token.
std::vector<float> prefill_then_decode(ds4::model::EvalSession& s, const std::vector<int32_t>& tokens, int64_t V,
                                       size_t n_decode) {
  std::vector<float> out(tokens.size() * static_cast<size_t>(V));
  const size_t n_prefill = tokens.size() - n_decode;
  s.eval(std::span(tokens).subspan(0, n_prefill), LogitsMode::All, out.data());
  for (size_t t = n_prefill; t < tokens.size(); ++t)
    s.eval(std::span(tokens).subspan(t, 1), LogitsMode::Last, out.data() + t * V);
  return out;
}

// The same comparison with the CPU session pinned to the GPU's discrete choices (the GPU
// session's decision log replayed by model::pin_decisions: routed experts of every non-hash
// layer and token, the indexer's top-k rows). Prefill (CPU: batched matmuls in chunks of
// max_batch; GPU: its batched prefill) and decode steps are both compared, per token.
// The issue asks for 1e-3 here; that is not reachable, and not because of the decisions: on an
// H100 (docs/cuda.md "Correctness") pinning removes the router/indexer flips (20-42 of 960
// expert choices and 50-289 of 602 indexer selections differed) but the logits still end
// 1.2e-2 .. 5.7e-2 apart, and the layer outputs agree to < 1e-6 until one position and layer
// where they jump to 1e-3 .. 2e-2 from an input that still agrees to ~1e-7: an activation on
// the other side of a Q8 rounding boundary (official numerics: also an FP8/FP4 code). The CPU
// is as discontinuous against itself (CpuReference.QuantizedForwardIsDiscontinuousAtOneUlp:
// one ulp on its state moves these files' logits by 0.9e-2 .. 1.5e-2 with every decision
// pinned, bf16 by 3e-7). So this test asserts that the log covers every position (prefill and
// decode) and a bound for gross errors, 0.15 on the whole sequence (measured at most 5.7e-2;
// a wrong forward gives ~1), and prints where the runs part.
TEST_P(CudaQuantized, PinnedToGpuDecisionsMatchesCpuBackend) {
  REQUIRE_GPU();
  const std::string recipe = GetParam();
  const auto& m = e2e::model("dsv4-tiny-k-bf16", recipe);
  const auto& gm = gpu_model("dsv4-tiny-k-bf16", recipe);
  const auto cases = e2e::load_cases("dsv4-tiny-k-bf16");
  const int64_t V = m.hparams().n_vocab;
  for (Numerics num : {Numerics::Exact, Numerics::Official}) {
    for (size_t i = 0; i < cases.size(); ++i) {
      const auto& tokens = cases[i].tokens;
      const size_t n_decode = std::min<size_t>(8, tokens.size() - 1);
      const ds4::model::SessionOptions o{.max_ctx = 4096, .numerics = num, .max_batch = 64};
      ds4::cuda::GpuSession g(gm, o);
      g.set_decision_log(true);
      const auto gpu = prefill_then_decode(g, tokens, V, n_decode);
      ASSERT_EQ(g.decision_log().n_tokens, static_cast<int64_t>(tokens.size()));
      ds4::model::PinStats st;
      ds4::model::Session c(m, o);
      c.set_decision_hook(ds4::model::pin_decisions(g.decision_log(), &st));
      const auto cpu = prefill_then_decode(c, tokens, V, n_decode);
      double worst = 0;
      size_t worst_t = 0;
      for (size_t t = 0; t < tokens.size(); ++t) {
        const double e = rel_err(gpu.data() + t * V, cpu.data() + t * V, static_cast<size_t>(V));
        if (e > worst) {
          worst = e;
          worst_t = t;
        }
      }
      const double e = rel_err(gpu, cpu);
      std::printf("cuda %s %s case %zu, decisions pinned (experts: %lld of %lld changed, indexer rows: %lld of %lld "
                  "changed): rel err vs cpu %.3e, worst token %zu %.3e\n",
                  recipe.c_str(), ds4::model::numerics_name(num), i, static_cast<long long>(st.experts_changed),
                  static_cast<long long>(st.experts_offered), static_cast<long long>(st.rows_changed),
                  static_cast<long long>(st.rows_offered), e, worst_t, worst);
      if (worst > 1e-5)
        cudatest::print_divergence(m, gm, o, tokens.size(),
                         [&](ds4::model::EvalSession& s) { prefill_then_decode(s, tokens, V, n_decode); });
      EXPECT_EQ(st.missing, 0);
      EXPECT_GT(st.experts_offered, 0);
      if (tokens.size() > 100) {
        EXPECT_GT(st.rows_offered, 0) << "the indexer never chose";
      }
      EXPECT_LT(e, 0.15) << recipe << " " << ds4::model::numerics_name(num) << " case " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Recipes, CudaQuantized, ::testing::Values("q8", "q2"));

// The CPU backend itself: prefill (batched matmul) and decode (matvec) of a quantized file.
TEST(CpuReference, QuantizedPrefillMatchesDecode) {
  for (const char* recipe : {"q8", "q2"}) {
    const auto& m = e2e::model("dsv4-tiny-k-bf16", recipe);
    const auto tokens = e2e::load_cases("dsv4-tiny-k-bf16").at(0).tokens;
    const auto a = e2e::run(m, tokens, Numerics::Exact, 0), b = e2e::run(m, tokens, Numerics::Exact, 1);
    std::printf("cpu %s prefill vs decode: rel err %.3e\n", recipe, rel_err(a, b));
  }
}

// Why the pinned GPU-vs-CPU comparison above stays far from 1e-3 on the quantized files: the
// CPU backend against itself. Session B continues from session A's state after `k` tokens with
// every KV history value moved up by one float ulp (the size of a float summation-order
// difference) and is pinned to A's decisions; both then evaluate the rest of the case. With
// float activations (bf16 file) B stays within ~1e-6 of A: the forward is continuous. With
// quantized activations (q8, q2) B ends as far from A as the GPU does from the CPU: an
// activation moved across a rounding boundary changes its code, a jump no pinning removes.
double cpu_one_ulp_sensitivity(const ds4::model::Model& m, const std::vector<int32_t>& tokens, Numerics num,
                               int64_t k) {
  const auto& hp = m.hparams();
  const int64_t V = hp.n_vocab, n = static_cast<int64_t>(tokens.size());
  const ds4::model::SessionOptions o{.max_ctx = 4096, .numerics = num, .max_batch = 64};
  ds4::model::DecisionRecord rec;
  rec.n_layers = hp.n_layers;
  rec.n_expert_used = hp.n_expert_used;
  rec.idx_topk = hp.idx_topk;
  rec.pos0 = k;
  rec.n_tokens = n - k;
  ds4::model::Session a(m, o);
  a.eval(std::span(tokens).subspan(0, static_cast<size_t>(k)), LogitsMode::None, nullptr);
  auto st = a.snapshot();
  a.set_decision_hook(cudatest::record_decisions(rec));
  std::vector<float> la(static_cast<size_t>((n - k) * V)), lb(la.size());
  a.eval(std::span(tokens).subspan(static_cast<size_t>(k)), LogitsMode::All, la.data());
  for (auto& L : st.layers)
    for (auto* v : {&L.raw, &L.comp_kv, &L.comp_sc, &L.idx_kv, &L.idx_sc, &L.comp, &L.icomp})
      for (float& x : *v) x = std::nextafter(x, x > 0 ? INFINITY : -INFINITY);
  ds4::model::Session b(m, o);
  b.restore(std::move(st));
  ds4::model::PinStats ps;
  b.set_decision_hook(ds4::model::pin_decisions(rec, &ps));
  b.eval(std::span(tokens).subspan(static_cast<size_t>(k)), LogitsMode::All, lb.data());
  EXPECT_EQ(ps.missing, 0);
  return rel_err(lb, la);
}

TEST(CpuReference, QuantizedForwardIsDiscontinuousAtOneUlp) {
  const auto cases = e2e::load_cases("dsv4-tiny-k-bf16");
  for (const char* recipe : {"bf16", "q8", "q2"}) {
    const auto& m = e2e::model("dsv4-tiny-k-bf16", recipe);
    for (Numerics num : {Numerics::Exact, Numerics::Official}) {
      const double e = cpu_one_ulp_sensitivity(m, cases.at(0).tokens, num, 8);
      std::printf("cpu %s %s case 0: one ulp on the state after 8 tokens, decisions pinned: rel err %.3e\n", recipe,
                  ds4::model::numerics_name(num), e);
      if (std::string(recipe) == "bf16" && num == Numerics::Exact) {
        EXPECT_LT(e, 1e-5);
      }
    }
  }
}

// Every weight product of the quantized fixture files (the small, unaligned shapes of tiny-k:
// 64- and 128-column Q8_0 rows, 8-row routers, row-offset groups) GPU vs cpu::matvec, and the
// fused expert path vs a CPU composition.
TEST(CudaProducts, EveryTensorOfQuantizedFixtures) {
  REQUIRE_GPU();
  for (const char* recipe : {"q8", "q2"}) {
    const auto& m = e2e::model("dsv4-tiny-k-bf16", recipe);
    const auto& gm = gpu_model("dsv4-tiny-k-bf16", recipe);
    auto check = [&](const ds4::cuda::DTensor& d, const std::string& what, int64_t row0, int64_t nrows) {
      if (!d.present() || d.type == ds4::GgmlType::I32) return;
      std::vector<uint8_t> host(d.row_bytes * nrows);
      ds4::cuda::device_synchronize();
      ASSERT_EQ(cudaMemcpy(host.data(), d.row(row0), host.size(), cudaMemcpyDeviceToHost), cudaSuccess);
      auto x = randv(d.cols, 200 + static_cast<uint32_t>(row0));
      std::vector<float> ref(nrows);
      ds4::cpu::matvec(d.type, host.data(), nrows, d.cols, x.data(), ref.data(), nullptr);
      auto dx = up(x);
      DeviceBuffer dy(nrows * 4), act(std::max<size_t>(16, ds4::cuda::activation_bytes(d.type, d.cols)));
      ds4::cuda::matvec(d.type, d.row(row0), nrows, d.cols, dx.as<float>(), dy.as<float>(), act.data());
      const double e = max_rel(down<float>(dy, nrows), ref);
      EXPECT_LT(e, 1e-5) << recipe << " " << what << " " << ds4::type_name(d.type) << " " << nrows << "x" << d.cols
                         << " from row " << row0;
    };
    check(gm.output(), "output", 0, gm.output().rows);
    check(gm.hc_head().fn, "hc_head", 0, gm.hc_head().fn.rows);
    const auto& hp = gm.hparams();
    for (const auto& L : gm.layers()) {
      const std::string p = "blk." + std::to_string(L.il) + ".";
      for (auto [t, n] : {std::pair{&L.hc_attn.fn, "hc_attn"}, {&L.hc_ffn.fn, "hc_ffn"}, {&L.q_a, "q_a"},
                          {&L.q_b, "q_b"}, {&L.kv, "kv"}, {&L.out_b, "out_b"}, {&L.comp.kv, "comp.kv"},
                          {&L.comp.gate, "comp.gate"}, {&L.idx_comp.kv, "idx_comp.kv"},
                          {&L.idx_q_b, "idx_q_b"}, {&L.idx_proj, "idx_proj"}, {&L.router, "router"},
                          {&L.gate_shexp, "gate_shexp"}, {&L.down_shexp, "down_shexp"}})
        check(*t, p + n, 0, t->rows);
      for (int64_t g = 0; g < hp.o_groups; ++g) check(L.out_a, p + "out_a group", g * hp.o_lora, hp.o_lora);
      // One expert of each stack (matrix e starts at row e * rows).
      for (auto [t, n] : {std::pair{&L.gate_exps, "gate_exps"}, {&L.down_exps, "down_exps"}})
        check(*t, p + n, (hp.n_expert - 1) * t->rows, t->rows);
    }
    (void)m;
    // Fused routed experts (layer 3, not hashed) vs matvec + SwiGLU + matvec on the CPU.
    const auto& L = gm.layers().at(3);
    const int64_t E = hp.n_embd, F = hp.n_ff_exp;
    const std::vector<int32_t> ids = {1, static_cast<int32_t>(hp.n_expert - 1)};
    const std::vector<float> w = {0.3f, 0.7f};
    auto x = randv(E, 300);
    auto slab = [&](const ds4::cuda::DTensor& d, int64_t e) {
      std::vector<uint8_t> h(d.row_bytes * d.rows);
      EXPECT_EQ(cudaMemcpy(h.data(), d.slab(e), h.size(), cudaMemcpyDeviceToHost), cudaSuccess);
      return h;
    };
    std::vector<float> ref(E, 0.0f), g(F), u(F), hh(F), dd(E);
    for (int k = 0; k < 2; ++k) {
      const auto gw = slab(L.gate_exps, ids[k]), uw = slab(L.up_exps, ids[k]), dw = slab(L.down_exps, ids[k]);
      ds4::cpu::matvec(L.gate_exps.type, gw.data(), F, E, x.data(), g.data(), nullptr);
      ds4::cpu::matvec(L.up_exps.type, uw.data(), F, E, x.data(), u.data(), nullptr);
      const float lim = hp.swiglu_limit[3];
      for (int64_t i = 0; i < F; ++i)
        hh[i] = ds4::model::silu(std::min(g[i], lim)) * std::clamp(u[i], -lim, lim) * w[k];
      ds4::cpu::matvec(L.down_exps.type, dw.data(), E, F, hh.data(), dd.data(), nullptr);
      for (int64_t i = 0; i < E; ++i) ref[i] += dd[i];
    }
    ds4::cuda::MoeShape ms{L.gate_exps.type, L.down_exps.type, E, F, 2, hp.swiglu_limit[3]};
    auto dx = up(x), dids = up(ids), dw = up(w);
    DeviceBuffer dy(E * 4), ws(ds4::cuda::moe_workspace_bytes(ms));
    ds4::cuda::moe_experts(ms, L.gate_exps.d, L.up_exps.d, L.down_exps.d, dids.as<int32_t>(), dw.as<float>(),
                           dx.as<float>(), dy.as<float>(), ws.data());
    EXPECT_LT(rel_err(down<float>(dy, E), ref), 2e-3) << recipe << " fused experts";
  }
}

// Graph replay and plain launches run the same kernels: identical logits.
TEST(CudaSession, GraphEqualsPlainLaunches) {
  REQUIRE_GPU();
  const auto& gm = gpu_model("dsv4-tiny-a-bf16", "bf16");
  const auto tokens = e2e::load_cases("dsv4-tiny-a-bf16").at(0).tokens;
  const auto a = gpu_run(gm, tokens, Numerics::Official, 3, {}, true);
  const auto b = gpu_run(gm, tokens, Numerics::Official, 3, {}, false);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
}

// The fused router (the default; the tiny model's router is BF16, so the fused path runs)
// against the product launch + route launch it replaces (DS4_CUDA_NO_FUSED_ROUTER=1): the
// same logits bit for bit over several decode steps, through a graph and with plain launches.
TEST(CudaSession, FusedRouterEqualsSeparateLaunches) {
  REQUIRE_GPU();
  const auto& gm = gpu_model("dsv4-tiny-a-bf16", "bf16");
  const auto tokens = e2e::load_cases("dsv4-tiny-a-bf16").at(0).tokens;
  for (bool graph : {true, false}) {
    const auto fused = gpu_run(gm, tokens, Numerics::Official, 1, {}, graph);  // a decode step per token
    std::vector<float> separate;
    {
      const ds4::cuda::test_util::ScopedSwitchOff off("DS4_CUDA_NO_FUSED_ROUTER");
      separate = gpu_run(gm, tokens, Numerics::Official, 1, {}, graph);
    }
    ASSERT_EQ(fused.size(), separate.size());
    EXPECT_EQ(std::memcmp(fused.data(), separate.data(), fused.size() * 4), 0) << (graph ? "graph" : "plain launches");
  }
}

std::vector<int32_t> random_tokens(size_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(g() % vocab);
  return t;
}

// Decode steps run the compressors and the indexer on a second stream beside the query/KV
// path (forked and joined with events, graph edges when captured); profile_step runs the same
// launches on one stream in program order. Each step must give the same logits bit for bit,
// through a graph and with plain launches, while windows complete in the ratio-4 and ratio-16
// layers and the indexer selects 4 of up to 12 compressed rows.
TEST(CudaSession, CompressorBranchStreamEqualsOneStream) {
  REQUIRE_GPU();
  const auto& gm = gpu_model("dsv4-tiny-a-bf16", "bf16");
  const int64_t V = gm.hparams().n_vocab;
  const auto tokens = random_tokens(48, V, 110);
  const size_t n_prompt = 40;
  const ds4::model::SessionOptions o{.max_ctx = 256, .numerics = Numerics::Official};
  for (bool graph : {true, false}) {
    ds4::cuda::GpuSession two(gm, o, {.use_graph = graph}), one(gm, o, {.use_graph = graph});
    two.eval(std::span(tokens).first(n_prompt), LogitsMode::None, nullptr);
    one.eval(std::span(tokens).first(n_prompt), LogitsMode::None, nullptr);
    std::vector<float> a(V), b(V);
    for (size_t i = n_prompt; i < tokens.size(); ++i) {
      two.eval(std::span(tokens).subspan(i, 1), LogitsMode::Last, a.data());
      one.profile_step(tokens[i]);
      one.read_logits(0, V, b.data());
      ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0)
          << "step at position " << i << (graph ? " (graph)" : " (plain launches)");
    }
  }
}

// A prompt far longer than the ring (small retain and chunk): the ring wraps, the indexer
// selects among many more rows than its top-k. The wrapped ring must give exactly the logits
// of a ring that never wraps (same kernels, same arithmetic), and the CPU's within 1e-4 in
// exact numerics. In official numerics the FP4 indexer and FP8 KV codes amplify float-order
// differences (a code flip can change a top-k selection), so GPU and CPU agree more loosely.
TEST(CudaSession, LongPromptWrapsRingAndMatchesCpu) {
  REQUIRE_GPU();
  const auto& m = e2e::model("dsv4-tiny-a-bf16", "bf16");
  const auto& gm = gpu_model("dsv4-tiny-a-bf16", "bf16");
  const auto tokens = random_tokens(400, m.hparams().n_vocab, 80);
  const int64_t V = m.hparams().n_vocab;
  for (Numerics num : {Numerics::Exact, Numerics::Official}) {
    ds4::model::SessionOptions o{.max_ctx = 1024, .numerics = num, .retain = 4, .max_batch = 16};
    ds4::cuda::GpuSession g(gm, o);
    ASSERT_LT(g.ring_cap(), 200);
    ds4::cuda::GpuSession big(gm, {.max_ctx = 1024, .numerics = num});
    ASSERT_GT(big.ring_cap(), 400);
    ds4::model::Session c(m, o);
    std::vector<float> lg(V), lb(V), lc(V);
    for (size_t i = 0; i < tokens.size(); i += 37) {
      const auto part = std::span(tokens).subspan(i, std::min<size_t>(37, tokens.size() - i));
      g.eval(part, LogitsMode::Last, lg.data());
      big.eval(part, LogitsMode::Last, lb.data());
      c.eval(part, LogitsMode::Last, lc.data());
      ASSERT_EQ(std::memcmp(lg.data(), lb.data(), lg.size() * 4), 0) << "ring wrap changed the logits after "
                                                                     << i + part.size() << " tokens";
      const double e = rel_err(lg, lc);
      std::printf("%s after %zu tokens: rel err vs cpu %.3e\n", ds4::model::numerics_name(num), i + part.size(), e);
      EXPECT_LT(e, num == Numerics::Exact ? 1e-4 : 2e-2) << "after " << i + part.size() << " tokens";
    }
    // The GPU snapshot has the CPU layout after the same evals.
    const auto sg = g.snapshot(), sc = c.snapshot();
    ASSERT_EQ(sg.layers.size(), sc.layers.size());
    for (size_t il = 0; il < sg.layers.size(); ++il) {
      EXPECT_EQ(sg.layers[il].hist_begin, sc.layers[il].hist_begin) << il;
      EXPECT_EQ(sg.layers[il].raw.size(), sc.layers[il].raw.size()) << il;
      EXPECT_EQ(sg.layers[il].comp.size(), sc.layers[il].comp.size()) << il;
      EXPECT_EQ(sg.layers[il].icomp.size(), sc.layers[il].icomp.size()) << il;
      if (num == Numerics::Exact && !sc.layers[il].raw.empty()) {
        EXPECT_LT(rel_err(sg.layers[il].raw, sc.layers[il].raw), 1e-4) << il;
      }
      if (num == Numerics::Exact && !sc.layers[il].comp.empty()) {
        EXPECT_LT(rel_err(sg.layers[il].comp, sc.layers[il].comp), 1e-4) << il;
      }
    }
  }
}

TEST(CudaSession, TruncateThenContinueIsExact) {
  REQUIRE_GPU();
  const auto& gm = gpu_model("dsv4-tiny-a-bf16", "bf16");
  const auto tokens = random_tokens(60, gm.hparams().n_vocab, 90);
  ds4::cuda::GpuSession s(gm, {.max_ctx = 256, .numerics = Numerics::Official});
  const int64_t V = gm.hparams().n_vocab;
  std::vector<float> a(V), b(V);
  s.eval(tokens, LogitsMode::Last, a.data());
  ASSERT_LE(s.min_truncate(), 45);
  s.truncate(45);
  EXPECT_EQ(s.n_past(), 45);
  s.eval(std::span(tokens).subspan(45), LogitsMode::Last, b.data());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
  EXPECT_THROW(s.truncate(61), ds4::Error);
}

// CPU -> GPU -> CPU through serialized bytes, against an all-CPU run.
TEST(CudaSession, SnapshotMovesBetweenBackends) {
  REQUIRE_GPU();
  const auto& m = e2e::model("dsv4-tiny-a-bf16", "bf16");
  const auto& gm = gpu_model("dsv4-tiny-a-bf16", "bf16");
  const auto tokens = random_tokens(90, m.hparams().n_vocab, 100);
  const ds4::model::SessionOptions o{.max_ctx = 256, .numerics = Numerics::Official};
  const int64_t V = m.hparams().n_vocab;
  std::vector<float> ref(V), got(V);
  ds4::model::Session all(m, o);
  all.eval(tokens, LogitsMode::Last, ref.data());

  ds4::model::Session c1(m, o);
  c1.eval(std::span(tokens).subspan(0, 30), LogitsMode::None, nullptr);
  ds4::cuda::GpuSession g(gm, o);
  g.deserialize(c1.serialize());
  EXPECT_EQ(g.n_past(), 30);
  g.eval(std::span(tokens).subspan(30, 30), LogitsMode::None, nullptr);
  const auto bytes = g.serialize();
  ds4::model::Session c2(m, o);
  c2.deserialize(bytes);
  c2.eval(std::span(tokens).subspan(60), LogitsMode::Last, got.data());
  EXPECT_LT(rel_err(got, ref), 1e-4);
  // GPU -> GPU through a snapshot is exact.
  ds4::cuda::GpuSession g2(gm, o);
  g2.restore(g.snapshot());
  std::vector<float> x(V), y(V);
  g.eval(std::span(tokens).subspan(60), LogitsMode::Last, x.data());
  g2.eval(std::span(tokens).subspan(60), LogitsMode::Last, y.data());
  EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * 4), 0);
  // A snapshot of another numerics mode is refused.
  ds4::cuda::GpuSession ge(gm, {.max_ctx = 256, .numerics = Numerics::Exact});
  EXPECT_THROW(ge.deserialize(bytes), ds4::Error);
}

TEST(CudaRuntime, EngineMakesCudaSessions) {
  REQUIRE_GPU();
  const auto& m = e2e::model("dsv4-tiny-a-bf16", "bf16");
  auto eng = ds4::runtime::open_engine(m, ds4::runtime::BackendKind::Cuda);
  auto s = eng->new_session({.max_ctx = 64});
  EXPECT_STREQ(s->backend_name(), "cuda");
  EXPECT_NE(eng->describe().find("cuda"), std::string::npos);
}

}  // namespace
