// IQ2_XXS x Q8_K with AVX-512 VBMI + GFNI: the tier Isa::Avx512Vbmi. The older AVX-512
// kernel (vec_dot_avx512.cpp) assembles the grid rows from 32 scalar loads per block and
// expands signs with pdep; at ~24 cycles per 256 weights it reached only ~22 % of the memory
// bandwidth. Here every step is a whole-register operation (docs/perf.md has the numbers).
// Two kernels share the decode below: the group-major kernel at the end of the file (the
// default, fewer ops per block) and this first one (DS4_CPU_NO_IQ2_GROUPED=1):
//
//   1. Two blocks' payloads (2 x 64 bytes) are merged into one register of 64 grid indices
//      and one of 64 seven-bit sign indices (vpmultishiftqb picks bits 7k.. of each aux).
//   2. Table lookups by vpermi2b: the 128-entry ksigns table (two registers) gives the sign
//      bytes; the grid is looked up as two bit planes of its 3-level codes (bit j of plane p
//      = bit p of the level of element j), two 256-byte tables of four registers each (two
//      vpermi2b plus a blend on index bit 7 per table).
//   3. Per pair of output registers (2 x 8 sub-groups of 8 weights): one vpermi2b + one
//      masked vpermb put {sign byte, plane 1, plane 0} of both registers' sub-groups into
//      bytes 2..7 of each 64-bit lane; one vgf2p8affineqb with the identity-bit "matrix"
//      transposes the lane, so byte j holds the 3-bit (level, sign) codes of element j of
//      both registers (bits 0-2 and 3-5); a vpshufb (bits 0-2) and a vpermb (bits 3-5) map
//      them to 64 +- G (21..107, unsigned).
//   4. The group scales 2 s + 1 of both blocks are made once per pair (a vpermi2b of the
//      top aux bytes, a vgf2p8affineqb for (x >> 4) * 2 + 1) and spread into words by one
//      in-lane vpshufb per register.
//   5. The dot product is the same as the AVX-512 kernel's: vpmaddubsw against the Q8_K
//      activations, vpdpwssd by (2 s_g + 1), the +64 offset removed through bsums. The
//      int32 lanes and the float accumulation are identical to that kernel, so both give
//      the same bits (tested); the integer block sums equal the scalar reference's exactly.
//
// A block pair's decode is shared by up to 4 activation rows (matmul tiles), each with its own
// accumulators, so a tile gives the same result per (row, token) as vec_dot; two weight rows
// are interleaved for instruction-level parallelism.
// GCC 12's intrinsic headers initialise "undefined" vectors from themselves (`__Y = __Y`),
// which -Wuninitialized reports inside _mm512_reduce_add_ps and the cast intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cpu/avx512_common.h"
#include "backend/cpu/kernels.h"
#include "quant/blocks.h"
#include "quant/quant.h"

// The rest of the file may use VBMI; it is only reached when CPUID reports it (matmul.cpp).
#pragma GCC target("avx512vbmi,gfni")

