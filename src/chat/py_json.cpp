#include "chat/py_json.h"

#include <fmt/format.h>

namespace ds4::chat {

void py_escape_append(std::string& out, std::string_view s) {
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (u < 0x20) out += fmt::format("\\u{:04x}", u);
        else out += c;
    }
  }
}

std::string py_quote(std::string_view s) {
  std::string out = "\"";
  py_escape_append(out, s);
  out += '"';
  return out;
}

namespace {

void dump(const Json& v, std::string& out) {
  switch (v.type()) {
    case Json::value_t::object: {
      out += '{';
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (!first) out += ", ";
        first = false;
        out += py_quote(it.key());
        out += ": ";
        dump(it.value(), out);
      }
      out += '}';
      break;
    }
    case Json::value_t::array: {
      out += '[';
      bool first = true;
      for (const auto& e : v) {
        if (!first) out += ", ";
        first = false;
        dump(e, out);
      }
      out += ']';
      break;
    }
    case Json::value_t::string:
      out += py_quote(v.get_ref<const std::string&>());
      break;
    case Json::value_t::boolean:
      out += v.get<bool>() ? "true" : "false";
      break;
    case Json::value_t::null:
    case Json::value_t::discarded:
      out += "null";
      break;
    default:  // numbers: nlohmann prints integers exactly and floats shortest-round-trip
      out += v.dump();
  }
}

}  // namespace

std::string py_dumps(const Json& v) {
  std::string out;
  dump(v, out);
  return out;
}

}  // namespace ds4::chat
