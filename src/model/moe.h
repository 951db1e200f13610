// Mixture-of-experts FFN (architecture.md 3.5): sqrt-softplus router (hash-routed in the
// first layers), routed SwiGLU experts with the asymmetric clamp, weight applied before the
// down projection, plus the shared expert.
#pragma once

#include <cstdint>

#include "model/hparams.h"
#include "model/weights.h"

namespace ds4 {
class ThreadPool;
}

namespace ds4::model {

// Chooses n_expert_used experts for one token from its router logits [n_expert] (3.5.1):
// ids from tid2eid in hash layers, else the top-k of score + bias (ties: lower expert id);
// weights = unbiased scores renormalized over the chosen, times the routed scale.
void route(const HParams& hp, const LayerWeights& L, const float* logits, int32_t token,
           int32_t* ids, float* weights);

// y [T][E] = routed experts + shared expert of xf [T][E] (the normed FFN input).
void moe_forward(const HParams& hp, const LayerWeights& L, const float* xf,
                 const int32_t* tokens, int64_t T, float* y, ThreadPool* pool);

}  // namespace ds4::model