namespace ds4::cpu::detail {
namespace {

struct Iq2VbmiTables {
  alignas(64) uint8_t signs[128];    // ksigns_iq2xs
  alignas(64) uint8_t plane0[256];   // grid entry -> bit j: bit 0 of the level of element j
  alignas(64) uint8_t plane1[256];   // grid entry -> bit j: bit 1 of the level of element j
  // 3-bit code (bits 0-1 level, bit 2 sign) -> 64 +- G. value_lo: vpshufb table of the code
  // in bits 0-2 (per 16 bytes, bit 3 ignored); value_hi: vpermb table of the code in bits 3-5.
  alignas(64) uint8_t value_lo[64];
  alignas(64) uint8_t value_hi[64];
  // [2e + h]: lane L <- sub-group L of output registers 2e (bytes 5-7) and 2e + 1 (bytes
  // 2-4) of block h: {sign, plane 1, plane 0} each, bytes 0-1 zeroed
  alignas(64) uint8_t spread[4][64];
  alignas(64) uint8_t select[64];    // byte j of each lane: 1 << j (the affine "matrix" input)
  alignas(64) uint8_t ms_sidx[64];   // byte k, 4+k <- bits 32+7k.. (sign index k of the aux)
  // every 16 bytes: the top aux byte of group k of block 0 (byte k) and block 1 (byte 8 + k)
  alignas(64) uint8_t scale_bytes[64];
  // vpshufb of the per-pair scale bytes: [2c + h]: word k <- 2 s + 1 of group 2c + k/16
  alignas(64) uint8_t scale_idx[8][64];
  alignas(32) uint8_t pair_idx[2][32];  // [h]: word k <- 2 s + 1 of group k/2 (the bsums pairs)
  Iq2VbmiTables() {
    const uint8_t* ks = quant::ksigns_iq2xs();
    std::memcpy(signs, ks, 128);
    // Levels from the byte grid itself ({8, 25, 43} -> 0, 1, 2), formats.md 2.5.
    const uint64_t* grid = quant::iq2xxs_grid();
    for (int i = 0; i < 256; ++i) {
      plane0[i] = plane1[i] = 0;
      for (int j = 0; j < 8; ++j) {
        const uint8_t g = static_cast<uint8_t>(grid[i] >> (8 * j));
        const int level = g == 8 ? 0 : g == 25 ? 1 : 2;
        plane0[i] = static_cast<uint8_t>(plane0[i] | ((level & 1) << j));
        plane1[i] = static_cast<uint8_t>(plane1[i] | ((level >> 1) << j));
      }
    }
    const auto value = [](int code) {
      const int levels[4] = {8, 25, 43, 0};
      const int g = levels[code & 3];
      return static_cast<uint8_t>((code & 4) ? 64 - g : 64 + g);
    };
    for (int i = 0; i < 64; ++i) {
      value_lo[i] = value(i & 7);
      value_hi[i] = value(i >> 3);
    }
    for (int e = 0; e < 2; ++e)
      for (int h = 0; h < 2; ++h)
        for (int L = 0; L < 8; ++L) {
          // merged-register bytes of sub-group L of output registers 2e and 2e + 1
          const int pa = 8 * (2 * (2 * e) + L / 4) + 4 * h + L % 4;
          const int pb = 8 * (2 * (2 * e + 1) + L / 4) + 4 * h + L % 4;
          uint8_t* s = spread[2 * e + h] + 8 * L;
          const uint8_t bytes[8] = {0, 0, static_cast<uint8_t>(pb), static_cast<uint8_t>(64 + pb),
                                    static_cast<uint8_t>(pb), static_cast<uint8_t>(pa),
                                    static_cast<uint8_t>(64 + pa), static_cast<uint8_t>(pa)};
          std::memcpy(s, bytes, 8);
        }
    for (int L = 0; L < 8; ++L)
      for (int j = 0; j < 8; ++j) {
        select[8 * L + j] = static_cast<uint8_t>(1 << j);
        ms_sidx[8 * L + j] = static_cast<uint8_t>(32 + 7 * (j % 4));
      }
    for (int i = 0; i < 64; ++i) {
      const int k = i % 16;
      scale_bytes[i] = static_cast<uint8_t>(k < 8 ? 8 * k + 7 : 64 + 8 * (k - 8) + 7);
    }
    for (int c = 0; c < 4; ++c)
      for (int h = 0; h < 2; ++h)
        for (int k = 0; k < 32; ++k) {
          scale_idx[2 * c + h][2 * k] = static_cast<uint8_t>(8 * h + 2 * c + k / 16);
          scale_idx[2 * c + h][2 * k + 1] = 0x80;  // high byte zero
        }
    for (int h = 0; h < 2; ++h)
      for (int k = 0; k < 16; ++k) {
        pair_idx[h][2 * k] = static_cast<uint8_t>(8 * h + k / 2);
        pair_idx[h][2 * k + 1] = 0x80;
      }
  }
};
const Iq2VbmiTables kT;

inline __m512i ld(const void* p) { return _mm512_load_si512(p); }

// 256-entry byte table lookup (four registers) for 64 indices.
inline __m512i lookup256(__m512i idx, __mmask64 hi, const __m512i t[4]) {
  const __m512i a = _mm512_permutex2var_epi8(t[0], idx, t[1]);
  const __m512i b = _mm512_permutex2var_epi8(t[2], idx, t[3]);
  return _mm512_mask_blend_epi8(hi, a, b);
}

struct Iq2Consts {
  __m512i plane0[4], plane1[4], signs0, signs1, value_lo, value_hi, select, ms_sidx, scale_gather;
  Iq2Consts() {
    for (int i = 0; i < 4; ++i) {
      plane0[i] = ld(kT.plane0 + 64 * i);
      plane1[i] = ld(kT.plane1 + 64 * i);
    }
    signs0 = ld(kT.signs);
    signs1 = ld(kT.signs + 64);
    value_lo = ld(kT.value_lo);
    value_hi = ld(kT.value_hi);
    select = ld(kT.select);
    ms_sidx = ld(kT.ms_sidx);
    scale_gather = ld(kT.scale_bytes);
  }
};

// byte x -> ((x >> 4) << 1) | 1 as a GF(2) affine map: output bits 1-4 <- input bits 4-7
// (matrix row 7 - i selects the input bits of output bit i), plus the constant bit 0.
constexpr long long kScaleMatrix = 0x0010204080000000ll;

// The payloads of blocks b and b + 1 (q1 = q0 when nh = 1) and the two grid bit planes of
// their 64 grid indices, at the merged position 8 g + 4 h + k (index k of group g, block h).
struct Iq2PairPlanes {
  __m512i q0, q1, pl0, pl1;
};

inline Iq2PairPlanes load_pair_planes(const Iq2Consts& k, const BlockIQ2_XXS* w, int64_t b, int nh) {
  // Software prefetch 2 KiB ahead of the row stream (the kernel is slow enough per byte
  // that the hardware prefetcher alone leaves DRAM latency exposed; 2 KiB measured 51 % of
  // the read bandwidth at 2 threads on the Intel device CPU against 48 % for 1 KiB, and
  // 3 KiB was no better for the group-major kernel).
  _mm_prefetch(reinterpret_cast<const char*>(w + b) + 2048, _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(w + b) + 2048 + 64, _MM_HINT_T0);
  Iq2PairPlanes p;
  p.q0 = _mm512_loadu_si512(w[b].qs);
  p.q1 = nh == 2 ? _mm512_loadu_si512(w[b + 1].qs) : p.q0;
  // bytes 0-3 of qword g: block b's grid indices of group g; bytes 4-7: block b+1's
  const __m512i gidx = _mm512_mask_blend_epi32(0xAAAA, p.q0, _mm512_slli_epi64(p.q1, 32));
  const __mmask64 hi = _mm512_movepi8_mask(gidx);
  p.pl0 = lookup256(gidx, hi, k.plane0);
  p.pl1 = lookup256(gidx, hi, k.plane1);
  return p;
}

// The offset values 64 +- G of two output registers: sp_idx (a spread table) gathers
// {sign, plane 1, plane 0} of their sub-groups into bytes 2-4 (second register) and 5-7
// (first) of each 64-bit lane, and an 8x8 bit transpose per lane puts the 3-bit codes of
// element j of both into byte j (bits 0-2, 3-5), mapped to values by vpshufb / vpermb.
inline void iq2_register_pair_values(const Iq2Consts& k, const Iq2PairPlanes& p, __m512i sgn, __m512i sp_idx,
                                     __m512i u[2]) {
  const __m512i lanes = _mm512_mask_permutexvar_epi8(
      _mm512_maskz_permutex2var_epi8(0xD8D8D8D8D8D8D8D8ull, p.pl0, sp_idx, p.pl1),
      0x2424242424242424ull, sp_idx, sgn);
  const __m512i vi = _mm512_gf2p8affine_epi64_epi8(k.select, lanes, 0);
  u[0] = _mm512_shuffle_epi8(k.value_lo, vi);
  u[1] = _mm512_permutexvar_epi8(vi, k.value_hi);
}

// Blocks b and b+1 (nh = 2) or b alone (nh = 1) of one weight row against NT activation
// rows x[t], accumulated into acc[t] exactly as the single-row kernel does.
template <int NT>
[[gnu::always_inline]] inline void iq2_pair(const Iq2Consts& k, const BlockIQ2_XXS* w, int64_t b,
                                            int nh, const BlockQ8_K* const* x, __m512* acc) {
  const Iq2PairPlanes p = load_pair_planes(k, w, b, nh);
  const __m512i q0 = p.q0, q1 = p.q1;
  const __m512i sidx = _mm512_mask_multishift_epi64_epi8(
      _mm512_multishift_epi64_epi8(k.ms_sidx, q0), 0xF0F0F0F0F0F0F0F0ull, k.ms_sidx, q1);
  const __m512i sgn = _mm512_permutex2var_epi8(k.signs0, sidx, k.signs1);
  // 2 s_g + 1 of both blocks' groups (top aux byte >> 4, doubled, plus one), all 16 in
  // every 128-bit lane so that vpshufb can spread them into scale words
  const __m512i scale_bytes = _mm512_gf2p8affine_epi64_epi8(
      _mm512_permutex2var_epi8(q0, k.scale_gather, q1), _mm512_set1_epi64(kScaleMatrix), 1);
  for (int h = 0; h < nh; ++h) {
    const BlockIQ2_XXS& blk = w[b + h];
    // Two partial sums per token (c even / odd) halve the vpdpwssd dependency chain;
    // integer addition is exact, so the lanes are the same in any order.
    // Chain 0 starts from the offset correction -64 * sum_k bsums_k * (2 s_{k/2} + 1) in
    // lanes 0..7 (words -64 (2 s + 1) >= -1984 fit; the lane sums are exact in int32).
    const __m256i sp = _mm256_shuffle_epi8(
        _mm512_castsi512_si256(scale_bytes),
        _mm256_load_si256(reinterpret_cast<const __m256i*>(kT.pair_idx[h])));
    const __m256i sp_neg64 = _mm256_mullo_epi16(sp, _mm256_set1_epi16(-64));
    __m512i sumi[2][NT];
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t][b + h].bsums));
      sumi[0][t] = _mm512_zextsi256_si512(_mm256_madd_epi16(bs, sp_neg64));
      sumi[1][t] = _mm512_setzero_si512();
    }
