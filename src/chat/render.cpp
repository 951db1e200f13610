// Follows encoding_dsv4.py's encode_messages step by step: merge tool results into user
// turns, sort them into call order, drop old reasoning, then render each message and the
// transition after it. Comments name the OFF function each part mirrors.
#include "chat/render.h"

#include <algorithm>
#include <map>

#include "chat/dsml_format.h"
#include "chat/py_json.h"
#include "core/error.h"

namespace ds4::chat {

const std::string_view kThinkMaxPrefix =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root "
    "cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial "
    "scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

const char* role_name(Role r) {
  switch (r) {
    case Role::System: return "system";
    case Role::Developer: return "developer";
    case Role::User: return "user";
    case Role::Assistant: return "assistant";
    case Role::Tool: return "tool";
    case Role::LatestReminder: return "latest_reminder";
  }
  return "?";
}

namespace {

struct Block {
  bool tool_result = false;
  std::string text;
  std::string tool_use_id;
};

// A message after merge_tool_messages: user turns carry blocks.
struct Msg {
  const Message* src = nullptr;
  Role role = Role::User;
  std::vector<Block> blocks;  // user only
  bool tools = false;         // carries the tools block (system/developer)
};

void text(Pieces& out, std::string_view s) {
  if (s.empty()) return;
  if (!out.empty() && !out.back().special) out.back().text += s;
  else out.push_back({std::string(s), false});
}
void special(Pieces& out, std::string_view s) { out.push_back({std::string(s), true}); }

const std::map<std::string, std::string, std::less<>>& task_tokens() {
  static const std::map<std::string, std::string, std::less<>> m = {
      {"action", "<｜action｜>"}, {"query", "<｜query｜>"},   {"authority", "<｜authority｜>"},
      {"domain", "<｜domain｜>"}, {"title", "<｜title｜>"}, {"read_url", "<｜read_url｜>"}};
  return m;
}

// merge_tool_messages: tool results become tool_result blocks of a user turn; consecutive
// user turns (and results) share one turn, except after a user turn that carries a task.
Msg make_msg(const Message* src, Role role, std::vector<Block> blocks = {}) {
  Msg m;
  m.src = src;
  m.role = role;
  m.blocks = std::move(blocks);
  return m;
}

std::vector<Msg> merge(const std::vector<Message>& in) {
  std::vector<Msg> out;
  for (const Message& m : in) {
    if (m.role == Role::Tool) {
      Block b{true, m.content, m.tool_call_id};
      if (!out.empty() && out.back().role == Role::User) out.back().blocks.push_back(std::move(b));
      else out.push_back(make_msg(&m, Role::User, {std::move(b)}));
    } else if (m.role == Role::User) {
      Block b{false, m.content, {}};
      if (!out.empty() && out.back().role == Role::User && !(out.back().src && out.back().src->task))
        out.back().blocks.push_back(std::move(b));
      else out.push_back(make_msg(&m, Role::User, {std::move(b)}));
    } else {
      out.push_back(make_msg(&m, m.role));
    }
  }
  return out;
}

// sort_tool_results_by_call_order: results of a turn in the order of the last assistant's
// calls (stable; unknown ids count as position 0, like OFF).
void sort_results(std::vector<Msg>& msgs) {
  std::map<std::string, size_t> order;
  for (Msg& m : msgs) {
    if (m.role == Role::Assistant && !m.src->tool_calls.empty()) {
      order.clear();
      for (size_t i = 0; i < m.src->tool_calls.size(); ++i)
        if (!m.src->tool_calls[i].id.empty()) order[m.src->tool_calls[i].id] = i;
    } else if (m.role == Role::User && !order.empty()) {
      std::vector<Block> results;
      for (const Block& b : m.blocks)
        if (b.tool_result) results.push_back(b);
      if (results.size() < 2) continue;
      auto pos = [&](const Block& b) {
        auto it = order.find(b.tool_use_id);
        return it == order.end() ? size_t{0} : it->second;
      };
      std::stable_sort(results.begin(), results.end(), [&](const Block& a, const Block& b) { return pos(a) < pos(b); });
      size_t k = 0;
      for (Block& b : m.blocks)
        if (b.tool_result) b = results[k++];
    }
  }
}

int last_user_index(const std::vector<Msg>& msgs) {
  for (int i = static_cast<int>(msgs.size()) - 1; i >= 0; --i)
    if (msgs[i].role == Role::User || msgs[i].role == Role::Developer) return i;
  return -1;
}

// _drop_thinking_messages: developer turns before the last user turn disappear. (OFF also
// strips those assistants' reasoning here; rendering skips it anyway, since the thinking part
// of a turn before the last user turn is not rendered in this mode.)
std::vector<Msg> drop_thinking(const std::vector<Msg>& msgs) {
  int last = last_user_index(msgs);
  std::vector<Msg> out;
  for (int i = 0; i < static_cast<int>(msgs.size()); ++i) {
    const Msg& m = msgs[i];
    bool keep_role = m.role == Role::User || m.role == Role::System || m.role == Role::LatestReminder;
    if (keep_role || i >= last || m.role == Role::Assistant) out.push_back(m);
  }
  return out;
}

}  // namespace

Pieces render_pieces(const Conversation& conv, const RenderOptions& opt) {
  // Tools and response_format belong to the first system message (OFF attaches them to a
  // system message; without one, an empty system message carries them).
  std::vector<Message> messages = conv.messages;
  bool need_system = !conv.tools.empty() || conv.response_format.has_value();
  auto sys_it = std::find_if(messages.begin(), messages.end(), [](const Message& m) { return m.role == Role::System; });
  if (need_system && sys_it == messages.end()) {
    messages.insert(messages.begin(), make_message(Role::System, ""));
    sys_it = messages.begin();
  }
  const Message* tools_owner = need_system ? &*sys_it : nullptr;

  std::vector<Msg> msgs = merge(messages);
  sort_results(msgs);
  for (Msg& m : msgs) m.tools = m.src == tools_owner && m.role == Role::System;

  const bool thinking = opt.thinking != Thinking::Off;
  const bool drop = opt.drop_thinking && conv.tools.empty();
  if (thinking && drop) msgs = drop_thinking(msgs);
  const int last_user = last_user_index(msgs);

  Pieces out;
  if (opt.add_bos) special(out, tokens::kBos);
  for (int i = 0; i < static_cast<int>(msgs.size()); ++i) {
    const Msg& m = msgs[i];
    const Message& src = *m.src;
    if (i == 0 && opt.thinking == Thinking::Max) text(out, kThinkMaxPrefix);

    auto tools_and_format = [&] {
      if (m.tools && !conv.tools.empty()) {
        text(out, "\n\n");
        append_tools_block(out, conv.tools);
      }
      if (m.tools && conv.response_format) {
        text(out, "\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n");
        text(out, py_dumps(*conv.response_format));
      }
    };

    switch (m.role) {
      case Role::System:
        text(out, src.content);
        tools_and_format();
        break;
      case Role::Developer:
        if (src.content.empty()) fail("chat: a developer message needs content");
        special(out, tokens::kUser);
        text(out, src.content);
        tools_and_format();
        break;
      case Role::User:
        special(out, tokens::kUser);
        for (size_t k = 0; k < m.blocks.size(); ++k) {
          if (k) text(out, "\n\n");
          const Block& b = m.blocks[k];
          if (b.tool_result) text(out, "<tool_result>" + b.text + "</tool_result>");
          else text(out, b.text);
        }
        break;
      case Role::LatestReminder:
        special(out, tokens::kLatestReminder);
        text(out, src.content);
        break;
      case Role::Assistant: {
        bool prev_task = i > 0 && msgs[i - 1].src->task.has_value();
        if (thinking && !prev_task && (!drop || i > last_user)) {
          text(out, src.reasoning);
          special(out, tokens::kThinkEnd);
        }
        text(out, src.content);
        if (!src.tool_calls.empty()) append_tool_calls(out, src.tool_calls);
        if (!src.no_eos) special(out, tokens::kEos);
        break;
      }
      case Role::Tool:
        break;  // merged into user turns above
    }

    // The transition to the next turn, only before an assistant/latest_reminder turn or at
    // the end (OFF render_message's tail).
    if (i + 1 < static_cast<int>(msgs.size()) && msgs[i + 1].role != Role::Assistant &&
        msgs[i + 1].role != Role::LatestReminder)
      continue;
    if (src.task) {
      auto it = task_tokens().find(*src.task);
      if (it == task_tokens().end()) fail("chat: unknown task '{}'", *src.task);
      if (*src.task != "action") {
        special(out, it->second);
      } else {
        special(out, tokens::kAssistant);
        special(out, thinking ? tokens::kThink : tokens::kThinkEnd);
        special(out, it->second);
      }
    } else if (m.role == Role::User || m.role == Role::Developer) {
      special(out, tokens::kAssistant);
      bool open_think = thinking && (!drop || i >= last_user);
      special(out, open_think ? tokens::kThink : tokens::kThinkEnd);
    }
  }
  return out;
}

std::vector<int32_t> pieces_to_tokens(const Pieces& pieces, const tok::Tokenizer& tok) {
  std::vector<int32_t> ids;
  std::string run;
  for (const Piece& p : pieces) {
    if (!p.special) {
      run += p.text;
      continue;
    }
    if (!run.empty()) {
      tok.encode_append(run, /*allow_special=*/false, ids);
      run.clear();
    }
    ids.push_back(tok.require(p.text));
  }
  if (!run.empty()) tok.encode_append(run, false, ids);
  return ids;
}

std::string pieces_to_text(const Pieces& pieces) {
  std::string s;
  for (const Piece& p : pieces) s += p.text;
  return s;
}

std::vector<int32_t> render_single_turn(const tok::Tokenizer& tok, std::string_view system,
                                        std::string_view user, Thinking thinking) {
  Conversation c;
  if (!system.empty()) c.messages.push_back(make_message(Role::System, std::string(system)));
  c.messages.push_back(make_message(Role::User, std::string(user)));
  RenderOptions opt;
  opt.thinking = thinking;
  return render_tokens(c, tok, opt);
}

}  // namespace ds4::chat
