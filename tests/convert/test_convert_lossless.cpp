// The lossless recipes (f32, bf16) on both dsv4-tiny-a fixtures: names, shapes, types,
// metadata and values bit-exact against the safetensors, FP8/FP4 decoding against values
// computed by hand from the stored bytes.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cstring>

#include "convert/convert.h"
#include "core/error.h"
#include "convert/model_config.h"
#include "convert/safetensors.h"
#include "convert/tensor_plan.h"
#include "convert_test_util.h"
#include "core/fp16.h"
#include "gguf/gguf.h"

namespace ds4::convert {
namespace {

using namespace testing;

gguf::File convert_to(const TempDir& tmp, const std::string& in, const std::string& recipe,
                      const std::string& out_name) {
  ConvertOptions o;
  o.input_dir = in;
  o.output_path = tmp.file(out_name);
  o.recipe = recipe;
  o.threads = 2;
  convert_checkpoint(o);
  return gguf::File::open(o.output_path);
}

std::vector<int64_t> ne(std::initializer_list<int64_t> v) { return std::vector<int64_t>(v); }

void expect_tensor(const gguf::File& f, const std::string& name, GgmlType type,
                   std::vector<int64_t> shape) {
  const gguf::TensorInfo* t = f.find_tensor(name);
  ASSERT_NE(t, nullptr) << name;
  EXPECT_EQ(t->type, type) << name;
  EXPECT_EQ(t->ne, shape) << name;
}

TEST(ConvertLossless, MetadataOfTinyA) {
  TempDir tmp;
  const gguf::File f = convert_to(tmp, fixture("dsv4-tiny-a-bf16"), "f32", "a.gguf");
  EXPECT_EQ(f.get_string("general.architecture"), "deepseek4");
  EXPECT_EQ(f.get_string("general.name"), "dsv4-tiny-a-bf16");
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.get("general.alignment").type(), gguf::ValueType::U32);
  const std::pair<const char*, uint32_t> u32s[] = {
      {"deepseek4.block_count", 6},
      {"deepseek4.embedding_length", 128},
      {"deepseek4.vocab_size", 512},
      {"deepseek4.attention.head_count", 4},
      {"deepseek4.attention.head_count_kv", 1},
      {"deepseek4.attention.key_length", 64},
      {"deepseek4.attention.value_length", 64},
      {"deepseek4.rope.dimension_count", 16},
      {"deepseek4.attention.q_lora_rank", 64},
      {"deepseek4.attention.output_group_count", 2},
      {"deepseek4.attention.output_lora_rank", 32},
      {"deepseek4.attention.sliding_window", 8},
      {"deepseek4.attention.indexer.head_count", 16},
      {"deepseek4.attention.indexer.key_length", 32},
      {"deepseek4.attention.indexer.top_k", 4},
      {"deepseek4.hyper_connection.count", 4},
      {"deepseek4.hyper_connection.sinkhorn_iterations", 20},
      {"deepseek4.expert_count", 16},
      {"deepseek4.expert_used_count", 4},
      {"deepseek4.expert_shared_count", 1},
      {"deepseek4.expert_feed_forward_length", 32},
      {"deepseek4.hash_layer_count", 3},
      {"deepseek4.context_length", 65536},
      {"deepseek4.rope.scaling.original_context_length", 64},
  };
  for (const auto& [key, v] : u32s) {
    EXPECT_EQ(f.get(key).type(), gguf::ValueType::U32) << key;
    EXPECT_EQ(f.get_u32(key), v) << key;
  }
  const std::pair<const char*, double> floats[] = {
      {"deepseek4.rope.freq_base", 10000.0},
      {"deepseek4.attention.compress_rope_freq_base", 160000.0},
      {"deepseek4.rope.scaling.factor", 16.0},
      {"deepseek4.rope.scaling.yarn_beta_fast", 32.0},
      {"deepseek4.rope.scaling.yarn_beta_slow", 1.0},
      {"deepseek4.expert_weights_scale", 1.5},
      {"deepseek4.attention.layer_norm_rms_epsilon", static_cast<double>(1e-6f)},
      {"deepseek4.hyper_connection.epsilon", static_cast<double>(1e-6f)},
  };
  for (const auto& [key, v] : floats) {
    EXPECT_EQ(f.get(key).type(), gguf::ValueType::F32) << key;
    EXPECT_EQ(f.get_f64(key), v) << key;
  }
  EXPECT_EQ(f.get("deepseek4.expert_weights_norm").type(), gguf::ValueType::BOOL);
  EXPECT_TRUE(f.get_bool("deepseek4.expert_weights_norm"));
  EXPECT_EQ(f.get_u32_array("deepseek4.attention.compress_ratios"),
            (std::vector<uint32_t>{0, 0, 4, 16, 4, 16, 0}));
  EXPECT_EQ(f.get("deepseek4.attention.compress_ratios").array_elem_type(),
            gguf::ValueType::U32);
  EXPECT_EQ(f.get_f32_array("deepseek4.swiglu_clamp_exp"), std::vector<float>(6, 10.0f));
  EXPECT_EQ(f.get_u32("tokenizer.ggml.bos_token_id"), 0u);
  EXPECT_EQ(f.get_u32("tokenizer.ggml.eos_token_id"), 1u);

