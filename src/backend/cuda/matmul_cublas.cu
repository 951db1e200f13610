// Q8_0 products through cuBLAS half-precision GEMMs (matmul_cublas.h): the expansion kernels
// (weights and activations to f16), the cublasLt call with its fixed algorithm per shape, the
// per-row power-of-two fix-up, and the shared expert's SwiGLU kernel.
#include <cublasLt.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/check.h"
#include "backend/cuda/cublas.h"
#include "backend/cuda/matmul_cublas.h"
#include "quant/blocks.h"

namespace ds4::cuda {
namespace {

constexpr int kQ8Block = 32;                // elements of a Q8_0 block
constexpr int kQ8BlockBytes = 34;           // f16 scale + 32 int8 codes
constexpr float kMaxWeightScale = 512.0f;   // 127 * 512 < 65504: the f16 range
constexpr int kRowThreads = 256;            // threads of the per-row kernels
// Whether the prefill takes this path when no switch is set: on, measured faster than the int8
// kernels (NVIDIA H200, CublasGemm.PrintsTimes: 1.45-4.2x per Flash product at T = 8192,
// 1.9-3.7x at 2048; ds4-bench cuda --synthetic flash --recipe q2 --prompt 8192 --batch 8192:
// 5143 vs 4010 tok/s). DS4_CUDA_NO_CUBLAS_GEMM=1 keeps the int8 kernels.
constexpr bool kCublasGemmByDefault = true;
// The token count at which the algorithm of a shape is chosen (then used for every T).
constexpr int64_t kPlanTokens = 4096;

[[noreturn]] void fail_arg(const std::string& what) { throw_error(("cuda f16 gemm: " + what).c_str()); }

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// ---------------------------------------------------------------- kernels

// bad[0] = 1 if some block scale of the blocks [0, n_blocks) has |d| > kMaxWeightScale or is
// not finite.
__global__ void weights_fit_kernel(const uint8_t* w, int64_t n_blocks, int32_t* bad) {
  for (int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; b < n_blocks;
       b += int64_t(gridDim.x) * blockDim.x) {
    const uint16_t bits = *reinterpret_cast<const uint16_t*>(w + b * kQ8BlockBytes);
    const float d = __half2float(__ushort_as_half(bits));
    if (!(fabsf(d) <= kMaxWeightScale)) *bad = 1;
  }
}

// One thread per 8 elements of a block: w16 = f16(q * d). q * d is exact in f32 (8 x 11
// bits), so there is one rounding, to f16.
__global__ void weights_to_f16_kernel(const uint8_t* w, int64_t n_blocks, __half* w16) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n_blocks * 4;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i >> 2;
    const int part = int(i & 3);
    const uint8_t* blk = w + b * kQ8BlockBytes;
    const float d = __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(blk)));
    // The codes start at an even offset: 2-byte loads.
    const uint16_t* q2 = reinterpret_cast<const uint16_t*>(blk + 2 + 8 * part);
    __align__(16) __half out[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint16_t v = q2[j];
      out[2 * j] = __float2half_rn(float(int8_t(v & 0xFF)) * d);
      out[2 * j + 1] = __float2half_rn(float(int8_t(v >> 8)) * d);
    }
    *reinterpret_cast<uint4*>(w16 + b * kQ8Block + 8 * part) = *reinterpret_cast<const uint4*>(out);
  }
}

// Block-wide max of v over kRowThreads threads (every thread gets it).
__device__ float block_max(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float m = 0.0f;
#pragma unroll
  for (int w = 0; w < kRowThreads / 32; ++w) m = fmaxf(m, red[w]);
  return m;
}

// The row's power of two (matmul_cublas.h): 0 while max |x| is in [2^-6, 2^15) (or 0, or not
// finite), else the one that brings it into [2^14, 2^15).
__device__ int row_exponent(float amax) {
  if (amax == 0.0f || !isfinite(amax) || (amax >= 0x1p-6f && amax < 0x1p15f)) return 0;
  const int e = 14 - ilogbf(amax);
  return max(-120, min(120, e));
}

