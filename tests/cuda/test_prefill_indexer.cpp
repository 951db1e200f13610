// The batched prefill's compressor pooling and indexer scores (comp_emit with a token
// dimension, prefill_indexer.h) against the one-token kernels of the decode path, on random
// inputs: the results must be the same bits (the chunk-split tests of test_prefill.cpp and the
// indexer's fragile top-k choices rely on it). Every test skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/buffer.h"
#include "backend/cuda/device.h"
#include "backend/cuda/forward_kernels.h"
#include "backend/cuda/prefill_indexer.h"
#include "cuda/cuda_test_util.h"
#include "model/rope.h"

namespace {

using ds4::cuda::DeviceBuffer;
using ds4::cuda::test_util::download;
using ds4::cuda::test_util::gaussian;
using ds4::cuda::test_util::upload;
namespace fwd = ds4::cuda::fwd;
namespace pre = ds4::cuda::pre;

#define REQUIRE_GPU()                                                                              \
  do {                                                                                             \
    if (ds4::cuda::list_devices().empty()) GTEST_SKIP() << "no CUDA GPU on this machine: skipped"; \
  } while (0)

// StepCtl of a chunk: token t at pos[t].
DeviceBuffer ctls_at(const std::vector<int64_t>& pos) {
  std::vector<fwd::StepCtl> c(pos.size());
  for (size_t t = 0; t < pos.size(); ++t) {
    c[t].pos = pos[t];
    c[t].index = static_cast<int32_t>(t);
  }
  return upload(c);
}

template <class T>
void expect_same_bits(const std::vector<T>& got, const std::vector<T>& ref, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  if (std::memcmp(got.data(), ref.data(), got.size() * sizeof(T)) == 0) return;
  size_t i = 0;
  while (std::memcmp(&got[i], &ref[i], sizeof(T)) == 0) ++i;
  ADD_FAILURE() << what << ": first difference at element " << i << " of " << got.size() << " (" << got[i] << " vs "
                << ref[i] << ")";
}

std::vector<float> rope_omega(int64_t n_rope) {
  return ds4::model::Rope::yarn(n_rope, 160000.0f, 16.0f, 65536.0f, 32.0f, 1.0f).omega();
}

// ------------------------------------------------------------------ indexer scores

struct IdxShape {
  int64_t NI, DI, K, ratio;
};

// Which chunk kernel is checked, and the compressed rows it gets.
enum class Scores { Tiled, TensorCore };
enum class Keys {
  Gaussian,  // raw floats: off the FP4 grid, every row inexact for the tensor-core path
  Fp4,       // through the Hadamard + FP4 simulation, as comp_emit writes them in official numerics
  Fp4Mixed,  // Fp4, then some rows and query heads scaled by powers of two: units 2^20 apart
             // inside a row (inexact) and whole rows 2^3 or 2^-5 off the others (still exact)
};

// Scales dims [i0, i1) of `rows` rows of DI (every `every`-th row from `first`) by 2^e.
void scale_rows(std::vector<float>& v, int64_t DI, int64_t first, int64_t every, int64_t i0, int64_t i1, int e) {
  for (int64_t r = first; r * DI < static_cast<int64_t>(v.size()); r += every)
    for (int64_t i = i0; i < i1; ++i) v[static_cast<size_t>(r * DI + i)] = std::ldexp(v[static_cast<size_t>(r * DI + i)], e);
}

// How many rows of x [rows][DI] pre::idx_codes marks inexact.
int64_t count_inexact(const DeviceBuffer& x, int64_t rows, int64_t DI) {
  DeviceBuffer mem(static_cast<size_t>(pre::idx_codes_bytes(rows, DI)));
  const pre::IdxCodes c = pre::idx_codes_view(mem.as<uint8_t>(), rows, DI);
  pre::idx_codes(x.as<float>(), rows, c, nullptr);
  const auto flags = download<uint8_t>(mem, static_cast<size_t>(rows), static_cast<size_t>(c.inexact - mem.as<uint8_t>()));
  return std::count(flags.begin(), flags.end(), uint8_t{1});
}

// A chunk kernel (idx_scores_tiled or idx_scores_tc) + idx_topk for the queries at `pos` vs
// idx_select per query (the decode path's launch): scores of every query that sees more than
// K rows, and every query's selection and count. Returns how many queries scored (saw more
// than K rows).
int64_t check_chunk_indexer(const IdxShape& s, const std::vector<int64_t>& pos, uint32_t seed,
                            Scores kernel = Scores::Tiled, Keys keys = Keys::Gaussian) {
  const int64_t T = static_cast<int64_t>(pos.size()), NI = s.NI, DI = s.DI, K = s.K;
  int64_t n_rows = 0;
  for (int64_t p : pos) n_rows = std::max(n_rows, (p + 1) / s.ratio);
  const int64_t stride = n_rows + 3;  // not the row count: the stride must be honoured
  auto ctl = ctls_at(pos);
  const auto* c0 = ctl.as<fwd::StepCtl>();
  // Queries through the real preparation (RoPE, Hadamard, FP4: coarse values, many equal
  // products), so that the scores carry the ties the top-k must break as the decode path.
  auto q = upload(gaussian(T * NI * DI, 1.0f, seed));
  auto om = upload(rope_omega(DI / 2));
  fwd::idx_prep_q(q.as<float>(), NI, DI, DI / 2, om.as<float>(), true, c0, nullptr, T);
  auto wts = upload(gaussian(T * NI, 1.0f, seed + 1));
  auto icomp = upload(gaussian(n_rows * DI, 1.0f, seed + 2));
  if (keys != Keys::Gaussian)  // the rows as n_rows heads of one query (RoPE, Hadamard, FP4)
    fwd::idx_prep_q(icomp.as<float>(), n_rows, DI, DI / 2, om.as<float>(), true, c0, nullptr, 1);
  if (keys == Keys::Fp4Mixed) {
    auto kv = download<float>(icomp, n_rows * DI);
    scale_rows(kv, DI, 0, 7, 0, 32, 20);   // inexact: units 2^20 apart inside the row
    scale_rows(kv, DI, 3, 11, 0, DI, 3);   // exact: a whole row 2^3 off
    scale_rows(kv, DI, 5, 13, 0, DI, -5);  // exact: 2^-5 off
    icomp = upload(kv);
    auto qv = download<float>(q, T * NI * DI);
    scale_rows(qv, DI, 2, 5, DI - 32, DI, -12);  // inexact query heads
    scale_rows(qv, DI, 4, 9, 0, DI, 7);          // exact
    q = upload(qv);
  }
  const float wscale = 1.0f / std::sqrt(static_cast<float>(DI * NI));

  const std::vector<float> nan_scores(static_cast<size_t>(T * stride), std::nanf(""));
  const std::vector<int32_t> unset_sel(static_cast<size_t>(T * K), -1), unset_n(static_cast<size_t>(T), -1);
  auto sc_ref = upload(nan_scores), sc_new = upload(nan_scores);
  auto sel_ref = upload(unset_sel), sel_new = upload(unset_sel), n_ref = upload(unset_n), n_new = upload(unset_n);
  for (int64_t t = 0; t < T; ++t)
    fwd::idx_select(q.as<float>() + t * NI * DI, wts.as<float>() + t * NI, wscale, NI, DI, icomp.as<float>(), s.ratio,
                    K, sc_ref.as<float>() + t * stride, sel_ref.as<int32_t>() + t * K, n_ref.as<int32_t>() + t, c0 + t,
                    nullptr);
  if (kernel == Scores::Tiled) {
    pre::idx_scores_tiled(q.as<float>(), wts.as<float>(), wscale, NI, DI, icomp.as<float>(), s.ratio, K, n_rows,
                          sc_new.as<float>(), stride, c0, T, nullptr);
  } else {
    DeviceBuffer qmem(static_cast<size_t>(pre::idx_codes_bytes(T * NI, DI)));
    DeviceBuffer kmem(static_cast<size_t>(pre::idx_codes_bytes(n_rows, DI)));
    const pre::IdxCodes qc = pre::idx_codes_view(qmem.as<uint8_t>(), T * NI, DI);
    const pre::IdxCodes kc = pre::idx_codes_view(kmem.as<uint8_t>(), n_rows, DI);
    pre::idx_codes(q.as<float>(), T * NI, qc, nullptr);
    pre::idx_codes(icomp.as<float>(), n_rows, kc, nullptr);
    pre::idx_scores_tc(qc, q.as<float>(), wts.as<float>(), wscale, NI, kc, icomp.as<float>(), s.ratio, K, n_rows,
                       sc_new.as<float>(), stride, c0, T, nullptr);
  }
  fwd::idx_topk(sc_new.as<float>(), stride, s.ratio, K, sel_new.as<int32_t>(), n_new.as<int32_t>(), c0, nullptr, T);

  const auto scr = download<float>(sc_ref, T * stride), scn = download<float>(sc_new, T * stride);
  const auto slr = download<int32_t>(sel_ref, T * K), sln = download<int32_t>(sel_new, T * K);
  expect_same_bits(download<int32_t>(n_new, T), download<int32_t>(n_ref, T), "selection counts");
  int64_t scored = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n_vis = (pos[t] + 1) / s.ratio;
    const std::string at = " of the query at " + std::to_string(pos[t]) + " (" + std::to_string(n_vis) + " rows)";
    const size_t k = static_cast<size_t>(std::min(n_vis, K));
    const auto sel = [&](const std::vector<int32_t>& v) {
      return std::vector<int32_t>(v.begin() + t * K, v.begin() + t * K + static_cast<int64_t>(k));
    };
    expect_same_bits(sel(sln), sel(slr), "selection" + at);
    if (n_vis <= K) continue;
    ++scored;
    const auto rows = [&](const std::vector<float>& v) {
      return std::vector<float>(v.begin() + t * stride, v.begin() + t * stride + n_vis);
    };
    expect_same_bits(rows(scn), rows(scr), "scores" + at);
  }
  return scored;
}

