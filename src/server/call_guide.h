// Server-side steering of the output structure, between the sampler and the session:
//  - a reasoning budget: after `budget` reasoning tokens the server writes </think> itself
//    (peer-ds4.md section 7, theme 4: models that think forever);
//  - forced tool calls (tool_choice "required" or a named tool): the server writes the DSML
//    structure (opening, invoke header, parameter headers, closing tags) and the model samples
//    only the tool name choice (by its logits) and the parameter values. The call is therefore
//    always well-formed, whatever the model (even a random one) samples;
//  - JSON values: a parameter written with string="false" (forced, or written by the model itself
//    in auto mode) is sampled under a JSON grammar (json_guide.h) of the kinds its schema
//    declares: tokens that would break the value are masked out, and a value cut short is
//    completed, so the arguments always parse and have the declared top-level type.
// The engine asks before each step which tokens the server writes (`next_forced`), and shows
// every sampled token to `intercept`, which may replace it with forced tokens (a special token
// or an over-long value inside a forced parameter ends the value).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "server/json_guide.h"

namespace ds4::tok {
class Tokenizer;
}

namespace ds4::server {

struct ForcedParam {
  std::string name;
  bool is_string = true;  // string="true": raw text; else a JSON value
  uint8_t kinds = kJsonAny;  // JsonKind bits the schema allows (JSON values)
};
struct ForcedTool {
  std::string name;
  std::vector<ForcedParam> params;  // the schema's required properties, in schema order
};
struct ForcedCall {
  std::vector<ForcedTool> tools;  // one: a named tool; several: "required" (the model picks)
};
// Declared JSON kinds of every tool parameter: tool name -> parameter name -> JsonKind bits.
using ParamKinds = std::map<std::string, std::map<std::string, uint8_t>>;

class CallGuide {
 public:
  CallGuide(const tok::Tokenizer& tok, bool thinking, int64_t reasoning_budget,
            std::optional<ForcedCall> forced, int64_t max_tokens, const ParamKinds* kinds = nullptr);

  // Tokens the server writes now, before sampling (empty: the model samples). `logits` are the
  // current next-token logits (used to let the model choose among forced tool names).
  std::vector<int32_t> next_forced(std::span<const float> logits, int64_t generated);
  // Whether the model may sample `token` now (false only inside an incomplete JSON value, for
  // tokens that would make it invalid), and the same test applied to a whole logits vector
  // (disallowed tokens get -inf; nothing changes when no token would be allowed).
  bool allows(int32_t token) const;
  void mask(std::span<float> logits) const;
  // Called with each sampled token; returns forced tokens that replace it (empty: keep it).
  std::vector<int32_t> intercept(int32_t token, int64_t generated);
  // Every token that enters the output, sampled or forced, in order.
  void observe(int32_t token);
  // The structure is complete: generation ends here (no EOS needed).
  bool done() const { return stage_ == Stage::Done; }
  // Inside a forced call that must still be closed (the token limit does not cut it).
  bool in_forced_call() const;
  // Inside a JSON (string="false") parameter value, forced or written by the model.
  bool in_json_value() const { return (stage_ == Stage::Value || stage_ == Stage::AutoValue) && json_.has_value(); }
  // Closing tokens for the current forced call, used when the token limit is reached: the
  // current value completed, the remaining required parameters with their shortest values.
  std::vector<int32_t> close_now();

 private:
  // Free: after </think> without a forced call; AutoValue: a string="false" value the model
  // opened itself in Free.
  enum class Stage { Reasoning, Content, ChooseName, ParamHeader, Value, Done, Free, AutoValue };
  std::vector<int32_t> encode(const std::string& dsml_text) const;
  std::vector<int32_t> after_value();
  // Completes the current JSON value and closes its parameter tag.
  std::vector<int32_t> finish_json_value();
  // Free stage: notices a model-written <｜DSML｜invoke name="..."> or string="false" parameter header.
  void track_free_text(const std::string& bytes);

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
  size_t header_left_ = 0;  // tokens of the forced parameter header still to be observed
  std::optional<JsonGuide> json_;  // the current value is JSON (string="false")
  const ParamKinds* kinds_ = nullptr;
  std::string free_tail_;  // last answer bytes in Free (DSML headers written by the model)
  std::string auto_tool_;  // tool of the last model-written invoke header
};

}  // namespace ds4::server
