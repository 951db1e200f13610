// Backend selection (src/runtime): parsing, the CPU engine behind the session interface, and
// the answer to --backend cuda in every build (no CUDA backend / no GPU / a working session).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "e2e/e2e_util.h"
#include "runtime/backend.h"
#ifdef DS4_HAVE_CUDA
#include "backend/cuda/device.h"
#endif

namespace {

using ds4::runtime::BackendKind;

TEST(Runtime, ParsesBackendNames) {
  EXPECT_EQ(ds4::runtime::parse_backend("cpu"), BackendKind::Cpu);
  EXPECT_EQ(ds4::runtime::parse_backend("cuda"), BackendKind::Cuda);
  try {
    ds4::runtime::parse_backend("tpu");
    FAIL() << "tpu accepted";
  } catch (const ds4::Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected cpu or cuda"), std::string::npos) << e.what();
  }
  EXPECT_STREQ(ds4::runtime::backend_name(BackendKind::Cuda), "cuda");
}

// The CPU engine's sessions are model::Session: the same logits through the interface.
TEST(Runtime, CpuEngineSessionsMatchSession) {
  const auto& m = e2e::model("dsv4-tiny-a-bf16", "bf16");
  const auto tokens = e2e::load_cases("dsv4-tiny-a-bf16").at(0).tokens;
  auto eng = ds4::runtime::open_engine(m, BackendKind::Cpu);
  EXPECT_EQ(eng->kind(), BackendKind::Cpu);
  auto s = eng->new_session({.max_ctx = 512, .numerics = ds4::model::Numerics::Exact});
  EXPECT_STREQ(s->backend_name(), "cpu");
  const int64_t V = m.hparams().n_vocab;
  std::vector<float> a(V), b(V);
  s->eval(tokens, ds4::model::LogitsMode::Last, a.data());
  ds4::model::Session direct(m, {.max_ctx = 512, .numerics = ds4::model::Numerics::Exact});
  direct.eval(tokens, ds4::model::LogitsMode::Last, b.data());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
  EXPECT_GT(ds4::runtime::session_bytes(*s), tokens.size() * 4);
  // Snapshots through the interface restore into a plain Session.
  ds4::model::Session other(m, {.max_ctx = 512, .numerics = ds4::model::Numerics::Exact});
  other.deserialize(s->serialize());
  EXPECT_EQ(other.n_past(), static_cast<int64_t>(tokens.size()));
}

// The CUDA engine's prefill chunk follows the GPU memory left after the weights: one
// 8192-token chunk only where its ~11.4 GiB of working arrays fit with room to spare.
TEST(Runtime, CudaPrefillChunkFollowsFreeMemory) {
  constexpr size_t GiB = size_t{1} << 30;
  EXPECT_EQ(ds4::runtime::cuda_prefill_chunk(0), 2048);
  EXPECT_EQ(ds4::runtime::cuda_prefill_chunk(12 * GiB - 1), 2048);
  EXPECT_EQ(ds4::runtime::cuda_prefill_chunk(12 * GiB), 4096);
  EXPECT_EQ(ds4::runtime::cuda_prefill_chunk(32 * GiB - 1), 4096);
  EXPECT_EQ(ds4::runtime::cuda_prefill_chunk(32 * GiB), 8192);
  EXPECT_EQ(ds4::runtime::cuda_prefill_chunk(58 * GiB), 8192);  // an H200 holding the q2 Flash
}

// --backend cuda: a clear sentence in a CPU-only build and on a machine without a GPU; a
// working session where there is one.
TEST(Runtime, CudaBackendAnswersInEveryBuild) {
  const auto& m = e2e::model("dsv4-tiny-a-bf16", "bf16");
  bool gpu = false;
#ifdef DS4_HAVE_CUDA
  gpu = !ds4::cuda::list_devices().empty();
#endif
#ifdef DS4_HAVE_CUDA
  EXPECT_TRUE(ds4::runtime::has_cuda_backend());
#else
  EXPECT_FALSE(ds4::runtime::has_cuda_backend());
#endif
  if (gpu) {
    auto eng = ds4::runtime::open_engine(m, BackendKind::Cuda);
    EXPECT_STREQ(eng->new_session({.max_ctx = 64})->backend_name(), "cuda");
    return;
  }
  try {
    ds4::runtime::open_engine(m, BackendKind::Cuda);
    FAIL() << "--backend cuda accepted without a usable GPU";
  } catch (const ds4::Error& e) {
    const std::string want = ds4::runtime::has_cuda_backend() ? "no CUDA GPU" : "this build has no CUDA backend";
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
}

}  // namespace
