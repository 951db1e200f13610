// Partial interleaved RoPE with a per-layer base and YaRN (architecture.md 3.4.3).
// Pairs are consecutive dims (n0 + 2i, n0 + 2i + 1) of the last n_rope dims of a vector.
#pragma once

#include <cstdint>
#include <vector>

#include "model/hparams.h"

namespace ds4::model {

class Rope {
 public:
  Rope() = default;
  // Plain RoPE with base `base` over n_rope dims.
  static Rope plain(int64_t n_rope, float base);
  // YaRN: frequencies blended between f_i and f_i / factor over the correction range.
  static Rope yarn(int64_t n_rope, float base, float factor, float orig_ctx, float beta_fast,
                   float beta_slow);
  // The rope of layer il: ratio-0 layers use the main base without YaRN, every other layer
  // the compress base with YaRN, for all its vectors (architecture.md 9 #5, #6).
  static Rope for_layer(const HParams& hp, int64_t il);

  int64_t n_rope() const { return static_cast<int64_t>(omega_.size()) * 2; }
  const std::vector<float>& omega() const { return omega_; }

  // cs[2i] = cos(theta_i), cs[2i+1] = sin(theta_i) for position pos (n_rope floats).
  void angles(int64_t pos, float* cs) const;
  // Rotates the last n_rope dims of x[0..n) by the angles (inverse: by -theta).
  void rotate(float* x, int64_t n, const float* cs, bool inverse = false) const;
  // angles + rotate.
  void apply(float* x, int64_t n, int64_t pos, bool inverse = false) const;

 private:
  std::vector<float> omega_;  // radians per position, one per pair
};

}  // namespace ds4::model
