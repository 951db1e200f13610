// Prefill GEMM kernels (matmul.h). Design, for a compute-bound product of T >= 1 quantized
// activation rows with a quantized weight matrix that must equal the CPU per block:
//  - a CTA computes a 128 (weight rows) x 64 (tokens) tile with 8 warps (4 x 2, each 32 x 32:
//    2 x 4 mma.sync m16n8k32 s8 tiles), stepping through K in stages of 256 elements;
//  - per stage the rows' raw block bytes are copied to shared memory with cp.async (16/8/4-byte
//    words; 17/34/66/84-byte blocks are not 16-byte aligned, so a row's stage may start inside
//    a word), decoded to an int8 tile (+ per-chunk scales), and the int8 activation qs
//    (+ scales, bsums) are copied next to it; tile rows are 256 bytes with their 16-byte
//    units XOR-swizzled by the row so that the ldmatrix fragment loads are bank-conflict free.
//    The next stage's weight bytes and activation tile (double-buffered) are in flight while
//    the current stage's MMAs run: two barriers per stage;
//  - each 32-element chunk is one MMA k-step, giving the exact int32 chunk sum per (row,
//    token); the chunk's integer scale (Q4_K 6-bit sc, IQ2_XXS 2s+1) is applied in int32,
//    Q2_K's 4-bit sub-block scales are folded into the int8 weights (sc*q <= 45), and the
//    float block scales are applied once per block as the CPU's vec_dot does (Q8_0/MXFP4:
//    one 32-block per chunk). The K-quant min term sum_s m_s*bsums_s is an f16 m16n8k16 MMA
//    of small integers (|m| <= 63, |bsums| <= 2048, exact in f16; sums < 2^24, exact in f32).
// Two CTAs fit per SM (at most about 110 KB of shared memory each), so one CTA's decode
// overlaps the other's MMAs. A warp-specialized variant (mm_kernel_ws, opt-in) gives the same
// bits but was slower.
// Measurements and the remaining gap: docs/cuda.md, "Prefill GEMMs".
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <mutex>

#include "backend/cuda/block_scales.cuh"
#include "backend/cuda/check.h"
#include "backend/cuda/device_attribute.h"
#include "backend/cuda/kernel_tables.h"
#include "backend/cuda/matmul_launch.h"
#include "backend/cuda/mma.cuh"
#include "quant/block_codecs.h"
#include "quant/blocks.h"
#include "quant/quant.h"

namespace ds4::cuda::detail {
namespace {

constexpr int BM = kMmRows, BN = kMmTokens, BK = 256;
// int8 tile rows are BK = 256 bytes, unpadded; the 16-byte unit u of row r is stored at unit
// u ^ (r & 7), so the 8 rows of one ldmatrix 8x8 matrix land in 8 distinct bank groups.
__device__ __forceinline__ int swz(int r, int unit) { return r * BK + ((unit ^ (r & 7)) << 4); }
// CTA tile shapes of mm_kernel: kRows weight rows x kTokens tokens, computed by warps of 32 x 32
// (kWarpRows of them along the rows, a power of two), kMinBlocks CTAs per SM. Every output is
// the same chain of operations in any shape (a warp's tile only decides which outputs it
// holds), so all shapes give the same bits.
template <int kR, int kT, int kMin>
struct TileShape {
  static constexpr int kRows = kR, kTokens = kT, kMinBlocks = kMin;
  static constexpr int kWarpRows = kR / 32, kThreads = 32 * kWarpRows * (kT / 32);
  static constexpr int kWarpRowsLog2 = kWarpRows == 4 ? 2 : kWarpRows == 2 ? 1 : 0;
  static_assert(kR % 32 == 0 && kT % 32 == 0 && (1 << kWarpRowsLog2) == kWarpRows, "32 x 32 warp tiles");
};
// 128 x 64, 8 warps, two CTAs per SM: every plan (the grouped MoE tiles hold at most kMmTokens).
using TileStd = TileShape<BM, BN, 2>;
// Plain Q8_0 / MXFP4 products of many tokens (wide_tile_serves): 128 x 128, 16 warps, one CTA
// per SM (Q8_0 ~146 KiB of shared memory). The same 16 warps per SM as two TileStd CTAs, but
// each weight stage is copied and decoded once for 128 tokens and each activation stage
// copied once for 128 rows: half the copy + decode work per MMA. Measured on an H200
// (ds4-bench-cuda --prefill): q_b / o_a / o_b / shared expert at T = 2048 8-11% faster;
// slower where its tiles leave SMs idle (64 tiles: +33%), hence kWideMinTileShareNum/Den.
// (64 x 128 with 8 warps and two CTAs per SM, halving only the decode, was as fast as TileStd.)
using TileWide = TileShape<128, 128, 1>;
constexpr int64_t kWideMinTokens = 512;
// TileWide only when its tiles cover at least 3/4 of the SMs (one CTA each).
constexpr int kWideMinTileShareNum = 3, kWideMinTileShareDen = 4;

constexpr int SS = 9;        // stride of the per-chunk scale arrays (conflict-free)
constexpr int MS = 24;       // halves per row of the min / bsum tiles (conflict-free f16 fragments)

__device__ uint64_t g_grid[256];
__device__ uint64_t g_sign_mask[128];
__constant__ uint32_t c_mxfp4[4];

void init_tables() {
  static std::once_flag once;
  std::call_once(once, [] {
    uint64_t masks[128];
    iq2xxs_sign_masks(masks);
    uint32_t mx[4];
    mxfp4_values_packed(mx);
    DS4_CUDA_CHECK(cudaMemcpyToSymbol(g_grid, quant::iq2xxs_grid(), sizeof(g_grid)));
    DS4_CUDA_CHECK(cudaMemcpyToSymbol(g_sign_mask, masks, sizeof(masks)));
    DS4_CUDA_CHECK(cudaMemcpyToSymbol(c_mxfp4, mx, sizeof(mx)));
  });
}

__device__ __forceinline__ float f16(const uint8_t* p) {
  return __half2float(__ushort_as_half(uint16_t(p[0] | (p[1] << 8))));
}
__device__ __forceinline__ uint32_t ld2x2(const uint8_t* p) {
  const uint16_t* q = reinterpret_cast<const uint16_t*>(p);
  return uint32_t(q[0]) | (uint32_t(q[1]) << 16);
}
__device__ __forceinline__ uint32_t ld4(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t ld1x4(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}


// 8 nibbles of q looked up in the 16-entry int8 table t (low nibbles -> .x, high -> .y).
__device__ __forceinline__ uint2 lookup16(uint32_t q, const uint32_t t[4]) {
  uint32_t tmp[2];
  const uint32_t sel_hi = 0x32103210u | ((q & 0x88888888u) >> 1);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const uint32_t sh = 16 * i;
    const uint32_t lo = __byte_perm(t[0], t[1], q >> sh);
    const uint32_t hi = __byte_perm(t[2], t[3], q >> sh);
    tmp[i] = __byte_perm(lo, hi, sel_hi >> sh);
  }
  return make_uint2(__byte_perm(tmp[0], tmp[1], 0x6420), __byte_perm(tmp[0], tmp[1], 0x7531));
}


// ---------------------------------------------------------------------------------------
// Weight decoders. decode(raw, j, w, fsc, isc): chunk j (32 elements) of the stage's raw
// bytes of one row -> 8 words of int8 weights, its float scale (kFloatChunk) or integer
// scale (kIntChunk). meta(raw, d, dmin): the per-block floats of the K-quants (one block per
// stage); mins(raw, j, m0, m1): the min codes of sub-blocks 2j, 2j+1 of the 16-entry
// min tile (Q4_K's 8 mins are duplicated to line up with the 16 bsums).
// ---------------------------------------------------------------------------------------
enum ChunkKind { kFloatChunk, kIntChunk, kFolded };
struct Tabs {
  const uint64_t* grid;
  const uint64_t* signs;
};

struct DQ8_0 {
  static constexpr int BB = 34, BE = 32, kKind = kFloatChunk, VW = 16;
  static constexpr bool kMins = false, kTables = false;
  __device__ static void decode(const uint8_t* raw, int j, uint32_t w[8], float& fsc, int&, const Tabs&) {
    const uint8_t* b = raw + BB * j;
    fsc = f16(b);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = ld2x2(b + 2 + 4 * i);
  }
};

struct DMXFP4 {
  static constexpr int BB = 17, BE = 32, kKind = kFloatChunk, VW = 8;
  static constexpr bool kMins = false, kTables = false;
  __device__ static void decode(const uint8_t* raw, int j, uint32_t w[8], float& fsc, int&, const Tabs&) {
    const uint8_t* b = raw + BB * j;
    const uint32_t t[4] = {c_mxfp4[0], c_mxfp4[1], c_mxfp4[2], c_mxfp4[3]};
    fsc = mxfp4_scale(b[0]);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint2 v = lookup16(ld1x4(b + 1 + 4 * i), t);
      w[i] = v.x;      // elements 4i..4i+3 (low nibbles)
      w[4 + i] = v.y;  // elements 16+4i.. (high nibbles)
    }
  }
};

struct DQ2_K {  // element e = 32 j + i: q = (qs[32 (j/4) + i] >> 2 (j%4)) & 3, sub-block 2j + i/16
  static constexpr int BB = 84, BE = 256, kKind = kFolded, VW = 4;
  static constexpr bool kMins = true, kTables = false;
  __device__ static void decode(const uint8_t* raw, int j, uint32_t w[8], float&, int&, const Tabs&) {
    const uint32_t sc0 = raw[2 * j] & 0xF, sc1 = raw[2 * j + 1] & 0xF;
    const uint8_t* q = raw + 16 + 32 * (j >> 2);
    const int shift = 2 * (j & 3);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = ((ld4(q + 4 * i) >> shift) & 0x03030303u) * (i < 4 ? sc0 : sc1);  // <= 45 per byte
  }
  __device__ static void meta(const uint8_t* raw, float& d, float& dmin) {
    d = f16(raw + 80);
    dmin = f16(raw + 82);
  }
  __device__ static void mins(const uint8_t* raw, int j, int& m0, int& m1) {
    m0 = raw[2 * j] >> 4;
    m1 = raw[2 * j + 1] >> 4;
  }
};

struct DQ4_K {  // element e = 32 j + i: nibble (j & 1) of qs[32 (j/2) + i], scale sc_j, min m_j
  static constexpr int BB = 144, BE = 256, kKind = kIntChunk, VW = 16;
  static constexpr bool kMins = true, kTables = false;
  __device__ static void decode(const uint8_t* raw, int j, uint32_t w[8], float&, int& isc, const Tabs&) {
    int m;
    q4k_scale_min(j, raw + 4, isc, m);
    const uint8_t* q = raw + 16 + 32 * (j >> 1);
    const int shift = 4 * (j & 1);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = (ld4(q + 4 * i) >> shift) & 0x0F0F0F0Fu;
  }
  __device__ static void meta(const uint8_t* raw, float& d, float& dmin) {
    d = f16(raw);
    dmin = f16(raw + 2);
  }
  __device__ static void mins(const uint8_t* raw, int j, int& m0, int& m1) {
    int sc;
    q4k_scale_min(j, raw + 4, sc, m0);
    m1 = m0;
  }
};

struct DIQ2_XXS {  // chunk = group g: 4 grid bytes + u32 {4 x 7 sign bits, 4-bit scale}
  static constexpr int BB = 66, BE = 256, kKind = kIntChunk, VW = 4;
  static constexpr bool kMins = false, kTables = true;
  __device__ static void decode(const uint8_t* raw, int j, uint32_t w[8], float&, int& isc, const Tabs& t) {
    const uint32_t a0 = ld2x2(raw + 2 + 8 * j), a1 = ld2x2(raw + 6 + 8 * j);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint64_t gv = t.grid[(a0 >> (8 * k)) & 0xFF];
      const uint64_t m = t.signs[(a1 >> (7 * k)) & 127];
      const uint32_t mlo = uint32_t(m), mhi = uint32_t(m >> 32);
      // (g ^ m) + (m & 1) per byte negates exactly the bytes whose mask is 0xFF: ~g + 1 = -g,
      // and no byte carries into the next (grid bytes are 8..43, so ~g + 1 <= 248). Three
      // integer instructions where __vsub4 is emulated with more.
      w[2 * k] = (uint32_t(gv) ^ mlo) + (mlo & 0x01010101u);
      w[2 * k + 1] = (uint32_t(gv >> 32) ^ mhi) + (mhi & 0x01010101u);
    }
    isc = 2 * int(a1 >> 28) + 1;
  }
  // The CPU's block factor is fp16(d) * d_x * 0.125; a power of two commutes exactly.
  __device__ static void meta(const uint8_t* raw, float& d, float& dmin) {
    d = f16(raw) * 0.125f;
    dmin = 0.0f;
  }
};

