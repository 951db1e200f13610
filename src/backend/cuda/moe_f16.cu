// The f16 tensor-core path of the grouped routed experts (moe_f16.h): expansion kernels for
// weights and activations, the SwiGLU + requantization of the hidden state, and the host
// sequencing of the cuBLAS products over side streams.
#include "backend/cuda/moe_f16.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "backend/cuda/block_scales.cuh"
#include "backend/cuda/check.h"
#include "backend/cuda/cublas.h"
#include "backend/cuda/device_attribute.h"
#include "backend/cuda/kernel_tables.h"
#include "backend/cuda/quantize_act.cuh"
#include "quant/blocks.h"

namespace ds4::cuda {
namespace {

// Every kernel here works on spans of 256 consecutive values of a row (one K-quant block, or 8
// blocks of 32): lane L of a warp handles values 8L .. 8L+7, so a warp writes one contiguous
// 512-byte f16 span.
constexpr int kSpan = 256;
constexpr int kThreads = 256, kWarps = kThreads / 32;
constexpr int kMaxStreams = 8;
constexpr size_t kAlign = 256;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

bool expandable(GgmlType t) {
  return t == GgmlType::Q8_0 || t == GgmlType::MXFP4 || t == GgmlType::Q2_K || t == GgmlType::Q4_K ||
         t == GgmlType::IQ2_XXS;
}
// Q8_0 and MXFP4 pair with BlockQ8_0Act activations (32 values a block), the K-quants and
// IQ2_XXS with BlockQ8_K (256 a block): matvec.h's partner formats.
bool partner_is_q8k(GgmlType t) { return t != GgmlType::Q8_0 && t != GgmlType::MXFP4; }
size_t span_bytes(GgmlType t) {
  switch (t) {
    case GgmlType::Q8_0: return 8 * sizeof(BlockQ8_0);
    case GgmlType::MXFP4: return 8 * sizeof(BlockMXFP4);
    case GgmlType::Q2_K: return sizeof(BlockQ2_K);
    case GgmlType::Q4_K: return sizeof(BlockQ4_K);
    case GgmlType::IQ2_XXS: return sizeof(BlockIQ2_XXS);
    default: return 0;
  }
}
size_t act_span_bytes(GgmlType t) { return partner_is_q8k(t) ? sizeof(BlockQ8_K) : 8 * sizeof(BlockQ8_0Act); }

__device__ uint64_t g_grid[256];
__device__ uint64_t g_signs[128];
__constant__ int8_t c_mxfp4[16];

void init_tables() {
  static std::once_flag once;
  std::call_once(once, [] {
    uint64_t masks[128];
    detail::iq2xxs_sign_masks(masks);
    DS4_CUDA_CHECK(cudaMemcpyToSymbol(g_grid, quant::iq2xxs_grid(), sizeof(g_grid)));
    DS4_CUDA_CHECK(cudaMemcpyToSymbol(g_signs, masks, sizeof(masks)));
    DS4_CUDA_CHECK(cudaMemcpyToSymbol(c_mxfp4, quant::kValuesMxfp4, sizeof(c_mxfp4)));
  });
}

__device__ __forceinline__ float half_at(const uint8_t* p) {
  return __half2float(__ushort_as_half(uint16_t(p[0] | (p[1] << 8))));
}

// Values 8 lane .. 8 lane + 7 of the 256-value span at `sp`, in f32 as the CPU's dequantizers
// compute them (formats.md; the f16 rounding comes after).
template <GgmlType kType>
__device__ __forceinline__ void decode8(const uint8_t* sp, int lane, float v[8]) {
  const int j = lane >> 2, i0 = (lane & 3) * 8;  // 32-value chunk j, first value i0 inside it
  if constexpr (kType == GgmlType::Q8_0) {
    const uint8_t* b = sp + j * sizeof(BlockQ8_0);
    const float d = half_at(b);
#pragma unroll
    for (int t = 0; t < 8; ++t) v[t] = d * float(int8_t(b[2 + i0 + t]));
  } else if constexpr (kType == GgmlType::MXFP4) {
    const uint8_t* b = sp + j * sizeof(BlockMXFP4);
    const float s = mxfp4_scale(b[0]);
#pragma unroll
    for (int t = 0; t < 8; ++t) {  // value i: low nibble of qs[i] for i < 16, else high nibble of qs[i - 16]
      const int i = i0 + t;
      const int nib = i < 16 ? (b[1 + i] & 0xF) : (b[1 + i - 16] >> 4);
      v[t] = float(c_mxfp4[nib]) * s;
    }
  } else if constexpr (kType == GgmlType::Q2_K) {  // w = d sc q - dmin m, sub-block of 16
    const float d = half_at(sp + 80), dmin = half_at(sp + 82);
    const int sb = 2 * j + (i0 >> 4);
    const float dl = d * float(sp[sb] & 0xF), ml = dmin * float(sp[sb] >> 4);
    const uint8_t* q = sp + 16 + 32 * (j >> 2) + i0;
    const int shift = 2 * (j & 3);
#pragma unroll
    for (int t = 0; t < 8; ++t) v[t] = dl * float((q[t] >> shift) & 3) - ml;
  } else if constexpr (kType == GgmlType::Q4_K) {  // w = d sc_j q - dmin m_j, sub-block of 32
    const float d = half_at(sp), dmin = half_at(sp + 2);
    int sc, m;
    q4k_scale_min(j, sp + 4, sc, m);
    const float dl = d * float(sc), ml = dmin * float(m);
    const uint8_t* q = sp + 16 + 32 * (j >> 1) + i0;
    const int shift = 4 * (j & 1);
#pragma unroll
    for (int t = 0; t < 8; ++t) v[t] = dl * float((q[t] >> shift) & 0xF) - ml;
  } else {  // IQ2_XXS: group j = 4 grid bytes + u32 {4 x 7 sign bits, 4-bit scale}; lane: grid byte k
    const int k = lane & 3;
    const uint8_t* g = sp + 2 + 8 * j;
    const uint32_t a1 = uint32_t(g[4]) | (uint32_t(g[5]) << 8) | (uint32_t(g[6]) << 16) | (uint32_t(g[7]) << 24);
    const uint64_t gv = g_grid[g[k]];
    const uint64_t neg = g_signs[(a1 >> (7 * k)) & 127];
    const float db = half_at(sp) * 0.125f * float(2 * int(a1 >> 28) + 1);
#pragma unroll
    for (int t = 0; t < 8; ++t) {
      const float a = float(uint32_t(gv >> (8 * t)) & 0xFF);
      v[t] = db * ((neg >> (8 * t)) & 1 ? -a : a);
    }
  }
}

__device__ __forceinline__ void store8(__half* dst, const float v[8]) {
  uint4 o;
  __half2 h[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
  o.x = *reinterpret_cast<uint32_t*>(&h[0]);
  o.y = *reinterpret_cast<uint32_t*>(&h[1]);
  o.z = *reinterpret_cast<uint32_t*>(&h[2]);
  o.w = *reinterpret_cast<uint32_t*>(&h[3]);
  *reinterpret_cast<uint4*>(dst) = o;
}

struct GroupIds {
  int e[kMoeF16MaxGroup];
};

// The stacked matrices of n experts (ids.e[i]) to f16, expert i at dst + i * dst_stride:
// rows [0, rows_a) from a, then (if b) rows_a more from b, each ncols wide, row-major. One warp
// per row (index math once per row, not per span).
template <GgmlType kType>
__global__ void __launch_bounds__(kThreads) expand_kernel(const uint8_t* __restrict__ a, const uint8_t* __restrict__ b,
                                                          int rows_a, int spans, size_t rb, size_t slab, size_t sb,
                                                          GroupIds ids, int n, __half* __restrict__ dst,
                                                          size_t dst_stride) {
  const int lane = threadIdx.x & 31;
  const int rows = b ? 2 * rows_a : rows_a;
  const int total = rows * n;
  const int step = int(gridDim.x) * kWarps;
  for (int w = int(blockIdx.x) * kWarps + (threadIdx.x >> 5); w < total; w += step) {
    const int i = w / rows, row = w - i * rows;
    const uint8_t* src = (row < rows_a ? a : b) + size_t(ids.e[i]) * slab + size_t(row < rows_a ? row : row - rows_a) * rb;
    __half* out = dst + size_t(i) * dst_stride + size_t(row) * size_t(spans) * kSpan + 8 * lane;
    for (int c = 0; c < spans; ++c) {
      float v[8];
      decode8<kType>(src + size_t(c) * sb, lane, v);
      store8(out + size_t(c) * kSpan, v);
    }
  }
}

// x16[slot] = d * q of the token's activation row (partner format), slots [0, V).
template <bool kQ8K>
__global__ void __launch_bounds__(kThreads) gather_act_kernel(const uint8_t* __restrict__ act, size_t arb,
                                                              const int32_t* __restrict__ slot_token, int64_t V,
                                                              int64_t ncols, __half* __restrict__ x16) {
  const int lane = threadIdx.x & 31;
  const int64_t spans = ncols / kSpan;
  const int64_t step = int64_t(gridDim.x) * kWarps;
  for (int64_t slot = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); slot < V; slot += step) {
    const uint8_t* row = act + size_t(__ldg(slot_token + slot)) * arb;
    for (int64_t c = 0; c < spans; ++c) {
      const uint8_t* blk = kQ8K ? row + size_t(c) * sizeof(BlockQ8_K)
                                : row + (size_t(c) * 8 + (lane >> 2)) * sizeof(BlockQ8_0Act);
      const float d = *reinterpret_cast<const float*>(blk);
      const uint32_t* q = reinterpret_cast<const uint32_t*>(blk + 4 + (kQ8K ? 8 * lane : 8 * (lane & 3)));
      const uint32_t q0 = q[0], q1 = q[1];
      float v[8];
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        v[t] = d * float(int8_t(q0 >> (8 * t)));
        v[4 + t] = d * float(int8_t(q1 >> (8 * t)));
      }
      store8(x16 + size_t(slot) * size_t(ncols) + size_t(c) * kSpan + 8 * lane, v);
    }
  }
}

// Slots [o, o + c) of one expert: h = w * silu(min(g, L)) * clamp(u, -L, L) from gu (gate row
// then up row, f32), quantized to the down product's partner format exactly as
// quantize_activation does (one warp per span), and stored as f16(d * q).
template <bool kQ8K>
__global__ void __launch_bounds__(kThreads) swiglu_kernel(const float* __restrict__ gu, const float* __restrict__ slot_w,
                                                          int64_t o, int64_t c, int64_t F, float limit,
                                                          __half* __restrict__ h16) {
  __shared__ BlockQ8_K sk[kQ8K ? kWarps : 1];
  __shared__ BlockQ8_0Act s0[kQ8K ? 1 : kWarps][8];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t spans = F / kSpan;
  const int64_t step = int64_t(gridDim.x) * kWarps;
  for (int64_t w = int64_t(blockIdx.x) * kWarps + warp; w < c * spans; w += step) {
    const int64_t slot = o + w / spans, cc = w - (w / spans) * spans;
    const float* g = gu + size_t(slot) * size_t(2 * F) + size_t(cc) * kSpan;
    float gv[8], uv[8], v[8];
    load_256(g, gv);
    load_256(g + F, uv);
    const float rw = __ldg(slot_w + slot);
#pragma unroll
    for (int t = 0; t < 8; ++t) {  // matmul.cu GateUpPlan::store_pair, the same expression
      const float gg = fminf(gv[t], limit);
      const float uu = fminf(fmaxf(uv[t], -limit), limit);
      const float silu = gg / (1.0f + expf(-gg));
      v[t] = (silu * uu) * rw;
    }
    float d;
    const int8_t* q;
    if constexpr (kQ8K) {
      quantize_q8_k_warp(v, &sk[warp]);
      __syncwarp();
      d = sk[warp].d;
      q = sk[warp].qs + 8 * lane;
    } else {
      quantize_q8_0_act_warp<8>(v, s0[warp]);
      __syncwarp();
      d = s0[warp][lane >> 2].d;
      q = s0[warp][lane >> 2].qs + 8 * (lane & 3);
    }
#pragma unroll
    for (int t = 0; t < 8; ++t) v[t] = d * float(q[t]);
    __syncwarp();  // the shared block is rewritten by the next span
    store8(h16 + size_t(slot) * size_t(F) + size_t(cc) * kSpan + 8 * lane, v);
  }
}

// counts[e] = valid entries of expert e (the route kernel's slot order: experts ascending).
__global__ void count_kernel(const int32_t* __restrict__ ids, int nk, int n_expert, int32_t* counts) {
  extern __shared__ int cnt[];
  for (int e = threadIdx.x; e < n_expert; e += blockDim.x) cnt[e] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < nk; i += blockDim.x) {
    const int e = ids[i];
    if (e >= 0 && e < n_expert) atomicAdd(&cnt[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < n_expert; e += blockDim.x) counts[e] = cnt[e];
}

unsigned grid_for(int64_t warps) {
  const int64_t cap = int64_t(device_attribute(cudaDevAttrMultiProcessorCount)) * 8;
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((warps + kWarps - 1) / kWarps, cap)));
}

