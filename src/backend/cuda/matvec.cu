// Batch-1 matvec kernels (matvec.h). Design, for a memory-bound product that must read each
// weight byte once at close to the copy bandwidth:
//  - one warp per (row, part): `split` warps share a row when there are too few rows to fill
//    the GPU, each taking a contiguous, 16-byte-aligned range of its blocks;
//  - the warp streams its weights in chunks of whole blocks (~2 KiB) with coalesced 16-byte
//    loads into registers, parks them in a warp-private shared-memory buffer and decodes from
//    there, so that odd block sizes (17, 34, 66, 84 bytes) need no unaligned global loads.
//    The next chunk's loads are issued before the current chunk is decoded (register double
//    buffering), so a warp always has its next ~2 KiB in flight;
//  - activations (quantized once per call, bit-exact with the CPU) are read through L1, where
//    every warp of the SM shares them; weights bypass L1 (__ldcs) so they do not evict them;
//  - each lane handles whole sub-blocks with exact int32 dp4a sums, then one float multiply
//    per sub-block, as formats.md 2.10 decomposes the products.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <type_traits>

#include "backend/cuda/block_scales.cuh"
#include "backend/cuda/bulk_copy.cuh"
#include "backend/cuda/check.h"
#include "backend/cuda/device_attribute.h"
#include "backend/cuda/kernel_tables.h"
#include "backend/cuda/matvec.h"
#include "backend/cuda/matvec_launch.h"
#include "backend/cuda/pdl.h"
#include "backend/cuda/product_math.cuh"
#include "backend/cuda/quantize_act.cuh"
#include "quant/block_codecs.h"
#include "quant/blocks.h"
#include "quant/quant.h"

namespace ds4::cuda::detail {
namespace {

constexpr int kWarps = 8;  // warps per thread block
constexpr int kThreads = kWarps * 32;

// IQ2_XXS grid and the sign patterns of ksigns_iq2xs as byte masks (0xFF = negate), filled
// from quant::iq2xxs_grid() / ksigns_iq2xs() once per process (no literal copy). They live
// in global memory, not __constant__: each block copies them to shared memory with one
// distinct element per thread, and constant memory serializes divergent addresses (32x).
__device__ uint64_t g_iq2_grid[256];
__device__ uint64_t g_iq2_sign_mask[128];
// MXFP4 element values (quant::kValuesMxfp4), 16 int8 packed in 4 words for __byte_perm.
__constant__ uint32_t c_mxfp4_values[4];

void init_tables() {
  static std::once_flag once;
  std::call_once(once, [] {
    uint64_t masks[128];
    iq2xxs_sign_masks(masks);
    uint32_t mx[4];
    mxfp4_values_packed(mx);
    DS4_CUDA_CHECK(cudaMemcpyToSymbol(g_iq2_grid, quant::iq2xxs_grid(), sizeof(g_iq2_grid)));
    DS4_CUDA_CHECK(cudaMemcpyToSymbol(g_iq2_sign_mask, masks, sizeof(masks)));
    DS4_CUDA_CHECK(cudaMemcpyToSymbol(c_mxfp4_values, mx, sizeof(mx)));
  });
}

int sm_count() { return device_attribute(cudaDevAttrMultiProcessorCount); }

struct Tables {
  const uint64_t* grid;   // shared-memory copies (IQ2_XXS only)
  const uint64_t* signs;
};

__device__ __forceinline__ float f16(const uint8_t* p) {
  return __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(p)));
}
// 4 bytes at a 2-byte-aligned shared-memory address.
__device__ __forceinline__ int ld2x2(const uint8_t* p) {
  const uint16_t* q = reinterpret_cast<const uint16_t*>(p);
  return int(uint32_t(q[0]) | (uint32_t(q[1]) << 16));
}
__device__ __forceinline__ int ld4(const uint8_t* p) { return *reinterpret_cast<const int*>(p); }
__device__ __forceinline__ int ld1x4(const uint8_t* p) {
  return int(uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24));
}

// Where a product reads its activation: GlobalAct from global memory through L1 (__ldg: every
// warp of the SM shares it), SharedAct from the block's shared memory (the fused MoE kernels
// quantize their input into it).
struct GlobalAct {
  template <class T>
  __device__ static T ld(const T* p) { return __ldg(p); }
};
struct SharedAct {
  template <class T>
  __device__ static T ld(const T* p) { return *p; }
};
template <class A>
__device__ __forceinline__ int act_int(const int8_t* qs, int i) {
  return A::ld(reinterpret_cast<const int*>(qs) + i);
}

// ---------------------------------------------------------------------------------------
// Per-type decoders. BB/BE: block bytes/elements; G: blocks per 16-byte-aligned group;
// CHUNK: blocks staged per warp step; U: lane work units per block; kQ8K: the activation is
// BlockQ8_K (else BlockQ8_0Act, or f32 for float weights). dot<A>() returns the float
// contribution of unit u of the block at `w` (shared memory) against the activation block b,
// read through A (GlobalAct or SharedAct).
// ---------------------------------------------------------------------------------------
struct KQ8_0 {
  static constexpr int BB = 34, BE = 32, G = 8, CHUNK = 64, U = 1;
  static constexpr bool kTables = false;
  static constexpr bool kQ8K = false;
  template <class A = GlobalAct>
  __device__ static float dot(const uint8_t* w, int, const void* act, int64_t b, const Tables&) {
    const BlockQ8_0Act* a = static_cast<const BlockQ8_0Act*>(act) + b;
    int s = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) s = __dp4a(ld2x2(w + 2 + 4 * i), act_int<A>(a->qs, i), s);
    return f16(w) * A::ld(&a->d) * float(s);
  }
};

struct KQ2_K {  // unit = 64 elements: half h = u/2, sub-blocks 4*(u&1) .. +3 of that half
  static constexpr int BB = 84, BE = 256, G = 4, CHUNK = 24, U = 4;
  static constexpr bool kTables = false;
  static constexpr bool kQ8K = true;
  template <class A = GlobalAct>
  __device__ static float dot(const uint8_t* w, int u, const void* act, int64_t b, const Tables&) {
    const BlockQ8_K* a = static_cast<const BlockQ8_K*>(act) + b;
    const int h = u >> 1;
    int isum = 0, msum = 0;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const int sp = 4 * (u & 1) + t;  // sub-block within the half
      const int s = 8 * h + sp;        // sub-block within the block
      const uint8_t* q = w + 16 + 32 * h + 16 * (sp & 1);
      const int shift = 2 * (sp >> 1);
      int sub = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        sub = __dp4a((ld4(q + 4 * j) >> shift) & 0x03030303, act_int<A>(a->qs, 4 * s + j), sub);
      const int sc = w[s];
      isum += (sc & 0xF) * sub;
      msum += (sc >> 4) * int(A::ld(&a->bsums[s]));
    }
    const float dx = A::ld(&a->d);
    return dx * f16(w + 80) * float(isum) - dx * f16(w + 82) * float(msum);
  }
  // dot<SharedAct> with fewer shared-memory loads and no bank conflicts (MoE v3 down): the
  // unit's two 16-byte weight runs, its 4 scales and its 4 activation sums are read once as
  // words (dot reloads the runs and reads bytes), and the unit's sub-blocks are visited in the
  // order i ^ 2h: lanes u and u + 2 of a block (activations 128 bytes apart, the same banks)
  // then read different banks, and 32 lanes on 8 blocks hit 32 banks. isum and msum are sums
  // of the same integer products in another order, so the result has dot's bits.
  __device__ static float dot_shared_lean(const uint8_t* w, int u, const void* act, int64_t b) {
    const BlockQ8_K* a = static_cast<const BlockQ8_K*>(act) + b;
    const int h = u >> 1;
    const int first = 8 * h + 4 * (u & 1);  // the unit's first sub-block
    int q[2][4];
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int j = 0; j < 4; ++j) q[r][j] = ld4(w + 16 + 32 * h + 16 * r + 4 * j);
    const uint32_t scales = uint32_t(ld4(w + first));  // 84-byte blocks in 16-byte aligned rows
    const uint8_t* bsums = reinterpret_cast<const uint8_t*>(a->bsums + first);  // 292-byte blocks: 4-aligned
    const int bsums01 = ld4(bsums), bsums23 = ld4(bsums + 4);
    int isum = 0, msum = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int t = i ^ (2 * h);  // the sub-block of the unit; t & 1 == i & 1
      const int shift = 4 * (u & 1) + 2 * (t >> 1);  // 2 * (sp >> 1) of dot, sp = 4 (u & 1) + t
      const uint8_t* x = reinterpret_cast<const uint8_t*>(a->qs) + 16 * (first + t);
      int sub = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) sub = __dp4a((q[i & 1][j] >> shift) & 0x03030303, ld4(x + 4 * j), sub);
      const int sc = int(scales >> (8 * t)) & 0xFF;
      const int word = (t >> 1) ? bsums23 : bsums01;
      const int bsum = (i & 1) ? (word >> 16) : int(int16_t(word));
      isum += (sc & 0xF) * sub;
      msum += (sc >> 4) * bsum;
    }
    const float dx = a->d;
    return dx * f16(w + 80) * float(isum) - dx * f16(w + 82) * float(msum);
  }
};


struct KQ4_K {  // unit = 64-element pair p: low nibbles sub-block 2p, high nibbles 2p+1
  static constexpr int BB = 144, BE = 256, G = 1, CHUNK = 16, U = 4;
  static constexpr bool kTables = false;
  static constexpr bool kQ8K = true;
  template <class A = GlobalAct>
  __device__ static float dot(const uint8_t* w, int p, const void* act, int64_t b, const Tables&) {
    const BlockQ8_K* a = static_cast<const BlockQ8_K*>(act) + b;
    int lo = 0, hi = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int q = ld4(w + 16 + 32 * p + 4 * i);
      lo = __dp4a(q & 0x0F0F0F0F, act_int<A>(a->qs, 16 * p + i), lo);
      hi = __dp4a((q >> 4) & 0x0F0F0F0F, act_int<A>(a->qs, 16 * p + 8 + i), hi);
    }
    int sc0, m0, sc1, m1;
    q4k_scale_min(2 * p, w + 4, sc0, m0);
    q4k_scale_min(2 * p + 1, w + 4, sc1, m1);
    const int isum = sc0 * lo + sc1 * hi;
    const int msum = m0 * (int(A::ld(&a->bsums[4 * p])) + int(A::ld(&a->bsums[4 * p + 1]))) +
                     m1 * (int(A::ld(&a->bsums[4 * p + 2])) + int(A::ld(&a->bsums[4 * p + 3])));
    const float dx = A::ld(&a->d);
    return dx * f16(w) * float(isum) - dx * f16(w + 2) * float(msum);
  }
};

struct KIQ2_XXS {  // unit = 32-element group g with its own 4-bit scale
  static constexpr int BB = 66, BE = 256, G = 8, CHUNK = 32, U = 8;
  static constexpr bool kTables = true;
  static constexpr bool kQ8K = true;
  // kRep: the tables are laid out with kRep copies of each entry side by side and t points at
  // this lane's copy (stage_tables_replicated): entry i is t.grid[i * kRep].
  template <class A = GlobalAct, int kRep = 1>
  __device__ static float dot(const uint8_t* w, int g, const void* act, int64_t b, const Tables& t) {
    const BlockQ8_K* a = static_cast<const BlockQ8_K*>(act) + b;
    return dot_unit<kRep>(w, g, A::ld(&a->d), t, [&](int i) { return act_int<A>(a->qs, 8 * g + i); });
  }
  // Group g of the block at w against 32 activation values: act(i) returns their i-th 4 bytes
  // (i < 8, a compile-time constant once unrolled: registers work), dx their scale.
  template <int kRep, class Act>
  __device__ static float dot_unit(const uint8_t* w, int g, float dx, const Tables& t, Act&& act) {
    const uint32_t a0 = uint32_t(ld2x2(w + 2 + 8 * g));
    const uint32_t a1 = uint32_t(ld2x2(w + 6 + 8 * g));
    int s = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint64_t gv = t.grid[((a0 >> (8 * k)) & 0xFF) * kRep];
      const uint64_t m = t.signs[((a1 >> (7 * k)) & 127) * kRep];
      // -g = (g ^ 0xFF) + 1 per byte where the mask is 0xFF. Grid bytes are 1..127 (checked
      // in init_tables), so g ^ 0xFF <= 0xFE and the +1 never carries into the next byte:
      // one 32-bit add replaces the emulated per-byte __vsub4.
      const uint32_t mlo = uint32_t(m), mhi = uint32_t(m >> 32);
      const int vlo = int((uint32_t(gv) ^ mlo) + (mlo & 0x01010101u));
      const int vhi = int((uint32_t(gv >> 32) ^ mhi) + (mhi & 0x01010101u));
      s = __dp4a(vlo, act(2 * k), s);
      s = __dp4a(vhi, act(2 * k + 1), s);
    }
    const int ls = 2 * int(a1 >> 28) + 1;
    return f16(w) * dx * 0.125f * float(ls * s);
  }
};


