// From engine tokens to protocol events, protocol-independent: UTF-8-safe text with stop strings
// applied (generate/stop_matcher.h), then the DSML parser splitting reasoning, answer text and
// tool calls (chat/dsml_parser.h). A Protocol (one per API) turns these events into its own SSE
// events or final JSON; `serve_generation` runs a job and drives the protocol on the HTTP
// connection, with keep-alives while the engine is busy and cancellation when the client goes.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/dsml_parser.h"
#include "generate/logprobs.h"
#include "generate/stop_matcher.h"
#include "server/engine.h"
#include "server/errors.h"

namespace httplib {
struct Response;
}

namespace ds4::server {

struct OutEvent {
  enum class Kind { Reasoning, Text, CallStart, CallArgs, CallEnd };
  Kind kind = Kind::Text;
  std::string text;
  int index = -1;
  std::string name;
  std::vector<gen::StepLogprobs> logprobs;  // tokens that produced this text (when requested)
  // Text of a malformed tool-call block (`error` says why). When the block had already
  // announced calls (CallStart), calls from index `revoke_from` on are void: a response drops
  // them (the block comes back as text), a stream that already sent them ends with an error.
  int revoke_from = -1;
  std::string error;
};

// Engine thread side: tokens in, events out.
class OutputProcessor {
 public:
  OutputProcessor(const tok::Tokenizer& tok, bool thinking, bool parse_dsml, std::vector<std::string> stops);
  std::vector<OutEvent> push(const TokenOut& t);
  std::vector<OutEvent> finish();
  bool stopped() const { return stop_.stopped(); }
  std::optional<std::string> stop_sequence() const;
  // What the model sampled after </think> (answer and DSML), exactly: the tool-replay bytes.
  const std::string& sampled_answer() const { return answer_raw_; }
  std::vector<std::string> parse_errors;

 private:
  void feed(const std::string& text, std::vector<OutEvent>& out);
  const tok::Tokenizer* tok_;
  bool parse_dsml_;
  gen::StopMatcher stop_;
  chat::DsmlStreamParser parser_;
  int32_t think_end_;
  bool in_answer_;
  std::string answer_raw_;
  std::vector<gen::StepLogprobs> pending_lp_;
  std::string stop_hit_;
};

struct CollectedCall {
  std::string id, name, arguments;
};
// Everything a non-streaming response needs, accumulated from the events.
struct Collected {
  std::string reasoning, content;
  std::vector<CollectedCall> calls;
  std::vector<gen::StepLogprobs> logprobs;
  std::optional<std::string> stop_sequence;  // the client stop string that ended generation
};

class Protocol {
 public:
  virtual ~Protocol() = default;
  virtual ApiStyle style() const { return ApiStyle::OpenAI; }
  virtual std::string call_id_prefix() const { return "call_"; }
  // Streaming: bytes for the start, each event (after `c` was updated) and the end.
  virtual std::string stream_begin(const GenResult& r) = 0;
  virtual std::string stream_event(const OutEvent& e, const Collected& c) = 0;
  virtual std::string stream_end(const Collected& c, const GenResult& r) = 0;
  virtual std::string stream_error(const std::string& message) = 0;
  // Non-streaming body.
  virtual nlohmann::ordered_json response(const Collected& c, const GenResult& r) = 0;
};

class ServerContext;

// Runs `job` on the engine and answers on `res` through `proto`, streaming or not.
void serve_generation(ServerContext& ctx, httplib::Response& res, std::shared_ptr<GenJob> job,
                      std::shared_ptr<Protocol> proto, bool stream, bool parse_dsml,
                      std::vector<std::string> stops, const std::string& endpoint);

// OpenAI-style logprobs content entries.
nlohmann::ordered_json openai_logprobs(const tok::Tokenizer& tok, const std::vector<gen::StepLogprobs>& lps);

}  // namespace ds4::server
