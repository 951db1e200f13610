#include "server/request.h"

#include <cmath>

#include <fmt/format.h>

#include "chat/render.h"
#include "server/errors.h"
#include "server/ids.h"
#include "server/server_context.h"

namespace ds4::server {

json parse_body(const std::string& body) {
  json j;
  try {
    // Depth is bounded by the body size limit; nlohmann parses iteratively enough for 64 MiB.
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    bad_request("", fmt::format("request body is not valid JSON: {}", e.what()));
  }
  if (!j.is_object()) bad_request("", "request body must be a JSON object");
  return j;
}

const json* opt_field(const json& j, const char* key, json::value_t type, const char* type_name) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  const bool ok = type == json::value_t::number_float ? it->is_number()
                  : type == json::value_t::number_integer ? it->is_number_integer()
                                                          : it->type() == type;
  if (!ok) bad_request(key, fmt::format("'{}' must be {}", key, type_name));
  return &*it;
}

std::optional<std::string> opt_string(const json& j, const char* key) {
  const json* v = opt_field(j, key, json::value_t::string, "a string");
  return v ? std::optional<std::string>(v->get<std::string>()) : std::nullopt;
}
std::optional<double> opt_number(const json& j, const char* key) {
  const json* v = opt_field(j, key, json::value_t::number_float, "a number");
  if (!v) return std::nullopt;
  const double d = v->get<double>();
  if (!std::isfinite(d)) bad_request(key, fmt::format("'{}' must be finite", key));
  return d;
}
std::optional<int64_t> opt_int(const json& j, const char* key) {
  const json* v = opt_field(j, key, json::value_t::number_integer, "an integer");
  return v ? std::optional<int64_t>(v->get<int64_t>()) : std::nullopt;
}
std::optional<bool> opt_bool(const json& j, const char* key) {
  const json* v = opt_field(j, key, json::value_t::boolean, "a boolean");
  return v ? std::optional<bool>(v->get<bool>()) : std::nullopt;
}

std::string content_text(const json& content, const char* field) {
  if (content.is_null()) return {};
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) bad_request(field, fmt::format("'{}' must be a string or an array of parts", field));
  std::string out;
  for (const json& part : content) {
    if (part.is_string()) {
      out += part.get<std::string>();
      continue;
    }
    if (!part.is_object()) bad_request(field, fmt::format("'{}' parts must be objects", field));
    const std::string type = part.value("type", "text");
    if (type == "text" || type == "input_text" || type == "output_text") {
      out += opt_string(part, "text").value_or("");
    } else {
      bad_request(field, fmt::format("content part type '{}' is not supported (text only)", type));
    }
  }
  return out;
}

chat::Thinking thinking_from_effort(const std::string& effort, int64_t ctx, const char* field) {
  if (effort == "none") return chat::Thinking::Off;
  // DeepSeek V4 has two reasoning levels; "max" needs a long context (peer-ds4.md 2.6).
  if (effort == "max") return ctx >= 393216 ? chat::Thinking::Max : chat::Thinking::High;
  if (effort == "minimal" || effort == "low" || effort == "medium" || effort == "high" || effort == "xhigh")
    return chat::Thinking::High;
  bad_request(field, fmt::format("unknown reasoning effort '{}'", effort));
}

std::vector<std::string> parse_stop(const json& v, const char* field) {
  std::vector<std::string> out;
  if (v.is_null()) return out;
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    for (const json& s : v) {
      if (!s.is_string()) bad_request(field, fmt::format("'{}' must hold strings", field));
      out.push_back(s.get<std::string>());
    }
  } else {
    bad_request(field, fmt::format("'{}' must be a string or an array of strings", field));
  }
  if (out.size() > 16) bad_request(field, fmt::format("'{}' holds more than 16 sequences", field));
  for (const auto& s : out)
    if (s.empty()) bad_request(field, fmt::format("'{}' must not contain empty strings", field));
  return out;
}