// One Q8_0 activation block per warp iteration, with the arithmetic of quantize_act.cuh
// (quantize_q8_0_act_warp, kPerLane = 1: bit-identical codes and scales to the CPU's), each
// value written as f16(q * d * 2^e).
__device__ __forceinline__ __half q8_0_code_to_f16(float v, float scale) {
  // fmaxf drops NaN: a NaN value never becomes the block's amax (as in quantize_act.cuh).
  float amax = fmaxf(0.0f, fabsf(v));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float d = __fdiv_rn(amax, 127.0f);
  const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
  const float q = fminf(fmaxf(rintf(__fmul_rn(v, id)), -128.0f), 127.0f);
  return __float2half_rn(__fmul_rn(__fmul_rn(q, d), scale));
}

// One CTA per activation row: its max |x|, its exponent, then its blocks.
__global__ void act_to_f16_kernel(const float* x, int64_t ncols, __half* x16, int32_t* exps) {
  __shared__ float red[kRowThreads / 32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * ncols;
  float m = 0.0f;
  for (int64_t i = threadIdx.x; i < ncols; i += kRowThreads) m = fmaxf(m, fabsf(xr[i]));
  const int e = row_exponent(block_max(m, red));
  if (threadIdx.x == 0) exps[row] = e;
  const float scale = ldexpf(1.0f, e);
  __half* yr = x16 + row * ncols;
  // ncols is a multiple of 32: every warp iteration is one whole block.
  for (int64_t i = threadIdx.x; i < ncols; i += kRowThreads) yr[i] = q8_0_code_to_f16(xr[i], scale);
}

// h = silu(min(g, limit)) * clamp(u, -limit, limit), as moe_experts_batch's gate/up epilogue
// with route weight 1 (and model/moe.cpp's swiglu_clamped).
__device__ __forceinline__ float swiglu_clamped(float g, float u, float limit) {
  g = fminf(g, limit);
  u = fminf(fmaxf(u, -limit), limit);
  const float silu = g / (1.0f + expf(-g));
  return (silu * u) * 1.0f;
}

// One CTA per token: h from the token's gate | up row (gu: [T][2 * n_ff]), then h's Q8_0
// codes as f16 with the row's exponent, as act_to_f16_kernel.
__global__ void swiglu_to_f16_kernel(const float* gu, int64_t n_ff, float limit, __half* x16, int32_t* exps) {
  __shared__ float red[kRowThreads / 32];
  const int64_t row = blockIdx.x;
  const float* g = gu + row * 2 * n_ff;
  const float* u = g + n_ff;
  float m = 0.0f;
  for (int64_t i = threadIdx.x; i < n_ff; i += kRowThreads) m = fmaxf(m, fabsf(swiglu_clamped(g[i], u[i], limit)));
  const int e = row_exponent(block_max(m, red));
  if (threadIdx.x == 0) exps[row] = e;
  const float scale = ldexpf(1.0f, e);
  __half* yr = x16 + row * n_ff;
  for (int64_t i = threadIdx.x; i < n_ff; i += kRowThreads)
    yr[i] = q8_0_code_to_f16(swiglu_clamped(g[i], u[i], limit), scale);
}

// y row t *= 2^-exps[t] where exps[t] != 0 (the rows the activation expansion scaled).
__global__ void unscale_rows_kernel(float* y, int64_t nrows, const int32_t* exps) {
  const int e = exps[blockIdx.x];
  if (e == 0) return;
  const float s = ldexpf(1.0f, -e);
  float* yr = y + int64_t(blockIdx.x) * nrows;
  for (int64_t i = threadIdx.x; i < nrows; i += blockDim.x) yr[i] *= s;
}

int grid_for(int64_t work, int threads) {
  const int64_t g = (work + threads - 1) / threads;
  return int(std::min<int64_t>(std::max<int64_t>(g, 1), 65535 * 16));
}

// ---------------------------------------------------------------- cublasLt

cublasLtHandle_t lt_handle() {
  // Per thread and device, never destroyed (as cublas_handle in cublas.cpp).
  thread_local std::map<int, cublasLtHandle_t> handles;
  int dev = 0;
  DS4_CUDA_CHECK(cudaGetDevice(&dev));
  cublasLtHandle_t& h = handles[dev];
  if (h == nullptr) DS4_CUBLAS_CHECK(cublasLtCreate(&h));
  return h;
}

// Descriptors of one product: D (nrows x T, column-major = Y row-major [T][nrows]) =
// op(A) B with A the f16 weights (ncols x nrows column-major, transposed) and B the f16
// activations (ncols x T column-major).
struct LtProblem {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  LtProblem(int64_t nrows, int64_t ncols, int64_t T) {
    DS4_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    DS4_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    DS4_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    DS4_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a, CUDA_R_16F, uint64_t(ncols), uint64_t(nrows), ncols));
    DS4_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b, CUDA_R_16F, uint64_t(ncols), uint64_t(T), ncols));
    DS4_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d, CUDA_R_32F, uint64_t(nrows), uint64_t(T), nrows));
  }
  ~LtProblem() {
    cublasLtMatrixLayoutDestroy(d);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(a);
    cublasLtMatmulDescDestroy(op);
  }
  LtProblem(const LtProblem&) = delete;
  LtProblem& operator=(const LtProblem&) = delete;
};

