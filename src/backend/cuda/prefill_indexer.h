// Lightning-indexer scores of a batched prefill chunk (architecture.md 3.4.7), as tiles of
// (queries x compressed rows). Plain C++ declarations (no CUDA types).
//
// fwd::idx_select scores one query per block row: every block stages the query's 64 x 128
// floats again and each dot product runs with two shared-memory loads per FMA, so a chunk of
// 2048 queries over 2K rows costs far more than its FLOPs. Here a block takes the heads of
// several queries (128 query-head rows) against 64 compressed rows: each DI-slice of both is
// staged in shared memory once, and a thread keeps an 8 x 4 register tile of dot products.
// Each dot product still runs over i = 0 .. DI-1 as one float FMA chain from 0 (the decode
// kernel's order), and the weighted sum over heads is the decode kernel's code (a warp per
// score: lane l sums heads l, l + 32, .. in double, then the same shuffle tree), so every
// score, hence every selection, is bit-identical to idx_select's.
#pragma once

#include <cstdint>

#include "backend/cuda/forward_kernels.h"

namespace ds4::cuda::pre {

// Whether idx_scores_tiled takes these indexer shapes: NI heads a divisor of 128 (a block's
// query-head rows hold whole queries), DI a multiple of 32 (the staged slice).
bool idx_scores_tiled_supported(int64_t NI, int64_t DI);

// For each of `tokens` queries t (ctl[t].pos, n_vis = (pos + 1) / ratio) with n_vis > K:
// scores[t * scores_stride + w] for w < n_vis, as idx_select computes them (q [tokens][NI][DI]
// already through idx_prep_q, wts [tokens][NI] raw head weights, icomp [.][DI]). Queries with
// n_vis <= K are skipped (their selection is all rows; fwd::idx_topk writes it). max_rows:
// an upper bound of every query's n_vis (sizes the grid; rows past a query's n_vis are never
// read for it).
void idx_scores_tiled(const float* q, const float* wts, float wscale, int64_t NI, int64_t DI,
                      const float* icomp, int64_t ratio, int64_t K, int64_t max_rows, float* scores,
                      int64_t scores_stride, const fwd::StepCtl* ctl, int64_t tokens, void* stream);

}  // namespace ds4::cuda::pre
