#include "model/decisions.h"

namespace ds4::model::detail {

DecisionScope& decision_scope() {
  thread_local DecisionScope scope;
  return scope;
}

}  // namespace ds4::model::detail
