// `ds4-quality tensors`: how far each tensor of a (quantized) GGUF is from the official
// checkpoint it was converted from. The source of every GGUF tensor comes from the converter's
// own name map (convert/tensor_plan.h), decoded exactly (FP8/FP4 times their scales), and the
// GGUF tensor is dequantized row by row, so the error is the recipe's and nothing else.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds4::gguf {
class File;
}

namespace ds4::quality {

struct ErrorSums {
  int64_t n = 0;          // elements
  double sum_d2 = 0;      // sum (q - w)^2
  double sum_w2 = 0;      // sum w^2
  double max_abs = 0;     // max |q - w|
  // sqrt(sum_d2 / sum_w2): the error relative to the tensor's energy, comparable across
  // tensors of different scales (0 for an all-zero source matched exactly).
  double rel_rms() const;
  void add(const ErrorSums& o);
};

struct TensorError {
  std::string name, role, type;
  int layer = -1;  // -1: global tensors
  ErrorSums err;
};

struct TensorReport {
  std::vector<TensorError> tensors;     // GGUF order
  std::vector<std::pair<std::string, ErrorSums>> by_role;   // first-seen order
  std::vector<std::pair<int, ErrorSums>> by_layer;          // -1 (global) first
  std::vector<std::pair<std::string, ErrorSums>> by_type;
};

// Compares every planned tensor; throws when the GGUF lacks one or its shape differs.
TensorReport tensor_errors(const gguf::File& quantized, const std::string& checkpoint_dir,
                           int threads = 0);

std::string to_text(const TensorReport& r);
std::string to_json(const TensorReport& r);
std::string to_csv(const TensorReport& r);

}  // namespace ds4::quality
