// The streaming DSML parser on hand-written model output: every split point, garbage,
// malformed blocks, and round trips through the renderer.
#include <gtest/gtest.h>

#include "chat/dsml_format.h"
#include "chat/dsml_parser.h"
#include "chat/py_json.h"
#include "core/error.h"

using namespace ds4::chat;
using K = DsmlEvent::Kind;

namespace {

const std::string D = "｜DSML｜";

std::string call_block() {
  return "\n\n<" + D + "tool_calls>\n<" + D + "invoke name=\"get_weather\">\n<" + D +
         "parameter name=\"city\" string=\"true\">Par\"is\n</" + D + "parameter>\n<" + D +
         "parameter name=\"days\" string=\"false\">[1, 2]</" + D + "parameter>\n</" + D + "invoke>\n<" + D +
         "invoke name=\"now\">\n</" + D + "invoke>\n</" + D + "tool_calls>";
}

// Everything the events say, folded into one comparable summary.
struct Summary {
  std::string reasoning, text;
  std::vector<std::string> calls;  // "name|args"
  std::vector<std::string> errors;
  std::vector<std::string> streamed_args;  // CallArgs fragments joined per call
  bool operator==(const Summary&) const = default;
};

[[maybe_unused]] void PrintTo(const Summary& s, std::ostream* os) {
  *os << "{reasoning=" << Json(s.reasoning).dump() << " text=" << Json(s.text).dump() << " calls=" << Json(s.calls).dump()
      << " errors=" << Json(s.errors).dump() << " args=" << Json(s.streamed_args).dump() << "}";
}

Summary fold(const std::vector<DsmlEvent>& evs) {
  Summary s;
  for (const auto& e : evs) {
    switch (e.kind) {
      case K::Reasoning: s.reasoning += e.text; break;
      case K::Text: s.text += e.text; break;
      case K::CallStart:
        EXPECT_EQ(e.index, static_cast<int>(s.streamed_args.size()));
        s.streamed_args.emplace_back();
        break;
      case K::CallArgs:
        EXPECT_EQ(e.index + 1, static_cast<int>(s.streamed_args.size()));
        s.streamed_args.back() += e.text;
        break;
      case K::CallEnd: s.calls.push_back(e.name + "|" + e.text); break;
      case K::Error: s.errors.push_back(e.text); break;
    }
  }
  return s;
}

std::vector<DsmlEvent> run(const std::vector<std::string_view>& pieces, bool thinking) {
  DsmlStreamParser p(thinking);
  std::vector<DsmlEvent> all;
  for (auto piece : pieces) {
    auto ev = p.feed(piece);
    all.insert(all.end(), ev.begin(), ev.end());
  }
  auto ev = p.finish();
  all.insert(all.end(), ev.begin(), ev.end());
  return all;
}

Summary whole(std::string_view s, bool thinking) { return fold(run({s}, thinking)); }

// Same result whether the text arrives whole, split once at any byte, or byte by byte.
void expect_split_invariant(const std::string& s, bool thinking) {
  Summary ref = whole(s, thinking);
  for (size_t cut = 0; cut <= s.size(); ++cut) {
    std::string_view v(s);
    ASSERT_EQ(fold(run({v.substr(0, cut), v.substr(cut)}, thinking)), ref) << "split at " << cut;
  }
  std::vector<std::string_view> bytes;
  for (size_t i = 0; i < s.size(); ++i) bytes.push_back(std::string_view(s).substr(i, 1));
  EXPECT_EQ(fold(run(bytes, thinking)), ref) << "byte by byte";
}

}  // namespace

TEST(DsmlParser, ContentAndCalls) {
  Summary s = whole("Checking." + call_block(), false);
  EXPECT_EQ(s.text, "Checking.");
  ASSERT_EQ(s.calls.size(), 2u);
  EXPECT_EQ(s.calls[0], "get_weather|{\"city\": \"Par\\\"is\\n\", \"days\": [1, 2]}");
  EXPECT_EQ(s.calls[1], "now|{}");
  EXPECT_TRUE(s.errors.empty());
  // The streamed fragments add up to the final arguments.
  EXPECT_EQ(s.streamed_args[0], "{\"city\": \"Par\\\"is\\n\", \"days\": [1, 2]}");
  EXPECT_TRUE(Json::accept(s.streamed_args[0]));
  // OFF's own construction gives the same text.
  EXPECT_EQ(s.calls[0], "get_weather|" + dsml_arguments_json({{"city", "Par\"is\n", true}, {"days", "[1, 2]", false}}));
}

