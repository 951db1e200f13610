// GPU matvec kernels, activation quantizers and the fused MoE experts against the CPU
// reference (backend/cpu/matmul.h), at the Flash shapes. Skips visibly without a GPU.
//
// Tolerances: the quantized products sum exact int32 block sums with one float multiply per
// (sub-)block, as the CPU does, but in a different order (per lane, then a warp tree), so
// they differ from the CPU only by float summation order: max |gpu - cpu| <= 1e-4 * max|cpu|
// and ||gpu - cpu|| / ||cpu|| <= 1e-5. The activation quantizers must be bit-identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cuda/buffer.h"
#include "cuda_test_util.h"
#include "backend/cuda/device.h"
#include "backend/cuda/matvec.h"
#include "core/thread_pool.h"
#include "quant/blocks.h"
#include "quant/quant.h"

namespace ds4::cuda::test {
namespace {

#define DS4_REQUIRE_GPU()                                                          \
  do {                                                                             \
    if (list_devices().empty()) GTEST_SKIP() << "no CUDA GPU: GPU kernel test not run"; \
  } while (0)

using test_util::compare;
using test_util::download;
using test_util::Err;
using test_util::expect_close;
using test_util::gaussian;
using test_util::pool;
using test_util::ScopedEnv;
using test_util::ScopedSwitchOff;
using test_util::upload;

struct Case {
  GgmlType type;
  int64_t nrows, ncols;
};

// Flash shapes (architecture.md 2.2/2.3) plus small odd ones that take the unaligned path.
std::vector<Case> cases() {
  using T = GgmlType;
  return {
      {T::Q8_0, 1024, 4096},    // attn_q_a
      {T::Q8_0, 32768, 1024},   // attn_q_b
      {T::Q8_0, 512, 4096},     // attn_kv
      {T::Q8_0, 8192, 4096},    // attn_output_a
      {T::Q8_0, 4096, 8192},    // attn_output_b
      {T::Q8_0, 2048, 4096},    // shared gate/up
      {T::Q8_0, 4096, 2048},    // shared down
      {T::Q8_0, 129280, 4096},  // output head
      {T::Q8_0, 37, 96},        // unaligned rows (3 blocks)
      {T::IQ2_XXS, 2048, 4096}, // q2 expert gate/up
      {T::IQ2_XXS, 37, 768},
      {T::Q2_K, 4096, 2048},    // q2 expert down
      {T::Q2_K, 37, 768},
      {T::Q4_K, 2048, 4096},    // q4 expert gate/up
      {T::Q4_K, 4096, 2048},    // q4 expert down
      {T::Q4_K, 37, 768},
      {T::MXFP4, 2048, 4096},
      {T::MXFP4, 4096, 2048},
      {T::MXFP4, 37, 96},
      {T::F16, 256, 4096},      // router
      {T::F16, 1024, 4096},     // compressor / indexer sizes
      {T::F16, 37, 40},
      {T::BF16, 1024, 4096},
      {T::BF16, 37, 40},
      {T::F32, 1024, 4096},
      {T::F32, 37, 36},
  };
}

TEST(CudaMatvec, MatchesCpuReferenceAtFlashShapes) {
  DS4_REQUIRE_GPU();
  uint64_t seed = 1;
  for (const Case& c : cases()) {
    const std::string what = std::string(type_name(c.type)) + " " + std::to_string(c.nrows) + "x" +
                             std::to_string(c.ncols);
    const size_t wbytes = row_bytes(c.type, c.ncols) * size_t(c.nrows);
    DeviceBuffer dw(wbytes);
    fill_random_weights(c.type, dw.data(), c.nrows, c.ncols, seed++);
    const auto w = download<uint8_t>(dw, wbytes);
    const auto x = gaussian(c.ncols, 1.0f, uint32_t(seed++));
    std::vector<float> ref(size_t(c.nrows));
    cpu::matvec(c.type, w.data(), c.nrows, c.ncols, x.data(), ref.data(), &pool());

    DeviceBuffer dx = upload(x);
    DeviceBuffer dy(ref.size() * sizeof(float));
    dy.fill_bytes(0xFF);  // NaN poison: every element must be written
    DeviceBuffer scratch(std::max<size_t>(activation_bytes(c.type, c.ncols), 16));
    matvec(c.type, dw.data(), c.nrows, c.ncols, dx.as<float>(), dy.as<float>(), scratch.data());
    check_last_error(what.c_str());
    device_synchronize();
    expect_close(download<float>(dy, ref.size()), ref, what);
  }
}

// Random weights of `type` made on the device, and their bytes on the host for the reference.
struct HostDeviceWeights {
  DeviceBuffer d;
  std::vector<uint8_t> h;
};
HostDeviceWeights random_weights(GgmlType type, int64_t nrows, int64_t ncols, uint64_t seed) {
  const size_t bytes = row_bytes(type, ncols) * size_t(nrows);
  HostDeviceWeights w{DeviceBuffer(std::max<size_t>(bytes, 16)), {}};
  if (nrows > 0) fill_random_weights(type, w.d.data(), nrows, ncols, seed);
  w.h = download<uint8_t>(w.d, bytes);
  return w;
}

// The activation a product reads: x itself for float weights, else quantized on the device.
DeviceBuffer device_activation(GgmlType type, const DeviceBuffer& dx, int64_t n) {
  DeviceBuffer act(std::max<size_t>(activation_bytes(type, n), 16));
  quantize_activation(type, dx.as<float>(), act.data(), n);
  return act;
}
bool reads_floats(GgmlType type) { return activation_bytes(type, 256) == 0; }

// The grouped output projection in one launch vs cpu::matvec of each group's rows on its own
// slice of x: the Flash o_a (8 groups of 1024 rows, 4096 columns each), other types, and odd
// shapes (unaligned rows, groups smaller than a warp's share).
TEST(CudaMatvec, GroupedProductMatchesCpuPerGroup) {
  DS4_REQUIRE_GPU();
  struct GroupCase {
    GgmlType type;
    int64_t groups, rows_per_group, ncols;
  };
  using T = GgmlType;
  uint64_t seed = 500;
  for (const GroupCase& c : {GroupCase{T::Q8_0, 8, 1024, 4096}, GroupCase{T::Q8_0, 6, 5, 96},
                             GroupCase{T::IQ2_XXS, 4, 300, 512}, GroupCase{T::Q2_K, 3, 7, 768},
                             GroupCase{T::Q2_K, 2, 100, 2048},
                             GroupCase{T::MXFP4, 5, 33, 64}, GroupCase{T::F16, 4, 64, 1024},
                             GroupCase{T::F32, 3, 9, 36}}) {
    const int64_t nrows = c.groups * c.rows_per_group;
    const std::string what = std::string("grouped ") + std::string(type_name(c.type)) + " " +
                             std::to_string(c.groups) + "x" + std::to_string(c.rows_per_group) + "x" +
                             std::to_string(c.ncols);
    const HostDeviceWeights w = random_weights(c.type, nrows, c.ncols, seed++);
    const auto x = gaussian(c.groups * c.ncols, 1.0f, uint32_t(seed++));
    std::vector<float> ref(static_cast<size_t>(nrows));
    const size_t rb = row_bytes(c.type, c.ncols);
    for (int64_t g = 0; g < c.groups; ++g)
      cpu::matvec(c.type, w.h.data() + size_t(g * c.rows_per_group) * rb, c.rows_per_group, c.ncols,
                  x.data() + g * c.ncols, ref.data() + g * c.rows_per_group, &pool());

    DeviceBuffer dx = upload(x);
    // All groups quantized in one call, as the session does.
    const DeviceBuffer act = device_activation(c.type, dx, c.groups * c.ncols);
    DeviceBuffer dy(ref.size() * sizeof(float));
    dy.fill_bytes(0xFF);
    matvec_grouped_q(c.type, w.d.data(), nrows, c.ncols, c.groups, reads_floats(c.type) ? dx.data() : act.data(),
                     dy.as<float>());
    check_last_error(what.c_str());
    device_synchronize();
    expect_close(download<float>(dy, ref.size()), ref, what);
  }
  DeviceBuffer b(4096);
  EXPECT_THROW(matvec_grouped_q(GgmlType::Q8_0, b.data(), 10, 32, 3, b.data(), b.as<float>()), std::exception);
  EXPECT_THROW(matvec_grouped_q(GgmlType::Q8_0, b.data(), 10, 32, 0, b.data(), b.as<float>()), std::exception);
}

// Several products of one input in one launch vs cpu::matvec of each: q_a + kv (Q8_0), the
// compressor and indexer products of x (F16, up to six), and odd shapes (unaligned rows, an
// empty part, parts shorter than a warp's share).
TEST(CudaMatvec, SharedInputPartsMatchCpu) {
  DS4_REQUIRE_GPU();
  struct PartsCase {
    GgmlType type;
    int64_t ncols;
    std::vector<int64_t> rows;
  };
  using T = GgmlType;
  uint64_t seed = 700;
  for (const PartsCase& c : {PartsCase{T::Q8_0, 4096, {1024, 512}}, PartsCase{T::F16, 4096, {1024, 1024, 256, 256, 64}},
                             PartsCase{T::Q8_0, 96, {37, 0, 5, 1, 70, 3}}, PartsCase{T::IQ2_XXS, 4096, {2048, 2048}},
                             PartsCase{T::Q4_K, 512, {9, 300}}, PartsCase{T::BF16, 40, {37, 2}}}) {
    const std::string what = std::string("parts ") + std::string(type_name(c.type)) + " x" +
                             std::to_string(c.ncols) + " (" + std::to_string(c.rows.size()) + " parts)";
    const auto x = gaussian(c.ncols, 1.0f, uint32_t(seed++));
    DeviceBuffer dx = upload(x);
    const DeviceBuffer act = device_activation(c.type, dx, c.ncols);
    std::vector<HostDeviceWeights> ws;
    std::vector<DeviceBuffer> ys;
    std::vector<MatvecPart> parts;
    for (int64_t n : c.rows) {
      ws.push_back(random_weights(c.type, n, c.ncols, seed++));
      ys.emplace_back(std::max<size_t>(size_t(n) * sizeof(float), 16));
      ys.back().fill_bytes(0xFF);
      parts.push_back(MatvecPart{ws.back().d.data(), n, ys.back().as<float>()});
    }
    matvec_parts_q(c.type, c.ncols, parts.data(), int(parts.size()), reads_floats(c.type) ? dx.data() : act.data());
    check_last_error(what.c_str());
    device_synchronize();
    for (size_t i = 0; i < parts.size(); ++i) {
      if (c.rows[i] == 0) continue;
      std::vector<float> ref(size_t(c.rows[i]));
      cpu::matvec(c.type, ws[i].h.data(), c.rows[i], c.ncols, x.data(), ref.data(), &pool());
      expect_close(download<float>(ys[i], ref.size()), ref, what + " part " + std::to_string(i));
    }
  }
  DeviceBuffer b(4096);
  std::vector<MatvecPart> too_many(size_t(kMaxMatvecParts + 1), MatvecPart{b.data(), 1, b.as<float>()});
  EXPECT_THROW(matvec_parts_q(GgmlType::Q8_0, 32, too_many.data(), int(too_many.size()), b.data()), std::exception);
  EXPECT_THROW(matvec_parts_q(GgmlType::Q8_0, 32, too_many.data(), 0, b.data()), std::exception);
  EXPECT_THROW(matvec_parts_q(GgmlType::Q8_0, 33, too_many.data(), 1, b.data()), std::exception);
}

// The IQ2_XXS decoder negates a grid byte g as (g ^ 0xFF) + 1 with one 32-bit add, which is
// exact only when no byte is 0 (the +1 would carry into the next byte) or >= 128.
TEST(CudaMatvec, Iq2xxsGridBytesAllowCarryFreeNegation) {
  const uint64_t* grid = quant::iq2xxs_grid();
  for (int i = 0; i < 256; ++i)
    for (int j = 0; j < 8; ++j) {
      const int byte = int((grid[i] >> (8 * j)) & 0xFF);
      EXPECT_TRUE(byte >= 1 && byte <= 127) << "grid entry " << i << " byte " << j << " = " << byte;
    }
}

// Activations with the special cases the CPU quantizers define: all-zero blocks, equal
// magnitudes of opposite sign (first wins in Q8_K), NaN, inf, huge and tiny values.
std::vector<float> tricky_activations(int64_t n, uint32_t seed) {
  auto x = gaussian(n, 2.0f, seed);
  for (int j = 0; j < 256; ++j) x[size_t(j)] = 0.0f;  // one zero Q8_K block
  x[300] = -5.0f;
  x[301] = 5.0f;    // tie, negative first
  x[600] = 7.0f;
  x[700] = -7.0f;   // tie, positive first
  x[1000] = std::numeric_limits<float>::quiet_NaN();
  x[1500] = -std::numeric_limits<float>::quiet_NaN();
  x[2100] = std::numeric_limits<float>::infinity();
  x[2600] = 1e30f;
  x[3000] = 1e-30f;
  for (int j = 3072; j < 3072 + 32; ++j) x[size_t(j)] = 0.5f * float(j % 7);  // rounding ties
  return x;
}

TEST(CudaQuantize, ActivationsBitExactWithCpu) {
  DS4_REQUIRE_GPU();
  const int64_t n = 8192;
  for (uint32_t seed : {1u, 2u, 3u}) {
    const auto x = tricky_activations(n, seed);
    DeviceBuffer dx = upload(x);
    for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q2_K}) {  // BlockQ8_0Act and BlockQ8_K
      const size_t bytes = activation_bytes(t, n);
      std::vector<uint8_t> ref(bytes);
      cpu::quantize_activation(t, x.data(), ref.data(), n);
      DeviceBuffer da(bytes);
      da.fill_bytes(0xAB);
      quantize_activation(t, dx.as<float>(), da.data(), n);
      check_last_error("quantize_activation");
      device_synchronize();
      const auto got = download<uint8_t>(da, bytes);
      size_t first = bytes;
      for (size_t i = 0; i < bytes; ++i)
        if (got[i] != ref[i]) {
          first = i;
          break;
        }
      EXPECT_EQ(first, bytes) << type_name(cpu::activation_type(t)) << " seed " << seed
                              << ": first differing byte " << first << " gpu " << int(got[first < bytes ? first : 0])
                              << " cpu " << int(ref[first < bytes ? first : 0]);
    }
  }
}

