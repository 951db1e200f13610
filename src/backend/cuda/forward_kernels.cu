// Forward-pass kernels besides the weight products (forward_kernels.h). Deliberately simple:
// one block per vector (norms, heads, rows), one warp per dot product, reductions in double
// where the CPU reference sums in double. Decode is memory bound on the weights; these
// kernels touch kilobytes, so clarity wins over cleverness here.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstdint>
#include <utility>

#include "backend/cuda/check.h"
#include "backend/cuda/cluster.cuh"
#include "backend/cuda/device_attribute.h"
#include "backend/cuda/forward_kernels.h"
#include "backend/cuda/matvec_launch.h"
#include "backend/cuda/pdl.h"
#include "backend/cuda/product_math.cuh"
#include "backend/cuda/quantize_act.cuh"
#include "backend/cuda/topk_block.h"
#include "quant/blocks.h"

namespace ds4::cuda::fwd {
namespace {

constexpr int kThreads = 256;
static_assert(kThreads / 32 == kAttnHeads && kAttnChunk == 32, "attention: a warp per head, a lane per row");
constexpr unsigned kFull = 0xffffffffu;

cudaStream_t st(void* s) { return static_cast<cudaStream_t>(s); }

// Preconditions the callers (gpu_session.cpp, tests) establish; a violation is reported as
// cudaErrorInvalidValue with the condition's text.
#define DS4_FWD_REQUIRE(cond) DS4_CUDA_CHECK((cond) ? cudaSuccess : cudaErrorInvalidValue)

__device__ double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFull, v, o);
  return v;
}
__device__ float warp_sum_f(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(kFull, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
__device__ double block_sum_d(double v) {
  __shared__ double part[32];
  __syncthreads();  // part may still be read by a previous call
  v = warp_sum_d(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double t = lane < nw ? part[lane] : 0.0;
    t = warp_sum_d(t);
    if (lane == 0) part[0] = t;
  }
  __syncthreads();
  return part[0];
}

// Global loads with kStageBatch per thread in flight: for i = first, first + step, ... < n,
// store(i, load(i)), the loads of a batch all issued before its stores. A plain copy loop
// (`dst[i] = src[i]` in a strided loop) may do one global round trip per iteration: the
// compiler does not hoist the next load (through a generic pointer, e.g. a row pointer read
// from shared memory) above a store it might alias, so attention's 16 float4 per thread could
// be 16 serial trips to L2 / DRAM. The same values are stored either way. The kernels below
// use it where the A/B switch `batched_loads()` allows (the indexer's scoring kernel does not:
// measured 0.4 us slower with it, its q pointer is a kernel argument the compiler can see).
constexpr int kStageBatch = 8;
template <class Load, class Store>
__device__ __forceinline__ void copy_batched(int64_t first, int64_t n, int64_t step, Load load, Store store) {
  using T = decltype(load(int64_t{0}));
  for (int64_t i0 = first; i0 < n; i0 += kStageBatch * step) {
    T v[kStageBatch];
#pragma unroll
    for (int j = 0; j < kStageBatch; ++j) {
      const int64_t i = i0 + j * step;
      if (i < n) v[j] = load(i);
    }
#pragma unroll
    for (int j = 0; j < kStageBatch; ++j) {
      const int64_t i = i0 + j * step;
      if (i < n) store(i, v[j]);
    }
  }
}
// copy_batched over the block's threads (i = threadIdx.x, += blockDim.x).
template <class Load, class Store>
__device__ __forceinline__ void stage_batched(int64_t n, Load load, Store store) {
  copy_batched(threadIdx.x, n, blockDim.x, load, store);
}

__device__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

// numerics_sim.cpp, bit for bit (powers of two are exact, rintf rounds half to even).
__device__ float pow2_ceil(float r) {
  int e = 0;
  const float m = frexpf(r, &e);
  return ldexpf(1.0f, m == 0.5f ? e - 1 : e);
}
__device__ float e4m3_round(float v) {
  const float a = fabsf(v);
  float step = ldexpf(1.0f, -9);
  if (a >= ldexpf(1.0f, -6)) {
    int e = 0;
    frexpf(a, &e);
    step = ldexpf(1.0f, e - 1 - 3);
  }
  float q = __fmul_rn(rintf(__fdiv_rn(a, step)), step);
  q = fminf(q, 448.0f);
  return copysignf(q, v);
}
__device__ float e2m1_round(float v) {
  const float vals[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float a = fminf(fabsf(v), 6.0f);
  int best = 0;
  for (int c = 1; c < 8; ++c) {
    const float dc = fabsf(a - vals[c]), db = fabsf(a - vals[best]);
    if (dc < db || (dc == db && (c % 2 == 0) && (best % 2 != 0))) best = c;
  }
  return copysignf(vals[best], v);
}
// The simulated low-precision round trip of x[0..n) in blocks of bs <= 64 elements
// (numerics_sim.cpp fp8_roundtrip / fp4_roundtrip, bit for bit), a warp per block: lane l holds
// elements l and l + 32. The block's amax is a shuffle max (a max is exact in any order; the
// CPU's starts from 0, as the absent lanes' zeros do) and each element is rounded on its own,
// so the values are the CPU's. (One thread per block walked its 64 elements serially before:
// ~13 us of a ~16 us launch at Flash's KV row, on the decode step's critical path.)
// qmax: 448 (FP8 e4m3) or 6 (FP4 e2m1); floor_amax keeps the scale finite for an all-zero block.
template <class Round>
__device__ void round_trip_blocks(float* x, int64_t n, int bs, float qmax, float floor_amax, Round round) {
  const int lane = threadIdx.x & 31;
  const int64_t nb = (n + bs - 1) / bs;
  for (int64_t b = threadIdx.x >> 5; b < nb; b += blockDim.x >> 5) {
    float* blk = x + b * bs;
    const int64_t len = n - b * bs < bs ? n - b * bs : bs;
    const bool has0 = lane < len, has1 = lane + 32 < len;
    const float v0 = has0 ? blk[lane] : 0.0f, v1 = has1 ? blk[lane + 32] : 0.0f;
    float amax = fmaxf(fabsf(v0), fabsf(v1));
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(kFull, amax, o));
    amax = fmaxf(amax, floor_amax);
    const float s = pow2_ceil(__fdiv_rn(amax, qmax));
    auto trip = [&](float v) { return __fmul_rn(s, round(fminf(fmaxf(__fdiv_rn(v, s), -qmax), qmax))); };
    if (has0) blk[lane] = trip(v0);
    if (has1) blk[lane + 32] = trip(v1);
  }
}
__device__ void fp8_blocks(float* x, int64_t n) {
  round_trip_blocks(x, n, 64, 448.0f, 1e-4f, [](float v) { return e4m3_round(v); });
}
__device__ void fp4_blocks(float* x, int64_t n) {
  round_trip_blocks(x, n, 32, 6.0f, 6.0f * ldexpf(1.0f, -126), [](float v) { return e2m1_round(v); });
}

// RoPE of the last n_rope dims of r[0..d) at position pos (rope.cpp rotate).
__device__ void rope_row(float* r, int64_t d, int64_t n_rope, const float* omega, int64_t pos,
                         bool inverse) {
  float* t = r + (d - n_rope);
  const float p = static_cast<float>(pos);
  for (int64_t i = threadIdx.x; i < n_rope / 2; i += blockDim.x) {
    const float theta = __fmul_rn(omega[i], p);
    const float c = cosf(theta), s = inverse ? -sinf(theta) : sinf(theta);
    const float x0 = t[2 * i], x1 = t[2 * i + 1];
    t[2 * i] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    t[2 * i + 1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
  }
  __syncthreads();
}

// Q8_0 activation blocks of x[0..n) (n a multiple of QK8_0), a warp per block; x was
// written by the block (synchronized before the call).
__device__ void quantize_q8_0_span(const float* x, int64_t n, BlockQ8_0Act* act) {
  const int lane = threadIdx.x & 31;
  for (int64_t b = threadIdx.x >> 5; b < n / QK8_0; b += blockDim.x >> 5) {
    const float v[1] = {x[b * QK8_0 + lane]};
    quantize_q8_0_act_warp<1>(v, act + b);
  }
}

// Norm, RoPE and simulation of one row held in shared memory by the whole block.
__device__ void finish_row(const RowFinish& f, const float* omega, float* r, int64_t pos) {
  const int64_t d = f.d;
  if (f.do_norm) {
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) ss += static_cast<double>(r[i]) * r[i];
    ss = block_sum_d(ss);
    const float inv = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(d) + f.eps));
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
      r[i] = f.norm ? __fmul_rn(__fmul_rn(r[i], inv), f.norm[i]) : __fmul_rn(r[i], inv);
    __syncthreads();
  }
  if (f.n_rope > 0) rope_row(r, d, f.n_rope, omega, pos, false);
  if (f.sim == Sim::Fp8Nope) {
    fp8_blocks(r, f.n_nope);
    __syncthreads();
  } else if (f.sim == Sim::HadamardFp4) {
    // Natural-order fast Walsh-Hadamard transform, stage by stage as numerics_sim.cpp.
    for (int64_t h = 1; h < d; h *= 2) {
      for (int64_t p = threadIdx.x; p < d / 2; p += blockDim.x) {
        const int64_t i = (p / h) * 2 * h + (p % h);
        const float a = r[i], b = r[i + h];
        r[i] = __fadd_rn(a, b);
        r[i + h] = __fsub_rn(a, b);
      }
      __syncthreads();
    }
    const float scale = 1.0f / sqrtf(static_cast<float>(d));
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) r[i] = __fmul_rn(r[i], scale);
    __syncthreads();
    fp4_blocks(r, d);
    __syncthreads();
  }
}

// ---- kernels ----

// rows_finish_jobs' jobs, passed by value.
struct RowsJobs {
  RowsJob job[kMaxRowsJobs];
};

__global__ void step_begin_kernel(StepCtl* ctl, const int32_t* tokens) {
  pdl_enter();
  ctl->token = tokens[ctl->index];
}
__global__ void step_end_kernel(StepCtl* ctl) {
  pdl_enter();
  ctl->pos += 1;
  ctl->index += 1;
}

__global__ void embed_kernel(int type, const uint8_t* table, size_t row_bytes, int64_t E, int nc,
                             const StepCtl* ctl, float* H) {
  pdl_enter();
  ctl += blockIdx.y;  // token blockIdx.y of a batch (rows of nc * E floats)
  H += blockIdx.y * nc * E;
  const uint8_t* row = table + static_cast<size_t>(ctl->token) * row_bytes;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < E; i += gridDim.x * blockDim.x) {
    float v = 0.0f;
    if (type == 0) {
      v = reinterpret_cast<const float*>(row)[i];
    } else if (type == 1) {
      v = __half2float(reinterpret_cast<const __half*>(row)[i]);
    } else if (type == 2) {
      const uint32_t bits = static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(row)[i]) << 16;
      v = __uint_as_float(bits);
    } else {  // Q8_0: 34-byte blocks {fp16 d, int8 q[32]}
      const uint8_t* blk = row + (i / 32) * 34;
      const uint16_t dbits = static_cast<uint16_t>(blk[0] | (blk[1] << 8));
      const float dd = __half2float(__ushort_as_half(dbits));
      v = __fmul_rn(dd, static_cast<float>(static_cast<int8_t>(blk[2 + i % 32])));
    }
    for (int s = 0; s < nc; ++s) H[s * E + i] = v;
  }
}

__global__ void rmsnorm_kernel(const float* x, const float* w, float* y, int64_t n, float eps) {
  pdl_enter();
  const float* xr = x + blockIdx.x * n;
  float* yr = y + blockIdx.x * n;
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += static_cast<double>(xr[i]) * xr[i];
  ss = block_sum_d(ss);
  const float r = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(n) + eps));
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    yr[i] = w ? __fmul_rn(__fmul_rn(xr[i], r), w[i]) : __fmul_rn(xr[i], r);
}

__device__ float hc_inv_rms(const float* H, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += static_cast<double>(H[i]) * H[i];
  ss = block_sum_d(ss);
  return static_cast<float>(1.0 / sqrt(ss / static_cast<double>(n) + eps));
}

constexpr int kMaxHc = 8;

// Sinkhorn (hyper_connection.cpp sinkhorn) on an nc x nc matrix (nc <= 8) held in the
// registers of one warp: lane e holds elements e and e + 32 (row-major index j * nc + k). A
// row or column sum gathers its nc elements by shuffles and adds them in the CPU's
// sequential order, so each value is what the CPU computes up to expf's rounding; the
// divisions of a pass run on all elements at once instead of one lane per row walking
// shared memory (the previous version: ~7 us of the ~40 us of an HC pre call).
// kNc > 0: nc is known at compile time (nc_rt ignored), so the gathers and sums unroll and a
// lane's row and column are shifts: the same operations in the same order, a shorter chain of
// dependent instructions in the 20 serial iterations. kNc == 0: nc = nc_rt.
template <int kNc>
__device__ void sinkhorn_warp(float (&c)[2], int nc_rt, int iters, float eps) {
  const int nc = kNc > 0 ? kNc : nc_rt;
  const int lane = threadIdx.x & 31, n = nc * nc;
  const int slots = n > 32 ? 2 : 1;  // warp-uniform: nc <= 5 needs one value per lane
  auto elem = [&](int idx) {  // element idx of the matrix, from whichever lane holds it
    const float lo = __shfl_sync(kFull, c[0], idx & 31);
    const float hi = slots == 2 ? __shfl_sync(kFull, c[1], idx & 31) : 0.0f;
    return idx < 32 ? lo : hi;
  };
  auto row_sum = [&](int j) {
    float t = 0.0f;
    for (int k = 0; k < nc; ++k) t += elem(j * nc + k);
    return t;
  };
  auto col_sum = [&](int k) {
    float t = 0.0f;
    for (int j = 0; j < nc; ++j) t += elem(j * nc + k);
    return t;
  };
  int row[2], col[2];  // of the lane's two elements (element 0 stands in past n)
  for (int t = 0; t < slots; ++t) {
    const int e = lane + 32 * t < n ? lane + 32 * t : 0;
    row[t] = e / nc;
    col[t] = e % nc;
  }
  // Row softmax: max, exp, the row's sequential sum, then / sum + eps. Every pass reads all
  // the values it needs before any lane updates its own (a row may straddle slots 0 and 1).
  float mx[2], sum[2];
  for (int t = 0; t < slots; ++t) {
    mx[t] = elem(row[t] * nc);
    for (int k = 1; k < nc; ++k) mx[t] = fmaxf(mx[t], elem(row[t] * nc + k));
  }
  for (int t = 0; t < slots; ++t) c[t] = expf(c[t] - mx[t]);
  for (int t = 0; t < slots; ++t) sum[t] = row_sum(row[t]);
  for (int t = 0; t < slots; ++t) c[t] = c[t] / sum[t] + eps;
  for (int it = 0; it < iters; ++it) {
    if (it > 0) {  // row normalization (skipped before the first column pass)
      for (int t = 0; t < slots; ++t) sum[t] = row_sum(row[t]);
      for (int t = 0; t < slots; ++t) c[t] /= (sum[t] + eps);
    }
    for (int t = 0; t < slots; ++t) sum[t] = col_sum(col[t]);
    for (int t = 0; t < slots; ++t) c[t] /= (sum[t] + eps);
  }
}


// post of hyper_connection.cpp hc_pre and the Sinkhorn's input c (lane e: elements e and
// e + 32, zero past nc * nc) from the raw mix values and the RMS factor r, by one whole warp.
__device__ void hc_post_comb_input_warp(const HcShape& s, const float* mix, float r, const float* base,
                                        const float* scale, float* post, float (&c)[2]) {
  const int nc = s.nc, lane = threadIdx.x & 31;
  if (lane < nc) post[lane] = 2.0f * sigmoidf_(scale[1] * (mix[nc + lane] * r) + base[nc + lane]);
  for (int t = 0; t < 2; ++t) {
    const int e = lane + 32 * t;
    c[t] = e < nc * nc ? scale[2] * (mix[2 * nc + e] * r) + base[2 * nc + e] : 0.0f;
  }
}
__device__ __forceinline__ void store_comb_warp(int nc, const float (&c)[2], float* comb) {
  const int lane = threadIdx.x & 31;
  for (int t = 0; t < 2; ++t)
    if (lane + 32 * t < nc * nc) comb[lane + 32 * t] = c[t];
}