  // 24 tensors per layer, +4 for a compressor, +6 for an indexer; 6 global tensors.
  EXPECT_EQ(f.tensors().size(), 24u * 6 + 4 * 4 + 6 * 2 + 6);
  expect_tensor(f, "token_embd.weight", GgmlType::F32, ne({128, 512}));
  expect_tensor(f, "output.weight", GgmlType::F32, ne({128, 512}));
  expect_tensor(f, "output_norm.weight", GgmlType::F32, ne({128}));
  expect_tensor(f, "output_hc_fn.weight", GgmlType::F32, ne({512, 4}));
  expect_tensor(f, "output_hc_base.weight", GgmlType::F32, ne({4}));
  expect_tensor(f, "output_hc_scale.weight", GgmlType::F32, ne({1}));
  expect_tensor(f, "blk.0.hc_attn_fn.weight", GgmlType::F32, ne({512, 24}));
  expect_tensor(f, "blk.0.attn_q_b.weight", GgmlType::F32, ne({64, 256}));
  expect_tensor(f, "blk.0.attn_output_a.weight", GgmlType::F32, ne({128, 64}));
  expect_tensor(f, "blk.0.attn_output_b.weight", GgmlType::F32, ne({64, 128}));
  expect_tensor(f, "blk.0.attn_sinks.weight", GgmlType::F32, ne({4}));
  expect_tensor(f, "blk.0.ffn_gate_tid2eid.weight", GgmlType::I32, ne({4, 512}));
  expect_tensor(f, "blk.2.ffn_gate_tid2eid.weight", GgmlType::I32, ne({4, 512}));
  EXPECT_EQ(f.find_tensor("blk.3.ffn_gate_tid2eid.weight"), nullptr);
  expect_tensor(f, "blk.3.exp_probs_b.bias", GgmlType::F32, ne({16}));
  EXPECT_EQ(f.find_tensor("blk.2.exp_probs_b.bias"), nullptr);
  EXPECT_EQ(f.find_tensor("blk.1.attn_compressor_kv.weight"), nullptr);
  expect_tensor(f, "blk.2.attn_compressor_kv.weight", GgmlType::F32, ne({128, 128}));
  expect_tensor(f, "blk.2.attn_compressor_ape.weight", GgmlType::F32, ne({128, 4}));
  expect_tensor(f, "blk.3.attn_compressor_gate.weight", GgmlType::F32, ne({128, 64}));
  expect_tensor(f, "blk.3.attn_compressor_ape.weight", GgmlType::F32, ne({64, 16}));
  expect_tensor(f, "blk.3.attn_compressor_norm.weight", GgmlType::F32, ne({64}));
  expect_tensor(f, "blk.4.indexer.attn_q_b.weight", GgmlType::F32, ne({64, 512}));
  expect_tensor(f, "blk.4.indexer.proj.weight", GgmlType::F32, ne({128, 16}));
  expect_tensor(f, "blk.4.indexer_compressor_kv.weight", GgmlType::F32, ne({128, 64}));
  expect_tensor(f, "blk.4.indexer_compressor_ape.weight", GgmlType::F32, ne({64, 4}));
  expect_tensor(f, "blk.4.indexer_compressor_norm.weight", GgmlType::F32, ne({32}));
  EXPECT_EQ(f.find_tensor("blk.5.indexer.proj.weight"), nullptr);
  expect_tensor(f, "blk.5.ffn_gate_exps.weight", GgmlType::F32, ne({128, 32, 16}));
  expect_tensor(f, "blk.5.ffn_up_exps.weight", GgmlType::F32, ne({128, 32, 16}));
  expect_tensor(f, "blk.5.ffn_down_exps.weight", GgmlType::F32, ne({32, 128, 16}));
  expect_tensor(f, "blk.5.ffn_down_shexp.weight", GgmlType::F32, ne({32, 128}));
  expect_tensor(f, "blk.5.ffn_gate_inp.weight", GgmlType::F32, ne({128, 16}));
}

// Compares every GGUF tensor with its sources: `exact_bytes` demands the stored bytes equal
// the checkpoint bytes when the types agree; otherwise values must be equal as floats.
void check_values(const gguf::File& f, const std::string& dir) {
  Checkpoint ck(dir);
  const ModelConfig cfg = load_model_config(dir + "/config.json");
  for (const PlannedTensor& p : build_plan(cfg)) {
    const gguf::TensorInfo& t = f.tensor(p.name);
    const uint8_t* out = f.tensor_data(t);
    size_t off = 0;
    for (const std::string& sname : p.sources) {
      const StTensor& s = ck.get(sname);
      const int64_t n = s.numel();
      if (p.role == Role::Tid2eid) {
        ASSERT_EQ(t.type, GgmlType::I32);
        for (int64_t i = 0; i < n; ++i) {
          int64_t v;
          std::memcpy(&v, s.data + 8 * i, 8);
          int32_t o;
          std::memcpy(&o, out + 4 * i, 4);
          ASSERT_EQ(o, v) << p.name << " " << i;
        }
        continue;
      }
      ASSERT_TRUE(s.dtype == StDtype::F32 || s.dtype == StDtype::BF16) << sname;
      if ((s.dtype == StDtype::F32 && t.type == GgmlType::F32) ||
          (s.dtype == StDtype::BF16 && t.type == GgmlType::BF16)) {
        ASSERT_EQ(std::memcmp(out + off, s.data, s.nbytes), 0) << p.name << " from " << sname;
        off += s.nbytes;
        continue;
      }
      ASSERT_EQ(t.type, GgmlType::F32) << p.name;
      ASSERT_EQ(s.dtype, StDtype::BF16) << p.name;
      for (int64_t i = 0; i < n; ++i) {
        float o;
        std::memcpy(&o, out + off + 4 * i, 4);
        ASSERT_EQ(f32_to_bits(o), f32_to_bits(bf16_bits_to_f32(s.data + 2 * i)))
            << p.name << " element " << i;
      }
      off += static_cast<size_t>(n) * 4;
    }
    if (p.role != Role::Tid2eid) {
      EXPECT_EQ(off, t.nbytes) << p.name;
    }
  }
}

TEST(ConvertLossless, Bf16FixtureF32RecipeIsExact) {
  TempDir tmp;
  const gguf::File f = convert_to(tmp, fixture("dsv4-tiny-a-bf16"), "f32", "a.gguf");
  check_values(f, fixture("dsv4-tiny-a-bf16"));
}

TEST(ConvertLossless, Bf16FixtureBf16RecipeIsBitExact) {
  TempDir tmp;
  const gguf::File f = convert_to(tmp, fixture("dsv4-tiny-a-bf16"), "bf16", "a.gguf");
  expect_tensor(f, "token_embd.weight", GgmlType::BF16, ne({128, 512}));
  expect_tensor(f, "blk.0.ffn_gate_exps.weight", GgmlType::BF16, ne({128, 32, 16}));
  expect_tensor(f, "blk.0.attn_norm.weight", GgmlType::F32, ne({128}));
  // Stored F32 in the checkpoint: kept F32 so the file stays exact.
  expect_tensor(f, "blk.0.hc_attn_fn.weight", GgmlType::F32, ne({512, 24}));
  expect_tensor(f, "blk.2.attn_compressor_ape.weight", GgmlType::F32, ne({128, 4}));
  check_values(f, fixture("dsv4-tiny-a-bf16"));
}

// Decoded value of GGUF tensor element i (F32 or BF16 storage).
float element(const gguf::File& f, const gguf::TensorInfo& t, int64_t i) {
  const uint8_t* d = f.tensor_data(t);
  if (t.type == GgmlType::BF16) return bf16_bits_to_f32(d + 2 * i);
  float v;
  std::memcpy(&v, d + 4 * i, 4);
  return v;
}

// FP8 weights: W[r][c] = e4m3(q) * 2^(s[r/128][c/128] - 127), by hand from the stored bytes.
void check_fp8(const gguf::File& f, const Checkpoint& ck, const std::string& gguf_name,
               const std::string& src) {
  const StTensor& w = ck.get(src);
  const StTensor& s = ck.get(scale_name(src));
  ASSERT_EQ(w.dtype, StDtype::F8_E4M3);
  const gguf::TensorInfo& t = f.tensor(gguf_name);
  const int64_t rows = w.shape[0], cols = w.shape[1], scols = s.shape[1];
  int nonzero = 0;
  for (int64_t r = 0; r < rows; r += 37)
    for (int64_t c = 0; c < cols; c += 5) {
      const float want = ref_e4m3(w.data[r * cols + c]) * ref_e8m0(s.data[(r / 128) * scols + c / 128]);
      ASSERT_EQ(element(f, t, r * cols + c), want) << gguf_name << " [" << r << "][" << c << "]";
      nonzero += want != 0;
    }
  EXPECT_GT(nonzero, 0) << gguf_name;
}

// FP4 experts: byte j of a 16-byte group holds elements 2j (low) and 2j+1 (high), times
// 2^(s - 127) per 32 inputs; expert e is slab e of the stacked tensor.
void check_fp4(const gguf::File& f, const Checkpoint& ck, const std::string& gguf_name,
               const std::string& src_fmt, int n_exp) {
  const gguf::TensorInfo& t = f.tensor(gguf_name);
  for (int e = 0; e < n_exp; e += 5) {
    const std::string src = fmt::format(fmt::runtime(src_fmt), e);
    const StTensor& w = ck.get(src);
    const StTensor& s = ck.get(scale_name(src));
    ASSERT_EQ(w.dtype, StDtype::I8);
    const int64_t rows = w.shape[0], cols = 2 * w.shape[1];
    for (int64_t r = 0; r < rows; r += 7)
      for (int64_t c = 0; c < cols; ++c) {
        const uint8_t byte = w.data[r * cols / 2 + c / 2];
        const uint8_t nib = (c & 1) ? byte >> 4 : byte & 15;
        const float want = ref_e2m1(nib) * ref_e8m0(s.data[r * (cols / 32) + c / 32]);
        ASSERT_EQ(element(f, t, (int64_t(e) * rows + r) * cols + c), want)
            << gguf_name << " expert " << e << " [" << r << "][" << c << "]";
      }
  }
}

TEST(ConvertLossless, Fp8FixtureDecodesExactly) {
  TempDir tmp;
  const std::string dir = fixture("dsv4-tiny-a-fp8");
  Checkpoint ck(dir);
  for (const char* recipe : {"f32", "bf16"}) {
    SCOPED_TRACE(recipe);
    const gguf::File f = convert_to(tmp, dir, recipe, std::string(recipe) + ".gguf");
    const GgmlType mat = std::string(recipe) == "f32" ? GgmlType::F32 : GgmlType::BF16;
    expect_tensor(f, "blk.0.attn_q_a.weight", mat, ne({128, 64}));
    expect_tensor(f, "blk.2.ffn_down_exps.weight", mat, ne({32, 128, 16}));
    check_fp8(f, ck, "blk.0.attn_q_a.weight", "layers.0.attn.wq_a.weight");
    check_fp8(f, ck, "blk.3.attn_q_b.weight", "layers.3.attn.wq_b.weight");  // 2 row blocks
    check_fp8(f, ck, "blk.2.indexer.attn_q_b.weight", "layers.2.attn.indexer.wq_b.weight");
    check_fp8(f, ck, "blk.1.ffn_down_shexp.weight", "layers.1.ffn.shared_experts.w2.weight");
    check_fp4(f, ck, "blk.0.ffn_gate_exps.weight", "layers.0.ffn.experts.{}.w1.weight", 16);
    check_fp4(f, ck, "blk.4.ffn_up_exps.weight", "layers.4.ffn.experts.{}.w3.weight", 16);
    check_fp4(f, ck, "blk.5.ffn_down_exps.weight", "layers.5.ffn.experts.{}.w2.weight", 16);
    // The BF16 tensors of this fixture pass through unchanged.
    const StTensor& emb = ck.get("embed.weight");
    const gguf::TensorInfo& te = f.tensor("token_embd.weight");
    for (int64_t i = 0; i < emb.numel(); i += 97)
      ASSERT_EQ(element(f, te, i), bf16_bits_to_f32(emb.data + 2 * i));
  }
}

TEST(ConvertLossless, HandComputedFp8Values) {
  // Spot values of the decoder itself, independent of the fixtures.
  EXPECT_EQ(ref_e4m3(0x38), 1.0f);     // exp 7, man 0
  EXPECT_EQ(ref_e4m3(0x7E), 448.0f);   // max
  EXPECT_EQ(ref_e4m3(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(ref_e4m3(0xC4), -3.0f);    // -(1 + 4/8) * 2^1
  EXPECT_EQ(ref_e2m1(0x7), 6.0f);
  EXPECT_EQ(ref_e2m1(0xB), -1.5f);
  EXPECT_EQ(ref_e8m0(127), 1.0f);
  EXPECT_EQ(ref_e8m0(120), 1.0f / 128);
}

TEST(ConvertLossless, ProgressReportsEveryUnit) {
  TempDir tmp;
  ConvertOptions o;
  o.input_dir = fixture("dsv4-tiny-a-bf16");
  o.output_path = tmp.file("p.gguf");
  o.recipe = "bf16";
  o.threads = 1;
  size_t last = 0, total = 0, calls = 0;
  o.progress = [&](size_t done, size_t tot, const std::string&) {
    EXPECT_EQ(done, last + 1);
    last = done;
    total = tot;
    ++calls;
  };
  convert_checkpoint(o);
  EXPECT_EQ(last, total);
  // 178 tensors, each stacked expert tensor counting once per expert (18 x 16).
  EXPECT_EQ(total, 178u - 18 + 18 * 16);
  EXPECT_FALSE(fs::exists(o.output_path + ".tmp"));
}

}  // namespace
}  // namespace ds4::convert
