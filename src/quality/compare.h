// `ds4-quality compare`: a model's distributions against a reference dump, position by
// position (docs/quality.md defines every statistic).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quality/reference.h"
#include "quality/windows.h"

namespace ds4::quality {

// What the reference is compared against. The tokenizer digest must equal the reference's:
// the same ids under another vocabulary would be other text.
struct CompareTarget {
  Digest model{}, tokenizer{};
  // When set (the user also passed --text/--tokens), the stream must be the reference's.
  const std::vector<int32_t>* tokens = nullptr;
};

// Throws with a clear message when the reference cannot be compared with this model.
void check_compatible(const Reference& ref, const CompareTarget& t, int64_t n_vocab);

inline constexpr double kTopP = 0.9;

struct PositionStats {
  int64_t target = 0;
  int32_t token = 0;
  double kl = 0;
  int32_t ref_top = 0, model_top = 0;
  int same_top_p = -1;          // 1 / 0, or -1 when a top-K reference's nucleus exceeds K
  double top_p_jaccard = -1;    // |A n B| / |A u B| of the two nuclei, -1 when undefined
  double delta_top_lp = 0;      // model log p(ref_top) - ref log p(ref_top)
  double ref_nll = 0, model_nll = 0;
};

struct CompareResult {
  std::vector<PositionStats> positions;
  double mean_kl = 0, p90_kl = 0, p99_kl = 0, p999_kl = 0, max_kl = 0;
  double top1_agreement = 0;
  double same_top_p = 0;        // over the positions where it is defined
  int64_t n_top_p = 0;
  // Mean Jaccard overlap of the nuclei: graded where "same" is all-or-nothing (flat
  // distributions, such as the random fixtures', almost never have identical nuclei).
  double top_p_jaccard = 0;
  double mean_abs_delta_top_lp = 0, max_abs_delta_top_lp = 0;
  double ref_ppl = 0, model_ppl = 0, ppl_ratio = 0;
  bool kl_is_bucketed = false;  // top-K reference: lower bound of the full KL
  uint32_t k = 0;
};

CompareResult compare(LogitsSource& model, const Reference& ref);
// The summary statistics of `positions` (also used by tests on hand-made rows).
void summarize(CompareResult& r);

// Reports.
std::string to_json(const CompareResult& r, const Reference& ref, const CompareTarget& t);
std::string to_text(const CompareResult& r);
std::string to_csv(const CompareResult& r);
std::string to_markdown(const CompareResult& r, const std::string& model_name);
// KL by position: a polyline over axes with min/max labels, hand-written SVG.
std::string to_svg(const CompareResult& r, const std::string& title);

}  // namespace ds4::quality
