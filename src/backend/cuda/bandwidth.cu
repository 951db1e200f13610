#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "backend/cuda/bandwidth.h"
#include "backend/cuda/check.h"
#include "backend/cuda/device_attribute.h"

namespace ds4::cuda {
namespace {

__global__ void copy_kernel(const int4* __restrict__ src, int4* __restrict__ dst, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}

}  // namespace

double measure_copy_bandwidth(size_t bytes, int iters) {
  const size_t n = bytes / sizeof(int4);
  int4 *src = nullptr, *dst = nullptr;
  DS4_CUDA_CHECK(cudaMalloc(&src, n * sizeof(int4)));
  DS4_CUDA_CHECK(cudaMalloc(&dst, n * sizeof(int4)));
  DS4_CUDA_CHECK(cudaMemset(src, 1, n * sizeof(int4)));
  const int sms = device_attribute(cudaDevAttrMultiProcessorCount);
  cudaEvent_t a, b;
  DS4_CUDA_CHECK(cudaEventCreate(&a));
  DS4_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<double> gbps;
  for (int it = 0; it < iters + 2; ++it) {
    DS4_CUDA_CHECK(cudaEventRecord(a));
    copy_kernel<<<sms * 8, 512>>>(src, dst, n);
    DS4_CUDA_CHECK(cudaEventRecord(b));
    DS4_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    DS4_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    if (it >= 2) gbps.push_back(2.0 * double(n * sizeof(int4)) / (ms * 1e-3) / 1e9);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaFree(src);
  cudaFree(dst);
  std::sort(gbps.begin(), gbps.end());
  return gbps[gbps.size() / 2];
}

}  // namespace ds4::cuda
