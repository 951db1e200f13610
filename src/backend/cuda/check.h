// Error checking usable from .cu files. nvcc cannot compile fmt's consteval format strings,
// so .cu files include only this header; the message is built in check.cpp (host compiler).
#pragma once

namespace ds4::cuda {
[[noreturn]] void throw_cuda_error(int code, const char* expr, const char* file, int line);
// Throws ds4::Error with `message` (for .cu files' argument checks, which cannot use fmt).
[[noreturn]] void throw_error(const char* message);
}

#define DS4_CUDA_CHECK(expr)                                                   \
  do {                                                                         \
    const int ds4_cuda_rc_ = static_cast<int>(expr);                           \
    if (ds4_cuda_rc_ != 0) ::ds4::cuda::throw_cuda_error(ds4_cuda_rc_, #expr, __FILE__, __LINE__); \
  } while (0)
