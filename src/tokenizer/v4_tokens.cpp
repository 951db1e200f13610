#include "tokenizer/v4_tokens.h"

#include <fmt/format.h>

namespace ds4::tok {

const std::vector<AddedTokenSpec>& v4_known_added_tokens() {
  // Flagged non-special like V3's role tokens (<｜User｜>), so that a decoder skipping special
  // tokens still shows them; matching before BPE does not depend on the flag.
  static const std::vector<AddedTokenSpec> table = {
      {128821, "<think>", false},
      {128822, "</think>", false},
      {128825, "｜DSML｜", false},
      {128828, "<｜latest_reminder｜>", false},
      {128829, "<｜action｜>", false},
      {128830, "<｜query｜>", false},
      {128831, "<｜authority｜>", false},
      {128832, "<｜domain｜>", false},
      {128833, "<｜task｜>", false},
      {128836, "<｜title｜>", false},
      {128845, "<｜read_url｜>", false},
  };
  return table;
}

AddedTokenSpec v4_added_token(int32_t id) {
  for (const auto& t : v4_known_added_tokens())
    if (t.id == id) return t;
  return {id, fmt::format("<｜place▁holder▁no▁{}｜>", id - 128000), true};
}

}  // namespace ds4::tok