template <GgmlType kType>
void expand_t(const void* a, const void* b, int64_t rows_a, int64_t ncols, size_t rb, size_t slab, const GroupIds& ids,
              int n, __half* dst, size_t dst_stride, cudaStream_t st) {
  const int64_t warps = (b ? 2 * rows_a : rows_a) * n;
  expand_kernel<kType><<<grid_for(warps), kThreads, 0, st>>>(static_cast<const uint8_t*>(a),
                                                            static_cast<const uint8_t*>(b), int(rows_a),
                                                            int(ncols / kSpan), rb, slab, span_bytes(kType), ids, n,
                                                            dst, dst_stride);
  DS4_CUDA_CHECK(cudaGetLastError());
}

void expand(GgmlType t, const void* a, const void* b, int64_t rows_a, int64_t ncols, const GroupIds& ids, int n,
            __half* dst, size_t dst_stride, cudaStream_t st) {
  const size_t rb = size_t(ncols / kSpan) * span_bytes(t), slab = rb * size_t(rows_a);
  switch (t) {
    case GgmlType::Q8_0: return expand_t<GgmlType::Q8_0>(a, b, rows_a, ncols, rb, slab, ids, n, dst, dst_stride, st);
    case GgmlType::MXFP4: return expand_t<GgmlType::MXFP4>(a, b, rows_a, ncols, rb, slab, ids, n, dst, dst_stride, st);
    case GgmlType::Q2_K: return expand_t<GgmlType::Q2_K>(a, b, rows_a, ncols, rb, slab, ids, n, dst, dst_stride, st);
    case GgmlType::Q4_K: return expand_t<GgmlType::Q4_K>(a, b, rows_a, ncols, rb, slab, ids, n, dst, dst_stride, st);
    case GgmlType::IQ2_XXS:
      return expand_t<GgmlType::IQ2_XXS>(a, b, rows_a, ncols, rb, slab, ids, n, dst, dst_stride, st);
    default: break;
  }
}