#pragma GCC unroll 2
    for (int e = 0; e < 2; ++e) {
      // lane L: sub-group L of output registers 2e and 2e + 1
      __m512i u[2];
      iq2_register_pair_values(k, p, sgn, ld(kT.spread[2 * e + h]), u);
      #pragma GCC unroll 2
      for (int odd = 0; odd < 2; ++odd) {
        const int c = 2 * e + odd;
        const __m512i sc = _mm512_shuffle_epi8(scale_bytes, ld(kT.scale_idx[2 * c + h]));
        #pragma GCC unroll 8
        for (int t = 0; t < NT; ++t) {
          const __m512i yv = _mm512_loadu_si512(x[t][b + h].qs + 64 * c);
          sumi[odd][t] = _mm512_dpwssd_epi32(sumi[odd][t], _mm512_maddubs_epi16(u[odd], yv), sc);
        }
      }
    }
    const float wd = f16_block_field(&blk.d);  // d and 64 payload bytes: 16 readable
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m512i s = _mm512_add_epi32(sumi[0][t], sumi[1][t]);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(wd * x[t][b + h].d * 0.125f),
                               acc[t]);
    }
  }
}

// NR weight rows (stride rb) x NT activation rows, y[t * ldy + r] = the dot product of row
// r and activation t: pair(row, b, nh, acc) accumulates blocks b, b + 1 (nh of them) of a row
// into its NT accumulators. Rows are interleaved block pair by block pair, which gives the
// out-of-order core independent work (the decode chain is long).
template <int NR, int NT, typename Pair>
[[gnu::always_inline]] inline void iq2_rows_by_pairs(const uint8_t* w, size_t rb, int64_t nblocks, float* y,
                                                     size_t ldy, Pair pair) {
  __m512 acc[NR][NT];
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nblocks; b += 2) {
    const int nh = b + 1 < nblocks ? 2 : 1;
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) pair(reinterpret_cast<const BlockIQ2_XXS*>(w + r * rb), b, nh, acc[r]);
  }
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <int NR, int NT>
[[gnu::always_inline]] inline void iq2_rows(const Iq2Consts& k, const uint8_t* w, size_t rb, const uint8_t* act,
                                            size_t ab, int64_t nblocks, float* y, size_t ldy) {
  const BlockQ8_K* x[NT];
  #pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) x[t] = reinterpret_cast<const BlockQ8_K*>(act + t * ab);
  iq2_rows_by_pairs<NR, NT>(w, rb, nblocks, y, ldy,
                            [&](const BlockIQ2_XXS* row, int64_t b, int nh, __m512* acc)
                                __attribute__((always_inline)) { iq2_pair<NT>(k, row, b, nh, x, acc); });
}