// Flash-shape queries: a run of consecutive ones crossing from fewer visible rows than k
// to more (n_vis 510 .. 520), then ones far apart: one row tile past k, exactly 16 row tiles
// (1024 rows), ragged tiles; 25 queries, not a multiple of the 2 queries of a block.
std::vector<int64_t> flash_queries() {
  std::vector<int64_t> pos;
  for (int64_t p = 2040; p < 2083; p += 3) pos.push_back(p);
  for (int64_t p : {2300, 2600, 3001, 4095, 4098, 4600, 5000, 6003, 7777, 8191}) pos.push_back(p);
  return pos;
}
// For the tiny fixtures' indexer (16 heads x 32, top-4: 8 queries a block): a prefill chunk
// from position 0 (no rows, then fewer than k, then more), 41 queries.
std::vector<int64_t> fixture_queries() {
  std::vector<int64_t> pos;
  for (int64_t p = 0; p <= 40; ++p) pos.push_back(p);
  return pos;
}
// For the demo model's shape (8 heads x 64, top-64: 16 queries a block): a partial last block.
std::vector<int64_t> demo_queries() {
  std::vector<int64_t> pos;
  for (int64_t p = 250; p < 270; ++p) pos.push_back(p);
  pos.push_back(1000);
  return pos;
}

