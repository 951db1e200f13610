#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "bench/frontier.h"
#include "core/error.h"
#include "model/model.h"
#include "synth/presets.h"
#include "synth/synthetic_model.h"

namespace ds4::bench {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// A minimal XML well-formedness check (enough for the SVG we write): one root element, every
// tag closed in order, attributes quoted and unique, entities known, no stray '<' or '&'.
// Returns "" when well formed, else what is wrong. Also collects the element names.
// ---------------------------------------------------------------------------------------------
struct Element {
  std::string name;
  std::map<std::string, std::string> attrs;
};

std::string check_entities(const std::string& text) {
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '<') return "'<' in text";
    if (text[i] != '&') continue;
    const size_t semi = text.find(';', i);
    if (semi == std::string::npos) return "unterminated entity";
    const std::string ent = text.substr(i + 1, semi - i - 1);
    if (ent != "amp" && ent != "lt" && ent != "gt" && ent != "quot" && ent != "apos")
      return "unknown entity &" + ent + ";";
    i = semi;
  }
  return "";
}

std::string xml_check(const std::string& doc, std::vector<Element>& elements,
                      std::vector<std::string>& texts) {
  std::vector<std::string> stack;
  size_t i = 0;
  bool root_seen = false;
  if (doc.rfind("<?xml", 0) == 0) {
    i = doc.find("?>");
    if (i == std::string::npos) return "unterminated XML declaration";
    i += 2;
  }
  while (i < doc.size()) {
    const size_t lt = doc.find('<', i);
    const std::string text = doc.substr(i, (lt == std::string::npos ? doc.size() : lt) - i);
    if (auto e = check_entities(text); !e.empty()) return e;
    if (stack.empty() && text.find_first_not_of(" \n\t\r") != std::string::npos)
      return "text outside the root element";
    if (!stack.empty() && text.find_first_not_of(" \n\t\r") != std::string::npos) texts.push_back(text);
    if (lt == std::string::npos) break;
    const size_t gt = doc.find('>', lt);
    if (gt == std::string::npos) return "unterminated tag";
    std::string tag = doc.substr(lt + 1, gt - lt - 1);
    i = gt + 1;
    if (!tag.empty() && tag[0] == '/') {
      if (stack.empty() || stack.back() != tag.substr(1)) return "mismatched </" + tag.substr(1) + ">";
      stack.pop_back();
      continue;
    }
    const bool self_close = !tag.empty() && tag.back() == '/';
    if (self_close) tag.pop_back();
    Element el;
    size_t p = 0;
    while (p < tag.size() && tag[p] != ' ' && tag[p] != '\n') el.name += tag[p++];
    if (el.name.empty()) return "empty tag name";
    while (true) {
      while (p < tag.size() && (tag[p] == ' ' || tag[p] == '\n')) ++p;
      if (p >= tag.size()) break;
      const size_t eq = tag.find('=', p);
      if (eq == std::string::npos || eq + 1 >= tag.size() || tag[eq + 1] != '"')
        return "unquoted attribute in <" + el.name + ">";
      const std::string key = tag.substr(p, eq - p);
      const size_t close = tag.find('"', eq + 2);
      if (close == std::string::npos) return "unterminated attribute value";
      const std::string val = tag.substr(eq + 2, close - eq - 2);
      if (auto e = check_entities(val); !e.empty()) return e + " in attribute " + key;
      if (!el.attrs.emplace(key, val).second) return "duplicate attribute " + key;
      p = close + 1;
    }
    if (stack.empty()) {
      if (root_seen) return "second root element";
      root_seen = true;
    }
    elements.push_back(el);
    if (!self_close) stack.push_back(el.name);
  }
  if (!stack.empty()) return "unclosed <" + stack.back() + ">";
  if (!root_seen) return "no root element";
  return "";
}

TEST(XmlCheck, CatchesBrokenDocuments) {
  std::vector<Element> e;
  std::vector<std::string> t;
  EXPECT_EQ(xml_check("<a><b x=\"1\"/>hi &amp; bye</a>", e, t), "");
  EXPECT_NE(xml_check("<a><b></a>", e, t), "");
  EXPECT_NE(xml_check("<a>x & y</a>", e, t), "");
  EXPECT_NE(xml_check("<a x=1></a>", e, t), "");
  EXPECT_NE(xml_check("<a></a><b/>", e, t), "");
  EXPECT_NE(xml_check("<a>", e, t), "");
}

