// Programmatic dependent launch (PDL, compute capability 9.0+) for the kernels of a decode
// step. Internal to the CUDA backend; include from .cu files only.
//
// A decode step is ~30 small kernels per layer in one stream (captured in a CUDA graph). With
// plain launches each kernel starts only after its predecessor has fully drained, so every
// launch pays the block scheduling ramp and the predecessor's tail (a few microseconds each,
// comparable to the work of the small kernels). A kernel launched with launch_pdl may be
// scheduled while its predecessor still runs; it must then call pdl_enter() before it reads
// anything the predecessor (or any earlier kernel) wrote. Stream capture keeps these
// programmatic edges in the graph (CUDA >= 12.3).
//
// The rule that keeps this correct: EVERY kernel launched with launch_pdl calls pdl_enter()
// first, in every thread, before any early return. pdl_enter waits until the previous
// kernel has completed and its writes are visible; since that kernel did the same, all
// earlier kernels have completed too. A kernel launched the ordinary way (<<<>>>, memcpy)
// after or before one of these keeps the ordinary full serialization.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <utility>

namespace ds4::cuda {

// Waits for the predecessor kernel (griddepcontrol.wait), then lets the next kernel in the
// stream be scheduled (griddepcontrol.launch_dependents): its blocks may then become
// resident and wait in their own pdl_enter while this kernel runs, hiding the launch ramp.
// Both are no-ops when the kernel was not launched with PDL and on pre-sm_90 code.
__device__ __forceinline__ void pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// For a kernel whose dependents read its output before their own pdl_enter (the decode
// attention reads the indexer's selection and the compressed rows early): pdl_wait at the
// start, pdl_trigger_after_writes at the end in every thread (no thread may return before
// it), so that the next kernel is scheduled only once this one's writes are visible.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger_after_writes() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __threadfence();
  __syncthreads();
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// DS4_CUDA_NO_PDL set in the environment launches the same kernels without the attribute
// (plain stream order; pdl_enter is then a no-op): an A/B switch for measurements.
inline bool pdl_enabled() {
  static const bool on = std::getenv("DS4_CUDA_NO_PDL") == nullptr;
  return on;
}

// The launch attribute that allows programmatic stream serialization (launches add it only
// while pdl_enabled()).
inline cudaLaunchAttribute pdl_attribute() {
  cudaLaunchAttribute a{};
  a.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  a.val.programmaticStreamSerializationAllowed = 1;
  return a;
}

// kernel<<<grid, block, smem, stream>>>(args...) with programmatic stream serialization
// allowed. Returns the launch's error code (the caller checks it as for a plain launch).
template <class... KernelArgs, class... Args>
cudaError_t launch_pdl(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args&&... args) {
  cudaLaunchAttribute attr[1] = {pdl_attribute()};
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace ds4::cuda
