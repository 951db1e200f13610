// cuBLAS for the prefill's large products: one handle per thread and device, bound to the
// caller's stream on every call. The handle owns a fixed workspace (cublasSetWorkspace), so
// cuBLAS never allocates device memory inside a call: safe between our own allocations and
// inside a stream capture. Usable from .cu and .cpp files (no fmt here; the message of a
// failed call is built in cublas.cpp).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

namespace ds4::cuda {

// This thread's handle for the current device, its stream set to `stream` (nullptr = the
// legacy default stream). Created on first use; lives until the process ends (destroying it
// from a thread_local destructor could run after the CUDA runtime is torn down at exit).
cublasHandle_t cublas_handle(cudaStream_t stream);

// Bytes of the fixed workspace each handle owns (32 MiB: what cuBLAS asks for on Hopper).
inline constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

[[noreturn]] void throw_cublas_error(int status, const char* expr, const char* file, int line);

}  // namespace ds4::cuda

#define DS4_CUBLAS_CHECK(expr)                                                         \
  do {                                                                                 \
    const int ds4_cublas_rc_ = static_cast<int>(expr);                                 \
    if (ds4_cublas_rc_ != 0) ::ds4::cuda::throw_cublas_error(ds4_cublas_rc_, #expr, __FILE__, __LINE__); \
  } while (0)
