// Kernels of the batched prefill (prefill_kernels.h).
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/check.h"
#include "backend/cuda/prefill_kernels.h"

namespace ds4::cuda::pre {
namespace {

constexpr int kThreads = 256;

// One block per (a, b) row of C floats: coalesced reads and writes of whole rows.
__global__ void swap_outer_kernel(const float* src, float* dst, int64_t A, int64_t B, int64_t C) {
  const int64_t row = blockIdx.x;  // a * B + b
  const int64_t a = row / B, b = row % B;
  const float* s = src + row * C;
  float* d = dst + (b * A + a) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) d[c] = s[c];
}

constexpr int kMaxHc = 8;

// Thread i: token i / (E / 4), columns 4 (i % (E / 4)) .. + 3 of every stream. Each output
// is fwd::hc_post's expression: o = post_k * f_d, then o += comb_jk * H_jd for j = 0 .. nc - 1
// (one rounded product, then fused multiply-adds, as nvcc compiles that expression).
__global__ void hc_post_kernel(fwd::HcShape s, const float* f, const float* H_in, const float* post,
                               const float* comb, float* H_out, int64_t n4) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n4) return;
  const int nc = s.nc;
  const int64_t E4 = s.E / 4, t = i / E4, d4 = i % E4;
  const float4* H4 = reinterpret_cast<const float4*>(H_in) + t * nc * E4 + d4;
  float4* O4 = reinterpret_cast<float4*>(H_out) + t * nc * E4 + d4;
  post += t * nc;
  comb += t * nc * nc;
  const float4 fv = reinterpret_cast<const float4*>(f)[t * E4 + d4];
  float4 h[kMaxHc];
#pragma unroll
  for (int j = 0; j < kMaxHc; ++j)
    if (j < nc) h[j] = H4[j * E4];
  for (int k = 0; k < nc; ++k) {
    const float p = post[k];
    float4 o = make_float4(__fmul_rn(p, fv.x), __fmul_rn(p, fv.y), __fmul_rn(p, fv.z), __fmul_rn(p, fv.w));
#pragma unroll
    for (int j = 0; j < kMaxHc; ++j) {
      if (j >= nc) break;
      const float c = comb[j * nc + k];
      o = make_float4(__fmaf_rn(c, h[j].x, o.x), __fmaf_rn(c, h[j].y, o.y), __fmaf_rn(c, h[j].z, o.z),
                      __fmaf_rn(c, h[j].w, o.w));
    }
    O4[k * E4] = o;
  }
}

// ---- HC pre + RMSNorm for a chunk (hc_pre_norm) ----
constexpr unsigned kFull = 0xffffffffu;
constexpr int kHcThreads = 256;   // block of hc_pre_norm_kernel: a token
constexpr int kHcPer = 16;        // float4 of H a thread holds: nc * E <= 16 * 4 * kHcThreads
constexpr int kHcPostThreads = 64;

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// v += shfl_down(v, o) for o = 16 .. 1: the reduction tree of forward_kernels.cu's block sums.
__device__ __forceinline__ double down_tree(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFull, v, o);
  return v;
}

