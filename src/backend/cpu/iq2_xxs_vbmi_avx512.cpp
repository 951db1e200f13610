// IQ2_XXS x Q8_K with AVX-512 VBMI (vpermb, vpermi2b, vpmultishiftqb): the tier
// Isa::Avx512Vbmi. The older AVX-512 kernel (vec_dot_avx512.cpp) assembles the grid rows from
// 32 scalar loads per block and expands signs with pdep; at ~24 cycles per 256 weights it
// reached only ~22 % of the memory bandwidth. Here every step is a whole-register operation:
//
//   1. Two blocks' payloads (2 x 64 bytes) are merged into one register of 64 grid indices
//      and one of 64 seven-bit sign indices (vpmultishiftqb picks bits 7k.. of each aux).
//   2. Table lookups by vpermi2b: the 128-entry ksigns table (two registers) gives the sign
//      bytes; the grid is looked up in its compact form (kgrid_2bit_256: a 16-bit code of
//      eight 2-bit levels per entry) as two 256-byte tables, low and high code byte (four
//      registers each, two vpermi2b plus a blend on index bit 7 per table).
//   3. Per output register (8 sub-groups of 8 weights): one vpermi2b + one masked vpermb
//      put {code lo, code hi, sign byte} into each 64-bit lane; two vpmultishiftqb and a
//      vpternlog form a 3-bit (level, sign) index per byte; a vpermb of a 64-byte table
//      maps it to 64 +- G (21..107, unsigned).
//   4. The dot product is the same as the AVX-512 kernel's: vpmaddubsw against the Q8_K
//      activations, vpdpwssd by (2 s_g + 1), the +64 offset removed through bsums. The
//      int32 lanes and the float accumulation are identical to that kernel, so both give
//      the same bits; the integer block sums equal the scalar reference's exactly.
//
// The decode of a block is shared by up to kTileTokens activation rows (matmul tiles), each
// with its own accumulator, so a tile gives the same result per (row, token) as vec_dot.
// GCC 12's intrinsic headers initialise "undefined" vectors from themselves (`__Y = __Y`),
// which -Wuninitialized reports inside _mm512_reduce_add_ps and the cast intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#include "backend/cpu/kernels.h"
#include "quant/blocks.h"
#include "quant/quant.h"

// The rest of the file may use VBMI; it is only reached when CPUID reports it (matmul.cpp).
#pragma GCC target("avx512vbmi")