float silu_clamped(float g, float u, float limit) {
  g = std::min(g, limit);
  u = std::clamp(u, -limit, limit);
  return g / (1.0f + std::exp(-g)) * u;
}

// Experts of one type set on the host (GGUF stacked layout), with their CPU composition of
// architecture.md 3.5.2: quantize x, gate/up products, clamped SwiGLU times the route weight,
// quantize h, down products summed in k order.
struct HostExperts {
  GgmlType gate_up_type, down_type;
  int64_t n_embd, n_ff;
  std::vector<uint8_t> gate, up, down;
  size_t gu_rb() const { return row_bytes(gate_up_type, n_embd); }
  size_t dn_rb() const { return row_bytes(down_type, n_ff); }

  std::vector<float> hidden(const std::vector<int32_t>& ids, const std::vector<float>& w, float limit,
                            const std::vector<float>& x, int* clamped = nullptr) const {
    std::vector<uint8_t> ax(cpu::activation_bytes(gate_up_type, n_embd));
    cpu::quantize_activation(gate_up_type, x.data(), ax.data(), n_embd);
    const size_t slab = gu_rb() * size_t(n_ff);
    std::vector<float> h(ids.size() * size_t(n_ff));
    for (size_t k = 0; k < ids.size(); ++k)
      for (int64_t r = 0; r < n_ff; ++r) {
        const size_t off = size_t(ids[k]) * slab + size_t(r) * gu_rb();
        const float gv = cpu::vec_dot(gate_up_type, gate.data() + off, ax.data(), n_embd);
        const float uv = cpu::vec_dot(gate_up_type, up.data() + off, ax.data(), n_embd);
        if (clamped != nullptr) *clamped += (gv > limit) + (std::fabs(uv) > limit);
        h[k * size_t(n_ff) + size_t(r)] = w[k] * silu_clamped(gv, uv, limit);
      }
    return h;
  }

