// F16-weight GEMM on the tensor cores (matmul_f16.h).
//
// Two tile shapes, chosen by the row count alone (never by T):
//  - Wide (> 32 weight rows): CTA = 64 tokens x 64 weight rows, 4 warps in 2 x 2, each warp
//    32 tokens x 32 rows (2 m16 tiles x 4 n8 tiles), stages of 64 columns.
//  - Skinny (<= 32 rows, e.g. the HC mixing logits, 24 x 16384): CTA = 16 tokens x 32 rows,
//    stages of 256 columns, the 4 warps each take a quarter of a stage's k16 steps; their
//    partial sums are added at the end in warp order. T = 2048 gives 128 CTAs instead of 32.
// K is walked in stages, double buffered in shared memory: the weights by cp.async (16 bytes
// a thread, zero-filled past the last row), the activations through registers (8 float4 a
// thread), split into f16 hi / lo on the way into shared memory. The next stage's loads are
// in flight while the current one is multiplied. Rows are padded by 16 bytes, so the 8 row
// addresses of an ldmatrix hit 8 different bank groups.
//
// Accumulation: the tensor cores' f32 accumulation drifts over long chains (one accumulator
// over all of K measured 1.7e-6 relative L2 at K = 1024 and 7.4e-6 at K = 4096 on an H100,
// and failed the 1e-5 bound at K = 16384); so each stage's MMAs start from zero and the
// stage's sums are added to the result with ordinary f32 additions (2e-7 .. 6e-7 at every K
// tested, H200).
//
// Range of the activations: the first pass runs with e = 0 and keeps each row's max |x|. A
// row whose max lies outside [2^-3, 2^15) gets the exponent that takes it into [2^14, 2^15)
// and, if the CTA has such a row, the whole tile is computed again with the exponents (the
// other rows' e = 0: the same arithmetic, the same bits). Normalized activations never take
// the second pass.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

#include "backend/cuda/check.h"
#include "backend/cuda/f16_split.cuh"
#include "backend/cuda/matmul_f16.h"
#include "backend/cuda/mma.cuh"

namespace ds4::cuda {
namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kSkinnyRows = 32;

// A tile shape: BM tokens x BN weight rows per CTA, BK columns per stage; the warps in WM x
// WN (tokens x rows) x WK (k16 steps of a stage), each warp MT m16 tiles x NT n8 tiles.
template <int BM_, int BN_, int BK_, int WM_, int WN_, int WK_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_, WK = WK_;
  static_assert(WM * WN * WK * 32 == kThreads, "4 warps");
  static constexpr int MT = BM / WM / 16, NT = BN / WN / 8;
  static_assert(MT >= 1 && NT % 2 == 0 && (BK / 16) % WK == 0, "warp tiles");
  static constexpr int KS = BK / 16 / WK;          // k16 steps per warp and stage
  static constexpr int Ld = BK + 8;                // halves per staged row
  static constexpr int XVec = BK / 4;              // float4 per activation row of a stage
  static constexpr int XLoads = BM * XVec / kThreads;
  static constexpr int XRowStep = kThreads / XVec > 0 ? kThreads / XVec : 1;
  static constexpr int WVec = BK * 2 / 16;         // 16-byte pieces per weight row of a stage
  static constexpr int WLoads = BN * WVec / kThreads;
  static constexpr int WRowStep = kThreads / WVec;
  static constexpr int XH = BM * Ld, WH = BN * Ld; // halves of x hi (= x lo) and w per stage
  static constexpr int StageHalves = 2 * XH + WH;
  static constexpr size_t SmemBytes = size_t{2} * StageHalves * sizeof(__half);
  static_assert(XLoads >= 1 && WLoads >= 1 && (BM * XVec) % kThreads == 0 && (BN * WVec) % kThreads == 0, "loads");
  static_assert(XVec <= kThreads || XVec % kThreads == 0, "activation row mapping");
  static_assert(size_t{WK} * BM * BN * sizeof(float) <= SmemBytes, "warp partials fit the stage buffers");
};
using WideTile = Tile<64, 64, 64, 2, 2, 1>;
using SkinnyTile = Tile<16, 32, 256, 1, 1, 4>;

