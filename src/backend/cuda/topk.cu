#include "backend/cuda/topk.h"

#include <cuda_runtime.h>

#include "backend/cuda/check.h"
#include "backend/cuda/topk_block.h"

namespace ds4::cuda {
namespace {

static_assert(kTopkMaxK == topk_detail::kTopkMaxK);

__global__ void __launch_bounds__(topk_detail::kTopkThreads)
    topk_kernel(const float* values, int64_t n, int k, int32_t* sel) {
  __shared__ topk_detail::TopkShared sh;
  topk_detail::block_topk(topk_detail::ArrayLoad{values}, n, k, sel, sh);
}

}  // namespace

void topk_select(const float* d_values, int64_t n, int64_t k, int32_t* d_sel, void* stream) {
  if (n < 0 || k < 0 || k > kTopkMaxK || n > INT32_MAX)
    DS4_CUDA_CHECK(cudaErrorInvalidValue);
  const int64_t m = k < n ? k : n;
  if (m == 0) return;
  topk_kernel<<<1, topk_detail::kTopkThreads, 0, static_cast<cudaStream_t>(stream)>>>(d_values, n,
                                                                                   static_cast<int>(m), d_sel);
  DS4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ds4::cuda