namespace ds4::cpu::detail {
namespace {

struct Iq2VbmiTables {
  alignas(64) uint8_t signs[128];    // ksigns_iq2xs
  alignas(64) uint8_t code_lo[256];  // kgrid_2bit_256 low byte (levels of elements 0..3)
  alignas(64) uint8_t code_hi[256];  // high byte (elements 4..7)
  alignas(64) uint8_t value[64];     // bits 0-1 level, bit 2 sign -> 64 +- G (bits 3-5 ignored)
  alignas(64) uint8_t spread[8][64];  // [2c + h]: lane L <- sub-group (2c + L/4, L%4) of block h
  alignas(64) uint8_t ms_code[64];   // vpmultishiftqb: byte j <- bits 2j.. (level of element j)
  alignas(64) uint8_t ms_sign[64];   // byte j <- bits 14+j.., so bit 2 = bit j of the sign byte
  alignas(64) uint8_t ms_sidx[64];   // byte k, 4+k <- bits 32+7k.. (sign index k of the aux)
  alignas(64) int16_t scale_idx[4][32];  // vpermw: word of (aux >> 27) | 1 for group 2c + k/16
  alignas(32) int16_t pair_idx[16];      // bsums word k -> scale word of group k/2
  Iq2VbmiTables() {
    const uint8_t* ks = quant::ksigns_iq2xs();
    std::memcpy(signs, ks, 128);
    // Levels from the byte grid itself ({8, 25, 43} -> 0, 1, 2), formats.md 2.5.
    const uint64_t* grid = quant::iq2xxs_grid();
    for (int i = 0; i < 256; ++i) {
      uint16_t code = 0;
      for (int j = 0; j < 8; ++j) {
        const uint8_t g = static_cast<uint8_t>(grid[i] >> (8 * j));
        code = static_cast<uint16_t>(code | ((g == 8 ? 0 : g == 25 ? 1 : 2) << (2 * j)));
      }
      code_lo[i] = static_cast<uint8_t>(code);
      code_hi[i] = static_cast<uint8_t>(code >> 8);
    }
    const int levels[4] = {8, 25, 43, 0};
    for (int i = 0; i < 64; ++i) {
      const int g = levels[i & 3];
      value[i] = static_cast<uint8_t>((i & 4) ? 64 - g : 64 + g);
    }
    for (int c = 0; c < 4; ++c)
      for (int h = 0; h < 2; ++h)
        for (int L = 0; L < 8; ++L) {
          const int p = 8 * (2 * c + L / 4) + 4 * h + L % 4;  // merged-register byte
          uint8_t* s = spread[2 * c + h] + 8 * L;
          s[0] = static_cast<uint8_t>(p);       // code lo (first vpermi2b source)
          s[1] = static_cast<uint8_t>(64 + p);  // code hi (second source)
          s[2] = static_cast<uint8_t>(p);       // sign byte (masked vpermb of the signs)
          for (int j = 3; j < 8; ++j) s[j] = 0;
        }
    for (int L = 0; L < 8; ++L)
      for (int j = 0; j < 8; ++j) {
        ms_code[8 * L + j] = static_cast<uint8_t>(2 * j);
        ms_sign[8 * L + j] = static_cast<uint8_t>(14 + j);
        ms_sidx[8 * L + j] = static_cast<uint8_t>(32 + 7 * (j % 4));
      }
    for (int c = 0; c < 4; ++c)
      for (int k = 0; k < 32; ++k) scale_idx[c][k] = static_cast<int16_t>(4 * (2 * c + k / 16) + 2);
    for (int k = 0; k < 16; ++k) pair_idx[k] = static_cast<int16_t>(4 * (k / 2) + 2);
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

// Row x nt activation rows (nt <= kTileTokens); y[t * ldy] = vec_dot(row, act_t).
template <int NT>
void iq2_row(const BlockIQ2_XXS* w, const uint8_t* act, size_t ab, int64_t nblocks, float* y,
             size_t ldy) {
  __m512i code_lo[4], code_hi[4];
  for (int i = 0; i < 4; ++i) {
    code_lo[i] = ld(kT.code_lo + 64 * i);
    code_hi[i] = ld(kT.code_hi + 64 * i);
  }
  const __m512i signs0 = ld(kT.signs), signs1 = ld(kT.signs + 64);
  const __m512i value = ld(kT.value);
  const __m512i ms_code = ld(kT.ms_code), ms_sign = ld(kT.ms_sign), ms_sidx = ld(kT.ms_sidx);
  const __m512i three = _mm512_set1_epi8(3);
  const __m512i one = _mm512_set1_epi32(1);
  const __m256i pair_idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kT.pair_idx));
  const BlockQ8_K* x[NT];
  for (int t = 0; t < NT; ++t) x[t] = reinterpret_cast<const BlockQ8_K*>(act + t * ab);
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();

