// Typed views of the model's tensors inside the mmapped GGUF file. Every tensor is bound by
// name with its type and shape checked once at load (formats.md 1.4, architecture.md 2.2-2.3);
// the big matrices are then used in place by the CPU kernels, never copied. Only small
// vectors (norm weights, sinks, HC base/scale, position biases, router bias) are converted to
// float32 at load, because they are read element-wise on every token.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/ggml_type.h"
#include "model/hparams.h"

namespace ds4 {
class ThreadPool;
}
namespace ds4::gguf {
class File;
}

namespace ds4::model {

// A matrix (or stack of matrices) in GGUF layout: rows of ne[0] elements, in place.
struct Tensor {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> ne;
  const uint8_t* data = nullptr;
  size_t row_bytes = 0;

  bool present() const { return data != nullptr; }
  int64_t cols() const { return ne.empty() ? 0 : ne[0]; }
  int64_t rows() const {  // rows of one matrix (ne[1])
    return ne.size() > 1 ? ne[1] : 1;
  }
  // Start of matrix e of a 3-D expert stack (formats.md 2.9).
  const uint8_t* slab(int64_t e) const {
    return data + static_cast<size_t>(e) * static_cast<size_t>(rows()) * row_bytes;
  }
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes; }
};

// Y[b, :] = W · X[b, :] for nb rows: matvec for one row, batched matmul otherwise.
void linear(const Tensor& W, const float* X, int64_t nb, float* Y, ThreadPool* pool);
// Same for rows [row0, row0 + nrows) of matrix `slab` of W (expert slabs, output groups).
void linear_rows(const Tensor& W, int64_t slab, int64_t row0, int64_t nrows, const float* X,
                 int64_t nb, float* Y, ThreadPool* pool);

struct HcWeights {
  Tensor fn;                // [n_hc * E, n_mix]
  std::vector<float> base;  // [n_mix]
  std::vector<float> scale; // [3] (layers) or [1] (head)
};

struct CompressorWeights {
  Tensor kv;                 // [E, c * d]
  Tensor gate;               // [E, c * d]
  std::vector<float> ape;    // [ratio][c * d], position bias added to the gate scores
  std::vector<float> norm;   // [d]
  int64_t d = 0;             // output row width (head_dim or idx_dim)
  int64_t c = 1;             // 2 = overlapped windows (architecture.md 3.4.5)
};

struct LayerWeights {
  int64_t il = 0;
  uint32_t ratio = 0;        // 0 = sliding window only
  bool has_indexer = false;  // overlapped (CSA) layers

  HcWeights hc_attn, hc_ffn;
  std::vector<float> attn_norm;
  Tensor q_a;                        // [E, q_lora]
  std::vector<float> q_a_norm;       // [q_lora]
  Tensor q_b;                        // [q_lora, n_head * head_dim]
  Tensor kv;                         // [E, head_dim]
  std::vector<float> kv_norm;        // [head_dim]
  std::vector<float> sinks;          // [n_head]
  Tensor out_a;                      // [n_head * head_dim / o_groups, o_groups * o_lora]
  Tensor out_b;                      // [o_groups * o_lora, E]

  CompressorWeights comp;            // ratio > 0
  CompressorWeights idx_comp;        // has_indexer
  Tensor idx_q_b;                    // [q_lora, idx_head * idx_dim]
  Tensor idx_proj;                   // [E, idx_head]

  std::vector<float> ffn_norm;
  Tensor router;                     // [E, n_expert]
  std::vector<float> router_bias;    // [n_expert] (non-hash layers; zeros if absent)
  Tensor tid2eid;                    // I32 [n_expert_used, n_vocab] (hash layers)
  Tensor gate_exps, up_exps;         // [E, n_ff, n_expert]
  Tensor down_exps;                  // [n_ff, E, n_expert]
  Tensor gate_shexp, up_shexp;       // [E, n_ff]
  Tensor down_shexp;                 // [n_ff, E]
};

struct ModelWeights {
  Tensor tok_embd;                   // [E, n_vocab]
  HcWeights hc_head;                 // fn [n_hc * E, n_hc], base [n_hc], scale [1]
  std::vector<float> output_norm;    // [E]
  Tensor output;                     // [E, n_vocab]
  std::vector<LayerWeights> layers;

  // Binds every tensor of the DwarfStar GGUF dialect (formats.md 1.4), checking type and
  // shape; throws ds4::Error naming the tensor on any mismatch.
  static ModelWeights bind(const gguf::File& f, const HParams& hp);
};

}  // namespace ds4::model
