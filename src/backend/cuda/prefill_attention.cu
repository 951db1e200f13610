// Prefill attention on the tensor cores (prefill_attention.h).
//
// CTA = (query t, group of kHeads = 16 * MT heads), 2 * MT warps. Warp w owns the heads
// 16 * (w / 2) .. + 15 (its m-tile) and the half w % 2 of the head dimension:
//  - S: the warp computes the m-tile's scores over all 32 rows of the tile but only over its
//    half of the dims (16 k-steps); the two warps of an m-tile add their partials through
//    shared memory (a + b in both warps: the same bits), so each holds the full S tile;
//  - softmax: both warps of an m-tile run the same online update on the same values (the
//    same max, sum and rescale factor, no further exchange);
//  - O += P V: P goes from the S accumulators straight into A fragments (the C layout of two
//    n8 tiles is the A layout of one k16 step); V comes from the staged rows (ldmatrix
//    .trans), the warp's 256 dims = 32 n8 tiles of f32 accumulators (128 registers).
// Rows are staged as fp16 hi / lo pairs (x = hi + lo) in rows padded by 16 bytes, so the 8
// row addresses of an ldmatrix hit 8 different bank groups; the queries likewise, once.
// v2 (the default, kVar 1; DS4_CUDA_NO_PREFILL_ATTN_V2=1 = the first kernel) skips the
// products with the rows' lo halves where a tile has none (the FP8-simulated KV rows of the
// official numerics outside the RoPE dims): the same bits, see prefill_attention_kernel.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

#include "backend/cuda/check.h"
#include "backend/cuda/device_attribute.h"
#include "backend/cuda/f16_split.cuh"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/prefill_attention.h"

