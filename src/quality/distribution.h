// The statistics of one position's next-token distribution that ds4-quality reports
// (docs/quality.md): log-softmax, KL divergence from a full or a top-K reference, the top-p
// nucleus, and percentiles over positions. All sums are in double: a vocabulary of 129,280
// terms in float loses the small KL values that distinguish q8 from bf16.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace ds4::quality {

// out[i] = logits[i] - logsumexp(logits).
void log_softmax(std::span<const float> logits, std::span<double> out);

// Index of the largest value; the lowest index wins ties (deterministic across runs).
int32_t argmax(std::span<const double> lp);

// KL(ref || model) = sum_i p_i (log p_i - log q_i) over the whole vocabulary.
double kl_full(std::span<const double> ref_lp, std::span<const double> model_lp);

// A top-K summary of a reference distribution: the K most likely ids (descending log-prob,
// lowest id first on ties) and the log of the mass of every other id.
struct TopK {
  std::vector<int32_t> ids;
  std::vector<float> lp;
  float rest_lp = 0;  // log(1 - sum exp(lp)), -inf when the K ids hold all the mass
};
TopK top_k(std::span<const double> lp, int32_t k);

// KL(ref || model) with the vocabulary coarsened into K+1 buckets: the K listed ids and one
// "rest" bucket (the reference's rest mass against the model's mass outside the K ids). By the
// log-sum inequality each merged bucket contributes at most the sum of its members' terms, so
// this is a lower bound of kl_full; the gap is the reference's rest mass times the KL between
// the two distributions restricted to the rest (docs/quality.md).
double kl_topk(const TopK& ref, std::span<const double> model_lp);

// The top-p nucleus: the fewest most-likely ids whose probabilities sum to >= p (descending
// order, lowest id first on ties), returned sorted by id so two nuclei compare with ==.
std::vector<int32_t> nucleus(std::span<const double> lp, double p);
// The same from a top-K summary; empty when the K listed ids do not reach p (undefined).
std::vector<int32_t> nucleus(const TopK& ref, double p);

// The q-quantile (q in [0, 1]) of `v` by linear interpolation between closest ranks (numpy's
// default); 0 for an empty vector. Sorts a copy.
double percentile(std::vector<double> v, double q);

}  // namespace ds4::quality
