// Generator helpers that need no model (the model-driven tests are in tests/cli).
#include <gtest/gtest.h>

#include "generate/generator.h"

namespace {

TEST(GeneratorHelpers, CommonPrefix) {
  const std::vector<int32_t> a{0, 5, 6, 7}, b{0, 5, 9}, c{};
  EXPECT_EQ(ds4::gen::common_prefix(a, b), 2u);
  EXPECT_EQ(ds4::gen::common_prefix(a, a), 4u);
  EXPECT_EQ(ds4::gen::common_prefix(a, c), 0u);
  EXPECT_EQ(ds4::gen::common_prefix(std::vector<int32_t>{0, 5}, a), 2u);
}

TEST(GeneratorHelpers, FinishReasonsHaveNames) {
  using ds4::gen::FinishReason;
  for (auto r : {FinishReason::StopToken, FinishReason::StopString, FinishReason::MaxTokens,
                 FinishReason::ContextFull, FinishReason::Cancelled})
    EXPECT_STRNE(ds4::gen::finish_reason_name(r), "?");
}

TEST(GeneratorHelpers, SpeedsAreZeroWithoutTime) {
  ds4::gen::GenerateResult r;
  r.prompt_tokens = 10;
  EXPECT_EQ(r.prefill_tokens_per_s(), 0.0);
  EXPECT_EQ(r.decode_tokens_per_s(), 0.0);
  r.prefill_seconds = 2;
  r.reused_tokens = 4;
  EXPECT_DOUBLE_EQ(r.prefill_tokens_per_s(), 3.0);
}

}  // namespace