TEST(DsmlParser, ThinkingThenAnswer) {
  std::string out = "Let me use <" + D + "tool_calls> here, inside thinking.</think>Answer: 42";
  Summary s = whole(out, true);
  EXPECT_EQ(s.reasoning, "Let me use <" + D + "tool_calls> here, inside thinking.");
  EXPECT_EQ(s.text, "Answer: 42");
  EXPECT_TRUE(s.calls.empty());
  EXPECT_TRUE(s.errors.empty());
  auto p = parse_assistant_output("unfinished thought", true);
  EXPECT_EQ(p.reasoning, "unfinished thought");
  EXPECT_EQ(p.errors.size(), 1u);
}

TEST(DsmlParser, EverySplitPointGivesTheSameEvents) {
  expect_split_invariant("Hi!\n\nsecond line" + call_block(), false);
  expect_split_invariant("reason </thin k> more</think>text\n\n" + call_block() + "\n<｜end▁of▁sentence｜>", true);
  expect_split_invariant("text <｜DSML｜tool_call not a block\n\n<｜end", false);
}

TEST(DsmlParser, EventsComeAsEarlyAsPossible) {
  DsmlStreamParser p(false);
  auto ev = p.feed("Sure\n\n<" + D + "tool_calls>\n<" + D + "invoke name=\"f\">");
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev[0].kind, K::Text);
  EXPECT_EQ(ev[0].text, "Sure");
  bool started = false;
  for (auto& e : ev) started |= e.kind == K::CallStart && e.name == "f";
  EXPECT_TRUE(started);  // before any parameter arrived
  ev = p.feed("\n<" + D + "parameter name=\"q\" string=\"true\">hel");
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev.back().kind, K::CallArgs);
  EXPECT_EQ(ev.back().text, "\"q\": \"hel");
  ev = p.feed("lo</" + D + "param");  // a partial closing tag is held back
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "lo");
  // Text that could start a block is held back, then released when it cannot.
  DsmlStreamParser q(false);
  EXPECT_TRUE(q.feed("a\n\n<｜DS").empty() || q.feed("").empty());
  auto r = q.feed("X");
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].text, "\n\n<｜DSX");
}

TEST(DsmlParser, MalformedBlocksAreReportedNotGuessed) {
  struct Bad {
    std::string out;
    std::string error_part;
  };
  const std::vector<Bad> cases = {
      {"<" + D + "tool_calls>\ngarbage", "expected <｜DSML｜invoke"},
      {"<" + D + "tool_calls>\n<" + D + "invoke nam=\"f\">\n", "malformed <｜DSML｜invoke>"},
      {"<" + D + "tool_calls>\n<" + D + "invoke name=\"f\">\n<" + D + "parameter name=\"a\" string=\"maybe\">1</" + D +
           "parameter>",
       "string=\"true\" or"},
      {"<" + D + "tool_calls>\n<" + D + "invoke name=\"f\">\n<" + D + "parameter name=\"a\" string=\"false\">{oops</" +
           D + "parameter>",
       "not valid JSON"},
      {"<" + D + "tool_calls>\n<" + D + "invoke name=\"f\">\n<" + D + "parameter name=\"a\" string=\"true\">1</" + D +
           "parameter>\n<" + D + "parameter name=\"a\" string=\"true\">2</" + D + "parameter>",
       "duplicate parameter"},
      {"<" + D + "tool_calls>\n<" + D + "invoke name=\"f\">\n<" + D + "parameter name=\"a\" string=\"true\">unterminated",
       "ended inside a parameter"},
      {"<" + D + "tool_calls>\n</" + D + "tool_calls> trailing words", "after the tool-call block"},
  };
  for (const auto& c : cases) {
    Summary s = whole("before" + c.out, false);
    EXPECT_EQ(s.text.substr(0, 6), "before") << c.out;
    ASSERT_EQ(s.errors.size(), 1u) << c.out;
    EXPECT_NE(s.errors[0].find(c.error_part), std::string::npos) << s.errors[0];
    EXPECT_TRUE(s.calls.empty()) << c.out;
    expect_split_invariant("before" + c.out, false);
  }
  // The raw text of a failed block comes with the error, and later text is passed on.
  auto ev = run({"x<" + D + "tool_calls>\nnope", " more"}, false);
  bool found = false;
  for (auto& e : ev)
    if (e.kind == K::Error) {
      found = true;
      EXPECT_EQ(e.raw, "<" + D + "tool_calls>\n");
    }
  EXPECT_TRUE(found);
  EXPECT_EQ(fold(ev).text, "xnope more");
}

