// One block walks the vocabulary a few times (adjust, argmax, candidates, top-k, log-sum-exp):
// ~129K floats stay in L2 between the passes, and one block keeps every reduction in a fixed
// order without a second launch. The float operations that must match the CPU sampler
// (penalties, bias, the min-p floor) are written with explicit _rn intrinsics so that nvcc
// cannot contract them.
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cmath>

#include "backend/cuda/check.h"
#include "backend/cuda/sampling.h"
#include "backend/cuda/topk_block.h"

namespace ds4::cuda::sampling_detail {
namespace {

using topk_detail::kTopkThreads;

// Candidates keep their logit; everything else reads as -inf (below every candidate).
struct CandidateLoad {
  const float* l;
  float prefilter;
  __device__ float operator()(int64_t i) const {
    const float v = l[i];
    return v > -INFINITY && v >= prefilter ? v : -INFINITY;
  }
};

__device__ bool better(float a, int ia, float b, int ib) { return a > b || (a == b && ia < ib); }

// Block-wide (value desc, index asc) maximum; every thread gets it.
__device__ void block_argmax(float& v, int& idx, float* sv, int* si) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_down_sync(0xffffffffu, v, o);
    const int oi = __shfl_down_sync(0xffffffffu, idx, o);
    if (better(ov, oi, v, idx)) {
      v = ov;
      idx = oi;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = idx;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < nw; ++w)
      if (better(sv[w], si[w], sv[0], si[0])) {
        sv[0] = sv[w];
        si[0] = si[w];
      }
  }
  __syncthreads();
  v = sv[0];
  idx = si[0];
}

__device__ double block_sum(double v, double* part) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int w = 0; w < nw; ++w) t += part[w];
    part[0] = t;
  }
  __syncthreads();
  return part[0];
}

__global__ void __launch_bounds__(kTopkThreads) reduce_kernel(Args a) {
  __shared__ topk_detail::TopkShared sh;
  __shared__ float sv[32];
  __shared__ int si[32];
  __shared__ double sd[32];
  const int tid = threadIdx.x, nt = blockDim.x;
  const int64_t n = a.n;
  Header* h = reinterpret_cast<Header*>(a.out);
  Entry* top = reinterpret_cast<Entry*>(a.out + kHeaderBytes);
  Entry* cand = top + (a.logprobs_top > 0 ? a.logprobs_top : 0);
  auto finish = [&](int32_t status) {
    if (tid == 0) h->status = status;
  };

  // Steps 1-2 (Sampler::adjust_logits) on a copy.
  const float* l = a.logits;
  if (a.n_pen + a.n_bias > 0) {
    for (int64_t i = tid; i < n; i += nt) a.work[i] = a.logits[i];
    __syncthreads();
    for (int j = tid; j < a.n_pen; j += nt) {
      const int t = a.pen_tok[j];
      float v = a.work[t];
      v = v > 0.0f ? __fdiv_rn(v, a.repetition_penalty) : __fmul_rn(v, a.repetition_penalty);
      a.work[t] = __fsub_rn(v, a.pen_sub[j]);
    }
    __syncthreads();
    for (int j = tid; j < a.n_bias; j += nt) {
      const int t = a.bias_tok[j];
      const float b = a.bias[j];
      a.work[t] = b == -INFINITY ? -INFINITY : __fadd_rn(a.work[t], b);
    }
    __syncthreads();
    l = a.work;
  }

  // Maximum and validity (Sampler::filter's first pass).
  float best = -INFINITY;
  int bi = INT_MAX;
  bool nan = false;
  topk_detail::for_each_value(topk_detail::ArrayLoad{l}, n, [&](int64_t i, float v) {
    if (v > best) {
      best = v;
      bi = static_cast<int>(i);
    } else if (isnan(v)) {
      nan = true;
    }
  });
  nan = __syncthreads_or(nan);
  block_argmax(best, bi, sv, si);
  if (tid == 0) {
    h->max = best;
    h->argmax = bi;
    h->n_cand = 0;
    h->all_candidates = 1;
  }
  if (nan) return finish(kNan);
  if (bi == INT_MAX) return finish(kAllBanned);
  if (best == INFINITY) return finish(kPosInf);

  if (!a.greedy) {
    float prefilter = -INFINITY;
    if (a.floor_offset != -INFINITY) {
      const double f = __dadd_rn(static_cast<double>(best), a.floor_offset);
      prefilter = f < -static_cast<double>(FLT_MAX) ? -INFINITY : __double2float_rn(f);
    }
    // The candidates, in no particular order (the host puts them in id order).
    if (tid == 0) sh.n_list = 0;
    __syncthreads();
    topk_detail::for_each_value(topk_detail::ArrayLoad{l}, n, [&](int64_t i, float v) {
      if (v > -INFINITY && v >= prefilter) {
        const uint32_t slot = atomicAdd(&sh.n_list, 1u);
        if (slot < static_cast<uint32_t>(a.max_cand)) cand[slot] = Entry{v, static_cast<int32_t>(i)};
      }
    });
    __syncthreads();
    const uint32_t count = sh.n_list;
    __syncthreads();  // sh is reused by block_topk
    if (count <= static_cast<uint32_t>(a.max_cand)) {
      if (tid == 0) h->n_cand = static_cast<int32_t>(count);
    } else if (a.top_k > 0 && a.top_k <= a.max_cand && a.top_k <= topk_detail::kTopkMaxK) {
      topk_detail::block_topk(CandidateLoad{l, prefilter}, n, a.top_k, a.ids, sh);
      for (int j = tid; j < a.top_k; j += nt) cand[j] = Entry{l[a.ids[j]], a.ids[j]};
      if (tid == 0) {
        h->n_cand = a.top_k;
        h->all_candidates = 0;
      }
    } else {
      return finish(kTooMany);
    }
  }

  if (a.logprobs_top >= 0) {
    // logprobs.cpp on the raw logits: max, sum of exp(l - max) in double, the best tokens.
    float m = -INFINITY;
    bool bad = false;
    topk_detail::for_each_value(topk_detail::ArrayLoad{a.logits}, n, [&](int64_t, float v) {
      bad |= isnan(v) || v == INFINITY;
      m = fmaxf(m, v);
    });
    bad = __syncthreads_or(bad);
    int mi = 0;
    block_argmax(m, mi, sv, si);
    if (bad || m == -INFINITY) return finish(kBadRaw);
    double s = 0.0;
    topk_detail::for_each_value(topk_detail::ArrayLoad{a.logits}, n, [&](int64_t, float v) {
      s += exp(static_cast<double>(v) - static_cast<double>(m));
    });
    s = block_sum(s, sd);
    if (tid == 0) {
      h->lse_max = m;
      h->lse_log_sum = log(s);
    }
    const int k = static_cast<int64_t>(a.logprobs_top) < n ? a.logprobs_top : static_cast<int>(n);
    if (k > 0) {
      topk_detail::block_topk(topk_detail::ArrayLoad{a.logits}, n, k, a.ids, sh);
      for (int j = tid; j < k; j += nt) top[j] = Entry{a.logits[a.ids[j]], a.ids[j]};
    }
  }
  finish(kOk);
}

}  // namespace

void launch_reduce(const Args& a, void* stream) {
  reduce_kernel<<<1, kTopkThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
  DS4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ds4::cuda::sampling_detail