// Looks up 8 nibbles of q (low nibble of each byte -> .x, high -> .y) in the 16-entry int8
// table held in 4 registers: two __byte_perm select within each half of the table, a third
// picks the half by each nibble's bit 3.
__device__ __forceinline__ int2 lookup16(uint32_t q, const uint32_t t[4]) {
  uint32_t tmp[2];
  const uint32_t sel_hi = 0x32103210u | ((q & 0x88888888u) >> 1);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const uint32_t sh = 16 * i;
    const uint32_t lo = __byte_perm(t[0], t[1], q >> sh);
    const uint32_t hi = __byte_perm(t[2], t[3], q >> sh);
    tmp[i] = __byte_perm(lo, hi, sel_hi >> sh);
  }
  return make_int2(int(__byte_perm(tmp[0], tmp[1], 0x6420)), int(__byte_perm(tmp[0], tmp[1], 0x7531)));
}

struct KMXFP4 {
  static constexpr int BB = 17, BE = 32, G = 16, CHUNK = 128, U = 1;
  static constexpr bool kTables = false;
  static constexpr bool kQ8K = false;
  template <class A = GlobalAct>
  __device__ static float dot(const uint8_t* w, int, const void* act, int64_t b, const Tables&) {
    const BlockQ8_0Act* a = static_cast<const BlockQ8_0Act*>(act) + b;
    const uint32_t t[4] = {c_mxfp4_values[0], c_mxfp4_values[1], c_mxfp4_values[2], c_mxfp4_values[3]};
    int s = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int2 v = lookup16(uint32_t(ld1x4(w + 1 + 4 * i)), t);
      s = __dp4a(v.x, act_int<A>(a->qs, i), s);
      s = __dp4a(v.y, act_int<A>(a->qs, 4 + i), s);
    }
    return mxfp4_scale(w[0]) * A::ld(&a->d) * float(s);
  }
};

// Float weights: a "block" is 16 bytes, read against the f32 activation vector.
struct KF32 {
  static constexpr int BB = 16, BE = 4, G = 1, CHUNK = 128, U = 1;
  static constexpr bool kTables = false;
  template <class A = GlobalAct>
  __device__ static float dot(const uint8_t* w, int, const void* act, int64_t b, const Tables&) {
    const float4 v = *reinterpret_cast<const float4*>(w);
    const float4 x = A::ld(static_cast<const float4*>(act) + b);
    return fmaf(v.w, x.w, fmaf(v.z, x.z, fmaf(v.y, x.y, v.x * x.x)));
  }
};

template <bool kBf16>
struct KHalf {
  static constexpr int BB = 16, BE = 8, G = 1, CHUNK = 128, U = 1;
  static constexpr bool kTables = false;
  template <class A = GlobalAct>
  __device__ static float dot(const uint8_t* w, int, const void* act, int64_t b, const Tables&) {
    return half8_dot<kBf16>(*reinterpret_cast<const uint4*>(w), A::ld(static_cast<const float4*>(act) + 2 * b),
                            A::ld(static_cast<const float4*>(act) + 2 * b + 1));
  }
};

// ---------------------------------------------------------------------------------------
// Row plans: which weight rows and activations a warp's row is made of. M segments of
// nblk blocks each; `separate` keeps segment 1 in its own accumulator (gate and up).
// ---------------------------------------------------------------------------------------
struct PlainPlan {
  const uint8_t* w;
  size_t rb;
  const void* act;
  int64_t nblk;
  __device__ int segments() const { return 1; }
  __device__ const uint8_t* row(int, int64_t r) const { return w + size_t(r) * rb; }
  __device__ const void* activation(int, int64_t) const { return act; }
};

// Rows in n_groups equal groups, group g against its own activation (the g-th of n_groups
// stored act_stride bytes apart): the grouped output projection in one launch.
struct GroupedPlan {
  const uint8_t* w;
  size_t rb;
  const uint8_t* act;
  size_t act_stride;
  int64_t rows_per_group, nblk;
  __device__ int segments() const { return 1; }
  __device__ const uint8_t* row(int, int64_t r) const { return w + size_t(r) * rb; }
  __device__ const void* activation(int, int64_t r) const { return act + size_t(r / rows_per_group) * act_stride; }
};

// Several matrices of one type and width against one activation: their rows are numbered
// back to back (part i owns rows begin[i] .. begin[i + 1] - 1) and each part writes its own y.
struct PartsPlan {
  const uint8_t* w[kMaxMatvecParts];
  float* y[kMaxMatvecParts];
  int64_t begin[kMaxMatvecParts + 1];
  int n;
  size_t rb;
  const void* act;
  int64_t nblk;
  __device__ int part(int64_t r) const {
    int i = 0;
    while (i + 1 < n && r >= begin[i + 1]) ++i;
    return i;
  }
  __device__ int segments() const { return 1; }
  __device__ const uint8_t* row(int, int64_t r) const {
    const int i = part(r);
    return w[i] + size_t(r - begin[i]) * rb;
  }
  __device__ const void* activation(int, int64_t) const { return act; }
};

struct GateUpPlan {
  const uint8_t* gate;
  const uint8_t* up;
  size_t rb, slab;  // row bytes, bytes per expert
  const int32_t* ids;
  const float* route_w;
  const void* act;
  int64_t nblk, n_ff;
  float limit;
  float* h;
  __device__ int segments() const { return 2; }
  __device__ const uint8_t* row(int m, int64_t r) const {
    const int k = int(r) / int(n_ff);  // rows < 2^31: a 32-bit division
    const size_t off = size_t(__ldg(ids + k)) * slab + size_t(r - int64_t(k) * n_ff) * rb;
    return (m == 0 ? gate : up) + off;
  }
  __device__ const void* activation(int, int64_t) const { return act; }
};

struct DownPlan {
  const uint8_t* down;
  size_t rb, slab;
  const int32_t* ids;
  const uint8_t* act;  // n_used activation rows of act_rb bytes
  size_t act_rb;
  int64_t nblk;
  int n_used;
  __device__ int segments() const { return n_used; }
  __device__ const uint8_t* row(int m, int64_t r) const {
    return down + size_t(__ldg(ids + m)) * slab + size_t(r) * rb;
  }
  __device__ const void* activation(int m, int64_t) const { return act + size_t(m) * act_rb; }
};

// The shared expert's gate and up rows (n_ff each), every row cut into two halves of nblk
// blocks that are rows of their own: row j = 2 * (matrix * n_ff + row) + half, matrix 0 =
// gate, 1 = up. A half row is as long as a routed gate/up row pair (Flash: 2176 vs 2112
// bytes), which balances the fused kernel's warps; the halves are what the separate product
// gives a warp at split 2, and the fused down kernel sums them in the same order.
struct HalfRowsPlan {
  const uint8_t* gate;
  const uint8_t* up;
  size_t rb, half_bytes;  // row bytes; bytes of nblk blocks
  const uint8_t* act;
  size_t act_half_bytes;  // activation bytes of nblk blocks
  int64_t n_ff, nblk;
  __device__ int segments() const { return 1; }
  __device__ const uint8_t* row(int, int64_t j) const {
    const int64_t rr = j >> 1;
    const uint8_t* base = rr < n_ff ? gate + size_t(rr) * rb : up + size_t(rr - n_ff) * rb;
    return base + (j & 1) * half_bytes;
  }
  __device__ const void* activation(int, int64_t j) const { return act + (j & 1) * act_half_bytes; }
};

// Epilogues: what one finished row writes.
struct StoreY {
  float* y;
  __device__ void operator()(int64_t r, float a, float) const { y[r] = a; }
};
struct StoreParts {
  PartsPlan p;
  __device__ void operator()(int64_t r, float a, float) const {
    const int i = p.part(r);
    p.y[i][r - p.begin[i]] = a;
  }
};
// y[r] += a: the fused down kernel's second pass adds the shared expert to the routed sum
// that the same warp's lane 0 stored in its first pass.
struct AddY {
  float* y;
  __device__ void operator()(int64_t r, float a, float) const { y[r] = y[r] + a; }
};

// silu(min(g, limit)) * clamp(u, -limit, limit): gate clamped above only, up on both sides
// (architecture.md 3.5.2).
__device__ __forceinline__ float swiglu_clamped(float g, float u, float limit) {
  g = fminf(g, limit);
  u = fminf(fmaxf(u, -limit), limit);
  const float silu = g / (1.0f + expf(-g));
  return silu * u;
}

struct SwiGlu {
  float* h;
  const float* route_w;
  int64_t n_ff;
  float limit;
  __device__ void operator()(int64_t r, float g, float u) const {
    h[r] = __ldg(route_w + r / n_ff) * swiglu_clamped(g, u, limit);
  }
};

// Unaligned rows (no DS4 shape): byte-wise staging of one row part, no prefetch.
template <class K, class Plan>
__device__ void warp_row_bytes(const Plan& p, int64_t r, int64_t bb, int64_t be, bool separate, uint8_t* sw,
                               const Tables& t, float& acc0, float& acc1) {
  const int lane = threadIdx.x & 31;
  for (int m = 0; m < p.segments(); ++m) {
    const uint8_t* src = p.row(m, r);
    for (int64_t b0 = bb; b0 < be; b0 += K::CHUNK) {
      const int nb = int(be - b0 < int64_t(K::CHUNK) ? be - b0 : int64_t(K::CHUNK));
      __syncwarp();
      for (int i = lane; i < nb * K::BB; i += 32) sw[i] = src[b0 * K::BB + i];
      __syncwarp();
      for (int u = lane; u < nb * K::U; u += 32) {
        const int blk = u / K::U;
        const float v = K::dot(sw + blk * K::BB, u - blk * K::U, p.activation(m, r), b0 + blk, t);
        if (separate && m == 1) acc1 += v; else acc0 += v;
      }
    }
  }
}

// The aligned streaming loop. The warp walks rows row0, row0 + step, ... < row_end; each row
// is nseg segments (weight row + activation) of blocks [bb, be). Work goes in chunks of at
// most CHUNK blocks: a long segment is cut into several chunks, short segments are packed
// several to a chunk (all six experts' down rows in one), so a warp always has ~2 KiB of
// loads in flight: the next chunk is requested before the current one is decoded, across
// segment and row boundaries. With `emit`, each finished row is reduced and handed to epi;
// otherwise the lane partials of the (single) row are returned for a cross-warp reduction.
template <class K, class A = GlobalAct, class Plan, class Epi>
__device__ void stream_rows(const Plan& p, const Epi& epi, int64_t row0, int64_t step, int64_t row_end,
                            int64_t bb, int64_t be, bool separate, bool emit, uint8_t* sw, const Tables& t,
                            float& out0, float& out1) {
  constexpr int kMaxV = (K::CHUNK * K::BB / 16 + 31) / 32;
  const int lane = threadIdx.x & 31;
  const int nseg = p.segments();
  const int64_t len = be - bb;
  float acc0 = 0.0f, acc1 = 0.0f;
  out0 = out1 = 0.0f;
  if (row0 >= row_end || len <= 0) return;
  const bool packed = len < K::CHUNK;
  const int per_max = packed ? int(K::CHUNK / len) : 1;
  uint4 regs[kMaxV];
  auto prefetch = [&](int64_t row, int m, int64_t b0, int nb, int per) {
    const int vps = nb * K::BB / 16;  // 16-byte vectors per segment piece
    const int nvec = per * vps;
#pragma unroll
    for (int i = 0; i < kMaxV; ++i) {
      const int v = lane + 32 * i;
      if (v < nvec) {
        const int s = v / vps;
        const int4* src = reinterpret_cast<const int4*>(p.row(m + s, row) + size_t(b0) * K::BB);
        const int4 x = __ldcs(src + (v - s * vps));
        regs[i] = make_uint4(uint32_t(x.x), uint32_t(x.y), uint32_t(x.z), uint32_t(x.w));
      }
    }
  };
  int64_t row = row0, b0 = bb;
  int m = 0;
  int nb = int(packed ? len : (be - b0 < int64_t(K::CHUNK) ? be - b0 : int64_t(K::CHUNK)));
  int per = packed ? min(per_max, nseg - m) : 1;
  prefetch(row, m, b0, nb, per);
  while (true) {
    __syncwarp();  // the previous chunk is decoded before its buffer is overwritten
    const int nvec = per * nb * K::BB / 16;
#pragma unroll
    for (int i = 0; i < kMaxV; ++i) {
      const int v = lane + 32 * i;
      if (v < nvec) reinterpret_cast<uint4*>(sw)[v] = regs[i];
    }
    __syncwarp();
    const int64_t crow = row, cb0 = b0;
    const int cm = m, cnb = nb, cper = per;
    if (packed) {
      m += per;
    } else {
      b0 += nb;
      if (b0 >= be) {
        b0 = bb;
        ++m;
      }
    }
    if (m >= nseg) {
      m = 0;
      b0 = bb;
      row += step;
    }
    const bool more = row < row_end;
    if (more) {
      nb = int(packed ? len : (be - b0 < int64_t(K::CHUNK) ? be - b0 : int64_t(K::CHUNK)));
      per = packed ? min(per_max, nseg - m) : 1;
      prefetch(row, m, b0, nb, per);
    }
    // Lane units u = lane, lane + 32, ... of cper segments of useg units each, walked as
    // (segment s, unit rem) with a running remainder: no runtime integer division per unit.
    const int useg = cnb * K::U;
    int s = 0, rem = lane;
    while (rem >= useg) {
      rem -= useg;
      ++s;
    }
    while (s < cper) {
      const int blk = rem / K::U;  // compile-time divisor
      const float v =
          K::template dot<A>(sw + (s * cnb + blk) * K::BB, rem - blk * K::U, p.activation(cm + s, crow), cb0 + blk, t);
      if (separate && cm + s == 1) acc1 += v; else acc0 += v;
      rem += 32;
      while (rem >= useg) {
        rem -= useg;
        ++s;
      }
    }
    if (emit && (!more || row != crow)) {
      acc0 = warp_sum(acc0);
      if (separate) acc1 = warp_sum(acc1);
      if (lane == 0) epi(crow, acc0, acc1);
      acc0 = acc1 = 0.0f;
    }
    if (!more) break;
  }
  out0 = acc0;
  out1 = acc1;
}

