// Attention with sinks (architecture.md 3.4.8) of a batched prefill chunk on the tensor cores.
// Plain C++ declarations (no CUDA types), like forward_kernels.h.
//
// V4 attention is MQA-like: every head of a query attends over the same rows (K = V = the
// row). One CTA takes one query and 16 * m heads of it as the M dimension of mma.sync
// m16n8k16 products, walks the query's rows in tiles of 32 staged in shared memory, and keeps
// an online softmax (max and sum in float, started at the sink: max = sink, sum = 1):
// S = Q K^T, P = exp(S - max), O += P V, then o = O / sum, de-rotated at the query position.
//
// Precision: fp16 inputs alone would lose too much (11-bit mantissas), so every operand x is
// split into x = hi + lo, both fp16 (hi = fp16(x), lo = fp16(x - hi)), and each product is
// hi.hi + hi.lo + lo.hi with f32 accumulation (3 MMAs; the dropped lo.lo is ~2^-22 of the
// product). The result agrees with the float kernels to ~1e-6 relative (measured in
// tests/cuda/test_prefill_attention.cpp). Inputs must stay inside fp16's range (|x| < 65504;
// the queries are RMS-normed heads, the rows normed KV rows, the probabilities <= 1).
//
// Rows whose lo halves are all zero in a block of 64 dims of a tile (FP8-simulated rows:
// E4M3 values times powers of two, exact in fp16) skip the hi.lo product there (v2, the
// default; DS4_CUDA_NO_PREFILL_ATTN_V2=1 = the first kernel): it adds exact zeros, so the
// bits are the same.
//
// A query's result depends only on its own inputs (one CTA per query and head group, a fixed
// order of every sum), so it does not depend on which other queries share the launch.
#pragma once

#include <cstdint>

#include "backend/cuda/forward_kernels.h"

namespace ds4::cuda::fwd {

// Whether prefill_attention takes this shape: D == 512, NH a multiple of 16, n_rope even
// and <= D, and the device's shared memory holds a CTA's tiles. Otherwise use attention()
// (the CUDA-core kernel), e.g. for the small fixture and demo models.
bool prefill_attention_supported(const AttnShape& s);

// attention() for `tokens` queries (ctl [tokens], q and o [tokens][NH][D], sel
// [tokens][sel_stride], n_sel [tokens]) in one launch and without scratch: the same rows per
// query (its raw window from the ring, then the compressed rows: the selection, or all
// (pos + 1) / ratio when sel is null, none when ratio == 0), the same sinks and de-rotation.
void prefill_attention(const AttnShape& s, const float* q, const float* ring, const float* comp,
                       const int32_t* sel, const int32_t* n_sel, int64_t sel_stride,
                       const float* sinks, const float* omega, float* o, const StepCtl* ctl,
                       int64_t tokens, void* stream);

}  // namespace ds4::cuda::fwd
