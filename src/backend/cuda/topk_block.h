// Block-wide exact top-k by radix select, for .cu files (internal to the CUDA backend; the
// public entry point is topk.h). One block of kTopkThreads threads selects the k largest of n
// values in the order (value desc, index asc) -- the order of model::topk_lower_index and of
// gen::Sampler's filters, ties kept by the lower index -- in five passes over the values:
//   1-3. radix select of the k-th largest key on 11 + 11 + 10 bit digits (shared-memory
//        histograms of the keys that still match the prefix found so far), giving the
//        threshold key T and how many of the values equal to T are needed;
//   4.   every key > T and the first `need` keys == T go into a list of exactly k entries
//        (when more keys equal T than are needed -- a tie straddles the cut -- tile by tile in
//        index order, a block scan counting the ties before each thread);
//   5.   bitonic sort of the list by (value desc, index asc) in shared memory.
// Work is O(n / threads) per pass whatever the data (ties included), against O(n^2 / threads)
// for the rank counting it replaces. n must fit in 32 bits; k <= kTopkMaxK.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ds4::cuda::topk_detail {

constexpr int kTopkThreads = 1024;
constexpr int kTopkMaxK = 2048;
constexpr int kTopkBins = 2048;  // the widest digit (11 bits)

// Order-preserving key: a > b as floats <=> key(a) > key(b). -0 maps to +0's key, since the two
// compare equal (and so tie by index). NaN has no place in the order; it sorts above +inf.
__device__ __forceinline__ uint32_t topk_key(float x) {
  const uint32_t b = __float_as_uint(x == 0.0f ? 0.0f : x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// f(i, load(i)) for this thread's indices i = threadIdx.x + j * blockDim.x < n, in increasing
// order. One block is latency-bound on its loads, so they are issued kBatch at a time.
template <class Load, class F>
__device__ __forceinline__ void for_each_value(const Load& load, int64_t n, F&& f) {
  constexpr int kBatch = 8;
  const int64_t nt = blockDim.x;
  int64_t i = threadIdx.x;
  for (; i + (kBatch - 1) * nt < n; i += kBatch * nt) {
    float v[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) v[b] = load(i + b * nt);
#pragma unroll
    for (int b = 0; b < kBatch; ++b) f(i + b * nt, v[b]);
  }
  for (; i < n; i += nt) f(i, load(i));
}

struct TopkShared {
  uint32_t hist[kTopkBins];
  unsigned long long list[kTopkMaxK];  // (~key << 32 | index): ascending = value desc, index asc
  uint32_t warp_total[32];
  uint32_t found_bin, found_above, found_count, n_list;
};

// Exclusive prefix sum of v over the block (in thread order); *total = the sum of all v.
__device__ __forceinline__ uint32_t topk_block_scan(uint32_t v, uint32_t* warp_total, uint32_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  uint32_t x = v;
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) warp_total[warp] = x;
  __syncthreads();
  if (warp == 0) {
    uint32_t t = lane < nw ? warp_total[lane] : 0u;
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t y = __shfl_up_sync(0xffffffffu, t, o);
      if (lane >= o) t += y;
    }
    if (lane < nw) warp_total[lane] = t;  // inclusive sums of the warps
  }
  __syncthreads();
  const uint32_t before = warp == 0 ? 0u : warp_total[warp - 1];
  *total = warp_total[nw - 1];
  __syncthreads();  // warp_total is reused by the next call
  return before + x - v;
}