// split == 1 with aligned rows: persistent warps stream rows gw, gw + all warps, ...
// split > 1: `split` warps of one block share a row and reduce through shared memory.
template <class K>
constexpr int staging_bytes() {
  return (K::CHUNK * K::BB + 15) / 16 * 16;
}

// The IQ2_XXS tables in the block's shared memory (when kNeed; arrays of 256 and 128), copied
// by all threads of the block with one distinct element per thread.
template <bool kNeed>
__device__ Tables stage_tables(uint64_t* sgrid, uint64_t* ssign) {
  if constexpr (kNeed) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) sgrid[i] = g_iq2_grid[i];
    for (int i = threadIdx.x; i < 128; i += blockDim.x) ssign[i] = g_iq2_sign_mask[i];
    __syncthreads();
  }
  return Tables{sgrid, ssign};
}

// The blocks [bb, be) of row r that part `part` of `split` warps streams: contiguous ranges of
// whole groups of g blocks (vec) or single blocks.
struct RowPart {
  int64_t r, bb, be;
};
__device__ __forceinline__ RowPart row_part(int64_t gw, int split, int64_t nblk, int g) {
  const int64_t r = gw / split;
  const int part = int(gw % split);
  const int64_t ng = nblk / g;
  return RowPart{r, (part * ng / split) * g, ((part + 1) * ng / split) * g};
}

// After a warp has streamed its part of row r (lane partials a0, a1): reduce over the lanes;
// at split 1 store the row, else add the `split` parts of each of the block's rows in a fixed
// order (results do not depend on timing) through part0/part1 (kWarps floats each).
template <class Epi>
__device__ void finish_row_part(const Epi& epi, int64_t r, float a0, float a1, int64_t nrows, int split,
                                bool separate, float* part0, float* part1) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  a0 = warp_sum(a0);
  if (separate) a1 = warp_sum(a1);
  if (split == 1) {
    if (lane == 0 && r < nrows) epi(r, a0, a1);
    return;
  }
  if (lane == 0) {
    part0[warp] = a0;
    part1[warp] = a1;
  }
  __syncthreads();
  const int rows_here = kWarps / split;
  if (int(threadIdx.x) < rows_here) {
    const int64_t row = int64_t(blockIdx.x) * rows_here + threadIdx.x;
    if (row < nrows) {
      float s0 = 0.0f, s1 = 0.0f;
      for (int i = 0; i < split; ++i) {
        s0 += part0[threadIdx.x * split + i];
        s1 += part1[threadIdx.x * split + i];
      }
      epi(row, s0, s1);
    }
  }
}

template <class K, class Plan, class Epi>
__device__ void run(const Plan& p, const Epi& epi, int64_t nrows, int split, bool vec, bool separate) {
  constexpr int kBuf = staging_bytes<K>();
  __shared__ __align__(16) uint8_t sbuf[kWarps][kBuf];
  __shared__ float part0[kWarps], part1[kWarps];
  __shared__ uint64_t sgrid[K::kTables ? 256 : 1], ssign[K::kTables ? 128 : 1];
  const Tables t = stage_tables<K::kTables>(sgrid, ssign);
  pdl_enter();  // decode-step launches are programmatic (pdl.h): wait for the producer here
  const int warp = threadIdx.x >> 5;
  const int64_t gw = int64_t(blockIdx.x) * kWarps + warp;
  float a0 = 0.0f, a1 = 0.0f;
  if (vec && split == 1) {
    stream_rows<K>(p, epi, gw, int64_t(gridDim.x) * kWarps, nrows, 0, p.nblk, separate, true, sbuf[warp], t, a0, a1);
    return;
  }
  const RowPart rp = row_part(gw, split, p.nblk, vec ? K::G : 1);
  if (rp.r < nrows) {
    if (vec)
      stream_rows<K>(p, epi, rp.r, 1, rp.r + 1, rp.bb, rp.be, separate, false, sbuf[warp], t, a0, a1);
    else
      warp_row_bytes<K>(p, rp.r, rp.bb, rp.be, separate, sbuf[warp], t, a0, a1);
  }
  finish_row_part(epi, rp.r, a0, a1, nrows, split, separate, part0, part1);
}

// One kernel for every row plan: Plan says which weight rows and activations make a row, Epi
// what a finished row writes; kSeparate keeps segment 1 (up) in its own accumulator.
template <class K, class Plan, class Epi, bool kSeparate>
__global__ void __launch_bounds__(kThreads) product_kernel(Plan p, Epi epi, int64_t nrows, int split, bool vec) {
  run<K>(p, epi, nrows, split, vec, kSeparate);
}

// ---------------------------------------------------------------------------------------
// Bulk-copy streaming (sm_90; products whose rows are one weight row each: PlainPlan,
// GroupedPlan, PartsPlan). The register pipeline above keeps one chunk per warp in flight,
// so a warp pays a DRAM round trip per ~2 KiB and the 35 MB products reach ~75% of the head's
// rate. Here lane 0 of each warp requests `stages` chunks at once with one bulk copy each
// (the TMA engine, bulk_copy.cuh) into a warp-private ring of shared-memory buffers and
// requests the next chunk as soon as a buffer is decoded; no registers hold chunks in flight.
// Lane l still sums units l, l + 32, ... of the warp's blocks in order (chunks are whole
// multiples of 32 units), and rows split over warps and reduce exactly as in run(), so every
// result is bit-identical to the register pipeline's.
// ---------------------------------------------------------------------------------------
constexpr int kMaxBulkStages = 8;

struct BulkConfig {
  int stages;        // buffers per warp
  int chunk_blocks;  // blocks per buffer: a multiple of bulk_block_quantum<K>()
  bool early;        // request the first chunks before pdl_enter (weights never depend on the predecessor)
};

// Blocks per chunk must be a multiple of G (16-byte sizes) and of 32 / U (whole lane rounds).
template <class K>
constexpr int bulk_block_quantum() {
  return std::lcm(K::G, 32 / K::U);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// One warp's pieces: rows row0, row0 + step, ... < row_end, each the blocks [bb, be) cut into
// chunks of at most cb blocks; a cursor walks them in the order they are requested and decoded.
struct WarpPieces {
  int64_t row0, step, row_end, bb, be;
  int cb;
  struct Cursor {
    int64_t row, b0;
  };
  __device__ Cursor first() const { return Cursor{row0, bb}; }
  __device__ bool valid(const Cursor& c) const { return c.row < row_end; }
  __device__ int blocks(const Cursor& c) const { return int(min(int64_t(cb), be - c.b0)); }
  __device__ void advance(Cursor& c) const {
    c.b0 += cb;
    if (c.b0 >= be) {
      c.b0 = bb;
      c.row += step;
    }
  }
};

template <class K, class Plan>
struct BulkStream {
  const Plan& p;
  WarpPieces w;
  uint8_t* buf;    // stages * stage_bytes of this warp's shared memory
  uint64_t* bars;  // one mbarrier per buffer
  int stages;
  size_t stage_bytes;
  uint64_t policy = 0;
  WarpPieces::Cursor next;  // the next piece to request
  int next_stage = 0;

  __device__ BulkStream(const Plan& plan, const WarpPieces& pieces, uint8_t* ring, uint64_t* barriers, int n_stages)
      : p(plan), w(pieces), buf(ring), bars(barriers), stages(n_stages), stage_bytes(size_t(pieces.cb) * K::BB),
        next(pieces.first()) {
    if ((threadIdx.x & 31) == 0) {
      for (int i = 0; i < stages; ++i) bulk_barrier_init(bars + i);
      policy = l2_evict_first_policy();
    }
    __syncwarp();
  }
  // Lane 0: requests the next piece into buffer next_stage, if there is one left.
  __device__ void request() {
    if (!w.valid(next)) return;
    if ((threadIdx.x & 31) == 0)
      bulk_load(buf + next_stage * stage_bytes, p.row(0, next.row) + size_t(next.b0) * K::BB,
                uint32_t(w.blocks(next) * K::BB), bars + next_stage, policy);
    w.advance(next);
    if (++next_stage == stages) next_stage = 0;
  }
  __device__ void start() {
    for (int i = 0; i < stages; ++i) request();
  }
  // Decodes every piece in order, refilling each buffer once it is decoded; with `emit` every
  // finished row is reduced and handed to epi, else the lane partial of the (single) row is
  // returned.
  template <class Epi>
  __device__ float stream(const Epi& epi, bool emit, const Tables& t) {
    const int lane = threadIdx.x & 31;
    float acc = 0.0f;
    int stage = 0;
    uint32_t parity = 0;
    for (WarpPieces::Cursor c = w.first(); w.valid(c);) {
      const int nb = w.blocks(c);
      bulk_wait(bars + stage, parity);
      const uint8_t* chunk = buf + stage * stage_bytes;
      const void* act = p.activation(0, c.row);
      for (int u = lane; u < nb * K::U; u += 32) {
        const int blk = u / K::U;  // compile-time divisor
        const float v = K::template dot<GlobalAct>(chunk + blk * K::BB, u - blk * K::U, act, c.b0 + blk, t);
        acc += v;
      }
      const int64_t row = c.row;
      w.advance(c);
      if (emit && c.row != row) {
        acc = warp_sum(acc);
        if (lane == 0) epi(row, acc, 0.0f);
        acc = 0.0f;
      }
      __syncwarp();  // every lane is done with this buffer before it is refilled
      request();
      if (++stage == stages) {
        stage = 0;
        parity ^= 1u;
      }
    }
    return acc;
  }
};
#endif

// The product kernel of the bulk path: split 1 persistent warps (rows gw, gw + all warps, ...)
// or `split` warps per row as in run(); `stages` buffers of chunk_blocks blocks per warp in
// dynamic shared memory.
template <class K, class Plan, class Epi>
__global__ void __launch_bounds__(kThreads) bulk_product_kernel(Plan p, Epi epi, int64_t nrows, int split,
                                                                BulkConfig cfg) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) uint8_t ring[];
  __shared__ __align__(8) uint64_t bars[kWarps][kMaxBulkStages];
  __shared__ float part0[kWarps], part1[kWarps];
  __shared__ uint64_t sgrid[K::kTables ? 256 : 1], ssign[K::kTables ? 128 : 1];
  const Tables t = stage_tables<K::kTables>(sgrid, ssign);
  const int warp = threadIdx.x >> 5;
  const int64_t gw = int64_t(blockIdx.x) * kWarps + warp;
  RowPart rp{gw, 0, p.nblk};
  WarpPieces pieces{gw, int64_t(gridDim.x) * kWarps, nrows, 0, p.nblk, cfg.chunk_blocks};
  if (split > 1) {
    rp = row_part(gw, split, p.nblk, K::G);
    pieces = WarpPieces{rp.r, 1, min(rp.r + 1, nrows), rp.bb, rp.be, cfg.chunk_blocks};
  }
  BulkStream<K, Plan> s(p, pieces, ring + size_t(warp) * cfg.stages * cfg.chunk_blocks * K::BB, bars[warp],
                        cfg.stages);
  if (cfg.early) s.start();
  pdl_enter();  // everything before reads only weights and tables, which no kernel writes
  if (!cfg.early) s.start();
  const float a = s.stream(epi, split == 1, t);
  if (split > 1) finish_row_part(epi, rp.r, a, 0.0f, nrows, split, false, part0, part1);
#else
  (void)cfg;
  run<K>(p, epi, nrows, split, true, false);  // not launched: the host picks this kernel on sm_90 only
#endif
}

// Warps per row: split rows over warps only when there are fewer rows than resident warps;
// each part keeps at least one aligned group of blocks.
int choose_split(int64_t nrows, int64_t ngroups) {
  const int64_t target = int64_t(sm_count()) * 24;  // about the resident warps at 64-80 registers
  int split = 1;
  while (split < kWarps && nrows * split < target && ngroups >= 2 * split) split *= 2;
  return split;
}

template <class K>
bool vec_ok(const void* w, size_t rb, int64_t nblk, size_t slab = 0) {
  return reinterpret_cast<uintptr_t>(w) % 16 == 0 && rb % 16 == 0 && slab % 16 == 0 && nblk % K::G == 0;
}

