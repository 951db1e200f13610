#include "backend/cuda/check.h"

#include <cuda_runtime_api.h>

#include <map>
#include <mutex>
#include <utility>

#include "backend/cuda/device_attribute.h"
#include "core/error.h"

namespace ds4::cuda {

void throw_cuda_error(int code, const char* expr, const char* file, int line) {
  const auto err = static_cast<cudaError_t>(code);
  fail("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(err), cudaGetErrorString(err), expr,
       file, line);
}

void throw_error(const char* message) { fail("{}", message); }

int device_attribute(cudaDeviceAttr attr) {
  static std::mutex mu;
  static std::map<std::pair<int, int>, int> cache;  // (device, attribute) -> value
  int dev = 0;
  DS4_CUDA_CHECK(cudaGetDevice(&dev));
  const std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(dev, static_cast<int>(attr));
  if (const auto it = cache.find(key); it != cache.end()) return it->second;
  int v = 0;
  DS4_CUDA_CHECK(cudaDeviceGetAttribute(&v, attr, dev));
  cache.emplace(key, v);
  return v;
}

}  // namespace ds4::cuda