// post and comb (Sinkhorn-normalized) of hyper_connection.cpp hc_pre from the raw mix
// values and the RMS factor r, by one whole warp (kNc: as in sinkhorn_warp).
template <int kNc>
__device__ void hc_post_comb_warp(const HcShape& s, const float* mix, float r, const float* base,
                                  const float* scale, float* post, float* comb) {
  float c[2];
  hc_post_comb_input_warp(s, mix, r, base, scale, post, c);
  sinkhorn_warp<kNc>(c, s.nc, s.iters, s.hc_eps);
  store_comb_warp(s.nc, c, comb);
}

// The Sinkhorn of a comb that the HC pre left as its input (HcPreExtras::defer_sinkhorn), in
// place, by one warp: hc_post_comb_warp's second half (the input went through memory as a
// float, unchanged), so the same bits as an HC pre that ran it itself.
template <int kNc>
__device__ void comb_sinkhorn_warp(const HcShape& s, float* comb) {
  const int n = s.nc * s.nc, lane = threadIdx.x & 31;
  float c[2];
  for (int t = 0; t < 2; ++t) c[t] = lane + 32 * t < n ? comb[lane + 32 * t] : 0.0f;
  sinkhorn_warp<kNc>(c, s.nc, s.iters, s.hc_eps);
  store_comb_warp(s.nc, c, comb);
}
template <int kNc>
__global__ void hc_comb_sinkhorn_kernel(HcShape s, float* comb) {
  pdl_enter();
  comb_sinkhorn_warp<kNc>(s, comb);
}
// A CombJob's Sinkhorn by warp 0 of the calling block (after its pdl_enter).
__device__ void comb_job_warp(const CombJob& j) {
  if (threadIdx.x >= 32) return;
  if (j.s.nc == 4) comb_sinkhorn_warp<4>(j.s, j.comb);
  else comb_sinkhorn_warp<0>(j.s, j.comb);
}


__global__ void hc_pre_kernel(HcShape s, const float* mix_raw, const float* H, const float* base,
                              const float* scale, float* a, float* post, float* comb) {
  pdl_enter();
  __shared__ float pre[kMaxHc];
  const int nc = s.nc;
  const int64_t tk = blockIdx.y;  // token of a batch: one block each
  mix_raw += tk * (2 + nc) * nc;
  H += tk * nc * s.E;
  a += tk * s.E;
  post += tk * nc;
  comb += tk * nc * nc;
  const float r = hc_inv_rms(H, nc * s.E, s.rms_eps);
  const int t = threadIdx.x;
  if (t < nc) pre[t] = sigmoidf_(scale[0] * (mix_raw[t] * r) + base[t]) + s.hc_eps;
  if (threadIdx.x < 32) hc_post_comb_warp<0>(s, mix_raw, r, base, scale, post, comb);
  __syncthreads();
  for (int64_t d = threadIdx.x; d < s.E; d += blockDim.x) {
    float acc = 0.0f;
    for (int k = 0; k < nc; ++k) acc += pre[k] * H[k * s.E + d];
    a[d] = acc;
  }
}

// ---- fused HC pre + RMSNorm (hc_pre_fused, hc_post_pre_fused, hc_head_fused) ----
constexpr int kHcCols = 256;                     // fn columns per block of the first launch (= its block size)
constexpr int kHcApplyThreads = 1024;            // block size of the second launch: a warp per mix value
constexpr int64_t kHcOut = 4 * kHcApplyThreads;  // outputs per block of the second launch (a float4 per thread)
static_assert(kHcCols == kThreads, "hc_mix_kernel: one column per thread");

// Byte layout of the fused scratch (host and device agree on it): the one-launch kernel's
// arrival counter (first, so that it is at the same place for every n_mix; zero between
// calls), then the per-block sums of squares (double) and partial fn products (n_mix per block).
struct HcLayout {
  int64_t nb = 0, nb2 = 0, n_mix = 0;
  size_t arrivals = 0, ss_a = 0, part = 0, total = 0;
  __host__ __device__ HcLayout(const HcShape& s, int64_t mix_rows) {
    n_mix = mix_rows;
    nb = (s.nc * s.E + kHcCols - 1) / kHcCols;
    nb2 = (s.E + kHcOut - 1) / kHcOut;
    arrivals = 0;
    ss_a = 16;
    part = ss_a + static_cast<size_t>(nb) * 8;
    total = part + static_cast<size_t>(nb * n_mix) * 4;
  }
};
// Rows of an HC pre's fn: pre weights, post weights, the nc x nc combination (3.2).
__host__ __device__ int64_t hc_pre_mix_rows(const HcShape& s) { return static_cast<int64_t>(2 + s.nc) * s.nc; }

// Element i = k * E + d of hc_post's output: post[k] * f[d] + sum_j comb[j][k] * H_in[j][d].
// hc_post_kernel and the fused first launch both call this, so they produce the same bits.
__device__ __forceinline__ float hc_post_elem(const HcShape& s, const HcPostIn& p, int64_t i) {
  const int nc = s.nc;
  const int k = static_cast<int>(i / s.E);
  const int64_t d = i % s.E;
  float o = p.post[k] * p.f[d];
  for (int j = 0; j < nc; ++j) o += p.comb[j * nc + k] * p.H_in[j * s.E + d];
  return o;
}

// A 16-bit float fn weight (wtype 1: F16, 2: BF16) from its bits.
__device__ __forceinline__ float fn_weight_16(uint32_t bits, int wtype) {
  return wtype == 1 ? __half2float(__ushort_as_half(static_cast<unsigned short>(bits))) : __uint_as_float(bits << 16);
}
// Weight i of a float fn row (wtype 0: F32, 1: F16, 2: BF16).
__device__ __forceinline__ float fn_weight(const uint8_t* row, int wtype, int64_t i) {
  return wtype == 0 ? reinterpret_cast<const float*>(row)[i]
                    : fn_weight_16(reinterpret_cast<const uint16_t*>(row)[i], wtype);
}

// Launch 1: block b takes columns [b * kHcCols, ...) of the nc*E: its sum of squares of H
// (double) and the n_mix partial fn products (one warp per fn row). No tail: launch 2 sums.
// With kPost the block first computes its columns of the state as hc_post(p) and writes them
// to H_post (the state the next hc_post reads); else it reads H. The rest is the same code.
template <bool kPost>
__global__ void __launch_bounds__(kHcCols) hc_mix_kernel(HcShape s, int64_t n_mix, int wtype, const uint8_t* fn,
                                                         const float* H, HcPostIn p, float* H_post, uint8_t* scr) {
  pdl_enter();
  const HcLayout L(s, n_mix);
  double* ss_a = reinterpret_cast<double*>(scr + L.ss_a);
  float* part = reinterpret_cast<float*>(scr + L.part);
  __shared__ float h[kHcCols];  // the block's columns of H
  const int64_t ncols = s.nc * s.E;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kHcCols;
  const int64_t c1 = c0 + kHcCols < ncols ? c0 + kHcCols : ncols;
  double ss = 0.0;
  const int64_t c = c0 + threadIdx.x;
  if (c < c1) {
    float v;
    if constexpr (kPost) {
      v = hc_post_elem(s, p, c);
      H_post[c] = v;
    } else {
      v = H[c];
    }
    h[threadIdx.x] = v;
    ss = static_cast<double>(v) * v;
  }
  ss = block_sum_d(ss);  // its barriers also publish h
  if (threadIdx.x == 0) ss_a[blockIdx.x] = ss;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const size_t es = wtype == 0 ? 4 : 2;
  for (int64_t m = warp; m < n_mix; m += nw) {
    const uint8_t* row = fn + static_cast<size_t>(m) * static_cast<size_t>(ncols) * es;
    float acc = 0.0f;
    for (int64_t cc = c0 + lane; cc < c1; cc += 32) {
      acc += fn_weight(row, wtype, cc) * h[cc - c0];
    }
    acc = warp_sum_f(acc);
    if (lane == 0) part[blockIdx.x * n_mix + m] = acc;
  }
}

// The pre weight of stream k from the reduced mix value and the RMS factor r: the HC pre's
// sigmoid(scale * (mix * r) + base) + eps, or the head's sigmoid(scale * r * mix + base) + eps
// (each in its CPU reference's operation order).
template <bool kHead>
__device__ __forceinline__ float hc_pre_weight(const HcShape& s, const float* mix, float r, const float* base,
                                               const float* scale, int k) {
  return kHead ? sigmoidf_(scale[0] * r * mix[k] + base[k]) + s.hc_eps
               : sigmoidf_(scale[0] * (mix[k] * r) + base[k]) + s.hc_eps;
}
// x = RMSNorm(a) * norm for a float4 of outputs (rn: the inverse RMS; nw: their norm weights,
// unused without has_norm).
__device__ __forceinline__ float4 hc_normed4(float4 v, float rn, bool has_norm, float4 nw) {
  auto one = [&](float e, float n) { return has_norm ? __fmul_rn(__fmul_rn(e, rn), n) : __fmul_rn(e, rn); };
  return make_float4(one(v.x, nw.x), one(v.y, nw.y), one(v.z, nw.z), one(v.w, nw.w));
}
// a = sum_k pre_k H_k for a float4 of outputs (streams in order from 0, as the CPU adds them),
// with its squares added to ss (x, y, z, w).
template <int kS>
__device__ __forceinline__ float4 hc_collapse4(const float (&pre)[kS], const float4 (&h)[kS], int nc, double& ss) {
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
  for (int k = 0; k < kS; ++k) {
    if (k >= nc) break;
    acc.x += pre[k] * h[k].x;
    acc.y += pre[k] * h[k].y;
    acc.z += pre[k] * h[k].z;
    acc.w += pre[k] * h[k].w;
  }
  ss += static_cast<double>(acc.x) * acc.x;
  ss += static_cast<double>(acc.y) * acc.y;
  ss += static_cast<double>(acc.z) * acc.z;
  ss += static_cast<double>(acc.w) * acc.w;
  return acc;
}

// Launch 2 of an HC pre (kHead false: nb2 blocks of kHcOut outputs plus one block for post
// and Sinkhorn, which only hc_post needs, so it runs beside the normalization instead of
// before it) or of the output head's collapse (kHead: the nb2 output blocks, pre weights
// sigmoid(scale * r * mix + base), no post, comb or a). Every block first reduces launch 1's
// partials in the same fixed order (a warp per mix value, lane l adding blocks l, l + 32, ...
// then a fixed shuffle tree), so all blocks hold identical values without a grid-wide
// hand-off. An output block then computes a = sum_k pre_k H_k for ALL E outputs (nc * E
// floats from L2, a float4 per stream and thread; cheaper than a grid-wide barrier) to get
// the RMSNorm's sum of squares in one fixed order, and writes a and x = RMSNorm(a) * norm
// for its own kHcOut outputs. Its first H loads are issued before the partials are reduced
// (they do not depend on them), so the two L2 round trips overlap. Needs E % 4 == 0.
template <bool kHead>
__global__ void __launch_bounds__(kHcApplyThreads) hc_apply_kernel(HcShape s, int64_t n_mix, const float* H,
                                                                   const float* base, const float* scale,
                                                                   const float* norm, float* a, float* x, float* post,
                                                                   float* comb, const uint8_t* scr) {
  pdl_enter();
  const HcLayout L(s, n_mix);
  const double* ss_a = reinterpret_cast<const double*>(scr + L.ss_a);
  const float* part = reinterpret_cast<const float*>(scr + L.part);
  const int nc = s.nc;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const bool comb_block = !kHead && blockIdx.x == L.nb2;
  const int64_t E4 = s.E / 4;
  const float4* H4 = reinterpret_cast<const float4*>(H);
  float4 h[kMaxHc];
  auto load_h = [&](int64_t d4) {
#pragma unroll
    for (int k = 0; k < kMaxHc; ++k)
      if (k < nc) h[k] = H4[k * E4 + d4];
  };
  if (!comb_block && threadIdx.x < E4) load_h(threadIdx.x);
  __shared__ float mix[(2 + kMaxHc) * kMaxHc];
  __shared__ float r_sh;
  const int64_t need = comb_block ? n_mix : nc;
  for (int64_t i = warp; i < need; i += nw) {
    float v = 0.0f;
    for (int64_t b = lane; b < L.nb; b += 32) v += part[b * n_mix + i];
    v = warp_sum_f(v);
    if (lane == 0) mix[i] = v;
  }
  if (warp == nw - 1) {
    double t = 0.0;
    for (int64_t b = lane; b < L.nb; b += 32) t += ss_a[b];
    t = warp_sum_d(t);
    if (lane == 0) r_sh = static_cast<float>(1.0 / sqrt(t / static_cast<double>(nc * s.E) + s.rms_eps));
  }
  __syncthreads();
  const float r = r_sh;
  if (comb_block) {
    if (warp == 0) hc_post_comb_warp<0>(s, mix, r, base, scale, post, comb);
    return;
  }
  // Loops over the streams run to kMaxHc, unrolled, so that pre and h stay in registers.
  float pre[kMaxHc];
#pragma unroll
  for (int k = 0; k < kMaxHc; ++k)
    if (k < nc) pre[k] = hc_pre_weight<kHead>(s, mix, r, base, scale, k);
  const int64_t mine = static_cast<int64_t>(blockIdx.x) * kHcApplyThreads + threadIdx.x;  // float4 index
  float4 a_mine = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  double ss = 0.0;
  for (int64_t d4 = threadIdx.x; d4 < E4; d4 += blockDim.x) {
    if (d4 != threadIdx.x) load_h(d4);
    const float4 acc = hc_collapse4(pre, h, nc, ss);
    if (d4 == mine) a_mine = acc;
  }
  ss = block_sum_d(ss);
  if (mine >= E4) return;
  const float rn = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(s.E) + s.rms_eps));
  if (a) reinterpret_cast<float4*>(a)[mine] = a_mine;
  const int64_t d = 4 * mine;
  const float4 norm4 =
      norm ? make_float4(norm[d], norm[d + 1], norm[d + 2], norm[d + 3]) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  reinterpret_cast<float4*>(x)[mine] = hc_normed4(a_mine, rn, norm != nullptr, norm4);
}

// ---- The HC pre in one launch (hc_pre_fused, hc_post_pre_fused, hc_head_fused; DS4_CUDA_NO_HC_V3=1:
// the two launches above) ----
// The two launches cost 14.4 us per call in a CUDA graph at Flash's 4 x 4096 (H200; ncu alone:
// 6.5 us + 14.7 us): a launch boundary, the first launch's fn rows loaded after pdl_enter in
// 2-byte steps, and the second launch's serial chain (partials from L2, Sinkhorn with nc at run
// time). This one launch: 7.8 us per call in a graph (ncu alone 12.0 us). Here block b does
// hc_mix_kernel's work for its kHcCols columns, with its fn weights (kHcLaneCols consecutive
// columns per lane: one 16-byte load per F16 row) requested before pdl_enter: weights are never
// written by a kernel, so their DRAM latency overlaps the predecessor's tail. The last block to
// arrive (a counter in the scratch, set back to zero by that block) then does hc_apply_kernel's
// work: its column warps reduce the partials, collapse the streams and normalize (a float4 per
// stream and slot), while one more warp (the comb warp) runs post and Sinkhorn beside them.
constexpr int kHcColWarps = kHcCols / 32;
constexpr int kHcOneThreads = kHcCols + 32;        // the column warps and the comb warp
constexpr int kHcLaneCols = kHcCols / 32;          // consecutive fn columns per lane (8)
constexpr int kHcEarlyRows = 3;                    // fn rows per column warp loaded before pdl_enter (n_mix 24 at nc 4)
constexpr int kHcSlots = 4;                        // float4 outputs per column thread in the last block
constexpr int64_t kHcOneMaxE = 4 * kHcSlots * kHcCols;  // largest E of the one-launch path (4096)

