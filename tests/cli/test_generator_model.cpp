// Generator on a real (tiny, random) model: greedy equals the logits' argmax path, seeds,
// stop strings, limits, cancellation, prefix reuse (live session and prompt-end snapshot).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "cli_test_util.h"
#include "core/error.h"
#include "generate/generator.h"

namespace {

using ds4::gen::FinishReason;
using ds4::gen::GenerateOptions;
using ds4::gen::GenerateResult;
using ds4::gen::Generator;
using ds4::gen::TokenEvent;

class CleanUp : public ::testing::Environment {
 public:
  void TearDown() override { std::filesystem::remove_all(clitest::temp_dir()); }
};
const auto* const kCleanUp = ::testing::AddGlobalTestEnvironment(new CleanUp);

std::vector<int32_t> prompt_of(const std::string& text) {
  std::vector<int32_t> p{0};  // BOS
  clitest::tiny().tok.encode_append(text, false, p);
  return p;
}

GenerateOptions greedy(int n) {
  GenerateOptions o;
  o.sampling.temperature = 0;
  o.sampling.max_tokens = n;
  o.prefill_chunk = 7;  // several chunks even for short prompts
  return o;
}

ds4::model::SessionOptions sopts(int64_t ctx = 256, int64_t retain = 128) {
  return {.max_ctx = ctx, .numerics = ds4::model::Numerics::Official, .retain = retain, .max_batch = 16};
}

TEST(Generator, GreedyFollowsTheArgmaxOfTheLogits) {
  const auto& m = clitest::tiny();
  Generator g(m.model, m.tok, sopts());
  const auto prompt = prompt_of("Hello, tiny model.");
  const GenerateResult r = g.generate(prompt, greedy(12));
  ASSERT_EQ(r.tokens.size(), 12u);
  EXPECT_EQ(r.finish, FinishReason::MaxTokens);
  EXPECT_EQ(r.reused_tokens, 0);
  EXPECT_EQ(r.prompt_tokens, static_cast<int64_t>(prompt.size()));

  // Independent path: all positions in one eval, argmax of every row.
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), r.tokens.begin(), r.tokens.end() - 1);
  ds4::model::Session s(m.model, sopts());
  const int64_t V = m.model.hparams().n_vocab;
  std::vector<float> logits(all.size() * static_cast<size_t>(V));
  s.eval(all, ds4::model::LogitsMode::All, logits.data());
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    const float* row = logits.data() + (prompt.size() - 1 + i) * static_cast<size_t>(V);
    const auto best = static_cast<int32_t>(std::max_element(row, row + V) - row);
    EXPECT_EQ(r.tokens[i], best) << "step " << i;
  }
}

TEST(Generator, SeedDeterminesTheTokens) {
  const auto& m = clitest::tiny();
  const auto prompt = prompt_of("seeded");
  auto run = [&](uint64_t seed) {
    Generator g(m.model, m.tok, sopts());
    GenerateOptions o;
    o.sampling.seed = seed;
    o.sampling.max_tokens = 16;
    o.sampling.min_p = 0;
    return g.generate(prompt, o).tokens;
  };
  const auto a = run(7);
  EXPECT_EQ(a, run(7));
  EXPECT_NE(a, run(8));
}

TEST(Generator, StreamedTextIsTheResultTextAndStopsAreHonoured) {
  const auto& m = clitest::tiny();
  Generator g(m.model, m.tok, sopts());
  const auto prompt = prompt_of("stop strings");
  std::string streamed;
  GenerateOptions o = greedy(40);
  o.on_token = [&](const TokenEvent& e) { streamed += e.text; };
  const GenerateResult full = g.generate(prompt, o);
  EXPECT_EQ(streamed, full.text);
  ASSERT_GT(full.text.size(), 12u);

  // A stop string from the middle of the greedy text cuts the output just before it.
  const std::string stop = full.text.substr(8, 3);
  const std::string expect = full.text.substr(0, full.text.find(stop));
  GenerateOptions s = greedy(40);
  s.sampling.stop_strings = {"never appears \x01\x02", stop};
  streamed.clear();
  s.on_token = [&](const TokenEvent& e) { streamed += e.text; };
  const GenerateResult r = g.generate(prompt, s);
  EXPECT_EQ(r.finish, FinishReason::StopString);
  ASSERT_TRUE(r.stop_index.has_value());
  EXPECT_EQ(*r.stop_index, 1u);
  EXPECT_EQ(r.text, expect);
  EXPECT_EQ(streamed, expect);

  // A stop token ends generation without being emitted.
  GenerateOptions t = greedy(40);
  t.sampling.stop_tokens = {full.tokens[3]};
  const GenerateResult rt = g.generate(prompt, t);
  EXPECT_EQ(rt.finish, FinishReason::StopToken);
  EXPECT_EQ(rt.tokens, std::vector<int32_t>(full.tokens.begin(), full.tokens.begin() + 3));
}

