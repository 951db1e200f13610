#include "cli/display.h"

#include <fmt/format.h>

#include <algorithm>

namespace ds4::cli {
namespace {

constexpr std::string_view kThinkEnd = "</think>";
constexpr const char* kFaint = "\x1b[2m";
constexpr const char* kReset = "\x1b[0m";

void put(std::FILE* f, std::string_view s) {
  if (!s.empty()) std::fwrite(s.data(), 1, s.size(), f);
}

}  // namespace

AnswerPrinter::AnswerPrinter(std::FILE* out, bool terminal, bool thinking)
    : out_(out), terminal_(terminal), in_thinking_(thinking) {}

void AnswerPrinter::open_thinking() {
  if (opened_) return;
  opened_ = true;
  put(out_, terminal_ ? kFaint : "[thinking]\n");
}

void AnswerPrinter::close_thinking() {
  open_thinking();
  if (terminal_) {
    put(out_, kReset);
    put(out_, "\n\n");
  } else {
    if (reasoning_.empty() || reasoning_.back() != '\n') put(out_, "\n");
    put(out_, "[/thinking]\n");
  }
  in_thinking_ = false;
}

void AnswerPrinter::emit(std::string_view text) {
  if (text.empty()) return;
  if (in_thinking_) {
    open_thinking();
    reasoning_ += text;
  } else {
    // The answer's first characters are usually the newlines that follow </think>.
    if (content_.empty()) {
      const size_t k = text.find_first_not_of('\n');
      if (k == std::string_view::npos) return;
      text.remove_prefix(k);
    }
    content_ += text;
  }
  put(out_, text);
}

void AnswerPrinter::push(std::string_view text) {
  if (!in_thinking_) {
    emit(text);
    std::fflush(out_);
    return;
  }
  held_ += text;
  const size_t end = held_.find(kThinkEnd);
  if (end != std::string::npos) {
    emit(std::string_view(held_).substr(0, end));
    const std::string rest = held_.substr(end + kThinkEnd.size());
    held_.clear();
    close_thinking();
    emit(rest);
  } else {
    // Keep the longest tail that may still become "</think>".
    size_t keep = std::min(held_.size(), kThinkEnd.size() - 1);
    while (keep > 0 && std::string_view(held_).substr(held_.size() - keep) != kThinkEnd.substr(0, keep))
      --keep;
    emit(std::string_view(held_).substr(0, held_.size() - keep));
    held_.erase(0, held_.size() - keep);
  }
  std::fflush(out_);
}

void AnswerPrinter::finish() {
  emit(held_);
  held_.clear();
  if (in_thinking_ && opened_) {
    close_thinking();
  } else if (terminal_ && opened_) {
    put(out_, kReset);
  }
  if (!content_.empty() && content_.back() != '\n') put(out_, "\n");
  std::fflush(out_);
}

void ProgressLine::update(std::string_view label, int64_t done, int64_t total, double per_s,
                          std::string_view unit) {
  if (!enabled_ || total <= 0) return;
  constexpr int kWidth = 24;
  const double frac = std::clamp(static_cast<double>(done) / static_cast<double>(total), 0.0, 1.0);
  const int fill = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<size_t>(fill), '#');
  bar.resize(kWidth, ' ');
  std::string eta;
  if (per_s > 0 && done < total)
    eta = fmt::format(", ETA {:.0f}s", static_cast<double>(total - done) / per_s);
  const std::string rate = per_s > 0 ? fmt::format(", {:.1f} {}/s", per_s, unit) : std::string();
  fmt::print(out_, "\r\x1b[K{} [{}] {}/{} {}{}{}", label, bar, done, total, unit, rate, eta);
  std::fflush(out_);
  drawn_ = true;
}

void ProgressLine::clear() {
  if (!drawn_) return;
  fmt::print(out_, "\r\x1b[K");
  std::fflush(out_);
  drawn_ = false;
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 5) {
    bytes /= 1024.0;
    ++u;
  }
  return fmt::format("{:.1f} {}", bytes, units[u]);
}

}  // namespace ds4::cli
