// A DeepSeek V4 session on the GPU: the model::EvalSession semantics of model::Session
// (prefill of many tokens, decode of one, any chunking gives the same logits; truncate,
// snapshot/restore, serialize in the CPU SessionState format), with its state in GPU memory:
//
//  - per layer a *history ring* of `ring_cap` positions (slot = position % ring_cap) holding
//    what the CPU session keeps as its token history: the raw KV row and, in compressed
//    layers, the compressor and indexer-compressor projections (the compressors' frontier
//    state); ring_cap covers the window, the compressor windows, `retain` tokens of
//    truncation and a prefill chunk, so live rows are never overwritten;
//  - the compressed rows (attention and indexer keys), append-only arrays of max_ctx / ratio.
//
// The logical history start of each layer follows exactly the CPU session's trimming rule,
// so a snapshot has the same layout (and sizes) as the CPU one after the same evals.
//
// A decoded token is one *step* (forward of all layers for one token, then optionally the
// output head), whose launches read the token and position from device memory: the step is
// captured once in a CUDA graph and replayed, without host synchronization inside the step.
// A prompt chunk of more than one token runs layer-major over all its tokens instead
// (gpu_prefill.cpp: GEMMs over the chunk, per-token kernels with a position per token).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/cuda/buffer.h"
#include "backend/cuda/gpu_model.h"
#include "backend/cuda/sampling.h"
#include "model/model.h"

namespace ds4::cuda {

struct GpuSessionOptions {
  bool use_graph = true;  // replay each step as a CUDA graph (false: plain launches)
  // Chunks of more than one token run layer-major over all their tokens (gpu_prefill.cpp:
  // tensor-core GEMMs, grouped experts); false: every token is one step, as in decode.
  bool batched_prefill = true;
  // Scratch for one group of a batched chunk's attention / indexer launches (each token of a
  // group has its own indexer scores, and its attention partials where the CUDA-core attention
  // runs); a chunk runs in groups of as many tokens as fit.
  // Tests set it small to exercise chunks split into several groups.
  size_t prefill_group_bytes = size_t{512} << 20;
};

class GpuSession : public model::EvalSession {
 public:
  GpuSession(const GpuModel& model, const model::SessionOptions& opts, const GpuSessionOptions& g = {});
  ~GpuSession() override;

  void eval(std::span<const int32_t> tokens, model::LogitsMode mode, float* out) override;
  int64_t n_past() const override { return n_past_; }
  const std::vector<int32_t>& tokens() const override { return tokens_; }
  const model::SessionOptions& options() const override { return opts_; }
  const model::HParams& hparams() const override { return model_->hparams(); }
  model::SessionState snapshot() const override;
  void restore(model::SessionState s) override;
  void truncate(int64_t n) override;
  int64_t min_truncate() const override;
  void reset() override;
  const char* backend_name() const override { return "cuda"; }
  // Sampling next to the logits (model/logits_reduce.h, backend/cuda/sampling.h).
  bool eval_keeping_logits(std::span<const int32_t> tokens) override;
  bool reduce_logits(const model::LogitsReduceRequest& req, model::LogitsReduction& out) override;
  void read_logits(int64_t first, int64_t count, float* out) override;

  // Evaluates `tokens` like eval(), leaving the logits of the last token in device memory
  // (device_logits()) instead of copying them back; for GPU-side sampling and benchmarks.
  void eval_device(std::span<const int32_t> tokens);
  // Evaluates `tokens` as consecutive decode steps (one graph replay per token, no host
  // synchronization between them) even when there are several: what a generator's decode does,
  // minus the host round trip. eval_device() would run several tokens as a batched prefill
  // chunk instead; benchmarks time the decode step with this.
  void eval_device_steps(std::span<const int32_t> tokens);
  const float* device_logits() const;
  void* stream() const { return stream_.handle(); }
  // GPU memory held by the session state and scratch buffers.
  size_t state_bytes() const { return state_bytes_; }
  int64_t ring_cap() const { return cap_; }
  // Called after every layer with its output H [T][n_hc][n_embd] for the tokens of the pass
  // (as model::Session's hook: one token per decode step, T for a batched prefill chunk);
  // steps then run without a graph. For tests.
  void set_layer_hook(model::LayerHook hook) { hook_ = std::move(hook); }

  // Decision log, for tests: while on, every step also copies its discrete choices (the
  // routing ids of every layer, the indexer selection of indexer layers) into a device buffer
  // of one chunk, downloaded after the chunk into decision_log(): a model::DecisionRecord of
  // the positions evaluated since the log was turned on, with which a CPU session is pinned to
  // the GPU's choices (model::pin_decisions) so the backends can be compared on the continuous
  // part alone. Off by default: no buffer, no extra launch. Turning it on clears the record.
  void set_decision_log(bool on);
  const model::DecisionRecord& decision_log() const { return log_; }