// ---------------------------------------------------------------------------------------
// Plans: where a CTA's weight rows, activation rows and outputs are.
// ---------------------------------------------------------------------------------------
struct Tile {
  int64_t m0;   // first weight row
  int64_t n0;   // first token (plain) or slot (grouped)
  int nn;       // valid tokens in the tile
  int64_t e;    // expert
};

template <class S = TileStd>
struct PlainPlanT {
  const uint8_t* w;
  size_t rb;
  int64_t nrows;
  const uint8_t* act;
  size_t arb;
  int64_t T;
  float* y;
  static constexpr bool kGateUp = false;
  __device__ bool tile(Tile& t, unsigned bx, unsigned by) const {
    t.n0 = int64_t(bx) * S::kTokens;
    t.m0 = int64_t(by) * S::kRows;
    t.nn = int(std::min<int64_t>(S::kTokens, T - t.n0));
    t.e = 0;
    return true;
  }
  __device__ const uint8_t* wrow(const Tile& t, int a) const {
    const int64_t r = t.m0 + a;
    return r < nrows ? w + size_t(r) * rb : nullptr;
  }
  __device__ const uint8_t* arow(const Tile& t, int n) const { return act + size_t(t.n0 + n) * arb; }
  __device__ void store(const Tile& t, int a, int n, float v) const {
    const int64_t r = t.m0 + a;
    if (r < nrows && n < t.nn) y[size_t(t.n0 + n) * size_t(nrows) + size_t(r)] = v;
  }
};

// Gate and up rows interleaved in the A tile: warp row block wm (32 rows) holds 16 gate rows
// (m-tile 0) and the same 16 up rows (m-tile 1), so one thread holds g and u of the same
// (row, token) and SwiGLU runs in registers.
struct GateUpPlan {
  const uint8_t* gate;
  const uint8_t* up;
  size_t rb, slab;
  int64_t n_ff;
  const uint8_t* act;
  size_t arb;
  const int32_t* ctrl;
  const int4* tiles;
  const int32_t* slot_token;
  const float* slot_w;
  float* h;
  float limit;
  static constexpr bool kGateUp = true;
  __device__ bool tile(Tile& t, unsigned bx, unsigned by) const {
    if (int(by) >= __ldg(ctrl)) return false;
    const int4 d = tiles[by];
    t.e = d.x;
    t.n0 = d.y;
    t.nn = d.z;
    t.m0 = int64_t(bx) * (BM / 2);
    return true;
  }
  __device__ const uint8_t* wrow(const Tile& t, int a) const {
    const int64_t r = t.m0 + (a >> 5) * 16 + (a & 15);
    if (r >= n_ff) return nullptr;
    return ((a & 16) ? up : gate) + size_t(t.e) * slab + size_t(r) * rb;
  }
  __device__ const uint8_t* arow(const Tile& t, int n) const {
    return act + size_t(__ldg(slot_token + t.n0 + n)) * arb;
  }
  __device__ void store_pair(const Tile& t, int lrow, int n, float g, float u) const {
    const int64_t r = t.m0 + lrow;
    if (r >= n_ff || n >= t.nn) return;
    g = fminf(g, limit);                 // gate: upper clamp only (architecture.md 3.5.2)
    u = fminf(fmaxf(u, -limit), limit);  // up: both sides
    const float silu = g / (1.0f + expf(-g));
    const int64_t slot = t.n0 + n;
    h[size_t(slot) * size_t(n_ff) + size_t(r)] = (silu * u) * __ldg(slot_w + slot);
  }
};

struct DownPlan {
  const uint8_t* down;
  size_t rb, slab;
  int64_t n_embd;
  const uint8_t* act;  // one row per slot
  size_t arb;
  const int32_t* ctrl;
  const int4* tiles;
  float* z;
  static constexpr bool kGateUp = false;
  __device__ bool tile(Tile& t, unsigned bx, unsigned by) const {
    if (int(by) >= __ldg(ctrl)) return false;
    const int4 d = tiles[by];
    t.e = d.x;
    t.n0 = d.y;
    t.nn = d.z;
    t.m0 = int64_t(bx) * BM;
    return true;
  }
  __device__ const uint8_t* wrow(const Tile& t, int a) const {
    const int64_t r = t.m0 + a;
    return r < n_embd ? down + size_t(t.e) * slab + size_t(r) * rb : nullptr;
  }
  __device__ const uint8_t* arow(const Tile& t, int n) const { return act + size_t(t.n0 + n) * arb; }
  __device__ void store(const Tile& t, int a, int n, float v) const {
    const int64_t r = t.m0 + a;
    if (r < n_embd && n < t.nn) z[size_t(t.n0 + n) * size_t(n_embd) + size_t(r)] = v;
  }
};

// ---------------------------------------------------------------------------------------
// Tensor-core primitives (smem_addr, ldmatrix_x4 and mma_f16: mma.cuh).
// ---------------------------------------------------------------------------------------
// d = a b + {c, c, c, c}: a separate accumulator input, so a constant start costs nothing per MMA.
__device__ __forceinline__ void mma_s8_c(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], int c) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c));
}

