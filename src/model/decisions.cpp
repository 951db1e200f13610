#include "model/decisions.h"

#include <algorithm>
#include <memory>

namespace ds4::model {

namespace {

// Copies the record's k choices over ids[0..k) and counts whether the set changed.
void pin(const int32_t* want, int32_t* ids, int64_t k, int64_t* offered, int64_t* changed) {
  std::vector<int32_t> a(ids, ids + k), b(want, want + k);
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  ++*offered;
  if (a != b) ++*changed;
  std::copy_n(want, k, ids);
}

}  // namespace

DecisionHook pin_decisions(const DecisionRecord& rec, PinStats* stats) {
  auto count = std::make_shared<PinStats>();  // when the caller does not ask for stats
  PinStats* st = stats ? stats : count.get();
  DecisionHook h;
  h.experts = [&rec, st, count](int64_t layer, int64_t pos, const float*, int64_t, int32_t* ids, int64_t k) {
    if (!rec.has(pos) || layer >= rec.n_layers || k != rec.n_expert_used) {
      ++st->missing;
      return;
    }
    pin(rec.experts_at(layer, pos), ids, k, &st->experts_offered, &st->experts_changed);
  };
  h.rows = [&rec, st, count](int64_t layer, int64_t pos, const float*, int64_t, int32_t* rows, int64_t k) {
    if (!rec.has(pos) || layer >= rec.n_layers || k != rec.idx_topk || rec.row_count_at(layer, pos) != k) {
      ++st->missing;
      return;
    }
    pin(rec.rows_at(layer, pos), rows, k, &st->rows_offered, &st->rows_changed);
  };
  return h;
}

namespace detail {

DecisionScope& decision_scope() {
  thread_local DecisionScope scope;
  return scope;
}

}  // namespace detail

}  // namespace ds4::model