// Persistent grid (aligned rows, split 1): as many blocks as stay resident, each warp then
// loops over rows; otherwise one warp per row part.
template <class Kern>
int resident_blocks(Kern kernel) {
  int per_sm = 0;
  DS4_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  return std::max(per_sm, 1);
}

dim3 grid_for(int per_sm, int64_t nrows, int split, bool vec) {
  const int64_t blocks = (nrows * split + kWarps - 1) / kWarps;
  if (!vec || split != 1) return dim3(unsigned(blocks));
  return dim3(unsigned(std::min<int64_t>(blocks, int64_t(sm_count()) * per_sm)));
}

// DS4_CUDA_NO_BULK_COPY=1 streams every product through the register pipeline (A/B switch,
// read at each launch so that one process can compare both paths); the bulk path needs sm_90.
bool bulk_copy_enabled() {
  return device_attribute(cudaDevAttrComputeCapabilityMajor) == 9 && std::getenv("DS4_CUDA_NO_BULK_COPY") == nullptr;
}

// An integer tuning variable from the environment, clamped to [lo, hi]; fallback when unset.
int env_int(const char* name, int fallback, int lo, int hi) {
  const char* e = std::getenv(name);
  return e == nullptr ? fallback : std::clamp(std::atoi(e), lo, hi);
}

// The bulk path's shape, from the environment once per process (for measurements):
// DS4_CUDA_BULK_STAGES buffers per warp, DS4_CUDA_BULK_STAGE_BYTES about this many bytes per
// buffer (default: the register pipeline's chunk, ~2 KiB), DS4_CUDA_NO_EARLY_WEIGHTS=1 waits
// for the predecessor before requesting any weights.
struct BulkTuning {
  int stages = 2;
  bool stages_set = false;  // DS4_CUDA_BULK_STAGES given: every product takes that many (no deep ring)
  int stage_bytes = 0;
  bool early = true;
};
const BulkTuning& bulk_tuning() {
  static const BulkTuning t = [] {
    BulkTuning b;
    b.stages_set = std::getenv("DS4_CUDA_BULK_STAGES") != nullptr;
    b.stages = env_int("DS4_CUDA_BULK_STAGES", b.stages, 1, kMaxBulkStages);
    b.stage_bytes = env_int("DS4_CUDA_BULK_STAGE_BYTES", b.stage_bytes, 0, 8192);
    b.early = std::getenv("DS4_CUDA_NO_EARLY_WEIGHTS") == nullptr;
    return b;
  }();
  return t;
}

// Buffers per warp for the longest products. Measured on an H200 (ds4-bench-cuda --iters 20,
// graph of 16 calls, weights rotated out of L2; binaries of f57a846 with DS4_CUDA_BULK_STAGES
// 2 / 3 / 4): the Q8_0 output head (129280 x 4096, 562.6 MB) 190.2 / 146.0 / 140.0 us (4018
// GB/s at 4); Q8_0 32768 x 4096 (142.6 MB) 39.9 / 37.5 / 36.8 us; but 16384 x 4096 (71.3 MB)
// 19.4 / 20.2 / 20.5 and the 35.7 MB q_b, o_a, o_b 11.5-12.1 / 12.1-13.0 / 12.6-13.4. A deeper
// ring holds more bytes in flight per warp but costs resident blocks (shared memory) and a
// longer ramp (least-squares fixed cost per launch 2.2 / 3.2 / 3.7 us), which only a long
// stream pays back. So Q8_0 products of at least kDeepRingBytes (the head) take 4 buffers,
// the others the tuning's 2. The float order does not depend on the buffer count, so the
// results are the same bits. DS4_CUDA_NO_DEEP_RING=1 (read at every launch): 2 buffers for all.
constexpr int kDeepRingStages = 4;
constexpr size_t kDeepRingBytes = size_t(128) << 20;
template <class K>
bool deep_ring(size_t product_bytes, int split) {
  return std::is_same_v<K, KQ8_0> && split == 1 && product_bytes >= kDeepRingBytes && !bulk_tuning().stages_set &&
         std::getenv("DS4_CUDA_NO_DEEP_RING") == nullptr;
}

template <class K>
int bulk_chunk_blocks() {
  constexpr int q = bulk_block_quantum<K>();
  const int target = bulk_tuning().stage_bytes;
  if (target == 0) return (K::CHUNK + q - 1) / q * q;
  return std::max(q, (target / K::BB + q / 2) / q * q);
}

// Plans whose rows are one weight row each (the MoE plans keep the register pipeline).
template <class Plan>
constexpr bool kOneRowPlan =
    std::is_same_v<Plan, PlainPlan> || std::is_same_v<Plan, GroupedPlan> || std::is_same_v<Plan, PartsPlan>;

template <class K, class Plan, class Epi>
void launch_bulk(const Plan& p, const Epi& epi, int64_t nrows, int split, void* stream) {
  constexpr auto kernel = bulk_product_kernel<K, Plan, Epi>;
  constexpr size_t kMaxSmem = 200 * 1024;  // of the 227 KiB a block may opt in to on sm_90
  const BulkTuning& tune = bulk_tuning();
  const int cb = bulk_chunk_blocks<K>();
  const size_t chunk_bytes = size_t(cb) * K::BB;
  const int fit = int(kMaxSmem / (kWarps * chunk_bytes));
  const bool deep = deep_ring<K>(size_t(nrows) * p.rb, split);
  const int most = std::max(1, std::min(deep ? kDeepRingStages : tune.stages, fit));
  // A warp of a split row streams one part of it: no more buffers than the part has chunks.
  int stages = most;
  if (split > 1) {
    const int64_t part_blocks = (p.nblk / K::G + split - 1) / split * K::G;
    stages = int(std::min<int64_t>(stages, (part_blocks + cb - 1) / cb));
  }
  const size_t smem = size_t(kWarps) * size_t(stages) * chunk_bytes;
  // The dynamic shared-memory limit: raised once to the tuning's ring, and once more the first
  // time this kernel streams a deep ring (so kernels that never do keep the limit they had).
  auto raise_to = [&](int n) {
    DS4_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(size_t(kWarps) * size_t(n) * chunk_bytes)));
    return true;
  };
  static const bool raised = raise_to(std::max(1, std::min(tune.stages, fit)));
  (void)raised;
  if (deep) {
    static const bool raised_deep = raise_to(most);
    (void)raised_deep;
  }
  static std::atomic<int> per_sm_of_stages[kMaxBulkStages + 1] = {};
  int per_sm = per_sm_of_stages[stages].load(std::memory_order_relaxed);
  if (per_sm == 0) {
    DS4_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
    per_sm = std::max(per_sm, 1);
    per_sm_of_stages[stages].store(per_sm, std::memory_order_relaxed);
  }
  DS4_CUDA_CHECK(launch_pdl(kernel, grid_for(per_sm, nrows, split, true), kThreads, smem,
                             static_cast<cudaStream_t>(stream), p, epi, nrows, split,
                             BulkConfig{stages, cb, tune.early}));
}

// The one place the products are launched: nrows rows of plan p, split and grid chosen here
// (a row splits at aligned block groups when vec, at single blocks otherwise).
template <class K, class Plan, class Epi, bool kSeparate = false>
void launch_rows(const Plan& p, const Epi& epi, int64_t nrows, bool vec, void* stream) {
  const int split = choose_split(nrows, p.nblk / (vec ? K::G : 1));
  if constexpr (kOneRowPlan<Plan> && !kSeparate) {
    if (vec && bulk_copy_enabled()) return launch_bulk<K>(p, epi, nrows, split, stream);
  }
  static const int per_sm = resident_blocks(product_kernel<K, Plan, Epi, kSeparate>);
  DS4_CUDA_CHECK(launch_pdl(product_kernel<K, Plan, Epi, kSeparate>, grid_for(per_sm, nrows, split, vec), kThreads,
                             0, static_cast<cudaStream_t>(stream), p, epi, nrows, split, vec));
}

template <class K>
void matvec_t(const void* w, int64_t nrows, int64_t ncols, const void* act, float* y, void* stream) {
  const int64_t nblk = ncols / K::BE;
  const size_t rb = size_t(nblk) * K::BB;
  const PlainPlan p{static_cast<const uint8_t*>(w), rb, act, nblk};
  launch_rows<K>(p, StoreY{y}, nrows, vec_ok<K>(w, rb, nblk), stream);
}

template <class K>
void grouped_t(const void* w, int64_t nrows, int64_t ncols, int64_t n_groups, const void* act, size_t act_stride,
               float* y, void* stream) {
  const int64_t nblk = ncols / K::BE;
  const size_t rb = size_t(nblk) * K::BB;
  const GroupedPlan p{static_cast<const uint8_t*>(w), rb, static_cast<const uint8_t*>(act), act_stride,
                      nrows / n_groups, nblk};
  launch_rows<K>(p, StoreY{y}, nrows, vec_ok<K>(w, rb, nblk), stream);
}

template <class K>
void parts_t(int64_t ncols, const MatvecPart* parts, int n_parts, const void* act, void* stream) {
  const int64_t nblk = ncols / K::BE;
  const size_t rb = size_t(nblk) * K::BB;
  PartsPlan p{};
  p.n = n_parts;
  p.rb = rb;
  p.act = act;
  p.nblk = nblk;
  bool vec = true;
  p.begin[0] = 0;
  for (int i = 0; i < n_parts; ++i) {
    p.w[i] = static_cast<const uint8_t*>(parts[i].d_w);
    p.y[i] = parts[i].d_y;
    p.begin[i + 1] = p.begin[i] + parts[i].nrows;
    vec = vec && vec_ok<K>(parts[i].d_w, rb, nblk);
  }
  if (p.begin[n_parts] == 0) return;
  launch_rows<K>(p, StoreParts{p}, p.begin[n_parts], vec, stream);
}

template <class K>
void gate_up_t(const void* gate, const void* up, int64_t n_embd, int64_t n_ff, const int32_t* ids,
               const float* route_w, int n_used, float limit, const void* act, float* h, void* stream) {
  const int64_t nblk = n_embd / K::BE;
  const size_t rb = size_t(nblk) * K::BB, slab = rb * size_t(n_ff);
  const bool vec = vec_ok<K>(gate, rb, nblk, slab) && vec_ok<K>(up, rb, nblk, slab);
  const GateUpPlan p{static_cast<const uint8_t*>(gate), static_cast<const uint8_t*>(up), rb, slab, ids,
                     route_w, act, nblk, n_ff, limit, h};
  launch_rows<K, GateUpPlan, SwiGlu, true>(p, SwiGlu{h, route_w, n_ff, limit}, int64_t(n_used) * n_ff, vec, stream);
}

template <class K>
void down_t(const void* down, int64_t n_embd, int64_t n_ff, const int32_t* ids, int n_used,
            const void* act, size_t act_rb, float* y, void* stream) {
  const int64_t nblk = n_ff / K::BE;
  const size_t rb = size_t(nblk) * K::BB, slab = rb * size_t(n_embd);
  const DownPlan p{static_cast<const uint8_t*>(down), rb, slab, ids, static_cast<const uint8_t*>(act),
                   act_rb, nblk, n_used};
  launch_rows<K>(p, StoreY{y}, n_embd, vec_ok<K>(down, rb, nblk, slab), stream);
}

// ---------------------------------------------------------------------------------------
// The MoE in two launches (moe_fused): each kernel quantizes its own input into shared
// memory (one block per SM, so once per SM), and the shared expert's rows are streamed by
// the same launches as the routed experts':
//   gate/up: x -> quantized x (routed partner format, and Q8_0 for the shared expert);
//            the first warps of every block stream the routed gate/up rows (SwiGLU into
//            h), the others the shared expert's gate/up half rows (HalfRowsPlan: sums into
//            parts), so both kinds of rows are spread over all SMs;
//   down:    h -> quantized h; the shared hidden state from the parts (half 0 + half 1,
//            then SwiGLU, weight 1) -> quantized; every warp streams its rows' routed down
//            product (stored in y) and then the same rows' shared down product (added).
// Float order: y[r] = routed(r) + shared(r), routed(r) summed over the experts exactly as
// the separate down launch sums them, and shared(r) as the separate shared down launch; so
// the result is bit-identical to moe_experts (routed) + moe_experts (shared, n_used 1, where
// its gate/up splits rows in two, as on 86-170 SMs) + add.
// Each warp loads its quantization inputs, then asks L2 for its first row's weights, then
// quantizes: the first chunk's DRAM latency overlaps the quantization.
// ---------------------------------------------------------------------------------------
constexpr int kFusedWarps = 24;  // one block per SM: at <= 80 registers, the warps of 3 x 8
constexpr int kFusedThreads = kFusedWarps * 32;

template <class K>
constexpr size_t span_bytes() {  // activation bytes of 256 values in K's partner format
  return K::kQ8K ? sizeof(BlockQ8_K) : 8 * sizeof(BlockQ8_0Act);
}
constexpr size_t align16(size_t n) { return (n + 15) / 16 * 16; }
template <class KA, class KB>
constexpr int fused_staging_bytes() {
  return kFusedWarps * (staging_bytes<KA>() > staging_bytes<KB>() ? staging_bytes<KA>() : staging_bytes<KB>());
}

