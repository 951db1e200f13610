#include "convert/tensor_plan.h"

#include <fmt/format.h>

#include <set>

#include "core/error.h"

namespace ds4::convert {

namespace {

std::vector<int64_t> reversed(const std::vector<int64_t>& v) {
  return std::vector<int64_t>(v.rbegin(), v.rend());
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

class PlanBuilder {
 public:
  explicit PlanBuilder(std::vector<PlannedTensor>& out) : out_(out) {}

  // A tensor with one source whose torch shape is `shape`.
  void one(std::string name, Role role, int layer, std::string src, std::vector<int64_t> shape) {
    PlannedTensor t;
    t.name = std::move(name);
    t.role = role;
    t.layer = layer;
    t.ne = reversed(shape);
    t.sources = {std::move(src)};
    t.src_shape = std::move(shape);
    out_.push_back(std::move(t));
  }

  // A routed-expert stack: expert e's [out, in] matrix from "<prefix>.experts.e.<w>.weight".
  void experts(std::string name, Role role, int layer, const std::string& prefix, const char* w,
               int64_t n_expert, int64_t out, int64_t in) {
    PlannedTensor t;
    t.name = std::move(name);
    t.role = role;
    t.layer = layer;
    t.ne = {in, out, n_expert};
    for (int64_t e = 0; e < n_expert; ++e)
      t.sources.push_back(fmt::format("{}.experts.{}.{}.weight", prefix, e, w));
    t.src_shape = {out, in};
    out_.push_back(std::move(t));
  }

 private:
  std::vector<PlannedTensor>& out_;
};

}  // namespace

bool is_routed_expert(Role r) {
  return r == Role::ExpertGate || r == Role::ExpertUp || r == Role::ExpertDown;
}

std::string scale_name(const std::string& weight_name) {
  const std::string suffix = ".weight";
  if (weight_name.size() > suffix.size() &&
      weight_name.compare(weight_name.size() - suffix.size(), suffix.size(), suffix) == 0)
    return weight_name.substr(0, weight_name.size() - suffix.size()) + ".scale";
  return weight_name + ".scale";
}

std::vector<PlannedTensor> build_plan(const ModelConfig& c) {
  std::vector<PlannedTensor> plan;
  PlanBuilder b(plan);
  const int64_t H = c.hidden, V = c.vocab, hc = c.hc_mult;
  const int64_t hc_mix = (2 + hc) * hc;  // pre weights, post weights, hc x hc combination
  const int64_t q_dim = int64_t(c.n_heads) * c.head_dim;
  const int64_t o_in = q_dim / c.o_groups, o_out = int64_t(c.o_groups) * c.o_lora;
  const int64_t F = c.expert_ffn, E = c.n_experts;

  b.one("token_embd.weight", Role::Embedding, -1, "embed.weight", {V, H});
  for (uint32_t il = 0; il < c.n_layers; ++il) {
    const int L = static_cast<int>(il);
    const std::string p = fmt::format("blk.{}.", il), s = fmt::format("layers.{}.", il);
    b.one(p + "hc_attn_fn.weight", Role::HcFn, L, s + "hc_attn_fn", {hc_mix, hc * H});
    b.one(p + "hc_attn_base.weight", Role::Vector, L, s + "hc_attn_base", {hc_mix});
    b.one(p + "hc_attn_scale.weight", Role::Vector, L, s + "hc_attn_scale", {3});
    b.one(p + "attn_norm.weight", Role::Vector, L, s + "attn_norm.weight", {H});
    b.one(p + "attn_q_a.weight", Role::AttnProj, L, s + "attn.wq_a.weight", {c.q_lora, H});
    b.one(p + "attn_q_a_norm.weight", Role::Vector, L, s + "attn.q_norm.weight", {c.q_lora});
    b.one(p + "attn_q_b.weight", Role::AttnProj, L, s + "attn.wq_b.weight", {q_dim, c.q_lora});
    b.one(p + "attn_kv.weight", Role::AttnProj, L, s + "attn.wkv.weight", {c.head_dim, H});
    b.one(p + "attn_kv_a_norm.weight", Role::Vector, L, s + "attn.kv_norm.weight", {c.head_dim});
    b.one(p + "attn_sinks.weight", Role::Vector, L, s + "attn.attn_sink", {c.n_heads});
    b.one(p + "attn_output_a.weight", Role::AttnProj, L, s + "attn.wo_a.weight", {o_out, o_in});
    b.one(p + "attn_output_b.weight", Role::AttnProj, L, s + "attn.wo_b.weight", {H, o_out});
    if (const int64_t r = c.ratio(il); r != 0) {
      const int64_t cw = int64_t(c.compressor_c(il)) * c.head_dim;
      b.one(p + "attn_compressor_kv.weight", Role::Compressor, L, s + "attn.compressor.wkv.weight",
            {cw, H});
      b.one(p + "attn_compressor_gate.weight", Role::Compressor, L,
            s + "attn.compressor.wgate.weight", {cw, H});
      b.one(p + "attn_compressor_ape.weight", Role::Compressor, L, s + "attn.compressor.ape",
            {r, cw});
      b.one(p + "attn_compressor_norm.weight", Role::Vector, L,
            s + "attn.compressor.norm.weight", {c.head_dim});
      if (c.has_indexer(il)) {
        const int64_t iw = int64_t(c.compressor_c(il)) * c.index_dim;
        b.one(p + "indexer.attn_q_b.weight", Role::Indexer, L, s + "attn.indexer.wq_b.weight",
              {int64_t(c.index_heads) * c.index_dim, c.q_lora});
        b.one(p + "indexer.proj.weight", Role::Indexer, L,
              s + "attn.indexer.weights_proj.weight", {c.index_heads, H});
        b.one(p + "indexer_compressor_kv.weight", Role::Indexer, L,
              s + "attn.indexer.compressor.wkv.weight", {iw, H});
        b.one(p + "indexer_compressor_gate.weight", Role::Indexer, L,
              s + "attn.indexer.compressor.wgate.weight", {iw, H});
        b.one(p + "indexer_compressor_ape.weight", Role::Indexer, L,
              s + "attn.indexer.compressor.ape", {r, iw});
        b.one(p + "indexer_compressor_norm.weight", Role::Vector, L,
              s + "attn.indexer.compressor.norm.weight", {c.index_dim});
      }
    }
    b.one(p + "hc_ffn_fn.weight", Role::HcFn, L, s + "hc_ffn_fn", {hc_mix, hc * H});
    b.one(p + "hc_ffn_base.weight", Role::Vector, L, s + "hc_ffn_base", {hc_mix});
    b.one(p + "hc_ffn_scale.weight", Role::Vector, L, s + "hc_ffn_scale", {3});
    b.one(p + "ffn_norm.weight", Role::Vector, L, s + "ffn_norm.weight", {H});
    b.one(p + "ffn_gate_inp.weight", Role::Router, L, s + "ffn.gate.weight", {E, H});
    if (c.hash_routed(il))
      b.one(p + "ffn_gate_tid2eid.weight", Role::Tid2eid, L, s + "ffn.gate.tid2eid",
            {V, c.n_experts_used});
    else
      b.one(p + "exp_probs_b.bias", Role::Vector, L, s + "ffn.gate.bias", {E});
    b.experts(p + "ffn_gate_exps.weight", Role::ExpertGate, L, s + "ffn", "w1", E, F, H);
    b.experts(p + "ffn_up_exps.weight", Role::ExpertUp, L, s + "ffn", "w3", E, F, H);
    b.experts(p + "ffn_down_exps.weight", Role::ExpertDown, L, s + "ffn", "w2", E, H, F);
    b.one(p + "ffn_gate_shexp.weight", Role::SharedExpert, L, s + "ffn.shared_experts.w1.weight",
          {F, H});
    b.one(p + "ffn_up_shexp.weight", Role::SharedExpert, L, s + "ffn.shared_experts.w3.weight",
          {F, H});
    b.one(p + "ffn_down_shexp.weight", Role::SharedExpert, L, s + "ffn.shared_experts.w2.weight",
          {H, F});
  }
  b.one("output_norm.weight", Role::Vector, -1, "norm.weight", {H});
  b.one("output_hc_fn.weight", Role::HcFn, -1, "hc_head_fn", {hc, hc * H});
  b.one("output_hc_base.weight", Role::Vector, -1, "hc_head_base", {hc});
  b.one("output_hc_scale.weight", Role::Vector, -1, "hc_head_scale", {1});
  b.one("output.weight", Role::Output, -1, "head.weight", {V, H});
  return plan;
}

namespace {

void expect_shape(const StTensor& t, const std::vector<int64_t>& want, const std::string& gguf,
                  const char* what) {
  if (t.shape != want)
    fail("tensor {} (for {}): expected {} shape {}, found {}", t.name, gguf, what,
         shape_str(want), t.describe());
}

// Checks one source tensor (and its scale companion, marking both as used).
void check_source(const PlannedTensor& p, const std::string& src, const Checkpoint& ck,
                  std::set<std::string>& used) {
  const StTensor* t = ck.find(src);
  if (!t)
    fail("checkpoint is missing tensor {} (needed for {} {}, expected shape {})", src, p.name,
         shape_str(p.ne), shape_str(p.src_shape));
  used.insert(src);
  const auto& want = p.src_shape;
  const bool matrix = want.size() == 2;
  switch (t->dtype) {
    case StDtype::F32:
    case StDtype::BF16:
    case StDtype::F16:
      if (p.role == Role::Tid2eid)
        fail("tensor {} (for {}): expected an integer tensor (I64 or I32) {}, found {}", src,
             p.name, shape_str(want), t->describe());
      expect_shape(*t, want, p.name, "float");
      return;
    case StDtype::I64:
    case StDtype::I32:
      if (p.role != Role::Tid2eid)
        fail("tensor {} (for {}): expected a float tensor {}, found {}", src, p.name,
             shape_str(want), t->describe());
      expect_shape(*t, want, p.name, "integer");
      return;
    case StDtype::F8_E4M3: {
      if (!matrix || p.role == Role::Tid2eid || p.role == Role::Vector)
        fail("tensor {} (for {}): FP8 storage is only accepted for weight matrices, found {}",
             src, p.name, t->describe());
      expect_shape(*t, want, p.name, "FP8");
      const std::string sn = scale_name(src);
      const StTensor* s = ck.find(sn);
      if (!s)
        fail("checkpoint is missing tensor {}: the block scales of FP8 weight {}", sn, src);
      used.insert(sn);
      const std::vector<int64_t> sw = {ceil_div(want[0], 128), ceil_div(want[1], 128)};
      if ((s->dtype != StDtype::F8_E8M0 && s->dtype != StDtype::F32) || s->shape != sw)
        fail("tensor {}: expected the 128x128 block scales of {} as F8_E8M0 {}, found {}", sn,
             src, shape_str(sw), s->describe());
      return;
    }
    case StDtype::I8: {
      if (!is_routed_expert(p.role))
        fail("tensor {} (for {}): packed FP4 (I8) storage is only accepted for routed experts, "
             "found {}",
             src, p.name, t->describe());
      if (want[1] % 32)
        fail("tensor {} (for {}): FP4 experts need an input width divisible by 32, found {}",
             src, p.name, want[1]);
      expect_shape(*t, {want[0], want[1] / 2}, p.name, "packed FP4 (I8, two codes per byte)");
      const std::string sn = scale_name(src);
      const StTensor* s = ck.find(sn);
      if (!s)
        fail("checkpoint is missing tensor {}: the per-32 scales of FP4 expert {}", sn, src);
      used.insert(sn);
      const std::vector<int64_t> sw = {want[0], want[1] / 32};
      if (s->dtype != StDtype::F8_E8M0 || s->shape != sw)
        fail("tensor {}: expected the per-32 scales of {} as F8_E8M0 {}, found {}", sn, src,
             shape_str(sw), s->describe());
      return;
    }
    default:
      fail("tensor {} (for {}): dtype {} is not accepted here (expected F32, BF16, F16, FP8 "
           "or, for experts, FP4)",
           src, p.name, dtype_name(t->dtype));
  }
}

}  // namespace

void validate_checkpoint(const std::vector<PlannedTensor>& plan, const ModelConfig& cfg,
                         const Checkpoint& ck) {
  std::set<std::string> used;
  for (const PlannedTensor& p : plan)
    for (const std::string& src : p.sources) check_source(p, src, ck, used);
  for (const auto& [name, t] : ck.tensors()) {
    if (used.count(name)) continue;
    if (cfg.n_nextn > 0 && name.rfind("mtp.", 0) == 0) continue;
    fail("checkpoint tensor {} ({}) is not part of a DeepSeek V4 model with this config.json "
         "(unexpected tensor)",
         name, t->describe());
  }
}

}  // namespace ds4::convert
