// Indexer scores of a prefill chunk as (queries x rows) tiles (prefill_indexer.h).
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "backend/cuda/check.h"
#include "backend/cuda/mma.cuh"
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

// The scores of a block's queries q0 .. q0 + kQH / NI - 1 and rows row0 .. row0 + kRows - 1
// from their dot products dots[query-head row][row] (stride kDotStride, in shared memory):
// score(query, row) = sum over heads of relu(dot) * weight, as idx_scores_kernel: a warp per
// score, lane l sums heads l, l + 32, .. in double, then the shuffle tree.
__device__ void head_sums(const float* dots, const float* wts, float wscale, int NI, int64_t ratio, int64_t K,
                          float* scores, int64_t scores_stride, const fwd::StepCtl* ctl, int64_t tokens, int64_t q0,
                          int64_t row0) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = kThreads / 32;
  const int per_block = kQH / NI;
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

// The highest row any query of the block q0 .. q0 + per_block - 1 scores (0: none; queries
// seeing <= K rows score none).
__device__ int64_t block_rows(const fwd::StepCtl* ctl, int64_t q0, int per_block, int64_t tokens, int64_t ratio,
                              int64_t K) {
  int64_t rows_hi = 0;
  for (int j = 0; j < per_block; ++j) {
    if (q0 + j >= tokens) break;
    const int64_t n_vis = visible_rows(ctl, q0 + j, ratio);
    if (n_vis > K && n_vis > rows_hi) rows_hi = n_vis;
  }
  return rows_hi;
}

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
  const int64_t rows_hi = block_rows(ctl, q0, per_block, tokens, ratio, K);
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

  head_sums(dots, wts, wscale, NI, ratio, K, scores, scores_stride, ctl, tokens, q0, row0);
}


// ---- tensor-core scores (prefill_indexer.h: idx_scores_tc)

constexpr int kBlockDims = 32;   // dims of a unit block (the FP4 simulation's block) = one k32 MMA step
constexpr int kTcMaxDI = 128;
constexpr int kMaxUnitSpan = 4;  // log2 of the widest unit ratio inside an exact row
constexpr int kUnitExpLimit = 60;
// Staged code rows: 16 bytes of padding make a row 36 words, so the fragment loads (lane g, t
// reads word 36 g + t) hit 32 banks.
constexpr int kCodeStride = kTcMaxDI + 16;

// One row per warp: for each block of 32 dims, lane l takes dim l. A block with amax > 0 gets
// the unit u = 2^(floor(log2 amax) - 3) (amax / u in [8, 16)), so an FP4-simulated block
// (values 0.5 s * integer with amax <= 6 s) has integer codes v / u, |v / u| < 16.
__global__ void idx_codes_kernel(const float* x, int64_t rows, int DI, int8_t* code, float* unit, uint8_t* inexact) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;  // the same for the whole warp
  const int nb = DI / kBlockDims;
  bool exact = true;
  int e_min = INT_MAX, e_max = INT_MIN;
  for (int b = 0; b < nb; ++b) {
    const int64_t i = row * DI + b * kBlockDims + lane;
    const float v = x[i];
    float amax = fabsf(v);
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    float c = 0.0f, u = 0.0f;
    if (amax > 0.0f && amax <= 3.0e38f) {  // (a NaN amax fails both tests: inexact)
      const int e = ilogbf(amax) - 3;
      e_min = min(e_min, e);
      e_max = max(e_max, e);
      if (e >= -kUnitExpLimit && e <= kUnitExpLimit) {
        u = ldexpf(1.0f, e);
        c = __fmul_rn(v, ldexpf(1.0f, -e));  // exact: a power of two, no underflow in range
      }
    } else if (amax != 0.0f) {
      exact = false;
    }
    // An integer code below 16 that gives v back (a NaN v fails; so does a value lost to
    // underflow in v / u).
    exact = exact && c == truncf(c) && fabsf(c) < 16.0f && __fmul_rn(c, u) == v;
    code[i] = static_cast<int8_t>(exact ? static_cast<int>(c) : 0);
    if (lane == 0) unit[row * nb + b] = u;
  }
  exact = exact && (e_min == INT_MAX || (e_max - e_min <= kMaxUnitSpan && e_min >= -kUnitExpLimit &&
                                         e_max <= kUnitExpLimit));
  const bool row_exact = __all_sync(0xffffffffu, exact);
  if (lane == 0) inexact[row] = row_exact ? 0 : 1;
}

