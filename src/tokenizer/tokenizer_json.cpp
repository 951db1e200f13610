// Loading from a Hugging Face tokenizer.json (model.type "BPE", byte-level). The
// pre-tokenizer is not interpreted: DwarfStar implements DeepSeek's joyai-llm passes
// (pretokenizer.cpp) and this loader checks that the file's Split passes are those.
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/v4_tokens.h"

namespace ds4::tok {
namespace {

using nlohmann::json;

// The file's pre-tokenizer must be three Split passes followed by ByteLevel(use_regex=false):
// anything else would be tokenized differently by our fixed implementation.
void check_pre_tokenizer(const json& pre) {
  if (!pre.is_object() || pre.value("type", "") != "Sequence" || !pre.contains("pretokenizers"))
    fail("tokenizer.json: unsupported pre_tokenizer (expected DeepSeek's Sequence of Split passes)");
  const json& seq = pre["pretokenizers"];
  int splits = 0;
  for (const json& p : seq) {
    std::string type = p.value("type", "");
    if (type == "Split") {
      ++splits;
    } else if (type == "ByteLevel") {
      if (p.value("use_regex", true)) fail("tokenizer.json: ByteLevel pre-tokenizer with use_regex is not DeepSeek's");
    } else {
      fail("tokenizer.json: unsupported pre-tokenizer step {}", type);
    }
  }
  if (splits != 3) fail("tokenizer.json: expected 3 Split pre-tokenizer passes, found {}", splits);
  const std::string first = seq[0]["pattern"].value("Regex", "");
  if (first != "\\p{N}{1,3}") fail("tokenizer.json: first split pattern {} is not DeepSeek's digit pass", first);
}

std::string to_bytes(const std::string& byte_level, const char* what) {
  auto b = byte_level_to_bytes(byte_level);
  if (!b) fail("tokenizer.json: {} '{}' is not in the byte-level alphabet", what, byte_level);
  return *b;
}

}  // namespace

Tokenizer Tokenizer::from_tokenizer_json_text(std::string_view text, const JsonLoadOptions& opt) {
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail("tokenizer.json: not valid JSON: {}", e.what());
  }
  try {
    const json& model = j.at("model");
    if (model.value("type", "") != "BPE") fail("tokenizer.json: model type must be BPE");
    if (model.contains("byte_fallback") && model["byte_fallback"].is_boolean() && model["byte_fallback"].get<bool>())
      fail("tokenizer.json: byte_fallback BPE is not supported");
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      const json& n = j["normalizer"];
      bool empty_seq = n.value("type", "") == "Sequence" && n.contains("normalizers") && n["normalizers"].empty();
      if (!empty_seq) fail("tokenizer.json: normalizers are not supported (DeepSeek has none)");
    }
    check_pre_tokenizer(j.at("pre_tokenizer"));

    std::vector<TokenInfo> tokens;
    auto place = [&](int64_t id, TokenInfo t) {
      if (id < 0 || id > (1 << 24)) fail("tokenizer.json: token id {} out of range", id);
      if (static_cast<size_t>(id) >= tokens.size()) tokens.resize(id + 1, TokenInfo{"", TokenType::Unused});
      tokens[id] = std::move(t);
    };
    // The model vocabulary repeats the added tokens under their text; those entries are not
    // byte-level strings and the added_tokens table describes them.
    std::unordered_map<int64_t, bool> added_ids;
    if (j.contains("added_tokens")) {
      for (const json& a : j["added_tokens"]) {
        int64_t id = a.at("id").get<int64_t>();
        bool special = a.value("special", false);
        added_ids[id] = special;
        place(id, TokenInfo{a.at("content").get<std::string>(), special ? TokenType::Control : TokenType::UserDefined});
      }
    }
    for (const auto& [key, val] : model.at("vocab").items()) {
      int64_t id = val.get<int64_t>();
      if (added_ids.count(id)) continue;
      place(id, TokenInfo{to_bytes(key, "token"), TokenType::Normal});
    }
    if (opt.complete_v4_vocab) {
      if (tokens.size() > static_cast<size_t>(kV4VocabSize))
        fail("tokenizer.json: {} tokens, more than DeepSeek V4's {}", tokens.size(), kV4VocabSize);
      tokens.resize(kV4VocabSize, TokenInfo{"", TokenType::Unused});
      for (int32_t id = kV3AddedEnd; id < kV4VocabSize; ++id) {
        if (tokens[id].type != TokenType::Unused) continue;  // the file knows better
        AddedTokenSpec s = v4_added_token(id);
        tokens[id] = TokenInfo{s.content, s.special ? TokenType::Control : TokenType::UserDefined};
      }
    }

    // Merges, as "left right" strings (classic) or [left, right] pairs (tokenizers >= 0.20).
    std::unordered_map<std::string, int32_t> by_text;
    by_text.reserve(model["vocab"].size());
    for (const auto& [key, val] : model["vocab"].items()) by_text.emplace(key, val.get<int32_t>());
    std::vector<std::pair<int32_t, int32_t>> merges;
    merges.reserve(model.at("merges").size());
    auto lookup = [&](const std::string& s) {
      auto it = by_text.find(s);
      if (it == by_text.end()) fail("tokenizer.json: merge refers to unknown token '{}'", s);
      return it->second;
    };
    for (const json& m : model["merges"]) {
      if (m.is_string()) {
        const std::string& s = m.get_ref<const std::string&>();
        size_t sp = s.find(' ');
        if (sp == std::string::npos || sp == 0 || sp + 1 >= s.size()) fail("tokenizer.json: malformed merge '{}'", s);
        merges.emplace_back(lookup(s.substr(0, sp)), lookup(s.substr(sp + 1)));
      } else if (m.is_array() && m.size() == 2) {
        merges.emplace_back(lookup(m[0].get<std::string>()), lookup(m[1].get<std::string>()));
      } else {
        fail("tokenizer.json: malformed merge entry");
      }
    }
    return Tokenizer(std::move(tokens), merges);
  } catch (const json::exception& e) {
    fail("tokenizer.json: unexpected structure: {}", e.what());
  }
}

Tokenizer Tokenizer::from_tokenizer_json(const std::string& path, const JsonLoadOptions& opt) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open tokenizer file {}", path);
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return from_tokenizer_json_text(ss.str(), opt);
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
}

}  // namespace ds4::tok