  // Evaluates one token with plain launches and CUDA events between the phases of the step;
  // returns the time of each phase summed over the layers (and the weight bytes it reads).
  struct PhaseTime {
    std::string name;
    double ms = 0, bytes = 0;
  };
  std::vector<PhaseTime> profile_step(int32_t token);
  // Evaluates `tokens` (more than one, at most max_batch) as one batched prefill chunk with
  // events between its phases (LogitsMode::Last); the time of each phase summed over layers.
  std::vector<PhaseTime> profile_prefill(std::span<const int32_t> tokens);

 private:
  struct LayerBufs;
  struct Scratch;
  struct Prof;
  // Records the end of a phase when profiling (profile_step); no-op otherwise.
  void mark(const char* phase, double bytes, void* s);

  // Throws unless `tokens` can be evaluated: not empty, every token in the vocabulary, and
  // n_past + size within max_ctx (the CPU session's checks and messages).
  void check_eval(std::span<const int32_t> tokens) const;
  // Runs `tokens` in chunks of max_batch; logits as `mode` asks, copied to `out` only when
  // copy_last (else the last token's stay in device memory).
  void eval_chunks(std::span<const int32_t> tokens, model::LogitsMode mode, float* out, bool copy_last);
  void run_chunk(std::span<const int32_t> tokens, model::LogitsMode mode, float* out, bool copy_last);
  void launch_step(bool head);
  void record_step(void* s, bool head);
  // One layer of the step on the state H. post_pending: the previous layer's FFN hc_post
  // (H2 -> H) has not run yet (this layer's first HC pre runs it); the layer leaves its own
  // FFN hc_post pending in turn (record_step).
  void layer(const DLayer& L, LayerBufs& S, bool post_pending, void* s);
  // x_act: the HC pre already wrote x's Q8_0 activation (scratch act) for wq_a and wkv.
  void attention_sublayer(const DLayer& L, LayerBufs& S, bool x_act, void* s);
  // The compressors and the lightning indexer of a compressed layer (3.4.5-3.4.7) on stream
  // `br` beside the query/KV path on `s`; returns the indexer's selection (null without one).
  const int32_t* compressor_branch(const DLayer& L, LayerBufs& S, void* s, void* br);
  // The stream compressor_branch runs on: a second stream, or `s` itself while profiling (so
  // that each phase of the table is timed alone) and with DS4_CUDA_ONE_STREAM set (A/B switch).
  void* branch_stream(void* s) const;
  void moe(const DLayer& L, void* s);
  // hc_pre followed by RMSNorm(a) * norm into the scratch x (3.2), on state H; with post_from,
  // H is first the hc_post (3.3) of the scratch y, post and comb from post_from, fused into the
  // pre's first launch (float fn weights). With x_q8 (and the one-launch HC kernel) x is also
  // written there as Q8_0 activation blocks; returns whether it was. comb's Sinkhorn may run
  // on comb_stream_ (join_comb before comb is read).
  // With defer_sinkhorn (and that kernel) comb is left as the Sinkhorn's input: the caller
  // launches hc_comb_sinkhorn before comb is read (fork_comb, or at the branch's end).
  struct HcPreDone {
    bool x_act = false;     // x's Q8_0 blocks written
    bool deferred = false;  // comb awaits its Sinkhorn
  };
  bool router_fused(const DLayer& L) const;  // moe() routes with fwd::fused_router
  HcPreDone hc_pre_norm(const DHc& hc, const float* post_from, float* H, const float* norm, void* s,
                        void* x_q8 = nullptr, bool defer_sinkhorn = false);
  // The stream of the deferred comb Sinkhorn: a third stream, or `s` while profiling or with
  // DS4_CUDA_ONE_STREAM set.
  void* comb_stream(void* s) const;
  // comb's Sinkhorn on comb_stream_ after the work enqueued on `s` so far (join_comb joins it).
  void fork_comb(void* s);
  void join_comb(void* s);  // makes `s` wait for a Sinkhorn pending on comb_stream_
  void hc_post_now(const float* H_in, float* H_out, void* s);  // that hc_post as its own launch
  bool hc_fusable(const DHc& hc) const;                       // float fn weights, E % 4 == 0
  // The output head on state H (logits into the scratch); post_pending: the last layer's FFN
  // hc_post (H2 -> H) runs first, inside the head's HC launch.
  void head(void* s, bool post_pending = false);
  void mv(const DTensor& W, const float* x, float* y, void* s, int64_t row0 = 0, int64_t nrows = -1);
  void trim_history();
  // Copies the step's logits (sc_->logits) to host `dst`, asynchronously on stream `s`.
  void copy_logits(float* dst, void* s) const;
  // Ends a chunk of `tokens` (either path): waits for the stream, reports a kernel error as
  // `what`, collects the decision log and advances n_past / tokens / the history start.
  void finish_chunk(std::span<const int32_t> tokens, const char* what);
  // Decision log (no-ops while it is off): a step's n choices of layer il into its chunk slot
  // at `offset` ints into the layer's entry (0: K expert ids, K: idx_topk rows, K + idx_topk:
  // the row count); the same for T tokens of a batched pass whose choices lie [T][n] in d_src;
  // the download after the chunk's T tokens.
  void log_choices(const int32_t* d_src, int64_t n, int64_t il, int64_t offset, void* s);
  void log_batch(const int32_t* d_src, int64_t n, int64_t T, int64_t il, int64_t offset, void* s);
  void collect_log(int64_t T);
  void start_profile();
  std::vector<PhaseTime> collect_phases();

