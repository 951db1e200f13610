// JSON text exactly as Python's json.dumps(value, ensure_ascii=False) writes it: separators
// ", " and ": ", non-ASCII characters unescaped. The official chat encoder serializes tool
// schemas and non-string tool arguments this way, so the prompt must too.
#pragma once

#include <string>

#include "chat/conversation.h"

namespace ds4::chat {

std::string py_dumps(const Json& v);

// JSON string literal of `s` (quotes included) with Python's escaping; bytes that are not
// valid UTF-8 are passed through unchanged (streaming fragments may end mid-character).
std::string py_quote(std::string_view s);
// The same escaping without the surrounding quotes.
void py_escape_append(std::string& out, std::string_view s);

}  // namespace ds4::chat
