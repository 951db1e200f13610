// The quantized recipes: per-tensor types of architecture.md 2.2-2.3 / formats.md 3.8, the
// lossless MXFP4 repack, block-size refusals, and the imatrix feeding expert quantization.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "convert/convert.h"
#include "core/error.h"
#include "convert/model_config.h"
#include "convert/recipe.h"
#include "convert/source_decode.h"
#include "convert/tensor_plan.h"
#include "convert_test_util.h"
#include "gguf/gguf.h"
#include "quant/quant.h"

namespace ds4::convert {
namespace {

using namespace testing;

std::string run(const TempDir& tmp, const std::string& in, const std::string& recipe,
                const std::string& imatrix = {}) {
  ConvertOptions o;
  o.input_dir = in;
  o.output_path = tmp.file(recipe + (imatrix.empty() ? "" : "-im") + ".gguf");
  o.recipe = recipe;
  o.imatrix_path = imatrix;
  o.threads = 2;
  convert_checkpoint(o);
  return o.output_path;
}

// The type every tensor must have in the ds4 recipes, decided from its name only.
GgmlType expected_ds4_type(const std::string& n, GgmlType gate_up, GgmlType down) {
  auto has = [&](const char* s) { return n.find(s) != std::string::npos; };
  if (has("tid2eid")) return GgmlType::I32;
  if (has("ffn_gate_exps") || has("ffn_up_exps")) return gate_up;
  if (has("ffn_down_exps")) return down;
  if (n == "output.weight" || has("_shexp.") || has(".attn_q_a.weight") ||
      has(".attn_q_b.weight") || has(".attn_kv.weight") || has(".attn_output_a.") ||
      has(".attn_output_b."))
    return has("indexer.") ? GgmlType::F16 : GgmlType::Q8_0;
  if (n == "token_embd.weight" || has("hc_attn_fn") || has("hc_ffn_fn") ||
      has("output_hc_fn") || has("ffn_gate_inp") || has("compressor_kv") ||
      has("compressor_gate") || has("compressor_ape") || has("indexer.proj") ||
      has("indexer.attn_q_b"))
    return GgmlType::F16;
  return GgmlType::F32;  // norms, hc base/scale, sinks, exp_probs_b
}

void check_ds4_types(const gguf::File& f, GgmlType gate_up, GgmlType down) {
  for (const gguf::TensorInfo& t : f.tensors())
    EXPECT_EQ(type_name(t.type), type_name(expected_ds4_type(t.name, gate_up, down))) << t.name;
}

// Relative RMS error of GGUF tensor `name` against its f32 reference values.
double rel_rms_error(const gguf::File& f, const std::string& name, const std::vector<float>& ref) {
  const gguf::TensorInfo& t = f.tensor(name);
  std::vector<float> got(static_cast<size_t>(t.n_elements()));
  quant::dequantize_row(t.type, f.tensor_data(t), got.data(), t.n_elements());
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - ref[i]) * double(got[i] - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

// The f32 values of a planned tensor (experts stacked), decoded from the checkpoint.
std::vector<float> reference_values(const Checkpoint& ck, const PlannedTensor& p) {
  std::vector<float> v;
  for (const std::string& s : p.sources) {
    const StTensor& t = ck.get(s);
    const StTensor* sc = (t.dtype == StDtype::I8 || t.dtype == StDtype::F8_E4M3)
                             ? &ck.get(scale_name(s)) : nullptr;
    const size_t off = v.size();
    v.resize(off + static_cast<size_t>(logical_rows(t) * logical_cols(t)));
    decode_rows(t, sc, 0, logical_rows(t), v.data() + off);
  }
  return v;
}

TEST(ConvertRecipes, Q8EveryMatrix) {
  TempDir tmp;
  const std::string dir = fixture("dsv4-tiny-a-fp8");
  const gguf::File f = gguf::File::open(run(tmp, dir, "q8"));
  Checkpoint ck(dir);
  for (const PlannedTensor& p : build_plan(load_model_config(dir + "/config.json"))) {
    const gguf::TensorInfo& t = f.tensor(p.name);
    if (p.role == Role::Tid2eid) {
      EXPECT_EQ(t.type, GgmlType::I32);
    } else if (p.ne.size() >= 2) {
      EXPECT_EQ(t.type, GgmlType::Q8_0) << p.name;
      EXPECT_LT(rel_rms_error(f, p.name, reference_values(ck, p)), 0.01) << p.name;
    } else {
      EXPECT_EQ(t.type, GgmlType::F32) << p.name;
    }
    EXPECT_EQ(t.ne, p.ne) << p.name;
  }
}

// dsv4-tiny-k cut to its first 4 layers (one of each kind: SWA, SWA, CSA with indexer, HCA;
// hash-routed and biased routers), so the 256-block recipes stay fast under sanitizers.
std::string small_tiny_k(const TempDir& tmp) {
  EditableCheckpoint c = EditableCheckpoint::load(tiny_k());
  c.config["num_hidden_layers"] = 4;
  c.config["compress_ratios"] = nlohmann::json::array({0, 0, 4, 16});
  for (auto it = c.tensors.begin(); it != c.tensors.end();)
    it = (it->first.rfind("layers.4.", 0) == 0 || it->first.rfind("layers.5.", 0) == 0)
             ? c.tensors.erase(it) : std::next(it);
  const std::string d = tmp.file("tiny-k-4");
  c.write(d);
  return d;
}

TEST(ConvertRecipes, Q2OnTinyK) {
  TempDir tmp;
  const std::string dir = small_tiny_k(tmp);
  const gguf::File f = gguf::File::open(run(tmp, dir, "q2"));
  check_ds4_types(f, GgmlType::IQ2_XXS, GgmlType::Q2_K);
  EXPECT_EQ(f.tensor("blk.1.ffn_gate_exps.weight").ne, (std::vector<int64_t>{256, 256, 8}));
  EXPECT_NE(f.find_tensor("blk.2.indexer.proj.weight"), nullptr);
  // Quantized experts still resemble the weights (2-bit: loose bound).
  Checkpoint ck(dir);
  const auto plan = build_plan(load_model_config(dir + "/config.json"));
  for (const PlannedTensor& p : plan) {
    if (p.name == "blk.3.ffn_down_exps.weight" || p.name == "blk.3.ffn_up_exps.weight" ||
        p.name == "blk.3.attn_q_a.weight") {
      EXPECT_LT(rel_rms_error(f, p.name, reference_values(ck, p)), 0.6) << p.name;
    }
  }
}

TEST(ConvertRecipes, Q4OnTinyK) {
  TempDir tmp;
  const std::string dir = small_tiny_k(tmp);
  const gguf::File f = gguf::File::open(run(tmp, dir, "q4"));
  check_ds4_types(f, GgmlType::Q4_K, GgmlType::Q4_K);
  Checkpoint ck(dir);
  for (const PlannedTensor& p : build_plan(load_model_config(dir + "/config.json"))) {
    if (p.name == "blk.2.ffn_gate_exps.weight") {
      EXPECT_LT(rel_rms_error(f, p.name, reference_values(ck, p)), 0.15);
    }
  }
}

TEST(ConvertRecipes, Q2RefusesBlocksThatDoNotFit) {
  TempDir tmp;
  try {
    run(tmp, fixture("dsv4-tiny-a-bf16"), "q2");
    FAIL() << "q2 accepted hidden size 128";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("blk.0.ffn_gate_exps.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("IQ2_XXS"), std::string::npos) << m;
    EXPECT_NE(m.find("256"), std::string::npos) << m;
  }
  EXPECT_FALSE(fs::exists(tmp.file("q2.gguf")));
}

TEST(ConvertRecipes, Mxfp4RepackIsLossless) {
  TempDir tmp;
  const std::string dir = fixture("dsv4-tiny-a-fp8");
  const gguf::File f = gguf::File::open(run(tmp, dir, "mxfp4"));
  check_ds4_types(f, GgmlType::MXFP4, GgmlType::MXFP4);
  Checkpoint ck(dir);
  for (int L : {0, 3, 5})
    for (const char* w : {"gate", "up", "down"}) {
      const std::string name = fmt::format("blk.{}.ffn_{}_exps.weight", L, w);
      const char* wn = std::string(w) == "gate" ? "w1" : std::string(w) == "up" ? "w3" : "w2";
      const gguf::TensorInfo& t = f.tensor(name);
      std::vector<float> got(static_cast<size_t>(t.n_elements()));
      quant::dequantize_row(GgmlType::MXFP4, f.tensor_data(t), got.data(), t.n_elements());
      const int64_t per = t.ne[0] * t.ne[1];
      for (int e = 0; e < 16; ++e) {
        const std::string src = fmt::format("layers.{}.ffn.experts.{}.{}.weight", L, e, wn);
        const StTensor& q = ck.get(src);
        const StTensor& s = ck.get(scale_name(src));
        const int64_t cols = t.ne[0];
        for (int64_t i = 0; i < per; ++i) {
          const int64_t r = i / cols, c = i % cols;
          const uint8_t b = q.data[r * cols / 2 + c / 2];
          const float want =
              ref_e2m1((c & 1) ? b >> 4 : b & 15) * ref_e8m0(s.data[r * (cols / 32) + c / 32]);
          ASSERT_EQ(got[static_cast<size_t>(e * per + i)], want) << name << " e" << e << " " << i;
        }
      }
    }
}

TEST(ConvertRecipes, RecipeNames) {
  EXPECT_EQ(parse_recipe("mxfp4"), Recipe::MXFP4);
  try {
    parse_recipe("q3");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q3"), std::string::npos);
  }
}

// Writes a legacy .dat with the given entries (ncall 1).
void write_dat(const std::string& path,
               const std::vector<std::pair<std::string, std::vector<float>>>& entries) {
  std::ofstream out(path, std::ios::binary);
  auto i32 = [&](int32_t v) { out.write(reinterpret_cast<const char*>(&v), 4); };
  i32(static_cast<int32_t>(entries.size()));
  for (const auto& [name, vals] : entries) {
    i32(static_cast<int32_t>(name.size()));
    out.write(name.data(), static_cast<std::streamsize>(name.size()));
    i32(1);
    i32(static_cast<int32_t>(vals.size()));
    out.write(reinterpret_cast<const char*>(vals.data()), static_cast<std::streamsize>(4 * vals.size()));
  }
  i32(7);
  const std::string ds = "prompts.txt";
  i32(static_cast<int32_t>(ds.size()));
  out.write(ds.data(), static_cast<std::streamsize>(ds.size()));
}

TEST(ConvertRecipes, ImatrixWeightsExpertQuantization) {
  TempDir tmp;
  const std::string dir = small_tiny_k(tmp);
  const ModelConfig cfg = load_model_config(dir + "/config.json");
  const int64_t H = cfg.hidden, F = cfg.expert_ffn, E = cfg.n_experts;
  // Packed per expert for the down projection of layer 3; a per-expert override for expert 2.
  std::vector<float> down(static_cast<size_t>(F * E)), one(static_cast<size_t>(F));
  for (size_t i = 0; i < down.size(); ++i) down[i] = 0.25f + static_cast<float>((i * 7919) % 101) / 10.0f;
  for (size_t i = 0; i < one.size(); ++i) one[i] = 1.0f + static_cast<float>(i % 13);
  std::vector<float> gate(static_cast<size_t>(H), 2.0f);
  const std::string dat = tmp.file("im.dat");
  write_dat(dat, {{"blk.3.ffn_down_exps.weight", down},
                  {"blk.3.ffn_down_exps.weight.expert.2", one},
                  {"layers.2.ffn.experts.1.w1.weight", gate}});
  const gguf::File f = gguf::File::open(run(tmp, dir, "q4", dat));
  EXPECT_EQ(f.get_u64("quantize.imatrix.entries_count"), 3u);
  EXPECT_EQ(f.get_string("quantize.imatrix.dataset"), "prompts.txt");
  EXPECT_EQ(f.get_u64("quantize.imatrix.chunks_count"), 7u);
  EXPECT_EQ(f.get_string("quantize.imatrix.file"), dat);

  Checkpoint ck(dir);
  auto expert_bytes = [&](const std::string& tname, const std::string& src, int e,
                          const float* qw) {
    const StTensor& s = ck.get(src);
    const int64_t rows = s.shape[0], cols = s.shape[1];
    std::vector<float> x(static_cast<size_t>(rows * cols));
    decode_rows(s, nullptr, 0, rows, x.data());
    std::vector<uint8_t> want(row_bytes(GgmlType::Q4_K, cols) * static_cast<size_t>(rows));
    quant::quantize_rows(GgmlType::Q4_K, x.data(), want.data(), rows, cols, qw);
    const gguf::TensorInfo& t = f.tensor(tname);
    return std::memcmp(f.tensor_data(t) + static_cast<size_t>(e) * want.size(), want.data(),
                       want.size()) == 0;
  };
  EXPECT_TRUE(expert_bytes("blk.3.ffn_down_exps.weight", "layers.3.ffn.experts.5.w2.weight", 5,
                           down.data() + 5 * F));
  EXPECT_FALSE(expert_bytes("blk.3.ffn_down_exps.weight", "layers.3.ffn.experts.5.w2.weight", 5,
                            nullptr));
  EXPECT_TRUE(expert_bytes("blk.3.ffn_down_exps.weight", "layers.3.ffn.experts.2.w2.weight", 2,
                           one.data()));
  EXPECT_TRUE(expert_bytes("blk.2.ffn_gate_exps.weight", "layers.2.ffn.experts.1.w1.weight", 1,
                           gate.data()));
  EXPECT_TRUE(expert_bytes("blk.2.ffn_gate_exps.weight", "layers.2.ffn.experts.0.w1.weight", 0,
                           nullptr));
}

}  // namespace
}  // namespace ds4::convert

namespace ds4::convert {
namespace {

using namespace testing;

TEST(ConvertRecipes, Mxfp4QuantizesFloatExperts) {
  // Experts stored BF16 (no FP4 source): quantized to MXFP4 instead of repacked.
  TempDir tmp;
  const std::string dir = fixture("dsv4-tiny-a-bf16");
  const gguf::File f = gguf::File::open(run(tmp, dir, "mxfp4"));
  check_ds4_types(f, GgmlType::MXFP4, GgmlType::MXFP4);
  Checkpoint ck(dir);
  for (const PlannedTensor& p : build_plan(load_model_config(dir + "/config.json"))) {
    if (p.name == "blk.1.ffn_down_exps.weight") {
      EXPECT_LT(rel_rms_error(f, p.name, reference_values(ck, p)), 0.2);
    }
  }
}

TEST(ConvertRecipes, F16OverflowIsRefused) {
  TempDir tmp;
  EditableCheckpoint c = EditableCheckpoint::load(fixture("dsv4-tiny-a-bf16"));
  const uint16_t big = 0x47C3;  // bf16 99840: beyond F16's 65504
  std::memcpy(c.tensors.at("embed.weight").bytes.data() + 2 * 300, &big, 2);
  const std::string d = tmp.file("big");
  c.write(d);
  try {
    run(tmp, d, "mxfp4");
    FAIL() << "an F16 overflow was accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("token_embd.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("F16"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace ds4::convert

namespace ds4::convert {
namespace {

using namespace testing;

TEST(ConvertRecipes, ImatrixOfWrongSizeFailsBeforeWriting) {
  TempDir tmp;
  const std::string dat = tmp.file("bad.dat");
  write_dat(dat, {{"blk.1.ffn_up_exps.weight", std::vector<float>(100, 1.0f)}});
  try {
    run(tmp, tiny_k(), "q4", dat);
    FAIL() << "accepted a 100-value entry for 256 columns";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("blk.1.ffn_up_exps.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("100"), std::string::npos) << m;
  }
  EXPECT_FALSE(fs::exists(tmp.file("q4-im.gguf.tmp")));
}

}  // namespace
}  // namespace ds4::convert