// The kHcLaneCols weights of fn row m at columns [cb, cb + cnt) as floats, zero past cnt: one
// (16-bit types) or two (F32) 16-byte loads when vec (a whole chunk, 16-byte aligned rows).
__device__ __forceinline__ void fn_lane_chunk(const uint8_t* fn, int wtype, int64_t ncols, int64_t m, int64_t cb,
                                              int cnt, bool vec, float (&w)[kHcLaneCols]) {
  static_assert(kHcLaneCols == 8, "one uint4 of 16-bit weights per lane");
  const size_t es = wtype == 0 ? 4 : 2;
  const uint8_t* row = fn + static_cast<size_t>(m) * static_cast<size_t>(ncols) * es;
  if (vec) {
    const uint4* p = reinterpret_cast<const uint4*>(row + static_cast<size_t>(cb) * es);
    if (wtype == 0) {
      const uint4 u0 = p[0], u1 = p[1];
      const uint32_t b[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
#pragma unroll
      for (int j = 0; j < 8; ++j) w[j] = __uint_as_float(b[j]);
    } else {
      const uint4 u = p[0];
      const uint32_t b[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        w[2 * j] = fn_weight_16(b[j] & 0xffffu, wtype);
        w[2 * j + 1] = fn_weight_16(b[j] >> 16, wtype);
      }
    }
  } else {
#pragma unroll
    for (int j = 0; j < kHcLaneCols; ++j) w[j] = j < cnt ? fn_weight(row, wtype, cb + j) : 0.0f;
  }
}

// Barrier of the column warps only (named barrier 1; __syncthreads is barrier 0), so the comb
// warp's Sinkhorn does not hold up the normalization.
__device__ __forceinline__ void column_warps_sync() {
  asm volatile("bar.sync 1, %0;" ::"r"(kHcCols) : "memory");
}

// kPost: hc_post(p) -> H_post first (as hc_mix_kernel<true>); kHead: the head's collapse (n_mix =
// nc, no post / comb / a); kNc: nc at compile time (4) or from s (0). E / 4 <= kHcSlots * kHcCols.
// xq (E % 128 == 0): x also as Q8_0 activation blocks; defer: comb left as the Sinkhorn's input
// (HcPreExtras).
// The values: the same hc_post, sums of squares and sigmoids as the two launches; the fn
// partials in another fixed order (a lane adds its 8 consecutive columns), so mix and what
// follows from it may differ from the two-launch path in the last bits.
template <bool kPost, bool kHead, int kNc>
__global__ void __launch_bounds__(kHcOneThreads)
    hc_pre_one_launch_kernel(HcShape s, int64_t n_mix, int wtype, const uint8_t* fn, const float* H, HcPostIn p,
                             float* H_post, const float* base, const float* scale, const float* norm, float* a,
                             float* x, float* post, float* comb, uint8_t* scr, BlockQ8_0Act* xq, bool defer) {
  constexpr int kS = kNc > 0 ? kNc : kMaxHc;  // streams the unrolled loops cover
  const int nc = kNc > 0 ? kNc : s.nc;
  const HcLayout L(s, n_mix);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool comb_warp = warp == kHcColWarps;
  const int64_t ncols = nc * s.E, E4 = s.E / 4;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kHcCols;
  const int64_t c1 = c0 + kHcCols < ncols ? c0 + kHcCols : ncols;
  const int64_t cb = c0 + kHcLaneCols * lane;  // the lane's first fn column
  const int cnt = c1 - cb <= 0 ? 0 : c1 - cb < kHcLaneCols ? static_cast<int>(c1 - cb) : kHcLaneCols;
  const size_t es = wtype == 0 ? 4 : 2;
  const bool vec = cnt == kHcLaneCols && (static_cast<size_t>(ncols) * es) % 16 == 0 &&
                   (reinterpret_cast<uintptr_t>(fn) & 15) == 0;
  // Before pdl_enter, weights only (no kernel writes them): the column warps' first fn rows,
  // the comb warp's base and scale into shared memory (the last block's sigmoids and Sinkhorn
  // read them there).
  __shared__ float base_sh[(2 + kMaxHc) * kMaxHc], scale_sh[3];
  float w[kHcEarlyRows][kHcLaneCols];
  if (!comb_warp) {
#pragma unroll
    for (int i = 0; i < kHcEarlyRows; ++i) {
      const int64_t m = warp + i * kHcColWarps;
      if (m < n_mix) fn_lane_chunk(fn, wtype, ncols, m, cb, cnt, vec, w[i]);
    }
  } else {
    for (int64_t m = lane; m < n_mix; m += 32) base_sh[m] = base[m];
    if (lane < (kHead ? 1 : 3)) scale_sh[lane] = scale[lane];
  }
  pdl_enter();
  auto* arrivals = reinterpret_cast<unsigned*>(scr + L.arrivals);
  auto* ss_a = reinterpret_cast<double*>(scr + L.ss_a);
  auto* part = reinterpret_cast<float*>(scr + L.part);
  __shared__ __align__(16) float h[kHcCols];  // the block's columns of the state (zero past the end)
  double ss = 0.0;
  if (!comb_warp) {
    const int64_t c = c0 + threadIdx.x;
    float v = 0.0f;
    if (c < c1) {
      if constexpr (kPost) {
        v = hc_post_elem(s, p, c);
        H_post[c] = v;
      } else {
        v = H[c];
      }
      ss = static_cast<double>(v) * v;
    }
    h[threadIdx.x] = v;
  }
  ss = block_sum_d(ss);  // its barriers also publish h, base_sh and scale_sh
  if (threadIdx.x == 0) ss_a[blockIdx.x] = ss;
  if (!comb_warp) {
    const float4 h0 = reinterpret_cast<const float4*>(h + kHcLaneCols * lane)[0];
    const float4 h1 = reinterpret_cast<const float4*>(h + kHcLaneCols * lane)[1];
    const float hv[kHcLaneCols] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
    auto row_partial = [&](int64_t m, const float(&wr)[kHcLaneCols]) {
      float acc = 0.0f;
#pragma unroll
      for (int j = 0; j < kHcLaneCols; ++j) acc += wr[j] * hv[j];
      acc = warp_sum_f(acc);
      if (lane == 0) part[blockIdx.x * n_mix + m] = acc;
    };
#pragma unroll
    for (int i = 0; i < kHcEarlyRows; ++i)
      if (warp + i * kHcColWarps < n_mix) row_partial(warp + i * kHcColWarps, w[i]);
    for (int64_t m = warp + kHcEarlyRows * kHcColWarps; m < n_mix; m += kHcColWarps) {
      float wr[kHcLaneCols];
      fn_lane_chunk(fn, wtype, ncols, m, cb, cnt, vec, wr);
      row_partial(m, wr);
    }
  }
  // Arrival: every thread's writes are visible device-wide before its block counts itself.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(arrivals, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  // The last block: every other block has written its partials and its columns of H_post, and
  // has read p.post / p.comb (which may be the post / comb written below). L2 loads (__ldcg)
  // for what other blocks wrote during this launch. All warps reduce the partials together
  // (kHcMixRows rows per warp and round, every load of a round in flight at once; the comb
  // warp also the sums of squares), then the comb warp runs post and Sinkhorn while the column
  // warps (whose H loads are already in flight) collapse and normalize.
  __threadfence();
  if (threadIdx.x == 0) *arrivals = 0;  // for the next call, which starts after this launch
  __shared__ float mix[(2 + kMaxHc) * kMaxHc];
  __shared__ float r_sh;
  constexpr int kWarps = kHcOneThreads / 32, kHcMixRows = 3, kPerLane = 2;  // blocks past 64: one more load each
  for (int64_t m0 = warp; m0 < n_mix; m0 += kWarps * kHcMixRows) {
    float v[kHcMixRows][kPerLane];
#pragma unroll
    for (int i = 0; i < kHcMixRows; ++i)
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t m = m0 + i * kWarps, b = lane + 32 * j;
        v[i][j] = m < n_mix && b < L.nb ? __ldcg(part + b * n_mix + m) : 0.0f;
      }
#pragma unroll
    for (int i = 0; i < kHcMixRows; ++i) {
      const int64_t m = m0 + i * kWarps;
      float t = 0.0f;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) t += v[i][j];
      for (int64_t b = lane + 32 * kPerLane; m < n_mix && b < L.nb; b += 32) t += __ldcg(part + b * n_mix + m);
      t = warp_sum_f(t);
      if (lane == 0 && m < n_mix) mix[m] = t;
    }
  }
  if (comb_warp) {
    double t = 0.0;
    for (int64_t b = lane; b < L.nb; b += 32) t += __ldcg(ss_a + b);
    t = warp_sum_d(t);
    if (lane == 0) r_sh = static_cast<float>(1.0 / sqrt(t / static_cast<double>(ncols) + s.rms_eps));
  }
  const float4* H4 = reinterpret_cast<const float4*>(kPost ? H_post : H);
  float4 hs[kHcSlots][kS], nv[kHcSlots] = {};
  if (!comb_warp) {
#pragma unroll
    for (int i = 0; i < kHcSlots; ++i) {
      const int64_t d4 = threadIdx.x + i * kHcCols;
      if (d4 >= E4) continue;
#pragma unroll
      for (int k = 0; k < kS; ++k)
        if (k < nc) hs[i][k] = __ldcg(H4 + k * E4 + d4);
      if (norm) nv[i] = reinterpret_cast<const float4*>(norm)[d4];
    }
  }
  __syncthreads();
  if (comb_warp) {
    if constexpr (!kHead) {
      if (defer) {  // hc_comb_sinkhorn finishes comb later, off this launch's critical path
        float c[2];
        hc_post_comb_input_warp(s, mix, r_sh, base_sh, scale_sh, post, c);
        store_comb_warp(nc, c, comb);
      } else {
        hc_post_comb_warp<kNc>(s, mix, r_sh, base_sh, scale_sh, post, comb);
      }
    }
    return;
  }
  const float r = r_sh;
  float pre[kS];
#pragma unroll
  for (int k = 0; k < kS; ++k)
    if (k < nc) pre[k] = hc_pre_weight<kHead>(s, mix, r, base_sh, scale_sh, k);
  float4 acc[kHcSlots];
  double ssa = 0.0;
#pragma unroll
  for (int i = 0; i < kHcSlots; ++i)
    if (threadIdx.x + i * kHcCols < E4) acc[i] = hc_collapse4(pre, hs[i], nc, ssa);
  __shared__ double warp_ss[kHcColWarps];
  ssa = warp_sum_d(ssa);
  if (lane == 0) warp_ss[warp] = ssa;
  column_warps_sync();
  double tot = 0.0;
  for (int i = 0; i < kHcColWarps; ++i) tot += warp_ss[i];  // every thread, in one order
  const float rn = static_cast<float>(1.0 / sqrt(tot / static_cast<double>(s.E) + s.rms_eps));
#pragma unroll
  for (int i = 0; i < kHcSlots; ++i) {
    const int64_t d4 = threadIdx.x + i * kHcCols;
    if (d4 >= E4) continue;
    if (a) reinterpret_cast<float4*>(a)[d4] = acc[i];
    const float4 xv = hc_normed4(acc[i], rn, norm != nullptr, nv[i]);
    reinterpret_cast<float4*>(x)[d4] = xv;
    if (xq) {  // a warp's 32 float4 are 4 whole blocks (d4 >= E4 is warp-uniform: E4 % 32 == 0)
      const float v[4] = {xv.x, xv.y, xv.z, xv.w};
      quantize_q8_0_act_warp<4>(v, xq + (d4 - lane) / 8);
    }
  }
}

// ---- The HC pre as one thread-block cluster (decode at nc 4 x E 4096, the HC pre and the
// hc_post + HC pre of every layer; DS4_CUDA_NO_HC_CLUSTER=1: hc_pre_one_launch_kernel) ----
// hc_pre_one_launch_kernel's 64 blocks hand their partials to the last block through global
// memory (a fence, an atomic arrival, L2 loads), and that one block then collapses and
// normalizes all E outputs alone. Here the grid is one cluster of kCs blocks (each SM of it
// takes nc * E / kCs of the state columns) and the blocks exchange through distributed shared
// memory: after a cluster barrier every block reduces the kCs blocks' partials (in rank
// order: every block gets the same mix), collapses its own E / kCs outputs from the state
// columns that the other blocks hold in their shared memory, and after a second barrier
// (the RMSNorm's sum of squares) normalizes them. The fn weights (HcCl::kCpt consecutive
// columns of all n_mix rows per thread) are loaded before pdl_enter. With 16 blocks each SM
// loads 48 KB of them; with 8, 96 KB, which made the decode step slower on an H200.
// Values: hc_post as hc_post_elem (the same bits); the fn partials and both sums of squares
// in other fixed orders than the one-launch kernel (the last bits of mix and x may differ).
constexpr int kHcClThreads = 512;
constexpr int kHcClNc = 4, kHcClE = 4096, kHcClMix = (2 + kHcClNc) * kHcClNc;  // 24 fn rows
template <int kCs>
struct HcCl {
  static constexpr int kCols = kHcClNc * kHcClE / kCs;  // state columns per block
  static constexpr int kCpt = kCols / kHcClThreads;     // consecutive columns per thread
  static constexpr int kOut4 = kHcClE / kCs / 4;        // float4 outputs per block (its collapse threads)
  static_assert(kCpt == 2 || kCpt == 4, "8 or 16 blocks");
  static_assert(kOut4 % 32 == 0, "whole warps collapse (the Q8_0 quantizer is warp-collective)");
};

// One round of a warp's reduce-scatter of 2M values per lane (M = the lane-bit offset): the
// lane keeps the half whose index bit matches its lane bit, summed with its partner's.
template <int M>
__device__ __forceinline__ void reduce_scatter_step(float (&v)[32], int lane) {
  const bool upper = (lane & M) != 0;
#pragma unroll
  for (int e = 0; e < M; ++e) {
    const float send = upper ? v[e] : v[e + M];
    const float keep = upper ? v[e + M] : v[e];
    v[e] = keep + __shfl_xor_sync(kFull, send, M);
  }
}