namespace ds4::cuda::fwd {
namespace {

constexpr int kD = 512;               // head dim of this path (Flash and Pro)
constexpr int kRows = 32;             // rows per tile
constexpr int kLd = kD + 8;           // halves per staged row (+16 bytes: conflict-free ldmatrix)
constexpr int kHalfD = kD / 2;        // dims per warp
constexpr int kOTiles = kHalfD / 8;   // n8 tiles of O per warp
constexpr int kSTiles = kRows / 8;    // n8 tiles of S per warp
constexpr int kSLd = kRows + 8;       // floats per row of the S exchange (conflict-free float2)
constexpr int kVec = kD / 4;          // float4 per row
constexpr unsigned kFull = 0xffffffffu;

constexpr int kBlockDims = 64;        // dims per bit of a tile's "lo needed" mask
constexpr int kBlocks = kD / kBlockDims;

// Shared memory of a CTA (bytes): q hi / lo [kHeads][kLd] fp16, rows hi / lo [kRows][kLd]
// fp16, the S partials [2][kHeads][kSLd] f32, row pointers [2][kRows] (v1 uses the first
// half; v2 holds the next tile's there), the tiles' "lo needed" masks [2] (v2).
template <int MT>
struct Smem {
  static constexpr int kHeads = 16 * MT;
  static constexpr int kThreads = 64 * MT;
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = kQ + size_t{2} * kHeads * kLd * sizeof(__half);
  static constexpr size_t kS = kK + size_t{2} * kRows * kLd * sizeof(__half);
  static constexpr size_t kP = kS + size_t{2} * kHeads * kSLd * sizeof(float);
  static constexpr size_t kM = kP + 2 * kRows * sizeof(const float*);
  static constexpr size_t kBytes = kM + 2 * sizeof(unsigned);
};

// Row r of a query's list: its raw window from the ring, then the compressed rows (the
// selection, or all visible ones); null past the end (staged as zeros).
__device__ __forceinline__ const float* row_ptr(int64_t r, int64_t n_raw, int64_t n, int64_t start, int64_t ring_cap,
                                                const float* ring, const float* comp, const int32_t* sel) {
  if (r < n_raw) return ring + ((start + r) % ring_cap) * kD;
  if (r < n) return comp + static_cast<int64_t>(sel ? sel[r - n_raw] : r - n_raw) * kD;
  return nullptr;
}

// One batch of a tile's staging: kN float4 a thread, element i = (j0 + u) * kThreads + tid.
template <int kThreads, int kN>
__device__ __forceinline__ void load_batch(float4 (&v)[kN], const float* const* rp, int j0) {
#pragma unroll
  for (int u = 0; u < kN; ++u) {
    const int i = (j0 + u) * kThreads + threadIdx.x, r = i / kVec, c = (i - r * kVec) * 4;
    v[u] = rp[r] ? __ldg(reinterpret_cast<const float4*>(rp[r] + c)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
}

// Stores a batch as hi / lo halves; `need` collects the blocks of kBlockDims dims whose lo
// halves are not all zero (bit c / kBlockDims).
template <int kThreads, int kN>
__device__ __forceinline__ void store_batch(const float4 (&v)[kN], __half* khi, __half* klo, int j0, unsigned& need) {
#pragma unroll
  for (int u = 0; u < kN; ++u) {
    const int i = (j0 + u) * kThreads + threadIdx.x, r = i / kVec, c = (i - r * kVec) * 4;
    uint2 h, l;
    split2(v[u].x, v[u].y, h.x, l.x);
    split2(v[u].z, v[u].w, h.y, l.y);
    *reinterpret_cast<uint2*>(khi + r * kLd + c) = h;
    *reinterpret_cast<uint2*>(klo + r * kLd + c) = l;
    need |= (l.x | l.y) != 0 ? 1u << (c / kBlockDims) : 0u;
  }
}

// c += a b for one k16 step with a = ahi + alo, b = bhi + blo: the three products that
// matter (alo bhi + ahi blo + ahi bhi; the dropped lo.lo is ~2^-22 of the product) or, where
// the b lo halves are all zero, without their product (alo bhi + ahi bhi): ahi * 0 adds exact
// zeros, so both give the same bits.
template <bool kLo>
__device__ __forceinline__ void mma_split(float (&c)[4], const uint32_t (&ahi)[4], const uint32_t (&alo)[4],
                                          const uint32_t (&bhi)[2], const uint32_t (&blo)[2]) {
  mma_f16(c, alo, bhi);
  if constexpr (kLo) mma_f16(c, ahi, blo);
  mma_f16(c, ahi, bhi);
}

// S partial of the warp's m-tile over the 4 k16 steps of dims block `blk` (kBlockDims dims).
// mma.sync and ldmatrix are volatile asm, which the compiler keeps in source order: kIlv
// writes a k16 step's loads first and its products in rounds over the 4 n8 tiles (every
// tile's alo.bhi, then ahi.blo, then ahi.bhi), so consecutive MMAs need not wait for each
// other's accumulators; each accumulator still sees the same products in the same order
// (the same bits).
template <bool kLo, bool kIlv>
__device__ __forceinline__ void s_block(float (&sacc)[kSTiles][4], const __half* qhi, const __half* qlo,
                                        const __half* khi, const __half* klo, int m, int blk, int lane) {
#pragma unroll
  for (int kk = 0; kk < kBlockDims / 16; ++kk) {
    const int k0 = blk * kBlockDims + kk * 16;
    uint32_t ah[4], al[4];
    const int qoff = (m * 16 + (lane & 15)) * kLd + k0 + (lane >> 4) * 8;
    ldmatrix_x4(ah, qhi + qoff);
    ldmatrix_x4(al, qlo + qoff);
    if constexpr (kIlv) {
      // b[np] = b0, b1 of n8 tiles 2 np and 2 np + 1 (as below).
      uint32_t bh[kSTiles / 2][4], bl[kSTiles / 2][4] = {};
#pragma unroll
      for (int np = 0; np < kSTiles / 2; ++np) {
        const int koff = (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * kLd + k0 + ((lane >> 3) & 1) * 8;
        ldmatrix_x4(bh[np], khi + koff);
        if constexpr (kLo) ldmatrix_x4(bl[np], klo + koff);
      }
#pragma unroll
      for (int j = 0; j < kSTiles; ++j) mma_f16(sacc[j], al, {bh[j >> 1][(j & 1) * 2], bh[j >> 1][(j & 1) * 2 + 1]});
      if constexpr (kLo) {
#pragma unroll
        for (int j = 0; j < kSTiles; ++j) mma_f16(sacc[j], ah, {bl[j >> 1][(j & 1) * 2], bl[j >> 1][(j & 1) * 2 + 1]});
      }
#pragma unroll
      for (int j = 0; j < kSTiles; ++j) mma_f16(sacc[j], ah, {bh[j >> 1][(j & 1) * 2], bh[j >> 1][(j & 1) * 2 + 1]});
    } else {
#pragma unroll
      for (int np = 0; np < kSTiles / 2; ++np) {
        // Matrices (rows np*16 + 0..7 | 8..15) x (dims k0 + 0..7 | 8..15): b0, b1 of two n8 tiles.
        const int koff = (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * kLd + k0 + ((lane >> 3) & 1) * 8;
        uint32_t bh[4], bl[4] = {0u, 0u, 0u, 0u};
        ldmatrix_x4(bh, khi + koff);
        if constexpr (kLo) ldmatrix_x4(bl, klo + koff);
        mma_split<kLo>(sacc[2 * np], ah, al, {bh[0], bh[1]}, {bl[0], bl[1]});
        mma_split<kLo>(sacc[2 * np + 1], ah, al, {bh[2], bh[3]}, {bl[2], bl[3]});
      }
    }
  }
}

// O += P V for k16 step ks of the tile and the warp's dims of block `b` of its half (the
// n8 tiles 8b .. 8b + 7 of acc). kIlv: the block's loads first, then its products in rounds
// over the 8 n8 tiles (as s_block; the same bits).
template <bool kLo, bool kIlv>
__device__ __forceinline__ void pv_block(float (&acc)[kOTiles][4], const uint32_t (&ph)[4], const uint32_t (&pl)[4],
                                         const __half* khi, const __half* klo, int ks, int half, int b, int lane) {
  constexpr int kDd = kBlockDims / 16;
  if constexpr (kIlv) {
    uint32_t vh[kDd][4], vl[kDd][4] = {};
#pragma unroll
    for (int dd = 0; dd < kDd; ++dd) {
      const int d0 = half * kHalfD + (b * kDd + dd) * 16;
      const int voff = (ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kLd + d0 + (lane >> 4) * 8;
      ldmatrix_x4_trans(vh[dd], khi + voff);
      if constexpr (kLo) ldmatrix_x4_trans(vl[dd], klo + voff);
    }
    // n8 tile j of the block: acc[2 * (b * kDd + j / 2) + j % 2], registers (j % 2) * 2, + 1.
#pragma unroll
    for (int j = 0; j < 2 * kDd; ++j)
      mma_f16(acc[2 * b * kDd + j], pl, {vh[j >> 1][(j & 1) * 2], vh[j >> 1][(j & 1) * 2 + 1]});
    if constexpr (kLo) {
#pragma unroll
      for (int j = 0; j < 2 * kDd; ++j)
        mma_f16(acc[2 * b * kDd + j], ph, {vl[j >> 1][(j & 1) * 2], vl[j >> 1][(j & 1) * 2 + 1]});
    }
#pragma unroll
    for (int j = 0; j < 2 * kDd; ++j)
      mma_f16(acc[2 * b * kDd + j], ph, {vh[j >> 1][(j & 1) * 2], vh[j >> 1][(j & 1) * 2 + 1]});
  } else {
#pragma unroll
    for (int dd = 0; dd < kDd; ++dd) {
      const int dp = b * kDd + dd;
      // Transposed matrices (rows ks*16 + 0..7 | 8..15) x (dims d0 + 0..7 | 8..15).
      const int d0 = half * kHalfD + dp * 16;
      const int voff = (ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kLd + d0 + (lane >> 4) * 8;
      uint32_t vh[4], vl[4] = {0u, 0u, 0u, 0u};
      ldmatrix_x4_trans(vh, khi + voff);
      if constexpr (kLo) ldmatrix_x4_trans(vl, klo + voff);
      mma_split<kLo>(acc[2 * dp], ph, pl, {vh[0], vh[1]}, {vl[0], vl[1]});
      mma_split<kLo>(acc[2 * dp + 1], ph, pl, {vh[2], vh[3]}, {vl[2], vl[3]});
    }
  }
}

// The products of one tile for a warp whose half of the dims needs the lo halves of the rows
// in blocks 0 .. 2 of the half (kLoA) and in block 3 (kLoB): decided once per tile, so every
// variant is straight-line code the compiler can schedule across blocks.
template <bool kLoA, bool kLoB, bool kIlv>
__device__ __forceinline__ void s_phase(float (&sacc)[kSTiles][4], const __half* qhi, const __half* qlo,
                                        const __half* khi, const __half* klo, int m, int half, int lane) {
  constexpr int kB = kBlocks / 2;
#pragma unroll 1
  for (int b = 0; b < kB - 1; ++b) s_block<kLoA, kIlv>(sacc, qhi, qlo, khi, klo, m, half * kB + b, lane);
  s_block<kLoB, kIlv>(sacc, qhi, qlo, khi, klo, m, half * kB + kB - 1, lane);
}

template <bool kLoA, bool kLoB, bool kIlv>
__device__ __forceinline__ void pv_phase(float (&acc)[kOTiles][4], const uint32_t (&ph)[2][4],
                                         const uint32_t (&pl)[2][4], const __half* khi, const __half* klo, int half,
                                         int lane) {
  static_assert(kBlocks / 2 == 4, "pv_phase names the 4 blocks of a half");
#pragma unroll
  for (int ks = 0; ks < kRows / 16; ++ks) {
    pv_block<kLoA, kIlv>(acc, ph[ks], pl[ks], khi, klo, ks, half, 0, lane);
    pv_block<kLoA, kIlv>(acc, ph[ks], pl[ks], khi, klo, ks, half, 1, lane);
    pv_block<kLoA, kIlv>(acc, ph[ks], pl[ks], khi, klo, ks, half, 2, lane);
    pv_block<kLoB, kIlv>(acc, ph[ks], pl[ks], khi, klo, ks, half, 3, lane);
  }
}

// Kernel variants (kVar): 0 = the first kernel (every product with the lo halves); 1, 2 and 3
// compute the same sums in the same order, hence the same bits, with these changes:
//  - the lo halves of a block of kBlockDims dims are skipped for a tile whose staged rows
//    have none there (hi.lo would add exact zeros): rows that went through the FP8 round
//    trip of the official numerics (every non-RoPE dim an E4M3 value times a power of two,
//    exact in fp16) need them only in the RoPE dims, i.e. 4 MMAs instead of 6 per product
//    pair and one ldmatrix instead of two per K / V fragment there. A warp picks one of
//    three straight-line variants per tile from its half's mask (none, last block only, all);
//  - O is not rescaled where no row of the warp raised its running max (alpha = 1 exactly);
//  - 2 and 3: the products interleaved over the accumulators (s_block, pv_block: kIlv);
//  - 3: a tile staged in one round of 16 float4 loads a thread (one load round trip).
template <int MT, int kVar>
__global__ void __launch_bounds__(64 * MT, 1)
    prefill_attention_kernel(AttnShape s, float scale, const float* q, const float* ring, const float* comp,
                             const int32_t* sel, const int32_t* n_sel, int64_t sel_stride, const float* sinks,
                             const float* omega, float* o, const StepCtl* ctl) {
  using L = Smem<MT>;
  constexpr bool kV2 = kVar > 0, kIlv = kVar >= 2;
  extern __shared__ __align__(16) unsigned char sm[];
  __half* qhi = reinterpret_cast<__half*>(sm + L::kQ);
  __half* qlo = qhi + L::kHeads * kLd;
  __half* khi = reinterpret_cast<__half*>(sm + L::kK);
  __half* klo = khi + kRows * kLd;
  float* spart = reinterpret_cast<float*>(sm + L::kS);
  const float** rps = reinterpret_cast<const float**>(sm + L::kP);  // [2][kRows]
  unsigned* lo_mask = reinterpret_cast<unsigned*>(sm + L::kM);       // [2]

  // Query t = blockIdx.x, heads h0 .. h0 + kHeads - 1.
  const int64_t t = blockIdx.x, h0 = static_cast<int64_t>(blockIdx.y) * L::kHeads;
  ctl += t;
  q += (t * s.NH + h0) * kD;
  o += (t * s.NH + h0) * kD;
  if (sel) sel += t * sel_stride;
  const int64_t pos = ctl->pos;
  const int64_t start = pos - s.window + 1 > 0 ? pos - s.window + 1 : 0;
  const int64_t n_raw = pos - start + 1;
  const int64_t n = n_raw + (s.ratio > 0 ? (sel ? n_sel[t] : (pos + 1) / s.ratio) : 0);

  for (int i = threadIdx.x; i < L::kHeads * kVec; i += L::kThreads) {
    const int h = i / kVec, c = (i - h * kVec) * 4;
    split_store(__ldg(reinterpret_cast<const float4*>(q + h * kD + c)), qhi + h * kLd + c, qlo + h * kLd + c);
  }

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, tq = lane & 3;
  const int m = warp >> 1, half = warp & 1;
  const int hr = m * 16 + g;  // the thread's head rows hr and hr + 8 (of the CTA's heads)
  // Online softmax state of rows hr, hr + 8, started at the sink (one more logit, no value).
  float mx[2] = {sinks[h0 + hr], sinks[h0 + hr + 8]};
  float sum[2] = {1.0f, 1.0f};
  float acc[kOTiles][4];
#pragma unroll
  for (int j = 0; j < kOTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

  constexpr int kIters = kRows * kVec / L::kThreads;
  constexpr int kBatch = kVar == 3 ? 16 : 8;  // float4 loads per thread in flight
  static_assert(kIters % kBatch == 0, "staging batches");
  if constexpr (kV2) {
    if (threadIdx.x < kRows) rps[threadIdx.x] = row_ptr(threadIdx.x, n_raw, n, start, s.ring_cap, ring, comp, sel);
    if (threadIdx.x == 0) lo_mask[0] = 0u;
  }

  int tile = 0;
  for (int64_t r0 = 0; r0 < n; r0 += kRows, ++tile) {
    const float** rp = rps + (kV2 ? (tile & 1) * kRows : 0);
    __syncthreads();  // the previous tile's rows, pointers and mask are no longer read
    unsigned need = 0u;
    if constexpr (kV2) {
      // The next tile's pointers and mask word (the previous tile's, no longer read), so
      // this tile's loads need no second barrier.
      if (threadIdx.x < kRows)
        rps[((tile + 1) & 1) * kRows + threadIdx.x] =
            row_ptr(r0 + kRows + threadIdx.x, n_raw, n, start, s.ring_cap, ring, comp, sel);
      if (threadIdx.x == 0) lo_mask[(tile + 1) & 1] = 0u;
    } else {
      if (threadIdx.x < kRows)
        rp[threadIdx.x] = row_ptr(r0 + threadIdx.x, n_raw, n, start, s.ring_cap, ring, comp, sel);
      __syncthreads();
    }
    // Stage the tile, rows past n as zeros (their probabilities are 0, and 0 * 0 stays 0),
    // in batches of kBatch float4 loads per thread in flight.
    for (int j0 = 0; j0 < kIters; j0 += kBatch) {
      float4 v[kBatch];
      load_batch<L::kThreads, kBatch>(v, rp, j0);
      store_batch<L::kThreads, kBatch>(v, khi, klo, j0, need);
    }
    if constexpr (kV2) {
      need = __reduce_or_sync(kFull, need);
      if (lane == 0 && need != 0u) atomicOr(lo_mask + (tile & 1), need);
    }
    __syncthreads();
    // The warp's half of the mask: 0 = no lo halves, 8 = in its last block only, else all.
    const unsigned lo_half = kV2 ? (lo_mask[tile & 1] >> (half * (kBlocks / 2))) & 0xfu : 0xfu;

    // S partial over the warp's half of the dims.
    float sacc[kSTiles][4];
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) sacc[j][0] = sacc[j][1] = sacc[j][2] = sacc[j][3] = 0.0f;
    if (lo_half == 0u) {
      s_phase<false, false, kIlv>(sacc, qhi, qlo, khi, klo, m, half, lane);
    } else if (lo_half == 8u) {
      s_phase<false, true, kIlv>(sacc, qhi, qlo, khi, klo, m, half, lane);
    } else {
      s_phase<true, true, kIlv>(sacc, qhi, qlo, khi, klo, m, half, lane);
    }
    // Exchange the partials with the other half's warp; both add them in the same order.
    {
      float* mine = spart + half * L::kHeads * kSLd;
#pragma unroll
      for (int j = 0; j < kSTiles; ++j) {
        const int col = j * 8 + 2 * tq;
        *reinterpret_cast<float2*>(mine + hr * kSLd + col) = make_float2(sacc[j][0], sacc[j][1]);
        *reinterpret_cast<float2*>(mine + (hr + 8) * kSLd + col) = make_float2(sacc[j][2], sacc[j][3]);
      }
    }
    __syncthreads();
    const float* other = spart + (1 - half) * L::kHeads * kSLd;
    float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = hr + (e >> 1) * 8, col = j * 8 + 2 * tq + (e & 1);
        // mine + other == other + mine bit for bit: both warps get the same score.
        const float v = (sacc[j][e] + other[row * kSLd + col]) * scale;
        sacc[j][e] = r0 + col < n ? v : -INFINITY;
        tmax[e >> 1] = fmaxf(tmax[e >> 1], sacc[j][e]);
      }
    }
    float alpha[2], tsum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      tmax[i] = fmaxf(tmax[i], __shfl_xor_sync(kFull, tmax[i], 1));
      tmax[i] = fmaxf(tmax[i], __shfl_xor_sync(kFull, tmax[i], 2));
      const float mnew = fmaxf(mx[i], tmax[i]);
      alpha[i] = expf(mx[i] - mnew);
      mx[i] = mnew;
    }
    // P = exp(S - max) as A fragments (hi / lo) of the two k16 steps of the tile.
    uint32_t ph[2][4], pl[2][4];
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) {
      const float p0 = expf(sacc[j][0] - mx[0]), p1 = expf(sacc[j][1] - mx[0]);
      const float p2 = expf(sacc[j][2] - mx[1]), p3 = expf(sacc[j][3] - mx[1]);
      tsum[0] += p0 + p1;
      tsum[1] += p2 + p3;
      // n8 tile j is half (j & 1) of k-step j / 2: registers {0, 1} or {2, 3}.
      split2(p0, p1, ph[j >> 1][(j & 1) * 2], pl[j >> 1][(j & 1) * 2]);
      split2(p2, p3, ph[j >> 1][(j & 1) * 2 + 1], pl[j >> 1][(j & 1) * 2 + 1]);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      tsum[i] += __shfl_xor_sync(kFull, tsum[i], 1);
      tsum[i] += __shfl_xor_sync(kFull, tsum[i], 2);
      sum[i] = sum[i] * alpha[i] + tsum[i];
    }
    // (v2: alpha = 1 exactly for every row of the warp leaves O as it is.)
    if (!kV2 || !__all_sync(kFull, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
      for (int j = 0; j < kOTiles; ++j) {
        acc[j][0] *= alpha[0];
        acc[j][1] *= alpha[0];
        acc[j][2] *= alpha[1];
        acc[j][3] *= alpha[1];
      }
    }
    // O += P V over the warp's dims.
    if (lo_half == 0u) {
      pv_phase<false, false, kIlv>(acc, ph, pl, khi, klo, half, lane);
    } else if (lo_half == 8u) {
      pv_phase<false, true, kIlv>(acc, ph, pl, khi, klo, half, lane);
    } else {
      pv_phase<true, true, kIlv>(acc, ph, pl, khi, klo, half, lane);
    }
  }

  // o = O / sum, the rope dims de-rotated at the query position (rope.cpp, inverse: -theta).
  const int64_t rope0 = kD - s.n_rope;
  const float fpos = static_cast<float>(pos);
#pragma unroll
  for (int j = 0; j < kOTiles; ++j) {
    const int d = half * kHalfD + j * 8 + 2 * tq;
    float c = 1.0f, sn = 0.0f;
    if (d >= rope0) {
      const float theta = __fmul_rn(omega[(d - rope0) / 2], fpos);
      c = cosf(theta);
      sn = -sinf(theta);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float x0 = __fdiv_rn(acc[j][2 * i], sum[i]), x1 = __fdiv_rn(acc[j][2 * i + 1], sum[i]);
      float2 y = make_float2(x0, x1);
      if (d >= rope0) y = make_float2(__fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, sn)),
                                      __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, c)));
      *reinterpret_cast<float2*>(o + (hr + 8 * i) * kD + d) = y;
    }
  }
}

// Heads per CTA: 64 when NH allows (the rows are staged once per 64 heads), else 32 or 16.
int m_tiles(int64_t NH) { return NH % 64 == 0 ? 4 : NH % 32 == 0 ? 2 : 1; }

template <int MT>
size_t smem_bytes() {
  return Smem<MT>::kBytes;
}
size_t smem_bytes(int mt) { return mt == 4 ? smem_bytes<4>() : mt == 2 ? smem_bytes<2>() : smem_bytes<1>(); }

int device_smem_optin() { return device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin); }

