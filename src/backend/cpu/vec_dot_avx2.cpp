// AVX2 + FMA + F16C dot products, for x86-64 CPUs without AVX-512. Like the AVX-512 file,
// every integer path is exact (no vpmaddubsw saturation, no int8 negation wrap-around), so
// only the float accumulation order differs from the scalar reference.
// GCC 12's intrinsic headers initialise "undefined" vectors from themselves (`__Y = __Y`),
// which -Wuninitialized reports inside _mm512_reduce_add_ps and the cast intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "backend/cpu/kernels.h"
#include "quant/blocks.h"
#include "quant/quant.h"

namespace ds4::cpu::detail {
namespace {

inline float f16(uint16_t h) { return _cvtsh_ss(h); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

inline __m256i loadu(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

float dot_f32(const void* w_row, const void* act, int64_t n) {
  const float* w = static_cast<const float*>(w_row);
  const float* x = static_cast<const float*>(act);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += w[i] * x[i];
  return hsum(_mm256_add_ps(a0, a1)) + tail;
}

template <bool kBf16>
inline __m256 widen8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (kBf16)
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  else
    return _mm256_cvtph_ps(h);
}

template <bool kBf16>
float dot_half(const void* w_row, const void* act, int64_t n) {
  const uint16_t* w = static_cast<const uint16_t*>(w_row);
  const float* x = static_cast<const float*>(act);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(widen8<kBf16>(w + i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(widen8<kBf16>(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
  }
  float tail = 0.0f;
  for (; i < n; ++i) {
    const uint32_t bits = kBf16 ? uint32_t(w[i]) << 16 : 0;
    float wf;
    if constexpr (kBf16)
      std::memcpy(&wf, &bits, 4);
    else
      wf = f16(w[i]);
    tail += wf * x[i];
  }
  return hsum(_mm256_add_ps(a0, a1)) + tail;
}

// Q8_0 x Q8_0Act. Without VNNI the exact way is to widen both to int16 and use vpmaddwd:
// the vpmaddubsw sign trick would wrap for a -128 byte.
float dot_q8_0(const void* w_row, const void* act, int64_t n) {
  const BlockQ8_0* w = static_cast<const BlockQ8_0*>(w_row);
  const BlockQ8_0Act* x = static_cast<const BlockQ8_0Act*>(act);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  const int64_t nblocks = n / QK8_0;
  auto block = [&](int64_t b) {
    const __m256i wq = loadu(w[b].qs), xq = loadu(x[b].qs);
    const __m256i lo = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(wq)),
                                         _mm256_cvtepi8_epi16(_mm256_castsi256_si128(xq)));
    const __m256i hi = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(wq, 1)),
                                         _mm256_cvtepi8_epi16(_mm256_extracti128_si256(xq, 1)));
    return _mm256_cvtepi32_ps(_mm256_add_epi32(lo, hi));
  };
  int64_t b = 0;
  for (; b + 2 <= nblocks; b += 2) {
    acc0 = _mm256_fmadd_ps(block(b), _mm256_set1_ps(f16(w[b].d) * x[b].d), acc0);
    acc1 = _mm256_fmadd_ps(block(b + 1), _mm256_set1_ps(f16(w[b + 1].d) * x[b + 1].d), acc1);
  }
  if (b < nblocks) acc0 = _mm256_fmadd_ps(block(b), _mm256_set1_ps(f16(w[b].d) * x[b].d), acc0);
  return hsum(_mm256_add_ps(acc0, acc1));
}

// vpshufb patterns that turn 16 scale bytes (in both lanes) into int16 words: lane 0 gets
// scale s, lane 1 scale s+1, for the 32 elements (two 16-element sub-blocks) of one load.
struct Q2kShuffles {
  alignas(32) int8_t idx[8][32];
  Q2kShuffles() {
    for (int p = 0; p < 8; ++p)
      for (int k = 0; k < 32; ++k)
        idx[p][k] = (k & 1) ? int8_t(-128) : static_cast<int8_t>(2 * p + (k >= 16 ? 1 : 0));
  }
};
const Q2kShuffles kQ2k;

// Q2_K x Q8_K (formats.md 2.10): unsigned 2-bit codes through vpmaddubsw (exact), scales
// through vpmaddwd, mins through bsums.
float dot_q2_k(const void* w_row, const void* act, int64_t n) {
  const BlockQ2_K* w = static_cast<const BlockQ2_K*>(w_row);
  const BlockQ8_K* x = static_cast<const BlockQ8_K*>(act);
  const __m256i m3 = _mm256_set1_epi8(3);
  const __m128i m4 = _mm_set1_epi8(0xF);
  __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].scales));
    const __m256i sc = _mm256_broadcastsi128_si256(_mm_and_si128(raw, m4));
    const __m256i mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m4));
    const __m256i msum = _mm256_madd_epi16(mn, loadu(x[b].bsums));
    __m256i sumi = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i q = loadu(w[b].qs + 32 * h);
      for (int j = 0; j < 4; ++j) {
        const __m256i v = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
        const __m256i p = _mm256_maddubs_epi16(v, loadu(x[b].qs + 128 * h + 32 * j));
        const __m256i s = _mm256_shuffle_epi8(sc, _mm256_load_si256(
                                                      reinterpret_cast<const __m256i*>(kQ2k.idx[4 * h + j])));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
      }
    }
    const float dall = x[b].d * f16(w[b].d), dmin = x[b].d * f16(w[b].dmin);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(dall), acc);
    accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(dmin), accm);
  }
  return hsum(acc) - hsum(accm);
}