// 256 values (8 consecutive per lane) as span t of an activation in K's partner format.
template <class K>
__device__ __forceinline__ void quantize_span(const float (&v)[8], uint8_t* act, int64_t t) {
  if constexpr (K::kQ8K)
    quantize_q8_k_warp(v, reinterpret_cast<BlockQ8_K*>(act) + t);
  else
    quantize_q8_0_act_warp<8>(v, reinterpret_cast<BlockQ8_0Act*>(act) + 8 * t);
}

// Task t's 256 values stored as span t of act_a (KA's partner format) if t < n_first, else as
// span t - n_first of act_b (KB's).
template <class KA, class KB>
__device__ __forceinline__ void quantize_task(int64_t t, int64_t n_first, const float (&v)[8], uint8_t* act_a,
                                              uint8_t* act_b) {
  if (t < n_first)
    quantize_span<KA>(v, act_a, t);
  else
    quantize_span<KB>(v, act_b, t - n_first);
}

// The block's quantization tasks t < n (warp-uniform; warp w of nwarps takes w, w + nwarps, ...):
// load(t, v) fetches a task's 256 values (8 per lane); tasks t < n_first are stored as span t
// of act_a in KA's partner format, the others as span t - n_first of act_b in KB's. A warp
// first loads all of its tasks (up to kMaxHeld of them) and only then quantizes, so it waits
// for one round trip to L2 rather than one per task; between() runs after the loads are
// issued (the weight prefetch, which must not queue ahead of them).
template <int kMaxHeld, class KA, class KB, class Load, class Between>
__device__ __forceinline__ void quantize_tasks(int nwarps, int64_t n, int64_t n_first, uint8_t* act_a, uint8_t* act_b,
                                               Load&& load, Between&& between) {
  auto quant = [&](int64_t t, const float(&v)[8]) { quantize_task<KA, KB>(t, n_first, v, act_a, act_b); };
  const int64_t first = threadIdx.x >> 5;
  float v[kMaxHeld][8];
#pragma unroll
  for (int i = 0; i < kMaxHeld; ++i)
    if (first + int64_t(i) * nwarps < n) load(first + int64_t(i) * nwarps, v[i]);
  between();
#pragma unroll
  for (int i = 0; i < kMaxHeld; ++i)
    if (first + int64_t(i) * nwarps < n) quant(first + int64_t(i) * nwarps, v[i]);
  for (int64_t t = first + int64_t(kMaxHeld) * nwarps; t < n; t += nwarps) {  // larger models
    float w[8];
    load(t, w);
    quant(t, w);
  }
}

// Asks L2 for the weights of row r of plan p (all segments, blocks [0, nblk)) without
// waiting for them.
template <class K, class Plan>
__device__ void prefetch_row_l2(const Plan& p, int64_t r) {
  const int lane = threadIdx.x & 31;
  const size_t bytes = size_t(p.nblk) * K::BB;
  for (int m = 0; m < p.segments(); ++m) {
    const uintptr_t start = reinterpret_cast<uintptr_t>(p.row(m, r));
    for (uintptr_t a = (start & ~uintptr_t(127)) + 128 * lane; a < start + bytes; a += 32 * 128)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(a));
  }
}

struct FusedGateUp {
  GateUpPlan routed;       // act set in the kernel (shared memory)
  int64_t routed_rows;     // n_used * n_ff
  HalfRowsPlan shared;     // act set in the kernel
  float* parts;            // shared half-row sums [shared_rows]
  int64_t shared_rows;     // 4 * shared n_ff; 0 without a shared expert
  int routed_per_block;    // warps [0, routed_per_block) of each block take routed rows, the
                           // others shared half rows: both kinds spread over every SM
  const float* x;
  int64_t x_spans;         // n_embd / 256
  // v2 only. The task list is [shared half rows 0, shared_head), the routed rows, then the
  // other shared half rows, so that each warp's first ring buffers (shared_head = stages x all
  // warps, as far as there are shared rows) hold shared rows, whose addresses depend on no
  // earlier kernel: they are requested before pdl_enter. The cheap shared rows also end the list.
  int64_t shared_head;
  // x was written before the launch that precedes this one (the decode step's router sits
  // between the FFN HC pre and the experts): every block quantizes it before pdl_enter.
  bool x_early;
  // Task i of the v2 list: routed row (*routed = true) or shared half row.
  __device__ int64_t task_row(int64_t i, bool* routed) const {
    *routed = i >= shared_head && i < shared_head + routed_rows;
    return i < shared_head ? i : *routed ? i - shared_head : i - routed_rows;
  }
};

template <class KR, class KS>
__global__ void __launch_bounds__(kFusedThreads, 1) moe_gate_up_fused_kernel(FusedGateUp a) {
  constexpr int kBuf = fused_staging_bytes<KR, KS>() / kFusedWarps;
  constexpr bool kOneAct = KR::kQ8K == KS::kQ8K;  // the shared expert reads the routed quantization
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ uint64_t sgrid[KR::kTables || KS::kTables ? 256 : 1], ssign[KR::kTables || KS::kTables ? 128 : 1];
  const Tables t = stage_tables<KR::kTables || KS::kTables>(sgrid, ssign);
  pdl_enter();
  const int warp = threadIdx.x >> 5;
  const bool routed = warp < a.routed_per_block;
  // This warp's index among the routed (gw) or the shared expert's (sgw) warps, and their counts.
  const int64_t gw = int64_t(blockIdx.x) * a.routed_per_block + warp, n_routed = int64_t(gridDim.x) * a.routed_per_block;
  const int64_t sgw = int64_t(blockIdx.x) * (kFusedWarps - a.routed_per_block) + (warp - a.routed_per_block);
  const int64_t n_shared = int64_t(gridDim.x) * (kFusedWarps - a.routed_per_block);
  uint8_t* act_r = smem + fused_staging_bytes<KR, KS>();
  uint8_t* act_s = kOneAct ? act_r : act_r + align16(size_t(a.x_spans) * span_bytes<KR>());
  // Tasks [0, x_spans): x for the routed experts; [x_spans, 2 x_spans): x for the shared one.
  const int64_t tasks = a.x_spans * (a.shared_rows > 0 && !kOneAct ? 2 : 1);
  quantize_tasks<2, KR, KS>(
      kFusedWarps, tasks, a.x_spans, act_r, act_s,
      [&](int64_t task, float(&v)[8]) { load_256(a.x + 256 * (task % a.x_spans), v); },
      [&] {
        if (routed && gw < a.routed_rows) prefetch_row_l2<KR>(a.routed, gw);
        if (!routed && sgw < a.shared_rows) prefetch_row_l2<KS>(a.shared, sgw);
      });
  __syncthreads();
  float o0, o1;
  if (routed) {
    GateUpPlan p = a.routed;
    p.act = act_r;
    const SwiGlu epi{p.h, p.route_w, p.n_ff, p.limit};
    stream_rows<KR, SharedAct>(p, epi, gw, n_routed, a.routed_rows, 0, p.nblk, true, true, smem + warp * kBuf, t, o0,
                               o1);
  } else {
    HalfRowsPlan p = a.shared;
    p.act = act_s;
    stream_rows<KS, SharedAct>(p, StoreY{a.parts}, sgw, n_shared, a.shared_rows, 0, p.nblk, false, true,
                               smem + warp * kBuf, t, o0, o1);
  }
}

struct FusedDown {
  DownPlan routed;        // act set in the kernel (shared memory)
  const float* h;         // routed hidden state [n_used * n_ff]
  int64_t h_spans;        // n_used * n_ff / 256
  PlainPlan shared;       // the shared expert's down; act set in the kernel
  const float* parts;     // the gate/up launch's shared half-row sums
  int64_t shared_ff;
  int64_t shared_spans;   // shared n_ff / 256; 0 without a shared expert
  float shared_limit;
  float* y;
  int64_t n_embd;
  // The quantized down inputs, made once per layer by moe_down_quantize_kernel in the layout of
  // the block's act_r / act_s (act_s at act_r + align16(routed bytes)), act_pre_vec 16-byte
  // vectors; nullptr: every block quantizes them itself (quantize_down_inputs).
  const uint8_t* act_pre;
  int act_pre_vec;
  // v2: request the ring's first rows before pdl_enter. Their addresses need the router's ids,
  // which are settled by then: the gate/up launch, which reads them after its own wait, sits
  // between the router and this launch.
  bool ring_early;
};

// The shared expert's hidden values 256 * span + 8 * lane + j: gate and up as the separate
// product's split-2 reduction sums them (0 + half 0 + half 1), then the clamped SwiGLU. The
// lane's 8 gate and 8 up half-row pairs are 16 consecutive floats each, read as float4s (one
// scalar load per value touched a sector per lane: 32x the L2 traffic, in every block).
__device__ __forceinline__ void shared_hidden_span(const FusedDown& a, int64_t span, float (&v)[8]) {
  const int64_t r0 = 256 * span + 8 * (threadIdx.x & 31);
  const float4* gp = reinterpret_cast<const float4*>(a.parts + 2 * r0);
  const float4* up = reinterpret_cast<const float4*>(a.parts + 2 * (a.shared_ff + r0));
  float g[16], u[16];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float4 x = gp[i], y = up[i];
    g[4 * i] = x.x, g[4 * i + 1] = x.y, g[4 * i + 2] = x.z, g[4 * i + 3] = x.w;
    u[4 * i] = y.x, u[4 * i + 1] = y.y, u[4 * i + 2] = y.z, u[4 * i + 3] = y.w;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float gate = (0.0f + g[2 * j]) + g[2 * j + 1];
    const float upv = (0.0f + u[2 * j]) + u[2 * j + 1];
    v[j] = swiglu_clamped(gate, upv, a.shared_limit);
  }
}

// The down kernels' input span `task` (8 values per lane): [0, h_spans) the routed h, then
// the shared expert's hidden state.
__device__ __forceinline__ void load_down_input(const FusedDown& a, int64_t task, float (&v)[8]) {
  if (task < a.h_spans)
    load_256(a.h + 256 * task, v);
  else
    shared_hidden_span(a, task - a.h_spans, v);
}

// The down kernels' prologue: every down input span quantized by the block's nwarps warps
// (between() as in quantize_tasks).
template <class KR, class KS, class Between>
__device__ __forceinline__ void quantize_down_inputs(const FusedDown& a, int nwarps, uint8_t* act_r, uint8_t* act_s,
                                                     Between&& between) {
  quantize_tasks<3, KR, KS>(
      nwarps, a.h_spans + a.shared_spans, a.h_spans, act_r, act_s,
      [&](int64_t task, float(&v)[8]) { load_down_input(a, task, v); }, between);
}

// The down inputs quantized once per layer (instead of once per block of the down launch), one
// warp per 256-value span, into global act_r / act_s: the same loads, operations and stores
// as quantize_down_inputs, so the bytes are the same.
constexpr int kDownQuantizeWarps = 8;
template <class KR, class KS>
__global__ void __launch_bounds__(kDownQuantizeWarps * 32) moe_down_quantize_kernel(FusedDown a, uint8_t* act_r,
                                                                                    uint8_t* act_s) {
  pdl_enter();  // h and the shared half-row sums come from the gate/up launch
  const int64_t task = int64_t(blockIdx.x) * kDownQuantizeWarps + (threadIdx.x >> 5);
  if (task >= a.h_spans + a.shared_spans) return;  // whole warps: the quantizers are warp-collective
  float v[8];
  load_down_input(a, task, v);
  quantize_task<KR, KS>(task, a.h_spans, v, act_r, act_s);
}

template <class KR, class KS>
__global__ void __launch_bounds__(kFusedThreads, 1) moe_down_fused_kernel(FusedDown a) {
  constexpr int kBuf = fused_staging_bytes<KR, KS>() / kFusedWarps;
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ uint64_t sgrid[KR::kTables || KS::kTables ? 256 : 1], ssign[KR::kTables || KS::kTables ? 128 : 1];
  const Tables t = stage_tables<KR::kTables || KS::kTables>(sgrid, ssign);
  pdl_enter();
  const int warp = threadIdx.x >> 5;
  const int64_t gw = int64_t(blockIdx.x) * kFusedWarps + warp, nw = int64_t(gridDim.x) * kFusedWarps;
  uint8_t* act_r = smem + fused_staging_bytes<KR, KS>();
  uint8_t* act_s = act_r + align16(size_t(a.h_spans) * span_bytes<KR>());
  quantize_down_inputs<KR, KS>(a, kFusedWarps, act_r, act_s, [&] {
    if (gw < a.n_embd) {
      prefetch_row_l2<KR>(a.routed, gw);
      if (a.shared_spans > 0) prefetch_row_l2<KS>(a.shared, gw);
    }
  });
  __syncthreads();
  float o0, o1;
  DownPlan p = a.routed;
  p.act = act_r;
  stream_rows<KR, SharedAct>(p, StoreY{a.y}, gw, nw, a.n_embd, 0, p.nblk, false, true, smem + warp * kBuf, t, o0, o1);
  if (a.shared_spans > 0) {  // the same rows again, adding the shared expert (lane 0 stored them above)
    PlainPlan q = a.shared;
    q.act = act_s;
    stream_rows<KS, SharedAct>(q, AddY{a.y}, gw, nw, a.n_embd, 0, q.nblk, false, true, smem + warp * kBuf, t, o0, o1);
  }
}