  std::vector<float> down_of(const std::vector<int32_t>& ids, const std::vector<float>& h) const {
    const int64_t n = int64_t(ids.size()) * n_ff;
    std::vector<uint8_t> ah(cpu::activation_bytes(down_type, n));
    cpu::quantize_activation(down_type, h.data(), ah.data(), n);
    const size_t arb = cpu::activation_bytes(down_type, n_ff), slab = dn_rb() * size_t(n_embd);
    std::vector<float> y(size_t(n_embd), 0.0f);
    for (int64_t r = 0; r < n_embd; ++r)
      for (size_t k = 0; k < ids.size(); ++k)
        y[size_t(r)] += cpu::vec_dot(down_type, down.data() + size_t(ids[k]) * slab + size_t(r) * dn_rb(),
                                     ah.data() + k * arb, n_ff);
    return y;
  }
};

// n_expert experts of random valid blocks, on the device (filled there) and copied to the host.
struct Experts {
  DeviceBuffer gate, up, down;
  HostExperts host;
};
Experts make_experts(GgmlType gate_up_type, GgmlType down_type, int64_t n_embd, int64_t n_ff, int n_expert,
                     uint64_t seed) {
  Experts e{DeviceBuffer(row_bytes(gate_up_type, n_embd) * size_t(n_ff) * size_t(n_expert)),
            DeviceBuffer(row_bytes(gate_up_type, n_embd) * size_t(n_ff) * size_t(n_expert)),
            DeviceBuffer(row_bytes(down_type, n_ff) * size_t(n_embd) * size_t(n_expert)),
            HostExperts{gate_up_type, down_type, n_embd, n_ff, {}, {}, {}}};
  fill_random_weights(gate_up_type, e.gate.data(), n_ff * n_expert, n_embd, seed);
  fill_random_weights(gate_up_type, e.up.data(), n_ff * n_expert, n_embd, seed + 1);
  fill_random_weights(down_type, e.down.data(), n_embd * n_expert, n_ff, seed + 2);
  e.host.gate = download<uint8_t>(e.gate, e.gate.size());
  e.host.up = download<uint8_t>(e.up, e.up.size());
  e.host.down = download<uint8_t>(e.down, e.down.size());
  return e;
}

