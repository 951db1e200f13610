// Manifold-constrained hyper-connections (architecture.md 3.2, 3.3, 3.6). The residual state
// of a token is n_hc streams of E values; each sublayer collapses them to one input ("pre"),
// and mixes its output back in ("post" and the Sinkhorn-projected "comb" matrix).
#pragma once

#include <cstdint>

#include "model/hparams.h"
#include "model/weights.h"

namespace ds4 {
class ThreadPool;
}

namespace ds4::model {

// Projects C (n x n, row-major C[j][k]) onto (nearly) doubly-stochastic matrices: row
// softmax + eps, column normalization, then iters-1 rounds of row and column
// normalization, eps inside every denominator (3.2 step 5).
void sinkhorn(float* C, int64_t n, int64_t iters, float eps);

// For T tokens with state H [T][n_hc][E]: a [T][E] = sum_s pre[s] * H[s], and the per-token
// post [T][n_hc] and comb [T][n_hc][n_hc] for hc_post. `scratch` holds T * n_mix floats.
void hc_pre(const HParams& hp, const HcWeights& w, const float* H, int64_t T, float* a,
            float* post, float* comb, float* scratch, ThreadPool* pool);

// H_out[k] = post[k] * F + sum_j comb[j][k] * H_in[j] per token (3.3; note the transpose).
void hc_post(const HParams& hp, const float* F, const float* H_in, const float* post,
             const float* comb, int64_t T, float* H_out);

// Final collapse before the output norm (3.6): sigmoid weights, no Sinkhorn.
void hc_head(const HParams& hp, const HcWeights& w, const float* H, int64_t T, float* x,
             float* scratch, ThreadPool* pool);

}  // namespace ds4::model
