// Exact top-k selection on the GPU (radix select, topk_block.h): the order of
// model::topk_lower_index -- value desc, ties by the lower index -- for any n up to 2^31 and
// k <= kTopkMaxK. Used by the indexer's row selection (forward_kernels.cu, with the row count
// read from device memory) and by the GPU sampler (sampling.cu).
#pragma once

#include <cstdint>

namespace ds4::cuda {

inline constexpr int64_t kTopkMaxK = 2048;

// d_sel[0..min(k, n)) = indices of the largest d_values[0..n), best first. One block; runs on
// `stream` (nullptr: the default stream) without synchronizing.
void topk_select(const float* d_values, int64_t n, int64_t k, int32_t* d_sel, void* stream);

}  // namespace ds4::cuda
