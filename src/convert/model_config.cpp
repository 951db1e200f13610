#include "convert/model_config.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"

namespace ds4::convert {

using json = nlohmann::json;

namespace {

// Keys that carry no information the GGUF needs (training, packaging, or storage details the
// converter reads from the tensors' own dtypes). Anything not here and not mapped below is
// refused, because an unknown switch may change the model's math.
const std::set<std::string> kInformational = {
    "architectures",     "model_type",        "torch_dtype",       "dtype",
    "transformers_version", "quantization_config", "use_cache",      "attention_bias",
    "attention_dropout", "initializer_range", "pad_token_id",      "auto_map",
    "expert_dtype",      "_name_or_path",     "ep_size",           "aux_loss_alpha",
    "seq_aux",           "tie_word_embeddings", "hidden_act",      "n_group",
    "topk_group",        "first_k_dense_replace", "moe_layer_freq", "scoring_func",
    "topk_method",       "rope_scaling",      "num_nextn_predict_layers",
    "bos_token_id",      "eos_token_id",      "max_position_embeddings",
};

class Reader {
 public:
  Reader(const json& j, std::string what) : j_(j), what_(std::move(what)) {}

  const json& need(const char* key) {
    used_.insert(key);
    if (!j_.contains(key)) fail("{}: missing key \"{}\"", what_, key);
    return j_[key];
  }
  uint32_t u32(const char* key, uint32_t min_value = 1) {
    const json& v = need(key);
    if (!v.is_number_integer() || v.get<int64_t>() < static_cast<int64_t>(min_value) ||
        v.get<int64_t>() > std::numeric_limits<uint32_t>::max())
      fail("{}: \"{}\" must be an integer >= {} that fits in 32 bits, found {}", what_, key,
           min_value, v.dump());
    return static_cast<uint32_t>(v.get<int64_t>());
  }
  float f32(const char* key) {
    const json& v = need(key);
    if (!v.is_number()) fail("{}: \"{}\" must be a number, found {}", what_, key, v.dump());
    return static_cast<float>(v.get<double>());
  }
  bool boolean(const char* key) {
    const json& v = need(key);
    if (!v.is_boolean()) fail("{}: \"{}\" must be true or false, found {}", what_, key, v.dump());
    return v.get<bool>();
  }
  std::string str(const char* key) {
    const json& v = need(key);
    if (!v.is_string()) fail("{}: \"{}\" must be a string, found {}", what_, key, v.dump());
    return v.get<std::string>();
  }
  const json* opt(const char* key) {
    used_.insert(key);
    return j_.contains(key) && !j_[key].is_null() ? &j_[key] : nullptr;
  }
  void check_unknown() const {
    for (auto it = j_.begin(); it != j_.end(); ++it)
      if (!used_.count(it.key()) && !kInformational.count(it.key()))
        fail("{}: unknown key \"{}\"; the converter does not know how it affects the model, "
             "so it refuses to guess",
             what_, it.key());
  }
  const std::string& what() const { return what_; }

 private:
  const json& j_;
  std::string what_;
  std::set<std::string> used_;
};

void require_eq_opt(Reader& r, const char* key, int64_t expected, const char* why) {
  const json* v = r.opt(key);
  if (v && (!v->is_number_integer() || v->get<int64_t>() != expected))
    fail("{}: \"{}\" is {}, but {}", r.what(), key, v->dump(), why);
}

}  // namespace

ModelConfig parse_model_config(const std::string& text, const std::string& what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{} is not valid JSON ({})", what, e.what());
  }
  if (!j.is_object()) fail("{} is not a JSON object", what);
  Reader r(j, what);
  ModelConfig c;

  if (const json* mt = r.opt("model_type"); mt && *mt != "deepseek_v4")
    fail("{}: model_type is {}, expected \"deepseek_v4\"", what, mt->dump());
  c.n_layers = r.u32("num_hidden_layers");
  c.hidden = r.u32("hidden_size");
  c.vocab = r.u32("vocab_size");
  c.n_heads = r.u32("num_attention_heads");
  c.n_kv_heads = r.u32("num_key_value_heads");
  c.head_dim = r.u32("head_dim");
  c.rope_dim = r.u32("qk_rope_head_dim");
  c.q_lora = r.u32("q_lora_rank");
  c.o_groups = r.u32("o_groups");
  c.o_lora = r.u32("o_lora_rank");
  c.sliding_window = r.u32("sliding_window");
  c.rope_theta = r.f32("rope_theta");
  c.compress_rope_theta = r.f32("compress_rope_theta");
  c.rms_eps = r.f32("rms_norm_eps");
  c.index_heads = r.u32("index_n_heads");
  c.index_dim = r.u32("index_head_dim");
  c.index_topk = r.u32("index_topk");
  c.hc_mult = r.u32("hc_mult");
  c.hc_sinkhorn_iters = r.u32("hc_sinkhorn_iters");
  c.hc_eps = r.f32("hc_eps");
  c.n_experts = r.u32("n_routed_experts");
  c.n_experts_used = r.u32("num_experts_per_tok");
  c.n_shared = r.u32("n_shared_experts");
  c.expert_ffn = r.u32("moe_intermediate_size");
  c.norm_topk = r.boolean("norm_topk_prob");
  c.routed_scale = r.f32("routed_scaling_factor");
  c.n_hash_layers = r.u32("num_hash_layers", 0);
  c.swiglu_limit = r.f32("swiglu_limit");
  c.n_nextn = r.opt("num_nextn_predict_layers") ? r.u32("num_nextn_predict_layers", 0) : 0;
  c.max_positions = r.u32("max_position_embeddings");
  c.bos_id = r.u32("bos_token_id", 0);
  c.eos_id = r.u32("eos_token_id", 0);

