// Server-side steering of the output structure, between the sampler and the session:
//  - a reasoning budget: after `budget` reasoning tokens the server writes </think> itself
//    (peer-ds4.md section 7, theme 4: models that think forever);
//  - forced tool calls (tool_choice "required" or a named tool): the server writes the DSML
//    structure (opening, invoke header, parameter headers, closing tags) and the model samples
//    only the tool name choice (by its logits) and the parameter values. The call is therefore
//    always well-formed, whatever the model (even a random one) samples.
// The engine asks before each step which tokens the server writes (`next_forced`), and shows
// every sampled token to `intercept`, which may replace it with forced tokens (a special token
// or an over-long value inside a forced parameter ends the value).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace ds4::tok {
class Tokenizer;
}

namespace ds4::server {

struct ForcedParam {
  std::string name;
  bool is_string = true;  // string="true": raw text; else a JSON value
};
struct ForcedTool {
  std::string name;
  std::vector<ForcedParam> params;  // the schema's required properties, in schema order
};
struct ForcedCall {
  std::vector<ForcedTool> tools;  // one: a named tool; several: "required" (the model picks)
};

class CallGuide {
 public:
  CallGuide(const tok::Tokenizer& tok, bool thinking, int64_t reasoning_budget,
            std::optional<ForcedCall> forced, int64_t max_tokens);

  // Tokens the server writes now, before sampling (empty: the model samples). `logits` are the
  // current next-token logits (used to let the model choose among forced tool names).
  std::vector<int32_t> next_forced(std::span<const float> logits, int64_t generated);
  // Called with each sampled token; returns forced tokens that replace it (empty: keep it).
  std::vector<int32_t> intercept(int32_t token, int64_t generated);
  // Every token that enters the output, sampled or forced, in order.
  void observe(int32_t token);
  // The structure is complete: generation ends here (no EOS needed).
  bool done() const { return stage_ == Stage::Done; }
  // Inside a forced call that must still be closed (the token limit does not cut it).
  bool in_forced_call() const;
  // Closing tokens for the current forced call, used when the token limit is reached.
  std::vector<int32_t> close_now();

 private:
  enum class Stage { Reasoning, Content, ChooseName, ParamHeader, Value, Done, Free };
  std::vector<int32_t> encode(const std::string& dsml_text) const;
  std::vector<int32_t> after_value();

  const tok::Tokenizer* tok_;
  int32_t think_end_, dsml_;
  int64_t budget_;
  std::optional<ForcedCall> forced_;
  int64_t max_tokens_;
  Stage stage_;
  int64_t reasoning_ = 0;
  const ForcedTool* tool_ = nullptr;
  size_t param_ = 0;
  int64_t value_tokens_ = 0;
  int64_t value_cap_ = 0;
  std::string value_tail_;  // last bytes of the current value (to see a model-written "</")
};

}  // namespace ds4::server