// Block t: token t. Thread tid holds the float4 q = tid + 256 m of the token's H (stream
// q / (E / 4)), i.e. columns 4 (tid + 256 p) .. + 3 of every stream.
//  - Sum of squares: hc_pre_kernel's 1024 threads each sum elements v + 1024 i in ascending
//    i; element 4 q + c of this thread belongs to its thread v = 4 tid + c, so the thread
//    keeps those four sums, and its shuffles by 4, 2, 1 lanes and the sums of its own four
//    replay the shuffle tree by 16, 8, 4, 2, 1 of the 32 threads v of a warp (8 threads
//    here); the 32 warp sums then go through the same last tree.
//  - pre_k, then a = sum_k pre_k H_k from the registers (fwd::hc_pre's fused multiply-adds).
//  - RMSNorm of a as rmsnorm_kernel's 256 threads sum it (thread i: elements i + 256 j),
//    through shared memory.
// mix's post / comb logits are scaled by the RMS factor in place for hc_post_comb_kernel.
// P = E / 1024: float4 per stream and thread (a template parameter, so that h and a stay in
// registers).
template <int P>
__global__ void __launch_bounds__(kHcThreads) hc_pre_norm_kernel(fwd::HcShape s, float* mix, const float* H,
                                                                  const float* base, const float* scale,
                                                                  const float* norm, float* x) {
  extern __shared__ float a_sh[];  // [E]
  __shared__ double part[32];
  __shared__ float pre[kMaxHc];
  __shared__ float r_sh[2];
  const int nc = s.nc, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t t = blockIdx.x, E4 = s.E / 4, n4 = nc * E4, n_mix = static_cast<int64_t>(2 + nc) * nc;
  const float4* H4 = reinterpret_cast<const float4*>(H) + t * n4;
  mix += t * n_mix;
  float4 h[kHcPer];
#pragma unroll
  for (int m = 0; m < kHcPer; ++m) {
    const int64_t q = tid + static_cast<int64_t>(kHcThreads) * m;
    h[m] = q < n4 ? H4[q] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  double v[4] = {0.0, 0.0, 0.0, 0.0};
#pragma unroll
  for (int m = 0; m < kHcPer; ++m) {
    if (tid + static_cast<int64_t>(kHcThreads) * m >= n4) break;
    v[0] += static_cast<double>(h[m].x) * h[m].x;
    v[1] += static_cast<double>(h[m].y) * h[m].y;
    v[2] += static_cast<double>(h[m].z) * h[m].z;
    v[3] += static_cast<double>(h[m].w) * h[m].w;
  }
  for (int o = 4; o > 0; o >>= 1)
#pragma unroll
    for (int c = 0; c < 4; ++c) v[c] += __shfl_down_sync(kFull, v[c], o);
  if (tid % 8 == 0) part[tid / 8] = (v[0] + v[2]) + (v[1] + v[3]);
  __syncthreads();
  if (warp == 0) {
    const double ss = down_tree(part[lane]);
    if (lane == 0) r_sh[0] = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(nc * s.E) + s.rms_eps));
  }
  __syncthreads();
  const float r = r_sh[0];
  if (tid < nc) pre[tid] = sigmoid(scale[0] * (mix[tid] * r) + base[tid]) + s.hc_eps;
  if (tid >= nc && tid < n_mix) mix[tid] = mix[tid] * r;
  __syncthreads();

  float4 a[P];
#pragma unroll
  for (int p = 0; p < P; ++p) {
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int k = 0; k < kHcPer / P; ++k) {
      if (k >= nc) break;
      const float w = pre[k];
      const float4 hv = h[k * P + p];
      acc = make_float4(__fmaf_rn(w, hv.x, acc.x), __fmaf_rn(w, hv.y, acc.y), __fmaf_rn(w, hv.z, acc.z),
                        __fmaf_rn(w, hv.w, acc.w));
    }
    a[p] = acc;
    reinterpret_cast<float4*>(a_sh)[tid + kHcThreads * p] = acc;
  }
  __syncthreads();
  double ss = 0.0;
  for (int64_t i = tid; i < s.E; i += kHcThreads) ss += static_cast<double>(a_sh[i]) * a_sh[i];
  ss = down_tree(ss);
  __syncthreads();  // part is free again
  if (lane == 0) part[warp] = ss;
  __syncthreads();
  if (warp == 0) {
    const double tot = down_tree(lane < kHcThreads / 32 ? part[lane] : 0.0);
    if (lane == 0) r_sh[1] = static_cast<float>(1.0 / sqrt(tot / static_cast<double>(s.E) + s.rms_eps));
  }
  __syncthreads();
  const float r2 = r_sh[1];
  float4* x4 = reinterpret_cast<float4*>(x + t * s.E);
  const float4* n4p = reinterpret_cast<const float4*>(norm);
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int64_t d4 = tid + static_cast<int64_t>(kHcThreads) * p;
    const float4 w = norm ? n4p[d4] : make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    float4 o;
    o.x = norm ? __fmul_rn(__fmul_rn(a[p].x, r2), w.x) : __fmul_rn(a[p].x, r2);
    o.y = norm ? __fmul_rn(__fmul_rn(a[p].y, r2), w.y) : __fmul_rn(a[p].y, r2);
    o.z = norm ? __fmul_rn(__fmul_rn(a[p].z, r2), w.z) : __fmul_rn(a[p].z, r2);
    o.w = norm ? __fmul_rn(__fmul_rn(a[p].w, r2), w.w) : __fmul_rn(a[p].w, r2);
    x4[d4] = o;
  }
}

