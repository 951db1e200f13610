#include "backend/cuda/decision_log.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/check.h"

namespace ds4::cuda::fwd {

namespace {

__global__ void copy_to_step_slot_kernel(const int32_t* src, int64_t n, int32_t* dst, int64_t stride,
                                         const StepCtl* ctl) {
  int32_t* out = dst + static_cast<int64_t>(ctl->index) * stride;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = src[i];
}

}  // namespace

void copy_to_step_slot(const int32_t* src, int64_t n, int32_t* dst, int64_t stride, const StepCtl* ctl,
                       void* stream) {
  if (n <= 0) return;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 64));
  copy_to_step_slot_kernel<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(src, n, dst, stride, ctl);
  DS4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ds4::cuda::fwd
