// Hyperparameters of a DeepSeek V4 model, read from the GGUF metadata (architecture.md 1.1,
// formats.md 1.3). Every size, count, ratio and the per-layer schedule come from the file, so
// the same code runs Flash, Pro and the tiny test fixtures.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds4::gguf {
class File;
}

namespace ds4::model {

struct HParams {
  int64_t n_layers = 0;
  int64_t n_embd = 0;         // hidden size E
  int64_t n_vocab = 0;
  int64_t n_head = 0;         // attention heads (one shared K=V head)
  int64_t head_dim = 0;       // K and V head dimension
  int64_t n_rope = 0;         // RoPE dims at the tail of every head (architecture.md 3.4.3)
  int64_t q_lora = 0;
  int64_t o_groups = 0;       // grouped output projection (3.4.9)
  int64_t o_lora = 0;
  int64_t window = 0;         // raw sliding window, includes the current token
  std::vector<uint32_t> compress_ratio;  // per layer: 0 (window only) or the ratio
  float rope_base = 0;                   // ratio-0 layers, no YaRN
  float compress_rope_base = 0;          // compressed layers, with YaRN
  float yarn_factor = 1;
  float yarn_orig_ctx = 0;
  float yarn_beta_fast = 32;
  float yarn_beta_slow = 1;
  float rms_eps = 1e-6f;
  // Lightning indexer (3.4.7).
  int64_t idx_head = 0;
  int64_t idx_dim = 0;
  int64_t idx_topk = 0;
  // Hyper-connections (3.2).
  int64_t n_hc = 0;
  int64_t hc_sinkhorn_iters = 0;
  float hc_eps = 1e-6f;
  // MoE (3.5).
  int64_t n_expert = 0;
  int64_t n_expert_used = 0;
  int64_t n_expert_shared = 0;
  int64_t n_ff_exp = 0;
  int64_t n_hash_layers = 0;
  float expert_weights_scale = 1;
  bool expert_weights_norm = true;
  std::vector<float> swiglu_limit;  // per layer, routed experts
  std::vector<float> swiglu_limit_shared;  // per layer, shared expert (defaults to the routed value)
  uint64_t context_length = 0;      // informational
  std::string name;

  int64_t n_nope() const { return head_dim - n_rope; }
  bool is_hash_layer(int64_t il) const { return il < n_hash_layers; }

  // Reads and validates every key; throws ds4::Error naming the key on any problem,
  // including a file whose general.architecture is not "deepseek4".
  static HParams from_gguf(const gguf::File& f);

  // A short stable description used to tie a session snapshot to its model.
  std::string fingerprint() const;
};

}  // namespace ds4::model
