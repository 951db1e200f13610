// Tool calls over HTTP with typed (non-string) parameters, many seeds, every API; a malformed
// block after a call start voids the call; Responses reasoning summaries, custom and namespace
// tools.
#include <fstream>
#include <random>

#include "server/generation.h"
#include "server/server_context.h"
#include "server_test_util.h"
#include "synth/demo_model.h"

namespace {

const json kUser = json::array({{{"role", "user"}, {"content", "Plan the trip."}}});
const json kParams = {{"type", "object"},
                      {"properties",
                       {{"days", {{"type", "integer"}}},
                        {"budget", {{"type", "number"}}},
                        {"flexible", {{"type", "boolean"}}},
                        {"prefs", {{"type", "object"}}},
                        {"stops", {{"type", "array"}}},
                        {"note", {{"type", json::array({"integer", "null"})}}},
                        {"city", {{"type", "string"}}}}},
                      {"required", json::array({"days", "budget", "flexible", "prefs", "stops", "note", "city"})}};

bool has_type(const json& v, const json& type) {
  if (type.is_array()) {
    for (const auto& t : type)
      if (has_type(v, t)) return true;
    return false;
  }
  const std::string n = type;
  if (n == "integer") return v.is_number_integer();
  if (n == "number") return v.is_number();
  if (n == "boolean") return v.is_boolean();
  if (n == "null") return v.is_null();
  if (n == "object") return v.is_object();
  if (n == "array") return v.is_array();
  return v.is_string();
}

void expect_typed(const std::string& arguments, const std::string& context) {
  json args;
  ASSERT_NO_THROW(args = json::parse(arguments)) << context << ": " << arguments;
  ASSERT_TRUE(args.is_object()) << context;
  EXPECT_EQ(args.size(), kParams["required"].size()) << context << ": " << arguments;
  for (auto it = args.begin(); it != args.end(); ++it) {
    ASSERT_TRUE(kParams["properties"].contains(it.key())) << context << ": " << it.key();
    EXPECT_TRUE(has_type(it.value(), kParams["properties"][it.key()]["type"]))
        << context << ": " << it.key() << " = " << it.value().dump();
  }
}

class ToolsJson : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server = new TestServer(); }
  static void TearDownTestSuite() { delete server; }
  static TestServer* server;
};
TestServer* ToolsJson::server = nullptr;

TEST_F(ToolsJson, ForcedCallsHaveTypedJsonArgumentsOverManySeeds) {
  auto c = server->client();
  const json tools = json::array({{{"type", "function"}, {"function", {{"name", "plan"}, {"parameters", kParams}}}}});
  const json anth_tools = json::array({{{"name", "plan"}, {"input_schema", kParams}}});
  const uint64_t base = std::random_device{}();
  for (int i = 0; i < 24; ++i) {
    const uint64_t seed = base + static_cast<uint64_t>(i);
    // Small limits cut values (the guide completes them), large ones let the model end them.
    const int max_tokens = 60 + static_cast<int>(seed % 4) * 80;
    const std::string ctx = "seed " + std::to_string(seed) + " max_tokens " + std::to_string(max_tokens);
    const bool stream = i % 2 == 1;
    if (i % 3 != 2) {
      const json body = {{"messages", kUser}, {"max_tokens", max_tokens}, {"seed", seed}, {"stream", stream},
                         {"reasoning_effort", i % 3 == 0 ? "none" : "high"}, {"tools", tools},
                         {"tool_choice", i % 4 == 0 ? json("required") : json{{"type", "function"}, {"function", {{"name", "plan"}}}}}};
      auto r = c.Post("/v1/chat/completions", body.dump(), "application/json");
      ASSERT_TRUE(r);
      ASSERT_EQ(r->status, 200) << r->body;
      std::string args;
      if (stream) {
        for (const auto& e : sse_payloads(r->body))
          if (!e["choices"].empty() && e["choices"][0]["delta"].contains("tool_calls"))
            args += e["choices"][0]["delta"]["tool_calls"][0]["function"].value("arguments", "");
      } else {
        const json j = json::parse(r->body);
        ASSERT_EQ(j["choices"][0]["finish_reason"], "tool_calls") << ctx << r->body;
        args = j["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"];
      }
      expect_typed(args, "chat " + ctx);
    } else {
      int status = 0;
      const json j = post_json(c, "/v1/messages",
                               {{"messages", kUser}, {"max_tokens", max_tokens}, {"seed", seed}, {"tools", anth_tools},
                                {"tool_choice", {{"type", "any"}}}},
                               &status);
      ASSERT_EQ(status, 200) << j.dump();
      ASSERT_EQ(j["content"].back()["type"], "tool_use") << ctx << j.dump();
      expect_typed(j["content"].back()["input"].dump(), "anthropic " + ctx);
    }
  }
}

