#include "model/hyper_connection.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace ds4::model {
namespace {

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// 1 / sqrt(mean(z^2) + eps) over the flattened n_hc * E state, in double so the statistic
// does not depend on the summation order (3.2 step 2).
float inv_rms(const float* z, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(z[i]) * z[i];
  return static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
}

}  // namespace

void sinkhorn(float* C, int64_t n, int64_t iters, float eps) {
  for (int64_t j = 0; j < n; ++j) {
    float* row = C + j * n;
    const float mx = *std::max_element(row, row + n);
    float sum = 0.0f;
    for (int64_t k = 0; k < n; ++k) sum += (row[k] = std::exp(row[k] - mx));
    for (int64_t k = 0; k < n; ++k) row[k] = row[k] / sum + eps;
  }
  auto col_norm = [&] {
    for (int64_t k = 0; k < n; ++k) {
      float s = 0.0f;
      for (int64_t j = 0; j < n; ++j) s += C[j * n + k];
      for (int64_t j = 0; j < n; ++j) C[j * n + k] /= (s + eps);
    }
  };
  auto row_norm = [&] {
    for (int64_t j = 0; j < n; ++j) {
      float s = 0.0f;
      for (int64_t k = 0; k < n; ++k) s += C[j * n + k];
      for (int64_t k = 0; k < n; ++k) C[j * n + k] /= (s + eps);
    }
  };
  col_norm();
  for (int64_t it = 1; it < iters; ++it) {
    row_norm();
    col_norm();
  }
}

void hc_pre(const HParams& hp, const HcWeights& w, const float* H, int64_t T, float* a,
            float* post, float* comb, float* scratch, ThreadPool* pool) {
  const int64_t nc = hp.n_hc, E = hp.n_embd, n_mix = (2 + nc) * nc;
  linear(w.fn, H, T, scratch, pool);  // raw mixing logits; the RMS factor is applied below
  for (int64_t t = 0; t < T; ++t) {
    const float* h = H + t * nc * E;
    float* m = scratch + t * n_mix;
    const float r = inv_rms(h, nc * E, hp.rms_eps);
    for (int64_t i = 0; i < n_mix; ++i) m[i] *= r;
    float pre[64];
    for (int64_t s = 0; s < nc; ++s) {
      pre[s] = sigmoid(w.scale[0] * m[s] + w.base[static_cast<size_t>(s)]) + hp.hc_eps;
      post[t * nc + s] = 2.0f * sigmoid(w.scale[1] * m[nc + s] + w.base[static_cast<size_t>(nc + s)]);
    }
    float* C = comb + t * nc * nc;
    for (int64_t i = 0; i < nc * nc; ++i)
      C[i] = w.scale[2] * m[2 * nc + i] + w.base[static_cast<size_t>(2 * nc + i)];
    sinkhorn(C, nc, hp.hc_sinkhorn_iters, hp.hc_eps);
    float* out = a + t * E;
    std::fill(out, out + E, 0.0f);
    for (int64_t s = 0; s < nc; ++s)
      for (int64_t d = 0; d < E; ++d) out[d] += pre[s] * h[s * E + d];
  }
}

void hc_post(const HParams& hp, const float* F, const float* H_in, const float* post,
             const float* comb, int64_t T, float* H_out) {
  const int64_t nc = hp.n_hc, E = hp.n_embd;
  for (int64_t t = 0; t < T; ++t) {
    const float* f = F + t * E;
    const float* h = H_in + t * nc * E;
    const float* C = comb + t * nc * nc;
    for (int64_t k = 0; k < nc; ++k) {
      float* o = H_out + (t * nc + k) * E;
      const float pk = post[t * nc + k];
      for (int64_t d = 0; d < E; ++d) o[d] = pk * f[d];
      for (int64_t j = 0; j < nc; ++j) {
        const float c = C[j * nc + k];
        const float* hj = h + j * E;
        for (int64_t d = 0; d < E; ++d) o[d] += c * hj[d];
      }
    }
  }
}

void hc_head(const HParams& hp, const HcWeights& w, const float* H, int64_t T, float* x,
             float* scratch, ThreadPool* pool) {
  const int64_t nc = hp.n_hc, E = hp.n_embd;
  linear(w.fn, H, T, scratch, pool);
  for (int64_t t = 0; t < T; ++t) {
    const float* h = H + t * nc * E;
    const float r = inv_rms(h, nc * E, hp.rms_eps);
    float* out = x + t * E;
    std::fill(out, out + E, 0.0f);
    for (int64_t s = 0; s < nc; ++s) {
      const float pre = sigmoid(w.scale[0] * r * scratch[t * nc + s] + w.base[static_cast<size_t>(s)]) + hp.hc_eps;
      for (int64_t d = 0; d < E; ++d) out[d] += pre * h[s * E + d];
    }
  }
}

}  // namespace ds4::model
