// Tensor element types in ggml numbering (formats.md 2.0), shared by GGUF files, the
// quantizers and the kernels. Block sizes come from ggml-common.h, not from ds4.c's table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace ds4 {

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q8_0 = 8,
  Q2_K = 10,
  Q4_K = 12,
  Q8_K = 15,  // activations only, never stored in files
  IQ2_XXS = 16,
  I32 = 26,
  BF16 = 30,
  MXFP4 = 39,
};

struct TypeTraits {
  GgmlType type;
  std::string_view name;    // "Q8_0", ...
  int64_t block_elems;      // elements per block
  int64_t block_bytes;      // bytes per block
  bool is_quantized;        // block-quantized (not a plain scalar type)
  bool storable;            // may appear in a GGUF tensor (Q8_K may not)
};

// Traits of a supported type id, or nullptr for ids DwarfStar does not support.
const TypeTraits* type_traits(uint32_t id);
const TypeTraits& type_traits(GgmlType t);

inline std::string_view type_name(GgmlType t) { return type_traits(t).name; }
std::optional<GgmlType> type_from_name(std::string_view name);  // case-insensitive

// Bytes of one row of n elements; n must be a multiple of the block size (checked by callers
// that take n from files: see row_bytes_checked).
inline size_t row_bytes(GgmlType t, int64_t n) {
  const TypeTraits& tr = type_traits(t);
  return static_cast<size_t>(n / tr.block_elems) * static_cast<size_t>(tr.block_bytes);
}

}  // namespace ds4