__device__ __forceinline__ void mma_s8(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Pointers to one stage's tiles in shared memory: the decoded weights (int8, swizzled, with
// their chunk and block scales and min codes) and the activation tile (qs, scales, bsums).
struct StageTiles {
  uint8_t* a;    // [BM][BK] int8 weights, swizzled (swz)
  uint8_t* wsc;  // [BM][SS] f32 or int chunk scales
  float* wd;     // [BM] block d (K-quants)
  float* wdm;    // [BM] block dmin (K-quants)
  __half* mn;    // [BM][MS] min codes (Q2_K, Q4_K)
  uint8_t* b;    // [BN][BK] int8 activation qs, swizzled
  float* xsc;    // [BN][SS] activation scales
  uint8_t* bs;   // [BN][MS] int16 bsums (Q2_K, Q4_K)
};

// Shared-memory layout of one CTA of mm_kernel (bytes). One raw stage buffer: the next stage's
// weight bytes are copied (cp.async) while the current stage's MMAs run. The activation tile
// (qs, scales, bsums) is double-buffered: stage s+1's copy is issued together with the
// weights, before stage s's MMAs, so its L2 latency is hidden too. Arrays a type does not use
// take no room (Q8_0 must stay under ~113 KB for two CTAs per SM).
template <class K, class S = TileStd>
struct Smem {
  static constexpr int BM = S::kRows, BN = S::kTokens;
  static constexpr bool kKq = K::BE == 256;
  static constexpr int SB = (BK / K::BE) * K::BB;      // raw bytes of one full stage of a row
  static constexpr int RS = (SB + 16 + 15) / 16 * 16;   // raw row stride (room for a start offset)
  static constexpr int A = 0;                           // [BM][BK] int8, swizzled (swz)
  static constexpr int B = A + BM * BK;                 // 2 x [BN][BK] int8, swizzled
  static constexpr int BBUF = BN * BK;
  static constexpr int RAW = B + 2 * BBUF;
  static constexpr int WSC = RAW + BM * RS;             // [BM][SS] f32 or int chunk scales
  static constexpr int XSC = WSC + BM * SS * 4;         // 2 x [BN][SS] f32 activation scales
  static constexpr int XBUF = BN * SS * 4;
  static constexpr int WD = XSC + 2 * XBUF;             // [BM] f32 block d
  static constexpr int WDM = WD + (kKq ? BM * 4 : 0);   // [BM] f32 block dmin
  static constexpr int MIN = WDM + (kKq ? BM * 4 : 0);  // [BM][MS] f16 min codes
  static constexpr int BS = MIN + (K::kMins ? BM * MS * 2 : 0);  // 2 x [BN][MS] int16 bsums
  static constexpr int SBUF = BN * MS * 2;
  static constexpr int DELTA = BS + (K::kMins ? 2 * SBUF : 0);  // [BM] int: raw row start offsets
  static constexpr int GRID = DELTA + BM * 4;           // IQ2_XXS tables
  static constexpr int SIGN = GRID + (K::kTables ? 256 * 8 : 0);
  static constexpr int BYTES = SIGN + (K::kTables ? 128 * 8 : 0);
  // The single weight tile with activation buffer buf.
  __device__ static StageTiles tiles(uint8_t* sm, int buf) {
    return {sm + A,
            sm + WSC,
            reinterpret_cast<float*>(sm + WD),
            reinterpret_cast<float*>(sm + WDM),
            reinterpret_cast<__half*>(sm + MIN),
            sm + B + buf * BBUF,
            reinterpret_cast<float*>(sm + XSC + buf * XBUF),
            sm + BS + buf * SBUF};
  }
};

__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async8(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
// All but the most recently committed group.
__device__ __forceinline__ void cp_async_wait_one() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }

// Issues the copies of stage s of every tile row into raw (rows RS bytes apart), NT threads
// with index tid: warp w takes rows w, w + NT/32, ...; the lanes copy vw-byte words covering
// [start, start + bytes) from the aligned word below start (any block alignment works; the
// covering words never leave an aligned word holding a valid byte, so they stay inside the
// allocation). delta[a] records where the stage begins. Tid: see mm_kernel.
template <class K, int NT, class Tid, class S = TileStd>
__device__ __forceinline__ void issue_raw(const uint8_t* const* rows, int s, int bytes, int vw, uint8_t* raw,
                                          int* delta, Tid tid) {
  using L = Smem<K, S>;
  constexpr int BM = S::kRows;
  const int warp = tid >> 5, lane = tid & 31;
  for (int a = warp; a < BM; a += NT / 32) {
    const uint8_t* src = rows[a];
    if (src == nullptr) continue;
    src += size_t(s) * L::SB;
    const int d = int(reinterpret_cast<uintptr_t>(src) & uintptr_t(vw - 1));
    const uint8_t* base = src - d;
    uint8_t* dst = raw + a * L::RS;
    if (lane == 0) delta[a] = d;
    const int nw = (d + bytes + vw - 1) / vw;
    if (vw == 16) {
      for (int w = lane; w < nw; w += 32) cp_async16(dst + 16 * w, base + 16 * w);
    } else if (vw == 8) {
      for (int w = lane; w < nw; w += 32) cp_async8(dst + 8 * w, base + 8 * w);
    } else {
      for (int w = lane; w < nw; w += 32) cp_async4(dst + 4 * w, base + 4 * w);
    }
  }
}

// Fast path of issue_raw when every row start is aligned to K::VW (all DS4 shapes): the
// stage's start offset within an aligned word is the same for every row, and each thread
// takes fixed (row, word) slots, so a stage costs a few instructions per thread.
template <class K, int NT, class Tid, class S = TileStd>
__device__ __forceinline__ void issue_raw_aligned(const uint8_t* const* rows, int s, int bytes, int d, uint8_t* raw,
                                                  Tid tid) {
  using L = Smem<K, S>;
  constexpr int BM = S::kRows;
  constexpr int VW = K::VW;
  constexpr int NWM = L::SB % VW == 0 ? L::SB / VW : L::SB / VW + 2;  // words per row, at most
  const int nw = (d + bytes + VW - 1) / VW;
#pragma unroll 1  // cp.async needs no registers in flight; unrolling only raises register pressure
  for (int i = 0; i < (BM * NWM + NT - 1) / NT; ++i) {
    const int idx = tid + NT * i;
    const int a = idx / NWM, w = idx - a * NWM;
    if (a >= BM || w >= nw) continue;
    const uint8_t* src = rows[a];
    if (src == nullptr) continue;
    src += size_t(s) * L::SB - d + size_t(w) * VW;
    uint8_t* dst = raw + a * L::RS + w * VW;
    if constexpr (VW == 16) cp_async16(dst, src);
    else if constexpr (VW == 8) cp_async8(dst, src);
    else cp_async4(dst, src);
  }
}

// Issues the copies of stage s of the activation tile (qs, scales, bsums) into st.b, st.xsc,
// st.bs; rows past the tile's tokens and chunks past the matrix are zeroed instead.
template <class K, int NT, class P, class Tid, class S = TileStd>
__device__ __forceinline__ void issue_act(const P& p, const Tile& t, int s, int nch, const StageTiles& st, Tid tid) {
  constexpr int BN = S::kTokens;
  float* xsc = st.xsc;
  uint8_t* bt = st.b;
#pragma unroll
  for (int i = 0; i < (BN * 8) / NT; ++i) {
    const int u = tid + NT * i, n = u >> 3, j = u & 7;
    // Chunk j of row n = 16-byte units 2j, 2j+1 (swizzled).
    uint32_t* d0 = reinterpret_cast<uint32_t*>(bt + swz(n, 2 * j));
    uint32_t* d1 = reinterpret_cast<uint32_t*>(bt + swz(n, 2 * j + 1));
    if constexpr (K::BE == 32) {
      if (n < t.nn && j < nch) {
        const uint8_t* blk = p.arow(t, n) + size_t(s * 8 + j) * sizeof(BlockQ8_0Act);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          cp_async4(d0 + q, blk + 4 + 4 * q);
          cp_async4(d1 + q, blk + 20 + 4 * q);
        }
        cp_async4(xsc + n * SS + j, blk);
      } else {
#pragma unroll
        for (int q = 0; q < 4; ++q) d0[q] = d1[q] = 0;
        xsc[n * SS + j] = 0.0f;
      }
    } else {
      uint32_t* bs = reinterpret_cast<uint32_t*>(st.bs + n * MS * 2);
      if (n < t.nn) {
        const uint8_t* blk = p.arow(t, n) + size_t(s) * sizeof(BlockQ8_K);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          cp_async4(d0 + q, blk + 4 + 32 * j + 4 * q);
          cp_async4(d1 + q, blk + 20 + 32 * j + 4 * q);
        }
        if (j == 0) cp_async4(xsc + n * SS, blk);
        if constexpr (K::kMins) cp_async4(bs + j, blk + 4 + QK_K + 4 * j);  // bsums 2j, 2j+1
      } else {
#pragma unroll
        for (int q = 0; q < 4; ++q) d0[q] = d1[q] = 0;
        if (j == 0) xsc[n * SS] = 0.0f;
        if constexpr (K::kMins) bs[j] = 0;
      }
    }
  }
}

// float(p) for |p| < 2^22 by the bits of 1.5 * 2^23 + p minus 1.5 * 2^23 (I2F is quarter
// rate); the chunk sums are at most 32 * 127 * 128 in magnitude.
constexpr int kMagicBits = 0x4B400000;  // 1.5 * 2^23
constexpr float kMagic = 12582912.0f;

// Two int16 bsums -> two halves (exact: |bsum| <= 2048).
__device__ __forceinline__ uint32_t bsums_to_h2(uint32_t w) {
  const __half2 h = __halves2half2(__short2half_rn(short(w & 0xFFFF)), __short2half_rn(short(w >> 16)));
  return *reinterpret_cast<const uint32_t*>(&h);
}

// Elements of stage s (the last stage of a K that is not a multiple of BK is shorter).
__device__ __forceinline__ int stage_elems(int64_t ncols, int s) {
  return int(std::min<int64_t>(BK, ncols - int64_t(s) * BK));
}
// Start offset of stage s inside its aligned K::VW-byte word (the aligned copy path: the same
// for every row).
template <class K>
__device__ __forceinline__ int stage_start(int s) {
  return int((size_t(s) * Smem<K>::SB) % K::VW);
}

// The IQ2_XXS tables copied to shared memory by the NT threads of the CTA (no-op otherwise).
template <class K, int NT>
__device__ __forceinline__ Tabs load_tables(uint8_t* grid, uint8_t* sign, int tid) {
  if constexpr (!K::kTables) {
    return Tabs{nullptr, nullptr};
  } else {
    uint64_t* gs = reinterpret_cast<uint64_t*>(grid);
    uint64_t* ss = reinterpret_cast<uint64_t*>(sign);
    for (int i = tid; i < 256; i += NT) gs[i] = g_grid[i];
    for (int i = tid; i < 128; i += NT) ss[i] = g_sign_mask[i];
    return Tabs{gs, ss};
  }
}