TEST(DsmlParser, GarbageNeverCrashes) {
  const std::vector<std::string> frags = {"<", "</", D, "tool_calls>", "invoke", " name=\"", "f", "\">", "parameter",
                                          " string=\"true\"", "false", ">", "\n", "</think>", "{", "x", "\xff", "\""};
  uint32_t x = 7;
  for (int round = 0; round < 300; ++round) {
    std::string s = round % 2 ? "<" + D + "tool_calls>\n" : "";
    for (int i = 0; i < 30; ++i) {
      x = x * 1103515245u + 12345u;
      s += frags[(x >> 16) % frags.size()];
    }
    auto p = parse_assistant_output(s, round % 3 == 0);
    for (const auto& c : p.tool_calls) EXPECT_TRUE(Json::accept(c.arguments)) << s;
  }
}

TEST(DsmlParser, RoundTripThroughTheRenderer) {
  std::vector<ToolCall> calls = {
      {"", "write_file", R"({"path": "a/b.txt", "content": "line1\nline2 <tag> & \"q\"", "mode": 420, "opts": {"x": [true, null, 1.5]}})"},
      {"", "noop", "{}"}};
  std::string text = "Doing it." + tool_calls_text(calls);
  auto p = parse_assistant_output(text, false);
  ASSERT_TRUE(p.errors.empty());
  EXPECT_EQ(p.content, "Doing it.");
  ASSERT_EQ(p.tool_calls.size(), 2u);
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(p.tool_calls[i].name, calls[i].name);
    EXPECT_EQ(Json::parse(p.tool_calls[i].arguments), Json::parse(calls[i].arguments));
  }
}

TEST(ToolJson, OpenAiAndAnthropicShapes) {
  ToolCall c{"call_1", "f", R"({"a": 1, "b": "x"})"};
  Json o = to_openai(c);
  EXPECT_EQ(o["type"], "function");
  EXPECT_EQ(o["function"]["arguments"], c.arguments);
  ToolCall back = tool_call_from_openai(o);
  EXPECT_EQ(back.id, "call_1");
  EXPECT_EQ(back.arguments, c.arguments);
  Json a = to_anthropic(c);
  EXPECT_EQ(a["type"], "tool_use");
  EXPECT_EQ(a["input"]["a"], 1);
  ToolCall from_a = tool_call_from_anthropic(a);
  EXPECT_EQ(from_a.arguments, R"({"a": 1, "b": "x"})");  // Python-style separators, key order kept
  EXPECT_THROW(tool_call_from_openai(Json::parse("{}")), ds4::Error);
  EXPECT_THROW(tool_call_from_anthropic(Json::parse(R"({"type": "text"})")), ds4::Error);
  // Arguments given as an object are accepted too.
  Json obj = Json::parse(R"({"function": {"name": "g", "arguments": {"k": "v"}}})");
  EXPECT_EQ(tool_call_from_openai(obj).arguments, R"({"k": "v"})");
}

TEST(PyJson, MatchesPythonJsonDumps) {
  Json v = Json::parse(R"({"b": [1, 2.5, -3e-07, true, null], "a": "é\u0001\n\"", "o": {}})");
  EXPECT_EQ(py_dumps(v), "{\"b\": [1, 2.5, -3e-07, true, null], \"a\": \"é\\u0001\\n\\\"\", \"o\": {}}");
}