template <int MT, int kVar>
void launch(const AttnShape& s, const float* q, const float* ring, const float* comp, const int32_t* sel,
            const int32_t* n_sel, int64_t sel_stride, const float* sinks, const float* omega, float* o,
            const StepCtl* ctl, int64_t tokens, cudaStream_t stream) {
  // Above 48 KB of dynamic shared memory a kernel must opt in; once per instantiation.
  static const bool opted = [] {
    DS4_CUDA_CHECK(cudaFuncSetAttribute(prefill_attention_kernel<MT, kVar>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(Smem<MT>::kBytes)));
    return true;
  }();
  (void)opted;
  const float scale = 1.0f / sqrtf(static_cast<float>(kD));
  const dim3 grid(static_cast<unsigned>(tokens), static_cast<unsigned>(s.NH / Smem<MT>::kHeads));
  prefill_attention_kernel<MT, kVar><<<grid, Smem<MT>::kThreads, Smem<MT>::kBytes, stream>>>(
      s, scale, q, ring, comp, sel, n_sel, sel_stride, sinks, omega, o, ctl);
  DS4_CUDA_CHECK(cudaGetLastError());
}

template <int MT>
void launch(int var, const AttnShape& s, const float* q, const float* ring, const float* comp, const int32_t* sel,
            const int32_t* n_sel, int64_t sel_stride, const float* sinks, const float* omega, float* o,
            const StepCtl* ctl, int64_t tokens, cudaStream_t stream) {
  switch (var) {
    case 3: launch<MT, 3>(s, q, ring, comp, sel, n_sel, sel_stride, sinks, omega, o, ctl, tokens, stream); break;
    case 2: launch<MT, 2>(s, q, ring, comp, sel, n_sel, sel_stride, sinks, omega, o, ctl, tokens, stream); break;
    case 1: launch<MT, 1>(s, q, ring, comp, sel, n_sel, sel_stride, sinks, omega, o, ctl, tokens, stream); break;
    default: launch<MT, 0>(s, q, ring, comp, sel, n_sel, sel_stride, sinks, omega, o, ctl, tokens, stream); break;
  }
}

}  // namespace