struct TcSmem {
  union {
    struct {
      int8_t q[kQH][kCodeStride];
      int8_t k[kRows][kCodeStride];
    } codes;
    float dots[kQH * kDotStride];  // after the products
  } u;
  float q_unit[kQH][kTcMaxDI / kBlockDims];
  float k_unit[kRows][kTcMaxDI / kBlockDims];
  float w_scaled[kQH];   // head weight * wscale of each query-head row
  int64_t n_vis[kQH];    // visible rows of each query of the block (0: past the chunk)
  uint8_t q_inexact[kQH];
  uint8_t k_inexact[kRows];
};

// One step of warp_sum_d's tree on 32 lane values held by one thread: v[l] += v[l + O] for
// l < O (O a template argument, so the loop unrolls and v stays in registers).
template <int O>
__device__ __forceinline__ void fold_lanes(double (&v)[32]) {
#pragma unroll
  for (int l = 0; l < O; ++l) v[l] = __dadd_rn(v[l], v[l + O]);
}

// head_sums' scores from the same dot products, a thread per score: the same double sums in
// the same order (lane l's partial over heads l, l + 32, .. of the warp, then the
// shuffle-down tree, whose lane 0 adds v[l] + v[l + o] for o = 16, 8, .., 1), done here in
// registers, so the same bits. (With head_sums' warp per score, 16 dependent rounds of loads,
// shuffles and a store per warp and block, scores + top-k of the full Flash's 8K chunk took
// 100 ms on an H200; with this, 47 ms.)
__device__ void head_sums_by_thread(const TcSmem& sm, int NI, int64_t K, float* scores, int64_t scores_stride,
                                    int64_t q0, int64_t row0) {
  const int per_block = kQH / NI;
  for (int j = threadIdx.x; j < per_block * kRows; j += kThreads) {
    const int qi = j / kRows, r = j % kRows;  // consecutive threads: consecutive rows (no bank conflicts)
    const int64_t n_vis = sm.n_vis[qi], w = row0 + r;
    if (n_vis <= K || w >= n_vis) continue;
    double lane_sum[32];
#pragma unroll
    for (int l = 0; l < 32; ++l) {
      lane_sum[l] = 0.0;
#pragma unroll
      for (int i = 0; i < kQH / 32; ++i) {
        const int h = l + 32 * i;
        const float d = h < NI ? sm.u.dots[(qi * NI + h) * kDotStride + r] : 0.0f;
        if (d > 0.0f)
          lane_sum[l] = __fma_rn(static_cast<double>(sm.w_scaled[qi * NI + h]), static_cast<double>(d), lane_sum[l]);
      }
    }
    fold_lanes<16>(lane_sum);
    fold_lanes<8>(lane_sum);
    fold_lanes<4>(lane_sum);
    fold_lanes<2>(lane_sum);
    fold_lanes<1>(lane_sum);
    scores[(q0 + qi) * scores_stride + w] = static_cast<float>(lane_sum[0]);
  }
}