void parse_common(const json& j, ApiRequest& r, ServerContext& ctx) {
  r.model = opt_string(j, "model").value_or(ctx.opt.model_id);
  bool known = r.model == ctx.opt.model_id || r.model == "deepseek-chat" || r.model == "deepseek-reasoner";
  for (const auto& a : ctx.opt.model_aliases) known = known || r.model == a;
  if (!known) {
    ApiError e(404, "not_found_error", fmt::format("model '{}' does not exist; this server serves '{}'", r.model,
                                                   ctx.opt.model_id),
               "model", "model_not_found");
    throw e;
  }
  if (r.model == "deepseek-chat") r.thinking = chat::Thinking::Off;
  if (auto t = opt_number(j, "temperature")) {
    if (*t < 0 || *t > 2) bad_request("temperature", "'temperature' must be between 0 and 2");
    r.sampling.temperature = static_cast<float>(*t);
  }
  if (auto t = opt_number(j, "top_p")) {
    if (*t <= 0 || *t > 1) bad_request("top_p", "'top_p' must be in (0, 1]");
    r.sampling.top_p = static_cast<float>(*t);
  }
  if (auto t = opt_int(j, "top_k")) {
    if (*t < 0) bad_request("top_k", "'top_k' must be >= 0");
    r.sampling.top_k = static_cast<int>(std::min<int64_t>(*t, 1 << 20));
  }
  if (auto t = opt_number(j, "min_p")) {
    if (*t < 0 || *t > 1) bad_request("min_p", "'min_p' must be in [0, 1]");
    r.sampling.min_p = static_cast<float>(*t);
  }
  if (auto t = opt_int(j, "seed")) r.sampling.seed = static_cast<uint64_t>(*t);
  r.stream = opt_bool(j, "stream").value_or(false);
}

namespace {

std::optional<ForcedTool> forced_tool(const chat::Json& fn) {
  ForcedTool t;
  t.name = fn.value("name", "");
  if (t.name.empty()) return std::nullopt;
  const auto p = fn.find("parameters");
  if (p != fn.end() && p->is_object()) {
    const auto req = p->find("required");
    const auto props = p->find("properties");
    if (req != p->end() && req->is_array()) {
      for (const auto& name : *req) {
        if (!name.is_string()) continue;
        ForcedParam fp{name.get<std::string>(), true};
        if (props != p->end() && props->is_object() && props->contains(fp.name)) {
          const auto& schema = (*props)[fp.name];
          // Raw text only for a plain string type (or none); a type list such as
          // ["string", "null"] is a JSON value (string="false").
          const auto type = schema.is_object() ? schema.find("type") : schema.end();
          fp.is_string = !schema.is_object() || type == schema.end() || (type->is_string() && *type == "string");
          fp.kinds = json_kinds_of_schema(schema);
        }
        t.params.push_back(std::move(fp));
      }
    }
  }
  return t;
}

// JSON kinds of every declared parameter, for guiding string="false" values the model writes.
std::shared_ptr<const ParamKinds> param_kinds(const std::vector<chat::Json>& tools) {
  auto out = std::make_shared<ParamKinds>();
  for (const auto& fn : tools) {
    if (!fn.is_object()) continue;
    auto& params = (*out)[fn.value("name", "")];
    const auto p = fn.find("parameters");
    if (p == fn.end() || !p->is_object()) continue;
    const auto props = p->find("properties");
    if (props == p->end() || !props->is_object()) continue;
    for (auto it = props->begin(); it != props->end(); ++it) params[it.key()] = json_kinds_of_schema(it.value());
  }
  return out;
}

// Replaces replayed tool-call turns the server generated by the exact sampled bytes. The
// assistant content becomes an unguessable placeholder, swapped for the sampled pieces after
// rendering (DSML markers as tokens, the rest as text).
std::vector<std::pair<std::string, std::string>> apply_tool_replay(chat::Conversation& conv, ToolMemory& mem) {
  std::vector<std::pair<std::string, std::string>> subs;
  for (chat::Message& m : conv.messages) {
    if (m.role != chat::Role::Assistant || m.tool_calls.empty()) continue;
    std::vector<std::string> ids;
    for (const auto& c : m.tool_calls) ids.push_back(c.id);
    auto sampled = mem.get(ids);
    if (!sampled) continue;
    const std::string mark = "\x01" + random_id("replay") + "\x01";
    subs.emplace_back(mark, *sampled);
    m.content = mark;
    m.tool_calls.clear();
  }
  return subs;
}

void substitute(chat::Pieces& pieces, const std::vector<std::pair<std::string, std::string>>& subs) {
  static constexpr std::string_view kDsml = "｜DSML｜";
  for (const auto& [mark, text] : subs) {
    for (size_t i = 0; i < pieces.size(); ++i) {
      if (pieces[i].special) continue;
      const size_t at = pieces[i].text.find(mark);
      if (at == std::string::npos) continue;
      chat::Pieces repl;
      auto add_text = [&](std::string_view s) {
        if (s.empty()) return;
        if (!repl.empty() && !repl.back().special) repl.back().text += s;
        else repl.push_back({std::string(s), false});
      };
      add_text(std::string_view(pieces[i].text).substr(0, at));
      size_t p = 0;
      while (p < text.size()) {
        const size_t m = text.find(kDsml, p);
        add_text(std::string_view(text).substr(p, (m == std::string::npos ? text.size() : m) - p));
        if (m == std::string::npos) break;
        repl.push_back({std::string(kDsml), true});
        p = m + kDsml.size();
      }
      add_text(std::string_view(pieces[i].text).substr(at + mark.size()));
      pieces.erase(pieces.begin() + static_cast<std::ptrdiff_t>(i));
      pieces.insert(pieces.begin() + static_cast<std::ptrdiff_t>(i), repl.begin(), repl.end());
      break;
    }
  }
}

void render(ApiRequest& r, ServerContext& ctx, GenJob& job) {
  const tok::Tokenizer& tok = ctx.engine.tokenizer();
  if (r.raw) {
    // Raw completions: the client owns the whole prompt, control tokens included.
    job.prompt = tok.encode(r.raw_prompt, /*allow_special=*/true);
    if (job.prompt.empty() || job.prompt.front() != tok.bos_id()) job.prompt.insert(job.prompt.begin(), tok.bos_id());
    return;
  }
  if (r.tool_choice == ToolChoice::None) r.conv.tools.clear();
  const auto subs = apply_tool_replay(r.conv, ctx.tool_memory);
  try {
    job.pieces = chat::render_pieces(r.conv, {.thinking = r.thinking});
  } catch (const std::exception& e) {
    bad_request("messages", e.what());
  }
  substitute(job.pieces, subs);
  job.prompt = chat::pieces_to_tokens(job.pieces, tok);
  if (!subs.empty()) ctx.trace->log(job.id, "tool replay", fmt::format("{} turns rendered as sampled", subs.size()));
}

}  // namespace