TEST(PrefillIndexer, TiledScoresEqualPerQueryIdxSelect) {
  REQUIRE_GPU();
  EXPECT_EQ(check_chunk_indexer({64, 128, 512, 4}, flash_queries(), 11), 21);  // Flash: 64 x 128, top-512
  EXPECT_EQ(check_chunk_indexer({16, 32, 4, 4}, fixture_queries(), 21), 41 - 19);
  EXPECT_EQ(check_chunk_indexer({8, 64, 64, 4}, demo_queries(), 31), 21 - 9);
}

TEST(PrefillIndexer, TensorCoreScoresEqualPerQueryIdxSelect) {
  REQUIRE_GPU();
  // The official-numerics inputs (FP4 q and keys): exact int8 products, no fallback.
  const auto pos = flash_queries();
  EXPECT_EQ(check_chunk_indexer({64, 128, 512, 4}, pos, 12, Scores::TensorCore, Keys::Fp4), 21);
  // Keys off the FP4 grid: every dot product through the fallback FMA chain.
  EXPECT_EQ(check_chunk_indexer({64, 128, 512, 4}, pos, 13, Scores::TensorCore, Keys::Gaussian), 21);
  // Mixed: exact rows at different units beside inexact rows and query heads.
  EXPECT_EQ(check_chunk_indexer({64, 128, 512, 4}, pos, 14, Scores::TensorCore, Keys::Fp4Mixed), 21);
  // The fixtures' and the demo's shapes (DI 32 and 64: one and two unit blocks).
  EXPECT_EQ(check_chunk_indexer({16, 32, 4, 4}, fixture_queries(), 22, Scores::TensorCore, Keys::Fp4Mixed), 41 - 19);
  EXPECT_EQ(check_chunk_indexer({8, 64, 64, 4}, demo_queries(), 32, Scores::TensorCore, Keys::Fp4), 21 - 9);
}