// idx_scores_tiled_kernel's block (x = row tile, y = query tile; 128 query-head rows x 64
// rows) on the tensor cores. Warp w computes query-head rows 32 (w % 4) .. + 31 against rows
// 32 (w / 4) .. + 31: 2 x 4 m16n8 tiles, one k32 MMA per unit block, whose s32 sums are
// scaled by the two units and added in block order in float (exact for exact rows).
__global__ void __launch_bounds__(kThreads)
    idx_scores_tc_kernel(IdxCodes qc, const float* q, const float* wts, float wscale, int NI, IdxCodes kc,
                         const float* icomp, int64_t ratio, int64_t K, float* scores, int64_t scores_stride,
                         const fwd::StepCtl* ctl, int64_t tokens) {
  __shared__ __align__(16) TcSmem sm;
  const int DI = static_cast<int>(qc.DI), nb = DI / kBlockDims;
  const int per_block = kQH / NI;
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * per_block;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t rows_hi = block_rows(ctl, q0, per_block, tokens, ratio, K);
  if (row0 >= rows_hi) return;  // the same for every thread of the block
  const int64_t qh_valid = (tokens - q0) * NI < kQH ? (tokens - q0) * NI : kQH;
  const int64_t qh0 = q0 * NI;

  // Stage the codes (16 bytes a load; rows past the valid ones are zero), units, flags.
  const int chunks = DI / 16;
  for (int i = threadIdx.x; i < kQH * chunks; i += kThreads) {
    const int m = i / chunks, c = i % chunks;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (m < qh_valid) v = *reinterpret_cast<const uint4*>(qc.code + (qh0 + m) * DI + c * 16);
    *reinterpret_cast<uint4*>(&sm.u.codes.q[m][c * 16]) = v;
  }
  for (int i = threadIdx.x; i < kRows * chunks; i += kThreads) {
    const int r = i / chunks, c = i % chunks;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (row0 + r < rows_hi) v = *reinterpret_cast<const uint4*>(kc.code + (row0 + r) * DI + c * 16);
    *reinterpret_cast<uint4*>(&sm.u.codes.k[r][c * 16]) = v;
  }
  for (int i = threadIdx.x; i < kQH * nb; i += kThreads) {
    const int m = i / nb, b = i % nb;
    sm.q_unit[m][b] = m < qh_valid ? qc.unit[(qh0 + m) * nb + b] : 0.0f;
  }
  for (int i = threadIdx.x; i < kRows * nb; i += kThreads) {
    const int r = i / nb, b = i % nb;
    sm.k_unit[r][b] = row0 + r < rows_hi ? kc.unit[(row0 + r) * nb + b] : 0.0f;
  }
  bool any_inexact = false;
  if (threadIdx.x < kQH) {
    const uint8_t f = threadIdx.x < qh_valid ? qc.inexact[qh0 + threadIdx.x] : 0;
    sm.q_inexact[threadIdx.x] = f;
    any_inexact = f != 0;
  } else if (threadIdx.x < kQH + kRows) {
    const int r = threadIdx.x - kQH;
    const uint8_t f = row0 + r < rows_hi ? kc.inexact[row0 + r] : 0;
    sm.k_inexact[r] = f;
    any_inexact = f != 0;
  }
  if (threadIdx.x < kQH) {
    const int m = threadIdx.x;
    sm.w_scaled[m] = m < qh_valid ? __fmul_rn(wts[qh0 + m], wscale) : 0.0f;
    if (m < per_block) sm.n_vis[m] = q0 + m < tokens ? visible_rows(ctl, q0 + m, ratio) : 0;
  }
  any_inexact = __syncthreads_or(any_inexact) != 0;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
  const int m_base = 32 * (warp % 4), n_base = 32 * (warp / 4);
  float acc[2][4][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mi][ni][j] = 0.0f;
  auto word = [](const int8_t* p) { return *reinterpret_cast<const uint32_t*>(p); };
  for (int b = 0; b < nb; ++b) {
    const int k0 = b * kBlockDims + 4 * t4;
    uint32_t a[2][4], bf[4][2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      const int m = m_base + 16 * mi + g;
      a[mi][0] = word(&sm.u.codes.q[m][k0]);
      a[mi][1] = word(&sm.u.codes.q[m + 8][k0]);
      a[mi][2] = word(&sm.u.codes.q[m][k0 + 16]);
      a[mi][3] = word(&sm.u.codes.q[m + 8][k0 + 16]);
    }
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      const int n = n_base + 8 * ni + g;
      bf[ni][0] = word(&sm.u.codes.k[n][k0]);
      bf[ni][1] = word(&sm.u.codes.k[n][k0 + 16]);
    }
    // The units of this thread's accumulator rows (m + 8 (j / 2)) and columns (n + j % 2).
    float qu[2][2], ku[4][2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) qu[mi][h] = sm.q_unit[m_base + 16 * mi + g + 8 * h][b];
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int c = 0; c < 2; ++c) ku[ni][c] = sm.k_unit[n_base + 8 * ni + 2 * t4 + c][b];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        int32_t d[4];
        mma_s8(d, a[mi], bf[ni]);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float unit = __fmul_rn(qu[mi][j >> 1], ku[ni][j & 1]);  // a power of two (or 0)
          acc[mi][ni][j] = __fmaf_rn(static_cast<float>(d[j]), unit, acc[mi][ni][j]);
        }
      }
  }
  __syncthreads();  // the dot products overwrite the codes
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int m = m_base + 16 * mi + g + 8 * (j >> 1), n = n_base + 8 * ni + 2 * t4 + (j & 1);
        sm.u.dots[m * kDotStride + n] = acc[mi][ni][j];
      }
  __syncthreads();
  if (any_inexact) {
    // idx_select's FMA chain (dims in ascending order from 0) for the pairs of an inexact row.
    for (int i = threadIdx.x; i < kQH * kRows; i += kThreads) {
      const int m = i / kRows, r = i % kRows;
      if (!(sm.q_inexact[m] | sm.k_inexact[r]) || m >= qh_valid || row0 + r >= rows_hi) continue;
      const float* qv = q + (qh0 + m) * DI;
      const float* kv = icomp + (row0 + r) * DI;
      float d = 0.0f;
      for (int k = 0; k < DI; ++k) d = __fmaf_rn(qv[k], kv[k], d);
      sm.u.dots[m * kDotStride + r] = d;
    }
    __syncthreads();
  }
  head_sums_by_thread(sm, NI, K, scores, scores_stride, q0, row0);
}
// The grid of both scoring kernels: x = row tiles, y = query tiles.
dim3 score_grid(int64_t NI, int64_t max_rows, int64_t tokens) {
  const int64_t per_block = kQH / NI;
  const dim3 grid(static_cast<unsigned>((max_rows + kRows - 1) / kRows),
                  static_cast<unsigned>((tokens + per_block - 1) / per_block));
  DS4_CUDA_CHECK(grid.y <= 65535 ? cudaSuccess : cudaErrorInvalidValue);
  return grid;
}

