#include "model/compressor.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "model/numerics_sim.h"
#include "model/ops.h"

namespace ds4::model {

void compressor_project(const CompressorWeights& w, uint32_t ratio, const float* x, int64_t T,
                        int64_t p0, float* kv, float* sc, ThreadPool* pool) {
  const int64_t width = w.c * w.d;
  linear(w.kv, x, T, kv, pool);
  linear(w.gate, x, T, sc, pool);
  for (int64_t t = 0; t < T; ++t) {
    const float* ape = w.ape.data() + ((p0 + t) % ratio) * width;
    float* s = sc + t * width;
    for (int64_t i = 0; i < width; ++i) s[i] += ape[i];
  }
}

void compressor_pool(int64_t ratio, int64_t c, int64_t d, const float* prev_kv,
                     const float* prev_sc, const float* cur_kv, const float* cur_sc, float* out) {
  const int64_t width = c * d;
  const bool overlap = c == 2 && prev_kv != nullptr;
  const int64_t b_off = c == 2 ? d : 0;  // the B half feeds the current window
  for (int64_t ch = 0; ch < d; ++ch) {
    // One softmax per channel over the candidates, in double (fp32 in the references).
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t r = 0; r < ratio; ++r) {
      mx = std::max(mx, static_cast<double>(cur_sc[r * width + b_off + ch]));
      if (overlap) mx = std::max(mx, static_cast<double>(prev_sc[r * width + ch]));
    }
    double den = 0.0, num = 0.0;
    for (int64_t r = 0; r < ratio; ++r) {
      const double e = std::exp(cur_sc[r * width + b_off + ch] - mx);
      den += e;
      num += e * cur_kv[r * width + b_off + ch];
      if (overlap) {
        const double ea = std::exp(prev_sc[r * width + ch] - mx);
        den += ea;
        num += ea * prev_kv[r * width + ch];
      }
    }
    out[ch] = static_cast<float>(num / den);
  }
}

void compressor_finish(const CompressorWeights& w, const Rope& rope, int64_t window_start,
                       int64_t n_nope, RowSim sim, float eps, float* row) {
  rmsnorm(row, row, w.norm.data(), w.d, eps);
  rope.apply(row, w.d, window_start);
  switch (sim) {
    case RowSim::None:
      break;
    case RowSim::Fp8Nope:
      fp8_roundtrip(row, n_nope, 64);
      break;
    case RowSim::HadamardFp4:
      hadamard(row, w.d);
      fp4_roundtrip(row, w.d, 32);
      break;
  }
}

}  // namespace ds4::model

namespace ds4::model {

void compressor_advance(const CompressorWeights& w, uint32_t ratio, const Rope& rope,
                        int64_t n_nope, RowSim sim, float eps, const float* kv, const float* sc,
                        int64_t T, int64_t p0, std::vector<float>& kv_hist,
                        std::vector<float>& sc_hist, int64_t hist_begin, std::vector<float>& rows) {
  const int64_t width = w.c * w.d;
  if (static_cast<int64_t>(kv_hist.size()) != (p0 - hist_begin) * width ||
      kv_hist.size() != sc_hist.size())
    fail("compressor: history of {} values does not end at position {}", kv_hist.size(), p0);
  kv_hist.insert(kv_hist.end(), kv, kv + T * width);
  sc_hist.insert(sc_hist.end(), sc, sc + T * width);
  const int64_t r = ratio;
  for (int64_t p = p0; p < p0 + T; ++p) {
    if ((p + 1) % r != 0) continue;
    const int64_t win = (p + 1) / r - 1;
    const int64_t cur = win * r - hist_begin;           // history row of the window's start
    const int64_t prev = (win - 1) * r - hist_begin;     // previous window (overlap only)
    const bool overlap = w.c == 2 && win > 0;
    if (cur < 0 || (overlap && prev < 0))
      fail("compressor: history does not reach back to position {} (starts at {})",
           overlap ? (win - 1) * r : win * r, hist_begin);
    const size_t o = rows.size();
    rows.resize(o + static_cast<size_t>(w.d));
    compressor_pool(r, w.c, w.d, overlap ? kv_hist.data() + prev * width : nullptr,
                    overlap ? sc_hist.data() + prev * width : nullptr,
                    kv_hist.data() + cur * width, sc_hist.data() + cur * width, rows.data() + o);
    compressor_finish(w, rope, win * r, n_nope, sim, eps, rows.data() + o);
  }
}

}  // namespace ds4::model
