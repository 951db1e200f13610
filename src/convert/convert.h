// ds4-quantize's library core: official DeepSeek V4 checkpoint (safetensors, FP8/FP4) ->
// DwarfStar-dialect GGUF in a chosen recipe (architecture.md 1.1, 2.2-2.3; formats.md 3.8, 4).
#pragma once

#include <functional>
#include <string>

namespace ds4::convert {

// Recipes: "f32", "bf16" (lossless for the fixtures), "q8" (every matrix Q8_0),
// "q2" (the 2/8 recipe), "q4" (routed experts Q4_K, rest as q2), "mxfp4" (routed experts
// kept losslessly as MXFP4, rest as q2).
struct ConvertOptions {
  std::string input_dir;     // config.json, model.safetensors.index.json, shards[, tokenizer.json]
  std::string output_path;   // GGUF to write (written to a temp name, renamed when complete)
  std::string recipe = "q2";
  std::string imatrix_path;  // optional llama.cpp legacy .dat
  int threads = 0;           // 0 = all cores
  // Progress callback (tensors done, tensors total, name); may be empty.
  std::function<void(size_t, size_t, const std::string&)> progress;
};

// Throws ds4::Error naming the tensor / file on any unknown or inconsistent input.
void convert_checkpoint(const ConvertOptions& opts);

}  // namespace ds4::convert
