// The engine layer (style.md, vLLM layering): one inference thread owns the model's sessions and
// runs generation jobs in FIFO order. Request threads build a GenJob (prompt tokens, sampling,
// callbacks), submit it and wait; the engine reports every output token through the job's
// callback on its own thread and calls on_done once.
//
// KV reuse, per job (the "cache ladder"; the chosen rung is reported as cache_source):
//   1. memory-token: the resident session sharing the longest exact token prefix;
//   2. memory-text:  a resident session whose decoded text is a byte prefix of the new prompt's
//      rendered text: its exact tokens are kept and only the text suffix is tokenized (sampled
//      tokens often differ from how the same text re-tokenizes);
//   3. disk:         the longest disk snapshot whose text is a prefix of the prompt;
//   4. cold prefill.
// Several sessions stay resident (LRU, bounded by count and a memory budget), so interleaved
// clients do not evict each other; a stop-sequence hit keeps the session (the next prompt's
// common prefix simply ends earlier, and truncate() rewinds to it).
// Cancellation: a job's `cancelled` flag is checked between prefill chunks and before each
// decode step, so a client that disconnects frees the engine within one forward pass.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "chat/render.h"
#include "generate/logprobs.h"
#include "generate/sampler.h"
#include "model/model.h"
#include "runtime/backend.h"
#include "server/call_guide.h"
#include "server/kv_disk.h"
#include "server/metrics.h"
#include "server/options.h"
#include "server/trace.h"
#include "tokenizer/tokenizer.h"

namespace ds4::server {

struct TokenOut {
  int32_t id = 0;
  const std::string* bytes = nullptr;  // the token's raw bytes (may split a UTF-8 character)
  bool forced = false;                 // written by the server (CallGuide), not sampled
  const gen::StepLogprobs* logprobs = nullptr;
};

struct GenResult {
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;      // prompt tokens reused from memory or disk
  int64_t completion_tokens = 0;
  std::string finish = "stop";    // stop | length | cancelled | error
  std::string error;
  std::string cache_source = "none";
  double prefill_s = 0, decode_s = 0;
};

struct GenJob {
  std::string id;  // for the trace
  chat::Pieces pieces;            // rendered prompt (empty for raw prompts)
  std::vector<int32_t> prompt;    // its tokens
  gen::SamplingParams sampling;   // includes max_tokens and stop tokens
  bool thinking = false;          // output starts inside <think>
  int64_t reasoning_budget = -1;
  std::optional<ForcedCall> forced;
  std::shared_ptr<const ParamKinds> param_kinds;  // declared tool parameter types (JSON guiding)
  int top_logprobs = -1;          // < 0: no logprobs
  // Engine thread, once per output token; false ends generation (a stop string was hit).
  std::function<bool(const TokenOut&)> on_token;
  std::function<void(const GenResult&)> on_done;
  std::atomic<bool> cancelled{false};
  GenResult result;
};

class Engine {
 public:
  Engine(const ServerOptions& opt, Metrics& metrics, Trace& trace);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const tok::Tokenizer& tokenizer() const { return *tok_; }
  const model::Model& model() const { return model_; }
  bool synthetic() const { return !synthetic_note_.empty(); }
  const std::string& synthetic_note() const { return synthetic_note_; }
  int64_t ctx() const { return opt_.ctx; }

  void submit(std::shared_ptr<GenJob> job);
  // Stops the thread after the running job; queued jobs finish as cancelled.
  void shutdown();

 private:
  struct Slot {
    std::unique_ptr<model::EvalSession> session;  // on the --backend (runtime::Engine)
    std::vector<float> logits;  // after the last evaluated token
    bool logits_valid = false;
    int64_t last_used = 0;
  };
  void loop();
  void run(GenJob& job);
  // Positions a slot at the longest reusable prefix of the job's prompt; returns it and the
  // number of prompt tokens already evaluated. May rewrite job.prompt (memory-text rung).
  Slot& prepare(GenJob& job, int64_t& reused);
  void evict_for_new_slot();
  size_t slot_bytes(const Slot& s) const;
  void log(const std::string& line);

  ServerOptions opt_;
  Metrics& metrics_;
  Trace& trace_;
  model::Model model_;
  std::unique_ptr<runtime::Engine> backend_;  // cpu or cuda sessions of model_
  std::unique_ptr<tok::Tokenizer> tok_;
  std::string synthetic_note_;
  std::unique_ptr<KvDiskCache> disk_;
  std::vector<std::unique_ptr<Slot>> slots_;
  int64_t clock_ = 0;
  Slot* active_ = nullptr;  // the slot of the running job

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<GenJob>> queue_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace ds4::server
