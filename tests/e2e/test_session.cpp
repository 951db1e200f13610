// Acceptance: official numerics, and the session state as a value (snapshot, restore,
// truncate, serialize), on the tiny V4 fixture.
#include <gtest/gtest.h>

#include "e2e_util.h"

using ds4::model::LogitsMode;
using ds4::model::Numerics;
using ds4::model::Session;

namespace {

const char* kFixture = "dsv4-tiny-a-bf16";

std::vector<float> eval_all(Session& s, std::span<const int32_t> toks) {
  std::vector<float> out(toks.size() * static_cast<size_t>(s.model().hparams().n_vocab));
  s.eval(toks, LogitsMode::All, out.data());
  return out;
}

TEST(Official, DiffersFromExactByABoundedAmount) {
  const auto& m = e2e::model(kFixture, "bf16");
  const auto cases = e2e::load_cases(kFixture);
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto exact = e2e::run(m, cases[i].tokens, Numerics::Exact);
    const auto off = e2e::run(m, cases[i].tokens, Numerics::Official);
    const double d = e2e::rel_err(off, exact);
    const auto agree = e2e::agreement(off, exact, m.hparams().n_vocab);
    std::printf("case %zu: official vs exact rel diff %.3e, KL %.3e, top-1 %.3f\n", i, d,
                agree.kl, agree.top1);
    // The FP8 KV round trip moves every KV element by up to 6 % (architecture.md 9 #1), about
    // 3 % RMS per row; in these random tiny models the attention output dominates the
    // residual streams, so layer 0's output already moves by 3 % and the logits by 14-30 %
    // (measured: case 0 rel 0.30, KL 0.046, top-1 0.64; case 1 rel 0.14, KL 0.011, top-1
    // 0.76). Bounds with margin around those measurements; docs/model.md discusses them.
    EXPECT_GT(d, 1e-3) << "the official simulations changed nothing";
    EXPECT_LT(d, 0.45);
    EXPECT_LT(agree.kl, 0.1);
    EXPECT_GT(agree.top1, 0.5);
  }
}

TEST(Official, ChunkingDoesNotChangeLogits) {
  const auto& m = e2e::model(kFixture, "bf16");
  const auto cases = e2e::load_cases(kFixture);
  const auto full = e2e::run(m, cases[0].tokens, Numerics::Official);
  for (size_t batch : {size_t{1}, size_t{7}}) {
    const double d = e2e::rel_err(e2e::run(m, cases[0].tokens, Numerics::Official, batch), full);
    std::printf("official batch %zu vs full: %.3e\n", batch, d);
    EXPECT_LT(d, 1e-5);
  }
}

TEST(SessionState, SnapshotRestoreGivesIdenticalLogits) {
  const auto& m = e2e::model(kFixture, "bf16");
  const auto toks = e2e::load_cases(kFixture)[0].tokens;
  const size_t k = 101;
  const std::span<const int32_t> head(toks.data(), k), tail(toks.data() + k, toks.size() - k);
  Session s(m, {.max_ctx = 1024, .numerics = Numerics::Official});
  eval_all(s, head);
  const auto snap = s.snapshot();
  const auto a = eval_all(s, tail);
  s.restore(snap);
  EXPECT_EQ(s.n_past(), static_cast<int64_t>(k));
  const auto b = eval_all(s, tail);
  EXPECT_EQ(a, b);

  // Serialized, loaded into another session, continued: the same bits again.
  s.restore(snap);
  const std::vector<uint8_t> bytes = s.serialize();
  Session s2(m, {.max_ctx = 1024, .numerics = Numerics::Official});
  s2.deserialize(bytes);
  EXPECT_EQ(s2.tokens(), std::vector<int32_t>(head.begin(), head.end()));
  EXPECT_EQ(eval_all(s2, tail), a);

  // A corrupted snapshot is rejected with a clear error; the session is left unchanged.
  std::vector<uint8_t> bad = bytes;
  bad[bad.size() / 3] ^= 0x01;
  try {
    s2.deserialize(bad);
    FAIL() << "corrupted snapshot accepted";
  } catch (const ds4::Error& e) {
    EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
  }
  EXPECT_EQ(s2.n_past(), static_cast<int64_t>(toks.size()));

  // A state of another numerics mode does not load.
  Session s3(m, {.max_ctx = 1024, .numerics = Numerics::Exact});
  EXPECT_THROW(s3.deserialize(bytes), ds4::Error);
}

TEST(SessionState, TruncateThenContinueMatchesFreshRun) {
  const auto& m = e2e::model(kFixture, "bf16");
  const auto toks = e2e::load_cases(kFixture)[0].tokens;
  Session s(m, {.max_ctx = 1024, .numerics = Numerics::Official, .retain = 80});
  eval_all(s, toks);
  EXPECT_LE(s.min_truncate(), static_cast<int64_t>(toks.size()) - 80);
  // Positions inside a compressor window, on a ratio-4 and on a ratio-16 boundary.
  for (int64_t n : {307, 300, 288, 250, 241}) {
    if (n < s.min_truncate()) continue;
    Session t(m, {.max_ctx = 1024, .numerics = Numerics::Official, .retain = 80});
    eval_all(t, toks);
    t.truncate(n);
    EXPECT_EQ(t.n_past(), n);
    const std::span<const int32_t> rest(toks.data() + n, toks.size() - static_cast<size_t>(n));
    const auto got = eval_all(t, rest);
    Session fresh(m, {.max_ctx = 1024, .numerics = Numerics::Official});
    eval_all(fresh, std::span<const int32_t>(toks.data(), static_cast<size_t>(n)));
    const auto want = eval_all(fresh, rest);
    const double d = e2e::rel_err(got, want);
    EXPECT_LT(d, 1e-6) << "truncate to " << n;
  }
  EXPECT_THROW(s.truncate(10), ds4::Error);  // beyond the retained history
  EXPECT_THROW(s.truncate(static_cast<int64_t>(toks.size()) + 1), ds4::Error);
}

TEST(SessionState, RejectsBadInput) {
  const auto& m = e2e::model(kFixture, "bf16");
  Session s(m, {.max_ctx = 8, .numerics = Numerics::Exact});
  std::vector<float> out(static_cast<size_t>(m.hparams().n_vocab));
  const std::vector<int32_t> bad = {1, 2, 512};
  EXPECT_THROW(s.eval(bad, LogitsMode::Last, out.data()), ds4::Error);
  EXPECT_EQ(s.n_past(), 0);
  const std::vector<int32_t> many(9, 3);
  EXPECT_THROW(s.eval(many, LogitsMode::Last, out.data()), ds4::Error);
  const std::vector<int32_t> ok = {5, 6, 7};
  s.eval(ok, LogitsMode::Last, out.data());
  EXPECT_EQ(s.n_past(), 3);
}

}  // namespace