// Decodes the stage's raw bytes (raw: rows RS bytes apart; the stage of row a starts at d, the
// same for every row on the aligned path (vw == 0), else at delta[a]) into st's weight tile
// and scales; NT threads with index tid, unit (row a, chunk j) each.
template <class K, int NT, class S = TileStd>
__device__ __forceinline__ void decode_stage(const uint8_t* const* rows, const uint8_t* raw, const int* delta, int vw,
                                             int d, int nch, const Tabs& tabs, const StageTiles& st, int tid) {
  using L = Smem<K, S>;
  constexpr int BM = S::kRows;
#pragma unroll
  for (int i = 0; i < (BM * 8) / NT; ++i) {
    const int u = tid + NT * i, a = u >> 3, j = u & 7;
    uint32_t w[8];
    float fsc = 0.0f;
    int isc = 0;
    const bool ok = rows[a] != nullptr && j < nch;
    const uint8_t* rr = raw + a * L::RS + (rows[a] == nullptr ? 0 : vw == 0 ? d : delta[a]);
    if (ok) {
      K::decode(rr, j, w, fsc, isc, tabs);
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q) w[q] = 0;
    }
    *reinterpret_cast<uint4*>(st.a + swz(a, 2 * j)) = make_uint4(w[0], w[1], w[2], w[3]);
    *reinterpret_cast<uint4*>(st.a + swz(a, 2 * j + 1)) = make_uint4(w[4], w[5], w[6], w[7]);
    if constexpr (K::kKind == kFloatChunk) reinterpret_cast<float*>(st.wsc)[a * SS + j] = fsc;
    if constexpr (K::kKind == kIntChunk) reinterpret_cast<int*>(st.wsc)[a * SS + j] = isc;
    if constexpr (K::BE == 256) {
      if (j == 0) {
        float bd = 0.0f, bdmin = 0.0f;
        if (ok) K::meta(rr, bd, bdmin);
        st.wd[a] = bd;
        st.wdm[a] = bdmin;
      }
    }
    if constexpr (K::kMins) {
      int m0 = 0, m1 = 0;
      if (ok) K::mins(rr, j, m0, m1);
      __half* mn = st.mn + a * MS;
      mn[2 * j] = __int2half_rn(m0);
      mn[2 * j + 1] = __int2half_rn(m1);
    }
  }
}

// Accumulators of one MMA warp (32 rows x 32 tokens): acc holds the float sums, bi the
// current K-quant block's int32 sums.
struct WarpAcc {
  float acc[2][4][4];
  int bi[2][4][4];
  __device__ void zero() {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int v = 0; v < 4; ++v) {
          acc[mt][nt][v] = 0.0f;
          bi[mt][nt][v] = 0;
        }
  }
};

// The MMAs of one stage for MMA warp `warp` (TileStd: 0..7, rows 32 (warp & 3), tokens 32 (warp >> 2);
// in general rows 32 (warp mod kWarpRows), tokens 32 (warp / kWarpRows)).
// kSkip: n-tiles (8 tokens) at or past `live` hold no token of the tile and are skipped (their
// outputs are never stored); without it every n-tile is multiplied.
template <class K, bool kSkip, class S = TileStd>
__device__ __forceinline__ void mma_stage(const StageTiles& st, int nch, int live, int warp, WarpAcc& wa) {
  const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int wm = warp & (S::kWarpRows - 1), wn = warp >> S::kWarpRowsLog2;
  auto& acc = wa.acc;
  auto& bi = wa.bi;
  const uint8_t* As = st.a;
  const uint8_t* Bs = st.b;
  const float* wsc = reinterpret_cast<const float*>(st.wsc);
  const int* isc = reinterpret_cast<const int*>(st.wsc);
  const float* xsc = st.xsc;
  auto mma_chunk = [&](int j) {
    // ldmatrix: A (16 rows x 32 bytes) as four 8x8 b16 matrices {rows 0-7, 8-15} x {bytes
    // 0-15, 16-31} gives exactly the m16n8k32 s8 A fragment; B likewise two n-tiles at once.
    uint32_t af[2][4], bf[4][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
      ldmatrix_x4(af[mt], As + swz(wm * 32 + mt * 16 + (lane & 15), 2 * j + (lane >> 4)));
#pragma unroll
    for (int np = 0; np < 2; ++np) {
      uint32_t r[4];
      ldmatrix_x4(r, Bs + swz(wn * 32 + np * 16 + (lane & 7) + 8 * (lane >> 4), 2 * j + ((lane >> 3) & 1)));
      bf[2 * np][0] = r[0];
      bf[2 * np][1] = r[1];
      bf[2 * np + 1][0] = r[2];
      bf[2 * np + 1][1] = r[3];
    }
    if constexpr (K::kKind == kFolded) {
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
          if (!kSkip || nt < live) mma_s8(bi[mt][nt], af[mt], bf[nt]);
    } else {
      float ws[2][2], xs[4][2];
      int is[2][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = wm * 32 + mt * 16 + g + 8 * h;
          if constexpr (K::kKind == kFloatChunk) ws[mt][h] = wsc[r * SS + j];
          else is[mt][h] = isc[r * SS + j];
        }
      if constexpr (K::kKind == kFloatChunk) {
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int h = 0; h < 2; ++h) xs[nt][h] = xsc[(wn * 32 + nt * 8 + 2 * c + h) * SS + j];
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          if (kSkip && nt >= live) continue;
          int pp[4];
          // Float chunks: the MMA starts from the bits of 1.5 * 2^23, so pp holds the f32
          // 1.5 * 2^23 + sum exactly (|sum| < 2^22) and one subtraction gives float(sum)
          // (no integer add, no quarter-rate I2F).
          mma_s8_c(pp, af[mt], bf[nt], K::kKind == kFloatChunk ? kMagicBits : 0);
#pragma unroll
          for (int v = 0; v < 4; ++v) {
            if constexpr (K::kKind == kFloatChunk)
              acc[mt][nt][v] = fmaf(ws[mt][v >> 1] * xs[nt][v & 1], __fsub_rn(__int_as_float(pp[v]), kMagic),
                                    acc[mt][nt][v]);
            else
              bi[mt][nt][v] += is[mt][v >> 1] * pp[v];
          }
        }
    }
  };
  // Float chunks (Q8_0, MXFP4): two chunks per iteration let one chunk's fragment loads
  // overlap the other's MMAs and scaling (measured +4-5%; 128 registers, 8 bytes spilled);
  // the integer-scale and folded types spill up to 132 bytes when unrolled (-5 to -15%).
  if constexpr (K::kKind == kFloatChunk) {
#pragma unroll 2
    for (int j = 0; j < nch; ++j) mma_chunk(j);
  } else {
#pragma unroll 1
    for (int j = 0; j < nch; ++j) mma_chunk(j);
  }

  // K-quants: one block per stage; apply d (and the min term) once per block.
  if constexpr (K::BE == 256) {
    float msum[2][4][4];
    if constexpr (K::kMins) {
      const __half* mn = st.mn;
      const uint8_t* bsm = st.bs;
      uint32_t am[2][4], bm[4][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const uint32_t* r0 = reinterpret_cast<const uint32_t*>(mn + (wm * 32 + mt * 16 + g) * MS);
        const uint32_t* r1 = reinterpret_cast<const uint32_t*>(mn + (wm * 32 + mt * 16 + g + 8) * MS);
        am[mt][0] = r0[c];
        am[mt][1] = r1[c];
        am[mt][2] = r0[c + 4];
        am[mt][3] = r1[c + 4];
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const uint32_t* r0 = reinterpret_cast<const uint32_t*>(bsm + (wn * 32 + nt * 8 + g) * MS * 2);
        bm[nt][0] = bsums_to_h2(r0[c]);
        bm[nt][1] = bsums_to_h2(r0[c + 4]);
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          float z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
          mma_f16(z, am[mt], bm[nt]);
#pragma unroll
          for (int v = 0; v < 4; ++v) msum[mt][nt][v] = z[v];
        }
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = wm * 32 + mt * 16 + g + 8 * h;
        const float d = st.wd[r], dm = st.wdm[r];
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int q = 0; q < 2; ++q) {
            const float dx = xsc[(wn * 32 + nt * 8 + 2 * c + q) * SS];
            const int v = 2 * h + q;
            float term = (dx * d) * float(bi[mt][nt][v]);
            if constexpr (K::kMins) term -= (dx * dm) * msum[mt][nt][v];
            acc[mt][nt][v] += term;
            bi[mt][nt][v] = 0;
          }
      }
  }
}

// 8-token n-tiles of MMA warp `warp`'s 32 tokens that hold a token of the tile.
__device__ __forceinline__ int live_ntiles(const Tile& t, int warp) {
  return std::min(4, std::max(0, (t.nn - 32 * (warp >> 2) + 7) / 8));
}

// Writes MMA warp `warp`'s outputs through the plan.
template <class P, class S = TileStd>
__device__ __forceinline__ void store_tile(const P& p, const Tile& t, int warp, const WarpAcc& wa) {
  const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int wm = warp & (S::kWarpRows - 1), wn = warp >> S::kWarpRowsLog2;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const int n = wn * 32 + nt * 8 + 2 * c + (v & 1);
      if constexpr (P::kGateUp) {
        p.store_pair(t, wm * 16 + g + 8 * (v >> 1), n, wa.acc[0][nt][v], wa.acc[1][nt][v]);
      } else {
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) p.store(t, wm * 32 + mt * 16 + g + 8 * (v >> 1), n, wa.acc[mt][nt][v]);
      }
    }
}

