#include "quality/distribution.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace ds4::quality {

void log_softmax(std::span<const float> logits, std::span<double> out) {
  if (logits.size() != out.size() || logits.empty()) fail("log_softmax: bad sizes");
  double mx = -std::numeric_limits<double>::infinity();
  for (float x : logits) mx = std::max(mx, static_cast<double>(x));
  if (!std::isfinite(mx)) fail("log_softmax: logits are not finite");
  double z = 0;
  for (float x : logits) z += std::exp(static_cast<double>(x) - mx);
  const double lz = mx + std::log(z);
  for (size_t i = 0; i < logits.size(); ++i) out[i] = static_cast<double>(logits[i]) - lz;
}

int32_t argmax(std::span<const double> lp) {
  size_t best = 0;
  for (size_t i = 1; i < lp.size(); ++i)
    if (lp[i] > lp[best]) best = i;
  return static_cast<int32_t>(best);
}

double kl_full(std::span<const double> ref_lp, std::span<const double> model_lp) {
  if (ref_lp.size() != model_lp.size()) fail("KL: vocabularies differ ({} vs {})", ref_lp.size(), model_lp.size());
  double kl = 0;
  for (size_t i = 0; i < ref_lp.size(); ++i) {
    const double p = std::exp(ref_lp[i]);
    if (p > 0) kl += p * (ref_lp[i] - model_lp[i]);
  }
  return std::max(0.0, kl);  // rounding can leave -1e-17 for identical inputs
}

namespace {

// Ids ordered by descending log-prob, lowest id first on ties: the order of top_k and nucleus.
std::vector<int32_t> order_desc(std::span<const double> lp, size_t n) {
  std::vector<int32_t> idx(lp.size());
  std::iota(idx.begin(), idx.end(), 0);
  n = std::min(n, idx.size());
  auto cmp = [&](int32_t a, int32_t b) { return lp[a] > lp[b] || (lp[a] == lp[b] && a < b); };
  std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(n), idx.end(), cmp);
  idx.resize(n);
  return idx;
}

// log(sum exp(v)) of a few terms, stable.
double logsumexp(std::span<const double> v) {
  double mx = -std::numeric_limits<double>::infinity();
  for (double x : v) mx = std::max(mx, x);
  if (!std::isfinite(mx)) return mx;
  double s = 0;
  for (double x : v) s += std::exp(x - mx);
  return mx + std::log(s);
}

}  // namespace

TopK top_k(std::span<const double> lp, int32_t k) {
  if (k <= 0) fail("top-K needs K >= 1 (got {})", k);
  TopK r;
  r.ids = order_desc(lp, static_cast<size_t>(k));
  std::vector<bool> listed(lp.size(), false);
  for (int32_t id : r.ids) {
    r.lp.push_back(static_cast<float>(lp[id]));
    listed[id] = true;
  }
  // The rest mass is summed directly over the unlisted ids rather than as 1 - sum(top), which
  // would cancel catastrophically when the top ids hold nearly all of the mass.
  std::vector<double> rest;
  for (size_t i = 0; i < lp.size(); ++i)
    if (!listed[i]) rest.push_back(lp[i]);
  r.rest_lp = static_cast<float>(logsumexp(rest));
  return r;
}

double kl_topk(const TopK& ref, std::span<const double> model_lp) {
  std::vector<bool> listed(model_lp.size(), false);
  double kl = 0;
  for (size_t j = 0; j < ref.ids.size(); ++j) {
    const int32_t id = ref.ids[j];
    if (id < 0 || static_cast<size_t>(id) >= model_lp.size())
      fail("reference token id {} is outside the model's vocabulary ({})", id, model_lp.size());
    listed[id] = true;
    const double lp = ref.lp[j];
    kl += std::exp(lp) * (lp - model_lp[id]);
  }
  std::vector<double> rest;
  for (size_t i = 0; i < model_lp.size(); ++i)
    if (!listed[i]) rest.push_back(model_lp[i]);
  const double rest_ref = ref.rest_lp;
  if (std::isfinite(rest_ref)) kl += std::exp(rest_ref) * (rest_ref - logsumexp(rest));
  return std::max(0.0, kl);
}

std::vector<int32_t> nucleus(std::span<const double> lp, double p) {
  std::vector<int32_t> out;
  // The nucleus is short for any useful p; sort in growing prefixes instead of the whole vocab.
  for (size_t n = 64;; n *= 4) {
    const auto idx = order_desc(lp, n);
    double mass = 0;
    for (int32_t id : idx) {
      out.push_back(id);
      mass += std::exp(lp[id]);
      if (mass >= p) {
        std::sort(out.begin(), out.end());
        return out;
      }
    }
    if (idx.size() == lp.size()) {  // rounding left the total just below p: all ids
      std::sort(out.begin(), out.end());
      return out;
    }
    out.clear();
  }
}

std::vector<int32_t> nucleus(const TopK& ref, double p) {
  std::vector<int32_t> out;
  double mass = 0;
  for (size_t j = 0; j < ref.ids.size(); ++j) {
    out.push_back(ref.ids[j]);
    mass += std::exp(static_cast<double>(ref.lp[j]));
    if (mass >= p) {
      std::sort(out.begin(), out.end());
      return out;
    }
  }
  return {};
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = std::clamp(q, 0.0, 1.0) * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  const double f = pos - static_cast<double>(lo);
  return v[lo] + (v[hi] - v[lo]) * f;
}

}  // namespace ds4::quality
