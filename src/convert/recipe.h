// Recipes: the GGUF type of every tensor (architecture.md 2.2-2.3, formats.md 3.8).
//   f32    every float tensor F32 (exact for every checkpoint dtype); tid2eid I32.
//   bf16   matrices BF16, except those stored F32/F16 in the checkpoint, which keep their type
//          so the file stays bit-exact (hc *_fn and ape are F32 in the official layout);
//          vectors (norms, sinks, biases, hc base/scale) F32; tid2eid I32.
//   q8     every 2-D and 3-D matrix Q8_0, vectors F32, tid2eid I32.
//   q2     ds4's "IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8": routed gate/up IQ2_XXS, routed down
//          Q2_K; attention projections, shared experts and the head Q8_0; embedding, router,
//          hc *_fn, compressor and indexer matrices/ape F16; vectors F32; tid2eid I32.
//   q4     as q2 with all routed experts Q4_K.
//   mxfp4  as q2 with routed experts MXFP4 (lossless repack of FP4 checkpoints).
#pragma once

#include <string>
#include <string_view>

#include "convert/safetensors.h"
#include "convert/tensor_plan.h"
#include "core/ggml_type.h"

namespace ds4::convert {

enum class Recipe { F32, BF16, Q8, Q2, Q4, MXFP4 };

Recipe parse_recipe(std::string_view name);  // throws listing the valid names
std::string_view recipe_name(Recipe r);

// Type of tensor `t` whose (first) source has dtype `src`. Throws when ne[0] is not a multiple
// of the chosen type's block size: the recipe cannot store that tensor.
GgmlType choose_type(Recipe r, const PlannedTensor& t, StDtype src);

}  // namespace ds4::convert
