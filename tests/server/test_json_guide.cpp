// JSON values in tool calls: the byte-level JSON grammar (json_guide.h) against nlohmann's parser
// on fresh random inputs, the call guide driving a random "model" (forced and auto calls, byte
// and real tokenizers, many seeds: every call's arguments parse and have the declared types),
// and DSML parser edge cases (numbers, nested objects, quotes/newlines, invalid UTF-8).
#include <gtest/gtest.h>

#include <deque>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "chat/dsml_parser.h"
#include "generate/sampler.h"
#include "server/call_guide.h"
#include "server/json_guide.h"
#include "synth/demo_model.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/vocab_fixture.h"

namespace {

using ds4::server::JsonGuide;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
namespace srv = ds4::server;

// ---------------------------------------------------------------- random JSON text generator

std::string ws(std::mt19937_64& rng) {
  static const char* kWs[] = {"", "", "", " ", "\n", "  ", "\t", "\r\n "};
  return kWs[rng() % 8];
}

std::string gen_string(std::mt19937_64& rng) {
  static const char* kPieces[] = {"a", "Z", " ", "\\\"", "\\\\", "\\/", "\\n", "\\t", "\\b", "\\f", "\\r",
                                  "\\u0041", "\\u00e9", "\\ud83d\\ude00", "\\uD834\\uDD1E", "é", "日本", "😀",
                                  "<", "</", "'", "{", "]", "\x7f", "\\u0000"};
  std::string s = "\"";
  const int n = static_cast<int>(rng() % 6);
  for (int i = 0; i < n; ++i) s += kPieces[rng() % (sizeof kPieces / sizeof *kPieces)];
  return s + "\"";
}

std::string gen_number(std::mt19937_64& rng, bool integer) {
  std::string s;
  if (rng() % 3 == 0) s += '-';
  if (rng() % 4 == 0) s += '0';
  else {
    s += static_cast<char>('1' + rng() % 9);
    for (int i = static_cast<int>(rng() % 4); i > 0; --i) s += static_cast<char>('0' + rng() % 10);
  }
  if (integer) return s;
  if (rng() % 2) {
    s += '.';
    for (int i = 1 + static_cast<int>(rng() % 3); i > 0; --i) s += static_cast<char>('0' + rng() % 10);
  }
  if (rng() % 3 == 0) {
    s += "eE"[rng() % 2];
    if (rng() % 2) s += "+-"[rng() % 2];
    for (int i = 1 + static_cast<int>(rng() % 2); i > 0; --i) s += static_cast<char>('0' + rng() % 10);
  }
  return s;
}

std::string gen_value(std::mt19937_64& rng, int depth) {
  const int pick = static_cast<int>(rng() % (depth >= 4 ? 5 : 7));
  switch (pick) {
    case 0: return "null";
    case 1: return rng() % 2 ? "true" : "false";
    case 2: return gen_number(rng, rng() % 2);
    case 3:
    case 4: return gen_string(rng);
    case 5: {
      std::string s = "[" + ws(rng);
      const int n = static_cast<int>(rng() % 4);
      for (int i = 0; i < n; ++i) s += (i ? "," + ws(rng) : "") + gen_value(rng, depth + 1) + ws(rng);
      return s + "]";
    }
    default: {
      std::string s = "{" + ws(rng);
      const int n = static_cast<int>(rng() % 4);
      for (int i = 0; i < n; ++i)
        s += (i ? "," + ws(rng) : "") + gen_string(rng) + ws(rng) + ":" + ws(rng) + gen_value(rng, depth + 1) + ws(rng);
      return s + "}";
    }
  }
}

bool guide_accepts_whole(const std::string& s, uint8_t kinds = srv::kJsonAny) {
  JsonGuide g(kinds);
  return g.feed(s) && g.complete();
}

// Numbers the guide refuses on purpose (json_guide.h): exponents over 2 digits, long integers.
bool beyond_number_limits(const std::string& s) {
  size_t run = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] >= '0' && s[i] <= '9') {
      if (++run > 18) return true;
      if (run > 2 && i >= run && (s[i - run] == 'e' || s[i - run] == 'E' || s[i - run] == '+' || s[i - run] == '-'))
        return true;
    } else {
      run = 0;
    }
  }
  return false;
}

bool has_outer_ws(const std::string& s) {
  auto w = [](char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; };
  return !s.empty() && (w(s.front()) || w(s.back()));
}

