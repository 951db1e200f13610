// Hook from the converter to the tokenizer module: turns the checkpoint's tokenizer.json into
// GGUF metadata (tokenizer.ggml.model "gpt2", .pre "joyai-llm", .tokens, .merges,
// .token_type). The converter calls it only when DIR/tokenizer.json exists.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf/gguf.h"

namespace ds4::convert {

// Keys to add for the tokenizer at `tokenizer_json_path` (bos/eos ids come from config.json and
// are written by model_metadata). Throws ds4::Error when the file cannot be converted.
// The vocabulary must have `vocab_size` tokens (config.json's).
std::vector<gguf::KeyValue> tokenizer_metadata(const std::string& tokenizer_json_path,
                                               uint32_t vocab_size);

}  // namespace ds4::convert