struct ExpertTypes {
  GgmlType gate_up, down;
};
// The routed expert types of the q2, q4 and MXFP4 recipes.
constexpr ExpertTypes kRecipeExperts[] = {{GgmlType::IQ2_XXS, GgmlType::Q2_K},
                                          {GgmlType::Q4_K, GgmlType::Q4_K},
                                          {GgmlType::MXFP4, GgmlType::MXFP4}};

TEST(CudaMoe, FusedExpertsMatchCpuComposition) {
  DS4_REQUIRE_GPU();
  const int n_expert = 8;
  const std::vector<int32_t> ids = {5, 0, 7, 3, 6, 1};
  const std::vector<float> route_w = {0.41f, 0.22f, 0.35f, 0.18f, 0.27f, 0.07f};
  for (ExpertTypes ty : kRecipeExperts) {
    MoeShape s;
    s.gate_up_type = ty.gate_up;
    s.down_type = ty.down;
    s.n_used = int(ids.size());
    const std::string what = std::string(type_name(ty.gate_up)) + "/" + std::string(type_name(ty.down));
    const Experts e = make_experts(ty.gate_up, ty.down, s.n_embd, s.n_ff, n_expert, 11);
    // sigma 3 puts a good share of gate/up values past the clamp limit of 10.
    const auto x = gaussian(s.n_embd, 3.0f, 99);
    int clamped = 0;
    const std::vector<float> h_ref = e.host.hidden(ids, route_w, s.limit, x, &clamped);

    DeviceBuffer dids = upload(ids), dw = upload(route_w), dx = upload(x);
    DeviceBuffer ws(moe_workspace_bytes(s));
    ws.fill_bytes(0xFF);
    DeviceBuffer dy(size_t(s.n_embd) * sizeof(float));
    dy.fill_bytes(0xFF);
    moe_experts(s, e.gate.data(), e.up.data(), e.down.data(), dids.as<int32_t>(), dw.as<float>(), dx.as<float>(),
                dy.as<float>(), ws.data());
    check_last_error("moe_experts");
    device_synchronize();
    const auto y = download<float>(dy, size_t(s.n_embd));
    std::vector<float> h(h_ref.size());
    const size_t h_off = size_t(reinterpret_cast<const uint8_t*>(moe_hidden(s, ws.data())) -
                                static_cast<const uint8_t*>(ws.data()));
    ws.download(h.data(), h.size() * sizeof(float), h_off);

    EXPECT_GT(clamped, 0) << what << ": test input never reaches the clamp";
    // Gate/up: float summation order only, then the same SwiGLU (expf vs std::exp: ulps).
    expect_close(h, h_ref, what + " hidden", 1e-4, 1e-5);
    // Down on the GPU's own hidden state: summation order only.
    expect_close(y, e.host.down_of(ids, h), what + " down(h_gpu)", 1e-4, 1e-5);
    // End to end: a hidden value on a rounding boundary may quantize one code apart.
    expect_close(y, e.host.down_of(ids, h_ref), what + " end to end", 1e-2, 2e-3);
  }
}