// The first pass keeps rows whose max |x| lies in [2^-3, 2^15) unscaled (see the file comment).
constexpr float kRangeLo = 0.125f, kRangeHi = 32768.0f;

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// 2^e as a float (|e| <= 126: a normal number, so x * 2^e is exact unless it underflows).
__device__ __forceinline__ float pow2(int e) { return __int_as_float((127 + e) << 23); }

// The exponent of a row with max |x| = m: 0 inside the range (and for 0, inf and NaN rows,
// which no scaling helps), else the one that takes m into [2^14, 2^15).
__device__ __forceinline__ int row_exponent(float m) {
  if (!(m > 0.0f) || !(m < INFINITY) || (m >= kRangeLo && m < kRangeHi)) return 0;
  const int e = 14 - ilogbf(m);
  return e < -126 ? -126 : (e > 126 ? 126 : e);
}

struct Args {
  const __half* w;
  int64_t nrows, K;
  const float* x;
  int64_t T;
};

template <class C>
using Acc = float[C::MT][C::NT][4];

// One pass over K into acc (zeroed by the caller). kScaled: multiply each activation row by
// 2^exps[row]; else fold each row's max |x| into rowmax (int bits of non-negative floats).
template <class C, bool kScaled>
__device__ __forceinline__ void gemm_pass(const Args& a, int64_t t0, int64_t n0, __half* smem, const int* exps,
                                          int* rowmax, Acc<C>& acc) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wk = warp % C::WK, wn = (warp / C::WK) % C::WN, wm = warp / C::WK / C::WN;
  const int xr = tid / C::XVec, xc = (tid % C::XVec) * 4;  // the thread's first x row, its column
  const int wr = tid / C::WVec, wc = (tid % C::WVec) * 8;  // the same for the weights (halves)
  float scale[C::XLoads], rmax[C::XLoads];
