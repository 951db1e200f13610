// The frontier sweep of ds4-bench: prefill a session incrementally to growing context lengths
// ("frontiers", e.g. 2K, 8K, 32K, 64K, 128K) and, at each one, measure
//   - the prefill speed of the interval just prefilled (tokens / seconds),
//   - the batch-1 decode speed there (median over N single-token steps),
//   - the bytes of session state (KV cache, compressor and indexer history).
// Long-context cost shows up as falling decode speed; one sweep covers every context length
// with a single prefill pass.
//
// The session is reached through SweepSession, so the same sweep measures any backend:
// EvalSweepSession adapts model::EvalSession (CPU and CUDA sessions); others implement the
// three calls.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ds4::model {
class EvalSession;
}

namespace ds4::bench {

// What the sweep needs from a session.
class SweepSession {
 public:
  virtual ~SweepSession() = default;
  // Appends `tokens` at positions n_past() .. and returns the greedy next token (argmax of the
  // logits after the last one). One token is a decode step; more is a prefill.
  virtual int32_t eval(std::span<const int32_t> tokens) = 0;
  virtual int64_t n_past() const = 0;
  // Bytes of per-session state at the current position (what a KV snapshot would hold).
  virtual uint64_t state_bytes() const = 0;
};

// Any backend's model::EvalSession (the CPU model::Session, the CUDA session), greedy from the
// last logits (reduced on the device where the session keeps them there: only the token
// comes back). state_bytes() counts the SessionState arrays: free for the CPU session, a
// snapshot (a copy back from the device) otherwise, taken outside the timed steps.
class EvalSweepSession final : public SweepSession {
 public:
  explicit EvalSweepSession(model::EvalSession& s);
  int32_t eval(std::span<const int32_t> tokens) override;
  int64_t n_past() const override;
  uint64_t state_bytes() const override;

 private:
  model::EvalSession& s_;
  std::vector<float> logits_;
};

struct FrontierRow {
  int64_t context = 0;          // the frontier: tokens in the session when decode starts
  int64_t prefill_tokens = 0;   // tokens prefilled to reach it (since the previous row)
  double prefill_seconds = 0;
  double prefill_tok_s = 0;
  int decode_tokens = 0;        // timed decode steps
  double decode_ms_median = 0;  // median time of one decode step
  double decode_tok_s = 0;      // 1000 / decode_ms_median
  uint64_t state_bytes = 0;     // after the decode steps
};

struct SweepOptions {
  std::vector<int64_t> frontiers = {2048, 8192, 32768, 65536, 131072};
  int decode_tokens = 16;     // timed decode steps per frontier (the median is reported)
  int decode_warmup = 1;      // untimed decode steps before them
  int64_t prefill_chunk = 0;  // tokens per eval call while prefilling (0 = the whole interval)
  int32_t vocab = 0;          // prompt tokens are uniform in [2, vocab) (required)
  uint64_t seed = 1;
  // Called after each frontier with its row (for live output).
  std::function<void(const FrontierRow&)> on_row;
};

// Runs the sweep from the session's current position (normally an empty session). Decode
// steps extend the context, so each interval prefills up to the next frontier from wherever
// decoding left off. Throws ds4::Error on bad options (frontiers not increasing, a frontier
// the session already passed, decode_tokens < 1, no vocab).
std::vector<FrontierRow> run_sweep(SweepSession& s, const SweepOptions& opts);

// The largest context a sweep reaches: last frontier + warmup + decode steps.
int64_t sweep_max_context(const SweepOptions& opts);

// "2K,8K,32K" / "2048, 8192" / "1M" -> increasing token counts (K = 1024, M = 1024 * 1024).
// Throws ds4::Error naming the bad item.
std::vector<int64_t> parse_frontiers(std::string_view text);
// 2048 -> "2K", 1536 -> "1536", 1048576 -> "1M".
std::string frontier_label(int64_t n);

// The console table of a sweep (ds4-bench sweep, ds4-bench cuda --sweep): a header line and
// one line per row (context, tokens prefilled, prefill tok/s, decode tok/s, state MiB).
std::string sweep_table_header();
std::string sweep_table_row(const FrontierRow& r);

// CSV with a header row: context,prefill_tokens,prefill_seconds,prefill_tok_s,decode_tokens,
// decode_ms_median,decode_tok_s,state_bytes.
std::string sweep_csv(const std::vector<FrontierRow>& rows);

// A self-contained SVG (no scripts, no external references): two panels sharing a log2
// context axis, prefill tok/s on top and decode tok/s below, one point per frontier, each
// labelled with its value; `title` and `subtitle` (e.g. the model and the machine) on top.
std::string sweep_svg(const std::vector<FrontierRow>& rows, std::string_view title,
                      std::string_view subtitle);

// Writes text to a file; throws ds4::Error naming the file when it cannot.
void write_text_file(const std::string& path, std::string_view text);

}  // namespace ds4::bench