  if (r.str("scoring_func") != "sqrtsoftplus")
    fail("{}: scoring_func must be \"sqrtsoftplus\" (architecture.md 3.5.1)", what);
  if (const json* tm = r.opt("topk_method"); tm && *tm != "noaux_tc")
    fail("{}: topk_method is {}, only \"noaux_tc\" is supported", what, tm->dump());
  if (const json* te = r.opt("tie_word_embeddings"); te && *te != false)
    fail("{}: tie_word_embeddings must be false (DeepSeek V4 has a separate head)", what);
  if (const json* ha = r.opt("hidden_act"); ha && *ha != "silu")
    fail("{}: hidden_act is {}, expected \"silu\"", what, ha->dump());
  for (const char* k : {"n_group", "topk_group"})
    if (const json* g = r.opt(k); g && (!g->is_number_integer() || g->get<int64_t>() > 1))
      fail("{}: \"{}\" is {}; grouped routing does not exist in DeepSeek V4", what, k, g->dump());
  require_eq_opt(r, "first_k_dense_replace", 0, "every DeepSeek V4 layer is MoE");
  // Redundant head sizes some configs spell out: accepted when they agree with head_dim.
  require_eq_opt(r, "qk_nope_head_dim", int64_t(c.head_dim) - c.rope_dim,
                 "it must be head_dim - qk_rope_head_dim");
  require_eq_opt(r, "v_head_dim", c.head_dim, "V shares K's head_dim in DeepSeek V4");
  if (const json* kv = r.opt("kv_lora_rank"))
    fail("{}: kv_lora_rank is {}, but DeepSeek V4 projects KV directly (no KV LoRA)", what,
         kv->dump());
  require_eq_opt(r, "moe_layer_freq", 1, "every DeepSeek V4 layer is MoE");

  const json& cr = r.need("compress_ratios");
  if (!cr.is_array()) fail("{}: compress_ratios must be an array", what);
  for (const json& v : cr) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() == 1 ||
        v.get<int64_t>() > 1 << 20)
      fail("{}: compress_ratios entry {} is not 0 or an integer ratio >= 2", what, v.dump());
    c.compress_ratios.push_back(static_cast<uint32_t>(v.get<int64_t>()));
  }
  // One entry per main layer, optionally followed by the MTP layers' entries.
  if (c.compress_ratios.size() < c.n_layers ||
      c.compress_ratios.size() > c.n_layers + std::max<uint32_t>(1, c.n_nextn))
    fail("{}: compress_ratios has {} entries, expected {} (num_hidden_layers) or {} (with the "
         "MTP layer)",
         what, c.compress_ratios.size(), c.n_layers, c.n_layers + std::max<uint32_t>(1, c.n_nextn));

  const json& rs = r.need("rope_scaling");
  if (!rs.is_object()) fail("{}: rope_scaling must be an object", what);
  {
    Reader rr(rs, what + " rope_scaling");
    std::string type;
    if (rs.contains("type")) type = rr.str("type");
    if (rs.contains("rope_type")) type = rr.str("rope_type");
    if (type != "yarn") fail("{}: rope_scaling type is \"{}\", expected \"yarn\"", what, type);
    c.yarn_factor = rr.f32("factor");
    c.yarn_orig_ctx = rr.u32("original_max_position_embeddings");
    c.yarn_beta_fast = rr.f32("beta_fast");
    c.yarn_beta_slow = rr.f32("beta_slow");
    for (const char* k : {"mscale", "mscale_all_dim"}) (void)rr.opt(k);
    rr.check_unknown();
  }
  r.check_unknown();

  // Structural consistency: these are the relations the tensor shapes rely on.
  if (c.n_kv_heads != 1)
    fail("{}: num_key_value_heads is {}, DeepSeek V4 has one shared K=V head", what, c.n_kv_heads);
  if (c.rope_dim > c.head_dim || c.rope_dim % 2)
    fail("{}: qk_rope_head_dim {} must be even and at most head_dim {}", what, c.rope_dim,
         c.head_dim);
  if ((uint64_t(c.n_heads) * c.head_dim) % c.o_groups)
    fail("{}: num_attention_heads * head_dim ({}) is not divisible by o_groups {}", what,
         uint64_t(c.n_heads) * c.head_dim, c.o_groups);
  if (c.n_experts_used > c.n_experts)
    fail("{}: num_experts_per_tok {} exceeds n_routed_experts {}", what, c.n_experts_used,
         c.n_experts);
  if (c.n_shared != 1)
    fail("{}: n_shared_experts is {}; the DwarfStar format has exactly one shared expert", what,
         c.n_shared);
  if (c.n_hash_layers > c.n_layers)
    fail("{}: num_hash_layers {} exceeds num_hidden_layers {}", what, c.n_hash_layers, c.n_layers);
  if (c.bos_id >= c.vocab || c.eos_id >= c.vocab)
    fail("{}: bos_token_id {} / eos_token_id {} must be below vocab_size {}", what, c.bos_id,
         c.eos_id, c.vocab);
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}: {} (every checkpoint needs its config.json)", path,
                std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_model_config(ss.str(), path);
}