std::vector<FrontierRow> sample_rows() {
  std::vector<FrontierRow> rows;
  const int64_t ctx[] = {2048, 8192, 32768, 65536, 131072};
  for (int i = 0; i < 5; ++i) {
    FrontierRow r;
    r.context = ctx[i];
    r.prefill_tokens = ctx[i] - (i ? ctx[i - 1] + 17 : 0);
    r.prefill_seconds = r.prefill_tokens / (9000.0 - 1000 * i);
    r.prefill_tok_s = 9000.0 - 1000 * i;
    r.decode_tokens = 16;
    r.decode_tok_s = 250.0 - 10 * i;
    r.decode_ms_median = 1000.0 / r.decode_tok_s;
    r.state_bytes = static_cast<uint64_t>(ctx[i]) * 3000;
    rows.push_back(r);
  }
  return rows;
}

TEST(SweepSvg, IsWellFormedWithTwoSeriesOfOnePointPerFrontier) {
  const auto rows = sample_rows();
  const std::string svg = sweep_svg(rows, "flash <q2> & friends", "H200 \"test\"");
  std::vector<Element> els;
  std::vector<std::string> texts;
  ASSERT_EQ(xml_check(svg, els, texts), "") << svg;
  ASSERT_FALSE(els.empty());
  EXPECT_EQ(els[0].name, "svg");
  EXPECT_EQ(els[0].attrs["xmlns"], "http://www.w3.org/2000/svg");
  int polylines = 0, circles = 0;
  std::vector<std::vector<double>> ys;  // y of each polyline's points
  for (const auto& e : els) {
    EXPECT_TRUE(e.name != "script" && e.name != "image" && e.name != "use") << "not self-contained";
    for (const auto& [k, v] : e.attrs) EXPECT_EQ(v.find("http"), k == "xmlns" ? 0 : std::string::npos);
    if (e.name == "polyline") {
      ++polylines;
      std::istringstream pts(e.attrs.at("points"));
      std::string p;
      int n = 0;
      double last_x = -1;
      ys.emplace_back();
      while (pts >> p) {
        const double x = std::stod(p.substr(0, p.find(','))), y = std::stod(p.substr(p.find(',') + 1));
        EXPECT_GT(x, last_x);  // context increases left to right
        EXPECT_TRUE(std::isfinite(y));
        EXPECT_GE(y, 0);
        EXPECT_LE(y, std::stod(els[0].attrs["height"]));
        last_x = x;
        ys.back().push_back(y);
        ++n;
      }
      EXPECT_EQ(n, 5);
    }
    if (e.name == "circle") ++circles;
  }
  EXPECT_EQ(polylines, 2);
  // Higher values sit higher (SVG y grows downwards): both series fall from 2K to 128K.
  for (const auto& y : ys) EXPECT_LT(y.front(), y.back());
  EXPECT_EQ(circles, 10);
  // Title escaped, frontier labels and the values present as text.
  auto has = [&](const std::string& s) {
    for (const auto& t : texts)
      if (t == s) return true;
    return false;
  };
  EXPECT_TRUE(has("flash &lt;q2&gt; &amp; friends"));
  EXPECT_TRUE(has("128K"));
  EXPECT_TRUE(has("2K"));
  EXPECT_TRUE(has("9000"));
  EXPECT_TRUE(has("250"));
  // Axis ticks: round steps printed without needless decimals.
  EXPECT_TRUE(has("0"));
  EXPECT_TRUE(has("100"));
  EXPECT_FALSE(has("0.00"));
}

TEST(SweepSvg, EmptyAndZeroRowsStillWellFormed) {
  std::vector<Element> els;
  std::vector<std::string> texts;
  EXPECT_EQ(xml_check(sweep_svg({}, "t", "s"), els, texts), "");
  auto rows = sample_rows();
  rows.resize(1);
  rows[0].decode_tok_s = 0;
  els.clear();
  EXPECT_EQ(xml_check(sweep_svg(rows, "t", "s"), els, texts), "");
}

TEST(SweepCsv, HeaderAndOneLinePerRow) {
  const auto rows = sample_rows();
  const std::string csv = sweep_csv(rows);
  std::istringstream in(csv);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line,
            "context,prefill_tokens,prefill_seconds,prefill_tok_s,decode_tokens,decode_ms_median,"
            "decode_tok_s,state_bytes");
  for (const auto& r : rows) {
    ASSERT_TRUE(std::getline(in, line));
    std::vector<std::string> f;
    std::istringstream ls(line);
    for (std::string x; std::getline(ls, x, ',');) f.push_back(x);
    ASSERT_EQ(f.size(), 8u) << line;
    EXPECT_EQ(std::stoll(f[0]), r.context);
    EXPECT_EQ(std::stoll(f[1]), r.prefill_tokens);
    EXPECT_NEAR(std::stod(f[3]), r.prefill_tok_s, 1e-3);
    EXPECT_EQ(std::stoi(f[4]), r.decode_tokens);
    EXPECT_NEAR(std::stod(f[6]), r.decode_tok_s, 1e-3);
    EXPECT_EQ(std::stoull(f[7]), r.state_bytes);
  }
  EXPECT_FALSE(std::getline(in, line));
}