// cuBLAS's first choice for the problem with no workspace and no reduction across K splits
// (each output summed by one CTA in a fixed order), for outputs aligned to `d_align` bytes.
bool heuristic_algo(const LtProblem& p, uint32_t d_align, cublasLtMatmulAlgo_t* algo) {
  cublasLtMatmulPreference_t pref = nullptr;
  DS4_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = 0;
  const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_NONE, ab_align = 16;
  DS4_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  DS4_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction,
                                                        sizeof(reduction)));
  DS4_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ab_align,
                                                        sizeof(ab_align)));
  DS4_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab_align,
                                                        sizeof(ab_align)));
  DS4_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &d_align,
                                                        sizeof(d_align)));
  DS4_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &d_align,
                                                        sizeof(d_align)));
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt_handle(), p.op, p.a, p.b, p.d, p.d, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found < 1 || res.state != CUBLAS_STATUS_SUCCESS) return false;
  *algo = res.algo;
  return true;
}

// The algorithm of a (rows, cols, output alignment) shape, chosen at kPlanTokens tokens, and
// whether it runs each token count seen so far (cublasLtMatmulAlgoCheck, without workspace).
struct Plan {
  cublasLtMatmulAlgo_t algo{};
  std::map<int64_t, bool> runs;  // T -> the algorithm supports it with no workspace
};

const cublasLtMatmulAlgo_t& algo_for(int64_t nrows, int64_t ncols, int64_t T, uint32_t d_align, const LtProblem& p,
                                     cublasLtMatmulAlgo_t* fallback) {
  int dev = 0;
  DS4_CUDA_CHECK(cudaGetDevice(&dev));
  thread_local std::map<std::tuple<int, int64_t, int64_t, uint32_t>, Plan> plans;
  const auto key = std::make_tuple(dev, nrows, ncols, d_align);
  auto it = plans.find(key);
  if (it == plans.end()) {
    Plan plan;
    const LtProblem canonical(nrows, ncols, kPlanTokens);
    if (!heuristic_algo(canonical, d_align, &plan.algo))
      fail_arg("cuBLAS has no algorithm for " + std::to_string(nrows) + "x" + std::to_string(ncols));
    it = plans.emplace(key, plan).first;
  }
  Plan& plan = it->second;
  auto r = plan.runs.find(T);
  if (r == plan.runs.end()) {
    cublasLtMatmulHeuristicResult_t check{};
    const cublasStatus_t st = cublasLtMatmulAlgoCheck(lt_handle(), p.op, p.a, p.b, p.d, p.d, &plan.algo, &check);
    r = plan.runs.emplace(T, st == CUBLAS_STATUS_SUCCESS && check.workspaceSize == 0).first;
  }
  if (r->second) return plan.algo;
  // Not runnable at this T (not seen at Flash shapes): cuBLAS's choice for this T, still
  // without split-K; a token's row may then differ in the last bits from other T.
  if (!heuristic_algo(p, d_align, fallback))
    fail_arg("cuBLAS has no algorithm for " + std::to_string(nrows) + "x" + std::to_string(ncols));
  return *fallback;
}

uint32_t alignment_of(const void* p, int64_t ld_bytes) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p) | uintptr_t(ld_bytes);
  return (v % 16 == 0) ? 16u : (v % 8 == 0) ? 8u : 4u;
}

