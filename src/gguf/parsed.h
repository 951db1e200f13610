// Internal to src/gguf: the result of parsing a GGUF header, shared by the parser and File.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "gguf/gguf.h"

namespace ds4::gguf::detail {

struct Parsed {
  uint32_t version = 0;
  uint64_t alignment = 0;
  uint64_t data_offset = 0;
  std::vector<KeyValue> metadata;
  std::vector<TensorInfo> tensors;
};

// Parses and validates the whole container (formats.md 1.1-1.2): header, metadata, tensor
// infos and the placement of every tensor's data inside `bytes`. `path` prefixes errors.
Parsed parse(const std::string& path, std::span<const uint8_t> bytes, const ReadLimits& limits);

// Bytes of a tensor of `type` and shape `ne`, or an error naming `what` when the shape is
// not valid for the type (non-positive size, ne[0] not a block multiple, 64-bit overflow).
uint64_t tensor_nbytes(std::string_view what, GgmlType type, std::span<const int64_t> ne);

}  // namespace ds4::gguf::detail
