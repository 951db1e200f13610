#include "quality/compare.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace ds4::quality {

namespace {
// Jaccard overlap of two id sets sorted ascending.
double jaccard(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  std::vector<int32_t> both;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(both));
  const double uni = static_cast<double>(a.size() + b.size() - both.size());
  return uni > 0 ? static_cast<double>(both.size()) / uni : 1.0;
}
}  // namespace

void check_compatible(const Reference& ref, const CompareTarget& t, int64_t n_vocab) {
  if (ref.tokenizer != t.tokenizer)
    fail("the reference was computed with another tokenizer (reference: {}, model: {}); its token "
         "ids would mean other text for this model",
         tokenizer_name(ref.tokenizer), tokenizer_name(t.tokenizer));
  if (static_cast<int64_t>(ref.n_vocab) != n_vocab)
    fail("the reference has a vocabulary of {} ids, the model {}", ref.n_vocab, n_vocab);
  if (t.tokens && tokens_digest(*t.tokens) != ref.tokens_sha)
    fail("the reference was computed on another text: token stream SHA-256 {} ({} tokens), the "
         "given input has {} ({} tokens)",
         hex(ref.tokens_sha), ref.tokens.size(), hex(tokens_digest(*t.tokens)), t.tokens->size());
}

CompareResult compare(LogitsSource& model, const Reference& ref) {
  CompareResult r;
  r.kl_is_bucketed = !ref.full;
  r.k = ref.k;
  const auto V = static_cast<size_t>(model.n_vocab());
  if (V != ref.n_vocab) fail("the reference has a vocabulary of {} ids, the model {}", ref.n_vocab, V);
  std::vector<double> lp(V), rlp(ref.full ? V : 0);
  size_t next = 0;
  score_windows(model, ref.tokens, ref.windows, [&](int64_t target, std::span<const float> logits) {
    if (next >= ref.positions.size() || ref.positions[next].target != target)
      fail("reference positions do not follow its window plan (ctx {}, stride {}) at target {}",
           ref.windows.ctx, ref.windows.stride, target);
    const RefPosition& rp = ref.positions[next++];
    log_softmax(logits, lp);
    PositionStats s;
    s.target = target;
    s.token = ref.tokens[static_cast<size_t>(target)];
    s.model_top = argmax(lp);
    s.ref_nll = -rp.target_lp;
    s.model_nll = -lp[static_cast<size_t>(s.token)];
    double ref_top_lp = 0;
    if (ref.full) {
      std::copy(rp.full.begin(), rp.full.end(), rlp.begin());
      s.kl = kl_full(rlp, lp);
      s.ref_top = argmax(rlp);
      ref_top_lp = rlp[static_cast<size_t>(s.ref_top)];
      const auto rn = nucleus(rlp, kTopP), mn = nucleus(lp, kTopP);
      s.same_top_p = rn == mn ? 1 : 0;
      s.top_p_jaccard = jaccard(rn, mn);
    } else {
      s.kl = kl_topk(rp.top, lp);
      s.ref_top = rp.top.ids[0];
      ref_top_lp = rp.top.lp[0];
      const auto rn = nucleus(rp.top, kTopP);
      if (!rn.empty()) {
        const auto mn = nucleus(lp, kTopP);
        s.same_top_p = rn == mn ? 1 : 0;
        s.top_p_jaccard = jaccard(rn, mn);
      }
    }
    s.delta_top_lp = lp[static_cast<size_t>(s.ref_top)] - ref_top_lp;
    r.positions.push_back(s);
  });
  if (next != ref.positions.size())
    fail("the reference has {} positions, its window plan scores {}", ref.positions.size(), next);
  summarize(r);
  return r;
}

