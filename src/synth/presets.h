// Model shapes for synthetic models: the real DeepSeek V4 Flash and Pro tensor tables, a
// Flash-dimension model with few layers and experts (CPU throughput, CPU-vs-CUDA checks),
// and the small demo model of the README's main command. Shapes are expressed as the same
// ModelConfig the converter reads from config.json, so synthetic files and converted files
// share one name map, one metadata writer and one recipe table (src/convert).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "convert/model_config.h"

namespace ds4::synth {

// "flash"      DeepSeek V4 Flash exactly (architecture.md 1.1): 43 layers, 256 experts.
// "pro"        DeepSeek V4 Pro (architecture.md 1.1, Pro column; unverified upstream).
// "flash-mini" Flash layer dimensions, 4 layers (SWA, SWA, CSA, HCA), 16 experts.
// "demo"       small model with every layer type (hidden 256 so every recipe applies) and
//              the real V4 vocabulary size, a few tens of MB: runs anywhere.
convert::ModelConfig preset(std::string_view name);
std::vector<std::string> preset_names();

}  // namespace ds4::synth
