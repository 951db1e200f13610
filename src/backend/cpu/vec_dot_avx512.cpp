// AVX-512 (F, BW, VL, DQ, VNNI) dot products. Integer paths are exact: every int8 product
// is formed without saturation or wrap-around (unsigned offsets are undone with the
// activation block sums), so per-block integer sums equal the scalar reference's; only the
// float accumulation order differs (lanes, then one horizontal sum per row).
// GCC 12's intrinsic headers initialise "undefined" vectors from themselves (`__Y = __Y`),
// which -Wuninitialized reports inside _mm512_reduce_add_ps and the cast intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/avx512_common.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/q2_k_avx512.h"
#include "quant/blocks.h"
#include "quant/quant.h"

namespace ds4::cpu::detail {
namespace {

inline float f16(uint16_t h) { return _cvtsh_ss(h); }

inline uint32_t load_u32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Two 256-bit halves (one quant block each) as one register.
inline __m512i load2x256(const void* lo, const void* hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(static_cast<const __m256i*>(lo))),
                            _mm256_loadu_si256(static_cast<const __m256i*>(hi)), 1);
}

inline __m512 scale2(float lo, float hi) {
  return _mm512_insertf32x8(_mm512_set1_ps(lo), _mm256_set1_ps(hi), 1);
}

float dot_f32(const void* w_row, const void* act, int64_t n) {
  const float* w = static_cast<const float*>(w_row);
  const float* x = static_cast<const float*>(act);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + i), _mm512_maskz_loadu_ps(m, x + i), a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

// F16 and BF16 share the loop; only the widening differs.
template <bool kBf16>
inline __m512 widen16(__m256i h) {
  if constexpr (kBf16)
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  else
    return _mm512_cvtph_ps(h);
}

template <bool kBf16>
float dot_half(const void* w_row, const void* act, int64_t n) {
  const uint16_t* w = static_cast<const uint16_t*>(w_row);
  const float* x = static_cast<const float*>(act);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512i h = _mm512_loadu_si512(w + i);
    a0 = _mm512_fmadd_ps(widen16<kBf16>(_mm512_castsi512_si256(h)), _mm512_loadu_ps(x + i), a0);
    a1 = _mm512_fmadd_ps(widen16<kBf16>(_mm512_extracti64x4_epi64(h, 1)),
                         _mm512_loadu_ps(x + i + 16), a1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    const __m256i h = _mm256_maskz_loadu_epi16(m, w + i);
    a0 = _mm512_fmadd_ps(widen16<kBf16>(h), _mm512_maskz_loadu_ps(m, x + i), a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

// Q8_0 x Q8_0Act, two blocks per register. vpdpbusd multiplies unsigned by signed bytes,
// so the weights are offset to w+128 and 128*sum(x) is subtracted (vpdpbusd starts from
// -vpdpbusd(0x80, x)): exact for all bytes. NR weight rows x NT activation rows at once
// (matmul tiles; vec_dot is <1, 1>): each (row, token) keeps its own accumulators and gets
// exactly the float operations of the one-row kernel, in the same order.
template <int NR, int NT>
void q8_0_rows(const uint8_t* wp, size_t rb, const uint8_t* ap, size_t ab, int64_t nblocks,
               float* y, size_t ldy) {
  const __m512i off = _mm512_set1_epi8(static_cast<char>(0x80));
  const BlockQ8_0* w[NR];
  const BlockQ8_0Act* x[NT];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) w[r] = reinterpret_cast<const BlockQ8_0*>(wp + r * rb);
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) x[t] = reinterpret_cast<const BlockQ8_0Act*>(ap + t * ab);
  __m512 acc0[NR][NT], acc1[NR][NT];
  __m256 acc2[NR][NT];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      acc0[r][t] = acc1[r][t] = _mm512_setzero_ps();
      acc2[r][t] = _mm256_setzero_ps();
    }
  int64_t b = 0;
  for (; b + 4 <= nblocks; b += 4) {
    __m512i w0[NR], w1[NR];
    __m512 wd0[NR], wd1[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const BlockQ8_0* wr = w[r];
      w0[r] = _mm512_xor_si512(load2x256(wr[b].qs, wr[b + 1].qs), off);
      w1[r] = _mm512_xor_si512(load2x256(wr[b + 2].qs, wr[b + 3].qs), off);
      wd0[r] = scale2(f16_block_field(&wr[b].d), f16_block_field(&wr[b + 1].d));  // d + 32 codes
      wd1[r] = scale2(f16_block_field(&wr[b + 2].d), f16_block_field(&wr[b + 3].d));
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const BlockQ8_0Act* xt = x[t];
      const __m512i x0 = load2x256(xt[b].qs, xt[b + 1].qs), x1 = load2x256(xt[b + 2].qs, xt[b + 3].qs);
      const __m512i n0 = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, x0));
      const __m512i n1 = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, x1));
      const __m512 xd0 = scale2(xt[b].d, xt[b + 1].d), xd1 = scale2(xt[b + 2].d, xt[b + 3].d);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        // lane-wise f16(w.d) * x.d: the same IEEE product as the scalar one
        acc0[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(n0, w0[r], x0)),
                                     _mm512_mul_ps(wd0[r], xd0), acc0[r][t]);
        acc1[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(n1, w1[r], x1)),
                                     _mm512_mul_ps(wd1[r], xd1), acc1[r][t]);
      }
    }
  }
  const __m256i off256 = _mm512_castsi512_si256(off);
  for (; b < nblocks; ++b) {
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t][b].qs));
      const __m256i n = _mm256_sub_epi32(_mm256_setzero_si256(),
                                         _mm256_dpbusd_epi32(_mm256_setzero_si256(), off256, xq));
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r][b].qs));
        const __m256i p = _mm256_dpbusd_epi32(n, _mm256_xor_si256(wq, off256), xq);
        acc2[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(f16(w[r][b].d) * x[t][b].d),
                                     acc2[r][t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t)
      y[t * ldy + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r][t], acc1[r][t])) +
                       _mm512_reduce_add_ps(_mm512_zextps256_ps512(acc2[r][t]));
}

