#include "chat/dsml_parser.h"

#include <map>
#include <optional>
#include <set>

#include "chat/py_json.h"
#include "tokenizer/stream_decoder.h"

namespace ds4::chat {
namespace {

constexpr std::string_view kThinkEnd = "</think>";
constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
constexpr std::string_view kBlockOpen = "<｜DSML｜tool_calls>";
constexpr std::string_view kBlockClose = "</｜DSML｜tool_calls>";
constexpr std::string_view kInvokeOpen = "<｜DSML｜invoke";
constexpr std::string_view kInvokeClose = "</｜DSML｜invoke>";
constexpr std::string_view kParamOpen = "<｜DSML｜parameter";
constexpr std::string_view kParamClose = "</｜DSML｜parameter>";
constexpr size_t kMaxHeader = 4096;  // a tag header longer than this is not a tag

// Length of the longest proper prefix of `m` that `s` ends with: bytes to hold back.
size_t partial_suffix(std::string_view s, std::string_view m) {
  for (size_t k = std::min(s.size(), m.size() - 1); k > 0; --k)
    if (s.substr(s.size() - k) == m.substr(0, k)) return k;
  return 0;
}

DsmlEvent make_event(DsmlEvent::Kind k, std::string text) {
  DsmlEvent e;
  e.kind = k;
  e.text = std::move(text);
  return e;
}

bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

enum class Prefix { Full, Partial, No };
Prefix starts(std::string_view s, std::string_view m) {
  if (s.size() >= m.size()) return s.substr(0, m.size()) == m ? Prefix::Full : Prefix::No;
  return m.substr(0, s.size()) == s ? Prefix::Partial : Prefix::No;
}

// ` name="x" string="true"` -> {name: x, string: true}; nullopt when not of that shape.
std::optional<std::map<std::string, std::string>> parse_attrs(std::string_view h) {
  std::map<std::string, std::string> attrs;
  size_t i = 0;
  for (;;) {
    while (i < h.size() && is_ws(h[i])) ++i;
    if (i == h.size()) return attrs;
    size_t k = i;
    while (i < h.size() && (std::isalnum(static_cast<unsigned char>(h[i])) || h[i] == '_')) ++i;
    if (i == k || i + 1 >= h.size() || h[i] != '=' || h[i + 1] != '"') return std::nullopt;
    std::string key(h.substr(k, i - k));
    i += 2;
    size_t end = h.find('"', i);
    if (end == std::string_view::npos) return std::nullopt;
    if (!attrs.emplace(key, std::string(h.substr(i, end - i))).second) return std::nullopt;
    i = end + 1;
  }
}

// Length of a trailing UTF-8 sequence that is incomplete but could still become valid.
size_t incomplete_utf8_tail(std::string_view s) {
  for (size_t k = 1; k <= 3 && k <= s.size(); ++k) {
    const auto c = static_cast<unsigned char>(s[s.size() - k]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
    const size_t need = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 1;
    return need > k ? k : 0;
  }
  return 0;
}

}  // namespace

DsmlStreamParser::DsmlStreamParser(bool thinking) : state_(thinking ? State::Reasoning : State::Content) {}

void DsmlStreamParser::error(std::vector<DsmlEvent>& ev, std::string what) {
  DsmlEvent e = make_event(DsmlEvent::Kind::Error, std::move(what));
  e.index = call_index_;
  e.first_call = call_index_ >= block_first_call_ ? block_first_call_ : -1;
  // The raw report is what the block consumed; the unconsumed rest flows on as text, so
  // text + raw + text reproduces the output whatever the split of the input.
  e.raw = std::move(block_raw_);
  ev.push_back(std::move(e));
  block_raw_.clear();
  state_ = State::Failed;
}

std::vector<DsmlEvent> DsmlStreamParser::feed(std::string_view piece) {
  std::vector<DsmlEvent> ev;
  buf_.append(piece);
  while (step(ev)) {
  }
  return ev;
}

std::vector<DsmlEvent> DsmlStreamParser::finish() {
  std::vector<DsmlEvent> ev;
  eof_ = true;
  while (step(ev)) {
  }
  return ev;
}

bool DsmlStreamParser::step(std::vector<DsmlEvent>& ev) {
  using K = DsmlEvent::Kind;
  auto emit = [&](K k, std::string text) {
    if (text.empty()) return;
    // Merge consecutive deltas of the same kind within one feed.
    if (!ev.empty() && ev.back().kind == k && (k == K::Text || k == K::Reasoning || k == K::CallArgs) &&
        ev.back().index == (k == K::CallArgs ? call_index_ : -1)) {
      ev.back().text += text;
      return;
    }
    DsmlEvent e = make_event(k, std::move(text));
    if (k == K::CallArgs) e.index = call_index_;
    ev.push_back(std::move(e));
  };
  auto consume = [&](size_t n) {
    block_raw_.append(buf_, 0, n);
    buf_.erase(0, n);
  };
  auto skip_ws = [&] {
    size_t n = 0;
    while (n < buf_.size() && is_ws(buf_[n])) ++n;
    consume(n);
  };
  auto args = [&](std::string s) {
    call_args_ += s;
    emit(K::CallArgs, std::move(s));
  };

  switch (state_) {
    case State::Reasoning: {
      size_t p = buf_.find(kThinkEnd);
      if (p != std::string::npos) {
        emit(K::Reasoning, buf_.substr(0, p));
        buf_.erase(0, p + kThinkEnd.size());
        state_ = State::Content;
        return true;
      }
      size_t hold = eof_ ? 0 : partial_suffix(buf_, kThinkEnd);
      emit(K::Reasoning, buf_.substr(0, buf_.size() - hold));
      buf_.erase(0, buf_.size() - hold);
      return false;
    }

    case State::Content: {
      size_t open = buf_.find(kBlockOpen), eos = buf_.find(kEos);
      if (open != std::string::npos && (eos == std::string::npos || open < eos)) {
        // The rendered format puts "\n\n" before the block; it is not part of the content.
        size_t end = open;
        for (int k = 0; k < 2 && end > 0 && buf_[end - 1] == '\n'; ++k) --end;
        emit(K::Text, buf_.substr(0, end));
        buf_.erase(0, open);
        block_raw_.clear();
        consume(kBlockOpen.size());
        block_first_call_ = call_index_ + 1;
        state_ = State::BlockOpen;
        return true;
      }
      if (eos != std::string::npos) {
        emit(K::Text, buf_.substr(0, eos));
        buf_.erase(0, eos + kEos.size());
        block_raw_.clear();
        state_ = State::AfterBlock;
        return true;
      }
      size_t hold = 0;
      if (!eof_) {
        hold = std::max({partial_suffix(buf_, std::string("\n\n").append(kBlockOpen)),
                         partial_suffix(buf_, kBlockOpen), partial_suffix(buf_, kEos)});
      }
      emit(K::Text, buf_.substr(0, buf_.size() - hold));
      buf_.erase(0, buf_.size() - hold);
      return false;
    }

    case State::BlockOpen:
      state_ = State::Invoke;
      return true;

    case State::Invoke: {
      skip_ws();
      if (buf_.empty()) {
        if (eof_) error(ev, "tool-call block ended before </｜DSML｜tool_calls>");
        return false;
      }
      Prefix inv = starts(buf_, kInvokeOpen), end = starts(buf_, kBlockClose);
      if (inv == Prefix::Full) {
        consume(kInvokeOpen.size());
        state_ = State::InvokeHeader;
        return true;
      }
      if (end == Prefix::Full) {
        consume(kBlockClose.size());
        block_raw_.clear();
        state_ = State::AfterBlock;
        return true;
      }
      if ((inv == Prefix::Partial || end == Prefix::Partial) && !eof_) return false;
      error(ev, "expected <｜DSML｜invoke or </｜DSML｜tool_calls> in the tool-call block");
      return true;
    }

    case State::InvokeHeader:
    case State::ParamHeader: {
      bool invoke = state_ == State::InvokeHeader;
      size_t gt = buf_.find('>');
      if (gt == std::string::npos) {
        if (eof_) error(ev, "tool-call block ended inside a tag");
        else if (buf_.size() > kMaxHeader) error(ev, "unterminated DSML tag");
        return false;
      }
      auto attrs = parse_attrs(std::string_view(buf_).substr(0, gt));
      if (!attrs || !attrs->count("name") || (*attrs)["name"].empty()) {
        error(ev, invoke ? "malformed <｜DSML｜invoke> tag (expected name=\"...\")"
                         : "malformed <｜DSML｜parameter> tag (expected name=\"...\")");
        return true;
      }
      // Names go into JSON text: bytes that are not UTF-8 must not.
      std::string name = tok::sanitize_utf8((*attrs)["name"]);
      if (invoke) {
        if (attrs->size() != 1) {
          error(ev, "unexpected attribute in <｜DSML｜invoke> tag");
          return true;
        }
        consume(gt + 1);
        ++call_index_;
        call_name_ = name;
        call_args_.clear();
        first_param_ = true;
        param_names_.clear();
        DsmlEvent e = make_event(K::CallStart, "");
        e.index = call_index_;
        e.name = call_name_;
        ev.push_back(std::move(e));
        args("{");
        state_ = State::Params;
        return true;
      }
      auto str = attrs->find("string");
      if (str == attrs->end() || (str->second != "true" && str->second != "false") || attrs->size() != 2) {
        error(ev, "parameter '" + name + "': expected string=\"true\" or string=\"false\"");
        return true;
      }
      if (!param_names_.insert(name).second) {
        error(ev, "duplicate parameter '" + name + "' in call to " + call_name_);
        return true;
      }
      consume(gt + 1);
      param_is_string_ = str->second == "true";
      param_value_.clear();
      utf8_hold_.clear();
      args((first_param_ ? "" : ", ") + py_quote(name) + ": " + (param_is_string_ ? "\"" : ""));
      first_param_ = false;
      state_ = State::ParamValue;
      return true;
    }

    case State::Params: {
      skip_ws();
      if (buf_.empty()) {
        if (eof_) error(ev, "tool-call block ended inside an invoke");
        return false;
      }
      Prefix par = starts(buf_, kParamOpen), end = starts(buf_, kInvokeClose);
      if (par == Prefix::Full) {
        consume(kParamOpen.size());
        state_ = State::ParamHeader;
        return true;
      }
      if (end == Prefix::Full) {
        consume(kInvokeClose.size());
        args("}");
        DsmlEvent e = make_event(K::CallEnd, call_args_);
        e.index = call_index_;
        e.name = call_name_;
        ev.push_back(std::move(e));
        state_ = State::Invoke;
        return true;
      }
      if ((par == Prefix::Partial || end == Prefix::Partial) && !eof_) return false;
      error(ev, "expected <｜DSML｜parameter or </｜DSML｜invoke> in call to " + call_name_);
      return true;
    }

    case State::ParamValue: {
      size_t close = buf_.find(kParamClose);
      size_t take = close != std::string::npos ? close : buf_.size() - (eof_ ? 0 : partial_suffix(buf_, kParamClose));
      std::string value = buf_.substr(0, take);
      consume(take);
      if (param_is_string_) {
        // A character split between pieces waits for its last byte; invalid bytes become U+FFFD.
        value.insert(0, utf8_hold_);
        const size_t hold = close == std::string::npos && !eof_ ? incomplete_utf8_tail(value) : 0;
        utf8_hold_ = value.substr(value.size() - hold);
        value.resize(value.size() - hold);
        std::string esc;
        py_escape_append(esc, tok::sanitize_utf8(value));
        args(std::move(esc));
      } else {
        param_value_ += value;
      }
      if (close == std::string::npos) {
        if (eof_) error(ev, "tool-call block ended inside a parameter value");
        return false;
      }
      consume(kParamClose.size());
      if (param_is_string_) {
        args("\"");
      } else if (Json::accept(param_value_)) {
        args(std::move(param_value_));
        param_value_.clear();
      } else {
        error(ev, "parameter value with string=\"false\" is not valid JSON in call to " + call_name_);
        return true;
      }
      state_ = State::Params;
      return true;
    }

    case State::AfterBlock: {
      skip_ws();
      if (starts(buf_, kEos) == Prefix::Full) consume(kEos.size());
      skip_ws();
      if (buf_.empty() || (!eof_ && starts(buf_, kEos) == Prefix::Partial)) return false;
      error(ev, "unexpected text after the tool-call block");
      return true;
    }

    case State::Failed:
      emit(K::Text, buf_);
      buf_.clear();
      return false;
  }
  return false;
}

std::string dsml_arguments_json(const std::vector<std::tuple<std::string, std::string, bool>>& params) {
  std::string s = "{";
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& [name, value, is_string] = params[i];
    if (i) s += ", ";
    s += py_quote(name) + ": " + (is_string ? py_quote(value) : value);
  }
  return s + "}";
}

ParsedAssistant parse_assistant_output(std::string_view text, bool thinking) {
  ParsedAssistant out;
  DsmlStreamParser p(thinking);
  auto events = p.feed(text);
  auto tail = p.finish();
  events.insert(events.end(), tail.begin(), tail.end());
  bool closed_think = !thinking || text.find(kThinkEnd) != std::string_view::npos;
  if (!closed_think) out.errors.push_back("output ended inside <think> (no </think>)");
  for (auto& e : events) {
    switch (e.kind) {
      case DsmlEvent::Kind::Reasoning: out.reasoning += e.text; break;
      case DsmlEvent::Kind::Text: out.content += e.text; break;
      case DsmlEvent::Kind::CallEnd: out.tool_calls.push_back(ToolCall{"", e.name, e.text}); break;
      case DsmlEvent::Kind::Error: out.errors.push_back(e.text); break;
      default: break;
    }
  }
  return out;
}

}  // namespace ds4::chat
