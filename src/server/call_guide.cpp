#include "server/call_guide.h"

#include <algorithm>

#include "tokenizer/tokenizer.h"

namespace ds4::server {

namespace {
constexpr std::string_view kDsml = "｜DSML｜";
// Tokens kept for the structure after a forced value: closing tags of the parameter, invoke
// and block, plus the next parameter header.
constexpr int64_t kStructureReserve = 24;
}  // namespace

CallGuide::CallGuide(const tok::Tokenizer& tok, bool thinking, int64_t reasoning_budget,
                     std::optional<ForcedCall> forced, int64_t max_tokens)
    : tok_(&tok), think_end_(tok.require("</think>")), dsml_(tok.require(kDsml)), budget_(reasoning_budget),
      forced_(std::move(forced)), max_tokens_(max_tokens),
      stage_(thinking ? Stage::Reasoning : Stage::Content) {
  if (forced_ && forced_->tools.empty()) forced_.reset();
}

std::vector<int32_t> CallGuide::encode(const std::string& text) const {
  // DSML markers by id, the rest as plain text (never special-matched).
  std::vector<int32_t> out;
  size_t at = 0;
  while (at < text.size()) {
    const size_t m = text.find(kDsml, at);
    const size_t end = m == std::string::npos ? text.size() : m;
    if (end > at) tok_->encode_append(std::string_view(text).substr(at, end - at), false, out);
    if (m == std::string::npos) break;
    out.push_back(dsml_);
    at = m + kDsml.size();
  }
  return out;
}

bool CallGuide::in_forced_call() const {
  return forced_ && (stage_ == Stage::ChooseName || stage_ == Stage::ParamHeader || stage_ == Stage::Value);
}

std::vector<int32_t> CallGuide::next_forced(std::span<const float> logits, int64_t generated) {
  if (stage_ == Stage::Reasoning && budget_ >= 0 && reasoning_ >= budget_) return {think_end_};
  if (stage_ == Stage::Content && forced_) {
    if (forced_->tools.size() == 1) {
      tool_ = &forced_->tools[0];
      stage_ = Stage::ParamHeader;
      return encode("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"" + tool_->name + "\">\n");
    }
    stage_ = Stage::ChooseName;
    return encode("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"");
  }
  if (stage_ == Stage::ChooseName) {
    // The model's choice among the allowed names: the one whose first token it likes best.
    float best = -1e30f;
    for (const ForcedTool& t : forced_->tools) {
      const std::vector<int32_t> ids = encode(t.name);
      const float l = ids.empty() || logits.empty() ? -1e30f : logits[static_cast<size_t>(ids[0])];
      if (!tool_ || l > best) {
        best = l;
        tool_ = &t;
      }
    }
    stage_ = Stage::ParamHeader;
    return encode(tool_->name + "\">\n");
  }
  if (stage_ == Stage::ParamHeader) {
    if (param_ >= tool_->params.size()) {
      stage_ = Stage::Done;
      return encode("</｜DSML｜invoke>\n</｜DSML｜tool_calls>");
    }
    const ForcedParam& p = tool_->params[param_];
    stage_ = Stage::Value;
    value_tokens_ = 0;
    value_tail_.clear();
    // The value gets an even share of what the token limit leaves after the structure.
    const int64_t left = max_tokens_ < 0 ? 1 << 20 : max_tokens_ - generated - kStructureReserve;
    const int64_t params_left = static_cast<int64_t>(tool_->params.size() - param_);
    value_cap_ = std::max<int64_t>(1, left / params_left);
    return encode("<｜DSML｜parameter name=\"" + p.name + "\" string=\"" + (p.is_string ? "true" : "false") + "\">");
  }
  return {};
}

std::vector<int32_t> CallGuide::after_value() {
  ++param_;
  stage_ = Stage::ParamHeader;
  return encode("</｜DSML｜parameter>\n");
}

std::vector<int32_t> CallGuide::intercept(int32_t token, int64_t /*generated*/) {
  // A forced call must happen: an end of turn while still reasoning closes the reasoning instead.
  if (stage_ == Stage::Reasoning && forced_ && tok_->token(token).is_added() && token != think_end_) return {think_end_};
  if (stage_ != Stage::Value) return {};
  if (token == dsml_ && value_tail_.ends_with("</")) {
    // The model closes the value itself: keep its marker, write the rest of the tag.
    ++param_;
    stage_ = Stage::ParamHeader;
    std::vector<int32_t> out = {dsml_};
    tok_->encode_append("parameter>\n", false, out);
    return out;
  }
  if (tok_->token(token).is_added() || value_tokens_ >= value_cap_) return after_value();
  return {};
}

std::vector<int32_t> CallGuide::close_now() {
  std::vector<int32_t> out;
  if (stage_ == Stage::ChooseName) {
    out = next_forced({}, 0);  // no logits: the first allowed tool
  }
  if (stage_ == Stage::Value) {
    out = after_value();
  }
  if (stage_ == Stage::ParamHeader) {
    param_ = tool_->params.size();
    const std::vector<int32_t> tail = next_forced({}, 0);
    out.insert(out.end(), tail.begin(), tail.end());
  }
  return out;
}

void CallGuide::observe(int32_t token) {
  switch (stage_) {
    case Stage::Reasoning:
      if (token == think_end_) stage_ = forced_ ? Stage::Content : Stage::Free;
      else ++reasoning_;
      break;
    case Stage::Value: {
      ++value_tokens_;
      value_tail_ += tok_->token_bytes(token);
      if (value_tail_.size() > 8) value_tail_.erase(0, value_tail_.size() - 8);
      break;
    }
    default: break;
  }
}

}  // namespace ds4::server
