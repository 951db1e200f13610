#include "generate/stop_matcher.h"

#include <algorithm>

#include "core/error.h"
#include "generate/utf8.h"

namespace ds4::gen {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (size_t i = 0; i < stops_.size(); ++i)
    if (stops_[i].empty()) fail("stop string {} is empty; an empty stop would match at once", i);
}

StopResult StopMatcher::push(std::string_view piece) {
  StopResult r;
  if (stopped_) return r;
  const size_t old_len = held_.size();
  held_.append(piece);

  // held_ never contains a complete stop before this piece (we would have stopped), so only
  // matches ending in the new bytes are possible; each stop's first such occurrence is the one
  // ending earliest.
  constexpr size_t npos = std::string::npos;
  size_t best_end = npos, best_start = npos, best_index = 0;
  for (size_t i = 0; i < stops_.size(); ++i) {
    const std::string& s = stops_[i];
    const size_t from = old_len >= s.size() ? old_len - s.size() + 1 : 0;
    const size_t pos = held_.find(s, from);
    if (pos == npos) continue;
    const size_t end = pos + s.size();
    if (end < best_end || (end == best_end && pos < best_start)) {
      best_end = end;
      best_start = pos;
      best_index = i;
    }
  }
  if (best_end != npos) {
    // Everything before the stop is final now, an incomplete character included: no later byte
    // will complete it.
    stopped_ = true;
    r.stopped = true;
    r.stop_index = best_index;
    r.text = held_.substr(0, best_start);
    held_.clear();
    return r;
  }

  size_t emit = held_.size() - partial_match_length();
  emit = utf8_complete_prefix(std::string_view(held_).substr(0, emit));
  r.text = held_.substr(0, emit);
  held_.erase(0, emit);
  return r;
}

std::string StopMatcher::flush() {
  std::string out;
  out.swap(held_);
  if (stopped_) out.clear();
  return out;
}

size_t StopMatcher::partial_match_length() const {
  const std::string_view h(held_);
  size_t best = 0;
  for (const std::string& s : stops_) {
    // Only lengths beyond the current best can improve it; longest first, so the first hit wins.
    for (size_t k = std::min(s.size() - 1, h.size()); k > best; --k) {
      if (h.substr(h.size() - k) == std::string_view(s).substr(0, k)) {
        best = k;
        break;
      }
    }
  }
  return best;
}

}  // namespace ds4::gen