// Side streams with their own cuBLAS handles (a handle's workspace must not be shared by two
// streams running at once), per device, created on first use and kept for the process.
struct Sides {
  cudaStream_t stream[kMaxStreams] = {};
  cublasHandle_t handle[kMaxStreams] = {};
  void* workspace[kMaxStreams] = {};
  cudaEvent_t done[kMaxStreams][2] = {};
  cudaEvent_t expanded[2] = {};
  int n = 0;
  int32_t* host_counts = nullptr;  // pinned
  int host_cap = 0;
};

std::mutex g_mutex;  // one call at a time per process: the side streams, events and pinned counts are shared

Sides& sides(int want, int n_expert) {
  static std::map<int, Sides> all;
  int dev = 0;
  DS4_CUDA_CHECK(cudaGetDevice(&dev));
  Sides& s = all[dev];
  if (s.expanded[0] == nullptr)
    for (cudaEvent_t& e : s.expanded) DS4_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  for (; s.n < want; ++s.n) {
    const int i = s.n;
    DS4_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream[i], cudaStreamNonBlocking));
    DS4_CUBLAS_CHECK(cublasCreate(&s.handle[i]));
    DS4_CUBLAS_CHECK(cublasSetStream(s.handle[i], s.stream[i]));
    DS4_CUDA_CHECK(cudaMalloc(&s.workspace[i], kCublasWorkspaceBytes));
    DS4_CUBLAS_CHECK(cublasSetWorkspace(s.handle[i], s.workspace[i], kCublasWorkspaceBytes));
    for (cudaEvent_t& e : s.done[i]) DS4_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  if (s.host_cap < n_expert) {
    if (s.host_counts) DS4_CUDA_CHECK(cudaFreeHost(s.host_counts));
    DS4_CUDA_CHECK(cudaMallocHost(&s.host_counts, size_t(n_expert) * sizeof(int32_t)));
    s.host_cap = n_expert;
  }
  return s;
}