template <bool kPost, int kCs>
__global__ void __launch_bounds__(kHcClThreads, 1)
    hc_pre_cluster_kernel(HcShape s, int wtype, const uint8_t* fn, const float* H, HcPostIn p, float* H_post,
                          const float* base, const float* scale, const float* norm, float* a, float* x, float* post,
                          float* comb, BlockQ8_0Act* xq, bool defer) {
  using C = HcCl<kCs>;
  constexpr int kN = kHcClNc * kHcClE;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned rank = cluster_rank();
  const int64_t c0 = static_cast<int64_t>(rank) * C::kCols + C::kCpt * threadIdx.x;  // this thread's first column
  // Before pdl_enter, weights only: the thread's columns of every fn row, base and scale.
  __shared__ float base_sh[kHcClMix], scale_sh[3];
  float w[kHcClMix][C::kCpt];
#pragma unroll
  for (int m = 0; m < kHcClMix; ++m) {
    if (wtype == 0) {
      const float* row = reinterpret_cast<const float*>(fn) + static_cast<int64_t>(m) * kN + c0;
      if constexpr (C::kCpt == 4) {
        const float4 v = *reinterpret_cast<const float4*>(row);
        w[m][0] = v.x, w[m][1] = v.y, w[m][2] = v.z, w[m][3] = v.w;
      } else {
        const float2 v = *reinterpret_cast<const float2*>(row);
        w[m][0] = v.x, w[m][1] = v.y;
      }
    } else {
      const uint16_t* row = reinterpret_cast<const uint16_t*>(fn) + static_cast<int64_t>(m) * kN + c0;
      if constexpr (C::kCpt == 4) {
        const uint2 v = *reinterpret_cast<const uint2*>(row);
        w[m][0] = fn_weight_16(v.x & 0xffffu, wtype), w[m][1] = fn_weight_16(v.x >> 16, wtype);
        w[m][2] = fn_weight_16(v.y & 0xffffu, wtype), w[m][3] = fn_weight_16(v.y >> 16, wtype);
      } else {
        const uint32_t v = *reinterpret_cast<const uint32_t*>(row);
        w[m][0] = fn_weight_16(v & 0xffffu, wtype), w[m][1] = fn_weight_16(v >> 16, wtype);
      }
    }
  }
  if (threadIdx.x < kHcClMix) base_sh[threadIdx.x] = base[threadIdx.x];
  if (threadIdx.x < 3) scale_sh[threadIdx.x] = scale[threadIdx.x];
  // The collapse threads' norm weights.
  const bool collapser = threadIdx.x < C::kOut4;
  const int64_t d4 = static_cast<int64_t>(rank) * C::kOut4 + threadIdx.x;  // float4 output of a collapser
  float4 nv = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (collapser && norm) nv = reinterpret_cast<const float4*>(norm)[d4];
  pdl_enter();
  // The block's state columns (kept in shared memory for the other blocks' collapse).
  __shared__ __align__(16) float hs[C::kCols];
  float hv[C::kCpt];
  double ss = 0.0;
#pragma unroll
  for (int j = 0; j < C::kCpt; ++j) {
    if constexpr (kPost) {
      hv[j] = hc_post_elem(s, p, c0 + j);
    } else {
      hv[j] = H[c0 + j];
    }
    ss += static_cast<double>(hv[j]) * hv[j];
  }
  if constexpr (C::kCpt == 4) {
    const float4 v = make_float4(hv[0], hv[1], hv[2], hv[3]);
    reinterpret_cast<float4*>(hs)[threadIdx.x] = v;
    if constexpr (kPost) reinterpret_cast<float4*>(H_post + c0)[0] = v;
  } else {
    const float2 v = make_float2(hv[0], hv[1]);
    reinterpret_cast<float2*>(hs)[threadIdx.x] = v;
    if constexpr (kPost) reinterpret_cast<float2*>(H_post + c0)[0] = v;
  }
  // fn partials: row m's sum over the thread's columns, then a reduce-scatter over the warp
  // (rows padded to 32: lane l ends with row l's warp sum), then the warps in order.
  float v[32];
#pragma unroll
  for (int m = 0; m < 32; ++m) {
    float t = 0.0f;
    if (m < kHcClMix) {
#pragma unroll
      for (int j = 0; j < C::kCpt; ++j) t += w[m][j] * hv[j];
    }
    v[m] = t;
  }
  reduce_scatter_step<16>(v, lane);
  reduce_scatter_step<8>(v, lane);
  reduce_scatter_step<4>(v, lane);
  reduce_scatter_step<2>(v, lane);
  reduce_scatter_step<1>(v, lane);
  constexpr int kWarps = kHcClThreads / 32;
  __shared__ float wpart[kWarps][32];
  __shared__ double wss[kWarps];
  __shared__ float bpart[kHcClMix];  // the block's partials (read by every block of the cluster)
  __shared__ double bss;             // the block's sum of squares
  wpart[warp][lane] = v[0];
  ss = warp_sum_d(ss);
  if (lane == 0) wss[warp] = ss;
  __syncthreads();
  if (threadIdx.x < kHcClMix) {
    float t = 0.0f;
    for (int i = 0; i < kWarps; ++i) t += wpart[i][threadIdx.x];
    bpart[threadIdx.x] = t;
  } else if (threadIdx.x == 32) {
    double t = 0.0;
    for (int i = 0; i < kWarps; ++i) t += wss[i];
    bss = t;
  }
  cluster_arrive();  // barrier 1: every block's bpart, bss and hs are written (and p.post / p.comb read)
  cluster_wait();
  __shared__ float mix[kHcClMix];
  __shared__ float r_sh;
  if (threadIdx.x < kHcClMix) {
    float t = 0.0f;
    for (unsigned b = 0; b < kCs; ++b) t += *cluster_peer(bpart + threadIdx.x, b);
    mix[threadIdx.x] = t;
  } else if (threadIdx.x == 32) {
    double t = 0.0;
    for (unsigned b = 0; b < kCs; ++b) t += *cluster_peer(&bss, b);
    r_sh = static_cast<float>(1.0 / sqrt(t / static_cast<double>(kN) + s.rms_eps));
  }
  __syncthreads();
  const float r = r_sh;
  __shared__ double css[C::kOut4 / 32];  // the collapse warps' sums of squares
  __shared__ double bss2;
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (collapser) {
    float pre[kHcClNc];
    float4 h4[kHcClNc];
#pragma unroll
    for (int k = 0; k < kHcClNc; ++k) {
      pre[k] = hc_pre_weight<false>(s, mix, r, base_sh, scale_sh, k);
      const int64_t c = static_cast<int64_t>(k) * kHcClE + 4 * d4;  // state column of stream k
      const float* src = cluster_peer(hs + c % C::kCols, static_cast<unsigned>(c / C::kCols));
      h4[k] = *reinterpret_cast<const float4*>(src);
    }
    double ss2 = 0.0;
    acc = hc_collapse4(pre, h4, kHcClNc, ss2);
    ss2 = warp_sum_d(ss2);
    if (lane == 0) css[warp] = ss2;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int i = 0; i < C::kOut4 / 32; ++i) t += css[i];
    bss2 = t;
  }
  cluster_arrive();  // barrier 2: every block's bss2 is written; the others are done with hs
  // post and comb by the last warp of block 0 (every block read p.post / p.comb before barrier
  // 1), between its arrival and its wait: the Sinkhorn holds up no other block.
  if (rank == 0 && warp == kWarps - 1) {
    if (defer) {
      float c[2];
      hc_post_comb_input_warp(s, mix, r, base_sh, scale_sh, post, c);
      store_comb_warp(kHcClNc, c, comb);
    } else {
      hc_post_comb_warp<kHcClNc>(s, mix, r, base_sh, scale_sh, post, comb);
    }
  }
  cluster_wait();
  if (collapser) {
    double tot = 0.0;
    for (unsigned b = 0; b < kCs; ++b) tot += *cluster_peer(&bss2, b);
    const float rn = static_cast<float>(1.0 / sqrt(tot / static_cast<double>(kHcClE) + s.rms_eps));
    if (a) reinterpret_cast<float4*>(a)[d4] = acc;
    const float4 xv = hc_normed4(acc, rn, norm != nullptr, nv);
    reinterpret_cast<float4*>(x)[d4] = xv;
    if (xq) {
      const float q[4] = {xv.x, xv.y, xv.z, xv.w};
      quantize_q8_0_act_warp<4>(q, xq + (d4 - lane) / 8);
    }
  }
  cluster_arrive();  // barrier 3: no block leaves while another still reads its bss2
  cluster_wait();
}

__global__ void hc_post_kernel(HcShape s, HcPostIn p, float* H_out) {
  pdl_enter();
  const int nc = s.nc;
  const int64_t tk = blockIdx.y;  // token of a batch
  p.f += tk * s.E;
  p.H_in += tk * nc * s.E;
  p.post += tk * nc;
  p.comb += tk * nc * nc;
  H_out += tk * nc * s.E;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < nc * s.E; i += gridDim.x * blockDim.x)
    H_out[i] = hc_post_elem(s, p, i);
}

__global__ void hc_head_kernel(HcShape s, const float* mix_raw, const float* H, const float* base,
                               const float* scale, float* x) {
  pdl_enter();
  __shared__ float pre[kMaxHc];
  const int nc = s.nc;
  const float r = hc_inv_rms(H, nc * s.E, s.rms_eps);
  if (threadIdx.x < nc)
    pre[threadIdx.x] = sigmoidf_(scale[0] * r * mix_raw[threadIdx.x] + base[threadIdx.x]) + s.hc_eps;
  __syncthreads();
  for (int64_t d = threadIdx.x; d < s.E; d += blockDim.x) {
    float acc = 0.0f;
    for (int k = 0; k < nc; ++k) acc += pre[k] * H[k * s.E + d];
    x[d] = acc;
  }
}

// Block x finishes row x of the concatenated jobs (job 0's rows first); a batch's token
// blockIdx.y has each job's rows at (blockIdx.y * rows + r) * stride.
__global__ void rows_finish_kernel(RowsJobs jobs, const float* omega, const StepCtl* ctl, bool batched,
                                   CombJob comb) {
  pdl_enter();
  if (comb.comb && blockIdx.x == gridDim.x - 1) return comb_job_warp(comb);  // the extra block
  extern __shared__ float row[];
  int64_t r = blockIdx.x;
  int i = 0;
  while (r >= jobs.job[i].rows) r -= jobs.job[i++].rows;
  const RowsJob& J = jobs.job[i];
  const RowFinish& f = J.f;
  const int64_t pos = ctl[blockIdx.y].pos;
  r += static_cast<int64_t>(blockIdx.y) * J.rows;
  const float* src = J.in + r * J.stride;
  float* dst = J.ring_cap > 0 ? J.out + (pos % J.ring_cap) * f.d : J.out + r * J.stride;
  if (batched)
    stage_batched(f.d, [&](int64_t k) { return src[k]; }, [&](int64_t k, float v) { row[k] = v; });
  else
    for (int64_t k = threadIdx.x; k < f.d; k += blockDim.x) row[k] = src[k];
  __syncthreads();
  finish_row(f, omega, row, pos);
  for (int64_t k = threadIdx.x; k < f.d; k += blockDim.x) dst[k] = row[k];
  if (J.act) {  // the finished row as Q8_0 activation blocks (f.d % QK8_0 == 0)
    __syncthreads();
    quantize_q8_0_span(row, f.d, static_cast<BlockQ8_0Act*>(J.act) + r * (f.d / QK8_0));
  }
}

// comp_store of the token at pos: elements first, first + step, ... of its projections.
__device__ void store_projections(const float* kv, const float* sc, const float* ape, int64_t width,
                                  int64_t ratio, float* ring_kv, float* ring_sc, int64_t cap, int64_t pos,
                                  int64_t first, int64_t step, bool batched) {
  const float* a = ape + (pos % ratio) * width;
  float* rk = ring_kv + (pos % cap) * width;
  float* rs = ring_sc + (pos % cap) * width;
  if (batched) {
    copy_batched(
        first, width, step, [&](int64_t i) { return make_float2(kv[i], sc[i] + a[i]); },
        [&](int64_t i, float2 v) {
          rk[i] = v.x;
          rs[i] = v.y;
        });
    return;
  }
  for (int64_t i = first; i < width; i += step) {
    rk[i] = kv[i];
    rs[i] = sc[i] + a[i];
  }
}

__global__ void comp_store_kernel(const float* kv, const float* sc, const float* ape, int64_t width,
                                  int64_t ratio, float* ring_kv, float* ring_sc, int64_t cap,
                                  const StepCtl* ctl, bool batched) {
  pdl_enter();
  const int64_t pos = ctl[blockIdx.y].pos;  // token blockIdx.y of a batch
  store_projections(kv + blockIdx.y * width, sc + blockIdx.y * width, ape, width, ratio, ring_kv, ring_sc, cap, pos,
                    blockIdx.x * blockDim.x + threadIdx.x, gridDim.x * blockDim.x, batched);
}

// comp_emit for the token at pos, by the whole block; row: f.d floats of shared memory.
__device__ void emit_window(const RowFinish& f, const float* omega, const float* ring_kv, const float* ring_sc,
                            int64_t cap, int64_t ratio, int c, float* rows, int64_t pos, float* row) {
  if ((pos + 1) % ratio != 0) return;
  const int64_t win = (pos + 1) / ratio - 1, d = f.d, width = c * d;
  const bool overlap = c == 2 && win > 0;
  const int64_t b_off = c == 2 ? d : 0;
  const int64_t cur0 = win * ratio, prev0 = (win - 1) * ratio;
  for (int64_t ch = threadIdx.x; ch < d; ch += blockDim.x) {
    double mx = -INFINITY;
    for (int64_t r = 0; r < ratio; ++r) {
      mx = fmax(mx, static_cast<double>(ring_sc[((cur0 + r) % cap) * width + b_off + ch]));
      if (overlap) mx = fmax(mx, static_cast<double>(ring_sc[((prev0 + r) % cap) * width + ch]));
    }
    double den = 0.0, num = 0.0;
    for (int64_t r = 0; r < ratio; ++r) {
      const int64_t cr = ((cur0 + r) % cap) * width;
      const double e = exp(ring_sc[cr + b_off + ch] - mx);
      den += e;
      num += e * ring_kv[cr + b_off + ch];
      if (overlap) {
        const int64_t pr = ((prev0 + r) % cap) * width;
        const double ea = exp(ring_sc[pr + ch] - mx);
        den += ea;
        num += ea * ring_kv[pr + ch];
      }
    }
    row[ch] = static_cast<float>(num / den);
  }
  __syncthreads();
  finish_row(f, omega, row, win * ratio);
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) rows[win * d + i] = row[i];
}

__global__ void comp_emit_kernel(RowFinish f, const float* omega, const float* ring_kv,
                                 const float* ring_sc, int64_t cap, int64_t ratio, int c,
                                 float* rows, const StepCtl* ctl) {
  pdl_enter();
  extern __shared__ float row[];
  emit_window(f, omega, ring_kv, ring_sc, cap, ratio, c, rows, ctl[blockIdx.y].pos, row);  // token blockIdx.y
}

// A kernel parameter: the compressors of comp_store_emit, one per block.
struct CompJobs {
  CompJob job[kMaxCompJobs];
};

__global__ void comp_store_emit_kernel(CompJobs jobs, const float* omega, int64_t cap, int64_t ratio,
                                       const StepCtl* ctl, bool batched) {
  pdl_wait();  // the decode attention reads the emitted rows before its own wait
  extern __shared__ float row[];
  const CompJob& j = jobs.job[blockIdx.x];
  const int64_t pos = ctl->pos;
  store_projections(j.kv, j.sc, j.ape, j.c * j.f.d, ratio, j.ring_kv, j.ring_sc, cap, pos, threadIdx.x, blockDim.x,
                    batched);
  __syncthreads();  // the pooling below reads the ring row this block just wrote
  emit_window(j.f, omega, j.ring_kv, j.ring_sc, cap, ratio, j.c, j.rows, pos, row);
  pdl_trigger_after_writes();
}

// The start shared by the decode indexer's score kernels. Token blockIdx.y of a batch: its
// head weights, scores and StepCtl. q is staged once per block, transposed ([DI][NI] at smem:
// the lanes' heads are consecutive, so the loads are conflict-free; reading q from global
// memory per lane, rows 512 bytes apart, made the first kernel ~90 us at 2K rows); the caller
// synchronizes the block before reading it. Returns the visible rows, or 0 when this block
// has nothing to score (n_vis <= K: no selection; or no row for its warps).
__device__ int64_t idx_scores_begin(const float* q, const float*& wts, float*& scores, int64_t scores_stride,
                                    const StepCtl* ctl, int64_t NI, int64_t DI, int64_t ratio, int64_t K,
                                    float* qs) {
  q += blockIdx.y * NI * DI;
  wts += blockIdx.y * NI;
  scores += blockIdx.y * scores_stride;
  ctl += blockIdx.y;
  pdl_enter();
  const int64_t n_vis = (ctl->pos + 1) / ratio;
  if (n_vis <= K) return 0;
  const int64_t warps_per_block = blockDim.x >> 5;
  if (static_cast<int64_t>(blockIdx.x) * warps_per_block >= n_vis) return 0;  // no row for this block
  for (int64_t j = threadIdx.x; j < NI * DI; j += blockDim.x) qs[(j % DI) * NI + j / DI] = q[j];
  return n_vis;
}

// Each warp stages its key row; every lane then runs the sequential dot over i of its heads.
__global__ void idx_scores_kernel(const float* q, const float* wts, float wscale, int64_t NI,
                                  int64_t DI, const float* icomp, int64_t ratio, int64_t K,
                                  float* scores, int64_t scores_stride, const StepCtl* ctl) {
  extern __shared__ float idx_smem[];
  float* qs = idx_smem;                                      // [DI][NI]
  float* ks = idx_smem + NI * DI + (threadIdx.x >> 5) * DI;  // this warp's key row
  const int64_t n_vis = idx_scores_begin(q, wts, scores, scores_stride, ctl, NI, DI, ratio, K, qs);
  if (n_vis == 0) return;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int64_t n_warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t w = warp; w < n_vis; w += n_warps) {
    const float* k = icomp + w * DI;
    for (int64_t i = lane; i < DI; i += 32) ks[i] = k[i];
    __syncwarp();
    double s = 0.0;
    for (int64_t h = lane; h < NI; h += 32) {
      float d = 0.0f;
      for (int64_t i = 0; i < DI; ++i) d += qs[i * NI + h] * ks[i];
      if (d > 0.0f) s += static_cast<double>(wts[h] * wscale) * d;
    }
    s = warp_sum_d(s);
    if (lane == 0) scores[w] = static_cast<float>(s);
    __syncwarp();  // ks is rewritten by the next row
  }
}