TEST(JsonGuide, AcceptsRandomValidJsonInAnySplit) {
  std::mt19937_64 rng(std::random_device{}());
  for (int it = 0; it < 3000; ++it) {
    const std::string v = gen_value(rng, 0);
    ASSERT_TRUE(json::accept(v)) << v;  // the generator writes JSON
    JsonGuide g;
    size_t at = 0;
    while (at < v.size()) {
      const size_t n = 1 + rng() % 5;
      ASSERT_TRUE(g.feed(std::string_view(v).substr(at, n))) << v << " at " << at;
      at += n;
    }
    EXPECT_TRUE(g.complete()) << v;
    EXPECT_EQ(g.completion(), "") << v;
  }
}

TEST(JsonGuide, AgreesWithNlohmannOnMutatedText) {
  std::mt19937_64 rng(std::random_device{}());
  static const char kBytes[] = "{}[]\",:\\ 0123456789.eE+-truefalsnul\x01\n\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80\xed\xa0\x80\xffu";
  int agree_valid = 0, agree_invalid = 0;
  for (int it = 0; it < 20000; ++it) {
    std::string m = gen_value(rng, 0);
    for (int k = 1 + static_cast<int>(rng() % 2); k > 0; --k) {
      const size_t pos = rng() % (m.size() + 1);
      const char b = kBytes[rng() % (sizeof kBytes - 1)];
      switch (rng() % 3) {
        case 0: m.insert(m.begin() + static_cast<std::ptrdiff_t>(pos), b); break;
        case 1: if (pos < m.size()) m[pos] = b; break;
        default: if (pos < m.size()) m.erase(pos, 1);
      }
    }
    const bool ref = json::accept(m);
    const bool ours = guide_accepts_whole(m);
    if (ours) {
      EXPECT_TRUE(ref) << "guide accepted invalid JSON: " << m;
    }
    if (ref && !has_outer_ws(m) && !beyond_number_limits(m)) {
      EXPECT_TRUE(ours) << "guide rejected valid JSON: " << m;
    }
    (ref ? agree_valid : agree_invalid) += ours == ref;
    // Every prefix the guide accepts can be completed into valid JSON.
    JsonGuide g;
    for (size_t i = 0; i < m.size(); ++i) {
      if (!g.feed(std::string_view(m).substr(i, 1))) break;
      const std::string done = m.substr(0, i + 1) + g.completion();
      ASSERT_TRUE(json::accept(done)) << "prefix " << m.substr(0, i + 1) << " completed as " << done;
      ASSERT_TRUE(guide_accepts_whole(done)) << done;
    }
  }
  EXPECT_GT(agree_valid, 1000);  // the mutations cover both outcomes
  EXPECT_GT(agree_invalid, 1000);
}

