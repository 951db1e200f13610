#include "core/ggml_type.h"

#include <array>
#include <cctype>

#include "core/error.h"

namespace ds4 {
namespace {

constexpr std::array<TypeTraits, 10> kTraits = {{
    {GgmlType::F32, "F32", 1, 4, false, true},
    {GgmlType::F16, "F16", 1, 2, false, true},
    {GgmlType::Q8_0, "Q8_0", 32, 34, true, true},
    {GgmlType::Q2_K, "Q2_K", 256, 84, true, true},
    {GgmlType::Q4_K, "Q4_K", 256, 144, true, true},
    {GgmlType::Q8_K, "Q8_K", 256, 292, true, false},
    {GgmlType::IQ2_XXS, "IQ2_XXS", 256, 66, true, true},
    {GgmlType::I32, "I32", 1, 4, false, true},
    {GgmlType::BF16, "BF16", 1, 2, false, true},
    {GgmlType::MXFP4, "MXFP4", 32, 17, true, true},
}};

}  // namespace

const TypeTraits* type_traits(uint32_t id) {
  for (const auto& t : kTraits)
    if (static_cast<uint32_t>(t.type) == id) return &t;
  return nullptr;
}

const TypeTraits& type_traits(GgmlType t) {
  const TypeTraits* tr = type_traits(static_cast<uint32_t>(t));
  if (!tr) fail("unsupported tensor type id {}", static_cast<uint32_t>(t));
  return *tr;
}

std::optional<GgmlType> type_from_name(std::string_view name) {
  for (const auto& t : kTraits) {
    if (t.name.size() != name.size()) continue;
    bool eq = true;
    for (size_t i = 0; i < name.size(); ++i)
      if (std::toupper(static_cast<unsigned char>(name[i])) != t.name[i]) eq = false;
    if (eq) return t.type;
  }
  return std::nullopt;
}

}  // namespace ds4
