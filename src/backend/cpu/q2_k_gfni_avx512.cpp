// Q2_K x Q8_K for the Isa::Avx512Vbmi tier (AVX-512 + VBMI + GFNI): the kernel of
// q2_k_avx512.h with a cheaper unpack. On Intel server cores every 512-bit operation
// competes for two ports, so the kernel is bound by its operation count (docs/perf.md):
//   - each 32-byte slice of codes is broadcast to both halves of a register by the load
//     itself, and one vgf2p8affineqb per register extracts bit field f of every byte (a
//     different field per 256-bit half: the affine "matrix" is per 64-bit lane): 2 ops per
//     two registers instead of 5 (shift, insert, and, shift, and);
//   - the scale words come from the nibble bytes by a zero-masked vpermb (no widening
//     first), the mins by one vgf2p8affineqb (x >> 4) instead of a shift and an and.
// The registers equal the shift-based unpack's, so the results are bit-identical to the
// Isa::Avx512 kernel (VecDot.VbmiTierEqualsAvx512).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

// Only reached when CPUID reports VBMI and GFNI (matmul.cpp). Set before the shared kernel
// is included, so that its instances here are compiled for this target too.
#pragma GCC target("avx512vbmi,gfni")

#include "backend/cpu/kernels.h"
#include "backend/cpu/q2_k_avx512.h"

namespace ds4::cpu::detail {
namespace {

// vgf2p8affineqb matrix that moves bits `from`, from+1, ... (count bits) of each byte to
// bits 0, 1, ...: output bit i is the parity of (matrix byte 7 - i) & x.
constexpr long long bit_field_matrix(int from, int count) {
  unsigned long long m = 0;
  for (int i = 0; i < count; ++i) m |= (1ull << (from + i)) << (8 * (7 - i));
  return static_cast<long long>(m);
}

struct ScaleBytes {
  alignas(64) uint8_t idx[4][64];  // byte 2k of register c <- scale byte 4c + k/8
  ScaleBytes() {
    for (int c = 0; c < 4; ++c)
      for (int k = 0; k < 32; ++k) {
        idx[c][2 * k] = static_cast<uint8_t>(4 * c + k / 8);
        idx[c][2 * k + 1] = 0;  // zeroed by the mask
      }
  }
};
const ScaleBytes kScaleBytes;

struct Q2kGfniUnpack {
  __m512i idx[4];
  __m512i fields01, fields23;  // low 256 bits: field 0 / 2 of each byte, high: field 1 / 3
  Q2kGfniUnpack() {
    for (int c = 0; c < 4; ++c) idx[c] = _mm512_load_si512(kScaleBytes.idx[c]);
    const long long f0 = bit_field_matrix(0, 2), f1 = bit_field_matrix(2, 2);
    const long long f2 = bit_field_matrix(4, 2), f3 = bit_field_matrix(6, 2);
    fields01 = _mm512_set_epi64(f1, f1, f1, f1, f0, f0, f0, f0);
    fields23 = _mm512_set_epi64(f3, f3, f3, f3, f2, f2, f2, f2);
  }
  [[gnu::always_inline]] void operator()(const BlockQ2_K& blk, Q2kBlock& u) const {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.scales));
    const __m512i sc = _mm512_zextsi128_si512(_mm_and_si128(raw, _mm_set1_epi8(0xF)));
    u.mins = _mm256_cvtepu8_epi16(
        _mm_gf2p8affine_epi64_epi8(raw, _mm_set1_epi64x(bit_field_matrix(4, 4)), 0));
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qs + 32 * h)));
      u.codes[2 * h] = _mm512_gf2p8affine_epi64_epi8(q, fields01, 0);      // 128h + 0..63
      u.codes[2 * h + 1] = _mm512_gf2p8affine_epi64_epi8(q, fields23, 0);  // 128h + 64..127
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c)
      u.scales[c] = _mm512_maskz_permutexvar_epi8(0x5555555555555555ull, idx[c], sc);
  }
};

}  // namespace

void use_gfni_q2_k(KernelTable& table) {
  table.q2_k = q2_k_dot<Q2kGfniUnpack>;
  table.q2_k_tile = q2_k_tile<Q2kGfniUnpack>;
}

}  // namespace ds4::cpu::detail
