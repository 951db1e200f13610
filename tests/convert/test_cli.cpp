// The ds4-quantize program: flags, exit status and error reporting. Skipped when the program
// has not been built (test_convert does not depend on it).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "convert_test_util.h"
#include "gguf/gguf.h"

namespace ds4::convert {
namespace {

using namespace testing;

std::string program() {
  const char* d = std::getenv("DS4_BIN_DIR");
  return std::string(d ? d : DS4_BINARY_DIR "/apps") + "/ds4-quantize";
}

// Runs a shell command, returning its exit status and its combined output.
int run_cmd(const std::string& cmd, std::string& output) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) output.append(buf, n);
  const int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(Cli, ConvertsAndReportsErrors) {
  if (!fs::exists(program())) GTEST_SKIP() << program() << " not built";
  TempDir tmp;
  std::string out;
  ASSERT_EQ(run_cmd(program() + " --help", out), 0) << out;
  EXPECT_NE(out.find("--recipe"), std::string::npos);
  EXPECT_NE(out.find("--imatrix"), std::string::npos);

  out.clear();
  const std::string gguf_path = tmp.file("a.gguf");
  ASSERT_EQ(run_cmd(program() + " -i " + fixture("dsv4-tiny-a-fp8") + " -o " + gguf_path +
                        " --recipe bf16 --threads 2",
                    out),
            0)
      << out;
  EXPECT_EQ(gguf::File::open(gguf_path).get_u32("deepseek4.block_count"), 6u);

  out.clear();
  EXPECT_EQ(run_cmd(program() + " -i " + tmp.file("missing") + " -o " + tmp.file("b.gguf"), out), 1);
  EXPECT_NE(out.find("ds4-quantize: "), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(tmp.file("b.gguf")));

  out.clear();
  EXPECT_NE(run_cmd(program() + " -i x -o y --recipe q3", out), 0);
}

}  // namespace
}  // namespace ds4::convert