// y of one moe_fused call (workspace and y filled with 0xFF first: a value not written, or
// read before it is written, shows). With quantized_hidden_diff: also how many bytes of the
// routed h that the call left quantized in the workspace (moe_fused_quantized_hidden) differ
// from quantize_activation of its f32 h (all of them still 0xFF if no launch wrote them).
std::vector<float> run_moe_fused(const MoeShape& s, const Experts& e, const DeviceBuffer& ids, const DeviceBuffer& w,
                                 const SharedExpert* shared, const DeviceBuffer& x,
                                 size_t* quantized_hidden_diff = nullptr, bool x_early = false) {
  DeviceBuffer ws(moe_fused_workspace_bytes(s, shared));
  ws.fill_bytes(0xFF);
  DeviceBuffer dy(size_t(s.n_embd) * sizeof(float));
  dy.fill_bytes(0xFF);
  moe_fused(s, e.gate.data(), e.up.data(), e.down.data(), ids.as<int32_t>(), w.as<float>(), shared, x.as<float>(),
            dy.as<float>(), ws.data(), nullptr, x_early);
  check_last_error("moe_fused");
  if (quantized_hidden_diff != nullptr) {
    const int64_t n = int64_t(s.n_used) * s.n_ff;
    const size_t bytes = activation_bytes(s.down_type, n);
    DeviceBuffer want(bytes);
    quantize_activation(s.down_type, ws.as<float>(), want.data(), n);  // h: the workspace's start
    check_last_error("quantize_activation");
    device_synchronize();
    const size_t offset = size_t(static_cast<const uint8_t*>(moe_fused_quantized_hidden(s, shared, ws.data())) -
                                 ws.as<const uint8_t>());
    const auto got = download<uint8_t>(ws, bytes, offset), expected = download<uint8_t>(want, bytes);
    *quantized_hidden_diff = 0;
    for (size_t i = 0; i < bytes; ++i) *quantized_hidden_diff += got[i] != expected[i] ? 1 : 0;
  }
  device_synchronize();
  return download<float>(dy, size_t(s.n_embd));
}

size_t count_bit_differences(const std::vector<float>& a, const std::vector<float>& b) {
  size_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return n;
}

