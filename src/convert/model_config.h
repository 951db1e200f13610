// config.json of an official DeepSeek V4 checkpoint -> hyperparameters -> the DwarfStar GGUF
// metadata keys (architecture.md 1.1, formats.md 1.3). Every size comes from the file; nothing
// Flash-specific is assumed. Unknown keys are refused (they might change the model's math),
// except a documented list of informational ones.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf/gguf.h"

namespace ds4::convert {

struct ModelConfig {
  uint32_t n_layers = 0;         // num_hidden_layers
  uint32_t hidden = 0;           // hidden_size
  uint32_t vocab = 0;            // vocab_size
  uint32_t n_heads = 0;          // num_attention_heads
  uint32_t n_kv_heads = 0;       // num_key_value_heads (must be 1: K = V shared head)
  uint32_t head_dim = 0;         // head_dim
  uint32_t rope_dim = 0;         // qk_rope_head_dim
  uint32_t q_lora = 0;           // q_lora_rank
  uint32_t o_groups = 0;         // o_groups
  uint32_t o_lora = 0;           // o_lora_rank
  uint32_t sliding_window = 0;
  std::vector<uint32_t> compress_ratios;  // as in config.json (n_layers or n_layers+1)
  float rope_theta = 0;
  float compress_rope_theta = 0;
  float yarn_factor = 0;
  uint32_t yarn_orig_ctx = 0;
  float yarn_beta_fast = 0, yarn_beta_slow = 0;
  uint32_t max_positions = 0;
  float rms_eps = 0;
  uint32_t index_heads = 0, index_dim = 0, index_topk = 0;
  uint32_t hc_mult = 0, hc_sinkhorn_iters = 0;
  float hc_eps = 0;
  uint32_t n_experts = 0, n_experts_used = 0, n_shared = 0, expert_ffn = 0;
  bool norm_topk = false;
  float routed_scale = 0;
  uint32_t n_hash_layers = 0;
  float swiglu_limit = 0;
  uint32_t n_nextn = 0;
  uint32_t bos_id = 0, eos_id = 0;

  // Compression ratio of main layer il (0 = sliding window only).
  uint32_t ratio(uint32_t il) const { return compress_ratios.at(il); }
  // Compressor width multiplier: ratio-4 layers use overlapping windows (two rows of
  // head_dim per position), others one (architecture.md 3.4.5).
  uint32_t compressor_c(uint32_t il) const { return ratio(il) == 4 ? 2 : 1; }
  bool has_indexer(uint32_t il) const { return ratio(il) == 4; }
  bool hash_routed(uint32_t il) const { return il < n_hash_layers; }
};

// Parses and validates DIR/config.json; throws ds4::Error naming the key on any problem.
ModelConfig load_model_config(const std::string& config_path);
ModelConfig parse_model_config(const std::string& json_text, const std::string& what);

// The GGUF metadata of architecture.md 1.1 / formats.md 1.3 for this model.
std::vector<gguf::KeyValue> model_metadata(const ModelConfig& cfg, const std::string& name);

}  // namespace ds4::convert