TEST(PrefillIndexer, IntegerFormMarksWhatItCannotCarry) {
  REQUIRE_GPU();
  // FP4-simulated rows are exact; raw floats are not; a row whose blocks' units are 2^20
  // apart is not; a row scaled as a whole is. So the Fp4Mixed cases above exercise both paths.
  const int64_t rows = 700, DI = 128;
  auto om = upload(rope_omega(DI / 2));
  auto ctl = ctls_at({1000});
  auto x = upload(gaussian(rows * DI, 1.0f, 77));
  EXPECT_EQ(count_inexact(x, rows, DI), rows);
  fwd::idx_prep_q(x.as<float>(), rows, DI, DI / 2, om.as<float>(), true, ctl.as<fwd::StepCtl>(), nullptr, 1);
  EXPECT_EQ(count_inexact(x, rows, DI), 0);
  auto v = download<float>(x, rows * DI);
  scale_rows(v, DI, 3, 11, 0, DI, 3);
  EXPECT_EQ(count_inexact(upload(v), rows, DI), 0);
  scale_rows(v, DI, 0, 7, 0, 32, 20);
  EXPECT_EQ(count_inexact(upload(v), rows, DI), (rows + 6) / 7);
  v[5 * DI + 40] = std::nanf("");
  EXPECT_EQ(count_inexact(upload(v), rows, DI), (rows + 6) / 7 + 1);
  std::vector<float> zeros(static_cast<size_t>(DI), 0.0f);
  EXPECT_EQ(count_inexact(upload(zeros), 1, DI), 0);  // all-zero blocks: unit 0, exact
}

TEST(PrefillIndexer, TiledShapesAreChecked) {
  EXPECT_TRUE(pre::idx_scores_tiled_supported(64, 128));
  EXPECT_TRUE(pre::idx_scores_tiled_supported(128, 32));
  EXPECT_FALSE(pre::idx_scores_tiled_supported(48, 128));  // a block would hold part of a query
  EXPECT_FALSE(pre::idx_scores_tiled_supported(256, 128));
  EXPECT_FALSE(pre::idx_scores_tiled_supported(64, 100));  // DI not a multiple of the slice
  EXPECT_TRUE(pre::idx_scores_tc_supported(64, 128));
  EXPECT_TRUE(pre::idx_scores_tc_supported(16, 32));
  EXPECT_FALSE(pre::idx_scores_tc_supported(64, 256));  // more dims than a staged code row
  EXPECT_FALSE(pre::idx_scores_tc_supported(48, 128));
}

// ------------------------------------------------------------------ compressor pooling

