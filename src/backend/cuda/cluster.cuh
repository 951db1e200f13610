// Thread-block cluster primitives (compute capability 9.0+) for kernels whose blocks exchange
// data through distributed shared memory. Internal to the CUDA backend; include from .cu files
// only. On pre-sm_90 code they are empty (rank 0, the own address): the host launches a
// cluster kernel only after checking the device (cudaOccupancyMaxActiveClusters).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ds4::cuda {

// barrier.cluster in two halves: every thread of every block of the cluster arrives (release:
// its earlier writes, shared memory included, become visible) and later waits (acquire) until
// all have arrived. A thread must wait before it arrives again. `.aligned`: all threads of a
// warp execute the same call.
__device__ __forceinline__ void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}
// This block's rank in its cluster.
__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
#endif
  return r;
}
// The address of the same shared variable in block `rank` of the cluster (generic address).
template <class T>
__device__ __forceinline__ const T* cluster_peer(const T* p, unsigned rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint64_t out;
  asm volatile("mapa.u64 %0, %1, %2;" : "=l"(out) : "l"(reinterpret_cast<uint64_t>(p)), "r"(rank));
  return reinterpret_cast<const T*>(out);
#else
  (void)rank;
  return p;
#endif
}

// The launch attribute that makes a grid clusters of cs blocks along x.
inline cudaLaunchAttribute cluster_attribute(unsigned cs) {
  cudaLaunchAttribute a{};
  a.id = cudaLaunchAttributeClusterDimension;
  a.val.clusterDim.x = cs;
  a.val.clusterDim.y = 1;
  a.val.clusterDim.z = 1;
  return a;
}

}  // namespace ds4::cuda