std::vector<gguf::KeyValue> model_metadata(const ModelConfig& c, const std::string& name) {
  using gguf::Value;
  std::vector<gguf::KeyValue> kv;
  auto add = [&](std::string k, Value v) { kv.push_back({std::move(k), std::move(v)}); };
  const std::string a = "deepseek4.";
  add("general.architecture", Value::string("deepseek4"));
  add("general.name", Value::string(name));
  add("general.alignment", Value::u32(32));
  add(a + "block_count", Value::u32(c.n_layers));
  add(a + "context_length", Value::u32(c.max_positions));
  add(a + "embedding_length", Value::u32(c.hidden));
  add(a + "vocab_size", Value::u32(c.vocab));
  add(a + "attention.head_count", Value::u32(c.n_heads));
  add(a + "attention.head_count_kv", Value::u32(c.n_kv_heads));
  add(a + "attention.key_length", Value::u32(c.head_dim));
  add(a + "attention.value_length", Value::u32(c.head_dim));
  add(a + "rope.dimension_count", Value::u32(c.rope_dim));
  add(a + "attention.q_lora_rank", Value::u32(c.q_lora));
  add(a + "attention.output_group_count", Value::u32(c.o_groups));
  add(a + "attention.output_lora_rank", Value::u32(c.o_lora));
  add(a + "attention.sliding_window", Value::u32(c.sliding_window));
  add(a + "attention.compress_ratios", Value::u32_array(c.compress_ratios));
  add(a + "rope.freq_base", Value::f32(c.rope_theta));
  add(a + "attention.compress_rope_freq_base", Value::f32(c.compress_rope_theta));
  add(a + "rope.scaling.type", Value::string("yarn"));
  add(a + "rope.scaling.factor", Value::f32(c.yarn_factor));
  add(a + "rope.scaling.original_context_length", Value::u32(c.yarn_orig_ctx));
  add(a + "rope.scaling.yarn_beta_fast", Value::f32(c.yarn_beta_fast));
  add(a + "rope.scaling.yarn_beta_slow", Value::f32(c.yarn_beta_slow));
  add(a + "attention.layer_norm_rms_epsilon", Value::f32(c.rms_eps));
  add(a + "attention.indexer.head_count", Value::u32(c.index_heads));
  add(a + "attention.indexer.key_length", Value::u32(c.index_dim));
  add(a + "attention.indexer.top_k", Value::u32(c.index_topk));
  add(a + "hyper_connection.count", Value::u32(c.hc_mult));
  add(a + "hyper_connection.sinkhorn_iterations", Value::u32(c.hc_sinkhorn_iters));
  add(a + "hyper_connection.epsilon", Value::f32(c.hc_eps));
  add(a + "expert_count", Value::u32(c.n_experts));
  add(a + "expert_used_count", Value::u32(c.n_experts_used));
  add(a + "expert_shared_count", Value::u32(c.n_shared));
  add(a + "expert_feed_forward_length", Value::u32(c.expert_ffn));
  add(a + "expert_weights_norm", Value::boolean(c.norm_topk));
  add(a + "expert_weights_scale", Value::f32(c.routed_scale));
  add(a + "expert_gating_func", Value::u32(4));  // 4 = sqrt-softplus (llama.cpp numbering)
  add(a + "hash_layer_count", Value::u32(c.n_hash_layers));
  add(a + "swiglu_clamp_exp", Value::f32_array(std::vector<float>(c.n_layers, c.swiglu_limit)));
  add(a + "nextn_predict_layers", Value::u32(c.n_nextn));
  add("tokenizer.ggml.bos_token_id", Value::u32(c.bos_id));
  add("tokenizer.ggml.eos_token_id", Value::u32(c.eos_id));
  return kv;
}

}  // namespace ds4::convert