int env_int(const char* name, int def, int lo, int hi) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return def;
  return std::clamp(std::atoi(v), lo, hi);
}

// Experts whose f16 matrices the scratch holds at once (per buffer; two buffers).
int max_group(const MoeBatchShape& s) { return std::min(kMoeF16MaxGroup, s.n_expert); }

// Part of the extra workspace: [counts][x16][gu][scratch: 2 x max_group x (3 n_ff n_embd) f16].
struct Extra {
  size_t counts, x16, gu, scratch, total;
};
Extra extra_layout(const MoeBatchShape& s, int64_t T) {
  const size_t nk = size_t(T) * size_t(s.n_used), E = size_t(s.n_embd), F = size_t(s.n_ff);
  Extra x{};
  size_t o = 0;
  auto take = [&](size_t bytes) {
    const size_t at = o;
    o += align_up(bytes);
    return at;
  };
  x.counts = take(size_t(s.n_expert) * sizeof(int32_t));
  x.x16 = take(nk * E * sizeof(__half));
  x.gu = take(nk * 2 * F * sizeof(float));
  x.scratch = take(2 * size_t(max_group(s)) * 3 * F * E * sizeof(__half));
  x.total = o;
  return x;
}

bool shape_ok(const MoeBatchShape& s) {
  return expandable(s.gate_up_type) && expandable(s.down_type) && s.n_embd % kSpan == 0 && s.n_ff % kSpan == 0 &&
         s.n_embd <= (int64_t(1) << 20) && s.n_ff <= (int64_t(1) << 20);
}

}  // namespace

