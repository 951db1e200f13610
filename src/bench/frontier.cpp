#include "bench/frontier.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "core/error.h"
#include "model/model.h"

namespace ds4::bench {

// ---------------------------------------------------------------------------------------------
// EvalSession adapter
// ---------------------------------------------------------------------------------------------

EvalSweepSession::EvalSweepSession(model::EvalSession& s)
    : s_(s), logits_(static_cast<size_t>(s.hparams().n_vocab)) {}

int32_t EvalSweepSession::eval(std::span<const int32_t> tokens) {
  // A backend that samples next to its logits (the CUDA session) returns only the argmax, as a
  // generator's decode step would; the others copy the logits back.
  if (s_.eval_keeping_logits(tokens)) {
    model::LogitsReduceRequest greedy;
    greedy.greedy = true;
    model::LogitsReduction r;
    if (s_.reduce_logits(greedy, r)) return r.argmax;
    s_.read_logits(0, static_cast<int64_t>(logits_.size()), logits_.data());
  } else {
    s_.eval(tokens, model::LogitsMode::Last, logits_.data());
  }
  return static_cast<int32_t>(std::max_element(logits_.begin(), logits_.end()) - logits_.begin());
}

int64_t EvalSweepSession::n_past() const { return s_.n_past(); }

namespace {
// The float arrays of every layer plus the token list: what serialize() writes, without its
// fixed-size header and checksum.
uint64_t count_state_bytes(const model::SessionState& st) {
  uint64_t n = st.tokens.size() * sizeof(int32_t);
  for (const auto& l : st.layers)
    n += (l.raw.size() + l.comp_kv.size() + l.comp_sc.size() + l.idx_kv.size() + l.idx_sc.size() +
          l.comp.size() + l.icomp.size()) * sizeof(float);
  return n;
}
}  // namespace

uint64_t EvalSweepSession::state_bytes() const {
  // The CPU session's state is readable in place; other backends copy it back.
  if (const auto* cpu = dynamic_cast<const model::Session*>(&s_)) return count_state_bytes(cpu->state());
  return count_state_bytes(s_.snapshot());
}

// ---------------------------------------------------------------------------------------------
// The sweep
// ---------------------------------------------------------------------------------------------

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int64_t sweep_max_context(const SweepOptions& opts) {
  if (opts.frontiers.empty()) return 0;
  return opts.frontiers.back() + std::max(0, opts.decode_warmup) + std::max(0, opts.decode_tokens);
}

std::vector<FrontierRow> run_sweep(SweepSession& s, const SweepOptions& opts) {
  if (opts.frontiers.empty()) fail("sweep: no frontiers given");
  for (size_t i = 0; i < opts.frontiers.size(); ++i) {
    if (opts.frontiers[i] <= 0) fail("sweep: frontier {} is not positive", opts.frontiers[i]);
    if (i > 0 && opts.frontiers[i] <= opts.frontiers[i - 1])
      fail("sweep: frontiers must increase ({} follows {})", opts.frontiers[i], opts.frontiers[i - 1]);
  }
  if (opts.decode_tokens < 1) fail("sweep: decode_tokens must be at least 1, got {}", opts.decode_tokens);
  if (opts.decode_warmup < 0) fail("sweep: decode_warmup must not be negative, got {}", opts.decode_warmup);
  if (opts.vocab <= 2) fail("sweep: the vocabulary size {} leaves no prompt tokens", opts.vocab);
  if (opts.prefill_chunk < 0) fail("sweep: prefill_chunk must not be negative");
  if (s.n_past() >= opts.frontiers.front())
    fail("sweep: the session already holds {} tokens, past the first frontier {}", s.n_past(),
         opts.frontiers.front());

  // Random prompt tokens: speed does not depend on them, and a random stream never repeats
  // in a way that could let a backend take a shortcut.
  std::mt19937_64 rng(opts.seed);
  std::uniform_int_distribution<int32_t> dist(2, opts.vocab - 1);
  std::vector<FrontierRow> rows;
  std::vector<int32_t> chunk;
  int32_t next = 0;
  for (int64_t frontier : opts.frontiers) {
    FrontierRow row;
    // Decoding at the previous frontier moved past it; a frontier closer than that is
    // reached already, which would make its "prefill" empty: refuse rather than mislead.
    if (s.n_past() >= frontier)
      fail("sweep: frontier {} is not beyond the {} tokens the previous frontier's decode steps "
           "reached; space the frontiers further apart or decode fewer tokens",
           frontier, s.n_past());
    row.context = frontier;
    row.prefill_tokens = frontier - s.n_past();
    const int64_t step = opts.prefill_chunk > 0 ? opts.prefill_chunk : row.prefill_tokens;
    const auto t0 = Clock::now();
    for (int64_t done = 0; done < row.prefill_tokens;) {
      const int64_t n = std::min(step, row.prefill_tokens - done);
      chunk.resize(static_cast<size_t>(n));
      for (auto& t : chunk) t = dist(rng);
      next = s.eval(chunk);
      done += n;
    }
    row.prefill_seconds = seconds_since(t0);
    row.prefill_tok_s = row.prefill_tokens / std::max(row.prefill_seconds, 1e-12);
    if (s.n_past() != frontier)
      fail("sweep: the session holds {} tokens after prefilling to {}", s.n_past(), frontier);

    // Greedy decode: each step feeds the previous step's choice, as generation does.
    for (int i = 0; i < opts.decode_warmup; ++i) next = s.eval(std::span(&next, 1));
    std::vector<double> ms;
    for (int i = 0; i < opts.decode_tokens; ++i) {
      const auto d0 = Clock::now();
      next = s.eval(std::span(&next, 1));
      ms.push_back(1e3 * seconds_since(d0));
    }
    row.decode_tokens = opts.decode_tokens;
    row.decode_ms_median = median(ms);
    row.decode_tok_s = 1e3 / std::max(row.decode_ms_median, 1e-12);
    row.state_bytes = s.state_bytes();
    rows.push_back(row);
    if (opts.on_row) opts.on_row(rows.back());
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// Frontier lists
// ---------------------------------------------------------------------------------------------

std::vector<int64_t> parse_frontiers(std::string_view text) {
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    std::string_view item = text.substr(pos, comma - pos);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (item.empty()) fail("frontiers \"{}\": empty item", text);
    int64_t mult = 1;
    if (item.back() == 'K' || item.back() == 'k') mult = 1024;
    if (item.back() == 'M' || item.back() == 'm') mult = 1024 * 1024;
    std::string_view digits = mult == 1 ? item : item.substr(0, item.size() - 1);
    if (digits.empty() || digits.size() > 9 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      fail("frontiers \"{}\": \"{}\" is not a token count (like 2048, 2K or 1M)", text, item);
    int64_t v = 0;
    for (char c : digits) v = v * 10 + (c - '0');
    if (v == 0) fail("frontiers \"{}\": \"{}\" is zero", text, item);
    if (!out.empty() && v * mult <= out.back())
      fail("frontiers \"{}\": they must increase (\"{}\" follows {})", text, item, out.back());
    out.push_back(v * mult);
    pos = comma + 1;
  }
  return out;
}

std::string frontier_label(int64_t n) {
  if (n >= 1048576 && n % 1048576 == 0) return fmt::format("{}M", n / 1048576);
  if (n >= 1024 && n % 1024 == 0) return fmt::format("{}K", n / 1024);
  return fmt::format("{}", n);
}

// ---------------------------------------------------------------------------------------------
// CSV and SVG
// ---------------------------------------------------------------------------------------------

std::string sweep_table_header() {
  return fmt::format("{:>8} {:>9} {:>12} {:>12} {:>14}\n", "context", "prefilled", "prefill t/s", "decode t/s",
                     "state MiB");
}

std::string sweep_table_row(const FrontierRow& r) {
  return fmt::format("{:>8} {:>9} {:>12.1f} {:>12.2f} {:>14.1f}\n", frontier_label(r.context), r.prefill_tokens,
                     r.prefill_tok_s, r.decode_tok_s, static_cast<double>(r.state_bytes) / 1048576.0);
}

std::string sweep_csv(const std::vector<FrontierRow>& rows) {
  std::string out =
      "context,prefill_tokens,prefill_seconds,prefill_tok_s,decode_tokens,decode_ms_median,"
      "decode_tok_s,state_bytes\n";
  for (const auto& r : rows)
    out += fmt::format("{},{},{:.6f},{:.3f},{},{:.4f},{:.3f},{}\n", r.context, r.prefill_tokens,
                       r.prefill_seconds, r.prefill_tok_s, r.decode_tokens, r.decode_ms_median,
                       r.decode_tok_s, r.state_bytes);
  return out;
}

namespace {

std::string xml_escape(std::string_view s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&apos;"; break;
      default:
        // Control characters are not allowed in XML 1.0 text.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n') o += ' ';
        else o += c;
    }
  }
  return o;
}

std::string value_label(double v) {
  if (v >= 100) return fmt::format("{:.0f}", v);
  if (v >= 10) return fmt::format("{:.1f}", v);
  return fmt::format("{:.2f}", v);
}

// Tick values with as many decimals as the step needs (0, 2, 4 rather than 0.00, 2.00).
std::string tick_label(double v, double step) {
  const int decimals = std::clamp(static_cast<int>(-std::floor(std::log10(step) + 1e-9)), 0, 6);
  return fmt::format("{:.{}f}", v, decimals);
}

// Axis maximum and tick step: 1, 2 or 5 times a power of ten, about 4-5 ticks.
std::pair<double, double> nice_axis(double vmax) {
  if (!(vmax > 0) || !std::isfinite(vmax)) return {1.0, 0.2};
  const double raw = vmax / 4.0;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  double step = p;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * p;
    if (step >= raw) break;
  }
  return {std::ceil(vmax * 1.08 / step) * step, step};
}

struct Panel {
  double top, height;
  std::string title, color;
  std::vector<double> values;
};

}  // namespace

