// Test hook on the forward pass's discrete choices: the routed experts of each token (non-hash
// layers) and the indexer's top-k compressed rows. Quantization studies use it to count how
// often a quantized model chooses differently from the float model and to pin those choices to
// the float model's (tests/e2e/test_q8_ablation.cpp). When no hook is installed (every
// production path) the forward pass only pays one thread-local load per layer.
#pragma once

#include <cstdint>
#include <functional>

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