// ---------------------------------------------------------------------------------------
// MoE v2 (the default; DS4_CUDA_NO_MOE_V2=1 runs the kernels above). Measured on the kernels
// above (ncu, H200, Flash q2 + shared expert): gate/up 49 us at 0.92 TB/s, bound by the
// shared-memory pipe (2.9-way bank conflicts of the random IQ2_XXS grid/sign lookups, 55% of
// all wavefronts excess) and instruction issue; down 28 us, its SMs idle 30% of the time (one
// ~2 KiB chunk in flight per warp, up to six dependent round trips for a warp of two rows).
// The v2 kernels keep the work split, the quantization prologue and every float operation
// and order of the kernels above (so results are bit-identical), and change how the bytes
// arrive and how the tables are read:
//  - a task is one whole output row (routed gate+up pair, shared half row; in down: the
//    n_used routed rows and the shared row of one output) copied with cp.async into one
//    buffer of a warp-private ring of `stages` buffers; a warp requests its first tasks
//    before the block quantizes its input and keeps stages - 1 tasks in flight while it
//    decodes (no registers hold loads in flight);
//  - routed and shared tasks form one list that every warp walks with the grid stride, so
//    each warp gets the same number of ~equal tasks;
//  - the IQ2_XXS tables are kTableRep copies side by side, lane l reading copy l % 16: the
//    16 lanes of a half warp always hit 16 different bank pairs (conflict-free 64-bit loads).
// ---------------------------------------------------------------------------------------
constexpr int kTableRep = 16;
constexpr int kV2MaxWarps = 24;
constexpr int kV2MaxStages = 4;
constexpr size_t kTableBytes = size_t(256 + 128) * kTableRep * sizeof(uint64_t);

// The IQ2_XXS tables replicated into shared memory (when kNeed): entry i's copies at
// [i * kTableRep, (i + 1) * kTableRep); the returned pointers are this lane's copy.
template <bool kNeed>
__device__ Tables stage_tables_replicated(uint64_t* tables) {
  if constexpr (kNeed) {
    uint64_t* grid = tables;
    uint64_t* signs = tables + 256 * kTableRep;
    for (int i = threadIdx.x; i < 256 * kTableRep; i += blockDim.x) grid[i] = g_iq2_grid[i / kTableRep];
    for (int i = threadIdx.x; i < 128 * kTableRep; i += blockDim.x) signs[i] = g_iq2_sign_mask[i / kTableRep];
    __syncthreads();
    const int r = threadIdx.x & (kTableRep - 1);
    return Tables{grid + r, signs + r};
  }
  return Tables{tables, tables};
}

// kLean: MoE v3's decoders where a type has one (Q2_K from shared memory).
template <class K, class A, int kRep, bool kLean = false>
__device__ __forceinline__ float unit_dot(const uint8_t* w, int u, const void* act, int64_t b, const Tables& t) {
  if constexpr (kLean && std::is_same_v<K, KQ2_K> && std::is_same_v<A, SharedAct>)
    return KQ2_K::dot_shared_lean(w, u, act, b);
  else if constexpr (K::kTables)
    return K::template dot<A, kRep>(w, u, act, b, t);
  else
    return K::template dot<A>(w, u, act, b, t);
}

// Lane partial of one row segment in shared memory: units lane, lane + 32, ... of its nblk
// blocks, summed in that order into acc (the order of stream_rows for segments whose unit
// count is a multiple of 32, every DS4 shape).
template <class K, int kRep, bool kLean = false>
__device__ __forceinline__ void segment_dot(const uint8_t* w, int64_t nblk, const void* act, const Tables& t,
                                            float& acc) {
  const int units = int(nblk) * K::U;
  for (int u = threadIdx.x & 31; u < units; u += 32) {
    const int blk = u / K::U;  // compile-time divisor
    acc += unit_dot<K, SharedAct, kRep, kLean>(w + blk * K::BB, u - blk * K::U, act, blk, t);
  }
}


// Copies nvec 16-byte vectors global -> shared, the lanes of the warp taking every 32nd.
__device__ __forceinline__ void copy_async(uint8_t* dst, const uint8_t* src, int nvec, uint64_t policy) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  for (int v = threadIdx.x & 31; v < nvec; v += 32)
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" ::"r"(d + 16 * v), "l"(src + 16 * v),
                 "l"(policy)
                 : "memory");
#endif
}

__device__ __forceinline__ void copy_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// Waits until at most n of this thread's committed copy groups are still pending.
__device__ __forceinline__ void copy_async_wait(int n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  static_assert(kV2MaxStages == 4, "one case per pending count, 0..kV2MaxStages");
  switch (n) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
  }
#endif
}

// The shared-memory layout of a v2 launch, computed on the host: nwarps rings of `stages`
// buffers of stage_bytes, then the routed and the shared expert's activation, then the
// replicated tables (if any). Offsets in bytes from the start of dynamic shared memory.
struct V2Layout {
  int stages = 0;
  int stage_bytes = 0;
  size_t act_r = 0, act_s = 0, tables = 0, total = 0;
};

// One warp's tasks first, first + step, ... < end, each copied by issue(task, buffer) into the
// next buffer of the warp's ring and then handed to decode(task, buffer). start() requests
// the first `stages` tasks; run() decodes them in order, refilling each buffer with the task
// `stages` ahead as soon as it is decoded. Each request is one commit group (empty ones too),
// so "task k has landed" is "at most stages - 1 groups pending".
struct WarpRing {
  uint8_t* ring;
  int stages, stage_bytes;
  int64_t first, step, end;
  template <class Issue>
  __device__ void start(Issue&& issue) const {
    for (int s = 0; s < stages; ++s) {
      const int64_t t = first + int64_t(s) * step;
      if (t < end) issue(t, ring + s * stage_bytes);
      copy_async_commit();
    }
  }
  template <class Issue, class Decode>
  __device__ void run(Issue&& issue, Decode&& decode) const {
    int s = 0;
    for (int64_t t = first; t < end; t += step) {
      copy_async_wait(stages - 1);
      __syncwarp();  // every lane's copies of this task are visible to the whole warp
      uint8_t* buf = ring + s * stage_bytes;
      decode(t, buf);
      __syncwarp();  // every lane is done with the buffer before it is refilled
      const int64_t next = t + int64_t(stages) * step;
      if (next < end) issue(next, buf);
      copy_async_commit();
      if (++s == stages) s = 0;
    }
  }
};

// Routed IQ2_XXS rows of kActBlocks * 4 blocks (Flash: 4096 columns): lane l always takes
// group l % 8 of blocks l / 8 + 4 i, so its 4 x 32 activation values and their scales stay in
// registers for all its rows (no shared-memory loads for them); needs the 128-register bound.
constexpr int kActBlocks = 4;
struct Iq2LaneAct {
  int q[kActBlocks][8];
  float d[kActBlocks];
  __device__ void load(const uint8_t* act) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < kActBlocks; ++i) {
      const BlockQ8_K* b = reinterpret_cast<const BlockQ8_K*>(act) + (lane >> 3) + 4 * i;
#pragma unroll
      for (int j = 0; j < 8; ++j) q[i][j] = act_int<SharedAct>(b->qs, 8 * (lane & 7) + j);
      d[i] = b->d;
    }
  }
  // segment_dot<KIQ2_XXS> of a row of 4 * kActBlocks blocks at w, the same units in the same order.
  template <int kRep>
  __device__ void row_dot(const uint8_t* w, const Tables& t, float& acc) const {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < kActBlocks; ++i)
      acc += KIQ2_XXS::dot_unit<kRep>(w + ((lane >> 3) + 4 * i) * KIQ2_XXS::BB, lane & 7, d[i], t,
                                      [&](int k) { return q[i][k]; });
  }
};

// DS4_CUDA_MOE_IQ2_SMEM_ACT=1: the routed IQ2_XXS rows read the activation from shared memory
// (for measurements; kernel argument).
template <class KR, class KS, int kMaxWarps>
__global__ void __launch_bounds__(kMaxWarps * 32, 1) moe_gate_up_v2_kernel(FusedGateUp a, V2Layout l, bool act_regs) {
  constexpr bool kTab = KR::kTables || KS::kTables;
  constexpr int kRep = kTab ? kTableRep : 1;
  extern __shared__ __align__(16) uint8_t smem[];
  const Tables t = stage_tables_replicated<kTab>(reinterpret_cast<uint64_t*>(smem + l.tables));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  uint8_t* act_r = smem + l.act_r;
  uint8_t* act_s = smem + l.act_s;
  const GateUpPlan& r = a.routed;
  const HalfRowsPlan& sh = a.shared;
  const int routed_vec = int(r.rb / 16), shared_vec = int(sh.half_bytes / 16);
  const uint64_t policy = l2_evict_first_policy();
  // Tasks: a.task_row's list of routed gate/up row pairs and the shared expert's half rows.
  auto issue = [&](int64_t task, uint8_t* buf) {
    bool routed;
    const int64_t row = a.task_row(task, &routed);
    if (routed) {
      copy_async(buf, r.row(0, row), routed_vec, policy);
      copy_async(buf + r.rb, r.row(1, row), routed_vec, policy);
    } else {
      copy_async(buf, sh.row(0, row), shared_vec, policy);
    }
  };
  const WarpRing ring{smem + size_t(warp) * l.stages * l.stage_bytes, l.stages, l.stage_bytes,
                      int64_t(blockIdx.x) * nwarps + warp, int64_t(gridDim.x) * nwarps,
                      a.routed_rows + a.shared_rows};
  // The ring's first requests before the wait when they are all shared rows.
  bool ring_early = true;
  for (int s = 0; s < l.stages; ++s) {
    const int64_t task = ring.first + int64_t(s) * ring.step;
    bool routed;
    a.task_row(task, &routed);
    ring_early = ring_early && (task >= ring.end || !routed);
  }
  // Spans [0, x_spans): x for the routed experts; [x_spans, 2 x_spans): x for the shared one.
  const int64_t spans = a.x_spans * (a.shared_rows > 0 && act_s != act_r ? 2 : 1);
  auto quantize_x = [&] {
    quantize_tasks<2, KR, KS>(
        nwarps, spans, a.x_spans, act_r, act_s,
        [&](int64_t task, float(&v)[8]) { load_256(a.x + 256 * (task % a.x_spans), v); }, [] {});
  };
  if (ring_early) ring.start(issue);
  if (a.x_early) quantize_x();
  pdl_enter();  // ids and route weights (and x unless x_early) come from earlier kernels
  if (!ring_early) ring.start(issue);
  if (!a.x_early) quantize_x();
  __syncthreads();
  const SwiGlu epi{r.h, r.route_w, r.n_ff, r.limit};
  constexpr bool kRegs = std::is_same_v<KR, KIQ2_XXS> && kMaxWarps <= 16;
  Iq2LaneAct ra;
  const bool regs = kRegs && act_regs && r.nblk == 4 * kActBlocks;
  if (kRegs && regs) ra.load(act_r);
  ring.run(issue, [&](int64_t task, const uint8_t* buf) {
    bool routed;
    const int64_t row = a.task_row(task, &routed);
    if (routed) {
      float g = 0.0f, u = 0.0f;
      if (kRegs && regs) {
        ra.row_dot<kRep>(buf, t, g);
        ra.row_dot<kRep>(buf + r.rb, t, u);
      } else {
        segment_dot<KR, kRep>(buf, r.nblk, act_r, t, g);
        segment_dot<KR, kRep>(buf + r.rb, r.nblk, act_r, t, u);
      }
      g = warp_sum(g);
      u = warp_sum(u);
      if (lane == 0) epi(row, g, u);
    } else {
      const int64_t j = row;
      float s = 0.0f;
      segment_dot<KS, kRep>(buf, sh.nblk, act_s + (j & 1) * sh.act_half_bytes, t, s);
      s = warp_sum(s);
      if (lane == 0) a.parts[j] = s;
    }
  });
}