std::string sweep_svg(const std::vector<FrontierRow>& rows, std::string_view title,
                      std::string_view subtitle) {
  constexpr double W = 820, H = 640, L = 90, R = 30;
  std::string s;
  s += fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect x=\"0\" y=\"0\" width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"24\" font-size=\"16\" font-weight=\"bold\">{3}</text>\n"
      "<text x=\"{2}\" y=\"42\" fill=\"#555\">{4}</text>\n",
      W, H, L, xml_escape(title), xml_escape(subtitle));

  // Shared x axis: log2 of the context, padded by half an octave on each side.
  double x_lo = 1, x_hi = 2;
  if (!rows.empty()) {
    x_lo = std::log2(static_cast<double>(std::max<int64_t>(1, rows.front().context))) - 0.5;
    x_hi = std::log2(static_cast<double>(std::max<int64_t>(1, rows.back().context))) + 0.5;
  }
  auto xpos = [&](int64_t ctx) {
    const double lx = std::log2(static_cast<double>(std::max<int64_t>(1, ctx)));
    return L + (lx - x_lo) / (x_hi - x_lo) * (W - L - R);
  };

  std::vector<Panel> panels(2);
  panels[0] = {70, 220, "prefill tokens/s (interval ending at the context)", "#1f77b4", {}};
  panels[1] = {360, 220, "decode tokens/s (batch 1, median)", "#d62728", {}};
  for (const auto& r : rows) {
    panels[0].values.push_back(r.prefill_tok_s);
    panels[1].values.push_back(r.decode_tok_s);
  }
  for (const auto& p : panels) {
    double vmax = 0;
    for (double v : p.values)
      if (std::isfinite(v)) vmax = std::max(vmax, v);
    const auto [ymax, step] = nice_axis(vmax);
    auto ypos = [&](double v) { return p.top + p.height - std::clamp(v / ymax, 0.0, 1.0) * p.height; };
    s += fmt::format("<g>\n<text x=\"{}\" y=\"{}\" font-weight=\"bold\">{}</text>\n", L, p.top - 8,
                     xml_escape(p.title));
    // Horizontal grid with value ticks.
    for (int i = 0; i * step <= ymax * (1 + 1e-9); ++i) {
      const double v = i * step, y = ypos(v);
      s += fmt::format(
          "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#ddd\"/>\n"
          "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\" fill=\"#333\">{}</text>\n",
          L, y, W - R, y, L - 6, y + 4, tick_label(v, step));
    }
    // Vertical grid at each frontier.
    for (const auto& r : rows) {
      const double x = xpos(r.context);
      s += fmt::format(
          "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#eee\"/>\n"
          "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"#333\">{}</text>\n",
          x, p.top, x, p.top + p.height, x, p.top + p.height + 16, frontier_label(r.context));
    }
    s += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
                     "fill=\"none\" stroke=\"#888\"/>\n",
                     L, p.top, W - L - R, p.height);
    // The series.
    std::string pts;
    for (size_t i = 0; i < rows.size(); ++i)
      pts += fmt::format("{}{:.1f},{:.1f}", i ? " " : "", xpos(rows[i].context), ypos(p.values[i]));
    s += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n",
                     pts, p.color);
    for (size_t i = 0; i < rows.size(); ++i) {
      const double x = xpos(rows[i].context), y = ypos(p.values[i]);
      s += fmt::format(
          "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\" fill=\"{}\"/>\n"
          "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"{}\">{}</text>\n",
          x, y, p.color, x, y - 9, p.color, value_label(p.values[i]));
    }
    s += "</g>\n";
  }
  s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">context (tokens, log scale)</text>\n",
                   L + (W - L - R) / 2, H - 24);
  s += "</svg>\n";
  return s;
}

void write_text_file(const std::string& path, std::string_view text) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) fail("cannot create {}: {}", path, std::strerror(errno));
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  if (std::fclose(f) != 0 || !ok) fail("cannot write {}: {}", path, std::strerror(errno));
}

}  // namespace ds4::bench