TEST(JsonGuide, DeclaredKindsAtTheTop) {
  using namespace srv;
  EXPECT_TRUE(guide_accepts_whole("-12", kJsonInteger));
  EXPECT_FALSE(guide_accepts_whole("1.5", kJsonInteger));
  EXPECT_FALSE(guide_accepts_whole("1e3", kJsonInteger));
  EXPECT_TRUE(guide_accepts_whole("1.5e-3", kJsonNumber));
  EXPECT_FALSE(guide_accepts_whole("true", kJsonNumber));
  EXPECT_TRUE(guide_accepts_whole("false", kJsonBool));
  EXPECT_FALSE(guide_accepts_whole("null", kJsonBool));
  EXPECT_TRUE(guide_accepts_whole("null", kJsonBool | kJsonNull));
  EXPECT_TRUE(guide_accepts_whole("{\"a\": [1.5, \"x\"]}", kJsonObject));  // nested values: any kind
  EXPECT_FALSE(guide_accepts_whole("[1]", kJsonObject));
  EXPECT_TRUE(guide_accepts_whole("[]", kJsonArray));
  EXPECT_FALSE(guide_accepts_whole("\"s\"", kJsonArray));
  EXPECT_FALSE(guide_accepts_whole(" 1", kJsonAny));  // no whitespace around the top value
  EXPECT_FALSE(guide_accepts_whole("1 ", kJsonAny));
  EXPECT_FALSE(guide_accepts_whole("\"\\ud800\"", kJsonAny));  // lone surrogate
  EXPECT_FALSE(guide_accepts_whole("\"\\udc00\"", kJsonAny));
  EXPECT_TRUE(guide_accepts_whole("\"\\ud800\\udc00\"", kJsonAny));
  EXPECT_FALSE(guide_accepts_whole("\"\xc0\xaf\"", kJsonAny));  // overlong UTF-8
  EXPECT_FALSE(guide_accepts_whole("\"\xed\xa0\x80\"", kJsonAny));  // encoded surrogate
  // Completions are of an allowed kind and as short as that kind allows.
  EXPECT_EQ(JsonGuide(kJsonInteger).completion(), "0");
  EXPECT_EQ(JsonGuide(kJsonBool).completion(), "false");
  EXPECT_EQ(JsonGuide(kJsonNull).completion(), "null");
  EXPECT_EQ(JsonGuide(kJsonObject).completion(), "{}");
  JsonGuide g(kJsonObject);
  ASSERT_TRUE(g.feed("{\"k\": [1, {\"x\": \"\\ud83d"));
  EXPECT_EQ(g.completion(), "\\udc00\"}]}");
  JsonGuide u(kJsonArray);
  ASSERT_TRUE(u.feed("[\"\xe6"));  // a character cut after its first byte
  EXPECT_TRUE(json::accept("[\"\xe6" + u.completion()));
  // Nesting is bounded.
  JsonGuide deep;
  EXPECT_TRUE(deep.feed(std::string(JsonGuide::kMaxDepth, '[')));
  EXPECT_FALSE(deep.feed("["));
  EXPECT_EQ(deep.completion(), std::string(JsonGuide::kMaxDepth, ']'));
}

TEST(JsonGuide, KindsFromSchemas) {
  using namespace srv;
  EXPECT_EQ(json_kinds_of_schema(ojson{{"type", "integer"}}), kJsonInteger);
  EXPECT_EQ(json_kinds_of_schema(ojson{{"type", "number"}}), kJsonNumber | kJsonInteger);
  EXPECT_EQ(json_kinds_of_schema(ojson{{"type", ojson::array({"boolean", "null"})}}), kJsonBool | kJsonNull);
  EXPECT_EQ(json_kinds_of_schema(ojson{{"enum", ojson::array({1, 2})}}), kJsonInteger);
  EXPECT_EQ(json_kinds_of_schema(ojson{{"anyOf", ojson::array()}}), kJsonAny);
  EXPECT_EQ(json_kinds_of_schema(ojson{{"type", "weird"}}), kJsonAny);
}

// ---------------------------------------------------------------- the guide driving a random model

const ojson kSchema = {{"type", "object"},
                       {"properties",
                        {{"count", {{"type", "integer"}}},
                         {"ratio", {{"type", "number"}}},
                         {"flag", {{"type", "boolean"}}},
                         {"nothing", {{"type", "null"}}},
                         {"opts", {{"type", "object"}}},
                         {"list", {{"type", "array"}}},
                         {"maybe", {{"type", ojson::array({"integer", "null"})}}},
                         {"name", {{"type", "string"}}}}},
                       {"required", ojson::array({"count", "ratio", "flag", "nothing", "opts", "list", "maybe", "name"})}};

bool has_type(const json& v, const ojson& schema) {
  const ojson& t = schema["type"];
  auto one = [&](const std::string& n) {
    if (n == "integer") return v.is_number_integer();
    if (n == "number") return v.is_number();
    if (n == "boolean") return v.is_boolean();
    if (n == "null") return v.is_null();
    if (n == "object") return v.is_object();
    if (n == "array") return v.is_array();
    if (n == "string") return v.is_string();
    return false;
  };
  if (t.is_string()) return one(t.get<std::string>());
  for (const auto& n : t)
    if (one(n.get<std::string>())) return true;
  return false;
}

srv::ForcedTool forced_tool() {
  srv::ForcedTool t;
  t.name = "probe";
  for (const auto& n : kSchema["required"]) {
    const ojson& s = kSchema["properties"][n.get<std::string>()];
    t.params.push_back({n.get<std::string>(), s["type"] == "string", srv::json_kinds_of_schema(s)});
  }
  return t;
}

srv::ParamKinds kinds_map() {
  srv::ParamKinds k;
  for (auto it = kSchema["properties"].begin(); it != kSchema["properties"].end(); ++it)
    k["probe"][it.key()] = srv::json_kinds_of_schema(it.value());
  return k;
}

