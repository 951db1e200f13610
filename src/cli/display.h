// What the user sees while a model answers: the streamed answer with its thinking section set
// apart, and progress lines on stderr.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace ds4::cli {

// Splits the streamed text of a thinking-mode answer at "</think>" (architecture.md 7.3: the
// prompt ends with <think>, the model writes its reasoning, </think>, then the answer) and prints
// it: reasoning dimmed (ANSI faint) on a terminal, or between "[thinking]" and "[/thinking]"
// lines otherwise, so that scripts can cut it out. A "</think>" split over two pieces is held
// back until it is complete.
class AnswerPrinter {
 public:
  AnswerPrinter(std::FILE* out, bool terminal, bool thinking);
  void push(std::string_view text);
  // End of the answer: prints what was held back and closes an unfinished thinking section.
  void finish();

  const std::string& reasoning() const { return reasoning_; }
  const std::string& content() const { return content_; }

 private:
  void emit(std::string_view text);  // to the current section
  void open_thinking();
  void close_thinking();

  std::FILE* out_;
  bool terminal_;
  bool in_thinking_;
  bool opened_ = false;  // the thinking marker was printed
  std::string held_;
  std::string reasoning_;
  std::string content_;
};

// A one-line progress bar redrawn in place on a terminal ("prefill [####    ] 512/2048 tokens,
// 310 tok/s, ETA 5s"); prints nothing when stderr is not a terminal.
class ProgressLine {
 public:
  ProgressLine(std::FILE* out, bool enabled) : out_(out), enabled_(enabled) {}
  ~ProgressLine() { clear(); }
  void update(std::string_view label, int64_t done, int64_t total, double per_s, std::string_view unit);
  void clear();

 private:
  std::FILE* out_;
  bool enabled_;
  bool drawn_ = false;
};

std::string human_bytes(double bytes);

}  // namespace ds4::cli
