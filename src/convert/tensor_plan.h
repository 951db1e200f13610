// The name map: which GGUF tensors a DeepSeek V4 model has, where each comes from in the
// official checkpoint, and its shape (architecture.md 2.2-2.3, formats.md 1.4). Built from the
// hyperparameters alone, then checked against the checkpoint: every expected tensor present
// with an accepted dtype and the shape the config implies, and nothing unexpected left over.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "convert/model_config.h"
#include "convert/safetensors.h"

namespace ds4::convert {

// What a tensor is, as far as the recipes care (formats.md 3.8).
enum class Role {
  Embedding,     // token_embd
  Output,        // output (the head)
  Vector,        // norms, hc scale/base, sinks, exp_probs_b: always F32
  HcFn,          // hc_*_fn matrices
  AttnProj,      // attn_q_a, attn_q_b, attn_kv, attn_output_a, attn_output_b
  Compressor,    // attn_compressor_{kv,gate,ape}
  Indexer,       // indexer.attn_q_b, indexer.proj, indexer_compressor_{kv,gate,ape}
  Router,        // ffn_gate_inp
  Tid2eid,       // ffn_gate_tid2eid (integer)
  SharedExpert,  // ffn_{gate,up,down}_shexp
  ExpertGate,    // ffn_gate_exps (w1)
  ExpertUp,      // ffn_up_exps (w3)
  ExpertDown,    // ffn_down_exps (w2)
};

bool is_routed_expert(Role r);

struct PlannedTensor {
  std::string name;                  // GGUF name
  Role role = Role::Vector;
  int layer = -1;                    // -1 for global tensors
  std::vector<int64_t> ne;           // GGUF order; experts [in, out, n_expert]
  // Official source tensor(s): one name, or one per expert (expert e at index e).
  std::vector<std::string> sources;
  std::vector<int64_t> src_shape;    // logical torch shape of one source ([out, in] for weights)
};

// The full tensor list for `cfg`, in output order.
std::vector<PlannedTensor> build_plan(const ModelConfig& cfg);

// Checks the checkpoint against the plan (dtypes, shapes, FP8/FP4 scale companions, leftovers).
// Tensors of the MTP block ("mtp.*") are skipped when the config declares MTP layers: the main
// GGUF does not carry them (architecture.md 3.8).
void validate_checkpoint(const std::vector<PlannedTensor>& plan, const ModelConfig& cfg,
                         const Checkpoint& ckpt);

// Name of the scale companion of an FP8/FP4 weight: "X.weight" -> "X.scale".
std::string scale_name(const std::string& weight_name);

}  // namespace ds4::convert