TEST_F(ToolsJson, OddlyTypedRequestFieldsAre400Not500) {
  auto c = server->client();
  int s = 0;
  json j = post_json(c, "/v1/responses", {{"input", "hi"}, {"tools", json::array({{{"type", 5}}})}}, &s);
  EXPECT_EQ(s, 400) << j.dump();
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  j = post_json(c, "/v1/messages", {{"max_tokens", 4}, {"messages", json::array({{{"role", "user"}, {"content", json::array({{{"type", true}}})}}})}}, &s);
  EXPECT_EQ(s, 400) << j.dump();
  EXPECT_EQ(j["type"], "error");
}

TEST(OutputProcessor, MalformedBlockAfterCallStartVoidsTheCall) {
  const auto tok = ds4::synth::byte_tokenizer();
  ds4::server::OutputProcessor p(tok, false, true, {});
  const std::string text =
      "ok\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" string=\"false\">1"
      "</｜DSML｜parameter>\n<｜DSML｜parameter name=\"n\" string=\"false\">[1, 2</｜DSML｜parameter>\n"
      "</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
  std::vector<ds4::server::OutEvent> ev;
  std::vector<int32_t> ids;
  size_t at = 0;
  const std::string m = "｜DSML｜";
  while (at < text.size()) {
    const size_t d = text.find(m, at);
    tok.encode_append(std::string_view(text).substr(at, (d == std::string::npos ? text.size() : d) - at), false, ids);
    if (d == std::string::npos) break;
    ids.push_back(tok.require(m));
    at = d + m.size();
  }
  for (int32_t id : ids) {
    ds4::server::TokenOut t{id, &tok.token_bytes(id), false, nullptr};
    for (auto& e : p.push(t)) ev.push_back(std::move(e));
  }
  for (auto& e : p.finish()) ev.push_back(std::move(e));
  bool started = false, voided = false;
  std::string args, text_out;
  for (const auto& e : ev) {
    using K = ds4::server::OutEvent::Kind;
    if (e.kind == K::CallStart) started = true;
    if (e.kind == K::CallArgs) args += e.text;
    EXPECT_NE(e.kind, K::CallEnd);
    if (e.revoke_from >= 0) {
      voided = true;
      EXPECT_EQ(e.revoke_from, 0);
      EXPECT_NE(e.error.find("not valid JSON"), std::string::npos) << e.error;
    }
    if (e.kind == K::Text) text_out += e.text;
  }
  EXPECT_TRUE(started);
  EXPECT_TRUE(voided);
  EXPECT_EQ(args.find("[1"), std::string::npos) << args;  // the broken value never streamed
  EXPECT_NE(text_out.find("[1, 2"), std::string::npos);    // the block came back as text
  EXPECT_EQ(p.parse_errors.size(), 1u);
}

const json kWeather = {{"type", "object"},
                       {"properties", {{"city", {{"type", "string"}}}}},
                       {"required", json::array({"city"})}};

