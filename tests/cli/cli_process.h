// Runs cli::run in a child process (fork), as the ds4 program would, with stdin/stdout/stderr
// redirected to files, or on a pseudo-terminal (forkpty) for the interactive mode.
#pragma once

#include <CLI/CLI.hpp>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/cli.h"
#include "cli_test_util.h"

namespace clitest {

struct Outcome {
  int status = -1;  // exit status, or 128 + signal
  std::string out;
  std::string err;
};

inline std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

[[noreturn]] inline void child_main(const std::vector<std::string>& args) {
  std::vector<std::string> argv_s{"ds4"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  CLI::App app{"ds4"};
  ds4::cli::CliOptions o;
  ds4::cli::add_flags(app, o);
  int rc = 0;
  try {
    ds4::cli::parse(app, static_cast<int>(argv_s.size()), argv.data());
    rc = ds4::cli::run(o);
  } catch (const CLI::ParseError& e) {
    rc = app.exit(e);
  }
  std::fflush(stdout);
  std::fflush(stderr);
  ::_exit(rc);
}

inline int decode_status(int st) {
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return -1;
}

// Runs with stdin from `input`; if interrupt_after_ms >= 0 the child gets SIGINT then.
inline Outcome run_cli(const std::vector<std::string>& args, const std::string& input = "",
                       int interrupt_after_ms = -1) {
  static int counter = 0;
  const std::string base = (temp_dir() / ("run" + std::to_string(++counter))).string();
  {
    std::ofstream(base + ".in", std::ios::binary) << input;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::freopen((base + ".in").c_str(), "rb", stdin);
    std::freopen((base + ".out").c_str(), "wb", stdout);
    std::freopen((base + ".err").c_str(), "wb", stderr);
    child_main(args);
  }
  if (interrupt_after_ms >= 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(interrupt_after_ms));
    ::kill(pid, SIGINT);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return {decode_status(st), slurp(base + ".out"), slurp(base + ".err")};
}

// An interactive session on a pseudo-terminal: write keystrokes, read until a text appears.
class PtySession {
 public:
  explicit PtySession(const std::vector<std::string>& args) {
    std::fflush(stdout);
    std::fflush(stderr);
    pid_ = ::forkpty(&fd_, nullptr, nullptr, nullptr);
    if (pid_ == 0) {
      ::setenv("HOME", temp_dir().c_str(), 1);  // history file stays in the test directory
      child_main(args);
    }
  }
  ~PtySession() {
    if (pid_ > 0 && !waited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) ::close(fd_);
  }
  void write(const std::string& s) { (void)!::write(fd_, s.data(), s.size()); }
  // Reads until `needle` appears in the output after `from` (default: what was seen so far);
  // false on timeout or end of output.
  bool wait_for(const std::string& needle, int timeout_ms = 20000) {
    const size_t from = mark_;
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < end) {
      const size_t at = seen_.find(needle, from);
      if (at != std::string::npos) {
        mark_ = at + needle.size();
        return true;
      }
      fd_set set;
      FD_ZERO(&set);
      FD_SET(fd_, &set);
      timeval tv{0, 50000};
      if (::select(fd_ + 1, &set, nullptr, nullptr, &tv) > 0) {
        char buf[4096];
        const ssize_t n = ::read(fd_, buf, sizeof buf);
        if (n <= 0) return false;
        seen_.append(buf, static_cast<size_t>(n));
      }
    }
    return false;
  }
  // The exit status, or -1 if the child is still running after 30 s. Once the terminal has
  // closed, wait_for returns at once, so the loop keeps time on a clock and sleeps.
  int wait_exit() {
    int st = 0;
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < end) {
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        waited_ = true;
        return decode_status(st);
      }
      // Drain output so the child never blocks on a full terminal buffer.
      if (!wait_for("\x01\x02never", 50)) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }
  const std::string& seen() const { return seen_; }

 private:
  int fd_ = -1;
  pid_t pid_ = -1;
  bool waited_ = false;
  std::string seen_;
  size_t mark_ = 0;
};

}  // namespace clitest
