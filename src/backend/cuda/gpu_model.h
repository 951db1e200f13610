// The DeepSeek V4 weights resident in GPU memory, laid out for the matvec kernels (every
// matrix keeps its GGUF block layout, so the batch-1 kernels of matvec.h read it in place).
// Built once from a loaded model::Model (copied from the mmapped file, progress on stderr),
// or filled with random blocks directly on the device for benchmarks (no file at all).
// Plain C++: no CUDA types.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/buffer.h"
#include "backend/cuda/device.h"
#include "core/ggml_type.h"
#include "model/hparams.h"

namespace ds4::model {
class Model;
}

namespace ds4::cuda {

// A matrix or a stack of `slabs` matrices of rows x cols in device memory.
struct DTensor {
  GgmlType type = GgmlType::F32;
  int64_t rows = 0, cols = 0, slabs = 1;
  size_t row_bytes = 0;
  const void* d = nullptr;

  bool present() const { return d != nullptr; }
  size_t bytes() const { return row_bytes * static_cast<size_t>(rows * slabs); }
  const void* slab(int64_t e) const {
    return static_cast<const uint8_t*>(d) + static_cast<size_t>(e) * static_cast<size_t>(rows) * row_bytes;
  }
  const void* row(int64_t r) const { return static_cast<const uint8_t*>(d) + static_cast<size_t>(r) * row_bytes; }
};

struct DHc {
  DTensor fn;
  const float* base = nullptr;
  const float* scale = nullptr;
};

struct DCompressor {
  DTensor kv, gate;
  const float* ape = nullptr;   // [ratio][c * d]
  const float* norm = nullptr;  // [d]
  int64_t d = 0;
  int c = 1;
};

struct DLayer {
  int64_t il = 0;
  uint32_t ratio = 0;
  bool has_indexer = false;
  const float* omega = nullptr;  // RoPE frequencies of this layer [n_rope / 2]
  DHc hc_attn, hc_ffn;
  const float* attn_norm = nullptr;
  DTensor q_a;
  const float* q_a_norm = nullptr;
  DTensor q_b, kv;
  const float* kv_norm = nullptr;
  const float* sinks = nullptr;
  DTensor out_a, out_b;
  DCompressor comp, idx_comp;
  DTensor idx_q_b, idx_proj;
  const float* ffn_norm = nullptr;
  DTensor router;
  const float* router_bias = nullptr;
  DTensor tid2eid;                   // hash layers: I32 [n_vocab][n_expert_used]
  DTensor gate_exps, up_exps, down_exps;
  DTensor gate_shexp, up_shexp, down_shexp;
};

struct UploadOptions {
  int device = 0;
  bool progress = true;  // progress lines on stderr for models over 1 GiB
};

class GpuModel {
 public:
  // Copies the weights of `m` to the GPU. Throws ds4::Error when there is no usable GPU,
  // the GPU is too old, or the weights do not fit its free memory.
  static std::unique_ptr<GpuModel> upload(const model::Model& m, const UploadOptions& o = {});

  // A model of hyperparameters `hp` whose tensors (`tensors`: GGUF names, types and shapes,
  // e.g. synth::synthetic_tensors of a preset) are filled with random blocks directly in GPU
  // memory: full-scale benchmarks without a file. Norm weights are 1, biases and position
  // biases 0, hash tables random expert ids.
  struct TensorDecl {
    std::string name;
    GgmlType type = GgmlType::F32;
    std::vector<int64_t> ne;
  };
  static std::unique_ptr<GpuModel> synthetic(const model::HParams& hp, const std::vector<TensorDecl>& tensors,
                                             uint64_t seed, int device = 0);

  const model::HParams& hparams() const { return hp_; }
  const DeviceInfo& device() const { return dev_; }
  const DTensor& tok_embd() const { return tok_embd_; }
  const DHc& hc_head() const { return hc_head_; }
  const float* output_norm() const { return output_norm_; }
  const DTensor& output() const { return output_; }
  const std::vector<DLayer>& layers() const { return layers_; }
  size_t weight_bytes() const { return bytes_; }
  double upload_seconds() const { return upload_s_; }

 private:
  GpuModel() = default;
  const void* alloc(size_t bytes);
  const float* floats(const std::vector<float>& v);

  model::HParams hp_;
  DeviceInfo dev_;
  DTensor tok_embd_, output_;
  DHc hc_head_;
  const float* output_norm_ = nullptr;
  std::vector<DLayer> layers_;
  std::vector<DeviceBuffer> bufs_;
  size_t bytes_ = 0;
  double upload_s_ = 0;
};

}  // namespace ds4::cuda
