#include "server/json_guide.h"

namespace ds4::server {

namespace {

bool is_ws(unsigned char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
bool is_hex(unsigned char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

uint8_t kind_of_name(const std::string& t) {
  if (t == "null") return kJsonNull;
  if (t == "boolean") return kJsonBool;
  if (t == "integer") return kJsonInteger;
  if (t == "number") return kJsonNumber | kJsonInteger;
  if (t == "string") return kJsonString;
  if (t == "object") return kJsonObject;
  if (t == "array") return kJsonArray;
  return 0;
}

uint8_t kind_of_value(const nlohmann::ordered_json& v) {
  if (v.is_null()) return kJsonNull;
  if (v.is_boolean()) return kJsonBool;
  if (v.is_number_integer() || v.is_number_unsigned()) return kJsonInteger;
  if (v.is_number()) return kJsonNumber;
  if (v.is_string()) return kJsonString;
  if (v.is_object()) return kJsonObject;
  return kJsonArray;
}

}  // namespace

uint8_t json_kinds_of_schema(const nlohmann::ordered_json& schema) {
  if (!schema.is_object()) return kJsonAny;
  uint8_t k = 0;
  if (auto c = schema.find("const"); c != schema.end()) return kind_of_value(*c);
  if (auto e = schema.find("enum"); e != schema.end() && e->is_array() && !e->empty()) {
    for (const auto& v : *e) k |= kind_of_value(v);
    return k;
  }
  auto t = schema.find("type");
  if (t == schema.end()) return kJsonAny;
  if (t->is_string()) k = kind_of_name(t->get<std::string>());
  else if (t->is_array())
    for (const auto& n : *t)
      if (n.is_string()) k |= kind_of_name(n.get<std::string>());
  return k ? k : static_cast<uint8_t>(kJsonAny);
}

JsonGuide::JsonGuide(uint8_t kinds) : kinds_(kinds ? kinds : static_cast<uint8_t>(kJsonAny)) {}

bool JsonGuide::number_complete() const { return num_ == Num::Zero || num_ == Num::Int || num_ == Num::Frac || num_ == Num::ExpInt; }

bool JsonGuide::complete() const {
  return mode_ == Mode::Done || (mode_ == Mode::Number && depth_ == 0 && number_complete());
}

void JsonGuide::value_done() { mode_ = depth_ == 0 ? Mode::Done : Mode::After; }

bool JsonGuide::open(char container, Mode next) {
  if (depth_ >= kMaxDepth) return false;
  stack_[depth_++] = container;
  mode_ = next;
  return true;
}

bool JsonGuide::start_value(unsigned char c) {
  const bool top = depth_ == 0;
  auto allowed = [&](uint8_t k) { return !top || (kinds_ & k) != 0; };
  switch (c) {
    case 'n': lit_ = "null"; break;
    case 't': lit_ = "true"; break;
    case 'f': lit_ = "false"; break;
    default: lit_ = nullptr;
  }
  if (lit_) {
    if (!allowed(c == 'n' ? kJsonNull : kJsonBool)) return false;
    mode_ = Mode::Literal;
    lit_pos_ = 1;
    return true;
  }
  if (c == '-' || is_digit(c)) {
    if (!allowed(kJsonInteger | kJsonNumber)) return false;
    int_only_ = top && !(kinds_ & kJsonNumber);
    mode_ = Mode::Number;
    num_ = c == '-' ? Num::Minus : c == '0' ? Num::Zero : Num::Int;
    digits_ = c == '-' ? 0 : 1;
    return true;
  }
  if (c == '"') {
    if (!allowed(kJsonString)) return false;
    mode_ = Mode::String;
    str_ = Str::Normal;
    key_ = false;
    return true;
  }
  if (c == '{') return allowed(kJsonObject) && open('o', Mode::ObjectFirst);
  if (c == '[') return allowed(kJsonArray) && open('a', Mode::ArrayFirst);
  return false;
}

bool JsonGuide::byte(unsigned char c) {
  switch (mode_) {
    case Mode::Done: return false;
    case Mode::Value:
      if (is_ws(c)) return depth_ > 0;
      return start_value(c);
    case Mode::ArrayFirst:
      if (is_ws(c)) return true;
      if (c == ']') {
        --depth_;
        value_done();
        return true;
      }
      return start_value(c);
    case Mode::ObjectFirst:
    case Mode::ObjectKey:
      if (is_ws(c)) return true;
      if (c == '}' && mode_ == Mode::ObjectFirst) {
        --depth_;
        value_done();
        return true;
      }
      if (c != '"') return false;
      mode_ = Mode::String;
      str_ = Str::Normal;
      key_ = true;
      return true;
    case Mode::Colon:
      if (is_ws(c)) return true;
      if (c != ':') return false;
      mode_ = Mode::Value;
      return true;
    case Mode::After: {
      if (is_ws(c)) return true;
      const char top = stack_[depth_ - 1];
      if (c == ',') {
        mode_ = top == 'o' ? Mode::ObjectKey : Mode::Value;
        return true;
      }
      if ((top == 'o' && c == '}') || (top == 'a' && c == ']')) {
        --depth_;
        value_done();
        return true;
      }
      return false;
    }
    case Mode::Literal:
      if (static_cast<unsigned char>(lit_[lit_pos_]) != c) return false;
      if (lit_[++lit_pos_] == '\0') value_done();
      return true;
    case Mode::Number: {
      switch (num_) {
        case Num::Minus:
          if (c == '0') num_ = Num::Zero;
          else if (is_digit(c)) num_ = Num::Int;
          else return false;
          digits_ = 1;
          return true;
        case Num::Zero:
        case Num::Int:
          if (is_digit(c) && num_ == Num::Int) return ++digits_ <= (int_only_ ? kMaxIntDigits : kMaxDigits);
          if (c == '.' && !int_only_) {
            num_ = Num::Dot;
            return true;
          }
          if ((c == 'e' || c == 'E') && !int_only_) {
            num_ = Num::Exp;
            return true;
          }
          break;
        case Num::Dot:
          if (!is_digit(c)) return false;
          num_ = Num::Frac;
          return true;
        case Num::Frac:
          if (is_digit(c)) return true;
          if (c == 'e' || c == 'E') {
            num_ = Num::Exp;
            return true;
          }
          break;
        case Num::Exp:
          if (c == '+' || c == '-') {
            num_ = Num::ExpSign;
            return true;
          }
          [[fallthrough]];
        case Num::ExpSign:
          if (!is_digit(c)) return false;
          num_ = Num::ExpInt;
          digits_ = 1;
          return true;
        case Num::ExpInt:
          if (is_digit(c)) return ++digits_ <= kMaxExpDigits;
          break;
      }
      // Any other byte ends a complete number and belongs to what follows it.
      if (!number_complete()) return false;
      value_done();
      return byte(c);
    }
    case Mode::String:
      switch (str_) {
        case Str::Normal:
          if (c == '"') {
            if (key_) mode_ = Mode::Colon;
            else value_done();
            return true;
          }
          if (c == '\\') {
            str_ = Str::Escape;
            return true;
          }
          if (c < 0x20) return false;  // control characters must be escaped
          if (c < 0x80) return true;
          // UTF-8 lead byte (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF).
          utf8_lo_ = 0x80;
          utf8_hi_ = 0xBF;
          if (c >= 0xC2 && c <= 0xDF) utf8_left_ = 1;
          else if (c >= 0xE0 && c <= 0xEF) {
            utf8_left_ = 2;
            if (c == 0xE0) utf8_lo_ = 0xA0;
            if (c == 0xED) utf8_hi_ = 0x9F;
          } else if (c >= 0xF0 && c <= 0xF4) {
            utf8_left_ = 3;
            if (c == 0xF0) utf8_lo_ = 0x90;
            if (c == 0xF4) utf8_hi_ = 0x8F;
          } else {
            return false;
          }
          str_ = Str::Utf8;
          return true;
        case Str::Utf8:
          if (c < utf8_lo_ || c > utf8_hi_) return false;
          utf8_lo_ = 0x80;
          utf8_hi_ = 0xBF;
          if (--utf8_left_ == 0) str_ = Str::Normal;
          return true;
        case Str::Escape:
          if (c == 'u') {
            str_ = Str::Hex;
            hex_pos_ = 0;
            low_needed_ = false;
            return true;
          }
          if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' && c != 'r' && c != 't') return false;
          str_ = Str::Normal;
          return true;
        case Str::Hex: {
          if (!is_hex(c)) return false;
          const unsigned char lc = static_cast<unsigned char>(c | 0x20);
          if (hex_pos_ == 0) {
            hex_d_ = lc == 'd';
            high_ = false;
            if (low_needed_ && !hex_d_) return false;
          } else if (hex_pos_ == 1 && hex_d_) {
            const bool high = lc == '8' || lc == '9' || lc == 'a' || lc == 'b';
            const bool low = lc >= 'c' && lc <= 'f';
            if (low_needed_ ? !low : low) return false;  // a low surrogate only right after a high one
            high_ = high && !low_needed_;
          } else if (hex_pos_ == 1 && low_needed_) {
            return false;
          }
          if (++hex_pos_ == 4) {
            str_ = high_ ? Str::LowBackslash : Str::Normal;
            low_needed_ = false;
          }
          return true;
        }
        case Str::LowBackslash:
          if (c != '\\') return false;
          str_ = Str::LowU;
          return true;
        case Str::LowU:
          if (c != 'u') return false;
          str_ = Str::Hex;
          hex_pos_ = 0;
          low_needed_ = true;
          high_ = false;
          return true;
      }
      return false;
  }
  return false;
}

bool JsonGuide::feed(std::string_view bytes) {
  JsonGuide next = *this;
  for (char ch : bytes)
    if (!next.byte(static_cast<unsigned char>(ch))) return false;
  next.fed_ += bytes.size();
  *this = next;
  return true;
}

bool JsonGuide::accepts(std::string_view bytes) const {
  JsonGuide next = *this;
  return next.feed(bytes);
}

unsigned char JsonGuide::next_completion_byte() const {
  switch (mode_) {
    case Mode::Value:
      if (depth_ > 0) return '0';
      // The shortest value of an allowed kind.
      if (kinds_ & (kJsonInteger | kJsonNumber)) return '0';
      if (kinds_ & kJsonString) return '"';
      if (kinds_ & kJsonObject) return '{';
      if (kinds_ & kJsonArray) return '[';
      if (kinds_ & kJsonNull) return 'n';
      return 'f';
    case Mode::ArrayFirst: return ']';
    case Mode::ObjectFirst: return '}';
    case Mode::ObjectKey: return '"';
    case Mode::Colon: return ':';
    case Mode::After: return stack_[depth_ - 1] == 'o' ? '}' : ']';
    case Mode::Literal: return static_cast<unsigned char>(lit_[lit_pos_]);
    case Mode::Number:
      if (!number_complete()) return '0';
      return stack_[depth_ - 1] == 'o' ? '}' : ']';  // depth 0 complete numbers never get here
    case Mode::String:
      switch (str_) {
        case Str::Normal: return '"';
        case Str::Utf8: return utf8_lo_;
        case Str::Escape: return 'n';
        case Str::Hex: return low_needed_ && hex_pos_ == 0 ? 'd' : low_needed_ && hex_pos_ == 1 ? 'c' : '0';
        case Str::LowBackslash: return '\\';
        case Str::LowU: return 'u';
      }
      return '"';
    case Mode::Done: return 0;
  }
  return 0;
}

std::string JsonGuide::completion() const {
  std::string out;
  JsonGuide g = *this;
  // Each byte closes a literal, number, escape or container, so this ends within a few bytes
  // per nesting level.
  while (!g.complete()) {
    const unsigned char c = g.next_completion_byte();
    if (!g.byte(c)) break;  // cannot happen: every completion byte is valid by construction
    out += static_cast<char>(c);
  }
  return out;
}

}  // namespace ds4::server
