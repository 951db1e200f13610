// Errors in DwarfStar library code are exceptions carrying a complete, user-facing sentence
// ("tensor blk.7.attn_q_b.weight: expected Q8_0 [1024, 32768], found F16 [1024, 16384]").
// Library code never aborts; programs catch ds4::Error at the top and exit non-zero.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace ds4 {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Throws ds4::Error with a fmt-formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace ds4
