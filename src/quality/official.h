// `ds4-quality official`: teacher-forced scoring of the official API's recorded greedy
// continuations (the test-vector format of /work/shared/test-vectors, formats.md section 6).
// Each case's prompt is rendered as one non-thinking user turn (BOS, <｜User｜>, text,
// <｜Assistant｜>, </think>); the official tokens, given as bytes, are looked up in the model's
// vocabulary; the model is fed prompt + targets and scored on the targets.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quality/windows.h"

namespace ds4::tok {
class Tokenizer;
}

namespace ds4::quality {

struct OfficialStep {
  std::string bytes;            // the chosen token's bytes
  float logprob = 0;            // the API's log-prob of it
};

struct OfficialCase {
  std::string id;
  std::string prompt;
  int64_t api_prompt_tokens = -1;  // usage.prompt_tokens, -1 when absent
  std::vector<OfficialStep> steps;
};

// Parses one *.official.json (schema ds4-official-logprobs-v1); throws naming the file/field.
OfficialCase parse_official_json(const std::string& text, const std::string& what);
// Every *.official.json of DIR (or of DIR/official), sorted by file name.
std::vector<OfficialCase> load_official_dir(const std::string& dir);

struct CaseScore {
  std::string id;
  int64_t prompt_tokens = 0, target_tokens = 0;
  int64_t api_prompt_tokens = -1;
  double nll = 0;            // -sum log p(target_i)
  bool first_match = false;  // argmax at step 0 == target 0
  int64_t greedy_lcp = 0;    // leading steps where argmax == target
  double avg_nll() const { return target_tokens ? nll / static_cast<double>(target_tokens) : 0; }
};

// The scoring of one case from its logits rows: rows[i] (n_vocab floats) is the distribution
// of targets[i]. Separate from the model so the arithmetic is testable with any logits.
void score_targets(const std::vector<std::vector<float>>& rows, const std::vector<int32_t>& targets,
                   CaseScore& out);

// Renders and scores one case with `src` (reset first).
CaseScore score_case(LogitsSource& src, const tok::Tokenizer& tok, const OfficialCase& c);

struct OfficialSummary {
  int64_t cases = 0, tokens = 0, first_matches = 0;
  double nll = 0, mean_lcp = 0;
  double avg_nll() const { return tokens ? nll / static_cast<double>(tokens) : 0; }
};
OfficialSummary summarize(const std::vector<CaseScore>& s);

// score_official's TSV: id, prompt_tokens, target_tokens, nll, avg_nll, first_match, greedy_lcp.
std::string to_tsv(const std::vector<CaseScore>& s);
std::string to_json(const std::vector<CaseScore>& s);

}  // namespace ds4::quality