TEST(Frontiers, ParseAndLabel) {
  EXPECT_EQ(parse_frontiers("2K,8K, 32k,64K,128K"),
            (std::vector<int64_t>{2048, 8192, 32768, 65536, 131072}));
  EXPECT_EQ(parse_frontiers("16,32,1M"), (std::vector<int64_t>{16, 32, 1048576}));
  for (const char* bad : {"", "2K,,8K", "x", "0", "-5", "2KB", "2K,", "99999999999K", "8K,2K", "2K,2048"})
    EXPECT_THROW(parse_frontiers(bad), Error) << bad;
  EXPECT_EQ(frontier_label(2048), "2K");
  EXPECT_EQ(frontier_label(1536), "1536");
  EXPECT_EQ(frontier_label(1048576), "1M");
  EXPECT_EQ(frontier_label(100), "100");
}

// ---------------------------------------------------------------------------------------------
// Sweep logic against a scripted session: what is evaluated, in which calls, at which positions.
// ---------------------------------------------------------------------------------------------
class FakeSession final : public SweepSession {
 public:
  std::vector<std::vector<int32_t>> calls;
  int64_t pos = 0;
  int32_t eval(std::span<const int32_t> tokens) override {
    calls.emplace_back(tokens.begin(), tokens.end());
    pos += static_cast<int64_t>(tokens.size());
    return static_cast<int32_t>(1000 + pos);  // "greedy" next token, recognizable
  }
  int64_t n_past() const override { return pos; }
  uint64_t state_bytes() const override { return static_cast<uint64_t>(pos) * 10; }
};

TEST(Sweep, PrefillsEachIntervalAndDecodesGreedily) {
  FakeSession s;
  SweepOptions o;
  o.frontiers = {16, 32, 64};
  o.decode_tokens = 3;
  o.decode_warmup = 1;
  o.prefill_chunk = 10;
  o.vocab = 50;
  int callbacks = 0;
  o.on_row = [&](const FrontierRow&) { ++callbacks; };
  const auto rows = run_sweep(s, o);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(callbacks, 3);
  // 16 = 10 + 6, decode 4 (20); 32 - 20 = 12 = 10 + 2, decode 4 (36); 64 - 36 = 28 = 10+10+8.
  std::vector<size_t> sizes;
  for (const auto& c : s.calls) sizes.push_back(c.size());
  EXPECT_EQ(sizes, (std::vector<size_t>{10, 6, 1, 1, 1, 1, 10, 2, 1, 1, 1, 1, 10, 10, 8, 1, 1, 1, 1}));
  EXPECT_EQ(rows[0].prefill_tokens, 16);
  EXPECT_EQ(rows[1].prefill_tokens, 12);
  EXPECT_EQ(rows[2].prefill_tokens, 28);
  for (const auto& r : rows) {
    EXPECT_EQ(r.decode_tokens, 3);
    EXPECT_GT(r.prefill_tok_s, 0);
    EXPECT_GT(r.decode_tok_s, 0);
    EXPECT_NEAR(r.decode_tok_s * r.decode_ms_median, 1000.0, 1e-6);
    EXPECT_EQ(r.state_bytes, static_cast<uint64_t>(r.context + 4) * 10);  // after the decode steps
  }
  // Decode feeds back the token the previous step chose; prompt tokens are in [2, vocab).
  EXPECT_EQ(s.calls[2][0], 1000 + 16);
  EXPECT_EQ(s.calls[3][0], 1000 + 17);
  for (size_t i : {0u, 1u, 6u, 12u})
    for (int32_t t : s.calls[i]) EXPECT_TRUE(t >= 2 && t < 50);
  EXPECT_EQ(sweep_max_context(o), 64 + 4);
}

