#include "backend/cuda/check.h"

#include <cuda_runtime_api.h>

#include "core/error.h"

namespace ds4::cuda {

void throw_cuda_error(int code, const char* expr, const char* file, int line) {
  const auto err = static_cast<cudaError_t>(code);
  fail("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(err), cudaGetErrorString(err), expr,
       file, line);
}

}  // namespace ds4::cuda