void lt_gemm(const __half* w16, int64_t nrows, int64_t ncols, const __half* x16, int64_t T, float* y, void* stream) {
  const LtProblem p(nrows, ncols, T);
  cublasLtMatmulAlgo_t fallback{};
  const uint32_t d_align = alignment_of(y, nrows * int64_t(sizeof(float)));
  const cublasLtMatmulAlgo_t& algo = algo_for(nrows, ncols, T, d_align, p, &fallback);
  const float alpha = 1.0f, beta = 0.0f;
  DS4_CUBLAS_CHECK(cublasLtMatmul(lt_handle(), p.op, &alpha, w16, p.a, x16, p.b, &beta, y, p.d, y, p.d, &algo,
                                  nullptr, 0, as_stream(stream)));
}

void check_shape(int64_t nrows, int64_t ncols, int64_t T) {
  if (nrows < 0 || T < 0) fail_arg("negative shape");
  if (ncols <= 0 || ncols % kQ8Block != 0) fail_arg("Q8_0 rows of " + std::to_string(ncols) + " columns");
  if (T > 2147483647 || nrows > 2147483647) fail_arg("shape too large");
}

void need(size_t have, size_t want, const char* what) {
  if (have < want)
    fail_arg(std::string("scratch ") + what + " of " + std::to_string(have) + " bytes, " + std::to_string(want) +
             " needed");
}

}  // namespace

bool cublas_gemm_enabled(GgmlType type) {
  if (type != GgmlType::Q8_0 || std::getenv("DS4_CUDA_NO_CUBLAS_GEMM") != nullptr) return false;
  return kCublasGemmByDefault || std::getenv("DS4_CUDA_CUBLAS_GEMM") != nullptr;
}

void q8_0_weights_fit_f16_many(const void* const* d_w, const int64_t* rows, const int64_t* cols, int n, bool* fits,
                               void* stream) {
  if (n <= 0) return;
  int32_t* bad = nullptr;
  DS4_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&bad), size_t(n) * sizeof(int32_t), as_stream(stream)));
  DS4_CUDA_CHECK(cudaMemsetAsync(bad, 0, size_t(n) * sizeof(int32_t), as_stream(stream)));
  for (int i = 0; i < n; ++i) {
    check_shape(rows[i], cols[i], 0);
    const int64_t blocks = rows[i] * (cols[i] / kQ8Block);
    if (blocks == 0) continue;
    weights_fit_kernel<<<grid_for(blocks, 256), 256, 0, as_stream(stream)>>>(static_cast<const uint8_t*>(d_w[i]),
                                                                             blocks, bad + i);
    DS4_CUDA_CHECK(cudaGetLastError());
  }
  std::vector<int32_t> host(static_cast<size_t>(n));
  DS4_CUDA_CHECK(cudaMemcpyAsync(host.data(), bad, host.size() * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                 as_stream(stream)));
  DS4_CUDA_CHECK(cudaFreeAsync(bad, as_stream(stream)));
  DS4_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream)));
  for (int i = 0; i < n; ++i) fits[i] = host[static_cast<size_t>(i)] == 0;
}

bool q8_0_weights_fit_f16(const void* d_w, int64_t nrows, int64_t ncols, void* stream) {
  bool fits = false;
  q8_0_weights_fit_f16_many(&d_w, &nrows, &ncols, 1, &fits, stream);
  return fits;
}

void q8_0_weights_to_f16(const void* d_w, int64_t nrows, int64_t ncols, const F16GemmScratch& scratch, void* stream) {
  check_shape(nrows, ncols, 0);
  need(scratch.w16_bytes, size_t(nrows * ncols) * sizeof(__half), "w16");
  const int64_t blocks = nrows * (ncols / kQ8Block);
  if (blocks == 0) return;
  weights_to_f16_kernel<<<grid_for(blocks * 4, 256), 256, 0, as_stream(stream)>>>(
      static_cast<const uint8_t*>(d_w), blocks, static_cast<__half*>(scratch.w16));
  DS4_CUDA_CHECK(cudaGetLastError());
}

