// Row x activation dot products: every SIMD path against the scalar reference, and the
// scalar reference against "dequantize both, then dot in double".
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>

#include "backend/cpu/kernels.h"
#include "cpu_test_util.h"
#include "core/error.h"

namespace ds4::cpu::test {
namespace {

// Column counts per type: the minimum (one block), odd block counts that exercise the
// tails of the unrolled loops, and the Flash widths 2048 and 4096.
std::vector<int64_t> test_widths(GgmlType t) {
  const int64_t b = block_elems(t);
  if (b == 1) return {1, 7, 17, 33, 2048, 4096};
  if (b == 32) return {32, 96, 160, 224, 2048, 4096};
  return {256, 768, 2048, 4096};
}

std::string label(GgmlType t, Isa isa, int64_t n) {
  return std::string(type_name(t)) + " " + isa_name(isa) + " ncols=" + std::to_string(n);
}

// The activation row as floats (partner format dequantized).
std::vector<float> dequant_act(GgmlType t, const std::vector<uint8_t>& act, int64_t n) {
  std::vector<float> a(static_cast<size_t>(n));
  const GgmlType at = activation_type(t);
  if (at == GgmlType::F32) {
    std::memcpy(a.data(), act.data(), a.size() * 4);
  } else if (at == GgmlType::Q8_K) {
    quant::dequantize_row(GgmlType::Q8_K, act.data(), a.data(), n);
  } else {
    const BlockQ8_0Act* x = reinterpret_cast<const BlockQ8_0Act*>(act.data());
    for (int64_t i = 0; i < n; ++i) a[i] = x[i / QK8_0].d * x[i / QK8_0].qs[i % QK8_0];
  }
  return a;
}

// With power-of-two scales every float operation is exact, so each SIMD path must equal
// the scalar reference bit for bit: this checks the integer decompositions exactly.
TEST(VecDot, SimdEqualsScalarExactly) {
  IsaGuard guard;
  std::mt19937 rng(1234);
  for (GgmlType t : weight_types()) {
    for (int64_t n : test_widths(t)) {
      const int64_t nrows = 3;
      const auto w = exact_weights(t, nrows, n, rng);
      const auto act = exact_activation(t, n, rng);
      const size_t rb = row_bytes(t, n);
      for (int64_t r = 0; r < nrows; ++r) {
        set_isa(Isa::Scalar);
        const float ref = vec_dot(t, w.data() + r * rb, act.data(), n);
        for (Isa isa : available_isas()) {
          set_isa(isa);
          EXPECT_EQ(vec_dot(t, w.data() + r * rb, act.data(), n), ref) << label(t, isa, n);
        }
      }
    }
  }
}

// Realistic data: the scalar reference equals the double-precision dot of the dequantized
// weights and activations within the float summation bound (nblocks + 8) * FLT_EPSILON *
// sum|w_i a_i| (one rounding per block term and per accumulation step); K-quants get 4x
// that because their two per-block terms (scales, mins) can each exceed the block's value.
// SIMD paths must be within twice the bound of the scalar result; the AVX2 IQ2_XXS path,
// which reduces exact int32 block sums in the scalar order, must be bit-exact.
TEST(VecDot, ScalarMatchesDequantizedDotAndSimdMatchesScalar) {
  IsaGuard guard;
  std::mt19937 rng(99);
  for (GgmlType t : weight_types()) {
    for (int64_t n : test_widths(t)) {
      const int64_t nrows = 2;
      const auto w = real_weights(t, nrows, n, rng);
      const auto x = gaussian(n, rng);
      std::vector<uint8_t> act(activation_bytes(t, n));
      quantize_activation(t, x.data(), act.data(), n);
      const std::vector<float> a = dequant_act(t, act, n);
      const size_t rb = row_bytes(t, n);
      std::vector<float> wf(static_cast<size_t>(n));
      for (int64_t r = 0; r < nrows; ++r) {
        quant::dequantize_row(t, w.data() + r * rb, wf.data(), n);
        double exact = 0.0, mag = 0.0;
        for (int64_t i = 0; i < n; ++i) {
          exact += double(wf[i]) * double(a[i]);
          mag += std::fabs(double(wf[i]) * double(a[i]));
        }
        const int64_t steps = is_float(t) ? n : n / block_elems(t);
        const double kq = (t == GgmlType::Q2_K || t == GgmlType::Q4_K) ? 4.0 : 1.0;
        const double tol = kq * double(steps + 8) * FLT_EPSILON * mag + 1e-30;
        set_isa(Isa::Scalar);
        const float ref = vec_dot(t, w.data() + r * rb, act.data(), n);
        EXPECT_NEAR(ref, exact, tol) << label(t, Isa::Scalar, n);
        for (Isa isa : available_isas()) {
          set_isa(isa);
          const float got = vec_dot(t, w.data() + r * rb, act.data(), n);
          if (t == GgmlType::IQ2_XXS && isa == Isa::Avx2)
            EXPECT_EQ(got, ref) << label(t, isa, n);
          else
            EXPECT_NEAR(got, ref, 2 * tol) << label(t, isa, n);
        }
      }
    }
  }
}

// Extreme codes: all-(-128) activations against all-(-128) / maximal weights must not wrap
// or saturate in any path (the SIMD kernels avoid vpsignb / vpmaddubsw overflow).
TEST(VecDot, ExtremeCodesDoNotOverflow) {
  IsaGuard guard;
  std::mt19937 rng(7);
  for (GgmlType t : weight_types()) {
    if (is_float(t)) continue;
    const int64_t n = t == GgmlType::Q8_0 || t == GgmlType::MXFP4 ? 128 : 512;
    auto w = exact_weights(t, 1, n, rng);
    auto act = exact_activation(t, n, rng);
    if (activation_type(t) == GgmlType::Q8_K) {
      auto* a = reinterpret_cast<BlockQ8_K*>(act.data());
      for (int64_t b = 0; b < n / QK_K; ++b) {
        std::memset(a[b].qs, 0x80, sizeof(a[b].qs));
        for (auto& s : a[b].bsums) s = -128 * 16;
      }
    } else {
      auto* a = reinterpret_cast<BlockQ8_0Act*>(act.data());
      for (int64_t b = 0; b < n / QK8_0; ++b) std::memset(a[b].qs, 0x80, sizeof(a[b].qs));
    }
    // Largest codes in every weight byte (Q8_0: -128; others: all bits set).
    const int64_t bb = type_traits(t).block_bytes;
    for (size_t i = 0; i < w.size(); ++i) {
      const int64_t off = static_cast<int64_t>(i) % bb;
      const bool scale_byte = (t == GgmlType::Q8_0 && off < 2) || (t == GgmlType::Q4_K && off < 4) ||
                              (t == GgmlType::Q2_K && off >= 80) || (t == GgmlType::IQ2_XXS && off < 2) ||
                              (t == GgmlType::MXFP4 && off == 0);
      if (!scale_byte) w[i] = t == GgmlType::Q8_0 ? 0x80 : 0xFF;
    }
    set_isa(Isa::Scalar);
    const float ref = vec_dot(t, w.data(), act.data(), n);
    for (Isa isa : available_isas()) {
      set_isa(isa);
      EXPECT_EQ(vec_dot(t, w.data(), act.data(), n), ref) << label(t, isa, n);
    }
  }
}

// The avx512vbmi tier's Q2_K unpack (VBMI/GFNI) and its previous IQ2_XXS kernel
// (DS4_CPU_NO_IQ2_GROUPED=1) form the same int32 lanes as the avx512 tier and accumulate them
// the same way, so on realistic data they must agree bit for bit (a lane mix-up that still
// sums correctly on exact inputs would show here). The default group-major IQ2_XXS kernel
// sums other lanes: Iq2XxsGroupedKernelAgreesWithPrevious below.
TEST(VecDot, VbmiTierEqualsAvx512) {
  if (detected_isa() < Isa::Avx512Vbmi) GTEST_SKIP() << "CPU has no AVX-512 VBMI";
  IsaGuard guard;
  std::mt19937 rng(31);
  const detail::VecDotFn iq2_previous = detail::iq2_xxs_vbmi_kernels(false).dot;
  for (GgmlType t : {GgmlType::IQ2_XXS, GgmlType::Q2_K}) {
    for (int64_t n : {256, 512, 768, 4096}) {
      const int64_t nrows = 4;
      // quantized Gaussians, then random bytes (every code, scale and min pattern)
      auto w = real_weights(t, nrows, n, rng);
      const auto random_bytes = exact_weights(t, nrows, n, rng);
      w.insert(w.end(), random_bytes.begin(), random_bytes.end());
      const auto x = gaussian(n, rng);
      std::vector<uint8_t> act(activation_bytes(t, n));
      quantize_activation(t, x.data(), act.data(), n);
      for (int64_t r = 0; r < 2 * nrows; ++r) {
        const uint8_t* row = w.data() + r * row_bytes(t, n);
        set_isa(Isa::Avx512);
        const float ref = vec_dot(t, row, act.data(), n);
        set_isa(Isa::Avx512Vbmi);
        const float got = t == GgmlType::IQ2_XXS ? iq2_previous(row, act.data(), n) : vec_dot(t, row, act.data(), n);
        EXPECT_EQ(got, ref) << type_name(t) << " ncols=" << n << " row " << r;
      }
    }
  }
}

// The group-major IQ2_XXS kernel (default of the avx512vbmi tier) against the previous one:
// bit-equal where every float operation is exact (random codes, power-of-two scales, all
// activation bytes including -128, up to 5 blocks: at 16 blocks the sums of such rows
// outgrow the float mantissa), within float rounding of each other on realistic data
// (the same exact block sums, accumulated over other lanes). Its tiles equal its dot
// product bit for bit (several rows and tokens, odd block counts).
TEST(VecDot, Iq2XxsGroupedKernelAgreesWithPrevious) {
  if (detected_isa() < Isa::Avx512Vbmi) GTEST_SKIP() << "CPU has no AVX-512 VBMI";
  std::mt19937 rng(77);
  const detail::Iq2XxsKernels grouped = detail::iq2_xxs_vbmi_kernels(true);
  const detail::Iq2XxsKernels previous = detail::iq2_xxs_vbmi_kernels(false);
  const GgmlType t = GgmlType::IQ2_XXS;
  for (int64_t n : {256, 768, 1280, 4096}) {
    const int64_t nrows = 5, ntok = 6;
    const size_t rb = row_bytes(t, n), ab = activation_bytes(t, n);
    for (bool exact : {true, false}) {
      if (exact && n > 1280) continue;
      const auto w = exact ? exact_weights(t, nrows, n, rng) : real_weights(t, nrows, n, rng);
      std::vector<uint8_t> acts;
      for (int64_t k = 0; k < ntok; ++k) {
        std::vector<uint8_t> a(ab);
        if (exact) {
          a = exact_activation(t, n, rng);
        } else {
          const auto x = gaussian(n, rng);
          quantize_activation(t, x.data(), a.data(), n);
        }
        acts.insert(acts.end(), a.begin(), a.end());
      }
      std::vector<float> y(static_cast<size_t>(nrows * ntok));
      grouped.tile(w.data(), rb, nrows, acts.data(), ab, ntok, n, y.data(), nrows);
      for (int64_t k = 0; k < ntok; ++k)
        for (int64_t r = 0; r < nrows; ++r) {
          const uint8_t* row = w.data() + r * rb;
          const uint8_t* a = acts.data() + k * ab;
          const float g = grouped.dot(row, a, n), p = previous.dot(row, a, n);
          EXPECT_EQ(y[k * nrows + r], g) << "tile, ncols=" << n << " row " << r << " token " << k;
          if (exact)
            EXPECT_EQ(g, p) << "exact, ncols=" << n << " row " << r << " token " << k;
          else
            EXPECT_NEAR(g, p, 1e-5 * (std::fabs(p) + 1.0)) << "ncols=" << n << " row " << r << " token " << k;
        }
    }
  }
}

// Activation rows that exercise every branch of the quantizers: Gaussians at several
// magnitudes (denormal and huge products included), exact rounding ties, equal-magnitude
// maxima of both signs (the first one sets the Q8_K scale), zero, -0, NaN and infinity.
std::vector<std::vector<float>> quantizer_inputs(int64_t n, std::mt19937& rng) {
  std::vector<std::vector<float>> rows;
  for (float sigma : {1.0f, 1e-3f, 1e-38f, 1e30f}) rows.push_back(gaussian(n, rng, sigma));
  // Integers and halves with the extreme at 127 (Q8_0 d = 1) or -127 (Q8_K scale = 1):
  // every x.5 is a tie for the rounding.
  for (float extreme : {127.0f, -127.0f}) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(rand_int(rng, -250, 250)) * 0.5f;
    for (int64_t i = 0; i < n; i += 32) v[i + rand_int(rng, 0, 31)] = extreme;
    rows.push_back(v);
  }
  std::vector<float> special = gaussian(n, rng);
  for (int64_t i = 0; i < 32; ++i) special[i] = 0.0f;            // an all-zero Q8_0 block
  for (int64_t i = 32; i < 64; ++i) special[i] = -0.0f;
  special[70] = 3.0f, special[90] = -3.0f;     // equal maxima, + first
  special[130] = -4.0f, special[131] = 4.0f;   // equal maxima, - first
  special[200] = std::nanf("");
  special[n - 40] = INFINITY;
  special[n - 2] = -INFINITY, special[n - 1] = std::nanf("");
  rows.push_back(special);
  rows.push_back(std::vector<float>(static_cast<size_t>(n), 0.0f));  // all-zero Q8_K blocks
  return rows;
}

TEST(VecDot, ActivationQuantizersWriteTheScalarBytes) {
  IsaGuard guard;
  std::mt19937 rng(41);
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q2_K}) {  // BlockQ8_0Act and Q8_K
    for (int64_t n : {256, 512, 4096}) {
      for (const std::vector<float>& x : quantizer_inputs(n, rng)) {
        std::vector<uint8_t> ref(activation_bytes(t, n));
        if (activation_type(t) == GgmlType::Q8_K)
          quant::quantize_row_q8_k(x.data(), reinterpret_cast<BlockQ8_K*>(ref.data()), n);
        else
          quant::quantize_row_q8_0_act(x.data(), reinterpret_cast<BlockQ8_0Act*>(ref.data()), n);
        for (Isa isa : available_isas()) {
          set_isa(isa);
          std::vector<uint8_t> got(ref.size(), 0xAA);
          quantize_activation(t, x.data(), got.data(), n);
          ASSERT_EQ(std::memcmp(got.data(), ref.data(), ref.size()), 0) << label(t, isa, n);
        }
      }
    }
  }
}

