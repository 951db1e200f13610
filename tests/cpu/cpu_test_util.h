// Shared helpers for the CPU kernel tests: random weight rows and activations, either
// "exact" (power-of-two scales, small codes: every float operation of a dot product is
// exact, so any two correct kernels agree bit for bit) or realistic (quantized Gaussians).
#pragma once

#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/matmul.h"
#include "core/fp16.h"
#include "core/ggml_type.h"
#include "quant/blocks.h"
#include "quant/quant.h"

namespace ds4::cpu::test {

inline const std::vector<GgmlType>& weight_types() {
  static const std::vector<GgmlType> types{GgmlType::F32,  GgmlType::F16,     GgmlType::BF16,
                                           GgmlType::Q8_0, GgmlType::Q2_K,    GgmlType::Q4_K,
                                           GgmlType::IQ2_XXS, GgmlType::MXFP4};
  return types;
}

inline bool is_float(GgmlType t) {
  return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16;
}

// Every ISA this CPU can run, scalar first.
inline std::vector<Isa> available_isas() {
  std::vector<Isa> out{Isa::Scalar};
  if (detected_isa() >= Isa::Avx2) out.push_back(Isa::Avx2);
  if (detected_isa() >= Isa::Avx512) out.push_back(Isa::Avx512);
  if (detected_isa() >= Isa::Avx512Vbmi) out.push_back(Isa::Avx512Vbmi);
  return out;
}

// Restores the detected ISA when a test that forces one ends (or fails).
struct IsaGuard {
  ~IsaGuard() { set_isa(detected_isa()); }
};

inline int64_t block_elems(GgmlType t) { return type_traits(t).block_elems; }

template <typename T>
inline T pick(std::mt19937& rng, std::initializer_list<T> values) {
  std::uniform_int_distribution<size_t> d(0, values.size() - 1);
  return *(values.begin() + d(rng));
}

inline int rand_int(std::mt19937& rng, int lo, int hi) {
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

// Weight rows with random codes (all byte values, -128 included) and scales in {1, 2}.
inline std::vector<uint8_t> exact_weights(GgmlType t, int64_t nrows, int64_t ncols,
                                          std::mt19937& rng) {
  const size_t rb = row_bytes(t, ncols);
  std::vector<uint8_t> buf(rb * static_cast<size_t>(nrows));
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  const uint16_t one = f32_to_fp16(1.0f), two = f32_to_fp16(2.0f);
  const int64_t nb = static_cast<int64_t>(buf.size()) / type_traits(t).block_bytes;
  uint8_t* p = buf.data();
  for (int64_t i = 0; i < nb; ++i) {
    switch (t) {
      case GgmlType::F32: {
        const float v = static_cast<float>(rand_int(rng, -8, 8));
        std::memcpy(p + 4 * i, &v, 4);
        break;
      }
      case GgmlType::F16:
      case GgmlType::BF16: {
        const float v = static_cast<float>(rand_int(rng, -8, 8));
        const uint16_t h = t == GgmlType::F16 ? f32_to_fp16(v) : f32_to_bf16(v);
        std::memcpy(p + 2 * i, &h, 2);
        break;
      }
      case GgmlType::Q8_0:
        reinterpret_cast<BlockQ8_0*>(p)[i].d = pick(rng, {one, two});
        break;
      case GgmlType::Q2_K:
        reinterpret_cast<BlockQ2_K*>(p)[i].d = pick(rng, {one, two});
        reinterpret_cast<BlockQ2_K*>(p)[i].dmin = pick(rng, {one, two});
        break;
      case GgmlType::Q4_K:
        reinterpret_cast<BlockQ4_K*>(p)[i].d = pick(rng, {one, two});
        reinterpret_cast<BlockQ4_K*>(p)[i].dmin = pick(rng, {one, two});
        break;
      case GgmlType::IQ2_XXS:
        reinterpret_cast<BlockIQ2_XXS*>(p)[i].d = pick(rng, {one, two});
        break;
      case GgmlType::MXFP4:
        reinterpret_cast<BlockMXFP4*>(p)[i].e = pick<uint8_t>(rng, {127, 128, 129});
        break;
      default:
        break;
    }
  }
  return buf;
}

// An activation row in the partner format of `t` with random codes (all int8 values) and
// scales in {0.5, 1}; float activations are small integers.
inline std::vector<uint8_t> exact_activation(GgmlType t, int64_t ncols, std::mt19937& rng) {
  std::vector<uint8_t> buf(activation_bytes(t, ncols));
  switch (activation_type(t)) {
    case GgmlType::F32: {
      float* x = reinterpret_cast<float*>(buf.data());
      for (int64_t i = 0; i < ncols; ++i) x[i] = static_cast<float>(rand_int(rng, -8, 8));
      break;
    }
    case GgmlType::Q8_0: {
      BlockQ8_0Act* a = reinterpret_cast<BlockQ8_0Act*>(buf.data());
      for (int64_t b = 0; b < ncols / QK8_0; ++b) {
        a[b].d = pick(rng, {0.5f, 1.0f});
        for (auto& q : a[b].qs) q = static_cast<int8_t>(rand_int(rng, -128, 127));
      }
      break;
    }
    default: {
      BlockQ8_K* a = reinterpret_cast<BlockQ8_K*>(buf.data());
      for (int64_t b = 0; b < ncols / QK_K; ++b) {
        a[b].d = pick(rng, {0.5f, 1.0f});
        for (auto& q : a[b].qs) q = static_cast<int8_t>(rand_int(rng, -128, 127));
        for (int s = 0; s < QK_K / 16; ++s) {
          int sum = 0;
          for (int j = 0; j < 16; ++j) sum += a[b].qs[16 * s + j];
          a[b].bsums[s] = static_cast<int16_t>(sum);
        }
      }
      break;
    }
  }
  return buf;
}

inline std::vector<float> gaussian(int64_t n, std::mt19937& rng, float sigma = 1.0f) {
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

// Realistic weights: Gaussian rows quantized by the project's quantizers.
inline std::vector<uint8_t> real_weights(GgmlType t, int64_t nrows, int64_t ncols,
                                         std::mt19937& rng) {
  const std::vector<float> w = gaussian(nrows * ncols, rng, 0.02f);
  std::vector<uint8_t> buf(row_bytes(t, ncols) * static_cast<size_t>(nrows));
  quant::quantize_rows(t, w.data(), buf.data(), nrows, ncols);
  return buf;
}

}  // namespace ds4::cpu::test