float dot_iq2_xxs_vbmi(const void* w_row, const void* act, int64_t n) {
  const Iq2Consts k;
  float y;
  iq2_rows<1, 1>(k, static_cast<const uint8_t*>(w_row), 0, static_cast<const uint8_t*>(act), 0,
                 n / QK_K, &y, 1);
  return y;
}

template <int NR>
void iq2_tokens(const Iq2Consts& k, const uint8_t* w, size_t rb, const uint8_t* a, size_t ab, int64_t nt,
                int64_t nblocks, float* y, size_t ldy) {
  int64_t t = 0;
  for (; t + 4 <= nt; t += 4) iq2_rows<NR, 4>(k, w, rb, a + t * ab, ab, nblocks, y + t * ldy, ldy);
  switch (nt - t) {
    case 3: iq2_rows<NR, 3>(k, w, rb, a + t * ab, ab, nblocks, y + t * ldy, ldy); break;
    case 2: iq2_rows<NR, 2>(k, w, rb, a + t * ab, ab, nblocks, y + t * ldy, ldy); break;
    case 1: iq2_rows<NR, 1>(k, w, rb, a + t * ab, ab, nblocks, y + t * ldy, ldy); break;
    default: break;
  }
}

// Tiles of 2 rows x 4 tokens (matmul). With one token (matvec) the rows go one by one: two
// interleaved row streams from DRAM ran at half the speed of one (prefetching), while
// L2-resident they were no faster. The lookup tables are loaded into registers once per
// call, not once per row.
void tile_iq2_xxs_vbmi(const void* w, size_t rb, int64_t nr, const void* act, size_t ab,
                       int64_t nt, int64_t n, float* y, size_t ldy) {
  const Iq2Consts k;
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  const uint8_t* a = static_cast<const uint8_t*>(act);
  const int64_t nblocks = n / QK_K;
  int64_t r = 0;
  if (nt == 1) {
    for (; r < nr; ++r) iq2_rows<1, 1>(k, wb + r * rb, rb, a, ab, nblocks, y + r, ldy);
    return;
  }
  for (; r + 2 <= nr; r += 2) iq2_tokens<2>(k, wb + r * rb, rb, a, ab, nt, nblocks, y + r, ldy);
  for (; r < nr; ++r) iq2_tokens<1>(k, wb + r * rb, rb, a, ab, nt, nblocks, y + r, ldy);
}

