#include "server/call_guide.h"

#include <algorithm>
#include <limits>

#include "tokenizer/tokenizer.h"

namespace ds4::server {

namespace {
constexpr std::string_view kDsml = "｜DSML｜";
// Tokens kept for the structure after a forced value: closing tags of the parameter, invoke
// and block, plus the next parameter header.
constexpr int64_t kStructureReserve = 24;
constexpr std::string_view kParamHeader = "<｜DSML｜parameter name=\"";
constexpr std::string_view kInvokeHeader = "<｜DSML｜invoke name=\"";
constexpr size_t kFreeTail = 1024;  // longer than any DSML header worth guiding
}  // namespace

CallGuide::CallGuide(const tok::Tokenizer& tok, bool thinking, int64_t reasoning_budget,
                     std::optional<ForcedCall> forced, int64_t max_tokens, const ParamKinds* kinds)
    : tok_(&tok), think_end_(tok.require("</think>")), dsml_(tok.require(kDsml)), budget_(reasoning_budget),
      forced_(std::move(forced)), max_tokens_(max_tokens), stage_(Stage::Reasoning), kinds_(kinds) {
  if (forced_ && forced_->tools.empty()) forced_.reset();
  if (!thinking) stage_ = forced_ ? Stage::Content : Stage::Free;
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
  // A value that nothing can extend (closed object, literal): the server closes it now.
  if (in_json_value() && json_->finished()) return finish_json_value();
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
    if (p.is_string) json_.reset();
    else json_.emplace(p.kinds);
    std::vector<int32_t> header =
        encode("<｜DSML｜parameter name=\"" + p.name + "\" string=\"" + (p.is_string ? "true" : "false") + "\">");
    header_left_ = header.size();  // observed before the value starts: not part of it
    return header;
  }
  return {};
}

std::vector<int32_t> CallGuide::after_value() {
  ++param_;
  stage_ = Stage::ParamHeader;
  return encode("</｜DSML｜parameter>\n");
}

std::vector<int32_t> CallGuide::finish_json_value() {
  // The completion may start with UTF-8 continuation bytes (a character cut by the limit):
  // those go as single-byte tokens, since a BPE pre-tokenizer expects whole characters.
  const std::string tail = json_->completion();
  std::vector<int32_t> out;
  size_t i = 0;
  for (; i < tail.size() && (static_cast<unsigned char>(tail[i]) & 0xC0) == 0x80; ++i)
    if (auto id = tok_->find(tail.substr(i, 1))) out.push_back(*id);
  if (i < tail.size()) tok_->encode_append(std::string_view(tail).substr(i), false, out);
  json_.reset();
  std::vector<int32_t> close;
  if (stage_ == Stage::AutoValue) {
    // The model writes the rest of its call itself.
    stage_ = Stage::Free;
    close = encode("</｜DSML｜parameter>");
  } else {
    close = after_value();
  }
  out.insert(out.end(), close.begin(), close.end());
  return out;
}

bool CallGuide::allows(int32_t token) const {
  if (!in_json_value() || json_->complete()) return true;  // complete: anything else closes it
  if (token < 0 || token >= tok_->vocab_size() || tok_->token(token).is_added()) return false;
  return json_->accepts(tok_->token_bytes(token));
}

void CallGuide::mask(std::span<float> logits) const {
  if (!in_json_value() || json_->complete()) return;
  std::vector<size_t> banned;
  for (size_t i = 0; i < logits.size(); ++i)
    if (!allows(static_cast<int32_t>(i))) banned.push_back(i);
  if (banned.size() == logits.size()) return;  // no token continues it: intercept completes it
  for (size_t i : banned) logits[i] = -std::numeric_limits<float>::infinity();
}

