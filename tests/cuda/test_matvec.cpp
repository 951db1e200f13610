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
#include <cstring>
#include <limits>
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

TEST(CudaMoe, FusedExpertsMatchCpuComposition) {
  DS4_REQUIRE_GPU();
  const int n_expert = 8;
  const std::vector<int32_t> ids = {5, 0, 7, 3, 6, 1};
  const std::vector<float> route_w = {0.41f, 0.22f, 0.35f, 0.18f, 0.27f, 0.07f};
  struct Types {
    GgmlType gate_up, down;
  };
  for (Types ty : {Types{GgmlType::IQ2_XXS, GgmlType::Q2_K}, Types{GgmlType::Q4_K, GgmlType::Q4_K},
                   Types{GgmlType::MXFP4, GgmlType::MXFP4}}) {
    MoeShape s;
    s.gate_up_type = ty.gate_up;
    s.down_type = ty.down;
    s.n_used = int(ids.size());
    const std::string what = std::string(type_name(ty.gate_up)) + "/" + std::string(type_name(ty.down));
    const size_t gu_rb = row_bytes(s.gate_up_type, s.n_embd), dn_rb = row_bytes(s.down_type, s.n_ff);
    const size_t gu_slab = gu_rb * size_t(s.n_ff), dn_slab = dn_rb * size_t(s.n_embd);
    DeviceBuffer dg(gu_slab * n_expert), du(gu_slab * n_expert), dd(dn_slab * n_expert);
    fill_random_weights(s.gate_up_type, dg.data(), s.n_ff * n_expert, s.n_embd, 11);
    fill_random_weights(s.gate_up_type, du.data(), s.n_ff * n_expert, s.n_embd, 12);
    fill_random_weights(s.down_type, dd.data(), s.n_embd * n_expert, s.n_ff, 13);
    const auto g = download<uint8_t>(dg, dg.size()), u = download<uint8_t>(du, du.size()),
               d = download<uint8_t>(dd, dd.size());
    // sigma 3 puts a good share of gate/up values past the clamp limit of 10.
    const auto x = gaussian(s.n_embd, 3.0f, 99);

    // CPU composition of the same steps.
    std::vector<uint8_t> ax(cpu::activation_bytes(s.gate_up_type, s.n_embd));
    cpu::quantize_activation(s.gate_up_type, x.data(), ax.data(), s.n_embd);
    std::vector<float> h_ref(size_t(s.n_used * s.n_ff));
    int clamped = 0;
    for (int k = 0; k < s.n_used; ++k)
      for (int64_t r = 0; r < s.n_ff; ++r) {
        const size_t off = size_t(ids[size_t(k)]) * gu_slab + size_t(r) * gu_rb;
        const float gv = cpu::vec_dot(s.gate_up_type, g.data() + off, ax.data(), s.n_embd);
        const float uv = cpu::vec_dot(s.gate_up_type, u.data() + off, ax.data(), s.n_embd);
        clamped += (gv > s.limit) + (std::fabs(uv) > s.limit);
        h_ref[size_t(k * s.n_ff + r)] = route_w[size_t(k)] * silu_clamped(gv, uv, s.limit);
      }
    auto down_ref = [&](const std::vector<float>& h) {
      std::vector<uint8_t> ah(cpu::activation_bytes(s.down_type, s.n_ff * s.n_used));
      cpu::quantize_activation(s.down_type, h.data(), ah.data(), s.n_ff * s.n_used);
      const size_t arb = cpu::activation_bytes(s.down_type, s.n_ff);
      std::vector<float> y(size_t(s.n_embd), 0.0f);
      for (int64_t r = 0; r < s.n_embd; ++r)
        for (int k = 0; k < s.n_used; ++k)
          y[size_t(r)] += cpu::vec_dot(s.down_type, d.data() + size_t(ids[size_t(k)]) * dn_slab + size_t(r) * dn_rb,
                                       ah.data() + size_t(k) * arb, s.n_ff);
      return y;
    };

    DeviceBuffer dids = upload(ids), dw = upload(route_w), dx = upload(x);
    DeviceBuffer ws(moe_workspace_bytes(s));
    ws.fill_bytes(0xFF);
    DeviceBuffer dy(size_t(s.n_embd) * sizeof(float));
    dy.fill_bytes(0xFF);
    moe_experts(s, dg.data(), du.data(), dd.data(), dids.as<int32_t>(), dw.as<float>(), dx.as<float>(),
                dy.as<float>(), ws.data());
    check_last_error("moe_experts");
    device_synchronize();
    const auto y = download<float>(dy, size_t(s.n_embd));
    std::vector<float> h(h_ref.size());
    DeviceBuffer* wsp = &ws;
    const size_t h_off = size_t(reinterpret_cast<const uint8_t*>(moe_hidden(s, wsp->data())) -
                                static_cast<const uint8_t*>(wsp->data()));
    ws.download(h.data(), h.size() * sizeof(float), h_off);

    EXPECT_GT(clamped, 0) << what << ": test input never reaches the clamp";
    // Gate/up: float summation order only, then the same SwiGLU (expf vs std::exp: ulps).
    expect_close(h, h_ref, what + " hidden", 1e-4, 1e-5);
    // Down on the GPU's own hidden state: summation order only.
    expect_close(y, down_ref(h), what + " down(h_gpu)", 1e-4, 1e-5);
    // End to end: a hidden value on a rounding boundary may quantize one code apart.
    expect_close(y, down_ref(h_ref), what + " end to end", 1e-2, 2e-3);
  }
}

TEST(CudaMatvec, RejectsBadArguments) {
  DS4_REQUIRE_GPU();
  DeviceBuffer b(4096);
  EXPECT_THROW(matvec_q(GgmlType::Q8_K, b.data(), 1, 256, b.data(), b.as<float>()), std::exception);
  EXPECT_THROW(matvec_q(GgmlType::Q8_0, b.data(), 1, 33, b.data(), b.as<float>()), std::exception);
  EXPECT_THROW(matvec(GgmlType::Q8_0, b.data(), 1, 32, b.as<float>(), b.as<float>(), nullptr), std::exception);
}

}  // namespace
}  // namespace ds4::cuda::test