// Q4_K x Q8_K (formats.md 2.10).
float dot_q4_k(const void* w_row, const void* act, int64_t n) {
  const BlockQ4_K* w = static_cast<const BlockQ4_K*>(w_row);
  const BlockQ8_K* x = static_cast<const BlockQ8_K*>(act);
  const __m256i m4 = _mm256_set1_epi8(0xF);
  __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / QK_K; ++b) {
    uint32_t u[4];
    std::memcpy(u, w[b].scales, 12);
    u[3] = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
    const uint32_t m03 = u[1] & 0x3f3f3f3f;
    u[1] = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
    u[2] = m03;
    u[0] &= 0x3f3f3f3f;
    uint8_t sc[16];
    std::memcpy(sc, u, 16);
    const __m128i sm = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u));
    const __m256i msum = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm)),
                                           loadu(x[b].bsums));
    __m256i sumi = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i q = loadu(w[b].qs + 32 * c);
      const __m256i lo = _mm256_and_si256(q, m4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      const __m256i p0 = _mm256_maddubs_epi16(lo, loadu(x[b].qs + 64 * c));
      const __m256i p1 = _mm256_maddubs_epi16(hi, loadu(x[b].qs + 64 * c + 32));
      sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * c])));
      sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * c + 1])));
    }
    const float dall = x[b].d * f16(w[b].d), dmin = x[b].d * f16(w[b].dmin);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(dall), acc);
    accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(dmin), accm);
  }
  return hsum(acc) - hsum(accm);
}

// ksigns_iq2xs expanded to +-1 bytes for vpsignb (bit j set -> element j negative); the
// table is i | parity(i) << 7 (formats.md 2.5), so it is computed rather than copied.
struct Iq2Signs {
  uint64_t s[128];
  Iq2Signs() {
    for (int i = 0; i < 128; ++i) {
      const int bits = i | ((__builtin_popcount(i) & 1) << 7);
      uint64_t v = 0;
      for (int j = 0; j < 8; ++j) v |= uint64_t((bits >> j) & 1 ? 0xFF : 0x01) << (8 * j);
      s[i] = v;
    }
  }
};
const Iq2Signs kIq2Signs;

// Group scales 2 s + 1 of an IQ2_XXS block as bytes, the same 8 in both 128-bit lanes (see
// iq2_scale_bytes), and the vpshufb indices that spread them into 16-bit words.
struct Iq2ScaleIdx {
  alignas(32) uint8_t group[8][32];  // [g]: every word <- 2 s_g + 1
  alignas(32) uint8_t pair[32];      // word k <- 2 s_{k/2} + 1 (the bsums of 16 elements)
  Iq2ScaleIdx() {
    // byte position of group g in iq2_scale_bytes: lane-0 aux of groups 0,1 then the
    // lane-0 aux of groups 4,5 (bytes 0-3), the same of the upper lanes (bytes 4-7)
    const uint8_t pos[8] = {0, 1, 4, 5, 2, 3, 6, 7};
    for (int g = 0; g < 8; ++g)
      for (int k = 0; k < 16; ++k) {
        group[g][2 * k] = pos[g];
        group[g][2 * k + 1] = 0x80;  // high byte zero
      }
    for (int k = 0; k < 16; ++k) {
      pair[2 * k] = pos[(k % 8) / 2 + 4 * (k / 8)];
      pair[2 * k + 1] = 0x80;
    }
  }
};
const Iq2ScaleIdx kIq2ScaleIdx;

