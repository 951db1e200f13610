// Q2_K x Q8_K on AVX-512 (formats.md 2.10), shared by two tiers that differ only in how a
// block's 2-bit codes and 4-bit scales are unpacked (the "Unpack" policy): shifts and masks
// plus vpermw (vec_dot_avx512.cpp, Isa::Avx512) or GF(2) affine byte maps plus vpermb
// (q2_k_gfni_avx512.cpp, Isa::Avx512Vbmi). Both produce the same registers, so both tiers
// give identical bits. Include only from *_avx512.cpp files; everything here has internal
// linkage, so each file gets its own copy compiled for its own target flags.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "quant/blocks.h"

namespace ds4::cpu::detail {
namespace {

// One Q2_K block unpacked: codes[c] = the 2-bit codes of elements 64c .. 64c+63 (bytes),
// scales[c] = the 4-bit sub-block scale of each of their 32 element pairs (int16 words,
// word k -> scale 4c + k/8), mins = the 16 4-bit mins (int16 words).
struct Q2kBlock {
  __m512i codes[4], scales[4];
  __m256i mins;
};

// 2-bit codes are unsigned, so vpmaddubsw forms exact pair sums; vpdpwssd applies the
// sub-block scales; the mins go through bsums. One weight row x NT activation rows (matmul
// tiles; vec_dot is NT = 1): the codes and scales of a block are unpacked once, and each
// token gets exactly the one-row kernel's float operations.
template <class Unpack, int NT>
void q2_k_rows(const Unpack& unpack, const uint8_t* wp, const uint8_t* ap, size_t ab, int64_t nblocks,
               float* y, size_t ldy) {
  const BlockQ2_K* w = reinterpret_cast<const BlockQ2_K*>(wp);
  const BlockQ8_K* x[NT];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) x[t] = reinterpret_cast<const BlockQ8_K*>(ap + t * ab);
  __m512 acc[NT];
  __m256 accm[NT];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) {
    acc[t] = _mm512_setzero_ps();
    accm[t] = _mm256_setzero_ps();
  }
  const __m512i lane6 = _mm512_set1_epi32(6);
  const __m256i lane7 = _mm256_set1_epi32(7);
  for (int64_t b = 0; b < nblocks; ++b) {
    // Matvec (one token) streams the row from DRAM: software prefetch into L2 2 KiB ahead
    // (two lines per 84-byte block). On the Intel Xeon of the device machine this took
    // 2-thread expert_down from 66 % to 93 % of the read bandwidth (docs/perf.md); neutral
    // within noise on the Zen 5 VM. Matmul tiles reuse the rows from L2 and skip it.
    if (NT == 1) {
      _mm_prefetch(reinterpret_cast<const char*>(w + b) + 2048, _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(w + b) + 2048 + 64, _MM_HINT_T1);
    }
    Q2kBlock u;
    unpack(w[b], u);
    // d and dmin (the block's last 4 bytes) converted together by one vcvtph2ps with a
    // memory operand: the 16 bytes ending there give lanes 6 and 7 (lanes 0-5 are payload
    // and are never computed with: the multiply below is masked)
    const __m256 wd_wm = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].qs + 52)));
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const BlockQ8_K& xb = x[t][b];
      const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.bsums));
      const __m256i msum = _mm256_madd_epi16(u.mins, bs);
      // Integer sums are exact, so two chains (started by vpmaddwd, equal to vpdpwssd from
      // zero here: |pair sums| <= 2 * 3 * 128 * 15) give the same lanes as one.
      __m512i s0 = _mm512_madd_epi16(_mm512_maddubs_epi16(u.codes[0], _mm512_loadu_si512(xb.qs)), u.scales[0]);
      __m512i s1 = _mm512_madd_epi16(_mm512_maddubs_epi16(u.codes[1], _mm512_loadu_si512(xb.qs + 64)), u.scales[1]);
      s0 = _mm512_dpwssd_epi32(s0, _mm512_maddubs_epi16(u.codes[2], _mm512_loadu_si512(xb.qs + 128)), u.scales[2]);
      s1 = _mm512_dpwssd_epi32(s1, _mm512_maddubs_epi16(u.codes[3], _mm512_loadu_si512(xb.qs + 192)), u.scales[3]);
      // lanes 6, 7: xb.d * d, xb.d * dmin (the same IEEE products as scalar multiplies)
      const __m256 dall_dmin = _mm256_maskz_mul_ps(0xC0, _mm256_set1_ps(xb.d), wd_wm);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)),
                               _mm512_permutexvar_ps(lane6, _mm512_castps256_ps512(dall_dmin)), acc[t]);
      accm[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_permutexvar_ps(lane7, dall_dmin), accm[t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t)
    y[t * ldy] = _mm512_reduce_add_ps(acc[t]) - _mm512_reduce_add_ps(_mm512_zextps256_ps512(accm[t]));
}

template <class Unpack>
float q2_k_dot(const void* w_row, const void* act, int64_t n) {
  const Unpack unpack;
  float y;
  q2_k_rows<Unpack, 1>(unpack, static_cast<const uint8_t*>(w_row), static_cast<const uint8_t*>(act), 0,
                       n / QK_K, &y, 1);
  return y;
}

// Matmul tile (kernels.h TileFn): one row x up to 4 tokens at a time (register budget).
template <class Unpack>
void q2_k_tile(const void* w, size_t rb, int64_t nr, const void* act, size_t ab, int64_t nt, int64_t n,
               float* y, size_t ldy) {
  const Unpack unpack;
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  const uint8_t* a = static_cast<const uint8_t*>(act);
  const int64_t nblocks = n / QK_K;
  for (int64_t r = 0; r < nr; ++r) {
    const uint8_t* wr = wb + r * rb;
    int64_t t = 0;
    for (; t + 4 <= nt; t += 4) q2_k_rows<Unpack, 4>(unpack, wr, a + t * ab, ab, nblocks, y + t * ldy + r, ldy);
    switch (nt - t) {
      case 3: q2_k_rows<Unpack, 3>(unpack, wr, a + t * ab, ab, nblocks, y + t * ldy + r, ldy); break;
      case 2: q2_k_rows<Unpack, 2>(unpack, wr, a + t * ab, ab, nblocks, y + t * ldy + r, ldy); break;
      case 1: q2_k_rows<Unpack, 1>(unpack, wr, a + t * ab, ab, nblocks, y + t * ldy + r, ldy); break;
      default: break;
    }
  }
}

}  // namespace
}  // namespace ds4::cpu::detail
