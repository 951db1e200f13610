#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace ds4::model {

// The frequency tables are computed in float32 the way both references do (HF builds
// inv_freq in float32, OFF precomputes an fp32 table), so the fixtures' angles are matched
// bit for bit rather than merely to float32 accuracy.
Rope Rope::plain(int64_t n_rope, float base) {
  Rope r;
  const int64_t half = n_rope / 2;
  r.omega_.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(n_rope);
    r.omega_[static_cast<size_t>(i)] = 1.0f / std::pow(base, e);
  }
  return r;
}

Rope Rope::yarn(int64_t n_rope, float base, float factor, float orig_ctx, float beta_fast,
                float beta_slow) {
  Rope r;
  const int64_t half = n_rope / 2;
  // Correction range in pair units (architecture.md 3.4.3), computed in double like HF.
  const double dim = static_cast<double>(n_rope);
  auto correction_dim = [&](double n_rot) {
    return dim * std::log(orig_ctx / (n_rot * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
  };
  const double low = std::max(std::floor(correction_dim(beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(beta_slow)), dim - 1.0);
  if (high == low) high += 0.001;  // as the references: avoid a zero-width ramp
  r.omega_.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(n_rope);
    const float pos_freq = std::pow(base, e);
    const float extrap = 1.0f / pos_freq;
    const float interp = 1.0f / (factor * pos_freq);
    float ramp = static_cast<float>((static_cast<double>(i) - low) / (high - low));
    ramp = std::clamp(ramp, 0.0f, 1.0f);
    const float keep = 1.0f - ramp;  // weight of the unscaled frequency
    r.omega_[static_cast<size_t>(i)] = interp * (1.0f - keep) + extrap * keep;
  }
  return r;
}

Rope Rope::for_layer(const HParams& hp, int64_t il) {
  if (hp.compress_ratio[static_cast<size_t>(il)] == 0) return plain(hp.n_rope, hp.rope_base);
  return yarn(hp.n_rope, hp.compress_rope_base, hp.yarn_factor, hp.yarn_orig_ctx,
              hp.yarn_beta_fast, hp.yarn_beta_slow);
}

void Rope::angles(int64_t pos, float* cs) const {
  // theta = fp32(omega * pos), as both references compute it (architecture.md 6 #3).
  const float p = static_cast<float>(pos);
  for (size_t i = 0; i < omega_.size(); ++i) {
    const float theta = omega_[i] * p;
    cs[2 * i] = std::cos(theta);
    cs[2 * i + 1] = std::sin(theta);
  }
}

void Rope::rotate(float* x, int64_t n, const float* cs, bool inverse) const {
  float* t = x + (n - n_rope());
  const float sgn = inverse ? -1.0f : 1.0f;
  for (size_t i = 0; i < omega_.size(); ++i) {
    const float c = cs[2 * i], s = sgn * cs[2 * i + 1];
    const float x0 = t[2 * i], x1 = t[2 * i + 1];
    t[2 * i] = x0 * c - x1 * s;
    t[2 * i + 1] = x0 * s + x1 * c;
  }
}

void Rope::apply(float* x, int64_t n, int64_t pos, bool inverse) const {
  float cs[512];
  std::vector<float> big;
  float* buf = cs;
  if (n_rope() > 512) {
    big.resize(static_cast<size_t>(n_rope()));
    buf = big.data();
  }
  angles(pos, buf);
  rotate(x, n, buf, inverse);
}

}  // namespace ds4::model
