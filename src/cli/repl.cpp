// The interactive chat: libedit line editing and history (~/.ds4_history), slash commands, and
// Ctrl+C that stops the current answer and returns to the prompt. The conversation and the
// live KV state persist across turns, so each turn prefills only its new tokens.
#include <editline/readline.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/modes.h"
#include "core/error.h"

namespace ds4::cli {
namespace {

constexpr const char* kHelp =
    "commands:\n"
    "  /help          this text\n"
    "  /think         thinking mode (default)\n"
    "  /think-max     maximum reasoning effort (needs --ctx >= 393216)\n"
    "  /nothink       answer directly\n"
    "  /ctx N         new context size (the conversation is kept and prefilled again)\n"
    "  /read FILE     send FILE's contents as the next message\n"
    "  /save FILE     save the session (KV state and conversation)\n"
    "  /load FILE     continue a saved session\n"
    "  /clear         start a new conversation\n"
    "  /quit, /exit   leave (also Ctrl+D)\n"
    "Ctrl+C stops an answer and returns here.\n";

std::string history_path() {
  const char* home = std::getenv("HOME");
  return home && *home ? std::string(home) + "/.ds4_history" : std::string();
}

// One input line, or nullopt at end of input. Line editing only on a terminal; a pipe is read
// plainly so that scripted sessions behave the same everywhere.
std::optional<std::string> read_line(bool terminal, bool& interrupted) {
  interrupted = false;
  if (!terminal) {
    std::string line;
    if (!std::getline(std::cin, line)) return std::nullopt;
    return line;
  }
  char* raw = ::readline("ds4> ");
  if (raw == nullptr) {
    if (interrupt_flag().exchange(false)) {
      interrupted = true;
      return std::string();
    }
    return std::nullopt;
  }
  std::string line(raw);
  std::free(raw);
  return line;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {}: {}", path, std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string trim(std::string s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  const size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

}  // namespace

int run_interactive(const LoadedModel& m, const CliOptions& o, ChatSession& chat) {
  const bool in_tty = ::isatty(STDIN_FILENO) != 0;
  const bool out_tty = ::isatty(STDOUT_FILENO) != 0;
  const std::string hist = history_path();
  if (in_tty) {
    ::using_history();
    ::stifle_history(512);
    if (!hist.empty()) ::read_history(hist.c_str());
    fmt::print(stderr, "type a message, /help for commands, Ctrl+D to quit\n");
  }
  for (;;) {
    interrupt_flag().store(false);
    bool interrupted = false;
    std::optional<std::string> line = read_line(in_tty, interrupted);
    if (!line) break;
    if (interrupted) {
      fmt::print(stderr, "\n");
      continue;
    }
    std::string text = trim(*line);
    if (text.empty()) continue;
    if (in_tty) {
      ::add_history(text.c_str());
      if (!hist.empty()) ::write_history(hist.c_str());
    }
    try {
      if (text[0] == '/') {
        std::istringstream ss(text);
        std::string cmd, arg;
        ss >> cmd;
        std::getline(ss, arg);
        arg = trim(arg);
        if (cmd == "/quit" || cmd == "/exit") break;
        if (cmd == "/help") {
          fmt::print(stderr, "{}", kHelp);
        } else if (cmd == "/think") {
          chat.set_thinking(chat::Thinking::High);
          fmt::print(stderr, "thinking mode\n");
        } else if (cmd == "/think-max") {
          chat.set_thinking(chat::Thinking::Max);
          if (chat.thinking() == chat::Thinking::Max) fmt::print(stderr, "maximum thinking mode\n");
        } else if (cmd == "/nothink") {
          chat.set_thinking(chat::Thinking::Off);
          fmt::print(stderr, "non-thinking mode\n");
        } else if (cmd == "/ctx") {
          char* end = nullptr;
          const long long n = std::strtoll(arg.c_str(), &end, 10);
          if (arg.empty() || *end != '\0') fail("/ctx needs a number of tokens");
          chat.set_ctx(n);
          fmt::print(stderr, "context {} tokens\n", n);
        } else if (cmd == "/read") {
          if (arg.empty()) fail("/read needs a file name");
          text = read_text_file(arg);
        } else if (cmd == "/save") {
          if (arg.empty()) fail("/save needs a file name");
          chat.save(arg);
          fmt::print(stderr, "saved {} tokens to {}\n", chat.generator().session().n_past(), arg);
        } else if (cmd == "/load") {
          if (arg.empty()) fail("/load needs a file name");
          chat.load(arg);
          fmt::print(stderr, "loaded {} tokens from {}\n", chat.generator().session().n_past(), arg);
        } else if (cmd == "/clear") {
          chat.clear();
          fmt::print(stderr, "new conversation\n");
        } else {
          fail("unknown command {}; /help lists them", cmd);
        }
        if (cmd != "/read") continue;
      }
      TurnOutput t = chat.user_turn(text, stdout, out_tty, &interrupt_flag());
      if (t.result.finish == gen::FinishReason::Cancelled) fmt::print(stderr, "[interrupted]\n");
      print_speed(t.result);
    } catch (const Error& e) {
      std::fflush(stdout);
      fmt::print(stderr, "ds4: {}\n", e.what());
    }
  }
  if (in_tty) fmt::print(stderr, "\n");
  if (!o.kv_save.empty()) chat.save(o.kv_save);
  return 0;
}

}  // namespace ds4::cli
