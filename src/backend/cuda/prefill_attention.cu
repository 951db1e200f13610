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
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

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

// Shared memory of a CTA (bytes): q hi / lo [kHeads][kLd] fp16, rows hi / lo [kRows][kLd]
// fp16, the S partials [2][kHeads][kSLd] f32, the tile's row pointers [kRows].
template <int MT>
struct Smem {
  static constexpr int kHeads = 16 * MT;
  static constexpr int kThreads = 64 * MT;
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = kQ + size_t{2} * kHeads * kLd * sizeof(__half);
  static constexpr size_t kS = kK + size_t{2} * kRows * kLd * sizeof(__half);
  static constexpr size_t kP = kS + size_t{2} * kHeads * kSLd * sizeof(float);
  static constexpr size_t kBytes = kP + kRows * sizeof(const float*);
};

// c += a b with a = ahi + alo, b = bhi + blo: the three products that matter.
__device__ __forceinline__ void mma3(float (&c)[4], const uint32_t (&ahi)[4], const uint32_t (&alo)[4],
                                     const uint32_t (&bhi)[2], const uint32_t (&blo)[2]) {
  mma_f16(c, alo, bhi);
  mma_f16(c, ahi, blo);
  mma_f16(c, ahi, bhi);
}

template <int MT>
__global__ void __launch_bounds__(64 * MT, 1)
    prefill_attention_kernel(AttnShape s, float scale, const float* q, const float* ring, const float* comp,
                             const int32_t* sel, const int32_t* n_sel, int64_t sel_stride, const float* sinks,
                             const float* omega, float* o, const StepCtl* ctl) {
  using L = Smem<MT>;
  extern __shared__ __align__(16) unsigned char sm[];
  __half* qhi = reinterpret_cast<__half*>(sm + L::kQ);
  __half* qlo = qhi + L::kHeads * kLd;
  __half* khi = reinterpret_cast<__half*>(sm + L::kK);
  __half* klo = khi + kRows * kLd;
  float* spart = reinterpret_cast<float*>(sm + L::kS);
  const float** rp = reinterpret_cast<const float**>(sm + L::kP);

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

  for (int64_t r0 = 0; r0 < n; r0 += kRows) {
    __syncthreads();  // the previous tile's rows and pointers are no longer read
    if (threadIdx.x < kRows) {
      const int64_t r = r0 + threadIdx.x;
      const float* p = nullptr;
      if (r < n_raw) {
        p = ring + ((start + r) % s.ring_cap) * kD;
      } else if (r < n) {
        p = comp + static_cast<int64_t>(sel ? sel[r - n_raw] : r - n_raw) * kD;
      }
      rp[threadIdx.x] = p;
    }
    __syncthreads();
    // Stage the tile (rows past n as zeros: their probabilities are 0, and 0 * 0 stays 0), in
    // batches of 8 float4 loads per thread in flight.
    constexpr int kIters = kRows * kVec / L::kThreads;
    static_assert(kIters % 8 == 0, "staging batches");
    for (int j0 = 0; j0 < kIters; j0 += 8) {
      float4 v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int i = (j0 + u) * L::kThreads + threadIdx.x, r = i / kVec, c = (i - r * kVec) * 4;
        v[u] = rp[r] ? __ldg(reinterpret_cast<const float4*>(rp[r] + c)) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int i = (j0 + u) * L::kThreads + threadIdx.x, r = i / kVec, c = (i - r * kVec) * 4;
        split_store(v[u], khi + r * kLd + c, klo + r * kLd + c);
      }
    }
    __syncthreads();

    // S partial over the warp's half of the dims.
    float sacc[kSTiles][4];
#pragma unroll
    for (int j = 0; j < kSTiles; ++j) sacc[j][0] = sacc[j][1] = sacc[j][2] = sacc[j][3] = 0.0f;
#pragma unroll 4
    for (int ks = 0; ks < kHalfD / 16; ++ks) {
      const int k0 = half * kHalfD + ks * 16;
      uint32_t ah[4], al[4];
      const int qoff = (m * 16 + (lane & 15)) * kLd + k0 + (lane >> 4) * 8;
      ldmatrix_x4(ah, qhi + qoff);
      ldmatrix_x4(al, qlo + qoff);
#pragma unroll
      for (int np = 0; np < kSTiles / 2; ++np) {
        // Matrices (rows np*16 + 0..7 | 8..15) x (dims k0 + 0..7 | 8..15): b0, b1 of two n8 tiles.
        const int koff = (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * kLd + k0 + ((lane >> 3) & 1) * 8;
        uint32_t bh[4], bl[4];
        ldmatrix_x4(bh, khi + koff);
        ldmatrix_x4(bl, klo + koff);
        mma3(sacc[2 * np], ah, al, {bh[0], bh[1]}, {bl[0], bl[1]});
        mma3(sacc[2 * np + 1], ah, al, {bh[2], bh[3]}, {bl[2], bl[3]});
      }
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
#pragma unroll
    for (int j = 0; j < kOTiles; ++j) {
      acc[j][0] *= alpha[0];
      acc[j][1] *= alpha[0];
      acc[j][2] *= alpha[1];
      acc[j][3] *= alpha[1];
    }
    // O += P V over the warp's dims.
#pragma unroll
    for (int ks = 0; ks < kRows / 16; ++ks) {
#pragma unroll
      for (int dp = 0; dp < kOTiles / 2; ++dp) {
        // Transposed matrices (rows ks*16 + 0..7 | 8..15) x (dims d0 + 0..7 | 8..15).
        const int d0 = half * kHalfD + dp * 16;
        const int voff = (ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kLd + d0 + (lane >> 4) * 8;
        uint32_t vh[4], vl[4];
        ldmatrix_x4_trans(vh, khi + voff);
        ldmatrix_x4_trans(vl, klo + voff);
        mma3(acc[2 * dp], ph[ks], pl[ks], {vh[0], vh[1]}, {vl[0], vl[1]});
        mma3(acc[2 * dp + 1], ph[ks], pl[ks], {vh[2], vh[3]}, {vl[2], vl[3]});
      }
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

template <int MT>
void launch(const AttnShape& s, const float* q, const float* ring, const float* comp, const int32_t* sel,
            const int32_t* n_sel, int64_t sel_stride, const float* sinks, const float* omega, float* o,
            const StepCtl* ctl, int64_t tokens, cudaStream_t stream) {
  // Above 48 KB of dynamic shared memory a kernel must opt in; once per instantiation.
  static const bool opted = [] {
    DS4_CUDA_CHECK(cudaFuncSetAttribute(prefill_attention_kernel<MT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(Smem<MT>::kBytes)));
    return true;
  }();
  (void)opted;
  const float scale = 1.0f / sqrtf(static_cast<float>(kD));
  const dim3 grid(static_cast<unsigned>(tokens), static_cast<unsigned>(s.NH / Smem<MT>::kHeads));
  prefill_attention_kernel<MT><<<grid, Smem<MT>::kThreads, Smem<MT>::kBytes, stream>>>(
      s, scale, q, ring, comp, sel, n_sel, sel_stride, sinks, omega, o, ctl);
  DS4_CUDA_CHECK(cudaGetLastError());
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
  switch (m_tiles(s.NH)) {
    case 4: launch<4>(s, q, ring, comp, sel, n_sel, sel_stride, sinks, omega, o, ctl, tokens, st); break;
    case 2: launch<2>(s, q, ring, comp, sel, n_sel, sel_stride, sinks, omega, o, ctl, tokens, st); break;
    default: launch<1>(s, q, ring, comp, sel, n_sel, sel_stride, sinks, omega, o, ctl, tokens, st); break;
  }
}

}  // namespace ds4::cuda::fwd
