// Kernels of the batched (layer-major) prefill that the one-token kernels of
// forward_kernels.h do not cover. Plain C++ declarations (no CUDA types).
#pragma once

#include <cstdint>

#include "backend/cuda/forward_kernels.h"

namespace ds4::cuda::pre {

// dst[b][a][c] = src[a][b][c] for a < A, b < B, c < C (floats): regroups the attention output
// [T][G][per_group] into per-group token rows [G][T][per_group] for the grouped o_a GEMMs,
// and their results [G][T][R] back into [T][G][R] for o_b.
void swap_outer(const float* src, float* dst, int64_t A, int64_t B, int64_t C, void* stream);

// hyper_connection.cpp hc_post for T tokens: H_out[t][k][d] = post[t][k] * f[t][d] +
// sum_j comb[t][j][k] * H_in[t][j][d] (f: [T][E], H_in / H_out: [T][nc][E], post: [T][nc],
// comb: [T][nc][nc]), the arithmetic of fwd::hc_post (the same bits), with a thread per four
// columns d of a token computing all nc streams from one read of each input (fwd::hc_post's
// thread per output reads H_in nc times). Needs E % 4 == 0 and 16-byte aligned rows.
bool hc_post_supported(const fwd::HcShape& s);
void hc_post(const fwd::HcShape& s, const float* f, const float* H_in, const float* post, const float* comb,
             float* H_out, int64_t T, void* stream);

// hyper_connection.cpp hc_pre after the fn product, then the RMSNorm (3.2), for T tokens:
// from the raw mixing logits mix [T][(2 + nc) * nc] and the state H [T][nc][E], the
// normalized input x [T][E] = RMSNorm(sum_k pre_k H_k) * norm, post [T][nc] and the
// Sinkhorn-normalized comb [T][nc][nc]. mix is overwritten (its post / comb logits scaled by
// the RMS factor). Two launches: a block per token reads H once (the sum of squares, the
// collapse from registers, the RMSNorm through shared memory; no `a` round trip through
// global memory), then a thread per token runs post and Sinkhorn. Every sum is that of
// fwd::hc_pre + fwd::rmsnorm (the same partial sums and reduction trees), so the results
// are the same bits. Needs E % 1024 == 0 and nc * E <= 16384 (Flash; not Pro's 4 x 7168).
bool hc_pre_norm_supported(const fwd::HcShape& s);
void hc_pre_norm(const fwd::HcShape& s, float* mix, const float* H, const float* base, const float* scale,
                 const float* norm, float* x, float* post, float* comb, int64_t T, void* stream);

}  // namespace ds4::cuda::pre