void summarize(CompareResult& r) {
  const auto n = static_cast<double>(r.positions.size());
  if (r.positions.empty()) fail("nothing to compare: no scored positions");
  std::vector<double> kls;
  double top1 = 0, tp = 0, jac = 0, dsum = 0, dmax = 0, rn = 0, mn = 0;
  r.n_top_p = 0;
  for (const PositionStats& s : r.positions) {
    kls.push_back(s.kl);
    top1 += s.ref_top == s.model_top ? 1 : 0;
    if (s.same_top_p >= 0) {
      tp += s.same_top_p;
      jac += s.top_p_jaccard;
      ++r.n_top_p;
    }
    dsum += std::abs(s.delta_top_lp);
    dmax = std::max(dmax, std::abs(s.delta_top_lp));
    rn += s.ref_nll;
    mn += s.model_nll;
  }
  double sum = 0;
  for (double k : kls) sum += k;
  r.mean_kl = sum / n;
  r.p90_kl = percentile(kls, 0.90);
  r.p99_kl = percentile(kls, 0.99);
  r.p999_kl = percentile(kls, 0.999);
  r.max_kl = *std::max_element(kls.begin(), kls.end());
  r.top1_agreement = top1 / n;
  r.same_top_p = r.n_top_p ? tp / static_cast<double>(r.n_top_p) : 0;
  r.top_p_jaccard = r.n_top_p ? jac / static_cast<double>(r.n_top_p) : 0;
  r.mean_abs_delta_top_lp = dsum / n;
  r.max_abs_delta_top_lp = dmax;
  r.ref_ppl = std::exp(rn / n);
  r.model_ppl = std::exp(mn / n);
  r.ppl_ratio = r.model_ppl / r.ref_ppl;
}

std::string to_json(const CompareResult& r, const Reference& ref, const CompareTarget& t) {
  nlohmann::json j = {
      {"n_tokens", r.positions.size()},
      {"mean_kl", r.mean_kl},
      {"p90_kl", r.p90_kl},
      {"p99_kl", r.p99_kl},
      {"p999_kl", r.p999_kl},
      {"max_kl", r.max_kl},
      {"kl_bucketed_top_k", r.kl_is_bucketed ? nlohmann::json(r.k) : nlohmann::json(nullptr)},
      {"top1_agreement", r.top1_agreement},
      {"same_top_p", r.same_top_p},
      {"same_top_p_positions", r.n_top_p},
      {"top_p_jaccard", r.top_p_jaccard},
      {"top_p", kTopP},
      {"mean_abs_delta_top_logprob", r.mean_abs_delta_top_lp},
      {"max_abs_delta_top_logprob", r.max_abs_delta_top_lp},
      {"ref_ppl", r.ref_ppl},
      {"model_ppl", r.model_ppl},
      {"ppl_ratio", r.ppl_ratio},
      {"ctx", ref.windows.ctx},
      {"stride", ref.windows.stride},
      {"reference_model_sha256", hex(ref.model)},
      {"model_sha256", hex(t.model)},
      {"tokenizer", tokenizer_name(ref.tokenizer)},
      {"tokens_sha256", hex(ref.tokens_sha)},
  };
  return j.dump(2);
}

std::string to_text(const CompareResult& r) {
  std::string s;
  s += fmt::format("positions           {}\n", r.positions.size());
  s += fmt::format("KL(ref||model)      mean {:.6g}  p90 {:.6g}  p99 {:.6g}  p99.9 {:.6g}  max {:.6g}{}\n",
                   r.mean_kl, r.p90_kl, r.p99_kl, r.p999_kl, r.max_kl,
                   r.kl_is_bucketed ? fmt::format("  (top-{} + rest buckets: a lower bound)", r.k) : "");
  s += fmt::format("top-1 agreement     {:.4f}\n", r.top1_agreement);
  s += fmt::format("same top-p {:.1f}      {:.4f}  (nucleus Jaccard {:.4f}, over {} positions)\n", kTopP,
                   r.same_top_p, r.top_p_jaccard, r.n_top_p);
  s += fmt::format("|dlogp| ref top-1   mean {:.6g}  max {:.6g}\n", r.mean_abs_delta_top_lp, r.max_abs_delta_top_lp);
  s += fmt::format("perplexity          ref {:.6g}  model {:.6g}  ratio {:.6g}\n", r.ref_ppl, r.model_ppl, r.ppl_ratio);
  return s;
}

