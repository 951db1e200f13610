// Stop strings on streamed text. Generated text arrives piece by piece (one token's bytes at a
// time); the matcher decides how much of it may be shown now. It holds back (1) the longest tail
// that could still be the beginning of a stop string and (2) a trailing incomplete UTF-8
// character, the two streaming safety rules of peer-ds4.md 2.4.
//
// Which stop wins: the one whose match *ends* first in the text, ties going to the longer match
// (the earlier start). That is the stop a byte-by-byte reader meets first, so the result does not
// depend on how the text was split into pieces. The stop string itself, and anything after it,
// is never emitted.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace ds4::gen {

struct StopResult {
  std::string text;          // safe to emit now (may be empty)
  bool stopped = false;      // a stop string was completed: generation should end
  size_t stop_index = 0;     // index into the matcher's stop strings, valid when stopped
};

class StopMatcher {
 public:
  // Empty stop strings are rejected (they would match before any text); duplicates are allowed.
  explicit StopMatcher(std::vector<std::string> stops = {});

  // Feeds the next piece. After a stop was hit, further pieces are ignored (empty results).
  StopResult push(std::string_view piece);

  // End of generation without a stop string (EOS, stop token, max tokens): returns all held text,
  // including an incomplete trailing character, since no more bytes will come to complete it.
  std::string flush();

  bool stopped() const { return stopped_; }
  const std::vector<std::string>& stops() const { return stops_; }
  // Bytes received but not yet emitted.
  std::string_view held() const { return held_; }

 private:
  // Longest suffix of held_ that is a proper prefix of some stop string.
  size_t partial_match_length() const;

  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace ds4::gen