// ---------------------------------------------------------------------------------------
// The group-major kernel (default; DS4_CPU_NO_IQ2_GROUPED=1 selects the kernel above).
// Intel server cores issue every byte shuffle on port 5 only (vpermi2b takes two of its
// slots), and the kernel above spends ~23 of its ~46 uops per block there. This one decodes
// the weights the same way (bit planes, one transpose per two registers, value shuffles) but
// needs fewer ops around it:
//
//   1. Register c of a block holds sub-group c (8 weights) of each of the 8 groups, so dword
//      lane i of every vpdpbusd belongs to group i / 2: the four registers of a block
//      accumulate into one int32 vector (one vpdpbusd each, the offset values 64 +- G are
//      unsigned), multiplied by the lane scales 2 s + 1 once per block (vpmulld), instead of
//      vpmaddubsw + vpdpwssd + a scale shuffle per register and the scale-word shuffles.
//   2. The activations are permuted into that order once per call (Iq2GroupAct, shared by
//      all rows), with the offset correction -64 * sum(x) of every lane as the accumulator's
//      start value (no bsums work per row).
//   3. Sign bytes by vgf2p8affineqb (the 7-bit index plus its parity as bit 7) instead of a
//      vpermi2b lookup of ksigns; scales (aux >> 27) | 1 = 2 s + 1 by shifts.
//
// The integer per-block sums are exact (the reference's); the float accumulation runs over
// other int32 lanes than the kernel above, so the two differ by float rounding only
// (bit-equal on exact inputs; tests/cpu).