std::vector<int32_t> dsml_tokens(const ds4::tok::Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> out;
  const std::string m = "｜DSML｜";
  size_t at = 0;
  while (at < text.size()) {
    const size_t p = text.find(m, at);
    tok.encode_append(std::string_view(text).substr(at, (p == std::string::npos ? text.size() : p) - at), false, out);
    if (p == std::string::npos) break;
    out.push_back(tok.require(m));
    at = p + m.size();
  }
  return out;
}

// The engine's decode loop (engine.cpp) over random logits. `script`: tokens the "model" writes
// itself whenever the guide is not inside a JSON value (auto-mode calls); `value_len`: random
// tokens it writes inside a value before it sends an end-of-turn token.
std::string drive(const ds4::tok::Tokenizer& tok, srv::CallGuide& g, uint64_t seed, int64_t max_tokens,
                  std::deque<int32_t> script = {}, int value_len = 1 << 30) {
  ds4::gen::SamplingParams sp;
  sp.min_p = 0;
  sp.seed = seed;
  ds4::gen::Sampler sampler(sp);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 3.f);
  std::vector<float> logits(static_cast<size_t>(tok.vocab_size())), masked;
  std::deque<int32_t> pending;
  std::string out;
  int64_t generated = 0;
  int in_value = 0;
  const bool scripted = value_len < (1 << 30);
  for (;;) {
    for (auto& l : logits) l = nd(rng);
    if (pending.empty()) {
      if (g.done()) break;
      if (scripted && !g.in_json_value() && script.empty()) break;
      if (generated >= max_tokens) {
        if (!g.in_forced_call()) break;
        for (int32_t t : g.close_now()) pending.push_back(t);
        if (pending.empty()) break;
      }
    }
    if (pending.empty())
      for (int32_t t : g.next_forced(logits, generated)) pending.push_back(t);
    int32_t token;
    if (!pending.empty()) {
      token = pending.front();
      pending.pop_front();
    } else {
      if (scripted && !g.in_json_value()) {
        token = script.front();
        script.pop_front();
        in_value = 0;
      } else if (scripted && ++in_value > value_len) {
        token = tok.eos_id();  // the model ends its turn inside the value
      } else {
        token = sampler.sample(logits);
        if (!g.allows(token)) {
          masked = logits;
          g.mask(masked);
          token = sampler.sample(masked);
        }
      }
      const auto repl = g.intercept(token, generated);
      if (!repl.empty()) {
        for (int32_t t : repl) pending.push_back(t);
        continue;
      }
      if (token == tok.eos_id()) break;
    }
    g.observe(token);
    out += tok.token_bytes(token);
    ++generated;
  }
  return out;
}

void expect_typed_call(const std::string& text, const std::string& context) {
  const auto parsed = ds4::chat::parse_assistant_output(ds4::tok::sanitize_utf8(text), false);
  ASSERT_TRUE(parsed.errors.empty()) << context << ": " << parsed.errors[0] << "\n" << text;
  ASSERT_EQ(parsed.tool_calls.size(), 1u) << context << "\n" << text;
  json args;
  ASSERT_NO_THROW(args = json::parse(parsed.tool_calls[0].arguments)) << context << ": " << parsed.tool_calls[0].arguments;
  for (auto it = args.begin(); it != args.end(); ++it) {
    ASSERT_TRUE(kSchema["properties"].contains(it.key())) << it.key();
    EXPECT_TRUE(has_type(it.value(), kSchema["properties"][it.key()]))
        << context << ": " << it.key() << " = " << it.value().dump() << " in " << parsed.tool_calls[0].arguments;
  }
}

void forced_calls(const ds4::tok::Tokenizer& tok, int seeds) {
  const uint64_t base = std::random_device{}();
  for (int i = 0; i < seeds; ++i) {
    const uint64_t seed = base + static_cast<uint64_t>(i);
    // Small limits cut values short (completion path), large ones let values end by themselves.
    const int64_t limit = 40 + static_cast<int64_t>(seed % 5) * 60;
    srv::CallGuide g(tok, false, -1, srv::ForcedCall{{forced_tool()}}, limit);
    const std::string out = drive(tok, g, seed, limit);
    ASSERT_TRUE(g.done()) << "seed " << seed;
    ASSERT_NO_FATAL_FAILURE(expect_typed_call(out, "seed " + std::to_string(seed) + " limit " + std::to_string(limit)));
    // Every required parameter is there, even when the limit cut the call short.
    const auto parsed = ds4::chat::parse_assistant_output(ds4::tok::sanitize_utf8(out), false);
    EXPECT_EQ(json::parse(parsed.tool_calls[0].arguments).size(), kSchema["required"].size()) << out;
  }
}

