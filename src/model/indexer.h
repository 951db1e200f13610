// Lightning indexer (architecture.md 3.4.7): picks, for each query token of a CSA layer, the
// top-k compressed rows its attention sees, by score_w = sum_h w_h * ReLU(q_h · K_w).
#pragma once

#include <cstdint>
#include <vector>

#include "model/hparams.h"
#include "model/rope.h"
#include "model/session_state.h"
#include "model/weights.h"

namespace ds4 {
class ThreadPool;
}

namespace ds4::model {

struct IndexerSelection {
  int64_t stride = 0;           // = idx_topk
  std::vector<int32_t> rows;    // [T][stride]
  std::vector<int32_t> count;   // [T]
};

// Top-k of scores[0..n) into out (ties keep the lower row index, like the reference's
// torch.topk in every tied case); returns the number chosen, min(k, n).
int64_t topk_lower_index(const float* scores, int64_t n, int64_t k, int32_t* out);

// For T tokens at p0..: qr [T][q_lora] (normed Q latent), x [T][E] (normed attention input),
// icomp [n][idx_dim] the indexer keys. Token t considers rows w < (p + 1) / ratio; when there
// are at most k of them it takes them all.
IndexerSelection indexer_select(const HParams& hp, const LayerWeights& L, const Rope& rope,
                                Numerics num, const float* qr, const float* x, int64_t T,
                                int64_t p0, const float* icomp, ThreadPool* pool);

}  // namespace ds4::model