TEST(Generator, LogprobsComeWithEveryToken) {
  const auto& m = clitest::tiny();
  Generator g(m.model, m.tok, sopts());
  GenerateOptions o = greedy(5);
  o.logprobs_top_k = 3;
  int events = 0;
  o.on_token = [&](const TokenEvent& e) {
    if (e.token == ds4::gen::kNoToken) return;
    ASSERT_NE(e.logprobs, nullptr);
    EXPECT_EQ(e.logprobs->chosen.token, e.token);
    ASSERT_EQ(e.logprobs->top.size(), 3u);
    EXPECT_EQ(e.logprobs->top[0].token, e.token);  // greedy picks the most likely token
    ++events;
  };
  const auto r = g.generate(prompt_of("logprobs"), o);
  EXPECT_EQ(events, 5);
  EXPECT_EQ(r.logprobs.size(), 5u);
}

TEST(Generator, ContextLimitsAreReported) {
  const auto& m = clitest::tiny();
  Generator g(m.model, m.tok, sopts(24));
  const auto prompt = prompt_of("0123456789");  // 11 tokens
  const auto r = g.generate(prompt, greedy(-1));
  EXPECT_EQ(r.finish, FinishReason::ContextFull);
  EXPECT_EQ(static_cast<int64_t>(prompt.size() + r.tokens.size()), 25);  // last one not evaluated
  EXPECT_THROW(g.generate(prompt_of(std::string(30, 'x')), greedy(1)), ds4::Error);
  EXPECT_THROW(g.generate(std::vector<int32_t>{}, greedy(1)), ds4::Error);
}

TEST(Generator, CancellationStopsWithinOneStep) {
  const auto& m = clitest::tiny();
  Generator g(m.model, m.tok, sopts(4096));
  std::atomic<bool> cancel{false};
  GenerateOptions o = greedy(-1);
  o.cancel = &cancel;
  int n = 0;
  o.on_token = [&](const TokenEvent& e) {
    if (e.token != ds4::gen::kNoToken && ++n == 3) cancel = true;
  };
  const auto r = g.generate(prompt_of("cancel me"), o);
  EXPECT_EQ(r.finish, FinishReason::Cancelled);
  EXPECT_EQ(r.tokens.size(), 3u);

  // From another thread, while decoding without limit.
  cancel = false;
  o.on_token = nullptr;
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    cancel = true;
  });
  const auto r2 = g.generate(prompt_of("cancel me from a thread"), o);
  t.join();
  EXPECT_EQ(r2.finish, FinishReason::Cancelled);
  EXPECT_LT(r2.tokens.size(), 4000u);

  // Before the prefill starts: no tokens, and the next call works normally.
  const auto r3 = g.generate(prompt_of("already cancelled"), o);
  EXPECT_EQ(r3.finish, FinishReason::Cancelled);
  EXPECT_TRUE(r3.tokens.empty());
  cancel = false;
  EXPECT_EQ(g.generate(prompt_of("again"), greedy(2)).tokens.size(), 2u);
}

