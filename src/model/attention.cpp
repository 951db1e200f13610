#include "model/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/thread_pool.h"

namespace ds4::model {
namespace {

float dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

void attention_core(const HParams& hp, const float* sinks, const AttentionInputs& in, float* o,
                    ThreadPool* pool) {
  const int64_t D = hp.head_dim, NH = hp.n_head, W = hp.window;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  parallel_for(pool, in.T * NH, 1, [&](int64_t begin, int64_t end, int) {
    std::vector<const float*> rows;
    std::vector<float> s;
    std::vector<double> acc(static_cast<size_t>(D));
    for (int64_t job = begin; job < end; ++job) {
      const int64_t t = job / NH, h = job % NH;
      const int64_t p = in.p0 + t;
      rows.clear();
      // Raw window: positions max(0, p - W + 1) .. p, the current token included.
      for (int64_t j = std::max<int64_t>(0, p - W + 1); j <= p; ++j)
        rows.push_back(in.raw + (j - in.hist_begin) * D);
      if (in.ratio > 0) {
        if (in.sel) {
          for (int32_t i = 0; i < in.n_sel[t]; ++i)
            rows.push_back(in.comp + static_cast<int64_t>(in.sel[t * in.sel_stride + i]) * D);
        } else {
          const int64_t n_vis = (p + 1) / in.ratio;
          for (int64_t w = 0; w < n_vis; ++w) rows.push_back(in.comp + w * D);
        }
      }
      const float* qh = in.q + (t * NH + h) * D;
      s.resize(rows.size());
      float mx = sinks[h];
      for (size_t r = 0; r < rows.size(); ++r) {
        s[r] = dot(qh, rows[r], D) * scale;
        mx = std::max(mx, s[r]);
      }
      // The sink is one more logit in the denominator with no value (3.4.8).
      double den = std::exp(static_cast<double>(sinks[h]) - mx);
      float* oh = o + (t * NH + h) * D;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (size_t r = 0; r < rows.size(); ++r) {
        const double e = std::exp(static_cast<double>(s[r]) - mx);
        den += e;
        for (int64_t d = 0; d < D; ++d) acc[static_cast<size_t>(d)] += e * rows[r][d];
      }
      for (int64_t d = 0; d < D; ++d) oh[d] = static_cast<float>(acc[static_cast<size_t>(d)] / den);
    }
  });
}

void attention_output(const HParams& hp, const LayerWeights& L, const float* o, int64_t T,
                      float* out, ThreadPool* pool) {
  const int64_t G = hp.o_groups, R = hp.o_lora;
  const int64_t HD = hp.n_head * hp.head_dim, per_group = HD / G;
  std::vector<float> xg(static_cast<size_t>(T * per_group)), yg(static_cast<size_t>(T * R));
  std::vector<float> low(static_cast<size_t>(T * G * R));
  for (int64_t g = 0; g < G; ++g) {
    // Group g = heads g*NH/G .. (g+1)*NH/G - 1, contiguous in o; rows g*R.. of wo_a only.
    for (int64_t t = 0; t < T; ++t)
      std::copy_n(o + t * HD + g * per_group, per_group, xg.data() + t * per_group);
    linear_rows(L.out_a, 0, g * R, R, xg.data(), T, yg.data(), pool);
    for (int64_t t = 0; t < T; ++t)
      std::copy_n(yg.data() + t * R, R, low.data() + (t * G + g) * R);
  }
  linear(L.out_b, low.data(), T, out, pool);
}

}  // namespace ds4::model
