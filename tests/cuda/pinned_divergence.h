// Where a GPU session and a CPU session pinned to its decisions part (tests of the quantized
// recipes): both rerun the same evaluation script with layer hooks, and for each threshold the
// first (position, layer) whose layer output differs by more than it is printed, with the
// difference of that layer's input. A jump there (input still close, output far) rather than
// a drift is one discontinuous event: with the decisions pinned, an activation quantized one
// code apart (or, in official numerics, an FP8/FP4 code).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <vector>

#include "backend/cuda/gpu_model.h"
#include "backend/cuda/gpu_session.h"
#include "e2e/e2e_util.h"
#include "model/decisions.h"
#include "model/model.h"

namespace cudatest {

// A hook that records every choice a session offers into `rec` (sized for positions
// [rec.pos0, rec.pos0 + rec.n_tokens) beforehand), so that a second session can be pinned to
// the first one's choices with model::pin_decisions.
inline ds4::model::DecisionHook record_decisions(ds4::model::DecisionRecord& rec) {
  const size_t n = static_cast<size_t>(rec.n_tokens * rec.n_layers);
  rec.experts.assign(n * static_cast<size_t>(rec.n_expert_used), 0);
  rec.rows.assign(n * static_cast<size_t>(rec.idx_topk), 0);
  rec.row_count.assign(n, 0);
  auto at = [&rec](int64_t layer, int64_t pos) { return static_cast<size_t>((pos - rec.pos0) * rec.n_layers + layer); };
  ds4::model::DecisionHook h;
  h.experts = [&rec, at](int64_t layer, int64_t pos, const float*, int64_t, int32_t* ids, int64_t k) {
    std::copy_n(ids, k, rec.experts.begin() + static_cast<std::ptrdiff_t>(at(layer, pos) * k));
  };
  h.rows = [&rec, at](int64_t layer, int64_t pos, const float*, int64_t, int32_t* rows, int64_t k) {
    std::copy_n(rows, k, rec.rows.begin() + static_cast<std::ptrdiff_t>(at(layer, pos) * k));
    rec.row_count[at(layer, pos)] = static_cast<int32_t>(k);
  };
  return h;
}

inline void print_divergence(const ds4::model::Model& m, const ds4::cuda::GpuModel& gm,
                             const ds4::model::SessionOptions& o, size_t n_positions,
                             const std::function<void(ds4::model::EvalSession&)>& script) {
  const auto& hp = m.hparams();
  const int64_t row = hp.n_hc * hp.n_embd, NL = hp.n_layers;
  const size_t n = n_positions;
  std::vector<float> hg(n * NL * row), hc(n * NL * row);
  ds4::cuda::GpuSession g(gm, o);
  g.set_decision_log(true);
  g.set_layer_hook([&](int64_t il, int64_t p0, int64_t nt, const float* H) {
    for (int64_t t = 0; t < nt; ++t)  // a step (nt = 1) or a batched pass [nt][row]
      std::copy_n(H + t * row, row, hg.data() + static_cast<size_t>((p0 + t) * NL + il) * row);
  });
  script(g);
  ds4::model::Session c(m, o);
  c.set_decision_hook(ds4::model::pin_decisions(g.decision_log()));
  c.set_layer_hook([&](int64_t il, int64_t p0, int64_t nt, const float* H) {
    for (int64_t t = 0; t < nt; ++t)
      std::copy_n(H + t * row, row, hc.data() + static_cast<size_t>((p0 + t) * NL + il) * row);
  });
  script(c);
  std::printf("  first layer output apart by more than:");
  for (double thr : {1e-6, 1e-5, 1e-4, 1e-3}) {
    bool found = false;
    for (size_t t = 0; t < n && !found; ++t)
      for (int64_t il = 0; il < NL && !found; ++il) {
        const size_t off = (t * NL + il) * row;
        const double e = e2e::rel_err(hg.data() + off, hc.data() + off, static_cast<size_t>(row));
        if (e > thr) {
          // The layer's input: the previous layer's output (layer 0: the embedding, identical).
          const double in = il > 0 ? e2e::rel_err(hg.data() + off - row, hc.data() + off - row, static_cast<size_t>(row))
                                   : 0.0;
          std::printf(" %.0e: position %zu layer %lld (%.2e; input %.2e)", thr, t, static_cast<long long>(il), e, in);
          found = true;
        }
      }
    if (!found) std::printf(" %.0e: never", thr);
  }
  std::printf("\n");
}

}  // namespace cudatest
