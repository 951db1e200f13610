// --trace FILE: a human-readable log of what the server did with each request (rendered prompt,
// cache decision, generated text, tool-parser events), for bug reports. Off: every call is a
// cheap no-op.
#pragma once

#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>

namespace ds4::server {

class Trace {
 public:
  Trace() = default;
  explicit Trace(const std::string& path);
  ~Trace();
  Trace(const Trace&) = delete;
  Trace& operator=(const Trace&) = delete;

  bool enabled() const { return f_ != nullptr; }
  // One record: "[time] request-id section\n" + text + "\n".
  void log(std::string_view request_id, std::string_view section, std::string_view text);

 private:
  std::FILE* f_ = nullptr;
  std::mutex mu_;
};

}  // namespace ds4::server
