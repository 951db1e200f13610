// The ds4 command line (cli::run) in a child process: one-shot output, determinism, the
// thinking markers, logprob dumps, stop strings, Ctrl+C, KV snapshots, the interactive mode
// on a pipe and on a pseudo-terminal, and the error sentences a user meets.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli_process.h"
#include "gguf/gguf.h"

namespace {

using clitest::Outcome;
using clitest::run_cli;

std::vector<std::string> base(std::vector<std::string> extra) {
  std::vector<std::string> a{"-m", clitest::tiny_model(), "--ctx", "512", "-t", "1"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(CliRun, OneShotIsDeterministicForASeedAndLabelsTheDemo) {
  const Outcome a = run_cli(base({"-p", "hello", "-n", "12", "--seed", "5", "--nothink"}));
  ASSERT_EQ(a.status, 0) << a.err;
  EXPECT_FALSE(a.out.empty());
  EXPECT_TRUE(has(a.err, "DEMO MODEL")) << a.err;
  EXPECT_TRUE(has(a.err, "generated 12 tokens")) << a.err;
  const Outcome b = run_cli(base({"-p", "hello", "-n", "12", "--seed", "5", "--nothink"}));
  EXPECT_EQ(a.out, b.out);
  const Outcome c = run_cli(base({"-p", "hello", "-n", "12", "--seed", "6", "--nothink", "--min-p", "0"}));
  EXPECT_NE(a.out, c.out);
}

TEST(CliRun, ThinkingSectionIsMarkedWhenNotATerminal) {
  const Outcome a = run_cli(base({"-p", "think", "-n", "8", "--seed", "1"}));
  ASSERT_EQ(a.status, 0) << a.err;
  EXPECT_EQ(a.out.rfind("[thinking]\n", 0), 0u) << a.out;
  EXPECT_TRUE(has(a.out, "\n[/thinking]\n")) << a.out;
  const Outcome n = run_cli(base({"-p", "think", "-n", "8", "--seed", "1", "--nothink"}));
  EXPECT_FALSE(has(n.out, "[thinking]"));
}

TEST(CliRun, GreedyLogprobDumpPicksTheTopToken) {
  const std::string f = (clitest::temp_dir() / "lp.json").string();
  const Outcome a = run_cli(base({"-p", "x", "-n", "6", "--temp", "0", "--nothink", "--dump-logprobs", f,
                                  "--logprobs-top-k", "4"}));
  ASSERT_EQ(a.status, 0) << a.err;
  const auto j = nlohmann::json::parse(clitest::slurp(f));
  ASSERT_EQ(j.at("tokens").size(), 6u);
  for (const auto& t : j.at("tokens")) {
    ASSERT_EQ(t.at("top").size(), 4u);
    EXPECT_EQ(t.at("id"), t.at("top")[0].at("id"));
    EXPECT_LE(t.at("logprob").get<double>(), 0.0);
  }
}

TEST(CliRun, StopStringCutsTheAnswer) {
  const Outcome a = run_cli(base({"-p", "stop", "-n", "30", "--temp", "0", "--nothink"}));
  ASSERT_EQ(a.status, 0) << a.err;
  ASSERT_GT(a.out.size(), 12u);
  const std::string stop = a.out.substr(6, 3);
  const Outcome b = run_cli(base({"-p", "stop", "-n", "30", "--temp", "0", "--nothink", "--stop", stop}));
  ASSERT_EQ(b.status, 0) << b.err;
  std::string expect = a.out.substr(0, a.out.find(stop));
  if (expect.empty() || expect.back() != '\n') expect += "\n";
  EXPECT_EQ(b.out, expect);
  EXPECT_TRUE(has(b.err, "(stop string)")) << b.err;
}

TEST(CliRun, CtrlCStopsAOneShotAnswer) {
  const Outcome a = run_cli(base({"-p", "long", "-n", "100000", "--ctx", "200000", "--nothink", "--ignore-eos"}), "", 400);
  EXPECT_EQ(a.status, ds4::cli::kExitInterrupted) << a.err;
  EXPECT_TRUE(has(a.err, "interrupted")) << a.err;
}

TEST(CliRun, SnapshotContinuesLikeTheSameProcess) {
  const std::string kv = (clitest::temp_dir() / "chat.kv").string();
  const Outcome one = run_cli(base({"-p", "first", "-n", "5", "--temp", "0", "--nothink", "--kv-save", kv}));
  ASSERT_EQ(one.status, 0) << one.err;
  const Outcome two = run_cli(base({"-p", "second", "-n", "5", "--temp", "0", "--nothink", "--kv-load", kv}));
  ASSERT_EQ(two.status, 0) << two.err;
  EXPECT_FALSE(has(two.err, "(0 reused)")) << two.err;
  // The same two turns in one interactive process (stdin is a pipe: plain line reading).
  const Outcome both = run_cli(base({"-n", "5", "--temp", "0", "--nothink"}), "first\nsecond\n");
  ASSERT_EQ(both.status, 0) << both.err;
  EXPECT_EQ(both.out, one.out + two.out);

  // Another model's snapshot is refused with one sentence.
  const Outcome foreign = run_cli({"-m", clitest::tiny_model(2), "--ctx", "512", "-p", "x", "--kv-load", kv});
  EXPECT_EQ(foreign.status, 1);
  EXPECT_TRUE(has(foreign.err, "was saved with another model")) << foreign.err;
}

TEST(CliRun, InteractiveCommandsOnAPipe) {
  const std::string kv = (clitest::temp_dir() / "cmd.kv").string();
  const std::string file = (clitest::temp_dir() / "msg.txt").string();
  std::ofstream(file) << "from a file";
  const Outcome a = run_cli(base({"-n", "3", "--temp", "0"}),
                            "/help\n/nothink\nhi\n/read " + file + "\n/save " + kv + "\n/ctx 256\n/clear\n/think-max\n"
                            "/load " + kv + "\n/bogus\n/quit\nnot reached\n");
  EXPECT_EQ(a.status, 0) << a.err;
  EXPECT_TRUE(has(a.err, "commands:")) << a.err;
  EXPECT_TRUE(has(a.err, "non-thinking mode")) << a.err;
  EXPECT_TRUE(has(a.err, "saved ")) << a.err;
  EXPECT_TRUE(has(a.err, "context 256 tokens")) << a.err;
  EXPECT_TRUE(has(a.err, "new conversation")) << a.err;
  EXPECT_TRUE(has(a.err, "--think-max needs --ctx")) << a.err;
  EXPECT_TRUE(has(a.err, "loaded ")) << a.err;
  EXPECT_TRUE(has(a.err, "unknown command /bogus")) << a.err;
  // Two answered turns (hi, the file), each with a speed line.
  size_t lines = 0;
  for (size_t p = a.err.find("generated 3 tokens"); p != std::string::npos; p = a.err.find("generated 3 tokens", p + 1))
    ++lines;
  EXPECT_EQ(lines, 2u) << a.err;
}

TEST(CliRun, InteractiveOnATerminalWithCtrlC) {
  clitest::PtySession s(base({"--ctx", "100000", "-n", "100000", "--nothink", "--temp", "0", "--ignore-eos"}));
  ASSERT_TRUE(s.wait_for("ds4> ")) << s.seen();
  s.write("/help\r");
  ASSERT_TRUE(s.wait_for("/think-max")) << s.seen();
  ASSERT_TRUE(s.wait_for("ds4> ")) << s.seen();
  s.write("tell me everything\r");
  // Wait for some answer text, then press Ctrl+C: the answer stops, the prompt comes back.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  s.write("\x03");
  ASSERT_TRUE(s.wait_for("[interrupted]")) << s.seen();
  ASSERT_TRUE(s.wait_for("ds4> ")) << s.seen();
  s.write("/quit\r");
  EXPECT_EQ(s.wait_exit(), 0) << s.seen();
}

// ---- the errors a user meets: one sentence, non-zero exit ----

TEST(CliErrors, MissingModelSaysHowToGetOne) {
  const Outcome a = run_cli({"-m", (clitest::temp_dir() / "nope.gguf").string(), "-p", "x"});
  EXPECT_EQ(a.status, 1);
  EXPECT_TRUE(has(a.err, "not found")) << a.err;
  EXPECT_TRUE(has(a.err, "ds4-quantize")) << a.err;
  EXPECT_TRUE(has(a.err, "demo")) << a.err;
}

TEST(CliErrors, NotAGgufAndNotADeepSeekModel) {
  const auto text = clitest::temp_dir() / "text.gguf";
  std::ofstream(text) << "just some text, no model here";
  Outcome a = run_cli({"-m", text.string(), "-p", "x"});
  EXPECT_EQ(a.status, 1);
  EXPECT_TRUE(has(a.err, "is not a GGUF file")) << a.err;

  const auto other = clitest::temp_dir() / "llama.gguf";
  {
    ds4::gguf::Writer w(other.string());
    w.add_kv("general.architecture", ds4::gguf::Value::string("llama"));
    w.begin_data();
    w.finish();
  }
  a = run_cli({"-m", other.string(), "-p", "x"});
  EXPECT_EQ(a.status, 1);
  EXPECT_TRUE(has(a.err, "is not a DeepSeek V4 GGUF model")) << a.err;
  EXPECT_EQ(std::count(a.err.begin(), a.err.end(), '\n'), 1) << a.err;
}

TEST(CliErrors, ContextTooLargeForMemory) {
  const Outcome a = run_cli(base({"--ctx", "1000000000000", "-p", "x"}));
  EXPECT_EQ(a.status, 1);
  EXPECT_TRUE(has(a.err, "more than this machine's")) << a.err;
}

TEST(CliErrors, UnreadablePromptFile) {
  const Outcome a = run_cli(base({"--prompt-file", (clitest::temp_dir() / "missing.txt").string()}));
  EXPECT_EQ(a.status, 1);
  EXPECT_TRUE(has(a.err, "cannot read the prompt file")) << a.err;
}

TEST(CliErrors, CudaBackend) {
  const Outcome a = run_cli(base({"--backend", "cuda", "-p", "x"}));
  EXPECT_EQ(a.status, 1);
#ifndef DS4_HAVE_CUDA
  EXPECT_TRUE(has(a.err, "this build has no CUDA backend")) << a.err;
#endif
}

TEST(CliRun, DumpTokensRecognisesSpecials) {
  const Outcome a = run_cli(base({"--dump-tokens", "-p", "<｜User｜>hi"}));
  ASSERT_EQ(a.status, 0) << a.err;
  const auto& tok = clitest::tiny().tok;
  const int32_t user = *tok.find("<｜User｜>");
  const auto ids = nlohmann::json::parse(a.out).get<std::vector<int32_t>>();
  ASSERT_FALSE(ids.empty()) << a.out;
  EXPECT_EQ(ids.front(), user) << a.out;
  EXPECT_EQ(ids, tok.encode("<｜User｜>hi", true));
}

TEST(CliRun, HelpDocumentsTheFlags) {
  const Outcome a = run_cli({"--help"});
  EXPECT_EQ(a.status, 0);
  for (const char* f : {"--model", "--prompt-file", "--system", "--max-tokens", "--ctx", "--temp", "--top-p",
                        "--top-k", "--min-p", "--seed", "--stop", "--ignore-eos", "--write-demo", "--nothink", "--think-max", "--threads", "--backend",
                        "--dump-logprobs", "--logprobs-top-k", "--dump-tokens", "--kv-save", "--kv-load"})
    EXPECT_TRUE(has(a.out, f)) << f;
}

}  // namespace