float dot_q8_0(const void* w_row, const void* act, int64_t n) {
  float y;
  q8_0_rows<1, 1>(static_cast<const uint8_t*>(w_row), 0, static_cast<const uint8_t*>(act), 0,
                  n / QK8_0, &y, 1);
  return y;
}

// vpermw indices that spread 16 per-sub-block int16 scales over the 32 int16 pair sums of
// a 64-element chunk: word k of chunk c covers elements 64c+2k, 64c+2k+1.
struct ScaleIndex {
  alignas(64) int16_t q2k[4][32];   // Q2_K: 16-element sub-blocks -> scale 4c + k/8
  alignas(64) int16_t q4k[4][32];   // Q4_K: 32-element sub-blocks -> scale 2c + k/16
  alignas(64) int16_t iq2[4][32];   // IQ2_XXS: word of (aux >> 27) | 1 for group 2c + k/16
  alignas(32) int16_t iq2_pairs[16];  // IQ2_XXS: bsums word k -> scale of group k/2
  ScaleIndex() {
    for (int c = 0; c < 4; ++c)
      for (int k = 0; k < 32; ++k) {
        q2k[c][k] = static_cast<int16_t>(4 * c + k / 8);
        q4k[c][k] = static_cast<int16_t>(2 * c + k / 16);
        // group g's aux is dword 2g+1 of the 64 payload bytes, i.e. word 4g+2
        iq2[c][k] = static_cast<int16_t>(4 * (2 * c + k / 16) + 2);
      }
    for (int k = 0; k < 16; ++k) iq2_pairs[k] = static_cast<int16_t>(4 * (k / 2) + 2);
  }
};
const ScaleIndex kIdx;

// Q2_K unpacked with shifts and masks (q2_k_avx512.h): the low / high 256 bits of codes
// register 2h + s are bit fields 2s / 2s + 1 of bytes 32h .. 32h+31; vpermw spreads the
// 16 scale words.
struct Q2kShiftUnpack {
  __m512i idx[4];
  Q2kShiftUnpack() {
    for (int c = 0; c < 4; ++c) idx[c] = _mm512_load_si512(kIdx.q2k[c]);
  }
  [[gnu::always_inline]] void operator()(const BlockQ2_K& blk, Q2kBlock& u) const {
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0xF);
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.scales));
    const __m512i sc = _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(raw, m4)));
    u.mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m4));
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 32 * h));
      const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 2), 1);
      u.codes[2 * h] = _mm512_and_si512(v, m3);                            // 128h + 0..63
      u.codes[2 * h + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m3);  // 128h + 64..127
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) u.scales[c] = _mm512_permutexvar_epi16(idx[c], sc);
  }
};