TEST(CallGuideJson, ForcedCallsTypedByteTokenizer) { forced_calls(ds4::synth::byte_tokenizer(), 300); }

TEST(CallGuideJson, ForcedCallsTypedRealTokenizer) {
  DS4_REQUIRE_TOKENIZER_JSON();
  forced_calls(ds4::test::v4_tokenizer(), 6);
}

void auto_calls(const ds4::tok::Tokenizer& tok, int seeds) {
  const auto kinds = kinds_map();
  const uint64_t base = std::random_device{}();
  for (int i = 0; i < seeds; ++i) {
    const uint64_t seed = base + static_cast<uint64_t>(i);
    // The model writes the structure itself; each string="false" value is sampled at random
    // under the guide and ended by an end-of-turn token after a few tokens.
    std::string s = "Let me check.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"probe\">\n";
    const char* names[] = {"count", "ratio", "flag", "nothing", "opts", "list", "maybe"};
    std::vector<std::string> parts;
    for (const char* n : names) parts.push_back(std::string("<｜DSML｜parameter name=\"") + n + "\" string=\"false\">");
    // The guide writes each closing parameter tag; the model writes the rest.
    std::deque<int32_t> flat;
    for (size_t k = 0; k < parts.size(); ++k)
      for (int32_t t : dsml_tokens(tok, (k ? "\n" : s) + parts[k])) flat.push_back(t);
    for (int32_t t : dsml_tokens(tok, "\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>")) flat.push_back(t);
    srv::CallGuide g(tok, false, -1, std::nullopt, 1 << 20, &kinds);
    const std::string out = drive(tok, g, seed, 1 << 20, flat, 1 + static_cast<int>(seed % 12));
    ASSERT_NO_FATAL_FAILURE(expect_typed_call(out, "auto seed " + std::to_string(seed)));
  }
}

TEST(CallGuideJson, AutoCallsTypedByteTokenizer) { auto_calls(ds4::synth::byte_tokenizer(), 300); }

TEST(CallGuideJson, AutoCallsTypedRealTokenizer) {
  DS4_REQUIRE_TOKENIZER_JSON();
  auto_calls(ds4::test::v4_tokenizer(), 5);
}

TEST(CallGuideJson, AutoModeMasksOnlyInsideValues) {
  const auto tok = ds4::synth::byte_tokenizer();
  const auto kinds = kinds_map();
  srv::CallGuide g(tok, false, -1, std::nullopt, 1000, &kinds);
  const int32_t a = tok.require("a"), one = tok.require("1"), dot = tok.require(".");
  EXPECT_TRUE(g.allows(a));
  for (int32_t t : dsml_tokens(tok, "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"probe\">\n<｜DSML｜parameter name=\"count\" string=\"false\">")) {
    EXPECT_TRUE(g.intercept(t, 0).empty());
    g.observe(t);
  }
  ASSERT_TRUE(g.in_json_value());
  EXPECT_FALSE(g.allows(a));
  EXPECT_FALSE(g.allows(dot));  // integer
  EXPECT_FALSE(g.allows(tok.eos_id()));
  EXPECT_TRUE(g.allows(one));
  g.observe(one);
  EXPECT_TRUE(g.allows(a));  // complete: anything may come, a non-digit closes the value
  const auto close = g.intercept(a, 0);
  EXPECT_EQ(tok.decode(close), "</｜DSML｜parameter>");
  EXPECT_FALSE(g.in_json_value());
  // A string="true" parameter is not guided.
  for (int32_t t : dsml_tokens(tok, "\n<｜DSML｜parameter name=\"name\" string=\"true\">")) g.observe(t);
  EXPECT_FALSE(g.in_json_value());
  EXPECT_TRUE(g.allows(a));
}

// ---------------------------------------------------------------- DSML parser edge cases

