// The forward pass over a chunk of tokens, layer by layer (architecture.md 3.0, Appendix A,
// section 4 for the batched semantics).
#pragma once

#include <cstdint>

#include "model/hparams.h"
#include "model/rope.h"
#include "model/session_state.h"
#include "model/weights.h"

namespace ds4 {
class ThreadPool;
}

namespace ds4::model {

// H [T][n_hc][E] = the embedding of each token copied to every stream (3.1).
void embed(const HParams& hp, const ModelWeights& w, const int32_t* tokens, int64_t T, float* H);

// One decoder layer for T tokens at positions p0..p0+T-1: updates H in place and extends the
// layer's state (raw rows, compressor history, compressed rows).
void layer_forward(const HParams& hp, const LayerWeights& L, const Rope& rope, Numerics num,
                   LayerState& st, const int32_t* tokens, int64_t T, int64_t p0, float* H,
                   ThreadPool* pool);

// logits [n][n_vocab] for the n tokens whose final state is H [n][n_hc][E] (3.6).
void output_head(const HParams& hp, const ModelWeights& w, const float* H, int64_t n,
                 float* logits, ThreadPool* pool);

}  // namespace ds4::model
