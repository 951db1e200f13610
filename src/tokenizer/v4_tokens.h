// DeepSeek V4's added tokens beyond the V3 tokenizer.json (architecture.md 7.2). V4 keeps V3's
// ids 0..2 and 128000..128814 and grows the table to 129,280 entries (= embedding rows). Only
// the ids below are confirmed; every other new id is filled with a reserved placeholder named
// like V3's (`<｜place▁holder▁no▁N｜>`, N = id - 128000). docs/tokenizer.md has the table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds4::tok {

inline constexpr int32_t kV4VocabSize = 129280;
inline constexpr int32_t kV3AddedEnd = 128815;  // first id after V3's added tokens

struct AddedTokenSpec {
  int32_t id;
  std::string content;
  bool special;  // true: control token (GGUF type 3); false: user-defined (type 4)
};

// The confirmed V4 additions, in id order.
const std::vector<AddedTokenSpec>& v4_known_added_tokens();
// The token V4 has at `id` in [kV3AddedEnd, kV4VocabSize): a known one or a placeholder.
AddedTokenSpec v4_added_token(int32_t id);

}  // namespace ds4::tok
