#include "backend/cuda/cublas.h"

#include <map>

#include "backend/cuda/check.h"
#include "core/error.h"

namespace ds4::cuda {

void throw_cublas_error(int status, const char* expr, const char* file, int line) {
  fail("cuBLAS error {} ({}) in {} at {}:{}", status,
       cublasGetStatusString(static_cast<cublasStatus_t>(status)), expr, file, line);
}

namespace {
struct ThreadHandle {
  cublasHandle_t handle = nullptr;
  void* workspace = nullptr;
};
}  // namespace

cublasHandle_t cublas_handle(cudaStream_t stream) {
  // Per thread, per device: a handle must not be used by two threads at once, and it belongs
  // to the device that was current when it was created. Intentionally never destroyed.
  thread_local std::map<int, ThreadHandle> handles;
  int dev = 0;
  DS4_CUDA_CHECK(cudaGetDevice(&dev));
  ThreadHandle& h = handles[dev];
  if (h.handle == nullptr) {
    DS4_CUBLAS_CHECK(cublasCreate(&h.handle));
    DS4_CUDA_CHECK(cudaMalloc(&h.workspace, kCublasWorkspaceBytes));
    DS4_CUBLAS_CHECK(cublasSetWorkspace(h.handle, h.workspace, kCublasWorkspaceBytes));
  }
  DS4_CUBLAS_CHECK(cublasSetStream(h.handle, stream));
  return h.handle;
}

}  // namespace ds4::cuda