  // Batched prefill (gpu_prefill.cpp): one chunk of T > 1 tokens, layer by layer.
  struct Batch;
  struct BatchFree {
    void operator()(Batch* b) const;
  };
  void prefill_chunk(std::span<const int32_t> tokens, model::LogitsMode mode, float* out, bool copy_last);
  void prefill_layer(const DLayer& L, LayerBufs& S, int64_t T, int64_t p0, void* s);
  void prefill_attention(const DLayer& L, LayerBufs& S, int64_t T, int64_t p0, void* s);
  void prefill_compressor(const DLayer& L, const DCompressor& C, int sim, int64_t n_nope, float* ring_kv,
                          float* ring_sc, float* rows, int64_t T, void* s);
  void prefill_moe(const DLayer& L, int64_t T, void* s);
  void prefill_hc_pre(const DHc& hc, const float* H, const float* norm, int64_t T, void* s);
  // Y [T][nrows] = X [T][W.cols] times rows row0.. of W, on the tensor cores (matmul.h).
  void gemm(const DTensor& W, const float* x, int64_t T, float* y, void* s, int64_t row0 = 0, int64_t nrows = -1);

  const GpuModel* model_;
  model::SessionOptions opts_;
  GpuSessionOptions gopts_;
  int64_t n_past_ = 0;
  std::vector<int32_t> tokens_;
  std::vector<int64_t> hist_begin_;
  int64_t cap_ = 0;           // history ring positions
  int64_t keep_max_ = 0;      // most history rows a restore may keep
  size_t state_bytes_ = 0;
  bool warmed_ = false;       // one step ran without a graph (one-time inits happen outside capture)

  Stream stream_;
  // compressor_branch's stream and its fork / join points: x ready (after HC pre), qr ready
  // (the indexer's query input), branch done (before attention).
  Stream branch_stream_;
  Event x_ready_, qr_ready_, branch_done_;
  // The deferred Sinkhorn of comb (hc_pre_norm): forked after each HC pre, joined before the
  // next reader of comb (the next hc_post).
  Stream comb_stream_;
  Event comb_fork_, comb_done_;
  bool comb_pending_ = false;
  // Where the current layer's attention HC pre left its comb Sinkhorn (comb_mode 2-4).
  // Where a deferred comb Sinkhorn runs: Attention / BranchEnd (the opt-in modes 2-4 above);
  // RowsFinish / Router: one extra block of the q/kv finish launch or of the fused router
  // (the default, comb_in_launches in gpu_session.cpp).
  enum class CombAt { None, Attention, BranchEnd, RowsFinish, Router };
  CombAt comb_at_ = CombAt::None;
  std::vector<std::unique_ptr<LayerBufs>> layers_;
  std::unique_ptr<Scratch> sc_;
  std::unique_ptr<Graph> graph_[2];  // without / with the output head
  model::LayerHook hook_;
  std::unique_ptr<Prof> prof_;
  std::unique_ptr<DeviceSampler> sampler_;  // made on the first reduce_logits
  std::unique_ptr<DeviceBuffer> log_dev_;  // [max_batch][n_layers][log_layer_w_] while logging
  int64_t log_layer_w_ = 0;                // ints per layer: K ids, idx_topk rows, the row count
  model::DecisionRecord log_;
  std::unique_ptr<Batch, BatchFree> batch_;  // allocated by the first batched chunk
};

}  // namespace ds4::cuda
