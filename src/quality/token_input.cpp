#include "quality/token_input.h"

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "gguf/gguf.h"
#include "tokenizer/gguf_vocab.h"

namespace ds4::quality {

std::vector<int32_t> read_token_file(const std::string& spec) {
  const std::string path = !spec.empty() && spec[0] == '@' ? spec.substr(1) : spec;
  std::ifstream f(path);
  if (!f) fail("cannot open token file {}", path);
  std::vector<int32_t> out;
  std::string w;
  while (f >> w) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(w.c_str(), &end, 10);
    if (errno != 0 || end != w.c_str() + w.size() || v < 0 || v > INT32_MAX)
      fail("{}: '{}' (word {}) is not a token id", path, w, out.size() + 1);
    out.push_back(static_cast<int32_t>(v));
  }
  if (out.empty()) fail("{}: no token ids", path);
  return out;
}

std::vector<int32_t> tokenize_text_file(const gguf::File& model, const std::string& path) {
  if (!model.has("tokenizer.ggml.tokens"))
    fail("{} has no tokenizer (no tokenizer.ggml.tokens); pass the token ids with --tokens @FILE",
         model.path());
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open text file {}", path);
  std::stringstream ss;
  ss << f.rdbuf();
  const tok::Tokenizer t = tok::tokenizer_from_gguf(model);
  return t.encode(ss.str(), false);
}

}  // namespace ds4::quality