// Byte offsets of an integer form's three arrays (IdxCodes), each 256-byte aligned.
int64_t align256(int64_t n) { return (n + 255) / 256 * 256; }
int64_t unit_offset(int64_t rows, int64_t DI) { return align256(rows * DI); }
int64_t inexact_offset(int64_t rows, int64_t DI) {
  return unit_offset(rows, DI) + align256(rows * (DI / kBlockDims) * static_cast<int64_t>(sizeof(float)));
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
  const dim3 grid = score_grid(NI, max_rows, tokens);
  idx_scores_tiled_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      q, wts, wscale, static_cast<int>(NI), static_cast<int>(DI), icomp, ratio, K, scores, scores_stride, ctl, tokens);
  DS4_CUDA_CHECK(cudaGetLastError());
}

bool idx_scores_tc_supported(int64_t NI, int64_t DI) { return idx_scores_tiled_supported(NI, DI) && DI <= kTcMaxDI; }

int64_t idx_codes_bytes(int64_t rows, int64_t DI) { return inexact_offset(rows, DI) + align256(rows); }

IdxCodes idx_codes_view(void* mem, int64_t rows, int64_t DI) {
  auto* p = static_cast<uint8_t*>(mem);
  IdxCodes c;
  c.DI = DI;
  c.code = reinterpret_cast<int8_t*>(p);
  c.unit = reinterpret_cast<float*>(p + unit_offset(rows, DI));
  c.inexact = p + inexact_offset(rows, DI);
  return c;
}

void idx_codes(const float* x, int64_t rows, IdxCodes out, void* stream) {
  DS4_CUDA_CHECK(out.DI > 0 && out.DI % kBlockDims == 0 && rows >= 0 ? cudaSuccess : cudaErrorInvalidValue);
  if (rows == 0) return;
  constexpr int kWarps = kThreads / 32;
  idx_codes_kernel<<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), kThreads, 0,
                     static_cast<cudaStream_t>(stream)>>>(x, rows, static_cast<int>(out.DI), out.code, out.unit,
                                                          out.inexact);
  DS4_CUDA_CHECK(cudaGetLastError());
}

void idx_scores_tc(const IdxCodes& qc, const float* q, const float* wts, float wscale, int64_t NI, const IdxCodes& kc,
                   const float* icomp, int64_t ratio, int64_t K, int64_t max_rows, float* scores,
                   int64_t scores_stride, const fwd::StepCtl* ctl, int64_t tokens, void* stream) {
  const cudaError_t bad = cudaErrorInvalidValue;
  DS4_CUDA_CHECK(idx_scores_tc_supported(NI, qc.DI) && kc.DI == qc.DI && ratio > 0 && tokens >= 0 ? cudaSuccess : bad);
  if (tokens == 0 || max_rows <= K) return;  // no query scores
  DS4_CUDA_CHECK(scores_stride >= max_rows ? cudaSuccess : bad);
  const dim3 grid = score_grid(NI, max_rows, tokens);
  idx_scores_tc_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      qc, q, wts, wscale, static_cast<int>(NI), kc, icomp, ratio, K, scores, scores_stride, ctl, tokens);
  DS4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ds4::cuda::pre