// (aux >> 27) | 1 = 2 s_g + 1 of the eight groups of one block, as bytes 0-7 of both lanes
// (order per Iq2ScaleIdx::pos): 7 vector ops per block instead of scalar shifts and a
// broadcast per group.
inline __m256i iq2_scale_bytes(const BlockIQ2_XXS& blk) {
  const __m256i lo = loadu(blk.qs), hi = loadu(blk.qs + 16);  // groups 0-3, 4-7
  // dword 2g+1 (the aux of group g or g+4): byte 0 <- 2 s_g + 1, byte 1 <- 2 s_{g+4} + 1
  const __m256i s = _mm256_or_si256(
      _mm256_or_si256(_mm256_srli_epi32(lo, 27), _mm256_slli_epi32(_mm256_srli_epi32(hi, 27), 8)),
      _mm256_set1_epi16(0x0101));
  // per lane: bytes 0-3 <- {g, g+2, g+4, g+6} of that lane's two aux dwords
  const __m256i packed = _mm256_shuffle_epi8(
      s, _mm256_setr_epi8(4, 12, 5, 13, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                          4, 12, 5, 13, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
  return _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
}

// IQ2_XXS x Q8_K (formats.md 2.10). Signed grid bytes (+-8/25/43) plus 64 are unsigned
// for vpmaddubsw without saturation; the offset is removed through bsums (in the int32 lanes,
// before the exact block reduction).
float dot_iq2_xxs(const void* w_row, const void* act, int64_t n) {
  const BlockIQ2_XXS* w = static_cast<const BlockIQ2_XXS*>(w_row);
  const BlockQ8_K* x = static_cast<const BlockQ8_K*>(act);
  const uint64_t* grid = quant::iq2xxs_grid();
  const uint64_t* sg = kIq2Signs.s;
  const __m256i off = _mm256_set1_epi8(64);
  float sum = 0.0f;
  for (int64_t b = 0; b < n / QK_K; ++b) {
    const uint8_t* qs = reinterpret_cast<const uint8_t*>(w[b].qs);
    const __m256i scales = iq2_scale_bytes(w[b]);
    // -64 * sum_k bsums_k * (2 s_{k/2} + 1) in lanes 0..7
    const __m256i corr = _mm256_madd_epi16(loadu(x[b].bsums),
                                           _mm256_shuffle_epi8(scales, loadu(kIq2ScaleIdx.pair)));
    __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(corr, 6));
    for (int g = 0; g < 8; ++g) {
      const uint8_t* a = qs + 8 * g;
      uint32_t aux;
      std::memcpy(&aux, a + 4, 4);
      const __m256i gv = _mm256_set_epi64x(static_cast<long long>(grid[a[3]]), static_cast<long long>(grid[a[2]]),
                                           static_cast<long long>(grid[a[1]]), static_cast<long long>(grid[a[0]]));
      const __m256i sv = _mm256_set_epi64x(
          static_cast<long long>(sg[(aux >> 21) & 127]), static_cast<long long>(sg[(aux >> 14) & 127]),
          static_cast<long long>(sg[(aux >> 7) & 127]), static_cast<long long>(sg[aux & 127]));
      const __m256i u = _mm256_add_epi8(_mm256_sign_epi8(gv, sv), off);
      const __m256i p = _mm256_maddubs_epi16(u, loadu(x[b].qs + 32 * g));
      const __m256i ls = _mm256_shuffle_epi8(scales, loadu(kIq2ScaleIdx.group[g]));
      sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, ls));
    }
    // Lanes can exceed 2^24: reduce exactly in int32 first, then accumulate like the
    // scalar reference.
    const int32_t bsum = hsum_i32(sumi);
    sum = std::fmaf(f16(w[b].d) * x[b].d * 0.125f, static_cast<float>(bsum), sum);
  }
  return sum;
}

// MXFP4 x Q8_0Act: nibbles -> kvalues + 12 (unsigned) by vpshufb, offset removed exactly.
float dot_mxfp4(const void* w_row, const void* act, int64_t n) {
  const BlockMXFP4* w = static_cast<const BlockMXFP4*>(w_row);
  const BlockQ8_0Act* x = static_cast<const BlockQ8_0Act*>(act);
  alignas(16) int8_t lut[16];
  for (int i = 0; i < 16; ++i) lut[i] = static_cast<int8_t>(kMxfp4Values[i] + 12);
  const __m256i table = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(lut)));
  const __m128i m4 = _mm_set1_epi8(0xF);
  const __m256i twelve = _mm256_set1_epi8(12);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / QK_MXFP4; ++b) {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].qs));
    const __m256i nib = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
    const __m256i u = _mm256_shuffle_epi8(table, nib);
    const __m256i y = loadu(x[b].qs);
    const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(u, y), _mm256_maddubs_epi16(twelve, y));
    const __m256i s = _mm256_madd_epi16(p, ones);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(mxfp4_scale(w[b].e) * x[b].d), acc);
  }
  return hsum(acc);
}

}  // namespace

const KernelTable& avx2_kernels() {
  static const KernelTable table{dot_f32,  dot_half<false>, dot_half<true>, dot_q8_0,
                                 dot_q2_k, dot_q4_k,        dot_iq2_xxs,    dot_mxfp4};
  return table;
}

}  // namespace ds4::cpu::detail
