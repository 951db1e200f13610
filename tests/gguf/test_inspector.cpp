// Runs the ds4-gguf program on files written by the tests (skipped when it is not built).
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "gguf/sample_file.h"

namespace ds4::gguf {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ggtest::TempDir;

struct Outcome {
  int status = -1;
  std::string output;  // stdout and stderr together
};

std::string program() {
  const char* dir = std::getenv("DS4_BIN_DIR");
  const std::string bin = std::string(dir ? dir : DS4_BINARY_DIR "/apps") + "/ds4-gguf";
  return std::filesystem::exists(bin) ? bin : std::string();
}

Outcome run(const std::string& args) {
  Outcome r;
  FILE* p = popen((program() + " " + args + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

class GgufInspector : public ::testing::Test {
 protected:
  void SetUp() override {
    if (program().empty()) GTEST_SKIP() << "ds4-gguf is not built";
  }
  TempDir dir_;
};

TEST_F(GgufInspector, PrintsHeaderMetadataTensorsAndTotals) {
  const std::string path = dir_.file("s.gguf");
  ggtest::write_sample(ggtest::make_sample(), path);
  const Outcome r = run("'" + path + "' --max-array 2");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("GGUF version 3, alignment 32"));
  EXPECT_THAT(r.output, HasSubstr("metadata: 32 keys"));
  EXPECT_THAT(r.output, HasSubstr("general.architecture  STRING = \"deepseek4\""));
  EXPECT_THAT(r.output, HasSubstr("ARRAY[UINT32] (4 items) = [0, 4, ... 2 more]"));
  EXPECT_THAT(r.output, HasSubstr("ARRAY[ARRAY] (3 items) = [[1, 2], [\"x\", \"yz\"], ... 1 more]"));
  EXPECT_THAT(r.output, HasSubstr("tensors: 9"));
  EXPECT_THAT(r.output, ::testing::ContainsRegex("2  blk\\.0\\.attn_q_a\\.weight +Q8_0 +\\[64, 2\\] +[0-9]+ +136"));
  EXPECT_THAT(r.output, ::testing::ContainsRegex("Q8_0 +1 tensors +136 bytes"));
  EXPECT_THAT(r.output, ::testing::ContainsRegex("all +9 tensors +611 bytes"));
}

TEST_F(GgufInspector, NoTensorsOmitsTheTable) {
  const std::string path = dir_.file("s.gguf");
  ggtest::write_sample(ggtest::make_sample(), path);
  const Outcome r = run("'" + path + "' --no-tensors");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("blk.0.attn_q_a.weight")));
  EXPECT_THAT(r.output, HasSubstr("totals by type"));
}

TEST_F(GgufInspector, LongStringsAreCut) {
  const std::string path = dir_.file("long.gguf");
  Writer w(path);
  w.add_kv("long", Value::string(std::string(500, 'x')));
  w.finish();
  const Outcome r = run("'" + path + "'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("xxx\"... (500 bytes)"));
  EXPECT_THAT(r.output, Not(HasSubstr(std::string(100, 'x'))));
}

TEST_F(GgufInspector, BadFileExitsOneWithTheError) {
  const std::string path = dir_.file("bad.gguf");
  ggtest::write_bytes(path, {'G', 'G', 'U', 'F', 1, 0, 0, 0});
  const Outcome r = run("'" + path + "'");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.output, "ds4-gguf: " + path +
                          ": GGUF version 1 is not supported (it uses 32-bit counts); only "
                          "versions 2 and 3 are\n");
}

}  // namespace
}  // namespace ds4::gguf
