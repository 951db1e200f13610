#include "model/hparams.h"

#include <fmt/format.h>

#include "core/error.h"
#include "gguf/gguf.h"

namespace ds4::model {
namespace {

constexpr const char* kArch = "deepseek4";

std::string key(const char* suffix) { return fmt::format("{}.{}", kArch, suffix); }

int64_t get_count(const gguf::File& f, const char* suffix, int64_t min_value = 1) {
  const std::string k = key(suffix);
  const uint64_t v = f.get_u64(k);
  if (v < static_cast<uint64_t>(min_value) || v > (1ull << 32))
    fail("metadata key {}: value {} is out of range", k, v);
  return static_cast<int64_t>(v);
}

float get_float(const gguf::File& f, const char* suffix) {
  return static_cast<float>(f.get_f64(key(suffix)));
}

// Reads a per-layer float array; accepts float or integer elements.
std::vector<float> get_layer_floats(const gguf::File& f, const std::string& k, int64_t n_layers) {
  const gguf::Value& v = f.get(k);
  std::vector<float> out;
  if (v.type() == gguf::ValueType::ARRAY) {
    for (const gguf::Value& e : v.as_array(k)) out.push_back(static_cast<float>(e.as_f64(k)));
  } else {
    out.assign(static_cast<size_t>(n_layers), static_cast<float>(v.as_f64(k)));
  }
  if (static_cast<int64_t>(out.size()) < n_layers)
    fail("metadata key {}: has {} entries, the model has {} layers", k, out.size(), n_layers);
  out.resize(static_cast<size_t>(n_layers));
  return out;
}

}  // namespace

HParams HParams::from_gguf(const gguf::File& f) {
  const gguf::Value* arch = f.find("general.architecture");
  if (!arch || arch->type() != gguf::ValueType::STRING || arch->as_string() != kArch)
    fail("{}: not a DeepSeek V4 GGUF (general.architecture is {}, expected \"{}\")", f.path(),
         arch && arch->type() == gguf::ValueType::STRING ? "\"" + arch->as_string() + "\""
                                                         : std::string("missing"),
         kArch);
  HParams h;
  if (const gguf::Value* n = f.find("general.name"); n && n->type() == gguf::ValueType::STRING)
    h.name = n->as_string();
  h.n_layers = get_count(f, "block_count");
  h.n_embd = get_count(f, "embedding_length");
  h.n_vocab = get_count(f, "vocab_size");
  h.n_head = get_count(f, "attention.head_count");
  const int64_t n_head_kv = get_count(f, "attention.head_count_kv");
  h.head_dim = get_count(f, "attention.key_length");
  const int64_t value_length = get_count(f, "attention.value_length");
  h.n_rope = get_count(f, "rope.dimension_count");
  h.q_lora = get_count(f, "attention.q_lora_rank");
  h.o_groups = get_count(f, "attention.output_group_count");
  h.o_lora = get_count(f, "attention.output_lora_rank");
  h.window = get_count(f, "attention.sliding_window");
  h.rope_base = get_float(f, "rope.freq_base");
  h.compress_rope_base = get_float(f, "attention.compress_rope_freq_base");
  h.yarn_factor = get_float(f, "rope.scaling.factor");
  h.yarn_orig_ctx = static_cast<float>(f.get_f64(key("rope.scaling.original_context_length")));
  h.yarn_beta_fast = f.has(key("rope.scaling.yarn_beta_fast")) ? get_float(f, "rope.scaling.yarn_beta_fast") : 32.0f;
  h.yarn_beta_slow = f.has(key("rope.scaling.yarn_beta_slow")) ? get_float(f, "rope.scaling.yarn_beta_slow") : 1.0f;
  h.rms_eps = get_float(f, "attention.layer_norm_rms_epsilon");
  h.idx_head = get_count(f, "attention.indexer.head_count");
  h.idx_dim = get_count(f, "attention.indexer.key_length");
  h.idx_topk = get_count(f, "attention.indexer.top_k");
  h.n_hc = get_count(f, "hyper_connection.count");
  h.hc_sinkhorn_iters = get_count(f, "hyper_connection.sinkhorn_iterations");
  h.hc_eps = get_float(f, "hyper_connection.epsilon");
  h.n_expert = get_count(f, "expert_count");
  h.n_expert_used = get_count(f, "expert_used_count");
  h.n_expert_shared = get_count(f, "expert_shared_count", 0);
  h.n_ff_exp = get_count(f, "expert_feed_forward_length");
  h.n_hash_layers = get_count(f, "hash_layer_count", 0);
  h.expert_weights_scale = get_float(f, "expert_weights_scale");
  h.expert_weights_norm = f.has(key("expert_weights_norm")) ? f.get_bool(key("expert_weights_norm")) : true;
  if (f.has(key("context_length"))) h.context_length = f.get_u64(key("context_length"));

  // compress_ratios has n_layers entries, or n_layers + 1 with the MTP block's last (9 #12).
  {
    const std::string k = key("attention.compress_ratios");
    const gguf::Value& v = f.get(k);
    for (const gguf::Value& e : v.as_array(k)) {
      const int64_t r = e.as_i64(k);
      if (r < 0 || r > (1 << 20)) fail("metadata key {}: ratio {} is out of range", k, r);
      h.compress_ratio.push_back(static_cast<uint32_t>(r));
    }
    if (static_cast<int64_t>(h.compress_ratio.size()) < h.n_layers)
      fail("metadata key {}: has {} entries, the model has {} layers", k, h.compress_ratio.size(),
           h.n_layers);
    h.compress_ratio.resize(static_cast<size_t>(h.n_layers));
  }
  h.swiglu_limit = get_layer_floats(f, key("swiglu_clamp_exp"), h.n_layers);
  h.swiglu_limit_shared = f.has(key("swiglu_clamp_shexp"))
                              ? get_layer_floats(f, key("swiglu_clamp_shexp"), h.n_layers)
                              : h.swiglu_limit;

  // Consistency checks that the forward pass relies on.
  if (n_head_kv != 1) fail("metadata key {}: {} KV heads; DeepSeek V4 has one shared K=V head", key("attention.head_count_kv"), n_head_kv);
  if (value_length != h.head_dim)
    fail("metadata: value_length {} differs from key_length {} (DeepSeek V4 has K = V)", value_length, h.head_dim);
  if (h.n_rope % 2 != 0 || h.n_rope > h.head_dim || h.n_rope > h.idx_dim)
    fail("metadata key {}: {} RoPE dims do not fit heads of {} and indexer heads of {}",
         key("rope.dimension_count"), h.n_rope, h.head_dim, h.idx_dim);
  if (h.n_head % h.o_groups != 0)
    fail("metadata: {} heads do not split into {} output groups", h.n_head, h.o_groups);
  if (h.n_expert_used > h.n_expert)
    fail("metadata: {} experts used per token but only {} experts", h.n_expert_used, h.n_expert);
  if (h.n_expert_shared > 1)
    fail("metadata key {}: {} shared experts; one is supported", key("expert_shared_count"), h.n_expert_shared);
  for (const char* g : {"expert_group_count", "expert_group_used_count"})
    if (f.has(key(g)) && f.get_u64(key(g)) != 0)
      fail("metadata key {}: expert groups are not part of DeepSeek V4 (must be 0)", key(g));
  if (h.n_hc > 16) fail("metadata key {}: {} hyper-connection streams; at most 16 are supported", key("hyper_connection.count"), h.n_hc);
  if (h.n_hash_layers > h.n_layers) fail("metadata: {} hash layers > {} layers", h.n_hash_layers, h.n_layers);
  return h;
}

std::string HParams::fingerprint() const {
  std::string ratios;
  for (uint32_t r : compress_ratio) ratios += fmt::format("{},", r);
  return fmt::format(
      "deepseek4 L{} E{} V{} H{}x{} R{} q{} g{}x{} w{} hc{} x{}/{}/{} ff{} idx{}x{}k{} ratios[{}]",
      n_layers, n_embd, n_vocab, n_head, head_dim, n_rope, q_lora, o_groups, o_lora, window, n_hc,
      n_expert, n_expert_used, n_expert_shared, n_ff_exp, idx_head, idx_dim, idx_topk, ratios);
}

}  // namespace ds4::model