std::string call_text(const std::string& params) {
  return "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n" + params + "</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
}
std::string param(const std::string& name, const std::string& value, bool str) {
  return "<｜DSML｜parameter name=\"" + name + "\" string=\"" + (str ? "true" : "false") + "\">" + value +
         "</｜DSML｜parameter>\n";
}

// Parses in random pieces (as tokens arrive) and returns the events' calls and errors.
ds4::chat::ParsedAssistant parse_split(const std::string& text, std::mt19937_64& rng) {
  ds4::chat::DsmlStreamParser p(false);
  std::vector<ds4::chat::DsmlEvent> ev;
  size_t at = 0;
  while (at < text.size()) {
    const size_t n = 1 + rng() % 4;
    for (auto& e : p.feed(std::string_view(text).substr(at, n))) ev.push_back(std::move(e));
    at += n;
  }
  for (auto& e : p.finish()) ev.push_back(std::move(e));
  ds4::chat::ParsedAssistant out;
  std::string streamed;
  for (auto& e : ev) {
    if (e.kind == ds4::chat::DsmlEvent::Kind::CallArgs) streamed += e.text;
    if (e.kind == ds4::chat::DsmlEvent::Kind::CallEnd) {
      EXPECT_EQ(streamed, e.text);  // the streamed deltas add up to the final arguments
      streamed.clear();
      out.tool_calls.push_back({"", e.name, e.text});
    }
    if (e.kind == ds4::chat::DsmlEvent::Kind::Error) out.errors.push_back(e.text);
  }
  return out;
}

TEST(DsmlParserJson, EdgeCases) {
  std::mt19937_64 rng(std::random_device{}());
  struct Case {
    std::string params;
    bool ok;
    json expect;
  };
  const std::vector<Case> cases = {
      {param("n", "-0.5e+3", false) + param("i", "12", false), true, {{"n", -500.0}, {"i", 12}}},
      {param("o", "{\"a\": [1, {\"b\": null}], \"c\": \"x\\\"y\"}", false), true,
       {{"o", {{"a", {1, {{"b", nullptr}}}}, {"c", "x\"y"}}}}},
      {param("s", "say \"hi\"\nline 2\t\\ end", true), true, {{"s", "say \"hi\"\nline 2\t\\ end"}}},
      {param("s", "caf\xc3\xa9 \xff\xfe bad", true), true, {{"s", "caf\xc3\xa9 \xef\xbf\xbd\xef\xbf\xbd bad"}}},
      {param("s", "日本語 😀", true), true, {{"s", "日本語 😀"}}},
      {param("b", "true", false) + param("z", "null", false), true, {{"b", true}, {"z", nullptr}}},
      {param("n", "01", false), false, {}},
      {param("n", "1.", false), false, {}},
      {param("n", "{\"a\": 1", false), false, {}},
      {param("n", "\"\xff\"", false), false, {}},
      {param("n", "", false), false, {}},
      {param("n", "True", false), false, {}},
  };
  for (const auto& c : cases) {
    for (int rep = 0; rep < 20; ++rep) {
      const std::string text = call_text(c.params);
      const auto r = parse_split(text, rng);
      if (!c.ok) {
        EXPECT_FALSE(r.errors.empty()) << c.params;
        EXPECT_TRUE(r.tool_calls.empty()) << c.params;
        continue;
      }
      ASSERT_TRUE(r.errors.empty()) << r.errors[0] << " in " << c.params;
      ASSERT_EQ(r.tool_calls.size(), 1u);
      json args;
      ASSERT_NO_THROW(args = json::parse(r.tool_calls[0].arguments)) << r.tool_calls[0].arguments;
      EXPECT_EQ(args, c.expect) << r.tool_calls[0].arguments;
    }
  }
}

TEST(DsmlParserJson, InvalidNonStringValueStreamsNothingOfIt) {
  // The call was announced, but no byte of the broken value reached the arguments stream.
  ds4::chat::DsmlStreamParser p(false);
  std::string args;
  int first_call = -2;
  for (auto& e : p.feed(call_text(param("a", "1", false) + param("n", "[1, 2", false)))) {
    if (e.kind == ds4::chat::DsmlEvent::Kind::CallArgs) args += e.text;
    if (e.kind == ds4::chat::DsmlEvent::Kind::Error) first_call = e.first_call;
  }
  EXPECT_EQ(args, "{\"a\": 1, \"n\": ");
  EXPECT_EQ(first_call, 0);  // call 0 was announced: the server must void it
}

}  // namespace