// vw: 0 when every row start is aligned to K::VW (issue_raw_aligned), else the copy width of
// the general path (issue_raw).
// Tid: the type of the thread index given to the copy helpers (issue_raw*, issue_act); the
// values are the same either way, only the code differs. unsigned (threadIdx.x's own type, as
// these loops had it before the helper split; Q8_0 and MXFP4, plain and down plans, see
// launch_mm): ptxas then schedules the Q8_0 plain kernel's MMA loop as it did at 24f1e2d
// (2-chunk body: 265 instructions, 438 stall cycles by the control bits, no spill; with int
// 269, 458 and an 8-byte spill, the build that read 2-4% slower). int: everything else, and
// all with DS4_CUDA_NO_GEMM_UNSIGNED_TID=1.
// S: the CTA tile shape (TileStd, or a wide one for plain products of many tokens: launch_mm).
template <class K, class P, class Tid, class S>
__global__ void __launch_bounds__(S::kThreads, S::kMinBlocks) mm_kernel(P p, int64_t ncols, int vw) {
  extern __shared__ __align__(16) uint8_t sm[];
  using L = Smem<K, S>;
  constexpr int BM = S::kRows, kThreads = S::kThreads;
  Tile t;
  if (!p.tile(t, blockIdx.x, blockIdx.y)) return;
  const int tid = threadIdx.x;
  const Tid copy_tid = Tid(threadIdx.x);

  __shared__ const uint8_t* rows[BM];
  for (int a = tid; a < BM; a += kThreads) rows[a] = p.wrow(t, a);
  const Tabs tabs = load_tables<K, kThreads>(sm + L::GRID, sm + L::SIGN, tid);
  int* delta = reinterpret_cast<int*>(sm + L::DELTA);

  WarpAcc wa;
  wa.zero();

  const int nstages = int((ncols + BK - 1) / BK);
  auto raw_copy = [&](int s) {
    const int bytes = (stage_elems(ncols, s) / K::BE) * K::BB;
    if (vw == 0) issue_raw_aligned<K, kThreads, Tid, S>(rows, s, bytes, stage_start<K>(s), sm + L::RAW, copy_tid);
    else issue_raw<K, kThreads, Tid, S>(rows, s, bytes, vw, sm + L::RAW, delta, copy_tid);
  };
  __syncthreads();  // rows[]
  raw_copy(0);
  issue_act<K, kThreads, P, Tid, S>(p, t, 0, stage_elems(ncols, 0) / 32, L::tiles(sm, 0), copy_tid);
  cp_async_commit();

  for (int s = 0; s < nstages; ++s) {
    const int nch = stage_elems(ncols, s) / 32;
    const int buf = s & 1;
    cp_async_wait_all();
    __syncthreads();  // stage s landed for every thread; the previous MMAs are done with A and
                      // with activation buffer (s + 1) & 1
    decode_stage<K, kThreads, S>(rows, sm + L::RAW, delta, vw, stage_start<K>(s), nch, tabs, L::tiles(sm, buf), tid);
    __syncthreads();  // A and its scales are ready; the raw buffer is free
    if (s + 1 < nstages) {
      raw_copy(s + 1);
      issue_act<K, kThreads, P, Tid, S>(p, t, s + 1, stage_elems(ncols, s + 1) / 32, L::tiles(sm, buf ^ 1), copy_tid);
      cp_async_commit();
    }
    mma_stage<K, false, S>(L::tiles(sm, buf), nch, 4, tid >> 5, wa);
  }
  store_tile<P, S>(p, t, tid >> 5, wa);
}

// ---------------------------------------------------------------------------------------
// Warp-specialized kernel (opt-in: DS4_CUDA_GEMM_WS=1; measured slower than mm_kernel, see
// gemm_ws_enabled): the copy + decode of a stage overlaps the MMAs of the previous one instead
// of alternating with them between CTA-wide barriers. 8 MMA warps (the tiling of mm_kernel:
// each warp 32 rows x 32 tokens, the same MMAs in the same order, so its results equal
// mm_kernel's bit for bit) and 8 producer warps that copy the raw weight bytes and the
// activations of stage g+1 (raw bytes double-buffered, activation tiles in a ring of
// kSlots + 1) while they decode stage g into a ring of kSlots weight tiles. Hand-off by named
// barriers: full[slot] (producers arrive once the slot's tiles are written, MMA warps wait)
// and empty[slot] (MMA warps arrive once done with it, producers wait before refilling it).
// One CTA per SM (~203 KB for Q8_0). MMA warps skip 8-token n-tiles past the tile's tokens.
// ---------------------------------------------------------------------------------------
constexpr int kMmaThreads = TileStd::kThreads;
// As many producer threads as MMA threads (with 4 producer warps the kernel was slower still).
constexpr int kProducerThreads = 256;
constexpr int kWsThreads = kMmaThreads + kProducerThreads;
constexpr int kSlots = 2;
// Named barrier ids (0 is __syncthreads).
constexpr int kBarFull = 1, kBarEmpty = kBarFull + kSlots, kBarProducers = kBarEmpty + kSlots;

__device__ __forceinline__ void bar_sync(int id, int nthreads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(nthreads) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int nthreads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(nthreads) : "memory");
}

template <class K>
struct SmemWs {
  using L = Smem<K>;
  // A weight slot (kSlots of them): the decoded tile with its scales.
  static constexpr int A = 0;
  static constexpr int WSC = A + BM * BK;
  static constexpr int WD = WSC + BM * SS * 4;
  static constexpr int WDM = WD + (L::kKq ? BM * 4 : 0);
  static constexpr int MIN = WDM + (L::kKq ? BM * 4 : 0);
  static constexpr int ASLOT = MIN + (K::kMins ? BM * MS * 2 : 0);
  // An activation slot (kSlots + 1: stage g+1's copy is issued while stage g - 1's MMAs may
  // still read theirs).
  static constexpr int B = 0;
  static constexpr int XSC = B + BN * BK;
  static constexpr int BS = XSC + BN * SS * 4;
  static constexpr int XSLOT = BS + (K::kMins ? BN * MS * 2 : 0);
  static constexpr int ACT = kSlots * ASLOT;
  // Then two raw stage buffers with their row start offsets, and the IQ2_XXS tables.
  static constexpr int RAW = ACT + (kSlots + 1) * XSLOT;  // 2 x [BM][RS]
  static constexpr int DELTA = RAW + 2 * BM * L::RS;       // 2 x [BM] int
  static constexpr int GRID = DELTA + 2 * BM * 4;
  static constexpr int SIGN = GRID + (K::kTables ? 256 * 8 : 0);
  static constexpr int BYTES = SIGN + (K::kTables ? 128 * 8 : 0);
  static_assert(ASLOT % 16 == 0 && XSLOT % 16 == 0 && L::RS % 16 == 0, "16-byte aligned tiles (ldmatrix, cp.async)");
  // The tiles of stage g (counted over all of the CTA's tiles).
  __device__ static StageTiles tiles(uint8_t* sm, int g) {
    uint8_t* a = sm + (g % kSlots) * ASLOT;
    uint8_t* x = sm + ACT + (g % (kSlots + 1)) * XSLOT;
    return {a + A,
            a + WSC,
            reinterpret_cast<float*>(a + WD),
            reinterpret_cast<float*>(a + WDM),
            reinterpret_cast<__half*>(a + MIN),
            x + B,
            reinterpret_cast<float*>(x + XSC),
            x + BS};
  }
  __device__ static uint8_t* raw(uint8_t* sm, int g) { return sm + RAW + (g & 1) * BM * L::RS; }
  __device__ static int* delta(uint8_t* sm, int g) { return reinterpret_cast<int*>(sm + DELTA) + (g & 1) * BM; }
};

// A CTA runs the tiles blockIdx.x, blockIdx.x + gridDim.x, ... of the gx-wide tile grid (tile
// idx = (idx % gx, idx / gx) in the plan's terms): one tile when the grid covers them all, or,
// persistent (a grid of one CTA per SM), many, the producers running into the next tile's
// stages while the MMA warps finish the current one (no pipeline fill per tile).
template <class K, class P>
__global__ void __launch_bounds__(kWsThreads, 1) mm_kernel_ws(P p, int64_t ncols, int vw, unsigned gx,
                                                              unsigned ntiles) {
  extern __shared__ __align__(16) uint8_t sm[];
  using L = SmemWs<K>;
  auto tile_at = [&](unsigned idx, Tile& t) { return idx < ntiles && p.tile(t, idx % gx, idx / gx); };
  unsigned idx = blockIdx.x;
  Tile t;
  if (!tile_at(idx, t)) return;
  const int tid = threadIdx.x;

  __shared__ const uint8_t* rows[2][BM];  // weight rows of the current and the next tile
  for (int a = tid; a < BM; a += kWsThreads) rows[0][a] = p.wrow(t, a);
  const Tabs tabs = load_tables<K, kWsThreads>(sm + L::GRID, sm + L::SIGN, tid);
  __syncthreads();  // rows[0], tables
  const int nstages = int((ncols + BK - 1) / BK);

  if (tid >= kMmaThreads) {  // producer warps; g counts stages over all of the CTA's tiles
    const int ptid = tid - kMmaThreads;
    auto raw_copy = [&](const uint8_t* const* rws, int s, int g) {
      const int bytes = (stage_elems(ncols, s) / K::BE) * K::BB;
      if (vw == 0) issue_raw_aligned<K, kProducerThreads>(rws, s, bytes, stage_start<K>(s), L::raw(sm, g), ptid);
      else issue_raw<K, kProducerThreads>(rws, s, bytes, vw, L::raw(sm, g), L::delta(sm, g), ptid);
    };
    issue_act<K, kProducerThreads>(p, t, 0, stage_elems(ncols, 0) / 32, L::tiles(sm, 0), ptid);
    raw_copy(rows[0], 0, 0);
    cp_async_commit();
    int g = 0;
    for (int k = 0;; ++k) {
      Tile tn;
      const bool has_next = tile_at(idx + gridDim.x, tn);
      const uint8_t* const* cur = rows[k & 1];
      const uint8_t** nxt = rows[(k + 1) & 1];
      for (int s = 0; s < nstages; ++s, ++g) {
        const StageTiles st = L::tiles(sm, g);
        // The MMA warps are done with stage g - kSlots: its weight slot (now stage g's) and
        // its activation slot (now stage g + 1's) are free.
        if (g >= kSlots) bar_sync(kBarEmpty + g % kSlots, kWsThreads);
        const bool last = s + 1 == nstages;
        if (!last || has_next) {
          // Every producer decoded stage g - 1: its raw buffer is free, and so are the rows of
          // tile k - 1 (now those of tile k + 1).
          bar_sync(kBarProducers, kProducerThreads);
          if (s == 0 && has_next) {
            for (int a = ptid; a < BM; a += kProducerThreads) nxt[a] = p.wrow(tn, a);
            if (last) bar_sync(kBarProducers, kProducerThreads);  // one-stage tiles read them right away
          }
          // Stage g + 1's activations and raw weight bytes.
          const Tile& t1 = last ? tn : t;
          const int s1 = last ? 0 : s + 1;
          issue_act<K, kProducerThreads>(p, t1, s1, stage_elems(ncols, s1) / 32, L::tiles(sm, g + 1), ptid);
          raw_copy(last ? nxt : cur, s1, g + 1);
          cp_async_commit();
          cp_async_wait_one();  // this thread's copies of stage g
        } else {
          cp_async_wait_all();
        }
        bar_sync(kBarProducers, kProducerThreads);  // every producer's copies of stage g landed
        decode_stage<K, kProducerThreads>(cur, L::raw(sm, g), L::delta(sm, g), vw, stage_start<K>(s),
                                          stage_elems(ncols, s) / 32, tabs, st, ptid);
        bar_arrive(kBarFull + g % kSlots, kWsThreads);  // (orders this thread's shared writes for the MMA warps)
      }
      if (!has_next) break;
      t = tn;
      idx += gridDim.x;
    }
    // The MMA warps arrive on empty after every stage: wait for the arrivals the loop did not.
    for (int gg = std::max(0, g - kSlots); gg < g; ++gg) bar_sync(kBarEmpty + gg % kSlots, kWsThreads);
    return;
  }

  // MMA warps.
  const int warp = tid >> 5;
  for (int g = 0;;) {
    const int live = live_ntiles(t, warp);
    WarpAcc wa;
    wa.zero();
    for (int s = 0; s < nstages; ++s, ++g) {
      bar_sync(kBarFull + g % kSlots, kWsThreads);
      mma_stage<K, true>(L::tiles(sm, g), stage_elems(ncols, s) / 32, live, warp, wa);
      bar_arrive(kBarEmpty + g % kSlots, kWsThreads);
    }
    store_tile(p, t, warp, wa);
    idx += gridDim.x;
    if (!tile_at(idx, t)) break;
  }
}

