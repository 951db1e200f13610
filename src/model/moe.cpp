#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "model/decisions.h"
#include "model/indexer.h"
#include "model/ops.h"

namespace ds4::model {
namespace {

// m = silu(min(g, limit)) * clamp(u, -limit, limit) * weight: the gate is clamped from above
// only, the up projection on both sides (3.5.2, 10 #9).
void swiglu_clamped(const float* g, const float* u, int64_t n, float limit, float weight,
                    float* m) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = std::min(g[i], limit);
    const float ui = std::clamp(u[i], -limit, limit);
    m[i] = silu(gi) * ui * weight;
  }
}

// route() at position `pos`, offering non-hash choices to `hook` (decisions.h) when set.
void route_at(const HParams& hp, const LayerWeights& L, const float* logits, int32_t token,
              int64_t pos, const DecisionHook* hook, int32_t* ids, float* weights) {
  const int64_t NE = hp.n_expert, K = hp.n_expert_used;
  std::vector<float> score(static_cast<size_t>(NE));
  for (int64_t e = 0; e < NE; ++e)
    score[static_cast<size_t>(e)] = static_cast<float>(std::sqrt(softplus(logits[e])));
  if (hp.is_hash_layer(L.il)) {
    const int32_t* row = reinterpret_cast<const int32_t*>(L.tid2eid.row(token));
    std::copy_n(row, K, ids);
  } else {
    // The bias only chooses; it does not weight (3.5.1).
    std::vector<float> biased(static_cast<size_t>(NE));
    for (int64_t e = 0; e < NE; ++e)
      biased[static_cast<size_t>(e)] = score[static_cast<size_t>(e)] + L.router_bias[static_cast<size_t>(e)];
    topk_lower_index(biased.data(), NE, K, ids);
    if (hook && hook->experts) {
      hook->experts(L.il, pos, biased.data(), NE, ids, K);
      for (int64_t k = 0; k < K; ++k)
        if (ids[k] < 0 || ids[k] >= NE)
          fail("layer {}: decision hook chose expert {} of {}", L.il, ids[k], NE);
    }
  }
  double sum = 0.0;
  for (int64_t k = 0; k < K; ++k) sum += score[static_cast<size_t>(ids[k])];
  for (int64_t k = 0; k < K; ++k) {
    double w = score[static_cast<size_t>(ids[k])];
    if (hp.expert_weights_norm) w /= sum;
    weights[k] = static_cast<float>(w * hp.expert_weights_scale);
  }
}

}  // namespace

void route(const HParams& hp, const LayerWeights& L, const float* logits, int32_t token,
           int32_t* ids, float* weights) {
  route_at(hp, L, logits, token, 0, nullptr, ids, weights);
}

void moe_forward(const HParams& hp, const LayerWeights& L, const float* xf,
                 const int32_t* tokens, int64_t T, float* y, ThreadPool* pool) {
  const int64_t E = hp.n_embd, NE = hp.n_expert, K = hp.n_expert_used, F = hp.n_ff_exp;
  const float limit = hp.swiglu_limit[static_cast<size_t>(L.il)];

  // Router.
  std::vector<float> logits(static_cast<size_t>(T * NE));
  linear(L.router, xf, T, logits.data(), pool);
  std::vector<int32_t> ids(static_cast<size_t>(T * K));
  std::vector<float> wts(static_cast<size_t>(T * K));
  const detail::DecisionScope& ds = detail::decision_scope();
  for (int64_t t = 0; t < T; ++t)
    route_at(hp, L, logits.data() + t * NE, tokens[t], ds.p0 + t, ds.hook, ids.data() + t * K,
             wts.data() + t * K);

  // Routed experts, batched per expert over the tokens that chose it.
  std::fill(y, y + T * E, 0.0f);
  std::vector<std::vector<std::pair<int64_t, float>>> users(static_cast<size_t>(NE));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k)
      users[static_cast<size_t>(ids[static_cast<size_t>(t * K + k)])].emplace_back(t, wts[static_cast<size_t>(t * K + k)]);
  std::vector<float> X, G, U, M, D;
  for (int64_t e = 0; e < NE; ++e) {
    const auto& us = users[static_cast<size_t>(e)];
    const int64_t n = static_cast<int64_t>(us.size());
    if (n == 0) continue;
    X.resize(static_cast<size_t>(n * E));
    G.resize(static_cast<size_t>(n * F));
    U.resize(static_cast<size_t>(n * F));
    M.resize(static_cast<size_t>(n * F));
    D.resize(static_cast<size_t>(n * E));
    for (int64_t i = 0; i < n; ++i) std::copy_n(xf + us[static_cast<size_t>(i)].first * E, E, X.data() + i * E);
    linear_rows(L.gate_exps, e, 0, F, X.data(), n, G.data(), pool);
    linear_rows(L.up_exps, e, 0, F, X.data(), n, U.data(), pool);
    for (int64_t i = 0; i < n; ++i)
      swiglu_clamped(G.data() + i * F, U.data() + i * F, F, limit, us[static_cast<size_t>(i)].second, M.data() + i * F);
    linear_rows(L.down_exps, e, 0, E, M.data(), n, D.data(), pool);
    for (int64_t i = 0; i < n; ++i) {
      float* yt = y + us[static_cast<size_t>(i)].first * E;
      for (int64_t d = 0; d < E; ++d) yt[d] += D[static_cast<size_t>(i * E + d)];
    }
  }

  // Shared expert: same clamps, no routing weight (3.5.3).
  if (hp.n_expert_shared > 0) {
    const float slimit = hp.swiglu_limit_shared[static_cast<size_t>(L.il)];
    G.resize(static_cast<size_t>(T * F));
    U.resize(static_cast<size_t>(T * F));
    M.resize(static_cast<size_t>(T * F));
    D.resize(static_cast<size_t>(T * E));
    linear(L.gate_shexp, xf, T, G.data(), pool);
    linear(L.up_shexp, xf, T, U.data(), pool);
    swiglu_clamped(G.data(), U.data(), T * F, slimit, 1.0f, M.data());
    linear(L.down_shexp, M.data(), T, D.data(), pool);
    for (int64_t i = 0; i < T * E; ++i) y[i] += D[static_cast<size_t>(i)];
  }
}

}  // namespace ds4::model
