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

// ---- The same scores on the tensor cores (official numerics: FP4-simulated q and keys)
//
// In official numerics both the queries (idx_prep_q) and the indexer's compressed rows
// (Hadamard + FP4 in comp_emit) hold, per block of 32 dims, e2m1 values times a power of two.
// Each block is then an integer code vector (|code| < 16) times a power-of-two unit u, and a
// dot product is sum over blocks b of u_q[b] * u_k[b] * I_b with I_b an exact int8 product
// (mma m16n8k32 s8, s32 sums). When a row's nonzero blocks span at most 2^4 in unit (both
// sides), every partial sum of the dot, in any order, has fewer than 24 significant bits, so
// idx_select's float FMA chain is exact and the tensor-core form gives the same float bits.
// A row for which that is not shown (values off the FP4 grid, a wider span, units outside
// 2^-60 .. 2^60) is marked inexact, and the scoring kernel recomputes its dot products with
// idx_select's FMA chain. The weighted head sum is idx_select's code. So every score is
// bit-identical to idx_select's, whatever the inputs (inexact rows only cost time).

// The integer form of `rows` rows of DI dims (DI a multiple of 32).
struct IdxCodes {
  int8_t* code = nullptr;     // [rows][DI]
  float* unit = nullptr;      // [rows][DI / 32]: the block's power of two (0: an all-zero block)
  uint8_t* inexact = nullptr; // [rows]: 1 = take the float FMA chain
  int64_t DI = 0;
  IdxCodes from_row(int64_t r) const { return {code + r * DI, unit + r * (DI / 32), inexact + r, DI}; }
};

// Device bytes of the integer form of `rows` rows, and the view of such a buffer.
int64_t idx_codes_bytes(int64_t rows, int64_t DI);
IdxCodes idx_codes_view(void* mem, int64_t rows, int64_t DI);

// Whether idx_scores_tc takes these shapes: idx_scores_tiled's, and DI <= 128.
bool idx_scores_tc_supported(int64_t NI, int64_t DI);

// The integer form of x [rows][DI] into out (rows out.from_row(0) .. rows - 1).
void idx_codes(const float* x, int64_t rows, IdxCodes out, void* stream);

// idx_scores_tiled's contract (the same scores, bit for bit) from the integer forms of the
// queries (qc: rows t * NI + h of the `tokens` queries) and of the compressed rows (kc: rows
// 0 .. max_rows - 1); q and icomp are their float values, read for inexact rows.
void idx_scores_tc(const IdxCodes& qc, const float* q, const float* wts, float wscale, int64_t NI,
                   const IdxCodes& kc, const float* icomp, int64_t ratio, int64_t K, int64_t max_rows,
                   float* scores, int64_t scores_stride, const fwd::StepCtl* ctl, int64_t tokens,
                   void* stream);

}  // namespace ds4::cuda::pre