// kV3: the routed Q2_K rows decoded by KQ2_K::dot_shared_lean (MoE v3; same bits).
template <class KR, class KS, bool kV3 = false>
__global__ void __launch_bounds__(kV2MaxWarps * 32, 1) moe_down_v2_kernel(FusedDown a, V2Layout l) {
  constexpr bool kTab = KR::kTables || KS::kTables;
  constexpr int kRep = kTab ? kTableRep : 1;
  extern __shared__ __align__(16) uint8_t smem[];
  const Tables t = stage_tables_replicated<kTab>(reinterpret_cast<uint64_t*>(smem + l.tables));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  uint8_t* act_r = smem + l.act_r;
  uint8_t* act_s = smem + l.act_s;
  const DownPlan& r = a.routed;
  const PlainPlan& sh = a.shared;
  const bool has_shared = a.shared_spans > 0;
  const int routed_vec = int(r.rb / 16), shared_vec = int(sh.rb / 16);
  const uint64_t policy = l2_evict_first_policy();
  // Task = output row: its n_used routed rows back to back, then the shared expert's row.
  auto issue = [&](int64_t row, uint8_t* buf) {
    for (int k = 0; k < r.n_used; ++k) copy_async(buf + k * r.rb, r.row(k, row), routed_vec, policy);
    if (has_shared) copy_async(buf + r.n_used * r.rb, sh.row(0, row), shared_vec, policy);
  };
  const WarpRing ring{smem + size_t(warp) * l.stages * l.stage_bytes, l.stages, l.stage_bytes,
                      int64_t(blockIdx.x) * nwarps + warp, int64_t(gridDim.x) * nwarps, a.n_embd};
  if (a.ring_early) {
    ring.start(issue);
    pdl_enter();  // h, the shared half-row sums and their quantization come from the launches before
    if (a.act_pre != nullptr) {
      // The quantized inputs (~16 KB for Flash q2) by plain loads: a copy group committed
      // after the ring's would make the first wait wait for the ring's rows too.
      const uint4* src = reinterpret_cast<const uint4*>(a.act_pre);
      uint4* dst = reinterpret_cast<uint4*>(act_r);
      for (int v = threadIdx.x; v < a.act_pre_vec; v += blockDim.x) dst[v] = __ldcg(src + v);
    } else {
      quantize_down_inputs<KR, KS>(a, nwarps, act_r, act_s, [] {});
    }
  } else if (a.act_pre != nullptr) {
    pdl_enter();
    // The quantized inputs (~16 KB for Flash q2) as one commit group ahead of the ring's: warp w
    // copies the w-th slice; at most `stages` groups pending = this one has landed.
    const int per = (a.act_pre_vec + nwarps - 1) / nwarps, lo = warp * per;
    copy_async(act_r + 16 * lo, a.act_pre + 16 * lo, max(0, min(per, a.act_pre_vec - lo)), policy);
    copy_async_commit();
    ring.start(issue);
    copy_async_wait(l.stages);
  } else {
    pdl_enter();
    ring.start(issue);
    quantize_down_inputs<KR, KS>(a, nwarps, act_r, act_s, [] {});
  }
  __syncthreads();
  ring.run(issue, [&](int64_t row, const uint8_t* buf) {
    float acc = 0.0f;  // the n_used experts in k order, as one accumulator (stream_rows' packed chunks)
    for (int k = 0; k < r.n_used; ++k)
      segment_dot<KR, kRep, kV3>(buf + k * r.rb, r.nblk, act_r + k * r.act_rb, t, acc);
    float y = warp_sum(acc);
    if (has_shared) {
      float s = 0.0f;
      segment_dot<KS, kRep>(buf + r.n_used * r.rb, sh.nblk, act_s, t, s);
      y = y + warp_sum(s);  // routed(r) + shared(r), as the store and the add of the kernel above
    }
    if (lane == 0) a.y[row] = y;
  });
}

// Warps per block for the routed rows of the fused gate/up launch (the others take the shared
// half rows): the split that gives the busiest warp the fewest bytes.
int routed_warps_per_block(int64_t blocks, int64_t rows_a, size_t bytes_a, int64_t rows_b, size_t bytes_b) {
  if (rows_b == 0) return kFusedWarps;
  int best = kFusedWarps / 2;
  size_t best_cost = SIZE_MAX;
  for (int wa = 1; wa < kFusedWarps; ++wa) {
    const int64_t na = blocks * wa, nb = blocks * (kFusedWarps - wa);
    const size_t cost = std::max(size_t((rows_a + na - 1) / na) * bytes_a, size_t((rows_b + nb - 1) / nb) * bytes_b);
    if (cost < best_cost) {
      best_cost = cost;
      best = wa;
    }
  }
  return best;
}

// Dynamic shared memory of the fused kernels for routed gate/up type KG and down type KD.
template <class KG>
size_t fused_gate_up_smem(const FusedMoe& m) {
  const int64_t spans = m.s.n_embd / 256;
  const bool two = m.has_shared && KG::kQ8K != KQ8_0::kQ8K;
  return size_t(fused_staging_bytes<KG, KQ8_0>()) + align16(size_t(spans) * span_bytes<KG>()) +
         (two ? align16(size_t(spans) * span_bytes<KQ8_0>()) : 0);
}
template <class KD>
size_t fused_down_smem(const FusedMoe& m) {
  return size_t(fused_staging_bytes<KD, KQ8_0>()) +
         align16(size_t(m.s.n_used) * size_t(m.s.n_ff / 256) * span_bytes<KD>()) +
         (m.has_shared ? align16(size_t(m.shared.n_ff / 256) * span_bytes<KQ8_0>()) : 0);
}

int smem_optin() { return device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin); }

// DS4_CUDA_NO_MOE_V2=1 runs the MoE kernels before v2 (A/B switch, read at each launch).
// For measurements, DS4_CUDA_MOE_WARPS / DS4_CUDA_MOE_DOWN_WARPS (warps per block of the
// gate/up and down launches, 4..24, default 16) and DS4_CUDA_MOE_STAGES (ring buffers per warp,
// 1..4, default 2; fewer where shared memory does not hold them) shape v2. Defaults measured
// on an H200 (Flash q2 + shared expert, graph of 8): 16 warps 49.6 us, 24 warps 56.5 (no room
// for the IQ2_XXS activation registers), 8 warps 61.2; 4 buffers 49.6-49.8 us, 2 buffers 48.4.
// The down inputs are quantized once per layer by moe_down_quantize_kernel and each v2 down
// block copies them; DS4_CUDA_NO_MOE_DOWN_PREQ=1 has every down block quantize all of h and
// the shared hidden state itself (the earlier path). Same bytes either way (tested). Full Flash
// q2 on an H200: routed + shared experts 2.099 ms per step once per layer vs 2.244 ms per
// block, decode 112.8 vs 110.8 tok/s.
// MoE v3 (DS4_CUDA_NO_MOE_V3=1: v2's decoders): the Q2_K down rows by KQ2_K::dot_shared_lean;
// ncu on an H200 (flash-mini decode step): down 14.1 / 14.0 us vs 15.8 / 16.1 (v2), shared-memory
// load wavefronts 1.19M vs 1.90M. Same bits (tested).
struct V2Tuning {
  bool on = true;
  bool v3 = true;  // MoE v3: the down kernel's Q2_K rows by KQ2_K::dot_shared_lean
  int warps = 16;
  int down_warps = 16;
  int stages = 2;
  bool down_preq = true;  // the down inputs quantized once per layer (moe_down_quantize_kernel)
  bool early = true;      // work that needs no predecessor's output before pdl_enter (see FusedGateUp)
};
V2Tuning v2_tuning() {
  V2Tuning v;
  v.on = std::getenv("DS4_CUDA_NO_MOE_V2") == nullptr;
  v.v3 = std::getenv("DS4_CUDA_NO_MOE_V3") == nullptr;
  v.down_preq = std::getenv("DS4_CUDA_NO_MOE_DOWN_PREQ") == nullptr;
  v.early = std::getenv("DS4_CUDA_NO_MOE_EARLY") == nullptr;
  v.warps = env_int("DS4_CUDA_MOE_WARPS", v.warps, 4, kV2MaxWarps);
  v.down_warps = env_int("DS4_CUDA_MOE_DOWN_WARPS", v.down_warps, 4, kV2MaxWarps);
  v.stages = env_int("DS4_CUDA_MOE_STAGES", v.stages, 1, kV2MaxStages);
  return v;
}

// The v2 layout for rings of buffers of stage_bytes (a multiple of 16), the routed activation,
// the shared expert's (act_s_bytes 0: it reads the routed one) and the tables; as many
// buffers per warp as asked for and fit. stages == 0: not even one fits (use the kernels before v2).
V2Layout v2_layout(const V2Tuning& tune, int warps, size_t stage_bytes, size_t act_r_bytes, size_t act_s_bytes,
                   bool tables) {
  V2Layout l;
  const size_t fixed = align16(act_r_bytes) + align16(act_s_bytes) + (tables ? kTableBytes : 0);
  const size_t per_stage = size_t(warps) * stage_bytes;
  const size_t limit = size_t(smem_optin());
  if (!tune.on || stage_bytes % 16 != 0 || fixed + per_stage > limit) return l;
  l.stages = int(std::min<size_t>(size_t(tune.stages), (limit - fixed) / per_stage));
  l.stage_bytes = int(stage_bytes);
  l.act_r = per_stage * size_t(l.stages);
  l.act_s = act_s_bytes == 0 ? l.act_r : l.act_r + align16(act_r_bytes);
  l.tables = l.act_r + align16(act_r_bytes) + align16(act_s_bytes);
  l.total = l.tables + (tables ? kTableBytes : 0);
  return l;
}

template <class... Args>
void launch_v2(void (*kernel)(Args...), int warps, size_t smem, void* stream, const Args&... args) {
  DS4_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  DS4_CUDA_CHECK(launch_pdl(kernel, dim3(unsigned(sm_count())), dim3(unsigned(32 * warps)), smem,
                             static_cast<cudaStream_t>(stream), args...));
}

// Launches `kernel` (one block per SM) with `smem` bytes of dynamic shared memory; raises the
// kernel's limit the first time it needs more than the default 48 KiB.
template <class Arg>
void launch_fused(void (*kernel)(Arg), size_t smem, const Arg& arg, void* stream) {
  DS4_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  DS4_CUDA_CHECK(launch_pdl(kernel, dim3(unsigned(sm_count())), kFusedThreads, smem,
                             static_cast<cudaStream_t>(stream), arg));
}

template <class K>
bool rows_aligned(int64_t ncols, int64_t halves = 1) {  // each row (half) a whole number of 16-byte groups
  return ncols % (int64_t(K::BE) * K::G * halves) == 0;
}

template <class KG, class KD>
void moe_fused_t(const FusedMoe& m, void* stream) {
  const MoeShape& s = m.s;
  const int64_t gu_nblk = s.n_embd / KG::BE, dn_nblk = s.n_ff / KD::BE;
  const size_t gu_rb = size_t(gu_nblk) * KG::BB, dn_rb = size_t(dn_nblk) * KD::BB;
  const int64_t sh_gu_nblk = s.n_embd / KQ8_0::BE, sh_dn_nblk = m.has_shared ? m.shared.n_ff / KQ8_0::BE : 0;
  const size_t sh_gu_rb = size_t(sh_gu_nblk) * KQ8_0::BB, sh_dn_rb = size_t(sh_dn_nblk) * KQ8_0::BB;
  FusedGateUp g{};
  g.routed = GateUpPlan{static_cast<const uint8_t*>(m.gate), static_cast<const uint8_t*>(m.up), gu_rb,
                        gu_rb * size_t(s.n_ff), m.ids, m.route_w, nullptr, gu_nblk, s.n_ff, s.limit, m.h};
  g.routed_rows = int64_t(s.n_used) * s.n_ff;
  if (m.has_shared) {
    g.shared = HalfRowsPlan{static_cast<const uint8_t*>(m.shared.gate), static_cast<const uint8_t*>(m.shared.up),
                            sh_gu_rb, sh_gu_rb / 2, nullptr, size_t(sh_gu_nblk / 2) * sizeof(BlockQ8_0Act),
                            m.shared.n_ff, sh_gu_nblk / 2};
    g.shared_rows = 4 * m.shared.n_ff;
  }
  g.parts = m.parts;
  g.routed_per_block = routed_warps_per_block(sm_count(), g.routed_rows, 2 * gu_rb, g.shared_rows, sh_gu_rb / 2);
  g.x = m.x;
  g.x_spans = s.n_embd / 256;
  const V2Tuning tune = v2_tuning();
  const bool two_acts = m.has_shared && KG::kQ8K != KQ8_0::kQ8K;
  const V2Layout gl = v2_layout(tune, tune.warps, std::max(2 * gu_rb, m.has_shared ? sh_gu_rb / 2 : 0),
                                size_t(g.x_spans) * span_bytes<KG>(),
                                two_acts ? size_t(g.x_spans) * span_bytes<KQ8_0>() : 0, KG::kTables);
  const bool act_regs = std::getenv("DS4_CUDA_MOE_IQ2_SMEM_ACT") == nullptr;
  if (tune.early && gl.stages > 0) {
    g.shared_head = std::min(g.shared_rows, int64_t(gl.stages) * sm_count() * tune.warps);
    g.x_early = m.x_early;
  }
  if (gl.stages > 0 && tune.warps <= 16)  // 128 registers: room for Iq2LaneAct
    launch_v2(moe_gate_up_v2_kernel<KG, KQ8_0, 16>, tune.warps, gl.total, stream, g, gl, act_regs);
  else if (gl.stages > 0)
    launch_v2(moe_gate_up_v2_kernel<KG, KQ8_0, kV2MaxWarps>, tune.warps, gl.total, stream, g, gl, act_regs);
  else
    launch_fused(moe_gate_up_fused_kernel<KG, KQ8_0>, fused_gate_up_smem<KG>(m), g, stream);

  FusedDown d{};
  const size_t act_rb = size_t(s.n_ff / 256) * span_bytes<KD>();
  d.routed = DownPlan{static_cast<const uint8_t*>(m.down), dn_rb, dn_rb * size_t(s.n_embd), m.ids, nullptr, act_rb,
                      dn_nblk, s.n_used};
  d.h = m.h;
  d.h_spans = int64_t(s.n_used) * s.n_ff / 256;
  if (m.has_shared) {
    d.shared = PlainPlan{static_cast<const uint8_t*>(m.shared.down), sh_dn_rb, nullptr, sh_dn_nblk};
    d.parts = m.parts;
    d.shared_ff = m.shared.n_ff;
    d.shared_spans = m.shared.n_ff / 256;
    d.shared_limit = m.shared.limit;
  }
  d.y = m.y;
  d.n_embd = s.n_embd;
  d.ring_early = tune.early;
  const V2Layout dl = v2_layout(tune, tune.down_warps, size_t(s.n_used) * dn_rb + sh_dn_rb,
                                size_t(d.h_spans) * span_bytes<KD>(), size_t(d.shared_spans) * span_bytes<KQ8_0>(),
                                KD::kTables);
  if (dl.stages > 0 && tune.down_preq && m.act_pre != nullptr) {
    // Quantize the down inputs once (a small launch) rather than in each of the down blocks.
    uint8_t* act_r = m.act_pre;
    uint8_t* act_s = act_r + align16(size_t(d.h_spans) * span_bytes<KD>());
    const int64_t spans = d.h_spans + d.shared_spans;
    DS4_CUDA_CHECK(launch_pdl(moe_down_quantize_kernel<KD, KQ8_0>,
                              dim3(unsigned((spans + kDownQuantizeWarps - 1) / kDownQuantizeWarps)),
                              dim3(unsigned(32 * kDownQuantizeWarps)), 0, static_cast<cudaStream_t>(stream), d,
                              act_r, act_s));
    d.act_pre = act_r;
    d.act_pre_vec = int((act_s - act_r + align16(size_t(d.shared_spans) * span_bytes<KQ8_0>())) / 16);
  }
  if (dl.stages > 0 && tune.v3 && std::is_same_v<KD, KQ2_K>)
    launch_v2(moe_down_v2_kernel<KD, KQ8_0, true>, tune.down_warps, dl.total, stream, d, dl);
  else if (dl.stages > 0)
    launch_v2(moe_down_v2_kernel<KD, KQ8_0>, tune.down_warps, dl.total, stream, d, dl);
  else
    launch_fused(moe_down_fused_kernel<KD, KQ8_0>, fused_down_smem<KD>(m), d, stream);
}

