#include "convert/source_decode.h"

#include <cstring>

#include "core/error.h"
#include "core/fp16.h"
#include "quant/quant.h"

namespace ds4::convert {

int64_t logical_rows(const StTensor& w) {
  if (w.shape.empty()) return 1;
  int64_t n = 1;
  for (size_t i = 0; i + 1 < w.shape.size(); ++i) n *= w.shape[i];
  return n;
}

int64_t logical_cols(const StTensor& w) {
  if (w.shape.empty()) return 1;
  return w.shape.back() * (w.dtype == StDtype::I8 ? 2 : 1);
}

namespace {

float scale_at(const StTensor& s, int64_t i) {
  if (s.dtype == StDtype::F32) {
    float v;
    std::memcpy(&v, s.data + 4 * i, 4);
    return v;
  }
  return quant::e8m0_to_f32(s.data[i]);
}

}  // namespace

void decode_rows(const StTensor& w, const StTensor* scale, int64_t r0, int64_t r1, float* out) {
  const int64_t cols = logical_cols(w);
  const size_t n = static_cast<size_t>((r1 - r0) * cols);
  const uint8_t* base = w.data;
  switch (w.dtype) {
    case StDtype::F32:
      std::memcpy(out, base + 4 * r0 * cols, n * 4);
      return;
    case StDtype::BF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, base + 2 * (r0 * cols + static_cast<int64_t>(i)), 2);
        out[i] = bf16_to_f32(h);
      }
      return;
    case StDtype::F16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, base + 2 * (r0 * cols + static_cast<int64_t>(i)), 2);
        out[i] = fp16_to_f32(h);
      }
      return;
    case StDtype::F8_E4M3: {
      if (!scale) fail("tensor {}: FP8 weight decoded without its scale", w.name);
      const int64_t scols = scale->shape.at(1);
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* q = base + r * cols;
        float* o = out + (r - r0) * cols;
        for (int64_t c = 0; c < cols; ++c)
          o[c] = quant::e4m3fn_to_f32(q[c]) * scale_at(*scale, (r / 128) * scols + c / 128);
      }
      return;
    }
    case StDtype::I8: {
      if (!scale) fail("tensor {}: FP4 weight decoded without its scale", w.name);
      const int64_t nb = cols / 32;
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* q = base + r * (cols / 2);
        float* o = out + (r - r0) * cols;
        for (int64_t b = 0; b < nb; ++b) {
          const float d = quant::e8m0_to_f32(scale->data[r * nb + b]);
          for (int j = 0; j < 16; ++j) {
            const uint8_t byte = q[16 * b + j];
            o[32 * b + 2 * j] = quant::e2m1_to_f32(byte & 0xF) * d;
            o[32 * b + 2 * j + 1] = quant::e2m1_to_f32(byte >> 4) * d;
          }
        }
      }
      return;
    }
    default:
      fail("tensor {}: dtype {} cannot be decoded to float", w.name, dtype_name(w.dtype));
  }
}

void repack_fp4_to_mxfp4(const StTensor& w, const StTensor& scale, uint8_t* dst) {
  if (w.dtype != StDtype::I8 || scale.dtype != StDtype::F8_E8M0)
    fail("tensor {}: only FP4 (I8 + F8_E8M0) experts can be repacked into MXFP4, found {}",
         w.name, w.describe());
  const int64_t rows = logical_rows(w), cols = logical_cols(w), nb = cols / 32;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* q = w.data + r * (cols / 2) + 16 * b;
      uint8_t* blk = dst + (r * nb + b) * 17;
      blk[0] = scale.data[r * nb + b];
      uint8_t nib[32];
      for (int j = 0; j < 16; ++j) {
        nib[2 * j] = q[j] & 0xF;
        nib[2 * j + 1] = q[j] >> 4;
      }
      for (int j = 0; j < 16; ++j) blk[1 + j] = static_cast<uint8_t>(nib[j] | (nib[j + 16] << 4));
    }
  }
}

void decode_tid2eid(const StTensor& t, uint32_t n_experts, int32_t* out) {
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    int64_t v;
    if (t.dtype == StDtype::I64) {
      std::memcpy(&v, t.data + 8 * i, 8);
    } else if (t.dtype == StDtype::I32) {
      int32_t v32;
      std::memcpy(&v32, t.data + 4 * i, 4);
      v = v32;
    } else {
      fail("tensor {}: expected I64 or I32 expert ids, found {}", t.name, t.describe());
    }
    if (v < 0 || v >= static_cast<int64_t>(n_experts))
      fail("tensor {}: entry {} (token {}, slot {}) is expert id {}, outside [0, {})", t.name, i,
           i / t.shape.back(), i % t.shape.back(), v, n_experts);
    out[i] = static_cast<int32_t>(v);
  }
}

}  // namespace ds4::convert
