// Kernels of the batched prefill (prefill_kernels.h).
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/check.h"
#include "backend/cuda/prefill_kernels.h"

namespace ds4::cuda::pre {
namespace {

constexpr int kThreads = 256;

// One block per (a, b) row of C floats: coalesced reads and writes of whole rows.
__global__ void swap_outer_kernel(const float* src, float* dst, int64_t A, int64_t B, int64_t C) {
  const int64_t row = blockIdx.x;  // a * B + b
  const int64_t a = row / B, b = row % B;
  const float* s = src + row * C;
  float* d = dst + (b * A + a) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) d[c] = s[c];
}

}  // namespace

void swap_outer(const float* src, float* dst, int64_t A, int64_t B, int64_t C, void* stream) {
  if (A * B == 0 || C == 0) return;
  swap_outer_kernel<<<static_cast<unsigned>(A * B), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(src, dst, A,
                                                                                                       B, C);
  DS4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ds4::cuda::pre
