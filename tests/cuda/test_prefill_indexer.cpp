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

// idx_scores_tiled + idx_topk for the chunk of queries at `pos` vs idx_select per query (the
// decode path's launch): scores of every query that sees more than K rows, and every
// query's selection and count. Returns how many queries scored (saw more than K rows).
int64_t check_tiled_indexer(const IdxShape& s, const std::vector<int64_t>& pos, uint32_t seed) {
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
  const float wscale = 1.0f / std::sqrt(static_cast<float>(DI * NI));

  const std::vector<float> nan_scores(static_cast<size_t>(T * stride), std::nanf(""));
  const std::vector<int32_t> unset_sel(static_cast<size_t>(T * K), -1), unset_n(static_cast<size_t>(T), -1);
  auto sc_ref = upload(nan_scores), sc_new = upload(nan_scores);
  auto sel_ref = upload(unset_sel), sel_new = upload(unset_sel), n_ref = upload(unset_n), n_new = upload(unset_n);
  for (int64_t t = 0; t < T; ++t)
    fwd::idx_select(q.as<float>() + t * NI * DI, wts.as<float>() + t * NI, wscale, NI, DI, icomp.as<float>(), s.ratio,
                    K, sc_ref.as<float>() + t * stride, sel_ref.as<int32_t>() + t * K, n_ref.as<int32_t>() + t, c0 + t,
                    nullptr);
  pre::idx_scores_tiled(q.as<float>(), wts.as<float>(), wscale, NI, DI, icomp.as<float>(), s.ratio, K, n_rows,
                        sc_new.as<float>(), stride, c0, T, nullptr);
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

TEST(PrefillIndexer, TiledScoresEqualPerQueryIdxSelect) {
  REQUIRE_GPU();
  // Flash: 64 heads x 128, top-512 at ratio 4. A run of consecutive queries crossing from
  // fewer visible rows than k to more (n_vis 510 .. 520), then queries far apart: one row
  // tile past k, exactly 16 row tiles (1024 rows), ragged tiles; 25 queries, not a multiple of
  // the 2 queries of a block.
  std::vector<int64_t> pos;
  for (int64_t p = 2040; p < 2083; p += 3) pos.push_back(p);
  for (int64_t p : {2300, 2600, 3001, 4095, 4098, 4600, 5000, 6003, 7777, 8191}) pos.push_back(p);
  EXPECT_EQ(check_tiled_indexer({64, 128, 512, 4}, pos, 11), 21);
  // The tiny fixtures' indexer (16 heads x 32, top-4): 8 queries a block; a prefill chunk
  // from position 0 (no rows, then fewer than k, then more), 41 queries.
  pos.clear();
  for (int64_t p = 0; p <= 40; ++p) pos.push_back(p);
  EXPECT_EQ(check_tiled_indexer({16, 32, 4, 4}, pos, 21), 41 - 19);
  // The demo model's shape (8 heads x 64, top-64): 16 queries a block, a partial last one.
  pos.clear();
  for (int64_t p = 250; p < 270; ++p) pos.push_back(p);
  pos.push_back(1000);
  EXPECT_EQ(check_tiled_indexer({8, 64, 64, 4}, pos, 31), 21 - 9);
}

TEST(PrefillIndexer, TiledShapesAreChecked) {
  EXPECT_TRUE(pre::idx_scores_tiled_supported(64, 128));
  EXPECT_TRUE(pre::idx_scores_tiled_supported(128, 32));
  EXPECT_FALSE(pre::idx_scores_tiled_supported(48, 128));  // a block would hold part of a query
  EXPECT_FALSE(pre::idx_scores_tiled_supported(256, 128));
  EXPECT_FALSE(pre::idx_scores_tiled_supported(64, 100));  // DI not a multiple of the slice
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
