// Core attention with sinks (architecture.md 3.4.8) over a token's visible rows (3.4.6): the
// raw sliding window and the compressed rows (all of them in HCA layers, the indexer's
// selection in CSA layers). One shared K = V head for all query heads.
#pragma once

#include <cstdint>

#include "model/hparams.h"
#include "model/weights.h"

namespace ds4 {
class ThreadPool;
}

namespace ds4::model {

struct AttentionInputs {
  const float* q = nullptr;       // [T][n_head * head_dim], RMS-normed and rotated
  int64_t T = 0;
  int64_t p0 = 0;                 // position of token 0
  const float* raw = nullptr;     // history rows [.][head_dim] for positions hist_begin..
  int64_t hist_begin = 0;
  const float* comp = nullptr;    // compressed rows [.][head_dim]
  uint32_t ratio = 0;             // 0: no compressed rows
  // Indexer selection (CSA): token t sees rows sel[t * sel_stride + i], i < n_sel[t].
  // Null: token t sees every row w < (p + 1) / ratio (HCA).
  const int32_t* sel = nullptr;
  const int32_t* n_sel = nullptr;
  int64_t sel_stride = 0;
};

// o [T][n_head * head_dim] = softmax-with-sink attention of every head (3.4.8).
void attention_core(const HParams& hp, const float* sinks, const AttentionInputs& in, float* o,
                    ThreadPool* pool);

// Grouped low-rank output projection (3.4.9): out [T][E] = wo_b · concat_g(wo_a_g · o_g).
// `o` must already be de-rotated.
void attention_output(const HParams& hp, const LayerWeights& L, const float* o, int64_t T,
                      float* out, ThreadPool* pool);

}  // namespace ds4::model
