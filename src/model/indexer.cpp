#include "model/indexer.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/thread_pool.h"
#include "model/decisions.h"
#include "model/numerics_sim.h"

namespace ds4::model {

int64_t topk_lower_index(const float* scores, int64_t n, int64_t k, int32_t* out) {
  const int64_t m = std::min(k, n);
  std::vector<int32_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + m, idx.end(), [&](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  std::copy_n(idx.begin(), m, out);
  return m;
}

IndexerSelection indexer_select(const HParams& hp, const LayerWeights& L, const Rope& rope,
                                Numerics num, const float* qr, const float* x, int64_t T,
                                int64_t p0, const float* icomp, ThreadPool* pool) {
  const int64_t NI = hp.idx_head, DI = hp.idx_dim, K = hp.idx_topk;
  const int64_t ratio = L.ratio;
  IndexerSelection sel;
  sel.stride = K;
  sel.rows.assign(static_cast<size_t>(T * K), 0);
  sel.count.assign(static_cast<size_t>(T), 0);

  // Queries and head weights are only needed by tokens that see more than k rows.
  const bool any_scored = (p0 + T) / ratio > K;
  std::vector<float> q, wts;
  if (any_scored) {
    q.resize(static_cast<size_t>(T * NI * DI));
    wts.resize(static_cast<size_t>(T * NI));
    linear(L.idx_q_b, qr, T, q.data(), pool);
    linear(L.idx_proj, x, T, wts.data(), pool);
    // 1/sqrt(idx_dim) softmax scale times n_heads^-1/2 head-weight scale (3.4.7).
    const float wscale = 1.0f / std::sqrt(static_cast<float>(DI * NI));
    for (float& v : wts) v *= wscale;
  }

  // A decision hook (decisions.h) sees each scored token's scores after the parallel part, in
  // position order, so it needs no locking.
  const DecisionHook* scope_hook = detail::decision_scope().hook;
  const DecisionHook* hook = scope_hook && scope_hook->rows ? scope_hook : nullptr;
  std::vector<std::vector<float>> kept(hook ? static_cast<size_t>(T) : 0);

  parallel_for(pool, T, 1, [&](int64_t begin, int64_t end, int) {
    std::vector<float> scores, cs(static_cast<size_t>(rope.n_rope()));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p = p0 + t;
      const int64_t n_vis = (p + 1) / ratio;
      int32_t* out = sel.rows.data() + t * K;
      if (n_vis <= K) {
        for (int64_t w = 0; w < n_vis; ++w) out[w] = static_cast<int32_t>(w);
        sel.count[static_cast<size_t>(t)] = static_cast<int32_t>(n_vis);
        continue;
      }
      float* qt = q.data() + t * NI * DI;
      rope.angles(p, cs.data());
      for (int64_t h = 0; h < NI; ++h) {
        rope.rotate(qt + h * DI, DI, cs.data());
        if (num == Numerics::Official) {
          hadamard(qt + h * DI, DI);
          fp4_roundtrip(qt + h * DI, DI, 32);
        }
      }
      scores.assign(static_cast<size_t>(n_vis), 0.0f);
      const float* wt = wts.data() + t * NI;
      for (int64_t w = 0; w < n_vis; ++w) {
        const float* k = icomp + w * DI;
        double s = 0.0;
        for (int64_t h = 0; h < NI; ++h) {
          const float* qh = qt + h * DI;
          float d = 0.0f;
          for (int64_t i = 0; i < DI; ++i) d += qh[i] * k[i];
          if (d > 0.0f) s += static_cast<double>(wt[h]) * d;
        }
        scores[static_cast<size_t>(w)] = static_cast<float>(s);
      }
      sel.count[static_cast<size_t>(t)] =
          static_cast<int32_t>(topk_lower_index(scores.data(), n_vis, K, out));
      if (hook) kept[static_cast<size_t>(t)] = scores;
    }
  });
  if (hook) {
    for (int64_t t = 0; t < T; ++t) {
      const auto& sc = kept[static_cast<size_t>(t)];
      if (sc.empty()) continue;
      const int64_t n_vis = static_cast<int64_t>(sc.size());
      int32_t* out = sel.rows.data() + t * K;
      hook->rows(L.il, p0 + t, sc.data(), n_vis, out, K);
      for (int64_t k = 0; k < K; ++k)
        if (out[k] < 0 || out[k] >= n_vis)
          fail("layer {}: decision hook chose row {} of {} at position {}", L.il, out[k], n_vis, p0 + t);
    }
  }
  return sel;
}

}  // namespace ds4::model
