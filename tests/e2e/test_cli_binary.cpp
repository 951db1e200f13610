// The `ds4` program end to end on a tiny demo model: seeded determinism, greedy answers equal
// the argmax of the --dump-logits evaluation path, stop strings, Ctrl+C, KV snapshots (and the
// refusal of a foreign one), the interactive mode on a pseudo-terminal, and error sentences.
#include <gtest/gtest.h>
#include <pty.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "chat/render.h"
#include "cli/cli_test_util.h"

namespace {

namespace fs = std::filesystem;

std::string ds4_bin() {
  const char* dir = std::getenv("DS4_BIN_DIR");
  return std::string(dir ? dir : DS4_BINARY_DIR "/apps") + "/ds4";
}

struct Outcome {
  int status = -1;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

int decode(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1; }

std::vector<char*> argv_of(std::vector<std::string>& args) {
  std::vector<char*> v;
  for (auto& a : args) v.push_back(a.data());
  v.push_back(nullptr);
  return v;
}

Outcome run(std::vector<std::string> args, const std::string& input = "", int interrupt_after_ms = -1) {
  static int n = 0;
  const std::string base = (clitest::temp_dir() / ("bin" + std::to_string(++n))).string();
  std::ofstream(base + ".in") << input;
  args.insert(args.begin(), ds4_bin());
  auto argv = argv_of(args);
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::freopen((base + ".in").c_str(), "rb", stdin);
    std::freopen((base + ".out").c_str(), "wb", stdout);
    std::freopen((base + ".err").c_str(), "wb", stderr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  if (interrupt_after_ms >= 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(interrupt_after_ms));
    ::kill(pid, SIGINT);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return {decode(st), slurp(base + ".out"), slurp(base + ".err")};
}

std::vector<std::string> tiny(std::vector<std::string> extra) {
  std::vector<std::string> a{"-m", clitest::tiny_model(), "--ctx", "512", "-t", "1"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

bool has(const std::string& s, const std::string& p) { return s.find(p) != std::string::npos; }

class CleanUp : public ::testing::Environment {
 public:
  void TearDown() override { fs::remove_all(clitest::temp_dir()); }
};
const auto* const kCleanUp = ::testing::AddGlobalTestEnvironment(new CleanUp);

class CliBinary : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(ds4_bin())) GTEST_SKIP() << ds4_bin() << " is not built";
  }
};

TEST_F(CliBinary, SeededOutputIsDeterministicAndTheDemoIsLabelled) {
  const Outcome a = run(tiny({"-p", "hello", "-n", "10", "--seed", "9"}));
  ASSERT_EQ(a.status, 0) << a.err;
  EXPECT_TRUE(has(a.err, "DEMO MODEL")) << a.err;
  EXPECT_EQ(a.out, run(tiny({"-p", "hello", "-n", "10", "--seed", "9"})).out);
}

TEST_F(CliBinary, GreedyAnswerIsTheArgmaxOfTheLogitsPath) {
  const std::string lp = (clitest::temp_dir() / "g.json").string();
  const Outcome a = run(tiny({"-p", "argmax", "-n", "6", "--temp", "0", "--nothink", "--ignore-eos",
                         "--dump-logprobs", lp}));
  ASSERT_EQ(a.status, 0) << a.err;
  std::vector<int32_t> gen;
  const auto dump = nlohmann::json::parse(slurp(lp));  // named: a temporary would die in the loop
  for (const auto& t : dump.at("tokens")) gen.push_back(t.at("id").get<int32_t>());
  ASSERT_EQ(gen.size(), 6u);

  const auto& tok = clitest::tiny().tok;
  std::vector<int32_t> all = ds4::chat::render_single_turn(tok, "", "argmax", ds4::chat::Thinking::Off);
  const size_t n_prompt = all.size();
  all.insert(all.end(), gen.begin(), gen.end() - 1);
  std::string ids;
  for (int32_t t : all) ids += (ids.empty() ? "" : ",") + std::to_string(t);
  const std::string logits = (clitest::temp_dir() / "g.f32").string();
  const Outcome e = run({"-m", clitest::tiny_model(), "--tokens", ids, "--dump-logits", logits});
  ASSERT_EQ(e.status, 0) << e.err;
  const std::string bytes = slurp(logits);
  const size_t V = static_cast<size_t>(tok.vocab_size());
  ASSERT_EQ(bytes.size(), all.size() * V * 4);
  const auto* f = reinterpret_cast<const float*>(bytes.data());
  for (size_t i = 0; i < gen.size(); ++i) {
    const float* row = f + (n_prompt - 1 + i) * V;
    EXPECT_EQ(gen[i], static_cast<int32_t>(std::max_element(row, row + V) - row)) << "step " << i;
  }
}

TEST_F(CliBinary, StopStringAndCtrlC) {
  const Outcome a = run(tiny({"-p", "s", "-n", "30", "--temp", "0", "--nothink"}));
  ASSERT_GT(a.out.size(), 12u);
  const std::string stop = a.out.substr(5, 2);
  const Outcome b = run(tiny({"-p", "s", "-n", "30", "--temp", "0", "--nothink", "--stop", stop}));
  EXPECT_EQ(b.status, 0);
  EXPECT_FALSE(has(b.out, stop));
  EXPECT_EQ(a.out.rfind(b.out.substr(0, b.out.size() - 1), 0), 0u);

  const Outcome c = run(tiny({"-p", "s", "-n", "100000", "--ctx", "200000", "--ignore-eos"}), "", 400);
  EXPECT_EQ(c.status, 130) << c.err;
}

TEST_F(CliBinary, SnapshotsRestoreAndForeignOnesAreRefused) {
  const std::string kv = (clitest::temp_dir() / "b.kv").string();
  const Outcome one = run(tiny({"-p", "one", "-n", "4", "--temp", "0", "--nothink", "--kv-save", kv}));
  ASSERT_EQ(one.status, 0) << one.err;
  const Outcome two = run(tiny({"-p", "two", "-n", "4", "--temp", "0", "--nothink", "--kv-load", kv}));
  ASSERT_EQ(two.status, 0) << two.err;
  const Outcome both = run(tiny({"-n", "4", "--temp", "0", "--nothink"}), "one\ntwo\n");
  EXPECT_EQ(both.out, one.out + two.out);
  const Outcome foreign = run({"-m", clitest::tiny_model(2), "-p", "x", "--kv-load", kv});
  EXPECT_EQ(foreign.status, 1);
  EXPECT_TRUE(has(foreign.err, "another model")) << foreign.err;
}

TEST_F(CliBinary, ErrorsAreOneSentence) {
  Outcome a = run({"-m", (clitest::temp_dir() / "none.gguf").string(), "-p", "x"});
  EXPECT_EQ(a.status, 1);
  EXPECT_TRUE(has(a.err, "not found") && has(a.err, "ds4-quantize")) << a.err;
  const auto junk = clitest::temp_dir() / "junk.gguf";
  std::ofstream(junk) << "junk";
  a = run({"-m", junk.string(), "-p", "x"});
  EXPECT_TRUE(has(a.err, "is not a GGUF file")) << a.err;
  a = run(tiny({"--ctx", "1000000000000", "-p", "x"}));
  EXPECT_TRUE(has(a.err, "more than this machine's")) << a.err;
  a = run(tiny({"--prompt-file", "/nonexistent/prompt.txt"}));
  EXPECT_TRUE(has(a.err, "cannot read the prompt file")) << a.err;
  EXPECT_EQ(a.status, 1);
}

TEST_F(CliBinary, InteractiveOnAPseudoTerminal) {
  std::vector<std::string> args = tiny({"--ctx", "100000", "-n", "100000", "--nothink", "--ignore-eos"});
  args.insert(args.begin(), ds4_bin());
  auto argv = argv_of(args);
  int fd = -1;
  const pid_t pid = ::forkpty(&fd, nullptr, nullptr, nullptr);
  if (pid == 0) {
    ::setenv("HOME", clitest::temp_dir().c_str(), 1);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  std::string seen;
  size_t mark = 0;
  auto wait_for = [&](const std::string& s) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < end) {
      const size_t at = seen.find(s, mark);
      if (at != std::string::npos) {
        mark = at + s.size();
        return true;
      }
      fd_set set;
      FD_ZERO(&set);
      FD_SET(fd, &set);
      timeval tv{0, 50000};
      if (::select(fd + 1, &set, nullptr, nullptr, &tv) > 0) {
        char buf[4096];
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n <= 0) return false;
        seen.append(buf, static_cast<size_t>(n));
      }
    }
    return false;
  };
  EXPECT_TRUE(wait_for("ds4> ")) << seen;
  (void)!::write(fd, "/nothink\r", 9);
  EXPECT_TRUE(wait_for("non-thinking mode")) << seen;
  EXPECT_TRUE(wait_for("ds4> ")) << seen;
  (void)!::write(fd, "go on forever\r", 14);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  (void)!::write(fd, "\x03", 1);
  EXPECT_TRUE(wait_for("[interrupted]")) << seen;
  EXPECT_TRUE(wait_for("ds4> ")) << seen;
  (void)!::write(fd, "/quit\r", 6);
  // Wait for the exit on a deadline: once the child closes the terminal, reads fail at once,
  // and under AddressSanitizer the leak check at exit takes a while.
  int st = -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (::waitpid(pid, &st, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      break;
    }
    if (!wait_for("\x01never")) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(decode(st), 0) << seen;
  ::close(fd);
}

}  // namespace