std::vector<int32_t> CallGuide::intercept(int32_t token, int64_t /*generated*/) {
  // A forced call must happen: an end of turn while still reasoning closes the reasoning instead.
  if (stage_ == Stage::Reasoning && forced_ && tok_->token(token).is_added() && token != think_end_) return {think_end_};
  if (in_json_value()) {
    // Keep a token that continues the value (within its share of the limit); anything else
    // ends it: a complete value is closed as is, an incomplete one completed first.
    const bool capped = stage_ == Stage::Value && value_tokens_ >= value_cap_;
    if (!capped && !tok_->token(token).is_added() && json_->accepts(tok_->token_bytes(token))) return {};
    return finish_json_value();
  }
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
  auto add = [&](const std::vector<int32_t>& v) { out.insert(out.end(), v.begin(), v.end()); };
  if (stage_ == Stage::ChooseName) add(next_forced({}, 0));  // no logits: the first allowed tool
  if (stage_ == Stage::Value) add(json_ ? finish_json_value() : after_value());
  if (stage_ == Stage::ParamHeader) {
    // The required parameters not reached get the shortest value of their kind (empty text, 0,
    // false, null, {}, []), so the call still has every parameter its schema requires.
    std::string rest;
    for (; param_ < tool_->params.size(); ++param_) {
      const ForcedParam& p = tool_->params[param_];
      rest += "<｜DSML｜parameter name=\"" + p.name + "\" string=\"" + (p.is_string ? "true" : "false") + "\">" +
              (p.is_string ? std::string() : JsonGuide(p.kinds).completion()) + "</｜DSML｜parameter>\n";
    }
    add(encode(rest));
    add(next_forced({}, 0));  // the closing tags
  }
  return out;
}

void CallGuide::observe(int32_t token) {
  switch (stage_) {
    case Stage::Reasoning:
      if (token == think_end_) stage_ = forced_ ? Stage::Content : Stage::Free;
      else ++reasoning_;
      break;
    case Stage::Value:
    case Stage::AutoValue: {
      if (header_left_ > 0) {
        --header_left_;
        break;
      }
      ++value_tokens_;
      if (json_) {
        json_->feed(tok_->token_bytes(token));
        break;
      }
      value_tail_ += tok_->token_bytes(token);
      if (value_tail_.size() > 8) value_tail_.erase(0, value_tail_.size() - 8);
      break;
    }
    case Stage::Free: track_free_text(tok_->token_bytes(token)); break;
    default: break;
  }
}

void CallGuide::track_free_text(const std::string& bytes) {
  free_tail_ += bytes;
  const size_t keep = std::max(kFreeTail, bytes.size());  // the token itself always stays
  if (free_tail_.size() > 2 * keep) free_tail_.erase(0, free_tail_.size() - keep);
  const size_t gt_in_token = bytes.rfind('>');
  if (gt_in_token == std::string::npos) return;
  const size_t end = free_tail_.size() - (bytes.size() - gt_in_token - 1);  // just after the '>'
  const size_t start = free_tail_.rfind("<｜DSML｜", end - 1);
  if (start == std::string::npos) return;
  const std::string_view head = std::string_view(free_tail_).substr(start, end - start);
  auto quoted = [&](std::string_view prefix, std::string_view suffix) -> std::optional<std::string> {
    if (!head.starts_with(prefix) || !head.ends_with(suffix) || head.size() < prefix.size() + suffix.size())
      return std::nullopt;
    const std::string_view v = head.substr(prefix.size(), head.size() - prefix.size() - suffix.size());
    if (v.find('"') != std::string_view::npos) return std::nullopt;
    return std::string(v);
  };
  if (auto tool = quoted(kInvokeHeader, "\">")) {
    auto_tool_ = *tool;
    return;
  }
  auto param = quoted(kParamHeader, "\" string=\"false\">");
  if (!param) return;
  uint8_t kinds = kJsonAny;
  if (kinds_) {
    if (auto t = kinds_->find(auto_tool_); t != kinds_->end())
      if (auto k = t->second.find(*param); k != t->second.end()) kinds = k->second;
  }
  json_.emplace(kinds);
  value_tokens_ = 0;
  stage_ = Stage::AutoValue;
  // Bytes after the '>' in the same token already belong to the value; if they cannot start
  // one, the value is not guided (the parser still validates it).
  if (!json_->feed(std::string_view(free_tail_).substr(end))) {
    json_.reset();
    stage_ = Stage::Free;
  }
  free_tail_.clear();
}

}  // namespace ds4::server
