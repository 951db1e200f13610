// Unguessable ids for responses, messages and tool calls. Tool-call ids key the exact-replay
// map (tool_memory.h), so a client must not be able to predict or forge another one: they come
// from OpenSSL's CSPRNG, 128 bits, base62.
#pragma once

#include <string>
#include <string_view>

namespace ds4::server {

std::string random_id(std::string_view prefix);

}  // namespace ds4::server