// Q4_K x Q8_K (formats.md 2.10), same scheme with 4-bit codes and 32-element sub-blocks.
float dot_q4_k(const void* w_row, const void* act, int64_t n) {
  const BlockQ4_K* w = static_cast<const BlockQ4_K*>(w_row);
  const BlockQ8_K* x = static_cast<const BlockQ8_K*>(act);
  const __m512i m4 = _mm512_set1_epi8(0xF);
  __m512i idx[4];
  for (int c = 0; c < 4; ++c) idx[c] = _mm512_load_si512(kIdx.q4k[c]);
  __m512 acc = _mm512_setzero_ps();
  __m256 accm = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / QK_K; ++b) {
    // Unpack the 6-bit scales (bytes 0..7) and mins (bytes 8..15), as ggml does.
    uint32_t u[4];
    std::memcpy(u, w[b].scales, 12);
    u[3] = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
    const uint32_t m03 = u[1] & 0x3f3f3f3f;
    u[1] = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
    u[2] = m03;
    u[0] &= 0x3f3f3f3f;
    const __m128i sm = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u));
    const __m512i sc = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sm));
    // mins duplicated per 16-element bsum: m0 m0 m1 m1 ...
    const __m128i mins = _mm_unpackhi_epi8(sm, sm);
    const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].bsums));
    const __m256i msum = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mins), bs);
    __m512i sumi = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs + 32 * c));
      const __m512i v = _mm512_and_si512(
          _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1), m4);
      const __m512i y = _mm512_loadu_si512(x[b].qs + 64 * c);
      sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(v, y),
                                 _mm512_permutexvar_epi16(idx[c], sc));
    }
    const float dall = x[b].d * f16(w[b].d), dmin = x[b].d * f16(w[b].dmin);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_set1_ps(dall), acc);
    accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(dmin), accm);
  }
  return _mm512_reduce_add_ps(acc) - _mm512_reduce_add_ps(_mm512_castps256_ps512(accm));
}

// The 64 sign bits of two IQ2_XXS groups (bit 8k+j = sign of element j of sub-group k):
// pdep spreads the four 7-bit sign indices of each group into bytes, and bit 7 of each
// byte is their parity, which is exactly ksigns_iq2xs (formats.md 2.5).
__attribute__((target("bmi2"))) inline uint64_t iq2_signs(uint32_t aux_lo, uint32_t aux_hi) {
  const uint64_t src = (aux_lo & 0x0FFFFFFFu) | (uint64_t(aux_hi & 0x0FFFFFFFu) << 28);
  const uint64_t m = _pdep_u64(src, 0x7F7F7F7F7F7F7F7Full);
  uint64_t p = m ^ (m >> 4);
  p ^= p >> 2;
  p ^= p >> 1;
  return m | ((p & 0x0101010101010101ull) << 7);
}

// iq2xxs_grid with 64 added to every byte (72/89/107): 64 +- G is then 128 - (64 + G)
// for negated weights, one masked subtract from this table.
struct Iq2GridPlus64 {
  alignas(64) uint64_t t[256];
  Iq2GridPlus64() {
    const uint64_t* grid = quant::iq2xxs_grid();
    for (int i = 0; i < 256; ++i) t[i] = grid[i] + 0x4040404040404040ull;  // bytes <= 43: no carry
  }
};

// IQ2_XXS x Q8_K (formats.md 2.10), two 32-element groups per register. The grid bytes
// are loaded with +64 and reflected (128 - x) where the sign bit is set, giving 64 +- G in
// 21..107: unsigned for vpmaddubsw and far from saturation. The offset comes back out
// through 64 * sum_g (2 s_g + 1) * (bsums_2g + bsums_2g+1). Every lane of the corrected
// block sum stays below 2^24 (|lane| <= 6.8e6 + 8.1e6), so its conversion to float is
// exact; blocks are accumulated per lane, like the other types.
__attribute__((target("bmi2"))) float dot_iq2_xxs(const void* w_row, const void* act, int64_t n) {
  static const Iq2GridPlus64 table;
  const long long* grid = reinterpret_cast<const long long*>(table.t);
  const BlockIQ2_XXS* w = static_cast<const BlockIQ2_XXS*>(w_row);
  const BlockQ8_K* x = static_cast<const BlockQ8_K*>(act);
  const __m512i c128 = _mm512_set1_epi8(static_cast<char>(128));
  const __m512i one = _mm512_set1_epi32(1);
  __m512i idx[4];
  for (int c = 0; c < 4; ++c) idx[c] = _mm512_load_si512(kIdx.iq2[c]);
  const __m256i pair_idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kIdx.iq2_pairs));
  __m512 acc = _mm512_setzero_ps();
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* qs = reinterpret_cast<const uint8_t*>(w[b].qs);
    // (aux >> 27) | 1 = 2 s_g + 1 in the low word of each aux dword
    const __m512i scales = _mm512_or_si512(_mm512_srli_epi32(_mm512_loadu_si512(qs), 27), one);
    __m512i sumi = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) {
      const uint8_t* g = qs + 16 * c;
      // Scalar loads + inserts: about 3x faster than vpgatherqq on Zen 5.
      const __m256i g0 = _mm256_set_epi64x(grid[g[3]], grid[g[2]], grid[g[1]], grid[g[0]]);
      const __m256i g1 = _mm256_set_epi64x(grid[g[11]], grid[g[10]], grid[g[9]], grid[g[8]]);
      const __m512i gv = _mm512_inserti64x4(_mm512_castsi256_si512(g0), g1, 1);
      const __mmask64 neg = iq2_signs(load_u32(g + 4), load_u32(g + 12));
      const __m512i u = _mm512_mask_sub_epi8(gv, neg, c128, gv);
      const __m512i y = _mm512_loadu_si512(x[b].qs + 64 * c);
      sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(u, y),
                                 _mm512_permutexvar_epi16(idx[c], scales));
    }
    // offset correction: 64 * sum_k bsums_k * (2 s_{k/2} + 1), lanes 0..7
    const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].bsums));
    const __m256i sp = _mm512_castsi512_si256(
        _mm512_permutexvar_epi16(_mm512_castsi256_si512(pair_idx), scales));
    const __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(bs, sp), 6);
    sumi = _mm512_sub_epi32(sumi, _mm512_zextsi256_si512(corr));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_set1_ps(f16(w[b].d) * x[b].d * 0.125f),
                          acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// MXFP4 x Q8_0Act, two blocks per register. The nibbles index kvalues + 12 (unsigned,
