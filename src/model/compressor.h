// KV compressors (architecture.md 3.4.5): every `ratio` tokens, one row pooled per channel
// with a softmax over the window's gate scores. Overlapped compressors (c = 2, the CSA layers
// and their indexer) pool 2 * ratio candidates: the A half of the previous window's tokens
// and the B half of the current window's.
//
// The streaming state is the per-token projections (value and score rows) kept in the
// session's token history, not a pooled accumulator: a window is pooled from those rows when
// its last token arrives. This makes chunked prefill, decode and truncation of the state to
// an earlier position exact by construction (session_state.h).
#pragma once

#include <cstdint>
#include <vector>

#include "model/hparams.h"
#include "model/rope.h"
#include "model/weights.h"

namespace ds4 {
class ThreadPool;
}

namespace ds4::model {

// What happens to an emitted row after RMSNorm and RoPE (3.4.5 "for every emitted entry").
enum class RowSim {
  None,          // exact numerics
  Fp8Nope,       // attention compressor, official numerics: FP8 round trip of the nope dims
  HadamardFp4,   // indexer compressor, official numerics: Hadamard, then FP4 round trip
};

// Projections of T tokens: kv [T][c*d] = W_kv x, sc [T][c*d] = W_gate x + ape[pos mod ratio].
void compressor_project(const CompressorWeights& w, uint32_t ratio, const float* x, int64_t T,
                        int64_t p0, float* kv, float* sc, ThreadPool* pool);

// Pools window `w` into out[d] (before the norm). cur_kv/cur_sc: the ratio rows of window w;
// prev_kv/prev_sc: the ratio rows of window w-1 (only read when c = 2; null for w = 0).
void compressor_pool(int64_t ratio, int64_t c, int64_t d, const float* prev_kv,
                     const float* prev_sc, const float* cur_kv, const float* cur_sc, float* out);

// RMSNorm with the compressor's weight, RoPE of the tail at the window's first position,
// then the row simulation.
void compressor_finish(const CompressorWeights& w, const Rope& rope, int64_t window_start,
                       int64_t n_nope, RowSim sim, float eps, float* row);

}  // namespace ds4::model

namespace ds4::model {

// Appends the projections of T tokens at positions p0.. to the history (rows of c*d floats
// for positions hist_begin..) and appends to `rows` every window completed by those tokens,
// pooled and finished (3.4.5). The history must reach back to the previous window's start.
void compressor_advance(const CompressorWeights& w, uint32_t ratio, const Rope& rope,
                        int64_t n_nope, RowSim sim, float eps, const float* kv, const float* sc,
                        int64_t T, int64_t p0, std::vector<float>& kv_hist,
                        std::vector<float>& sc_hist, int64_t hist_begin, std::vector<float>& rows);

}  // namespace ds4::model
