// Kernels of the batched (layer-major) prefill that the one-token kernels of
// forward_kernels.h do not cover. Plain C++ declarations (no CUDA types).
#pragma once

#include <cstdint>

namespace ds4::cuda::pre {

// dst[b][a][c] = src[a][b][c] for a < A, b < B, c < C (floats): regroups the attention output
// [T][G][per_group] into per-group token rows [G][T][per_group] for the grouped o_a GEMMs,
// and their results [G][T][R] back into [T][G][R] for o_b.
void swap_outer(const float* src, float* dst, int64_t A, int64_t B, int64_t C, void* stream);

}  // namespace ds4::cuda::pre
