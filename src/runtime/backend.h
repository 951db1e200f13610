// Backend selection for the programs: one model::EvalSession interface whatever the backend.
// This module sits above both model (CPU session) and backend/cuda (GPU model and session),
// so neither depends on the other's session; a build without CUDA still compiles it and
// reports "this build has no CUDA backend" when cuda is asked for.
#pragma once

#include <memory>
#include <string>

#include "model/model.h"

namespace ds4::cuda {
class GpuModel;  // backend/cuda/gpu_model.h (CUDA builds)
}

namespace ds4::runtime {

enum class BackendKind { Cpu, Cuda };

// "cpu" | "cuda"; throws ds4::Error naming the choices otherwise.
BackendKind parse_backend(const std::string& name);
const char* backend_name(BackendKind k);
// Whether this build contains the CUDA backend.
bool has_cuda_backend();

// A model prepared for one backend (for cuda: its weights uploaded to the GPU); sessions are
// created from it and must not outlive it.
class Engine {
 public:
  virtual ~Engine() = default;
  virtual std::unique_ptr<model::EvalSession> new_session(const model::SessionOptions& opts) const = 0;
  virtual BackendKind kind() const = 0;
  // One line about the device (e.g. "NVIDIA H100 80GB HBM3, 8.1 GiB of weights").
  virtual std::string describe() const = 0;
  // Tokens per batched layer pass (SessionOptions::max_batch) that this backend prefills at
  // its best speed: the CPU's chunk is bounded by cache reuse (512), the GPU's by the memory
  // its working arrays may take (cuda_prefill_chunk: an 8K prompt of the full q2 Flash on an
  // H200 prefills at 5,143 tok/s in one 8192-token chunk, 3,808 in 2048-token chunks).
  virtual int64_t prefill_chunk() const = 0;
  const model::Model& model() const { return *model_; }

 protected:
  explicit Engine(const model::Model& m) : model_(&m) {}
  const model::Model* model_;
};

// The CUDA engine's prefill chunk for a GPU with `free_bytes` of memory left once the weights
// are resident: 8192 tokens with >= 32 GiB free, 4096 with >= 12 GiB, else 2048. Larger chunks
// let the prefill's tensor-core GEMMs (cuBLAS f16 for the Q8_0 products, the f16 routed
// experts from 4096 tokens on) run at their best, but the chunk's working arrays grow with it
// (~11.4 GiB of session memory at 8192 tokens against ~3.7 GiB at 2048 on the full Flash q2;
// docs/cuda.md), and the session's own state grows with its context on top.
int64_t cuda_prefill_chunk(size_t free_bytes);
// cuda_prefill_chunk of the memory now free on the GPU that holds g (CUDA builds only).
int64_t cuda_prefill_chunk(const cuda::GpuModel& g);

// Memory held by a session's state (host for cpu, GPU for cuda), for memory budgets.
size_t session_bytes(const model::EvalSession& s);

// Throws ds4::Error when the backend is unavailable: no CUDA in this build, no GPU, a GPU too
// old, too little GPU memory.
std::unique_ptr<Engine> open_engine(const model::Model& m, BackendKind kind);

}  // namespace ds4::runtime