// One Q8_K activation block in group-major order (once per call and token).
struct Iq2GroupAct {
  alignas(64) int8_t x[4][64];   // [c][8 g + j] = qs[32 g + 8 c + j]
  alignas(64) int32_t init[16];  // lane 2 g + t: -64 * sum of the 16 x in that lane
};
static_assert(sizeof(Iq2GroupAct) == 320);

struct Iq2GroupTables {
  alignas(64) uint8_t act_idx[4][64];  // [c]: vpermi2b index of x'_c from 128 activation bytes
  // [2e + h]: lane g <- {sign, plane 1, plane 0} of sub-group (g, 2e + 1) (bytes 2-4) and
  // (g, 2e) (bytes 5-7) of block h, from the merged-pair position 8 g + 4 h + k; bytes 0-1 zero
  alignas(64) uint8_t spread[4][64];
  alignas(64) uint8_t ms_pair[64];  // byte 4 h + k of each qword <- bits 32 h + 7 k (sign index k)
  Iq2GroupTables() {
    for (int c = 0; c < 4; ++c)
      for (int g = 0; g < 8; ++g)
        for (int j = 0; j < 8; ++j) act_idx[c][8 * g + j] = static_cast<uint8_t>(32 * (g % 4) + 8 * c + j);
    for (int e = 0; e < 2; ++e)
      for (int h = 0; h < 2; ++h)
        for (int g = 0; g < 8; ++g) {
          const uint8_t pa = static_cast<uint8_t>(8 * g + 4 * h + 2 * e), pb = static_cast<uint8_t>(pa + 1);
          const uint8_t bytes[8] = {0, 0, pb, static_cast<uint8_t>(64 + pb), pb, pa, static_cast<uint8_t>(64 + pa), pa};
          std::memcpy(spread[2 * e + h] + 8 * g, bytes, 8);
        }
    for (int i = 0; i < 64; ++i) ms_pair[i] = static_cast<uint8_t>(32 * (i % 8 / 4) + 7 * (i % 4));
  }
};
const Iq2GroupTables kG;

// Sign byte of a 7-bit sign index (ksigns_iq2xs): bits 0-6 unchanged, bit 7 = their parity
// (matrix byte 7 - i selects the input bits of output bit i; input bit 7 is ignored).
constexpr long long kSignParityMatrix = 0x010204081020407Fll;

void prepare_group_act(const BlockQ8_K* x, int64_t nblocks, Iq2GroupAct* out) {
  const __m512i idx[4] = {ld(kG.act_idx[0]), ld(kG.act_idx[1]), ld(kG.act_idx[2]), ld(kG.act_idx[3])};
  for (int64_t b = 0; b < nblocks; ++b) {
    __m512i q[4];
    for (int i = 0; i < 4; ++i) q[i] = _mm512_loadu_si512(x[b].qs + 64 * i);
    __m512i sum = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) {
      // groups 0-3 from activation bytes 0..127, groups 4-7 from 128..255
      const __m512i v = _mm512_mask_blend_epi64(0xF0, _mm512_permutex2var_epi8(q[0], idx[c], q[1]),
                                                _mm512_permutex2var_epi8(q[2], idx[c], q[3]));
      _mm512_store_si512(out[b].x[c], v);
      sum = _mm512_dpbusd_epi32(sum, _mm512_set1_epi8(1), v);
    }
    _mm512_store_si512(out[b].init, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sum, 6)));
  }
}