// Thread t: token t's post weights and its Sinkhorn-normalized comb (hyper_connection.cpp
// sinkhorn: every row and column sum in the CPU's sequential order) from the scaled logits.
__global__ void hc_post_comb_kernel(fwd::HcShape s, const float* mix, const float* base, const float* scale,
                                    float* post, float* comb, int64_t T) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) return;
  const int nc = s.nc, n = nc * nc;
  const float eps = s.hc_eps;
  const float* m = mix + t * (2 + nc) * nc;
  for (int k = 0; k < nc; ++k) post[t * nc + k] = 2.0f * sigmoid(scale[1] * m[nc + k] + base[nc + k]);
  float c[kMaxHc * kMaxHc];
  for (int i = 0; i < n; ++i) c[i] = scale[2] * m[2 * nc + i] + base[2 * nc + i];
  for (int j = 0; j < nc; ++j) {  // row softmax, + eps
    float* row = c + j * nc;
    float mx = row[0];
    for (int k = 1; k < nc; ++k) mx = fmaxf(mx, row[k]);
    float sum = 0.0f;
    for (int k = 0; k < nc; ++k) sum += (row[k] = expf(row[k] - mx));
    for (int k = 0; k < nc; ++k) row[k] = row[k] / sum + eps;
  }
  for (int it = 0; it < s.iters; ++it) {
    if (it > 0) {  // rows (not before the first column pass)
      for (int j = 0; j < nc; ++j) {
        float sum = 0.0f;
        for (int k = 0; k < nc; ++k) sum += c[j * nc + k];
        for (int k = 0; k < nc; ++k) c[j * nc + k] /= (sum + eps);
      }
    }
    for (int k = 0; k < nc; ++k) {  // columns
      float sum = 0.0f;
      for (int j = 0; j < nc; ++j) sum += c[j * nc + k];
      for (int j = 0; j < nc; ++j) c[j * nc + k] /= (sum + eps);
    }
  }
  for (int i = 0; i < n; ++i) comb[t * n + i] = c[i];
}

}  // namespace

void swap_outer(const float* src, float* dst, int64_t A, int64_t B, int64_t C, void* stream) {
  if (A * B == 0 || C == 0) return;
  swap_outer_kernel<<<static_cast<unsigned>(A * B), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(src, dst, A,
                                                                                                       B, C);
  DS4_CUDA_CHECK(cudaGetLastError());
}

bool hc_post_supported(const fwd::HcShape& s) { return s.nc >= 1 && s.nc <= kMaxHc && s.E % 4 == 0; }

void hc_post(const fwd::HcShape& s, const float* f, const float* H_in, const float* post, const float* comb,
             float* H_out, int64_t T, void* stream) {
  DS4_CUDA_CHECK(hc_post_supported(s) ? cudaSuccess : cudaErrorInvalidValue);
  const int64_t n4 = T * (s.E / 4);
  if (n4 == 0) return;
  hc_post_kernel<<<static_cast<unsigned>((n4 + kThreads - 1) / kThreads), kThreads, 0,
                   static_cast<cudaStream_t>(stream)>>>(s, f, H_in, post, comb, H_out, n4);
  DS4_CUDA_CHECK(cudaGetLastError());
}

bool hc_pre_norm_supported(const fwd::HcShape& s) {
  const int64_t P = s.E / (4 * kHcThreads);
  return s.nc >= 1 && s.nc <= kMaxHc && s.E % (4 * kHcThreads) == 0 && (P == 1 || P == 2 || P == 4) &&
         s.nc * P <= kHcPer;
}

void hc_pre_norm(const fwd::HcShape& s, float* mix, const float* H, const float* base, const float* scale,
                 const float* norm, float* x, float* post, float* comb, int64_t T, void* stream) {
  DS4_CUDA_CHECK(hc_pre_norm_supported(s) ? cudaSuccess : cudaErrorInvalidValue);
  if (T == 0) return;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const size_t smem = static_cast<size_t>(s.E) * sizeof(float);
  const unsigned blocks = static_cast<unsigned>(T);
  switch (s.E / (4 * kHcThreads)) {
    case 1: hc_pre_norm_kernel<1><<<blocks, kHcThreads, smem, st>>>(s, mix, H, base, scale, norm, x); break;
    case 2: hc_pre_norm_kernel<2><<<blocks, kHcThreads, smem, st>>>(s, mix, H, base, scale, norm, x); break;
    default: hc_pre_norm_kernel<4><<<blocks, kHcThreads, smem, st>>>(s, mix, H, base, scale, norm, x); break;
  }
  DS4_CUDA_CHECK(cudaGetLastError());
  hc_post_comb_kernel<<<static_cast<unsigned>((T + kHcPostThreads - 1) / kHcPostThreads), kHcPostThreads, 0, st>>>(
      s, mix, base, scale, post, comb, T);
  DS4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ds4::cuda::pre
