#include "convert/recipe.h"

#include "core/error.h"

namespace ds4::convert {

namespace {

struct RecipeName {
  Recipe r;
  std::string_view name;
};
constexpr RecipeName kRecipes[] = {{Recipe::F32, "f32"}, {Recipe::BF16, "bf16"},
                                   {Recipe::Q8, "q8"},   {Recipe::Q2, "q2"},
                                   {Recipe::Q4, "q4"},   {Recipe::MXFP4, "mxfp4"}};

// Non-expert types shared by q2, q4 and mxfp4 (formats.md 3.8, "Q2 recipe").
GgmlType ds4_dense_type(Role role) {
  switch (role) {
    case Role::Output:
    case Role::AttnProj:
    case Role::SharedExpert:
      return GgmlType::Q8_0;
    case Role::Embedding:
    case Role::HcFn:
    case Role::Compressor:
    case Role::Indexer:
    case Role::Router:
      return GgmlType::F16;
    default:
      return GgmlType::F32;
  }
}

GgmlType pick(Recipe r, const PlannedTensor& t, StDtype src) {
  if (t.role == Role::Tid2eid) return GgmlType::I32;
  if (t.role == Role::Vector) return GgmlType::F32;
  switch (r) {
    case Recipe::F32:
      return GgmlType::F32;
    case Recipe::BF16:
      if (src == StDtype::F32) return GgmlType::F32;
      if (src == StDtype::F16) return GgmlType::F16;
      return GgmlType::BF16;  // BF16, and FP8/FP4 products (<= 4 significant bits) are exact
    case Recipe::Q8:
      return GgmlType::Q8_0;
    case Recipe::Q2:
      if (t.role == Role::ExpertGate || t.role == Role::ExpertUp) return GgmlType::IQ2_XXS;
      if (t.role == Role::ExpertDown) return GgmlType::Q2_K;
      return ds4_dense_type(t.role);
    case Recipe::Q4:
      if (is_routed_expert(t.role)) return GgmlType::Q4_K;
      return ds4_dense_type(t.role);
    case Recipe::MXFP4:
      if (is_routed_expert(t.role)) return GgmlType::MXFP4;
      return ds4_dense_type(t.role);
  }
  return GgmlType::F32;
}

}  // namespace

Recipe parse_recipe(std::string_view name) {
  for (const auto& x : kRecipes)
    if (x.name == name) return x.r;
  fail("unknown recipe \"{}\"; expected one of f32, bf16, q8, q2, q4, mxfp4", name);
}

std::string_view recipe_name(Recipe r) {
  for (const auto& x : kRecipes)
    if (x.r == r) return x.name;
  return "?";
}

GgmlType choose_type(Recipe r, const PlannedTensor& t, StDtype src) {
  const GgmlType ty = pick(r, t, src);
  const TypeTraits& tr = type_traits(ty);
  if (t.ne.empty() || t.ne[0] % tr.block_elems != 0) {
    std::string shape = "[";
    for (size_t i = 0; i < t.ne.size(); ++i) shape += (i ? ", " : "") + std::to_string(t.ne[i]);
    fail("tensor {}: recipe {} stores it as {}, whose {}-element blocks need ne[0] divisible by "
         "{}, but its shape is {}; use a recipe with a smaller block (q8, bf16 or f32) for this "
         "model",
         t.name, recipe_name(r), tr.name, tr.block_elems, tr.block_elems, shape + "]");
  }
  return ty;
}

}  // namespace ds4::convert
