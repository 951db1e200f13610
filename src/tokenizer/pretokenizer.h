// The "joyai-llm" pre-tokenizer of DeepSeek V3/V4 (architecture.md 7.1): three ordered regex
// split passes, each isolating its matches and handing every resulting span, matches and gaps
// alike, to the next pass. Implemented with PCRE2 (UTF + UCP, JIT) because the general pattern
// needs exact Unicode categories (\p{L}, \p{P}, \p{S}, \p{M}, \p{N}).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string_view>

namespace ds4::tok {

class PreTokenizer {
 public:
  PreTokenizer();
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // Calls `emit` with every pre-token of `text` in order. The pieces tile `text` exactly, so
  // bytes that are not valid UTF-8 are never dropped: they match no pattern and end up in
  // the gaps, which are pre-tokens of their own. Thread-safe.
  template <typename F>
  void split(std::string_view text, F&& emit) const {
    split_impl(text, std::function<void(std::string_view)>(std::forward<F>(emit)));
  }
  void split_impl(std::string_view text, const std::function<void(std::string_view)>& emit) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds4::tok