// idx_scores_kernel with the same float operations in the same order (so the same scores),
// arranged for long contexts, where each warp scores n_vis / (warps of the grid) rows in turn
// (~8 at 64K): the next kRows key rows are loaded into registers while the current ones are
// scored (the old loop waited a memory round trip per row), and a lane's kHeads heads run as
// independent FMA chains side by side instead of one after another. Needs NI = 32 * kHeads and
// DI % 32 == 0, DI <= kIdxMaxDi.
// kRows = 1 is "v2" (one row per pass). kRows > 1 ("v3"): the rows a warp scores are the same
// (warp, warp + n_warps, ...), each by the same FMA chain over i from 0 and the same head sum,
// so the scores are the same bits. At long contexts one row per pass is bound by shared-memory
// loads (per i, a lane loads its kHeads query values and the row's key for kHeads FMAs); with
// kRows each query value loaded serves kRows rows: (kHeads + kRows) loads per kHeads * kRows FMAs.
// Measured (H200, IndexerDecode.PrintsSelectTimesByContext, us per select at 8K / 32K / 64K /
// 128K): kRows 4 32.3 / 34.6 / 45.5 / 66.9; kRows 1 (this kernel) 27.8 / 41.6 / 59.7 / 94.2; the
// separate v2 kernel it replaced 27.3 / 49.7 / 74.1 / 121.9 (same bits). At 8K kRows 4 is
// slower: with fewer rows than kRows per warp, passes of kRows leave warps idle. Taking only the rows the warps need per
// pass (a runtime row count) was slower everywhere (64K 57.1, 8K 31.9 us): the loops then no
// longer unroll into registers. A one-row loop for short contexts inside the kRows kernel is the
// next step.
constexpr int kIdxMaxDi = 256;
template <int kHeads, int kRows>
__global__ void idx_scores_v3_kernel(const float* q, const float* wts, float wscale, int64_t NI, int64_t DI,
                                     const float* icomp, int64_t ratio, int64_t K, float* scores,
                                     int64_t scores_stride, const StepCtl* ctl) {
  extern __shared__ float idx_smem[];
  float* qs = idx_smem;                                              // [DI][NI]
  float* ks = idx_smem + NI * DI + (threadIdx.x >> 5) * DI * kRows;  // this warp's kRows key rows
  const int64_t n_vis = idx_scores_begin(q, wts, scores, scores_stride, ctl, NI, DI, ratio, K, qs);
  if (n_vis == 0) return;
  const int lane = threadIdx.x & 31;
  const int64_t warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int64_t n_warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const int per_lane = static_cast<int>(DI / 32);
  float wh[kHeads];
#pragma unroll
  for (int c = 0; c < kHeads; ++c) wh[c] = wts[lane + 32 * c] * wscale;
  float next[kRows][kIdxMaxDi / 32];
  auto load_rows = [&](int64_t w0) {  // rows w0 + r * n_warps
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t w = w0 + r * n_warps;
#pragma unroll
      for (int j = 0; j < kIdxMaxDi / 32; ++j)
        if (j < per_lane && w < n_vis) next[r][j] = icomp[w * DI + lane + 32 * j];
    }
  };
  load_rows(warp);
  __syncthreads();  // qs
  const int64_t step = n_warps * kRows;
  for (int64_t w0 = warp; w0 < n_vis; w0 += step) {
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int j = 0; j < kIdxMaxDi / 32; ++j)
        if (j < per_lane) ks[r * DI + lane + 32 * j] = next[r][j];
    __syncwarp();
    load_rows(w0 + step);  // in flight while these rows are scored
    float d[kRows][kHeads];
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int c = 0; c < kHeads; ++c) d[r][c] = 0.0f;
    for (int64_t i = 0; i < DI; ++i) {
      float qv[kHeads];
#pragma unroll
      for (int c = 0; c < kHeads; ++c) qv[c] = qs[i * NI + lane + 32 * c];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float k = ks[r * DI + i];
#pragma unroll
        for (int c = 0; c < kHeads; ++c) d[r][c] += qv[c] * k;
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      double s = 0.0;
#pragma unroll
      for (int c = 0; c < kHeads; ++c)
        if (d[r][c] > 0.0f) s += static_cast<double>(wh[c]) * d[r][c];
      s = warp_sum_d(s);  // every lane takes part; only rows below n_vis are written
      const int64_t w = w0 + r * n_warps;
      if (lane == 0 && w < n_vis) scores[w] = static_cast<float>(s);
    }
    __syncwarp();  // ks is rewritten by the next rows
  }
}

// Selection in the order of topk_lower_index (score desc, index asc) by the radix select of
// topk_block.h: one block, O(n_vis) per pass (rank counting was O(n_vis^2 / threads)).
__global__ void __launch_bounds__(topk_detail::kTopkThreads)
    idx_topk_kernel(const float* scores, int64_t scores_stride, int64_t ratio, int64_t K, int32_t* sel,
                    int32_t* n_sel, const StepCtl* ctl) {
  pdl_wait();  // the decode attention reads sel and n_sel before its own wait
  __shared__ topk_detail::TopkShared sh;
  scores += blockIdx.y * scores_stride;  // token blockIdx.y of a batch
  sel += blockIdx.y * K;
  n_sel += blockIdx.y;
  ctl += blockIdx.y;
  const int64_t n_vis = (ctl->pos + 1) / ratio;
  if (threadIdx.x == 0) *n_sel = static_cast<int32_t>(n_vis <= K ? n_vis : K);
  if (n_vis <= K) {
    for (int64_t w = threadIdx.x; w < n_vis; w += blockDim.x) sel[w] = static_cast<int32_t>(w);
  } else {
    topk_detail::block_topk(topk_detail::ArrayLoad{scores}, n_vis, static_cast<int>(K), sel, sh);
  }
  pdl_trigger_after_writes();
}

// The step's attention rows: n_raw window rows from the ring (from position start), then the
// compressed rows (all, or the indexer's selection). Returns their count n.
__device__ int64_t attn_rows(const AttnShape& s, const int32_t* sel, const int32_t* n_sel,
                             int64_t pos, int64_t* n_raw_out, int64_t* start_out) {
  const int64_t start = pos - s.window + 1 > 0 ? pos - s.window + 1 : 0;
  const int64_t n_raw = pos - start + 1;
  int64_t n_comp = 0;
  if (s.ratio > 0) n_comp = sel ? *n_sel : (pos + 1) / s.ratio;
  *n_raw_out = n_raw;
  *start_out = start;
  return n_raw + n_comp;
}

// Token blockIdx.z of a batch in the attention's first launch: its query, selection, StepCtl
// and partials (one token's attention_scratch_floats each: NH * gridDim.x chunks of D + 2).
__device__ __forceinline__ void attn_part_token(const AttnShape& s, int64_t sel_stride, const float*& q,
                                                const int32_t*& sel, const int32_t*& n_sel, const StepCtl*& ctl,
                                                float*& part) {
  const int64_t t = blockIdx.z;
  q += t * s.NH * s.D;
  if (sel) sel += t * sel_stride;
  n_sel += t;
  ctl += t;
  part += t * s.NH * static_cast<int64_t>(gridDim.x) * (s.D + 2);
}

// Shared memory of attention_part_kernel: the chunk's rows (float4 stride padded to an odd
// count, so that 32 lanes reading 32 different rows hit distinct banks), the block's heads'
// queries, their probabilities, and the row pointers.
__host__ __device__ inline int64_t attn_row_stride4(int64_t D) { return (D / 4) % 2 ? D / 4 : D / 4 + 1; }
__host__ __device__ inline size_t attn_part_smem(int64_t D) {
  return static_cast<size_t>(kAttnChunk * attn_row_stride4(D) + kAttnHeads * (D / 4)) * 16 +
         static_cast<size_t>(kAttnHeads * kAttnChunk) * sizeof(float) + kAttnChunk * sizeof(float*);
}

// Block (chunk c, head group g) stages rows [c * kAttnChunk, ...) of the step's n rows in
// shared memory once for kAttnHeads heads (K = V rows are shared by all heads: one block
// per (chunk, head) re-read every row from L2 once per head, ~160 MB per layer at 640 rows
// and 64 heads). Warp w scores head g * kAttnHeads + w, a lane per row; then each thread
// sums p * V for (head, 4 dims) items in row order. Writes {o[D], max, sum} per head and
// chunk; chunks past n write nothing.
template <bool kBatched>
__global__ void __launch_bounds__(kThreads) attention_part_kernel(AttnShape s, float scale, const float* q,
                                                                  const float* ring, const float* comp,
                                                                  const int32_t* sel, const int32_t* n_sel,
                                                                  int64_t sel_stride, float* part,
                                                                  const StepCtl* ctl) {
  pdl_enter();
  attn_part_token(s, sel_stride, q, sel, n_sel, ctl, part);
  extern __shared__ float4 sm4[];
  const int64_t D = s.D, D4 = D / 4, RS4 = attn_row_stride4(D);
  float4* rows = sm4;                                                // [kAttnChunk][RS4]
  float4* qs = rows + kAttnChunk * RS4;                              // [kAttnHeads][D4]
  float* p = reinterpret_cast<float*>(qs + kAttnHeads * D4);         // [kAttnHeads][kAttnChunk]
  const float** rp = reinterpret_cast<const float**>(p + kAttnHeads * kAttnChunk);  // [kAttnChunk]
  const int64_t c = blockIdx.x, h0 = static_cast<int64_t>(blockIdx.y) * kAttnHeads;
  const int nh = s.NH - h0 < kAttnHeads ? static_cast<int>(s.NH - h0) : kAttnHeads;
  int64_t n_raw = 0, start = 0;
  const int64_t n = attn_rows(s, sel, n_sel, ctl->pos, &n_raw, &start);
  const int64_t r0 = c * kAttnChunk;
  if (r0 >= n) return;
  const int nr = n - r0 < kAttnChunk ? static_cast<int>(n - r0) : kAttnChunk;
  for (int r = threadIdx.x; r < nr; r += blockDim.x) {
    const int64_t rr = r0 + r;
    rp[r] = rr < n_raw ? ring + ((start + rr) % s.ring_cap) * D
                       : comp + static_cast<int64_t>(sel ? sel[rr - n_raw] : rr - n_raw) * D;
  }
  const float4* q4 = reinterpret_cast<const float4*>(q + h0 * D);
  if constexpr (kBatched) {
    stage_batched(nh * D4, [&](int64_t i) { return q4[i]; }, [&](int64_t i, float4 v) { qs[i] = v; });
    __syncthreads();
    stage_batched(
        nr * D4, [&](int64_t i) { return reinterpret_cast<const float4*>(rp[i / D4])[i % D4]; },
        [&](int64_t i, float4 v) { rows[(i / D4) * RS4 + i % D4] = v; });
  } else {
    for (int64_t i = threadIdx.x; i < nh * D4; i += blockDim.x) qs[i] = q4[i];
    __syncthreads();
    for (int64_t i = threadIdx.x; i < nr * D4; i += blockDim.x) {
      const int64_t r = i / D4, k = i - r * D4;
      rows[r * RS4 + k] = reinterpret_cast<const float4*>(rp[r])[k];
    }
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (warp < nh) {
    float sc = -INFINITY;
    if (lane < nr) {
      const float4* row = rows + lane * RS4;
      const float4* qh = qs + warp * D4;
      float acc = 0.0f;
      for (int64_t k = 0; k < D4; ++k) {
        const float4 a = qh[k], b = row[k];
        acc += a.x * b.x;
        acc += a.y * b.y;
        acc += a.z * b.z;
        acc += a.w * b.w;
      }
      sc = acc * scale;
    }
    float mx = sc;
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, o));
    const float pv = lane < nr ? expf(sc - mx) : 0.0f;
    p[warp * kAttnChunk + lane] = pv;
    const float l = warp_sum_f(pv);
    float* out = part + ((h0 + warp) * gridDim.x + c) * (D + 2);
    if (lane == 0) {
      out[D] = mx;
      out[D + 1] = l;
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < nh * D4; i += blockDim.x) {
    const int64_t j = i / D4, k = i - j * D4;
    const float* pj = p + j * kAttnChunk;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int r = 0; r < nr; ++r) {
      const float w = pj[r];
      const float4 v = rows[r * RS4 + k];
      acc.x += w * v.x;
      acc.y += w * v.y;
      acc.z += w * v.z;
      acc.w += w * v.w;
    }
    float* out = part + ((h0 + j) * gridDim.x + c) * (D + 2) + 4 * k;
    out[0] = acc.x;
    out[1] = acc.y;
    out[2] = acc.z;
    out[3] = acc.w;
  }
}