struct Iq2GroupConsts : Iq2Consts {
  __m512i ms_pair = ld(kG.ms_pair);
};

template <int NT>
[[gnu::always_inline]] inline void iq2_grouped_pair(const Iq2GroupConsts& k,
                                                    const BlockIQ2_XXS* w, int64_t b, int nh,
                                                    const Iq2GroupAct* const* x, const float* const* xd,
                                                    __m512* acc) {
  const Iq2PairPlanes p = load_pair_planes(k, w, b, nh);
  const __m512i q0 = p.q0, q1 = p.q1;
  // qword g: the second aux words of group g of blocks b and b + 1 (shifts and a blend:
  // one port-5 vpmultishiftqb instead of two)
  const __m512i aux1 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(q0, 32), q1);
  const __m512i sidx = _mm512_multishift_epi64_epi8(k.ms_pair, aux1);
  const __m512i sgn = _mm512_gf2p8affine_epi64_epi8(sidx, _mm512_set1_epi64(kSignParityMatrix), 0);
  #pragma GCC unroll 2
  for (int h = 0; h < nh; ++h) {
    const BlockIQ2_XXS& blk = w[b + h];
    // lanes 2 g and 2 g + 1: 2 s + 1 of group g = (aux >> 27) | 1 of its second aux word
    // (bit 27 is the top bit of sign index 3), made by shifts instead of a port-5 vpermd
    const __m512i top = _mm512_srli_epi64(h == 0 ? q0 : q1, 59);
    const __m512i scale =
        _mm512_ternarylogic_epi32(top, _mm512_slli_epi64(top, 32), _mm512_set1_epi32(1), 0xFE);  // a | b | c
    __m512i sumi[NT];
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) sumi[t] = ld(x[t][b + h].init);
    #pragma GCC unroll 2
    for (int e = 0; e < 2; ++e) {
      // lane g: sub-group (g, 2e) and (g, 2e + 1), i.e. group g of registers 2e and 2e + 1
      __m512i u[2];
      iq2_register_pair_values(k, p, sgn, ld(kG.spread[2 * e + h]), u);
      #pragma GCC unroll 2
      for (int odd = 0; odd < 2; ++odd)
        #pragma GCC unroll 8
        for (int t = 0; t < NT; ++t)
          sumi[t] = _mm512_dpbusd_epi32(sumi[t], u[odd], ld(x[t][b + h].x[2 * e + odd]));
    }
    const float wd = f16_block_field(&blk.d);
    #pragma GCC unroll 8
    for (int t = 0; t < NT; ++t)
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_mullo_epi32(sumi[t], scale)),
                               _mm512_set1_ps(wd * xd[t][b + h]), acc[t]);
  }
}

template <int NR, int NT>
[[gnu::always_inline]] inline void iq2_grouped_rows(const Iq2GroupConsts& k, const uint8_t* w, size_t rb,
                                                   const Iq2GroupAct* const* x, const float* const* xd,
                                                   int64_t nblocks, float* y, size_t ldy) {
  iq2_rows_by_pairs<NR, NT>(w, rb, nblocks, y, ldy,
                            [&](const BlockIQ2_XXS* row, int64_t b, int nh, __m512* acc)
                                __attribute__((always_inline)) { iq2_grouped_pair<NT>(k, row, b, nh, x, xd, acc); });
}

// Group-major activations of up to 4 tokens, with their block scales, in a per-thread
// buffer that grows to the largest call seen.
struct Iq2ActBatch {
  const Iq2GroupAct* x[4];
  const float* d[4];
};

