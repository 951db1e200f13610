#include "synth/synthetic_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <future>
#include <numeric>

#include "core/error.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "quant/blocks.h"
#include "quant/quant.h"

namespace ds4::synth {
namespace {

// ---------------------------------------------------------------------------
// Random numbers: splitmix64 to derive a stream per (seed, tensor, row), xoshiro256** for
// the stream. Per-row streams make the output independent of threading and slab sizes.
// ---------------------------------------------------------------------------
uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

class Rng {
 public:
  Rng(uint64_t seed, uint64_t tensor_hash, uint64_t row) {
    uint64_t s = seed ^ (tensor_hash * 0xD6E8FEB86659FD93ull) ^ (row * 0x9E3779B97F4A7C15ull);
    for (auto& x : s_) x = splitmix64(s);
  }
  uint64_t next() {
    const uint64_t r = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return r;
  }
  float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }  // [0,1)
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(((next() >> 32) * n) >> 32); }
  // Standard normal by Box-Muller (both outputs used).
  float normal() {
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    const float u1 = std::max(uniform(), 1e-12f);
    const float u2 = uniform();
    const float r = std::sqrt(-2.0f * std::log(u1));
    spare_ = r * std::sin(6.2831853f * u2);
    have_spare_ = true;
    return r * std::cos(6.2831853f * u2);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
  float spare_ = 0;
  bool have_spare_ = false;
};

bool ends_with(const std::string& s, std::string_view suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// How the float values of a tensor are drawn. The scheme follows the fixtures'
// (make_fixtures.py `randomize`): matrices N(0, 1/fan_in) so every projection keeps unit
// scale; hyper-connection mixers smaller; norms near 1; positional biases O(0.5).
struct Distribution {
  enum Kind { Normal, Uniform, Tid2eid } kind = Normal;
  float mean = 0, scale = 1;  // Normal: mean + scale*N(0,1); Uniform: mean + scale*U[0,1)
};

//
// Full-scale files (Fill::Codes) differ in two tensors so that routing spreads over the
// experts the way a trained, bias-balanced router's does. With the fixtures' scheme, the
// embedding (N(0, 1/E)) is small next to the attention outputs, which are near-averages of the
// same window of value rows for neighbouring tokens: the FFN input then has a large component
// shared by all tokens, and with a router bias of 0.1 (a third of the score spread) a few
// experts win most tokens (demo shape, 256 tokens: one expert took 70 % of them). A unit
// embedding makes the token dominate the residual stream and a 0.01 bias only breaks ties
// (most-used expert 1.3-1.7x the mean; tests/synth checks the spread). Every norm divides the
// scale out again, so activations stay as well scaled as before. The demo model (Fill::Floats)
// keeps the fixtures' scheme: its seeds are pinned by tests.
Distribution distribution(const SynthTensor& t, Fill fill) {
  using convert::Role;
  const std::string& n = t.plan.name;
  const double fan_in = static_cast<double>(t.plan.ne[0]);
  const bool full_scale = fill == Fill::Codes;
  switch (t.plan.role) {
    case Role::Tid2eid:
      return {Distribution::Tid2eid, 0, 0};
    case Role::Vector:
      if (ends_with(n, "norm.weight")) return {Distribution::Normal, 1.0f, 0.2f};
      if (ends_with(n, "_base.weight")) return {Distribution::Normal, 0.0f, 0.5f};
      if (ends_with(n, "_scale.weight")) return {Distribution::Uniform, 0.5f, 0.3f};
      if (ends_with(n, "exp_probs_b.bias")) return {Distribution::Normal, 0.0f, full_scale ? 0.01f : 0.1f};
      return {Distribution::Normal, 0.0f, 1.0f};  // attention sinks
    case Role::HcFn:
      return {Distribution::Normal, 0.0f, static_cast<float>(0.5 / std::sqrt(fan_in))};
    default:
      if (n.find("_ape.") != std::string::npos) return {Distribution::Normal, 0.0f, 0.5f};
      if (full_scale && n == "token_embd.weight") return {Distribution::Normal, 0.0f, 1.0f};
      return {Distribution::Normal, 0.0f, static_cast<float>(1.0 / std::sqrt(fan_in))};
  }
}

void draw_floats(const Distribution& d, Rng& rng, float* out, int64_t n) {
  if (d.kind == Distribution::Uniform) {
    for (int64_t i = 0; i < n; ++i) out[i] = d.mean + d.scale * rng.uniform();
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = d.mean + d.scale * rng.normal();
  }
}

// One row of tid2eid: n distinct expert ids (a partial Fisher-Yates shuffle).
void draw_tid2eid(Rng& rng, int32_t n_experts, int32_t* out, int64_t n) {
  std::vector<int32_t> ids(static_cast<size_t>(n_experts));
  std::iota(ids.begin(), ids.end(), 0);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t j = static_cast<uint32_t>(i) + rng.below(static_cast<uint32_t>(n_experts - i));
    std::swap(ids[i], ids[j]);
    out[i] = ids[i];
  }
}

// ---------------------------------------------------------------------------
// Random block codes with a target standard deviation `sd` (zero mean). Each format's
// parameters are chosen from its dequantization formula (formats.md 2.2-2.8).
// ---------------------------------------------------------------------------
uint16_t h16(double v) { return f32_to_fp16(static_cast<float>(v)); }

void codes_q8_0(Rng& rng, double sd, uint8_t* out, int64_t n) {
  // qs uniform on [-127, 127] has standard deviation ~73.6.
  auto* b = reinterpret_cast<BlockQ8_0*>(out);
  for (int64_t i = 0; i < n / QK8_0; ++i) {
    b[i].d = h16(sd / 73.6);
    for (auto& q : b[i].qs) q = static_cast<int8_t>(static_cast<int>(rng.below(255)) - 127);
  }
}

void codes_q2_k(Rng& rng, double sd, uint8_t* out, int64_t n) {
  // w = d*sc*q - dmin*m with m = sc and dmin = 1.5 d gives d*sc*(q - 1.5): zero mean,
  // std d*rms(sc)*1.118 with sc uniform on 8..15 (rms 11.73).
  auto* b = reinterpret_cast<BlockQ2_K*>(out);
  const double d = sd / (11.73 * 1.118);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    for (auto& s : b[i].scales) {
      const unsigned sc = 8 + rng.below(8);
      s = static_cast<uint8_t>(sc | (sc << 4));
    }
    for (auto& q : b[i].qs) q = static_cast<uint8_t>(rng.next());
    b[i].d = h16(d);
    b[i].dmin = h16(1.5 * fp16_to_f32(b[i].d));
  }
}

