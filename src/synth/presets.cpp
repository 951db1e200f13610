#include "synth/presets.h"

#include "core/error.h"

namespace ds4::synth {
namespace {

// Values shared by every V4 release (architecture.md 1.1).
convert::ModelConfig v4_common() {
  convert::ModelConfig c;
  c.vocab = 129280;
  c.n_kv_heads = 1;
  c.head_dim = 512;
  c.rope_dim = 64;
  c.o_lora = 1024;
  c.sliding_window = 128;
  c.rope_theta = 10000.0f;
  c.compress_rope_theta = 160000.0f;
  c.yarn_factor = 16.0f;
  c.yarn_orig_ctx = 65536;
  c.yarn_beta_fast = 32.0f;
  c.yarn_beta_slow = 1.0f;
  c.max_positions = 1048576;
  c.rms_eps = 1e-6f;
  c.index_heads = 64;
  c.index_dim = 128;
  c.hc_mult = 4;
  c.hc_sinkhorn_iters = 20;
  c.hc_eps = 1e-6f;
  c.n_experts_used = 6;
  c.n_shared = 1;
  c.norm_topk = true;
  c.n_hash_layers = 3;
  c.swiglu_limit = 10.0f;
  c.n_nextn = 0;
  c.bos_id = 0;
  c.eos_id = 1;
  return c;
}

convert::ModelConfig flash() {
  convert::ModelConfig c = v4_common();
  c.n_layers = 43;
  c.hidden = 4096;
  c.n_heads = 64;
  c.q_lora = 1024;
  c.o_groups = 8;
  c.index_topk = 512;
  c.n_experts = 256;
  c.expert_ffn = 2048;
  c.routed_scale = 1.5f;
  // il < 2: sliding window only; even il: CSA ratio 4; odd il: HCA ratio 128 (architecture.md 1.2)
  for (uint32_t il = 0; il < c.n_layers; ++il)
    c.compress_ratios.push_back(il < 2 ? 0 : (il % 2 == 0 ? 4 : 128));
  return c;
}

convert::ModelConfig pro() {
  convert::ModelConfig c = v4_common();
  c.n_layers = 61;
  c.hidden = 7168;
  c.n_heads = 128;
  c.q_lora = 1536;
  c.o_groups = 16;
  c.index_topk = 1024;
  c.n_experts = 384;
  c.expert_ffn = 3072;
  c.routed_scale = 2.5f;
  // il 0, 1 and odd il: HCA 128; even il >= 2: CSA 4; no sliding-only layer (architecture.md 1.2)
  for (uint32_t il = 0; il < c.n_layers; ++il)
    c.compress_ratios.push_back(il < 2 ? 128 : (il % 2 == 0 ? 4 : 128));
  return c;
}

convert::ModelConfig flash_mini() {
  convert::ModelConfig c = flash();
  c.n_layers = 4;
  c.compress_ratios = {0, 0, 4, 128};
  c.n_experts = 16;
  return c;
}

convert::ModelConfig demo() {
  convert::ModelConfig c = v4_common();
  c.n_layers = 6;
  c.hidden = 256;
  c.n_heads = 8;
  c.head_dim = 128;
  c.rope_dim = 32;
  c.q_lora = 128;
  c.o_groups = 2;
  c.o_lora = 128;
  c.index_heads = 8;
  c.index_dim = 64;
  c.index_topk = 64;
  c.n_experts = 16;
  c.n_experts_used = 4;
  c.expert_ffn = 256;
  c.routed_scale = 1.5f;
  c.compress_ratios = {0, 0, 4, 128, 4, 128};
  return c;
}

}  // namespace

std::vector<std::string> preset_names() { return {"flash", "pro", "flash-mini", "demo"}; }

convert::ModelConfig preset(std::string_view name) {
  if (name == "flash") return flash();
  if (name == "pro") return pro();
  if (name == "flash-mini") return flash_mini();
  if (name == "demo") return demo();
  fail("unknown synthetic model \"{}\"; expected one of flash, pro, flash-mini, demo", name);
}

}  // namespace ds4::synth