Iq2ActBatch prepare_tokens(const uint8_t* act, size_t ab, int64_t nt, int64_t nblocks) {
  thread_local std::vector<Iq2GroupAct> buffer;
  thread_local std::vector<float> scales;
  const size_t need = static_cast<size_t>(nt * nblocks);
  if (buffer.size() < need) buffer.resize(need), scales.resize(need);
  Iq2ActBatch batch{};
  for (int64_t t = 0; t < nt; ++t) {
    const auto* x = reinterpret_cast<const BlockQ8_K*>(act + t * ab);
    Iq2GroupAct* out = buffer.data() + t * nblocks;
    float* d = scales.data() + t * nblocks;
    prepare_group_act(x, nblocks, out);
    for (int64_t b = 0; b < nblocks; ++b) d[b] = x[b].d * 0.125f;  // with the 1/8 of (2 s + 1) / 8
    batch.x[t] = out;
    batch.d[t] = d;
  }
  return batch;
}

template <int NR>
void iq2_grouped_tokens(const Iq2GroupConsts& k, const uint8_t* w, size_t rb, const Iq2ActBatch& a, int64_t nt,
                       int64_t nblocks, float* y, size_t ldy) {
  switch (nt) {
    case 4: iq2_grouped_rows<NR, 4>(k, w, rb, a.x, a.d, nblocks, y, ldy); break;
    case 3: iq2_grouped_rows<NR, 3>(k, w, rb, a.x, a.d, nblocks, y, ldy); break;
    case 2: iq2_grouped_rows<NR, 2>(k, w, rb, a.x, a.d, nblocks, y, ldy); break;
    case 1: iq2_grouped_rows<NR, 1>(k, w, rb, a.x, a.d, nblocks, y, ldy); break;
    default: break;
  }
}

// Same tiling as tile_iq2_xxs_vbmi (one row at a time for one token, 2 rows x up to 4 tokens
// otherwise); the activations of each group of 4 tokens are prepared once for all rows.
void tile_iq2_xxs_grouped(const void* w, size_t rb, int64_t nr, const void* act, size_t ab, int64_t nt,
                         int64_t n, float* y, size_t ldy) {
  const Iq2GroupConsts k;
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  const uint8_t* a = static_cast<const uint8_t*>(act);
  const int64_t nblocks = n / QK_K;
  for (int64_t t = 0; t < nt; t += 4) {
    const int64_t tn = std::min<int64_t>(4, nt - t);
    const Iq2ActBatch batch = prepare_tokens(a + t * ab, ab, tn, nblocks);
    float* yt = y + t * ldy;
    int64_t r = 0;
    if (tn > 1)
      for (; r + 2 <= nr; r += 2) iq2_grouped_tokens<2>(k, wb + r * rb, rb, batch, tn, nblocks, yt + r, ldy);
    for (; r < nr; ++r) iq2_grouped_tokens<1>(k, wb + r * rb, rb, batch, tn, nblocks, yt + r, ldy);
  }
}

float dot_iq2_xxs_grouped(const void* w_row, const void* act, int64_t n) {
  float y;
  tile_iq2_xxs_grouped(w_row, 0, 1, act, 0, 1, n, &y, 1);
  return y;
}

}  // namespace

Iq2XxsKernels iq2_xxs_vbmi_kernels(bool grouped) {
  return grouped ? Iq2XxsKernels{dot_iq2_xxs_grouped, tile_iq2_xxs_grouped}
                : Iq2XxsKernels{dot_iq2_xxs_vbmi, tile_iq2_xxs_vbmi};
}

const KernelTable& avx512vbmi_kernels() {
  static const KernelTable table = [] {
    KernelTable t = avx512_kernels();
    // A/B switch: DS4_CPU_NO_IQ2_GROUPED=1 keeps the previous kernel (docs/perf.md).
    const char* off = std::getenv("DS4_CPU_NO_IQ2_GROUPED");
    const Iq2XxsKernels iq2 = iq2_xxs_vbmi_kernels(!(off && off[0] == '1'));
    t.iq2_xxs = iq2.dot;
    t.iq2_xxs_tile = iq2.tile;
    use_gfni_q2_k(t);
    return t;
  }();
  return table;
}

}  // namespace ds4::cpu::detail