std::shared_ptr<GenJob> make_job(ApiRequest& r, ServerContext& ctx) {
  auto job = std::make_shared<GenJob>();
  job->id = random_id("req_");
  if ((r.tool_choice == ToolChoice::Required || r.tool_choice == ToolChoice::Named) && r.conv.tools.empty())
    bad_request("tool_choice", "tool_choice requires tools");
  if (r.tool_choice == ToolChoice::Required || r.tool_choice == ToolChoice::Named) {
    ForcedCall fc;
    for (const auto& fn : r.conv.tools) {
      if (r.tool_choice == ToolChoice::Named && fn.value("name", "") != r.tool_name) continue;
      if (auto t = forced_tool(fn)) fc.tools.push_back(std::move(*t));
    }
    if (fc.tools.empty()) bad_request("tool_choice", fmt::format("tool_choice names an unknown tool '{}'", r.tool_name));
    job->forced = std::move(fc);
  }
  if (r.tool_choice != ToolChoice::None && !r.conv.tools.empty()) job->param_kinds = param_kinds(r.conv.tools);
  render(r, ctx, *job);
  const int64_t n = static_cast<int64_t>(job->prompt.size());
  if (n >= ctx.opt.ctx) {
    ApiError e(400, "invalid_request_error",
               fmt::format("the prompt has {} tokens; this server's context is {} tokens", n, ctx.opt.ctx), "messages",
               "context_length_exceeded");
    e.extra = {{"n_prompt_tokens", n}, {"n_ctx", ctx.opt.ctx}};
    throw e;
  }
  job->thinking = !r.raw && r.thinking != chat::Thinking::Off;
  // The official API ignores sampling knobs while thinking (peer-ds4.md 2.6); so do we.
  if (job->thinking) r.sampling.apply_thinking_overrides();
  r.sampling.stop_tokens = {ctx.engine.tokenizer().eos_id()};
  const int64_t room = ctx.opt.ctx - n;
  const int64_t want = r.max_tokens < 0 ? ctx.opt.default_max_tokens : r.max_tokens;
  r.sampling.max_tokens = static_cast<int>(std::min(want, room));
  job->sampling = r.sampling;
  job->reasoning_budget = r.reasoning_budget;
  if (job->thinking && job->forced && job->reasoning_budget < 0) {
    // A forced call must fit in the limit: thinking gets at most a quarter of it.
    job->reasoning_budget = std::max<int64_t>(1, r.sampling.max_tokens / 4);
  }
  job->top_logprobs = r.top_logprobs;
  if (ctx.trace->enabled() && !job->pieces.empty())
    ctx.trace->log(job->id, "rendered prompt", chat::pieces_to_text(job->pieces));
  return job;
}

int64_t count_prompt_tokens(ApiRequest& r, ServerContext& ctx) {
  GenJob job;
  render(r, ctx, job);
  return static_cast<int64_t>(job.prompt.size());
}

}  // namespace ds4::server
