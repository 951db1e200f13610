// StopMatcher: every way of splitting the text into pieces gives the same result, nothing of a
// stop string is ever emitted, and emitted text always ends on a character boundary.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "generate/stop_matcher.h"
#include "generate/utf8.h"

namespace ds4::gen {
namespace {

struct Outcome {
  std::string text;
  bool stopped = false;
  size_t stop_index = 0;
  bool operator==(const Outcome&) const = default;
};

// Streams `pieces`, checking the streaming invariants at every step.
Outcome stream(const std::vector<std::string>& stops, const std::vector<std::string>& pieces) {
  StopMatcher m(stops);
  Outcome o;
  for (const std::string& p : pieces) {
    const StopResult r = m.push(p);
    o.text += r.text;
    if (!r.stopped) {
      // Before a stop, the emitted text ends on a character boundary.
      EXPECT_EQ(utf8_complete_prefix(o.text), o.text.size()) << "emitted a partial character";
    }
    if (r.stopped) {
      o.stopped = true;
      o.stop_index = r.stop_index;
    }
  }
  if (!o.stopped) o.text += m.flush();
  EXPECT_EQ(m.flush(), "");
  return o;
}

// Reference on the whole text: the stop ending first (ties: the longer one).
Outcome reference(const std::vector<std::string>& stops, const std::string& text) {
  Outcome best{text, false, 0};
  size_t best_end = std::string::npos, best_start = 0;
  for (size_t i = 0; i < stops.size(); ++i) {
    const size_t pos = text.find(stops[i]);
    if (pos == std::string::npos) continue;
    const size_t end = pos + stops[i].size();
    if (best_end == std::string::npos || end < best_end || (end == best_end && pos < best_start)) {
      best_end = end;
      best_start = pos;
      best = {text.substr(0, pos), true, i};
    }
  }
  return best;
}

// Every split of `text` into three pieces (two cut points, empty pieces included).
void expect_split_invariant(const std::vector<std::string>& stops, const std::string& text) {
  const Outcome want = reference(stops, text);
  for (size_t a = 0; a <= text.size(); ++a)
    for (size_t b = a; b <= text.size(); ++b)
      EXPECT_EQ(stream(stops, {text.substr(0, a), text.substr(a, b - a), text.substr(b)}), want)
          << "text '" << text << "' cut at " << a << ", " << b;
  std::vector<std::string> bytes;
  for (char c : text) bytes.emplace_back(1, c);
  EXPECT_EQ(stream(stops, bytes), want) << "byte by byte: " << text;
}

TEST(StopMatcher, StopSpanningPiecesAtEverySplit) {
  expect_split_invariant({"STOP"}, "Hello STOP world");
  expect_split_invariant({"STOP"}, "no stop here, only ST");
  expect_split_invariant({"\n\n"}, "line\nline\n\nafter");
  EXPECT_EQ(reference({"STOP"}, "Hello STOP world").text, "Hello ");
}

TEST(StopMatcher, OverlappingStops) {
  expect_split_invariant({"abab"}, "ababab");
  expect_split_invariant({"abab"}, "xabaabab");
  expect_split_invariant({"aab"}, "aaaab");
  EXPECT_EQ(reference({"abab"}, "xabaabab").text, "xaba");

  // Holding back exactly the part that could still start a stop.
  StopMatcher m({"abab"});
  EXPECT_EQ(m.push("aba").text, "");
  EXPECT_EQ(m.held(), "aba");
  EXPECT_EQ(m.push("a").text, "aba");
  const StopResult r = m.push("bab");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "");
  EXPECT_TRUE(m.stopped());
}

TEST(StopMatcher, MultipleStopsFirstEndingWins) {
  // "c" completes before "abcd" could, so it wins even though "abcd" starts earlier.
  expect_split_invariant({"abcd", "c"}, "xabcd");
  const Outcome o = reference({"abcd", "c"}, "xabcd");
  EXPECT_EQ(o.text, "xab");
  EXPECT_EQ(o.stop_index, 1u);
  // Same end: the longer match wins.
  expect_split_invariant({"bc", "abc"}, "xabcz");
  EXPECT_EQ(reference({"bc", "abc"}, "xabcz").text, "x");
  expect_split_invariant({"</answer>", "<|end|>", "\n\nUser:"}, "The answer.\n\nUser: hi</answer>");
}

TEST(StopMatcher, Utf8IsNeverSplit) {
  // No stop strings at all: only the character rule applies.
  StopMatcher m;
  EXPECT_EQ(m.push("a\xC3").text, "a");
  EXPECT_EQ(m.push("\xA9!").text, "\xC3\xA9!");
  EXPECT_EQ(m.push("\xF0\x9F").text, "");
  EXPECT_EQ(m.push("\x98").text, "");
  EXPECT_EQ(m.push("\x80").text, "\xF0\x9F\x98\x80");
  // At the end an incomplete character is flushed as is: nothing more will come.
  EXPECT_EQ(m.push("\xE4\xB8").text, "");
  EXPECT_EQ(m.flush(), "\xE4\xB8");

  // 中文。 then more text
  expect_split_invariant({"\xE3\x80\x82"}, "\xE4\xB8\xAD\xE6\x96\x87\xE3\x80\x82more");
  expect_split_invariant({"\xC3\xA9t\xC3\xA9"}, "caf\xC3\xA9 \xC3\xA9t\xC3\xA9");        // "été"
  expect_split_invariant({}, "na\xC3\xAFve \xF0\x9F\x98\x80 text");
}

TEST(StopMatcher, FlushAndAfterStop) {
  StopMatcher m({"abc"});
  EXPECT_EQ(m.push("xab").text, "x");
  EXPECT_EQ(m.flush(), "ab");  // generation ended on a partial stop: it is just text

  StopMatcher s({"END"});
  const StopResult r = s.push("doneENDtrailing");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "done");
  EXPECT_EQ(s.push("more").text, "");
  EXPECT_FALSE(s.push("END").stopped);
  EXPECT_EQ(s.flush(), "");
}

TEST(StopMatcher, RejectsEmptyStop) {
  EXPECT_THROW(StopMatcher({"ok", ""}), Error);
}

TEST(StopMatcher, RandomTextsAndSplitsAgreeWithTheReference) {
  // Alphabet with multi-byte characters, so stops and splits land inside characters.
  const std::vector<std::string> alphabet = {"a", "b", "c", "\xC3\xA9", "\xE4\xB8\xAD",
                                             "\xF0\x9F\x98\x80"};
  std::mt19937_64 rng(2024);
  auto word = [&](size_t len) {
    std::string s;
    for (size_t i = 0; i < len; ++i) s += alphabet[rng() % alphabet.size()];
    return s;
  };
  for (int iter = 0; iter < 400; ++iter) {
    std::vector<std::string> stops;
    const size_t n_stops = rng() % 3;
    for (size_t i = 0; i < n_stops; ++i) stops.push_back(word(1 + rng() % 3));
    const std::string text = word(rng() % 12);
    std::vector<std::string> pieces;
    for (size_t pos = 0; pos < text.size();) {
      const size_t len = std::min<size_t>(text.size() - pos, rng() % 5);
      pieces.push_back(text.substr(pos, len));
      pos += len;
    }
    EXPECT_EQ(stream(stops, pieces), reference(stops, text)) << "iteration " << iter;
  }
}

}  // namespace
}  // namespace ds4::gen