std::string to_csv(const CompareResult& r) {
  std::string s = "position,token,kl,ref_top,model_top,top1_match,same_top_p,top_p_jaccard,delta_top_logprob,ref_nll,model_nll\n";
  for (const PositionStats& p : r.positions)
    s += fmt::format("{},{},{:.9g},{},{},{},{},{},{:.9g},{:.9g},{:.9g}\n", p.target, p.token, p.kl,
                     p.ref_top, p.model_top, p.ref_top == p.model_top ? 1 : 0,
                     p.same_top_p < 0 ? std::string("") : std::to_string(p.same_top_p),
                     p.top_p_jaccard < 0 ? std::string("") : fmt::format("{:.6g}", p.top_p_jaccard),
                     p.delta_top_lp, p.ref_nll, p.model_nll);
  return s;
}

std::string to_markdown(const CompareResult& r, const std::string& model_name) {
  std::string s =
      "| model | tokens | mean KL | p90 KL | p99 KL | p99.9 KL | top-1 | same top-p | top-p Jaccard | mean \\|Δlogp\\| | max \\|Δlogp\\| | PPL ratio |\n"
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  s += fmt::format("| {} | {} | {:.4g} | {:.4g} | {:.4g} | {:.4g} | {:.4f} | {:.4f} | {:.4f} | {:.4g} | {:.4g} | {:.4f} |\n",
                   model_name, r.positions.size(), r.mean_kl, r.p90_kl, r.p99_kl, r.p999_kl,
                   r.top1_agreement, r.same_top_p, r.top_p_jaccard, r.mean_abs_delta_top_lp, r.max_abs_delta_top_lp,
                   r.ppl_ratio);
  return s;
}

namespace {
std::string xml_escape(const std::string& in) {
  std::string o;
  for (char c : in) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}
}  // namespace

std::string to_svg(const CompareResult& r, const std::string& title) {
  constexpr double W = 800, H = 320, L = 70, R = 20, T = 40, B = 50;
  const double pw = W - L - R, ph = H - T - B;
  int64_t x0 = r.positions.empty() ? 0 : r.positions.front().target;
  int64_t x1 = r.positions.empty() ? 1 : r.positions.back().target;
  if (x1 == x0) x1 = x0 + 1;
  double ymax = 0;
  for (const auto& p : r.positions) ymax = std::max(ymax, p.kl);
  if (ymax <= 0) ymax = 1;
  auto X = [&](int64_t x) { return L + pw * static_cast<double>(x - x0) / static_cast<double>(x1 - x0); };
  auto Y = [&](double y) { return T + ph * (1 - y / ymax); };
  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} {}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      W, H, W, H);
  s += fmt::format("<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n", W / 2, xml_escape(title));
  // Axes, with the extreme values as tick labels.
  s += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"black\"/>\n", L, T, T + ph);
  s += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"black\"/>\n", L, T + ph, L + pw);
  s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.3g}</text>\n", L - 6, T + 4, ymax);
  s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\n", L - 6, T + ph + 4);
  s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", L, T + ph + 18, x0);
  s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", L + pw, T + ph + 18, x1);
  s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">position</text>\n", L + pw / 2, H - 10);
  s += fmt::format("<text x=\"16\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {0})\">KL(ref || model)</text>\n",
                   T + ph / 2);
  s += fmt::format("<line x1=\"{0}\" y1=\"{1:.2f}\" x2=\"{2}\" y2=\"{1:.2f}\" stroke=\"#c33\" stroke-dasharray=\"4 3\"/>\n",
                   L, Y(r.mean_kl), L + pw);
  s += "<polyline fill=\"none\" stroke=\"#2563eb\" stroke-width=\"1\" points=\"";
  for (const auto& p : r.positions) s += fmt::format("{:.2f},{:.2f} ", X(p.target), Y(p.kl));
  s += "\"/>\n</svg>\n";
  return s;
}

}  // namespace ds4::quality
