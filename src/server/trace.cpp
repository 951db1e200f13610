#include "server/trace.h"

#include <cerrno>
#include <chrono>
#include <cstring>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include "core/error.h"

namespace ds4::server {

Trace::Trace(const std::string& path) {
  f_ = std::fopen(path.c_str(), "a");
  if (!f_) fail("cannot open trace file {}: {}", path, std::strerror(errno));
}

Trace::~Trace() {
  if (f_) std::fclose(f_);
}

void Trace::log(std::string_view request_id, std::string_view section, std::string_view text) {
  if (!f_) return;
  const auto now = std::chrono::system_clock::now();
  std::lock_guard lock(mu_);
  fmt::print(f_, "[{:%Y-%m-%dT%H:%M:%S}] {} {}\n{}\n", std::chrono::floor<std::chrono::milliseconds>(now),
             request_id, section, text);
  std::fflush(f_);
}

}  // namespace ds4::server
