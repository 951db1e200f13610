// F16-weight GEMM on the tensor cores (matmul_f16.h).
//
// CTA = 64 tokens x 64 weight rows, 4 warps in 2 x 2, each warp 32 tokens x 32 rows (2 m16
// tiles x 4 n8 tiles of f32 accumulators). K is walked in stages of 64 columns, double
// buffered in shared memory: the weights by cp.async (16 bytes a thread, zero-filled past
// the last row), the activations through registers (8 float4 a thread), split into f16
// hi / lo on the way into shared memory. The next stage's loads are in flight while the
// current one is multiplied. Rows are padded by 16 bytes, so the 8 row addresses of an
// ldmatrix hit 8 different bank groups.
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

constexpr int kBM = 64;              // tokens per CTA
constexpr int kBN = 64;              // weight rows per CTA
constexpr int kBK = 64;              // columns per stage
constexpr int kLd = kBK + 8;         // halves per staged row (+16 bytes: conflict-free ldmatrix)
constexpr int kThreads = 128;        // 4 warps, 2 (tokens) x 2 (rows)
constexpr int kXVec = kBK / 4;       // float4 per activation row of a stage
constexpr int kXLoads = kBM * kXVec / kThreads;   // float4 per thread and stage
constexpr int kRowStep = kThreads / kXVec;        // rows between a thread's float4 loads
constexpr int kWVec = kBK * 2 / 16;  // 16-byte pieces per weight row of a stage
constexpr int kWLoads = kBN * kWVec / kThreads;   // cp.async per thread and stage
constexpr int kStageHalves = 3 * kBM * kLd;       // x hi, x lo, w (kBN == kBM)
constexpr size_t kSmemBytes = size_t{2} * kStageHalves * sizeof(__half);
static_assert(kBN == kBM && kXLoads == 8 && kRowStep == 8 && kWLoads == 4, "tile shape");

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

// One pass over K into acc (zeroed by the caller). kScaled: multiply each activation row by
// 2^exps[row]; else track the thread's rows' max |x| in rmax (rows kRowStep * j + tid / kXVec).
template <bool kScaled>
__device__ __forceinline__ void gemm_pass(const Args& a, int64_t t0, int64_t n0, __half* smem, const int* exps,
                                          float (&acc)[2][4][4], float (&rmax)[kXLoads]) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 1, wn = warp & 1;
  const int xr = tid / kXVec, xc = (tid % kXVec) * 4;   // the thread's first x row, its column
  const int wr = tid / kWVec, wc = (tid % kWVec) * 8;   // the same for the weights (halves)
  float scale[kXLoads];