// ---------------------------------------------------------------------------------------
// Float weights (F32/F16/BF16) x f32 activations: f32 FMA on the CUDA cores, 64 x 64 tiles,
// 4 x 4 outputs per thread. The CPU multiplies in f32 too; only the summation order differs.
// ---------------------------------------------------------------------------------------
constexpr int FT = 64, FK = 32;

template <int kType>
__device__ __forceinline__ float load_w(const uint8_t* w, size_t rb, int64_t r, int64_t k) {
  const uint8_t* row = w + size_t(r) * rb;
  if constexpr (kType == int(GgmlType::F32)) return __ldg(reinterpret_cast<const float*>(row) + k);
  const uint16_t bits = __ldg(reinterpret_cast<const unsigned short*>(row) + k);
  if constexpr (kType == int(GgmlType::F16)) return __half2float(__ushort_as_half(bits));
  return __uint_as_float(uint32_t(bits) << 16);
}

template <int kType>
__global__ void __launch_bounds__(256) float_mm_kernel(const uint8_t* w, size_t rb, int64_t nrows, int64_t ncols,
                                                       const float* x, int64_t T, float* y) {
  // [row or token][k], padded: the fills write consecutive k (conflict-free) and the inner
  // loop reads one weight row per half-warp (broadcast) and 16 token rows (2-way at most).
  __shared__ float Ws[FT][FK + 1];
  __shared__ float Xs[FT][FK + 1];
  const int64_t n0 = int64_t(blockIdx.x) * FT, m0 = int64_t(blockIdx.y) * FT;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;  // tokens tx*4.., rows ty*4..
  constexpr int kPer = FT * FK / 256;                      // elements per thread per tile
  float wr[kPer], xr[kPer];
  // The next tile is loaded into registers while the current one is multiplied, so the
  // global latency is paid once per tile in parallel, not once per element.
  auto load = [&](int64_t k0) {
#pragma unroll
    for (int q = 0; q < kPer; ++q) {
      const int i = threadIdx.x + 256 * q, rr = i / FK, kk = i % FK;
      const int64_t r = m0 + rr, k = k0 + kk, n = n0 + rr;
      wr[q] = (r < nrows && k < ncols) ? load_w<kType>(w, rb, r, k) : 0.0f;
      xr[q] = (n < T && k < ncols) ? __ldg(x + size_t(n) * size_t(ncols) + size_t(k)) : 0.0f;
    }
  };
  float acc[4][4] = {};
  load(0);
  for (int64_t k0 = 0; k0 < ncols; k0 += FK) {
#pragma unroll
    for (int q = 0; q < kPer; ++q) {
      const int i = threadIdx.x + 256 * q;
      Ws[i / FK][i % FK] = wr[q];
      Xs[i / FK][i % FK] = xr[q];
    }
    __syncthreads();
    if (k0 + FK < ncols) load(k0 + FK);
#pragma unroll 8
    for (int kk = 0; kk < FK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = Ws[ty * 4 + i][kk];
        b[i] = Xs[tx * 4 + i][kk];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[i][q] = fmaf(a[i], b[q], acc[i][q]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t r = m0 + ty * 4 + i, n = n0 + tx * 4 + q;
      if (r < nrows && n < T) y[size_t(n) * size_t(nrows) + size_t(r)] = acc[i][q];
    }
}

// ---------------------------------------------------------------------------------------
// Skinny float GEMM: at most kSkinnyMaxRows weight rows and many columns (the HC mixing
// logits, 24 x 16384). The 64 x 64 tiles above would leave most of each tile empty and put
// only T / 64 blocks on the GPU, each walking all columns alone. Here a warp takes 4 tokens
// and a slice of the columns: each lane streams 4 consecutive columns (one float4) of its 4
// x rows and multiplies them with the same 4 columns of every weight row (rows x 4 f32
// accumulators per lane); 4 warps split the columns of one token group, and 2 token groups
// share a block so that their (identical) weight loads hit L1. The weights (<= 2 MB) stay
// in L2; x is read once.
// A token's outputs depend only on its own x row and on ncols: every lane sums its fixed
// column set in ascending order, the 32 lanes are combined by a fixed xor butterfly and the
// 4 column warps in ascending order. So a token's row is bit-identical whatever T is, where
// it sits in the batch and which tokens share its launch (the batched prefill's chunking
// relies on that), as long as the same kernel serves it (the choice never depends on T).
// ---------------------------------------------------------------------------------------
constexpr int kSkTok = 4;                                // tokens per warp
constexpr int kSkSplit = 4;                              // warps splitting one group's columns
constexpr int kSkGroups = 2;                             // token groups per block
constexpr int kSkThreads = 32 * kSkSplit * kSkGroups;    // 256
constexpr int kSkBlockTokens = kSkTok * kSkGroups;       // 8

// Weights 4j .. 4j+3 of row r (F16/BF16 -> f32 is exact).
template <int kType>
__device__ __forceinline__ float4 load_w4(const uint8_t* w, size_t rb, int r, int64_t j) {
  const uint8_t* row = w + size_t(r) * rb;
  if constexpr (kType == int(GgmlType::F32)) return __ldg(reinterpret_cast<const float4*>(row) + j);
  const uint2 b = __ldg(reinterpret_cast<const uint2*>(row) + j);
  if constexpr (kType == int(GgmlType::F16))
    return make_float4(__half2float(__ushort_as_half(uint16_t(b.x & 0xFFFFu))),
                       __half2float(__ushort_as_half(uint16_t(b.x >> 16))),
                       __half2float(__ushort_as_half(uint16_t(b.y & 0xFFFFu))),
                       __half2float(__ushort_as_half(uint16_t(b.y >> 16))));
  return make_float4(__uint_as_float(b.x << 16), __uint_as_float(b.x & 0xFFFF0000u), __uint_as_float(b.y << 16),
                     __uint_as_float(b.y & 0xFFFF0000u));
}

// kRows: nrows rounded up to a multiple of 8 (the accumulator count is fixed at compile time).
template <int kType, int kRows>
__global__ void __launch_bounds__(kSkThreads) skinny_mm_kernel(const uint8_t* __restrict__ w, size_t rb, int nrows,
                                                               int64_t ncols4, const float* __restrict__ x, int64_t T,
                                                               float* __restrict__ y) {
  __shared__ float part[kSkGroups][kSkSplit][kRows][kSkTok];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = warp / kSkSplit, split = warp % kSkSplit;
  const int64_t t0 = int64_t(blockIdx.x) * kSkBlockTokens + group * kSkTok;
  const float4* xrow[kSkTok];
#pragma unroll
  for (int q = 0; q < kSkTok; ++q)
    xrow[q] = t0 + q < T ? reinterpret_cast<const float4*>(x) + size_t(t0 + q) * size_t(ncols4) : nullptr;
  float acc[kRows][kSkTok];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int q = 0; q < kSkTok; ++q) acc[r][q] = 0.0f;
  for (int64_t j = int64_t(split) * 32 + lane; j < ncols4; j += 32 * kSkSplit) {
    float4 xv[kSkTok];
#pragma unroll
    for (int q = 0; q < kSkTok; ++q) xv[q] = xrow[q] ? __ldcs(xrow[q] + j) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r >= nrows) break;
      const float4 wv = load_w4<kType>(w, rb, r, j);
#pragma unroll
      for (int q = 0; q < kSkTok; ++q) {
        float a = acc[r][q];
        a = fmaf(wv.x, xv[q].x, a);
        a = fmaf(wv.y, xv[q].y, a);
        a = fmaf(wv.z, xv[q].z, a);
        acc[r][q] = fmaf(wv.w, xv[q].w, a);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (r >= nrows) break;
#pragma unroll
    for (int q = 0; q < kSkTok; ++q) {
      float v = acc[r][q];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
      if (lane == 0) part[group][split][r][q] = v;
    }
  }
  __syncthreads();
  // Output i of the block: token i / kRows of the block, row i % kRows (consecutive threads
  // write consecutive rows of one token).
  for (int i = threadIdx.x; i < kSkBlockTokens * kRows; i += kSkThreads) {
    const int bt = i / kRows, r = i % kRows, g = bt / kSkTok, q = bt % kSkTok;
    const int64_t t = int64_t(blockIdx.x) * kSkBlockTokens + bt;
    if (r >= nrows || t >= T) continue;
    float s = part[g][0][r][q];
#pragma unroll
    for (int sp = 1; sp < kSkSplit; ++sp) s += part[g][sp][r][q];
    y[size_t(t) * size_t(nrows) + size_t(r)] = s;
  }
}

static_assert(kSkinnyMaxRows == 32, "skinny_mm_t instantiates kRows = 8, 16, 24, 32");

template <int kType, int kRows>
void skinny_mm_rows(const void* w, int64_t nrows, int64_t ncols, const void* x, int64_t T, float* y, void* stream) {
  const size_t rb = size_t(ncols) * (kType == int(GgmlType::F32) ? 4 : 2);
  const unsigned blocks = unsigned((T + kSkBlockTokens - 1) / kSkBlockTokens);
  skinny_mm_kernel<kType, kRows><<<blocks, kSkThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint8_t*>(w), rb, int(nrows), ncols / 4, static_cast<const float*>(x), T, y);
  DS4_CUDA_CHECK(cudaGetLastError());
}