// Calls f(K{}) with the decoder of a quantized expert weight type (MoE kernels).
template <class F>
void with_expert_kernel(GgmlType type, F&& f) {
  init_tables();
  switch (type) {
    case GgmlType::Q8_0: return f(KQ8_0{});
    case GgmlType::Q2_K: return f(KQ2_K{});
    case GgmlType::Q4_K: return f(KQ4_K{});
    case GgmlType::IQ2_XXS: return f(KIQ2_XXS{});
    case GgmlType::MXFP4: return f(KMXFP4{});
    default: break;
  }
}

// ---------------------------------------------------------------------------------------
// Activation quantizers (device code in quantize_act.cuh, shared with the fused kernels).
// ---------------------------------------------------------------------------------------
__global__ void quantize_q8_0_act_kernel(const float* __restrict__ x, BlockQ8_0Act* __restrict__ y, int64_t nblocks) {
  pdl_enter();
  const int64_t b = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (b >= nblocks) return;  // whole warps: the quantizer is warp-collective
  const float v[1] = {x[b * QK8_0 + (threadIdx.x & 31)]};
  quantize_q8_0_act_warp<1>(v, y + b);
}

// One warp per 256-element block.
__global__ void quantize_q8_k_kernel(const float* __restrict__ x, BlockQ8_K* __restrict__ y, int64_t nblocks) {
  pdl_enter();
  const int64_t b = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (b >= nblocks) return;
  const float* xb = x + b * QK_K + 8 * (threadIdx.x & 31);
  float v[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = xb[j];
  quantize_q8_k_warp(v, y + b);
}

// ---------------------------------------------------------------------------------------
// Random weights on the device (benchmarks, large tests): random bytes, then every scale
// field set to a finite value of realistic size so that no block holds NaN/inf.
// ---------------------------------------------------------------------------------------
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ uint16_t rand_half(uint64_t h, float lo, float hi) {
  const float u = float(h >> 40) * (1.0f / 16777216.0f);
  return __half_as_ushort(__float2half_rn(lo + (hi - lo) * u));
}

__global__ void fill_kernel(int type, uint8_t* w, int64_t nblocks, int bb, uint64_t seed) {
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < nblocks;
       b += int64_t(gridDim.x) * blockDim.x) {
    uint8_t* p = w + b * bb;
    const uint64_t base = mix64(seed ^ mix64(uint64_t(b)));
    for (int i = 0; i < bb; i += 8) {
      const uint64_t r = mix64(base + uint64_t(i));
      for (int j = 0; j < 8 && i + j < bb; ++j) p[i + j] = uint8_t(r >> (8 * j));
    }
    const uint64_t h = mix64(base ^ 0x5555);
    auto put16 = [&](int off, uint16_t v) {
      p[off] = uint8_t(v);
      p[off + 1] = uint8_t(v >> 8);
    };
    switch (type) {
      case int(GgmlType::Q8_0): put16(0, rand_half(h, 0.5e-3f, 2e-3f)); break;
      case int(GgmlType::Q2_K):
        put16(80, rand_half(h, 0.5e-3f, 2e-3f));
        put16(82, rand_half(mix64(h), 0.5e-3f, 2e-3f));
        break;
      case int(GgmlType::Q4_K):
        put16(0, rand_half(h, 0.5e-3f, 2e-3f));
        put16(2, rand_half(mix64(h), 0.5e-3f, 2e-3f));
        break;
      case int(GgmlType::IQ2_XXS): put16(0, rand_half(h, 0.5e-3f, 2e-3f)); break;
      case int(GgmlType::MXFP4): p[0] = uint8_t(119 + (h >> 62)); break;
      case int(GgmlType::F32):
        for (int j = 0; j < 4; ++j) {
          const float f = (float((mix64(h + j) >> 40)) * (1.0f / 16777216.0f) - 0.5f) * 0.1f;
          const uint32_t u = __float_as_uint(f);
          for (int k = 0; k < 4; ++k) p[4 * j + k] = uint8_t(u >> (8 * k));
        }
        break;
      case int(GgmlType::F16):
        for (int j = 0; j < 8; ++j) put16(2 * j, rand_half(mix64(h + j), -0.05f, 0.05f));
        break;
      case int(GgmlType::BF16):
        for (int j = 0; j < 8; ++j) {
          const float f = (float((mix64(h + j) >> 40)) * (1.0f / 16777216.0f) - 0.5f) * 0.1f;
          put16(2 * j, uint16_t(__float_as_uint(f) >> 16));
        }
        break;
      default: break;
    }
  }
}

// Calls f(K{}) with the decoder of a matvec weight type (nothing for other types: the host
// side has rejected them).
template <class F>
void with_kernel(GgmlType type, F&& f) {
  switch (type) {
    case GgmlType::F32: return f(KF32{});
    case GgmlType::F16: return f(KHalf<false>{});
    case GgmlType::BF16: return f(KHalf<true>{});
    default: return with_expert_kernel(type, f);
  }
}

}  // namespace

int product_row_split(int64_t nrows, int64_t ngroups) { return choose_split(nrows, ngroups); }

void launch_quantize_q8_0_act(const float* x, void* act, int64_t nblocks, void* stream) {
  if (nblocks == 0) return;
  DS4_CUDA_CHECK(launch_pdl(quantize_q8_0_act_kernel, unsigned((nblocks + kWarps - 1) / kWarps), kThreads, 0,
                             static_cast<cudaStream_t>(stream), x, static_cast<BlockQ8_0Act*>(act), nblocks));
}

void launch_quantize_q8_k(const float* x, void* act, int64_t nblocks, void* stream) {
  if (nblocks == 0) return;
  DS4_CUDA_CHECK(launch_pdl(quantize_q8_k_kernel, unsigned((nblocks + kWarps - 1) / kWarps), kThreads, 0,
                             static_cast<cudaStream_t>(stream), x, static_cast<BlockQ8_K*>(act), nblocks));
}

void launch_matvec(GgmlType type, const void* w, int64_t nrows, int64_t ncols, const void* act, float* y,
                   void* stream) {
  if (nrows == 0) return;
  with_kernel(type, [&](auto k) { matvec_t<decltype(k)>(w, nrows, ncols, act, y, stream); });
}

void launch_matvec_grouped(GgmlType type, const void* w, int64_t nrows, int64_t ncols, int64_t n_groups,
                           const void* act, size_t act_stride, float* y, void* stream) {
  if (nrows == 0) return;
  with_kernel(type, [&](auto k) { grouped_t<decltype(k)>(w, nrows, ncols, n_groups, act, act_stride, y, stream); });
}

void launch_matvec_parts(GgmlType type, int64_t ncols, const MatvecPart* parts, int n_parts, const void* act,
                         void* stream) {
  with_kernel(type, [&](auto k) { parts_t<decltype(k)>(ncols, parts, n_parts, act, stream); });
}

void launch_moe_gate_up(GgmlType type, const void* gate, const void* up, int64_t n_embd, int64_t n_ff,
                        const int32_t* ids, const float* route_w, int n_used, float limit, const void* act,
                        float* h, void* stream) {
  with_expert_kernel(type, [&](auto k) {
    gate_up_t<decltype(k)>(gate, up, n_embd, n_ff, ids, route_w, n_used, limit, act, h, stream);
  });
}

void launch_moe_down(GgmlType type, const void* down, int64_t n_embd, int64_t n_ff, const int32_t* ids,
                     int n_used, const void* act_h, float* y, void* stream) {
  with_expert_kernel(type, [&](auto k) {
    using K = decltype(k);
    const size_t act_rb = K::kQ8K ? size_t(n_ff / QK_K) * sizeof(BlockQ8_K) : size_t(n_ff / QK8_0) * sizeof(BlockQ8_0Act);
    down_t<K>(down, n_embd, n_ff, ids, n_used, act_h, act_rb, y, stream);
  });
}

bool moe_fused_fits(const MoeShape& s, bool has_shared, int64_t shared_ff) {
  FusedMoe m{};
  m.s = s;
  m.has_shared = has_shared;
  m.shared.n_ff = shared_ff;
  // Whole 256-value spans for the in-kernel quantizers; the shared gate/up rows in two halves
  // of whole 16-byte groups.
  bool ok = s.n_embd % 256 == 0 && s.n_ff % 256 == 0 && (!has_shared || shared_ff % 256 == 0) &&
            rows_aligned<KQ8_0>(s.n_embd, 2);
  size_t smem = 0;
  bool typed = false;
  with_expert_kernel(s.gate_up_type, [&](auto k) {
    ok = ok && rows_aligned<decltype(k)>(s.n_embd);
    smem = std::max(smem, fused_gate_up_smem<decltype(k)>(m));
    with_expert_kernel(s.down_type, [&](auto kd) {
      ok = ok && rows_aligned<decltype(kd)>(s.n_ff);
      smem = std::max(smem, fused_down_smem<decltype(kd)>(m));
      typed = true;
    });
  });
  constexpr size_t kStaticSmem = 3 * 1024;  // the IQ2_XXS tables
  return typed && ok && smem + kStaticSmem <= size_t(smem_optin());
}

void launch_moe_fused(const FusedMoe& m, void* stream) {
  with_expert_kernel(m.s.gate_up_type, [&](auto kg) {
    with_expert_kernel(m.s.down_type, [&](auto kd) { moe_fused_t<decltype(kg), decltype(kd)>(m, stream); });
  });
}

void launch_fill_random(GgmlType type, void* w, int64_t nrows, int64_t ncols, uint64_t seed, void* stream) {
  int bb = 0, be = 1;
  switch (type) {
    case GgmlType::Q8_0: bb = KQ8_0::BB; be = KQ8_0::BE; break;
    case GgmlType::Q2_K: bb = KQ2_K::BB; be = KQ2_K::BE; break;
    case GgmlType::Q4_K: bb = KQ4_K::BB; be = KQ4_K::BE; break;
    case GgmlType::IQ2_XXS: bb = KIQ2_XXS::BB; be = KIQ2_XXS::BE; break;
    case GgmlType::MXFP4: bb = KMXFP4::BB; be = KMXFP4::BE; break;
    case GgmlType::F32: bb = 16; be = 4; break;
    case GgmlType::F16:
    case GgmlType::BF16: bb = 16; be = 8; break;
    default: return;
  }
  const int64_t nblocks = nrows * (ncols / be);
  if (nblocks == 0) return;
  const int64_t grid = std::min<int64_t>((nblocks + 255) / 256, int64_t(sm_count()) * 32);
  fill_kernel<<<unsigned(grid), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      int(type), static_cast<uint8_t*>(w), nblocks, bb, seed);
  DS4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ds4::cuda::detail