TEST_F(ToolsJson, ResponsesReasoningSummary) {
  auto c = server->client();
  const json body = {{"input", "hi"}, {"max_output_tokens", 24}, {"seed", 7}, {"stream", true},
                     {"reasoning", {{"effort", "high"}, {"summary", "auto"}}}};
  auto r = c.Post("/v1/responses", body.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  std::string deltas, done_text;
  bool part_added = false;
  for (const auto& e : sse_payloads(r->body)) {
    EXPECT_NE(e["type"], "response.reasoning_text.delta");  // summary replaces reasoning_text
    if (e["type"] == "response.reasoning_summary_part.added") part_added = true;
    if (e["type"] == "response.reasoning_summary_text.delta") {
      EXPECT_EQ(e["summary_index"], 0);
      deltas += e["delta"].get<std::string>();
    }
    if (e["type"] == "response.reasoning_summary_text.done") done_text = e["text"];
  }
  EXPECT_TRUE(part_added);
  ASSERT_FALSE(deltas.empty());
  EXPECT_EQ(deltas, done_text);
  const json last = sse_payloads(r->body).back();
  const json& item = last["response"]["output"][0];
  EXPECT_EQ(item["type"], "reasoning");
  EXPECT_EQ(item["summary"][0]["type"], "summary_text");
  EXPECT_EQ(item["summary"][0]["text"], deltas);
  EXPECT_EQ(last["response"]["reasoning"]["summary"], "auto");
  // Non-streaming: the same item; without summary the reasoning stays reasoning_text content.
  json nb = body;
  nb["stream"] = false;
  int s = 0;
  json j = post_json(c, "/v1/responses", nb, &s);
  ASSERT_EQ(s, 200);
  ASSERT_EQ(j["output"][0]["type"], "reasoning") << j.dump();
  EXPECT_EQ(j["output"][0]["summary"][0]["type"], "summary_text");
  EXPECT_TRUE(j["output"][0]["summary"][0]["text"].is_string());
  EXPECT_FALSE(j["output"][0].contains("content"));
  nb["reasoning"] = {{"effort", "high"}};
  j = post_json(c, "/v1/responses", nb, &s);
  ASSERT_EQ(s, 200);
  ASSERT_EQ(j["output"][0]["type"], "reasoning") << j.dump();
  EXPECT_TRUE(j["output"][0]["summary"].empty());
  EXPECT_EQ(j["output"][0]["content"][0]["type"], "reasoning_text");
  nb["reasoning"] = {{"summary", "brief"}};
  j = post_json(c, "/v1/responses", nb, &s);
  EXPECT_EQ(s, 400);
  EXPECT_EQ(j["error"]["param"], "reasoning.summary");
}

TEST_F(ToolsJson, ResponsesCustomAndNamespaceTools) {
  auto c = server->client();
  const json tools = json::array(
      {{{"type", "custom"}, {"name", "apply_patch"}, {"description", "Apply a patch"},
        {"format", {{"type", "grammar"}, {"syntax", "lark"}, {"definition", "start: /.+/"}}}},
       {{"type", "namespace"}, {"name", "weather"}, {"description", "Weather tools"},
        {"tools", json::array({{{"type", "function"}, {"name", "get"}, {"parameters", kWeather}}})}}});
  // Forced custom tool, streaming: a custom_tool_call item with text input.
  json body = {{"input", "fix it"}, {"max_output_tokens", 120}, {"stream", true}, {"tools", tools},
               {"reasoning", {{"effort", "none"}}}, {"tool_choice", {{"type", "custom"}, {"name", "apply_patch"}}}};
  auto r = c.Post("/v1/responses", body.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  std::string delta, done;
  bool args_events = false;
  for (const auto& e : sse_payloads(r->body)) {
    if (e["type"] == "response.custom_tool_call_input.delta") delta += e["delta"].get<std::string>();
    if (e["type"] == "response.custom_tool_call_input.done") done = e["input"];
    if (e["type"] == "response.function_call_arguments.delta") args_events = true;
  }
  EXPECT_FALSE(args_events);
  EXPECT_EQ(delta, done);
  const json out = sse_payloads(r->body).back()["response"]["output"];
  const json& call = out.back();
  EXPECT_EQ(call["type"], "custom_tool_call") << out.dump();
  EXPECT_EQ(call["name"], "apply_patch");
  EXPECT_TRUE(call["input"].is_string());
  EXPECT_EQ(call["input"], done);
  EXPECT_EQ(call["call_id"].get<std::string>().rfind("call_", 0), 0u);
  // Forced namespaced function, non-streaming: name and namespace come back split.
  body["stream"] = false;
  body["tool_choice"] = {{"type", "function"}, {"name", "get"}, {"namespace", "weather"}};
  int s = 0;
  json j = post_json(c, "/v1/responses", body, &s);
  ASSERT_EQ(s, 200) << j.dump();
  EXPECT_EQ(j["output"].back()["type"], "function_call");
  EXPECT_EQ(j["output"].back()["name"], "get");
  EXPECT_EQ(j["output"].back()["namespace"], "weather");
  EXPECT_TRUE(json::parse(j["output"].back()["arguments"].get<std::string>()).contains("city"));
  // Replaying both calls and their outputs is accepted.
  json input = json::array({{{"role", "user"}, {"content", "fix it"}},
                            {{"type", "custom_tool_call"}, {"call_id", call["call_id"]}, {"name", "apply_patch"}, {"input", call["input"]}},
                            {{"type", "custom_tool_call_output"}, {"call_id", call["call_id"]}, {"output", "applied"}},
                            {{"type", "function_call"}, {"call_id", "call_x"}, {"name", "get"}, {"namespace", "weather"},
                             {"arguments", "{\"city\": \"Oslo\"}"}},
                            {{"type", "function_call_output"}, {"call_id", "call_x"}, {"output", "sunny"}}});
  j = post_json(c, "/v1/responses", {{"input", input}, {"tools", tools}, {"max_output_tokens", 2}}, &s);
  EXPECT_EQ(s, 200) << j.dump();
}

}  // namespace

namespace {

TEST(ToolMemoryJournal, SurvivesRestartAndStopsAtDamage) {
  const fs::path dir = test_dir() / "toolmem";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "tool-memory.bin").string();
  std::vector<std::string> logs;
  auto log = [&](const std::string& l) { logs.push_back(l); };
  static const char kA[] = "\n\n<｜DSML｜tool_calls>\xff\x00 a";  // any bytes, NUL included
  const std::string bytes_a(kA, sizeof kA - 1);
  {
    ds4::server::ToolMemory m(100, 1 << 20);
    EXPECT_EQ(m.attach(path, log), 0u);
    m.put({"call_a", "call_b"}, bytes_a);
    m.put({"call_c"}, "second");
    m.put({"call_d"}, "third");
  }
  {
    ds4::server::ToolMemory m(100, 1 << 20);
    EXPECT_EQ(m.attach(path, log), 3u);
    EXPECT_EQ(m.get({"call_a", "call_b"}), bytes_a);
    EXPECT_EQ(m.get({"call_c"}), "second");
    EXPECT_FALSE(m.get({"call_b"}));  // ids must match the whole turn
  }
  EXPECT_TRUE(logs.empty());
  // Damage the last record: the turns before it survive, the damage is logged.
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('\x55');
  }
  {
    ds4::server::ToolMemory m(100, 1 << 20);
    EXPECT_EQ(m.attach(path, log), 2u);
    EXPECT_EQ(m.get({"call_c"}), "second");
    EXPECT_FALSE(m.get({"call_d"}));
  }
  ASSERT_EQ(logs.size(), 1u);
  EXPECT_NE(logs[0].find("damaged"), std::string::npos);
  // The damaged file was rewritten intact; a foreign file is ignored the same way.
  {
    ds4::server::ToolMemory m(100, 1 << 20);
    EXPECT_EQ(m.attach(path, log), 2u);
  }
  {
    std::ofstream(path, std::ios::binary) << "not a journal";
    ds4::server::ToolMemory m(100, 1 << 20);
    EXPECT_EQ(m.attach(path, log), 0u);
    m.put({"call_e"}, "after");
  }
  ds4::server::ToolMemory m(100, 1 << 20);
  EXPECT_EQ(m.attach(path, log), 1u);
  EXPECT_EQ(m.get({"call_e"}), "after");
}

}  // namespace
