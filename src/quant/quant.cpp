// Type dispatch for row conversion (quant.h). The per-type codecs live in one file each.
#include "quant/quant.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "quant/block_codecs.h"

namespace ds4::quant {
namespace {

void check_row(GgmlType type, int64_t n, const char* what) {
  const TypeTraits& tr = type_traits(type);
  if (n < 0 || n % tr.block_elems != 0)
    fail("{}: row of {} elements is not a multiple of the {} block size {}", what, n, tr.name,
         tr.block_elems);
}

}  // namespace

void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n) {
  check_row(type, n, "dequantize_row");
  const auto* b = static_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, b + 2 * i, 2);
        dst[i] = fp16_to_f32(h);
      }
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, b + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    case GgmlType::I32:
      for (int64_t i = 0; i < n; ++i) {
        int32_t v;
        std::memcpy(&v, b + 4 * i, 4);
        dst[i] = static_cast<float>(v);
      }
      return;
    case GgmlType::Q8_0:
      return dequantize_row_q8_0(static_cast<const BlockQ8_0*>(src), dst, n);
    case GgmlType::Q2_K:
      return dequantize_row_q2_k(static_cast<const BlockQ2_K*>(src), dst, n);
    case GgmlType::Q4_K:
      return dequantize_row_q4_k(static_cast<const BlockQ4_K*>(src), dst, n);
    case GgmlType::IQ2_XXS:
      return dequantize_row_iq2_xxs(static_cast<const BlockIQ2_XXS*>(src), dst, n);
    case GgmlType::MXFP4:
      return dequantize_row_mxfp4(static_cast<const BlockMXFP4*>(src), dst, n);
    case GgmlType::Q8_K:
      return dequantize_row_q8_k(static_cast<const BlockQ8_K*>(src), dst, n);
  }
  fail("dequantize_row: unsupported type id {}", static_cast<uint32_t>(type));
}

bool can_quantize(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q8_0:
    case GgmlType::Q2_K:
    case GgmlType::Q4_K:
    case GgmlType::IQ2_XXS:
    case GgmlType::MXFP4:
    case GgmlType::Q8_K:
      return true;
    case GgmlType::I32:
      return false;
  }
  return false;
}

void quantize_row(GgmlType type, const float* src, void* dst, int64_t n,
                  const float* importance) {
  check_row(type, n, "quantize_row");
  if (type_traits(type).is_quantized) {
    // The block searches assume finite input (NaN/inf would turn into garbage codes or
    // undefined float->int casts); a non-finite weight is a data error worth reporting.
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(src[i]))
        fail("quantize_row: cannot quantize non-finite value {} (element {}) to {}", src[i], i,
             type_name(type));
  }
  auto* b = static_cast<uint8_t*>(dst);
  switch (type) {
    case GgmlType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_fp16(src[i]);
        std::memcpy(b + 2 * i, &h, 2);
      }
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(b + 2 * i, &h, 2);
      }
      return;
    case GgmlType::Q8_0:
      return quantize_row_q8_0(src, static_cast<BlockQ8_0*>(dst), n);
    case GgmlType::Q2_K:
      return quantize_row_q2_k(src, static_cast<BlockQ2_K*>(dst), n, importance);
    case GgmlType::Q4_K:
      return quantize_row_q4_k(src, static_cast<BlockQ4_K*>(dst), n, importance);
    case GgmlType::IQ2_XXS:
      if (!importance) {
        // One row's weight energy: the fallback of formats.md 3.7 restricted to this row.
        std::vector<float> qw(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) qw[i] = src[i] * src[i];
        return quantize_row_iq2_xxs(src, static_cast<BlockIQ2_XXS*>(dst), n, qw.data());
      }
      return quantize_row_iq2_xxs(src, static_cast<BlockIQ2_XXS*>(dst), n, importance);
    case GgmlType::MXFP4:
      return quantize_row_mxfp4(src, static_cast<BlockMXFP4*>(dst), n);
    case GgmlType::Q8_K:
      return quantize_row_q8_k(src, static_cast<BlockQ8_K*>(dst), n);
    case GgmlType::I32:
      break;
  }
  fail("quantize_row: cannot quantize to {}", type_name(type));
}

void quantize_rows(GgmlType type, const float* src, void* dst, int64_t nrows, int64_t ncols,
                   const float* importance, ThreadPool* pool) {
  check_row(type, ncols, "quantize_rows");
  if (nrows < 0) fail("quantize_rows: negative row count {}", nrows);
  if (!can_quantize(type)) fail("quantize_rows: cannot quantize to {}", type_name(type));
  const size_t rb = row_bytes(type, ncols);
  auto* out = static_cast<uint8_t*>(dst);

  // IQ2_XXS without an imatrix: qw[c] = sum over rows of x[r,c]^2, the weight-energy fallback
  // of formats.md 3.7 (accumulated in f32, rows in order). Parallel over columns.
  std::vector<float> energy;
  if (type == GgmlType::IQ2_XXS && !importance) {
    energy.assign(static_cast<size_t>(ncols), 0.0f);
    parallel_for(pool, ncols, 256, [&](int64_t c0, int64_t c1, int) {
      for (int64_t r = 0; r < nrows; ++r) {
        const float* row = src + r * ncols;
        for (int64_t c = c0; c < c1; ++c) energy[c] += row[c] * row[c];
      }
    });
    importance = energy.data();
  }

  const int64_t grain = ncols >= 4096 ? 1 : 4096 / ncols;
  parallel_for(pool, nrows, grain, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r)
      quantize_row(type, src + r * ncols, out + static_cast<size_t>(r) * rb, ncols, importance);
  });
}

}  // namespace ds4::quant
