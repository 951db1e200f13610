// Hopper (sm_90) one-dimensional bulk copies global -> shared memory (the TMA engine's
// cp.async.bulk) completed on shared-memory mbarriers. Internal to the CUDA backend; include
// from .cu files only, and call only from code compiled for __CUDA_ARCH__ >= 900.
//
// Why: a warp that streams weights through registers has one ~2 KiB chunk in flight and pays
// a DRAM round trip per chunk; one thread can instead request several whole chunks with one
// instruction each, straight into shared memory, without holding registers for them.
//
// Protocol for one buffer with its barrier (initialized by bulk_barrier_init with count 1):
// one thread calls bulk_load (it arms the barrier with the byte count, then starts the copy);
// every reader waits with bulk_wait(bar, parity), parity being the number of earlier loads
// into that buffer mod 2. A buffer is refilled only after all its readers are done with it
// (for a warp-private buffer: __syncwarp() before the next bulk_load).
#pragma once

#include <cstdint>

namespace ds4::cuda {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// L2 policy for data read once (weights): evict first, as __ldcs does for ordinary loads. Also
// used by the cp.async (sm_80) rings of the MoE kernels, hence outside the sm_90 block.
__device__ __forceinline__ uint64_t l2_evict_first_policy() {
  uint64_t policy = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
#endif
  return policy;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

// Initializes an mbarrier that completes a phase on one arrival plus its armed bytes, and
// makes the initialization visible to the copy engine (async proxy).
__device__ __forceinline__ void bulk_barrier_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(bar)) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}


// Copies `bytes` (a multiple of 16; both addresses 16-byte aligned) from global `src` to
// shared `dst` and arrives on `bar` when they have landed. One thread calls it.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar,
                                          uint64_t policy) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;" ::
          "r"(smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar)), "l"(policy)
      : "memory");
}

// Waits until the barrier's phase with this parity has completed (the bytes are visible).
__device__ __forceinline__ void bulk_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}" :
        "=r"(done) : "r"(smem_addr(bar)), "r"(parity) : "memory");
  }
}

#endif

}  // namespace ds4::cuda