// moe_fused (two launches, routed + shared expert) against the separate launches it replaces
// (moe_experts for the routed experts, moe_experts with one expert of weight 1 for the shared
// expert, then an add) and against the CPU composition, at the Flash shapes of the q2, q4 and
// MXFP4 recipes (Q8_0 shared expert).
TEST(CudaMoe, TwoLaunchMoeMatchesSeparateLaunchesAndCpu) {
  DS4_REQUIRE_GPU();
  const int n_expert = 8;
  const std::vector<int32_t> ids = {2, 7, 0, 5, 4, 1}, shared_id = {0};
  const std::vector<float> route_w = {0.31f, 0.12f, 0.45f, 0.28f, 0.17f, 0.09f}, one = {1.0f};
  const Experts sh = make_experts(GgmlType::Q8_0, GgmlType::Q8_0, 4096, 2048, 1, 21);
  // The separate path splits the shared gate/up rows in two on 86..170 SMs (H100, H200), as
  // the fused kernel always does; there the results must agree bit for bit.
  const int sms = list_devices().front().sm_count;
  const bool same_order = sms >= 86 && sms <= 170;
  for (ExpertTypes ty : kRecipeExperts) {
    MoeShape s;
    s.gate_up_type = ty.gate_up;
    s.down_type = ty.down;
    s.n_used = int(ids.size());
    s.limit = 10.0f;
    const std::string what = std::string(type_name(ty.gate_up)) + "/" + std::string(type_name(ty.down));
    const Experts e = make_experts(ty.gate_up, ty.down, s.n_embd, s.n_ff, n_expert, 31);
    const SharedExpert shared{GgmlType::Q8_0, sh.gate.data(), sh.up.data(), sh.down.data(), 2048, 7.0f};
    ASSERT_TRUE(moe_fused_supported(s, &shared)) << what;
    ASSERT_TRUE(moe_fused_supported(s, nullptr)) << what;
    const auto x = gaussian(s.n_embd, 3.0f, 123);
    DeviceBuffer dids = upload(ids), dw = upload(route_w), dx = upload(x), d0 = upload(shared_id), d1 = upload(one);
    const std::vector<float> fused = run_moe_fused(s, e, dids, dw, &shared, dx),
                             fused_routed = run_moe_fused(s, e, dids, dw, nullptr, dx);

    // The separate launches.
    MoeShape s1 = s;
    s1.gate_up_type = s1.down_type = GgmlType::Q8_0;
    s1.n_used = 1;
    s1.limit = shared.limit;
    DeviceBuffer ws(moe_workspace_bytes(s)), ws1(moe_workspace_bytes(s1));
    DeviceBuffer dyr(size_t(s.n_embd) * sizeof(float)), dys(size_t(s.n_embd) * sizeof(float));
    moe_experts(s, e.gate.data(), e.up.data(), e.down.data(), dids.as<int32_t>(), dw.as<float>(), dx.as<float>(),
                dyr.as<float>(), ws.data());
    moe_experts(s1, sh.gate.data(), sh.up.data(), sh.down.data(), d0.as<int32_t>(), d1.as<float>(), dx.as<float>(),
                dys.as<float>(), ws1.data());
    check_last_error("moe_experts");
    device_synchronize();
    const auto yr = download<float>(dyr, size_t(s.n_embd)), ys = download<float>(dys, size_t(s.n_embd));
    std::vector<float> separate(yr.size());
    for (size_t i = 0; i < yr.size(); ++i) separate[i] = yr[i] + ys[i];

    // Routed experts alone: the same kernels' row order on any GPU of <= 170 SMs.
    EXPECT_EQ(count_bit_differences(fused_routed, yr), 0u) << what << ": routed only vs moe_experts";
    if (same_order) {
      EXPECT_EQ(count_bit_differences(fused, separate), 0u) << what << ": vs separate launches (" << sms << " SMs)";
    }
    expect_close(fused, separate, what + " vs separate launches", 1e-5, 1e-6);

    // CPU composition: routed + shared (weight 1), each with its own quantizations.
    const std::vector<float> y_routed = e.host.down_of(ids, e.host.hidden(ids, route_w, s.limit, x));
    const std::vector<float> y_shared = sh.host.down_of(shared_id, sh.host.hidden(shared_id, one, shared.limit, x));
    std::vector<float> ref(y_routed.size());
    for (size_t i = 0; i < ref.size(); ++i) ref[i] = y_routed[i] + y_shared[i];
    // A hidden value on a rounding boundary may quantize one code apart (as above).
    expect_close(fused, ref, what + " vs CPU", 1e-2, 2e-3);
    expect_close(fused_routed, y_routed, what + " routed only vs CPU", 1e-2, 2e-3);
  }
}

