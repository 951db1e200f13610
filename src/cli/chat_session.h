// The state behind `ds4`'s one-shot and interactive modes: the loaded model and tokenizer, the
// conversation, and a Generator whose live KV state follows the conversation from turn to turn
// (generator.h: each turn prefills only what the previous one did not already evaluate).
#pragma once

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "chat/conversation.h"
#include "cli/cli.h"
#include "generate/generator.h"
#include "model/model.h"
#include "runtime/backend.h"
#include "tokenizer/tokenizer.h"

namespace ds4::cli {

struct LoadedModel {
  model::Model model;
  tok::Tokenizer tokenizer;
  std::string synthetic;  // synth::kSyntheticKey's value; empty for a real model
  // The --backend the sessions run on (opened by run(); null: CPU sessions).
  std::unique_ptr<runtime::Engine> engine;
};

// Opens the model with the checks a user needs explained: a missing file (how to get one), a
// file that is not a DeepSeek V4 GGUF, a file without a tokenizer. Shows progress on stderr
// when `progress`. Throws ds4::Error with one sentence.
std::unique_ptr<LoadedModel> load_model(const CliOptions& o, bool progress);

// Throws when a context of `ctx` tokens cannot work with this model: too small, more memory
// than the machine has, or more positions than the model supports.
void check_context(const model::Model& m, int64_t ctx);

// One line describing the model (and, loudly, that it is a demo or synthetic model).
std::string banner(const LoadedModel& m, const std::string& path, int64_t ctx);

struct TurnOutput {
  gen::GenerateResult result;
  std::string reasoning;
  std::string content;
};

class ChatSession {
 public:
  ChatSession(const LoadedModel& m, const CliOptions& o);

  // Adds a user turn, renders the conversation, generates and streams the answer to `out`, and
  // records the answer in the conversation (also when cancelled: the partial answer).
  TurnOutput user_turn(const std::string& text, std::FILE* out, bool out_is_terminal,
                       const std::atomic<bool>* cancel);
  // A prompt that is already a rendered transcript (starts with the BOS token's text):
  // tokenized with special tokens recognised, not recorded in the conversation.
  TurnOutput raw_prompt(const std::string& text, std::FILE* out, bool out_is_terminal,
                        const std::atomic<bool>* cancel);

  void set_thinking(chat::Thinking t);
  chat::Thinking thinking() const { return thinking_; }
  // New context size: the session is recreated (the conversation stays and is re-prefilled
  // on the next turn).
  void set_ctx(int64_t ctx);
  int64_t ctx() const { return ctx_; }
  // Back to the system prompt only.
  void clear();
  // KV snapshot with the conversation (kv_file.h; the conversation is the file's note).
  void save(const std::string& path) const;
  void load(const std::string& path);

  const chat::Conversation& conversation() const { return conv_; }
  gen::Generator& generator() { return *gen_; }
  // Logprobs of every generated token so far (when CliOptions::dump_logprobs is set).
  const std::vector<gen::StepLogprobs>& logprobs() const { return logprobs_; }
  const std::vector<int32_t>& generated() const { return generated_; }

 private:
  TurnOutput generate(const std::vector<int32_t>& prompt, std::FILE* out, bool out_is_terminal,
                      bool thinking, const std::atomic<bool>* cancel);

  const LoadedModel* m_;
  const CliOptions* o_;
  int64_t ctx_;
  chat::Thinking thinking_;
  chat::Conversation conv_;
  std::unique_ptr<gen::Generator> gen_;
  int turns_ = 0;
  std::vector<gen::StepLogprobs> logprobs_;
  std::vector<int32_t> generated_;
};

// The conversation as JSON text (the note of a KV snapshot) and back.
std::string conversation_to_json(const chat::Conversation& c, chat::Thinking t);
chat::Conversation conversation_from_json(const std::string& text, chat::Thinking& t);

// The effective thinking mode: think-max needs a context of at least 393,216 tokens
// (architecture.md 7.3); below that it is high, with a warning on stderr.
chat::Thinking effective_thinking(chat::Thinking t, int64_t ctx);

}  // namespace ds4::cli
