// Generation end to end over HTTP: every API streaming and not, tool calls, cache reuse,
// cancellation on disconnect, disk cache across restarts.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>

#include "server/server_context.h"
#include "server_test_util.h"

namespace {

const json kUser = json::array({{{"role", "user"}, {"content", "Hello there, how are you today?"}}});
const json kWeatherTool = {{"type", "function"},
                           {"function",
                            {{"name", "get_weather"},
                             {"description", "Weather of a city"},
                             {"parameters",
                              {{"type", "object"},
                               {"properties", {{"city", {{"type", "string"}}}}},
                               {"required", json::array({"city"})}}}}}};

class Gen : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server = new TestServer(); }
  static void TearDownTestSuite() { delete server; }
  static TestServer* server;
};
TestServer* Gen::server = nullptr;

TEST_F(Gen, ChatNonStreaming) {
  auto c = server->client();
  int status = 0;
  json j = post_json(c, "/v1/chat/completions", {{"messages", kUser}, {"max_tokens", 6}, {"logprobs", true}, {"top_logprobs", 2},
                                                 {"reasoning_effort", "none"}, {"seed", 3}}, &status);
  ASSERT_EQ(status, 200) << j.dump();
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_TRUE(j["choices"][0]["finish_reason"] == "length" || j["choices"][0]["finish_reason"] == "stop");
  EXPECT_LE(j["usage"]["completion_tokens"].get<int>(), 6);
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 10);
  EXPECT_TRUE(j["usage"]["prompt_tokens_details"]["cached_tokens"].is_number());
  EXPECT_TRUE(j["choices"][0]["logprobs"]["content"].is_array());
}