// MoE v2 (cp.async rings of whole rows, one task list for routed and shared rows, replicated
// IQ2_XXS tables) keeps the work split and every float operation of the kernels before it
// (DS4_CUDA_NO_MOE_V2=1), so the outputs must be the same bits: for the three recipes' types,
// with and without the shared expert, for ring shapes from 8 warps of 1 buffer (no overlap)
// to 24 warps (fewer buffers fit), and for 16 experts per token, where 16 warps' down rings
// (16 x 672 + 2176 bytes a row) do not fit and v2's gate/up runs before the old down kernel
// (with 4 down warps they fit). Each v2 shape runs with the down inputs quantized once per
// layer (moe_down_quantize_kernel, the default) and by every down block
// (DS4_CUDA_NO_MOE_DOWN_PREQ=1); the workspace is filled with 0xFF, so bytes the quantize
// launch leaves unwritten show. Each of those runs once with MoE v3's down decoder (the
// default: Q2_K units with word loads in a bank-conflict-free sub-block order, the integer
// sums in another order, the same floats) and once with v2's (DS4_CUDA_NO_MOE_V3=1).
TEST(CudaMoe, V2KernelsMatchPreviousKernelsBitForBit) {
  DS4_REQUIRE_GPU();
  const Experts sh = make_experts(GgmlType::Q8_0, GgmlType::Q8_0, 4096, 2048, 1, 41);
  const SharedExpert shared{GgmlType::Q8_0, sh.gate.data(), sh.up.data(), sh.down.data(), 2048, 7.0f};
  const auto x = gaussian(4096, 3.0f, 77);
  DeviceBuffer dx = upload(x);
  struct Case {
    ExpertTypes ty;
    int n_used;
  };
  const Case cases[] = {{kRecipeExperts[0], 6}, {kRecipeExperts[1], 6}, {kRecipeExperts[2], 6},
                        {kRecipeExperts[0], 16}};
  for (const Case& c : cases) {
    MoeShape s;
    s.gate_up_type = c.ty.gate_up;
    s.down_type = c.ty.down;
    s.n_used = c.n_used;
    const Experts e = make_experts(s.gate_up_type, s.down_type, s.n_embd, s.n_ff, 16, 51);
    std::vector<int32_t> ids(size_t(c.n_used));
    std::vector<float> route_w(ids.size());
    for (size_t k = 0; k < ids.size(); ++k) {
      ids[k] = int32_t((7 * k + 3) % 16);
      route_w[k] = 0.05f + 0.03f * float(k);
    }
    DeviceBuffer dids = upload(ids), dw = upload(route_w);
    for (const bool with_shared : {true, false}) {
      const SharedExpert* sp = with_shared ? &shared : nullptr;
      std::vector<float> before;
      {
        const ScopedEnv off("DS4_CUDA_NO_MOE_V2", "1");
        before = run_moe_fused(s, e, dids, dw, sp, dx);
      }
      const std::string what = std::string(type_name(s.gate_up_type)) + "/" + std::string(type_name(s.down_type)) +
                               " x " + std::to_string(c.n_used) + (with_shared ? " + shared" : " routed");
      EXPECT_TRUE(std::all_of(before.begin(), before.end(), [](float v) { return std::isfinite(v); })) << what;
      struct Shape {
        const char *warps, *down_warps, *stages;
        bool v2_down_6, v2_down_16;  // whether v2's down rings fit (227 KB) at 6 / 16 experts per token
      };
      // 24 down warps: 24 Q4_K ring buffers (6 x 1152 + 2176 bytes each) and the activation do
      // not fit; 16: at 16 experts no ring fits; 8 and 4 down warps: rings fit at 16 experts.
      const Shape shapes[] = {{"", "", "", true, false},
                              {"8", "8", "1", true, true},
                              {"24", "24", "4", false, false},
                              {"16", "16", "2", true, false},
                              {"16", "4", "1", true, true}};
      for (const Shape& shape : shapes) {
        const ScopedEnv w("DS4_CUDA_MOE_WARPS", shape.warps), dw_env("DS4_CUDA_MOE_DOWN_WARPS", shape.down_warps),
            st("DS4_CUDA_MOE_STAGES", shape.stages);
        // The down inputs quantized once per layer (default) and by every down block (switch),
        // each with v3's decoders (default) and v2's (switch).
        for (const bool preq : {true, false}) {
          for (const bool v3 : {true, false}) {
            const ScopedEnv preq_env("DS4_CUDA_NO_MOE_DOWN_PREQ", preq ? "" : "1"),
                v3_env("DS4_CUDA_NO_MOE_V3", v3 ? "" : "1");
            const std::string where = what + ", warps " + shape.warps + ", down warps " + shape.down_warps +
                                      ", stages " + shape.stages +
                                      (preq ? ", down inputs quantized once" : ", down inputs quantized per block") +
                                      (v3 ? ", v3 decoders" : ", v2 decoders");
            // Where v2's down runs, the once-per-layer path must have run and left the quantized
            // h in the workspace. Each with the early work before the PDL wait (default; x
            // quantized early or not) and without it (DS4_CUDA_NO_MOE_EARLY=1: the task order
            // before the shared rows were listed first).
            const bool check_hidden = preq && (c.n_used == 6 ? shape.v2_down_6 : shape.v2_down_16);
            for (const int early : {0, 1, 2}) {
              const ScopedEnv early_env("DS4_CUDA_NO_MOE_EARLY", early == 2 ? "1" : "");
              const std::string at = where + (early == 0   ? ", early work with x"
                                              : early == 1 ? ", early work without x"
                                                           : ", no early work");
              size_t hidden_diff = 0;
              EXPECT_EQ(count_bit_differences(run_moe_fused(s, e, dids, dw, sp, dx,
                                                            check_hidden ? &hidden_diff : nullptr, early == 0),
                                              before),
                        0u)
                  << at;
              EXPECT_EQ(hidden_diff, 0u) << at << ": quantized h in the workspace";
            }
          }
        }
      }
    }
  }
}

TEST(CudaMoe, TwoLaunchMoeRejectsWhatItDoesNotCover) {
  DS4_REQUIRE_GPU();
  MoeShape s;
  SharedExpert shared;
  EXPECT_TRUE(moe_fused_supported(s, &shared));
  shared.type = GgmlType::F16;  // only a Q8_0 shared expert
  EXPECT_FALSE(moe_fused_supported(s, &shared));
  EXPECT_THROW(moe_fused(s, nullptr, nullptr, nullptr, nullptr, nullptr, &shared, nullptr, nullptr, nullptr),
               std::exception);
  MoeShape odd = s;
  odd.n_ff = 2048 + 128;  // Q8_0 rows of whole blocks, but h is not whole 256-value spans
  odd.gate_up_type = odd.down_type = GgmlType::Q8_0;
  EXPECT_FALSE(moe_fused_supported(odd, nullptr));
  MoeShape floats = s;
  floats.gate_up_type = GgmlType::F16;  // float experts take fwd::moe_float
  EXPECT_FALSE(moe_fused_supported(floats, nullptr));
}

