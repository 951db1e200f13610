// Rendering a Conversation into the token sequence the model was trained on, exactly as the
// official encoder (encoding_dsv4.py, architecture.md 7.3-7.4) renders it to text, except for
// one deliberate difference: text that comes from users, tools or schemas is tokenized with
// special-token matching OFF and structural tokens are inserted by id, so a user typing
// "<｜Assistant｜>" gets those characters, never the control token.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "chat/conversation.h"
#include "tokenizer/tokenizer.h"

namespace ds4::chat {

// The prompt as a sequence of plain text and structural tokens (by their text).
struct Piece {
  std::string text;
  bool special = false;  // `text` names one added token (e.g. "<｜User｜>")
};
using Pieces = std::vector<Piece>;

struct RenderOptions {
  Thinking thinking = Thinking::High;
  bool add_bos = true;
  // OFF's drop_thinking: reasoning of assistant turns before the last user turn is not
  // rendered (and developer turns there are dropped) unless tools are present.
  bool drop_thinking = true;
};

// The structural tokens of the format, by text.
namespace tokens {
inline constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
inline constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view kUser = "<｜User｜>";
inline constexpr std::string_view kAssistant = "<｜Assistant｜>";
inline constexpr std::string_view kLatestReminder = "<｜latest_reminder｜>";
inline constexpr std::string_view kThink = "<think>";
inline constexpr std::string_view kThinkEnd = "</think>";
inline constexpr std::string_view kDsml = "｜DSML｜";
}  // namespace tokens

// The exact "Reasoning Effort: Absolute maximum..." prefix of --think-max (7.3).
extern const std::string_view kThinkMaxPrefix;

Pieces render_pieces(const Conversation& conv, const RenderOptions& opt = {});

// Pieces -> ids: consecutive text pieces are joined and tokenized together without special
// matching (OFF tokenizes the text between two control tokens as one chunk); special pieces
// become their token id (throws if the tokenizer lacks one).
std::vector<int32_t> pieces_to_tokens(const Pieces& pieces, const tok::Tokenizer& tok);
// Pieces -> the prompt string as OFF's encode_messages returns it.
std::string pieces_to_text(const Pieces& pieces);

inline std::vector<int32_t> render_tokens(const Conversation& conv, const tok::Tokenizer& tok,
                                          const RenderOptions& opt = {}) {
  return pieces_to_tokens(render_pieces(conv, opt), tok);
}

// The CLI's single turn: BOS [think-max prefix] [system] <｜User｜>user<｜Assistant｜> then
// <think> (High, Max) or </think> (Off). An empty system text renders no system message.
std::vector<int32_t> render_single_turn(const tok::Tokenizer& tok, std::string_view system,
                                        std::string_view user, Thinking thinking);

}  // namespace ds4::chat
