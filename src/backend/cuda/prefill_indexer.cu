// Indexer scores of a prefill chunk as (queries x rows) tiles (prefill_indexer.h).
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/check.h"
#include "backend/cuda/prefill_indexer.h"

namespace ds4::cuda::pre {
namespace {

constexpr int kThreads = 256;
constexpr int kQH = 128;    // query-head rows of a block: 128 / NI queries, all their heads
constexpr int kRows = 64;   // compressed rows of a block
constexpr int kSlice = 32;  // dims of q and the rows staged at a time
constexpr int kPerQ = 8;    // query-head rows of a thread (16 thread rows x 8 = kQH)
constexpr int kPerR = 4;    // compressed rows of a thread (16 thread columns x 4 = kRows)
static_assert(kThreads == (kQH / kPerQ) * (kRows / kPerR), "a thread per 8 x 4 register tile");
// Staged slices, transposed ([dim][query-head row], [dim][row]) so that a thread reads its 8
// query-head values and 4 row values of one dim as float4s. The strides are multiples of 4
// (float4 alignment) and not of 32, so the fills spread over the banks.
constexpr int kQStride = kQH + 4;
constexpr int kRStride = kRows + 4;
constexpr int kStageFloats = kSlice * kQStride + kSlice * kRStride;
// The block's dot products afterwards ([query-head row][row], odd stride: a warp reading 32
// heads of one row hits 32 banks). They reuse the staging memory.
constexpr int kDotStride = kRows + 1;
constexpr int kDotFloats = kQH * kDotStride;
constexpr int kSmemFloats = kStageFloats > kDotFloats ? kStageFloats : kDotFloats;
constexpr int kQLoads = kQH * kSlice / kThreads;    // q values a thread stages per slice
constexpr int kRLoads = kRows * kSlice / kThreads;  // row values a thread stages per slice

// The decode kernel's warp reduction (forward_kernels.cu warp_sum_d): the same shuffle tree.
__device__ double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

__device__ int64_t visible_rows(const fwd::StepCtl* ctl, int64_t t, int64_t ratio) { return (ctl[t].pos + 1) / ratio; }

// Block (x = row tile, y = query tile): queries q0 .. q0 + 128 / NI - 1 against compressed
// rows row0 .. row0 + 63. Two blocks per SM (<= 128 registers a thread).
__global__ void __launch_bounds__(kThreads, 2)
    idx_scores_tiled_kernel(const float* q, const float* wts, float wscale, int NI, int DI, const float* icomp,
                            int64_t ratio, int64_t K, float* scores, int64_t scores_stride, const fwd::StepCtl* ctl,
                            int64_t tokens) {
  __shared__ __align__(16) float smem[kSmemFloats];
  float* qs = smem;                       // [kSlice][kQStride]
  float* rs = smem + kSlice * kQStride;   // [kSlice][kRStride]
  float* dots = smem;                     // [kQH][kDotStride], after the products
  const int per_block = kQH / NI;         // queries of the block
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * per_block;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  // Rows any query of the block scores (queries seeing <= K rows score none).
  int64_t rows_hi = 0;
  for (int j = 0; j < per_block; ++j) {
    if (q0 + j >= tokens) break;
    const int64_t n_vis = visible_rows(ctl, q0 + j, ratio);
    if (n_vis > K && n_vis > rows_hi) rows_hi = n_vis;
  }
  if (row0 >= rows_hi) return;  // the same for every thread of the block

  // Query-head rows of the block: q + (q0 * NI + m) * DI for m < kQH (past `tokens`: zero).
  const int64_t qh_valid = (tokens - q0) * NI < kQH ? (tokens - q0) * NI : kQH;
  const float* qb = q + q0 * NI * DI;
  float qv[kQLoads], rv[kRLoads];
  // Consecutive threads load consecutive dims of one row (coalesced).
  auto load = [&](int k0) {
#pragma unroll
    for (int j = 0; j < kQLoads; ++j) {
      const int i = threadIdx.x + kThreads * j, m = i / kSlice, k = i % kSlice;
      qv[j] = m < qh_valid ? qb[static_cast<int64_t>(m) * DI + k0 + k] : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kRLoads; ++j) {
      const int i = threadIdx.x + kThreads * j, r = i / kSlice, k = i % kSlice;
      rv[j] = row0 + r < rows_hi ? icomp[(row0 + r) * DI + k0 + k] : 0.0f;
    }
  };
  const int tr = threadIdx.x % (kRows / kPerR), tq = threadIdx.x / (kRows / kPerR);
  float acc[kPerQ][kPerR];
#pragma unroll
  for (int a = 0; a < kPerQ; ++a)
#pragma unroll
    for (int b = 0; b < kPerR; ++b) acc[a][b] = 0.0f;
  load(0);
  for (int k0 = 0; k0 < DI; k0 += kSlice) {
#pragma unroll
    for (int j = 0; j < kQLoads; ++j) {
      const int i = threadIdx.x + kThreads * j;
      qs[(i % kSlice) * kQStride + i / kSlice] = qv[j];
    }
#pragma unroll
    for (int j = 0; j < kRLoads; ++j) {
      const int i = threadIdx.x + kThreads * j;
      rs[(i % kSlice) * kRStride + i / kSlice] = rv[j];
    }
    __syncthreads();
    if (k0 + kSlice < DI) load(k0 + kSlice);  // the next slice's loads overlap these FMAs
#pragma unroll 4
    for (int k = 0; k < kSlice; ++k) {
      const float4 qa = *reinterpret_cast<const float4*>(qs + k * kQStride + tq * kPerQ);
      const float4 qc = *reinterpret_cast<const float4*>(qs + k * kQStride + tq * kPerQ + 4);
      const float4 rr = *reinterpret_cast<const float4*>(rs + k * kRStride + tr * kPerR);
      const float a[kPerQ] = {qa.x, qa.y, qa.z, qa.w, qc.x, qc.y, qc.z, qc.w};
      const float b[kPerR] = {rr.x, rr.y, rr.z, rr.w};
      // dims in ascending order, one FMA chain per dot product: idx_select's order
#pragma unroll
      for (int x = 0; x < kPerQ; ++x)
#pragma unroll
        for (int y = 0; y < kPerR; ++y) acc[x][y] = __fmaf_rn(a[x], b[y], acc[x][y]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int x = 0; x < kPerQ; ++x)
#pragma unroll
    for (int y = 0; y < kPerR; ++y) dots[(tq * kPerQ + x) * kDotStride + tr * kPerR + y] = acc[x][y];
  __syncthreads();

  // score(query, row) = sum over heads of relu(dot) * weight, as idx_scores_kernel: a warp
  // per score, lane l sums heads l, l + 32, .. in double, then the shuffle tree.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = kThreads / 32;
  for (int j = warp; j < per_block * kRows; j += n_warps) {
    const int qi = j / kRows, r = j % kRows;
    const int64_t t = q0 + qi, w = row0 + r;
    if (t >= tokens) break;  // later j are later queries
    const int64_t n_vis = visible_rows(ctl, t, ratio);
    if (n_vis <= K || w >= n_vis) continue;  // the same for the whole warp
    const float* wt = wts + t * NI;
    double s = 0.0;
    for (int h = lane; h < NI; h += 32) {
      const float d = dots[(qi * NI + h) * kDotStride + r];
      if (d > 0.0f) s = __fma_rn(static_cast<double>(__fmul_rn(wt[h], wscale)), static_cast<double>(d), s);
    }
    s = warp_sum_d(s);
    if (lane == 0) scores[t * scores_stride + w] = static_cast<float>(s);
  }
}

}  // namespace

bool idx_scores_tiled_supported(int64_t NI, int64_t DI) {
  return NI > 0 && NI <= kQH && kQH % NI == 0 && DI > 0 && DI % kSlice == 0;
}

void idx_scores_tiled(const float* q, const float* wts, float wscale, int64_t NI, int64_t DI, const float* icomp,
                      int64_t ratio, int64_t K, int64_t max_rows, float* scores, int64_t scores_stride,
                      const fwd::StepCtl* ctl, int64_t tokens, void* stream) {
  const cudaError_t bad = cudaErrorInvalidValue;
  DS4_CUDA_CHECK(idx_scores_tiled_supported(NI, DI) && ratio > 0 && tokens >= 0 ? cudaSuccess : bad);
  if (tokens == 0 || max_rows <= K) return;  // no query scores
  DS4_CUDA_CHECK(scores_stride >= max_rows ? cudaSuccess : bad);
  const int64_t per_block = kQH / NI;
  const dim3 grid(static_cast<unsigned>((max_rows + kRows - 1) / kRows),
                  static_cast<unsigned>((tokens + per_block - 1) / per_block));
  DS4_CUDA_CHECK(grid.y <= 65535 ? cudaSuccess : bad);
  idx_scores_tiled_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      q, wts, wscale, static_cast<int>(NI), static_cast<int>(DI), icomp, ratio, K, scores, scores_stride, ctl, tokens);
  DS4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ds4::cuda::pre