// attention_part_kernel's work with register tiles (D <= 4 * 128, D % 4 == 0; the same grid,
// shared rows and outputs). In the kernel above each lane reads a whole 2 KB row from shared
// memory per head for its score, and each thread one row value per FMA chunk for p * V, so the
// shared-memory pipe bounds it (~10k wavefronts per block at Flash's shape; 13 us per launch
// measured on an H200, 2.4% of the SM's compute). Here warp w loads rows w, w + 8, w + 16,
// w + 24 of the chunk from L2 straight into registers (lane l: float4 l, l + 32, ... of each;
// the same values are stored to shared memory for p * V) and multiplies them with every head's
// query from shared memory: 4 rows x 8 heads of partial dots per lane, then one butterfly
// reduce-scatter leaves the (head l / 4, row w + 8 (l % 4)) score on lane l. p * V: a thread
// keeps 4 heads x 4 dims (one float4 of V per row serves 16 FMAs). The score's float order
// differs from the kernel above (lane partials over d = 4 l + 128 j.., then the tree), p * V's
// is the same (rows in order per output).
constexpr int kPartRowsPerWarp = kAttnChunk / kAttnHeads;  // 4: rows w + 8 i
constexpr int kPartMaxVecPerLane = 4;                       // D <= 512
__host__ __device__ inline size_t attn_part_v2_smem(int64_t D) {
  return static_cast<size_t>(kAttnChunk * (D / 4) + kAttnHeads * (D / 4)) * 16 +
         static_cast<size_t>(kAttnHeads * kAttnChunk) * 2 * sizeof(float);
}
template <bool kBatched>
__global__ void __launch_bounds__(kThreads) attention_part_v2_kernel(AttnShape s, float scale, const float* q,
                                                                     const float* ring, const float* comp,
                                                                     const int32_t* sel, const int32_t* n_sel,
                                                                     int64_t sel_stride, float* part,
                                                                     const StepCtl* ctl, bool early) {
  static_assert(kPartRowsPerWarp * kAttnHeads == 32, "one score per lane after the reduce-scatter");
  attn_part_token(s, sel_stride, q, sel, n_sel, ctl, part);
  extern __shared__ float4 sm4[];
  const int D4 = static_cast<int>(s.D / 4);
  float4* rows = sm4;                                          // [kAttnChunk][D4]
  float4* qs = rows + kAttnChunk * D4;                         // [kAttnHeads][D4]
  float* sc_sh = reinterpret_cast<float*>(qs + kAttnHeads * D4);  // [kAttnHeads][kAttnChunk]
  float* p = sc_sh + kAttnHeads * kAttnChunk;                  // [kAttnChunk][kAttnHeads]
  const int64_t c = blockIdx.x, h0 = static_cast<int64_t>(blockIdx.y) * kAttnHeads;
  const int nh = s.NH - h0 < kAttnHeads ? static_cast<int>(s.NH - h0) : kAttnHeads;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t r0 = c * kAttnChunk;
  int64_t n = 0;
  int nr = 0;
  // The warp's rows from L2 into registers (all loads issued before any use).
  float4 R[kPartRowsPerWarp][kPartMaxVecPerLane];
  auto load_rows = [&] {
    int64_t n_raw = 0, start = 0;
    n = attn_rows(s, sel, n_sel, ctl->pos, &n_raw, &start);
    nr = n - r0 <= 0 ? 0 : n - r0 < kAttnChunk ? static_cast<int>(n - r0) : kAttnChunk;
#pragma unroll
    for (int i = 0; i < kPartRowsPerWarp; ++i) {
      const int r = warp + kAttnHeads * i;
      const float4* src = nullptr;
      if (r < nr) {
        const int64_t rr = r0 + r;
        src = reinterpret_cast<const float4*>(
            rr < n_raw ? ring + ((start + rr) % s.ring_cap) * s.D
                       : comp + static_cast<int64_t>(sel ? sel[rr - n_raw] : rr - n_raw) * s.D);
      }
#pragma unroll
      for (int j = 0; j < kPartMaxVecPerLane; ++j) {
        const int k = lane + 32 * j;
        R[i][j] = src && k < D4 ? src[k] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
    }
  };
  // early: the rows, the selection and the position were written by kernels that had
  // completed (the ring row, three launches back on this stream; StepCtl) or that signal
  // their dependents only after their writes (idx_topk, comp_store_emit:
  // pdl_trigger_after_writes), so they are loaded while the predecessor (the query finish)
  // still runs; only q waits.
  if (early) load_rows();
  pdl_enter();
  if (!early) load_rows();
  if (r0 >= n) return;
  const float4* q4 = reinterpret_cast<const float4*>(q + h0 * s.D);
  if constexpr (kBatched)
    stage_batched(nh * D4, [&](int64_t i) { return q4[i]; }, [&](int64_t i, float4 v) { qs[i] = v; });
  else
    for (int64_t i = threadIdx.x; i < nh * D4; i += blockDim.x) qs[i] = q4[i];
#pragma unroll
  for (int i = 0; i < kPartRowsPerWarp; ++i) {
    const int r = warp + kAttnHeads * i;
#pragma unroll
    for (int j = 0; j < kPartMaxVecPerLane; ++j) {
      const int k = lane + 32 * j;
      if (r < nr && k < D4) rows[r * D4 + k] = R[i][j];
    }
  }
  __syncthreads();

  // Partial dots: v[h * 4 + i] = q_h . row_i over this lane's dims.
  float v[32];
#pragma unroll
  for (int e = 0; e < 32; ++e) v[e] = 0.0f;
#pragma unroll
  for (int j = 0; j < kPartMaxVecPerLane; ++j) {
    const int k = lane + 32 * j;
    if (k < D4) {
#pragma unroll
      for (int h = 0; h < kAttnHeads; ++h) {
        if (h < nh) {
          const float4 a = qs[h * D4 + k];
#pragma unroll
          for (int i = 0; i < kPartRowsPerWarp; ++i) {
            float& acc = v[h * kPartRowsPerWarp + i];
            acc += a.x * R[i][j].x;
            acc += a.y * R[i][j].y;
            acc += a.z * R[i][j].z;
            acc += a.w * R[i][j].w;
          }
        }
      }
    }
  }
  // Reduce-scatter over the warp: after the round of offset o, a lane keeps the half of its
  // values whose index bit (log2 o) equals its lane bit, so v[0] ends as the sum of index lane.
  reduce_scatter_step<16>(v, lane);
  reduce_scatter_step<8>(v, lane);
  reduce_scatter_step<4>(v, lane);
  reduce_scatter_step<2>(v, lane);
  reduce_scatter_step<1>(v, lane);
  {
    const int h = lane / kPartRowsPerWarp, r = warp + kAttnHeads * (lane % kPartRowsPerWarp);
    sc_sh[h * kAttnChunk + r] = v[0] * scale;
  }
  __syncthreads();
  if (warp < nh) {
    const float sc = lane < nr ? sc_sh[warp * kAttnChunk + lane] : -INFINITY;
    float mx = sc;
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, o));
    const float pv = lane < nr ? expf(sc - mx) : 0.0f;
    p[lane * kAttnHeads + warp] = pv;
    const float l = warp_sum_f(pv);
    float* out = part + ((h0 + warp) * gridDim.x + c) * (s.D + 2);
    if (lane == 0) {
      out[s.D] = mx;
      out[s.D + 1] = l;
    }
  } else {
    p[lane * kAttnHeads + warp] = 0.0f;
  }
  __syncthreads();
  // p * V: item = (group of 4 heads, float4 k of the row), rows in order.
  const int ng = (nh + 3) / 4;
  for (int it = threadIdx.x; it < ng * D4; it += blockDim.x) {
    const int g = it / D4, k = it - g * D4;
    float4 acc[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[e] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int r = 0; r < nr; ++r) {
      const float4 w = reinterpret_cast<const float4*>(p + r * kAttnHeads)[g];
      const float4 x = rows[r * D4 + k];
      const float ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        acc[e].x += ws[e] * x.x;
        acc[e].y += ws[e] * x.y;
        acc[e].z += ws[e] * x.z;
        acc[e].w += ws[e] * x.w;
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int h = 4 * g + e;
      if (h < nh) {
        float* out = part + ((h0 + h) * gridDim.x + c) * (s.D + 2) + 4 * k;
        out[0] = acc[e].x;
        out[1] = acc[e].y;
        out[2] = acc[e].z;
        out[3] = acc[e].w;
      }
    }
  }
}

// Merge of a head's chunks in chunk order with the sink (in double), then the de-rotation.
// kBatched: the chunk maxima and sums are loaded by the lanes of warp 0 at once (the max is
// exact in any order, the exponentials are independent; only the denominator's sum stays in
// chunk order, on lane 0, from shared memory) and the output loop has kMergeBatch chunk loads
// in flight before its in-order double sums (kMergeThreads: one output per thread at D = 512,
// so one L2 round trip up to 32 chunks, i.e. 1024 rows): the same bits as the serial loops (one
// thread walking the chunks: two dependent L2 round trips per chunk). oq (D % 32 == 0): o also
// as Q8_0 activation blocks (a head's D values are whole blocks), for wo_a without a quantize
// launch.
constexpr int kMergeBatch = 32, kMergeThreads = 512;
template <bool kBatched>
__global__ void __launch_bounds__(kMergeThreads) attention_merge_kernel(AttnShape s, const int32_t* sel, const int32_t* n_sel,
                                       int64_t sel_stride, const float* sinks, const float* omega,
                                       const float* part, int nchunks, float* o, BlockQ8_0Act* oq,
                                       const StepCtl* ctl) {
  pdl_enter();
  // Token blockIdx.y of a batch (the strides of attention_part_kernel).
  const int64_t t = blockIdx.y;
  if (sel) sel += t * sel_stride;
  n_sel += t;
  ctl += t;
  part += t * s.NH * nchunks * (s.D + 2);
  o += t * s.NH * s.D;
  extern __shared__ double wgt[];  // [nchunks], then out_row [D], then the chunk sums [nchunks]
  float* out_row = reinterpret_cast<float*>(wgt + nchunks);
  float* sum_sh = out_row + s.D;
  __shared__ double den_sh;
  const int64_t h = blockIdx.x, D = s.D, pos = ctl->pos;
  int64_t n_raw = 0, start = 0;
  const int64_t n = attn_rows(s, sel, n_sel, pos, &n_raw, &start);
  const int64_t nc = (n + kAttnChunk - 1) / kAttnChunk;  // <= nchunks (max_rows >= n)
  const float* ph = part + h * nchunks * (D + 2);
  if constexpr (kBatched) {
    // The thread's first kMergeBatch chunk values are requested before the maxima and sums
    // are reduced (they do not depend on them): both L2 round trips overlap.
    float v[kMergeBatch];
    auto load_batch = [&](int64_t d, int64_t c) {
#pragma unroll
      for (int j = 0; j < kMergeBatch; ++j) v[j] = d < D && c + j < nc ? ph[(c + j) * (D + 2) + d] : 0.0f;
    };
    load_batch(threadIdx.x, 0);
    if (threadIdx.x < 32) {
      const int lane = threadIdx.x;
      double mx = sinks[h];
      for (int64_t c = lane; c < nc; c += 32) mx = fmax(mx, static_cast<double>(ph[c * (D + 2) + D]));
      for (int off = 16; off > 0; off >>= 1) mx = fmax(mx, __shfl_xor_sync(kFull, mx, off));
      for (int64_t c = lane; c < nc; c += 32) {
        const float m = ph[c * (D + 2) + D], l = ph[c * (D + 2) + D + 1];
        wgt[c] = exp(static_cast<double>(m) - mx);
        sum_sh[c] = l;
      }
      __syncwarp();
      if (lane == 0) {
        double den = exp(static_cast<double>(sinks[h]) - mx);
        for (int64_t c = 0; c < nc; ++c) den += wgt[c] * sum_sh[c];
        den_sh = den;
      }
    }
    __syncthreads();
    const double den = den_sh;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      double acc = 0.0;
      for (int64_t c = 0; c < nc; c += kMergeBatch) {
        if (d != threadIdx.x || c != 0) load_batch(d, c);
#pragma unroll
        for (int j = 0; j < kMergeBatch; ++j)
          if (c + j < nc) acc += wgt[c + j] * v[j];
      }
      out_row[d] = static_cast<float>(acc / den);
    }
  } else {
    if (threadIdx.x == 0) {
      double mx = sinks[h];
      for (int64_t c = 0; c < nc; ++c) mx = fmax(mx, static_cast<double>(ph[c * (D + 2) + D]));
      double den = exp(static_cast<double>(sinks[h]) - mx);
      for (int64_t c = 0; c < nc; ++c) {
        const double w = exp(static_cast<double>(ph[c * (D + 2) + D]) - mx);
        wgt[c] = w;
        den += w * ph[c * (D + 2) + D + 1];
      }
      den_sh = den;
    }
    __syncthreads();
    const double den = den_sh;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      double acc = 0.0;
      for (int64_t c = 0; c < nc; ++c) acc += wgt[c] * ph[c * (D + 2) + d];
      out_row[d] = static_cast<float>(acc / den);
    }
  }
  __syncthreads();
  // 3.4.9: V carries rotated tail dims; de-rotate at the query position.
  rope_row(out_row, D, s.n_rope, omega, pos, true);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) o[h * D + d] = out_row[d];
  if (oq) quantize_q8_0_span(out_row, D, oq + (t * s.NH + h) * (D / QK8_0));
}

// A value written by another block of the same launch (the fused router's logits) is read
// through L2 (__ldcg: no stale L1 line); kL2 false reads plainly.
template <bool kL2>
__device__ __forceinline__ float load_part(const float* p) {
  if constexpr (kL2) return __ldcg(p);
  else return *p;
}