template <int kType>
void skinny_mm_t(const void* w, int64_t nrows, int64_t ncols, const void* x, int64_t T, float* y, void* stream) {
  if (nrows <= 8) return skinny_mm_rows<kType, 8>(w, nrows, ncols, x, T, y, stream);
  if (nrows <= 16) return skinny_mm_rows<kType, 16>(w, nrows, ncols, x, T, y, stream);
  if (nrows <= 24) return skinny_mm_rows<kType, 24>(w, nrows, ncols, x, T, y, stream);
  return skinny_mm_rows<kType, 32>(w, nrows, ncols, x, T, y, stream);
}

// ---------------------------------------------------------------------------------------
// Launch helpers.
// ---------------------------------------------------------------------------------------
int align_of(uintptr_t v) {
  for (int a : {16, 8, 4, 2})
    if (v % uintptr_t(a) == 0) return a;
  return 1;
}

// 0 (the aligned fast path) when every base, row and expert stride is a multiple of K::VW;
// else the widest of 16/8/4 they allow (issue_raw copies the aligned words covering each
// row's stage, whatever the row's alignment).
template <class K>
int copy_width(std::initializer_list<uintptr_t> bases, int64_t ncols) {
  bool aligned = true;
  int vw = 16;
  for (uintptr_t b : bases) {
    aligned = aligned && b % uintptr_t(K::VW) == 0;
    vw = std::min(vw, align_of(b));
  }
  if (aligned) return 0;
  vw = std::min(vw, align_of(uintptr_t(Smem<K>::SB)));
  const int64_t tail = ncols % BK;
  if (tail) vw = std::min(vw, align_of(uintptr_t((tail / K::BE) * K::BB)));
  return std::max(vw, 4);
}

// The warp-specialized kernel (mm_kernel_ws) only when DS4_CUDA_GEMM_WS is set: it gives the
// same bits as mm_kernel but measured 15-25% slower on an H200 (docs/cuda.md), so it is an
// opt-in experiment (read on every call).
bool gemm_ws_enabled() { return std::getenv("DS4_CUDA_GEMM_WS") != nullptr; }
// Its persistent grid (one CTA per SM looping over the tiles) unless DS4_CUDA_NO_GEMM_PERSISTENT
// is set (then one CTA per tile).
bool gemm_persistent_enabled() { return std::getenv("DS4_CUDA_NO_GEMM_PERSISTENT") == nullptr; }
// mm_kernel's copy helpers index threads as unsigned for the float-chunk types' plain and down
// plans unless DS4_CUDA_NO_GEMM_UNSIGNED_TID is set (see mm_kernel, launch_mm; read on every call).
bool gemm_unsigned_tid_enabled() { return std::getenv("DS4_CUDA_NO_GEMM_UNSIGNED_TID") == nullptr; }
// Plain Q8_0 / MXFP4 products with enough tokens and tiles take TileWide unless
// DS4_CUDA_NO_WIDE_GEMM is set (then TileStd, as before; read on every call).
bool wide_gemm_enabled() { return std::getenv("DS4_CUDA_NO_WIDE_GEMM") == nullptr; }

