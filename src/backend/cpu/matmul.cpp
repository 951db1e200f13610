// Dispatch and threading for the weight x activation products (matmul.h). The kernels
// themselves live in vec_dot_{scalar,avx2,avx512}.cpp; this file picks a table by CPUID,
// quantizes the activations once per call and splits rows over the thread pool.
#include "backend/cpu/matmul.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "backend/cpu/kernels.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/blocks.h"
#include "quant/quant.h"

namespace ds4::cpu {
namespace {

Isa detect() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  // BMI2 is required by the AVX-512 IQ2_XXS sign expansion (pdep); every AVX-512 CPU has it.
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("bmi2");
  // The IQ2_XXS tier also uses GFNI (vgf2p8affineqb as a bit transpose); every CPU with
  // AVX-512 VBMI so far has it, but both are checked.
  const bool vbmi = avx512 && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("gfni");
  return vbmi ? Isa::Avx512Vbmi : avx512 ? Isa::Avx512 : avx2 ? Isa::Avx2 : Isa::Scalar;
}

std::atomic<Isa>& isa_state() {
  static std::atomic<Isa> isa{detected_isa()};
  return isa;
}

const detail::KernelTable& table(Isa isa) {
  switch (isa) {
    case Isa::Avx512Vbmi:
      return detail::avx512vbmi_kernels();
    case Isa::Avx512:
      return detail::avx512_kernels();
    case Isa::Avx2:
      return detail::avx2_kernels();
    case Isa::Scalar:
      break;
  }
  return detail::scalar_kernels();
}

detail::VecDotFn kernel(GgmlType type) {
  const detail::KernelTable& t = table(active_isa());
  switch (type) {
    case GgmlType::F32: return t.f32;
    case GgmlType::F16: return t.f16;
    case GgmlType::BF16: return t.bf16;
    case GgmlType::Q8_0: return t.q8_0;
    case GgmlType::Q2_K: return t.q2_k;
    case GgmlType::Q4_K: return t.q4_k;
    case GgmlType::IQ2_XXS: return t.iq2_xxs;
    case GgmlType::MXFP4: return t.mxfp4;
    default: break;
  }
  fail("cpu matmul: weight type {} has no CPU kernel", type_name(type));
}

detail::TileFn tile_kernel(GgmlType type) {
  const detail::KernelTable& t = table(active_isa());
  switch (type) {
    case GgmlType::Q8_0: return t.q8_0_tile;
    case GgmlType::Q2_K: return t.q2_k_tile;
    case GgmlType::IQ2_XXS: return t.iq2_xxs_tile;
    default: return nullptr;
  }
}

void check_shape(GgmlType type, int64_t nrows, int64_t ncols) {
  const int64_t block = type_traits(type).block_elems;
  if (nrows < 0 || ncols <= 0 || ncols % block != 0)
    fail("cpu matmul: {} weights of {} x {}: ncols must be a positive multiple of {}",
         type_name(type), nrows, ncols, block);
}

// Rows per parallel_for chunk: enough weight bytes (~64 KiB) that scheduling is noise.
int64_t row_grain(GgmlType type, int64_t ncols) {
  return std::max<int64_t>(1, int64_t(65536) / static_cast<int64_t>(row_bytes(type, ncols)));
}

}  // namespace

Isa detected_isa() {
  static const Isa isa = detect();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Vbmi: return "avx512vbmi";
  }
  return "?";
}

void set_isa(Isa isa) { isa_state().store(std::min(isa, detected_isa())); }
Isa active_isa() { return isa_state().load(std::memory_order_relaxed); }

GgmlType activation_type(GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
      return GgmlType::F32;
    case GgmlType::Q8_0:
    case GgmlType::MXFP4:  // BlockQ8_0Act: its 32-element blocks line up with MXFP4's
      return GgmlType::Q8_0;
    case GgmlType::Q2_K:
    case GgmlType::Q4_K:
    case GgmlType::IQ2_XXS:
      return GgmlType::Q8_K;
    default:
      break;
  }
  fail("cpu matmul: weight type {} has no CPU kernel", type_name(weight_type));
}

size_t activation_bytes(GgmlType weight_type, int64_t ncols) {
  switch (activation_type(weight_type)) {
    case GgmlType::Q8_0: return static_cast<size_t>(ncols / QK8_0) * sizeof(BlockQ8_0Act);
    case GgmlType::Q8_K: return static_cast<size_t>(ncols / QK_K) * sizeof(BlockQ8_K);
    default: return static_cast<size_t>(ncols) * sizeof(float);
  }
}