// The block's arrival in a kernel whose last block to finish does a tail job (the fused
// router's routing): every thread's global stores are fenced device-wide, then the block
// counts itself in *counter. Returns, in every thread, whether it was the n-th (last) to
// arrive; that block sets the counter back to 0 (the next launch is ordered after it by the
// kernel boundary: graph replays and PDL included, as a dependent's griddepcontrol.wait waits
// for the whole grid) and then sees every other block's stores when it reads them through L2
// (load_part<true>).
__device__ bool last_block_to_arrive(uint32_t* counter, uint32_t n) {
  __shared__ bool last;
  __threadfence();  // this thread's stores visible device-wide before the block counts itself
  __syncthreads();  // every thread's stores done (and the block's shared memory no longer read)
  if (threadIdx.x == 0) {
    last = atomicAdd(counter, 1u) == n - 1;
    if (last) *counter = 0;
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

__device__ double softplus_d(double t) { return t > 20.0 ? t : log1p(exp(t)); }

// One step of the routing argmax by (biased desc, index asc), the CPU's order: (v, i) replaces
// the best (bv, bi) if it comes first. A NaN never does.
__device__ __forceinline__ void route_argmax_step(float& bv, int32_t& bi, float v, int32_t i) {
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

// The expert a round chooses: the argmax i, or when only NaNs were left (i is still
// 0x7fffffff) the first untaken expert, as the CPU loop does; its biased score is then -inf.
__device__ int32_t route_choose(int32_t i, float* biased, int64_t NE) {
  if (i == 0x7fffffff)
    for (int64_t e = 0; e < NE; ++e)
      if (biased[e] != -INFINITY) { i = static_cast<int32_t>(e); break; }
  if (i == 0x7fffffff) i = 0;
  biased[i] = -INFINITY;
  return i;
}

// Routing of one token by one block (sh: 2 * NE floats of shared memory). kFused (the fused
// router): the logits were written by other blocks of the same launch and are read through
// L2, and the biased top-k runs in one warp.
template <bool kFused>
__device__ void route_block(const float* logits, int64_t NE, int64_t K, const float* bias, const int32_t* tid2eid,
                            bool norm, float scale, const StepCtl* ctl, int32_t* ids, float* weights, float* sh) {
  float* score = sh;
  float* biased = sh + NE;
  for (int64_t e = threadIdx.x; e < NE; e += blockDim.x) {
    score[e] = static_cast<float>(sqrt(softplus_d(static_cast<double>(load_part<kFused>(logits + e)))));
    biased[e] = score[e] + (bias ? bias[e] : 0.0f);
  }
  __shared__ int32_t chosen[64];
  __shared__ float wbest[32];
  __shared__ int32_t wbest_i[32];
  __syncthreads();
  if (tid2eid) {
    if (threadIdx.x == 0)
      for (int64_t k = 0; k < K; ++k) chosen[k] = tid2eid[static_cast<int64_t>(ctl->token) * K + k];
  } else if (kFused) {
    // The same K rounds as below by warp 0 alone, each expert e in lane e % 32: no block
    // barrier per round (the rounds below take two). The argmax by (biased desc, index asc)
    // is a maximum in a total order (NaN never wins, (-inf, 0x7fffffff) is the least), so any
    // reduction order picks the same expert: the same choices in the same order.
    if (threadIdx.x < 32) {
      const int lane = threadIdx.x;
      for (int64_t k = 0; k < K; ++k) {
        float bv = -INFINITY;
        int32_t bi = 0x7fffffff;
        for (int64_t e = lane; e < NE; e += 32) route_argmax_step(bv, bi, biased[e], static_cast<int32_t>(e));
        for (int o = 16; o > 0; o >>= 1)
          route_argmax_step(bv, bi, __shfl_xor_sync(kFull, bv, o), __shfl_xor_sync(kFull, bi, o));
        if (lane == 0) chosen[k] = route_choose(bi, biased, NE);
        __syncwarp();
      }
    }
    __syncthreads();
  } else {
    // K rounds of a block-wide argmax by (biased desc, index asc), the CPU's order (ties keep
    // the lower index); a chosen expert's biased score is set to -inf. One thread scanning
    // all experts K times took ~250 us per layer with 256 experts.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int64_t k = 0; k < K; ++k) {
      float bv = -INFINITY;
      int32_t bi = 0x7fffffff;
      for (int64_t e = threadIdx.x; e < NE; e += blockDim.x)
        route_argmax_step(bv, bi, biased[e], static_cast<int32_t>(e));
      for (int o = 16; o > 0; o >>= 1)
        route_argmax_step(bv, bi, __shfl_down_sync(kFull, bv, o), __shfl_down_sync(kFull, bi, o));
      if (lane == 0) { wbest[warp] = bv; wbest_i[warp] = bi; }
      __syncthreads();
      if (threadIdx.x == 0) {
        float v = wbest[0];
        int32_t i = wbest_i[0];
        for (int w = 1; w < nw; ++w) route_argmax_step(v, i, wbest[w], wbest_i[w]);
        chosen[k] = route_choose(i, biased, NE);
      }
      __syncthreads();
    }
  }
  if (threadIdx.x != 0) return;
  double sum = 0.0;
  for (int64_t k = 0; k < K; ++k) sum += score[chosen[k]];
  for (int64_t k = 0; k < K; ++k) {
    double w = score[chosen[k]];
    if (norm) w /= sum;
    ids[k] = chosen[k];
    weights[k] = static_cast<float>(w * scale);
  }
}

__global__ void route_kernel(const float* logits, int64_t NE, int64_t K, const float* bias,
                             const int32_t* tid2eid, bool norm, float scale, const StepCtl* ctl,
                             int32_t* ids, float* weights) {
  pdl_enter();
  extern __shared__ float sh[];
  const int64_t t = blockIdx.y;  // token blockIdx.y of a batch
  route_block<false>(logits + t * NE, NE, K, bias, tid2eid, norm, scale, ctl + t, ids + t * K, weights + t * K, sh);
}

// The router's product and its routing in one launch (decode, one token). Warp gw computes
// part gw % split of logit row gw / split exactly as the decode product does (matvec.cu, with
// split = product_row_split): lane l sums the part's 16-byte groups l, l + 32, ... in order
// (half8_dot), the lanes are summed by warp_sum, and the split parts of a row in order from 0
// (split 1: the warp's sum as it is), so the logits have the product's bits. The first
// kRouterEarly groups of each lane are requested before pdl_enter (weights never depend on
// the predecessor). The last block to finish then routes on all the logits (route_block,
// the same code as route_kernel).
constexpr int kRouterEarly = 4;
template <bool kBf16>
__global__ void __launch_bounds__(kThreads) fused_router_kernel(const uint4* w, int64_t ngroups, const float* x,
                                                                int split, float* logits, uint32_t* arrivals,
                                                                RouteArgs a, const StepCtl* ctl, CombJob comb) {
  constexpr int kWarpsPerBlock = kThreads / 32;
  // With a CombJob the last block only runs its Sinkhorn (the others do not count it).
  const unsigned product_blocks = gridDim.x - (comb.comb ? 1u : 0u);
  if (comb.comb && blockIdx.x == product_blocks) {
    pdl_enter();
    return comb_job_warp(comb);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t gw = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp, r = gw / split;
  const int64_t part = gw % split, bb = part * ngroups / split, be = (part + 1) * ngroups / split;
  const uint4* row = w + r * ngroups;
  const bool has_row = r < a.NE;
  uint4 early[kRouterEarly];
#pragma unroll
  for (int j = 0; j < kRouterEarly; ++j) {
    const int64_t g = bb + lane + 32 * j;
    if (has_row && g < be) early[j] = __ldcs(row + g);
  }
  pdl_enter();
  const float4* x4 = reinterpret_cast<const float4*>(x);
  float acc = 0.0f;
  if (has_row) {
#pragma unroll
    for (int j = 0; j < kRouterEarly; ++j) {
      const int64_t g = bb + lane + 32 * j;
      if (g < be) acc += half8_dot<kBf16>(early[j], __ldg(x4 + 2 * g), __ldg(x4 + 2 * g + 1));
    }
    for (int64_t g = bb + lane + 32 * kRouterEarly; g < be; g += 32)
      acc += half8_dot<kBf16>(__ldcs(row + g), __ldg(x4 + 2 * g), __ldg(x4 + 2 * g + 1));
  }
  acc = warp_sum(acc);
  __shared__ float parts[kWarpsPerBlock];
  if (lane == 0) parts[warp] = acc;
  __syncthreads();
  const int rows_here = kWarpsPerBlock / split;
  const int64_t out = static_cast<int64_t>(blockIdx.x) * rows_here + threadIdx.x;
  if (static_cast<int>(threadIdx.x) < rows_here && out < a.NE) {
    float sum = 0.0f;
    for (int i = 0; i < split; ++i) sum += parts[threadIdx.x * split + i];
    logits[out] = split == 1 ? parts[threadIdx.x] : sum;
  }
  if (!last_block_to_arrive(arrivals, product_blocks)) return;
  extern __shared__ float sh[];
  route_block<true>(logits, a.NE, a.K, a.bias, a.tid2eid, a.norm, a.scale, ctl, a.ids, a.weights, sh);
}

__device__ float wload(int type, const void* base, int64_t i) {
  if (type == 0) return static_cast<const float*>(base)[i];
  if (type == 1) return __half2float(static_cast<const __half*>(base)[i]);
  return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16);
}
__device__ size_t welem(int type) { return type == 0 ? 4 : 2; }

__global__ void moe_float_gate_up_kernel(int type, const uint8_t* gate, const uint8_t* up, int64_t E,
                                         int64_t F, const int32_t* ids, const float* w, float limit,
                                         const float* x, float* h) {
  pdl_enter();
  const int k = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int64_t f = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (f >= F) return;
  const size_t off = (static_cast<size_t>(ids[k]) * F + f) * E * welem(type);
  float g = 0.0f, u = 0.0f;
  for (int64_t i = lane; i < E; i += 32) {
    g += wload(type, gate + off, i) * x[i];
    u += wload(type, up + off, i) * x[i];
  }
  g = warp_sum_f(g);
  u = warp_sum_f(u);
  if (lane == 0) {
    const float gi = fminf(g, limit);
    const float ui = fminf(fmaxf(u, -limit), limit);
    h[k * F + f] = gi / (1.0f + expf(-gi)) * ui * w[k];
  }
}

__global__ void moe_float_down_kernel(int type, const uint8_t* down, int64_t E, int64_t F,
                                      const int32_t* ids, int K, const float* h, float* y) {
  pdl_enter();
  const int lane = threadIdx.x & 31;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (d >= E) return;
  float total = 0.0f;
  for (int k = 0; k < K; ++k) {
    const size_t off = (static_cast<size_t>(ids[k]) * E + d) * F * welem(type);
    float acc = 0.0f;
    for (int64_t i = lane; i < F; i += 32) acc += wload(type, down + off, i) * h[k * F + i];
    total += warp_sum_f(acc);
  }
  if (lane == 0) y[d] = total;
}

__global__ void add_kernel(const float* a, const float* b, float* y, int64_t n) {
  pdl_enter();
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    y[i] = a[i] + b[i];
}

int grid_for(int64_t n) {
  const int64_t g = (n + kThreads - 1) / kThreads;
  return static_cast<int>(g < 1 ? 1 : (g > 1024 ? 1024 : g));
}

// Grid of a kernel with a token dimension: `per_token` blocks in x, one row of them per token
// in y (blockIdx.y = token index into the batch's StepCtl array and per-token rows).
dim3 token_grid(int64_t per_token, int64_t tokens) {
  DS4_FWD_REQUIRE(tokens >= 1 && tokens <= 65535);
  return dim3(static_cast<unsigned>(per_token), static_cast<unsigned>(tokens));
}

int float_type_code(GgmlType t) {
  return t == GgmlType::F32 ? 0 : t == GgmlType::F16 ? 1 : 2;
}

// DS4_CUDA_NO_BATCHED_LOADS set in the environment runs the kernels that stage rows with their
// serial copy loops (one global round trip per element a thread copies; copy_batched above)
// and the attention merge with its one-thread chunk loop: the same bits, an A/B switch.
// The decode indexer's scores for long contexts (the same scores): DS4_CUDA_NO_IDX_SCORES_V2=1
// scores with idx_scores_kernel (a memory round trip per key row, heads one after another).
// H200, IndexerDecode.PrintsSelectTimesByContext (scores + top 512, us per call in a graph):
// 64K context 74.2 vs 88.9, 128K 121.3 vs 149.8. Read per call (a graph keeps its path).
bool idx_scores_v2() { return std::getenv("DS4_CUDA_NO_IDX_SCORES_V2") == nullptr; }
// DS4_CUDA_NO_IDX_SCORES_V3 set: one row per pass (v2) instead of four (v3); read on every
// call, like the v2 switch. Both give the same scores.
bool idx_scores_v3() { return std::getenv("DS4_CUDA_NO_IDX_SCORES_V3") == nullptr; }
constexpr int kIdxV3Rows = 4;

bool batched_loads() {
  static const bool on = std::getenv("DS4_CUDA_NO_BATCHED_LOADS") == nullptr;
  return on;
}

// Every kernel of this file is launched with programmatic dependent launch (pdl.h) and calls
// pdl_enter() first; the decode step's ~30 launches per layer then overlap their ramps.
template <class... KernelArgs, class... Args>
void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, void* stream, Args&&... args) {
  DS4_CUDA_CHECK(launch_pdl(kernel, grid, block, smem, st(stream), std::forward<Args>(args)...));
}

}  // namespace

void step_begin(StepCtl* ctl, const int32_t* tokens, void* stream) {
  launch(step_begin_kernel, 1, 1, 0, stream, ctl, tokens);
}
void step_end(StepCtl* ctl, void* stream) {
  launch(step_end_kernel, 1, 1, 0, stream, ctl);
}

void embed(GgmlType type, const void* table, size_t row_bytes, int64_t E, int nc, const StepCtl* ctl,
           float* H, void* stream, int64_t tokens) {
  const int code = type == GgmlType::F32 ? 0 : type == GgmlType::F16 ? 1 : type == GgmlType::BF16 ? 2 : 3;
  launch(embed_kernel, token_grid(grid_for(E), tokens), kThreads, 0, stream, code, static_cast<const uint8_t*>(table), row_bytes, E, nc,
         ctl, H);
}

void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t rows, float eps, void* stream) {
  launch(rmsnorm_kernel, static_cast<unsigned>(rows), kThreads, 0, stream, x, w, y, n, eps);
}

void hc_pre(const HcShape& s, const float* mix_raw, const float* H, const float* base, const float* scale,
            float* a, float* post, float* comb, void* stream, int64_t tokens) {
  launch(hc_pre_kernel, token_grid(1, tokens), 1024, 0, stream, s, mix_raw, H, base, scale, a, post, comb);
}
size_t hc_fused_scratch_bytes(const HcShape& s) { return HcLayout(s, hc_pre_mix_rows(s)).total; }

namespace {
// DS4_CUDA_NO_HC_V3 set in the environment runs the fused HC pre in its two launches
// (hc_mix_kernel + hc_apply_kernel) instead of hc_pre_one_launch_kernel: an A/B switch.
bool hc_one_launch_enabled() {
  static const bool on = std::getenv("DS4_CUDA_NO_HC_V3") == nullptr;
  return on;
}
// DS4_CUDA_NO_HC_CLUSTER=1 runs hc_pre_one_launch_kernel where hc_pre_cluster_kernel would
// (A/B switch); DS4_CUDA_HC_CLUSTER=8 makes the cluster 8 blocks instead of 16 (measurements;
// 8 is also where a GPU cannot hold a cluster of 16). H200, Flash q2 at 2K, in a graph:
// hc_post_pre_fused with its extras 5.34 us (16), 6.43 (8), 7.22 (one-launch kernel); decode
// 150.6 / 151.4 tok/s (16), 146.8 / 146.5 (8), 147.4 / 147.8 (one-launch kernel). With 8
// blocks each SM loads 96 KB of fn weights, with 16 48 KB. Read at every launch (a decode
// step's launches are captured once into its graph), so that tests can run all three.
int hc_cluster_size() {
  if (std::getenv("DS4_CUDA_NO_HC_CLUSTER") != nullptr) return 0;
  const char* cs = std::getenv("DS4_CUDA_HC_CLUSTER");
  return cs != nullptr && std::atoi(cs) == 8 ? 8 : 16;
}
// Whether one cluster of kernel's kCs blocks can be resident on this GPU (once per kernel).
template <class Kernel>
bool cluster_fits(Kernel kernel, int cs) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(cs));
  cfg.blockDim = dim3(kHcClThreads);
  cudaLaunchAttribute attr[1] = {cluster_attribute(static_cast<unsigned>(cs))};
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (cs > 8 && cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  int n = 0;
  if (cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n >= 1;
}
template <bool kPost, int kCs>
bool launch_hc_cluster_t(const HcShape& s, const HcPostIn* p, int code, const uint8_t* w, const float* H,
                         float* H_post, const float* base, const float* scale, const float* norm, float* a, float* x,
                         float* post, float* comb, const HcPreExtras& ex, void* stream) {
  const auto kernel = hc_pre_cluster_kernel<kPost, kCs>;
  static const bool fits = device_attribute(cudaDevAttrComputeCapabilityMajor) >= 9 && cluster_fits(kernel, kCs);
  if (!fits) return false;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(kCs);
  cfg.blockDim = dim3(kHcClThreads);
  cfg.stream = st(stream);
  cudaLaunchAttribute attr[2] = {cluster_attribute(kCs), pdl_attribute()};
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 2 : 1;
  DS4_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, s, code, w, H, p ? *p : HcPostIn{}, H_post, base, scale, norm, a, x,
                                    post, comb, static_cast<BlockQ8_0Act*>(ex.x_q8), ex.defer_sinkhorn));
  return true;
}
// The HC pre as one cluster where it applies (nc 4 x E 4096, 24 fn rows, 16-byte aligned fn;
// the caller, hc_fused_launches, has checked norm's alignment); false: not launched.
bool launch_hc_cluster(const HcShape& s, int64_t n_mix, const HcPostIn* p, int code, const uint8_t* w,
                       const float* H, float* H_post, const float* base, const float* scale, const float* norm,
                       float* a, float* x, float* post, float* comb, const HcPreExtras& ex, void* stream) {
  const int cs = hc_cluster_size();
  if (cs == 0 || s.nc != kHcClNc || s.E != kHcClE || n_mix != kHcClMix || (reinterpret_cast<uintptr_t>(w) & 15) != 0)
    return false;
  if (cs == 16 &&
      (p ? launch_hc_cluster_t<true, 16>(s, p, code, w, H, H_post, base, scale, norm, a, x, post, comb, ex, stream)
         : launch_hc_cluster_t<false, 16>(s, p, code, w, H, H_post, base, scale, norm, a, x, post, comb, ex, stream)))
    return true;
  return p ? launch_hc_cluster_t<true, 8>(s, p, code, w, H, H_post, base, scale, norm, a, x, post, comb, ex, stream)
           : launch_hc_cluster_t<false, 8>(s, p, code, w, H, H_post, base, scale, norm, a, x, post, comb, ex, stream);
}
template <bool kHead, int kNc>
void launch_hc_one(const HcShape& s, int64_t n_mix, const HcPostIn* p, int code, const uint8_t* w, const float* H,
                   float* H_post, const float* base, const float* scale, const float* norm, float* a, float* x,
                   float* post, float* comb, uint8_t* scr, const HcPreExtras& ex, void* stream) {
  const auto nb = static_cast<unsigned>(HcLayout(s, n_mix).nb);
  auto* xq = static_cast<BlockQ8_0Act*>(ex.x_q8);
  if (p)
    launch(hc_pre_one_launch_kernel<true, kHead, kNc>, nb, kHcOneThreads, 0, stream, s, n_mix, code, w, H, *p, H_post,
           base, scale, norm, a, x, post, comb, scr, xq, ex.defer_sinkhorn);
  else
    launch(hc_pre_one_launch_kernel<false, kHead, kNc>, nb, kHcOneThreads, 0, stream, s, n_mix, code, w, H,
           HcPostIn{}, H_post, base, scale, norm, a, x, post, comb, scr, xq, ex.defer_sinkhorn);
}
// The two launches of hc_pre_fused, hc_post_pre_fused and hc_head_fused: the fn partials
// (after hc_post p when given, which writes the state to H), then the reduction and the
// normalized collapse (kHead: the head's, of n_mix = nc fn rows).
// Returns whether the one-launch kernel ran (and so carried out ex).
template <bool kHead>
bool hc_fused_launches(const HcShape& s, int64_t n_mix, const HcPostIn* p, const float* H, float* H_post,
                       GgmlType fn_type, const void* fn, const float* base, const float* scale, const float* norm,
                       float* a, float* x, float* post, float* comb, void* scratch, void* stream,
                       const HcPreExtras& ex = {}) {
  DS4_FWD_REQUIRE(s.nc <= kMaxHc && s.E % 4 == 0);
  DS4_FWD_REQUIRE(fn_type == GgmlType::F32 || fn_type == GgmlType::F16 || fn_type == GgmlType::BF16);
  const HcLayout L(s, n_mix);
  auto* scr = static_cast<uint8_t*>(scratch);
  const auto* w = static_cast<const uint8_t*>(fn);
  const int code = float_type_code(fn_type);
  if (hc_one_launch_enabled() && s.E <= kHcOneMaxE && (reinterpret_cast<uintptr_t>(norm) & 15) == 0) {
    DS4_FWD_REQUIRE(!ex.x_q8 || s.E % 128 == 0);
    if (!kHead && launch_hc_cluster(s, n_mix, p, code, w, H, H_post, base, scale, norm, a, x, post, comb, ex, stream))
      return true;
    auto one = s.nc == 4 ? launch_hc_one<kHead, 4> : launch_hc_one<kHead, 0>;
    one(s, n_mix, p, code, w, H, H_post, base, scale, norm, a, x, post, comb, scr, ex, stream);
    return true;
  }
  const auto nb = static_cast<unsigned>(L.nb);
  if (p) launch(hc_mix_kernel<true>, nb, kHcCols, 0, stream, s, n_mix, code, w, H, *p, H_post, scr);
  else launch(hc_mix_kernel<false>, nb, kHcCols, 0, stream, s, n_mix, code, w, H, HcPostIn{}, H_post, scr);
  launch(hc_apply_kernel<kHead>, static_cast<unsigned>(L.nb2 + (kHead ? 0 : 1)), kHcApplyThreads, 0, stream, s,
         n_mix, H, base, scale, norm, a, x, post, comb, static_cast<const uint8_t*>(scr));
  return false;
}
}  // namespace