#pragma unroll
  for (int j = 0; j < C::XLoads; ++j) {
    scale[j] = kScaled ? pow2(exps[xr + C::XRowStep * j]) : 1.0f;
    rmax[j] = 0.0f;
  }

  const int stages = static_cast<int>(a.K / C::BK);
  float4 xv[C::XLoads];
  auto load_x = [&](int st) {
    const int64_t k0 = static_cast<int64_t>(st) * C::BK;
#pragma unroll
    for (int j = 0; j < C::XLoads; ++j) {
      const int64_t t = t0 + xr + C::XRowStep * j;
      xv[j] = t < a.T ? __ldg(reinterpret_cast<const float4*>(a.x + t * a.K + k0 + xc))
                      : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  };
  auto load_w = [&](int st, __half* ws) {
    const int64_t k0 = static_cast<int64_t>(st) * C::BK;
#pragma unroll
    for (int j = 0; j < C::WLoads; ++j) {
      const int r = wr + C::WRowStep * j;
      const int64_t n = n0 + r;
      const bool valid = n < a.nrows;
      cp_async16(ws + r * C::Ld + wc, a.w + (valid ? n : 0) * a.K + k0 + wc, valid);
    }
    cp_async_commit();
  };
  auto store_x = [&](__half* xs) {
#pragma unroll
    for (int j = 0; j < C::XLoads; ++j) {
      float4 v = xv[j];
      if constexpr (kScaled) {
        v.x *= scale[j];
        v.y *= scale[j];
        v.z *= scale[j];
        v.w *= scale[j];
      } else {
        rmax[j] = fmaxf(rmax[j], fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
      }
      const int r = xr + C::XRowStep * j;
      split_store(v, xs + r * C::Ld + xc, xs + C::XH + r * C::Ld + xc);
    }
  };

  // Stage 0 into buffer 0.
  load_w(0, smem + 2 * C::XH);
  load_x(0);
  store_x(smem);
  cp_async_wait_all();
  __syncthreads();
  for (int st = 0; st < stages; ++st) {
    __half* cur = smem + (st & 1) * C::StageHalves;
    __half* nxt = smem + ((st + 1) & 1) * C::StageHalves;
    const bool more = st + 1 < stages;
    if (more) {  // the next stage's loads fly during this stage's products
      load_w(st + 1, nxt + 2 * C::XH);
      load_x(st + 1);
    }
    const __half* xh = cur;
    const __half* xl = cur + C::XH;
    const __half* ws = cur + 2 * C::XH;
    Acc<C> part;
#pragma unroll
    for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < C::NT; ++nt) part[mt][nt][0] = part[mt][nt][1] = part[mt][nt][2] = part[mt][nt][3] = 0.0f;
#pragma unroll
    for (int i = 0; i < C::KS; ++i) {
      const int kcol = (wk * C::KS + i) * 16;
      uint32_t ahi[C::MT][4], alo[C::MT][4], b[C::NT][2];
#pragma unroll
      for (int mt = 0; mt < C::MT; ++mt) {
        const int off = (wm * C::MT * 16 + mt * 16 + (lane & 15)) * C::Ld + kcol + (lane >> 4) * 8;
        ldmatrix_x4(ahi[mt], xh + off);
        ldmatrix_x4(alo[mt], xl + off);
      }
#pragma unroll
      for (int np = 0; np < C::NT / 2; ++np) {
        // Matrices (rows np*16 + 0..7 | 8..15) x (columns 0..7 | 8..15): b of two n8 tiles.
        const int off = (wn * C::NT * 8 + np * 16 + (lane & 7) + ((lane >> 4) << 3)) * C::Ld + kcol +
                        ((lane >> 3) & 1) * 8;
        uint32_t r[4];
        ldmatrix_x4(r, ws + off);
        b[2 * np][0] = r[0];
        b[2 * np][1] = r[1];
        b[2 * np + 1][0] = r[2];
        b[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < C::NT; ++nt) {
          mma_f16(part[mt][nt], ahi[mt], b[nt]);
          mma_f16(part[mt][nt], alo[mt], b[nt]);
        }
    }
#pragma unroll
    for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < C::NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][nt][e] += part[mt][nt][e];
    if (more) store_x(nxt);
    cp_async_wait_all();
    __syncthreads();
  }
  if constexpr (!kScaled) {
    // Row maxima: the threads of a row are XVec consecutive lanes (or whole warps when XVec
    // > 32, joined by atomicMax: max is order-independent).
    constexpr int kLanes = C::XVec < 32 ? C::XVec : 32;
#pragma unroll
    for (int j = 0; j < C::XLoads; ++j) {
#pragma unroll
      for (int o = 1; o < kLanes; o <<= 1) rmax[j] = fmaxf(rmax[j], __shfl_xor_sync(0xffffffffu, rmax[j], o));
      if (lane % kLanes == 0) atomicMax(rowmax + xr + C::XRowStep * j, __float_as_int(rmax[j]));
    }
  }
}

