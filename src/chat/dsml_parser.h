// Incremental parser of the model's output (architecture.md 7.4): thinking text, answer text
// and DSML tool-call blocks, fed as arbitrary pieces of decoded text (token by token, or
// split anywhere). Events come out as soon as they are certain: a call starts when its
// invoke tag is complete, arguments stream as a JSON object text while parameter values
// arrive, and text that might be the start of a marker is held back until disambiguated.
// A block that breaks the grammar is reported as an error with its raw text, never guessed.
// The arguments text is always valid JSON once CallEnd comes: string values are escaped (bytes
// that are not UTF-8 become U+FFFD), and a string="false" value is streamed only after its
// closing tag, once it parsed as JSON (else the block is an error).
#pragma once

#include <set>
#include <string>
#include <tuple>
#include <string_view>
#include <vector>

#include "chat/conversation.h"

namespace ds4::chat {

struct DsmlEvent {
  enum class Kind {
    Reasoning,  // thinking text delta (thinking mode, before </think>)
    Text,       // answer text delta
    CallStart,  // `index`, `name`
    CallArgs,   // `index`, `text` = next fragment of the arguments JSON object
    CallEnd,    // `index`, `name`, `text` = the complete arguments JSON
    Error,      // `text` = what is wrong; `raw` = the block text consumed so far (the rest of
                // the output follows as Text, so nothing is lost)
  };
  Kind kind = Kind::Text;
  std::string text;
  int index = -1;
  std::string name;
  std::string raw;
  // Error: index of the first call of the failed block already announced by CallStart (its
  // arguments are now void), or -1 when the block announced none.
  int first_call = -1;
};

class DsmlStreamParser {
 public:
  // thinking: the output starts inside <think> (the prompt ended with <think>), so text up to
  // </think> is reasoning.
  explicit DsmlStreamParser(bool thinking);

  std::vector<DsmlEvent> feed(std::string_view piece);
  // End of generation: flushes held-back text; an unterminated block is an error.
  std::vector<DsmlEvent> finish();

 private:
  enum class State {
    Reasoning, Content, BlockOpen, Invoke, InvokeHeader, Params, ParamHeader, ParamValue,
    AfterBlock, Failed,
  };
  bool step(std::vector<DsmlEvent>& ev);  // consumes what it can; false = needs more input
  void error(std::vector<DsmlEvent>& ev, std::string what);

  State state_;
  bool eof_ = false;
  std::string buf_;        // unconsumed input
  std::string block_raw_;  // text of the current block so far (for error reports)
  int call_index_ = -1;
  int block_first_call_ = 0;  // index the block's first call gets
  std::string call_name_;
  std::string call_args_;
  bool first_param_ = true;
  bool param_is_string_ = true;
  std::string param_value_;  // a non-string value, emitted only once valid at the closing tag
  std::string utf8_hold_;    // a string value's incomplete UTF-8 tail, until the next piece
  std::set<std::string> param_names_;
};

// Whole-output convenience (non-streaming): OFF's parse_message_from_completion_text with
// errors collected instead of asserted.
struct ParsedAssistant {
  std::string reasoning;
  std::string content;
  std::vector<ToolCall> tool_calls;
  std::vector<std::string> errors;
};
ParsedAssistant parse_assistant_output(std::string_view text, bool thinking);

// Arguments JSON text from DSML parameters, as OFF's decode_dsml_to_arguments builds it:
// {"name": value, ...} with string values quoted and non-string values verbatim.
std::string dsml_arguments_json(const std::vector<std::tuple<std::string, std::string, bool>>& params);

}  // namespace ds4::chat