bool hc_pre_fused(const HcShape& s, GgmlType fn_type, const void* fn, const float* H, const float* base,
                  const float* scale, const float* norm, float* a, float* x, float* post, float* comb,
                  void* scratch, void* stream, const HcPreExtras& ex) {
  return hc_fused_launches<false>(s, hc_pre_mix_rows(s), nullptr, H, nullptr, fn_type, fn, base, scale, norm, a, x,
                                  post, comb, scratch, stream, ex);
}
bool hc_post_pre_fused(const HcShape& s, const HcPostIn& p, float* H, GgmlType fn_type, const void* fn,
                       const float* base, const float* scale, const float* norm, float* a, float* x, float* post,
                       float* comb, void* scratch, void* stream, const HcPreExtras& ex) {
  return hc_fused_launches<false>(s, hc_pre_mix_rows(s), &p, H, H, fn_type, fn, base, scale, norm, a, x, post, comb,
                                  scratch, stream, ex);
}
void hc_comb_sinkhorn(const HcShape& s, float* comb, void* stream) {
  DS4_FWD_REQUIRE(s.nc <= kMaxHc);
  launch(s.nc == 4 ? hc_comb_sinkhorn_kernel<4> : hc_comb_sinkhorn_kernel<0>, 1, 32, 0, stream, s, comb);
}
void hc_head_fused(const HcShape& s, const HcPostIn* p, float* H, GgmlType fn_type, const void* fn,
                   const float* base, const float* scale, const float* norm, float* x, void* scratch,
                   void* stream) {
  hc_fused_launches<true>(s, s.nc, p, H, H, fn_type, fn, base, scale, norm, nullptr, x, nullptr, nullptr, scratch,
                          stream);
}

void hc_post(const HcShape& s, const float* f, const float* H_in, const float* post, const float* comb,
             float* H_out, void* stream, int64_t tokens) {
  launch(hc_post_kernel, token_grid(grid_for(s.nc * s.E), tokens), kThreads, 0, stream, s, HcPostIn{f, H_in, post, comb},
         H_out);
}
void hc_head(const HcShape& s, const float* mix_raw, const float* H, const float* base, const float* scale,
             float* x, void* stream) {
  launch(hc_head_kernel, 1, 1024, 0, stream, s, mix_raw, H, base, scale, x);
}

void rows_finish_jobs(const RowsJob* jobs, int n_jobs, const float* omega, const StepCtl* ctl, void* stream,
                      int64_t tokens, const CombJob* comb) {
  DS4_FWD_REQUIRE(n_jobs >= 1 && n_jobs <= kMaxRowsJobs);
  DS4_FWD_REQUIRE(!comb || (tokens == 1 && comb->s.nc <= kMaxHc));
  RowsJobs js;
  int64_t rows = 0, d = 0;
  for (int i = 0; i < n_jobs; ++i) {
    DS4_FWD_REQUIRE(jobs[i].rows >= 1);
    DS4_FWD_REQUIRE(jobs[i].act == nullptr || jobs[i].f.d % QK8_0 == 0);
    js.job[i] = jobs[i];
    rows += jobs[i].rows;
    d = std::max(d, jobs[i].f.d);
  }
  launch(rows_finish_kernel, token_grid(rows + (comb ? 1 : 0), tokens), kThreads, static_cast<size_t>(d) * sizeof(float),
         stream, js, omega, ctl, batched_loads(), comb ? *comb : CombJob{});
}

void rows_finish(const RowFinish& f, const float* omega, const float* in, float* out, int64_t rows,
                 int64_t stride, int64_t ring_cap, const StepCtl* ctl, void* stream, int64_t tokens) {
  const RowsJob job{f, in, out, rows, stride, ring_cap, nullptr};
  rows_finish_jobs(&job, 1, omega, ctl, stream, tokens);
}

void comp_store(const float* kv, const float* sc, const float* ape, int64_t width, int64_t ratio,
                float* ring_kv, float* ring_sc, int64_t cap, const StepCtl* ctl, void* stream, int64_t tokens) {
  launch(comp_store_kernel, token_grid(grid_for(width), tokens), kThreads, 0, stream, kv, sc, ape, width, ratio, ring_kv, ring_sc, cap,
         ctl, batched_loads());
}

void comp_emit(const RowFinish& f, const float* omega, const float* ring_kv, const float* ring_sc,
               int64_t cap, int64_t ratio, int c, float* rows, const StepCtl* ctl, void* stream, int64_t tokens) {
  launch(comp_emit_kernel, token_grid(1, tokens), kThreads, f.d * sizeof(float), stream, f, omega, ring_kv, ring_sc, cap, ratio, c, rows,
         ctl);
}

void comp_store_emit(const CompJob* jobs, int n_jobs, const float* omega, int64_t cap, int64_t ratio,
                     const StepCtl* ctl, void* stream) {
  DS4_FWD_REQUIRE(n_jobs >= 1 && n_jobs <= kMaxCompJobs);
  CompJobs p{};
  int64_t d_max = 0;
  for (int i = 0; i < n_jobs; ++i) {
    DS4_FWD_REQUIRE(jobs[i].c == 1 || jobs[i].c == 2);
    p.job[i] = jobs[i];
    d_max = std::max(d_max, jobs[i].f.d);
  }
  launch(comp_store_emit_kernel, static_cast<unsigned>(n_jobs), kThreads, d_max * sizeof(float), stream, p, omega,
         cap, ratio, ctl, batched_loads());
}

void idx_prep_q(float* q, int64_t NI, int64_t DI, int64_t n_rope, const float* omega, bool official,
                const StepCtl* ctl, void* stream, int64_t tokens) {
  RowFinish f;
  f.d = DI;
  f.n_rope = n_rope;
  f.do_norm = false;
  f.sim = official ? Sim::HadamardFp4 : Sim::None;
  rows_finish(f, omega, q, q, NI, DI, 0, ctl, stream, tokens);
}

void idx_select(const float* q, const float* wts, float wscale, int64_t NI, int64_t DI, const float* icomp,
                int64_t ratio, int64_t K, float* scores, int32_t* sel, int32_t* n_sel, const StepCtl* ctl,
                void* stream, int64_t tokens, int64_t scores_stride) {
  const size_t smem = static_cast<size_t>(NI * DI + (kThreads / 32) * DI) * sizeof(float);
  DS4_FWD_REQUIRE(smem <= 48 * 1024);  // q staged in shared memory (Flash: 64 x 128 floats, 36 KB in all)
  DS4_FWD_REQUIRE(tokens == 1 || scores_stride > 0);
  const bool v2_shape = NI == 64 && DI % 32 == 0 && DI <= kIdxMaxDi;
  const size_t smem_v3 = static_cast<size_t>(NI * DI + (kThreads / 32) * DI * kIdxV3Rows) * sizeof(float);
  if (idx_scores_v2() && idx_scores_v3() && v2_shape && smem_v3 <= 48 * 1024)  // Flash: exactly 48 KB
    launch(idx_scores_v3_kernel<2, kIdxV3Rows>, token_grid(264, tokens), kThreads, smem_v3, stream, q, wts, wscale,
           NI, DI, icomp, ratio, K, scores, scores_stride, ctl);
  else if (idx_scores_v2() && v2_shape)
    launch(idx_scores_v3_kernel<2, 1>, token_grid(264, tokens), kThreads, smem, stream, q, wts, wscale, NI, DI, icomp,
           ratio, K, scores, scores_stride, ctl);
  else
    launch(idx_scores_kernel, token_grid(264, tokens), kThreads, smem, stream, q, wts, wscale, NI, DI, icomp, ratio,
           K, scores, scores_stride, ctl);
  idx_topk(scores, scores_stride, ratio, K, sel, n_sel, ctl, stream, tokens);
}

void idx_topk(const float* scores, int64_t scores_stride, int64_t ratio, int64_t K, int32_t* sel, int32_t* n_sel,
              const StepCtl* ctl, void* stream, int64_t tokens) {
  DS4_FWD_REQUIRE(K <= topk_detail::kTopkMaxK);
  launch(idx_topk_kernel, token_grid(1, tokens), topk_detail::kTopkThreads, 0, stream, scores, scores_stride, ratio, K,
         sel, n_sel, ctl);
}

size_t attention_scratch_floats(const AttnShape& s) {
  const int64_t nchunks = (std::max<int64_t>(s.max_rows, 1) + kAttnChunk - 1) / kAttnChunk;
  return static_cast<size_t>(s.NH * nchunks * (s.D + 2));
}

namespace {
// The decode/batched attention's first launch with register tiles (attention_part_v2_kernel);
// DS4_CUDA_NO_ATTN_PART_V2=1 runs attention_part_kernel (read per call: a captured graph keeps
// the kernel of its capture).
bool attention_part_v2() { return std::getenv("DS4_CUDA_NO_ATTN_PART_V2") == nullptr; }

template <bool kBatched>
void attention_launches(const AttnShape& s, const float* q, const float* ring, const float* comp, const int32_t* sel,
                        const int32_t* n_sel, const float* sinks, const float* omega, float* scratch, float* o,
                        const StepCtl* ctl, void* stream, int64_t tokens, int64_t sel_stride, void* o_q8,
                        bool early_rows) {
  const float scale = 1.0f / sqrtf(static_cast<float>(s.D));
  const int64_t nchunks = (std::max<int64_t>(s.max_rows, 1) + kAttnChunk - 1) / kAttnChunk;
  const size_t smem = attn_part_smem(s.D);
  // Above 48 KB of dynamic shared memory a kernel must opt in; once, before any capture
  // (the session's first step runs with plain launches).
  static const int max_smem = [] {
    const int optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
    DS4_CUDA_CHECK(
        cudaFuncSetAttribute(attention_part_kernel<kBatched>, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
    return optin;
  }();
  DS4_FWD_REQUIRE(smem <= static_cast<size_t>(max_smem));
  const unsigned groups = static_cast<unsigned>((s.NH + kAttnHeads - 1) / kAttnHeads);
  const dim3 grid(static_cast<unsigned>(nchunks), groups, static_cast<unsigned>(tokens));
  if (attention_part_v2() && s.D <= 4 * 32 * kPartMaxVecPerLane) {
    static const bool v2_optin = [] {
      DS4_CUDA_CHECK(cudaFuncSetAttribute(attention_part_v2_kernel<kBatched>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin)));
      return true;
    }();
    (void)v2_optin;
    launch(attention_part_v2_kernel<kBatched>, grid, kThreads, attn_part_v2_smem(s.D), stream, s, scale, q, ring,
           comp, sel, n_sel, sel_stride, scratch, ctl, early_rows && tokens == 1);
  } else {
    launch(attention_part_kernel<kBatched>, grid, kThreads, smem, stream, s, scale, q, ring, comp, sel, n_sel,
           sel_stride, scratch, ctl);
  }
  const size_t msmem = static_cast<size_t>(nchunks) * (sizeof(double) + sizeof(float)) +
                       static_cast<size_t>(s.D) * sizeof(float);
  launch(attention_merge_kernel<kBatched>, token_grid(s.NH, tokens), kBatched ? kMergeThreads : kThreads, msmem,
         stream, s, sel, n_sel, sel_stride, sinks, omega, scratch, static_cast<int>(nchunks), o,
         static_cast<BlockQ8_0Act*>(o_q8), ctl);
}
}  // namespace

void attention(const AttnShape& s, const float* q, const float* ring, const float* comp, const int32_t* sel,
               const int32_t* n_sel, const float* sinks, const float* omega, float* scratch, float* o,
               const StepCtl* ctl, void* stream, int64_t tokens, int64_t sel_stride, void* o_q8,
               bool early_rows) {
  DS4_FWD_REQUIRE(tokens >= 1 && tokens <= 65535);
  DS4_FWD_REQUIRE(s.D % 4 == 0);
  DS4_FWD_REQUIRE(!o_q8 || s.D % QK8_0 == 0);
  early_rows = early_rows && std::getenv("DS4_CUDA_NO_ATTN_EARLY_ROWS") == nullptr;
  if (batched_loads())
    attention_launches<true>(s, q, ring, comp, sel, n_sel, sinks, omega, scratch, o, ctl, stream, tokens, sel_stride,
                             o_q8, early_rows);
  else
    attention_launches<false>(s, q, ring, comp, sel, n_sel, sinks, omega, scratch, o, ctl, stream, tokens,
                              sel_stride, o_q8, early_rows);
}

void route(const float* logits, int64_t NE, int64_t K, const float* bias, const int32_t* tid2eid, bool norm,
           float scale, const StepCtl* ctl, int32_t* ids, float* weights, void* stream, int64_t tokens) {
  launch(route_kernel, token_grid(1, tokens), kThreads, 2 * NE * sizeof(float), stream, logits, NE, K, bias, tid2eid, norm, scale, ctl,
         ids, weights);
}

bool fused_router_fits(GgmlType type, const void* w, int64_t NE, int64_t ncols, int64_t K) {
  constexpr int64_t kMaxRouted = 64, kMaxExperts = 4096;  // route_block's chosen[64]; 2 * NE floats of shared memory
  return (type == GgmlType::F16 || type == GgmlType::BF16) && reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
         ncols % 8 == 0 && NE >= 1 && NE <= kMaxExperts && K >= 1 && K <= std::min(kMaxRouted, NE);
}

void fused_router(GgmlType type, const void* w, int64_t ncols, const float* x, float* logits, uint32_t* arrivals,
                  const RouteArgs& a, const StepCtl* ctl, void* stream, const CombJob* comb) {
  DS4_FWD_REQUIRE(fused_router_fits(type, w, a.NE, ncols, a.K));
  DS4_FWD_REQUIRE(!comb || comb->s.nc <= kMaxHc);
  const int64_t ngroups = ncols / 8;  // 16-byte groups of 8 weights per row
  const int split = detail::product_row_split(a.NE, ngroups);
  const auto kernel = type == GgmlType::BF16 ? fused_router_kernel<true> : fused_router_kernel<false>;
  const int64_t blocks = (a.NE * split + kThreads / 32 - 1) / (kThreads / 32) + (comb ? 1 : 0);
  launch(kernel, static_cast<unsigned>(blocks), kThreads, 2 * a.NE * sizeof(float), stream,
         static_cast<const uint4*>(w), ngroups, x, split, logits, arrivals, a, ctl, comb ? *comb : CombJob{});
}

void moe_float(GgmlType type, const void* gate, const void* up, const void* down, int64_t E, int64_t F,
               const int32_t* ids, const float* w, int K, float limit, const float* x, float* h, float* y,
               void* stream) {
  const int code = float_type_code(type);
  const int wpb = kThreads / 32;
  launch(moe_float_gate_up_kernel, dim3(static_cast<unsigned>((F + wpb - 1) / wpb), K), kThreads, 0, stream, code,
         static_cast<const uint8_t*>(gate), static_cast<const uint8_t*>(up), E, F, ids, w, limit, x, h);
  launch(moe_float_down_kernel, static_cast<unsigned>((E + wpb - 1) / wpb), kThreads, 0, stream, code,
         static_cast<const uint8_t*>(down), E, F, ids, K, h, y);
}

void add(const float* a, const float* b, float* y, int64_t n, void* stream) {
  launch(add_kernel, grid_for(n), kThreads, 0, stream, a, b, y, n);
}

void copy(const float* src, float* dst, int64_t n, void* stream) {
  DS4_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * sizeof(float), cudaMemcpyDeviceToDevice,
                                 st(stream)));
}

}  // namespace ds4::cuda::fwd