void q8_0_act_to_f16(const float* d_x, int64_t T, int64_t ncols, const F16GemmScratch& scratch, void* stream) {
  check_shape(0, ncols, T);
  need(scratch.x16_bytes, size_t(T * ncols) * sizeof(__half), "x16");
  if (scratch.exps_rows < T) fail_arg("scratch exps of " + std::to_string(scratch.exps_rows) + " rows");
  if (T == 0) return;
  act_to_f16_kernel<<<unsigned(T), kRowThreads, 0, as_stream(stream)>>>(d_x, ncols, static_cast<__half*>(scratch.x16),
                                                                         scratch.exps);
  DS4_CUDA_CHECK(cudaGetLastError());
}

void f16_scratch_gemm(const F16GemmScratch& scratch, int64_t w_row0, int64_t nrows, int64_t ncols, int64_t T,
                      float* d_y, void* stream) {
  check_shape(nrows, ncols, T);
  if (w_row0 < 0) fail_arg("negative weight row");
  need(scratch.w16_bytes, size_t((w_row0 + nrows) * ncols) * sizeof(__half), "w16");
  need(scratch.x16_bytes, size_t(T * ncols) * sizeof(__half), "x16");
  if (nrows == 0 || T == 0) return;
  lt_gemm(static_cast<const __half*>(scratch.w16) + w_row0 * ncols, nrows, ncols,
          static_cast<const __half*>(scratch.x16), T, d_y, stream);
  unscale_rows_kernel<<<unsigned(T), 256, 0, as_stream(stream)>>>(d_y, nrows, scratch.exps);
  DS4_CUDA_CHECK(cudaGetLastError());
}

void cublas_q8_0_gemm(const void* d_w, int64_t nrows, int64_t ncols, const float* d_x, int64_t T, float* d_y,
                      const F16GemmScratch& scratch, void* stream) {
  check_shape(nrows, ncols, T);
  if (nrows == 0 || T == 0) return;
  q8_0_weights_to_f16(d_w, nrows, ncols, scratch, stream);
  q8_0_act_to_f16(d_x, T, ncols, scratch, stream);
  f16_scratch_gemm(scratch, 0, nrows, ncols, T, d_y, stream);
}

void cublas_q8_0_shared_expert(const void* d_gate, const void* d_up, const void* d_down, int64_t n_embd,
                               int64_t n_ff, float limit, const float* d_x, int64_t T, float* d_y,
                               const F16GemmScratch& scratch, void* stream) {
  check_shape(2 * n_ff, n_embd, T);
  check_shape(n_embd, n_ff, T);
  need(scratch.f32_bytes, size_t(T * 2 * n_ff) * sizeof(float), "f32");
  if (T == 0) return;
  // gate rows, then up rows: one weight of 2 * n_ff rows, one product [T][gate | up].
  F16GemmScratch up_half = scratch;
  up_half.w16 = static_cast<__half*>(scratch.w16) + n_ff * n_embd;
  up_half.w16_bytes = scratch.w16_bytes >= size_t(n_ff * n_embd) * sizeof(__half)
                          ? scratch.w16_bytes - size_t(n_ff * n_embd) * sizeof(__half)
                          : 0;
  q8_0_weights_to_f16(d_gate, n_ff, n_embd, scratch, stream);
  q8_0_weights_to_f16(d_up, n_ff, n_embd, up_half, stream);
  q8_0_act_to_f16(d_x, T, n_embd, scratch, stream);
  f16_scratch_gemm(scratch, 0, 2 * n_ff, n_embd, T, scratch.f32, stream);
  // h's codes replace x's in x16 (the gate / up product has read them: same stream).
  need(scratch.x16_bytes, size_t(T * n_ff) * sizeof(__half), "x16");
  swiglu_to_f16_kernel<<<unsigned(T), kRowThreads, 0, as_stream(stream)>>>(
      scratch.f32, n_ff, limit, static_cast<__half*>(scratch.x16), scratch.exps);
  DS4_CUDA_CHECK(cudaGetLastError());
  q8_0_weights_to_f16(d_down, n_embd, n_ff, scratch, stream);
  f16_scratch_gemm(scratch, 0, n_embd, n_ff, T, d_y, stream);
}

}  // namespace ds4::cuda