TEST(CudaMatvec, RejectsBadArguments) {
  DS4_REQUIRE_GPU();
  DeviceBuffer b(4096);
  EXPECT_THROW(matvec_q(GgmlType::Q8_K, b.data(), 1, 256, b.data(), b.as<float>()), std::exception);
  EXPECT_THROW(matvec_q(GgmlType::Q8_0, b.data(), 1, 33, b.data(), b.as<float>()), std::exception);
  EXPECT_THROW(matvec(GgmlType::Q8_0, b.data(), 1, 32, b.as<float>(), b.as<float>(), nullptr), std::exception);
}

// The bulk-copy path (sm_90, the default for products of one weight row per output) against
// the register pipeline it replaces (DS4_CUDA_NO_BULK_COPY=1): each lane sums the same units
// in the same order and split rows reduce alike, so the outputs must be the same bits; for
// every aligned shape above, the grouped o_a and the q_a + kv and F16 compressor parts.
TEST(CudaMatvec, BulkCopyPathMatchesRegisterPathBitForBit) {
  DS4_REQUIRE_GPU();
  if (list_devices().front().cc_major != 9) GTEST_SKIP() << "bulk copies need sm_90: both paths are the same here";
  // y of `launch` with the bulk path, then with the register pipeline (y poisoned before each).
  auto both_paths = [](DeviceBuffer& y, size_t n, const std::function<void()>& launch) {
    std::vector<float> out[2];
    for (int off = 0; off < 2; ++off) {
      std::unique_ptr<ScopedSwitchOff> no_bulk;
      if (off == 1) no_bulk = std::make_unique<ScopedSwitchOff>("DS4_CUDA_NO_BULK_COPY");
      y.fill_bytes(0xFF);
      launch();
      check_last_error("bulk vs register path");
      device_synchronize();
      out[off] = download<float>(y, n);
    }
    return std::pair{out[0], out[1]};
  };
  uint64_t seed = 900;
  for (const Case& c : cases()) {
    if (c.ncols % 256 != 0) continue;  // unaligned rows take the byte-staging path in both
    const std::string what = std::string(type_name(c.type)) + " " + std::to_string(c.nrows) + "x" +
                             std::to_string(c.ncols);
    const HostDeviceWeights w = random_weights(c.type, c.nrows, c.ncols, seed++);
    DeviceBuffer dx = upload(gaussian(c.ncols, 1.0f, uint32_t(seed++)));
    const DeviceBuffer act = device_activation(c.type, dx, c.ncols);
    DeviceBuffer dy(size_t(c.nrows) * sizeof(float));
    const auto [bulk, reg] = both_paths(dy, size_t(c.nrows), [&] {
      matvec_q(c.type, w.d.data(), c.nrows, c.ncols, reads_floats(c.type) ? dx.data() : act.data(), dy.as<float>());
    });
    EXPECT_EQ(count_bit_differences(bulk, reg), 0u) << what;
    EXPECT_TRUE(std::all_of(bulk.begin(), bulk.end(), [](float v) { return std::isfinite(v); })) << what;
  }
  {  // grouped o_a: 8 groups of 1024 x 4096
    const HostDeviceWeights w = random_weights(GgmlType::Q8_0, 8192, 4096, seed++);
    DeviceBuffer dx = upload(gaussian(8 * 4096, 1.0f, uint32_t(seed++)));
    const DeviceBuffer act = device_activation(GgmlType::Q8_0, dx, 8 * 4096);
    DeviceBuffer dy(8192 * sizeof(float));
    const auto [bulk, reg] = both_paths(dy, 8192, [&] {
      matvec_grouped_q(GgmlType::Q8_0, w.d.data(), 8192, 4096, 8, act.data(), dy.as<float>());
    });
    EXPECT_EQ(count_bit_differences(bulk, reg), 0u) << "grouped o_a";
  }
  for (const auto& [type, rows] : {std::pair{GgmlType::Q8_0, std::vector<int64_t>{1024, 512}},
                                   std::pair{GgmlType::F16, std::vector<int64_t>{1024, 1024, 256, 256, 64}}}) {
    const int64_t ncols = 4096;
    DeviceBuffer dx = upload(gaussian(ncols, 1.0f, uint32_t(seed++)));
    const DeviceBuffer act = device_activation(type, dx, ncols);
    std::vector<HostDeviceWeights> ws;
    int64_t total = 0;
    for (int64_t n : rows) {
      ws.push_back(random_weights(type, n, ncols, seed++));
      total += n;
    }
    DeviceBuffer dy(size_t(total) * sizeof(float));  // the parts' outputs back to back
    std::vector<MatvecPart> parts;
    int64_t at = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      parts.push_back(MatvecPart{ws[i].d.data(), rows[i], dy.as<float>() + at});
      at += rows[i];
    }
    const auto [bulk, reg] = both_paths(dy, size_t(total), [&] {
      matvec_parts_q(type, ncols, parts.data(), int(parts.size()), reads_floats(type) ? dx.data() : act.data());
    });
    EXPECT_EQ(count_bit_differences(bulk, reg), 0u) << "parts " << type_name(type);
  }
}

}  // namespace
}  // namespace ds4::cuda::test
