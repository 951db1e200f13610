#include "quality/official.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "chat/render.h"
#include "core/error.h"
#include "quality/distribution.h"
#include "tokenizer/tokenizer.h"

namespace ds4::quality {

OfficialCase parse_official_json(const std::string& text, const std::string& what) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", what, e.what());
  }
  try {
    if (j.value("schema", std::string()) != "ds4-official-logprobs-v1")
      fail("{}: schema is not ds4-official-logprobs-v1", what);
    OfficialCase c;
    c.id = j.at("id").get<std::string>();
    c.prompt = j.at("prompt").get<std::string>();
    if (j.contains("usage") && j["usage"].contains("prompt_tokens"))
      c.api_prompt_tokens = j["usage"]["prompt_tokens"].get<int64_t>();
    for (const auto& s : j.at("steps")) {
      OfficialStep st;
      for (const auto& b : s.at("token").at("bytes")) {
        const int v = b.get<int>();
        if (v < 0 || v > 255) fail("{}: byte {} out of range", what, v);
        st.bytes.push_back(static_cast<char>(v));
      }
      st.logprob = s.at("logprob").get<float>();
      c.steps.push_back(std::move(st));
    }
    if (c.steps.empty()) fail("{}: no steps", what);
    return c;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {}", what, e.what());
  }
}

std::vector<OfficialCase> load_official_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  fs::path d(dir);
  if (fs::is_directory(d / "official")) d /= "official";
  if (!fs::is_directory(d)) fail("{} is not a directory", dir);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(d)) {
    const std::string n = e.path().filename().string();
    if (n.size() > 14 && n.ends_with(".official.json")) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) fail("{}: no *.official.json files", d.string());
  std::vector<OfficialCase> out;
  for (const auto& p : files) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    out.push_back(parse_official_json(ss.str(), p.string()));
  }
  return out;
}

void score_targets(const std::vector<std::vector<float>>& rows, const std::vector<int32_t>& targets,
                   CaseScore& out) {
  if (rows.size() != targets.size()) fail("{} logits rows for {} targets", rows.size(), targets.size());
  out.target_tokens = static_cast<int64_t>(targets.size());
  out.nll = 0;
  out.greedy_lcp = 0;
  bool prefix = true;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<double> lp(rows[i].size());
    log_softmax(rows[i], lp);
    const int32_t t = targets[i];
    if (t < 0 || static_cast<size_t>(t) >= lp.size()) fail("target id {} outside the vocabulary", t);
    out.nll -= lp[static_cast<size_t>(t)];
    const bool match = argmax(lp) == t;
    if (i == 0) out.first_match = match;
    if (prefix && match) ++out.greedy_lcp;
    else prefix = false;
  }
}

CaseScore score_case(LogitsSource& src, const tok::Tokenizer& tok, const OfficialCase& c) {
  CaseScore s;
  s.id = c.id;
  s.api_prompt_tokens = c.api_prompt_tokens;
  std::vector<int32_t> seq = chat::render_single_turn(tok, "", c.prompt, chat::Thinking::Off);
  s.prompt_tokens = static_cast<int64_t>(seq.size());
  std::vector<int32_t> targets;
  for (size_t i = 0; i < c.steps.size(); ++i) {
    // The API reports tokens as bytes; they are tokens of the model's vocabulary, looked up
    // exactly (re-tokenizing the joined text could merge across step boundaries).
    const auto id = tok.find(c.steps[i].bytes);
    if (!id) fail("case {}: step {}'s token is not in the tokenizer's vocabulary", c.id, i);
    targets.push_back(*id);
  }
  // Row p predicts token p + 1: rows prompt_len - 1 .. prompt_len + n - 2 score the targets,
  // so the last target itself is never fed.
  seq.insert(seq.end(), targets.begin(), targets.end() - 1);
  const auto V = static_cast<size_t>(src.n_vocab());
  const size_t P = static_cast<size_t>(s.prompt_tokens);
  src.reset();
  if (P > 1) src.eval(std::span(seq).first(P - 1), nullptr);
  const size_t n = targets.size();
  std::vector<float> buf(n * V);
  src.eval(std::span(seq).subspan(P - 1, n), buf.data());
  std::vector<std::vector<float>> rows(n);
  for (size_t i = 0; i < n; ++i) rows[i].assign(buf.begin() + static_cast<std::ptrdiff_t>(i * V),
                                                buf.begin() + static_cast<std::ptrdiff_t>((i + 1) * V));
  score_targets(rows, targets, s);
  return s;
}

OfficialSummary summarize(const std::vector<CaseScore>& v) {
  OfficialSummary s;
  for (const auto& c : v) {
    ++s.cases;
    s.tokens += c.target_tokens;
    s.nll += c.nll;
    s.first_matches += c.first_match ? 1 : 0;
    s.mean_lcp += static_cast<double>(c.greedy_lcp);
  }
  if (s.cases) s.mean_lcp /= static_cast<double>(s.cases);
  return s;
}

std::string to_tsv(const std::vector<CaseScore>& v) {
  std::string s = "id\tprompt_tokens\ttarget_tokens\tnll\tavg_nll\tfirst_match\tgreedy_lcp\n";
  for (const auto& c : v)
    s += fmt::format("{}\t{}\t{}\t{:.6f}\t{:.6f}\t{}\t{}\n", c.id, c.prompt_tokens, c.target_tokens,
                     c.nll, c.avg_nll(), c.first_match ? 1 : 0, c.greedy_lcp);
  return s;
}

std::string to_json(const std::vector<CaseScore>& v) {
  nlohmann::json j;
  j["cases"] = nlohmann::json::array();
  for (const auto& c : v)
    j["cases"].push_back({{"id", c.id},
                          {"prompt_tokens", c.prompt_tokens},
                          {"api_prompt_tokens", c.api_prompt_tokens},
                          {"target_tokens", c.target_tokens},
                          {"nll", c.nll},
                          {"avg_nll", c.avg_nll()},
                          {"first_match", c.first_match},
                          {"greedy_lcp", c.greedy_lcp}});
  const OfficialSummary s = summarize(v);
  j["summary"] = {{"cases", s.cases},          {"target_tokens", s.tokens},
                  {"avg_nll", s.avg_nll()},    {"first_matches", s.first_matches},
                  {"mean_greedy_lcp", s.mean_lcp}};
  return j.dump(2);
}

}  // namespace ds4::quality