#pragma unroll
  for (int j = 0; j < kXLoads; ++j) scale[j] = kScaled ? pow2(exps[xr + kRowStep * j]) : 1.0f;

  const int stages = static_cast<int>(a.K / kBK);
  float4 xv[kXLoads];
  auto load_x = [&](int st) {
    const int64_t k0 = static_cast<int64_t>(st) * kBK;
#pragma unroll
    for (int j = 0; j < kXLoads; ++j) {
      const int64_t t = t0 + xr + kRowStep * j;
      xv[j] = t < a.T ? __ldg(reinterpret_cast<const float4*>(a.x + t * a.K + k0 + xc))
                      : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  };
  auto load_w = [&](int st, __half* ws) {
    const int64_t k0 = static_cast<int64_t>(st) * kBK;
#pragma unroll
    for (int j = 0; j < kWLoads; ++j) {
      const int r = wr + (kThreads / kWVec) * j;
      const int64_t n = n0 + r;
      const bool valid = n < a.nrows;
      cp_async16(ws + r * kLd + wc, a.w + (valid ? n : 0) * a.K + k0 + wc, valid);
    }
    cp_async_commit();
  };
  auto store_x = [&](__half* xs) {
#pragma unroll
    for (int j = 0; j < kXLoads; ++j) {
      float4 v = xv[j];
      if constexpr (kScaled) {
        v.x *= scale[j];
        v.y *= scale[j];
        v.z *= scale[j];
        v.w *= scale[j];
      } else {
        rmax[j] = fmaxf(rmax[j], fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
      }
      const int r = xr + kRowStep * j;
      split_store(v, xs + r * kLd + xc, xs + kBM * kLd + r * kLd + xc);
    }
  };

  // Stage 0 into buffer 0.
  load_w(0, smem + 2 * kBM * kLd);
  load_x(0);
  store_x(smem);
  cp_async_wait_all();
  __syncthreads();
  for (int st = 0; st < stages; ++st) {
    __half* cur = smem + (st & 1) * kStageHalves;
    __half* nxt = smem + ((st + 1) & 1) * kStageHalves;
    const bool more = st + 1 < stages;
    if (more) {  // the next stage's loads fly during this stage's products
      load_w(st + 1, nxt + 2 * kBM * kLd);
      load_x(st + 1);
    }
    const __half* xh = cur;
    const __half* xl = cur + kBM * kLd;
    const __half* ws = cur + 2 * kBM * kLd;
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks) {
      uint32_t ahi[2][4], alo[2][4], b[4][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int off = (wm * 32 + mt * 16 + (lane & 15)) * kLd + ks * 16 + (lane >> 4) * 8;
        ldmatrix_x4(ahi[mt], xh + off);
        ldmatrix_x4(alo[mt], xl + off);
      }
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        // Matrices (rows np*16 + 0..7 | 8..15) x (columns 0..7 | 8..15): b of two n8 tiles.
        const int off = (wn * 32 + np * 16 + (lane & 7) + ((lane >> 4) << 3)) * kLd + ks * 16 + ((lane >> 3) & 1) * 8;
        uint32_t r[4];
        ldmatrix_x4(r, ws + off);
        b[2 * np][0] = r[0];
        b[2 * np][1] = r[1];
        b[2 * np + 1][0] = r[2];
        b[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          mma_f16(acc[mt][nt], ahi[mt], b[nt]);
          mma_f16(acc[mt][nt], alo[mt], b[nt]);
        }
    }
    if (more) store_x(nxt);
    cp_async_wait_all();
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kThreads) f16_gemm_kernel(Args a, float* __restrict__ y) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* smem = reinterpret_cast<__half*>(smem_raw);
  __shared__ int exps[kBM];
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kBM, n0 = static_cast<int64_t>(blockIdx.y) * kBN;
  const int tid = threadIdx.x;

  float acc[2][4][4];
  auto zero = [&] {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;
  };
  zero();
  float rmax[kXLoads];
#pragma unroll
  for (int j = 0; j < kXLoads; ++j) rmax[j] = 0.0f;
  gemm_pass<false>(a, t0, n0, smem, exps, acc, rmax);

  // Row maxima: the kXVec threads of a row are consecutive lanes (xor 1 .. kXVec / 2).
#pragma unroll
  for (int j = 0; j < kXLoads; ++j) {
#pragma unroll
    for (int o = 1; o < kXVec; o <<= 1) rmax[j] = fmaxf(rmax[j], __shfl_xor_sync(0xffffffffu, rmax[j], o));
    if (tid % kXVec == 0) exps[tid / kXVec + kRowStep * j] = row_exponent(rmax[j]);
  }
  __syncthreads();
  const bool rescale = __syncthreads_or(tid < kBM && exps[tid] != 0);
  if (rescale) {
    zero();
    gemm_pass<true>(a, t0, n0, smem, exps, acc, rmax);
  }

  const int lane = tid & 31, warp = tid >> 5, wm = warp >> 1, wn = warp & 1, g = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = wm * 32 + mt * 16 + g + 8 * h;
      const int64_t t = t0 + row;
      if (t >= a.T) continue;
      const float back = pow2(-exps[row]);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int64_t n = n0 + wn * 32 + nt * 8 + 2 * tq + c;
          if (n < a.nrows) y[t * a.nrows + n] = acc[mt][nt][2 * h + c] * back;
        }
      }
    }
  }
}

}  // namespace

bool f16_tensor_core_gemm_serves(GgmlType type, int64_t ncols, const void* d_w, const void* d_x) {
  if (type != GgmlType::F16 || ncols <= 0 || ncols % kBK != 0) return false;
  if (reinterpret_cast<uintptr_t>(d_w) % 16 != 0 || reinterpret_cast<uintptr_t>(d_x) % 16 != 0) return false;
  return std::getenv("DS4_CUDA_NO_F16_TC_GEMM") == nullptr;
}

void f16_tensor_core_gemm(const void* d_w, int64_t nrows, int64_t ncols, const float* d_x, int64_t T, float* d_y,
                          void* stream) {
  if (nrows == 0 || T == 0) return;
  static const bool once = [] {
    DS4_CUDA_CHECK(cudaFuncSetAttribute(f16_gemm_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kSmemBytes)));
    return true;
  }();
  (void)once;
  const dim3 grid(static_cast<unsigned>((T + kBM - 1) / kBM), static_cast<unsigned>((nrows + kBN - 1) / kBN));
  f16_gemm_kernel<<<grid, kThreads, kSmemBytes, static_cast<cudaStream_t>(stream)>>>(
      Args{static_cast<const __half*>(d_w), nrows, ncols, d_x, T}, d_y);
  DS4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ds4::cuda
