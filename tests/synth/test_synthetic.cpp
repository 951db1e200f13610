#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <unistd.h>

#include <random>
#include <set>

#include "convert/tensor_plan.h"
#include "core/error.h"
#include "core/ggml_type.h"
#include "core/thread_pool.h"
#include "gguf/gguf.h"
#include "model/forward.h"
#include "model/hyper_connection.h"
#include "model/model.h"
#include "model/moe.h"
#include "model/ops.h"
#include "model/rope.h"
#include "quant/quant.h"
#include "synth/presets.h"
#include "synth/synthetic_model.h"

namespace ds4::synth {
namespace {

namespace fs = std::filesystem;
using convert::Recipe;

uint64_t payload_bytes(const std::vector<SynthTensor>& ts) {
  uint64_t s = 0;
  for (const auto& t : ts) s += t.nbytes();
  return s;
}

// architecture.md 2.5 and formats.md 1.4: the published Flash q2 file has 1328 tensors of
// these types and 86,714,775,900 payload bytes; the q4 file 164,628,167,004.
TEST(SyntheticFlash, TensorTableMatchesThePublishedQ2File) {
  const auto ts = synthetic_tensors(preset("flash"), Recipe::Q2);
  EXPECT_EQ(ts.size(), 1328u);
  std::map<GgmlType, int> count;
  for (const auto& t : ts) count[t.type]++;
  EXPECT_EQ(count[GgmlType::F16], 359);
  EXPECT_EQ(count[GgmlType::F32], 492);
  EXPECT_EQ(count[GgmlType::I32], 3);
  EXPECT_EQ(count[GgmlType::IQ2_XXS], 86);
  EXPECT_EQ(count[GgmlType::Q2_K], 43);
  EXPECT_EQ(count[GgmlType::Q8_0], 345);
  EXPECT_EQ(payload_bytes(ts), 86714775900ull);
}

TEST(SyntheticFlash, Q4PayloadMatchesThePublishedFile) {
  EXPECT_EQ(payload_bytes(synthetic_tensors(preset("flash"), Recipe::Q4)), 164628167004ull);
}

TEST(SyntheticPresets, UnknownNameIsRefused) {
  EXPECT_THROW(preset("flash2"), Error);
  for (const auto& n : preset_names()) EXPECT_NO_THROW(synthetic_tensors(preset(n), Recipe::Q2));
}

// Random codes must dequantize to zero-mean values with the standard deviation the float
// scheme targets, so synthetic activations stay finite and well scaled.
TEST(SyntheticCodes, EveryQuantizedTypeIsWellScaled) {
  for (Recipe r : {Recipe::Q2, Recipe::Q4, Recipe::MXFP4, Recipe::Q8}) {
    for (const auto& t : synthetic_tensors(preset("flash-mini"), r)) {
      if (!type_traits(t.type).is_quantized || t.plan.name.find("blk.2.") != 0) continue;
      const double sd = target_std(t);
      std::vector<uint8_t> buf(t.row_bytes() * static_cast<size_t>(t.rows_per_slab()));
      generate_slab(t, 7, Fill::Codes, 0, buf.data());
      const int64_t rows = std::min<int64_t>(t.rows_per_slab(), 64);
      std::vector<float> x(static_cast<size_t>(t.plan.ne[0]));
      double s1 = 0, s2 = 0, n = 0;
      for (int64_t row = 0; row < rows; ++row) {
        quant::dequantize_row(t.type, buf.data() + row * t.row_bytes(), x.data(), t.plan.ne[0]);
        for (float v : x) {
          ASSERT_TRUE(std::isfinite(v));
          s1 += v;
          s2 += double(v) * v;
          n += 1;
        }
      }
      const double mean = s1 / n, sdev = std::sqrt(s2 / n - mean * mean);
      EXPECT_NEAR(sdev / sd, 1.0, 0.2) << t.plan.name << " " << type_name(t.type);
      EXPECT_LT(std::abs(mean), 0.1 * sd) << t.plan.name << " " << type_name(t.type);
    }
  }
}

// Floats fill: one seed, the same model in every recipe (the f32 values rounded to bf16
// are exactly the bf16 recipe's values).
TEST(SyntheticFloats, SameSeedSameWeightsInEveryRecipe) {
  const auto f32 = synthetic_tensors(preset("demo"), Recipe::F32);
  const auto bf16 = synthetic_tensors(preset("demo"), Recipe::BF16);
  ASSERT_EQ(f32.size(), bf16.size());
  int checked = 0;
  for (size_t i = 0; i < f32.size(); ++i) {
    if (f32[i].type != GgmlType::F32 || bf16[i].type != GgmlType::BF16) continue;
    std::vector<uint8_t> a(f32[i].row_bytes() * f32[i].rows_per_slab());
    std::vector<uint8_t> b(bf16[i].row_bytes() * bf16[i].rows_per_slab());
    generate_slab(f32[i], 3, Fill::Floats, 0, a.data());
    generate_slab(bf16[i], 3, Fill::Floats, 0, b.data());
    const int64_t n = f32[i].plan.ne[0];
    std::vector<float> xa(n), xb(n);
    quant::dequantize_row(GgmlType::F32, a.data(), xa.data(), n);
    quant::dequantize_row(GgmlType::BF16, b.data(), xb.data(), n);
    for (int64_t j = 0; j < n; ++j) {
      uint32_t u;
      std::memcpy(&u, &xa[j], 4);
      u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000u;
      float r;
      std::memcpy(&r, &u, 4);
      ASSERT_EQ(r, xb[j]) << f32[i].plan.name << " col " << j;
    }
    ++checked;
  }
  EXPECT_GT(checked, 20);
}

TEST(SyntheticWrite, DemoFileIsReadableAndDeterministic) {
  const fs::path dir = fs::temp_directory_path() / "ds4-synth-test";
  fs::create_directories(dir);
  // The demo shape with a small vocabulary and few experts keeps this fast under ASan.
  auto cfg = preset("demo");
  cfg.vocab = 1024;
  cfg.n_layers = 4;
  cfg.compress_ratios = {0, 0, 4, 128};
  cfg.n_experts = 2;
  cfg.n_experts_used = 2;
  WriteOptions o;
  o.recipe = Recipe::Q2;
  o.seed = 11;
  o.fill = Fill::Floats;
  o.threads = 2;
  o.extra_kv.push_back({kSyntheticKey, gguf::Value::string("demo")});
  write_gguf((dir / "a.gguf").string(), cfg, o);
  o.threads = 1;
  write_gguf((dir / "b.gguf").string(), cfg, o);

  auto f = gguf::File::open((dir / "a.gguf").string());
  const auto ts = synthetic_tensors(cfg, Recipe::Q2);
  ASSERT_EQ(f.tensors().size(), ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    EXPECT_EQ(f.tensors()[i].name, ts[i].plan.name);
    EXPECT_EQ(f.tensors()[i].type, ts[i].type);
    EXPECT_EQ(f.tensors()[i].ne, ts[i].plan.ne);
  }
  EXPECT_EQ(f.get_string(kSyntheticKey), "demo");
  EXPECT_EQ(f.get_u32("deepseek4.block_count"), cfg.n_layers);
  // tid2eid rows hold distinct valid expert ids
  const auto& tid = f.tensor("blk.0.ffn_gate_tid2eid.weight");
  const auto* ids = reinterpret_cast<const int32_t*>(f.tensor_data(tid));
  for (int64_t tok = 0; tok < tid.ne[1]; tok += 997) {
    std::vector<int32_t> row(ids + tok * tid.ne[0], ids + (tok + 1) * tid.ne[0]);
    for (auto e : row) ASSERT_TRUE(e >= 0 && e < int32_t(cfg.n_experts));
    std::sort(row.begin(), row.end());
    EXPECT_EQ(std::adjacent_find(row.begin(), row.end()), row.end());
  }
  // Same seed, different thread count: identical bytes.
  std::ifstream a(dir / "a.gguf", std::ios::binary), b(dir / "b.gguf", std::ios::binary);
  std::string sa((std::istreambuf_iterator<char>(a)), {}), sb((std::istreambuf_iterator<char>(b)), {});
  EXPECT_EQ(sa.size(), sb.size());
  EXPECT_TRUE(sa == sb);
  fs::remove_all(dir);
}

// The q2 Flash file is 80.76 GiB (architecture.md 2.5): the exact byte count of the file
// write_gguf would write, from the same declarations, without writing it.
TEST(SyntheticFlash, Q2FileSizeIs80_76GiB) {
  const auto cfg = preset("flash");
  const auto o = synthetic_options("flash", Recipe::Q2);
  const uint64_t bytes = planned_file_bytes(cfg, o);
  const auto ts = synthetic_tensors(cfg, Recipe::Q2);
  // Payload plus header plus alignment padding: every Flash tensor is a multiple of 32 bytes
  // except the odd-sized ones, so the overhead is the header and < 32 bytes per tensor.
  EXPECT_GT(bytes, 86714775900ull);
  EXPECT_LT(bytes - 86714775900ull, 200000ull + 32ull * ts.size());
  EXPECT_EQ(std::round(bytes / 1073741824.0 * 100) / 100, 80.76);
  // Every tensor of the converter's plan; a few types and shapes from architecture.md 2.2-2.3.
  const auto plan = convert::build_plan(cfg);
  ASSERT_EQ(plan.size(), ts.size());
  for (size_t i = 0; i < plan.size(); ++i) {
    EXPECT_EQ(ts[i].plan.name, plan[i].name);
    EXPECT_EQ(ts[i].plan.ne, plan[i].ne);
  }
  std::map<std::string, std::pair<GgmlType, std::vector<int64_t>>> want = {
      {"token_embd.weight", {GgmlType::F16, {4096, 129280}}},
      {"output.weight", {GgmlType::Q8_0, {4096, 129280}}},
      {"blk.0.ffn_gate_exps.weight", {GgmlType::IQ2_XXS, {4096, 2048, 256}}},
      {"blk.0.ffn_down_exps.weight", {GgmlType::Q2_K, {2048, 4096, 256}}},
      {"blk.0.ffn_gate_tid2eid.weight", {GgmlType::I32, {6, 129280}}},
      {"blk.42.attn_q_b.weight", {GgmlType::Q8_0, {1024, 32768}}},
  };
  int found = 0;
  for (const auto& t : ts) {
    auto it = want.find(t.plan.name);
    if (it == want.end()) continue;
    EXPECT_EQ(t.type, it->second.first) << t.plan.name;
    EXPECT_EQ(t.plan.ne, it->second.second) << t.plan.name;
    ++found;
  }
  EXPECT_EQ(found, static_cast<int>(want.size()));
}

TEST(SyntheticPro, PlanIsLargerThanFlashAndConsistent) {
  const auto o = synthetic_options("pro", Recipe::Q2);
  const uint64_t pro = planned_file_bytes(preset("pro"), o);
  EXPECT_GT(pro, 2 * planned_file_bytes(preset("flash"), o));
  EXPECT_EQ(synthetic_tensors(preset("pro"), Recipe::Q2).size(), convert::build_plan(preset("pro")).size());
}

// A small preset written the way `ds4-quantize --synthetic` writes it: the planned size is the
// file size, the metadata is the converter's plus the synthetic label.
class SyntheticDemoFile : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("ds4-synth-demo-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    path_ = (dir_ / "demo-q2.gguf").string();
    auto o = synthetic_options("demo", Recipe::Q2, 5);
    o.threads = 2;
    write_gguf(path_, preset("demo"), o);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static fs::path dir_;
  static std::string path_;
};
fs::path SyntheticDemoFile::dir_;
std::string SyntheticDemoFile::path_;

TEST_F(SyntheticDemoFile, SizeAndMetadataAreThePlanned) {
  const auto cfg = preset("demo");
  const auto o = synthetic_options("demo", Recipe::Q2, 5);
  EXPECT_EQ(fs::file_size(path_), planned_file_bytes(cfg, o));
  auto f = gguf::File::open(path_);
  std::set<std::string> keys;
  for (const auto& kv : f.metadata()) keys.insert(kv.key);
  std::set<std::string> want;
  for (const auto& kv : convert::model_metadata(cfg, o.name)) want.insert(kv.key);
  want.insert(kSyntheticKey);
  EXPECT_EQ(keys, want);
  EXPECT_NE(f.get_string(kSyntheticKey).find("synthetic demo"), std::string::npos);
}

// Reproduces the router input of every layer (the FFN input after the attention half) and
// returns how often each expert was chosen per layer. The attention half alone is run through
// layer_forward with a copy of the layer whose FFN hyper-connection is the identity (post = 0,
// comb = I), so the streams it returns are exactly those the real FFN half receives.
std::vector<std::vector<int>> expert_use(const model::Model& m, const std::vector<int32_t>& tokens) {
  const auto& hp = m.hparams();
  const auto& w = m.weights();
  const int64_t T = static_cast<int64_t>(tokens.size()), E = hp.n_embd, NC = hp.n_hc;
  const int64_t NE = hp.n_expert, K = hp.n_expert_used;
  std::vector<float> H(static_cast<size_t>(T * NC * E)), H2;
  model::embed(hp, w, tokens.data(), T, H.data());
  std::vector<std::vector<int>> use(static_cast<size_t>(hp.n_layers), std::vector<int>(NE));
  for (int64_t il = 0; il < hp.n_layers; ++il) {
    const auto& L = w.layers[static_cast<size_t>(il)];
    const auto rope = model::Rope::for_layer(hp, il);
    model::LayerWeights A = L;
    A.hc_ffn.scale.assign(A.hc_ffn.scale.size(), 0.0f);
    for (int64_t s = 0; s < NC; ++s) A.hc_ffn.base[static_cast<size_t>(NC + s)] = -100.0f;
    for (int64_t j = 0; j < NC; ++j)
      for (int64_t k = 0; k < NC; ++k)
        A.hc_ffn.base[static_cast<size_t>(2 * NC + j * NC + k)] = j == k ? 50.0f : -50.0f;
    model::LayerState probe;
    H2 = H;
    model::layer_forward(hp, A, rope, model::Numerics::Official, probe, tokens.data(), T, 0,
                         H2.data(), m.pool());
    std::vector<float> a(static_cast<size_t>(T * E)), x(a.size()), post(static_cast<size_t>(T * NC)),
        comb(static_cast<size_t>(T * NC * NC)), mix(static_cast<size_t>(T * (2 + NC) * NC)),
        logits(static_cast<size_t>(T * NE));
    model::hc_pre(hp, L.hc_ffn, H2.data(), T, a.data(), post.data(), comb.data(), mix.data(), m.pool());
    for (int64_t t = 0; t < T; ++t)
      model::rmsnorm(x.data() + t * E, a.data() + t * E, L.ffn_norm.data(), E, hp.rms_eps);
    model::linear(L.router, x.data(), T, logits.data(), m.pool());
    std::vector<int32_t> ids(static_cast<size_t>(K));
    std::vector<float> wts(static_cast<size_t>(K));
    for (int64_t t = 0; t < T; ++t) {
      model::route(hp, L, logits.data() + t * NE, tokens[static_cast<size_t>(t)], ids.data(), wts.data());
      for (int32_t e : ids) use[static_cast<size_t>(il)][static_cast<size_t>(e)]++;
    }
    // The real layer, for the next layer's input; finishing the FFN half from the probed
    // streams must give the same output, which checks the probe.
    std::vector<float> y(static_cast<size_t>(T * E)), Hcheck(H.size());
    model::moe_forward(hp, L, x.data(), tokens.data(), T, y.data(), m.pool());
    model::hc_post(hp, y.data(), H2.data(), post.data(), comb.data(), T, Hcheck.data());
    model::LayerState st;
    model::layer_forward(hp, L, rope, model::Numerics::Official, st, tokens.data(), T, 0, H.data(),
                         m.pool());
    // The probe's streams differ from the real ones by the Sinkhorn eps (~1e-6); the int8
    // activation quantization of the quantized matmuls can turn that into a rounding step in
    // a few elements, so compare in RMS: a wrong FFN input would be off by O(1).
    double err = 0, ref = 0;
    for (size_t i = 0; i < H.size(); ++i) {
      EXPECT_TRUE(std::isfinite(H[i])) << "layer " << il;
      err += double(H[i] - Hcheck[i]) * (H[i] - Hcheck[i]);
      ref += double(H[i]) * H[i];
    }
    EXPECT_LT(std::sqrt(err / ref), 1e-3) << "layer " << il << ": the probe does not reproduce the FFN input";
  }
  return use;
}

TEST_F(SyntheticDemoFile, LoadsRunsAndRoutesOverMostExperts) {
  auto m = model::Model::load(path_, {.threads = 2});
  const auto& hp = m.hparams();
  ASSERT_EQ(hp.n_layers, 6);
  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> tok(2, static_cast<int32_t>(hp.n_vocab - 1));
  std::vector<int32_t> tokens(256);
  for (auto& t : tokens) t = tok(rng);

  // A few tokens through the session: prefill then decode, finite logits of a sane scale.
  model::Session s(m, {.max_ctx = 64});
  std::vector<float> logits(static_cast<size_t>(hp.n_vocab));
  s.eval(std::span(tokens.data(), 8), model::LogitsMode::Last, logits.data());
  for (int i = 0; i < 3; ++i) {
    for (float v : logits) ASSERT_TRUE(std::isfinite(v));
    const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    s.eval(std::span(&next, 1), model::LogitsMode::Last, logits.data());
  }
  double ss = 0;
  for (float v : logits) ss += double(v) * v;
  const double rms = std::sqrt(ss / logits.size());
  EXPECT_GT(rms, 0.01);
  EXPECT_LT(rms, 100.0);

  // Routing over 256 tokens spreads over the experts in every layer, hash and learned alike:
  // nearly all experts are used and none takes more than twice its share.
  const auto use = expert_use(m, tokens);
  for (size_t il = 0; il < use.size(); ++il) {
    const int used = static_cast<int>(std::count_if(use[il].begin(), use[il].end(), [](int c) { return c > 0; }));
    const int most = *std::max_element(use[il].begin(), use[il].end());
    EXPECT_GE(used, static_cast<int>(hp.n_expert) - 1) << "layer " << il;
    // 256 tokens x 4 picks over 16 experts is 64 per expert on average; with the fixtures'
    // embedding and bias scales one expert took up to 178 (synthetic_model.cpp).
    EXPECT_LT(most, 2 * 256 * hp.n_expert_used / hp.n_expert) << "layer " << il;
  }
}

// `ds4-quantize --synthetic demo` writes the same bytes as the library with the same options.
TEST_F(SyntheticDemoFile, QuantizeCommandWritesTheSameFile) {
  const fs::path exe = fs::path(DS4_BINARY_DIR) / "apps" / "ds4-quantize";
  if (!fs::exists(exe)) GTEST_SKIP() << exe << " is not built";
  const std::string out = (dir_ / "cmd.gguf").string();
  const std::string cmd = exe.string() + " --synthetic demo --recipe q2 --seed 5 --threads 1 -o " + out +
                          " 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream a(path_, std::ios::binary), b(out, std::ios::binary);
  std::string sa((std::istreambuf_iterator<char>(a)), {}), sb((std::istreambuf_iterator<char>(b)), {});
  EXPECT_EQ(sa.size(), sb.size());
  EXPECT_TRUE(sa == sb);
  // Bad input: a clear error and a non-zero exit, no file.
  const std::string bad = exe.string() + " --synthetic flash --recipe q3 -o " + out + "x 2>/dev/null";
  EXPECT_NE(std::system(bad.c_str()), 0);
  EXPECT_FALSE(fs::exists(out + "x"));
}

}  // namespace
}  // namespace ds4::synth