TEST(Sweep, RefusesBadOptions) {
  SweepOptions o;
  o.vocab = 50;
  o.decode_tokens = 8;
  auto run = [&](std::vector<int64_t> f) {
    FakeSession s;
    o.frontiers = std::move(f);
    return run_sweep(s, o);
  };
  EXPECT_THROW(run({}), Error);
  EXPECT_THROW(run({32, 16}), Error);
  EXPECT_THROW(run({16, 16}), Error);
  EXPECT_THROW(run({0, 16}), Error);
  // 16 then decode 1 + 8 reaches 25: a frontier at 20 would have no prefill.
  EXPECT_THROW(run({16, 20}), Error);
  EXPECT_NO_THROW(run({16, 26}));
  o.decode_tokens = 0;
  EXPECT_THROW(run({16}), Error);
  o.decode_tokens = 1;
  o.vocab = 2;
  EXPECT_THROW(run({16}), Error);
}

// An EvalSession that is not a model::Session (as the CUDA session is not): the adapter must
// take its state bytes from a snapshot.
class Forwarding final : public model::EvalSession {
 public:
  explicit Forwarding(model::Session& s) : s_(s) {}
  void eval(std::span<const int32_t> t, model::LogitsMode m, float* out) override { s_.eval(t, m, out); }
  int64_t n_past() const override { return s_.n_past(); }
  const std::vector<int32_t>& tokens() const override { return s_.tokens(); }
  const model::SessionOptions& options() const override { return s_.options(); }
  const model::HParams& hparams() const override { return s_.hparams(); }
  model::SessionState snapshot() const override { return s_.snapshot(); }
  void restore(model::SessionState st) override { s_.restore(std::move(st)); }
  void truncate(int64_t n) override { s_.truncate(n); }
  int64_t min_truncate() const override { return s_.min_truncate(); }
  void reset() override { s_.reset(); }
  const char* backend_name() const override { return "forwarding"; }

 private:
  model::Session& s_;
};

// ---------------------------------------------------------------------------------------------
// The real CPU session on a small demo-shaped model.
// ---------------------------------------------------------------------------------------------
TEST(Sweep, CpuSessionOnDemoModel) {
  const fs::path dir = fs::temp_directory_path() / ("ds4-bench-test-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "demo.gguf").string();
  auto cfg = synth::preset("demo");
  cfg.vocab = 2048;  // small output head: fast under sanitizers
  auto wo = synth::synthetic_options("demo", convert::Recipe::Q2);
  wo.threads = 2;
  synth::write_gguf(path, cfg, wo);
  {
    auto m = model::Model::load(path, {.threads = 2});
    SweepOptions o;
    o.frontiers = {16, 32, 64};
    o.decode_tokens = 4;
    o.vocab = static_cast<int32_t>(m.hparams().n_vocab);
    model::Session sess(m, {.max_ctx = sweep_max_context(o), .retain = 1 << 20});
    EvalSweepSession s(sess);
    const auto rows = run_sweep(s, o);
    ASSERT_EQ(rows.size(), 3u);
    EXPECT_EQ(sess.n_past(), 64 + 5);
    uint64_t prev = 0;
    for (const auto& r : rows) {
      EXPECT_TRUE(std::isfinite(r.prefill_tok_s) && r.prefill_tok_s > 0);
      EXPECT_TRUE(std::isfinite(r.decode_tok_s) && r.decode_tok_s > 0);
      EXPECT_GT(r.state_bytes, prev);  // the KV history grows with the context
      prev = r.state_bytes;
    }
    // state_bytes counts the serialized state's arrays: the snapshot is that plus a small
    // fixed header, fingerprint and checksum.
    const auto ser = sess.serialize();
    EXPECT_LE(s.state_bytes(), ser.size());
    EXPECT_LT(ser.size() - s.state_bytes(), 4096u);
    // Another backend's session: the same bytes, counted from a snapshot.
    Forwarding fw(sess);
    EXPECT_EQ(EvalSweepSession(fw).state_bytes(), s.state_bytes());
    // The adapter's greedy token is the argmax of the session's logits.
    model::Session ref(m, {.max_ctx = 8});
    std::vector<float> logits(static_cast<size_t>(m.hparams().n_vocab));
    const std::vector<int32_t> p = {5, 9, 200, 31};
    ref.eval(p, model::LogitsMode::Last, logits.data());
    model::Session other(m, {.max_ctx = 8});
    EvalSweepSession os(other);
    EXPECT_EQ(os.eval(p), std::max_element(logits.begin(), logits.end()) - logits.begin());
    // Output files are written and named in errors.
    write_text_file((dir / "s.csv").string(), sweep_csv(rows));
    EXPECT_EQ(fs::file_size(dir / "s.csv"), sweep_csv(rows).size());
    EXPECT_THROW(write_text_file((dir / "no/such/dir.svg").string(), "x"), Error);
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ds4::bench