template <class C>
__global__ void __launch_bounds__(kThreads) f16_gemm_kernel(Args a, float* __restrict__ y) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* smem = reinterpret_cast<__half*>(smem_raw);
  __shared__ int exps[C::BM], rowmax[C::BM];
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * C::BM, n0 = static_cast<int64_t>(blockIdx.y) * C::BN;
  const int tid = threadIdx.x;
  for (int i = tid; i < C::BM; i += kThreads) rowmax[i] = 0;
  __syncthreads();

  Acc<C> acc;
  auto zero = [&] {
#pragma unroll
    for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < C::NT; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;
  };
  zero();
  gemm_pass<C, false>(a, t0, n0, smem, exps, rowmax, acc);
  __syncthreads();
  for (int i = tid; i < C::BM; i += kThreads) exps[i] = row_exponent(__int_as_float(rowmax[i]));
  __syncthreads();
  bool rescale = false;
  for (int i = 0; i < C::BM; ++i) rescale = rescale || exps[i] != 0;  // the same answer in every thread
  if (rescale) {
    zero();
    gemm_pass<C, true>(a, t0, n0, smem, exps, rowmax, acc);
  }

  const int lane = tid & 31, warp = tid >> 5, g = lane >> 2, tq = lane & 3;
  const int wk = warp % C::WK, wn = (warp / C::WK) % C::WN, wm = warp / C::WK / C::WN;
  // Output (row, col) of the tile from the warp's accumulator element (mt, nt, e).
  auto row_of = [&](int mt, int e) { return wm * C::MT * 16 + mt * 16 + g + 8 * (e >> 1); };
  auto col_of = [&](int nt, int e) { return wn * C::NT * 8 + nt * 8 + 2 * tq + (e & 1); };
  auto store = [&](int row, int col, float v) {
    const int64_t t = t0 + row, n = n0 + col;
    if (t < a.T && n < a.nrows) y[t * a.nrows + n] = v * pow2(-exps[row]);
  };
  if constexpr (C::WK == 1) {
#pragma unroll
    for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < C::NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) store(row_of(mt, e), col_of(nt, e), acc[mt][nt][e]);
  } else {
    // The WK warps' partial sums of each output, added in warp order (the stage buffers are
    // free: the pass ended with a barrier after its last reads).
    float* red = reinterpret_cast<float*>(smem_raw);
#pragma unroll
    for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < C::NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) red[(wk * C::BM + row_of(mt, e)) * C::BN + col_of(nt, e)] = acc[mt][nt][e];
    __syncthreads();
    for (int i = tid; i < C::BM * C::BN; i += kThreads) {
      float v = red[i];
      for (int k = 1; k < C::WK; ++k) v += red[k * C::BM * C::BN + i];
      store(i / C::BN, i % C::BN, v);
    }
  }
}

template <class C>
void launch_f16_gemm(const Args& a, float* y, void* stream) {
  static const bool once = [] {
    DS4_CUDA_CHECK(cudaFuncSetAttribute(f16_gemm_kernel<C>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(C::SmemBytes)));
    return true;
  }();
  (void)once;
  const dim3 grid(static_cast<unsigned>((a.T + C::BM - 1) / C::BM),
                  static_cast<unsigned>((a.nrows + C::BN - 1) / C::BN));
  f16_gemm_kernel<C><<<grid, kThreads, C::SmemBytes, static_cast<cudaStream_t>(stream)>>>(a, y);
  DS4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

bool f16_tensor_core_gemm_serves(GgmlType type, int64_t ncols, const void* d_w, const void* d_x) {
  // Both tile shapes' stages divide SkinnyTile::BK.
  if (type != GgmlType::F16 || ncols <= 0 || ncols % WideTile::BK != 0) return false;
  if (reinterpret_cast<uintptr_t>(d_w) % 16 != 0 || reinterpret_cast<uintptr_t>(d_x) % 16 != 0) return false;
  return std::getenv("DS4_CUDA_NO_F16_TC_GEMM") == nullptr;
}

void f16_tensor_core_gemm(const void* d_w, int64_t nrows, int64_t ncols, const float* d_x, int64_t T, float* d_y,
                          void* stream) {
  if (nrows == 0 || T == 0) return;
  const Args a{static_cast<const __half*>(d_w), nrows, ncols, d_x, T};
  if (nrows <= kSkinnyRows && ncols % SkinnyTile::BK == 0) return launch_f16_gemm<SkinnyTile>(a, d_y, stream);
  launch_f16_gemm<WideTile>(a, d_y, stream);
}

}  // namespace ds4::cuda
