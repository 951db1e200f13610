// Unit tests of the model's numeric building blocks against hand-computed values
// (architecture.md Appendix B and C).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.h"
#include "model/numerics_sim.h"
#include "model/hyper_connection.h"
#include "model/indexer.h"
#include "model/rope.h"
#include "model/session_state.h"

using namespace ds4::model;

TEST(NumericsSim, Fp8RoundTripAppendixC) {
  // Block of 4 with scale 2^-10: E4M3 step 8 in [64,128), 16 in [128,256), 32 in [256,448].
  std::vector<float> v = {0.1f, -0.2f, 0.3f, 0.4f};
  fp8_roundtrip(v.data(), 4, 4);
  EXPECT_FLOAT_EQ(v[0], 104.0f / 1024);
  EXPECT_FLOAT_EQ(v[1], -208.0f / 1024);
  EXPECT_FLOAT_EQ(v[2], 320.0f / 1024);
  EXPECT_FLOAT_EQ(v[3], 416.0f / 1024);
}

TEST(NumericsSim, E4m3GridAndTies) {
  EXPECT_EQ(e4m3_round(448.0f), 448.0f);
  EXPECT_EQ(e4m3_round(1.0625f), 1.0f);     // tie between 1 and 1.125 -> even code 1.0
  EXPECT_EQ(e4m3_round(1.1875f), 1.25f);    // tie between 1.125 and 1.25 -> even 1.25
  EXPECT_EQ(e4m3_round(-3.0f / 512), -3.0f / 512);    // subnormal 3 * 2^-9, exact
  EXPECT_EQ(e4m3_round(3.0f / 1024), 4.0f / 1024);    // 1.5 subnormal steps -> even 2
  EXPECT_EQ(e4m3_round(std::ldexp(1.0f, -10)), 0.0f);  // half of 2^-9 ties to 0
}

TEST(NumericsSim, Fp4AppendixC) {
  EXPECT_EQ(e2m1_round(5.0f), 4.0f);
  EXPECT_EQ(e2m1_round(0.25f), 0.0f);
  EXPECT_EQ(e2m1_round(0.75f), 1.0f);
  EXPECT_EQ(e2m1_round(1.25f), 1.0f);
  EXPECT_EQ(e2m1_round(-2.5f), -2.0f);
  EXPECT_EQ(e2m1_round(3.5f), 4.0f);
  // Block scale: amax 3 -> 2^ceil(log2(0.5)) = 0.5; 1.3 / 0.5 = 2.6 -> 3 -> 1.5.
  std::vector<float> v(32, 0.0f);
  v[0] = 3.0f;
  v[1] = 1.3f;
  fp4_roundtrip(v.data(), 32, 32);
  EXPECT_EQ(v[0], 3.0f);
  EXPECT_EQ(v[1], 1.5f);
}

TEST(NumericsSim, HadamardIsScaledInvolution) {
  std::vector<float> e = {1, 0, 0, 0};
  hadamard(e.data(), 4);
  for (float x : e) EXPECT_FLOAT_EQ(x, 0.5f);
  std::vector<float> v(128);
  for (int i = 0; i < 128; ++i) v[static_cast<size_t>(i)] = std::sin(0.37f * static_cast<float>(i));
  std::vector<float> w = v;
  hadamard(w.data(), 128);
  hadamard(w.data(), 128);
  for (int i = 0; i < 128; ++i) EXPECT_NEAR(w[static_cast<size_t>(i)], v[static_cast<size_t>(i)], 1e-5);
  EXPECT_THROW(hadamard(w.data(), 96), ds4::Error);
}

TEST(Rope, YarnTableMatchesAppendixB) {
  const Rope y = Rope::yarn(64, 160000.0f, 16.0f, 65536.0f, 32.0f, 1.0f);
  const std::vector<std::pair<int, double>> expect = {
      {0, 1.0}, {1, 6.876560e-01}, {15, 3.635539e-03}, {16, 2.265625e-03}, {20, 2.969778e-04},
      {24, 1.953125e-05}, {25, 5.372313e-06}, {31, 5.680529e-07}};
  for (auto [i, w] : expect) EXPECT_NEAR(y.omega()[static_cast<size_t>(i)] / w, 1.0, 2e-6) << "pair " << i;
  const Rope p = Rope::plain(64, 10000.0f);
  EXPECT_NEAR(p.omega()[1] / 7.498942e-01, 1.0, 2e-6);
  EXPECT_NEAR(p.omega()[31] / 1.333521e-04, 1.0, 2e-6);
}

