// The ds4-quality program end to end on a fixture (skipped when the program is not built):
// ppl --json, dump + compare --json/--csv/--svg/--md, and its refusals.
#include <gtest/gtest.h>
#include <gmock/gmock.h>

#include <sys/wait.h>

#include <array>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "quality/windows.h"
#include "runtime/backend.h"
#include "quality_util.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;

namespace {

struct Proc {
  int rc = -1;
  std::string out;
};

Proc run(const std::string& args) {
  const char* bin_dir = std::getenv("DS4_BIN_DIR");
  const std::string bin = std::string(bin_dir ? bin_dir : DS4_BINARY_DIR "/apps") + "/ds4-quality";
  Proc r;
  FILE* p = popen((bin + " " + args + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

bool have_program() {
  const char* bin_dir = std::getenv("DS4_BIN_DIR");
  return fs::exists(std::string(bin_dir ? bin_dir : DS4_BINARY_DIR "/apps") + "/ds4-quality");
}

std::string write_tokens(const std::string& name, const std::vector<int32_t>& t) {
  const fs::path p = fs::temp_directory_path() / ("ds4q-" + std::to_string(getpid()) + "-" + name);
  std::ofstream f(p);
  for (int32_t x : t) f << x << ' ';
  return p.string();
}

TEST(QualityApp, PplDumpCompare) {
  if (!have_program()) GTEST_SKIP() << "ds4-quality not built";
  const std::string bf16 = qt::converted("dsv4-tiny-k-bf16", "bf16");
  const std::string q8 = qt::converted("dsv4-tiny-k-bf16", "q8");
  const auto tokens = qt::token_stream(40, 512, 9);
  const std::string tf = write_tokens("a.txt", tokens);

  const Proc p = run("ppl -m " + bf16 + " --tokens @" + tf + " --ctx 32 --stride 16 --json --threads 2");
  ASSERT_EQ(p.rc, 0) << p.out;
  const auto j = nlohmann::json::parse(p.out);
  EXPECT_EQ(j["n_scored"], 39);
  auto src = ds4::quality::model_logits(qt::model("dsv4-tiny-k-bf16", "bf16"), 32, false);
  const auto want = ds4::quality::perplexity(*src, tokens, {.ctx = 32, .stride = 16});
  EXPECT_NEAR(j["ppl"].get<double>(), want.ppl(), 1e-9 * want.ppl());

  const Proc nt = run("ppl -m " + bf16 + " --text " + tf + " --threads 2");
  EXPECT_EQ(nt.rc, 1);
  EXPECT_THAT(nt.out, HasSubstr("has no tokenizer"));

  const std::string ref = tf + ".ref";
  const Proc d = run("dump -m " + bf16 + " --tokens @" + tf + " --ctx 32 --stride 16 --top-k 16 -o " + ref + " --threads 2");
  ASSERT_EQ(d.rc, 0) << d.out;
  const std::string csv = tf + ".csv", svg = tf + ".svg", md = tf + ".md";
  const Proc c = run("compare -m " + q8 + " --ref " + ref + " --json --csv " + csv + " --svg " + svg +
                    " --md " + md + " --tokens @" + tf + " --threads 2");
  ASSERT_EQ(c.rc, 0) << c.out;
  const auto cj = nlohmann::json::parse(c.out);
  EXPECT_GT(cj["mean_kl"].get<double>(), 0);
  EXPECT_EQ(cj["n_tokens"], 39);
  EXPECT_TRUE(cj.contains("p99_kl") && cj.contains("top1_agreement") && cj.contains("ppl_ratio"));
  EXPECT_TRUE(fs::file_size(csv) > 100 && fs::file_size(svg) > 100 && fs::file_size(md) > 50);

  auto other = tokens;
  other[3] = (other[3] + 1) % 512;
  const std::string tf2 = write_tokens("b.txt", other);
  const Proc bad = run("compare -m " + q8 + " --ref " + ref + " --tokens @" + tf2 + " --threads 2");
  EXPECT_EQ(bad.rc, 1);
  EXPECT_THAT(bad.out, HasSubstr("another text"));
  for (const auto& f : {tf, tf2, ref, csv, svg, md}) fs::remove(f);
}

// A session made by a runtime engine is the same logits source as model_logits: the CPU
// engine's session gives the same perplexity to the last bit.
TEST(QualityWindows, EngineSessionIsTheSameSourceAsModelLogits) {
  const auto& m = qt::model("dsv4-tiny-k-bf16", "bf16");
  const auto tokens = qt::token_stream(40, 512, 9);
  auto eng = ds4::runtime::open_engine(m, ds4::runtime::BackendKind::Cpu);
  ds4::model::SessionOptions so;
  so.max_ctx = 32;
  so.numerics = ds4::model::Numerics::Exact;
  auto via_engine = ds4::quality::session_logits(eng->new_session(so));
  auto direct = ds4::quality::model_logits(m, 32, true);
  const ds4::quality::WindowOptions w{.ctx = 32, .stride = 16};
  EXPECT_EQ(ds4::quality::perplexity(*via_engine, tokens, w).nll_sum,
            ds4::quality::perplexity(*direct, tokens, w).nll_sum);
  EXPECT_THROW(ds4::quality::session_logits(nullptr), ds4::Error);
}

// --backend cuda: where a GPU answers, the perplexity of the CPU (exact numerics on the bf16
// file: the two backends' logits agree to ~1e-6, docs/cuda.md); without one (or in a CPU-only
// build) the program refuses in one sentence. An unknown backend is refused too.
TEST(QualityApp, BackendCudaMatchesCpuOrRefuses) {
  if (!have_program()) GTEST_SKIP() << "ds4-quality not built";
  const std::string bf16 = qt::converted("dsv4-tiny-k-bf16", "bf16");
  const auto tokens = qt::token_stream(40, 512, 9);
  const std::string tf = write_tokens("cuda.txt", tokens);
  const std::string args = "ppl -m " + bf16 + " --tokens @" + tf + " --ctx 32 --stride 16 --json --exact --threads 2";
  const Proc cpu = run(args);
  ASSERT_EQ(cpu.rc, 0) << cpu.out;
  const double want = nlohmann::json::parse(cpu.out)["ppl"].get<double>();
  const Proc gpu = run(args + " --backend cuda");
  if (gpu.rc == 0) {
    EXPECT_THAT(gpu.out, HasSubstr("cuda backend:"));
    const auto j = nlohmann::json::parse(gpu.out.substr(gpu.out.find('{')));
    EXPECT_EQ(j["n_scored"], 39);
    EXPECT_NEAR(j["ppl"].get<double>(), want, 1e-5 * want);
  } else {
    EXPECT_EQ(gpu.rc, 1) << gpu.out;
    EXPECT_TRUE(gpu.out.find("no CUDA GPU") != std::string::npos ||
                gpu.out.find("this build has no CUDA backend") != std::string::npos)
        << gpu.out;
    GTEST_LOG_(INFO) << "no usable GPU: checked the refusal only (" << gpu.out << ")";
  }
  const Proc bad = run(args + " --backend tpu");
  EXPECT_EQ(bad.rc, 1);
  EXPECT_THAT(bad.out, HasSubstr("expected cpu or cuda"));
  fs::remove(tf);
}

}  // namespace