struct CompShape {
  int64_t d, ratio;
  int c;
  fwd::Sim sim;
  int64_t n_nope;
  int64_t cap;           // ring rows
  int64_t chunk_a, chunk_b;  // two consecutive chunks from position 0
};

// Two consecutive prefill chunks (a window straddles their boundary, and the ring wraps in
// the second): comp_store of each chunk, then its windows pooled by one comp_emit over the
// chunk vs one comp_emit per token (the previous prefill and decode). Compressed rows equal.
void check_chunk_emit(const CompShape& s, uint32_t seed) {
  const int64_t width = s.c * s.d, n_pos = s.chunk_a + s.chunk_b, n_rows = n_pos / s.ratio;
  auto kv = upload(gaussian(n_pos * width, 1.0f, seed)), sc = upload(gaussian(n_pos * width, 2.0f, seed + 1));
  auto ape = upload(gaussian(s.ratio * width, 0.5f, seed + 2)), norm = upload(gaussian(s.d, 1.0f, seed + 3));
  auto om = upload(rope_omega(64));
  fwd::RowFinish f;
  f.d = s.d;
  f.n_rope = 64;
  f.n_nope = s.n_nope;
  f.norm = norm.as<float>();
  f.sim = s.sim;
  const std::vector<float> zero_ring(static_cast<size_t>(s.cap * width), 0.0f);
  const std::vector<float> zero_rows(static_cast<size_t>(n_rows * s.d), 0.0f);
  auto rk = upload(zero_ring), rs = upload(zero_ring), rows_ref = upload(zero_rows), rows_new = upload(zero_rows);
  int64_t p0 = 0;
  for (int64_t T : {s.chunk_a, s.chunk_b}) {
    std::vector<int64_t> pos(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(t)] = p0 + t;
    auto ctl = ctls_at(pos);
    const auto* c0 = ctl.as<fwd::StepCtl>();
    fwd::comp_store(kv.as<float>() + p0 * width, sc.as<float>() + p0 * width, ape.as<float>(), width, s.ratio,
                    rk.as<float>(), rs.as<float>(), s.cap, c0, nullptr, T);
    for (int64_t t = 0; t < T; ++t)
      fwd::comp_emit(f, om.as<float>(), rk.as<float>(), rs.as<float>(), s.cap, s.ratio, s.c, rows_ref.as<float>(),
                     c0 + t, nullptr);
    fwd::comp_emit(f, om.as<float>(), rk.as<float>(), rs.as<float>(), s.cap, s.ratio, s.c, rows_new.as<float>(), c0,
                   nullptr, T);
    p0 += T;
  }
  const auto ref = download<float>(rows_ref, n_rows * s.d), got = download<float>(rows_new, n_rows * s.d);
  for (int64_t w = 0; w < n_rows; ++w)  // every window was emitted (no row left zero)
    EXPECT_TRUE(std::any_of(ref.begin() + w * s.d, ref.begin() + (w + 1) * s.d, [](float v) { return v != 0.0f; }))
        << "row " << w << " not written";
  expect_same_bits(got, ref, "compressed rows (d " + std::to_string(s.d) + ", ratio " + std::to_string(s.ratio) + ")");
}

TEST(PrefillCompressor, ChunkEmitEqualsPerTokenEmit) {
  REQUIRE_GPU();
  // Flash's three compressors: attention ratio 4 (overlapped windows, FP8 nope dims), the
  // indexer's (128 wide, Hadamard + FP4), attention ratio 128. Chunks of 30 + 50 tokens
  // (window 7 = positions 28..31 straddles them; a 64-row ring wraps), 100 + 200 (window 0
  // ends in the second chunk, window 1 inside it).
  check_chunk_emit({512, 4, 2, fwd::Sim::Fp8Nope, 448, 64, 30, 50}, 41);
  check_chunk_emit({128, 4, 2, fwd::Sim::HadamardFp4, 0, 64, 30, 50}, 51);
  check_chunk_emit({512, 128, 1, fwd::Sim::Fp8Nope, 448, 300, 100, 200}, 61);
}

}  // namespace