TEST(VecDot, RejectsBadShapesAndTypes) {
  std::vector<uint8_t> buf(4096);
  EXPECT_THROW(vec_dot(GgmlType::Q8_0, buf.data(), buf.data(), 48), Error);
  EXPECT_THROW(vec_dot(GgmlType::Q2_K, buf.data(), buf.data(), 0), Error);
  EXPECT_THROW(vec_dot(GgmlType::Q8_K, buf.data(), buf.data(), 256), Error);
  EXPECT_THROW(activation_type(GgmlType::I32), Error);
}

TEST(VecDot, IsaSelection) {
  IsaGuard guard;
  set_isa(Isa::Scalar);
  EXPECT_EQ(active_isa(), Isa::Scalar);
  set_isa(Isa::Avx512Vbmi);  // clamps to what the CPU has
  EXPECT_EQ(active_isa(), detected_isa());
  EXPECT_STREQ(isa_name(Isa::Avx2), "avx2");
  EXPECT_STREQ(isa_name(Isa::Avx512Vbmi), "avx512vbmi");
}

TEST(VecDot, ActivationFormats) {
  EXPECT_EQ(activation_type(GgmlType::Q8_0), GgmlType::Q8_0);
  EXPECT_EQ(activation_type(GgmlType::MXFP4), GgmlType::Q8_0);
  EXPECT_EQ(activation_type(GgmlType::IQ2_XXS), GgmlType::Q8_K);
  EXPECT_EQ(activation_type(GgmlType::F16), GgmlType::F32);
  EXPECT_EQ(activation_bytes(GgmlType::Q8_0, 4096), 128u * 36u);
  EXPECT_EQ(activation_bytes(GgmlType::Q2_K, 4096), 16u * 292u);
  EXPECT_EQ(activation_bytes(GgmlType::BF16, 4096), 4096u * 4u);
}

}  // namespace
}  // namespace ds4::cpu::test
