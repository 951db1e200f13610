// Test hook on the forward pass's discrete choices: the routed experts of each token (non-hash
// layers) and the indexer's top-k compressed rows. Quantization studies use it to count how
// often a quantized model chooses differently from the float model and to pin those choices to
// the float model's (tests/e2e/test_q8_ablation.cpp). When no hook is installed (every
// production path) the forward pass only pays one thread-local load per layer.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

namespace ds4::model {

struct DecisionHook {
  // Called once per token and non-hash layer after the top-k, with the biased scores the
  // choice was made from (scores[0..n_expert)). May overwrite ids[0..k); the routing weights
  // are then computed for the overwritten ids.
  std::function<void(int64_t layer, int64_t pos, const float* scores, int64_t n_expert,
                     int32_t* ids, int64_t k)>
      experts;
  // Called once per token and CSA layer whose query sees more than k compressed rows, after
  // the top-k, with the index scores (scores[0..n_rows)). May overwrite rows[0..k) with other
  // visible rows (< n_rows).
  std::function<void(int64_t layer, int64_t pos, const float* scores, int64_t n_rows,
                     int32_t* rows, int64_t k)>
      rows;
};

// The discrete choices of a run of consecutive positions, in a backend-neutral layout: what
// a GPU session records (cuda::GpuSession::set_decision_log) so that a CPU session can be
// pinned to the same choices (pin_decisions) and the two backends compared on the continuous
// part of the computation alone. Quantized activations make the forward pass discontinuous
// (one activation code moved by float summation order can flip a top-k), so without pinning
// the backends' logits cannot be compared at a fixed tolerance.
struct DecisionRecord {
  int64_t n_layers = 0;
  int64_t n_expert_used = 0;  // K: routed experts per token
  int64_t idx_topk = 0;       // indexer rows per token
  int64_t pos0 = 0;           // position of the first recorded token
  int64_t n_tokens = 0;
  std::vector<int32_t> experts;   // [token][layer][n_expert_used]; hash layers too (not offered to hooks)
  std::vector<int32_t> rows;      // [token][layer][idx_topk]; meaningful where row_count > 0
  std::vector<int32_t> row_count; // [token][layer]: rows selected (0: layer without an indexer)

  bool has(int64_t pos) const { return pos >= pos0 && pos < pos0 + n_tokens; }
  const int32_t* experts_at(int64_t layer, int64_t pos) const {
    return experts.data() + ((pos - pos0) * n_layers + layer) * n_expert_used;
  }
  const int32_t* rows_at(int64_t layer, int64_t pos) const {
    return rows.data() + ((pos - pos0) * n_layers + layer) * idx_topk;
  }
  int32_t row_count_at(int64_t layer, int64_t pos) const {
    return row_count[static_cast<size_t>((pos - pos0) * n_layers + layer)];
  }
  // Drops the choices of positions >= pos (a session truncated to pos tokens).
  void keep_before(int64_t pos) {
    const int64_t n = std::clamp<int64_t>(pos - pos0, 0, n_tokens);
    if (n == 0) pos0 = pos;
    n_tokens = n;
    experts.resize(static_cast<size_t>(n * n_layers * n_expert_used));
    rows.resize(static_cast<size_t>(n * n_layers * idx_topk));
    row_count.resize(static_cast<size_t>(n * n_layers));
  }
};

// How many of the choices offered to a pinning hook were overwritten because the hooked
// session would have chosen a different set (order is not counted: it only changes float
// summation order).
struct PinStats {
  int64_t experts_offered = 0, experts_changed = 0;
  int64_t rows_offered = 0, rows_changed = 0;
  int64_t missing = 0;  // choices the record does not cover (left as the session chose)
};

// A hook that replaces every choice the session offers (experts of non-hash layers, indexer
// rows where more than k rows are visible) by the record's for that layer and position.
// `stats` (optional) must outlive the hook; the hook is called from one thread at a time.
DecisionHook pin_decisions(const DecisionRecord& rec, PinStats* stats = nullptr);

namespace detail {
// The hook of the chunk being evaluated on this thread and that chunk's first position; set by
// Session::eval for the duration of one chunk (hook == nullptr: none).
struct DecisionScope {
  const DecisionHook* hook = nullptr;
  int64_t p0 = 0;
};
DecisionScope& decision_scope();
}  // namespace detail

}  // namespace ds4::model