size_t moe_f16_workspace_bytes(const MoeBatchShape& s, int64_t T) {
  if (!shape_ok(s) || T < kMoeF16FloorTokens) return 0;
  return extra_layout(s, T).total;
}

bool moe_f16_serves(const MoeBatchShape& s, int64_t T, void* stream) {
  if (moe_f16_workspace_bytes(s, T) == 0 || std::getenv("DS4_CUDA_NO_MOE_F16") != nullptr) return false;
  // MXFP4 experts were slower here than in the int8 kernels (moe_f16.h): opt-in.
  const bool mxfp4 = s.gate_up_type == GgmlType::MXFP4 || s.down_type == GgmlType::MXFP4;
  if (mxfp4 && std::getenv("DS4_CUDA_MOE_F16_MXFP4") == nullptr) return false;
  const char* v = std::getenv("DS4_CUDA_MOE_F16_MIN_T");
  const int64_t min_t = v && *v ? std::max<int64_t>(kMoeF16FloorTokens, std::atoll(v)) : kMoeF16MinTokens;
  if (T < min_t) return false;
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  DS4_CUDA_CHECK(cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &cap));
  return cap == cudaStreamCaptureStatusNone;
}

void moe_f16_experts(const MoeBatchShape& s, const void* d_gate, const void* d_up, const void* d_down,
                     const int32_t* d_ids, int64_t T, const detail::MoeBatchWs& ws, void* d_extra, void* stream) {
  init_tables();
  std::lock_guard<std::mutex> lock(g_mutex);
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int n_streams = env_int("DS4_CUDA_MOE_F16_STREAMS", 4, 1, kMaxStreams);
  const int group = env_int("DS4_CUDA_MOE_F16_GROUP", 8, 1, max_group(s));
  Sides& sd = sides(n_streams, s.n_expert);
  const Extra xl = extra_layout(s, T);
  uint8_t* base = static_cast<uint8_t*>(d_extra);
  int32_t* d_counts = reinterpret_cast<int32_t*>(base + xl.counts);
  __half* x16 = reinterpret_cast<__half*>(base + xl.x16);
  float* gu = reinterpret_cast<float*>(base + xl.gu);
  __half* scratch = reinterpret_cast<__half*>(base + xl.scratch);
  __half* h16 = reinterpret_cast<__half*>(ws.h);  // nk x n_ff halves fit in the f32 hidden rows
  const int64_t E = s.n_embd, F = s.n_ff;

  // Token counts per expert to the host: the products' shapes (one sync per call). Slots are
  // numbered as launch_moe_route numbers them: experts ascending, valid entries only.
  count_kernel<<<1, 1024, size_t(s.n_expert) * sizeof(int), st>>>(d_ids, int(T * s.n_used), s.n_expert, d_counts);
  DS4_CUDA_CHECK(cudaGetLastError());
  DS4_CUDA_CHECK(cudaMemcpyAsync(sd.host_counts, d_counts, size_t(s.n_expert) * sizeof(int32_t),
                                 cudaMemcpyDeviceToHost, st));
  DS4_CUDA_CHECK(cudaStreamSynchronize(st));
  std::vector<int> active;
  std::vector<int64_t> first(size_t(s.n_expert), 0);
  int64_t V = 0;
  for (int e = 0; e < s.n_expert; ++e) {
    first[size_t(e)] = V;
    V += sd.host_counts[e];
    if (sd.host_counts[e] > 0) active.push_back(e);
  }
  if (V == 0) return;

  // The tokens' activations in slot order, f16.
  {
    const bool q8k = partner_is_q8k(s.gate_up_type);
    const size_t arb = size_t(E / kSpan) * act_span_bytes(s.gate_up_type);
    const unsigned grid = grid_for(V);
    if (q8k)
      gather_act_kernel<true><<<grid, kThreads, 0, st>>>(static_cast<const uint8_t*>(ws.act_x), arb, ws.slot_token, V,
                                                         E, x16);
    else
      gather_act_kernel<false><<<grid, kThreads, 0, st>>>(static_cast<const uint8_t*>(ws.act_x), arb, ws.slot_token,
                                                          V, E, x16);
    DS4_CUDA_CHECK(cudaGetLastError());
  }

  // Groups of `group` experts, expanded into alternating scratch buffers on `st` while the side
  // streams run the previous group's products. Expert j of the active list runs on side stream
  // j % n_streams: gate/up product, SwiGLU, down product, in that stream's order.
  const size_t per_expert = size_t(3) * size_t(F) * size_t(E);  // halves: gate, up, down
  const bool h_q8k = partner_is_q8k(s.down_type);
  const float one = 1.0f, zero = 0.0f;
  int last_buf = 0;
  for (size_t g0 = 0, gi = 0; g0 < active.size(); g0 += size_t(group), ++gi) {
    const int buf = int(gi & 1);
    last_buf = buf;
    const int n = int(std::min(active.size() - g0, size_t(group)));
    if (gi >= 2)  // the products of group gi - 2 read this buffer
      for (int k = 0; k < n_streams; ++k) DS4_CUDA_CHECK(cudaStreamWaitEvent(st, sd.done[k][buf], 0));
    GroupIds ids{};
    for (int i = 0; i < n; ++i) ids.e[i] = active[g0 + size_t(i)];
    __half* wbuf = scratch + size_t(buf) * size_t(max_group(s)) * per_expert;
    expand(s.gate_up_type, d_gate, d_up, F, E, ids, n, wbuf, per_expert, st);
    expand(s.down_type, d_down, nullptr, E, F, ids, n, wbuf + size_t(2) * size_t(F) * size_t(E), per_expert, st);
    DS4_CUDA_CHECK(cudaEventRecord(sd.expanded[buf], st));
    for (int k = 0; k < n_streams; ++k) DS4_CUDA_CHECK(cudaStreamWaitEvent(sd.stream[k], sd.expanded[buf], 0));
    for (int i = 0; i < n; ++i) {
      const int e = ids.e[i];
      const int k = int((g0 + size_t(i)) % size_t(n_streams));
      const int64_t o = first[size_t(e)];
      const int c = sd.host_counts[e];
      const __half* wgu = wbuf + size_t(i) * per_expert;
      const __half* wdn = wgu + size_t(2) * size_t(F) * size_t(E);
      // Column-major view: gu^T (2F x c) = Wgu (row-major 2F x E, i.e. E x 2F col-major, op T) x16^T (E x c).
      DS4_CUBLAS_CHECK(cublasGemmEx(sd.handle[k], CUBLAS_OP_T, CUBLAS_OP_N, int(2 * F), c, int(E), &one, wgu,
                                    CUDA_R_16F, int(E), x16 + size_t(o) * size_t(E), CUDA_R_16F, int(E), &zero,
                                    gu + size_t(o) * size_t(2 * F), CUDA_R_32F, int(2 * F), CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
      const unsigned sg = grid_for(int64_t(c) * (F / kSpan));
      if (h_q8k)
        swiglu_kernel<true><<<sg, kThreads, 0, sd.stream[k]>>>(gu, ws.slot_w, o, c, F, s.limit, h16);
      else
        swiglu_kernel<false><<<sg, kThreads, 0, sd.stream[k]>>>(gu, ws.slot_w, o, c, F, s.limit, h16);
      DS4_CUDA_CHECK(cudaGetLastError());
      DS4_CUBLAS_CHECK(cublasGemmEx(sd.handle[k], CUBLAS_OP_T, CUBLAS_OP_N, int(E), c, int(F), &one, wdn, CUDA_R_16F,
                                    int(F), h16 + size_t(o) * size_t(F), CUDA_R_16F, int(F), &zero,
                                    ws.z + size_t(o) * size_t(E), CUDA_R_32F, int(E), CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
    }
    for (int k = 0; k < n_streams; ++k) DS4_CUDA_CHECK(cudaEventRecord(sd.done[k][buf], sd.stream[k]));
  }
  // Each side stream's last record follows all its earlier work.
  for (int k = 0; k < n_streams; ++k) DS4_CUDA_CHECK(cudaStreamWaitEvent(st, sd.done[k][last_buf], 0));
}

}  // namespace ds4::cuda
