#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.h"
#include "core/ggml_type.h"
#include "gguf/gguf.h"
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

}  // namespace
}  // namespace ds4::synth