TEST_F(Gen, ChatStreamingReasoningSeparate) {
  auto c = server->client();
  auto r = c.Post("/v1/chat/completions",
                  json{{"messages", kUser}, {"max_tokens", 8}, {"stream", true}, {"seed", 7},
                       {"stream_options", {{"include_usage", true}}}}.dump(),
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  EXPECT_NE(r->body.find("data: [DONE]"), std::string::npos);
  auto ev = sse_payloads(r->body);
  ASSERT_GE(ev.size(), 3u);
  EXPECT_EQ(ev.front()["choices"][0]["delta"]["role"], "assistant");
  bool reasoning = false;
  for (const auto& e : ev) {
    if (e["choices"].empty()) continue;
    const auto& d = e["choices"][0]["delta"];
    if (d.contains("reasoning_content")) reasoning = true;
  }
  EXPECT_TRUE(reasoning);  // thinking is the default: the random model's text is reasoning
  EXPECT_TRUE(ev.back()["choices"].empty());
  EXPECT_EQ(ev.back()["usage"]["completion_tokens"], 8);
}

TEST_F(Gen, ForcedToolCallChat) {
  auto c = server->client();
  for (bool stream : {false, true}) {
    const json body = {{"messages", kUser}, {"max_tokens", 200}, {"stream", stream}, {"tools", json::array({kWeatherTool})},
                       {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}};
    auto r = c.Post("/v1/chat/completions", body.dump(), "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    if (!stream) {
      json j = json::parse(r->body);
      EXPECT_EQ(j["choices"][0]["finish_reason"], "tool_calls");
      const auto& call = j["choices"][0]["message"]["tool_calls"][0];
      EXPECT_EQ(call["function"]["name"], "get_weather");
      EXPECT_EQ(call["id"].get<std::string>().rfind("call_", 0), 0u);
      EXPECT_GE(call["id"].get<std::string>().size(), 20u);
      json args = json::parse(call["function"]["arguments"].get<std::string>());
      EXPECT_TRUE(args.contains("city"));
    } else {
      std::string args, name, id;
      for (const auto& e : sse_payloads(r->body)) {
        if (e["choices"].empty() || !e["choices"][0]["delta"].contains("tool_calls")) continue;
        const auto& tc = e["choices"][0]["delta"]["tool_calls"][0];
        if (tc.contains("id")) id = tc["id"], name = tc["function"]["name"];
        args += tc["function"].value("arguments", "");
      }
      EXPECT_EQ(name, "get_weather") << r->body.substr(r->body.size() > 3000 ? r->body.size() - 3000 : 0);
      EXPECT_FALSE(id.empty());
      EXPECT_TRUE(json::parse(args).contains("city"));
    }
  }
}

TEST_F(Gen, ToolChoiceNoneRemovesTools) {
  auto c = server->client();
  int s1 = 0, s2 = 0;
  json with = post_json(c, "/v1/chat/completions", {{"messages", kUser}, {"max_tokens", 1}, {"tools", json::array({kWeatherTool})}}, &s1);
  json none = post_json(c, "/v1/chat/completions",
                        {{"messages", kUser}, {"max_tokens", 1}, {"tools", json::array({kWeatherTool})}, {"tool_choice", "none"}}, &s2);
  ASSERT_EQ(s1, 200);
  ASSERT_EQ(s2, 200);
  EXPECT_GT(with["usage"]["prompt_tokens"].get<int>(), none["usage"]["prompt_tokens"].get<int>() + 100);
}

TEST_F(Gen, FollowUpTurnHitsCache) {
  auto c = server->client();
  const json first = {{"messages", kUser}, {"max_tokens", 6}, {"reasoning_effort", "none"}, {"seed", 1}};
  int s = 0;
  json a = post_json(c, "/v1/chat/completions", first, &s);
  ASSERT_EQ(s, 200);
  json msgs = kUser;
  msgs.push_back({{"role", "assistant"}, {"content", a["choices"][0]["message"]["content"]}});
  msgs.push_back({{"role", "user"}, {"content", "and then?"}});
  json b = post_json(c, "/v1/chat/completions", {{"messages", msgs}, {"max_tokens", 4}, {"reasoning_effort", "none"}}, &s);
  ASSERT_EQ(s, 200);
  const int cached = b["usage"]["prompt_tokens_details"]["cached_tokens"];
  EXPECT_GE(cached, a["usage"]["prompt_tokens"].get<int>()) << b.dump();
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_NE(m->body.find("ds4_cache_hits_memory_total"), std::string::npos);
  EXPECT_EQ(m->body.find("ds4_cache_hits_memory_total 0\n"), std::string::npos);
  EXPECT_NE(m->body.find("ds4_queue_depth"), std::string::npos);
  EXPECT_NE(m->body.find("ds4_requests_total{endpoint=\"chat.completions\",status=\"200\"}"), std::string::npos);
}

TEST_F(Gen, StopSequenceKeepsCache) {
  auto c = server->client();
  // Raw completions: a stop string of one common byte is hit almost at once.
  int s = 0;
  const std::string prompt = "The quick brown fox jumps over the lazy dog again and again";
  json a = post_json(c, "/v1/completions", {{"prompt", prompt}, {"max_tokens", 30}, {"stop", json::array({"e", "a", "o", " "})}}, &s);
  ASSERT_EQ(s, 200);
  json b = post_json(c, "/v1/completions", {{"prompt", prompt + " more"}, {"max_tokens", 2}}, &s);
  ASSERT_EQ(s, 200);
  EXPECT_GE(b["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), static_cast<int>(prompt.size()) - 1);
}

TEST_F(Gen, RawCompletionNoChatWrapping) {
  auto c = server->client();
  int s = 0;
  json j = post_json(c, "/v1/completions", {{"prompt", "abc"}, {"max_tokens", 3}}, &s);
  ASSERT_EQ(s, 200);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 4);  // BOS + 3 bytes: nothing else was rendered
}

TEST_F(Gen, ResponsesStreamingEvents) {
  auto c = server->client();
  const json body = {{"input", "hi"}, {"max_output_tokens", 200}, {"stream", true}, {"seed", 7}, {"tools", json::array({{{"type", "function"},
      {"name", "get_weather"}, {"parameters", kWeatherTool["function"]["parameters"]}}})},
      {"tool_choice", "required"}};
  auto r = c.Post("/v1/responses", body.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  auto ev = sse_payloads(r->body);
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev.front()["type"], "response.created");
  EXPECT_EQ(ev.back()["type"], "response.completed");
  int64_t seq = -1;
  bool reasoning = false, call = false;
  for (const auto& e : ev) {
    EXPECT_EQ(e["sequence_number"].get<int64_t>(), seq + 1);
    seq = e["sequence_number"];
    if (e["type"] == "response.reasoning_text.delta") reasoning = true;
    if (e["type"] == "response.function_call_arguments.done") call = true;
  }
  EXPECT_TRUE(reasoning);
  EXPECT_TRUE(call);
  const auto& out = ev.back()["response"]["output"];
  EXPECT_EQ(out.back()["type"], "function_call");
  EXPECT_EQ(out.back()["name"], "get_weather");
}

TEST_F(Gen, AnthropicThinkingAndToolUse) {
  auto c = server->client();
  // A fixed seed: with a random one the demo model sometimes closes its thinking at once.
  const json body = {{"max_tokens", 300}, {"stream", true}, {"messages", kUser}, {"seed", 7},
                     {"thinking", {{"type", "enabled"}, {"budget_tokens", 8}}},
                     {"tools", json::array({{{"name", "get_weather"}, {"input_schema", kWeatherTool["function"]["parameters"]}}})},
                     {"tool_choice", {{"type", "tool"}, {"name", "get_weather"}}}};
  auto r = c.Post("/v1/messages", body.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_NE(r->body.find("event: message_start"), std::string::npos);
  EXPECT_NE(r->body.find("\"thinking_delta\""), std::string::npos);
  EXPECT_NE(r->body.find("\"type\":\"tool_use\""), std::string::npos);
  EXPECT_NE(r->body.find("\"input_json_delta\""), std::string::npos);
  EXPECT_NE(r->body.find("\"stop_reason\":\"tool_use\""), std::string::npos);
  EXPECT_NE(r->body.find("event: message_stop"), std::string::npos);
  // Non-streaming: the same structure as blocks.
  json nb = body;
  nb["stream"] = false;
  int s = 0;
  json j = post_json(c, "/v1/messages", nb, &s);
  ASSERT_EQ(s, 200) << j.dump();
  EXPECT_EQ(j["content"][0]["type"], "thinking");
  EXPECT_EQ(j["content"].back()["type"], "tool_use");
  EXPECT_EQ(j["content"].back()["id"].get<std::string>().rfind("toolu_", 0), 0u);
  EXPECT_TRUE(j["content"].back()["input"].contains("city"));
  EXPECT_EQ(j["stop_reason"], "tool_use");
  // count_tokens agrees with the prompt the generation used.
  json ct = post_json(c, "/v1/messages/count_tokens", nb, &s);
  ASSERT_EQ(s, 200);
  EXPECT_EQ(ct["input_tokens"], j["usage"]["input_tokens"].get<int>() + j["usage"]["cache_read_input_tokens"].get<int>());
}

TEST_F(Gen, ToolReplayRendersSampledBytes) {
  auto c = server->client();
  const json tools = json::array({kWeatherTool});
  const json forced = {{"type", "function"}, {"function", {{"name", "get_weather"}}}};
  int s = 0;
  json a = post_json(c, "/v1/chat/completions",
                     {{"messages", kUser}, {"max_tokens", 200}, {"tools", tools}, {"tool_choice", forced}, {"reasoning_effort", "none"}}, &s);
  ASSERT_EQ(s, 200);
  json call = a["choices"][0]["message"]["tool_calls"][0];
  // The client re-serialises the arguments differently (spacing): replay must still hit the cache.
  json reformatted = call;
  reformatted["function"]["arguments"] = json::parse(call["function"]["arguments"].get<std::string>()).dump(4);
  json msgs = kUser;
  msgs.push_back({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array({reformatted})}});
  msgs.push_back({{"role", "tool"}, {"tool_call_id", call["id"]}, {"content", "sunny"}});
  json b = post_json(c, "/v1/chat/completions", {{"messages", msgs}, {"max_tokens", 2}, {"tools", tools}, {"reasoning_effort", "none"}}, &s);
  ASSERT_EQ(s, 200) << b.dump();
  const int prev = a["usage"]["prompt_tokens"].get<int>() + a["usage"]["completion_tokens"].get<int>();
  EXPECT_GE(b["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), prev - 1) << b.dump();
}

TEST(Cancel, DisconnectStopsGenerationAndNextRequestIsServed) {
  auto o = tiny_options();
  o.default_max_tokens = 100000;
  TestServer s(o);
  {
    // A raw socket: send a streaming request, read the first bytes, vanish.
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(s.port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    // A fixed seed whose answer is long: with a random one the demo model may end early.
    const std::string body = json{{"messages", kUser}, {"max_tokens", 3500}, {"stream", true}, {"seed", 7}}.dump();
    const std::string req = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
    char buf[4096];
    size_t got = 0;
    while (got < 2000) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      ASSERT_GT(n, 0);
      got += static_cast<size_t>(n);
    }
    ::close(fd);
  }
  // The engine notices within a decode step: the next request completes quickly.
  auto c = s.client();
  const auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  json j = post_json(c, "/v1/chat/completions", {{"messages", kUser}, {"max_tokens", 2}}, &status);
  EXPECT_EQ(status, 200);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 3.0);
  EXPECT_GE(s.server().context().metrics.cancelled.load(), 1u);
}

TEST(DiskCache, SurvivesRestartAndIgnoresDamage) {
  auto o = tiny_options();
  o.kv_disk_dir = (test_dir() / "kv").string();
  fs::remove_all(o.kv_disk_dir);
  const json body = {{"messages", kUser}, {"max_tokens", 2}, {"reasoning_effort", "none"}};
  int status = 0;
  {
    TestServer s(o);
    auto c = s.client();
    post_json(c, "/v1/chat/completions", body, &status);
    ASSERT_EQ(status, 200);
  }
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(o.kv_disk_dir)) files += e.path().extension() == ".kv";
  ASSERT_EQ(files, 1u);
  {
    TestServer s(o);  // a new process: nothing resident
    auto c = s.client();
    json j = post_json(c, "/v1/chat/completions", body, &status);
    ASSERT_EQ(status, 200);
    EXPECT_GT(j["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), 10) << j.dump();
    EXPECT_EQ(s.server().context().metrics.cache_hits_disk.load(), 1u);
  }
  // Damage the file: it is detected, ignored (cold prefill) and deleted.
  for (const auto& e : fs::directory_iterator(o.kv_disk_dir)) {
    std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x7f');
  }
  {
    TestServer s(o);
    auto c = s.client();
    json j = post_json(c, "/v1/chat/completions", body, &status);
    ASSERT_EQ(status, 200);
    EXPECT_EQ(j["usage"]["prompt_tokens_details"]["cached_tokens"], 0) << j.dump();
    EXPECT_EQ(s.server().context().metrics.cache_hits_disk.load(), 0u);
  }
}

}  // namespace