void codes_q4_k(Rng& rng, double sd, uint8_t* out, int64_t n) {
  // As Q2_K with 6-bit codes: sc = m uniform on 32..63 (rms 48.4), dmin = 7.5 d, q std 4.61.
  auto* b = reinterpret_cast<BlockQ4_K*>(out);
  const double d = sd / (48.4 * 4.61);
  for (int64_t i = 0; i < n / QK_K; ++i) {
    uint8_t sc[8];
    for (auto& s : sc) s = static_cast<uint8_t>(32 + rng.below(32));
    // Pack scale j and min j (= scale j) per formats.md 2.4.
    uint8_t* S = b[i].scales;
    for (int j = 0; j < 4; ++j) {
      S[j] = static_cast<uint8_t>((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
      S[j + 4] = static_cast<uint8_t>((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
      S[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((sc[j + 4] & 0xF) << 4));
    }
    for (auto& q : b[i].qs) q = static_cast<uint8_t>(rng.next());
    b[i].d = h16(d);
    b[i].dmin = h16(7.5 * fp16_to_f32(b[i].d));
  }
}

double iq2xxs_grid_rms() {
  static const double rms = [] {
    const uint64_t* g = quant::iq2xxs_grid();
    double s = 0;
    for (int i = 0; i < 256; ++i)
      for (int j = 0; j < 8; ++j) {
        const double v = static_cast<double>((g[i] >> (8 * j)) & 0xFF);
        s += v * v;
      }
    return std::sqrt(s / 2048.0);
  }();
  return rms;
}

void codes_iq2_xxs(Rng& rng, double sd, uint8_t* out, int64_t n) {
  // w = d*(2s+1)/8 * G * sign; with s uniform on 0..15, E[((2s+1)/8)^2] = 5.328.
  auto* b = reinterpret_cast<BlockIQ2_XXS*>(out);
  const double d = sd / (std::sqrt(5.328) * iq2xxs_grid_rms());
  for (int64_t i = 0; i < n / QK_K; ++i) {
    b[i].d = h16(d);
    auto* q = reinterpret_cast<uint8_t*>(b[i].qs);
    for (int g = 0; g < 8; ++g) {
      for (int k = 0; k < 4; ++k) q[8 * g + k] = static_cast<uint8_t>(rng.next());
      const uint32_t aux = static_cast<uint32_t>(rng.next());  // 4 x 7 sign bits + 4-bit scale
      std::memcpy(q + 8 * g + 4, &aux, 4);
    }
  }
}

void codes_mxfp4(Rng& rng, double sd, uint8_t* out, int64_t n) {
  // Uniform random nibbles have rms 5.85 in kvalues units (twice E2M1). The block scale is
  // a power of two, so blocks take exponent lo or lo+1 with the probability that makes the
  // expected variance sd^2: p*v + (1-p)*4v = sd^2.
  auto* b = reinterpret_cast<BlockMXFP4*>(out);
  const int lo = static_cast<int>(std::floor(std::log2(sd / 5.85)));
  const double v_lo = std::pow(5.85 * std::ldexp(1.0, lo), 2);
  const double p_lo = (4.0 * v_lo - sd * sd) / (3.0 * v_lo);
  for (int64_t i = 0; i < n / QK_MXFP4; ++i) {
    const int e = 128 + lo + (rng.uniform() < p_lo ? 0 : 1);
    b[i].e = static_cast<uint8_t>(std::clamp(e, 1, 254));
    for (auto& q : b[i].qs) q = static_cast<uint8_t>(rng.next());
  }
}

}  // namespace

int64_t SynthTensor::n_rows() const {
  int64_t r = 1;
  for (size_t i = 1; i < plan.ne.size(); ++i) r *= plan.ne[i];
  return r;
}

size_t SynthTensor::row_bytes() const { return ds4::row_bytes(type, plan.ne[0]); }

int64_t SynthTensor::rows_per_slab() const {
  if (convert::is_routed_expert(plan.role)) return plan.ne[1];  // one expert
  // Other tensors: about 4 MiB per slab, so huge tensors (the embedding) stream.
  const int64_t rows = std::max<int64_t>(1, (int64_t(4) << 20) / static_cast<int64_t>(row_bytes()));
  return std::min(rows, n_rows());
}

std::vector<SynthTensor> synthetic_tensors(const convert::ModelConfig& cfg, convert::Recipe recipe) {
  std::vector<SynthTensor> out;
  for (auto& p : convert::build_plan(cfg)) {
    // The dtypes of the official checkpoint (architecture.md 2.1) decide the lossless recipes.
    convert::StDtype src = convert::StDtype::BF16;
    if (p.role == convert::Role::HcFn || p.name.find("_ape.") != std::string::npos ||
        p.role == convert::Role::Vector)
      src = convert::StDtype::F32;
    if (p.role == convert::Role::Tid2eid) src = convert::StDtype::I64;
    if (convert::is_routed_expert(p.role)) src = convert::StDtype::I8;  // FP4
    SynthTensor t;
    t.n_experts = static_cast<int32_t>(cfg.n_experts);
    t.type = convert::choose_type(recipe, p, src);
    t.plan = std::move(p);
    out.push_back(std::move(t));
  }
  return out;
}

double target_std(const SynthTensor& t, Fill fill) {
  const Distribution d = distribution(t, fill);
  if (d.kind == Distribution::Uniform) return d.scale / std::sqrt(12.0);
  return d.scale;
}

void generate_slab(const SynthTensor& t, uint64_t seed, Fill fill, int64_t slab, uint8_t* out) {
  const int64_t ncols = t.plan.ne[0];
  const int64_t rps = t.rows_per_slab();
  const int64_t r0 = slab * rps;
  const int64_t r1 = std::min(t.n_rows(), r0 + rps);
  const size_t rb = t.row_bytes();
  const uint64_t th = fnv1a(t.plan.name);
  const Distribution dist = distribution(t, fill);

  if (dist.kind == Distribution::Tid2eid) {
    for (int64_t r = r0; r < r1; ++r) {
      Rng rng(seed, th, static_cast<uint64_t>(r));
      draw_tid2eid(rng, t.n_experts, reinterpret_cast<int32_t*>(out + static_cast<size_t>(r - r0) * rb),
                   ncols);
    }
    return;
  }

  const bool quantized = type_traits(t.type).is_quantized;
  if (fill == Fill::Codes && quantized && dist.mean == 0 && dist.kind == Distribution::Normal) {
    for (int64_t r = r0; r < r1; ++r) {
      Rng rng(seed, th, static_cast<uint64_t>(r));
      uint8_t* row = out + static_cast<size_t>(r - r0) * rb;
      switch (t.type) {
        case GgmlType::Q8_0: codes_q8_0(rng, dist.scale, row, ncols); break;
        case GgmlType::Q2_K: codes_q2_k(rng, dist.scale, row, ncols); break;
        case GgmlType::Q4_K: codes_q4_k(rng, dist.scale, row, ncols); break;
        case GgmlType::IQ2_XXS: codes_iq2_xxs(rng, dist.scale, row, ncols); break;
        case GgmlType::MXFP4: codes_mxfp4(rng, dist.scale, row, ncols); break;
        default: fail("synthetic: no code generator for {}", type_name(t.type));
      }
    }
    return;
  }

  // Float path: values depend only on (seed, tensor, row), never on the recipe.
  std::vector<float> x(static_cast<size_t>(ncols) * static_cast<size_t>(r1 - r0));
  for (int64_t r = r0; r < r1; ++r) {
    Rng rng(seed, th, static_cast<uint64_t>(r));
    float* xr = x.data() + static_cast<size_t>(r - r0) * ncols;
    draw_floats(dist, rng, xr, ncols);
  }
  if (t.type == GgmlType::IQ2_XXS) {
    // IQ2_XXS needs per-column importance; quantize_rows derives the weight-energy
    // fallback over the slab (one expert), as the converter does (formats.md 3.7).
    quant::quantize_rows(t.type, x.data(), out, r1 - r0, ncols, nullptr, nullptr);
    return;
  }
  for (int64_t r = r0; r < r1; ++r)
    quant::quantize_row(t.type, x.data() + static_cast<size_t>(r - r0) * ncols,
                        out + static_cast<size_t>(r - r0) * rb, ncols, nullptr);
}

namespace {

// Declares the metadata and tensors of (cfg, opts) on `w`; one place for write_gguf and
// planned_file_bytes, so the planned size is the written size by construction.
void declare(gguf::Writer& w, const convert::ModelConfig& cfg, const WriteOptions& opts,
             const std::vector<SynthTensor>& tensors) {
  for (auto& kv : convert::model_metadata(cfg, opts.name)) w.add_kv(kv.key, kv.value);
  for (const auto& kv : opts.extra_kv) w.add_kv(kv.key, kv.value);
  for (const auto& t : tensors) w.add_tensor(t.plan.name, t.type, t.plan.ne);
}

}  // namespace

uint64_t planned_file_bytes(const convert::ModelConfig& cfg, const WriteOptions& opts) {
  // The writer touches the disk only in begin_data(), so declaring is free.
  gguf::Writer w("(planned synthetic model)");
  declare(w, cfg, opts, synthetic_tensors(cfg, opts.recipe));
  return w.total_bytes();
}

WriteOptions synthetic_options(const std::string& preset_name, convert::Recipe recipe,
                               uint64_t seed) {
  WriteOptions o;
  o.name = "DeepSeek-V4 synthetic " + preset_name;
  o.recipe = recipe;
  o.seed = seed;
  o.fill = Fill::Codes;
  o.extra_kv.push_back({kSyntheticKey, gguf::Value::string(
      "synthetic " + preset_name + ": random weights (seed " + std::to_string(seed) + ", recipe " +
      std::string(convert::recipe_name(recipe)) + "), not DeepSeek's; for speed measurements")});
  return o;
}

void write_gguf(const std::string& path, const convert::ModelConfig& cfg, const WriteOptions& opts) {
  const auto tensors = synthetic_tensors(cfg, opts.recipe);
  gguf::Writer w(path);
  declare(w, cfg, opts, tensors);
  uint64_t total = 0;
  for (const auto& t : tensors) total += t.nbytes();
  w.begin_data();

  ThreadPool pool(opts.threads);
  const int64_t batch = std::max(1, pool.size());
  uint64_t done = 0;  // touched only by the writing side (one job at a time)
  // Two sets of slab buffers: the pool fills one while a writer job drains the other.
  std::vector<std::vector<uint8_t>> bufs[2];
  bufs[0].resize(static_cast<size_t>(batch));
  bufs[1].resize(static_cast<size_t>(batch));
  std::future<void> writing;
  int cur = 0;
  for (const auto& t : tensors) {
    const int64_t rps = t.rows_per_slab();
    const int64_t n_slabs = (t.n_rows() + rps - 1) / rps;
    for (int64_t s0 = 0; s0 < n_slabs; s0 += batch) {
      const int64_t n = std::min(n_slabs, s0 + batch) - s0;
      auto& set = bufs[cur];
      pool.parallel_for(n, 1, [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) {
          const int64_t slab = s0 + i;
          const int64_t rows = std::min(rps, t.n_rows() - slab * rps);
          auto& buf = set[static_cast<size_t>(i)];
          buf.resize(static_cast<size_t>(rows) * t.row_bytes());
          generate_slab(t, opts.seed, opts.fill, slab, buf.data());
        }
      });
      if (writing.valid()) writing.get();  // rethrows a write error
      writing = std::async(std::launch::async, [&w, &set, n, &done, total, &opts] {
        for (int64_t i = 0; i < n; ++i) {
          const auto& buf = set[static_cast<size_t>(i)];
          w.write_tensor_data(buf.data(), buf.size());
          done += buf.size();
        }
        if (opts.progress) opts.progress(done, total);
      });
      cur ^= 1;
    }
  }
  if (writing.valid()) writing.get();
  w.finish();
}

}  // namespace ds4::synth