TEST(Generator, FollowUpTurnReusesTheLiveSession) {
  const auto& m = clitest::tiny();
  Generator g(m.model, m.tok, sopts());
  auto p1 = prompt_of("first turn");
  const auto a1 = g.generate(p1, greedy(10));
  std::vector<int32_t> p2 = p1;
  p2.insert(p2.end(), a1.tokens.begin(), a1.tokens.end());
  p2.push_back(1);
  m.tok.encode_append("second turn", false, p2);
  const auto a2 = g.generate(p2, greedy(10));
  // Everything evaluated before is reused: the prompt and all answer tokens but the last.
  EXPECT_EQ(a2.reused_tokens, static_cast<int64_t>(p1.size() + a1.tokens.size() - 1));

  Generator fresh(m.model, m.tok, sopts());
  const auto b2 = fresh.generate(p2, greedy(10));
  EXPECT_EQ(b2.reused_tokens, 0);
  EXPECT_EQ(a2.tokens, b2.tokens);
}

TEST(Generator, PromptSnapshotServesARewrittenAnswer) {
  // Thinking mode's next turn drops the previous reasoning: it shares the previous prompt minus
  // its last token (<think>), not the answer. With a short window and retain, the live session
  // cannot go back that far after a long answer; the prompt-end snapshot can.
  const auto& m = clitest::tiny();
  Generator g(m.model, m.tok, sopts(256, 2));
  const auto p1 = prompt_of("a prompt long enough to pass the sliding window of eight");
  const auto a1 = g.generate(p1, greedy(40));
  ASSERT_EQ(a1.tokens.size(), 40u);
  EXPECT_GT(g.session().min_truncate(), static_cast<int64_t>(p1.size()));
  std::vector<int32_t> p2(p1.begin(), p1.end() - 1);
  m.tok.encode_append("rewritten answer, then the next user turn", false, p2);
  const auto a2 = g.generate(p2, greedy(8));
  EXPECT_EQ(a2.reused_tokens, static_cast<int64_t>(p1.size() - 1));

  Generator fresh(m.model, m.tok, sopts(256, 2));
  EXPECT_EQ(fresh.generate(p2, greedy(8)).tokens, a2.tokens);

  // Without the snapshot the same turn starts from scratch.
  Generator nosnap(m.model, m.tok, sopts(256, 2));
  GenerateOptions o = greedy(40);
  o.keep_prompt_snapshot = false;
  nosnap.generate(p1, o);
  EXPECT_EQ(nosnap.generate(p2, greedy(8)).reused_tokens, 0);
}

TEST(Generator, PrefillReportsProgress) {
  const auto& m = clitest::tiny();
  Generator g(m.model, m.tok, sopts());
  const auto prompt = prompt_of("progress reports every chunk");
  std::vector<int64_t> done;
  GenerateOptions o = greedy(1);
  o.on_prefill = [&](const ds4::gen::PrefillProgress& p) {
    EXPECT_EQ(p.total, static_cast<int64_t>(prompt.size()));
    done.push_back(p.done);
  };
  g.generate(prompt, o);
  ASSERT_FALSE(done.empty());
  EXPECT_EQ(done.back(), static_cast<int64_t>(prompt.size()));
  EXPECT_TRUE(std::is_sorted(done.begin(), done.end()));
  EXPECT_EQ(done.size(), (prompt.size() + 6) / 7);
}

}  // namespace

namespace {

// prefill_chunk 0 (the default): one prefill call per batched layer pass of the session
// (its max_batch, 16 here), so a backend's preferred chunk reaches the session whole.
TEST(Generator, DefaultPrefillChunkIsTheSessionsBatch) {
  const auto& m = clitest::tiny();
  Generator g(m.model, m.tok, sopts());
  std::vector<int32_t> prompt = prompt_of("a prompt long enough to need three batched chunks of sixteen");
  ASSERT_GT(prompt.size(), 32u);
  std::vector<int64_t> done;
  GenerateOptions o;
  o.sampling.temperature = 0;
  o.sampling.max_tokens = 1;
  ASSERT_EQ(o.prefill_chunk, 0);
  o.on_prefill = [&](const ds4::gen::PrefillProgress& p) { done.push_back(p.done); };
  g.generate(prompt, o);
  EXPECT_EQ(done.size(), (prompt.size() + 15) / 16);
  o.prefill_chunk = -1;
  EXPECT_THROW(g.generate(prompt, o), ds4::Error);
}

}  // namespace