  for (int64_t b = 0; b < nblocks; b += 2) {
    const int nh = b + 1 < nblocks ? 2 : 1;
    const __m512i q0 = _mm512_loadu_si512(w[b].qs);
    const __m512i q1 = nh == 2 ? _mm512_loadu_si512(w[b + 1].qs) : q0;
    // bytes 0-3 of qword g: block b's grid indices of group g; bytes 4-7: block b+1's
    const __m512i gidx = _mm512_mask_blend_epi32(0xAAAA, q0, _mm512_slli_epi64(q1, 32));
    const __m512i sidx = _mm512_mask_multishift_epi64_epi8(
        _mm512_multishift_epi64_epi8(ms_sidx, q0), 0xF0F0F0F0F0F0F0F0ull, ms_sidx, q1);
    const __m512i sgn = _mm512_permutex2var_epi8(signs0, sidx, signs1);
    const __mmask64 hi = _mm512_movepi8_mask(gidx);
    const __m512i clo = lookup256(gidx, hi, code_lo);
    const __m512i chi = lookup256(gidx, hi, code_hi);
    for (int h = 0; h < nh; ++h) {
      const BlockIQ2_XXS& blk = w[b + h];
      const __m512i q = h == 0 ? q0 : q1;
      // (aux >> 27) | 1 = 2 s_g + 1 in the low word of each aux dword
      const __m512i scales = _mm512_or_si512(_mm512_srli_epi32(q, 27), one);
      __m512i sumi[NT];
      for (int t = 0; t < NT; ++t) sumi[t] = _mm512_setzero_si512();
      for (int c = 0; c < 4; ++c) {
        const __m512i sp_idx = ld(kT.spread[2 * c + h]);
        const __m512i lanes = _mm512_mask_permutexvar_epi8(_mm512_permutex2var_epi8(clo, sp_idx, chi),
                                                           0x0404040404040404ull, sp_idx, sgn);
        const __m512i lv = _mm512_multishift_epi64_epi8(ms_code, lanes);
        const __m512i sv = _mm512_multishift_epi64_epi8(ms_sign, lanes);
        // bits 0-1 from lv (level), the rest from sv (bit 2 = sign)
        const __m512i vi = _mm512_ternarylogic_epi64(lv, sv, three, 0xE4);
        const __m512i u = _mm512_permutexvar_epi8(vi, value);
        const __m512i sc = _mm512_permutexvar_epi16(ld(kT.scale_idx[c]), scales);
        for (int t = 0; t < NT; ++t) {
          const __m512i yv = _mm512_loadu_si512(x[t][b + h].qs + 64 * c);
          sumi[t] = _mm512_dpwssd_epi32(sumi[t], _mm512_maddubs_epi16(u, yv), sc);
        }
      }
      const __m256i sp = _mm512_castsi512_si256(
          _mm512_permutexvar_epi16(_mm512_castsi256_si512(pair_idx), scales));
      const float wd = _cvtsh_ss(blk.d);
      for (int t = 0; t < NT; ++t) {
        // offset correction: 64 * sum_k bsums_k * (2 s_{k/2} + 1), lanes 0..7
        const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t][b + h].bsums));
        const __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(bs, sp), 6);
        const __m512i s = _mm512_sub_epi32(sumi[t], _mm512_zextsi256_si512(corr));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(wd * x[t][b + h].d * 0.125f),
                                 acc[t]);
      }
    }
  }
  for (int t = 0; t < NT; ++t) y[t * ldy] = _mm512_reduce_add_ps(acc[t]);
}

float dot_iq2_xxs_vbmi(const void* w_row, const void* act, int64_t n) {
  float y;
  iq2_row<1>(static_cast<const BlockIQ2_XXS*>(w_row), static_cast<const uint8_t*>(act), 0,
             n / QK_K, &y, 1);
  return y;
}

void tile_iq2_xxs_vbmi(const void* w, size_t rb, int64_t nr, const void* act, size_t ab,
                       int64_t nt, int64_t n, float* y, size_t ldy) {
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  const uint8_t* a = static_cast<const uint8_t*>(act);
  for (int64_t r = 0; r < nr; ++r) {
    const BlockIQ2_XXS* row = reinterpret_cast<const BlockIQ2_XXS*>(wb + r * rb);
    int64_t t = 0;
    for (; t + 4 <= nt; t += 4) iq2_row<4>(row, a + t * ab, ab, n / QK_K, y + t * ldy + r, ldy);
    switch (nt - t) {
      case 3: iq2_row<3>(row, a + t * ab, ab, n / QK_K, y + t * ldy + r, ldy); break;
      case 2: iq2_row<2>(row, a + t * ab, ab, n / QK_K, y + t * ldy + r, ldy); break;
      case 1: iq2_row<1>(row, a + t * ab, ab, n / QK_K, y + t * ldy + r, ldy); break;
      default: break;
    }
  }
}

}  // namespace

const KernelTable& avx512vbmi_kernels() {
  static const KernelTable table = [] {
    KernelTable t = avx512_kernels();
    t.iq2_xxs = dot_iq2_xxs_vbmi;
    t.iq2_xxs_tile = tile_iq2_xxs_vbmi;
    return t;
  }();
  return table;
}

}  // namespace ds4::cpu::detail