// sel[0..k) = indices of the k largest load(i), i < n, by (value desc, index asc); k <= n.
// Every thread of a block of kTopkThreads must call it with the same arguments.
template <class Load>
__device__ void block_topk(const Load& load, int64_t n, int k, int32_t* sel, TopkShared& sh) {
  if (k <= 0) return;
  const int tid = threadIdx.x, nt = blockDim.x;
  uint32_t prefix = 0, mask = 0, need = static_cast<uint32_t>(k);
  constexpr int kShift[3] = {21, 10, 0};  // digits from the top: 11, 11 and 10 bits
  constexpr int kBits[3] = {11, 11, 10};
#pragma unroll
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = kShift[pass];
    const uint32_t nb = 1u << kBits[pass];
    for (uint32_t b = tid; b < nb; b += nt) sh.hist[b] = 0;
    __syncthreads();
    for_each_value(load, n, [&](int64_t, float v) {
      const uint32_t u = topk_key(v);
      if ((u & mask) == prefix) atomicAdd(&sh.hist[(u >> shift) & (nb - 1)], 1u);
    });
    __syncthreads();
    // Thread t owns bins nb-1-t*per .. (descending); find the bin holding the need-th key.
    const uint32_t per = (nb + nt - 1) / nt;
    uint32_t local = 0;
    for (uint32_t j = 0; j < per; ++j) {
      const uint32_t pos = tid * per + j;
      if (pos < nb) local += sh.hist[nb - 1 - pos];
    }
    uint32_t total = 0;
    uint32_t above = topk_block_scan(local, sh.warp_total, &total);
    for (uint32_t j = 0; j < per; ++j) {
      const uint32_t pos = tid * per + j;
      if (pos >= nb) break;
      const uint32_t c = sh.hist[nb - 1 - pos];
      if (above < need && need <= above + c) {
        sh.found_bin = nb - 1 - pos;
        sh.found_above = above;
        sh.found_count = c;
      }
      above += c;
    }
    __syncthreads();
    prefix |= sh.found_bin << shift;
    mask |= (nb - 1) << shift;
    need -= sh.found_above;
    __syncthreads();  // found_* are rewritten by the next pass
  }

  // prefix is the k-th largest key; take every larger key and the first `need` equal ones.
  // found_count keys equal it: when all of them are needed (no tie across the cut, the usual
  // case), any order of collection will do; else the ties are ranked in index order.
  const bool all_equal_taken = sh.found_count == need;
  if (tid == 0) sh.n_list = 0;
  __syncthreads();
  if (all_equal_taken) {
    for_each_value(load, n, [&](int64_t i, float v) {
      const uint32_t u = topk_key(v);
      if (u >= prefix) {
        const uint32_t slot = atomicAdd(&sh.n_list, 1u);
        sh.list[slot] = (static_cast<unsigned long long>(~u) << 32) | static_cast<uint32_t>(i);
      }
    });
  }
  uint32_t eq_before = 0;
  for (int64_t base = 0; !all_equal_taken && base < n; base += nt) {
    const int64_t i = base + tid;
    const uint32_t u = i < n ? topk_key(load(i)) : 0u;
    const bool gt = i < n && u > prefix, eq = i < n && u == prefix;
    uint32_t eq_total = 0;
    const uint32_t eq_rank = eq_before + topk_block_scan(eq ? 1u : 0u, sh.warp_total, &eq_total);
    if (gt || (eq && eq_rank < need)) {
      const uint32_t slot = atomicAdd(&sh.n_list, 1u);
      sh.list[slot] = (static_cast<unsigned long long>(~u) << 32) | static_cast<uint32_t>(i);
    }
    eq_before += eq_total;
  }
  __syncthreads();

  int p = 1;
  while (p < k) p <<= 1;
  for (int j = k + tid; j < p; j += nt) sh.list[j] = ~0ull;
  for (int size = 2; size <= p; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      __syncthreads();
      for (int j = tid; j < p; j += nt) {
        const int partner = j ^ stride;
        if (partner <= j) continue;
        const unsigned long long a = sh.list[j], b = sh.list[partner];
        if ((a > b) == ((j & size) == 0)) {
          sh.list[j] = b;
          sh.list[partner] = a;
        }
      }
    }
  }
  __syncthreads();
  for (int j = tid; j < k; j += nt) sel[j] = static_cast<int32_t>(sh.list[j] & 0xffffffffull);
  __syncthreads();  // sh may be reused by the caller
}

struct ArrayLoad {
  const float* v;
  __device__ float operator()(int64_t i) const { return v[i]; }
};

}  // namespace ds4::cuda::topk_detail
