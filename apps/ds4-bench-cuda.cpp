// ds4-bench-cuda: times the batch-1 decode kernels of backend/cuda/matvec.h at the Flash
// shapes against the measured device copy bandwidth, then one decode step's worth of
// products (architecture.md section 8) as a roofline estimate. Weights are random valid
// blocks generated on the device; every kernel rotates over enough weight copies that they
// cannot sit in L2, so the numbers are DRAM numbers.
//
//   ds4-bench-cuda [--iters N] [--no-step]
//   ds4-bench-cuda --moe [--iters N]       the decode MoE rows only
//   ds4-bench-cuda --prefill [--iters N]   prefill GEMMs (matmul.h): int8 TOPS at T = 512 and
//                                          2048, and one grouped MoE layer for 2048 tokens
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#if DS4_HAVE_CUDA

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/bandwidth.h"
#include "backend/cuda/buffer.h"
#include "backend/cuda/device.h"
#include "backend/cuda/matmul.h"
#include "backend/cuda/matvec.h"
#include "core/ggml_type.h"

namespace {

using namespace ds4;
using namespace ds4::cuda;

constexpr size_t kRotateBytes = size_t(512) << 20;  // >> the 50-60 MB L2 of H100/H200

// Median of `iters` timed runs of fn(i) after `warm` untimed ones, in milliseconds.
double median_ms(void* stream, int warm, int iters, const std::function<void(int)>& fn) {
  for (int i = 0; i < warm; ++i) fn(i);
  EventTimer t;
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    t.start(stream);
    fn(warm + i);
    t.stop(stream);
    ms.push_back(t.elapsed_ms());
  }
  check_last_error("benchmark");
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Per-call time inside a CUDA graph of `batch` back-to-back calls (fn(j), j < batch), the
// way a decode step runs them: single-launch event timing would add the host's launch
// latency (~5-8 us) to every kernel. Median over `iters` replays, divided by batch.
double graph_us(void* stream, int iters, int batch, const std::function<void(int)>& fn) {
  Graph g(stream, [&](void*) {
    for (int j = 0; j < batch; ++j) fn(j);
  });
  return median_ms(stream, 3, iters, [&](int) { g.launch(stream); }) * 1e3 / batch;
}

struct Matrix {
  GgmlType type;
  int64_t nrows, ncols;
  std::string name;
  size_t bytes() const { return row_bytes(type, ncols) * size_t(nrows); }
};

std::vector<float> random_vec(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = d(rng);
  return v;
}

// Enough copies of m (random weights, seeds seed0, seed0 + 1, ...) that a kernel rotating over
// them reads DRAM, not L2.
std::vector<DeviceBuffer> rotated_copies(const Matrix& m, uint64_t seed0, void* stream) {
  const int copies = int(std::clamp<size_t>(kRotateBytes / m.bytes() + 1, 2, 64));
  std::vector<DeviceBuffer> w;
  for (int c = 0; c < copies; ++c) {
    w.emplace_back(m.bytes());
    fill_random_weights(m.type, w.back().data(), m.nrows, m.ncols, seed0 + uint64_t(c), stream);
  }
  return w;
}

void bench_matvec(void* stream, int iters, double copy_gbs) {
  using T = GgmlType;
  const std::vector<Matrix> ms = {
      {T::Q8_0, 1024, 4096, "attn_q_a"},      {T::Q8_0, 32768, 1024, "attn_q_b"},
      {T::Q8_0, 512, 4096, "attn_kv"},        {T::Q8_0, 8192, 4096, "attn_output_a"},
      {T::Q8_0, 4096, 8192, "attn_output_b"}, {T::Q8_0, 2048, 4096, "shexp gate/up"},
      {T::Q8_0, 4096, 2048, "shexp down"},    {T::Q8_0, 129280, 4096, "output head"},
      {T::IQ2_XXS, 2048, 4096, "expert gate/up q2"}, {T::Q2_K, 4096, 2048, "expert down q2"},
      {T::Q4_K, 2048, 4096, "expert gate/up q4"},    {T::Q4_K, 4096, 2048, "expert down q4"},
      {T::MXFP4, 2048, 4096, "expert gate/up mxfp4"}, {T::MXFP4, 4096, 2048, "expert down mxfp4"},
      {T::F16, 256, 4096, "router f16"},      {T::F16, 8192, 1024, "indexer q_b f16"},
      {T::BF16, 8192, 1024, "bf16 8192x1024"}, {T::F32, 4096, 4096, "f32 4096x4096"},
  };
  fmt::print("\n{:<22} {:>8} {:>14} {:>8} {:>9} {:>9} {:>8} {:>7}\n", "matvec (graph of 16)", "type", "rows x cols",
             "MB", "us/call", "1-launch", "GB/s", "%copy");
  for (const Matrix& m : ms) {
    const size_t wb = m.bytes();
    const std::vector<DeviceBuffer> w = rotated_copies(m, 1, stream);
    const int copies = int(w.size());
    const auto x = random_vec(m.ncols, 7);
    DeviceBuffer dx(x.size() * sizeof(float));
    dx.upload(x.data(), x.size() * sizeof(float));
    DeviceBuffer act(std::max<size_t>(activation_bytes(m.type, m.ncols), 16));
    DeviceBuffer y(size_t(m.nrows) * sizeof(float));
    quantize_activation(m.type, dx.as<float>(), act.data(), m.ncols, stream);
    const bool is_float = activation_bytes(m.type, m.ncols) == 0;
    const void* a = is_float ? static_cast<const void*>(dx.data()) : act.data();
    auto call = [&](int i) {
      matvec_q(m.type, w[size_t(i % copies)].data(), m.nrows, m.ncols, a, y.as<float>(), stream);
    };
    const double single_us = median_ms(stream, 10, iters, call) * 1e3;
    const double us = graph_us(stream, iters, 16, call);
    const double gbs = double(wb) / (us * 1e-6) / 1e9;
    fmt::print("{:<22} {:>8} {:>14} {:>8.2f} {:>9.2f} {:>9.2f} {:>8.1f} {:>6.1f}%\n", m.name, type_name(m.type),
               fmt::format("{}x{}", m.nrows, m.ncols), double(wb) / 1e6, us, single_us, gbs, 100.0 * gbs / copy_gbs);
  }
}

// Products that run as one launch in the decode step, against the launches they replace
// (graph of 16 calls, weights rotated out of L2 as above): the grouped o_a (8 groups of
// 1024x4096, each on its slice of the 32768-value attention output) and q_a + kv (one input).
void bench_fused(void* stream, int iters, double copy_gbs) {
  using T = GgmlType;
  const int64_t G = 8, R = 1024, C = 4096;
  const Matrix o_a{T::Q8_0, G * R, C, ""}, q_a{T::Q8_0, 1024, C, ""}, kv{T::Q8_0, 512, C, ""};
  auto copies_of = [&](const Matrix& m) { return rotated_copies(m, 11, stream); };
  const auto x = random_vec(G * C, 8);
  DeviceBuffer dx(x.size() * sizeof(float)), y(size_t(G * R) * sizeof(float)), y2(size_t(kv.nrows) * sizeof(float));
  dx.upload(x.data(), dx.size());
  DeviceBuffer act(activation_bytes(T::Q8_0, G * C));
  quantize_activation(T::Q8_0, dx.as<float>(), act.data(), G * C, stream);
  const size_t gb = activation_bytes(T::Q8_0, C);
  const auto* a = static_cast<const uint8_t*>(act.data());
  fmt::print("\n{:<34} {:>8} {:>10} {:>9} {:>7}\n", "fused launches (graph of 16)", "MB", "us/call", "GB/s", "%copy");
  auto row = [&](const char* name, size_t bytes, double us) {
    const double gbs = double(bytes) / (us * 1e-6) / 1e9;
    fmt::print("{:<34} {:>8.2f} {:>10.2f} {:>9.1f} {:>6.1f}%\n", name, double(bytes) / 1e6, us, gbs,
               100.0 * gbs / copy_gbs);
  };
  {
    const auto w = copies_of(o_a);
    const size_t rb = row_bytes(T::Q8_0, C);
    auto weights = [&](int i) { return static_cast<const uint8_t*>(w[size_t(i) % w.size()].data()); };
    row("o_a: 8 group launches", o_a.bytes(), graph_us(stream, iters, 16, [&](int i) {
          for (int64_t g = 0; g < G; ++g)
            matvec_q(T::Q8_0, weights(i) + size_t(g * R) * rb, R, C, a + g * gb, y.as<float>() + g * R, stream);
        }));
    row("o_a: one grouped launch", o_a.bytes(), graph_us(stream, iters, 16, [&](int i) {
          matvec_grouped_q(T::Q8_0, weights(i), G * R, C, G, a, y.as<float>(), stream);
        }));
  }
  {
    const auto wq = copies_of(q_a), wk = copies_of(kv);
    const size_t bytes = q_a.bytes() + kv.bytes();
    row("q_a + kv: two launches", bytes, graph_us(stream, iters, 16, [&](int i) {
          matvec_q(T::Q8_0, wq[size_t(i) % wq.size()].data(), q_a.nrows, C, a, y.as<float>(), stream);
          matvec_q(T::Q8_0, wk[size_t(i) % wk.size()].data(), kv.nrows, C, a, y2.as<float>(), stream);
        }));
    row("q_a + kv: one launch", bytes, graph_us(stream, iters, 16, [&](int i) {
          const MatvecPart parts[] = {{wq[size_t(i) % wq.size()].data(), q_a.nrows, y.as<float>()},
                                      {wk[size_t(i) % wk.size()].data(), kv.nrows, y2.as<float>()}};
          matvec_parts_q(T::Q8_0, C, parts, 2, a, stream);
        }));
  }
}

// Where a product's time goes: one Q8_0 product of 4096 columns at 1x .. 16x rows (graph of
// 16 calls, weights rotated out of L2). A least-squares line through (bytes, us) splits the
// time into a streaming rate (the slope) and a fixed cost per launch (the intercept: ramp,
// first DRAM round trip, tail).
void bench_ramp(void* stream, int iters, double copy_gbs) {
  const int64_t C = 4096;
  fmt::print("\n{:<34} {:>8} {:>10} {:>9} {:>7}\n", "Q8_0 x4096, rows (graph of 16)", "MB", "us/call", "GB/s", "%copy");
  std::vector<double> mb, us;
  for (int64_t rows : {2048, 4096, 8192, 16384, 32768}) {
    const Matrix m{GgmlType::Q8_0, rows, C, ""};
    const std::vector<DeviceBuffer> w = rotated_copies(m, 21, stream);
    const int copies = int(w.size());
    const auto x = random_vec(C, 9);
    DeviceBuffer dx(x.size() * sizeof(float)), act(activation_bytes(m.type, C)), y(size_t(rows) * sizeof(float));
    dx.upload(x.data(), dx.size());
    quantize_activation(m.type, dx.as<float>(), act.data(), C, stream);
    const double t = graph_us(stream, iters, 16, [&](int i) {
      matvec_q(m.type, w[size_t(i % copies)].data(), rows, C, act.data(), y.as<float>(), stream);
    });
    const double gbs = double(m.bytes()) / (t * 1e-6) / 1e9;
    fmt::print("{:<34} {:>8.2f} {:>10.2f} {:>9.1f} {:>6.1f}%\n", fmt::format("{} rows", rows), double(m.bytes()) / 1e6,
               t, gbs, 100.0 * gbs / copy_gbs);
    mb.push_back(double(m.bytes()) / 1e6);
    us.push_back(t);
  }
  const double n = double(mb.size());
  const double mx = std::accumulate(mb.begin(), mb.end(), 0.0) / n, my = std::accumulate(us.begin(), us.end(), 0.0) / n;
  double sxy = 0.0, sxx = 0.0;
  for (size_t i = 0; i < mb.size(); ++i) {
    sxy += (mb[i] - mx) * (us[i] - my);
    sxx += (mb[i] - mx) * (mb[i] - mx);
  }
  const double slope = sxy / sxx;  // us per MB
  fmt::print("  fit: {:.1f} GB/s streaming ({:.1f}% of copy), {:.2f} us fixed per launch\n", 1e3 / slope,
             100.0 * 1e3 / slope / copy_gbs, my - slope * mx);
}

// Random distinct expert ids for `sets` tokens, uploaded as [sets][n_used] int32.
DeviceBuffer random_ids(int sets, int n_used, int n_expert, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> all(static_cast<size_t>(n_expert));
  std::iota(all.begin(), all.end(), 0);
  std::vector<int32_t> ids;
  for (int s = 0; s < sets; ++s) {
    std::shuffle(all.begin(), all.end(), rng);
    ids.insert(ids.end(), all.begin(), all.begin() + n_used);
  }
  DeviceBuffer d(ids.size() * sizeof(int32_t));
  d.upload(ids.data(), d.size());
  return d;
}

struct Experts {
  MoeShape s;
  DeviceBuffer gate, up, down;
  size_t bytes_per_token() const {
    return size_t(s.n_used) * (2 * row_bytes(s.gate_up_type, s.n_embd) * size_t(s.n_ff) +
                               row_bytes(s.down_type, s.n_ff) * size_t(s.n_embd));
  }
};

Experts make_experts(GgmlType gu, GgmlType dn, int n_expert, void* stream, uint64_t seed) {
  Experts e;
  e.s.gate_up_type = gu;
  e.s.down_type = dn;
  e.gate = DeviceBuffer(row_bytes(gu, e.s.n_embd) * size_t(e.s.n_ff) * n_expert);
  e.up = DeviceBuffer(e.gate.size());
  e.down = DeviceBuffer(row_bytes(dn, e.s.n_ff) * size_t(e.s.n_embd) * n_expert);
  fill_random_weights(gu, e.gate.data(), e.s.n_ff * n_expert, e.s.n_embd, seed, stream);
  fill_random_weights(gu, e.up.data(), e.s.n_ff * n_expert, e.s.n_embd, seed + 1, stream);
  fill_random_weights(dn, e.down.data(), e.s.n_embd * n_expert, e.s.n_ff, seed + 2, stream);
  return e;
}

// Q8_0 shared experts (Flash: gate/up 2048x4096, down 4096x2048), `copies` of them so that a
// graph rotating over them reads DRAM.
struct SharedExperts {
  std::vector<DeviceBuffer> gate, up, down;
  static constexpr int64_t kFf = 2048, kEmbd = 4096;
  SharedExpert at(int i) const {
    const size_t c = size_t(i) % gate.size();
    return SharedExpert{GgmlType::Q8_0, gate[c].data(), up[c].data(), down[c].data(), kFf, 10.0f};
  }
  size_t bytes() const { return 3 * row_bytes(GgmlType::Q8_0, kEmbd) * size_t(kFf); }
};

SharedExperts make_shared_experts(int copies, void* stream, uint64_t seed) {
  SharedExperts e;
  for (int c = 0; c < copies; ++c) {
    auto one = [&](int64_t rows, int64_t cols) {
      DeviceBuffer b(row_bytes(GgmlType::Q8_0, cols) * size_t(rows));
      fill_random_weights(GgmlType::Q8_0, b.data(), rows, cols, seed++, stream);
      return b;
    };
    e.gate.push_back(one(SharedExperts::kFf, SharedExperts::kEmbd));
    e.up.push_back(one(SharedExperts::kFf, SharedExperts::kEmbd));
    e.down.push_back(one(SharedExperts::kEmbd, SharedExperts::kFf));
  }
  return e;
}

// The routed experts alone and with the shared expert, as separate 4-launch chains
// (moe_experts) and as the two launches of moe_fused.
void bench_moe(void* stream, int iters, double copy_gbs) {
  const int n_expert = 256, sets = 64;
  fmt::print("\n{:<46} {:>10} {:>10} {:>9} {:>7}\n", "MoE, 6 of 256 experts (graph of 8)", "MB", "us", "GB/s",
             "%copy");
  const std::pair<GgmlType, GgmlType> kinds[] = {{GgmlType::IQ2_XXS, GgmlType::Q2_K},
                                                 {GgmlType::Q4_K, GgmlType::Q4_K},
                                                 {GgmlType::MXFP4, GgmlType::MXFP4}};
  const SharedExperts shared = make_shared_experts(8, stream, 500);
  MoeShape one;  // the shared expert through moe_experts: one expert, id 0, weight 1
  one.gate_up_type = one.down_type = GgmlType::Q8_0;
  one.n_used = 1;
  const int32_t zero = 0;
  const float onef = 1.0f;
  DeviceBuffer zero_id(sizeof(zero)), unit_w(sizeof(onef)), ws_one(moe_workspace_bytes(one));
  zero_id.upload(&zero, sizeof(zero));
  unit_w.upload(&onef, sizeof(onef));
  for (auto [gu, dn] : kinds) {
    Experts e = make_experts(gu, dn, n_expert, stream, 100);
    DeviceBuffer ids = random_ids(sets, e.s.n_used, n_expert, 5);
    std::vector<float> w(size_t(e.s.n_used), 1.5f / float(e.s.n_used));
    DeviceBuffer dw(w.size() * sizeof(float));
    dw.upload(w.data(), dw.size());
    const auto x = random_vec(e.s.n_embd, 3);
    DeviceBuffer dx(x.size() * sizeof(float)), dy(x.size() * sizeof(float)), dy2(x.size() * sizeof(float));
    dx.upload(x.data(), dx.size());
    const SharedExpert sh0 = shared.at(0);
    DeviceBuffer ws(moe_workspace_bytes(e.s)), ws_fused(moe_fused_workspace_bytes(e.s, &sh0));
    const int32_t* id0 = ids.as<int32_t>();
    auto routed = [&](int i) {
      moe_experts(e.s, e.gate.data(), e.up.data(), e.down.data(), id0 + (i % sets) * e.s.n_used, dw.as<float>(),
                  dx.as<float>(), dy.as<float>(), ws.data(), stream);
    };
    auto shared_alone = [&](int i) {
      const SharedExpert sh = shared.at(i);
      moe_experts(one, sh.gate, sh.up, sh.down, zero_id.as<int32_t>(), unit_w.as<float>(), dx.as<float>(),
                  dy2.as<float>(), ws_one.data(), stream);
    };
    auto fused = [&](int i, bool with_shared) {
      const SharedExpert sh = shared.at(i);
      moe_fused(e.s, e.gate.data(), e.up.data(), e.down.data(), id0 + (i % sets) * e.s.n_used, dw.as<float>(),
                with_shared ? &sh : nullptr, dx.as<float>(), dy.as<float>(), ws_fused.data(), stream);
    };
    const std::string types = fmt::format("{}/{}", type_name(gu), type_name(dn));
    const struct {
      std::string name;
      std::function<void(int)> call;
      size_t bytes;
    } variants[] = {
        {types + " routed, 4 launches", routed, e.bytes_per_token()},
        {types + " routed, 2 launches", [&](int i) { fused(i, false); }, e.bytes_per_token()},
        {types + " + shared, 4 + 4 launches (no add)", [&](int i) { routed(i), shared_alone(i); },
         e.bytes_per_token() + shared.bytes()},
        {types + " + shared, 2 launches", [&](int i) { fused(i, true); }, e.bytes_per_token() + shared.bytes()},
    };
    for (const auto& v : variants) {
      median_ms(stream, 10, iters, v.call);  // warm-up outside the capture
      const double us = graph_us(stream, iters, 8, v.call);
      const double gbs = double(v.bytes) / (us * 1e-6) / 1e9;
      fmt::print("{:<46} {:>10.2f} {:>10.2f} {:>9.1f} {:>6.1f}%\n", v.name, double(v.bytes) / 1e6, us, gbs,
                 100.0 * gbs / copy_gbs);
    }
  }
}

// One decode step's products for the q2 recipe: 43 layers of attention projections (Q8_0),
// router (F16), shared expert (Q8_0), 6 routed experts (IQ2_XXS/Q2_K, one 256-expert set
// reused by every layer with different ids), then the Q8_0 output head, launched as the
// session does: q_a + kv as one launch, attn_output_a as one grouped launch (8 groups), the
// routed and shared experts as the two launches of moe_fused.
void bench_step(void* stream, int iters, double copy_gbs) {
  using T = GgmlType;
  const int n_layer = 43;
  struct Layer {
    DeviceBuffer q_a, q_b, kv, o_a, o_b, router, sh_gate, sh_up, sh_down;
  };
  const Matrix q_a{T::Q8_0, 1024, 4096, ""}, q_b{T::Q8_0, 32768, 1024, ""}, kv{T::Q8_0, 512, 4096, ""},
      o_a{T::Q8_0, 8192, 4096, ""}, o_b{T::Q8_0, 4096, 8192, ""}, router{T::F16, 256, 4096, ""},
      sh_gu{T::Q8_0, 2048, 4096, ""}, sh_dn{T::Q8_0, 4096, 2048, ""}, head{T::Q8_0, 129280, 4096, ""};
  auto alloc = [&](const Matrix& m, uint64_t seed) {
    DeviceBuffer b(m.bytes());
    fill_random_weights(m.type, b.data(), m.nrows, m.ncols, seed, stream);
    return b;
  };
  std::vector<Layer> layers;
  uint64_t seed = 1000;
  for (int l = 0; l < n_layer; ++l)
    layers.push_back(Layer{alloc(q_a, seed++), alloc(q_b, seed++), alloc(kv, seed++), alloc(o_a, seed++),
                           alloc(o_b, seed++), alloc(router, seed++), alloc(sh_gu, seed++), alloc(sh_gu, seed++),
                           alloc(sh_dn, seed++)});
  DeviceBuffer dhead = alloc(head, seed++);
  Experts ex = make_experts(T::IQ2_XXS, T::Q2_K, 256, stream, seed++);
  DeviceBuffer ids = random_ids(n_layer, ex.s.n_used, 256, 9);
  std::vector<float> rw(size_t(ex.s.n_used), 0.25f);
  DeviceBuffer drw(rw.size() * sizeof(float));
  drw.upload(rw.data(), drw.size());
  const auto x = random_vec(32768, 4);
  DeviceBuffer dx(x.size() * sizeof(float)), a1(x.size() * sizeof(float)), a2(x.size() * sizeof(float)),
      a3(x.size() * sizeof(float)), ylog(size_t(head.nrows) * sizeof(float));
  dx.upload(x.data(), dx.size());
  const SharedExpert sh_shape{T::Q8_0, nullptr, nullptr, nullptr, sh_gu.nrows, 10.0f};
  DeviceBuffer act(activation_bytes(T::Q8_0, 32768) + 256), ws(moe_fused_workspace_bytes(ex.s, &sh_shape));
  const size_t layer_bytes = q_a.bytes() + q_b.bytes() + kv.bytes() + o_a.bytes() + o_b.bytes() + router.bytes() +
                             2 * sh_gu.bytes() + sh_dn.bytes() + ex.bytes_per_token();
  const size_t step_bytes = layer_bytes * n_layer + head.bytes();
  float* X = dx.as<float>();
  float *y1 = a1.as<float>(), *y2 = a2.as<float>(), *y3 = a3.as<float>();
  auto step = [&](void* s) {
    for (int l = 0; l < n_layer; ++l) {
      const Layer& L = layers[size_t(l)];
      // Attention input x: q_a and kv share one quantization and one launch.
      quantize_activation(T::Q8_0, X, act.data(), 4096, s);
      const MatvecPart q_a_kv[] = {{L.q_a.data(), 1024, y1}, {L.kv.data(), 512, y2}};
      matvec_parts_q(T::Q8_0, 4096, q_a_kv, 2, act.data(), s);
      matvec(T::Q8_0, L.q_b.data(), 32768, 1024, y1, y3, act.data(), s);
      // o_a: 8 groups of 1024 rows, each on its 4096-value slice of the 32768-value input.
      quantize_activation(T::Q8_0, y3, act.data(), 32768, s);
      matvec_grouped_q(T::Q8_0, L.o_a.data(), 8192, 4096, 8, act.data(), y1, s);
      matvec(T::Q8_0, L.o_b.data(), 4096, 8192, y1, y2, act.data(), s);
      // FFN input: router, shared expert, routed experts.
      matvec_q(T::F16, L.router.data(), 256, 4096, y2, y3, s);
      // Routed experts and the shared expert in the session's two launches.
      const SharedExpert sh{T::Q8_0, L.sh_gate.data(), L.sh_up.data(), L.sh_down.data(), sh_gu.nrows, 10.0f};
      moe_fused(ex.s, ex.gate.data(), ex.up.data(), ex.down.data(), ids.as<int32_t>() + l * ex.s.n_used,
                drw.as<float>(), &sh, y2, X, ws.data(), s);
    }
    matvec(T::Q8_0, dhead.data(), head.nrows, 4096, X, ylog.as<float>(), act.data(), s);
  };
  const double ms_stream = median_ms(stream, 3, iters, [&](int) { step(stream); });
  Graph g(stream, step);
  const double ms_graph = median_ms(stream, 3, iters, [&](int) { g.launch(stream); });
  fmt::print("\ndecode step, q2 recipe products (43 layers: attention Q8_0, router F16, 6 experts IQ2_XXS/Q2_K "
             "and the Q8_0 shared expert in two launches (moe_fused); head Q8_0)\n");
  fmt::print("  weight bytes read: {:.1f} MB\n", double(step_bytes) / 1e6);
  for (auto [name, ms] : {std::pair<const char*, double>{"stream launches", ms_stream}, {"CUDA graph", ms_graph}}) {
    const double gbs = double(step_bytes) / (ms * 1e-3) / 1e9;
    fmt::print("  {:<16} {:>8.3f} ms  {:>7.1f} GB/s  {:>5.1f}% of copy  -> {:>6.1f} tokens/s (these products only)\n",
               name, ms, gbs, 100.0 * gbs / copy_gbs, 1e3 / ms);
  }
  fmt::print("  roofline at the copy bandwidth: {:.3f} ms -> {:.1f} tokens/s\n",
             double(step_bytes) / (copy_gbs * 1e9) * 1e3, copy_gbs * 1e9 / double(step_bytes));
}

// Prefill GEMMs: Y = X W^T for T tokens with the activations already quantized (the quantizer
// is timed separately). ops = 2 * rows * cols * T; compute bound, so single launches timed
// with events (each runs >= tens of microseconds; launch latency is a few percent at most).
void bench_prefill(void* stream, int iters, const DeviceInfo& dev) {
  using T = GgmlType;
  const std::vector<Matrix> shapes = {
      {T::Q8_0, 1024, 4096, "attn_q_a"},      {T::Q8_0, 32768, 1024, "attn_q_b"},
      {T::Q8_0, 512, 4096, "attn_kv"},        {T::Q8_0, 8192, 4096, "attn_output_a"},
      {T::Q8_0, 4096, 8192, "attn_output_b"}, {T::Q8_0, 2048, 4096, "shexp gate/up"},
      {T::Q8_0, 4096, 2048, "shexp down"},    {T::IQ2_XXS, 2048, 4096, "expert gate/up q2"},
      {T::Q2_K, 4096, 2048, "expert down q2"}, {T::Q4_K, 2048, 4096, "expert gate/up q4"},
      {T::Q4_K, 4096, 2048, "expert down q4"}, {T::MXFP4, 2048, 4096, "expert gate/up mxfp4"},
      {T::MXFP4, 4096, 2048, "expert down mxfp4"}, {T::F16, 256, 4096, "router f16"},
      {T::F16, 1024, 4096, "f16 1024x4096"},
  };
  // H100 SXM: 1979 dense int8 TOPS (989 dense f16 TFLOP/s); H200 has the same tensor cores.
  const double peak = 1979.0;
  fmt::print("\nprefill GEMMs (matmul_q; dense int8 peak of the H100/H200 SXM: {:.0f} TOPS)\n", peak);
  fmt::print("{:<22} {:>8} {:>14} {:>6} {:>10} {:>9} {:>7} {:>10}\n", "matmul", "type", "rows x cols", "T", "us",
             "TOPS", "%peak", "quant us");
  for (const Matrix& m : shapes) {
    DeviceBuffer w(m.bytes());
    fill_random_weights(m.type, w.data(), m.nrows, m.ncols, 3, stream);
    for (int64_t tok : {int64_t(512), int64_t(2048)}) {
      const auto x = random_vec(tok * m.ncols, 7);
      DeviceBuffer dx(x.size() * sizeof(float));
      dx.upload(x.data(), dx.size());
      const size_t ab = activation_bytes(m.type, m.ncols);
      DeviceBuffer act(std::max<size_t>(ab * size_t(tok), 16));
      DeviceBuffer y(size_t(tok * m.nrows) * sizeof(float));
      const void* a = ab ? act.data() : dx.data();
      const double qms = ab ? median_ms(stream, 3, iters, [&](int) {
        quantize_activation(m.type, dx.as<float>(), act.data(), tok * m.ncols, stream);
      }) : 0.0;
      const double ms = median_ms(stream, 3, iters, [&](int) {
        matmul_q(m.type, w.data(), m.nrows, m.ncols, a, tok, y.as<float>(), stream);
      });
      const double tops = 2.0 * double(m.nrows) * double(m.ncols) * double(tok) / (ms * 1e-3) / 1e12;
      fmt::print("{:<22} {:>8} {:>14} {:>6} {:>10.1f} {:>9.1f} {:>6.1f}% {:>10.1f}\n", m.name, type_name(m.type),
                 fmt::format("{}x{}", m.nrows, m.ncols), tok, ms * 1e3, tops, 100.0 * tops / peak, qms * 1e3);
    }
  }

  // One routed-expert layer for 2048 tokens: 256 experts, top-6, random distinct ids.
  fmt::print("\ngrouped MoE layer (moe_experts_batch: quantize, route, gate/up+SwiGLU, quantize h, down, sum)\n");
  fmt::print("{:<34} {:>6} {:>10} {:>9} {:>7} {:>10}\n", "experts", "T", "ms", "TOPS", "%peak", "tokens/s");
  const std::pair<GgmlType, GgmlType> kinds[] = {{GgmlType::IQ2_XXS, GgmlType::Q2_K},
                                                 {GgmlType::Q4_K, GgmlType::Q4_K},
                                                 {GgmlType::MXFP4, GgmlType::MXFP4}};
  for (auto [gu, dn] : kinds) {
    Experts e = make_experts(gu, dn, 256, stream, 300);
    MoeBatchShape s;
    s.gate_up_type = gu;
    s.down_type = dn;
    for (int64_t tok : {int64_t(512), int64_t(2048)}) {
      DeviceBuffer ids = random_ids(int(tok), s.n_used, s.n_expert, 11);
      std::vector<float> w(size_t(tok * s.n_used), 0.25f);
      DeviceBuffer dw(w.size() * sizeof(float));
      dw.upload(w.data(), dw.size());
      const auto x = random_vec(tok * s.n_embd, 5);
      DeviceBuffer dx(x.size() * sizeof(float)), dy(x.size() * sizeof(float));
      dx.upload(x.data(), dx.size());
      DeviceBuffer ws(moe_batch_workspace_bytes(s, tok));
      const double ms = median_ms(stream, 2, iters, [&](int) {
        moe_experts_batch(s, e.gate.data(), e.up.data(), e.down.data(), ids.as<int32_t>(), dw.as<float>(),
                          dx.as<float>(), tok, dy.as<float>(), ws.data(), stream);
      });
      const double ops = 2.0 * double(tok) * s.n_used * 3.0 * double(s.n_ff) * double(s.n_embd);
      const double tops = ops / (ms * 1e-3) / 1e12;
      fmt::print("{:<34} {:>6} {:>10.3f} {:>9.1f} {:>6.1f}% {:>10.0f}\n",
                 fmt::format("{} gate/up, {} down", type_name(gu), type_name(dn)), tok, ms, tops,
                 100.0 * tops / peak, double(tok) / (ms * 1e-3));
    }
  }
  (void)dev;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"DwarfStar CUDA decode kernel benchmark"};
  int iters = 50;
  bool no_step = false, prefill = false, moe_only = false;
  app.add_option("--iters", iters, "timed iterations per kernel (median reported)");
  app.add_flag("--no-step", no_step, "skip the decode-step estimate (needs ~9 GB of GPU memory)");
  app.add_flag("--prefill", prefill, "prefill GEMMs and the grouped MoE layer instead of the decode kernels");
  app.add_flag("--moe", moe_only, "only the decode MoE rows (quick A/B of the MoE kernels)");
  CLI11_PARSE(app, argc, argv);
  try {
    const DeviceInfo dev = require_device(0);
    fmt::print("device: {} (cc {}.{}, {} SMs, {:.1f} GiB)\n", dev.name, dev.cc_major, dev.cc_minor, dev.sm_count,
               double(dev.total_bytes) / double(1ull << 30));
    const double copy = measure_copy_bandwidth();
    fmt::print("measured copy bandwidth (read + write): {:.1f} GB/s\n", copy);
    Stream stream;
    if (prefill) {
      bench_prefill(stream.handle(), iters, dev);
      return 0;
    }
    if (moe_only) {
      bench_moe(stream.handle(), iters, copy);
      return 0;
    }
    bench_matvec(stream.handle(), iters, copy);
    bench_ramp(stream.handle(), iters, copy);
    bench_moe(stream.handle(), iters, copy);
    bench_fused(stream.handle(), iters, copy);
    if (!no_step) bench_step(stream.handle(), std::max(5, iters / 5), copy);
  } catch (const std::exception& e) {
    fmt::print(stderr, "ds4-bench-cuda: {}\n", e.what());
    return 1;
  }
  return 0;
}
#else   // CPU-only build: apps/ builds every program, so this one still links.
int main() {
  fmt::print(stderr, "ds4-bench-cuda: this build has no CUDA backend (nvcc was not found)\n");
  return 1;
}
#endif
