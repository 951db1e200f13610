#include "server/ids.h"

#include <openssl/rand.h>

#include <cstdint>

#include "core/error.h"

namespace ds4::server {

std::string random_id(std::string_view prefix) {
  static constexpr char kAlphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  unsigned char bytes[24];
  if (RAND_bytes(bytes, sizeof bytes) != 1) fail("OpenSSL RAND_bytes failed");
  std::string id(prefix);
  // 24 characters of base62 (~143 bits); the modulo bias of 256 % 62 is irrelevant at this size.
  for (unsigned char b : bytes) id += kAlphabet[b % 62];
  return id;
}

}  // namespace ds4::server
