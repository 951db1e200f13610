// Backend selection for the programs: one model::EvalSession interface whatever the backend.
// This module sits above both model (CPU session) and backend/cuda (GPU model and session),
// so neither depends on the other's session; a build without CUDA still compiles it and
// reports "this build has no CUDA backend" when cuda is asked for.
#pragma once

#include <memory>
#include <string>

#include "model/model.h"

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
  // its best speed: the CPU's chunk is bounded by cache reuse, the GPU's by its working arrays
  // (a 2048-token chunk of the full q2 Flash runs ~2.4x faster per token on an H200 than the
  // 512-token chunks the CPU default would give it; docs/cuda.md).
  virtual int64_t prefill_chunk() const = 0;
  const model::Model& model() const { return *model_; }

 protected:
  explicit Engine(const model::Model& m) : model_(&m) {}
  const model::Model* model_;
};

// Memory held by a session's state (host for cpu, GPU for cuda), for memory budgets.
size_t session_bytes(const model::EvalSession& s);

// Throws ds4::Error when the backend is unavailable: no CUDA in this build, no GPU, a GPU too
// old, too little GPU memory.
std::unique_ptr<Engine> open_engine(const model::Model& m, BackendKind kind);

}  // namespace ds4::runtime