bool prefill_attention_supported(const AttnShape& s) {
  if (s.D != kD || s.NH <= 0 || s.NH % 16 != 0 || s.n_rope < 0 || s.n_rope % 2 != 0 || s.n_rope > kD) return false;
  return smem_bytes(m_tiles(s.NH)) <= static_cast<size_t>(device_smem_optin());
}

void prefill_attention(const AttnShape& s, const float* q, const float* ring, const float* comp, const int32_t* sel,
                       const int32_t* n_sel, int64_t sel_stride, const float* sinks, const float* omega, float* o,
                       const StepCtl* ctl, int64_t tokens, void* stream) {
  DS4_CUDA_CHECK(prefill_attention_supported(s) && tokens >= 1 && tokens <= 0x7fffffff && s.ring_cap > 0
                     ? cudaSuccess
                     : cudaErrorInvalidValue);
  const auto st = static_cast<cudaStream_t>(stream);
  // DS4_CUDA_NO_PREFILL_ATTN_V2 set in the environment (read at every call, as the tests
  // switch it): the first kernel (A/B switch). Tuning: DS4_CUDA_PREFILL_ATTN_VAR = 2 or 3
  // picks one of the variants of prefill_attention_kernel (kVar) not run on a GPU yet; the
  // default is 1 (measured: H200, FP8 rows of an 8192-token chunk, 229.1 vs 240.5 ms).
  const char* var = std::getenv("DS4_CUDA_PREFILL_ATTN_VAR");
  const int v2 = std::getenv("DS4_CUDA_NO_PREFILL_ATTN_V2") != nullptr ? 0
                 : var != nullptr && var[0] >= '1' && var[0] <= '3'   ? var[0] - '0'
                                                                      : 1;
  switch (m_tiles(s.NH)) {
    case 4: launch<4>(v2, s, q, ring, comp, sel, n_sel, sel_stride, sinks, omega, o, ctl, tokens, st); break;
    case 2: launch<2>(v2, s, q, ring, comp, sel, n_sel, sel_stride, sinks, omega, o, ctl, tokens, st); break;
    default: launch<1>(v2, s, q, ring, comp, sel, n_sel, sel_stride, sinks, omega, o, ctl, tokens, st); break;
  }
}

}  // namespace ds4::cuda::fwd
