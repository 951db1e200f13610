#include "runtime/backend.h"

#include <fmt/format.h>

#include "core/error.h"

#ifdef DS4_HAVE_CUDA
#include "backend/cuda/device.h"
#include "backend/cuda/gpu_model.h"
#include "backend/cuda/gpu_session.h"
#endif

namespace ds4::runtime {

BackendKind parse_backend(const std::string& name) {
  if (name == "cpu") return BackendKind::Cpu;
  if (name == "cuda") return BackendKind::Cuda;
  fail("unknown backend \"{}\" (expected cpu or cuda)", name);
}

const char* backend_name(BackendKind k) { return k == BackendKind::Cuda ? "cuda" : "cpu"; }

bool has_cuda_backend() {
#ifdef DS4_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int64_t cuda_prefill_chunk(size_t free_bytes) {
  constexpr size_t GiB = size_t{1} << 30;
  if (free_bytes >= 32 * GiB) return 8192;
  if (free_bytes >= 12 * GiB) return 4096;
  return 2048;
}

#ifdef DS4_HAVE_CUDA
int64_t cuda_prefill_chunk(const cuda::GpuModel& g) {
  size_t free_bytes = 0;
  for (const auto& d : cuda::list_devices())
    if (d.index == g.device().index) free_bytes = d.free_bytes;
  return cuda_prefill_chunk(free_bytes);
}
#endif

namespace {

class CpuEngine final : public Engine {
 public:
  explicit CpuEngine(const model::Model& m) : Engine(m) {}
  std::unique_ptr<model::EvalSession> new_session(const model::SessionOptions& o) const override {
    return std::make_unique<model::Session>(*model_, o);
  }
  BackendKind kind() const override { return BackendKind::Cpu; }
  std::string describe() const override { return "cpu"; }
  int64_t prefill_chunk() const override { return 512; }
};

#ifdef DS4_HAVE_CUDA
class CudaEngine final : public Engine {
 public:
  explicit CudaEngine(const model::Model& m) : Engine(m), gpu_(cuda::GpuModel::upload(m)) {
    // The memory left once the weights are resident decides the prefill chunk.
    prefill_chunk_ = cuda_prefill_chunk(*gpu_);
  }
  std::unique_ptr<model::EvalSession> new_session(const model::SessionOptions& o) const override {
    return std::make_unique<cuda::GpuSession>(*gpu_, o);
  }
  BackendKind kind() const override { return BackendKind::Cuda; }
  std::string describe() const override {
    return fmt::format("cuda: {}, {:.2f} GiB of weights", gpu_->device().name,
                       static_cast<double>(gpu_->weight_bytes()) / (1024.0 * 1024.0 * 1024.0));
  }
  int64_t prefill_chunk() const override { return prefill_chunk_; }

 private:
  std::unique_ptr<cuda::GpuModel> gpu_;
  int64_t prefill_chunk_ = 2048;
};
#endif

}  // namespace

size_t session_bytes(const model::EvalSession& s) {
  size_t n = s.tokens().capacity() * sizeof(int32_t);
  if (const auto* c = dynamic_cast<const model::Session*>(&s)) {
    for (const auto& l : c->state().layers)
      n += (l.raw.capacity() + l.comp_kv.capacity() + l.comp_sc.capacity() + l.idx_kv.capacity() +
            l.idx_sc.capacity() + l.comp.capacity() + l.icomp.capacity()) * sizeof(float);
  }
#ifdef DS4_HAVE_CUDA
  if (const auto* g = dynamic_cast<const cuda::GpuSession*>(&s)) n += g->state_bytes();
#endif
  return n;
}

std::unique_ptr<Engine> open_engine(const model::Model& m, BackendKind kind) {
  if (kind == BackendKind::Cpu) return std::make_unique<CpuEngine>(m);
#ifdef DS4_HAVE_CUDA
  return std::make_unique<CudaEngine>(m);
#else
  fail("--backend cuda: this build has no CUDA backend (it was configured without nvcc or with "
       "-DDS4_CUDA=OFF); use --backend cpu");
#endif
}

}  // namespace ds4::runtime
