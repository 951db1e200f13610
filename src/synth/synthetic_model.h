// Synthetic DeepSeek V4 models: exactly the tensor table, types and metadata of a converted
// model (src/convert's name map and recipes), filled with random, well-scaled weights.
// Decode and prefill speed do not depend on the weight values, so a synthetic Flash file
// measures the engine on machines that have no real weights.
//
// Two ways to fill a tensor:
//  - Floats: draw float weights, then quantize them to the recipe's type. The float values
//    depend only on (seed, tensor name, row), so one seed gives the same model in every
//    recipe (the demo model relies on this).
//  - Codes: draw valid random block codes directly, scaled to the same standard deviation.
//    Orders of magnitude faster; used for full-scale files. These also take a unit-variance
//    embedding and a 0.01 router bias so that routing spreads over the experts
//    (synthetic_model.cpp, `distribution`).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "convert/model_config.h"
#include "convert/recipe.h"
#include "convert/tensor_plan.h"
#include "gguf/gguf.h"

namespace ds4 {
class ThreadPool;
}

namespace ds4::synth {

enum class Fill { Floats, Codes };

struct SynthTensor {
  convert::PlannedTensor plan;
  GgmlType type = GgmlType::F32;
  int32_t n_experts = 0;       // expert ids drawn for tid2eid
  int64_t n_rows() const;      // prod(ne[1..])
  size_t row_bytes() const;    // bytes of one row of ne[0] elements
  size_t nbytes() const { return row_bytes() * static_cast<size_t>(n_rows()); }
  // Rows that are generated together: one expert of a routed-expert tensor, else all rows.
  int64_t rows_per_slab() const;
};

// The tensors of `cfg` in file order with their recipe types.
std::vector<SynthTensor> synthetic_tensors(const convert::ModelConfig& cfg, convert::Recipe recipe);

// Standard deviation the generator targets for the float values of a tensor, and what kind
// of values it draws (see synthetic_model.cpp for the scheme, which follows the fixtures'
// except for the embedding and router bias of full-scale Fill::Codes files).
double target_std(const SynthTensor& t, Fill fill = Fill::Floats);

// Generates the bytes of slab `slab` (rows [slab*rows_per_slab, ...)) into `out`
// (rows_per_slab * row_bytes bytes). Deterministic in (seed, tensor name, slab).
void generate_slab(const SynthTensor& t, uint64_t seed, Fill fill, int64_t slab, uint8_t* out);

struct WriteOptions {
  std::string name = "DeepSeek-V4 synthetic";
  convert::Recipe recipe = convert::Recipe::Q2;
  uint64_t seed = 1;
  Fill fill = Fill::Codes;
  // Extra metadata (e.g. the tokenizer, or the demo label) appended after the model keys.
  std::vector<gguf::KeyValue> extra_kv;
  int threads = 0;  // 0 = all cores
  // Called from one thread at a time, after each batch of slabs reaches the file, with
  // (tensor payload bytes written, total tensor payload bytes).
  std::function<void(uint64_t, uint64_t)> progress;
};

// Streams a complete GGUF to `path` (temp file + rename). The worker threads generate one
// batch of slabs (one per thread) while the previous batch is being written, so memory use is
// bounded by two batches whatever the model size, and generation overlaps the disk writes.
void write_gguf(const std::string& path, const convert::ModelConfig& cfg, const WriteOptions& opts);

// The exact size in bytes of the file write_gguf(path, cfg, opts) writes (header, padding and
// payload), from the same declarations and without writing anything: how the 80.76 GiB q2
// Flash file is checked on machines whose disk cannot hold it, and how ds4-quantize checks
// the free space before it starts.
uint64_t planned_file_bytes(const convert::ModelConfig& cfg, const WriteOptions& opts);

// Options for a full-scale synthetic file of preset `preset_name` (presets.h): random codes
// (Fill::Codes), named and labelled (kSyntheticKey) as synthetic with its preset, recipe and seed.
WriteOptions synthetic_options(const std::string& preset_name, convert::Recipe recipe,
                               uint64_t seed = 1);

// Metadata key that marks a file as synthetic; its value says how it was made. `ds4` and the
// server show it so nobody mistakes a synthetic or demo model for the real one.
inline constexpr const char* kSyntheticKey = "dwarfstar.synthetic";

}  // namespace ds4::synth