TEST(Rope, InterleavedTailRotationAndInverse) {
  const Rope r = Rope::plain(4, 10000.0f);
  std::vector<float> x = {7, 8, 1, 0, 0, 1};  // 2 nope dims, then pairs (1,0) and (0,1)
  r.apply(x.data(), 6, 3);
  EXPECT_EQ(x[0], 7.0f);
  EXPECT_EQ(x[1], 8.0f);
  EXPECT_NEAR(x[2], std::cos(3.0f), 1e-6);  // pair 0: omega 1, theta 3
  EXPECT_NEAR(x[3], std::sin(3.0f), 1e-6);
  EXPECT_NEAR(x[4], -std::sin(0.03f), 1e-6);  // pair 1: omega 0.01
  EXPECT_NEAR(x[5], std::cos(0.03f), 1e-6);
  r.apply(x.data(), 6, 3, /*inverse=*/true);
  EXPECT_NEAR(x[2], 1.0f, 1e-6);
  EXPECT_NEAR(x[3], 0.0f, 1e-6);
  EXPECT_NEAR(x[4], 0.0f, 1e-6);
  EXPECT_NEAR(x[5], 1.0f, 1e-6);
}

TEST(HyperConnection, SinkhornIsNearlyDoublyStochasticAndNotSymmetric) {
  std::vector<float> C = {0.3f, -1.2f, 2.0f, 0.1f, 1.5f, 0.2f, -0.7f, 0.9f,
                          -0.4f, 0.8f, 0.0f, 1.1f, 2.2f, -1.0f, 0.5f, 0.3f};
  sinkhorn(C.data(), 4, 20, 1e-6f);
  for (int j = 0; j < 4; ++j) {
    float row = 0, col = 0;
    for (int k = 0; k < 4; ++k) {
      row += C[static_cast<size_t>(j * 4 + k)];
      col += C[static_cast<size_t>(k * 4 + j)];
    }
    EXPECT_NEAR(row, 1.0f, 1e-3);
    EXPECT_NEAR(col, 1.0f, 1e-5);  // the last normalization is over columns
  }
  EXPECT_GT(std::fabs(C[1] - C[4]), 1e-3);
}

TEST(Indexer, TopkTiesKeepLowerIndex) {
  const std::vector<float> s = {0.0f, 2.0f, 0.0f, 2.0f, 1.0f, 0.0f};
  int32_t out[4];
  ASSERT_EQ(topk_lower_index(s.data(), 6, 4, out), 4);
  EXPECT_EQ(out[0], 1);
  EXPECT_EQ(out[1], 3);
  EXPECT_EQ(out[2], 4);
  EXPECT_EQ(out[3], 0);
  EXPECT_EQ(topk_lower_index(s.data(), 2, 4, out), 2);
}

TEST(SessionState, SerializeRoundTripAndCorruption) {
  SessionState s;
  s.fingerprint = "test model";
  s.numerics = Numerics::Exact;
  s.n_past = 3;
  s.retain = 5;
  s.tokens = {4, 5, 6};
  s.layers.resize(2);
  s.layers[0].raw = {1, 2, 3, 4, 5, 6};
  s.layers[1].hist_begin = 1;
  s.layers[1].comp = {0.5f, -0.25f};
  s.layers[1].icomp = {9};
  const std::vector<uint8_t> bytes = s.serialize();
  const SessionState r = SessionState::deserialize(bytes);
  EXPECT_EQ(r.fingerprint, s.fingerprint);
  EXPECT_EQ(r.numerics, s.numerics);
  EXPECT_EQ(r.n_past, 3);
  EXPECT_EQ(r.tokens, s.tokens);
  ASSERT_EQ(r.layers.size(), 2u);
  EXPECT_EQ(r.layers[0].raw, s.layers[0].raw);
  EXPECT_EQ(r.layers[1].hist_begin, 1);
  EXPECT_EQ(r.layers[1].comp, s.layers[1].comp);
  EXPECT_EQ(r.layers[1].icomp, s.layers[1].icomp);

  std::vector<uint8_t> bad = bytes;
  bad[bad.size() / 2] ^= 0x10;
  try {
    SessionState::deserialize(bad);
    FAIL() << "corrupted snapshot accepted";
  } catch (const ds4::Error& e) {
    EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
  }
  bad = bytes;
  bad[0] = 'X';
  EXPECT_THROW(SessionState::deserialize(bad), ds4::Error);
  bad = bytes;
  bad.resize(bytes.size() - 40);
  EXPECT_THROW(SessionState::deserialize(bad), ds4::Error);
}