// 0..24) through vpshufb; 12 * sum(x) is subtracted again: exact.
float dot_mxfp4(const void* w_row, const void* act, int64_t n) {
  const BlockMXFP4* w = static_cast<const BlockMXFP4*>(w_row);
  const BlockQ8_0Act* x = static_cast<const BlockQ8_0Act*>(act);
  const int64_t nblocks = n / QK_MXFP4;
  alignas(16) int8_t lut[16];
  for (int i = 0; i < 16; ++i) lut[i] = static_cast<int8_t>(kMxfp4Values[i] + 12);
  const __m512i table = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(lut)));
  const __m512i m4 = _mm512_set1_epi8(0xF);
  const __m512i twelve = _mm512_set1_epi8(12);
  __m512 acc = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b < nblocks; b += 2) {
    const bool pair = b + 1 < nblocks;
    const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].qs));
    const __m128i q1 = pair ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b + 1].qs))
                            : _mm_setzero_si128();
    const __m256i q01 = _mm256_inserti128_si256(_mm256_castsi128_si256(q0), q1, 1);
    // per 128-bit lane: [block lo nibbles | block hi nibbles] = elements 0..15, 16..31
    const __m512i nib = _mm512_and_si512(
        _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 4, 5, 2, 3, 6, 7),
                                 _mm512_inserti64x4(_mm512_castsi256_si512(q01),
                                                    _mm256_srli_epi16(q01, 4), 1)),
        m4);
    const __m512i u = _mm512_shuffle_epi8(table, nib);
    const __m512i y = pair ? load2x256(x[b].qs, x[b + 1].qs)
                           : _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].qs)));
    __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, y);
    p = _mm512_sub_epi32(p, _mm512_dpbusd_epi32(_mm512_setzero_si512(), twelve, y));
    const float s0 = mxfp4_scale(w[b].e) * x[b].d;
    const float s1 = pair ? mxfp4_scale(w[b + 1].e) * x[b + 1].d : 0.0f;
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale2(s0, s1), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// Activation quantizers: the bytes of quant::quantize_row_q8_k / quantize_row_q8_0_act
// for every input (NaN and infinity included), 16 floats per instruction. The scalar
// code's float operations are kept one for one: products and sums are rounded once each
// (the explicit-rounding add cannot be contracted into an FMA), and max-with-NaN picks the
// same operand as the scalar comparisons do.
inline __m512 abs16(const float* p) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(p)), _mm512_set1_epi32(0x7FFFFFFF)));
}

