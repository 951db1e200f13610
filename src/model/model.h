// Public API of the DeepSeek V4 engine on CPU.
//
//   auto model = Model::load("model.gguf", {.threads = 8});
//   Session s(model, {.max_ctx = 4096, .numerics = Numerics::Official});
//   std::vector<float> logits(model.hparams().n_vocab);
//   s.eval(tokens, LogitsMode::Last, logits.data());   // prefill
//   s.eval(std::span(&next, 1), LogitsMode::Last, logits.data());  // decode
//
// A Model is immutable after load and may be shared by sessions; a session's eval uses the
// model's thread pool, so evals of sessions of one model must not run concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/decisions.h"
#include "model/hparams.h"
#include "model/logits_reduce.h"
#include "model/session_state.h"
#include "model/weights.h"

namespace ds4 {
class ThreadPool;
}
namespace ds4::gguf {
class File;
}

namespace ds4::model {

struct ModelOptions {
  int threads = 0;  // 0 = all cores
};

class Model {
 public:
  // Opens and validates a DwarfStar-dialect DeepSeek V4 GGUF; the weights stay in the
  // mapping. Throws ds4::Error naming the file, key or tensor on any problem.
  static Model load(const std::string& path, const ModelOptions& opts = {});

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  const HParams& hparams() const { return hp_; }
  const ModelWeights& weights() const { return w_; }
  const gguf::File& file() const { return *file_; }
  ThreadPool* pool() const { return pool_.get(); }

 private:
  Model() = default;
  std::unique_ptr<gguf::File> file_;
  HParams hp_;
  ModelWeights w_;
  std::unique_ptr<ThreadPool> pool_;
};

enum class LogitsMode {
  None,  // no logits (prefill of a prompt prefix)
  Last,  // out = [n_vocab], logits after the last token
  All,   // out = [n_tokens][n_vocab], row i = logits after token i
};

struct SessionOptions {
  int64_t max_ctx = 4096;                 // eval throws past this many positions
  Numerics numerics = Numerics::Official;
  int64_t retain = 128;                   // tokens truncate() can go back (session_state.h)
  int64_t max_batch = 512;                // prefill chunk: tokens per layer pass
};

// Called after every layer with that layer's output for the tokens of the current pass:
// H[t][n_hc][n_embd] for positions p0 .. p0 + n_tokens - 1. For tests and debugging.
using LayerHook = std::function<void(int64_t layer, int64_t p0, int64_t n_tokens, const float* H)>;

// The session interface the programs drive, whatever the backend: Session below (CPU) and
// the CUDA session (backend/cuda/gpu_session.h) implement it; src/runtime creates either.
// Semantics are those documented on Session; snapshot() is a SessionState in the CPU layout,
// so a snapshot taken on one backend restores on the other.
class EvalSession {
 public:
  virtual ~EvalSession() = default;
  virtual void eval(std::span<const int32_t> tokens, LogitsMode mode, float* out) = 0;
  virtual int64_t n_past() const = 0;
  virtual const std::vector<int32_t>& tokens() const = 0;
  virtual const SessionOptions& options() const = 0;
  virtual const HParams& hparams() const = 0;
  virtual SessionState snapshot() const = 0;
  virtual void restore(SessionState s) = 0;
  virtual void truncate(int64_t n) = 0;
  virtual int64_t min_truncate() const = 0;
  virtual void reset() = 0;
  virtual const char* backend_name() const = 0;

  // Optional, for backends that keep the logits in device memory (logits_reduce.h); the
  // defaults say "not supported" and the caller uses eval with an output buffer.
  // eval_keeping_logits: eval(tokens, Last, ...) that leaves the logits on the device.
  virtual bool eval_keeping_logits(std::span<const int32_t> tokens) {
    (void)tokens;
    return false;
  }
  // After eval_keeping_logits: false when the request cannot be served (NaN or +inf logits,
  // every token banned, too many candidates); the caller then reads the logits.
  virtual bool reduce_logits(const LogitsReduceRequest& req, LogitsReduction& out) {
    (void)req;
    (void)out;
    return false;
  }
  // After eval_keeping_logits: logits [first, first + count) of the last token.
  virtual void read_logits(int64_t first, int64_t count, float* out) {
    (void)first;
    (void)count;
    (void)out;
  }

  std::vector<uint8_t> serialize() const { return snapshot().serialize(); }
  void deserialize(std::span<const uint8_t> bytes) { restore(SessionState::deserialize(bytes)); }
};

class Session : public EvalSession {
 public:
  Session(const Model& model, const SessionOptions& opts = {});

  // Evaluates `tokens` at positions n_past() .. n_past() + size - 1 and extends the state.
  // Many tokens are processed layer by layer in chunks of max_batch (prefill); one token is a
  // decode step. Any split of a sequence into calls gives the same logits.
  void eval(std::span<const int32_t> tokens, LogitsMode mode, float* out) override;

  int64_t n_past() const override { return st_.n_past; }
  const std::vector<int32_t>& tokens() const override { return st_.tokens; }
  const SessionOptions& options() const override { return opts_; }
  const HParams& hparams() const override { return model_->hparams(); }
  const char* backend_name() const override { return "cpu"; }
  const Model& model() const { return *model_; }

  // Snapshot / restore by value. restore() checks that the state belongs to this model and
  // numerics mode.
  const SessionState& state() const { return st_; }
  SessionState snapshot() const override { return st_; }
  void restore(SessionState s) override;
  // Back to the first n tokens; exact for n >= n_past() - retain (session_state.h), throws
  // otherwise.
  void truncate(int64_t n) override;
  // Smallest n truncate() accepts now.
  int64_t min_truncate() const override;
  void reset() override;

  std::vector<uint8_t> serialize() const { return st_.serialize(); }
  void deserialize(std::span<const uint8_t> bytes) { restore(SessionState::deserialize(bytes)); }

  void set_layer_hook(LayerHook hook) { hook_ = std::move(hook); }
  // Observes / overrides the discrete choices of every later eval (decisions.h); for tests.
  void set_decision_hook(DecisionHook hook) { decisions_ = std::move(hook); }

 private:
  void eval_chunk(std::span<const int32_t> tokens, LogitsMode mode, float* out);
  void trim_history();

  const Model* model_;
  SessionOptions opts_;
  SessionState st_;
  LayerHook hook_;
  DecisionHook decisions_;
};

}  // namespace ds4::model
