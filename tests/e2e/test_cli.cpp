// Acceptance: the ds4 program's evaluation contract (--dump-logits) agrees with the library,
// and every error ends with a one-line message and a non-zero exit status.
#include <gtest/gtest.h>

#include <cstdlib>
#include <sstream>

#include "e2e_util.h"
#include "gguf/gguf.h"

using ds4::model::Numerics;

namespace {

namespace fs = std::filesystem;

std::string ds4_bin() {
  const char* dir = std::getenv("DS4_BIN_DIR");
  return (fs::path(dir ? dir : DS4_BINARY_DIR "/apps") / "ds4").string();
}

struct Result {
  int status = 0;
  std::string err;
};

Result run_ds4(const std::string& args) {
  const fs::path tmp = fs::temp_directory_path() / ("ds4-cli-" + std::to_string(getpid()) + ".err");
  const std::string cmd = ds4_bin() + " " + args + " 2> " + tmp.string();
  const int rc = std::system(cmd.c_str());
  Result r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  std::ifstream in(tmp);
  std::stringstream ss;
  ss << in.rdbuf();
  r.err = ss.str();
  fs::remove(tmp);
  return r;
}

std::string join(const std::vector<int32_t>& v, char sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? std::string(1, sep) : "") + std::to_string(v[i]);
  return s;
}

size_t lines(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

TEST(Cli, DumpLogitsMatchesLibrary) {
  const std::string gguf = e2e::converted("dsv4-tiny-a-bf16", "bf16");
  const auto& m = e2e::model("dsv4-tiny-a-bf16", "bf16");
  const auto toks = e2e::load_cases("dsv4-tiny-a-bf16")[1].tokens;
  const auto lib = e2e::run(m, toks, Numerics::Exact, 5);
  const fs::path out = fs::temp_directory_path() / ("ds4-cli-" + std::to_string(getpid()) + ".f32");

  Result r = run_ds4("-m " + gguf + " --tokens " + join(toks, ',') + " --dump-logits " +
                     out.string() + " --numerics exact --batch 5 --threads 2");
  ASSERT_EQ(r.status, 0) << r.err;
  auto got = e2e::read_f32(out.string(), lib.size());
  EXPECT_EQ(fs::file_size(out), lib.size() * 4);
  EXPECT_LT(e2e::rel_err(got, lib), 1e-6);

  // @FILE with whitespace-separated ids, token-by-token decode, default (official) numerics.
  const fs::path ids = fs::temp_directory_path() / ("ds4-cli-" + std::to_string(getpid()) + ".txt");
  std::ofstream(ids) << join(toks, '\n') << "\n";
  r = run_ds4("-m " + gguf + " --tokens @" + ids.string() + " --dump-logits " + out.string() +
              " --batch 1");
  ASSERT_EQ(r.status, 0) << r.err;
  got = e2e::read_f32(out.string(), lib.size());
  EXPECT_LT(e2e::rel_err(got, e2e::run(m, toks, Numerics::Official)), 1e-6);
  fs::remove(ids);
  fs::remove(out);
}

TEST(Cli, ErrorsAreOneLineAndNonZero) {
  const std::string gguf = e2e::converted("dsv4-tiny-a-bf16", "bf16");
  const fs::path out = fs::temp_directory_path() / ("ds4-cli-err-" + std::to_string(getpid()) + ".f32");
  const std::string dump = " --dump-logits " + out.string();

  Result r = run_ds4("-m /nonexistent/model.gguf --tokens 1,2" + dump);
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(lines(r.err), 1u) << r.err;

  r = run_ds4("-m " + gguf + " --tokens 1,2,512" + dump);  // vocab is 512
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find("512"), std::string::npos) << r.err;

  r = run_ds4("-m " + gguf + " --tokens 1,x" + dump);
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(lines(r.err), 1u) << r.err;

  r = run_ds4("-m " + gguf + " --tokens 1 --numerics fast" + dump);
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(lines(r.err), 1u) << r.err;

  // A valid GGUF of another architecture.
  const fs::path other = fs::temp_directory_path() / ("ds4-cli-llama-" + std::to_string(getpid()) + ".gguf");
  {
    ds4::gguf::Writer w(other.string());
    w.add_kv("general.architecture", ds4::gguf::Value::string("llama"));
    w.add_tensor("token_embd.weight", ds4::GgmlType::F32, {4, 2});
    w.begin_data();
    const std::vector<float> zeros(8, 0.0f);
    w.write_tensor_data(zeros.data(), zeros.size() * 4);
    w.finish();
  }
  r = run_ds4("-m " + other.string() + " --tokens 1" + dump);
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find("not a DeepSeek V4 GGUF"), std::string::npos) << r.err;
  fs::remove(other);
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