void quantize_activation(GgmlType weight_type, const float* x, void* act, int64_t ncols) {
  check_shape(weight_type, 0, ncols);
  const detail::KernelTable& t = table(active_isa());
  switch (activation_type(weight_type)) {
    case GgmlType::Q8_0:
      if (t.quantize_q8_0_act)
        t.quantize_q8_0_act(x, act, ncols);
      else
        quant::quantize_row_q8_0_act(x, static_cast<BlockQ8_0Act*>(act), ncols);
      break;
    case GgmlType::Q8_K:
      if (t.quantize_q8_k)
        t.quantize_q8_k(x, act, ncols);
      else
        quant::quantize_row_q8_k(x, static_cast<BlockQ8_K*>(act), ncols);
      break;
    default:
      std::copy(x, x + ncols, static_cast<float*>(act));
      break;
  }
}

float vec_dot(GgmlType type, const void* w_row, const void* act, int64_t ncols) {
  check_shape(type, 1, ncols);
  return kernel(type)(w_row, act, ncols);
}

void matvec(GgmlType type, const void* W, int64_t nrows, int64_t ncols, const float* x,
            float* y, ThreadPool* pool) {
  check_shape(type, nrows, ncols);
  // Float types read x directly; the others quantize it once for all rows.
  std::vector<uint8_t> buf;
  const void* act = x;
  if (activation_type(type) != GgmlType::F32) {
    buf.resize(activation_bytes(type, ncols));
    quantize_activation(type, x, buf.data(), ncols);
    act = buf.data();
  }
  matvec_act(type, W, nrows, ncols, act, y, pool);
}

void matvec_act(GgmlType type, const void* W, int64_t nrows, int64_t ncols, const void* act,
                float* y, ThreadPool* pool) {
  check_shape(type, nrows, ncols);
  const detail::VecDotFn dot = kernel(type);
  const size_t rb = row_bytes(type, ncols);
  const uint8_t* w = static_cast<const uint8_t*>(W);
  // Each y[r] equals one vec_dot, so the result does not depend on the split. Types with a
  // tile kernel run it with one token: several rows per call, the same values.
  const detail::TileFn tile_fn = tile_kernel(type);
  parallel_for(pool, nrows, row_grain(type, ncols), [&](int64_t r0, int64_t r1, int) {
    if (tile_fn) {
      tile_fn(w + static_cast<size_t>(r0) * rb, rb, r1 - r0, act, 0, 1, ncols, y + r0, 0);
      return;
    }
    for (int64_t r = r0; r < r1; ++r) y[r] = dot(w + static_cast<size_t>(r) * rb, act, ncols);
  });
}

void matmul(GgmlType type, const void* W, int64_t nrows, int64_t ncols, const float* X,
            int64_t nb, float* Y, ThreadPool* pool) {
  check_shape(type, nrows, ncols);
  if (nb < 0) fail("cpu matmul: negative batch {}", nb);
  if (nb == 0 || nrows == 0) return;
  const detail::VecDotFn dot = kernel(type);
  const size_t ab = activation_bytes(type, ncols);
  std::vector<uint8_t> buf;
  const uint8_t* acts = reinterpret_cast<const uint8_t*>(X);
  if (activation_type(type) != GgmlType::F32) {
    buf.resize(ab * static_cast<size_t>(nb));
    parallel_for(pool, nb, 1, [&](int64_t b0, int64_t b1, int) {
      for (int64_t b = b0; b < b1; ++b)
        quantize_activation(type, X + b * ncols, buf.data() + static_cast<size_t>(b) * ab, ncols);
    });
    acts = buf.data();
  }
  const size_t rb = row_bytes(type, ncols);
  const uint8_t* w = static_cast<const uint8_t*>(W);
  const detail::TileFn tile_fn = tile_kernel(type);
  // A tile of rows (~32 KiB of weights) stays in L1/L2 while every activation row streams
  // past it, so the weights come from memory once per call, not once per token. Within it,
  // a register-blocked kernel (when the type has one) decodes each weight block once for
  // several tokens; every output still gets exactly vec_dot's value.
  const int64_t tile = std::clamp<int64_t>(int64_t(32768) / static_cast<int64_t>(rb), 1, 64);
  const int64_t ntiles = (nrows + tile - 1) / tile;
  constexpr int64_t kTokens = 8;  // activation rows per kernel call (~37 KiB of Q8_K at 4096)
  parallel_for(pool, ntiles, 1, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * tile, r1 = std::min(nrows, r0 + tile);
      if (tile_fn) {
        for (int64_t b = 0; b < nb; b += kTokens)
          tile_fn(w + static_cast<size_t>(r0) * rb, rb, r1 - r0, acts + static_cast<size_t>(b) * ab, ab,
                  std::min(kTokens, nb - b), ncols, Y + b * nrows + r0, static_cast<size_t>(nrows));
        continue;
      }
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* a = acts + static_cast<size_t>(b) * ab;
        float* yb = Y + b * nrows;
        for (int64_t r = r0; r < r1; ++r) yb[r] = dot(w + static_cast<size_t>(r) * rb, a, ncols);
      }
    }
  });
}

}  // namespace ds4::cpu