// Launches mm_kernel<K, P, Tid, S> (S::kMinBlocks CTAs per SM).
template <class K, class P, class Tid, class S = TileStd>
void launch_mm_default(const P& p, dim3 grid, int64_t ncols, int vw, void* stream) {
  static const bool once = [] {
    DS4_CUDA_CHECK(cudaFuncSetAttribute(mm_kernel<K, P, Tid, S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        Smem<K, S>::BYTES));
    // Two CTAs per SM need (nearly) all of the unified L1/shared memory as shared memory.
    DS4_CUDA_CHECK(cudaFuncSetAttribute(mm_kernel<K, P, Tid, S>, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
    return true;
  }();
  (void)once;
  mm_kernel<K, P, Tid, S><<<grid, S::kThreads, Smem<K, S>::BYTES, static_cast<cudaStream_t>(stream)>>>(p, ncols, vw);
  DS4_CUDA_CHECK(cudaGetLastError());
}

// grid: gx x gy tiles in the plan's terms (tile (bx, by)).
template <class K, class P>
void launch_mm(const P& p, dim3 grid, int64_t ncols, int vw, void* stream) {
  if (gemm_ws_enabled()) {
    static const bool once = [] {
      DS4_CUDA_CHECK(
          cudaFuncSetAttribute(mm_kernel_ws<K, P>, cudaFuncAttributeMaxDynamicSharedMemorySize, SmemWs<K>::BYTES));
      DS4_CUDA_CHECK(cudaFuncSetAttribute(mm_kernel_ws<K, P>, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
      return true;
    }();
    (void)once;
    const unsigned ntiles = grid.x * grid.y;
    const unsigned ctas = gemm_persistent_enabled() ? std::min(ntiles, unsigned(device_attribute(cudaDevAttrMultiProcessorCount))) : ntiles;
    mm_kernel_ws<K, P><<<ctas, kWsThreads, SmemWs<K>::BYTES, static_cast<cudaStream_t>(stream)>>>(p, ncols, vw, grid.x,
                                                                                                  ntiles);
    DS4_CUDA_CHECK(cudaGetLastError());
    return;
  }
  // Float-chunk types (Q8_0, MXFP4), plain and down plans only: the other types and the
  // gate/up plan keep the int build, the code measured at 6b5eab8 (by the control bits the
  // unsigned build schedules the Q8_0 gate/up MMA loop worse: 449 stall cycles vs 400).
  if constexpr (K::kKind == kFloatChunk && !P::kGateUp) {
    if (gemm_unsigned_tid_enabled()) {
      launch_mm_default<K, P, unsigned>(p, grid, ncols, vw, stream);
      return;
    }
  }
  launch_mm_default<K, P, int>(p, grid, ncols, vw, stream);
}

// The tile grid of a plain product in shape S: token tiles x row tiles.
template <class S>
dim3 plain_grid(int64_t nrows, int64_t T) {
  return dim3(unsigned((T + S::kTokens - 1) / S::kTokens), unsigned((nrows + S::kRows - 1) / S::kRows));
}

// Whether a plain product of nrows x T takes TileWide (see its comment).
bool wide_tile_serves(int64_t nrows, int64_t T) {
  if (T < kWideMinTokens || !wide_gemm_enabled() || gemm_ws_enabled()) return false;
  const dim3 g = plain_grid<TileWide>(nrows, T);
  const int64_t sms = device_attribute(cudaDevAttrMultiProcessorCount);
  return int64_t(g.x) * g.y * kWideMinTileShareDen >= sms * kWideMinTileShareNum;
}

template <class K>
void matmul_t(const void* w, int64_t nrows, int64_t ncols, const void* act, int64_t T, float* y, void* stream) {
  const size_t rb = size_t(ncols / K::BE) * K::BB;
  const size_t arb = K::BE == 32 ? size_t(ncols / 32) * sizeof(BlockQ8_0Act) : size_t(ncols / QK_K) * sizeof(BlockQ8_K);
  const int vw = copy_width<K>({reinterpret_cast<uintptr_t>(w), rb}, ncols);
  auto plan = [&](auto shape) {
    return PlainPlanT<decltype(shape)>{static_cast<const uint8_t*>(w), rb, nrows, static_cast<const uint8_t*>(act),
                                       arb, T, y};
  };
  // Float-chunk types only, with the unsigned copy index (the build launch_mm picks for them).
  if constexpr (K::kKind == kFloatChunk) {
    if (wide_tile_serves(nrows, T))
      return launch_mm_default<K, PlainPlanT<TileWide>, unsigned, TileWide>(
          plan(TileWide{}), plain_grid<TileWide>(nrows, T), ncols, vw, stream);
  }
  launch_mm<K>(plan(TileStd{}), plain_grid<TileStd>(nrows, T), ncols, vw, stream);
}

template <int kType>
void float_mm_t(const void* w, int64_t nrows, int64_t ncols, const void* x, int64_t T, float* y, void* stream) {
  const size_t rb = size_t(ncols) * (kType == int(GgmlType::F32) ? 4 : 2);
  const dim3 grid(unsigned((T + FT - 1) / FT), unsigned((nrows + FT - 1) / FT));
  float_mm_kernel<kType><<<grid, 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint8_t*>(w), rb, nrows, ncols, static_cast<const float*>(x), T, y);
  DS4_CUDA_CHECK(cudaGetLastError());
}

template <class K>
void gate_up_batch_t(const void* gate, const void* up, int64_t n_embd, int64_t n_ff, float limit, const MoeBatchWs& ws,
                     void* stream) {
  const size_t rb = size_t(n_embd / K::BE) * K::BB, slab = rb * size_t(n_ff);
  const size_t arb = K::BE == 32 ? size_t(n_embd / 32) * sizeof(BlockQ8_0Act) : size_t(n_embd / QK_K) * sizeof(BlockQ8_K);
  GateUpPlan p{static_cast<const uint8_t*>(gate), static_cast<const uint8_t*>(up), rb, slab, n_ff,
               static_cast<const uint8_t*>(ws.act_x), arb, ws.ctrl, reinterpret_cast<const int4*>(ws.tiles),
               ws.slot_token, ws.slot_w, ws.h, limit};
  const dim3 grid(unsigned((n_ff + BM / 2 - 1) / (BM / 2)), unsigned(ws.max_tiles));
  launch_mm<K>(p, grid, n_embd,
               copy_width<K>({reinterpret_cast<uintptr_t>(gate), reinterpret_cast<uintptr_t>(up), rb, slab}, n_embd),
               stream);
}

template <class K>
void down_batch_t(const void* down, int64_t n_embd, int64_t n_ff, const MoeBatchWs& ws, void* stream) {
  const size_t rb = size_t(n_ff / K::BE) * K::BB, slab = rb * size_t(n_embd);
  const size_t arb = K::BE == 32 ? size_t(n_ff / 32) * sizeof(BlockQ8_0Act) : size_t(n_ff / QK_K) * sizeof(BlockQ8_K);
  DownPlan p{static_cast<const uint8_t*>(down), rb, slab, n_embd, static_cast<const uint8_t*>(ws.act_h), arb,
             ws.ctrl, reinterpret_cast<const int4*>(ws.tiles), ws.z};
  const dim3 grid(unsigned((n_embd + BM - 1) / BM), unsigned(ws.max_tiles));
  launch_mm<K>(p, grid, n_ff, copy_width<K>({reinterpret_cast<uintptr_t>(down), rb, slab}, n_ff), stream);
}

// One block: count per expert, offsets in expert order, the tile table, then each entry's
// slot. Slots of one expert are contiguous; their order inside the expert does not matter
// (every slot is computed on its own and the final sum reads slots in a fixed order).
__global__ void moe_route_kernel(const int32_t* __restrict__ ids, const float* __restrict__ route_w, int nk,
                                 int n_used, int n_expert, int32_t* ctrl, int4* tiles, int32_t* slot_token,
                                 float* slot_w, int32_t* slot_of) {
  extern __shared__ int sh[];
  int* cnt = sh;
  int* off = sh + n_expert;
  int* fill = sh + 2 * n_expert;
  __shared__ int bad;
  for (int e = threadIdx.x; e < n_expert; e += blockDim.x) {
    cnt[e] = 0;
    fill[e] = 0;
  }
  if (threadIdx.x == 0) bad = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < nk; i += blockDim.x) {
    const int e = ids[i];
    if (e >= 0 && e < n_expert) atomicAdd(&cnt[e], 1);
    else atomicAdd(&bad, 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int o = 0, nt = 0;
    for (int e = 0; e < n_expert; ++e) {
      off[e] = o;
      for (int st = 0; st < cnt[e]; st += BN) tiles[nt++] = make_int4(e, o + st, min(BN, cnt[e] - st), 0);
      o += cnt[e];
    }
    ctrl[0] = nt;
    ctrl[1] = bad;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nk; i += blockDim.x) {
    const int e = ids[i];
    if (e >= 0 && e < n_expert) {
      const int pos = off[e] + atomicAdd(&fill[e], 1);
      slot_token[pos] = i / n_used;
      slot_w[pos] = route_w[i];
      slot_of[i] = pos;
    } else {
      slot_of[i] = -1;
    }
  }
}

// y[t] = sum of the token's expert outputs in ascending expert id (model/moe.cpp's order).
__global__ void moe_combine_kernel(const int32_t* __restrict__ ids, const int32_t* __restrict__ slot_of, int n_used,
                                   int64_t n_embd, const float* __restrict__ z, float* __restrict__ y) {
  const int64_t t = blockIdx.x;
  int order[32];
  int n = 0;
  for (int k = 0; k < n_used && k < 32; ++k) {
    if (slot_of[t * n_used + k] < 0) continue;
    const int e = ids[t * n_used + k];
    int q = n;
    while (q > 0 && ids[t * n_used + order[q - 1]] > e) {
      order[q] = order[q - 1];
      --q;
    }
    order[q] = k;
    ++n;
  }
  for (int64_t d = threadIdx.x; d < n_embd; d += blockDim.x) {
    float s = 0.0f;
    for (int q = 0; q < n; ++q) s += z[size_t(slot_of[t * n_used + order[q]]) * size_t(n_embd) + size_t(d)];
    y[size_t(t) * size_t(n_embd) + size_t(d)] = s;
  }
}

}  // namespace

void launch_matmul(GgmlType type, const void* w, int64_t nrows, int64_t ncols, const void* act, int64_t T, float* y,
                   void* stream) {
  if (nrows == 0 || T == 0) return;
  init_tables();
  switch (type) {
    case GgmlType::Q8_0: return matmul_t<DQ8_0>(w, nrows, ncols, act, T, y, stream);
    case GgmlType::MXFP4: return matmul_t<DMXFP4>(w, nrows, ncols, act, T, y, stream);
    case GgmlType::Q2_K: return matmul_t<DQ2_K>(w, nrows, ncols, act, T, y, stream);
    case GgmlType::Q4_K: return matmul_t<DQ4_K>(w, nrows, ncols, act, T, y, stream);
    case GgmlType::IQ2_XXS: return matmul_t<DIQ2_XXS>(w, nrows, ncols, act, T, y, stream);
    case GgmlType::F32: return float_mm_t<int(GgmlType::F32)>(w, nrows, ncols, act, T, y, stream);
    case GgmlType::F16: return float_mm_t<int(GgmlType::F16)>(w, nrows, ncols, act, T, y, stream);
    case GgmlType::BF16: return float_mm_t<int(GgmlType::BF16)>(w, nrows, ncols, act, T, y, stream);
    default: break;
  }
}

void launch_skinny_float_mm(GgmlType type, const void* w, int64_t nrows, int64_t ncols, const float* x, int64_t T,
                            float* y, void* stream) {
  if (nrows == 0 || T == 0) return;
  switch (type) {
    case GgmlType::F32: return skinny_mm_t<int(GgmlType::F32)>(w, nrows, ncols, x, T, y, stream);
    case GgmlType::F16: return skinny_mm_t<int(GgmlType::F16)>(w, nrows, ncols, x, T, y, stream);
    case GgmlType::BF16: return skinny_mm_t<int(GgmlType::BF16)>(w, nrows, ncols, x, T, y, stream);
    default: break;
  }
}

void launch_moe_route(const int32_t* ids, const float* route_w, int64_t T, int n_used, int n_expert,
                      const MoeBatchWs& ws, void* stream) {
  const size_t shmem = size_t(3) * size_t(n_expert) * sizeof(int);
  static const bool once = [] {
    DS4_CUDA_CHECK(cudaFuncSetAttribute(moe_route_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 160 * 1024));
    return true;
  }();
  (void)once;
  moe_route_kernel<<<1, 1024, shmem, static_cast<cudaStream_t>(stream)>>>(
      ids, route_w, int(T * n_used), n_used, n_expert, ws.ctrl, reinterpret_cast<int4*>(ws.tiles), ws.slot_token,
      ws.slot_w, ws.slot_of);
  DS4_CUDA_CHECK(cudaGetLastError());
}

void launch_moe_gate_up_batch(GgmlType type, const void* gate, const void* up, int64_t n_embd, int64_t n_ff,
                              float limit, const MoeBatchWs& ws, void* stream) {
  init_tables();
  switch (type) {
    case GgmlType::Q8_0: return gate_up_batch_t<DQ8_0>(gate, up, n_embd, n_ff, limit, ws, stream);
    case GgmlType::MXFP4: return gate_up_batch_t<DMXFP4>(gate, up, n_embd, n_ff, limit, ws, stream);
    case GgmlType::Q2_K: return gate_up_batch_t<DQ2_K>(gate, up, n_embd, n_ff, limit, ws, stream);
    case GgmlType::Q4_K: return gate_up_batch_t<DQ4_K>(gate, up, n_embd, n_ff, limit, ws, stream);
    case GgmlType::IQ2_XXS: return gate_up_batch_t<DIQ2_XXS>(gate, up, n_embd, n_ff, limit, ws, stream);
    default: break;
  }
}

void launch_moe_down_batch(GgmlType type, const void* down, int64_t n_embd, int64_t n_ff, const MoeBatchWs& ws,
                           void* stream) {
  init_tables();
  switch (type) {
    case GgmlType::Q8_0: return down_batch_t<DQ8_0>(down, n_embd, n_ff, ws, stream);
    case GgmlType::MXFP4: return down_batch_t<DMXFP4>(down, n_embd, n_ff, ws, stream);
    case GgmlType::Q2_K: return down_batch_t<DQ2_K>(down, n_embd, n_ff, ws, stream);
    case GgmlType::Q4_K: return down_batch_t<DQ4_K>(down, n_embd, n_ff, ws, stream);
    case GgmlType::IQ2_XXS: return down_batch_t<DIQ2_XXS>(down, n_embd, n_ff, ws, stream);
    default: break;
  }
}

void launch_moe_combine(const int32_t* ids, int64_t T, int n_used, int64_t n_embd, const MoeBatchWs& ws, float* y,
                        void* stream) {
  if (T == 0) return;
  moe_combine_kernel<<<unsigned(T), 256, 0, static_cast<cudaStream_t>(stream)>>>(ids, ws.slot_of, n_used, n_embd,
                                                                                 ws.z, y);
  DS4_CUDA_CHECK(cudaGetLastError());
}

}  // namespace ds4::cuda::detail