void quantize_q8_k(const float* x, void* act, int64_t n) {
  BlockQ8_K* y = static_cast<BlockQ8_K*>(act);
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const float* xb = x + b * QK_K;
    BlockQ8_K& out = y[b];
    // vmaxps returns its second operand when either is NaN: NaNs never win, as in `ax > amax`
    __m512 vmax = _mm512_setzero_ps();
    for (int i = 0; i < QK_K; i += 16) vmax = _mm512_max_ps(abs16(xb + i), vmax);
    const float amax = _mm512_reduce_max_ps(vmax);
    if (amax == 0.0f) {
      std::memset(&out, 0, sizeof(out));
      continue;
    }
    // the first element of that magnitude gives the signed maximum
    float max = 0.0f;
    for (int i = 0; i < QK_K; i += 16) {
      const __mmask16 m = _mm512_cmp_ps_mask(abs16(xb + i), _mm512_set1_ps(amax), _CMP_EQ_OQ);
      if (m) {
        max = xb[i + __builtin_ctz(m)];
        break;
      }
    }
    const float iscale = -127.0f / max;
    const __m512 vscale = _mm512_set1_ps(iscale);
    const __m512 magic = _mm512_set1_ps(12582912.f);  // nearest_int: 1.5 * 2^23
    for (int i = 0; i < QK_K; i += 16) {
      const __m512 v = _mm512_add_round_ps(_mm512_mul_ps(vscale, _mm512_loadu_ps(xb + i)), magic,
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      __m512i q = _mm512_sub_epi32(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x007FFFFF)),
                                   _mm512_set1_epi32(0x00400000));
      q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(-128)), _mm512_set1_epi32(127));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out.qs + i), _mm512_cvtepi32_epi8(q));
      out.bsums[i / 16] = static_cast<int16_t>(_mm512_reduce_add_epi32(q));
    }
    out.d = 1.0f / iscale;
  }
}

void quantize_q8_0_act(const float* x, void* act, int64_t n) {
  BlockQ8_0Act* y = static_cast<BlockQ8_0Act*>(act);
  const __m512 lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
  for (int64_t b = 0; b < n / QK8_0; ++b) {
    const float* xb = x + b * QK8_0;
    // std::max(amax, |x|) keeps amax for a NaN, and so does vmaxps with |x| first
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(abs16(xb + 16), _mm512_max_ps(abs16(xb), _mm512_setzero_ps())));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = d;
#pragma GCC unroll 2
    for (int i = 0; i < QK8_0; i += 16) {
      const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(xb + i), _mm512_set1_ps(id)),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      // fmax(r, -128) is -128 for a NaN r: vmaxps returns its second operand then
      const __m512 q = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs + i), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(q)));
    }
  }
}

// Matmul tile: Q8_0 in 2 rows x 4 tokens (Q2_K: q2_k_avx512.h).
void tile_q8_0(const void* w, size_t rb, int64_t nr, const void* act, size_t ab, int64_t nt,
               int64_t n, float* y, size_t ldy) {
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  const uint8_t* a = static_cast<const uint8_t*>(act);
  const int64_t nblocks = n / QK8_0;
  for (int64_t t = 0; t < nt; t += 4) {
    const int64_t k = std::min<int64_t>(4, nt - t);
    const uint8_t* at = a + t * ab;
    float* yt = y + t * ldy;
    int64_t r = 0;
    // One token (matvec): rows one by one; two interleaved row streams from DRAM measured
    // 1.9x slower (prefetching), though faster when L2-resident.
    for (; k > 1 && r + 2 <= nr; r += 2) {
      const uint8_t* wr = wb + r * rb;
      switch (k) {
        case 4: q8_0_rows<2, 4>(wr, rb, at, ab, nblocks, yt + r, ldy); break;
        case 3: q8_0_rows<2, 3>(wr, rb, at, ab, nblocks, yt + r, ldy); break;
        case 2: q8_0_rows<2, 2>(wr, rb, at, ab, nblocks, yt + r, ldy); break;
        default: q8_0_rows<2, 1>(wr, rb, at, ab, nblocks, yt + r, ldy); break;
      }
    }
    for (; r < nr; ++r) {
      const uint8_t* wr = wb + r * rb;
      switch (k) {
        case 4: q8_0_rows<1, 4>(wr, rb, at, ab, nblocks, yt + r, ldy); break;
        case 3: q8_0_rows<1, 3>(wr, rb, at, ab, nblocks, yt + r, ldy); break;
        case 2: q8_0_rows<1, 2>(wr, rb, at, ab, nblocks, yt + r, ldy); break;
        default: q8_0_rows<1, 1>(wr, rb, at, ab, nblocks, yt + r, ldy); break;
      }
    }
  }
}

}  // namespace

const KernelTable& avx512_kernels() {
  static const KernelTable table{dot_f32,  dot_half<false>, dot_half<true>, dot_q8_0,
                                 q2_k_dot<Q2kShiftUnpack>, dot_q4_k, dot_iq2_xxs, dot_mxfp4,
                                 tile_q8_0, q2_k_tile<Q2kShiftUnpack>, nullptr,
                                 quantize_q8_k, quantize_q8_0_act};
  return table;
}

}  // namespace ds4::cpu::detail
